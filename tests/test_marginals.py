"""The marginal calibration of PID GANs (mambah.nn.marginals, mambah.training.marginals, mambah train marginals)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mambah.errors import DataError, MissingColumnError, ModelDirError
from mambah.nn.marginals import LEVELS, MarginalCorrection, monotone_ecdf_quantiles

sys.path.insert(0, str(Path(__file__).parent))
from ensemble_helpers import MODELS, perturbed_members  # noqa: E402


def test_monotone_quantiles_unit_weights_match_numpy():
    x = np.random.default_rng(1).normal(size=200_000)
    q = monotone_ecdf_quantiles(x, np.ones_like(x), LEVELS)
    assert np.all(np.diff(q) >= 0)
    np.testing.assert_allclose(q, np.quantile(x, LEVELS), atol=0.02)


def test_monotone_quantiles_with_sweights_recover_the_signal():
    """A signal N(1, 0.5) under a flat background, sWeights from the known densities of a
    discriminating variable: the signed-weight quantiles are the signal's, not the mixture's."""
    rng = np.random.default_rng(2)
    ns, nb = 200_000, 200_000
    x = np.r_[rng.normal(1, 0.5, ns), rng.uniform(-4, 4, nb)]
    m = np.r_[rng.normal(0, 1, ns), rng.uniform(-5, 5, nb)]  # the "mass"
    fs, fb = np.exp(-m ** 2 / 2) / np.sqrt(2 * np.pi), np.full_like(m, 0.1)
    # sWeights of two components with known shapes and yields (Pivk & Le Diberder)
    den = ns * fs + nb * fb
    v = np.linalg.inv(np.array([[np.sum(a * b / den ** 2) for b in (fs, fb)] for a in (fs, fb)]))
    w = (v[0, 0] * fs + v[0, 1] * fb) / den
    assert (w < 0).any()
    q = monotone_ecdf_quantiles(x, w, np.array([0.01, 0.1, 0.5, 0.9, 0.99]))
    truth = 1 + 0.5 * np.array([-2.326, -1.2816, 0.0, 1.2816, 2.326])
    np.testing.assert_allclose(q, truth, atol=0.06)
    mixture = np.quantile(x, [0.01, 0.99])
    assert abs(mixture[0] - truth[0]) > 1.5 and abs(mixture[1] - truth[-1]) > 1.0


def _one_bin(gen_q, data_q, members=0):
    g = np.broadcast_to(gen_q, (members + 1, 1, 1, len(LEVELS)))
    d = np.broadcast_to(data_q, (members + 1, 1, 1, len(LEVELS)))
    return MarginalCorrection(["a"], [0, 1e9], [0, 10], LEVELS, g, d)


def test_apply_maps_the_model_distribution_onto_the_data_and_keeps_ranks():
    from scipy.special import ndtri

    z = ndtri(LEVELS)
    c = _one_bin(z, 1 + 2 * z)  # model N(0, 1) -> data N(1, 2)
    rng = np.random.default_rng(3)
    y = np.c_[rng.normal(size=100_000), rng.normal(size=100_000)]
    y[5, 0] = np.nan
    cond = np.c_[np.full(len(y), 5e3), np.full(len(y), 3.0)]
    out = c.apply(y, cond, ["P", "ETA"], ["a", "b"])
    assert np.isnan(out[5, 0]) and np.isnan(y[5, 0])
    ok = np.isfinite(y[:, 0])
    inside = ok & (np.abs(y[:, 0]) <= z[-1])
    np.testing.assert_allclose(out[inside, 0], 1 + 2 * y[inside, 0], atol=2e-3)
    beyond = ok & (y[:, 0] > z[-1])  # beyond the outermost knots: the model's tail, shifted
    assert beyond.any()
    np.testing.assert_allclose(out[beyond, 0], y[beyond, 0] + (1 + z[-1]), atol=1e-6)
    np.testing.assert_array_equal(out[:, 1], y[:, 1])  # an uncorrected column is untouched
    assert np.all(np.diff(out[ok, 0][np.argsort(y[ok, 0])]) >= 0)  # monotone: ranks kept


def test_bins_use_their_own_maps():
    from scipy.special import ndtri

    z = ndtri(LEVELS)
    g = np.stack([z, z])[None, :, None, :]  # 2 p bins x 1 eta bin
    d = np.stack([z + 10, z - 10])[None, :, None, :]
    c = MarginalCorrection(["a"], [0, 5e3, 1e9], [0, 10], LEVELS, g, d)
    y = np.zeros((4, 1))
    out = c.apply(y, np.c_[[1e3, 4e3, 6e3, 1e12], np.full(4, 3.0)], ["P", "ETA"], ["a"])
    np.testing.assert_allclose(out[:, 0], [10, 10, -10, -10], atol=1e-6)


def test_bins_split_by_flags_and_unseen_states_are_left_alone():
    from scipy.special import ndtri

    z = ndtri(LEVELS)
    # 1 p bin x 1 eta bin x states {0b01, 0b11} of the flags (f0, f1)
    g = np.stack([z, z])[None, :, None, :]
    d = np.stack([z + 1, z + 2])[None, :, None, :]
    c = MarginalCorrection(["a"], [0, 1e9], [0, 10], LEVELS, g, d, split=["f0", "f1"], states=[1, 3])
    assert c.needs() == ["P", "ETA", "f0", "f1"]
    cond = np.array([[5e3, 3.0, 1, 0], [5e3, 3.0, 1, 1], [5e3, 3.0, 0, 1]])
    out = c.apply(np.zeros((3, 1)), cond, ["P", "ETA", "f0", "f1"], ["a"])
    np.testing.assert_allclose(out[:, 0], [1, 2, 0], atol=1e-6)  # state 0b10 was not in the fit: unchanged


def test_apply_counts_the_rows_it_leaves_unmapped():
    """``tally`` receives the rows left as the model gave them: a flag state the fit never saw, a
    (P, ETA) bin without a map; the mapped rows are not counted; without any map, every row."""
    from scipy.special import ndtri

    z = ndtri(LEVELS)
    # 2 p bins x 1 eta bin x states {0b01, 0b11}; maps only for (p bin 0, 0b01) and (p bin 1, 0b11)
    g = np.stack([z, z])[None, :, None, :]
    d = np.stack([z + 1, z + 2])[None, :, None, :]
    c = MarginalCorrection(["a"], [0, 5e3, 1e9], [0, 10], LEVELS, g, d, split=["f0", "f1"], states=[1, 3],
                           bin_ids=[0, 3])
    names = ["P", "ETA", "f0", "f1"]
    cond = np.array([[1e3, 3.0, 1, 0],    # bin 0, state 0b01: mapped (+1)
                     [9e3, 3.0, 1, 1],    # bin 3 (p bin 1, 0b11): mapped (+2)
                     [1e3, 3.0, 1, 1],    # p bin 0, 0b11: a bin without a map
                     [9e3, 3.0, 0, 1],    # state 0b10: never seen
                     [9e3, 3.0, 1, 0]])   # p bin 1, 0b01: a bin without a map
    tally = []
    out = c.apply(np.zeros((5, 1)), cond, names, ["a"], tally=tally)
    np.testing.assert_allclose(out[:, 0], [1, 2, 0, 0, 0], atol=1e-6)
    assert tally == [3]
    tally = []
    c.apply(np.zeros((2, 1)), cond[:2], names, ["a"], tally=tally)
    assert tally == [0]
    empty = MarginalCorrection(["a"], [0, 1e9], [0, 10], LEVELS, g[:, :0], d[:, :0], bin_ids=[])
    tally = []
    empty.apply(np.zeros((4, 1)), cond[:4, :2], ["P", "ETA"], ["a"], tally=tally)
    assert tally == [4]


def test_a_calibrated_model_reports_the_rows_it_left_unmapped():
    """The shipped pion RICH step maps per (P, ETA) bin and RICH-threshold state: tracks in a state its
    calibration never saw keep the network's output and are reported, as an UncalibratedWarning (with
    the count) or, for a caller that takes the counts, in the RangeCounts; mapped rows alone: silence."""
    import warnings

    from mambah.errors import UncalibratedWarning
    from mambah.nn.pidmodel import PidModel
    from mambah.pid.chain import rich_threshold_codes

    m = PidModel.load(MODELS / "pid-pi-rich")
    rng = np.random.default_rng(4)
    n = 3000
    p, eta = np.exp(rng.uniform(np.log(4e3), np.log(9e4), n)), rng.uniform(2.2, 4.4, n)
    cols = {"P": p, "ETA": eta, "nTracks": rng.uniform(30, 250, n), "charge": rng.choice([-1.0, 1.0], n),
            **rich_threshold_codes(p, eta)}
    cond = np.column_stack([cols[c] for c in m.conditions])
    # a state no calibration track has: above the proton threshold of RICH1 but below the pion's
    odd = rng.random(n) < 0.1
    cond[odd, m.conditions.index("RichAbovePi1")] = 0.0
    cond[odd, m.conditions.index("RichAboveP1")] = 1.0
    b = m.correction.bins_of(cond, m.conditions)
    want = int((b < 0).sum())
    assert want >= odd.sum() and want < n // 4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = m.generate_array(cond, 5)
    w = [x.message for x in caught if issubclass(x.category, UncalibratedWarning)]
    assert len(w) == 1 and (w[0].count, w[0].n, w[0].model) == (want, n, "pid-pi-rich")
    assert f"{want} of {n} rows" in str(w[0]) and "2000 sWeighted signal" in str(w[0])
    # the unmapped rows are the network's output, exactly
    raw = m.correction
    try:
        m.set_correction(None)
        np.testing.assert_array_equal(m.generate_array(cond, 5)[b < 0], y[b < 0])
    finally:
        m.set_correction(raw)
    counts = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        np.testing.assert_array_equal(m.generate_array(cond, 5, counts=counts), y)
    assert not [x for x in caught if issubclass(x.category, UncalibratedWarning)]
    assert len(counts) == 1 and counts[0].uncalibrated == want and counts[0].n == n
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m.generate_array(cond[b >= 0], 5)
        m.generate_array(cond, 5, check_range=False)
    assert not [x for x in caught if issubclass(x.category, UncalibratedWarning)]


def test_compact_drops_identity_bins_and_keeps_the_output():
    from scipy.special import ndtri

    z = ndtri(LEVELS)
    g = np.stack([z, z, z])[None, :, None, :]  # 3 p bins, the middle one an identity
    d = np.stack([z + 1, z, z - 1])[None, :, None, :]
    c = MarginalCorrection(["a"], [0, 1e3, 2e3, 1e9], [0, 10], LEVELS, g, d)
    cc = c.compact()
    assert cc.n_bins == 2 and list(cc.bin_ids) == [0, 2]
    cond = np.c_[[500.0, 1500.0, 5e3, 5e3], [3.0] * 4]
    y = np.array([[0.3], [0.3], [0.3], [np.nan]])
    np.testing.assert_allclose(c.apply(y, cond, ["P", "ETA"], ["a"]), cc.apply(y, cond, ["P", "ETA"], ["a"]), atol=1e-5)
    np.testing.assert_allclose(cc.apply(y, cond, ["P", "ETA"], ["a"])[:3, 0], [1.3, 0.3, -0.7], atol=1e-6)


def test_bad_knots_are_refused():
    with pytest.raises(ModelDirError, match="non-decreasing"):
        _one_bin(LEVELS[::-1], LEVELS)
    with pytest.raises(ModelDirError, match="shape"):
        MarginalCorrection(["a", "b"], [0, 1], [0, 1], LEVELS, np.zeros((1, 1, 1, 161)), np.zeros((1, 1, 1, 161)))
    with pytest.raises(ModelDirError, match="sorted distinct"):
        MarginalCorrection(["a"], [0, 1], [0, 1], LEVELS, np.zeros((1, 2, 1, 161)), np.zeros((1, 2, 1, 161)),
                           split=["f"], states=[1, 0])


# ------------------------------------------------------------------ a real model: fit, store, apply
@pytest.fixture(scope="module")
def pion_rich_table():
    """A small sWeighted pion calibration table (reference detector) with the RICH step's columns."""
    from mambah.pid.chain import prepare_training_table
    from mambah.reference.calibration import calib_sample, channel
    from mambah.training.splot import fit_sweights

    ch = channel("pi")
    raw = calib_sample("pi", 60_000, seed=20261207)
    raw = raw[raw[ch.mass_column].between(*ch.window)].reset_index(drop=True)
    raw["sWeight"] = fit_sweights(raw[ch.mass_column].to_numpy(), ch.window, "gauss", "exponential").sweights
    return prepare_training_table(raw, fill_ties=1)


