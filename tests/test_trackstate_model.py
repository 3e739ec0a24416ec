"""The track-state network (issue 23): its covariance parameterisation, its loss, training through
the CLI, the model directory's checks, the Vertexing stage with it, and the shipped model's closure
against the reference detector on tracks it never saw."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from mambah.errors import ConfigurationError, DataError, ModelDirError
from mambah.nn.trackstate import PAIRS, cholesky_from_params, params_from_covariance


def random_covariances(n: int, seed: int = 0) -> np.ndarray:
    """PD covariances with very different scales per parameter and strong correlations."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, 5, 5))
    c = a @ np.swapaxes(a, 1, 2) + 0.05 * np.eye(5)
    s = np.array([1e-2, 1e-2, 1e-4, 1e-4, 1e-6]) * np.exp(rng.normal(size=(n, 5)))
    return c * s[:, :, None] * s[:, None, :]


def test_parameters_round_trip_to_the_same_covariance():
    cov = random_covariances(500)
    p = params_from_covariance(cov)
    assert p.shape == (500, 15) and len(PAIRS) == 10
    L = cholesky_from_params(p)
    back = L @ np.swapaxes(L, 1, 2)
    rel = np.abs(back - cov) / np.sqrt(np.einsum("nii->ni", cov)[:, :, None] * np.einsum("nii->ni", cov)[:, None, :])
    assert rel.max() < 1e-10
    # any finite parameters make a Cholesky factor with a positive diagonal (a PD covariance)
    q = np.random.default_rng(1).normal(scale=3.0, size=(1000, 15))
    assert (np.einsum("nii->ni", cholesky_from_params(q)) > 0).all()
    L = cholesky_from_params(q / 3)
    assert (np.linalg.eigvalsh(L @ np.swapaxes(L, 1, 2)) > 0).all()


def test_a_covariance_that_is_not_positive_definite_is_an_error_naming_the_model():
    p = params_from_covariance(random_covariances(4))
    p[2, 7] = np.nan
    with pytest.raises(DataError, match=r"model 'ts-x' produced 1 covariance.*rows \[2\]"):
        cholesky_from_params(p, "ts-x")
    p[2, 7] = 40.0  # tanh rounds to 1 in float64: a degenerate matrix
    with pytest.raises(DataError, match="not positive definite"):
        cholesky_from_params(p, "ts-x")
    bad = random_covariances(2)
    bad[0, 0, 1] = bad[0, 1, 0] = 10 * np.sqrt(bad[0, 0, 0] * bad[0, 1, 1])
    with pytest.raises(DataError, match="not positive definite"):
        params_from_covariance(bad)


