"""The reference detector's track states (mambah.reference.trackstates): types, positive-definite
covariances, the closure of the measured states and of the IP computed from them, and the IP
resolution against the published VELO parameterisation."""

from __future__ import annotations

import numpy as np
import pytest

from mambah.errors import DataError
from mambah.reconstruction import vertexing as vx
from mambah.reference.tracking import TrackGun
from mambah.reference.trackstates import DOWNSTREAM, LONG, UPSTREAM, TrackStateModel

MODEL = TrackStateModel()


@pytest.fixture(scope="module")
def sample():
    g = TrackGun(prompt=0.5, flight_hi=2000.0)(300_000, seed=3)
    tt = MODEL.track_type(g["px"], g["py"], g["pz"], g["x"], g["y"], g["z"])
    keep = (tt > 0) & (g["pz"] > 0)
    g = {k: v[keep] for k, v in g.items()}
    r = MODEL.measure(*(g[k] for k in ("px", "py", "pz", "x", "y", "z", "pid")), seed=4)
    return g, r


def test_track_types_follow_the_documented_boundaries():
    det = MODEL.detector
    p = np.array([10_000.0, 1_000.0, 10_000.0, 10_000.0, 1_000.0, 10_000.0])
    z = np.array([0.0, 0.0, det.z_velo + 10, MODEL.z_ut + 10, det.z_velo + 10, det.z_velo - 10])
    x = np.array([0.0, 0.0, 0.0, 0.0, 0.0, det.rho_velo + 5])
    got = MODEL.track_type(np.zeros(6), np.zeros(6) + 0.1 * p, p, x, np.zeros(6), z)
    assert got.tolist() == [LONG, UPSTREAM, DOWNSTREAM, 0, 0, DOWNSTREAM]


def test_covariances_are_positive_definite_and_the_types_are_all_there(sample):
    _, r = sample
    assert set(np.unique(r["type"]).tolist()) == {LONG, UPSTREAM, DOWNSTREAM}
    assert (np.linalg.eigvalsh(r["cov"])[:, 0] > 0).all()
    np.testing.assert_array_equal(r["cov"], np.swapaxes(r["cov"], 1, 2))


def test_state_pulls_and_ip_pulls_are_unit_gaussians_by_construction(sample):
    """IP residual of the measured track w.r.t. its true origin, divided by its propagated error:
    mean 0 +- 0.02 and width 1.00 +- 0.03 per track type and in bins of pT and eta."""
    g, r = sample
    pulls = (r["state"] - r["true_state"]) / np.sqrt(np.diagonal(r["cov"], axis1=1, axis2=2))
    np.testing.assert_allclose(pulls.std(axis=0), 1.0, atol=0.01)
    pos, mom, cov6 = vx.particle_from_state(r["state"], r["cov"], r["z"])
    origin = np.stack([g["x"], g["y"], g["z"]], -1)
    res, c = vx.ip_residual(pos, mom, cov6, origin, np.zeros((len(origin), 3, 3)))
    ipp = res / np.sqrt(np.diagonal(c, axis1=1, axis2=2))
    pt = np.hypot(g["px"], g["py"])
    eta = np.arcsinh(g["pz"] / pt)
    bins = [r["type"] == t for t in (LONG, UPSTREAM, DOWNSTREAM)]
    bins += [(pt >= lo) & (pt < hi) for lo, hi in ((0, 500), (500, 1500), (1500, 1e9))]
    bins += [(eta >= lo) & (eta < hi) for lo, hi in ((1.6, 3.0), (3.0, 4.0), (4.0, 5.5))]
    for sel in bins:
        assert sel.sum() > 10_000
        np.testing.assert_allclose(ipp[sel].mean(axis=0), 0.0, atol=0.02)
        np.testing.assert_allclose(ipp[sel].std(axis=0), 1.0, atol=0.03)
    # the IP chi2 (2 dof) has mean 2
    assert vx.ip_chi2(pos, mom, cov6, origin, np.zeros((len(origin), 3, 3))).mean() == pytest.approx(2.0, abs=0.03)


def test_ip_resolution_of_long_tracks_is_of_the_published_order(sample):
    """RMS of the measured IPx residuals of long tracks in pT bins against sigma(IPx) = 12 + 23/pT um
    ([VELO], 2012 data) within 20 % for 1 < pT < 20 GeV/c; upstream tracks (same VELO segment)
    alike, downstream ones far worse."""
    g, r = sample
    pt = np.hypot(g["px"], g["py"]) * 1e-3
    dz = r["z"] - r["z"]  # states are at the plane of closest approach: IPx residual = x residual
    ipx = (r["state"][:, 0] - r["true_state"][:, 0]) + dz
    for lo, hi in ((1, 1.5), (1.5, 2.5), (2.5, 5), (5, 20)):
        sel = (r["type"] == LONG) & (pt >= lo) & (pt < hi)
        rms_um = np.sqrt(np.mean(ipx[sel] ** 2)) * 1e3
        published = np.mean(12 + 23 / pt[sel])
        assert rms_um == pytest.approx(published, rel=0.2), (lo, hi, rms_um, published)
    sel = (pt > 1) & (pt < 2)
    rms = {t: np.sqrt(np.mean(ipx[sel & (r["type"] == t)] ** 2)) for t in (LONG, DOWNSTREAM)}
    assert rms[DOWNSTREAM] > 10 * rms[LONG]
    sq = np.sqrt(r["cov"][:, 4, 4]) * np.abs(1 / r["true_state"][:, 4])
    assert np.median(sq[r["type"] == UPSTREAM]) > 10 * np.median(sq[r["type"] == LONG])


def test_track_quality_distributions(sample):
    _, r = sample
    long = r["type"] == LONG
    assert (r["ndof"][long] == MODEL.ndof[0]).all()
    f, s = MODEL.chi2_tail_fraction, MODEL.chi2_tail_scale
    want = 1 - f + f * s
    assert (r["chi2"] / r["ndof"]).mean() == pytest.approx(want, rel=0.01)
    a, b = MODEL.ghost_beta
    assert r["ghost_prob"].mean() == pytest.approx(a / (a + b), rel=0.02)
    assert ((r["ghost_prob"] >= 0) & (r["ghost_prob"] <= 1)).all()


def test_untracked_particles_and_backward_tracks_are_refused():
    with pytest.raises(DataError, match="no track type"):
        MODEL.measure([0.0], [100.0], [10_000.0], [0.0], [0.0], [MODEL.z_ut + 1], [211], seed=1)
    with pytest.raises(DataError, match="forward"):
        MODEL.true_state([0.0], [100.0], [-10_000.0], [0.0], [0.0], [0.0], [1])
