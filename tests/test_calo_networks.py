"""The calorimeter networks of issue 25 with tiny models (mechanics, not closure): the model
directories load through the registry, the brem response keeps no-brem electrons at or below their
true momentum, the photon efficiency is zero off the ECAL face and the cluster momentum has
|p| = E, the ``--brem model`` / ``--neutrals model`` stages run on batches, and refusals. The
mechanics use untrained networks with the fitted preprocessing (fast); the fits themselves (the
held-out scores improve, the trained models behave physically) are ``slow``."""

from __future__ import annotations

import copy
import subprocess
import sys
import warnings

import numpy as np
import pytest

from mambah import Composites, Efficiency, Occupancy, Pipeline, Resolution, generator_stages
from mambah.errors import ConfigurationError, ModelDirError, OutOfRangeWarning
from mambah.modeldir import save_model_dir
from mambah.nn.calo import PI0_RESOLVED, BremModel, PhotonModel
from mambah.nn.registry import load_model
from mambah.reconstruction import Bremsstrahlung, Neutrals
from mambah.reference.brem import brem_sample
from mambah.reference.calorimeter import photon_sample, pi0_sample
from mambah.nn.calo import BREM_FEATURES, PHOTON_FEATURES, PI0_FEATURES, brem_features, photon_features
from mambah.nn.dense import build_mlp
from mambah.nn.tracking import RangeScaler
from mambah.training.calo import fit_brem, fit_photon, photon_geometry

TINY = {"hidden": (16,), "epochs": 3, "batch_size": 1024, "learning_rate": 1e-2}


def _save(tmp, kind, res, extra=None):
    nets, arrays, info = res
    card = {"name": tmp.name, "version": "1", "kind": kind, "conditions": [], "targets": [],
            "hyperparameters": info["hyperparameters"], "metrics": info["metrics"], **(extra or {})}
    save_model_dir(tmp, card, networks=nets, arrays=arrays)
    return tmp


def _untrained(kind):
    """Untrained networks with the preprocessing fitted on a small reference sample."""
    if kind == "brem":
        d = brem_sample(2000, seed=1)
        sc = RangeScaler.fit(brem_features(*(d[c].to_numpy() for c in ("px", "py", "pz", "z"))), 3, BREM_FEATURES)
        nets = {"flag": build_mlp(3, 1, (8,)), "loss": build_mlp(3, 9, (8,)), "recovered": build_mlp(3, 9, (8,))}
        arrays = {**sc.arrays(), "loss_target_scale": np.ones(1, np.float32),
                  "recovered_target_scale": np.full(1, 0.05, np.float32)}
        return nets, arrays, {"hyperparameters": {"k_loss": 3, "k_recovered": 3}, "metrics": {}}
    from mambah.nn.calo import EcalGeometry

    geo = EcalGeometry(photon_geometry())
    d = photon_sample(4000, seed=2)
    px, py, pz, x, y, z = (d[c].to_numpy() for c in ("px", "py", "pz", "x", "y", "z"))
    xe, ye = geo.impact(px, py, pz, x, y, z)
    from mambah.physics import p_eta

    e, eta = p_eta(px, py, pz)
    ok = geo.accept(xe, ye)
    sc = RangeScaler.fit(photon_features(e[ok], eta[ok], xe[ok], ye[ok]), len(PHOTON_FEATURES), PHOTON_FEATURES)
    q = pi0_sample(2000, seed=3)
    f0 = geo.pi0_features(tuple(q[f"g1_{c}"].to_numpy() for c in ("px", "py", "pz")),
                          tuple(q[f"g2_{c}"].to_numpy() for c in ("px", "py", "pz")), *(q[c].to_numpy() for c in "xyz"))
    s0 = RangeScaler.fit(f0, len(PI0_FEATURES), PI0_FEATURES)
    n, n0 = len(PHOTON_FEATURES), len(PI0_FEATURES)
    nets = {"efficiency": build_mlp(n, 1, (8,)), "pi0": build_mlp(n0, 3, (8,)), "response": build_mlp(n, 18, (8,))}
    arrays = {**sc.arrays(), **s0.arrays("pi0_"), "response_target_scale": np.array([1.0, 5.0, 5.0], np.float32)}
    return nets, arrays, {"hyperparameters": {"k_response": 2}, "metrics": {}}


