"""Export the store's tables: Parquet (one file per table, or a dataset of one file per batch)
and ROOT (one TTree per table, written with uproot).

Tables are streamed in chunks of whole batches, so an export needs memory for one chunk, not
for the store. Files are written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mambah.errors import ConfigurationError
from mambah.store import schema as S

__all__ = ["export_parquet", "export_root", "write_tree", "TABLES"]

log = logging.getLogger(__name__)

#: Tables exported by default (the data tables, then the provenance and models tables).
TABLES: tuple[str, ...] = ("batches", *S.DATA_TABLES, "models")


_JSON_COLUMNS = {"config", "models", "timings", "conditions", "targets", "metrics"}


def _tables(tables: Iterable[str] | None) -> list[str]:
    if tables is None:
        return list(TABLES)
    tables = [tables] if isinstance(tables, str) else list(tables)
    bad = [t for t in tables if t not in TABLES]
    if bad:
        raise ConfigurationError(f"cannot export table(s) {', '.join(map(repr, bad))}; tables: {', '.join(TABLES)}")
    return tables


def _batch_chunks(store, batches: Iterable[int] | None, chunk_events: int) -> list[list[int]]:
    lst = store.read("batches", columns=["batch", "n_events"], batches=batches)
    chunks, cur, size = [], [], 0
    for b, n in lst.itertuples(index=False):
        cur.append(int(b))
        size += int(n)
        if size >= chunk_events:
            chunks.append(cur)
            cur, size = [], 0
    if cur:
        chunks.append(cur)
    return chunks


def _selected(batches):
    if batches is None:
        return None
    return [int(batches)] if isinstance(batches, (int, np.integer)) else [int(b) for b in batches]


def export_parquet(store, out: str | os.PathLike, *, tables: Sequence[str] | None = None,
                   batches: Iterable[int] | None = None, dataset: bool = False,
                   chunk_events: int = 500_000) -> list[Path]:
    """Write tables as Parquet into directory ``out``.

    Args:
        tables: which tables (default: all of :data:`TABLES`).
        batches: which batches (default: all).
        dataset: write ``out/<table>/batch=<id>.parquet`` (one file per batch, readable as one
            dataset with ``pandas.read_parquet(out / table)``) instead of ``out/<table>.parquet``.
    Returns:
        The files or directories written.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    batches = _selected(batches)
    chunks = _batch_chunks(store, batches, chunk_events)
    written = []
    for table in _tables(tables):
        if table in S.DATA_TABLES and dataset:
            final = out / table
            tmpdir = out / f".{table}.tmp{os.getpid()}"
            shutil.rmtree(tmpdir, ignore_errors=True)
            tmpdir.mkdir()
            try:
                for chunk in chunks:
                    df = store.read(table, batches=chunk)
                    for b, part in df.groupby("batch", sort=True):
                        part.to_parquet(tmpdir / f"batch={int(b)}.parquet", index=False)
                if final.exists():
                    shutil.rmtree(final)
                os.replace(tmpdir, final)
            finally:
                shutil.rmtree(tmpdir, ignore_errors=True)
            written.append(final)
            continue
        final = out / f"{table}.parquet"
        tmp = out / f".{table}.parquet.tmp{os.getpid()}"
        try:
            if table in S.DATA_TABLES:
                schema = pa.Schema.from_pandas(store.read(table, where={"batch": -1}), preserve_index=False)
                with pq.ParquetWriter(tmp, schema) as w:
                    for chunk in chunks:
                        w.write_table(pa.Table.from_pandas(store.read(table, batches=chunk), schema=schema,
                                                           preserve_index=False))
            else:
                store.read(table, batches=batches).to_parquet(tmp, index=False)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                tmp.unlink()
        written.append(final)
    log.info("exported %s to %s", ", ".join(_tables(tables)), out)
    return written


def _root_columns(df) -> dict[str, np.ndarray]:
    """Numeric and boolean columns only: TTrees written by uproot hold no strings."""
    out = {}
    for c in df.columns:
        a = df[c].to_numpy()
        if a.dtype.kind in "biuf":
            out[c] = a
        elif a.dtype.kind == "M":
            out[c] = a.astype("datetime64[s]").astype(np.int64)  # seconds since 1970 (UTC)
    return out


def write_tree(f, name: str, chunks) -> int:
    """Write column dicts (one per chunk) as one TTree, keeping the column order; returns rows.

    ``mktree`` declares the branches from the first chunk (so an empty table still gets its
    tree) and ``extend`` appends each chunk as a basket.
    """
    tree, n = None, 0
    for data in chunks:
        if tree is None:
            tree = f.mktree(name, {c: a.dtype for c, a in data.items()})
        rows = len(next(iter(data.values()))) if data else 0
        if rows:
            tree.extend(data)
            n += rows
    return n


def export_root(store, out: str | os.PathLike, *, tables: Sequence[str] | None = None,
                batches: Iterable[int] | None = None, chunk_events: int = 500_000) -> Path:
    """Write one TTree per table into the ROOT file ``out``.

    The ``batches`` and ``models`` trees hold their numeric columns (``created`` as seconds since
    1970); their JSON columns (config, models, timings, conditions, targets, metrics) are stored
    beside them as one ``TObjString`` each, ``batches_json`` and ``models_json`` (a JSON list of
    rows).
    """
    import uproot

    out = Path(out)
    if not out.name.lower().endswith(".root"):
        raise ConfigurationError(f"a ROOT export needs a .root file name, not {str(out)!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    batches = _selected(batches)
    chunks = _batch_chunks(store, batches, chunk_events)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        with uproot.recreate(tmp) as f:
            for table in _tables(tables):
                if table in S.DATA_TABLES:
                    write_tree(f, table, (_root_columns(store.read(table, batches=c)) for c in chunks or [[]]))
                else:
                    df = store.read(table, batches=batches)
                    if "created" in df.columns:
                        df["created"] = pd.to_datetime(df["created"])
                    cols = _root_columns(df)
                    if cols:
                        write_tree(f, table, [cols])
                    rows = df.astype({c: str for c in df.columns if df[c].dtype.kind == "M"}).to_dict("records")
                    for row in rows:
                        for c in _JSON_COLUMNS.intersection(row):
                            try:
                                row[c] = json.loads(row[c]) if row[c] else None
                            except (TypeError, json.JSONDecodeError):
                                pass
                    f[f"{table}_json"] = json.dumps(rows, default=str)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    log.info("exported %s to %s", ", ".join(_tables(tables)), out)
    return out
