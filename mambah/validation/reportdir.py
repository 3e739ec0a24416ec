"""Report folders: JSON-safe summaries, file-name slugs, and a folder written in place atomically.

Used by :mod:`mambah.validation.report` (``mambah validate``) and
:mod:`mambah.validation.production` (``mambah validate --db``): a report is written into a
temporary sibling folder (:func:`prepare_dir`) and put in place of the old one only when complete
(:func:`finalize`), so a crash never leaves half a report; a folder that is not a mambah report is
never replaced (:func:`check_dir`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from mambah.errors import ConfigurationError

__all__ = ["clean_json", "write_json", "slug", "check_dir", "prepare_dir", "finalize"]


def clean_json(obj):
    """JSON-safe copy: numpy scalars to Python, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [clean_json(v) for v in obj.tolist()]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if np.isfinite(v) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    return obj


def write_json(path: Path, obj) -> None:
    """Write ``obj`` (made JSON-safe by :func:`clean_json`) to ``path`` atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(clean_json(obj), indent=2, allow_nan=False))
    os.replace(tmp, path)


def slug(s: str) -> str:
    """``s`` with every character but letters, digits, ``-`` and ``_`` replaced by ``_``."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in s)


def check_dir(report_dir: Path) -> None:
    """Raise :class:`~mambah.errors.ConfigurationError` unless ``report_dir`` is absent, empty or a report."""
    report_dir = Path(report_dir)
    if report_dir.exists():
        if not report_dir.is_dir():
            raise ConfigurationError(f"the report folder {str(report_dir)!r} is a file; choose a folder name")
        if any(report_dir.iterdir()) and not (report_dir / "summary.json").exists():
            raise ConfigurationError(
                f"{str(report_dir)!r} exists and is not a mambah report (no summary.json): refusing to replace "
                "it; choose a new or empty folder"
            )


def prepare_dir(report_dir: Path) -> Path:
    """A fresh temporary folder beside ``report_dir`` to write the report into (see :func:`finalize`)."""
    report_dir = Path(report_dir)
    check_dir(report_dir)
    report_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = report_dir.parent / f".{report_dir.name}.tmp{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def finalize(tmp: Path, report_dir: Path) -> None:
    """Put the complete folder ``tmp`` in place of ``report_dir`` (replacing an old report)."""
    if report_dir.exists():
        old = report_dir.parent / f".{report_dir.name}.old{os.getpid()}"
        os.replace(report_dir, old)
        os.replace(tmp, report_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, report_dir)