def test_fit_write_load_and_members(tmp_path, pion_rich_table):
    """Fitting on a sample of the reference detector moves the pion RICH step's PIDK > 5 rate in the
    fit bins to the sample's; the model directory round-trips (hashes, card), and every generation
    path (nominal, variations, one member) applies the member's own map."""
    from mambah.nn.pidmodel import PidModel
    from mambah.training.marginals import fit_marginal_correction, write_marginal_correction

    d = perturbed_members(MODELS / "pid-pi-rich", tmp_path / "pid-pi-rich", 2, scale=0.05)
    m = PidModel.load(d)
    m.set_correction(None)  # the raw GAN (the shipped step's own calibration is replaced below)
    df = pion_rich_table
    corr, info = fit_marginal_correction(m, df, p_bins=2, eta_bins=2, min_weight=500.0, seed=3)
    assert corr.n_members == 2 and info["fit_data"]["selection"] == "hasRich == 1"
    write_marginal_correction(d, corr, info)
    card = json.loads((d / "card.json").read_text())
    assert "marginals.npz" in card["files"] and card["marginal_correction"]["bins"]["n_bins_with_rows"] >= 4
    m2 = PidModel.load(d)  # hashes verified
    assert m2.correction is not None and m2.correction.n_members == 2

    sel = df.query("hasRich == 1")
    cond = sel[m2.conditions].to_numpy(float)
    w = sel["sWeight"].to_numpy()
    k = m2.targets.index("RichDLLk")
    data_rate = np.sum(w * (sel["RichDLLk"].to_numpy() > 5)) / w.sum()
    raw = m.generate_array(cond, 11)
    fixed = m2.generate_array(cond, 11)
    rate = lambda y, r=slice(None): np.sum(w[r] * (y[r, k] > 5)) / w[r].sum()  # noqa: E731
    # in-sample, the corrected rate is the data's (a tail of 1%, known to +-0.33% here: the bins'
    # positivity moves it by less than that)
    sigma = np.sqrt(np.sum(w ** 2 * (sel["RichDLLk"].to_numpy() > 5))) / w.sum()
    assert abs(rate(fixed) - data_rate) < sigma
    # in every bin the corrected output has the tail of the bin's data quantiles
    b = m2.correction.bins_of(cond, m2.conditions)
    assert m2.correction.split and set(m2.correction.split) <= set(m2.conditions)  # the RICH codes
    j = m2.correction.targets.index("RichDLLk")
    checked = 0
    for i in range(m2.correction.n_bins):
        r = b == i
        if w[r].sum() < 500.0:  # not corrected
            continue
        want = 1 - np.interp(5, m2.correction.data[0, i, j], LEVELS)
        t = fixed[r, k] > 5
        got = np.sum(w[r] * t) / w[r].sum()
        err = np.sqrt(np.sum(w[r] ** 2 * t)) / w[r].sum()  # other noise than the fit's: the sWeights' error
        assert abs(got - want) < 3 * err + 1e-3, (i, got, want, err)
        checked += 1
    assert checked >= 4
    v = m2.generate_variations_array(cond, 11)
    np.testing.assert_array_equal(v[0], fixed)
    np.testing.assert_array_equal(v[2], m2.generate_member_array(2, cond, 11))
    assert not np.array_equal(v[1], v[0])
    # ranks inside a bin are the generator's: the map is monotone per target
    for j in range(len(m2.targets)):
        rows = b == 0
        o = np.argsort(raw[rows, j], kind="stable")
        assert np.all(np.diff(fixed[rows, j][o]) >= -1e-9)


