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
    # the training data's support in (P, ETA): every selected row, with its sWeight
    from mambah.nn.support import Support, support_of

    _, df = calib
    sup = card["support"]
    assert "support.npz" in card["files"] and sup["sources"][0]["rows"] == 2000
    assert sup["sources"][0]["what"] == "training data" and sup["sources"][0]["files"][0]["file"] == "calib.csv"
    ref = Support.from_data(df["P"], df["ETA"], df["sWeight"])
    got = support_of(path)
    assert got.origin == ref.origin and np.allclose(got.weight, ref.weight) and got.rows.sum() == 2000
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


def test_affine_condition_transform_trains_loads_and_generates_as_the_reference(calib, tmp_path):
    """--condition-transform affine: the card records it (log for P, the --scale functions), the model
    loads with an AffineScaler, and the compiled graph's transform and generation equal the numpy
    reference path's (generate_reference)."""
    import warnings

    import tensorflow as tf

    from mambah.nn import inference
    from mambah.nn.pidmodel import PidModel
    from mambah.nn.preprocessing import SCALE_FUNCTIONS, AffineScaler

    d, df = calib
    df = df.assign(prob=np.random.default_rng(4).beta(0.3, 3.0, len(df)))  # a classifier-like probability
    df.to_parquet(tmp_path / "c.parquet")
    r = mambah("train", "pid", "--data", tmp_path / "c.parquet", "--species", "p", "--targets", "DLLp", "--weight",
               "sWeight", "--conditions", "P,ETA,nLongTracks,prob", "--out", tmp_path / "m", "--seed", "3", *TINY,
               "--condition-transform", "affine", "--scale", "prob=logit,nLongTracks=log")
    assert r.returncode == 0, r.stderr
    hp = json.loads((tmp_path / "m" / "card.json").read_text())["hyperparameters"]
    assert hp["condition_transform"] == "affine"
    assert dict(map(tuple, hp["scale_functions"])) == {"P": "log", "prob": "logit", "nLongTracks": "log"}
    m = PidModel.load(tmp_path / "m")
    assert isinstance(m.cond_pre, AffineScaler)
    assert [SCALE_FUNCTIONS[k] for k in m.cond_pre.functions] == ["log", "identity", "log", "logit"]
    x = df[["P", "ETA", "nLongTracks", "prob"]].to_numpy()
    ref = m.cond_pre.transform(x)
    np.testing.assert_allclose(ref[:, 1], (x[:, 1] - m.cond_pre.mean_[1]) / m.cond_pre.std_[1], rtol=1e-6)
    assert abs(ref.mean(axis=0)).max() < 0.2 and 0.7 < ref.std(axis=0).min()  # standardised (sWeighted moments)
    got = inference._compiled(m).pre(tf.constant(x)).numpy()
    np.testing.assert_allclose(got, ref, atol=2e-6, rtol=0)
    noise = np.random.default_rng(2).standard_normal((len(x), m.n_noise), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = inference.generate(m, x, noise=noise)
        b = inference.generate_reference(m, x, noise=noise)
    scale = np.ptp(m.targ_pre.knots_)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * scale)
    # bad --scale, and --scale without the affine transform: refused before training
    r = mambah("train", "pid", "--data", tmp_path / "c.parquet", "--species", "p", "--targets", "DLLp",
               "--conditions", "P,ETA,prob", "--out", tmp_path / "m2", *TINY, "--condition-transform", "affine",
               "--scale", "prob=sqrt")
    assert r.returncode != 0 and "--scale 'prob=sqrt'" in r.stderr and not (tmp_path / "m2").exists()
    r = mambah("train", "pid", "--data", tmp_path / "c.parquet", "--species", "p", "--targets", "DLLp",
               "--conditions", "P,ETA,prob", "--out", tmp_path / "m2", *TINY, "--scale", "prob=logit")
    assert r.returncode != 0 and "--scale is for --condition-transform affine" in r.stderr


def test_affine_scaler_arrays_round_trip_and_bad_arrays_are_refused():
    from mambah.errors import DataError, ModelDirError
    from mambah.nn.preprocessing import AffineScaler, condition_transform_from_arrays

    rng = np.random.default_rng(5)
    x = np.column_stack([rng.exponential(3e4, 1000) + 3e3, rng.uniform(0.01, 0.99, 1000)])
    s = AffineScaler({"c0": "log", "c1": "logit"}).fit(x, names=["c0", "c1"])
    back = condition_transform_from_arrays(s.to_arrays("cond"))
    np.testing.assert_array_equal(back.transform(x), s.transform(x))
    assert back.range_()[0].tolist() == x.min(axis=0).tolist()
    a = s.to_arrays("cond")
    a["cond_scale_std"] = np.array([1.0, 0.0])
    with pytest.raises(ModelDirError, match="std > 0"):
        condition_transform_from_arrays(a)
    with pytest.raises(DataError, match="constant"):
        AffineScaler().fit(np.ones((10, 1)))
    with pytest.raises(DataError, match="functions must be one of"):
        AffineScaler({"c0": "sqrt"}).fit(x, names=["c0", "c1"])
