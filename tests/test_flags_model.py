"""The sWeighted Bernoulli flag classifier (mambah.nn.flags, mambah.training.flags) and ``mambah train flags``."""

import json
import re
import shutil
import subprocess
import sys

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mambah.errors import DataError, MissingColumnError, ModelDirError, OutOfRangeWarning
from mambah.nn.flags import FlagModel
from mambah.physics import describe_column
from mambah.training.flags import (FlagConfig, FlagTrainer, check_flag_values, efficiency_closure, save_flag_model,
                                   weighted_bce)

CONDS, TARGS = ["P", "ETA"], ["isMuon", "hasRich"]
P_EDGES = [3000, 5000, 10000, 20000, 40000, 100000, 1e6]  # MeV/c
ETA_EDGES = np.linspace(2, 5, 7)


# ------------------------------------------------------------------------------------ the toy
def eff_signal(p):
    """The signal's isMuon efficiency: a turn-on in log p around 15 GeV/c."""
    return 0.1 + 0.8 / (1 + np.exp(-3 * (np.log(p) - np.log(15000.0))))


def eff_background(p):
    """The background's: falling with p."""
    return 0.7 - 0.5 / (1 + np.exp(-3 * (np.log(p) - np.log(30000.0))))


def rich_signal(eta):
    return 0.95 - 0.25 * (eta - 2) / 3


def toy(n, seed, signal_fraction=0.5):
    """P [MeV/c], ETA; flags isMuon(p), hasRich(eta) with other laws for the background (hasRich 0.5);
    a mass (signal N(0, 1), background flat on [-5, 5]) and its analytic sWeights (true shapes and
    yields: Pivk & Le Diberder, physics/0402083, eq. 14)."""
    rng = np.random.default_rng(seed)
    sig = rng.random(n) < signal_fraction
    p = 3000 + rng.exponential(30000, n)
    eta = rng.uniform(2, 5, n)
    m = np.where(sig, rng.normal(0, 1, n), rng.uniform(-5, 5, n))
    y = np.column_stack([rng.random(n) < np.where(sig, eff_signal(p), eff_background(p)),
                         rng.random(n) < np.where(sig, rich_signal(eta), 0.5)]).astype(float)
    f = np.stack([np.exp(-0.5 * m ** 2) / np.sqrt(2 * np.pi), np.full(n, 0.1)])
    yields = np.array([sig.sum(), (~sig).sum()])
    den = yields @ f
    v = np.linalg.inv((f[:, None, :] * f[None, :, :] / den ** 2).sum(-1))
    sw = (v[0] @ f) / den
    return np.column_stack([p, eta]), y, sw, sig


@pytest.fixture(scope="module")
def toy_fits():
    c, y, sw, _ = toy(60_000, 1)
    cv, yv, swv, _ = toy(15_000, 2)
    assert (sw < 0).mean() > 0.2  # a real sPlot-like mixture of signs
    weighted = FlagTrainer(FlagConfig(seed=0), condition_names=CONDS, target_names=TARGS).fit(c, y, sw, (cv, yv, swv))
    plain = FlagTrainer(FlagConfig(seed=0), condition_names=CONDS, target_names=TARGS).fit(c, y, None, (cv, yv, None))
    return weighted, plain, (c, y, sw), (cv, yv, swv)


def _truth_diffs(trainer):
    """Model minus true signal efficiency, averaged over the signal tracks of an independent sample, per bin
    (isMuon in P_EDGES, hasRich in 6 ETA bins)."""
    c, _, _, sig = toy(300_000, 3)
    c = c[sig]
    prob = trainer.predict_proba(c)
    bp, be = np.digitize(c[:, 0], P_EDGES) - 1, np.digitize(c[:, 1], ETA_EDGES) - 1
    mu = [prob[bp == i, 0].mean() - eff_signal(c[bp == i, 0]).mean() for i in range(len(P_EDGES) - 1)]
    rich = [prob[be == i, 1].mean() - rich_signal(c[be == i, 1]).mean() for i in range(len(ETA_EDGES) - 1)]
    return np.array(mu), np.array(rich)


def _stat_errors(c, y, sw):
    """Standard error of the sWeighted rate of the training rows in each bin (isMuon: P, hasRich: ETA)."""
    out = []
    for j, (x, edges) in enumerate(((c[:, 0], P_EDGES), (c[:, 1], ETA_EDGES))):
        b = np.digitize(x, edges) - 1
        err = []
        for i in range(len(edges) - 1):
            w, v = sw[b == i], y[b == i, j]
            r = (w * v).sum() / w.sum()
            err.append(np.sqrt((w ** 2 * (v - r) ** 2).sum()) / w.sum())
        out.append(np.array(err))
    return out


