"""Dask productions into single-writer stores (DuckDB, SQLite) through per-batch spool files:
every batch exactly once, the same content as a single-process run, a dead worker survived.

The pipelines stop at the generator level with small batches: what is tested is the batch
hand-over, which does not depend on the detector stages.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time

import pandas as pd
import pytest

from mambah.pipeline import Pipeline
from mambah.production import local_cluster, run_production
from mambah.simulation import standard_pipeline
from mambah.store import Store
from mambah.store import schema as S
from mambah.store.rows import KEYS
from mambah.store.spool import production_dir, spool_root

pytest.importorskip("dask.distributed")

DESCRIPTOR = "B+ -> (J/psi(1S) -> mu+ mu-) K+"


@dataclasses.dataclass(frozen=True)
class Pause:
    """A stage that only takes time, so that a worker can be killed while it holds a batch."""

    seconds: float
    name: str = "pause"

    def config(self):
        return {"seconds": self.seconds}

    def __call__(self, batch):
        time.sleep(self.seconds)
        return batch


def _content(store) -> dict[str, pd.DataFrame]:
    out = {t: store.read(t) for t in ("events", "mc_vertices", "mc_particles")}
    out["batches"] = store.read("batches", columns=["batch", "production", "seed", "n_events", "config", "models",
                                                    "status"])
    return out


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for t in a:
        pd.testing.assert_frame_equal(a[t], b[t], obj=t)


def _assert_every_batch_once(store, n_batches, size):
    assert store.batch_ids() == list(range(n_batches))
    for t in S.DATA_TABLES:
        df = store.read(t, columns=list(KEYS[t]))
        assert not df.duplicated().any(), f"duplicated rows in {t}"
    counts = store.read("events", columns=["batch"]).groupby("batch").size()
    assert len(counts) == n_batches and (counts == size).all()


def test_local_cluster_workers_keep_freed_memory_and_use_one_thread():
    """Dask's MALLOC_TRIM_THRESHOLD_=65536 costs a batch +45% CPU in page faults: not set."""
    import subprocess

    code = ("import os\nfrom dask.distributed import Client\nfrom mambah.production import local_cluster\n"
            "if __name__ == '__main__':\n"
            "    with local_cluster(1) as c, Client(c) as cl:\n"
            "        print(list(cl.run(lambda: [os.environ.get(k) for k in ('MALLOC_TRIM_THRESHOLD_', "
            "'TF_NUM_INTRAOP_THREADS', 'OMP_NUM_THREADS')]).values()))\n")
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "[[None, '1', '1']]"


def test_two_workers_into_duckdb_through_the_spool_equal_a_single_process(tmp_path):
    pipe = standard_pipeline(DESCRIPTOR, level="truth")
    kw = dict(n_events=4 * 2000, batch_size=2000, seed=21, production="dask")
    with Store(tmp_path / "one.duckdb") as one:
        run_production(pipe, store=one, **kw)
        expected = _content(one)
    with Store(tmp_path / "two.duckdb") as two:
        res = run_production(pipe, store=two, workers=2, **kw)
        assert (res.written, res.skipped, res.n_events) == (4, 0, 8000)
        # the workers spooled every batch, the client committed it from the files
        assert res.stage_seconds.get("spool", 0) > 0 and res.stage_seconds.get("store", 0) > 0
        _assert_every_batch_once(two, 4, 2000)
        got = _content(two)
        root = spool_root(two)
    _assert_same(expected, got)
    assert not root.exists(), "the spool of a completed production is removed"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["duckdb", "sqlite"])
def test_a_killed_worker_loses_and_duplicates_no_spooled_batch(backend, tmp_path):
    import cloudpickle
    from dask.distributed import Client

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the Pause stage, for the workers
    n_batches, size = 10, 500
    pipe = Pipeline([*standard_pipeline(DESCRIPTOR, level="truth").stages, Pause(0.4)])
    kw = dict(n_events=n_batches * size, batch_size=size, seed=3, production="p")
    with Store(tmp_path / f"ref.{backend}") as ref:
        run_production(pipe, store=ref, **kw)
        expected = _content(ref)
    with local_cluster(2) as cluster, Client(cluster) as client, Store(tmp_path / f"s.{backend}") as st:
        pids = list(client.run(os.getpid).values())
        spool = production_dir(spool_root(st), "p")
        killed = []

        def killer():
            # once three batches went through the spool, kill a worker (it holds a batch: 0.4 s pauses)
            seen, t0 = set(), time.time()
            while len(seen) < 3 and time.time() - t0 < 300:
                if spool.is_dir():
                    seen |= {p.name.split(".")[0] for p in spool.glob("batch-*")}
                time.sleep(0.01)
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

        th = threading.Thread(target=killer, daemon=True)
        th.start()
        res = run_production(pipe, store=st, scheduler=cluster.scheduler_address, max_in_flight=4, **kw)
        th.join(timeout=60)
        assert killed, "the worker was not killed"
        assert (res.written, res.n_events) == (n_batches, n_batches * size)
        _assert_every_batch_once(st, n_batches, size)
        got = _content(st)
    _assert_same(expected, got)
    assert not spool.exists()
