"""PID calibration samples from the reference detector, as a physicist gets them.

Each sample is a table of *probe* tracks from a calibration decay, one row per candidate, with the
mass of the calibration candidate, the probe's kinematics and occupancy, its PID variables (LHCb
names) and the truth. Like real calibration data, it is a mixture: a signal peak of the decay on a
smooth combinatorial background whose probe tracks are of *other* species, with different
kinematics and occupancy. Only a fit to the mass (sWeights, ``mambah sweights``) separates them —
exactly the situation of the real LHCb Run 3 proton sample in ``shared/data`` (42% signal).

========  ===================================  ============  ======================================
species   decay (probe in brackets)            mass column   background probes (fractions)
========  ===================================  ============  ======================================
``K``     D*+ -> D0(-> [K-] pi+) pi+           ``D0_M``      pi 0.80, p 0.12, mu 0.05, e 0.03
``pi``    D*+ -> D0(-> K- [pi+]) pi+           ``D0_M``      K 0.55, p 0.25, mu 0.12, e 0.08
``p``     Lambda0 -> [p] pi-                   ``Lambda0_M`` pi 0.70, K 0.25, mu 0.03, e 0.02
``mu``    J/psi -> [mu+] mu- (either muon)     ``Jpsi_M``    pi 0.75, K 0.20, p 0.05
``e``     B+ -> J/psi(-> [e+] e-) K+           ``B_M``       pi 0.70, K 0.20, p 0.07, mu 0.03
========  ===================================  ============  ======================================

Model (documented choices of this reference detector, not LHCb measurements):

* Signal kinematics: the mother's pT and eta come from the generation stage's LHCb-like spectra
  (:func:`mambah.generation.spectra.default_pt` / ``default_eta`` of its PDG id: the power law
  dN/dpT ~ pT (1 + (pT/p0)^2)^-3.5 and a forward-truncated Gaussian in eta), with a selection
  requirement pT > ``pt_min`` on the mother (as the trigger and stripping of calibration samples
  impose), phi ~ U(0, 2 pi); it decays isotropically in its rest frame (exact two-body
  kinematics, chained and boosted, :func:`two_body_decay`; numpy, so that no TensorFlow is
  loaded). The probe must satisfy 2 < eta < 5 and 2 < p < 150 GeV/c (long-track acceptance).
* Signal mass: Gaussian(PDG mass, detector resolution ``sigma``), truncated to the fit window.
* Background: the probe kinematics come from the same chain with the mother pT spectrum (p0 and
  the cut) scaled by ``bkg_pt_scale`` (softer: combinatorial tracks), the probe species from the mixture above and
  a random charge; the mass is exponential (slope ``bkg_slope``) over the window.
* Occupancy ``nTracks`` ~ Gamma(shape 4.2, mean 95) for signal (like the real sample's
  nLongTracks: mean 95, sd 47) and Gamma(shape 4, mean 135) for background (busier events give
  more combinatorics).
* The mass is drawn independently of the probe within each component, so sWeights from a mass fit
  are valid for every other column (the sPlot condition).
* The number of signal candidates is Binomial(n_events, ``signal_fraction``); rows are shuffled.

Columns: the mass column, ``P``, ``PT`` [MeV/c], ``ETA``, ``nTracks``, ``charge``, ``RichDLLe``,
``RichDLLmu``, ``RichDLLk``, ``RichDLLp``, ``isMuon`` (0/1), ``MuonMuLL``, ``MuonBkgLL``, ``PIDe``,
``PIDmu``, ``PIDK``, ``PIDp``, ``hasRich``, ``InMuonAcc``, ``EcalEoverP``, ``EcalPIDe`` (the
calorimeter's electron DLL, LHCb's ProtoParticle ``EcalPIDe``), ``ProbNNe``, ``ProbNNmu``,
``ProbNNpi``, ``ProbNNk``, ``ProbNNp``, ``ProbNNghost`` (the reference ProbNN,
:mod:`mambah.reference.probnn`), ``TRUEID`` (signed PDG id),
``is_signal``. NaN marks absent information (see :mod:`mambah.reference.pid`).
:data:`LHCB_NAMES` maps them to the store's quantities.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd

from mambah.errors import ConfigurationError, closest
from mambah.physics import (
    CONDITION_NAMES,
    PID_COLUMNS,
    SPECIES,
    SPECIES_PDG,
    lhcb_names,
    p_eta,
    particle_mass,
    species_mass,
    store_name,
)
from mambah.random import SeedLike, get_rng
from mambah.reference.pid import ReferencePID

__all__ = [
    "CalibChannel",
    "CHANNELS",
    "LOW_P_CHANNELS",
    "HIGH_ETA_CHANNELS",
    "VARIANTS",
    "LHCB_NAMES",
    "CONDITIONS",
    "TARGETS",
    "calib_sample",
    "two_body_decay",
    "channel",
]

log = logging.getLogger(__name__)

#: Store PID quantity / flag -> column name of the calibration samples (LHCb ntuple names), from
#: the column map (:data:`mambah.physics.COLUMN_MAP`).
LHCB_NAMES: dict[str, str] = lhcb_names((
    *PID_COLUMNS, "has_rich", "in_muon_acceptance", "calo_e_over_p", "calo_dll_e",
    # the reference ProbNN (mambah.reference.probnn; issue 24)
    "probnn_e", "probnn_mu", "probnn_pi", "probnn_k", "probnn_p", "probnn_ghost",
))
#: Condition columns of the samples -> quantity (model cards' ``quantity``).
CONDITIONS: dict[str, str] = {name: store_name(name) for name in CONDITION_NAMES}
#: Target columns (PID variables) of the samples -> store PID column.
TARGETS: dict[str, str] = {v: k for k, v in LHCB_NAMES.items() if k in PID_COLUMNS}

#: PDG ids of the mothers of the calibration decays; their masses (MeV) come from ``particle``.
_MOTHER_PDG = {"D*+": 413, "D0": 421, "Lambda0": 3122, "J/psi": 443, "B+": 521}
_PDG_MASS = {name: particle_mass(pdg) for name, pdg in _MOTHER_PDG.items()}
_M = {name: species_mass(name) for name in SPECIES}


@dataclasses.dataclass(frozen=True)
class CalibChannel:
    """A calibration decay: what is generated for one probe species.

    Attributes:
        species: probe species (``K``, ``pi``, ``p``, ``mu``, ``e``).
        decay: the decay, probe in brackets.
        mass_column: name of the mass column.
        mass: PDG mass of the peak [MeV]. sigma: mass resolution [MeV].
        window: (low, high) fit window [MeV]. bkg_slope: exponential slope of the background [1/MeV].
        mother_pid: PDG id of the mother (its generation-stage pT and eta spectra).
        pt_min: selection requirement on the mother pT [MeV/c].
        bkg_pt_scale: background mother pT scale factor.
        signal_fraction: expected signal fraction of the mixed sample.
        background: probe species mixture of the background (names -> fractions, sum 1).
    """

    species: str
    decay: str
    mass_column: str
    mass: float
    sigma: float
    window: tuple[float, float]
    bkg_slope: float
    mother_pid: int
    pt_min: float
    signal_fraction: float
    background: Mapping[str, float]
    bkg_pt_scale: float = 0.55
    ntracks_signal: tuple[float, float] = (4.2, 95.0)
    ntracks_background: tuple[float, float] = (4.0, 135.0)
    #: the probes' momentum range [MeV/c]
    p_range: tuple[float, float] = (2000.0, 150000.0)
    #: the probes' pseudorapidity range (2 < eta < 5: the long-track acceptance)
    eta_range: tuple[float, float] = (2.0, 5.0)

    def mass_model(self) -> dict:
        """The true mass model (for fits and sWeights): Gaussian signal + exponential background."""
        return {
            "column": self.mass_column,
            "window": list(self.window),
            "signal": {"pdf": "gauss", "mu": self.mass, "sigma": self.sigma},
            "background": {"pdf": "exponential", "lambda": self.bkg_slope},
            "signal_fraction": self.signal_fraction,
        }


CHANNELS: dict[str, CalibChannel] = {
    "K": CalibChannel("K", "D*+ -> D0(-> [K-] pi+) pi+", "D0_M", _PDG_MASS["D0"], 8.0, (1815.0, 1915.0),
                      -2.0e-3, 413, 3000.0, 0.55, {"pi": 0.80, "p": 0.12, "mu": 0.05, "e": 0.03}),
    "pi": CalibChannel("pi", "D*+ -> D0(-> K- [pi+]) pi+", "D0_M", _PDG_MASS["D0"], 8.0, (1815.0, 1915.0),
                       -2.0e-3, 413, 3000.0, 0.50, {"K": 0.55, "p": 0.25, "mu": 0.12, "e": 0.08}),
    "p": CalibChannel("p", "Lambda0 -> [p] pi-", "Lambda0_M", _PDG_MASS["Lambda0"], 2.5, (1095.0, 1140.0),
                      -1.0e-2, 3122, 1500.0, 0.42, {"pi": 0.70, "K": 0.25, "mu": 0.03, "e": 0.02}),
    "mu": CalibChannel("mu", "J/psi -> [mu+] mu-", "Jpsi_M", _PDG_MASS["J/psi"], 14.0, (2950.0, 3250.0),
                       -3.0e-3, 443, 2000.0, 0.50, {"pi": 0.75, "K": 0.20, "p": 0.05}),
    "e": CalibChannel("e", "B+ -> J/psi(-> [e+] e-) K+", "B_M", _PDG_MASS["B+"], 25.0, (5150.0, 5600.0),
                      -3.0e-3, 521, 3000.0, 0.40, {"pi": 0.70, "K": 0.20, "p": 0.07, "mu": 0.03}),
}

#: Low-momentum calibration channels (``calib_sample(..., low_p=True)``, ``mambah detector calib-sample
#: --low-p``), as LHCb keeps low-momentum proton samples beside its Lambda0 ones: the proton channel's
#: Lambda0 with no mother pT requirement and probes of 2-10 GeV/c. The standard sample (mother pT >
#: 1.5 GeV/c) holds 0.14% of its protons below 5 GeV/c and none below 3, so a chain trained on it
#: extrapolates there: on the protons of Lambda_b0 -> p K- (examples/misid_table.py, 1M tracks) the
#: chain gave PIDK > 5 to 41.8% of the 2-5 GeV/c protons where the reference detector gives 72.4%, and
#: isMuon to 0.007% against 1.7%. This one puts 30% of its protons below 5 GeV/c.
LOW_P_CHANNELS: dict[str, CalibChannel] = {
    "p": dataclasses.replace(CHANNELS["p"], decay="Lambda0 -> [p] pi- (low p: no mother pT requirement, "
                                                  "2 < p < 10 GeV/c)", pt_min=0.0, p_range=(2000.0, 10000.0)),
}

#: High-pseudorapidity calibration channels (``calib_sample(..., variant="high-eta")``, ``mambah detector
#: calib-sample --high-eta``): the proton channel's Lambda0 with no mother pT requirement and probes of
#: 5-40 GeV/c at 3.5 < eta < 5. The standard sample's mother pT > 1.5 GeV/c leaves no proton of 5-20 GeV/c
#: at 4 < eta < 5 (6M candidates: a summed sWeight of -87 at 10-20 GeV/c there, against 570k at 2 < eta < 3),
#: where b-hadron decays put 1-2% of their protons; a chain trained and calibrated on it extrapolates there
#: (examples/misid_table.py --eta-edges 2,3,4,5: PIDK > 5 on 64% of the 10-15 GeV/c protons of
#: Lambda_b0 -> p K- at 4 < eta < 5 against the reference detector's 94%).
HIGH_ETA_CHANNELS: dict[str, CalibChannel] = {
    "p": dataclasses.replace(CHANNELS["p"], decay="Lambda0 -> [p] pi- (high eta: no mother pT requirement, "
                                                  "5 < p < 40 GeV/c, 3.5 < eta < 5)", pt_min=0.0,
                             p_range=(5000.0, 40000.0), eta_range=(3.5, 5.0)),
}

#: the channel variants: ``variant`` of :func:`channel` and :func:`calib_sample`
VARIANTS: dict[str, dict[str, CalibChannel]] = {"low-p": LOW_P_CHANNELS, "high-eta": HIGH_ETA_CHANNELS}

_ALIASES = {"k": "K", "kaon": "K", "pion": "pi", "proton": "p", "muon": "mu", "electron": "e",
            **{str(pdg): name for name, pdg in SPECIES_PDG.items()}}


def channel(species, low_p: bool = False, variant: str | None = None) -> CalibChannel:
    """The calibration channel of ``species`` (``K``, ``pi``, ``p``, ``mu``, ``e``; PDG ids and
    names such as ``kaon`` are accepted); ``low_p``: its low-momentum channel (:data:`LOW_P_CHANNELS`),
    the same as ``variant="low-p"``; ``variant="high-eta"``: its high-pseudorapidity channel
    (:data:`HIGH_ETA_CHANNELS`)."""
    key = str(species)
    key = key if key in CHANNELS else _ALIASES.get(key.lower().lstrip("+-"), key)
    if key not in CHANNELS:
        near = closest(str(species), CHANNELS)
        hint = f" (did you mean {', '.join(map(repr, near))}?)" if near else ""
        raise ConfigurationError(
            f"no calibration sample for species {species!r}{hint}; available: "
            + ", ".join(f"{k} ({c.decay})" for k, c in CHANNELS.items())
        )
    if low_p:
        if variant not in (None, "low-p"):
            raise ConfigurationError(f"low_p=True and variant={variant!r} exclude each other")
        variant = "low-p"
    if variant is None:
        return CHANNELS[key]
    if variant not in VARIANTS:
        raise ConfigurationError(f"unknown calibration channel variant {variant!r}; available: {', '.join(VARIANTS)}")
    if key not in VARIANTS[variant]:
        what = {"low-p": "low-momentum", "high-eta": "high-pseudorapidity"}[variant]
        raise ConfigurationError(f"no {what} calibration sample for species {key!r} (mambah detector calib-sample "
                                 f"--{variant}); available: "
                                 + ", ".join(f"{k} ({c.decay})" for k, c in VARIANTS[variant].items()))
    return VARIANTS[variant][key]


def two_body_decay(parent: np.ndarray, m_parent, m1: float, m2: float, rng: np.random.Generator):
    """Isotropic two-body decay of parents with lab four-momenta ``parent`` (shape (n, 4):
    E, px, py, pz [MeV]) and mass ``m_parent``; returns the two daughters' lab four-momenta.

    Rest-frame momentum p* = sqrt[(M^2 - (m1+m2)^2)(M^2 - (m1-m2)^2)] / 2M, isotropic direction,
    then the Lorentz boost with beta = P/E (PDG Review "Kinematics", Eqs. 49.17 and 49.3).
    """
    n = len(parent)
    M = np.broadcast_to(np.asarray(m_parent, dtype=float), (n,))
    pstar = np.sqrt((M**2 - (m1 + m2) ** 2) * (M**2 - (m1 - m2) ** 2)) / (2.0 * M)
    cos_t = 2.0 * rng.random(n) - 1.0
    sin_t = np.sqrt(1.0 - cos_t**2)
    phi = 2.0 * np.pi * rng.random(n)
    d = np.stack([sin_t * np.cos(phi), sin_t * np.sin(phi), cos_t], axis=1) * pstar[:, None]
    b = parent[:, 1:] / parent[:, :1]
    b2 = np.sum(b**2, axis=1)
    gamma = 1.0 / np.sqrt(1.0 - b2)
    out = []
    for sign, m in ((1.0, m1), (-1.0, m2)):
        p3 = sign * d
        e = np.sqrt(pstar**2 + m**2)
        bp = np.sum(b * p3, axis=1)
        g2 = np.where(b2 > 0, (gamma - 1.0) / np.where(b2 > 0, b2, 1.0), 0.0)
        p_lab = p3 + (g2 * bp + gamma * e)[:, None] * b
        e_lab = gamma * (e + bp)
        out.append(np.column_stack([e_lab, p_lab]))
    return out[0], out[1]


def _mothers(n: int, mass: float, pid: int, pt_min: float, scale: float, rng: np.random.Generator) -> np.ndarray:
    from mambah.generation.spectra import PowerLawPt, default_eta, default_pt

    base = default_pt(pid)
    pt = PowerLawPt(p0=base.p0 * scale, n=base.n, low=pt_min * scale).sample(n, rng)
    eta = default_eta(pid).sample(n, rng)
    phi = rng.uniform(0.0, 2.0 * np.pi, n)
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    e = np.sqrt(px**2 + py**2 + pz**2 + mass**2)
    return np.column_stack([e, px, py, pz])


def _probes(ch: CalibChannel, n: int, scale: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Probe three-momenta (n, 3) and the charge of the probe for a positive mother."""
    sp = ch.species
    if sp in ("K", "pi"):
        dst = _mothers(n, _PDG_MASS["D*+"], ch.mother_pid, ch.pt_min, scale, rng)
        d0, _soft = two_body_decay(dst, _PDG_MASS["D*+"], _PDG_MASS["D0"], _M["pi"], rng)
        k, pi = two_body_decay(d0, _PDG_MASS["D0"], _M["K"], _M["pi"], rng)
        return (k if sp == "K" else pi)[:, 1:], np.full(n, -1 if sp == "K" else 1)
    if sp == "p":
        lam = _mothers(n, _PDG_MASS["Lambda0"], ch.mother_pid, ch.pt_min, scale, rng)
        p, _pi = two_body_decay(lam, _PDG_MASS["Lambda0"], _M["p"], _M["pi"], rng)
        return p[:, 1:], np.ones(n, dtype=int)
    if sp == "mu":
        jpsi = _mothers(n, _PDG_MASS["J/psi"], ch.mother_pid, ch.pt_min, scale, rng)
        mp, mm = two_body_decay(jpsi, _PDG_MASS["J/psi"], _M["mu"], _M["mu"], rng)
        first = rng.random(n) < 0.5
        return np.where(first[:, None], mp, mm)[:, 1:], np.where(first, 1, -1)
    b = _mothers(n, _PDG_MASS["B+"], ch.mother_pid, ch.pt_min, scale, rng)
    jpsi, _k = two_body_decay(b, _PDG_MASS["B+"], _PDG_MASS["J/psi"], _M["K"], rng)
    ep, em = two_body_decay(jpsi, _PDG_MASS["J/psi"], _M["e"], _M["e"], rng)
    first = rng.random(n) < 0.5
    return np.where(first[:, None], ep, em)[:, 1:], np.where(first, 1, -1)


