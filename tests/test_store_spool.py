"""Spooled batches (the Dask hand-over to a single-writer store): committed whole, exactly once,
never half-written; leftovers of a killed run committed by the next one or discarded."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd
import pytest

from mambah.errors import BatchExistsError
from mambah.production import _process_spool, run_production
from mambah.simulation import standard_pipeline
from mambah.store import Store
from mambah.store import schema as S
from mambah.store.spool import (SpoolError, production_dir, production_digest, read_spool, scan, spool_root,
                                write_spool)
from mambah.store.testing import synthetic_batch

DESCRIPTOR = "B+ -> (J/psi(1S) -> mu+ mu-) K+"


def _tables(store) -> dict[str, pd.DataFrame]:
    out = {t: store.read(t) for t in S.DATA_TABLES}
    out["batches"] = store.read("batches", columns=["batch", "production", "seed", "n_events", "config", "models",
                                                    "timings", "status"])
    return out


def _same(a, b):
    assert a.keys() == b.keys()
    for t in a:
        pd.testing.assert_frame_equal(a[t], b[t], obj=t)


@pytest.mark.parametrize("backend", ["duckdb", "sqlite"])
def test_a_spooled_batch_is_stored_like_a_written_one(backend, tmp_path):
    batches = [synthetic_batch(i, 700, seed=i) for i in range(2)]
    ext = {"duckdb": "duckdb", "sqlite": "sqlite"}[backend]
    spool = tmp_path / "spool"
    spool.mkdir()
    with Store(tmp_path / f"direct.{ext}") as direct, Store(tmp_path / f"spooled.{ext}") as spooled:
        for b in batches:
            direct.write_batch(b)
            summary = write_spool(b, spool, digest="d")
            assert summary["id"] == b.id and summary["rows"] == {t: len(df) for t, df in b.tables.items()}
            assert spooled.write_spooled(summary["spool"]) is True
            # idempotent: a second commit of the same batch is skipped or refused, never doubled
            assert spooled.write_spooled(summary["spool"], if_exists="skip") is False
            with pytest.raises(BatchExistsError, match=f"batch {b.id} is already in the store"):
                spooled.write_spooled(summary["spool"])
        _same(_tables(direct), _tables(spooled))
        assert spooled.read("mc_particles")["px"].dtype == "float64"
        assert spooled.read("particles")["rich_dll_k"].dtype == "float32"
    assert not [p for p in spool.iterdir() if p.name.startswith(".tmp-")]


def test_a_half_written_or_damaged_spool_is_never_committed(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    good = Path(write_spool(synthetic_batch(4, 500), spool, digest="d")["spool"])
    cases = {}
    # still being written: the temporary name
    tmp = spool / f".tmp-{good.name}"
    os.rename(good, tmp)
    cases["tmp"] = tmp
    # a final name, but a table file cut short (as after a crash of the machine)
    cut = Path(write_spool(synthetic_batch(5, 500), spool, digest="d")["spool"])
    f = cut / "mc_particles.parquet"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    cases["cut"] = cut
    # a final name without its manifest
    noman = Path(write_spool(synthetic_batch(6, 500), spool, digest="d")["spool"])
    (noman / "manifest.json").unlink()
    cases["no manifest"] = noman
    # a file whose row count is not the manifest's
    other = Path(write_spool(synthetic_batch(7, 500), spool, digest="d")["spool"])
    small = Path(write_spool(synthetic_batch(7, 400), spool, digest="d")["spool"])
    os.replace(small / "events.parquet", other / "events.parquet")
    cases["rows"] = other
    with Store(tmp_path / "s.duckdb") as st:
        for why, path in cases.items():
            with pytest.raises(SpoolError, match="is not a complete spooled batch"):
                st.write_spooled(path, if_exists="skip")
        assert st.batch_ids() == [] and st.count("events") == 0
    with pytest.raises(SpoolError, match="another production"):
        read_spool(Path(write_spool(synthetic_batch(8, 100), spool, digest="d")["spool"]), digest="other")
    batches, other_entries = scan(spool)
    assert tmp in other_entries and cut in batches


def test_a_worker_without_the_clients_spool_returns_the_batch(tmp_path):
    pipe = standard_pipeline(DESCRIPTOR, level="truth")
    res = _process_spool(pipe, (0, 0, 1, 300, "p"), str(tmp_path), ".client-absent", "d")
    assert res.__class__.__name__ == "Batch" and res.n_events == 300
    assert list(tmp_path.iterdir()) == []
    (tmp_path / ".client-here").touch()
    res = _process_spool(pipe, (0, 0, 1, 300, "p"), str(tmp_path), ".client-here", "d")
    assert isinstance(res, dict) and read_spool(res["spool"], digest="d").n_events == 300


def test_resume_commits_a_killed_runs_spooled_batches_and_discards_partial_ones(tmp_path, caplog):
    pipe = standard_pipeline(DESCRIPTOR, level="truth")
    kw = dict(n_events=4 * 1000, batch_size=1000, seed=11, production="p")
    with Store(tmp_path / "ref.duckdb") as ref:
        run_production(pipe, store=ref, **kw)
        expected = _tables(ref)
    db = tmp_path / "s.duckdb"
    with Store(db) as st:
        run_production(pipe, store=st, **kw)
        st.delete_batches([1, 2, 3])
        # what a killed Dask run leaves: batch 1 spooled completely, batch 2 spooled but cut
        # short, batch 3 half-written (temporary name), and a batch of another configuration
        root = spool_root(st)
        assert root == Path(str(db) + ".spool").resolve()
        d = production_dir(root, "p")
        d.mkdir(parents=True)
        from mambah.pipeline import production_batch
        from mambah.production import production_record

        digest = production_digest(production_record(pipe, n_events=4000, batch_size=1000, seed=11), 0, "p")
        one = Path(write_spool(pipe.process(production_batch(1, 11, 1000, first_batch=0, production="p")), d, digest=digest)["spool"])
        created_in_spool = read_spool(one).row["created"]
        two = Path(write_spool(pipe.process(production_batch(2, 11, 1000, first_batch=0, production="p")), d, digest=digest)["spool"])
        f = two / "mc_vertices.parquet"
        f.write_bytes(f.read_bytes()[:100])
        three = Path(write_spool(pipe.process(production_batch(3, 11, 1000, first_batch=0, production="p")), d, digest=digest)["spool"])
        os.rename(three, d / f".tmp-{three.name}")
        stale = Path(write_spool(synthetic_batch(3, 1000), d, digest="another")["spool"])
        assert stale.exists()
        with caplog.at_level(logging.INFO, logger="mambah.production"):
            res = run_production(pipe, store=st, resume=True, **kw)
        assert (res.written, res.skipped) == (3, 1)
        assert "batch 1: committed from the spool of an earlier run" in caplog.text
        assert "batch 2: committed" not in caplog.text and "batch 3: committed" not in caplog.text
        assert st.batch_info(1)["created"] == created_in_spool  # not recomputed
        got = _tables(st)
    for t in S.DATA_TABLES:
        pd.testing.assert_frame_equal(expected[t], got[t], obj=t)
    cols = ["batch", "production", "seed", "n_events", "status"]
    pd.testing.assert_frame_equal(expected["batches"][cols], got["batches"][cols])
    assert not root.exists(), "the spool of a completed production is removed"