def test_the_keras_kl_loss_is_the_gaussians_kl_divergence():
    from mambah.training.trackstate import covariance_kl_loss, covariance_kl_numpy

    cov_t, cov_m = random_covariances(64, seed=2), random_covariances(64, seed=3)
    pt, pm = params_from_covariance(cov_t), params_from_covariance(cov_m)
    # independent: KL from the matrices themselves
    inv = np.linalg.inv(cov_m)
    kl = 0.5 * (np.einsum("nij,nji->n", inv, cov_t) - 5 + np.linalg.slogdet(cov_m)[1] - np.linalg.slogdet(cov_t)[1])
    assert np.allclose(covariance_kl_numpy(pt, pm), kl, rtol=1e-8)
    assert np.allclose(covariance_kl_numpy(pt, pt), 0.0, atol=1e-9)
    mean, scale = pt.mean(axis=0), pt.std(axis=0)
    loss = covariance_kl_loss(mean, scale)
    got = np.asarray(loss(((pt - mean) / scale).astype(np.float32), ((pm - mean) / scale).astype(np.float32)))
    assert np.allclose(got, kl, rtol=2e-3, atol=1e-3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny model trained through the CLI as a user does (sample, train), with its files."""
    from mambah.io import write_table
    from mambah.reference.trackstates import trackstate_sample

    d = tmp_path_factory.mktemp("ts")
    write_table(trackstate_sample(30_000, seed=5), str(d / "train.parquet"))
    write_table(trackstate_sample(8_000, seed=6), str(d / "held.parquet"))
    r = subprocess.run([sys.executable, "-m", "mambah", "-q", "train", "trackstate", "--data", str(d / "train.parquet"),
                        "--closure-data", str(d / "held.parquet"), "--out", str(d / "m"), "--epochs", "3",
                        "--kl-epochs", "1", "--hidden", "32,32,32"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    assert "validation covariance KL" in r.stdout and "held-out tracks" in r.stdout
    return d


def test_cli_training_writes_a_true_card(tiny):
    card = json.loads((tiny / "m" / "card.json").read_text())
    assert card["kind"] == "trackstate" and card["name"] == "m"
    m = card["metrics"]
    assert m["val_cov_kl"] < m["val_cov_kl_before"] and m["val_quality_nll"] < m["val_quality_nll_before"]
    assert m["closure"]["n"] > 1000 and "train trackstate" in card["command"]
    assert card["hyperparameters"]["ndof_by_type"] == [25, 12, 16]  # the reference detector's


def test_the_loaded_model_measures_tracks(tiny):
    from mambah.nn.registry import load_model
    from mambah.reference.trackstates import trackstate_sample

    net = load_model(tiny / "m", kind="trackstate")
    df = trackstate_sample(3000, seed=9)
    cols = [df[c].to_numpy() for c in ("px", "py", "pz", "x", "y", "z", "pid")]
    counts: list = []
    m = net.measure(*cols, seed=1, track_type=df["track_type"].to_numpy(), counts=counts)
    n = len(df)
    assert m["state"].shape == (n, 5) and m["cov"].shape == (n, 5, 5) and len(counts) == 1
    assert (np.linalg.eigvalsh(m["cov"]) > 0).all()
    assert np.allclose(m["true_state"], df[[f"true_{k}" for k in ("x", "y", "tx", "ty", "qop")]].to_numpy())
    assert ((m["ghost_prob"] > 0) & (m["ghost_prob"] < 1)).all() and (m["chi2"] > 0).all()
    assert set(np.unique(m["ndof"])) <= {25, 12, 16}
    # same seed, same draws
    again = net.measure(*cols, seed=1, track_type=df["track_type"].to_numpy())
    assert np.array_equal(again["state"], m["state"])
    with pytest.raises(DataError, match="track types must be"):
        net.measure(*cols, seed=1, track_type=np.zeros(n, dtype=np.int8))
    with pytest.raises(DataError, match="needs the tracks' types"):
        net.measure(*cols, seed=1)


def test_a_damaged_model_directory_is_refused(tiny, tmp_path):
    import shutil

    from mambah.modeldir import load_arrays, save_model_dir
    from mambah.nn.trackstate import TrackStateNet

    bad = tmp_path / "bad"
    shutil.copytree(tiny / "m", bad)
    arrays = load_arrays(bad)
    arrays.pop("ndof_by_type")
    card = json.loads((bad / "card.json").read_text())
    import keras

    nets = {k: keras.saving.load_model(bad / f"{k}.keras") for k in ("cov", "quality")}
    save_model_dir(tmp_path / "bad2", card, networks=nets, arrays=arrays)
    with pytest.raises(ModelDirError, match="ndof_by_type"):
        TrackStateNet.load(tmp_path / "bad2")


def test_vertexing_stage_with_a_model_and_its_bad_names(tiny):
    from mambah import Composites, Efficiency, Occupancy, Pipeline, Resolution, generator_stages
    from mambah.reconstruction import Vertexing

    with pytest.raises(ConfigurationError, match="unknown model 'no-such-model'"):
        Vertexing(model="no-such-model")
    with pytest.raises(ConfigurationError, match="is a 'resolution' model, not a 'trackstate' one"):
        Vertexing(model="resolution-ref-v1")
    v = Vertexing(model=str(tiny / "m"))
    assert "m" in v.model_versions() and "reference-pileup" in v.model_versions()
    stages = [*generator_stages("Lambda_c+ -> p+ K- pi+"), Occupancy(), Efficiency(model="reference"),
              Resolution(model="reference"), Composites(), v]
    pipe = Pipeline(stages)
    b = pipe.process(pipe.make_batch(0, production_seed=3, n_events=300))
    parts = b["particles"]
    tracks = parts["vertex"].to_numpy() < 0
    assert np.isfinite(parts["ipchi2_ownpv"].to_numpy()[tracks]).all()
    assert np.isfinite(b["vertices"]["chi2"].to_numpy()).all()
    g = parts["track_ghost_prob"].to_numpy()[tracks]
    assert ((g > 0) & (g < 1)).all()


def test_shipped_model_closes_on_held_out_reference_tracks():
    """``models/trackstate-ref-v1`` against the reference detector on tracks drawn with a seed the
    training never used: the reference's own state residuals, divided by the model's sigma, have unit
    width for long tracks (the IP coordinates x, y; 4 standard errors and 3 % of model error), as have
    their impact parameters to the true origin divided by the propagated error (IP chi2 mean 2), their
    5-parameter chi2 against the model covariance has mean 5 within 5 %, and the track chi2/ndof and
    ghost probability distributions agree (KS distance < 0.02)."""
    from mambah.nn.registry import load_model
    from mambah.reference.trackstates import trackstate_sample
    from mambah.training.trackstate import trackstate_closure

    net = load_model("trackstate-ref-v1", kind="trackstate")
    df = trackstate_sample(300_000, seed=20261206)
    c = trackstate_closure(net, df, min_count=3000)
    long_bins = [b for b in c["bins"] if b["type"] == 3]
    assert len(long_bins) >= 10
    for b in long_bins:
        tol = 0.03 + 4 / np.sqrt(2 * b["n"])
        assert abs(b["pull_x_std"] - 1) < tol and abs(b["pull_y_std"] - 1) < tol, b
        assert abs(b["pull_x_mean"]) < 0.02 + 4 / np.sqrt(b["n"]), b
        # the impact parameter to the true origin, with its error propagated from the model's covariance
        for k in ("ipx", "ipy"):
            assert abs(b[f"pull_{k}_std"] - 1) < tol and abs(b[f"pull_{k}_mean"]) < 0.02 + 4 / np.sqrt(b["n"]), b
        assert abs(b["ipchi2_mean"] / 2 - 1) < 0.03 + 4 / np.sqrt(b["n"]), b
    assert abs(c["chi2_mean"] / 5 - 1) < 0.05
    assert c["chi2ndof_ks"] < 0.02 and c["ghost_ks"] < 0.02 and c["ndof_agree"] == 1.0


@pytest.mark.parametrize("mode", ["reference", "network"])
def test_upstream_and_downstream_tracks_get_their_momentum_resolution(mode):
    """The resolution models describe long tracks; an upstream track's momentum residual is about 30
    times wider and a downstream track's 1.2 times (the reference detector's factors; in network
    mode as the track-state network learned them), at the same kinematics."""
    from mambah import Composites, Efficiency, Occupancy, Pipeline, Resolution, generator_stages

    res = Resolution(model="reference") if mode == "reference" else Resolution()
    stages = [*generator_stages("B0 -> (K_S0 -> pi+ pi-) pi+ pi-"), Occupancy(),
              Efficiency(model="reference", track_types=("long", "upstream", "downstream")), res, Composites()]
    pipe = Pipeline(stages)
    b = pipe.process(pipe.make_batch(0, production_seed=7, n_events=6000))
    parts, mc = b["particles"], b["mc_particles"].set_index("index")
    tr = parts[parts["vertex"] < 0]
    true = mc.loc[tr["mc_particle"].to_numpy(), ["px", "py", "pz"]].to_numpy()
    reco = tr[["px", "py", "pz"]].to_numpy()
    r = np.linalg.norm(reco, axis=1) / np.linalg.norm(true, axis=1) - 1
    p = np.linalg.norm(true, axis=1)
    tt = tr["track_type"].to_numpy()
    info = b.info["reconstruction"]["resolution"]
    assert info["upstream"] == (tt == 4).sum() > 30 and info["downstream"] == (tt == 5).sum() > 100
    # the scale of each track against a long track of the same kinematics, then the residual widths
    scale = {}
    for code, want in ((4, 30.0), (5, 1.2)):
        sel = tt == code
        long_ = (tt == 3) & (p > np.percentile(p[sel], 10)) & (p < np.percentile(p[sel], 90))
        w = lambda a: 0.5 * np.subtract(*np.percentile(a, [84.13, 15.87]))  # noqa: E731
        scale[code] = w(r[sel]) / w(r[long_])
    assert 15 < scale[4] < 60 and 1.0 < scale[5] < 1.5, scale
    # one track of each type where that type exists (upstream: below 2 GeV/c; downstream from z = 1 m)
    o = np.zeros(3)
    s = res.type_scale(np.array([300.0, 100, 300]), np.array([300.0, 100, 300]), np.array([20000.0, 1500, 20000]), o, o,
                       np.array([0.0, 0, 1000]), np.array([211] * 3), np.array([3, 4, 5]))
    assert s[0] == 1.0 and s[1] == pytest.approx(30, rel=0.1) and s[2] == pytest.approx(1.2, rel=0.1)