def test_corrupt_or_mismatched_correction_is_refused(tmp_path, pion_rich_table):
    from mambah.nn.pidmodel import PidModel
    from mambah.training.marginals import fit_marginal_correction, write_marginal_correction

    d = perturbed_members(MODELS / "pid-pi-rich", tmp_path / "m", 1)
    m = PidModel.load(d)
    corr, info = fit_marginal_correction(m, pion_rich_table, p_bins=2, eta_bins=1, repeats=1)
    write_marginal_correction(d, corr, info)
    (d / "marginals.npz").write_bytes(b"not a npz")
    with pytest.raises(ModelDirError, match="does not match the hash"):
        PidModel.load(d)
    # a correction with other member maps than the model's members
    with pytest.raises(ModelDirError, match="member maps"):
        m.set_correction(MarginalCorrection(corr.targets, corr.p_edges, corr.eta_edges, corr.levels,
                                            corr.gen[:1], corr.data[:1], corr.split, corr.states, corr.bin_ids))


def test_fit_errors_name_the_problem(tmp_path, pion_rich_table):
    from mambah.nn.pidmodel import PidModel
    from mambah.training.marginals import fit_marginal_correction

    m = PidModel.load(MODELS / "pid-pi-rich")
    with pytest.raises(MissingColumnError, match="RichDLLk"):
        fit_marginal_correction(m, pion_rich_table.drop(columns=["RichDLLk"]), where="t.parquet")
    bad = pion_rich_table.copy()
    bad.loc[bad.index[bad["hasRich"] == 1][3], "sWeight"] = np.nan
    with pytest.raises(DataError, match="NaN/inf weights"):
        fit_marginal_correction(m, bad)
    with pytest.raises(DataError, match="too few"):
        fit_marginal_correction(m, pion_rich_table.head(50))


