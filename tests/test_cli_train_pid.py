"""``mambah train pid`` / ``generate`` / ``models`` as users call them (subprocesses)."""

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

TINY = ["--epochs", "4", "--batch-size", "256", "--gen-width", "16", "--gen-depth", "2", "--critic-width", "16",
        "--critic-depth", "2", "--critic-outputs", "4", "--noise", "3", "--validate-every", "1000"]


def mambah(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "mambah", "-q", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    """A small calibration-like table with LHCb-style names and sWeights (some negative)."""
    rng = np.random.default_rng(1)
    n = 2000
    df = pd.DataFrame({
        "P": rng.exponential(30000, n) + 3000, "ETA": rng.uniform(2, 5, n),
        "nLongTracks": rng.poisson(90, n).astype(float), "DLLp": rng.normal(20, 15, n),
        "sWeight": np.where(rng.random(n) < 0.3, -0.3, 1.0), "runNumber": np.arange(n),
    })
    d = tmp_path_factory.mktemp("calib")
    df.to_csv(d / "calib.csv", index=False)
    return d, df


@pytest.fixture(scope="module")
def trained(calib):
    d, _ = calib
    r = mambah("train", "pid", "--data", d / "calib.csv", "--species", "p", "--targets", "DLLp", "--weight", "sWeight",
               "--out", d / "model", "--seed", "3", *TINY)
    assert r.returncode == 0, r.stderr
    return d / "model", r


def test_train_writes_a_model_directory_with_its_card(trained, calib):
    path, r = trained
    card = json.loads((path / "card.json").read_text())
    assert "validation BDT-KS" in r.stdout
    assert {"generator.keras", "arrays.npz"} <= set(card["files"])
    assert card["kind"] == "pid" and card["species"] == "p"
    assert [c["name"] for c in card["conditions"]] == ["P", "ETA", "nLongTracks"]
    assert card["conditions"][0]["unit"] == "MeV/c"
    assert card["training_data"]["n_valid"] == 400 and card["training_data"]["weight"] == "sWeight"
    assert len(card["training_data"]["sha256"]) == 64
    m = card["metrics"]
    assert 0 <= m["valid_bdt_ks"] <= 1 and 0 <= m["valid_auc"] <= 1 and "valid_floor_bdt_ks" in m
    assert m["valid_significance"] > 3 and m["valid_sum_weights"] > 0
    # the held-out efficiency pulls of DLLp's typical cuts, and what chose the checkpoint
    pulls = m["valid_efficiency_pulls"]
    assert list(pulls["cuts"]) == ["DLLp > 0", "DLLp > 5", "DLLp > 10", "DLLp > 15"]
    for c in pulls["cuts"].values():
        assert 0 <= c["overall"]["ref_eff"] <= 1 and 0 <= c["overall"]["gen_eff"] <= 1
        assert {"pull_mean", "pull_width", "worst_bin"} <= set(c["summary"])
    assert pulls["draws"] >= 2 and pulls["pull_rms"] > 0
    assert m["selection"] == "ks_pulls" and card["hyperparameters"]["signed_targets"] is True
    assert m["selection_score"] == pytest.approx(m["selection_bdt_ks"] * max(1.0, m["selection_pull_rms"]))
    assert card["training"]["steps"] == 4 * (1600 // 256)
    assert not (path.parent / ".model.checkpoint").exists()  # cleaned up after success


def test_generate_fills_targets_and_keeps_other_columns(trained, calib, tmp_path):
    path, _ = trained
    d, df = calib
    r = mambah("generate", "--model", path, "--data", d / "calib.csv", "--out", tmp_path / "gen.parquet", "--seed", 5)
    assert r.returncode == 0, r.stderr
    out = pd.read_parquet(tmp_path / "gen.parquet")
    assert list(out.columns) == list(df.columns)
    np.testing.assert_array_equal(out["runNumber"], df["runNumber"])
    assert not np.allclose(out["DLLp"], df["DLLp"]) and np.isfinite(out["DLLp"]).all()
    r2 = mambah("generate", "--model", path, "--data", d / "calib.csv", "--out", tmp_path / "gen2.parquet", "--seed", 5)
    np.testing.assert_array_equal(pd.read_parquet(tmp_path / "gen2.parquet")["DLLp"], out["DLLp"])
    assert r2.returncode == 0


def test_generate_warns_outside_the_training_range(trained, calib, tmp_path):
    path, _ = trained
    _, df = calib
    far = df.head(100).copy()
    far["P"], far["ETA"], far["nLongTracks"] = 30000.0, 3.5, 90.0  # well inside the training range
    far.loc[:9, "ETA"] = 9.0
    far.to_csv(tmp_path / "far.csv", index=False)
    r = mambah("generate", "--model", path, "--data", tmp_path / "far.csv", "--out", tmp_path / "far_out.csv")
    assert r.returncode == 0, r.stderr
    assert "10% of the rows (10 of 100) have conditions outside the training range" in r.stderr


def test_models_list_show_export(trained, tmp_path):
    path, _ = trained
    r = mambah("models", "--models", path.parent, "list")
    assert r.returncode == 0 and "model" in r.stdout and "DLLp" in r.stdout
    r = mambah("models", "--models", path.parent, "show", "model")
    assert r.returncode == 0 and json.loads(r.stdout)["kind"] == "pid"
    r = mambah("models", "--models", path.parent, "show", "modle")
    assert r.returncode == 2 and "did you mean" in r.stderr
    pytest.importorskip("onnxruntime", reason="pip install 'mambah[onnx]'")
    r = mambah("models", "export-onnx", path, "--out", tmp_path / "m.onnx")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m.onnx").stat().st_size > 1000


@pytest.mark.parametrize("change, args, message", [
    (None, ["--targets", "DLLpp"], "has no column 'DLLpp'; available: .*did you mean 'DLLp'"),
    ("nan", [], r"NaN or inf values in 3 of 2000 rows \(DLLp: 3\)"),
    ("negative", [], "sum to .* <= 0"),
    ("zero", [], "all 2000 weights are zero"),
    ("constant", [], "target 'DLLp' is constant"),
    (None, ["--batch-size", "4096"], "fewer than one batch"),
    (None, ["--selection", "P > 1e12"], r"--selection 'P > 1e12' keeps none of the 2000 rows"),
    (None, ["--conditions", "P,DLLp"], "both a condition and a target"),
])
def test_bad_input_is_refused_and_nothing_written(calib, tmp_path, change, args, message):
    _, df = calib
    bad = df.copy()
    if change == "nan":
        bad.loc[[1, 5, 9], "DLLp"] = np.nan
    elif change == "negative":
        bad["sWeight"] = -1.0
    elif change == "zero":
        bad["sWeight"] = 0.0
    elif change == "constant":
        bad["DLLp"] = 3.0
    bad.to_csv(tmp_path / "bad.csv", index=False)
    base = ["--data", tmp_path / "bad.csv", "--species", "p", "--targets", "DLLp", "--weight", "sWeight",
            "--out", tmp_path / "m"]
    # later options override earlier ones
    r = mambah("train", "pid", *base, *TINY, *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert re.search(message, r.stderr, re.S), r.stderr
    assert not (tmp_path / "m").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


def test_nonfinite_rows_dropped_when_asked(calib, tmp_path):
    _, df = calib
    bad = df.copy()
    bad.loc[[1, 5], "P"] = np.inf
    bad.to_csv(tmp_path / "bad.csv", index=False)
    r = mambah("train", "pid", "--data", tmp_path / "bad.csv", "--species", "p", "--targets", "DLLp", "--weight",
               "sWeight", "--out", tmp_path / "m", "--drop-nonfinite", *TINY, "--epochs", "1")
    assert r.returncode == 0, r.stderr
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["training_data"]["n_selected"] == 1998


def test_generate_refuses_a_broken_model(trained, calib, tmp_path):
    import shutil

    path, _ = trained
    d, _ = calib
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    (broken / "generator.keras").unlink()
    r = mambah("generate", "--model", broken, "--data", d / "calib.csv", "--out", tmp_path / "o.csv")
    assert r.returncode == 2 and "missing 'generator.keras'" in r.stderr
    assert not (tmp_path / "o.csv").exists()


def test_an_insignificant_held_out_signal_yield_is_flagged(caplog):
    """Held-out sWeights summing to less than 3 standard errors: the scores measure subtraction noise."""
    from mambah.cli.train_pid import check_split_weights

    w = np.tile([1.0, -0.95], 1000)  # held out: 10 ± 19.5
    iv, it = np.arange(400), np.arange(400, 2000)
    with caplog.at_level("WARNING"):
        info = check_split_weights(w, iv, it)
    assert info["valid_sum_weights"] == pytest.approx(10.0)
    assert info["valid_significance"] == pytest.approx(10.0 / np.sqrt(200 + 200 * 0.95**2))
    assert "standard errors" in caplog.text and "--valid-fraction" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        info = check_split_weights(np.ones(2000), iv, it)
    assert info["valid_significance"] == pytest.approx(20.0) and caplog.text == ""


def test_keep_checkpoint_then_resume_with_a_larger_budget(calib, tmp_path):
    d, _ = calib
    base = ["train", "pid", "--data", d / "calib.csv", "--species", "p", "--targets", "DLLp", "--weight", "sWeight",
            "--out", tmp_path / "m", "--seed", "3", *TINY, "--valid-repeats", "3", "--reselect", "2"]
    r = mambah(*base, "--epochs", "2", "--keep-checkpoint")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / ".m.checkpoint" / "checkpoint.npz").is_file()
    r = mambah(*base, "--epochs", "4", "--resume", "--overwrite")
    assert r.returncode == 0, r.stderr
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["training"]["steps"] == 4 * (1600 // 256)  # 2 epochs kept + 2 more, not 4 from scratch
    assert card["hyperparameters"]["valid_repeats"] == 3
    # --reselect 2: the last looks of both runs are the candidates (the first one from the checkpoint)
    assert card["hyperparameters"]["reselect"] == 2
    assert sorted(r["step"] for r in card["metrics"]["reselection"]) == [2 * (1600 // 256), 4 * (1600 // 256)]
    assert card["metrics"]["best_step"] == card["metrics"]["reselection"][0]["step"]
    assert [h["step"] for h in card["training"]["history"]][0] == 2 * (1600 // 256)
    assert not (tmp_path / ".m.checkpoint").exists()


def test_selection_and_target_map_options_reach_the_config():
    """--checkpoint-score and --clipped-targets set the GANConfig fields the card records; left out, the
    defaults (BDT-KS x pulls, signed-sWeight targets) stay."""
    import argparse

    from mambah.cli import train_pid

    parser = argparse.ArgumentParser()
    train_pid.register(parser.add_subparsers())
    base = ["pid", "--data", "x.csv", "--species", "p", "--targets", "DLLp", "--out", "m"]
    cfg = train_pid.build_config(parser.parse_args(base))
    assert (cfg.selection, cfg.signed_targets) == ("ks_pulls", True)
    cfg = train_pid.build_config(parser.parse_args(base + ["--checkpoint-score", "ks", "--clipped-targets"]))
    assert (cfg.selection, cfg.signed_targets) == ("ks", False)
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--checkpoint-score", "auc"])
