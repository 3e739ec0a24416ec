"""Decay models (mambah.generation.models) against analytic distributions computed here.

Events are drawn flat in phase space by samplers written in this file (isotropic two-body decays;
three-body decays uniform in the Dalitz plane, which is uniform in Lorentz-invariant phase space,
PDG Review "Kinematics" Eq. 49.22), kept with probability equal to the model weight, and the
histogram of the model's variable is compared with the expected density by a chi^2 test (fixed
seeds). Each physics test has a twin showing that phase space FAILS the same test.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import integrate, stats

from mambah.errors import ConfigurationError
from mambah.generation.descriptor import parse_descriptor
from mambah.generation.models import (
    KNOWN_MODELS,
    DecayModelWeight,
    ModelWeightOverflowWarning,
    check_models,
    model_help,
)

M_MU = 105.6583755  # MeV, PDG
P_MIN = 1e-3  # smallest acceptable chi^2 p-value (fixed seeds)


# ------------------------------------------------------------------ independent kinematics
def boost(p, frame, sign=-1.0):
    """Boost four-vectors p (4, ...) into the rest frame of ``frame`` (sign=-1) (Jackson 11.19)."""
    b = sign * frame[:3] / frame[3]
    b2 = np.sum(b * b, axis=0)
    g = 1.0 / np.sqrt(1.0 - b2)
    bp = np.sum(b * p[:3], axis=0)
    k = np.where(b2 > 0, (g - 1.0) / np.where(b2 > 0, b2, 1.0), 0.0) * bp + g * p[3]
    return np.concatenate([p[:3] + k * b, (g * (p[3] + bp))[None]])


def random_dirs(rng, n):
    c = rng.uniform(-1, 1, n)
    phi = rng.uniform(0, 2 * np.pi, n)
    s = np.sqrt(1 - c * c)
    return np.stack([s * np.cos(phi), s * np.sin(phi), c])


def two_body(rng, M, m1, m2, n):
    """Isotropic M -> m1 m2 in the M rest frame: two (4, n) arrays."""
    p = math.sqrt((M * M - (m1 + m2) ** 2) * (M * M - (m1 - m2) ** 2)) / (2 * M)
    d = random_dirs(rng, n) * p
    e1, e2 = math.sqrt(p * p + m1 * m1), math.sqrt(p * p + m2 * m2)
    return np.concatenate([d, np.full((1, n), e1)]), np.concatenate([-d, np.full((1, n), e2)])


def chain_two_body(rng, tree, masses, n, head_p=20000.0):
    """Phase-space events (4, nodes, n) in the lab for a tree of two-body decays, head moving
    with momentum head_p along a random direction (so that the boosts are exercised)."""
    p4 = np.zeros((4, len(tree), n))
    d = random_dirs(rng, n) * head_p
    p4[:3, 0] = d
    p4[3, 0] = np.sqrt(head_p**2 + masses[0] ** 2)

    def rec(i):
        kids = tree[i]["children"]
        if not kids:
            return
        a, b = kids
        pa, pb = two_body(rng, masses[i], masses[a], masses[b], n)
        p4[:, a] = boost(pa, p4[:, i], sign=+1.0)
        p4[:, b] = boost(pb, p4[:, i], sign=+1.0)
        rec(a)
        rec(b)

    rec(0)
    return p4


def three_body_dalitz(rng, M, m1, m2, m3, n):
    """M -> 1 2 3 uniform in the Dalitz plane (s23, s13): (4, 3, n') in the M rest frame."""
    s23 = rng.uniform((m2 + m3) ** 2, (M - m1) ** 2, n)
    s13 = rng.uniform((m1 + m3) ** 2, (M - m2) ** 2, n)
    e1 = (M * M + m1 * m1 - s23) / (2 * M)
    e2 = (M * M + m2 * m2 - s13) / (2 * M)
    e3 = M - e1 - e2
    ok = (e1 > m1) & (e2 > m2) & (e3 > m3)
    p1 = np.sqrt(np.maximum(e1**2 - m1**2, 0))
    p2 = np.sqrt(np.maximum(e2**2 - m2**2, 0))
    p3sq = np.maximum(e3**2 - m3**2, 0)
    c12 = (p3sq - p1**2 - p2**2) / np.maximum(2 * p1 * p2, 1e-300)
    ok &= np.abs(c12) <= 1
    e1, e2, e3, p1, p2, c12 = (x[ok] for x in (e1, e2, e3, p1, p2, c12))
    k = e1.size
    s12 = np.sqrt(1 - c12**2)
    v1 = np.stack([np.zeros(k), np.zeros(k), p1])
    v2 = np.stack([p2 * s12, np.zeros(k), p2 * c12])
    # random orientation: z -> random direction u, then a random rotation about u
    u = random_dirs(rng, k)
    a = np.where(np.abs(u[0]) < 0.9, 1.0, 0.0)
    t = np.stack([a, 1 - a, np.zeros(k)])
    x = t - np.sum(t * u, axis=0) * u
    x /= np.linalg.norm(x, axis=0)
    y = np.cross(u.T, x.T).T
    phi = rng.uniform(0, 2 * np.pi, k)
    xr, yr = np.cos(phi) * x + np.sin(phi) * y, -np.sin(phi) * x + np.cos(phi) * y

    def rot(v):
        return v[0] * xr + v[1] * yr + v[2] * u

    q1, q2 = rot(v1), rot(v2)
    q3 = -q1 - q2
    return np.stack([np.concatenate([q1, e1[None]]), np.concatenate([q2, e2[None]]),
                     np.concatenate([q3, e3[None]])], axis=1)


def helicity_cos(p4, gp, parent, child):
    """cos of ``child``'s direction in the ``parent`` rest frame w.r.t. the parent's direction in
    the ``gp`` (grand-parent) rest frame."""
    par = boost(p4[:, parent], p4[:, gp])
    ch = boost(boost(p4[:, child], p4[:, gp]), par)
    a, b = par[:3], ch[:3]
    return np.sum(a * b, axis=0) / np.linalg.norm(a, axis=0) / np.linalg.norm(b, axis=0)


def accept(rng, w):
    assert np.all(w <= 1.0) and np.all(w >= 0.0)
    return rng.random(w.size) < w


def chi2_pvalue(x, pdf, lo, hi, bins=20):
    """chi^2 p-value of the histogram of x against the (unnormalised) density pdf on [lo, hi]."""
    edges = np.linspace(lo, hi, bins + 1)
    obs, _ = np.histogram(x, edges)
    expect = np.array([integrate.quad(pdf, a, b)[0] for a, b in zip(edges[:-1], edges[1:])])
    expect *= obs.sum() / expect.sum()
    chi2 = float(np.sum((obs - expect) ** 2 / expect))
    return float(stats.chi2.sf(chi2, bins - 1))


# ------------------------------------------------------------------ angular models
JPSI_K = "B+ -> (J/psi(1S) -> mu+ mu-) K+"


def _jpsi_k_events(seed, models, n=150_000):
    tree = parse_descriptor(JPSI_K).tree()
    masses = [5279.34, 3096.9, M_MU, M_MU, 493.677]
    rng = np.random.default_rng(seed)
    p4 = chain_two_body(rng, tree, masses, n)
    w = DecayModelWeight(tree, models)(p4)
    keep = accept(rng, w)
    return helicity_cos(p4, 0, 1, 2)[keep], w


def _vll_helicity0_pdf():
    beta2 = 1 - 4 * M_MU**2 / 3096.9**2
    return lambda c: 1 - beta2 * c * c  # spin-summed |eps(0) . u-bar gamma v|^2, V rest frame


def test_vll_after_svs_follows_helicity_zero():
    c, w = _jpsi_k_events(1, {0: ("SVS", ()), 1: ("VLL", ())})
    p = chi2_pvalue(c, _vll_helicity0_pdf(), -1, 1)
    assert p > P_MIN, p
    assert 0.6 < w.mean() < 0.75  # <1 - beta^2 c^2> = 1 - beta^2/3


def test_phase_space_fails_the_vll_test():
    c, _ = _jpsi_k_events(2, {})
    assert chi2_pvalue(c, _vll_helicity0_pdf(), -1, 1) < 1e-6


def test_vll_unpolarised_is_flat():
    c, w = _jpsi_k_events(3, {1: ("VLL", ())})  # B+ decay not modelled: J/psi unpolarised
    assert np.all(w == 1.0)
    assert chi2_pvalue(c, lambda c: 1.0, -1, 1) > P_MIN


def test_vss_after_svs_follows_cos2():
    tree = parse_descriptor("B0 -> (D*(2010)- -> anti-D0 pi-) pi+").tree()
    masses = [5279.65, 2010.26, 1864.84, 139.57039, 139.57039]
    rng = np.random.default_rng(4)
    p4 = chain_two_body(rng, tree, masses, 150_000)
    w = DecayModelWeight(tree, {0: ("SVS", ()), 1: ("VSS", ())})(p4)
    c = helicity_cos(p4, 0, 1, 2)
    keep = accept(rng, w)
    assert chi2_pvalue(c[keep], lambda x: x * x, -1, 1) > P_MIN
    assert chi2_pvalue(c, lambda x: x * x, -1, 1) < 1e-6  # phase space fails


# SVV_HELAMP: B0 -> (J/psi -> mu+ mu-) (K*0 -> K+ pi-), amplitudes of the order of the
# measured ones (|H+|, |H0|, |H-| = 0.49, 0.775, 0.40 with phases)
H = (0.49, 2.5, 0.775, 0.0, 0.40, -0.17)


def _svv_events(seed, models, n=150_000):
    tree = parse_descriptor("B0 -> (J/psi(1S) -> mu+ mu-) (K*(892)0 -> K+ pi-)").tree()
    masses = [5279.65, 3096.9, M_MU, M_MU, 895.55, 493.677, 139.57039]
    rng = np.random.default_rng(seed)
    p4 = chain_two_body(rng, tree, masses, n)
    w = DecayModelWeight(tree, models)(p4)
    keep = accept(rng, w)
    return helicity_cos(p4, 0, 4, 5)[keep], helicity_cos(p4, 0, 1, 2)[keep]


def test_svv_helamp_projections():
    hp2, h02, hm2 = H[0] ** 2, H[2] ** 2, H[4] ** 2
    beta2 = 1 - 4 * M_MU**2 / 3096.9**2
    c_k, c_mu = _svv_events(5, {0: ("SVV_HELAMP", H), 1: ("VLL", ()), 4: ("VSS", ())})
    # K*: |d^1_{lambda 0}|^2 weighted by the helicity fractions
    pdf_k = lambda c: h02 * c * c + (hp2 + hm2) / 2 * (1 - c * c)  # noqa: E731
    # J/psi: helicity 0 -> 1 - beta^2 c^2, helicity +-1 -> 1 - beta^2 (1 - c^2)/2
    pdf_mu = lambda c: h02 * (1 - beta2 * c * c) + (hp2 + hm2) * (1 - beta2 * (1 - c * c) / 2)  # noqa: E731
    assert chi2_pvalue(c_k, pdf_k, -1, 1) > P_MIN
    assert chi2_pvalue(c_mu, pdf_mu, -1, 1) > P_MIN
    c_k0, _ = _svv_events(6, {})
    assert chi2_pvalue(c_k0, pdf_k, -1, 1) < 1e-6  # phase space fails


# ------------------------------------------------------------------ Lambda_b -> Lambda_c mu nu
# DLM 2015 (arXiv:1503.01421) nominal fit, Table VIII: (a0, a1, pole mass / GeV)
DLM = {"f+": (0.8146, -4.899, 6.332), "f0": (0.7439, -4.648, 6.725), "fperp": (1.078, -6.417, 6.332),
       "g+": (0.6847, -4.431, 6.768), "g0": (0.7396, -4.366, 6.276), "gperp": (0.6847, -4.463, 6.768)}
M_LB, M_LC = 5.61957, 2.28646  # GeV (the sampler's masses)


def dlm_ff(q2):
    t0 = (5.61951 - 2.28646) ** 2
    out = {}
    for k, (a0, a1, mp) in DLM.items():
        z = (np.sqrt(mp**2 - q2) - np.sqrt(mp**2 - t0)) / (np.sqrt(mp**2 - q2) + np.sqrt(mp**2 - t0))
        out[k] = (a0 + a1 * z) / (1 - q2 / mp**2)
    return out


def dlm_dgamma_dq2(q2, ml=M_MU / 1000):
    """dGamma/dq^2 (arbitrary units), Eq. 2.x of arXiv:1503.01421 (integrated over cos theta_l)."""
    M, m = M_LB, M_LC
    f = dlm_ff(q2)
    sp, sm = (M + m) ** 2 - q2, (M - m) ** 2 - q2
    brace = (4 * (ml**2 + 2 * q2) * (sp * f["gperp"] ** 2 + sm * f["fperp"] ** 2)
             + 2 * (ml**2 + 2 * q2) / q2 * (sp * (M - m) ** 2 * f["g+"] ** 2 + sm * (M + m) ** 2 * f["f+"] ** 2)
             + 6 * ml**2 / q2 * (sp * (M - m) ** 2 * f["f0"] ** 2 + sm * (M + m) ** 2 * f["g0"] ** 2))
    return np.sqrt(sp * sm) * (1 - ml**2 / q2) ** 2 * brace


def _lb_events(seed, n=400_000):
    tree = parse_descriptor("Lambda_b0 -> Lambda_c+ mu- anti-nu_mu").tree()
    rng = np.random.default_rng(seed)
    p3 = three_body_dalitz(rng, M_LB * 1000, M_LC * 1000, M_MU, 0.0, n)
    return tree, rng, with_head(p3, M_LB * 1000)


def with_head(p3, M):
    """(4, 3, n) daughters in the head's rest frame -> (4, 4, n) with the head at rest first."""
    return np.concatenate([np.tile(np.array([0, 0, 0, M])[:, None, None], (1, 1, p3.shape[2])), p3], axis=1)


def _q2(p4):
    w = p4[:, 2] + p4[:, 3]
    return (w[3] ** 2 - w[0] ** 2 - w[1] ** 2 - w[2] ** 2) / 1e6


def test_lb2lc_q2_follows_lattice_rate():
    tree, rng, p4 = _lb_events(7)
    wt = DecayModelWeight(tree, {0: ("Lb2LclnuLQCD", ())})
    keep = accept(rng, wt(p4))
    lo, hi = (M_MU / 1000) ** 2, (M_LB - M_LC) ** 2
    assert chi2_pvalue(_q2(p4)[keep], dlm_dgamma_dq2, lo, hi) > P_MIN
    assert chi2_pvalue(_q2(p4), dlm_dgamma_dq2, lo, hi) < 1e-6  # phase space fails
    assert wt.n_over == 0


def _dirac():
    i2, z2 = np.eye(2), np.zeros((2, 2))
    sig = [np.array([[0, 1], [1, 0]]), np.array([[0, -1j], [1j, 0]]), np.array([[1, 0], [0, -1]])]
    g0 = np.block([[i2, z2], [z2, -i2]]).astype(complex)
    gs = [np.block([[z2, s], [-s, z2]]).astype(complex) for s in sig]
    g = [g0] + gs
    g5 = 1j * g[0] @ g[1] @ g[2] @ g[3]
    return g, g5


def trace_me2(pb, pc, kl, kn, ml):
    """Spin-summed |M|^2 from the currents of arXiv:1503.01421 Eqs. 2-3, by explicit Dirac traces:
    <Lc|c gamma^mu b|Lb> = u' [f0 (M-m) q/q^2 + f+ (M+m)/s+ (p + p' - (M^2-m^2) q/q^2)
    + fperp (gamma - 2m p/s+ - 2M p'/s+)] u, <Lc|c gamma^mu gamma5 b|Lb> = -u' gamma5 [g0 (M+m) q/q^2
    + g+ (M-m)/s- (...) + gperp (gamma + 2m p/s- - 2M p'/s-)] u; lepton current u_l gamma(1-g5) v_nu."""
    g, g5 = _dirac()
    metric = np.diag([1.0, -1, -1, -1])
    one = np.eye(4)

    def sl(p):  # p^mu gamma_mu, p = (E, px, py, pz)
        return sum(metric[m, m] * p[m] * g[m] for m in range(4))

    M, m = math.sqrt(pb @ metric @ pb), math.sqrt(pc @ metric @ pc)
    q = pb - pc
    q2 = q @ metric @ q
    f = {k: float(v) for k, v in dlm_ff(q2).items()}
    sp, sm = (M + m) ** 2 - q2, (M - m) ** 2 - q2
    P = pb + pc
    G = []
    for mu in range(4):
        vec = (f["f0"] * (M - m) * q[mu] / q2 + f["f+"] * (M + m) / sp * (P[mu] - (M * M - m * m) * q[mu] / q2)) * one \
            + f["fperp"] * (g[mu] - (2 * m * pb[mu] + 2 * M * pc[mu]) / sp * one)
        ax = (f["g0"] * (M + m) * q[mu] / q2 + f["g+"] * (M - m) / sm * (P[mu] - (M * M - m * m) * q[mu] / q2)) * one \
            + f["gperp"] * (g[mu] + (2 * m * pb[mu] - 2 * M * pc[mu]) / sm * one)
        G.append(vec + g5 @ ax)  # V - A with A = -u' g5 [...] u
    Gbar = [g[0] @ x.conj().T @ g[0] for x in G]
    Hm = np.array([[np.trace((sl(pc) + m * one) @ G[a] @ (sl(pb) + M * one) @ Gbar[b]) for b in range(4)]
                   for a in range(4)])
    Lm = np.array([[np.trace((sl(kl) + ml * one) @ g[a] @ (one - g5) @ sl(kn) @ (one + g5) @ g[b])
                    for b in range(4)] for a in range(4)])
    return float(np.real(np.einsum("ab,cd,ac,bd->", Lm, Hm, metric, metric)))


def test_lb2lc_weight_is_the_dirac_trace():
    """The weight is proportional to |M|^2 computed from the form-factor definitions by explicit
    traces (fixes the angular terms, the lepton-mass terms and the sign of the forward-backward
    asymmetry, which the q^2 test cannot see); a heavy lepton (tau) enhances the mass terms."""
    for lep, ml in (("mu-", M_MU), ("tau-", 1776.86)):
        nu = "anti-nu_tau" if lep == "tau-" else "anti-nu_mu"
        tree = parse_descriptor(f"Lambda_b0 -> Lambda_c+ {lep} {nu}").tree()
        rng = np.random.default_rng(8)
        p4 = three_body_dalitz(rng, M_LB * 1000, M_LC * 1000, ml, 0.0, 200)[:, :, :40]
        pb = np.array([M_LB * 1000, 0, 0, 0])
        w = DecayModelWeight(tree, {0: ("Lb2LclnuLQCD", ())})(np.concatenate([
            np.tile(np.array([0, 0, 0, M_LB * 1000.0])[:, None, None], (1, 1, p4.shape[2])), p4], axis=1))
        ref = np.array([trace_me2(pb / 1e3, np.roll(p4[:, 0, i], 1) / 1e3, np.roll(p4[:, 1, i], 1) / 1e3,
                                  np.roll(p4[:, 2, i], 1) / 1e3, ml / 1e3) for i in range(p4.shape[2])])
        ratio = w / ref
        # 1e-3: the form factors here are the rounded values of the paper (4 digits)
        assert np.std(ratio) / np.mean(ratio) < 1e-3, (lep, ratio)


# ------------------------------------------------------------------ B -> D mu nu (CLN)
def cln_dgamma_dq2(q2, rho2=1.131, ml=M_MU / 1000, M=5.27966, m=1.86966):
    """dGamma/dq^2 of B -> D l nu (arbitrary units): |p|^3 (1 + ml^2/2q^2) f+^2
    + 3 ml^2/(8 q^2) |p| (M^2-m^2)^2/M^2 f0^2, times (1 - ml^2/q^2)^2 (e.g. Sakaki et al., PRD 88
    (2013) 094012, Eq. 5); f+ = (1+r)/(2 sqrt r) V1, f0 = sqrt r (w+1)/(1+r) S1 (CLN)."""
    r = m / M
    w = (M * M + m * m - q2) / (2 * M * m)
    z = (np.sqrt(w + 1) - np.sqrt(2)) / (np.sqrt(w + 1) + np.sqrt(2))
    v1 = 1 - 8 * rho2 * z + (51 * rho2 - 10) * z**2 - (252 * rho2 - 84) * z**3
    s1 = v1 * (1 - 0.019 + 0.041 * (w - 1) - 0.015 * (w - 1) ** 2)
    fp, f0 = (1 + r) / (2 * np.sqrt(r)) * v1, np.sqrt(r) * (w + 1) / (1 + r) * s1
    p = np.sqrt((M * M - (m + np.sqrt(q2)) ** 2) * (M * M - (m - np.sqrt(q2)) ** 2)) / (2 * M)
    return (1 - ml**2 / q2) ** 2 * (p**3 * (1 + ml**2 / (2 * q2)) * fp**2
                                    + 3 * ml**2 / (8 * q2) * p * (M * M - m * m) ** 2 / (M * M) * f0**2)


def test_hqet2_b2d_q2_follows_cln():
    tree = parse_descriptor("B0 -> D- mu+ nu_mu").tree()
    rng = np.random.default_rng(9)
    M, m = 5279.66, 1869.66
    p4 = three_body_dalitz(rng, M, m, M_MU, 0.0, 400_000)
    p4 = np.concatenate([np.tile(np.array([0, 0, 0, M])[:, None, None], (1, 1, p4.shape[2])), p4], axis=1)
    wt = DecayModelWeight(tree, {0: ("HQET2", (1.131,))})
    keep = accept(rng, wt(p4))
    w = p4[:, 2] + p4[:, 3]
    q2 = (w[3] ** 2 - w[0] ** 2 - w[1] ** 2 - w[2] ** 2) / 1e6
    lo, hi = (M_MU / 1000) ** 2, ((M - m) / 1000) ** 2
    assert chi2_pvalue(q2[keep], cln_dgamma_dq2, lo, hi) > P_MIN
    assert chi2_pvalue(q2, cln_dgamma_dq2, lo, hi) < 1e-6


def test_hqet2_dstar_builds_and_is_bounded():
    tree = parse_descriptor("B0 -> (D*(2010)- -> anti-D0 pi-) mu+ nu_mu").tree()
    rng = np.random.default_rng(10)
    M = 5279.66
    p3 = three_body_dalitz(rng, M, 2010.26, M_MU, 0.0, 50_000)
    p4 = np.zeros((4, len(tree), p3.shape[2]))
    p4[3, 0] = M
    p4[:, 1], p4[:, 4], p4[:, 5] = p3[:, 0], p3[:, 1], p3[:, 2]
    a, b = two_body(rng, 2010.26, 1864.84, 139.57039, p3.shape[2])
    p4[:, 2], p4[:, 3] = boost(a, p4[:, 1], +1), boost(b, p4[:, 1], +1)
    for params in ((), (1.122, 1.270, 0.852), (1.122, 0.908, 1.270, 0.852)):
        wt = DecayModelWeight(tree, {0: ("HQET2", params), 1: ("VSS", ())})
        w = wt(p4)
        assert 0.05 < w.mean() < 1 and wt.n_over == 0


# ------------------------------------------------------------------ bad input, bookkeeping
def test_unknown_model_lists_known_ones():
    tree = parse_descriptor(JPSI_K).tree()
    with pytest.raises(ConfigurationError) as e:
        check_models(tree, {1: ("VLLL", ())})
    msg = str(e.value)
    assert "J/psi(1S)" in msg and "VLLL" in msg and all(k in msg for k in KNOWN_MODELS)
    assert "'VLL'" in msg  # suggestion


@pytest.mark.parametrize("desc,models,words", [
    (JPSI_K, {0: ("SVS", (1.0,))}, ["B+", "SVS", "takes 0", "got 1"]),
    ("B0 -> (J/psi(1S) -> mu+ mu-) (K*(892)0 -> K+ pi-)", {0: ("SVV_HELAMP", (1, 0, 1, 0))},
     ["B0", "SVV_HELAMP", "takes 6", "got 4"]),
    (JPSI_K, {0: ("VLL", ())}, ["B+", "VLL", "vector"]),
    ("B0 -> (D*(2010)- -> anti-D0 pi-) pi+", {1: ("VLL", ())}, ["D*(2010)-", "VLL", "l+ l-"]),
    (JPSI_K, {1: ("VSS", ())}, ["J/psi(1S)", "VSS", "spin-0"]),
    (JPSI_K, {0: ("Lb2LclnuLQCD", ())}, ["B+", "Lb2LclnuLQCD", "Lambda_b0 -> Lambda_c+"]),
    ("Lambda_b0 -> p+ mu- anti-nu_mu", {0: ("Lb2LclnuLQCD", ())}, ["Lambda_b0", "Lambda_c+"]),
    ("Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu", {0: ("HQET2", ())}, ["Lambda_b0", "HQET2", "B meson"]),
    ("B0 -> D- mu+ nu_mu", {0: ("HQET2", (1, 2, 3))}, ["B0", "HQET2", "B -> D l nu"]),
    (JPSI_K, {2: ("VLL", ())}, ["mu+", "does not decay"]),
])
def test_bad_models_are_clear(desc, models, words):
    tree = parse_descriptor(desc).tree()
    with pytest.raises(ConfigurationError) as e:
        DecayModelWeight(tree, models)
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_overflow_is_counted_and_warned_once_not_clipped():
    tree = parse_descriptor(JPSI_K).tree()
    p4 = chain_two_body(np.random.default_rng(11), tree, [5279.34, 3096.9, M_MU, M_MU, 493.677], 1000)
    wt = DecayModelWeight(tree, {0: ("SVS", ()), 1: ("VLL", ())})
    wt.max_weight = 0.5  # a bound too low, on purpose
    with pytest.warns(ModelWeightOverflowWarning) as rec:
        w = wt(p4)
    assert w.max() > 1 and wt.n_over == int(np.sum(w > 1))
    assert rec[0].message.count == wt.n_over and rec[0].message.n == 1000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wt(p4)  # second time: counted, not warned again
    assert wt.n_over > rec[0].message.count


def test_config_and_help():
    import json

    tree = parse_descriptor("B0 -> (J/psi(1S) -> mu+ mu-) (K*(892)0 -> K+ pi-)").tree()
    wt = DecayModelWeight(tree, {0: ("SVV_HELAMP", H), 1: ("VLL", ()), 4: ("VSS", ())})
    cfg = json.loads(json.dumps(wt.config()))
    assert cfg["models"]["0"]["model"] == "SVV_HELAMP" and cfg["max_weight"] == wt.max_weight
    assert wt.max_weight <= sum(H[i] ** 2 for i in (0, 2, 4)) + 1e-12
    lines = model_help().splitlines()
    assert [ln.split(":")[0] for ln in lines] == list(KNOWN_MODELS)
    assert DecayModelWeight(tree, {})(np.zeros((4, len(tree), 3))).tolist() == [1.0, 1.0, 1.0]