def test_cli_train_marginals(tmp_path, pion_rich_table, capsys):
    from mambah.cli import main

    f = tmp_path / "pi.parquet"
    pion_rich_table.to_parquet(f)
    d = tmp_path / "pid-pi-rich"
    from ensemble_helpers import without_members

    without_members(MODELS / "pid-pi-rich", d)
    assert main(["train", "marginals", "--model", str(d), "--data", str(f), "--p-bins", "3", "--eta-bins", "2",
                 "--targets", "RichDLLk,RichDLLpK"]) == 0
    card = json.loads((d / "card.json").read_text())
    mc = card["marginal_correction"]
    assert mc["targets"] == ["RichDLLk", "RichDLLpK"] and mc["fit_data"]["files"][0]["file"] == "pi.parquet"
    assert "mambah train marginals" in mc["command"] and len(mc["fit_data"]["files"][0]["sha256"]) == 64
    assert "marginal correction of RichDLLk, RichDLLpK in " in capsys.readouterr().out
    assert pd.read_parquet(f).shape == pion_rich_table.shape  # the data is untouched
    # a conditional map: RichDLLpK in classes of RichDLLk, recorded in the card and the printout
    assert main(["train", "marginals", "--model", str(d), "--data", str(f), "--p-bins", "2", "--eta-bins", "1",
                 "--given", "RichDLLpK=RichDLLk", "--classes", "3"]) == 0
    mc = json.loads((d / "card.json").read_text())["marginal_correction"]
    assert mc["conditional"]["given"] == {"RichDLLpK": "RichDLLk"} and mc["conditional"]["classes"] == 3
    assert "--given RichDLLpK=RichDLLk" in mc["command"]
    assert "RichDLLpK (in 3 classes of RichDLLk)" in capsys.readouterr().out
    from mambah.nn.pidmodel import PidModel
    assert PidModel.load(d).correction.n_classes == 3
    before = (d / "card.json").read_text()
    assert main(["train", "marginals", "--model", str(d), "--data", str(f), "--given", "RichDLLpK"]) == 2
    assert "expected TARGET=GIVEN or TARGET+GIVEN" in capsys.readouterr().err
    assert main(["train", "marginals", "--model", str(d), "--data", str(f), "--given", "RichDLLpK=RichDLLpK"]) == 2
    assert "conditional maps" in capsys.readouterr().err
    # logit offsets are for residual ProbNN steps: a RICH step has no dProbNNx targets; a malformed pair
    assert main(["train", "marginals", "--model", str(d), "--data", str(f), "--logit-offset", "probnn"]) == 2
    assert "no residual ProbNN targets" in capsys.readouterr().err
    assert main(["train", "marginals", "--model", str(d), "--data", str(f), "--logit-offset", "RichDLLk"]) == 2
    assert "expected TARGET=CONDITION" in capsys.readouterr().err
    assert main(["train", "marginals", "--model", str(d), "--data", str(f), "--logit-offset", "RichDLLk=nTracks"]) == 0
    mc = json.loads((d / "card.json").read_text())["marginal_correction"]
    assert mc["logit_offsets"]["pairs"] == {"RichDLLk": "nTracks"} and "RichDLLk + logit(nTracks)" in capsys.readouterr().out
    assert (d / "card.json").read_text() != before
    # --min-weight: fewer bins left unmapped with a lower threshold; recorded in the card; a non-positive one refused
    skipped = {}
    for w in ("50000", "100"):
        assert main(["train", "marginals", "--model", str(d), "--data", str(f), "--p-bins", "3", "--eta-bins", "2",
                     "--min-weight", w]) == 0
        bins = json.loads((d / "card.json").read_text())["marginal_correction"]["bins"]
        assert bins["min_weight"] == float(w)
        skipped[w] = len(bins["not_corrected"])
    assert skipped["50000"] > skipped["100"]
    capsys.readouterr()
    assert main(["train", "marginals", "--model", str(d), "--data", str(f), "--min-weight", "0"]) == 2
    assert "--min-weight 0.0: must be a positive" in capsys.readouterr().err


# ------------------------------------------------------------------ flag classifiers: logit shifts
def test_flag_calibration_shifts_the_logit_and_the_uniforms_agree():
    """P' = sigmoid(logit P + shift) in each row's bin; the transformed uniforms give the same draw
    u' < P as u < P'; rows of a bin without a shift, and other columns, are unchanged; the file
    round-trips and says its kind."""
    from scipy.special import expit, logit

    from mambah.nn.marginals import FlagCalibration

    rng = np.random.default_rng(5)
    n = 20_000
    cond = np.c_[rng.uniform(2e3, 1e5, n), rng.uniform(2, 5, n)]
    prob = np.c_[rng.uniform(0, 0.05, n), rng.uniform(0.9, 1, n)]
    prob[:3, 0] = [0.0, 1.0, 0.5]
    cal = FlagCalibration(["isMuon"], [2e3, 1e4, 1e5], [2, 3.5, 5], np.array([[[0.4], [-0.7], [0.0], [1.5]]]))
    out = cal.apply(prob, cond, ["P", "ETA"], ["isMuon", "hasRich"])
    b = cal.bins_of(cond, ["P", "ETA"])
    with np.errstate(divide="ignore"):
        want = expit(logit(prob[:, 0]) + cal.shift[0, b, 0])
    np.testing.assert_allclose(out[:, 0], want, rtol=1e-12)
    assert out[0, 0] == 0.0 and out[1, 0] == 1.0  # certain flags stay certain
    np.testing.assert_array_equal(out[:, 1], prob[:, 1])
    np.testing.assert_array_equal(out[b == 2, 0], prob[b == 2, 0])  # shift 0
    u = rng.random((n, 2))
    u2 = cal.uniforms(u, cond, ["P", "ETA"], ["isMuon", "hasRich"])
    same = (u2 < prob) == (u < out)
    close = np.abs(u - out) < 1e-12
    assert np.all(same | close)
    assert np.mean(u2[:, 0] < prob[:, 0]) > np.mean(u[:, 0] < prob[:, 0])  # shifts up on the whole
    c2 = cal.compact()
    assert c2.n_bins == 3 and list(c2.bin_ids) == [0, 1, 3]
    np.testing.assert_array_equal(c2.apply(prob, cond, ["P", "ETA"], ["isMuon", "hasRich"]), out)


def test_flag_calibration_file_kind_is_checked(tmp_path):
    from mambah.nn.marginals import FlagCalibration, load_calibration

    cal = FlagCalibration(["isMuon"], [2e3, 1e5], [2, 5], np.array([[[0.25]]]))
    cal.save(tmp_path)
    back = load_calibration(tmp_path)
    assert isinstance(back, FlagCalibration) and back.shift[0, 0, 0] == 0.25
    with pytest.raises(ModelDirError, match="not a MarginalCorrection"):
        MarginalCorrection.load(tmp_path)
    np.savez(tmp_path / "marginals.npz", **{**cal.arrays(), "kind": np.array("wavelets")})
    with pytest.raises(ModelDirError, match="unknown calibration kind 'wavelets'"):
        load_calibration(tmp_path)
    with pytest.raises(ModelDirError, match="finite"):
        FlagCalibration(["isMuon"], [2e3, 1e5], [2, 5], np.array([[[np.nan]]]))


