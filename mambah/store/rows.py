"""A batch as the rows of the store: the checks and conversions that the store and the spool share.

:func:`prepare_tables` checks a :class:`~mambah.batch.Batch`'s tables against the schema (column
names, dtypes, batch ids, unique keys) and returns them in schema order; :func:`batch_row` is its
``batches`` row (the provenance). :func:`disk_full` recognises a write that failed for lack of
room, and :func:`disk_full_message` says so. Both :class:`~mambah.store.store.Store` (in-process
writes) and :mod:`mambah.store.spool` (Dask workers' Parquet files) use them; this module imports
neither.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import errno
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mambah._version import __version__
from mambah.errors import StoreError
from mambah.store import schema as S

__all__ = ["KEYS", "BatchValidationError", "prepare_tables", "batch_row", "disk_full", "disk_full_message",
           "dumps", "first_line"]

#: The key columns of every table, in order (also the order of reads).
KEYS: dict[str, tuple[str, ...]] = {
    "batches": ("batch",),
    "events": ("batch", "event"),
    "mc_particles": ("batch", "index"),
    "mc_vertices": ("batch", "index"),
    "particles": ("batch", "index"),
    "vertices": ("batch", "index"),
    "pid_variations": ("batch", "particle", "member"),
    "models": ("name", "version"),
    "mambah_meta": ("key",),
}


class BatchValidationError(StoreError):
    """A batch's tables do not match the schema (missing, extra or wrongly typed columns)."""


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, frozenset)):
        return sorted(o, key=str)
    if isinstance(o, (Path, _dt.date)):
        return str(o)
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    return repr(o)


def dumps(obj: Any) -> str:
    """JSON text of ``obj`` (keys sorted; numpy values, sets, paths, dates and dataclasses made plain)."""
    return json.dumps(obj, default=_json_default, sort_keys=True)


# ----------------------------------------------------------------------------------------------
# dtype checks
# ----------------------------------------------------------------------------------------------
def _cast_needed(table: str, col: str, series: pd.Series, want: str, batch_id: int) -> bool:
    """Whether ``series`` must be cast to ``want``; raise when it is of the wrong kind."""
    src = series.dtype
    dst = np.dtype(want)
    if not isinstance(src, np.dtype) or src.kind not in "biuf":
        raise BatchValidationError(
            f"batch {batch_id}: column {table}.{col} has dtype {src}, expected {want} (a numpy numeric dtype)"
        )
    if src == dst:
        return False
    ok = {"f": "biuf", "i": "biu", "b": "b"}[dst.kind]
    if src.kind not in ok:
        raise BatchValidationError(
            f"batch {batch_id}: column {table}.{col} has dtype {src}, expected {want}"
            + (" (cast explicitly if the values are whole numbers)" if src.kind == "f" else "")
        )
    if dst.kind == "i" and len(series) and src.kind in "iu":
        info = np.iinfo(dst)
        lo, hi = series.min(), series.max()
        if lo < info.min or hi > info.max:
            raise BatchValidationError(
                f"batch {batch_id}: column {table}.{col} ({src}) holds values in [{lo}, {hi}] that do not fit {want}"
            )
    return True


# ----------------------------------------------------------------------------------------------
# a full disk
# ----------------------------------------------------------------------------------------------
#: errno values that mean "no room to write": ENOSPC, EDQUOT (quota) and EFBIG (a file-size limit,
#: ``ulimit -f``, or the file system's largest file)
_NO_ROOM = {errno.ENOSPC: "disk full", errno.EFBIG: "the file size limit was reached"}
if hasattr(errno, "EDQUOT"):
    _NO_ROOM[errno.EDQUOT] = "disk quota exceeded"
#: the drivers' texts for the same conditions (duckdb: IOException with the strerror text;
#: sqlite3: SQLITE_FULL; PostgreSQL: SQLSTATE 53100 disk_full, "could not extend file")
_NO_ROOM_TEXT = (
    ("no space left on device", "disk full"),
    ("database or disk is full", "disk full"),
    ("could not extend file", "disk full"),
    ("disk quota exceeded", "disk quota exceeded"),
    ("file too large", "the file size limit was reached"),
)


