"""A full disk fails a batch whole, with a message that says so (issue 8).

The disk is never really filled: a subprocess writes under a small ``RLIMIT_FSIZE`` (with
SIGXFSZ ignored, a write past the limit fails with EFBIG, "File too large", which mambah treats
like a full disk), or the backend's bulk write is made to raise the drivers' own exceptions
with their disk-full messages.
"""

from __future__ import annotations

import errno
import sqlite3
import subprocess
import sys

import pytest

from mambah.errors import StoreError
from mambah.production import run_production
from mambah.simulation import standard_pipeline
from mambah.store import Store
from mambah.store import schema as S
from mambah.store.backends import Backend
from mambah.store.store import disk_full
from mambah.store.testing import synthetic_batch

LIMITED_WRITER = r"""
import os, resource, signal, sys
from mambah.errors import StoreError
from mambah.store import Store
from mambah.store.spool import write_spool
from mambah.store.testing import synthetic_batch

url, what = sys.argv[1], sys.argv[2]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
with Store(url) as st:
    st.write_batch(synthetic_batch(0, 300))
    path = url.split(":///", 1)[1]
    files = [path + x for x in ("", ".wal", "-wal", "-journal") if os.path.exists(path + x)]
    room = 300_000
    resource.setrlimit(resource.RLIMIT_FSIZE, (max(os.path.getsize(f) for f in files) + room,) * 2)
    try:
        if what == "store":
            st.write_batch(synthetic_batch(1, 20_000))
        else:
            write_spool(synthetic_batch(1, 20_000), sys.argv[3], digest="d")
    except StoreError as e:
        print(e)
        sys.exit(3)
"""


def _assert_only_batch_0(url):
    with Store(url) as st:
        assert st.batch_ids() == [0]
        for t in S.DATA_TABLES:
            assert set(st.read(t, columns=["batch"])["batch"]) <= {0}
        assert st.count("events") == 300 and st.count("mc_particles") == 300 * 7