def _accepted_probes(ch: CalibChannel, n: int, scale: float, rng: np.random.Generator):
    """Generate rounds of decays until ``n`` probes pass the channel's eta and p ranges."""
    parts_p, parts_q = [np.empty((0, 3))], [np.empty(0, dtype=int)]
    have = 0
    while have < n:
        m = max(int(1.3 * (n - have)) + 100, 1000)
        p3, q = _probes(ch, m, scale, rng)
        p, eta = p_eta(p3[:, 0], p3[:, 1], p3[:, 2])
        ok = (eta > ch.eta_range[0]) & (eta < ch.eta_range[1]) & (p > ch.p_range[0]) & (p < ch.p_range[1])
        parts_p.append(p3[ok])
        parts_q.append(q[ok])
        have += int(ok.sum())
    return np.concatenate(parts_p)[:n], np.concatenate(parts_q)[:n]


def _truncated_gauss(n, mu, sigma, lo, hi, rng):
    from scipy.special import ndtr, ndtri

    a, b = ndtr((lo - mu) / sigma), ndtr((hi - mu) / sigma)
    return mu + sigma * ndtri(a + (b - a) * rng.random(n))


def _truncated_exp(n, lam, lo, hi, rng):
    u = rng.random(n)
    if abs(lam) < 1e-12:
        return lo + (hi - lo) * u
    # inverse CDF of exp(lam m) on [lo, hi]
    return lo + np.log1p(u * np.expm1(lam * (hi - lo))) / lam