def test_sweighted_classifier_reproduces_the_signal_efficiency(toy_fits):
    weighted, plain, train, _ = toy_fits
    mu, rich = _truth_diffs(weighted)
    err_mu, err_rich = _stat_errors(*train)
    assert err_mu.max() < 0.025 and err_rich.max() < 0.015  # the toy is precise enough for the test to mean something
    # within the statistical error of the training sample's sWeighted rates (3 sigma) plus 1% of modelling
    assert (np.abs(mu) < 0.01 + 3 * err_mu).all(), (mu, err_mu)
    assert (np.abs(rich) < 0.01 + 3 * err_rich).all(), (rich, err_rich)
    assert np.abs(mu).max() < 0.05 and np.abs(rich).max() < 0.03
    # without sWeights the model learns signal + background: off by far more
    mu0, rich0 = _truth_diffs(plain)
    assert np.abs(mu0).max() > 0.2 and np.abs(rich0).max() > 0.1, (mu0, rich0)
    assert weighted.best_epoch_ >= 1 and weighted.epochs_ > weighted.best_epoch_  # stopped early, kept the best


def test_training_helped_and_the_closure_metric_sees_the_difference(toy_fits):
    weighted, plain, _, (cv, yv, swv) = toy_fits
    rate = (swv[:, None] * yv).sum(0) / swv.sum()
    const, _ = weighted_bce(np.broadcast_to(rate, yv.shape), yv, swv)
    bce, per_flag = weighted_bce(weighted.predict_proba(cv), yv, swv)
    assert bce == pytest.approx(weighted.history_[weighted.best_epoch_ - 1]["valid_bce"], rel=1e-5)
    brier = (swv[:, None] * (yv - weighted.predict_proba(cv)) ** 2).sum() / swv.sum() / 2
    assert brier == pytest.approx(weighted.best_valid_loss_, rel=1e-5)  # the default stops on the Brier score
    assert bce < const - 0.03 and len(per_flag) == 2
    # the card's metric: predicted vs sWeighted observed rate in p bins
    good = efficiency_closure(cv[:, 0], weighted.predict_proba(cv), yv, swv, TARGS, column="P")
    bad = efficiency_closure(cv[:, 0], plain.predict_proba(cv), yv, swv, TARGS, column="P")
    from mambah.validation.closure import P_BINS

    assert good["edges"] == list(P_BINS)
    assert good["max_abs_eff_diff"]["isMuon"] < bad["max_abs_eff_diff"]["isMuon"] and bad["max_abs_eff_diff"]["isMuon"] > 0.2
    assert good["flags"]["isMuon"]["max_pull"] < 3.5 and bad["flags"]["isMuon"]["max_pull"] > 6
    # another first condition: bins of equal weight
    eta = efficiency_closure(cv[:, 1], weighted.predict_proba(cv), yv, swv, TARGS, column="ETA")
    assert len(eta["edges"]) == 11 and len(eta["flags"]["hasRich"]["bins"]) == 10


# ------------------------------------------------------------------------- a small model directory
def _small(seed=0, n=4000, epochs=3):
    c, y, sw, _ = toy(n, 10)
    cfg = FlagConfig(width=16, depth=2, batch_size=256, epochs=epochs, max_time=1e9, seed=seed)
    return FlagTrainer(cfg, condition_names=CONDS, target_names=TARGS).fit(c[:3000], y[:3000], sw[:3000],
                                                                         (c[3000:], y[3000:], sw[3000:])), c[:3000]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    trainer, c = _small()
    out = tmp_path_factory.mktemp("flags") / "pid-mu-isMuon"
    card = {"name": "pid-mu-isMuon", "species": "mu", "conditions": [describe_column(x) for x in CONDS],
            "targets": [describe_column(x) for x in TARGS]}
    save_flag_model(out, trainer, card)
    return out, c, trainer


def test_fit_is_reproducible_for_a_seed():
    a, c = _small(seed=4)
    b, _ = _small(seed=4)
    other, _ = _small(seed=5)
    np.testing.assert_array_equal(a.predict_proba(c), b.predict_proba(c))
    assert [h["valid_bce"] for h in a.history_] == [h["valid_bce"] for h in b.history_]
    assert not np.allclose(a.predict_proba(c), other.predict_proba(c))


