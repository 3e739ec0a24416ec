"""A writer killed with SIGKILL in the middle of a batch leaves a readable store of whole batches."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from mambah.store import Store
from mambah.store import schema as S
from mambah.store.testing import pg_schema, synthetic_batch

WRITER = r"""
import sys
from mambah.store import Store
from mambah.store.testing import synthetic_batch
url, n = sys.argv[1], int(sys.argv[2])
with Store(url) as s:
    if s.backend.name == "duckdb":
        # keep committed batches in the write-ahead log, so that reopening must replay it
        s._driver().execute("SET checkpoint_threshold = '10GB'")
    i = 0
    while True:
        b = synthetic_batch(i, n, seed=i)
        print(f"start {i}", flush=True)
        s.write_batch(b)
        print(f"done {i}", flush=True)
        i += 1
"""

EVENTS = {"duckdb": 30_000, "sqlite": 6_000, "postgresql": 15_000}


def _kill_mid_write(url: str, n_events: int) -> tuple[int, list[str]]:
    """Start the writer, let it commit two batches, SIGKILL it half-way through the third."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, url, str(n_events)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    lines, times = [], {}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline().strip()
            if not line:
                break
            lines.append(line)
            times[line] = time.monotonic()
            if line == "start 2":
                write_time = times["done 1"] - times["start 1"]
                time.sleep(0.5 * write_time)
                break
        else:
            pytest.fail(f"the writer did not get to its third batch in time: {lines}")
        assert "start 2" in lines, f"the writer stopped early: {lines}"
    finally:
        proc.send_signal(signal.SIGKILL)
        rest = proc.communicate()[0]
    lines += rest.split()
    return proc.returncode, lines


def _wait_for_server_sessions(store, timeout: float = 30.0) -> None:
    """Wait until the killed writer's server session is gone: a COMMIT the client sent just before
    SIGKILL still completes on the server, possibly after we started reading."""
    import sqlalchemy as sa

    q = sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend' AND state IS DISTINCT FROM 'idle'")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with store.engine.connect() as c:
            if c.execute(q).scalar() == 0:
                return
        time.sleep(0.1)
    pytest.fail("the killed writer's PostgreSQL session did not end")


@pytest.mark.parametrize("backend", ["duckdb", "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_sigkill_during_write_leaves_only_whole_batches(backend, tmp_path, request):
    if backend == "postgresql":
        ctx = pg_schema(request.getfixturevalue("postgres_url"))
    else:
        import contextlib

        ext = {"duckdb": "duckdb", "sqlite": "sqlite"}[backend]
        ctx = contextlib.nullcontext(f"{backend}:///{tmp_path}/crash.{ext}")
    n = EVENTS[backend]
    with ctx as url:
        Store(url).close()  # create the schema first, so the writer's first batch is a full write
        rc, lines = _kill_mid_write(url, n)
        assert rc == -signal.SIGKILL
        if backend == "duckdb":
            wal = Path(f"{tmp_path}/crash.duckdb.wal")
            assert wal.is_file() and wal.stat().st_size > 0, "committed batches should be in the WAL"
        with Store(url) as store:
            if backend == "postgresql":
                _wait_for_server_sessions(store)
            ids = store.batch_ids()
            done = sorted(int(x.split()[1]) for x in lines if x.startswith("done"))
            # every batch reported done is there; the one being written is there only if it finished
            assert set(done) <= set(ids) and ids == list(range(len(ids))), (ids, lines)
            assert len(ids) in (len(done), len(done) + 1) and len(done) >= 2
            expected_total = dict.fromkeys(S.DATA_TABLES, 0)
            for i in ids:
                want = synthetic_batch(i, n, seed=i)
                for t in S.DATA_TABLES:
                    assert store.count(t, batches=i) == len(want.tables[t]), (i, t)
                    expected_total[t] += len(want.tables[t])
            # no orphan rows of a half-written batch
            for t in S.DATA_TABLES:
                assert store.count(t) == expected_total[t], t
            last = ids[-1]
            pd.testing.assert_frame_equal(store.read("particles", batches=last),
                                          synthetic_batch(last, n, seed=last).tables["particles"])
            # and the store takes new batches
            assert store.write_batch(synthetic_batch(len(ids), 10))