def disk_full(exc: BaseException) -> tuple[str, str] | None:
    """``(what, reason)`` if ``exc`` (or an exception it wraps) says the disk is full, else None.

    Recognises ``OSError`` with errno ENOSPC, EDQUOT or EFBIG (a file-size limit counts as a
    full disk: nothing more fits), psycopg's ``DiskFull`` (SQLSTATE 53100) and the drivers'
    messages ("No space left on device", sqlite's "database or disk is full", PostgreSQL's
    "could not extend file", "File too large").
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _NO_ROOM:
            return _NO_ROOM[e.errno], e.strerror or os.strerror(e.errno)
        if type(e).__name__ == "DiskFull" or getattr(e, "sqlstate", None) == "53100":
            return "disk full", first_line(e)
        text_ = str(e).lower()
        for needle, what in _NO_ROOM_TEXT:
            if needle in text_:
                return what, first_line(e)
        todo += [getattr(e, "orig", None), e.__cause__, e.__context__]
    return None


def first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def disk_full_message(full: tuple[str, str], batch_id: int, where: str, *, rolled_back: bool = True) -> str:
    """The message of a batch that failed for lack of room (see :func:`disk_full`)."""
    what, reason = full
    fix = "raise the file size limit (ulimit -f)" if what.startswith("the file size") else "free space"
    done = ("the batch was rolled back, nothing of it is in the store" if rolled_back
            else "nothing of the batch is in the store")
    return f"{what} while writing batch {batch_id} to {where} ({reason}); {done}; {fix} and rerun with --resume"


# ----------------------------------------------------------------------------------------------
# a batch as rows
# ----------------------------------------------------------------------------------------------
def prepare_tables(batch) -> dict[str, pd.DataFrame]:
    """Check every table of ``batch`` against the schema; its data tables with the columns in
    schema order and the dtypes of :data:`~mambah.store.schema.COLUMNS`.

    Raises:
        BatchValidationError: see :meth:`Store.write_batch`.
    """
    bid = batch.id
    if not isinstance(bid, (int, np.integer)) or isinstance(bid, bool):
        raise BatchValidationError(f"the batch id must be an integer, not {bid!r}")
    unknown = [t for t in batch.tables if t not in S.COLUMNS]
    if unknown:
        raise BatchValidationError(
            f"batch {bid} has table(s) {', '.join(map(repr, unknown))} that the store does not know; "
            f"store tables: {', '.join(S.COLUMNS)} (keep scratch data in batch.arrays)"
        )
    out = {}
    for name in S.DATA_TABLES:
        if name not in batch.tables:
            continue
        df = batch.tables[name]
        if not isinstance(df, pd.DataFrame):
            raise BatchValidationError(f"batch {bid}: table {name!r} is a {type(df).__name__}, not a pandas DataFrame")
        expected = S.COLUMNS[name]
        have = [str(c) for c in df.columns]
        missing = [c for c in expected if c not in have]
        extra = [c for c in have if c not in expected]
        if missing or extra or len(set(have)) != len(have):
            parts = []
            if missing:
                parts.append(f"lacks column(s) {', '.join(missing)}")
            if extra:
                parts.append(f"has unexpected column(s) {', '.join(extra)}")
            if len(set(have)) != len(have):
                parts.append("has duplicated column names")
            raise BatchValidationError(
                f"batch {bid}: table {name!r} " + " and ".join(parts)
                + f"; expected columns: {', '.join(expected)}"
            )
        casts = {c: d for c, d in expected.items() if _cast_needed(name, c, df[c], d, bid)}
        part = df[list(expected)]
        if casts:
            part = part.astype(casts)
        b = part["batch"].to_numpy()
        if len(b) and not (b == bid).all():
            bad = np.unique(b[b != bid])[:5].tolist()
            raise BatchValidationError(f"batch {bid}: table {name!r} has rows with batch = {bad} (must all be {bid})")
        key = KEYS[name][1:]
        if len(key) == 1:
            keys = part[key[0]].to_numpy()
        else:  # (particle, member) of pid_variations: one int64 per pair (member < 2**15)
            keys = part[key[0]].to_numpy().astype(np.int64) << 16 | part[key[1]].to_numpy().astype(np.int64)
        if len(keys) > 1 and not (keys[1:] > keys[:-1]).all() and not pd.Index(keys).is_unique:
            k = part[list(key)]
            dup = k[k.duplicated()].drop_duplicates().head(5).to_records(index=False).tolist()
            raise BatchValidationError(f"batch {bid}: table {name!r} has duplicated {', '.join(key)} value(s) "
                                       f"{[d[0] if len(key) == 1 else d for d in dup]}")
        out[name] = part
    return out


def batch_row(batch) -> dict[str, Any]:
    """The ``batches`` row of ``batch`` (its provenance; ``created`` is now, UTC)."""
    info = dict(batch.info)
    timings = info.pop("timings", {})
    models = info.pop("models", {})
    return {
        "batch": int(batch.id),
        "production": str(info.get("production", "") or ""),
        "seed": int(batch.seed),
        "n_events": int(batch.n_events),
        "config": dumps(info),
        "models": dumps(models),
        "code_version": __version__,
        "status": "complete",
        "timings": dumps(timings),
        "created": _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None),
    }
