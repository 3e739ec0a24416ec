"""Backend-specific fast paths of the event store: bulk writes and columnar reads.

The :class:`~mambah.store.Store` does everything it can through SQLAlchemy (schema, metadata,
small statements) and hands the bulk data to one of these backends, which talk to the raw
DB-API connection *inside the same transaction*:

========== ===================================================== ==========================================
backend    bulk write                                            columnar read
========== ===================================================== ==========================================
DuckDB     register the DataFrame, ``INSERT … SELECT`` from it   ``execute(...).df()``
           (spooled Parquet: ``INSERT … SELECT … read_parquet``)
SQLite     ``executemany`` on the raw ``sqlite3`` connection     ``fetchall`` into column arrays
PostgreSQL ``COPY … FROM STDIN (FORMAT BINARY)``, rows encoded   ``COPY (SELECT …) TO STDOUT (FORMAT BINARY)``
           by numpy in one structured array per chunk             decoded by numpy (fixed-width rows)
========== ===================================================== ==========================================

Values are always passed as bound parameters (or as binary data); identifiers (table and column
names) come only from :mod:`mambah.store.schema` and are quoted.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy import BigInteger, Boolean, Integer, SmallInteger
from sqlalchemy.types import REAL, Float

from mambah.errors import StoreError

log = logging.getLogger(__name__)

__all__ = ["Backend", "DuckDBBackend", "SQLiteBackend", "PostgresBackend", "backend_for", "quote"]


def quote(name: str) -> str:
    """Quote an identifier taken from the schema (never from user input)."""
    if '"' in name:
        raise StoreError(f"invalid identifier {name!r}")
    return f'"{name}"'


def _column_list(columns: Sequence[str]) -> str:
    return ", ".join(quote(c) for c in columns)


class Backend:
    """What differs between databases. Subclasses implement :meth:`insert` and :meth:`select`."""

    name = "generic"
    #: create the primary keys / foreign keys / secondary indices of the data tables
    data_table_constraints = True

    def __init__(self, engine):
        self.engine = engine
        self.dialect = engine.dialect

    # -- helpers -------------------------------------------------------------------------------
    def compile(self, stmt) -> tuple[str, Any]:
        """SQL text and parameters of a SQLAlchemy statement, in the driver's paramstyle."""
        compiled = stmt.compile(dialect=self.dialect, compile_kwargs={"render_postcompile": True})
        sql = str(compiled)
        if compiled.positiontup is not None:
            params: Any = [compiled.params[k] for k in compiled.positiontup]
        else:
            params = dict(compiled.params)
        return sql, params

    def insert(self, driver, table, df: pd.DataFrame) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def insert_parquet(self, driver, table, path: str, columns: Sequence[str]) -> None:
        """Insert the rows of a Parquet file (a spooled table, :mod:`mambah.store.spool`).

        The file's columns are those of the schema; they are read in the order ``columns``.
        Generic path: read with pyarrow, then :meth:`insert`.
        """
        import pyarrow.parquet as pq

        df = pq.read_table(path, columns=list(columns)).to_pandas()
        self.insert(driver, table, df)

    def select(self, driver, stmt, columns: Sequence[str]) -> pd.DataFrame:  # pragma: no cover
        raise NotImplementedError


