"""The efficiency and resolution networks: closure against the reference detector, training, bad input.

The closure tests use the *shipped* models against fresh reference-detector samples (seeds that
differ from the training samples'): that is the honest closure.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mambah.errors import OutOfRangeWarning

from mambah.nn import tracking as recnets
from mambah.reference.tracking import TrackingDetector, tracking_sample
from mambah.training import tracking as fits
from mambah.errors import ConfigurationError, DataError, ModelDirError
from mambah.modeldir import default_models_dir
from mambah.physics import p_eta

EFF = "efficiency-ref-v1"
RES = "resolution-ref-v1"


@pytest.fixture(scope="module")
def fresh():
    return tracking_sample(600_000, seed=2024)


def test_efficiency_closure_in_bins_of_p_and_eta(fresh):
    """|<eff_NN> - <eff_truth>| <= 0.01 in every (p, eta) bin with >= 2000 tracks."""
    m = recnets.load_efficiency(EFF)
    cols = [fresh[c].to_numpy() for c in ("px", "py", "pz", "x", "y", "z", "pid")]
    prob = m.probability(*cols)
    p, eta = p_eta(fresh.px, fresh.py, fresh.pz)
    c = fits.efficiency_closure(prob, fresh.eff_true.to_numpy(), p, eta, min_count=2000)
    assert c["n_bins"] >= 50
    assert c["max_abs_diff"] <= 0.01, c["diff"]
    # and against the Bernoulli outcomes: per bin within the binomial error (+ the 0.01 model tolerance)
    lab = fits.efficiency_closure(prob, fresh.reconstructed.to_numpy(float), p, eta, min_count=2000)
    counts = np.array(lab["counts"], float)
    diff = np.array(lab["diff"], float)
    e = np.clip(np.array(fits.efficiency_closure(fresh.eff_true.to_numpy(), fresh.eff_true.to_numpy(), p, eta,
                                                    min_count=0)["counts"], float), 1, None)
    ok = counts >= 2000
    eff_bin = np.array(fits.efficiency_closure(prob, np.zeros(len(prob)), p, eta, min_count=2000)["diff"], float)
    sig = np.sqrt(np.clip(eff_bin * (1 - eff_bin), 1e-4, None) / np.where(ok, counts, 1))
    assert np.all(np.abs(diff[ok]) <= 0.01 + 4 * sig[ok])
    assert e.sum() > 0


def test_efficiency_by_origin_and_species(fresh):
    """The network also follows the truth along the origin z and for each species."""
    m = recnets.load_efficiency(EFF)
    prob = m.probability(*(fresh[c].to_numpy() for c in ("px", "py", "pz", "x", "y", "z", "pid")))
    truth = fresh.eff_true.to_numpy()
    zbin = np.digitize(fresh.z, [-200, 100, 300, 450, 550, 700, 1000])
    populated = [b for b in np.unique(zbin) if (zbin == b).sum() > 5000]
    assert len(populated) >= 3, np.bincount(zbin)  # the origin z range is covered, not one bin
    for b in populated:
        sel = zbin == b
        assert abs(prob[sel].mean() - truth[sel].mean()) < 0.01, b
    for pid in (11, 13, 211, 321, 2212):
        sel = np.abs(fresh.pid) == pid
        assert abs(prob[sel].mean() - truth[sel].mean()) < 0.01, pid


def test_resolution_closure_width_and_ks_in_bins_of_p(fresh):
    """Width of (p_reco - p_true)/p_true within 5 % of the truth per p bin; two-sample KS passes."""
    m = recnets.load_resolution(RES)
    reco = fresh[fresh.reconstructed > 0].iloc[:150_000]
    c = fits.resolution_closure(m, reco, seed=99)
    assert len(c["bins"]) == 7
    alpha = 0.01 / len(c["bins"])  # Bonferroni over the bins
    for b in c["bins"]:
        assert b["n"] > 10_000
        # statistical error of the quantile width ratio ~ sqrt(2) * 1.1 / sqrt(2 n): well below 5 %
        assert abs(b["width_ratio"] - 1) < 0.05, b
        assert abs(b["std_model"] / b["std_truth"] - 1) < 0.05, b  # tails included
        assert b["ks_pvalue"] > alpha, b
    # a model with the wrong width fails the same test: the KS test has the power to see 5 %
    det_wide = TrackingDetector(res_a_ms=TrackingDetector().res_a_ms * 1.05, res_b_hit=TrackingDetector().res_b_hit * 1.05)
    bad = fits.resolution_closure(m, reco, detector=det_wide, seed=99)
    assert min(b["ks_pvalue"] for b in bad["bins"]) < alpha


def test_resolution_slopes_follow_the_truth(fresh):
    m = recnets.load_resolution(RES)
    reco = fresh[fresh.reconstructed > 0].iloc[:100_000]
    px, py, pz = (reco[c].to_numpy(float) for c in ("px", "py", "pz"))
    pid = reco.pid.to_numpy()
    mx, my, mz = m.sample(px, py, pz, pid, seed=1)
    det = TrackingDetector()
    p = np.sqrt(px**2 + py**2 + pz**2)
    pull = (mx / mz - px / pz) / det.sigma_slope(p, pid)
    assert pull.std() == pytest.approx(1.0, abs=0.05)
    assert abs(pull.mean()) < 0.02


def test_numpy_evaluation_matches_keras(fresh):
    from mambah.modeldir import load_network

    for name, feats in ((EFF, lambda d: recnets.efficiency_features(*(d[c].to_numpy() for c in
                                                                       ("px", "py", "pz", "x", "y", "z", "pid")))),
                        (RES, lambda d: recnets.resolution_features(*(d[c].to_numpy() for c in ("px", "py", "pz", "pid"))))):
        path = default_models_dir() / name
        m = recnets.load_efficiency(name) if name == EFF else recnets.load_resolution(name)
        x = m.scaler.transform(feats(fresh.iloc[:5000]))
        keras_out = np.asarray(load_network(path, "network")(x))
        np.testing.assert_allclose(m.net(x), keras_out, rtol=1e-4, atol=1e-4)


def test_training_improves_the_scores(tmp_path):
    df = tracking_sample(40_000, seed=8)
    model, arrays, info = fits.fit_efficiency(df, hidden=(16,), epochs=6, batch_size=1024, learning_rate=1e-2,
                                                 seed=1)
    m = info["metrics"]
    assert m["val_bce"] < m["val_bce_before"] - 0.2
    # on the way to the irreducible loss of the true probability
    assert m["val_bce"] - m["val_bce_truth"] < 0.5 * (m["val_bce_before"] - m["val_bce_truth"])
    model, arrays, info = fits.fit_resolution(df, hidden=(16,), epochs=3, batch_size=1024, seed=1)
    m = info["metrics"]
    assert m["val_nll"] < m["val_nll_before"] - 2.0


def _train_cli(tmp_path, kind, data, out, *extra):
    return subprocess.run([sys.executable, "-m", "mambah", "-q", "train", kind, "--data", str(data), "--out", str(out),
                           "--epochs", "2", "--hidden", "8", "--batch-size", "1024", *extra],
                          capture_output=True, text=True)


def test_cli_training_writes_loadable_models(tmp_path):
    data = tmp_path / "t.parquet"
    tracking_sample(20_000, seed=4).to_parquet(data)
    r = _train_cli(tmp_path, "efficiency", data, tmp_path / "eff")
    assert r.returncode == 0, r.stderr
    card = json.loads((tmp_path / "eff" / "card.json").read_text())
    assert card["kind"] == "efficiency" and card["training_data"]["n_rows"] == 20_000
    assert "train efficiency --data" in card["command"] and card["metrics"]["val_bce"] < card["metrics"]["val_bce_before"]
    m = recnets.EfficiencyModel.load(tmp_path / "eff")
    assert m.probability(*(np.array([v]) for v in (1e3, 0, 2e4, 0, 0, 0, 211))).shape == (1,)
    r = _train_cli(tmp_path, "resolution", data, tmp_path / "res", "--k-p", "2")
    assert r.returncode == 0, r.stderr
    assert recnets.ResolutionModel.load(tmp_path / "res").k == [2, 2, 2]
    # refuses to overwrite; a missing column names it and the file
    r = _train_cli(tmp_path, "efficiency", data, tmp_path / "eff")
    assert r.returncode == 2 and "--overwrite" in r.stderr
    r = _train_cli(tmp_path, "efficiency", data, tmp_path / "e2", "--reconstructed-column", "isReco")
    assert r.returncode == 2 and "isReco" in r.stderr and "reconstructed" in r.stderr
    assert not (tmp_path / "e2").exists()
    r = _train_cli(tmp_path, "efficiency", data, tmp_path / "e3", "--species", "pion")
    assert r.returncode == 2 and "unknown species 'pion'" in r.stderr


def test_training_refuses_bad_data():
    df = tracking_sample(2000, seed=1)
    with pytest.raises(DataError, match="PDG ids"):
        fits.fit_efficiency(df, species=("pi", "K"), epochs=1)
    bad = df.copy()
    bad.loc[3, "px"] = np.nan
    with pytest.raises(DataError, match="NaN or inf"):
        fits.fit_efficiency(bad, epochs=1)
    one = df.assign(reconstructed=1)
    with pytest.raises(DataError, match="single class"):
        fits.fit_efficiency(one, epochs=1)


def _copy_model(tmp_path, name):
    dst = tmp_path / name
    shutil.copytree(default_models_dir() / name, dst)
    return dst


def test_model_directory_problems_name_the_model(tmp_path, caplog):
    # missing file
    d = _copy_model(tmp_path, EFF)
    (d / "network.keras").unlink()
    with pytest.raises(ModelDirError, match="missing 'network.keras'"):
        recnets.EfficiencyModel.load(d)
    # corrupt file
    d = _copy_model(tmp_path / "b", EFF)
    (d / "arrays.npz").write_bytes(b"garbage")
    with pytest.raises(ModelDirError, match="does not match the hash"):
        recnets.EfficiencyModel.load(d)
    # card whose conditions do not match the stage's columns
    d = _copy_model(tmp_path / "c", EFF)
    card = json.loads((d / "card.json").read_text())
    card["conditions"] = [c for c in card["conditions"] if c["quantity"] != "origin_z"] + [
        {"name": "nTracks", "unit": "", "quantity": "n_tracks"}]
    (d / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelDirError, match="efficiency-ref-v1.*missing 'origin_z'.*unexpected 'n_tracks'"):
        recnets.EfficiencyModel.load(d)
    # wrong kind
    with pytest.raises(ModelDirError, match="is a 'efficiency' model, not 'resolution'"):
        recnets.ResolutionModel.load(default_models_dir() / EFF)


def test_species_not_trained_and_out_of_range_inputs(tmp_path, caplog):
    from mambah.reconstruction import Efficiency

    d = _copy_model(tmp_path, EFF)
    card = json.loads((d / "card.json").read_text())
    card["species"] = ["pi", "K", "p"]
    (d / "card.json").write_text(json.dumps(card))
    m = recnets.EfficiencyModel.load(d)
    one = [np.array([v]) for v in (1e3, 0.0, 2e4, 0.0, 0.0, 0.0)]
    with pytest.raises(ConfigurationError, match=r"'efficiency-ref-v1' was trained for species pi, K, p; column 'pid'"):
        m.probability(*one, np.array([13]))
    with pytest.raises(ConfigurationError, match="not for e, mu"):
        Efficiency(str(d))._probability(*one, np.array([211]))
    # inputs outside the training range: a warning with the count, evaluated at the edge
    m = recnets.EfficiencyModel.load(default_models_dir() / EFF)
    px, py, pz = np.array([1e3, 1e3, 1e3]), np.zeros(3), np.array([2e4, 2e7, 3e7])
    with pytest.warns(OutOfRangeWarning) as rec:
        prob = m.probability(px, py, pz, np.zeros(3), np.zeros(3), np.zeros(3), np.full(3, 211))
    lnp = [w.message for w in rec if w.message.detail == {"ln_p_gev": 2}]
    assert len(lnp) == 1 and "2 of 3 inputs have ln_p_gev" in str(lnp[0])
    assert lnp[0].model == "efficiency-ref-v1" and lnp[0].count == 2 and lnp[0].n == 3
    assert lnp[0].action == "evaluated at the nearest edge of the range"
    assert np.all((prob >= 0) & (prob <= 1))
