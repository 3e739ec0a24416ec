"""Physical decay models, as weights on phase-space four-momenta (EvtGen-style model names).

A decay model multiplies the phase-space density of the generated events by ``|amplitude|^2``.
``phasespace`` generates events flat in Lorentz-invariant phase space (once weighted by its own
Raubold-Lynch weight), so keeping an event with probability ``w_phsp * w_model`` where
``w_model = |A|^2 / max|A|^2`` gives the physical distribution (accept-reject, F. James,
CERN 68-15, Sec. 4). :class:`DecayModelWeight` evaluates ``w_model`` for a whole batch, vectorised.

Models (``model_help()`` prints them with their parameters):

``PHSP``
    weight 1.
``SVS`` (P -> V S), ``VSS`` (V -> S S), ``VLL`` (V -> l+ l-)
    The pseudoscalar's decay produces the vector with helicity 0 (EvtGen's EvtSVS amplitude
    ``eps*(V) . p_P`` vanishes for helicity +-1); the vector's decay then follows, in its helicity
    frame, ``|d^1_00(theta)|^2 = cos^2 theta`` for VSS (amplitude ``eps . (p_a - p_b)``, EvtGen's
    EvtVectorToScalarScalar) and ``1 - beta^2 cos^2 theta`` for VLL (vector current
    ``eps_mu u-bar gamma^mu v`` summed over lepton spins, EvtGen's EvtVll; ``beta`` the lepton
    velocity in the vector's rest frame; ``sin^2 theta`` for massless leptons). A VLL or VSS
    vector whose production is not modelled (PHSP, a model that does not polarise it, the head
    of the tree) is unpolarised: flat (``rho = 1/3``; the three VLL helicities add up to a
    constant, ``8E^2 (3 - beta^2)``).
``SVV_HELAMP`` (P -> V1 V2; 6 parameters ``|H+|, arg H+, |H0|, arg H0, |H-|, arg H-``)
    The amplitude ``A = eps1*_i M_ij eps2*_j`` with EvtGen's 3-tensor (EvtSVVHelAmp.cpp)
    ``M = a 1 + b [n]x + c n n^T``, ``a = -(H+ + H-)/2``, ``b = i (H+ - H-)/2``,
    ``c = H0 + (H+ + H-)/2``, ``n`` the V1 direction in the P rest frame; each vector's
    polarisation is summed coherently against its decay (VSS, VLL) or incoherently when its
    decay is not modelled. Helicity states are the rest-frame states boosted along the flight
    direction (Jacob & Wick, Ann. Phys. 7 (1959) 404), so ``|H_lambda|^2`` is the fraction of
    helicity ``lambda`` (``cos theta_1`` follows ``|H0|^2 cos^2 + (|H+|^2+|H-|^2)/2 sin^2``
    for a VSS V1).
``Lb2LclnuLQCD`` (Lambda_b0 -> Lambda_c+ l- anti-nu_l)
    Lattice-QCD form factors of Detmold, Lehner, Meinel, PRD 92 (2015) 034503
    (arXiv:1503.01421), nominal fit; see :func:`lb2lc_form_factors` and :func:`_lb_helicity`.
``HQET2`` (B -> D l nu, B -> D* l nu; CLN)
    Caprini, Lellouch, Neubert, Nucl. Phys. B 530 (1998) 153, in EvtGen's EvtHQET2FF form,
    with the HFLAV averages as defaults; see :func:`cln_form_factors_d`, :func:`cln_form_factors_dstar`.

Semileptonic models (``Lb2LclnuLQCD``, ``HQET2``) are weighted in ``(q^2, cos theta_l)``,
``theta_l`` the angle between the charged lepton and the W direction (opposite to the hadron) in
the l-nu rest frame; the spin-summed matrix element (Koerner & Schuler, Z. Phys. C 46 (1990) 93,
Eqs. 22-23; Ivanov, Koerner, Tran, PRD 92 (2015) 114022, Eq. 12) is::

    |M|^2 ∝ (q^2 - m^2) [ (1 + c^2) H_U + 2 s^2 H_L - 2 c H_P
                          + m^2/q^2 (s^2 H_U + 2 c^2 H_L + 2 H_S - 4 c H_SL) ]

with ``c = cos theta_l``, ``H_U = sum |H_+1|^2 + |H_-1|^2``, ``H_P = sum |H_+1|^2 - |H_-1|^2``,
``H_L = sum |H_0|^2``, ``H_S = sum |H_t|^2``, ``H_SL = sum Re(H_0 H_t*)`` summed over the hadron's
helicity. Phase-space density: the three-body phase space factorises as
``dPhi_3 = dPhi_2(M; m_X, sqrt q^2) dPhi_2(sqrt q^2; m_l, 0) dq^2 / (2 pi)``, i.e. in
``(q^2, cos theta_l)`` its density is ``∝ p_X(q^2) (1 - m_l^2/q^2)`` (PDG Review "Kinematics",
Eqs. 49.12, 49.16). The physical ``d^2 Gamma / dq^2 dcos theta_l`` (Eq. 2.x of 1503.01421:
``∝ sqrt(s+ s-) (1 - m_l^2/q^2)^2 q^2 [...]``) divided by this density is ``|M|^2`` above: the
weight. The daughter hadron is treated as produced unpolarised for its own decay (Lambda_c+ ->
p K- pi+ by phase space; the D* -> D pi angle is not correlated with the lepton: flat).

The weight's bound is found by a numerical scan of each model's variables at construction
(grids below), multiplied by :data:`SAFETY`; a weight above 1 is not clipped: it is counted in
``n_over`` and warned about once (:class:`ModelWeightOverflowWarning`).

Conjugated events get the weight of the decay as written: the angular distributions used here
are CP-symmetric (P flips every momentum, which leaves every helicity angle unchanged), except
the ``sin chi`` terms of SVV_HELAMP (``Im`` parts), which CP conjugation would flip.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from mambah.errors import ConfigurationError, MambahWarning
from mambah.physics.kinematics import boost_to_rest

__all__ = [
    "KNOWN_MODELS",
    "model_help",
    "check_models",
    "DecayModelWeight",
    "ModelWeightOverflowWarning",
    "SAFETY",
    "CORRELATING_MODELS",
    "LOCAL_MODELS",
    "LB2LC_DLM2015",
    "HFLAV_CLN_D",
    "HFLAV_CLN_DSTAR",
    "lb2lc_form_factors",
    "cln_form_factors_d",
    "cln_form_factors_dstar",
]

#: factor applied to the maximum found by the numerical scan of each model's variables. The scans'
#: grids include the variables' end points, where the semileptonic weights peak, and the weights
#: are smooth, so the grid maximum is the true one to far better than 2% (over 10^6 generated
#: Lambda_b0 -> Lambda_c+ mu- anti-nu_mu decays the largest weight was the grid maximum itself);
#: the unweighting efficiency is inversely proportional to this factor.
SAFETY = 1.02

_LEPTONS = {11: 12, 13: 14, 15: 16}  # charged lepton -> its neutrino

# ------------------------------------------------------------------------------- parameters
#: Lambda_b -> Lambda_c form factors, nominal fit of Detmold, Lehner, Meinel, PRD 92 (2015)
#: 034503 (arXiv:1503.01421), Table VIII ("nominal" fit, first-order z expansion, a_2 = 0):
#: ``f(q^2) = [a0 + a1 z^f(q^2)] / (1 - q^2/(m_pole^f)^2)`` with
#: ``z^f = (sqrt(t+ - q^2) - sqrt(t+ - t0)) / (sqrt(t+ - q^2) + sqrt(t+ - t0))``,
#: ``t+ = (m_pole^f)^2``, ``t0 = (m_Lb - m_Lc)^2`` (their Eqs. 79-80). The digits are those carried
#: by the public implementation dvicoben/slophep (``FFBaryonic_DKMR``, "aV_l" = f+, "aV_t" = f0,
#: "aV_p" = f_perp, "aA_l" = g+, "aA_t" = g0, "aA_p" = g_perp, with g_perp sharing a0 of g+),
#: which agree with the rounded values of the paper's table (0.8146, -4.899, ...).
#: Pole masses (GeV): m(B_c) = 6.276 plus Delta = 0.056 (1-), 0.449 (0+), 0.492 (1+), 0 (0-),
#: their Table VII.
LB2LC_DLM2015 = {
    "f+": (0.81458549275845, -4.8987680713973, 6.332),
    "f0": (0.74392566003686, -4.6476511382467, 6.725),
    "fperp": (1.077996185173, -6.4170836206134, 6.332),
    "g+": (0.6846557018386, -4.4311552783827, 6.768),
    "g0": (0.73960499809758, -4.3664554520299, 6.276),
    "gperp": (0.6846557018386, -4.4633624514401, 6.768),
}
#: masses used by DLM for t0 (GeV): m(Lambda_b) = 5.61951, m(Lambda_c) = 2.28646
_DLM_MASSES = (5.61951, 2.28646)

#: HFLAV 2019 CLN averages (Y. Amhis et al., arXiv:1909.12524, Sec. 5.2, Tables 52 and 55),
#: the values of EvtGen's DECAY.DEC ``HQET2 1.131 1.081`` (B -> D) and
#: ``HQET2 1.122 0.908 1.270 0.852`` (B -> D*).
HFLAV_CLN_D = {"rho2": 1.131}
HFLAV_CLN_DSTAR = {"rho2": 1.122, "R1": 1.270, "R2": 0.852}
#: R0(1) for the D* time-like form factor A0 (lepton-mass term): Fajfer, Kamenik, Nisandzic,
#: PRD 85 (2012) 094025, Eq. 14 (EvtGen's "extended" HQET2); S1/V1 for B -> D: Tanaka & Watanabe,
#: PRD 82 (2010) 034027 (EvtGen's EvtHQET2FF with delta = 1).
_R0_1 = 1.14


# ----------------------------------------------------------------------------- kinematics
def _boost_to_rest(p4: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """Four-vectors ``p4`` (4, ...) seen in the rest frame of ``frame`` (4, ...) (pure boost)."""
    return boost_to_rest(p4, frame)


def _msq(p: np.ndarray) -> np.ndarray:
    return p[3] ** 2 - p[0] ** 2 - p[1] ** 2 - p[2] ** 2


def _unit(v: np.ndarray) -> np.ndarray:
    """Unit 3-vectors, v shape (3, N)."""
    return v / np.maximum(np.sqrt(np.sum(v * v, axis=0)), 1e-300)


def _pdk(a, b, c):
    """Two-body momentum of a -> b c (same units as the masses)."""
    x = (a * a - (b + c) ** 2) * (a * a - (b - c) ** 2)
    return np.sqrt(np.maximum(x, 0.0)) / (2.0 * a)


# ------------------------------------------------------------------------------ form factors
def lb2lc_form_factors(q2) -> dict[str, np.ndarray]:
    """The six Lambda_b -> Lambda_c form factors of arXiv:1503.01421 (nominal fit) at ``q2`` (GeV^2).

    Eqs. 79-80 of Detmold, Lehner, Meinel, PRD 92 (2015) 034503, parameters
    :data:`LB2LC_DLM2015`. Returns ``{"f+", "f0", "fperp", "g+", "g0", "gperp"}``.
    """
    q2 = np.asarray(q2, dtype=np.float64)
    mlb, mlc = _DLM_MASSES
    t0 = (mlb - mlc) ** 2
    out = {}
    for name, (a0, a1, mpole) in LB2LC_DLM2015.items():
        tp = mpole * mpole
        r1, r0 = np.sqrt(tp - q2), math.sqrt(tp - t0)
        z = (r1 - r0) / (r1 + r0)
        out[name] = (a0 + a1 * z) / (1.0 - q2 / tp)
    return out


def _cln_z(w):
    return (np.sqrt(w + 1.0) - math.sqrt(2.0)) / (np.sqrt(w + 1.0) + math.sqrt(2.0))


def cln_form_factors_d(w, rho2: float) -> tuple[np.ndarray, np.ndarray]:
    """B -> D CLN shapes ``(V1(w), S1(w))`` normalised to V1(1) = 1.

    ``V1 = 1 - 8 rho2 z + (51 rho2 - 10) z^2 - (252 rho2 - 84) z^3``, ``z = (sqrt(w+1) - sqrt 2)
    / (sqrt(w+1) + sqrt 2)`` (CLN, Nucl. Phys. B 530 (1998) 153, Eq. 32; EvtHQET2FF.cpp);
    ``S1 = V1 [1 - 0.019 + 0.041 (w-1) - 0.015 (w-1)^2]`` (Tanaka & Watanabe, PRD 82 (2010) 034027).
    """
    z = _cln_z(w)
    v1 = 1.0 - 8.0 * rho2 * z + (51.0 * rho2 - 10.0) * z**2 - (252.0 * rho2 - 84.0) * z**3
    s1 = v1 * (1.0 - 0.019 + 0.041 * (w - 1.0) - 0.015 * (w - 1.0) ** 2)
    return v1, s1


def cln_form_factors_dstar(w, rho2: float, R1: float, R2: float):
    """B -> D* CLN shapes ``(hA1(w)/hA1(1), R1(w), R2(w), R0(w))``.

    ``hA1 = 1 - 8 rho2 z + (53 rho2 - 15) z^2 - (231 rho2 - 91) z^3``,
    ``R1(w) = R1 - 0.12 (w-1) + 0.05 (w-1)^2``, ``R2(w) = R2 + 0.11 (w-1) - 0.06 (w-1)^2``
    (CLN Eqs. 35, 36; EvtHQET2FF.cpp); ``R0(w) = 1.14 - 0.11 (w-1) + 0.01 (w-1)^2`` (Fajfer et al.).
    """
    z = _cln_z(w)
    ha1 = 1.0 - 8.0 * rho2 * z + (53.0 * rho2 - 15.0) * z**2 - (231.0 * rho2 - 91.0) * z**3
    r1 = R1 - 0.12 * (w - 1.0) + 0.05 * (w - 1.0) ** 2
    r2 = R2 + 0.11 * (w - 1.0) - 0.06 * (w - 1.0) ** 2
    r0 = _R0_1 - 0.11 * (w - 1.0) + 0.01 * (w - 1.0) ** 2
    return ha1, r1, r2, r0


# ------------------------------------------------------------- semileptonic helicity structure
def _sl_matrix_element(q2, c, ml, HU, HL, HP, HS, HSL):
    """Spin-summed |M|^2 (up to a constant) in (q^2, cos theta_l); see the module docstring."""
    s2 = 1.0 - c * c
    r = ml * ml / q2
    bracket = (1 + c * c) * HU + 2 * s2 * HL - 2 * c * HP + r * (s2 * HU + 2 * c * c * HL + 2 * HS - 4 * c * HSL)
    return np.maximum(q2 - ml * ml, 0.0) * bracket


def _lb_helicity(q2, M, m):
    """Summed helicity structures (H_U, H_L, H_P, H_S, H_SL) of Lambda_b -> Lambda_c W*, GeV units.

    Helicity amplitudes of the V-A current (Datta, Kamali, Meinel, Rashed, JHEP 08 (2017) 131,
    arXiv:1702.02243, Eqs. 2.11-2.16, with the form-factor definitions of 1503.01421 Eqs. 2-3),
    ``s+- = (M +- m)^2 - q^2``::

        H_{+1/2,+1} = sqrt 2 (fperp sqrt s-  -  gperp sqrt s+)
        H_{-1/2,-1} = sqrt 2 (fperp sqrt s-  +  gperp sqrt s+)
        H_{+-1/2,0} = [f+ (M+m) sqrt s-  -+  g+ (M-m) sqrt s+] / sqrt q^2
        H_{+-1/2,t} = [f0 (M-m) sqrt s+  -+  g0 (M+m) sqrt s-] / sqrt q^2

    (``H_{-1/2,-1}`` dominates: the c quark is left-handed). Checked against the explicit Dirac
    trace of the currents of 1503.01421 in ``tests/test_decay_models.py``.
    """
    ff = lb2lc_form_factors(q2)
    sp = np.maximum((M + m) ** 2 - q2, 0.0)
    sm = np.maximum((M - m) ** 2 - q2, 0.0)
    rp, rm, rq = np.sqrt(sp), np.sqrt(sm), np.sqrt(q2)
    hp1 = math.sqrt(2) * (ff["fperp"] * rm - ff["gperp"] * rp)
    hm1 = math.sqrt(2) * (ff["fperp"] * rm + ff["gperp"] * rp)
    v0, a0 = ff["f+"] * (M + m) * rm / rq, ff["g+"] * (M - m) * rp / rq
    vt, at = ff["f0"] * (M - m) * rp / rq, ff["g0"] * (M + m) * rm / rq
    h0p, h0m = v0 - a0, v0 + a0
    htp, htm = vt - at, vt + at
    return (hp1**2 + hm1**2, h0p**2 + h0m**2, hp1**2 - hm1**2, htp**2 + htm**2, h0p * htp + h0m * htm)


def _b2d_helicity(q2, M, m, rho2):
    """(H_U, H_L, H_P, H_S, H_SL) of B -> D W* (GeV): H_0 = 2 M p f+ / sqrt q^2,
    H_t = (M^2 - m^2) f0 / sqrt q^2 (Koerner & Schuler 1990, Eq. 14), f+ = (1+r)/(2 sqrt r) V1,
    f0 = sqrt r (w+1)/(1+r) S1, r = m/M (CLN Eq. 9)."""
    r = m / M
    w = (M * M + m * m - q2) / (2 * M * m)
    v1, s1 = cln_form_factors_d(w, rho2)
    fp = (1 + r) / (2 * np.sqrt(r)) * v1
    f0 = np.sqrt(r) * (w + 1) / (1 + r) * s1
    p = _pdk(M, m, np.sqrt(q2))
    h0 = 2 * M * p * fp / np.sqrt(q2)
    ht = (M * M - m * m) * f0 / np.sqrt(q2)
    z = np.zeros_like(h0)
    return z, h0**2, z, ht**2, h0 * ht


def _b2dstar_helicity(q2, M, m, rho2, R1, R2):
    """(H_U, H_L, H_P, H_S, H_SL) of B -> D* W* (GeV) from the BSW-type form factors
    A1 = (1 - q^2/(M+m)^2) hA1 / R*, A2 = R2 hA1 / R*, V = R1 hA1 / R*, A0 = R0 hA1 / R*,
    R* = 2 sqrt(M m)/(M+m) (EvtHQET2FF.cpp), and (Richman & Burchat, Rev. Mod. Phys. 67 (1995)
    893, Eqs. 121-123; Koerner & Schuler 1990)::

        H_+- = (M+m) A1 -+ 2 M p V / (M+m)
        H_0  = [(M^2 - m^2 - q^2)(M+m) A1 - 4 M^2 p^2 A2/(M+m)] / (2 m sqrt q^2)
        H_t  = 2 M p A0 / sqrt q^2
    """
    w = (M * M + m * m - q2) / (2 * M * m)
    ha1, r1, r2, r0 = cln_form_factors_dstar(w, rho2, R1, R2)
    rstar = 2 * np.sqrt(M * m) / (M + m)
    A1 = (1 - q2 / (M + m) ** 2) * ha1 / rstar
    A2, V, A0 = r2 * ha1 / rstar, r1 * ha1 / rstar, r0 * ha1 / rstar
    p = _pdk(M, m, np.sqrt(q2))
    hp = (M + m) * A1 - 2 * M * p * V / (M + m)
    hm = (M + m) * A1 + 2 * M * p * V / (M + m)
    h0 = ((M * M - m * m - q2) * (M + m) * A1 - 4 * M * M * p * p * A2 / (M + m)) / (2 * m * np.sqrt(q2))
    ht = 2 * M * p * A0 / np.sqrt(q2)
    return hp**2 + hm**2, h0**2, hp**2 - hm**2, ht**2, h0 * ht


# ------------------------------------------------------------------------------ the registry
@dataclass(frozen=True)
class _Spec:
    name: str
    n_params: tuple[int, ...]
    params: str
    what: str
    source: str


_SPECS = {
    s.name: s
    for s in (
        _Spec("PHSP", (0,), "-", "phase space (weight 1)", "F. James, CERN 68-15"),
        _Spec("VLL", (0,), "-", "vector -> l+ l- by a vector current; 1 - beta^2 cos^2 theta after SVS, flat if the "
              "vector is unpolarised", "EvtGen EvtVll"),
        _Spec("VSS", (0,), "-", "vector -> scalar scalar; cos^2 theta after SVS, flat if the vector is unpolarised",
              "EvtGen EvtVectorToScalarScalar"),
        _Spec("SVS", (0,), "-", "pseudoscalar -> vector scalar: the vector has helicity 0 (its VLL/VSS decay is "
              "correlated)", "EvtGen EvtSVS"),
        _Spec("SVV_HELAMP", (6,), "|H+| argH+ |H0| argH0 |H-| argH- (rad)", "pseudoscalar -> vector vector with "
              "helicity amplitudes; the vectors' VSS/VLL decays are correlated (3 angles)", "EvtGen EvtSVVHelAmp"),
        _Spec("Lb2LclnuLQCD", (0,), "-", "Lambda_b0 -> Lambda_c+ l- anti-nu_l, lattice QCD form factors "
              "(nominal fit), lepton mass included, Lambda_c+ unpolarised",
              "Detmold, Lehner, Meinel, PRD 92 (2015) 034503, arXiv:1503.01421"),
        _Spec("HQET2", (0, 1, 2, 3, 4), "B->D: [rho2 [V1(1)]]; B->D*: [rho2 R1 R2] or EvtGen's rho2 hA1(1) R1 R2 "
              "(normalisations ignored; defaults HFLAV 2019)", "B -> D(*) l nu, CLN form factors, lepton mass "
              "included, D* unpolarised for its own decay",
              "Caprini, Lellouch, Neubert, NPB 530 (1998) 153; HFLAV arXiv:1909.12524"),
    )
}

#: the model names accepted by :func:`check_models` and :class:`DecayModelWeight`
KNOWN_MODELS: tuple[str, ...] = tuple(_SPECS)

#: Models whose weight reads the decays of their daughters (the spin correlation of a vector's decay
#: with its production): the daughters' decays must be generated together with the mother's.
CORRELATING_MODELS: tuple[str, ...] = ("SVS", "SVV_HELAMP")
#: Models whose weight is a function of their own decay's four-momenta only (VLL/VSS are read by a
#: correlating mother, and are 1 otherwise): a fixed-mass daughter of a decay under any of these,
#: unless the decay is in :data:`CORRELATING_MODELS`, can be decayed in its own rest frame,
#: independently of its mother (:class:`mambah.generation.PhaseSpaceDecay` uses this to accept-reject
#: each decay separately).
LOCAL_MODELS: tuple[str, ...] = ("PHSP", "VLL", "VSS", "SVS", "SVV_HELAMP", "Lb2LclnuLQCD", "HQET2")


def model_help() -> str:
    """One line per model: name, parameters, what it is, its source."""
    return "\n".join(f"{s.name}: params {s.params}; {s.what} [{s.source}]" for s in _SPECS.values())


def _spin(pid: int) -> float | None:
    from particle import Particle

    try:
        j = Particle.from_pdgid(int(pid)).J
    except Exception:  # noqa: BLE001 - unknown to particle: no spin check possible
        return None
    return float(j) if j is not None else None


def _mass_gev(pid: int) -> float:
    from particle import Particle

    m = Particle.from_pdgid(int(pid)).mass
    return 0.0 if m is None else float(m) / 1000.0


# --------------------------------------------------------------------------------- checking
def _where(tree, i, model) -> str:
    kids = " ".join(tree[c]["name"] for c in tree[i]["children"])
    return f"model {model!r} on node {i} ({tree[i]['name']} -> {kids or 'no daughters'})"


def check_models(tree: list[dict], models: dict[int, tuple[str, tuple[float, ...]]]) -> None:
    """Check that every model exists, has the right number of parameters and fits its decay.

    Args:
        tree: the ``Descriptor.tree()`` node list.
        models: ``{node index of the decaying particle: (model name, parameters)}``; absent = PHSP.

    Raises:
        ConfigurationError: naming the node (its particle) and the model, with what is expected.
    """
    if not isinstance(models, dict):
        raise ConfigurationError(f"models must be a dict {{node index: (name, params)}}, got {models!r}")
    for i, spec in models.items():
        if not (isinstance(i, (int, np.integer)) and 0 <= int(i) < len(tree)):
            raise ConfigurationError(f"decay model key {i!r} is not a node index of the tree (0..{len(tree) - 1})")
        try:
            name, params = spec
            params = tuple(float(p) for p in params)
        except (TypeError, ValueError):
            raise ConfigurationError(f"decay model of node {i} ({tree[i]['name']}) must be (name, parameters), "
                                     f"got {spec!r}") from None
        if name not in _SPECS:
            from mambah.errors import closest

            near = closest(str(name), KNOWN_MODELS, n=3)
            hint = f" (did you mean {', '.join(map(repr, near))}?)" if near else ""
            raise ConfigurationError(f"unknown decay model {name!r} for node {i} ({tree[i]['name']}){hint}; "
                                     f"known models: {', '.join(KNOWN_MODELS)}")
        s = _SPECS[name]
        if len(params) not in s.n_params:
            raise ConfigurationError(f"{_where(tree, i, name)}: takes {' or '.join(map(str, s.n_params))} "
                                     f"parameter(s) ({s.params}), got {len(params)}: {params!r}")
        if not all(math.isfinite(p) for p in params):
            raise ConfigurationError(f"{_where(tree, i, name)}: parameters must be finite, got {params!r}")
        if name != "PHSP" and not tree[i]["children"]:
            raise ConfigurationError(f"{_where(tree, i, name)}: the particle does not decay in this descriptor")
        _CHECKS[name](tree, int(i), params, models)


def _fail(tree, i, name, need):
    raise ConfigurationError(f"{_where(tree, i, name)} does not fit: {name} needs {need}")


def _kids(tree, i):
    return [tree[c] for c in tree[i]["children"]]


def _check_none(tree, i, params, models):
    pass


def _is_spin(pid, j) -> bool:
    s = _spin(pid)
    return s is not None and abs(s - j) < 1e-9


def _check_vll(tree, i, params, models):
    k = _kids(tree, i)
    need = "a vector (spin 1) -> l+ l- (same flavour, opposite charges)"
    if not _is_spin(tree[i]["pid"], 1) or len(k) != 2:
        _fail(tree, i, "VLL", need)
    a, b = k
    if abs(a["pid"]) not in _LEPTONS or a["pid"] != -b["pid"]:
        _fail(tree, i, "VLL", need)


def _check_vss(tree, i, params, models):
    k = _kids(tree, i)
    if not _is_spin(tree[i]["pid"], 1) or len(k) != 2 or not all(_is_spin(c["pid"], 0) for c in k):
        _fail(tree, i, "VSS", "a vector (spin 1) -> two spin-0 particles")


def _check_svs(tree, i, params, models):
    k = _kids(tree, i)
    spins = sorted(-1.0 if _spin(c["pid"]) is None else _spin(c["pid"]) for c in k)
    if not _is_spin(tree[i]["pid"], 0) or len(k) != 2 or spins != [0.0, 1.0]:
        _fail(tree, i, "SVS", "a spin-0 particle -> a vector (spin 1) + a spin-0 particle")
    v = next(c for c in tree[i]["children"] if _is_spin(tree[c]["pid"], 1))
    if tree[v]["pid"] == 22:
        _fail(tree, i, "SVS", "a massive vector (for a photon use PHSP: a real photon has no helicity 0)")


def _check_svv(tree, i, params, models):
    k = _kids(tree, i)
    if not _is_spin(tree[i]["pid"], 0) or len(k) != 2 or not all(_is_spin(c["pid"], 1) for c in k):
        _fail(tree, i, "SVV_HELAMP", "a spin-0 particle -> two vectors (spin 1)")
    if any(c["pid"] == 22 for c in k):
        _fail(tree, i, "SVV_HELAMP", "two massive vectors (photons are not supported)")
    if params[0] == 0 and params[2] == 0 and params[4] == 0:
        _fail(tree, i, "SVV_HELAMP", "at least one non-zero helicity amplitude")


def _sl_roles(tree, i):
    """(hadron, charged lepton, neutrino) node indices of a three-body semileptonic decay, or None."""
    ch = tree[i]["children"]
    if len(ch) != 3:
        return None
    lep = [c for c in ch if abs(tree[c]["pid"]) in _LEPTONS]
    nu = [c for c in ch if abs(tree[c]["pid"]) in _LEPTONS.values()]
    had = [c for c in ch if c not in lep and c not in nu]
    if len(lep) != 1 or len(nu) != 1 or len(had) != 1:
        return None
    l_pid, n_pid = tree[lep[0]]["pid"], tree[nu[0]]["pid"]
    # l- (pid > 0) goes with anti-nu (pid < 0) of the same generation
    if _LEPTONS[abs(l_pid)] != abs(n_pid) or (l_pid > 0) == (n_pid > 0):
        return None
    return had[0], lep[0], nu[0]


def _check_lb(tree, i, params, models):
    need = "Lambda_b0 -> Lambda_c+ l- anti-nu_l (or its charge conjugate)"
    roles = _sl_roles(tree, i)
    if abs(tree[i]["pid"]) != 5122 or roles is None:
        _fail(tree, i, "Lb2LclnuLQCD", need)
    sgn = 1 if tree[i]["pid"] > 0 else -1
    h, l, _ = roles
    if tree[h]["pid"] != sgn * 4122 or np.sign(tree[l]["pid"]) != sgn:
        _fail(tree, i, "Lb2LclnuLQCD", need)


_B_MESONS = {511, 521, 531}
_D_MESONS = {411: 0, 421: 0, 431: 0, 413: 1, 423: 1, 433: 1}


def _check_hqet2(tree, i, params, models):
    need = "a B meson (B0, B+, B_s0) -> D(s) or D(s)* + l nu, e.g. B0 -> D*(2010)- mu+ nu_mu"
    roles = _sl_roles(tree, i)
    if abs(tree[i]["pid"]) not in _B_MESONS or roles is None or abs(tree[roles[0]]["pid"]) not in _D_MESONS:
        _fail(tree, i, "HQET2", need)
    spin = _D_MESONS[abs(tree[roles[0]]["pid"])]
    if spin == 0 and len(params) not in (0, 1, 2):
        _fail(tree, i, "HQET2", "0, 1 (rho2) or 2 (rho2, V1(1)) parameters for B -> D l nu")
    if spin == 1 and len(params) not in (0, 3, 4):
        _fail(tree, i, "HQET2", "0, 3 (rho2, R1, R2) or 4 (rho2, hA1(1), R1, R2) parameters for B -> D* l nu")


_CHECKS: dict[str, Callable] = {
    "PHSP": _check_none, "VLL": _check_vll, "VSS": _check_vss, "SVS": _check_svs,
    "SVV_HELAMP": _check_svv, "Lb2LclnuLQCD": _check_lb, "HQET2": _check_hqet2,
}


# ------------------------------------------------------------------------------------ warning
class ModelWeightOverflowWarning(MambahWarning):
    """A decay-model weight exceeded its bound (the events are kept, not clipped: the
    distribution is biased where ``w > 1``; report it).

    Attributes:
        models: the ``config()`` of the weight.
        count: weights above 1 in this call.
        n: weights computed in this call.
        max_seen: the largest weight seen.
    """

    def __init__(self, message: str, *, models: dict | None = None, count: int = 0, n: int = 0,
                 max_seen: float = 0.0):
        super().__init__(message)
        self.models = dict(models or {})
        self.count = int(count)
        self.n = int(n)
        self.max_seen = float(max_seen)


# -------------------------------------------------------------------------------- the factors
class _Factor:
    """One independent factor of the weight: ``raw(p4)`` (N,) and its bound ``bound``."""

    label: str
    bound: float

    def raw(self, p4: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


def _decay_tensor(tree, models, v, p4_vrest) -> np.ndarray:
    """Normalised decay tensor ``T_ik`` (N, 3, 3) of vector node ``v`` in its rest frame.

    ``T = sum over final spins of J_i J_k*``, ``J`` the spatial part of the decay current in the
    vector's rest frame (what its polarisation vector is contracted with), normalised so that its
    largest possible eigenvalue is 1: VSS ``e e^T`` (``e`` the first daughter's direction), VLL
    ``1 - beta^2 e e^T`` (``e`` the first lepton's direction; lepton tensor
    ``4 (k1^i k2^k + k2^i k1^k + delta^ik (k1.k2 + m^2))`` / ``8 E^2``), not modelled: ``1``.
    ``p4_vrest``: (4, nodes, N) four-momenta in the vector's rest frame.
    """
    model = models.get(v, ("PHSP", ()))[0]
    n = p4_vrest.shape[-1]
    if model not in ("VSS", "VLL"):
        return np.broadcast_to(np.eye(3), (n, 3, 3))
    a = tree[v]["children"][0]
    e = _unit(p4_vrest[:3, a, :])  # (3, N)
    eeT = np.einsum("in,kn->nik", e, e)
    if model == "VSS":
        return eeT
    E = p4_vrest[3, a, :]
    beta2 = 1.0 - _msq(p4_vrest[:, a, :]) / np.maximum(E * E, 1e-300)
    beta2 = np.clip(beta2, 0.0, 1.0)
    return np.eye(3)[None] - beta2[:, None, None] * eeT


class _SVSFactor(_Factor):
    """P -> V S with V decaying by VSS/VLL: ``n^T T n`` (helicity 0), bound 1 (exact)."""

    def __init__(self, tree, models, node):
        self.tree, self.models, self.node = tree, models, node
        self.v = next(c for c in tree[node]["children"] if _is_spin(tree[c]["pid"], 1))
        self.label = f"SVS on {tree[node]['name']}"
        self.bound = 1.0

    def raw(self, p4):
        P = p4[:, self.node, :]
        in_p = _boost_to_rest(p4, P[:, None, :])
        V = in_p[:, self.v, :]
        in_v = _boost_to_rest(in_p, V[:, None, :])
        n = _unit(V[:3])
        T = _decay_tensor(self.tree, self.models, self.v, in_v)
        return np.einsum("in,nik,kn->n", n, T, n)


def _svv_matrix(H, n):
    """EvtSVVHelAmp's M = a 1 + b [n]x + c n n^T, n (3, N) -> (N, 3, 3) complex."""
    hp, h0, hm = H
    a, b, c = -0.5 * (hp + hm), 0.5j * (hp - hm), h0 + 0.5 * (hp + hm)
    N = n.shape[1]
    eps = np.zeros((N, 3, 3))
    eps[:, 0, 1], eps[:, 1, 0] = n[2], -n[2]
    eps[:, 1, 2], eps[:, 2, 1] = n[0], -n[0]
    eps[:, 2, 0], eps[:, 0, 2] = n[1], -n[1]
    return a * np.eye(3)[None] + b * eps + c * np.einsum("in,kn->nik", n, n)


def _svv_amp2(M, T1, T2):
    """|A|^2 = tr(T1^T M T2 M^dagger), summed coherently over both vectors' polarisations."""
    MT2M = np.einsum("nij,njl,nkl->nik", M, T2, M.conj())
    return np.einsum("nik,nik->n", T1, MT2M).real


class _SVVFactor(_Factor):
    """P -> V1 V2 by helicity amplitudes; V1/V2 decays via their decay tensors; bound by a scan."""

    def __init__(self, tree, models, node, params):
        self.tree, self.models, self.node = tree, models, node
        self.v1, self.v2 = tree[node]["children"]
        p = params
        self.H = (p[0] * np.exp(1j * p[1]), p[2] * np.exp(1j * p[3]), p[4] * np.exp(1j * p[5]))
        self.label = f"SVV_HELAMP on {tree[node]['name']}"
        self.bound = self._scan()

    def _scan(self) -> float:
        """max |A|^2 over (cos theta1, cos theta2, chi) on a 41 x 41 x 72 grid, at lepton velocity
        beta^2 = 0 and 1 (|A|^2 is linear in each beta^2), times SAFETY; never above the
        Cauchy-Schwarz bound sum |H|^2 (EvtGen's probmax), which holds for any T with eigenvalues <= 1."""
        c = np.linspace(-1, 1, 41)
        chi = np.linspace(0, 2 * np.pi, 72, endpoint=False)
        c1, c2, x = (a.ravel() for a in np.meshgrid(c, c, chi, indexing="ij"))
        s1, s2 = np.sqrt(1 - c1**2), np.sqrt(1 - c2**2)
        N = c1.size
        n = np.tile(np.array([[0.0], [0.0], [1.0]]), (1, N))
        e1 = np.stack([s1, np.zeros(N), c1])
        e2 = np.stack([s2 * np.cos(x), s2 * np.sin(x), -c2])
        M = _svv_matrix(self.H, n)

        def tensors(v, e):
            model = self.models.get(v, ("PHSP", ()))[0]
            eeT = np.einsum("in,kn->nik", e, e)
            if model == "VSS":
                return [eeT]
            if model == "VLL":
                return [np.eye(3)[None] - b2 * eeT for b2 in (0.0, 1.0)]
            return [np.broadcast_to(np.eye(3), (N, 3, 3))]

        best = max(float(_svv_amp2(M, T1, T2).max()) for T1 in tensors(self.v1, e1) for T2 in tensors(self.v2, e2))
        cs = float(sum(abs(h) ** 2 for h in self.H))
        return min(best * SAFETY, cs)

    def raw(self, p4):
        P = p4[:, self.node, :]
        in_p = _boost_to_rest(p4, P[:, None, :])
        V1, V2 = in_p[:, self.v1, :], in_p[:, self.v2, :]
        n = _unit(V1[:3])
        T1 = _decay_tensor(self.tree, self.models, self.v1, _boost_to_rest(in_p, V1[:, None, :]))
        T2 = _decay_tensor(self.tree, self.models, self.v2, _boost_to_rest(in_p, V2[:, None, :]))
        return _svv_amp2(_svv_matrix(self.H, n), T1, T2)


class _SemileptonicFactor(_Factor):
    """|M|^2(q^2, cos theta_l) of a three-body semileptonic decay; bound by a scan."""

    def __init__(self, tree, node, name, params):
        self.node = node
        self.h, self.l, self.nu = _sl_roles(tree, node)
        self.M = _mass_gev(tree[node]["pid"])
        self.ml = _mass_gev(tree[self.l]["pid"])
        self.label = f"{name} on {tree[node]['name']}"
        hpid = abs(tree[self.h]["pid"])
        mh = _mass_gev(hpid)
        if name == "Lb2LclnuLQCD":
            self.structures = lambda q2, M, m: _lb_helicity(q2, M, m)
            self.params = {}
        elif _D_MESONS[hpid] == 0:
            rho2 = params[0] if params else HFLAV_CLN_D["rho2"]
            self.params = {"rho2": rho2}
            self.structures = lambda q2, M, m: _b2d_helicity(q2, M, m, rho2)
        else:
            if len(params) == 4:
                rho2, _, R1, R2 = params
            elif len(params) == 3:
                rho2, R1, R2 = params
            else:
                rho2, R1, R2 = HFLAV_CLN_DSTAR["rho2"], HFLAV_CLN_DSTAR["R1"], HFLAV_CLN_DSTAR["R2"]
            self.params = {"rho2": rho2, "R1": R1, "R2": R2}
            self.structures = lambda q2, M, m: _b2dstar_helicity(q2, M, m, rho2, R1, R2)
        self.bound = self._scan(mh)

    def _me(self, q2, c, M, m):
        q2 = np.maximum(q2, (self.ml * self.ml) * (1 + 1e-12) + 1e-12)
        return _sl_matrix_element(q2, c, self.ml, *self.structures(q2, M, m))

    def _scan(self, mh) -> float:
        """max over a 400 x 201 grid in (q^2 from m_l^2 to (M - m_h)^2, cos theta_l), times SAFETY."""
        q2 = np.linspace(self.ml**2, (self.M - mh) ** 2, 400)
        c = np.linspace(-1, 1, 201)
        Q, C = np.meshgrid(q2, c, indexing="ij")
        return float(np.max(self._me(Q.ravel(), C.ravel(), self.M, mh))) * SAFETY

    def raw(self, p4):
        g = p4[:, [self.node, self.h, self.l, self.nu], :] / 1000.0  # GeV; only the nodes it needs
        P = g[:, 0, :]
        in_p = _boost_to_rest(g[:, 1:, :], P[:, None, :])  # hadron, lepton, neutrino
        W = in_p[:, 1, :] + in_p[:, 2, :]
        lep_w = _boost_to_rest(in_p[:, 1, :], W)
        c = np.einsum("in,in->n", _unit(lep_w[:3]), _unit(W[:3]))
        q2 = _msq(W)
        m = np.sqrt(np.maximum(_msq(in_p[:, 0, :]), 0.0))
        M = np.sqrt(np.maximum(_msq(P), 0.0))
        return self._me(q2, c, M, m)


# ------------------------------------------------------------------------------- the weight
class DecayModelWeight:
    """Weights in [0, 1] of the decay models of a tree, for accept-reject on phase space.

    ``w = prod(|A|^2 factors) / max_weight``, the factors being independent groups of the tree
    (an SVS or SVV_HELAMP with its vectors' decays, a semileptonic decay); VLL/VSS whose vector
    is not produced by SVS/SVV_HELAMP, and PHSP, contribute 1.

    Args:
        tree: ``Descriptor.tree()`` node list (head = node 0, depth-first).
        models: ``{node index: (model name, parameters)}``; absent nodes are PHSP.

    Example:
        >>> from mambah.generation.descriptor import parse_descriptor
        >>> tree = parse_descriptor("B+ -> (J/psi(1S) -> mu+ mu-) K+").tree()
        >>> w = DecayModelWeight(tree, {0: ("SVS", ()), 1: ("VLL", ())})
        >>> w.max_weight
        1.0
    """

    def __init__(self, tree: list[dict], models: dict[int, tuple[str, tuple[float, ...]]]):
        check_models(tree, models)
        self.tree = tree
        self.models = {int(i): (str(n), tuple(float(p) for p in ps)) for i, (n, ps) in models.items()}
        self.factors: list[_Factor] = []
        for i, (name, params) in sorted(self.models.items()):
            if name == "SVS":
                self.factors.append(_SVSFactor(tree, self.models, i))
            elif name == "SVV_HELAMP":
                self.factors.append(_SVVFactor(tree, self.models, i, params))
            elif name in ("Lb2LclnuLQCD", "HQET2"):
                self.factors.append(_SemileptonicFactor(tree, i, name, params))
        self.max_weight = float(np.prod([f.bound for f in self.factors])) if self.factors else 1.0
        self.n_over = 0
        self.max_seen = 0.0
        self._warned = False

    def __call__(self, p4: np.ndarray) -> np.ndarray:
        """(N,) weights for lab four-momenta ``p4`` (4, nodes, N) in MeV."""
        p4 = np.asarray(p4, dtype=np.float64)
        if p4.ndim != 3 or p4.shape[0] != 4 or p4.shape[1] != len(self.tree):
            raise ConfigurationError(f"p4 must have shape (4, {len(self.tree)}, N), got {p4.shape}")
        w = np.ones(p4.shape[-1])
        for f in self.factors:
            w *= f.raw(p4)
        w /= self.max_weight
        if w.size:
            over = int(np.count_nonzero(w > 1.0))
            self.max_seen = max(self.max_seen, float(np.max(w)))
            if over:
                self.n_over += over
                if not self._warned:
                    self._warned = True
                    warnings.warn(ModelWeightOverflowWarning(
                        f"{over} of {w.size} decay-model weights exceed their bound (largest {w.max():.4g}); "
                        f"the bound of {[f.label for f in self.factors]} is too low, those events are "
                        "under-represented (not clipped)",
                        models=self.config(), count=over, n=w.size, max_seen=float(w.max())), stacklevel=2)
        return w

    def config(self) -> dict:
        """JSON-able description: the models per node, the bound and the overflow count."""
        return {
            "models": {str(i): {"particle": self.tree[i]["name"], "model": n, "params": list(p)}
                       for i, (n, p) in sorted(self.models.items())},
            "factors": [{"label": f.label, "bound": f.bound} for f in self.factors],
            "max_weight": self.max_weight,
            "safety": SAFETY,
            "n_over": self.n_over,
        }