class DuckDBBackend(Backend):
    """DuckDB: the DataFrame is registered as a view and copied with one ``INSERT … SELECT``.

    The data tables carry no primary key, foreign key or ART index: DuckDB's documentation
    advises against them for bulk loading (every insert updates the index), and its per-row-group
    min/max zone maps already make the ``batch = …`` / ``event = …`` filters of navigation fast,
    because a batch is written contiguously. Uniqueness of a batch is guaranteed by the primary
    key of ``batches`` (written in the same transaction) and of its rows by the check of
    :meth:`Store.write_batch`.
    """

    name = "duckdb"
    data_table_constraints = False

    def insert(self, driver, table, df: pd.DataFrame) -> None:
        if len(df) == 0:
            return
        view = f"__mambah_in_{table.name}"
        driver.register(view, df)
        try:
            driver.execute(*self._insert_from(table, df.columns, sa.table(view)))
        except BaseException:
            try:  # the transaction is aborted: the view goes with the connection or the next register
                driver.unregister(view)
            except Exception:
                pass
            raise
        driver.unregister(view)

    def insert_parquet(self, driver, table, path: str, columns: Sequence[str]) -> None:
        """``INSERT … SELECT … FROM read_parquet(?)``: DuckDB reads the file itself, in parallel.

        ``read_parquet`` expands glob patterns; a path with a glob character goes through
        pyarrow instead (the file name is bound as a parameter either way, never spliced in).
        """
        if any(ch in path for ch in "*?[{"):
            return super().insert_parquet(driver, table, path, columns)
        driver.execute(*self._insert_from(table, columns, sa.func.read_parquet(sa.bindparam("path", str(path)))))

    def _insert_from(self, table, columns: Sequence[str], source) -> tuple[str, Any]:
        """SQL and parameters of ``INSERT INTO table (columns) SELECT columns FROM source``
        (SQLAlchemy Core: identifiers quoted by the dialect, values bound as parameters)."""
        cols = [str(c) for c in columns]
        stmt = sa.insert(table).from_select(cols, sa.select(*[sa.column(c) for c in cols]).select_from(source))
        return self.compile(stmt)

    def select(self, driver, stmt, columns: Sequence[str]) -> pd.DataFrame:
        sql, params = self.compile(stmt)
        return driver.execute(sql, params).df()


class SQLiteBackend(Backend):
    """SQLite: ``executemany`` of plain tuples on the raw ``sqlite3`` connection (WAL journal)."""

    name = "sqlite"
    read_chunk = 50_000

    def insert(self, driver, table, df: pd.DataFrame) -> None:
        if len(df) == 0:
            return
        cols = list(df.columns)
        sql = f"INSERT INTO {quote(table.name)} ({_column_list(cols)}) VALUES ({', '.join('?' * len(cols))})"
        chunk = 10_000  # the Python tuples of a chunk cost ~10x the numpy data
        cur = driver.cursor()
        try:
            for start in range(0, len(df), chunk):
                part = df.iloc[start : start + chunk]
                cur.executemany(sql, zip(*(part[c].to_numpy().tolist() for c in cols)))
        finally:
            cur.close()

    def select(self, driver, stmt, columns: Sequence[str]) -> pd.DataFrame:
        sql, params = self.compile(stmt)
        cur = driver.cursor()
        parts = []
        try:
            cur.execute(sql, params)
            while True:  # chunks bound the Python row tuples (~10x the size of the numbers)
                rows = cur.fetchmany(self.read_chunk)
                if not rows:
                    break
                parts.append(pd.DataFrame.from_records(rows, columns=list(columns), coerce_float=True))
        finally:
            cur.close()
        if not parts:
            return pd.DataFrame({c: [] for c in columns})
        return parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)


#: SQLAlchemy column type -> big-endian numpy dtype of PostgreSQL's binary COPY format
def _pg_binary_dtype(sa_type) -> np.dtype:
    if isinstance(sa_type, BigInteger):
        return np.dtype(">i8")
    if isinstance(sa_type, SmallInteger):
        return np.dtype(">i2")
    if isinstance(sa_type, Integer):
        return np.dtype(">i4")
    if isinstance(sa_type, Boolean):
        return np.dtype("u1")
    if isinstance(sa_type, REAL):
        return np.dtype(">f4")
    if isinstance(sa_type, Float):
        return np.dtype(">f8")
    raise StoreError(f"no binary COPY encoding for column type {sa_type!r}")


_PG_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_PG_TRAILER = struct.pack(">h", -1)


def _row_dtype(table, columns: Sequence[str]) -> np.dtype:
    fields = [("n", ">i2")]
    for i, c in enumerate(columns):
        fields += [(f"l{i}", ">i4"), (f"v{i}", _pg_binary_dtype(table.c[c].type))]
    return np.dtype(fields)  # packed: no alignment padding, as the COPY format wants