@pytest.fixture(scope="module")
def brem_dir(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("m") / "tiny-brem", "brem", _untrained("brem"))


@pytest.fixture(scope="module")
def photon_dir(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("m") / "tiny-photon", "photon", _untrained("photon"),
                 {"geometry": photon_geometry()})


@pytest.fixture(scope="module")
def brem_fit():
    return fit_brem(brem_sample(15_000, seed=1), name="tiny-brem", k_loss=3, k_recovered=3, **TINY)


@pytest.fixture(scope="module")
def photon_fit():
    return fit_photon(photon_sample(15_000, seed=2), pi0_sample(10_000, seed=3), name="tiny-photon", **TINY)


@pytest.mark.slow
def test_brem_training_helped(brem_fit, tmp_path):
    m = brem_fit[2]["metrics"]
    assert m["flag_val_bce"] < m["flag_val_bce_before"]
    assert m["loss_val_nll"] < m["loss_val_nll_before"]
    assert m["recovered_val_nll"] < m["recovered_val_nll_before"]
    f = m["val_brem_added_fraction"]
    assert abs(f["model"] - f["reference"]) < 0.1  # a tiny model, 3 epochs: the flag fraction roughly right
    model = load_model(_save(tmp_path / "fitted", "brem", brem_fit), kind="brem")
    d = brem_sample(5000, seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)
        flag, s = model.sample(*(d[c].to_numpy() for c in ("px", "py", "pz", "z")), seed=3)
    assert np.median(s[flag]) > np.median(s[~flag])  # recovery gives momentum back


def test_brem_model_loads_and_samples(brem_dir):
    m = load_model(brem_dir, kind="brem")
    assert isinstance(m, BremModel) and m.kind == "brem"
    d = brem_sample(5000, seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)
        flag, s = m.sample(*(d[c].to_numpy() for c in ("px", "py", "pz", "z")), seed=3)
    assert flag.dtype == bool and 0 < flag.mean() < 1
    assert (s > 0).all() and (s[~flag] <= 1).all()  # no photon added: never above the true momentum
    again = m.sample(*(d[c].to_numpy() for c in ("px", "py", "pz", "z")), seed=3)
    np.testing.assert_array_equal(again[1], s)


