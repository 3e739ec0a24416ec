"""The reference detector's bremsstrahlung, brem recovery and calorimeter (issue 25) against
analytic expectations computed here independently (scipy's incomplete gamma function, the
resolution formulas written out, straight-line geometry). Seeded; tolerances from the statistics.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from particle import Particle
from scipy import stats
from scipy.special import gammaincc

from mambah.errors import ConfigurationError
from mambah.reference.brem import MATERIAL, BremDetector, MaterialLayer, bethe_heitler_kept, kept_fraction_mean
from mambah.reference.calorimeter import LOST, MERGED_PI0, Calorimeter

N = 200_000


@pytest.mark.parametrize("t", [0.02, 0.3, 1.0])
def test_bethe_heitler_moments_and_cdf(t):
    z = bethe_heitler_kept(np.full(N, t), np.random.default_rng(1))
    c = t / math.log(2)
    # <z> = exp(-t), <z^2> = 3^-c, P(z < 1/2) = P(-ln z > ln 2) = Q(c, ln 2)
    assert abs(z.mean() - math.exp(-t)) < 5 * z.std() / math.sqrt(N)
    assert abs((z * z).mean() - 3.0 ** (-c)) < 5 * (z * z).std() / math.sqrt(N)
    p = gammaincc(c, math.log(2))
    assert abs((z < 0.5).mean() - p) < 5 * math.sqrt(p * (1 - p) / N) + 1e-9
    np.testing.assert_allclose(kept_fraction_mean(t), math.exp(-t))


def test_zero_thickness_keeps_everything():
    assert (bethe_heitler_kept(np.zeros(10), np.random.default_rng(0)) == 1).all()
    with pytest.raises(ConfigurationError):
        bethe_heitler_kept(np.array([-0.1]), np.random.default_rng(0))


def _total_after(z0: float) -> float:
    """X/X0 downstream of z0 for a track along the beam, from the table itself (not the code)."""
    tot = 0.0
    for m in MATERIAL:
        frac = min(max((m.z_hi - max(z0, m.z_lo)) / (m.z_hi - m.z_lo), 0.0), 1.0)
        tot += m.x0 * frac
    return tot


@pytest.mark.parametrize("z0", [-50.0, 375.0, 900.0, 3000.0])
def test_the_layers_add_up_to_bethe_heitler_of_their_sum(z0):
    det = BremDetector()
    n = 100_000
    ones = np.ones(n)
    r = det.response(0 * ones, 0 * ones, 30_000 * ones, 0.0, 0.0, z0, seed=4)
    t = _total_after(z0)
    assert abs(r["kept"].mean() - math.exp(-t)) < 5 * max(r["kept"].std(), 1e-12) / math.sqrt(n) + 1e-12
    # the measured momentum is what is left at the magnet, the direction unchanged
    np.testing.assert_allclose(r["pz"], 30_000 * r["kept"])
    # energy is conserved: electron left + photons = initial
    np.testing.assert_allclose(r["pz"] + r["photon_e"].sum(axis=1), 30_000, rtol=1e-12)


def test_thickness_grows_with_the_path_length():
    det = BremDetector()
    t0 = det.thickness(np.array([0.0]), np.array([0.0]), np.array([1.0e4]), 0.0).sum()
    t1 = det.thickness(np.array([2.0e3]), np.array([1.0e3]), np.array([1.0e4]), 0.0).sum()
    assert t0 == pytest.approx(sum(m.x0 for m in MATERIAL))
    assert t1 == pytest.approx(t0 * math.sqrt(1 + 0.2**2 + 0.1**2))


def test_emission_points_lie_in_the_crossed_part_of_each_layer():
    det = BremDetector()
    r = det.response(np.full(5000, 1e3), np.zeros(5000), np.full(5000, 2e4), 0.0, 0.0, 400.0, seed=2)
    for i, m in enumerate(MATERIAL):
        zi = r["photon_z"][:, i]
        assert (zi >= max(m.z_lo, 400.0)).all() and (zi <= m.z_hi).all()


def _ideal_calo() -> Calorimeter:
    return Calorimeter(stochastic=0.0, constant=0.0)


def test_perfect_recovery_gives_back_the_true_momentum_and_none_gives_the_measured_one():
    n = 20_000
    px, py, pz = np.full(n, 1500.0), np.full(n, 900.0), np.full(n, 15_000.0)  # in the ECAL, outside the hole
    perfect = BremDetector(eff_velo=1.0, eff_downstream=1.0, et_min=0.0, calorimeter=_ideal_calo())
    r = perfect.response(px, py, pz, seed=1)
    np.testing.assert_allclose(r["pz_reco"], pz, rtol=1e-12)
    assert r["has_brem_added"].all()
    none = BremDetector(eff_velo=0.0, eff_downstream=0.0)
    r = none.response(px, py, pz, seed=1)
    np.testing.assert_array_equal(r["pz_reco"], r["pz"])
    assert not r["has_brem_added"].any() and (r["pz"] < pz).all()


@pytest.mark.parametrize("eff", [0.3, 0.7])
def test_fraction_with_brem_added_follows_bethe_heitler_above_the_threshold(eff):
    """One slab: the photon carries E_g = p (1 - z) with -ln z ~ Gamma(c); it is added when
    E_T = E_g pT / p > et_min and found (probability eff), so
    P(HASBREMADDED) = eff * P(-ln z > -ln(1 - et_min p / (pT p))) = eff * Q(c, -ln(1 - et_min / pT))."""
    n = 100_000
    slab = (MaterialLayer("slab", 100.0, 200.0, 0.2, True),)
    det = BremDetector(material=slab, eff_velo=eff, eff_downstream=0.0, et_min=75.0)
    pt = math.hypot(1500.0, 900.0)
    r = det.response(np.full(n, 1500.0), np.full(n, 900.0), np.full(n, 15_000.0), seed=3)
    c = det.thickness(np.array([1500.0]), np.array([900.0]), np.array([15_000.0]), 0.0).sum() / math.log(2)
    expect = eff * gammaincc(c, -math.log(1 - 75.0 / pt))
    assert abs(r["has_brem_added"].mean() - expect) < 5 * math.sqrt(expect * (1 - expect) / n)


def test_brem_recovery_restores_part_of_the_loss_and_the_tail_remains():
    n = 100_000
    rng = np.random.default_rng(9)
    eta = rng.uniform(2.2, 4.8, n)
    phi = rng.uniform(0, 2 * np.pi, n)
    pt = rng.uniform(1000, 5000, n)
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    r = BremDetector().response(px, py, pz, seed=5)
    p = np.sqrt(px**2 + py**2 + pz**2)
    meas = np.sqrt(r["px"] ** 2 + r["py"] ** 2 + r["pz"] ** 2) / p
    reco = np.sqrt(r["px_reco"] ** 2 + r["py_reco"] ** 2 + r["pz_reco"] ** 2) / p
    assert abs(1 - reco.mean()) < abs(1 - meas.mean())  # recovery helps on average
    assert 0.3 < r["has_brem_added"].mean() < 0.95
    assert (meas[~r["has_brem_added"]] == reco[~r["has_brem_added"]]).all()
    assert (reco < 0.8).mean() > 0.02  # the radiative tail stays


def test_bad_material_and_efficiencies_are_refused():
    with pytest.raises(ConfigurationError):
        MaterialLayer("x", 10.0, 5.0, 0.1, False)
    with pytest.raises(ConfigurationError):
        BremDetector(eff_velo=1.5)
    with pytest.raises(ConfigurationError):
        BremDetector(material=(MATERIAL[2], MATERIAL[0]))
    with pytest.raises(ConfigurationError):
        Calorimeter(plateau=0.0)


# ----------------------------------------------------------------------------------- calorimeter
@pytest.mark.parametrize("e_gev", [2.0, 10.0, 50.0])
def test_energy_resolution_is_ten_percent_over_sqrt_e_plus_one_percent(e_gev):
    n = 100_000
    e = e_gev * 1e3
    # a photon at eta ~ 3 along x: inside the middle/outer region, E_T well above threshold
    theta = 2 * math.atan(math.exp(-3.0))
    px, pz = np.full(n, e * math.sin(theta)), np.full(n, e * math.cos(theta))
    r = Calorimeter().photon_response(px, np.zeros(n), pz, seed=int(e_gev))
    rel = r["e"][r["reconstructed"]] / e - 1
    want = math.sqrt(0.10**2 / e_gev + 0.01**2)
    m = rel.size
    assert abs(rel.std() - want) < 5 * want / math.sqrt(2 * m)
    assert abs(rel.mean()) < 5 * want / math.sqrt(m)


def test_position_resolution_and_momentum_direction():
    n = 100_000
    cal = Calorimeter()
    e = 20_000.0
    theta = 0.06  # x at the ECAL ~ 750 mm: inner region
    px, pz = np.full(n, e * math.sin(theta)), np.full(n, e * math.cos(theta))
    r = cal.photon_response(px, np.zeros(n), pz, seed=8)
    ok = r["reconstructed"]
    x_true = cal.z_ecal * math.tan(theta)
    assert abs(x_true) < cal.x_inner
    want = 40.4 * math.sqrt(0.30**2 / 20.0 + 0.05**2)
    d = r["x"][ok] - x_true
    assert abs(d.std() - want) < 5 * want / math.sqrt(2 * ok.sum())
    np.testing.assert_allclose(np.sqrt(r["px"][ok] ** 2 + r["py"][ok] ** 2 + r["pz"][ok] ** 2), r["e"][ok])
    np.testing.assert_allclose(r["px"][ok] / r["pz"][ok], r["x"][ok] / cal.z_ecal)


def test_photon_efficiency_plateau_threshold_and_acceptance():
    n = 100_000
    cal = Calorimeter()
    # well above threshold, in acceptance: the plateau
    r = cal.photon_response(np.full(n, 3000.0), np.zeros(n), np.full(n, 50_000.0), seed=2)
    assert r["in_acceptance"].all()
    assert abs(r["reconstructed"].mean() - 0.95) < 5 * math.sqrt(0.95 * 0.05 / n)
    # at the threshold: half the plateau (the logistic's midpoint)
    r = cal.photon_response(np.full(n, 200.0), np.zeros(n), np.full(n, 5_000.0), seed=3)
    assert abs(r["reconstructed"].mean() - 0.475) < 5 * math.sqrt(0.25 / n)
    # into the beam hole, or beyond the outer edge: never
    assert not cal.photon_response(np.zeros(100), np.zeros(100), np.full(100, 5e4), seed=1)["reconstructed"].any()
    assert not cal.photon_response(np.full(100, 2e4), np.zeros(100), np.full(100, 5e4), seed=1)["reconstructed"].any()


def _pi0_decays(pt: float, n: int, rng, eta: float = 3.0):
    """pi0 at (eta, phi=0) with transverse momentum pt, decayed isotropically; returns the photons."""
    m = float(Particle.from_pdgid(111).mass)
    p = pt * math.cosh(eta)
    e = math.hypot(p, m)
    cth, phi = rng.uniform(-1, 1, n), rng.uniform(0, 2 * np.pi, n)
    k = m / 2
    sth = np.sqrt(1 - cth**2)
    kx, ky, kz = k * sth * np.cos(phi), k * sth * np.sin(phi), k * cth
    g, bg = e / m, p / m
    th = 2 * math.atan(math.exp(-eta))
    out = []
    for s in (1, -1):
        zb = g * s * kz + bg * k
        xb = s * kx
        out.append((xb * math.cos(th) + zb * math.sin(th), s * ky, -xb * math.sin(th) + zb * math.cos(th)))
    return out


def test_merged_pi0_fraction_rises_with_pt_and_follows_the_separation_rule():
    cal = Calorimeter()
    rng = np.random.default_rng(11)
    fractions = []
    for pt in (500.0, 1500.0, 3000.0, 5000.0, 10_000.0):
        g1, g2 = _pi0_decays(pt, 20_000, rng)
        r = cal.pi0_response(g1, g2, seed=int(pt))
        # independent: straight lines from the origin to the ECAL face, 2 cells at the weighted centre
        x1, y1 = cal.z_ecal * g1[0] / g1[2], cal.z_ecal * g1[1] / g1[2]
        x2, y2 = cal.z_ecal * g2[0] / g2[2], cal.z_ecal * g2[1] / g2[2]
        e1, e2 = (np.sqrt(sum(c * c for c in g)) for g in (g1, g2))
        xc, yc = (e1 * x1 + e2 * x2) / (e1 + e2), (e1 * y1 + e2 * y2) / (e1 + e2)
        inner = (np.abs(xc) < 970) & (np.abs(yc) < 725)
        middle = (np.abs(xc) < 1940) & (np.abs(yc) < 1450) & ~inner
        cell = np.where(inner, 40.4, np.where(middle, 60.6, 121.2))
        sep = np.hypot(x1 - x2, y1 - y2)
        fwd = (g1[2] > 0) & (g2[2] > 0)  # a soft photon may fly backwards: it never reaches the ECAL
        assert np.isnan(r["separation"][~fwd]).all() and not r["merged"][~fwd].any()
        np.testing.assert_allclose(r["separation"][fwd], sep[fwd], rtol=1e-9)
        np.testing.assert_array_equal(r["merged"][fwd], (sep < 2 * cell)[fwd])
        fractions.append(r["merged"].mean())
        assert ((r["kind"] == MERGED_PI0) <= r["merged"]).all()
    assert fractions[0] < 0.01 and fractions[-1] > 0.8, fractions
    assert all(b > a for a, b in zip(fractions[1:], fractions[2:])), fractions


def test_is_not_pi0_is_uniform_for_photons_and_small_for_merged_pi0():
    cal = Calorimeter()
    n = 50_000
    r = cal.photon_response(np.full(n, 3000.0), np.zeros(n), np.full(n, 50_000.0), seed=6)
    v = r["is_not_pi0"][r["reconstructed"]]
    assert stats.kstest(v, "uniform").pvalue > 1e-3
    g1, g2 = _pi0_decays(10_000.0, n, np.random.default_rng(7))
    r = cal.pi0_response(g1, g2, seed=7)
    w = r["merged_cluster"]["is_not_pi0"][r["kind"] == MERGED_PI0]
    assert w.size > n // 2
    assert np.median(w) < 0.1 and (w < 0.5).mean() > 0.8  # photons: median 0.5, 50% below 0.5
    assert (r["kind"] != LOST).mean() > 0.8
