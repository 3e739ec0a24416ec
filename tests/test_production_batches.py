"""One definition of a production's batch i (id ``first_batch + i``, seed ``batch_seed(seed, i)``),
used by ``Pipeline.make_batch``, ``Pipeline.run``, ``run_production`` and ``regenerate_batch``;
optional dependencies through :mod:`mambah.extras`.

The pipelines stop at the generator level: the bookkeeping does not depend on the detector stages
(``tests/test_production_golden.py`` regenerates a batch of the whole chain).
"""

from __future__ import annotations

import sys

import pandas as pd
import pytest

from mambah import extras
from mambah.errors import ConfigurationError, MambahError, OptionalDependencyError, StoreError
from mambah.pipeline import Pipeline, batch_sizes, production_batch
from mambah.production import production_records, regenerate_batch, run_production
from mambah.random import batch_seed
from mambah.simulation import standard_pipeline
from mambah.store import Store
from mambah.store.store import prepare_tables

DESCRIPTOR = "B+ -> (J/psi(1S) -> mu+ mu-) K+"


@pytest.fixture(scope="module")
def pipe():
    return standard_pipeline(DESCRIPTOR, level="truth")


@pytest.fixture(scope="module")
def store(pipe):
    """Two productions in one store: 'first' (batches 0, 1), then 'second' (ids 2, 3, 4; sizes 400, 400, 200)."""
    st = Store("duckdb:///:memory:")
    run_production(pipe, n_events=800, batch_size=400, seed=7, store=st, production="first")
    run_production(pipe, n_events=1000, batch_size=400, seed=11, store=st, production="second")
    yield st
    st.close()


def _tables_equal(batch, store, batch_id):
    for table, df in prepare_tables(batch).items():
        pd.testing.assert_frame_equal(df.reset_index(drop=True), store.read(table, batches=[batch_id]),
                                      check_dtype=True, obj=table)


def test_batch_i_has_id_first_plus_i_and_the_seed_of_i():
    b = production_batch(2, 11, 300, first_batch=5, production="p")
    assert (b.id, b.seed, b.n_events) == (7, batch_seed(11, 2), 300)
    assert b.info == {"production": "p", "production_index": 2, "production_seed": 11}
    # Pipeline.make_batch is the same definition; its default first id is 0 (the README's call)
    pl = Pipeline([])
    assert pl.make_batch(0, production_seed=1, n_events=10).id == 0
    m = pl.make_batch(2, 11, 300, first_batch=5)
    assert (m.id, m.seed, m.n_events) == (7, b.seed, 300) and m.info == {}
    assert batch_sizes(1000, 400) == [400, 400, 200]
    with pytest.raises(ConfigurationError, match="positive"):
        batch_sizes(0, 400)


def test_the_store_holds_batch_i_of_a_production_whose_first_id_is_not_zero(store):
    rec = production_records(store)["second"]
    assert rec["first_batch"] == 2 and rec["seed"] == 11
    rows = store.read("batches", columns=["batch", "seed", "n_events", "production"], where={"production": "second"})
    assert rows["batch"].tolist() == [2, 3, 4]
    assert rows["seed"].tolist() == [batch_seed(11, i) for i in range(3)]
    assert rows["n_events"].tolist() == [400, 400, 200]


def test_regenerate_batch_equals_the_stored_one(pipe, store):
    b = regenerate_batch(pipe, store, 4)
    assert (b.id, b.n_events, b.info["production"], b.info["production_index"]) == (4, 200, "second", 2)
    _tables_equal(b, store, 4)


def test_pipeline_run_gives_the_batches_of_the_production(pipe, store):
    batches = pipe.run(n_events=1000, batch_size=400, seed=11, first_batch=2)
    assert [b.id for b in batches] == [2, 3, 4] and [b.n_events for b in batches] == [400, 400, 200]
    for b in batches:
        _tables_equal(b, store, b.id)
    # without first_batch: ids from 0, same content
    again = pipe.run(n_events=400, batch_size=400, seed=11)
    assert again[0].id == 0
    pd.testing.assert_frame_equal(again[0]["mc_particles"].drop(columns="batch"),
                                  batches[0]["mc_particles"].drop(columns="batch"))