def test_flag_calibration_fit_matches_the_data_rates_in_every_bin(tmp_path, pion_rich_table):
    """Fitted on an sWeighted sample, the shipped pion flags classifier's sWeighted isMuon rate in each
    fit bin equals the sample's (in-sample, to the bisection's precision); the model directory
    round-trips; the compiled and the numpy draws use the calibrated probability; the members of an
    ensemble get their own shifts (bootstrap) and every path draws with the nominal's uniforms."""
    import shutil

    from mambah.nn.flags import FlagModel
    from mambah.training.marginals import fit_flag_calibration, write_marginal_correction

    d = tmp_path / "pid-pi-flags"
    shutil.copytree(MODELS / "pid-pi-flags", d)
    m = FlagModel.load(d)
    m.set_correction(None)
    df = pion_rich_table
    # (a sample this small knows a 1% rate to ~30% per bin: max_rel_error=1 lets every bin be calibrated)
    cal, info = fit_flag_calibration(m, df, targets=["isMuon", "hasCalo"], p_bins=3, eta_bins=2, split="none",
                                     min_weight=300.0, max_rel_error=1.0)
    assert info["kind"] == "logit_shift" and not cal.split and info["fit_data"]["selection"] is None
    bf = info["before"]["isMuon"]  # the uncalibrated model's rates against the data's, per corrected bin
    assert bf["ndf"] == len(bf["bins"]["data"]) == len(bf["bins"]["data_error"]) >= 4 and bf["chi2"] > 0
    assert all(0 < e < 0.05 for e in bf["bins"]["data_error"])
    write_marginal_correction(d, cal, info)
    m2 = FlagModel.load(d)
    assert m2.correction is not None and m2.correction.targets == ["isMuon", "hasCalo"]
    cond = df[m2.conditions].to_numpy(float)
    w = df["sWeight"].to_numpy()
    raw, fixed = m.probabilities(cond), m2.probabilities(cond)
    b = m2.correction.bins_of(cond, m2.conditions)
    j = m2.targets.index("isMuon")
    y = df["isMuon"].to_numpy()
    moved = 0
    for i in range(m2.correction.n_bins):
        r = b == i
        data = np.sum(w[r] * y[r]) / w[r].sum()
        if abs(m2.correction.shift[0, i, 0]) >= 5.0:
            continue
        # (the fit sees float32 conditions: 1e-5 is far below the sample's error on a rate, ~1e-3)
        assert abs(np.sum(w[r] * fixed[r, j]) / w[r].sum() - data) < 1e-5, i
        moved += abs(np.sum(w[r] * raw[r, j]) / w[r].sum() - data) > 2e-4
    assert moved >= 2
    np.testing.assert_array_equal(fixed[:, m2.targets.index("hasRich")], raw[:, m2.targets.index("hasRich")])
    # draws: compiled and numpy agree (up to uniforms within round-off of P'), and follow P'
    big = np.repeat(cond, 5, axis=0)
    a = m2.sample(big, np.random.default_rng(3))
    c = m2.sample(big, np.random.default_rng(3), compiled=False)
    assert np.mean(a != c) < 1e-4
    p_big = np.repeat(fixed[:, j], 5)
    assert abs(a[:, j].mean() - p_big.mean()) < 4 * np.sqrt(p_big.mean() / len(p_big))

    # an ensemble (the shipped kaon classifier's five members) on the same sample
    dk = tmp_path / "pid-K-flags"
    shutil.copytree(MODELS / "pid-K-flags", dk)
    mk = FlagModel.load(dk)
    mk.set_correction(None)
    calk, infok = fit_flag_calibration(mk, df, targets=["isMuon"], p_bins=2, eta_bins=1, split="none", seed=4,
                                       min_weight=300.0, max_rel_error=1.0)
    assert calk.n_members == 5 and infok["members"]["seeds"] == [1004, 2004, 3004, 4004, 5004]
    assert not np.allclose(calk.shift[1], calk.shift[0])
    write_marginal_correction(dk, calk, infok)
    mk2 = FlagModel.load(dk)
    v = mk2.sample_variations(cond, np.random.default_rng(8))
    np.testing.assert_array_equal(v[0], mk2.sample(cond, np.random.default_rng(8)))
    np.testing.assert_array_equal(v[3], mk2.sample_member(3, cond, np.random.default_rng(8)))
    pm = mk2.member(3).probabilities(cond)
    bk = calk.bins_of(cond, mk2.conditions)
    r = bk == 0
    # member 3's calibrated rate in bin 0 is its bootstrap replica's data rate
    boot = np.random.default_rng(4 + 1000 * 3).poisson(1.0, len(df))  # member 3 with seed 4
    wb = w * boot
    assert abs(np.sum(wb[r] * pm[r, 0]) / wb[r].sum() - np.sum(wb[r] * y[r]) / wb[r].sum()) < 1e-5
    # rates the data do not determine well enough are left alone, and listed
    cal0, info0 = fit_flag_calibration(mk, df, targets=["isMuon"], p_bins=2, eta_bins=1, split="none",
                                       min_weight=300.0, max_rel_error=1e-6)
    assert cal0.n_bins == 0 and len(info0["bins"]["imprecise"]) == 2
    assert {"data_rate", "data_error", "model_rate"} <= set(info0["bins"]["imprecise"][0])
    # a GAN's quantile maps do not fit a flag classifier
    with pytest.raises(ModelDirError, match="takes a FlagCalibration"):
        mk2.set_correction(MarginalCorrection(["isMuon"], [0, 1], [0, 1], LEVELS, np.zeros((6, 1, 1, 161)),
                                              np.zeros((6, 1, 1, 161))))


def test_cli_train_marginals_on_a_flag_classifier(tmp_path, pion_rich_table, capsys):
    import shutil

    from mambah.cli import main
    from mambah.nn.flags import FlagModel

    f = tmp_path / "pi.parquet"
    pion_rich_table.to_parquet(f)
    d = tmp_path / "pid-pi-flags"
    shutil.copytree(MODELS / "pid-pi-flags", d)
    assert main(["train", "marginals", "--model", str(d), "--data", str(f), "--p-bins", "2", "--eta-bins", "1",
                 "--targets", "isMuon", "--split", "none"]) == 0
    mc = json.loads((d / "card.json").read_text())["marginal_correction"]
    assert mc["kind"] == "logit_shift" and mc["targets"] == ["isMuon"] and "--split none" in mc["command"]
    assert "logit-shift calibration of isMuon in 2 bins" in capsys.readouterr().out
    assert FlagModel.load(d).correction.n_bins >= 1


