"""Trained models on disk: one directory per model version.

Layout of a model directory::

    <name>/
        card.json       # what the model is: kind, species, conditions and targets with units,
                        # training data (description, hash), hyperparameters, validation metrics,
                        # creation date, mambah version, and the sha256 of every other file
        <net>.keras     # the network(s), Keras native format (loaded with safe_mode=True)
        arrays.npz      # preprocessing and other numbers as plain arrays (allow_pickle=False)
        <sub>/<net>.keras  # optional networks in subdirectories (e.g. an ensemble's
                        # ``members/member-01.keras``), listed in ``files`` by their relative
                        # POSIX path

Loading never executes code from the directory: no pickle, Keras' safe mode on, and every file
is checked against the hash recorded in the card before it is used.

Writing is atomic: the directory is assembled under a temporary name beside the target and
renamed into place, so an interrupted training never leaves a half-written model.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mambah._version import __version__
from mambah.errors import ModelDirError

__all__ = [
    "CARD_FORMAT",
    "save_model_dir",
    "update_model_dir",
    "load_card",
    "load_arrays",
    "load_network",
    "verify_model_dir",
    "model_hash",
    "card_hash",
    "default_models_dir",
    "resolve_model",
    "list_models",
]

log = logging.getLogger(__name__)

#: Version of the on-disk format; a directory with another value is refused.
CARD_FORMAT = 1

_REQUIRED_CARD_KEYS = ("format", "name", "version", "kind", "conditions", "targets", "files")


def default_models_dir() -> Path:
    """Where the shipped models live: ``$MAMBAH_MODELS``, else the project's ``models/``."""
    env = os.environ.get("MAMBAH_MODELS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "models"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_model_dir(
    path: str | os.PathLike,
    card: Mapping[str, Any],
    networks: Mapping[str, Any] | None = None,
    arrays: Mapping[str, np.ndarray] | None = None,
    *,
    overwrite: bool = False,
    support=None,
) -> Path:
    """Write a model directory atomically and return its path.

    Args:
        path: the directory to create.
        card: the card's content (``name``, ``kind``, ``conditions``, ``targets``... ); ``format``,
            ``created``, ``mambah_version`` and ``files`` are filled in here.
        networks: name -> Keras model, each saved as ``<name>.keras``; a name may hold ``/`` to put
            the network in a subdirectory (``"members/member-01"``), never ``..`` or an absolute path.
        arrays: name -> numpy array (numeric or fixed-width string), saved in ``arrays.npz``.
        overwrite: replace an existing directory (otherwise refuse).
        support: the model's data-support table (:class:`mambah.nn.support.Support`, ``support.npz``),
            written with the card's ``"support"`` section; a card with that section needs it.
    """
    path = Path(path)
    if isinstance(card.get("support"), dict) and support is None:
        raise ModelDirError(f"the card for {str(path)!r} has a 'support' section but no support table is given (pass "
                            "support=, e.g. mambah.nn.support.Support.load of the source directory, or drop the section)")
    if path.exists() and not overwrite:
        raise ModelDirError(f"{str(path)!r} already exists; choose another --out or pass overwrite=True (CLI: --overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        for name, net in (networks or {}).items():
            f = tmp / f"{_relative_name(name, path)}.keras"
            f.parent.mkdir(parents=True, exist_ok=True)
            net.save(f)
        if arrays:
            clean = {}
            for k, v in arrays.items():
                a = np.asarray(v)
                if a.dtype == object:
                    raise TypeError(f"array {k!r} has dtype object; store numbers or fixed-width strings")
                clean[k] = a
            np.savez(tmp / "arrays.npz", **clean)
        if support is not None:
            support.save(tmp)
        files = _file_hashes(tmp)
        full = dict(card)
        full.setdefault("version", "1")
        full.update(
            format=CARD_FORMAT,
            created=full.get("created") or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            mambah_version=__version__,
            files=files,
        )
        missing = [k for k in _REQUIRED_CARD_KEYS if k not in full]
        if missing:
            raise ModelDirError(f"card for {str(path)!r} lacks {', '.join(missing)}")
        (tmp / "card.json").write_text(json.dumps(full, indent=2, sort_keys=False, default=json_default) + "\n")
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("wrote model %s", path)
    return path


def update_model_dir(path: str | os.PathLike, write, card_update: Mapping[str, Any]) -> Path:
    """Add or replace files of an existing model directory, atomically: the directory is copied, ``write``
    is called with the copy's path (it writes its files there), the card gets ``card_update`` merged in
    and the hashes of every file, and the copy replaces the directory. An error (or an interruption)
    before the swap leaves the directory as it was."""
    path = Path(path)
    card = verify_model_dir(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    old = path.with_name(f".{path.name}.old{os.getpid()}")
    try:
        shutil.copytree(path, tmp, dirs_exist_ok=True)
        write(tmp)
        full = dict(card)
        full.update(card_update)
        full["files"] = _file_hashes(tmp)
        (tmp / "card.json").write_text(json.dumps(full, indent=2, sort_keys=False, default=json_default) + "\n")
        os.replace(path, old)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old.exists():
            shutil.rmtree(old, ignore_errors=True)
    log.info("updated model %s", path)
    return path


def _file_hashes(directory: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``directory`` except its ``card.json``."""
    return {p.relative_to(directory).as_posix(): _sha256(p) for p in sorted(directory.rglob("*"))
            if p.is_file() and p.relative_to(directory).as_posix() != "card.json"}


def _relative_name(name: str, where) -> str:
    """``name`` checked to be a relative path that stays inside the model directory ``where``."""
    parts = Path(str(name)).parts
    if not parts or Path(str(name)).is_absolute() or ".." in parts:
        raise ModelDirError(f"model {str(where)!r}: file name {name!r} must be a relative path inside the directory")
    return str(name)


def json_default(o):
    """``json.dumps(..., default=json_default)``: numpy scalars and arrays as plain numbers and
    lists; anything else is a ``TypeError`` (the json module's protocol), so a card never holds a
    silently stringified object."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {o!r}")


def load_card(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``card.json`` of a model directory (format, required keys)."""
    path = Path(path)
    if not path.is_dir():
        raise ModelDirError(f"no model directory at {str(path)!r}")
    cf = path / "card.json"
    if not cf.is_file():
        raise ModelDirError(f"{str(path)!r} has no card.json: not a mambah model directory (or a corrupt one)")
    try:
        card = json.loads(cf.read_text())
    except json.JSONDecodeError as e:
        raise ModelDirError(f"{cf} is not valid JSON ({e})") from None
    if not isinstance(card, dict):
        raise ModelDirError(f"{cf} does not hold a JSON object")
    fmt = card.get("format")
    if fmt != CARD_FORMAT:
        raise ModelDirError(
            f"{str(path)!r} has model format {fmt!r}, this mambah ({__version__}) reads format {CARD_FORMAT}; "
            "retrain the model or use the mambah version that wrote it"
            + (f" ({card['mambah_version']})" if "mambah_version" in card else "")
        )
    missing = [k for k in _REQUIRED_CARD_KEYS if k not in card]
    if missing:
        raise ModelDirError(f"{cf} lacks the key(s) {', '.join(missing)}")
    return card


def verify_model_dir(path: str | os.PathLike) -> dict[str, Any]:
    """Check that every file the card lists exists and matches its sha256; return the card."""
    path = Path(path)
    card = load_card(path)
    for name, digest in card["files"].items():
        f = path / _relative_name(name, path)
        if not f.is_file():
            raise ModelDirError(f"model {str(path)!r} is missing {name!r} (listed in card.json)")
        if _sha256(f) != digest:
            raise ModelDirError(f"model {str(path)!r}: {name!r} does not match the hash in card.json (corrupt or edited)")
    return card


def model_hash(path: str | os.PathLike) -> str:
    """A short content hash of a model directory (sha256 of its card's file hashes)."""
    return card_hash(load_card(path))


def card_hash(card: Mapping[str, Any]) -> str:
    """:func:`model_hash` of the directory whose card is ``card`` (16 hex digits)."""
    h = hashlib.sha256(json.dumps(card["files"], sort_keys=True).encode())
    return h.hexdigest()[:16]


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a model directory (no pickle)."""
    f = Path(path) / "arrays.npz"
    if not f.is_file():
        raise ModelDirError(f"model {str(path)!r} has no arrays.npz")
    try:
        with np.load(f, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError) as e:
        raise ModelDirError(f"cannot read {f} ({e})") from None


def load_network(path: str | os.PathLike, name: str):
    """Load ``<name>.keras`` from a model directory with Keras' safe mode on."""
    import keras

    f = Path(path) / f"{name}.keras"
    if not f.is_file():
        raise ModelDirError(f"model {str(path)!r} has no network {name!r} ({f.name})")
    try:
        return keras.saving.load_model(f, safe_mode=True, compile=False)
    except Exception as e:  # Keras raises many types for a corrupt archive
        raise ModelDirError(f"cannot load network {f} ({type(e).__name__}: {e})") from e


def list_models(models_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Cards of every model directory under ``models_dir`` (default: the shipped models)."""
    root = Path(models_dir) if models_dir is not None else default_models_dir()
    out = []
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        if d.is_dir() and (d / "card.json").is_file():
            try:
                card = load_card(d)
            except ModelDirError as e:
                log.warning("skipping %s: %s", d, e)
                continue
            card["path"] = str(d)
            out.append(card)
    return out


def resolve_model(name_or_path: str | os.PathLike, models_dir: str | os.PathLike | None = None) -> Path:
    """A model directory from a path or from a name under ``models_dir``; unknown names list the known ones."""
    p = Path(name_or_path)
    if p.is_dir():
        return p
    root = Path(models_dir) if models_dir is not None else default_models_dir()
    cand = root / str(name_or_path)
    if cand.is_dir():
        return cand
    known = [c["name"] if "name" in c else Path(c["path"]).name for c in list_models(root)]
    from mambah.errors import closest

    near = closest(str(name_or_path), known)
    raise ModelDirError(
        f"no model {str(name_or_path)!r} (neither a directory nor a model under {str(root)!r}); "
        f"available: {', '.join(known) or '(none)'}" + (f"; did you mean {', '.join(near)}?" if near else "")
    )
