"""The event store: batches of events in a relational database (DuckDB, SQLite or PostgreSQL).

A :class:`Store` writes a :class:`~mambah.batch.Batch` — the ``batches`` row and every data table —
in one transaction: after an exception or a killed process the batch is in the store completely
or not at all, and the ``batches`` row is the commit marker. :meth:`Store.write_spooled` does the
same from the Parquet files a Dask worker spooled (:mod:`mambah.store.spool`). A full disk (or a
file-size limit) fails the batch whole with a :class:`~mambah.errors.StoreError` that says so. Reads return pandas DataFrames
through each backend's columnar fast path (see :mod:`mambah.store.backends`).

Example:
    >>> from mambah.store import Store                                   # doctest: +SKIP
    >>> with Store("duckdb:///databases/lb.duckdb") as store:
    ...     store.write_batch(batch)                     # atomic; a batch id is written once
    ...     mu = store.read("particles", columns=["px", "py", "pz", "pid_mu"],
    ...                     where={"pid": [13, -13]})
    ...     tree = store.decay_tree(batch=0, event=12)   # the MC decay tree of one event

Backends by URL: ``None`` (``databases/mambah.duckdb`` under the current directory),
``duckdb:///file.duckdb``, ``sqlite:///file.sqlite``, ``postgresql+psycopg://user@host:port/db``
(``postgresql://`` means psycopg 3). A plain path ending in ``.duckdb`` or ``.sqlite`` works too.

A Store holds one connection and is not thread-safe; open one per thread or process. A DuckDB file
can be open read-write in one process at a time (DuckDB's own rule): many writers need PostgreSQL.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy import func, inspect, literal_column, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, OperationalError

from mambah import extras
from mambah._version import __version__
from mambah.errors import (BatchExistsError, ConfigurationError, MambahError, OptionalDependencyError, SchemaVersionError,
                           StoreError, closest)
from mambah.store import schema as S
from mambah.store.backends import backend_for
from mambah.store.rows import KEYS, BatchValidationError, batch_row, disk_full, disk_full_message, prepare_tables
from mambah.store.rows import dumps as _dumps
from mambah.store.rows import first_line as _first_line
from mambah.store.spool import read_spool

__all__ = ["Store", "normalise_url", "DEFAULT_URL", "BatchValidationError", "KEYS", "prepare_tables", "batch_row",
           "disk_full", "disk_full_message"]

log = logging.getLogger(__name__)

#: Where the default store lives, relative to the current directory.
DEFAULT_PATH = Path("databases") / "mambah.duckdb"
DEFAULT_URL = f"duckdb:///{DEFAULT_PATH.as_posix()}"

_TABLES = {t.name: t for t in S.Base.metadata.sorted_tables}
_SUPPORTED = ("duckdb", "sqlite", "postgresql")
_PG_LOCK_KEY = 0x6D616D626168  # "mambah": serialises schema creation between writers


# ----------------------------------------------------------------------------------------------
# URLs
# ----------------------------------------------------------------------------------------------
def normalise_url(url: str | os.PathLike | URL | None) -> URL:
    """The SQLAlchemy URL of a store: defaults, plain paths and ``postgresql://`` resolved.

    Raises:
        StoreError: an unknown scheme (the supported ones are listed) or an unparsable URL.
    """
    if url is None:
        url = DEFAULT_URL
    if isinstance(url, os.PathLike) or (isinstance(url, str) and "://" not in url):
        path = Path(url)
        suffix = path.suffix.lower()
        if suffix in (".duckdb", ".ddb"):
            url = f"duckdb:///{path.as_posix()}"
        elif suffix in (".sqlite", ".sqlite3", ".db"):
            url = f"sqlite:///{path.as_posix()}"
        else:
            raise StoreError(
                f"{str(url)!r} is neither a database URL nor a .duckdb/.sqlite file; use e.g. "
                "duckdb:///databases/mambah.duckdb, sqlite:///file.sqlite or "
                "postgresql+psycopg://user@host:5432/db"
            )
    try:
        u = make_url(url) if not isinstance(url, URL) else url
    except ArgumentError as e:
        raise StoreError(f"cannot parse the database URL {str(url)!r} ({e})") from None
    backend, _, driver = u.drivername.partition("+")
    if backend == "postgres":
        backend = "postgresql"
    if backend not in _SUPPORTED:
        raise StoreError(
            f"unknown database URL scheme {u.drivername!r} in {u.render_as_string(hide_password=True)!r}; "
            f"supported: duckdb:///FILE, sqlite:///FILE, postgresql+psycopg://USER@HOST:PORT/DB"
        )
    if backend == "postgresql":
        if driver not in ("", "psycopg"):
            raise StoreError(f"PostgreSQL driver {driver!r} is not supported; use postgresql+psycopg://...")
        u = u.set(drivername="postgresql+psycopg")
    elif backend == "sqlite":
        u = u.set(drivername="sqlite+pysqlite" if driver in ("", "pysqlite") else u.drivername)
    return u


def _describe(u: URL) -> str:
    return u.render_as_string(hide_password=True)


def _py(v: Any) -> Any:
    """A plain Python value for a bound parameter (drivers do not all adapt numpy scalars)."""
    if isinstance(v, np.generic):
        return v.item()
    return v


# ----------------------------------------------------------------------------------------------
# the store
# ----------------------------------------------------------------------------------------------
class Store:
    """A batch-grained event store (see the module docstring).

    Args:
        url: database URL or path (``None``: ``databases/mambah.duckdb`` under the current
            directory, created if absent).
        create: create the schema in an empty database (otherwise an empty database is an error).
        connect_timeout: seconds to wait for a PostgreSQL server before giving up.
        duckdb_memory_limit: DuckDB's buffer-manager limit (``SET memory_limit``; ``None`` keeps
            DuckDB's default of 80% of RAM). DuckDB otherwise keeps what it wrote cached, so a
            long production's memory grows with its size: measured peak RSS 1.84 GB after 10^6
            and 5.3 GB after 10^7 events of the reference channel without a limit, 1.67 GB and
            1.73 GB after 10^6 and 6x10^6 events with 512 MB (``benchmarks/simulate.py``).

    Raises:
        StoreError: a bad URL, a server that does not answer, a locked or damaged file, a database
            of another schema version (:class:`~mambah.errors.SchemaVersionError`).
        OptionalDependencyError: a PostgreSQL URL without the ``psycopg`` driver installed (the
            message gives ``pip install 'mambah[postgres]'``).
    """

    def __init__(self, url: str | os.PathLike | URL | None = None, *, create: bool = True,
                 connect_timeout: float = 5.0, duckdb_memory_limit: str | None = "512MB"):
        self._url = normalise_url(url)
        self.url = _describe(self._url)
        kind = self._url.get_backend_name()
        kwargs: dict[str, Any] = {}
        if kind == "postgresql":
            try:
                extras.psycopg()  # SQLAlchemy's own failure is a bare ModuleNotFoundError deep in create_engine
            except OptionalDependencyError as e:
                raise OptionalDependencyError(f"cannot open the store {self.url}: {e}") from e.__cause__
            kwargs["connect_args"] = {"connect_timeout": max(1, int(round(connect_timeout)))}
        if kind == "duckdb" and duckdb_memory_limit:
            kwargs["connect_args"] = {"config": {"memory_limit": str(duckdb_memory_limit)}}
        if kind != "postgresql" and self._url.database and self._url.database != ":memory:":
            path = Path(self._url.database)
            if not path.exists() and not create:
                raise StoreError(f"no store at {str(path)!r} ({self.url})")
            path.parent.mkdir(parents=True, exist_ok=True)
        self.engine = sa.create_engine(self._url, **kwargs)
        if kind == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        self.backend = backend_for(self.engine)
        try:
            self._conn = self.engine.connect()
        except OperationalError as e:
            self.engine.dispose()
            raise self._connect_error(e) from None
        except Exception as e:  # duckdb: locked or corrupt file
            self.engine.dispose()
            raise StoreError(f"cannot open the store {self.url}: {type(e).__name__}: {e}") from e
        try:
            self._init_schema(create)
        except DBAPIError as e:
            self.close()
            raise StoreError(f"cannot set up the mambah tables in {self.url}: {str(e.orig).strip()}") from e
        except BaseException:
            self.close()
            raise

    # -- connection / schema -------------------------------------------------------------------
    def _connect_error(self, e: Exception) -> StoreError:
        u = self._url
        if u.get_backend_name() == "postgresql":
            host = u.host or "localhost"
            port = u.port or 5432
            reason = str(getattr(e, "orig", e)).strip().splitlines()[0] if str(getattr(e, "orig", e)).strip() else type(e).__name__
            if "does not exist" in reason:
                hint = f"create it first (e.g. createdb -h {host} -p {port} {u.database})"
            elif "authentication" in reason or "password" in reason:
                hint = "check the user name and password in the URL"
            else:
                hint = "is the server running and reachable?"
            return StoreError(
                f"cannot connect to the PostgreSQL server at {host}:{port} (database {u.database!r}, "
                f"user {u.username!r}): {reason}; {hint}"
            )
        msg = f"cannot open the store {self.url}: {getattr(e, 'orig', e)}"
        if u.get_backend_name() == "duckdb" and "lock" in msg.lower():
            msg += ("\n  a DuckDB file is open for writing in one process at a time: close the other "
                    "process, or use PostgreSQL for many writers")
        return StoreError(msg)

    def _driver(self):
        """The raw driver connection of this store's connection (same transaction)."""
        return self._conn.connection.driver_connection

    def _init_schema(self, create: bool) -> None:
        meta = S.Meta.__table__
        with self._conn.begin():
            if self.backend.name == "postgresql":
                self._conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
            existing = set(inspect(self._conn).get_table_names())
            if meta.name in existing:
                row = self._conn.execute(select(meta.c.value).where(meta.c.key == "schema_version")).first()
                found = None if row is None else row[0]
                if found is not None and found.isdigit() and int(found) in S.UPGRADABLE:
                    self._upgrade(int(found), existing)
                    return
                if found != str(S.SCHEMA_VERSION):
                    raise SchemaVersionError(
                        f"the store {self.url} has schema version {found}, this mambah ({__version__}) "
                        f"uses schema version {S.SCHEMA_VERSION}; read it with the mambah version that "
                        "wrote it (see its mambah_meta table) or write into a new store"
                    )
                missing = [t for t in _TABLES if t not in existing]
                if missing:
                    raise StoreError(f"the store {self.url} lacks the table(s) {', '.join(missing)}; it is damaged")
                return
            ours = sorted(existing & set(_TABLES))
            if ours:
                raise StoreError(
                    f"{self.url} has table(s) {', '.join(ours)} but no mambah_meta table: not a mambah store"
                )
            if not create:
                raise StoreError(f"{self.url} holds no mambah store (and create=False)")
            self._create_tables()
            now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            self._conn.execute(sa.insert(meta), [
                {"key": "schema_version", "value": str(S.SCHEMA_VERSION)},
                {"key": "created_by", "value": f"mambah {__version__}"},
                {"key": "created", "value": now},
            ])
            log.info("created a mambah store (schema version %d) at %s", S.SCHEMA_VERSION, self.url)

    def _upgrade(self, found: int, existing: set) -> None:
        """Bring a store of schema version ``found`` (:data:`~mambah.store.schema.UPGRADABLE`) to
        :data:`~mambah.store.schema.SCHEMA_VERSION` by adding the tables that are new since then
        (inside the caller's transaction; the data already there is untouched)."""
        since = [v for v in sorted(S.UPGRADABLE) if v >= found]  # every version's additions from ``found`` on
        new = [t for v in since for t in S.UPGRADABLE[v] if t not in existing]
        missing = [t for t in _TABLES if t not in existing and t not in new]
        if missing:
            raise StoreError(f"the store {self.url} lacks the table(s) {', '.join(missing)}; it is damaged")
        self._create_tables(only=new)
        added = []
        quote = self._conn.dialect.identifier_preparer.quote  # the names are the schema's own, quoted
        for table, column, value in (c for v in since for c in S.UPGRADE_COLUMNS.get(v, ())):
            t, c = _TABLES[table], _TABLES[table].c[column]
            have = set(self._conn.execute(sa.select(sa.text("*")).select_from(t).limit(0)).keys())
            if column not in have:
                ddl = "ALTER TABLE {} ADD COLUMN {} {}".format(quote(table), quote(column),
                                                               c.type.compile(dialect=self._conn.dialect))
                self._conn.exec_driver_sql(ddl)
                if value is not None:  # the rows already there: bound as a parameter
                    self._conn.execute(sa.update(t).values({column: int(value)}))
                added.append(f"{table}.{column}")
        meta = S.Meta.__table__
        self._conn.execute(sa.update(meta).where(meta.c.key == "schema_version").values(value=str(S.SCHEMA_VERSION)))
        log.info("upgraded the store %s from schema version %d to %d (added the table(s) %s; the column(s) %s, unknown or not computed in the rows already there)",
                 self.url, found, S.SCHEMA_VERSION, ", ".join(new) or "none", ", ".join(added) or "none")

    def _create_tables(self, only: Sequence[str] | None = None) -> None:
        if self.backend.data_table_constraints:
            S.Base.metadata.create_all(self._conn, tables=None if only is None else [_TABLES[t] for t in only])
            return
        # DuckDB: data tables without PK/FK/indices (see DuckDBBackend)
        md = sa.MetaData()
        for name, t in _TABLES.items():
            if only is not None and name not in only:
                continue
            if name in S.DATA_TABLES:
                sa.Table(name, md, *[sa.Column(c.name, c.type, nullable=c.nullable) for c in t.columns])
            else:
                t.to_metadata(md)
        md.create_all(self._conn)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        conn = getattr(self, "_conn", None)
        if conn is not None:
            try:
                if conn.in_transaction():
                    conn.rollback()
                conn.close()
            finally:
                self._conn = None
                self.engine.dispose()
                # SQLAlchemy caches result processors keyed by the driver's type objects; with
                # duckdb those outlive nanobind's shutdown check (see backends._drop_duckdb_type_constants)
                for holder, name in ((self.engine, "_compiled_cache"), (self.engine.dialect, "_type_memos")):
                    cache = getattr(holder, name, None)
                    if hasattr(cache, "clear"):
                        cache.clear()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def _require_open(self):
        if self._conn is None:
            raise StoreError(f"the store {self.url} is closed")
        return self._conn

    # -- tables and columns --------------------------------------------------------------------
    @staticmethod
    def _table(name: str) -> sa.Table:
        try:
            return _TABLES[name]
        except (KeyError, TypeError):
            near = closest(str(name), _TABLES)
            raise StoreError(
                f"the store has no table {name!r}"
                + (f" (did you mean {', '.join(map(repr, near))}?)" if near else "")
                + f"; tables: {', '.join(t for t in _TABLES)}"
            ) from None

    @staticmethod
    def _columns(table: sa.Table, columns: Iterable[str] | None) -> list[str]:
        names = [c.name for c in table.columns]
        if columns is None:
            return names
        if isinstance(columns, str):
            columns = [columns]
        cols = list(columns)
        missing = [c for c in cols if c not in names]
        if missing:
            hints = [f"{m!r}: did you mean {', '.join(map(repr, closest(m, names, 3)))}?" for m in missing
                     if closest(m, names, 3)]
            raise StoreError(
                f"table {table.name!r} has no column{'s' if len(missing) > 1 else ''} "
                f"{', '.join(map(repr, missing))}; columns: {', '.join(names)}"
                + ("\n  " + "\n  ".join(hints) if hints else "")
            )
        return cols

    # -- writing -------------------------------------------------------------------------------
    def _prepare(self, batch) -> dict[str, pd.DataFrame]:
        return prepare_tables(batch)

    def _batch_row(self, batch) -> dict[str, Any]:
        return batch_row(batch)

    def write_batch(self, batch, if_exists: str = "error") -> bool:
        """Write ``batch`` (its ``batches`` row and every table) in one transaction.

        Args:
            batch: a :class:`~mambah.batch.Batch`; its tables must match
                :data:`~mambah.store.schema.COLUMNS` (a missing table is written as empty).
            if_exists: ``"error"`` (raise :class:`~mambah.errors.BatchExistsError`) or ``"skip"``
                when the batch id is already in the store.

        Returns:
            True if the batch was written, False if it was skipped.

        Raises:
            BatchValidationError: a table lacks a column, has an extra or wrongly typed one, rows
                of another batch or duplicated keys (checked before anything is written).
            BatchExistsError: the batch id is present and ``if_exists="error"``.
        """
        if if_exists not in ("error", "skip"):
            raise ConfigurationError(f"if_exists must be 'error' or 'skip', not {if_exists!r}")
        self._require_open()
        tables = self._prepare(batch)
        row = self._batch_row(batch)

        def insert(driver):
            for name, df in tables.items():
                self.backend.insert(driver, _TABLES[name], df)

        written = self._commit(row, insert, if_exists)
        if written:
            log.debug("wrote batch %d (%s) to %s", row["batch"], {k: len(v) for k, v in tables.items()}, self.url)
        return written

    def write_spooled(self, directory: str | os.PathLike, if_exists: str = "error") -> bool:
        """Write a batch that a worker spooled to Parquet files (:mod:`mambah.store.spool`).

        The ``batches`` row and every table are written in one transaction, as by
        :meth:`write_batch`; DuckDB reads the Parquet files itself (``INSERT … SELECT … FROM
        read_parquet(…)``), the other backends through pyarrow. The spool directory is left in
        place (the caller deletes it once the transaction is committed).

        Raises:
            StoreError: the directory is not a complete spooled batch (a half-written spool is
                never committed), or see :meth:`write_batch`.
        """
        if if_exists not in ("error", "skip"):
            raise ConfigurationError(f"if_exists must be 'error' or 'skip', not {if_exists!r}")
        self._require_open()
        sp = read_spool(directory)

        def insert(driver):
            for name, path in sp.files.items():
                self.backend.insert_parquet(driver, _TABLES[name], path, list(S.COLUMNS[name]))

        written = self._commit(sp.row, insert, if_exists)
        if written:
            log.debug("wrote spooled batch %d (%s) to %s", sp.batch, sp.rows, self.url)
        return written

    def _location(self) -> str:
        """Where the data of this store lives: the database file, or the URL of a server."""
        db = self._url.database
        if self.backend.name != "postgresql" and db and db != ":memory:":
            return str(Path(db).resolve())
        return self.url

    def _commit(self, row: dict[str, Any], insert, if_exists: str) -> bool:
        """The ``batches`` row and ``insert(driver)`` (the data tables) in one transaction."""
        conn = self._require_open()
        bt = S.BatchRow.__table__
        try:
            with conn.begin():
                present = conn.execute(select(bt.c.batch).where(bt.c.batch == row["batch"])).first()
                if present is not None:
                    if if_exists == "skip":
                        log.info("batch %d is already in %s: skipped", row["batch"], self.url)
                        return False
                    raise BatchExistsError(
                        f"batch {row['batch']} is already in the store {self.url}; delete it first "
                        "(mambah store delete --batch N) or write with if_exists='skip'"
                    )
                conn.execute(sa.insert(bt), row)
                insert(self._driver())
        except IntegrityError as e:  # a concurrent writer committed the same batch id first
            if if_exists == "skip" and self.has_batch(row["batch"]):
                return False
            if self.has_batch(row["batch"]):
                raise BatchExistsError(f"batch {row['batch']} is already in the store {self.url} (written concurrently)") from None
            raise StoreError(f"writing batch {row['batch']} to {self.url} failed: {e.orig}") from e
        except MambahError:
            raise
        except Exception as e:
            full = disk_full(e) or self._no_room(e)
            if full is None:
                raise
            raise StoreError(disk_full_message(full, row["batch"], self._location())) from e
        return True

    def _no_room(self, exc: BaseException) -> tuple[str, str] | None:
        """For a bare I/O error of a file store (SQLite says "disk I/O error" when a write hits
        the file-size limit): whether a file of the store reached ``ulimit -f`` or its disk is full."""
        text_ = str(exc).lower()
        if "i/o error" not in text_ and "io error" not in text_:
            return None
        db = self._url.database
        if self.backend.name == "postgresql" or not db or db == ":memory:":
            return None
        path = Path(db).resolve()
        reason = _first_line(exc)
        try:
            import resource

            limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        except (ImportError, OSError, ValueError):
            limit = -1
        if limit >= 0 and limit != getattr(resource, "RLIM_INFINITY", -1):
            for f in (path, *(path.with_name(path.name + x) for x in ("-wal", "-journal", ".wal"))):
                try:
                    size = f.stat().st_size
                except OSError:
                    continue
                if size + (1 << 16) >= limit:  # within a page or a WAL frame of the limit
                    return "the file size limit was reached", f"{reason}; {f.name} is {size} bytes, ulimit -f allows {limit}"
        try:
            st = os.statvfs(path.parent)
            if st.f_bavail * st.f_frsize < (1 << 20):
                return "disk full", f"{reason}; {st.f_bavail * st.f_frsize} bytes free on the device"
        except OSError:
            pass
        return None

    def write_batches(self, batches: Iterable, if_exists: str = "error") -> int:
        """Write several batches, each in its own transaction; returns how many were written."""
        return sum(bool(self.write_batch(b, if_exists=if_exists)) for b in batches)

    # -- batches -------------------------------------------------------------------------------
    def has_batch(self, batch_id: int) -> bool:
        bt = S.BatchRow.__table__
        with self._tx() as conn:
            return conn.execute(select(bt.c.batch).where(bt.c.batch == int(batch_id))).first() is not None

    def batch_ids(self) -> list[int]:
        """Ids of the batches in the store, ascending."""
        bt = S.BatchRow.__table__
        with self._tx() as conn:
            return [int(r[0]) for r in conn.execute(select(bt.c.batch).order_by(bt.c.batch))]

    def _tx(self):
        conn = self._require_open()
        return _Tx(conn)

    def _counts(self, table: str) -> pd.Series:
        t = _TABLES[table]
        with self._tx() as conn:
            rows = conn.execute(select(t.c.batch, func.count()).group_by(t.c.batch)).all()
        return pd.Series({int(b): int(n) for b, n in rows}, dtype="int64")

    def list_batches(self) -> pd.DataFrame:
        """One row per batch: provenance (without the JSON blobs) and the row count of each table."""
        df = self.read("batches", columns=["batch", "production", "seed", "n_events", "code_version",
                                           "status", "created"])
        for name in S.DATA_TABLES:
            counts = self._counts(name)
            df[f"n_{name}"] = df["batch"].map(counts).fillna(0).astype("int64")
        return df

    def batch_info(self, batch_id: int) -> dict[str, Any]:
        """The provenance of one batch: its ``batches`` row with the JSON columns decoded."""
        df = self.read("batches", where={"batch": int(batch_id)})
        if df.empty:
            raise StoreError(f"batch {batch_id} is not in the store {self.url}")
        row = df.iloc[0].to_dict()
        for k in ("config", "models", "timings"):
            row[k] = json.loads(row[k]) if row[k] else {}
        return row

    def event_channels(self, batches: Iterable[int] | int | None = None, production: str | None = None) -> pd.DataFrame:
        """The channel of every event of cocktail batches (a background cocktail,
        :func:`mambah.simulation.cocktail_pipeline`): columns ``batch``, ``event``, ``channel``,
        ``descriptor``, from the batches' provenance (each channel's events are a contiguous block
        of its batch, recorded in ``config["cocktail"]``; :func:`mambah.batch.event_channels`).
        Batches that are not cocktails are left out. Join it to ``read("events")`` on
        ``(batch, event)``."""
        from mambah.batch import event_channels

        where = {"production": production} if production is not None else None
        bt = self.read("batches", columns=["batch", "n_events", "config"], batches=batches, where=where)
        parts = []
        for b, n, cfg in bt.itertuples(index=False):
            info = json.loads(cfg) if cfg else {}
            ch = event_channels(info, int(n))
            if ch is None:
                continue
            names = np.array([str(r.get("descriptor", "")) for r in info["cocktail"]["channels"]], dtype=object)
            parts.append(pd.DataFrame({"batch": np.full(int(n), int(b), dtype=np.int64),
                                       "event": np.arange(int(n), dtype=np.int32), "channel": ch,
                                       "descriptor": names[ch]}))
        if not parts:
            return pd.DataFrame({"batch": np.zeros(0, np.int64), "event": np.zeros(0, np.int32),
                                 "channel": np.zeros(0, np.int16), "descriptor": np.zeros(0, object)})
        return pd.concat(parts, ignore_index=True)

    def summary(self) -> dict[str, Any]:
        """Batches, events, rows per table, productions, code and model versions."""
        bt = self.read("batches", columns=["batch", "production", "n_events", "models", "code_version"])
        rows = {}
        for name in (*S.DATA_TABLES, "models"):
            t = _TABLES[name]
            with self._tx() as conn:
                rows[name] = int(conn.execute(select(func.count()).select_from(t)).scalar_one())
        used: dict[str, set] = {}
        unreadable = 0
        for blob in bt["models"]:
            try:
                m = json.loads(blob) if blob else {}
            except json.JSONDecodeError:
                unreadable += 1
                continue
            for name, v in (m.items() if isinstance(m, dict) else []):
                ver = v.get("version", v) if isinstance(v, dict) else v
                used.setdefault(str(name), set()).add(str(ver))
        if unreadable:
            log.warning("%d batch(es) of %s have a models column that is not JSON: left out of the model versions "
                        "of the summary", unreadable, self.url)
        return {
            "url": self.url,
            "backend": self.backend.name,
            "schema_version": S.SCHEMA_VERSION,
            "n_batches": int(len(bt)),
            "n_events": int(bt["n_events"].sum()) if len(bt) else 0,
            "rows": rows,
            "productions": {str(k): int(v) for k, v in bt["production"].value_counts().sort_index().items()},
            "code_versions": sorted(map(str, bt["code_version"].unique())),
            "model_versions": {k: sorted(v) for k, v in sorted(used.items())},
        }

    def delete_batches(self, ids: Iterable[int], *, missing_ok: bool = False) -> list[int]:
        """Delete batches (all their rows) in one transaction; returns the ids deleted.

        Raises:
            StoreError: some ids are not in the store (nothing is deleted) unless ``missing_ok``.
        """
        want = sorted({int(i) for i in ids})
        present = set(self.batch_ids())
        missing = [i for i in want if i not in present]
        if missing and not missing_ok:
            raise StoreError(
                f"batch(es) {missing[:20]} not in the store {self.url}; nothing deleted "
                f"({len(present)} batches present" + (f": {min(present)}..{max(present)})" if present else ")")
            )
        ids_ = [i for i in want if i in present]
        if not ids_:
            return []
        conn = self._require_open()
        with conn.begin():
            for chunk in range(0, len(ids_), 1000):
                part = ids_[chunk : chunk + 1000]
                for name in reversed(S.DATA_TABLES):
                    t = _TABLES[name]
                    conn.execute(sa.delete(t).where(t.c.batch.in_(part)))
                bt = S.BatchRow.__table__
                conn.execute(sa.delete(bt).where(bt.c.batch.in_(part)))
        log.info("deleted %d batch(es) from %s", len(ids_), self.url)
        return ids_

    # -- reading -------------------------------------------------------------------------------
    def _conditions(self, t: sa.Table, where) -> list:
        if where is None:
            return []
        items: list[tuple[str, str, Any]] = []
        if isinstance(where, Mapping):
            for col, v in where.items():
                if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) and v[0] in _OPS:
                    items.append((col, v[0], v[1]))
                elif isinstance(v, (list, set, frozenset, np.ndarray, pd.Index, pd.Series, range)):
                    items.append((col, "in", v))
                else:
                    items.append((col, "==", v))
        else:
            for cond in where:
                if not (isinstance(cond, (tuple, list)) and len(cond) == 3):
                    raise ConfigurationError(f"a filter is (column, op, value), not {cond!r}")
                items.append(tuple(cond))
        out = []
        for col, op, v in items:
            self._columns(t, [col])
            c = t.c[col]
            if op not in _OPS:
                raise ConfigurationError(f"unknown filter operator {op!r}; use one of {', '.join(_OPS)}")
            if op in ("in", "not in"):
                vals = [_py(x) for x in (v.tolist() if hasattr(v, "tolist") else list(v))]
                out.append(c.in_(vals) if op == "in" else c.not_in(vals))
            elif op == "between":
                lo, hi = v
                out.append(c.between(_py(lo), _py(hi)))
            else:
                out.append(_OPS[op](c, _py(v)))
        return out

    def read(self, table: str, columns: Sequence[str] | None = None, batches: Iterable[int] | int | None = None,
             where: Mapping | Sequence | None = None, *, ordered: bool = True) -> pd.DataFrame:
        """A table or a selection of it as a DataFrame, through the backend's columnar path.

        Args:
            table: one of ``batches, events, mc_particles, mc_vertices, particles, vertices, pid_variations,
                models``.
            columns: the columns to read (default all, in schema order).
            batches: a batch id or ids to read (default all).
            where: simple filters ANDed together: a mapping ``{column: value}`` (equality),
                ``{column: [v1, v2]}`` (IN), ``{column: (op, value)}`` with op one of
                ``== != < <= > >= in "not in" between``, or a list of ``(column, op, value)``.
            ordered: sort by the table's key (batch, index); False skips the sort.

        Data columns come back with the dtypes of :data:`~mambah.store.schema.COLUMNS`.
        """
        conn = self._require_open()
        t = self._table(table)
        cols = self._columns(t, columns)
        data = table in S.COLUMNS
        sel = []
        for c in cols:
            col = t.c[c]
            if data and self.backend.name == "postgresql" and col.nullable and isinstance(col.type, (sa.REAL, sa.Double)):
                nan = "'NaN'::real" if isinstance(col.type, sa.REAL) else "'NaN'::double precision"
                sel.append(func.coalesce(col, literal_column(nan)).label(c))
            else:
                sel.append(col)
        stmt = select(*sel)
        if batches is not None and "batch" in t.c:
            ids = [int(batches)] if isinstance(batches, (int, np.integer)) else [int(b) for b in batches]
            stmt = stmt.where(t.c.batch.in_(ids)) if len(ids) != 1 else stmt.where(t.c.batch == ids[0])
        for cond in self._conditions(t, where):
            stmt = stmt.where(cond)
        if ordered:
            stmt = stmt.order_by(*[t.c[k] for k in KEYS[table]])
        with _Tx(conn):
            if data:
                if self.backend.name == "postgresql":
                    df = self.backend.select(self._driver(), stmt, cols, table=t)
                else:
                    df = self.backend.select(self._driver(), stmt, cols)
            else:
                df = pd.DataFrame(conn.execute(stmt).all(), columns=cols)
        if data:
            want = {c: S.COLUMNS[table][c] for c in cols}
            try:
                df = df.astype(want)
            except (ValueError, TypeError) as e:
                raise StoreError(f"table {table!r} of {self.url} holds values that do not fit the schema ({e})") from e
        return df.reset_index(drop=True)

    def count(self, table: str, batches: Iterable[int] | int | None = None) -> int:
        """Number of rows of ``table`` (optionally of some batches)."""
        t = self._table(table)
        stmt = select(func.count()).select_from(t)
        if batches is not None:
            ids = [int(batches)] if isinstance(batches, (int, np.integer)) else [int(b) for b in batches]
            stmt = stmt.where(t.c.batch.in_(ids))
        with self._tx() as conn:
            return int(conn.execute(stmt).scalar_one())

    # -- decay-tree navigation -----------------------------------------------------------------
    @staticmethod
    def _tree_table(table: str) -> str:
        if table not in ("mc_particles", "particles"):
            raise StoreError(f"decay trees live in 'mc_particles' or 'particles', not {table!r}")
        return table

    def _one(self, table: str, batch: int, index: int) -> pd.DataFrame:
        df = self.read(table, batches=batch, where={"index": int(index)})
        if df.empty:
            raise StoreError(f"no row with index {index} in batch {batch} of {table!r} in {self.url}")
        return df

    def mother(self, batch: int, index: int, table: str = "mc_particles") -> pd.DataFrame:
        """The mother of particle ``index`` (a one-row DataFrame; empty for a head of tree)."""
        row = self._one(self._tree_table(table), batch, index)
        m = int(row["mother"].iloc[0])
        if m < 0:
            return row.iloc[:0]
        return self.read(table, batches=batch, where={"index": m})

    def daughters(self, batch: int, index: int, table: str = "mc_particles") -> pd.DataFrame:
        """The direct daughters of particle ``index``, by index."""
        row = self._one(self._tree_table(table), batch, index)
        return self.read(table, batches=batch, where={"event": int(row["event"].iloc[0]), "mother": int(index)})

    def descendants(self, batch: int, index: int, table: str = "mc_particles", max_depth: int = 64) -> pd.DataFrame:
        """All descendants of particle ``index`` with their ``generation`` (1 = daughters).

        One query per generation (not per particle); sorted by generation, then index.
        """
        row = self._one(self._tree_table(table), batch, index)
        event = int(row["event"].iloc[0])
        out, frontier, gen = [], [int(index)], 0
        seen = {int(index)}
        while frontier:
            gen += 1
            if gen > max_depth:
                raise StoreError(f"the decay tree below {table}[{batch}, {index}] is deeper than {max_depth}: a cycle?")
            df = self.read(table, batches=batch, where={"event": event, "mother": frontier})
            df = df[~df["index"].isin(seen)]
            if df.empty:
                break
            df = df.assign(generation=np.int16(gen))
            out.append(df)
            frontier = df["index"].tolist()
            seen.update(frontier)
        if not out:
            empty = self.read(table, batches=batch, where={"index": -2})
            return empty.assign(generation=pd.Series(dtype="int16"))
        return pd.concat(out, ignore_index=True)

    def decay_tree(self, batch: int, event: int, table: str = "mc_particles") -> pd.DataFrame:
        """Every particle of one event with its ``depth`` in the decay tree (0 = head), by index."""
        df = self.read(self._tree_table(table), batches=batch, where={"event": int(event)})
        depth = np.zeros(len(df), dtype=np.int16)
        if len(df):
            pos = pd.Series(np.arange(len(df)), index=df["index"].to_numpy())
            mother_pos = df["mother"].map(pos).to_numpy()  # NaN: no mother in this event
            cur = mother_pos.copy()
            for _ in range(64):  # one vectorised step per generation
                has = ~np.isnan(cur)
                if not has.any():
                    break
                depth[has] += 1
                nxt = np.full_like(cur, np.nan)
                nxt[has] = mother_pos[cur[has].astype(np.int64)]
                cur = nxt
            else:
                raise StoreError(f"the decay tree of event {event} in batch {batch} has a cycle")
        return df.assign(depth=depth)

    def mc_truth(self, batch: int, particle_index: int | Sequence[int]) -> pd.DataFrame:
        """The MC particles matched to reconstructed particle(s), with a ``particle`` column.

        Particles without a match (``mc_particle == -1``) are absent from the result.
        """
        scalar = isinstance(particle_index, (int, np.integer))
        idx = [int(particle_index)] if scalar else [int(i) for i in particle_index]
        reco = self.read("particles", columns=["index", "mc_particle"], batches=batch, where={"index": idx})
        if scalar and reco.empty:
            raise StoreError(f"no row with index {particle_index} in batch {batch} of 'particles' in {self.url}")
        reco = reco[reco["mc_particle"] >= 0]
        mc = self.read("mc_particles", batches=batch, where={"index": reco["mc_particle"].unique().tolist()})
        out = reco.rename(columns={"index": "particle"}).merge(mc, left_on="mc_particle", right_on="index")
        return out.drop(columns=["mc_particle"]).sort_values("particle", ignore_index=True)

    def reconstructed_as(self, batch: int, mc_index: int) -> pd.DataFrame:
        """The reconstructed particles whose truth is MC particle ``mc_index``."""
        row = self._one("mc_particles", batch, mc_index)
        return self.read("particles", batches=batch,
                         where={"event": int(row["event"].iloc[0]), "mc_particle": int(mc_index)})

    # -- models and metadata -------------------------------------------------------------------
    def register_model(self, card: Mapping[str, Any] | str | os.PathLike, path: str | os.PathLike | None = None) -> None:
        """Record a model version in the ``models`` table (replacing the same name and version).

        Args:
            card: a model card (dict) or a model directory (its ``card.json`` is read).
            path: where the model lives (default: the directory given as ``card``).
        """
        from mambah.modeldir import load_card, model_hash

        if not isinstance(card, Mapping):
            path = card if path is None else path
            card = load_card(card)
        missing = [k for k in ("name", "kind") if k not in card]
        if missing:
            raise StoreError(f"a model card needs {', '.join(missing)} to be registered")
        digest = card.get("hash", "")
        if not digest and path is not None and Path(path, "card.json").is_file():
            digest = model_hash(path)
        row = {
            "name": str(card["name"]),
            "version": str(card.get("version", "1")),
            "kind": str(card["kind"]),
            "species": str(card.get("species", "") or ""),
            "conditions": _dumps(card.get("conditions", [])),
            "targets": _dumps(card.get("targets", [])),
            "metrics": _dumps(card.get("metrics", {})),
            "path": "" if path is None else str(path),
            "hash": str(digest),
            "created": _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None),
        }
        mt = S.ModelRow.__table__
        conn = self._require_open()
        with conn.begin():
            conn.execute(sa.delete(mt).where((mt.c.name == row["name"]) & (mt.c.version == row["version"])))
            conn.execute(sa.insert(mt), row)

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        mt = S.Meta.__table__
        with self._tx() as conn:
            row = conn.execute(select(mt.c.value).where(mt.c.key == str(key))).first()
        return default if row is None else row[0]

    def set_meta(self, key: str, value: Any) -> None:
        """Store a key/value fact about the database (values are stored as text)."""
        if key == "schema_version":
            raise StoreError("schema_version is managed by mambah and cannot be set")
        mt = S.Meta.__table__
        conn = self._require_open()
        with conn.begin():
            conn.execute(sa.delete(mt).where(mt.c.key == str(key)))
            conn.execute(sa.insert(mt), {"key": str(key), "value": value if isinstance(value, str) else _dumps(value)})

    # -- exports -------------------------------------------------------------------------------
    def export_parquet(self, out: str | os.PathLike, **kw) -> list[Path]:
        """One Parquet file per table in directory ``out`` (see :func:`mambah.store.export.export_parquet`)."""
        from mambah.store.export import export_parquet

        return export_parquet(self, out, **kw)

    def export_root(self, out: str | os.PathLike, **kw) -> Path:
        """One TTree per table in ROOT file ``out`` (see :func:`mambah.store.export.export_root`)."""
        from mambah.store.export import export_root

        return export_root(self, out, **kw)

    def candidates(self, **kw) -> pd.DataFrame:
        """The flat per-candidate ntuple (see :func:`mambah.store.ntuple.candidate_ntuple`)."""
        from mambah.store.ntuple import candidate_ntuple

        return candidate_ntuple(self, **kw)

    def export_ntuple(self, out: str | os.PathLike, **kw) -> Path:
        """Write the flat ntuple (see :func:`mambah.store.ntuple.export_ntuple`)."""
        from mambah.store.ntuple import export_ntuple

        return export_ntuple(self, out, **kw)


class _Tx:
    """Run inside the connection's transaction, beginning (and committing) one if none is open."""

    def __init__(self, conn):
        self.conn = conn
        self.tx = None

    def __enter__(self):
        if not self.conn.in_transaction():
            self.tx = self.conn.begin()
        return self.conn

    def __exit__(self, et, ev, tb):
        if self.tx is not None:
            if et is None:
                self.tx.commit()
            else:
                self.tx.rollback()
        return False


_OPS = {
    "==": lambda c, v: c == v,
    "!=": lambda c, v: c != v,
    "<": lambda c, v: c < v,
    "<=": lambda c, v: c <= v,
    ">": lambda c, v: c > v,
    ">=": lambda c, v: c >= v,
    "in": None,
    "not in": None,
    "between": None,
}


def _sqlite_pragmas(dbapi_connection, connection_record) -> None:
    cur = dbapi_connection.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer; survives SIGKILL
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
    finally:
        cur.close()