# ------------------------------------------------------------------ conditional maps (a target in classes of another)
def test_conditional_map_classifies_by_the_mapped_given_target(tmp_path):
    """b is mapped in classes of a, and a's class is that of its *mapped* value; the file round-trips;
    compact and select_members keep the conditional part."""
    from scipy.special import ndtri

    from mambah.nn.marginals import load_calibration

    z = ndtri(LEVELS)
    g = np.broadcast_to(z, (2, 1, 1, len(LEVELS)))
    # a -> a + 10 (so a's class edge at 10 is a = 0 before the map); b -> b + 1 below it, b - 1 above
    cg = np.broadcast_to(z, (2, 1, 1, 2, len(LEVELS))).copy()
    cd = cg + np.array([1.0, -1.0])[:, None]
    c = MarginalCorrection(["a"], [0, 1e9], [0, 10], LEVELS, g, g + 10, given={"b": "a"},
                           class_edges=np.full((2, 1, 1, 1), 10.0), cgen=cg, cdata=cd)
    assert c.n_classes == 2
    y = np.array([[-0.5, 0.2], [0.5, 0.2], [np.nan, 0.3], [2.0, np.nan]])
    cond = np.array([[1e4, 3.0]] * 4)
    out = c.apply(y, cond, ["P", "ETA"], ["a", "b"])
    np.testing.assert_allclose(out[:2], [[9.5, 1.2], [10.5, -0.8]], atol=1e-6)
    assert np.isnan(out[2, 0]) and out[2, 1] == pytest.approx(-0.7, abs=1e-6)  # NaN sorts above every edge
    assert out[3, 0] == pytest.approx(12.0) and np.isnan(out[3, 1])
    c.save(tmp_path)
    back = load_calibration(tmp_path)
    assert back.given == {"b": "a"} and back.n_classes == 2
    np.testing.assert_allclose(back.apply(y, cond, ["P", "ETA"], ["a", "b"]), out, atol=1e-5)
    np.testing.assert_array_equal(c.compact().apply(y, cond, ["P", "ETA"], ["a", "b"]), out)
    one = c.select_members([1, 1, 1])
    assert one.n_members == 2 and one.class_edges.shape == (3, 1, 1, 1)
    # a given target that is not mapped, or a conditional target mapped unconditionally too: refused
    for bad in ({"b": "x"}, {"a": "a"}):
        with pytest.raises(ModelDirError, match="conditional target"):
            MarginalCorrection(["a"], [0, 1e9], [0, 10], LEVELS, g, g, given=bad,
                               class_edges=np.zeros((2, 1, 1, 1)), cgen=cg, cdata=cd)
    with pytest.raises(ModelDirError, match="conditional maps of shape"):
        MarginalCorrection(["a"], [0, 1e9], [0, 10], LEVELS, g, g, given={"b": "a"},
                           class_edges=np.zeros((2, 1, 1, 1)), cgen=cg[:, :, :, :1], cdata=cd[:, :, :, :1])


class _CopulaModel:
    """A stand-in PID GAN for the fit: targets a, b independent N(0, 1) whatever the conditions (the
    data below have them correlated), no members."""

    name, n_members, correction = "toy", 0, None
    conditions, targets, card = ["P", "ETA"], ["a", "b"], {}

    def set_correction(self, c):
        self.correction = c

    def generate_array(self, c, rng, check_range=True):
        return np.random.default_rng(rng).normal(size=(len(c), 2))


def test_fit_conditional_map_recovers_a_cut_on_the_sum():
    """Marginal maps keep the model's copula: with the data's a and b correlated (rho = 0.8) and the
    model's independent, the rate of a + b > 2 stays wrong after per-target maps and becomes the
    data's with b mapped in classes of a (held-out rows: another sample of the same data)."""
    from mambah.training.marginals import fit_marginal_correction

    def data(seed, n=200_000):
        rng = np.random.default_rng(seed)
        a = rng.normal(size=n)
        b = 0.8 * a + 0.6 * rng.normal(size=n)
        return pd.DataFrame({"P": rng.uniform(5e3, 5e4, n), "ETA": rng.uniform(2, 5, n), "a": a, "b": b})

    fit, test = data(1), data(2)
    m = _CopulaModel()
    rate = lambda y: np.mean(y[:, 0] + y[:, 1] > 2)  # noqa: E731
    want = rate(test[["a", "b"]].to_numpy())  # 14.6%
    cond = test[["P", "ETA"]].to_numpy()
    y = m.generate_array(cond, 5)
    marg, _ = fit_marginal_correction(m, fit, weight=None, selection=None, p_bins=2, eta_bins=1, split="none")
    joint, info = fit_marginal_correction(m, fit, weight=None, selection=None, p_bins=2, eta_bins=1, split="none",
                                          given={"b": "a"}, classes=8)
    assert info["conditional"]["given"] == {"b": "a"} and joint.targets == ["a"]
    err = np.sqrt(want * (1 - want) / len(test))
    got_marg = rate(marg.apply(y, cond, m.conditions, m.targets))
    got_joint = rate(joint.apply(y, cond, m.conditions, m.targets))
    assert abs(got_marg - want) > 0.05  # the independent targets' 7.8% (8 classes: 15.0%)
    # 8 classes of a resolve the joint to about a tenth of the marginal maps' error
    assert abs(got_joint - want) < 0.1 * abs(got_marg - want) + 3 * err, (got_joint, got_marg, want)
    # the marginals stay the data's
    out = joint.apply(y, cond, m.conditions, m.targets)
    for j, t in enumerate("ab"):
        np.testing.assert_allclose(np.quantile(out[:, j], [0.05, 0.5, 0.95]),
                                   np.quantile(test[t], [0.05, 0.5, 0.95]), atol=0.03)
    # mapping the sum (b + a) in classes of a: the sum's cut is right to the fit sample's statistics,
    # even with 3 classes, whose joint map leaves more of the copula's error
    summ, info = fit_marginal_correction(m, fit, weight=None, selection=None, p_bins=2, eta_bins=1, split="none",
                                         given={"b": "a"}, classes=3, sums=["b"])
    assert info["conditional"]["sums"] == ["b"] and summ.sums == ("b",)
    out = summ.apply(y, cond, m.conditions, m.targets)
    assert abs(rate(out) - want) < 3 * err + 3 * np.sqrt(want * (1 - want) / len(fit)), (rate(out), want)
    np.testing.assert_allclose(np.quantile(out[:, 0], [0.05, 0.5, 0.95]), np.quantile(test["a"], [0.05, 0.5, 0.95]),
                               atol=0.03)  # a untouched by the pair
    # b - a only at the classes' resolution (b - a > 0.5: data 21.6%, the model 36.2%, mapped 30.4%)
    tail = lambda d: np.mean(d > 0.5)  # noqa: E731
    want_d = tail((test["b"] - test["a"]).to_numpy())
    assert 0.02 < abs(tail(out[:, 1] - out[:, 0]) - want_d) < abs(tail(y[:, 1] - y[:, 0]) - want_d)
    from mambah.nn.marginals import MarginalCorrection as MC
    back = MC(summ.targets, summ.p_edges, summ.eta_edges, summ.levels, summ.gen, summ.data, summ.split, summ.states,
              summ.bin_ids, **{k: v for k, v in summ.arrays().items() if k in ("class_edges", "cgen", "cdata")},
              given=summ.given, sums=summ.sums)
    np.testing.assert_allclose(back.apply(y, cond, m.conditions, m.targets), out, atol=1e-4)
    with pytest.raises(Exception, match="conditional maps"):
        fit_marginal_correction(m, fit, weight=None, selection=None, given={"b": "c"})
    # further P edges where the response changes fast inside a bin; bad ones refused
    fine, _ = fit_marginal_correction(m, fit, weight=None, selection=None, p_bins=2, eta_bins=1, split="none",
                                      extra_p_edges=[7000.0, 1e6])
    assert len(fine.p_edges) == 4 and 7000.0 in fine.p_edges  # 1e6 lies outside the sample: ignored
    with pytest.raises(Exception, match="extra P edges"):
        fit_marginal_correction(m, fit, weight=None, selection=None, extra_p_edges=[float("nan")])
    with pytest.raises(Exception, match="not conditional targets"):
        fit_marginal_correction(m, fit, weight=None, selection=None, given={"b": "a"}, sums=["a"])


