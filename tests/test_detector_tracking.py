"""The reference tracker: acceptance, efficiency, resolution against their documented numbers."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from mambah.errors import ConfigurationError
from mambah.physics import SPECIES, p_eta, pdg_charge, pdg_mass, rebuild_momentum
from mambah.reference.tracking import TrackGun, TrackingDetector, tracking_sample


def _track(p, eta, phi=0.3):
    theta = 2 * np.arctan(np.exp(-np.asarray(eta, float)))
    p = np.asarray(p, float)
    return p * np.sin(theta) * np.cos(phi), p * np.sin(theta) * np.sin(phi), p * np.cos(theta)


DET = TrackingDetector()


def test_resolution_matches_the_lhcb_numbers():
    # LHCb-DP (arXiv:1412.6352): 0.5 % at 20 GeV, 1.0 % at 200 GeV (beta = 1)
    s = DET.sigma_p(np.array([20e3, 200e3]), pid=13)
    assert s[0] == pytest.approx(0.005, rel=0.01)
    assert s[1] == pytest.approx(0.010, rel=0.01)
    # multiple scattering grows as 1/beta: a slow proton is worse than a muon at the same p
    assert DET.sigma_p(3e3, 2212) > DET.sigma_p(3e3, 13)
    # slope resolution: Highland angle ~ 1/p at low p, constant floor at high p
    st = DET.sigma_slope(np.array([2e3, 4e3, 1e6]), pid=211)
    assert st[0] / st[1] == pytest.approx(2.0, rel=0.05)
    assert st[2] == pytest.approx(DET.slope_meas, rel=0.2)


def test_efficiency_shape():
    n = 5
    z0 = np.zeros(n)
    # plateau above 5 GeV in the acceptance, > 96 % of 1 for muons from the PV (LHCb-DP)
    px, py, pz = _track(np.full(n, 10e3), np.linspace(2.5, 4.5, n))
    eff = DET.efficiency(px, py, pz, z0, z0, z0, np.full(n, 13))
    assert np.all(eff > 0.96) and np.all(eff <= 0.97)
    # hadrons lose a little to hadronic interactions, electrons to bremsstrahlung
    e_pi = DET.efficiency(px, py, pz, z0, z0, z0, np.full(n, 211))
    e_el = DET.efficiency(px, py, pz, z0, z0, z0, np.full(n, -11))
    assert np.all(e_el < e_pi) and np.all(e_pi < eff)
    # outside 2 < eta < 5 or below ~2 GeV: nothing
    px, py, pz = _track(np.array([10e3, 10e3, 0.5e3]), np.array([1.6, 5.4, 3.0]))
    assert np.all(DET.efficiency(px, py, pz, *np.zeros((3, 3)), np.full(3, 211)) < 0.02)
    # falls with the origin's z (daughters of K0S / Lambda decaying after the VELO) and radius
    px, py, pz = _track(np.full(4, 10e3), np.full(4, 3.5))
    z = np.array([0.0, 300.0, 600.0, 900.0])
    ez = DET.efficiency(px, py, pz, np.zeros(4), np.zeros(4), z, np.full(4, 211))
    assert np.all(np.diff(ez) < 0) and ez[-1] < 0.01 and ez[0] > 0.9
    er = DET.efficiency(px, py, pz, np.array([0.0, 30.0, 60.0, 80.0]), np.zeros(4), np.zeros(4), np.full(4, 211))
    assert np.all(np.diff(er) < 0) and er[-1] < 0.01
    # lower at low momentum
    px, py, pz = _track(np.array([2.5e3, 4e3, 20e3]), np.full(3, 3.5))
    ep = DET.efficiency(px, py, pz, *np.zeros((3, 3)), np.full(3, 211))
    assert np.all(np.diff(ep) > 0)
    # species that are not tracked get 0
    assert DET.efficiency(*_track([10e3], [3.5]), [0.0], [0.0], [0.0], [22])[0] == 0.0


def test_smearing_distribution_has_the_documented_core_and_tails():
    n = 400_000
    px, py, pz = _track(np.full(n, 50e3), np.full(n, 3.5))
    rx, ry, rz = DET.smear(px, py, pz, np.full(n, 211), seed=1)
    p = 50e3
    r = np.sqrt(rx**2 + ry**2 + rz**2) / p - 1
    s = DET.sigma_p(p, 211)
    f, k = DET.tail_fraction, DET.tail_scale
    # variance of the two-Gaussian mixture, and the fraction beyond 5 core sigmas (tails)
    assert r.std() == pytest.approx(s * np.sqrt(1 - f + f * k**2), rel=0.01)
    from scipy.stats import norm

    expect = f * 2 * norm.sf(5 / k) + (1 - f) * 2 * norm.sf(5)
    frac = np.mean(np.abs(r) > 5 * s)
    assert frac == pytest.approx(expect, abs=5 * np.sqrt(expect / n))
    dtx = rx / rz - px / pz
    assert dtx.std() == pytest.approx(DET.sigma_slope(p, 211), rel=0.01)
    assert abs(np.mean(r)) < 5 * r.std() / np.sqrt(n)


def test_rebuild_momentum_identity_and_seed():
    px, py, pz = _track(np.array([5e3, 80e3]), np.array([2.2, 4.8]))
    zero = np.zeros(2)
    out = rebuild_momentum(px, py, pz, zero, zero, zero)
    np.testing.assert_allclose(out, (px, py, pz), rtol=1e-12)
    a = DET.smear(px, py, pz, [211, 211], seed=3)
    b = DET.smear(px, py, pz, [211, 211], seed=3)
    np.testing.assert_array_equal(a, b)


def test_pdg_lookups():
    np.testing.assert_allclose(pdg_mass(np.array([211, -321, 2212, 4122])), [139.57039, 493.677, 938.27208943, 2286.46],
                               rtol=1e-6)
    np.testing.assert_array_equal(pdg_charge(np.array([211, -211, 13, -13, 4122, 22])), [1, -1, -1, 1, 1, 0])
    with pytest.raises(ConfigurationError, match="unknown PDG id"):
        pdg_mass(np.array([999999999]))


def test_bad_parameters_are_refused():
    with pytest.raises(ConfigurationError, match="eta_min"):
        TrackingDetector(eta_min=5, eta_max=2)
    with pytest.raises(ConfigurationError, match="plateau"):
        TrackingDetector(plateau=(1.0, 1.0))


def test_tracking_sample_columns_and_truth():
    df = tracking_sample(200_000, seed=5)
    assert list(df.columns) == ["pid", "charge", "px", "py", "pz", "x", "y", "z", "eff_true", "reconstructed",
                                "px_reco", "py_reco", "pz_reco", "eff_long", "eff_upstream", "eff_downstream",
                                "track_type"]
    # the Bernoulli draws follow eff_true: mean and a calibration check in deciles
    n = len(df)
    assert df.reconstructed.mean() == pytest.approx(df.eff_true.mean(), abs=5 * 0.5 / np.sqrt(n))
    q = pd.qcut(df.eff_true, 10, duplicates="drop")
    g = df.groupby(q, observed=True).agg(m=("reconstructed", "mean"), e=("eff_true", "mean"), k=("pid", "size"))
    assert np.all(np.abs(g.m - g.e) < 5 * np.sqrt(g.e * (1 - g.e) / g.k) + 1e-3)
    reco = df.reconstructed.to_numpy() > 0
    assert np.isfinite(df.loc[reco, "px_reco"]).all() and df.loc[~reco, "px_reco"].isna().all()
    assert set(np.unique(np.abs(df.pid))) == {11, 13, 211, 321, 2212}
    # displaced origins cover the region past the end of the VELO
    assert (df.z > 750).mean() > 0.05
    p, eta = p_eta(df.px, df.py, df.pz)
    g = TrackGun()
    assert p.min() >= g.p_lo * 0.999 and p.max() <= g.p_hi * 1.001
    assert eta.min() >= g.eta_lo - 1e-9 and eta.max() <= g.eta_hi + 1e-9
    assert len(SPECIES) == 5


def test_cli_tracking_sample(tmp_path):
    out = tmp_path / "t.parquet"
    cmd = [sys.executable, "-m", "mambah", "-q", "detector", "tracking-sample", "--events", "2000", "--seed", "3",
           "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    df = pd.read_parquet(out)
    assert len(df) == 2000
    pd.testing.assert_frame_equal(df, tracking_sample(2000, seed=3))
    # refuses to overwrite, clear message, nothing changed
    before = out.read_bytes()
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2 and "--overwrite" in r.stderr
    assert out.read_bytes() == before
    r = subprocess.run([sys.executable, "-m", "mambah", "detector", "tracking-sample", "--events", "0", "--out",
                        str(tmp_path / "x.parquet")], capture_output=True, text=True)
    assert r.returncode == 2 and "--events must be positive" in r.stderr