@pytest.mark.parametrize("backend", ["duckdb", "sqlite"])
def test_a_write_past_the_file_size_limit_fails_whole_with_a_clear_message(backend, tmp_path):
    db = tmp_path / f"s.{backend}"
    url = f"{backend}:///{db}"
    r = subprocess.run([sys.executable, "-c", LIMITED_WRITER, url, "store"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 3, r.stderr[-3000:]
    msg = r.stdout.strip()
    assert msg.startswith(f"the file size limit was reached while writing batch 1 to {db.resolve()} (")
    assert "the batch was rolled back, nothing of it is in the store" in msg
    assert msg.endswith("raise the file size limit (ulimit -f) and rerun with --resume")
    _assert_only_batch_0(url)


def test_a_spool_write_past_the_file_size_limit_leaves_nothing(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    url = f"duckdb:///{tmp_path / 's.duckdb'}"
    r = subprocess.run([sys.executable, "-c", LIMITED_WRITER, url, "spool", str(spool)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 3, r.stderr[-3000:]
    assert r.stdout.startswith(f"the file size limit was reached while writing batch 1 to the spool directory {spool} (")
    assert "File too large" in r.stdout and "nothing of the batch is in the store" in r.stdout
    assert list(spool.iterdir()) == []  # no half-written spool left behind


def _driver_errors():
    """The exceptions the drivers raise when the disk is full, with their real messages."""
    import duckdb

    out = {
        "duckdb": duckdb.IOException('IO Error: Could not write file "/data/s.duckdb.wal": No space left on device'),
        "sqlite": sqlite3.OperationalError("database or disk is full"),
        "oserror": OSError(errno.ENOSPC, "No space left on device"),
    }
    try:
        import psycopg.errors

        out["psycopg"] = psycopg.errors.DiskFull('could not extend file "base/16384/24576": No space left on device\n'
                                                 'HINT:  Check free disk space.')
    except ImportError:
        pass
    return out


@pytest.mark.parametrize("kind", ["duckdb", "sqlite", "oserror", "psycopg"])
@pytest.mark.parametrize("backend", ["duckdb", "sqlite"])
def test_driver_disk_full_errors_become_one_clear_message(kind, backend, tmp_path, monkeypatch):
    errors = _driver_errors()
    if kind not in errors:
        pytest.skip("psycopg is not installed")
    url = f"{backend}:///{tmp_path / ('s.' + backend)}"
    calls = []

    def full(self, driver, table, df):
        calls.append(table.name)
        if table.name == "mc_particles":  # events and mc_vertices are in by then
            raise errors[kind]
        return orig(self, driver, table, df)

    with Store(url) as st:
        st.write_batch(synthetic_batch(0, 300))
        orig = type(st.backend).insert
        monkeypatch.setattr(type(st.backend), "insert", full)
        with pytest.raises(StoreError) as ei:
            st.write_batch(synthetic_batch(17, 500))
        assert calls[:3] == ["events", "mc_vertices", "mc_particles"]
        msg = str(ei.value)
        assert msg.startswith(f"disk full while writing batch 17 to {(tmp_path / ('s.' + backend)).resolve()} (")
        assert "No space left on device" in msg or "database or disk is full" in msg
        assert msg.endswith("; the batch was rolled back, nothing of it is in the store; free space and rerun with --resume")
        assert ei.value.__cause__ is not None  # the driver's error stays attached
        monkeypatch.undo()
        assert st.batch_ids() == [0]
        assert st.write_batch(synthetic_batch(17, 500)) is True  # the store is usable after freeing space
    _assert_only_batches(url, [0, 17])


def _assert_only_batches(url, ids):
    with Store(url) as st:
        assert st.batch_ids() == ids
        for t in S.DATA_TABLES:
            assert set(st.read(t, columns=["batch"])["batch"]) <= set(ids)


def test_other_errors_are_not_called_a_full_disk():
    assert disk_full(ValueError("column px is not a float")) is None
    assert disk_full(OSError(errno.EACCES, "Permission denied")) is None
    assert disk_full(sqlite3.OperationalError("database is locked")) is None
    wrapped = RuntimeError("commit failed")
    wrapped.__context__ = OSError(errno.ENOSPC, "No space left on device")
    assert disk_full(wrapped) == ("disk full", "No space left on device")
    assert disk_full(OSError(errno.EFBIG, "File too large"))[0] == "the file size limit was reached"


def test_a_production_stopped_by_a_full_disk_resumes_to_the_whole_content(tmp_path, monkeypatch):
    pipe = standard_pipeline("B+ -> (J/psi(1S) -> mu+ mu-) K+", level="truth")
    kw = dict(n_events=3000, batch_size=1000, seed=2, production="p")
    url = f"duckdb:///{tmp_path / 's.duckdb'}"
    with Store(url) as st:
        orig = type(st.backend).insert
        n = {"events": 0}

        def full_at_second_batch(self, driver, table, df):
            if table.name == "events":
                n["events"] += 1
            if n["events"] == 2 and table.name == "mc_particles":  # the second batch, half-way
                raise OSError(errno.ENOSPC, "No space left on device")
            return orig(self, driver, table, df)

        monkeypatch.setattr(type(st.backend), "insert", full_at_second_batch)
        with pytest.raises(StoreError, match=r"disk full while writing batch 1 to .*s\.duckdb \(No space left on device\)"
                                             r"; the batch was rolled back.*rerun with --resume"):
            run_production(pipe, store=st, **kw)
        monkeypatch.undo()
        assert st.batch_ids() == [0]
        res = run_production(pipe, store=st, resume=True, **kw)
        assert (res.written, res.skipped) == (2, 1)
        assert st.batch_ids() == [0, 1, 2] and st.count("events") == 3000


@pytest.mark.postgres
def test_postgres_disk_full_fails_the_batch_whole(postgres_url, monkeypatch):
    import psycopg.errors

    from mambah.store.backends import PostgresBackend
    from mambah.store.testing import pg_schema

    orig = PostgresBackend.insert

    def full(self, driver, table, df):
        if table.name == "mc_particles":
            orig(self, driver, table, df.iloc[:10])  # some rows went in before the server gave up
            raise psycopg.errors.DiskFull('could not extend file "base/16384/24576": No space left on device')
        return orig(self, driver, table, df)

    with pg_schema(postgres_url) as url, Store(url) as st:
        st.write_batch(synthetic_batch(0, 300))
        monkeypatch.setattr(PostgresBackend, "insert", full)
        with pytest.raises(StoreError, match=r"^disk full while writing batch 3 to postgresql\+psycopg://.*"
                                             r"\(could not extend file .*\); the batch was rolled back"):
            st.write_batch(synthetic_batch(3, 400))
        monkeypatch.undo()
        assert st.batch_ids() == [0]
        for t in S.DATA_TABLES:
            assert set(st.read(t, columns=["batch"])["batch"]) <= {0}


def test_backend_base_reads_parquet_through_pyarrow(tmp_path):
    """The generic spooled-table path (used by SQLite and PostgreSQL) keeps the schema's order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    df = synthetic_batch(0, 50).tables["events"]
    f = tmp_path / "events.parquet"
    pq.write_table(pa.Table.from_pandas(df[list(df.columns)[::-1]], preserve_index=False), f)
    got = []

    class Probe(Backend):
        def __init__(self):
            pass

        def insert(self, driver, table, frame):
            got.append(frame)

    Probe().insert_parquet(None, S.Event.__table__, str(f), list(S.COLUMNS["events"]))
    assert list(got[0].columns) == list(S.COLUMNS["events"]) and len(got[0]) == 50


def test_the_cli_reports_a_full_disk_and_resume_finishes_the_production(tmp_path):
    import resource
    import signal

    db = tmp_path / "s.duckdb"
    cmd = [sys.executable, "-m", "mambah", "-q", "simulate", "B+ -> (J/psi(1S) -> mu+ mu-) K+", "--level", "truth",
           "--events", "30000", "--batch-size", "10000", "--seed", "4", "--db", str(db), "--production", "p"]
    with Store(db) as st:
        st.write_batch(synthetic_batch(100, 50))  # the store exists, its file has some size; the production starts at 101
    limit = max(f.stat().st_size for f in tmp_path.iterdir()) + 400_000

    def small_file_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # inherited through exec: EFBIG, not a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    r = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=small_file_limit, timeout=600)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert f"the file size limit was reached while writing batch 101 to {db.resolve()} (" in r.stderr
    assert "nothing of it is in the store; raise the file size limit (ulimit -f) and rerun with --resume" in r.stderr
    with Store(db) as st:
        assert st.batch_ids() == [100] and st.count("events") == 50
    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    with Store(db) as st:
        assert st.batch_ids() == [100, 101, 102, 103] and st.count("events") == 30050