class _ResidualModel:
    """A stand-in residual ProbNN step: condition S (a surrogate probability), target d with
    ProbNN = sigmoid(logit(S) + d); the model draws d ~ N(0, 0.3) whatever S (the data's d depends on S)."""

    name, n_members, correction = "toy-probnn", 0, None
    conditions, targets, card = ["P", "ETA", "S"], ["d"], {}

    def set_correction(self, c):
        self.correction = c

    def generate_array(self, c, rng, check_range=True):
        return 0.3 * np.random.default_rng(rng).normal(size=(len(c), 1))


def test_logit_offset_map_makes_every_cut_on_the_output_the_datas(tmp_path):
    """A residual step's output ProbNN = sigmoid(logit(S) + d): mapping d alone gets d's distribution
    right but not the cuts on ProbNN, whose threshold on d depends on S; mapping d + logit(S) gets
    ProbNN > t right in every bin for every t (held-out rows). The file round-trips; bad pairs are refused."""
    from scipy.special import expit, logit

    from mambah.errors import ConfigurationError
    from mambah.nn.marginals import load_calibration
    from mambah.training.marginals import fit_marginal_correction

    def data(seed, n=200_000):
        rng = np.random.default_rng(seed)
        p = rng.uniform(5e3, 5e4, n)
        s = expit(rng.normal(0, 2, n))
        d = np.where(s > 0.5, 2.0, -1.0) * np.where(p < 2e4, 1.0, 0.5) + 0.3 * rng.normal(size=n)  # S and P bin
        return pd.DataFrame({"P": p, "ETA": rng.uniform(2, 5, n), "S": s, "d": d})

    fit, test = data(1), data(2)
    m = _ResidualModel()
    cond = test[m.conditions].to_numpy()
    y = m.generate_array(cond, 5)
    out_of = lambda d: expit(logit(test["S"].to_numpy()) + d)  # noqa: E731
    truth = out_of(test["d"].to_numpy())
    plain, _ = fit_marginal_correction(m, fit, weight=None, selection=None, p_bins=3, eta_bins=1, split="none",
                                       extra_p_edges=[2e4])
    off, info = fit_marginal_correction(m, fit, weight=None, selection=None, p_bins=3, eta_bins=1, split="none",
                                        extra_p_edges=[2e4], logit_offsets={"d": "S"})
    assert info["logit_offsets"]["pairs"] == {"d": "S"} and off.needs() == ["P", "ETA", "S"]
    lo = test["P"].to_numpy() < 2e4
    for t in (0.2, 0.5, 0.8):
        for rows in (lo, ~lo):
            want = np.mean(truth[rows] > t)
            err = np.sqrt(want * (1 - want) / rows.sum())
            got_plain = np.mean(out_of(plain.apply(y, cond, m.conditions, m.targets)[:, 0])[rows] > t)
            got = np.mean(out_of(off.apply(y, cond, m.conditions, m.targets)[:, 0])[rows] > t)
            assert abs(got - want) < 4 * err + 0.002, (t, got, want)
            if t == 0.5:  # the marginal map of d alone misses it
                assert abs(got_plain - want) > 0.02, (t, got_plain, want)
    off.save(tmp_path)
    back = load_calibration(tmp_path)
    assert back.logit_offsets == {"d": "S"}
    np.testing.assert_allclose(back.apply(y, cond, m.conditions, m.targets), off.apply(y, cond, m.conditions, m.targets),
                               atol=1e-4)
    assert off.compact().logit_offsets == off.select_members([0]).logit_offsets == {"d": "S"}
    with pytest.raises(ConfigurationError, match="logit offsets"):
        fit_marginal_correction(m, fit, weight=None, selection=None, logit_offsets={"d": "nope"})
    with pytest.raises(ModelDirError, match="logit offsets of \\['x'\\]"):
        MarginalCorrection(["d"], [0, 1e9], [0, 10], LEVELS, off.gen[:, :1], off.data[:, :1], logit_offsets={"x": "S"})


def test_logit_clip_is_the_chains():
    from mambah.nn.marginals import LOGIT_CLIP
    from mambah.pid.chain import LOGIT_CLIP as CHAIN_CLIP

    assert LOGIT_CLIP == CHAIN_CLIP


def _interp_reference(x, t, g, d):
    """Each value through its own table with map_values (numpy.interp inside the knots), one table at a time."""
    from mambah.nn.marginals import map_values

    out = np.empty_like(x)
    for k in np.unique(t):
        r = t == k
        out[r] = map_values(x[r], g[k], d[k])
    return out


