"""Reading and writing tables of data: ROOT (``file.root:tree``), Parquet and CSV.

Every data argument of the CLI goes through :func:`read_table` and :func:`write_table`, and
every check of user data through :func:`require_columns`, :func:`check_finite` and
:func:`check_weights`, so that all commands fail the same, clear way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mambah.errors import ConfigurationError, DataError, MissingColumnError

__all__ = ["read_table", "write_table", "split_spec", "require_columns", "check_finite", "check_weights",
           "parquet_columns"]

log = logging.getLogger(__name__)

_ROOT_SUFFIXES = (".root",)
_PARQUET_SUFFIXES = (".parquet", ".pq")
_CSV_SUFFIXES = (".csv", ".csv.gz", ".txt")
_TREE_CLASSES = ("TTree", "TNtuple", "ROOT::RNTuple")


def split_spec(spec: str | os.PathLike) -> tuple[Path, str | None]:
    """Split ``"file.root:tree"`` into ``(Path("file.root"), "tree")``; other files give ``None``."""
    s = os.fspath(spec)
    low = s.lower()
    for suffix in _ROOT_SUFFIXES:
        i = low.rfind(suffix + ":")
        if i >= 0:
            return Path(s[: i + len(suffix)]), s[i + len(suffix) + 1 :] or None
    return Path(s), None


def parquet_columns(spec: str | os.PathLike, needed: Sequence[str], selection: str | None = None) -> list[str] | None:
    """The columns to read from a Parquet file so that a big table is read in part: ``needed`` and the
    file's columns a pandas query ``selection`` names; None (read all) for another format or a missing file."""
    import re

    path, _ = split_spec(spec)
    if not str(path).lower().endswith((".parquet", ".pq")) or not path.exists():
        return None
    import pyarrow.parquet as pq

    names = set(pq.read_schema(path).names)
    words = [w for w in re.findall(r"[A-Za-z_]\w*", selection or "") if w in names]
    return list(dict.fromkeys([*needed, *words]))


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(_ROOT_SUFFIXES):
        return "root"
    if name.endswith(_PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(_CSV_SUFFIXES):
        return "csv"
    raise ConfigurationError(
        f"cannot tell the format of {str(path)!r}: use a .root (file.root:tree), .parquet or .csv file"
    )


def read_table(spec: str | os.PathLike, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a table from ROOT (``file.root:tree``), Parquet or CSV into a DataFrame.

    Args:
        spec: path, with ``:tree`` for ROOT files (optional when the file holds one TTree).
        columns: read only these columns; a :class:`~mambah.errors.MissingColumnError` lists the
            available ones when some are absent.
    """
    path, tree = split_spec(spec)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    kind = _kind(path)
    where = str(path) + (f":{tree}" if tree else "")
    if kind == "root":
        import uproot

        with uproot.open(path) as f:
            trees = sorted({k.split(";")[0] for k, c in f.classnames().items() if c.startswith(_TREE_CLASSES)})
            if tree is None:
                if len(trees) != 1:
                    raise ConfigurationError(
                        f"{str(path)!r} holds {len(trees)} trees ({', '.join(trees) or 'none'}): name one as {path}:TREE"
                    )
                tree = trees[0]
                where = f"{path}:{tree}"
            if tree not in trees:
                raise MissingColumnError([tree], trees, where=f"ROOT file {str(path)!r} (trees)")
            t = f[tree]
            available = list(t.keys())
            if columns is not None:
                _missing(columns, available, where)
            return t.arrays(list(columns) if columns is not None else None, library="pd")
    if kind == "parquet":
        import pyarrow.parquet as pq

        available = pq.read_schema(path).names
        if columns is not None:
            _missing(columns, available, where)
        return pd.read_parquet(path, columns=list(columns) if columns is not None else None)
    df = pd.read_csv(path)
    if columns is not None:
        _missing(columns, df.columns, where)
        df = df[list(columns)]
    return df


def _missing(columns: Sequence[str], available: Sequence[str], where: str) -> None:
    missing = [c for c in columns if c not in set(available)]
    if missing:
        raise MissingColumnError(missing, available, where=where)


def write_table(df: pd.DataFrame, spec: str | os.PathLike) -> Path:
    """Write ``df`` to ROOT (``file.root:tree``, default tree ``DecayTree``), Parquet or CSV.

    The file is written to a temporary name and renamed, so an interrupted write never leaves a
    half-written file under the final name.
    """
    path, tree = split_spec(spec)
    kind = _kind(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        if kind == "root":
            import uproot

            # an explicit TTree (uproot >= 5.7 writes RNTuples for plain assignment), which every
            # ROOT version reads
            data = {c: np.ascontiguousarray(df[c].to_numpy()) for c in df.columns}
            with uproot.recreate(tmp) as f:
                t = f.mktree(tree or "DecayTree", {c: a.dtype for c, a in data.items()})
                t.extend(data)
        elif kind == "parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def require_columns(df: pd.DataFrame, columns: Sequence[str], where: str = "the data") -> None:
    """Raise :class:`~mambah.errors.MissingColumnError` unless every column is in ``df``."""
    _missing(columns, list(df.columns), where)


def check_finite(
    df: pd.DataFrame, columns: Sequence[str], *, drop: bool = False, where: str = "the data"
) -> pd.DataFrame:
    """Refuse NaN/inf in ``columns`` (say how many rows, per column), or drop those rows if asked."""
    bad_any = np.zeros(len(df), dtype=bool)
    counts = {}
    for c in columns:
        bad = ~np.isfinite(df[c].to_numpy(dtype=float))
        if bad.any():
            counts[c] = int(bad.sum())
            bad_any |= bad
    if not counts:
        return df
    detail = ", ".join(f"{c}: {n}" for c, n in counts.items())
    if not drop:
        raise DataError(
            f"{where} has NaN or inf values in {int(bad_any.sum())} of {len(df)} rows ({detail}); "
            "clean them or pass drop_nonfinite=True (CLI: --drop-nonfinite) to drop those rows"
        )
    log.warning("dropping %d of %d rows of %s with NaN/inf (%s)", int(bad_any.sum()), len(df), where, detail)
    return df.loc[~bad_any]


def check_weights(w: np.ndarray, where: str = "the weights") -> np.ndarray:
    """Weights must be finite with a positive sum (negative sWeights are allowed)."""
    w = np.asarray(w, dtype=float)
    n_bad = int((~np.isfinite(w)).sum())
    if n_bad:
        raise DataError(f"{where}: {n_bad} of {len(w)} weights are NaN or inf")
    if not np.any(w):
        raise DataError(f"{where}: all {len(w)} weights are zero")
    s = float(w.sum())
    if s <= 0:
        raise DataError(f"{where}: the weights sum to {s:.6g} <= 0; a weighted sample needs a positive total")
    return w