def test_a_deleted_batch_is_regenerated_from_the_record(pipe, tmp_path):
    with Store(f"duckdb:///{tmp_path / 'd.duckdb'}") as st:
        run_production(pipe, n_events=200, batch_size=100, seed=3, store=st, production="a")
        run_production(pipe, n_events=300, batch_size=100, seed=4, store=st, production="b")
        kept = {t: st.read(t, batches=[3]) for t in ("events", "mc_particles", "mc_vertices")}
        st.delete_batches([3])
        b = regenerate_batch(pipe, st, 3)
        assert b.info["production"] == "b" and b.info["production_index"] == 1
        for t, df in prepare_tables(b).items():
            if t in kept:
                pd.testing.assert_frame_equal(df.reset_index(drop=True), kept[t], obj=t)
        with pytest.raises(StoreError, match=r"batch 9 belongs to no production.*'a': 0\.\.1, 'b': 2\.\.4"):
            regenerate_batch(pipe, st, 9)


def test_regenerate_refuses_another_pipeline(store):
    other = standard_pipeline("B0 -> (J/psi(1S) -> mu+ mu-) (K*(892)0 -> K+ pi-)", level="truth")
    with pytest.raises(ConfigurationError, match="cannot regenerate batch 3 of production 'second'"):
        regenerate_batch(other, store, 3)


def test_duplicate_stage_names_are_a_configuration_error(pipe):
    with pytest.raises(ConfigurationError, match="more than once") as e:
        Pipeline([pipe.stages[0], pipe.stages[0]])
    assert isinstance(e.value, ValueError)  # callers that caught the ValueError still do


# ----------------------------------------------------------------------------- optional dependencies
@pytest.mark.parametrize("module, function, extra", [
    ("psycopg", extras.psycopg, "postgres"),
    ("dask.distributed", extras.dask_distributed, "dask"),
    ("onnx", extras.onnx, "onnx"),
    ("tf2onnx", extras.tf2onnx, "onnx"),
])
def test_a_missing_optional_dependency_gives_the_install_line(monkeypatch, module, function, extra):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(OptionalDependencyError) as e:
        function()
    assert f"pip install 'mambah[{extra}]'" in str(e.value)
    assert isinstance(e.value, MambahError) and isinstance(e.value, ImportError)


def test_postgresql_without_psycopg_fails_when_the_store_is_opened(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(OptionalDependencyError, match=r"(?s)cannot open the store postgresql\+psycopg://u@127\.0\.0\.1"
                                                      r":5432/test: .*pip install 'mambah\[postgres\]'"):
        Store("postgresql://u@127.0.0.1:5432/test")


def test_dask_production_without_dask_says_how_to_install(monkeypatch, pipe):
    monkeypatch.setitem(sys.modules, "dask.distributed", None)
    with Store("duckdb:///:memory:") as st, pytest.raises(OptionalDependencyError, match=r"mambah\[dask\]"):
        run_production(pipe, n_events=10, batch_size=10, seed=1, store=st, workers=1)


class _FailOnBatch:
    """A stage that fails on one batch id (the store must keep the batches before it, whole)."""

    name = "fail_on"

    def __init__(self, bad: int):
        self.bad = bad

    def __call__(self, batch):
        if batch.id == self.bad:
            raise RuntimeError(f"stage failed on batch {batch.id}")
        return batch


def test_a_failing_batch_keeps_the_batches_before_it_and_writes_none_after(pipe):
    """The local loop simulates batch i + 1 while it writes batch i: the error of batch 3 reaches
    the caller, batches 0-2 are in the store whole, nothing of 3 or later; resume completes it."""
    failing = Pipeline([*pipe.stages, _FailOnBatch(3)])
    with Store("duckdb:///:memory:") as st:
        with pytest.raises(RuntimeError, match="stage failed on batch 3"):
            run_production(failing, n_events=3000, batch_size=500, seed=5, store=st, production="p")
        assert st.batch_ids() == [0, 1, 2]
        events = st.read("events")
        assert events.groupby("batch").size().to_dict() == {0: 500, 1: 500, 2: 500}
        res = run_production(Pipeline([*pipe.stages, _FailOnBatch(-1)]), n_events=3000, batch_size=500, seed=5,
                             store=st, production="p", resume=True)
        assert (res.written, res.skipped) == (3, 3) and st.batch_ids() == list(range(6))