def test_load_numpy_inference_equals_keras_predict(model_dir):
    path, c, trainer = model_dir
    m = FlagModel.load(path)
    assert m.conditions == CONDS and m.targets == TARGS and m.path == path
    assert m.card["kind"] == "pid-flags" and m.card["network"]["layers"][-1]["activation"] == "sigmoid"
    prob = m.probabilities(c)
    assert prob.shape == (len(c), 2) and prob.dtype == np.float64 and ((prob > 0) & (prob < 1)).all()
    keras_prob = m.keras_network().predict(m.cond_pre.transform(c, mode="mid"), verbose=0)
    np.testing.assert_allclose(prob, keras_prob, atol=2e-6)
    np.testing.assert_allclose(prob, trainer.predict_proba(c), atol=1e-7)
    # a DataFrame (columns in any order, extra ones ignored) gives the same
    df = pd.DataFrame({"ETA": c[:, 1], "x": 0.0, "P": c[:, 0]})
    np.testing.assert_array_equal(m.probabilities(df), prob)


def test_sample_draws_the_flags_with_the_probabilities(model_dir):
    path, c, _ = model_dir
    m = FlagModel.load(path)
    rows = np.repeat(c[:4], 20_000, axis=0)
    s = m.sample(rows, np.random.default_rng(1))
    assert set(np.unique(s)) <= {0.0, 1.0} and s.dtype == np.float64
    means = s.reshape(4, 20_000, 2).mean(axis=1)
    prob = m.probabilities(c[:4])
    np.testing.assert_allclose(means, prob, atol=5 * np.sqrt(0.25 / 20_000))
    np.testing.assert_array_equal(s, m.sample(rows, np.random.default_rng(1)))
    assert not np.array_equal(s, m.sample(rows, np.random.default_rng(2)))
    df = pd.DataFrame(c[:10], columns=CONDS, index=np.arange(50, 60))
    out = m.generate(df, np.random.default_rng(1))
    assert list(out.columns) == TARGS and out.index.equals(df.index)


@pytest.mark.parametrize("which", ["tiny", "shipped K"])
def test_compiled_draws_are_the_numpy_draws(model_dir, which):
    """The compiled path (one TensorFlow graph: transform, network, draw) draws the same uniforms as
    the numpy reference and compares them with the same probabilities up to float32 round-off; the
    shipped K classifier has 14 conditions, 10 of them two-valued RICH threshold codes (the affine
    branch of the graph's transform)."""
    if which == "tiny":
        path, c, _ = model_dir
        c = np.repeat(c, 20, axis=0)
    else:
        from mambah.pid.chain import CHAIN_INPUTS, rich_threshold_codes

        path = Path(__file__).resolve().parent.parent / "models" / "pid-K-flags"
        rng = np.random.default_rng(3)
        n = 100_000
        p, eta = np.exp(rng.uniform(np.log(3e3), np.log(1e5), n)), rng.uniform(2.2, 4.6, n)
        cols = {"P": p, "ETA": eta, "nTracks": rng.uniform(20, 300, n), "charge": rng.choice([-1.0, 1.0], n),
                **rich_threshold_codes(p, eta)}
        m0 = FlagModel.load(path)
        assert set(CHAIN_INPUTS) < set(m0.conditions)
        c = np.column_stack([cols[k] for k in m0.conditions])
    m = FlagModel.load(path)
    fast = m.sample(c, np.random.default_rng(11))
    ref = m.sample(c, np.random.default_rng(11), compiled=False)
    u = np.random.default_rng(11).random(ref.shape)
    close = np.abs(u - m.probabilities(c)) < 1e-5  # where float32 round-off may decide the draw
    assert fast.dtype == np.float64 and set(np.unique(fast)) <= {0.0, 1.0}
    np.testing.assert_array_equal(fast[~close], ref[~close])
    assert 0.01 < fast.mean() < 0.99  # not all one value
    from mambah.nn.inference import sample_flags

    # neither the chunk size nor the threads change the draws
    np.testing.assert_array_equal(sample_flags(m, c, np.random.default_rng(11), chunk=997, workers=3), fast)


