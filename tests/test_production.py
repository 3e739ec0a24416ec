"""Productions: resume after a kill or Ctrl-C, refusal of a changed configuration, Dask workers.

The pipelines here stop at the generator level (``level="truth"``) with small batches: what is
tested is the batch bookkeeping, which does not depend on the detector stages.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest

from mambah.errors import ConfigurationError
from mambah.production import config_diff, run_production
from mambah.simulation import standard_pipeline
from mambah.store import Store

DESCRIPTOR = "B+ -> (J/psi(1S) -> mu+ mu-) K+"
TABLES = ("events", "mc_vertices", "mc_particles")


def _content(url) -> dict[str, pd.DataFrame]:
    with Store(url) as s:
        out = {t: s.read(t).sort_values(["batch", "event" if t == "events" else "index"]).reset_index(drop=True)
               for t in TABLES}
        b = s.list_batches().sort_values("batch").reset_index(drop=True)
        out["batches"] = b[["batch", "production", "seed", "n_events", "status"]]
    return out


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for t in a:
        pd.testing.assert_frame_equal(a[t], b[t], check_dtype=False, obj=t)


def _simulate_cmd(db, events, batch_size, *extra):
    return [sys.executable, "-m", "mambah", "-q", "simulate", DESCRIPTOR, "--level", "truth", "--events", str(events),
            "--batch-size", str(batch_size), "--seed", "5", "--db", str(db), "--production", "p", *extra]


def _n_batches_sqlite(path) -> int:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.1) as c:
            return c.execute("select count(*) from batches").fetchone()[0]
    except sqlite3.Error:
        return 0


def _wait_for_batches(path, n, proc, timeout=120):
    t0 = time.time()
    while _n_batches_sqlite(path) < n:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before writing {n} batches: {proc.communicate()[1]}")
        if time.time() - t0 > timeout:
            proc.kill()
            proc.communicate()
            pytest.fail("timed out waiting for batches")
        time.sleep(0.05)


def test_killed_run_resumes_to_the_uninterrupted_content(tmp_path):
    ref, killed = tmp_path / "ref.sqlite", tmp_path / "killed.sqlite"
    r = subprocess.run(_simulate_cmd(ref, 8000, 1000), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    proc = subprocess.Popen(_simulate_cmd(killed, 8000, 1000), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_batches(killed, 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    n_after_kill = _n_batches_sqlite(killed)
    assert 2 <= n_after_kill < 8, "the kill came too late to test anything"
    part = _content(killed)
    # only whole batches: every batch present has all its events
    assert (part["events"].groupby("batch").size() == 1000).all()
    assert set(part["events"]["batch"]) == set(part["batches"]["batch"])
    r = subprocess.run(_simulate_cmd(killed, 8000, 1000, "--resume"), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"{8 - n_after_kill} written, {n_after_kill} already present" in r.stdout
    _assert_same(_content(ref), _content(killed))


def test_ctrl_c_stops_after_the_batch_in_flight(tmp_path):
    db = tmp_path / "s.sqlite"
    proc = subprocess.Popen(_simulate_cmd(db, 40000, 1000), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_batches(db, 1, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "stopping after the batch in flight" in err and "--resume" in err
    c = _content(db)
    n = len(c["batches"])
    assert 1 <= n < 40
    assert (c["events"].groupby("batch").size() == 1000).all() and c["events"]["batch"].nunique() == n


def test_resume_refuses_a_different_configuration(tmp_path):
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    pipe = standard_pipeline(DESCRIPTOR, level="truth")
    with Store(url) as st:
        run_production(pipe, n_events=1000, batch_size=1000, seed=1, store=st, production="x")
        with pytest.raises(ConfigurationError, match="already holds a production named 'x'.*--resume"):
            run_production(pipe, n_events=1000, batch_size=1000, seed=1, store=st, production="x")
        with pytest.raises(ConfigurationError, match=r"cannot resume production 'x'(.|\n)*seed: 1 -> 2"):
            run_production(pipe, n_events=1000, batch_size=1000, seed=2, store=st, production="x", resume=True)
        other = standard_pipeline("B0 -> (J/psi(1S) -> mu+ mu-) (K*(892)0 -> K+ pi-)", level="truth")
        with pytest.raises(ConfigurationError, match="config.decay"):
            run_production(other, n_events=1000, batch_size=1000, seed=1, store=st, production="x", resume=True)
        res = run_production(pipe, n_events=1000, batch_size=1000, seed=1, store=st, production="x", resume=True)
        assert (res.written, res.skipped) == (0, 1)
        # a second production takes new batch ids
        res = run_production(pipe, n_events=2000, batch_size=1000, seed=1, store=st, production="y")
        assert res.written == 2 and st.batch_ids() == [0, 1, 2]


def test_batches_are_reproducible_and_record_provenance(tmp_path):
    pipe = standard_pipeline(DESCRIPTOR, level="truth")
    with Store(f"sqlite:///{tmp_path / 'a.sqlite'}") as a, Store(f"sqlite:///{tmp_path / 'b.sqlite'}") as b:
        run_production(pipe, n_events=3000, batch_size=1000, seed=9, store=a)
        run_production(pipe, n_events=3000, batch_size=1000, seed=9, store=b)
        info = a.batch_info(1)
    _assert_same(_content(tmp_path / "a.sqlite"), _content(tmp_path / "b.sqlite"))
    cfg = info["config"] if isinstance(info["config"], dict) else __import__("json").loads(info["config"])
    assert cfg["production_index"] == 1 and "decay" in cfg["pipeline"]
    c = _content(tmp_path / "a.sqlite")["mc_particles"]
    # different batches are different samples
    assert not np.allclose(c[c.batch == 0].px.to_numpy(), c[c.batch == 1].px.to_numpy())


def test_config_diff_lists_paths():
    assert config_diff({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}, "d": 0}) == ["b.c: 2 -> 3", "d: (absent) -> 0"]


@pytest.mark.postgres
def test_dask_two_workers_into_postgres_every_batch_once_despite_a_killed_worker(postgres_url):
    pytest.importorskip("dask.distributed")
    from dask.distributed import Client, LocalCluster

    from mambah.store.testing import pg_schema

    n_batches, size = 12, 500
    with pg_schema(postgres_url) as url, LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
        env={"OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"},
    ) as cluster, Client(cluster) as client, Store(url) as st:
        pids = list(client.run(os.getpid).values())
        killed = []

        def killer():
            # kill one worker once the production is under way (some batches written)
            t0 = time.time()
            while time.time() - t0 < 300:
                with Store(url) as probe:
                    if len(probe.batch_ids()) >= 2:
                        break
                time.sleep(0.2)
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

        th = threading.Thread(target=killer, daemon=True)
        th.start()
        res = run_production(standard_pipeline(DESCRIPTOR, level="truth"), n_events=n_batches * size,
                             batch_size=size, seed=3, store=st, scheduler=cluster.scheduler_address,
                             production="dask", max_in_flight=4)
        th.join(timeout=60)
        assert killed, "the worker was not killed"
        assert res.written == n_batches
        ids = st.batch_ids()
        ev = st.read("events", columns=["batch", "event"])
    assert ids == list(range(n_batches))
    counts = ev.groupby("batch").size()
    assert (counts == size).all() and len(counts) == n_batches
    assert not ev.duplicated().any()


def test_models_table_records_each_model_once_and_follows_a_changed_one(tmp_path, caplog):
    """A production registers its models in the store's ``models`` table (the store's conditions
    database of model versions): once per name and version, described by its card, and a model
    retrained under the same version (other files, so another hash) is recorded anew with a warning."""
    import json
    import logging
    import shutil
    from pathlib import Path

    from mambah.production import _register_models
    from mambah.reconstruction import Efficiency

    model = tmp_path / "efficiency-ref-v1"
    shutil.copytree(Path(__file__).resolve().parent.parent / "models" / "efficiency-ref-v1", model)
    stage = Efficiency(model=str(model))
    pipeline = type("P", (), {"model_dirs": lambda self: stage.model_dirs()})()
    with Store(f"sqlite:///{tmp_path / 'm.sqlite'}") as st:
        for _ in range(2):
            _register_models(st, pipeline, {})
        rows = st.read("models")
        assert len(rows) == 1
        row = rows.iloc[0]
        card = json.loads((model / "card.json").read_text())
        assert (row["name"], row["kind"], row["path"]) == (card["name"], card["kind"], str(model))
        assert row["hash"] == stage.model_versions()[card["name"]]["hash"]
        assert json.loads(row["conditions"]) == card["conditions"]
        old = row["hash"]
        card["metrics"] = {"retrained": 1}
        card["files"]["arrays.npz"] = "0" * 64  # the card of a retrained model: other file hashes
        (model / "card.json").write_text(json.dumps(card))
        with caplog.at_level(logging.WARNING, logger="mambah.production"):
            _register_models(st, pipeline, {})
        rows = st.read("models")
        assert len(rows) == 1 and rows.iloc[0]["hash"] != old
        assert json.loads(rows.iloc[0]["metrics"]) == {"retrained": 1}
        assert f"has hash {old}" in caplog.text