@pytest.mark.slow
def test_photon_training_helped(photon_fit, tmp_path):
    m = photon_fit[2]["metrics"]
    assert m["efficiency_val_bce"] < m["efficiency_val_bce_before"]
    assert m["pi0_val_cce"] < m["pi0_val_cce_before"]
    assert m["response_val_nll"] < m["response_val_nll_before"]
    model = load_model(_save(tmp_path / "fitted", "photon", photon_fit, {"geometry": photon_geometry()}))
    q = pi0_sample(3000, seed=9)
    g1 = tuple(q[f"g1_{c}"].to_numpy() for c in ("px", "py", "pz"))
    g2 = tuple(q[f"g2_{c}"].to_numpy() for c in ("px", "py", "pz"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)
        probs = model.pi0_probabilities(g1, g2, *(q[c].to_numpy() for c in ("x", "y", "z")))
    pm = np.hypot(g1[0] + g2[0], g1[2] + g2[2])
    merged = 1 - probs[:, PI0_RESOLVED]  # merged pi0 are the high-momentum ones
    assert merged[pm > np.median(pm)].mean() > merged[pm < np.median(pm)].mean() + 0.1


def test_photon_model_efficiency_and_response(photon_dir):
    m = load_model(photon_dir, kind="photon")
    assert isinstance(m, PhotonModel)
    d = photon_sample(5000, seed=8)
    cols = [d[c].to_numpy() for c in ("px", "py", "pz", "x", "y", "z")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)
        acc, prob = m.efficiency(*cols)
        e, xr, yr, qx, qy, qz = m.response(*cols, np.random.default_rng(1))
    np.testing.assert_array_equal(acc, d["in_acceptance"].to_numpy() == 1)  # the card's face = the reference's
    assert (prob[~acc] == 0).all() and 0 < prob[acc].mean() < 1
    pos = e > 0
    np.testing.assert_allclose(np.sqrt(qx * qx + qy * qy + qz * qz)[pos], e[pos], rtol=1e-9)
    q = pi0_sample(3000, seed=9)
    g1 = tuple(q[f"g1_{c}"].to_numpy() for c in ("px", "py", "pz"))
    g2 = tuple(q[f"g2_{c}"].to_numpy() for c in ("px", "py", "pz"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)
        probs = m.pi0_probabilities(g1, g2, *(q[c].to_numpy() for c in ("x", "y", "z")))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-9)


def _batch(descriptor, n=800, seed=4):
    pipe = Pipeline([*generator_stages(descriptor), Occupancy(), Efficiency(model="reference"),
                     Resolution(model="reference")])
    return pipe.process(pipe.make_batch(0, production_seed=seed, n_events=n))


def test_brem_model_stage(brem_dir):
    before = _batch("B+ -> (J/psi(1S) -> e+ e-) K+")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)
        after = Bremsstrahlung(model=str(brem_dir))(copy.deepcopy(before))
    p0, p1 = before["particles"], after["particles"]
    mc = before["mc_particles"].set_index("index")
    ele = np.abs(mc.loc[p0["mc_particle"].to_numpy(), "pid"].to_numpy()) == 11
    flag = p1["has_brem_added"].to_numpy()
    assert set(np.unique(flag[ele])) == {0, 1} and (flag[~ele] == 0).all()
    np.testing.assert_array_equal(p1.loc[~ele, "px"].to_numpy(), p0.loc[~ele, "px"].to_numpy())  # kaons untouched
    ratio = p1.loc[ele, "pz"].to_numpy() / p0.loc[ele, "pz"].to_numpy()
    assert (ratio[flag[ele] == 0] <= 1).all()
    info = after.info["reconstruction"]["brem"]
    assert info["electrons"] == int(ele.sum()) and info["with_brem_added"] == int((flag[ele] == 1).sum())
    stage = Bremsstrahlung(model=str(brem_dir))
    assert list(stage.model_versions()) == ["tiny-brem"] and stage.config()["model"] == str(brem_dir)


def test_neutrals_model_stage(photon_dir):
    b = _batch("B0 -> (K*(892)0 -> K+ pi-) gamma")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)
        out = Composites(neutrals=(22,))(Neutrals(model=str(photon_dir))(copy.deepcopy(b)))
    ph = out["particles"][out["particles"]["pid"] == 22]
    info = out.info["reconstruction"]["neutrals"]
    assert 0 < len(ph) == info["reconstructed"] < info["photons"]
    assert (ph["charge"] == 0).all() and np.isfinite(ph["e"]).all()
    d = _batch("D0 -> K- pi+ (pi0 -> gamma gamma)", n=800)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)
        out = Neutrals(model=str(photon_dir))(copy.deepcopy(d))
    info = out.info["reconstruction"]["neutrals"]
    assert info["pi0"] == 800 and 0 < info["merged_pi0"] < 800


def test_refusals(brem_dir, photon_dir):
    with pytest.raises(ConfigurationError, match="recovery=False"):
        Bremsstrahlung(model=str(brem_dir), recovery=False)
    with pytest.raises(ConfigurationError, match="not a 'brem'"):
        Bremsstrahlung(model=str(photon_dir))
    with pytest.raises(ConfigurationError, match="not a 'photon'"):
        Neutrals(model=str(brem_dir))
    with pytest.raises(ConfigurationError, match="unknown model 'no-such-photon-model'.*available: "):
        Neutrals(model="no-such-photon-model")
    with pytest.raises(ModelDirError, match="not 'photon'"):
        PhotonModel.load(brem_dir)


@pytest.mark.slow
def test_cli_sample_and_train(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "mambah", *a], capture_output=True, text=True, cwd=tmp_path)
    r = run("detector", "brem-sample", "-n", "20000", "-o", "e.parquet")
    assert r.returncode == 0, r.stderr
    r = run("train", "brem", "--data", "e.parquet", "-o", "m", "--epochs", "2", "--hidden", "16")
    assert r.returncode == 0, r.stderr
    assert "fraction with brem added" in r.stdout and (tmp_path / "m" / "flag.keras").is_file()
    r = run("train", "brem", "--data", "e.parquet", "-o", "m", "--epochs", "2")
    assert r.returncode != 0 and "already exists" in r.stderr