class PostgresBackend(Backend):
    """PostgreSQL: binary ``COPY`` in both directions, encoded and decoded by numpy.

    Every stored value has a fixed width (NaN is a value for ``real`` columns, not NULL), so a
    chunk of rows is one numpy structured array with big-endian fields: ``int16`` field count,
    then per column an ``int32`` length and the value (format of the PostgreSQL manual,
    "COPY — Binary Format"). Reads ``COALESCE`` the nullable float columns to NaN so that the
    rows coming back are fixed-width too.
    """

    name = "postgresql"
    chunk_rows = 1 << 14

    def insert(self, driver, table, df: pd.DataFrame) -> None:
        if len(df) == 0:
            return
        cols = list(df.columns)
        dt = _row_dtype(table, cols)
        sql = f"COPY {quote(table.name)} ({_column_list(cols)}) FROM STDIN (FORMAT BINARY)"
        widths = [dt[f"v{i}"].itemsize for i in range(len(cols))]
        with driver.cursor() as cur, cur.copy(sql) as copy:
            copy.write(_PG_HEADER)
            for start in range(0, len(df), self.chunk_rows):
                part = df.iloc[start : start + self.chunk_rows]
                rec = np.empty(len(part), dtype=dt)
                rec["n"] = len(cols)
                for i, c in enumerate(cols):
                    rec[f"l{i}"] = widths[i]
                    rec[f"v{i}"] = part[c].to_numpy()
                copy.write(rec.data)
            copy.write(_PG_TRAILER)

    def select(self, driver, stmt, columns: Sequence[str], table=None) -> pd.DataFrame:
        sql, params = self.compile(stmt)
        dt = _row_dtype(table, columns)
        chunks = bytearray()
        with driver.cursor() as cur, cur.copy(f"COPY ({sql}) TO STDOUT (FORMAT BINARY)", params or None) as copy:
            for data in copy:
                chunks += data
        buf = memoryview(chunks)
        if len(buf) < len(_PG_HEADER) + 2 or bytes(buf[:11]) != _PG_HEADER[:11]:
            raise StoreError("PostgreSQL returned an unexpected binary COPY stream")
        ext = struct.unpack(">i", buf[15:19])[0]
        start = 19 + ext
        body = len(buf) - start - 2
        if body % dt.itemsize:
            raise StoreError(
                "PostgreSQL returned rows of unexpected width (a NULL in a NOT NULL column or a type "
                f"other than the schema's in {table.name!r}); is this database written by mambah?"
            )
        rec = np.frombuffer(buf, dtype=dt, count=body // dt.itemsize, offset=start)
        out = {}
        for i, c in enumerate(columns):
            if len(rec) and not np.all(rec[f"l{i}"] == dt[f"v{i}"].itemsize):
                raise StoreError(f"column {table.name}.{c} holds NULL or values of an unexpected type")
            v = rec[f"v{i}"]
            out[c] = v.astype(v.dtype.newbyteorder("="))
        return pd.DataFrame(out, copy=False)


_DUCKDB_ATEXIT = False


def _drop_duckdb_type_constants() -> None:
    """At interpreter exit, drop the module-level ``DuckDBPyType`` constants of duckdb.

    With duckdb 2.0 (nanobind bindings), SQLAlchemy's ORM and pandas loaded together, those
    constants outlive nanobind's shutdown check, which then prints a screenful of "nanobind:
    leaked N instances!" after every command — a harmless but alarming message. Removing the
    references while the interpreter is still whole lets them be freed in order.
    """
    import sys

    for name in [m for m in list(sys.modules) if m.startswith(("duckdb", "_duckdb"))]:
        mod = sys.modules.get(name)
        for key, value in list(getattr(mod, "__dict__", {}).items()):
            if type(value).__name__ == "DuckDBPyType":
                try:
                    delattr(mod, key)
                except (AttributeError, TypeError):
                    pass


def backend_for(engine) -> Backend:
    global _DUCKDB_ATEXIT
    name = engine.dialect.name
    if name == "duckdb":
        if not _DUCKDB_ATEXIT:
            import atexit

            atexit.register(_drop_duckdb_type_constants)
            _DUCKDB_ATEXIT = True
        return DuckDBBackend(engine)
    if name == "sqlite":
        return SQLiteBackend(engine)
    if name == "postgresql":
        return PostgresBackend(engine)
    raise StoreError(f"unsupported database dialect {name!r}")