def test_compiled_draws_warn_out_of_range(model_dir):
    path, c, _ = model_dir
    m = FlagModel.load(path)
    cc = c[:200].copy()
    cc[:50, 1] = 7.0
    with pytest.warns(OutOfRangeWarning, match=r"25% of the rows \(50 of 200\) .*ETA: 50 outside"):
        s = m.sample(cc, np.random.default_rng(1))
    assert s.shape == (200, 2)
    with pytest.raises(DataError, match="NaN"):
        m.sample(np.array([[np.nan, 3.0]]), np.random.default_rng(1))


def test_use_needs_no_tensorflow(model_dir):
    path, _, _ = model_dir
    code = ("import sys, numpy as np; from mambah.nn.flags import FlagModel; m = FlagModel.load(sys.argv[1]); "
            "p = m.probabilities(np.array([[2e4, 3.0]])); assert p.shape == (1, 2); "
            "bad = [k for k in ('tensorflow', 'keras') if k in sys.modules]; assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_out_of_range_warns(model_dir):
    path, c, _ = model_dir
    m = FlagModel.load(path)
    cc = c[:200].copy()
    cc[:50, 1] = 7.0  # eta = 7: outside [2, 5]
    with pytest.warns(OutOfRangeWarning, match=r"25% of the rows \(50 of 200\) .*ETA: 50 outside"):
        prob = m.probabilities(cc)
    assert np.isfinite(prob).all()


def test_bad_inputs(model_dir):
    path, c, _ = model_dir
    m = FlagModel.load(path)
    with pytest.raises(MissingColumnError, match="ETA") as e:
        m.probabilities(pd.DataFrame({"P": c[:5, 0], "eta": c[:5, 1]}))
    assert "eta" in str(e.value)  # the available columns are named
    with pytest.raises(DataError, match="NaN"):
        m.probabilities(np.array([[np.nan, 3.0]]))
    with pytest.raises(DataError, match=r"shape \(n, 2\)"):
        m.probabilities(np.ones((3, 3)))
    with pytest.raises(DataError, match=r"'isMuon' .* 0/1 flag column; found 3 distinct values \(0, 1, 2\)"):
        check_flag_values(np.array([[0, 1], [2, 1], [1, 0]]), TARGS)
    with pytest.raises(DataError, match="'hasRich' is always 1"):
        check_flag_values(np.array([[0, 1], [1, 1]]), TARGS)
    np.testing.assert_array_equal(check_flag_values(np.array([True, False]), ["isMuon"]), [[1.0], [0.0]])
    cc, y, sw, _ = toy(2000, 3)
    with pytest.raises(DataError, match="sum to .* <= 0"):
        FlagTrainer(FlagConfig(epochs=1)).fit(cc, y, -np.abs(sw))
    with pytest.raises(DataError, match="validation rows: the weights sum to"):
        FlagTrainer(FlagConfig(epochs=1)).fit(cc, y, sw, (cc[:100], y[:100], -np.ones(100)))
    with pytest.raises(DataError, match="sum to .* <= 0"):
        weighted_bce(np.full(3, 0.5), np.ones(3), -np.ones(3))


def test_corrupt_or_foreign_directories_are_refused(model_dir, tmp_path):
    path, _, _ = model_dir
    d = tmp_path / "m"
    shutil.copytree(path, d)
    (d / "arrays.npz").unlink()
    with pytest.raises(ModelDirError, match="missing 'arrays.npz'"):
        FlagModel.load(d)
    shutil.rmtree(d)
    shutil.copytree(path, d)
    with open(d / "classifier.keras", "ab") as f:
        f.write(b"x")
    with pytest.raises(ModelDirError, match="'classifier.keras' does not match the hash"):
        FlagModel.load(d)
    shutil.rmtree(d)
    shutil.copytree(path, d)
    card = json.loads((d / "card.json").read_text())
    (d / "card.json").write_text(json.dumps(card | {"kind": "pid"}))
    with pytest.raises(ModelDirError, match="holds a 'pid' model, not a 'pid-flags' model"):
        FlagModel.load(d)
    (d / "card.json").write_text(json.dumps(card | {"network": {}}))
    with pytest.raises(ModelDirError, match="lacks network.layers"):
        FlagModel.load(d)
    with pytest.raises(ModelDirError, match="no model directory"):
        FlagModel.load(tmp_path / "nothing")


# ------------------------------------------------------------------------------------------ CLI
def mambah(*args):
    return subprocess.run([sys.executable, "-m", "mambah", "-q", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def tiny_parquet(tmp_path_factory):
    c, y, sw, _ = toy(3000, 7)
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"P": c[:, 0], "ETA": c[:, 1], "nTracks": rng.poisson(100, len(c)).astype(float),
                       "isMuon": y[:, 0].astype(int), "hasRich": y[:, 1].astype(bool), "sWeight": sw,
                       "DLLK": rng.normal(size=len(c))})
    d = tmp_path_factory.mktemp("calib")
    df.to_parquet(d / "calib.parquet")
    return d / "calib.parquet", df


def test_cli_trains_a_flag_model(tiny_parquet, tmp_path):
    data, df = tiny_parquet
    out = tmp_path / "pid-mu-isMuon"
    r = mambah("train", "flags", "--data", data, "--species", "mu", "--conditions", "P,ETA,nTracks",
               "--targets", "isMuon,hasRich", "--weight", "sWeight", "--out", out, "--epochs", "3",
               "--batch-size", "256", "--width", "16", "--selection", "ETA < 4.8", "--seed", "2")
    assert r.returncode == 0, r.stderr
    assert "held-out weighted BCE" in r.stdout and "isMuon" in r.stdout
    card = json.loads((out / "card.json").read_text())
    assert card["kind"] == "pid-flags" and card["species"] == "mu" and card["format"] == 1
    assert {"classifier.keras", "arrays.npz", "support.npz"} == set(card["files"])
    assert [c["name"] for c in card["conditions"]] == ["P", "ETA", "nTracks"] and card["conditions"][0]["unit"] == "MeV/c"
    td = card["training_data"]
    n_sel = int((df["ETA"] < 4.8).sum())
    # the training data's support table: the selected rows with their sWeights
    assert card["support"]["sources"][0]["rows"] == n_sel and card["support"]["sources"][0]["selection"] == "ETA < 4.8"
    assert td["n_rows"] == len(df) and td["n_selected"] == n_sel and td["selection"] == "ETA < 4.8"
    assert td["weight"] == "sWeight" and td["n_valid"] == round(0.2 * n_sel) and len(td["sha256"]) == 64
    assert td["sum_weights"] == pytest.approx(df.loc[df["ETA"] < 4.8, "sWeight"].sum())
    assert 0.2 < td["negative_weight_fraction"] < 0.5
    mt = card["metrics"]
    assert set(mt["max_abs_eff_diff"]) == {"isMuon", "hasRich"} and mt["efficiency"]["column"] == "P"
    assert mt["valid_bce"] > 0 and set(mt["valid_bce_per_flag"]) == {"isMuon", "hasRich"}
    assert 0 < mt["valid_brier"] < 1 and mt["stopped_on"] == "valid_brier" and "valid_brier_constant" in mt
    assert card["training"]["epochs"] == 3 and card["hyperparameters"]["width"] == 16
    m = FlagModel.load(out)
    assert m.probabilities(df[m.conditions].head(7)).shape == (7, 2)
    # an existing directory is not replaced without --overwrite
    r2 = mambah("train", "flags", "--data", data, "--species", "mu", "--conditions", "P,ETA,nTracks",
                "--targets", "isMuon,hasRich", "--weight", "sWeight", "--out", out, "--epochs", "3",
                "--batch-size", "256", "--width", "16", "--selection", "ETA < 4.8", "--seed", "2")
    assert r2.returncode != 0 and "already exists" in r2.stderr


@pytest.mark.parametrize("args, message", [
    (["--targets", "isMuon,nTracks"], r"target 'nTracks' .* must be a 0/1 flag column; found \d+ distinct values"),
    (["--targets", "isMuonn"], r"isMuonn.*isMuon"),
    (["--targets", "isMuon", "--weight", "neg"], r"sum to .* <= 0"),
    (["--targets", "isMuon", "--conditions", "P,isMuon"], "both a condition and a target"),
])
def test_cli_refuses_bad_input(tiny_parquet, tmp_path, args, message):
    data, df = tiny_parquet
    df.assign(neg=-1.0).to_parquet(tmp_path / "d.parquet")
    base = {"--conditions": "P,ETA"}
    extra = dict(zip(args[::2], args[1::2]))
    argv = ["train", "flags", "--data", tmp_path / "d.parquet", "--species", "mu", "--out", tmp_path / "m"]
    for k, v in (base | extra).items():
        argv += [k, v]
    r = mambah(*argv)
    assert r.returncode == 2, r.stderr
    assert re.search(message, r.stderr), r.stderr
    assert not (tmp_path / "m").exists()


# ------------------------------------------------------------------------------------ ensembles
FLAG_CLI = ["--species", "mu", "--conditions", "P,ETA,nTracks", "--targets", "isMuon,hasRich", "--weight", "sWeight",
            "--epochs", "3", "--seed", "2"]


@pytest.fixture(scope="module")
def flag_members(tiny_parquet, tmp_path_factory):
    """A tiny flag model with 2 members (the CLI), and the nominal alone trained the same way."""
    data, _ = tiny_parquet
    d = tmp_path_factory.mktemp("flagens")
    for name, extra in (("both", ["--ensemble", "2"]), ("nominal", [])):
        r = mambah("train", "flags", "--data", data, *FLAG_CLI, "--batch-size", "256", "--width", "16",
                   "--out", d / name, *extra)
        assert r.returncode == 0, r.stderr
    return d / "both", d / "nominal"


def test_cli_trains_flag_members_and_draws_them_with_the_nominal_uniforms(tiny_parquet, flag_members, tmp_path):
    """--ensemble K: K bootstrap members on the nominal's transform, seeds seed + 1000 k; the members'
    flags are drawn with the nominal's uniforms (a member differs from the nominal only where its
    probability and the nominal's lie on two sides of the row's uniform); --nominal-from trains the same
    members for an existing model (the same split, seeds and transform: the same arrays)."""
    from mambah.modeldir import load_arrays

    data, df = tiny_parquet
    both, nominal = flag_members
    card = json.loads((both / "card.json").read_text())
    ens = card["ensemble"]
    assert ens["members"] == 2 and ens["seeds"] == [1002, 2002] and ens["bootstrap"].startswith("poisson(1)")
    m = FlagModel.load(both)
    assert m.n_members == 2
    c = df[m.conditions].to_numpy(dtype=float)[:2000]
    p0, p1, p2 = m.probabilities(c), m.member(1).probabilities(c), m.member(2).probabilities(c)
    assert 0 < np.abs(p1 - p0).mean() < 0.2 and np.abs(p2 - p1).mean() > 0
    lanes = m.sample_variations(c, np.random.default_rng(4))
    assert lanes.shape == (3, 2000, 2)
    np.testing.assert_array_equal(lanes[0], m.sample(c, np.random.default_rng(4)))
    for k, pk in ((1, p1), (2, p2)):
        np.testing.assert_array_equal(lanes[k], m.sample_member(k, c, np.random.default_rng(4)))
        u = np.random.default_rng(4).random(c.shape[:1] + (2,))
        differ = lanes[k] != lanes[0]
        assert differ.any()
        lo, hi = np.minimum(p0, pk), np.maximum(p0, pk)
        assert ((u[differ] >= lo[differ] - 1e-6) & (u[differ] <= hi[differ] + 1e-6)).all()
    # the members of an existing model
    added = tmp_path / "added"
    r = mambah("train", "flags", "--data", data, *FLAG_CLI, "--out", added, "--nominal-from", nominal, "--ensemble", "2")
    assert r.returncode == 0, r.stderr
    a, b, n0 = load_arrays(added), load_arrays(both), load_arrays(nominal)
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_allclose(a[key], (n0 if key in n0 else b)[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert json.loads((added / "card.json").read_text())["ensemble"]["training_data"]["sha256"]
    r = mambah("train", "flags", "--data", data, *FLAG_CLI, "--out", tmp_path / "x", "--nominal-from", nominal)
    assert r.returncode != 0 and "give --ensemble K" in r.stderr
    r = mambah("train", "flags", "--data", data, *FLAG_CLI, "--out", tmp_path / "x", "--nominal-from", nominal,
               "--ensemble", "1", "--width", "8")
    assert r.returncode != 0 and "--width" in r.stderr


def test_member_arrays_that_the_card_does_not_list_are_refused(flag_members, tmp_path):
    from mambah.errors import ModelDirError
    from mambah.modeldir import load_arrays, load_network, save_model_dir
    from mambah.nn.support import support_of

    out = flag_members[0]
    card = json.loads((out / "card.json").read_text())
    for key in ("files", "format", "created", "mambah_version"):
        card.pop(key)
    for k, message in ((0, "ensemble members the card does not list"), (3, "ensemble member 3 layer 0 is incomplete")):
        card["ensemble"]["members"] = k
        save_model_dir(tmp_path / f"bad{k}", card, networks={"classifier": load_network(out, "classifier")},
                       arrays=load_arrays(out), support=support_of(out))
        with pytest.raises(ModelDirError, match=message):
            FlagModel.load(tmp_path / f"bad{k}")