@pytest.mark.parametrize("crowded", [False, True])
def test_knot_tables_are_numpy_interp_bit_for_bit(crowded):
    """KnotTables (the vectorised maps of MarginalCorrection.apply) against map_values on random values, on
    every knot and its float neighbours, far outside and NaN; with point masses (100 knots within 1e-7: the
    extra halvings of crowded tables)."""
    from mambah.nn.knots import KnotTables
    from mambah.nn.marginals import strict_knots

    rng = np.random.default_rng(11)
    m, L = 40, 161
    g = np.sort(rng.standard_t(3, size=(m, L)) * rng.uniform(0.01, 100, (m, 1)) + rng.uniform(-50, 50, (m, 1)), axis=1)
    if crowded:  # a point mass of the model's distribution: many equal knots, spread by strict_knots
        g[:1, 30:130] = g[:1, 30:31]
    g = strict_knots(g, L)
    d = np.sort(g * rng.uniform(0.5, 2.0, (m, 1)) + rng.normal(size=(m, L)), axis=1)
    kt = KnotTables(g, d)
    assert kt.n_halvings >= (6 if crowded else 1)
    if crowded:
        assert kt.crowded.any() and not kt.crowded.all()
    t = rng.integers(0, m, 200_000)
    span = g[t, -1] - g[t, 0]
    x = g[t, 0] + rng.uniform(-0.2, 1.2, len(t)) * span
    k = rng.integers(0, L, len(t))
    xk = g[t, k]
    x = np.concatenate([x, xk, np.nextafter(xk, np.inf), np.nextafter(xk, -np.inf), [np.nan, np.inf, -np.inf, 1e300]])
    t = np.concatenate([t, t, t, t, [0, 1, 2, 3]])
    got, want = kt(x, t), _interp_reference(x, t, g, d)
    np.testing.assert_array_equal(got, want)  # (NaN where NaN)
    assert np.isnan(got[-4]) and got.dtype == np.float64


def test_knot_tables_refuse_bad_knots():
    from mambah.nn.knots import KnotTables

    with pytest.raises(ValueError, match="strictly increasing"):
        KnotTables(np.array([[0.0, 1.0, 1.0]]), np.array([[0.0, 1.0, 2.0]]))
    with pytest.raises(ValueError, match="shape"):
        KnotTables(np.zeros((2, 3)), np.zeros((2, 4)))


@pytest.mark.parametrize("model", ["pid-K-probnn", "pid-p-rich", "pid-pi-rich"])
def test_apply_of_the_shipped_maps_is_the_per_bin_interpolation(model):
    """MarginalCorrection.apply (all rows at once) gives, bit for bit, what mapping each bin's rows with
    map_values does (the definition), for the shipped maps: logit offsets (K ProbNN), conditional maps of
    classes (proton RICH: RichDLLpK given RichDLLk), states split by ten threshold flags."""
    from mambah.nn.marginals import apply_reference, load_calibration
    from mambah.nn.pidmodel import PidModel
    from mambah.pid.chain import rich_threshold_codes

    m = PidModel.load(MODELS / model)
    c = load_calibration(MODELS / model)
    rng = np.random.default_rng(5)
    n = 30_000
    names, lo, hi = m.training_range()
    assert names == m.conditions
    cond = rng.uniform(lo, hi, (n, len(m.conditions)))
    codes = rich_threshold_codes(cond[:, m.conditions.index("P")], cond[:, m.conditions.index("ETA")])
    for j, name in enumerate(m.conditions):
        if name in c.split:  # the RICH threshold codes of the track's P and ETA (the states of the fit), or 0/1
            cond[:, j] = codes[name] if name in codes else rng.integers(0, 2, n)
    m.correction = None
    y = m.generate_array(cond, rng)
    y[7] = np.nan
    got = c.apply(y, cond, m.conditions, m.targets)
    assert (c.bins_of(cond, m.conditions) >= 0).mean() > 0.3
    want = apply_reference(c, y, cond, m.conditions, m.targets)
    np.testing.assert_array_equal(got, want)


def test_cli_train_marginals_adds_its_data_to_the_model_support(tmp_path, pion_rich_table, capsys, caplog):
    """A quantile map fitted on a sample is fitted on its kinematics: ``mambah train marginals`` merges
    the rows it used (the card's selection, the sWeights) into the model's support table; a model without
    a support table is left without one."""
    from mambah.cli import main
    from mambah.modeldir import load_card
    from mambah.nn.support import Support, source_entry, support_of, write_support

    from ensemble_helpers import without_members

    f = tmp_path / "pi.parquet"
    pion_rich_table.to_parquet(f)
    d = tmp_path / "pid-pi-rich"
    without_members(MODELS / "pid-pi-rich", d)
    old = Support.from_data([3000.0, 9000.0, 250000.0], [2.1, 2.6, 4.9], [20.0, 30.0, 40.0])
    write_support(d, old, [source_entry("training data", [], 3, [90.0], None, None)])
    assert main(["train", "marginals", "--model", str(d), "--data", str(f), "--p-bins", "3", "--eta-bins", "2"]) == 0
    assert "added to the model's support table" in capsys.readouterr().out
    sel = pion_rich_table[pion_rich_table["hasRich"] == 1]
    want = old.merged(Support.from_data(sel["P"].astype(np.float32), sel["ETA"].astype(np.float32), sel["sWeight"]))
    got = support_of(d)
    assert got.origin == want.origin and np.allclose(got.weight, want.weight) and np.array_equal(got.rows, want.rows)
    src = load_card(d)["support"]["sources"]
    assert [s["what"] for s in src] == ["training data", "calibration data of its quantile map"]
    assert src[1]["rows"] == len(sel) and src[1]["selection"] == "hasRich == 1" and src[1]["files"][0]["file"] == "pi.parquet"
    # a second map fit cannot take the first one's rows out of the summed table: left as it was, said loudly
    with caplog.at_level("WARNING", logger="mambah.train"):
        assert main(["train", "marginals", "--model", str(d), "--data", str(f), "--p-bins", "2", "--eta-bins", "2"]) == 0
    again = support_of(d)
    assert np.array_equal(again.weight, got.weight) and len(load_card(d)["support"]["sources"]) == 2
    assert "already holds the calibration data of an earlier quantile map" in caplog.text
    # without a support table: none is made
    e = tmp_path / "bare"
    without_members(MODELS / "pid-pi-rich", e)
    if support_of(e) is not None:  # (a shipped model with a support table: drop it for this case)
        from mambah.modeldir import update_model_dir

        update_model_dir(e, lambda tmp: (Path(tmp) / "support.npz").unlink(), {"support": None})
    assert main(["train", "marginals", "--model", str(e), "--data", str(f), "--p-bins", "3", "--eta-bins", "2"]) == 0
    assert support_of(e) is None and "support table" not in capsys.readouterr().out