def calib_sample(species, n_events: int, seed: SeedLike = None, *, pure: bool = False,
                 signal_fraction: float | None = None, detector: ReferencePID | None = None,
                 low_p: bool = False, variant: str | None = None) -> pd.DataFrame:
    """A calibration sample of probe tracks of ``species`` from the reference detector.

    Args:
        species: ``K``, ``pi``, ``p``, ``mu`` or ``e`` (see :data:`CHANNELS` for the decays).
        n_events: number of candidates (rows).
        seed: seed or numpy Generator; the same seed gives the same sample.
        pure: only signal candidates (the truth for closure tests); the mass column still peaks.
        signal_fraction: expected signal fraction of the mixed sample (default: the channel's,
            0.40-0.55); the number of signal rows is Binomial(n_events, signal_fraction).
        detector: the PID response (default :class:`~mambah.reference.pid.ReferencePID`).
        low_p: the species' low-momentum channel (:data:`LOW_P_CHANNELS`; protons only).
        variant: ``"low-p"`` (the same as ``low_p``) or ``"high-eta"`` (:data:`HIGH_ETA_CHANNELS`; protons only).

    Returns:
        DataFrame, one row per candidate, columns as in the module docstring.

    Example:
        >>> from mambah.reference.calibration import calib_sample
        >>> df = calib_sample("p", 2000, seed=1)
        >>> bool(0.35 < df["is_signal"].mean() < 0.50)
        True
    """
    ch = channel(species, low_p, variant)
    n_events = _positive_int(n_events)
    f = ch.signal_fraction if signal_fraction is None else float(signal_fraction)
    if not 0.0 <= f <= 1.0:
        raise ConfigurationError(f"signal_fraction must be in [0, 1], not {signal_fraction!r}")
    rng = get_rng(seed)
    detector = detector or ReferencePID()
    n_sig = n_events if pure else int(rng.binomial(n_events, f))
    n_bkg = n_events - n_sig
    lo, hi = ch.window

    p3_s, q_s = _accepted_probes(ch, n_sig, 1.0, rng)
    q_s = q_s * np.where(rng.random(n_sig) < 0.5, 1, -1)  # the mother or its charge conjugate
    sp_s = np.full(n_sig, SPECIES_PDG[ch.species])
    m_s = _truncated_gauss(n_sig, ch.mass, ch.sigma, lo, hi, rng)
    nt_s = rng.gamma(ch.ntracks_signal[0], ch.ntracks_signal[1] / ch.ntracks_signal[0], n_sig)

    p3_b, _ = _accepted_probes(ch, n_bkg, ch.bkg_pt_scale, rng)
    names = list(ch.background)
    frac = np.array([ch.background[k] for k in names], dtype=float)
    sp_b = np.array([SPECIES_PDG[k] for k in names])[rng.choice(len(names), n_bkg, p=frac / frac.sum())]
    q_b = np.where(rng.random(n_bkg) < 0.5, 1, -1)
    m_b = _truncated_exp(n_bkg, ch.bkg_slope, lo, hi, rng)
    nt_b = rng.gamma(ch.ntracks_background[0], ch.ntracks_background[1] / ch.ntracks_background[0], n_bkg)

    p3 = np.concatenate([p3_s, p3_b])
    charge = np.concatenate([q_s, q_b]).astype(np.int8)
    spec = np.concatenate([sp_s, sp_b]).astype(np.int64)
    n_tracks = np.maximum(np.rint(np.concatenate([nt_s, nt_b])), 5).astype(np.int32)
    mass = np.concatenate([m_s, m_b])
    is_signal = np.concatenate([np.ones(n_sig, bool), np.zeros(n_bkg, bool)])
    order = rng.permutation(n_events)
    p3, charge, spec, n_tracks, mass, is_signal = (a[order] for a in (p3, charge, spec, n_tracks, mass, is_signal))

    p, eta = p_eta(p3[:, 0], p3[:, 1], p3[:, 2])
    pt = np.hypot(p3[:, 0], p3[:, 1])
    resp = detector(p, eta, spec, charge, n_tracks, rng)
    # TRUEID: the PDG id carries the particle's sign convention (e-, mu- are +11, +13)
    lepton = (spec == 11) | (spec == 13)
    trueid = (spec * np.where(lepton, -charge, charge)).astype(np.int32)

    out = {
        ch.mass_column: mass.astype(np.float64),
        "P": p.astype(np.float64),
        "PT": pt.astype(np.float64),
        "ETA": eta.astype(np.float64),
        "nTracks": n_tracks,
        "charge": charge,
    }
    for col, lhcb in LHCB_NAMES.items():
        out[lhcb] = resp[col].to_numpy()
    out["TRUEID"] = trueid
    out["is_signal"] = is_signal
    df = pd.DataFrame(out)
    log.debug("%s calibration sample: %d candidates, %d signal (%.1f%%), %s in [%g, %g] MeV",
             ch.species, n_events, n_sig, 100.0 * n_sig / max(n_events, 1), ch.mass_column, lo, hi)
    return df


def _positive_int(n) -> int:
    try:
        i = int(n)
    except (TypeError, ValueError):
        raise ConfigurationError(f"n_events must be a positive integer, not {n!r}") from None
    if i != n or i < 1:
        raise ConfigurationError(f"n_events must be a positive integer, not {n!r}")
    return i
