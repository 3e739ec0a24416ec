"""Foundation pieces: seeds, batches, tabular IO and its checks, model directories."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mambah import errors
from mambah.batch import Batch, empty_table
from mambah.io import check_finite, check_weights, read_table, require_columns, split_spec, write_table
from mambah.modeldir import (
    load_arrays,
    load_card,
    model_hash,
    resolve_model,
    save_model_dir,
    verify_model_dir,
)
from mambah.random import batch_seed, get_rng, stage_rng
from mambah.store.schema import COLUMNS, Base


# --- seeds -------------------------------------------------------------------------------------

def test_batch_seeds_are_reproducible_and_distinct():
    seeds = [batch_seed(42, i) for i in range(1000)]
    assert seeds == [batch_seed(42, i) for i in range(1000)]
    assert len(set(seeds)) == 1000
    assert batch_seed(43, 0) != batch_seed(42, 0)
    assert all(0 <= s < 2**63 for s in seeds)


def test_stage_streams_are_independent_of_order():
    a = stage_rng(7, "gun").random(5)
    stage_rng(7, "decay").random(100)
    np.testing.assert_array_equal(a, stage_rng(7, "gun").random(5))
    assert not np.array_equal(a, stage_rng(7, "decay").random(5))


def test_get_rng_types():
    g = np.random.default_rng(1)
    assert get_rng(g) is g
    assert get_rng(3).random() == np.random.default_rng(3).random()
    with pytest.raises(TypeError, match="seed must be"):
        get_rng("3")


def test_batch_tables_and_messages():
    b = Batch(id=3, seed=11, n_events=10)
    with pytest.raises(KeyError, match="batch 3 has no table 'events'"):
        b["events"]
    b["events"] = empty_table("events", 10)
    assert "events" in b and b.n_rows() == {"events": 10}
    assert list(b["events"].columns) == list(COLUMNS["events"])
    with pytest.raises(KeyError, match="no table 'nope'"):
        empty_table("nope")


def test_schema_matches_columns_contract():
    for table, cols in COLUMNS.items():
        assert [c.name for c in Base.metadata.tables[table].columns] == list(cols), table


# --- IO ----------------------------------------------------------------------------------------

@pytest.fixture
def frame():
    rng = np.random.default_rng(0)
    return pd.DataFrame({"P": rng.uniform(3e3, 1e5, 50), "ETA": rng.uniform(2, 5, 50), "w": rng.normal(0.5, 1, 50)})


@pytest.mark.parametrize("name", ["t.parquet", "t.csv", "t.root:Tree", "t.root"])
def test_roundtrip_every_format(tmp_path, frame, name):
    spec = tmp_path / name
    write_table(frame, spec)
    back = read_table(spec)
    pd.testing.assert_frame_equal(back.reset_index(drop=True)[list(frame.columns)], frame, check_dtype=False)
    sub = read_table(spec, columns=["ETA"])
    assert list(sub.columns) == ["ETA"]
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"


@pytest.mark.parametrize("name", ["t.parquet", "t.csv", "t.root:Tree"])
def test_missing_column_lists_available(tmp_path, frame, name):
    write_table(frame, tmp_path / name)
    with pytest.raises(errors.MissingColumnError) as exc:
        read_table(tmp_path / name, columns=["P", "ETAA"])
    msg = str(exc.value)
    assert "'ETAA'" in msg and "ETA" in msg and "did you mean 'ETA'" in msg


def test_root_tree_errors(tmp_path, frame):
    write_table(frame, f"{tmp_path / 'x.root'}:A")
    with pytest.raises(errors.MissingColumnError, match="'B'.*available: A"):
        read_table(f"{tmp_path / 'x.root'}:B")


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(errors.ConfigurationError, match="cannot tell the format"):
        write_table(pd.DataFrame({"a": [1]}), tmp_path / "x.xlsx")
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_table(tmp_path / "none.parquet")


def test_split_spec():
    assert split_spec("a/b.root:DecayTree") == (__import__("pathlib").Path("a/b.root"), "DecayTree")
    assert split_spec("b.parquet")[1] is None


def test_checks(frame):
    require_columns(frame, ["P"])
    with pytest.raises(errors.MissingColumnError):
        require_columns(frame, ["Q"])
    bad = frame.copy()
    bad.loc[[1, 4], "P"] = np.nan
    bad.loc[7, "ETA"] = np.inf
    with pytest.raises(errors.DataError, match=r"3 of 50 rows \(P: 2, ETA: 1\)"):
        check_finite(bad, ["P", "ETA"])
    assert len(check_finite(bad, ["P", "ETA"], drop=True)) == 47
    with pytest.raises(errors.DataError, match="all 3 weights are zero"):
        check_weights(np.zeros(3))
    with pytest.raises(errors.DataError, match="sum to -1"):
        check_weights(np.array([1.0, -2.0]))
    with pytest.raises(errors.DataError, match="1 of 2 weights are NaN"):
        check_weights(np.array([1.0, np.nan]))
    np.testing.assert_array_equal(check_weights([2.0, -1.0]), [2.0, -1.0])


# --- model directories -------------------------------------------------------------------------

CARD = {"name": "toy", "kind": "occupancy", "conditions": [], "targets": [{"name": "n", "unit": "", "quantity": "n_tracks"}]}


def test_model_dir_roundtrip_and_integrity(tmp_path):
    d = save_model_dir(tmp_path / "toy", CARD, arrays={"edges": np.arange(5.0), "counts": np.ones(4)})
    card = verify_model_dir(d)
    assert card["format"] == 1 and set(card["files"]) == {"arrays.npz"}
    np.testing.assert_array_equal(load_arrays(d)["edges"], np.arange(5.0))
    h = model_hash(d)
    assert len(h) == 16
    with pytest.raises(errors.ModelDirError, match="already exists"):
        save_model_dir(tmp_path / "toy", CARD, arrays={"edges": np.arange(3.0)})
    assert model_hash(save_model_dir(tmp_path / "toy", CARD, arrays={"edges": np.arange(3.0)}, overwrite=True)) != h
    assert [p.name for p in tmp_path.iterdir()] == ["toy"], "temporary directories left behind"


def test_corrupt_model_dirs_are_named(tmp_path):
    d = save_model_dir(tmp_path / "toy", CARD, arrays={"a": np.arange(3)})
    (d / "arrays.npz").write_bytes(b"garbage")
    with pytest.raises(errors.ModelDirError, match="does not match the hash"):
        verify_model_dir(d)
    (d / "arrays.npz").unlink()
    with pytest.raises(errors.ModelDirError, match="missing 'arrays.npz'"):
        verify_model_dir(d)
    card = json.loads((d / "card.json").read_text())
    card["format"] = 99
    (d / "card.json").write_text(json.dumps(card))
    with pytest.raises(errors.ModelDirError, match="format 99"):
        load_card(d)
    (d / "card.json").write_text("{not json")
    with pytest.raises(errors.ModelDirError, match="not valid JSON"):
        load_card(d)
    (d / "card.json").unlink()
    with pytest.raises(errors.ModelDirError, match="no card.json"):
        load_card(d)


def test_object_arrays_are_refused(tmp_path):
    with pytest.raises(TypeError, match="dtype object"):
        save_model_dir(tmp_path / "x", CARD, arrays={"a": np.array([{"x": 1}], dtype=object)})
    assert not list(tmp_path.iterdir())


def test_resolve_model_suggests(tmp_path):
    save_model_dir(tmp_path / "pid-kaon", {**CARD, "name": "pid-kaon"})
    assert resolve_model("pid-kaon", tmp_path) == tmp_path / "pid-kaon"
    with pytest.raises(errors.ModelDirError, match="available: pid-kaon; did you mean pid-kaon"):
        resolve_model("pid-kaons", tmp_path)


# --- progress --------------------------------------------------------------------------------------

def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere(monkeypatch):
    import io

    from tqdm import tqdm

    from mambah import progress as P

    monkeypatch.setattr(P, "_TERMINAL", None)
    P.set_terminal(True)
    bar = P.progress(total=3, enabled=True, file=io.StringIO())
    assert isinstance(bar, tqdm)
    bar.close()
    P.set_terminal(False)
    out = io.StringIO()
    monkeypatch.setenv("MAMBAH_PROGRESS_INTERVAL", "0")
    bar = P.progress(total=2000, enabled=True, desc="simulate p", unit="ev", unit_scale=True, file=out)
    assert isinstance(bar, P.LineProgress)
    bar.update(1000)
    bar.set_postfix({"loss": "0.1"})
    bar.update(1000)
    bar.close()
    bar.close()  # once
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 3
    assert lines[0].startswith("simulate p: 1.00k/2.00k ev (50%), ") and "ETA" in lines[0]
    assert lines[-1].startswith("simulate p: 2.00k/2.00k ev (100%)") and "done" in lines[-1] and "loss=0.1" in lines[-1]
    # the interval: no line before it has passed, only the last one
    out = io.StringIO()
    monkeypatch.setenv("MAMBAH_PROGRESS_INTERVAL", "3600")
    assert list(P.progress(range(5), enabled=True, desc="plots", unit="plot", file=out)) == [0, 1, 2, 3, 4]
    assert out.getvalue().splitlines() == [out.getvalue().strip()] and "5/5 plot (100%)" in out.getvalue()
    # disabled: silent, whatever the terminal
    assert isinstance(P.progress(total=3, enabled=False), tqdm)
