"""The reference detector's particle-identification response (RICH, muon system, calorimeter).

A documented, physics-motivated stand-in for the full simulation of an LHCb-like PID system. It
turns the true species and kinematics of charged tracks into the PID variables that the event
store keeps (:data:`mambah.store.schema.PID_COLUMNS`), with the mechanisms that shape the real
distributions — Cherenkov thresholds and saturation, photon statistics, angular resolution,
occupancy-dependent background, muon penetration, decay in flight, punch-through and random hits,
calorimeter E/p — so that models trained on its samples have an exact closure test.

**It is not LHCb truth.** The parameters are of the order of the published performance figures
(sources below) and were chosen for a realistic shape, not fitted to data. Models meant for
physics are trained on real calibration samples (see ``shared/data``).

Sources
-------
* [RICH] LHCb RICH collaboration, "Performance of the LHCb RICH detector at the LHC",
  Eur. Phys. J. C 73 (2013) 2431, arXiv:1211.6759 — radiators, refractive indices, per-photon
  Cherenkov-angle resolutions (C4F10 1.62 mrad, CF4 0.68 mrad), photon yields (tens of
  photoelectrons per saturated track), the global likelihood and DLL = lnL(x) - lnL(pi).
* [MUON] F. Archilli et al., "Performance of the muon identification at LHCb",
  JINST 8 (2013) P10020, arXiv:1306.0249 — IsMuon (stations required vs momentum, 3 GeV
  penetration threshold), field of interest (FOI), D^2 and the muon / non-muon likelihoods,
  mis-identification from decays in flight, punch-through and random hits.
* [PERF] LHCb collaboration, "LHCb detector performance", Int. J. Mod. Phys. A 30 (2015) 1530022,
  arXiv:1412.6352 — RICH and calorimeter acceptances, ECAL resolution
  sigma_E/E = 10%/sqrt(E/GeV) (+) 1%, electron identification with E/p, combined DLLs.
* Masses and lifetimes: PDG (2024) via the constants below.

Conventions
-----------
* Units: momenta and masses in MeV/c (c = 1), angles in rad, lengths in mm.
* Species are absolute PDG ids: 11 (e), 13 (mu), 211 (pi), 321 (K), 2212 (p). The response is
  charge-symmetric (no magnet-polarity or material asymmetries are modelled).
* **Missing information is NaN**, as in the store schema ("NaN where not produced"), and flagged:
  ``has_rich`` False -> all four ``rich_dll_*`` are NaN; ``is_muon`` == 0 -> ``muon_mu_ll`` and
  ``muon_bkg_ll`` are NaN (LHCb computes the muon likelihoods for IsMuon candidates only).
  LHCb ntuples written by TupleToolPID carry -1000 for an absent ProtoParticle info instead; use
  :func:`lhcb_sentinels` to convert. Any cut such as ``DLLK > 0`` fails on NaN, as on -1000.
* Combined DLLs (``pid_*``) are sums of the available sub-detector DLLs, an absent detector
  contributing 0 (LHCb's ChargedProtoCombineDLLs): ``pid_e = rich_dll_e + calo_dll_e``,
  ``pid_mu = rich_dll_mu + [muon_mu_ll - muon_bkg_ll if is_muon, else 0]`` (LHCb adds the muon
  system's DLL for IsMuon candidates only), ``pid_k = rich_dll_k``, ``pid_p = rich_dll_p``. A
  track with no information at all has 0 for all four. (Until 2026-11-22 a non-IsMuon track in the
  muon acceptance got a deterministic "veto" term ln[(1 - eff_mu(p)) / (1 - eff_h)] instead of 0 —
  a function of p alone that no real combination has and that no generative model reproduces
  exactly; dropped for LHCb's convention.)

Parameters (defaults)
---------------------
==============  ===========================================================  ==================
component       parameter                                                    value
==============  ===========================================================  ==================
RICH1 C4F10     n - 1 (thresholds pi/K/p = 2.6/9.3/17.7 GeV/c)               1.4e-3 [RICH]
                saturated angle arccos(1/n)                                  52.9 mrad
                photons of a beta = 1 track, N_sat                           25
                per-photon resolution                                        1.62 mrad [RICH]
                track direction error                                        0.4 (+) 1.5/p[GeV] mrad
                acceptance (25-300 mrad)                                     1.9 < eta < 4.4
                uniform background photons                                   2 + 0.010 nTracks
                neighbouring rings per track                                 0.008 nTracks
                ring lost                                                    3%
RICH2 CF4       n - 1 (thresholds pi/K/p = 4.4/15.6/29.7 GeV/c)              5.0e-4 [RICH]
                saturated angle                                              31.6 mrad
                N_sat                                                        18
                per-photon resolution                                        0.68 mrad [RICH]
                track direction error                                        0.2 (+) 0.8/p[GeV] mrad
                acceptance (15-120 mrad)                                     2.8 < eta < 4.9
                uniform background photons                                   1 + 0.005 nTracks
                neighbouring rings per track                                 0.005 nTracks
                ring lost                                                    2%
both RICHes     search window                                                1.3 theta_sat
                local background density factor                              Gamma(1.5, mean 1)
                geometric ring acceptance                                    N(0.9, 0.12) in [0.3, 1]
                has_rich: in a radiator's acceptance with p > its pi threshold
muon system     range to reach M2/M3/M4/M5                                   2.8/3.3/4.6/5.8 GeV/c
                range straggling; hit efficiency per station                 7%; 99.5%
                IsMuon: p > 3 GeV/c; M2M3 (3-6), +M4|M5 (6-10), M2-M5 (>10)  [MUON, Table 1]
                acceptance                                                   1.9 < eta < 4.7
                decay path before the calorimeter L                          6 m
                BR(-> mu) pi/K; kinked track still matched pi/K               1.0/0.67; 0.8/0.3
                punch-through to M2..M5 (x sqrt(p/10 GeV), correlated)       1.2/0.6/0.3/0.2%
                random-hit mean per station at nTracks=100, p >> 6 GeV       5/3.5/3/3%
                FOI growth                                                   x (1 + (6 GeV/p)^2)
                FOI half-width; shower hit spread (units of MS sigma)        3.5; 2
                likelihood floor                                             ln(1e-5) = -11.5
                DLL of a non-IsMuon track (in acceptance, p > 3 GeV)         ln[(1-eff_mu(p))/0.99]
calorimeter     sigma_E/E                                                    10%/sqrt(E) (+) 1% [PERF]
                electron tail (brem, leakage): probability, E/p factor       25%, U(0.6, 1)
                hadron shower probability (1.1 lambda_I); shower E/p         67%; Beta(2, 4.5)
                MIP deposit (muons, non-showering hadrons)                   300 MeV
                acceptance; CaloDLLe clip                                    1.9 < eta < 4.5; +-15
==============  ===========================================================  ==================

Example
-------
>>> import numpy as np
>>> from mambah.reference.pid import reference_pid
>>> rng = np.random.default_rng(1)
>>> n = 1000
>>> df = reference_pid(p=np.full(n, 20e3), eta=np.full(n, 3.0), species=np.full(n, 321),
...                    charge=np.ones(n), n_tracks=np.full(n, 100), rng=rng)
>>> bool((df["rich_dll_k"] > 0).mean() > 0.9)
True
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd

from mambah.errors import ConfigurationError, DataError
from mambah.random import SeedLike, get_rng
from mambah.physics import SPECIES as PHYSICS_SPECIES
from mambah.physics import SPECIES_PDG, TRACKABLE_PIDS, p_eta, species_mass
from mambah.physics.columns import PID_COLUMNS

__all__ = [
    "SPECIES",
    "MASSES",
    "SPECIES_NAMES",
    "Radiator",
    "RICH1",
    "RICH2",
    "MuonSystem",
    "Calorimeter",
    "ReferencePID",
    "reference_pid",
    "rich_response",
    "muon_response",
    "calo_response",
    "species_codes",
    "lhcb_sentinels",
    "ReferencePIDStage",
    "FLAG_COLUMNS",
    "muon_isMuon_efficiency",
]

log = logging.getLogger(__name__)

#: Species (absolute PDG ids) in the order of the likelihood hypotheses: e, mu, pi, K, p
#: (:data:`mambah.physics.TRACKABLE_PIDS`).
SPECIES: tuple[int, ...] = TRACKABLE_PIDS
#: Short names accepted wherever a species is asked for (:data:`mambah.physics.SPECIES_PDG`).
SPECIES_NAMES: dict[str, int] = SPECIES_PDG
#: Masses [MeV/c^2] by absolute PDG id, from :mod:`mambah.physics` (the ``particle`` package).
MASSES: dict[int, float] = {SPECIES_PDG[s]: species_mass(s) for s in PHYSICS_SPECIES}
#: c*tau [mm], PDG 2024 (pi+: 7.8045 m, K+: 3.711 m).
CTAU: dict[int, float] = {211: 7804.5, 321: 3711.0}
_MASS_ARRAY = np.array([MASSES[s] for s in SPECIES])
_PI = SPECIES.index(211)

#: Extra columns of :func:`reference_pid` besides the store's PID columns.
FLAG_COLUMNS: dict[str, str] = {
    "has_rich": "bool",
    "in_muon_acceptance": "bool",
    "in_calo_acceptance": "bool",
    "calo_e_over_p": "float32",
    "calo_dll_e": "float32",
}

_LL_FLOOR = float(np.log(1e-5))  # lower clip of the muon likelihoods (ln of a 1e-5 probability)


def species_codes(species) -> np.ndarray:
    """Index (0..4, order of :data:`SPECIES`) of each absolute PDG id; unknown ids raise.

    Accepts signed PDG ids (the sign is dropped) or the short names of :data:`SPECIES_NAMES`.
    """
    s = np.asarray(species)
    if s.dtype.kind in "US" or s.dtype == object:
        bad = sorted({str(x) for x in np.unique(s) if str(x) not in SPECIES_NAMES})
        if bad:
            raise ConfigurationError(
                f"unknown species {', '.join(map(repr, bad))}; use one of {', '.join(SPECIES_NAMES)} "
                f"or an absolute PDG id ({', '.join(map(str, SPECIES))})"
            )
        s = np.array([SPECIES_NAMES[str(x)] for x in s.ravel()]).reshape(s.shape)
    s = np.abs(s.astype(np.int64))
    lookup = np.array(SPECIES)
    idx = np.searchsorted(lookup, s)
    idx = np.clip(idx, 0, len(lookup) - 1)
    ok = lookup[idx] == s
    if not ok.all():
        bad = sorted(set(np.unique(s[~ok]).tolist()))
        raise ConfigurationError(
            f"the reference PID response knows the species {', '.join(map(str, SPECIES))} "
            f"(e, mu, pi, K, p as absolute PDG ids), not {', '.join(map(str, bad[:10]))}"
        )
    return idx


# --------------------------------------------------------------------------------------------
# RICH
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Radiator:
    """A gas radiator of a ring-imaging Cherenkov detector.

    Cherenkov angle ``cos(theta) = 1/(n beta)`` (Frank-Tamm condition ``n beta > 1``); threshold
    momentum ``p_th = m / sqrt(n^2 - 1)``; photon yield ``N = N_sat sin^2(theta)/sin^2(theta_sat)``
    (Frank-Tamm: dN/dx proportional to sin^2 theta; ``N_sat`` is the yield of a beta = 1 track);
    per-photon angular resolution ``sigma_photon`` [RICH, Table 3]; a background of
    ``bkg_photons_0 + bkg_photons_per_track * n_tracks`` photons per track (other rings, noise)
    spread uniformly over the ring area ``theta < window * theta_sat``.

    Attributes:
        name: label.
        n_minus_1: refractive index minus one.
        n_photons_saturated: mean number of detected photons for a beta = 1 track.
        sigma_photon: per-photon Cherenkov-angle resolution [rad].
        eta_min, eta_max: pseudorapidity acceptance (from the angular acceptance [PERF]).
        bkg_photons_0, bkg_photons_per_track: mean background photons per track, constant and
            per track of the event (occupancy).
        sigma_track_0: track-direction error at infinite momentum [rad].
        sigma_track_ms: multiple-scattering term of the track-direction error [rad MeV].
        ring_loss: probability that a track's ring is lost (hadronic interaction, scattering out
            of the radiator, reconstruction failure): no signal photons although light was emitted.
        window: the photons of a track are searched up to ``window * theta_sat``.
        neighbour_rings_per_track: mean number of rings of *other* tracks overlapping the search
            window, per track of the event. Their photons (a saturated ring of ``N_sat`` photons
            centred at an offset uniform in a disc of radius ``neighbour_offset * theta_sat``) are
            structured background which the likelihood treats as uniform: the main reason why
            the separation worsens with occupancy [RICH, Sect. 6.3].
        local_density_shape: the local background density around a track fluctuates by a factor
            ~ Gamma(shape, mean 1) (hot spots, nearby tracks); the likelihood assumes the mean.
        ring_acceptance_mean, ring_acceptance_sd: the fraction of a track's ring that falls on
            active photodetector area varies from track to track, ~ N(mean, sd) clipped to
            [0.3, 1]; it scales the true and the expected yields alike (the reconstruction
            knows the geometry).
    """

    name: str
    n_minus_1: float
    n_photons_saturated: float
    sigma_photon: float
    eta_min: float
    eta_max: float
    bkg_photons_0: float
    bkg_photons_per_track: float
    sigma_track_0: float
    sigma_track_ms: float
    ring_loss: float = 0.02
    window: float = 1.3
    neighbour_rings_per_track: float = 0.0
    neighbour_offset: float = 2.0
    local_density_shape: float = 1.5
    ring_acceptance_mean: float = 0.9
    ring_acceptance_sd: float = 0.12

    @property
    def n2m1(self) -> float:
        """n^2 - 1."""
        return (1.0 + self.n_minus_1) ** 2 - 1.0

    @property
    def theta_saturated(self) -> float:
        """Cherenkov angle of a beta = 1 track [rad]: arccos(1/n)."""
        return float(np.arccos(1.0 / (1.0 + self.n_minus_1)))

    def threshold(self, mass) -> np.ndarray:
        """Threshold momentum p_th = m / sqrt(n^2 - 1) [MeV/c] of a particle of mass ``mass``."""
        return np.asarray(mass, dtype=float) / np.sqrt(self.n2m1)

    def cherenkov_angle(self, p, mass) -> np.ndarray:
        """Cherenkov angle [rad], cos(theta) = 1/(n beta); 0 below threshold."""
        p = np.asarray(p, dtype=float)
        beta = p / np.hypot(p, mass)
        c = 1.0 / ((1.0 + self.n_minus_1) * beta)
        return np.arccos(np.clip(c, -1.0, 1.0))  # c >= 1 (below threshold) gives 0

    def expected_photons(self, theta) -> np.ndarray:
        """Mean number of detected signal photons for Cherenkov angle ``theta`` (Frank-Tamm)."""
        return self.n_photons_saturated * np.sin(theta) ** 2 / np.sin(self.theta_saturated) ** 2

    def uniform_background_photons(self, n_tracks) -> np.ndarray:
        """Mean number of uniform background photons (noise, scattered light) in the window."""
        return self.bkg_photons_0 + self.bkg_photons_per_track * np.asarray(n_tracks, dtype=float)

    def neighbour_fraction(self) -> float:
        """Mean fraction of a neighbouring ring's photons inside the search window.

        A ring of radius R centred at distance d from the track has the arc fraction
        arccos((d^2 + R^2 - W^2) / (2 d R)) / pi inside the window of radius W; averaged over
        d^2 ~ U(0, (neighbour_offset R)^2) by quadrature.
        """
        r, w = 1.0, self.window
        d = self.neighbour_offset * np.sqrt((np.arange(4000) + 0.5) / 4000)
        c = np.clip((d**2 + r**2 - w**2) / (2 * d * r), -1.0, 1.0)
        return float(np.mean(np.arccos(c) / np.pi))

    def background_photons(self, n_tracks) -> np.ndarray:
        """Mean number of background photons (uniform + neighbouring rings) in the search window."""
        n_tracks = np.asarray(n_tracks, dtype=float)
        return self.uniform_background_photons(n_tracks) + (
            self.neighbour_rings_per_track * n_tracks * self.n_photons_saturated * self.neighbour_fraction())

    def sigma_track(self, p) -> np.ndarray:
        """Track-direction error [rad]: sigma_track_0 (+) sigma_track_ms / p."""
        return np.hypot(self.sigma_track_0, self.sigma_track_ms / np.asarray(p, dtype=float))

    def in_acceptance(self, eta) -> np.ndarray:
        eta = np.asarray(eta, dtype=float)
        return (eta > self.eta_min) & (eta < self.eta_max)


#: RICH1 gas radiator, C4F10: n - 1 = 1.4e-3 (thresholds pi 2.6, K 9.3, p 17.7 GeV/c),
#: 25-300 mrad -> 1.9 < eta < 4.4, 1.62 mrad per photon [RICH].
RICH1 = Radiator(
    name="RICH1 (C4F10)",
    n_minus_1=1.4e-3,
    n_photons_saturated=25.0,
    sigma_photon=1.62e-3,
    eta_min=1.9,
    eta_max=4.4,
    bkg_photons_0=2.0,
    bkg_photons_per_track=0.01,
    sigma_track_0=0.4e-3,
    sigma_track_ms=1.5,  # 1.5 mrad at 1 GeV/c
    ring_loss=0.03,
    neighbour_rings_per_track=0.008,
)
#: RICH2 gas radiator, CF4: n - 1 = 5e-4 (thresholds pi 4.4, K 15.6, p 29.7 GeV/c),
#: 15-120 mrad -> 2.8 < eta < 4.9, 0.68 mrad per photon [RICH].
RICH2 = Radiator(
    name="RICH2 (CF4)",
    n_minus_1=5.0e-4,
    n_photons_saturated=18.0,
    sigma_photon=0.68e-3,
    eta_min=2.8,
    eta_max=4.9,
    bkg_photons_0=1.0,
    bkg_photons_per_track=0.005,
    sigma_track_0=0.2e-3,
    sigma_track_ms=0.8,
    ring_loss=0.02,
    neighbour_rings_per_track=0.005,
)


def _radiator_loglik(rad: Radiator, p, code, n_tracks, rng: np.random.Generator) -> np.ndarray:
    """Extended unbinned log-likelihood of each hypothesis for one radiator, shape (n, 5).

    Photons of the true species: N_sig ~ Poisson(a N(theta_true)) (0 if the ring is lost; a the
    track's geometric ring acceptance), angles
    theta_true + delta_track + sigma_photon * z. Background: uniform photons,
    Poisson(G * B_uni(n_tracks)), and the in-window arcs of Poisson(G * rate * n_tracks) neighbouring
    saturated rings, G ~ Gamma(local_density_shape) the local density fluctuation. For hypothesis h
    with expected angle theta_h and yield S_h = a N(theta_h) (1 - ring_loss), the
    reconstruction evaluates [RICH, Sect. 4]

        ln L_h = -(S_h + B) + sum_photons ln( S_h G(theta; theta_h, sigma_photon) + B u(theta) ),

    with B the *mean* background (:meth:`Radiator.background_photons`) and u(theta) =
    2 theta / theta_w^2 (uniform in area). Neither the track-direction error nor the structure and
    local fluctuation of the background are in the likelihood (a real reconstruction never knows
    them exactly), which makes realistic non-Gaussian tails and the occupancy dependence.

    Photons are kept as flat arrays with the index of their track (no padding), and the per-track
    sums are ``np.bincount``.
    """
    n = len(p)
    m_true = _MASS_ARRAY[code]
    theta_true = rad.cherenkov_angle(p, m_true)
    th_sat = rad.theta_saturated
    theta_w = rad.window * th_sat
    lost = rng.random(n) < rad.ring_loss
    acc = np.clip(rng.normal(rad.ring_acceptance_mean, rad.ring_acceptance_sd, n), 0.3, 1.0)
    n_sig = rng.poisson(np.where(lost, 0.0, acc * rad.expected_photons(theta_true)))
    local = rng.gamma(rad.local_density_shape, 1.0 / rad.local_density_shape, n)
    n_uni = rng.poisson(local * rad.uniform_background_photons(n_tracks))
    n_rings = rng.poisson(local * rad.neighbour_rings_per_track * n_tracks)
    rows = np.arange(n)

    # signal photons
    i_sig = np.repeat(rows, n_sig)
    delta = rng.normal(0.0, rad.sigma_track(p))
    th_sig = np.abs(theta_true[i_sig] + delta[i_sig] + rad.sigma_photon * rng.standard_normal(len(i_sig)))
    # uniform background photons
    i_uni = np.repeat(rows, n_uni)
    th_uni = theta_w * np.sqrt(rng.random(len(i_uni)))
    # neighbouring rings: centre at distance d (uniform in a disc); the arc |psi| < alpha lies in
    # the window, alpha = arccos((d^2 + R^2 - W^2) / (2 d R)); photons uniform on that arc
    i_ring = np.repeat(rows, n_rings)
    d = rad.neighbour_offset * th_sat * np.sqrt(rng.random(len(i_ring)))
    r_ring = th_sat
    cos_a = np.clip((d**2 + r_ring**2 - theta_w**2) / (2.0 * np.maximum(d, 1e-12) * r_ring), -1.0, 1.0)
    alpha = np.arccos(cos_a)
    n_arc = rng.poisson(rad.n_photons_saturated * alpha / np.pi)
    ring_of = np.repeat(np.arange(len(i_ring)), n_arc)
    psi = alpha[ring_of] * (2.0 * rng.random(len(ring_of)) - 1.0)
    rr = r_ring + rad.sigma_photon * rng.standard_normal(len(ring_of))
    dd = d[ring_of]
    i_nb = i_ring[ring_of]
    th_nb = np.sqrt(np.maximum(dd**2 + rr**2 - 2.0 * dd * rr * np.cos(psi), 0.0))

    idx = np.concatenate([i_sig, i_uni, i_nb])
    theta = np.concatenate([th_sig, th_uni, th_nb])
    keep = theta < theta_w
    idx, theta = idx[keep], theta[keep]
    bkg = rad.background_photons(n_tracks)  # what the likelihood assumes, uniform in area
    u = 2.0 * theta / theta_w**2
    norm = 1.0 / (np.sqrt(2.0 * np.pi) * rad.sigma_photon)
    out = np.empty((n, len(SPECIES)))
    for j, m in enumerate(_MASS_ARRAY):  # a loop over the 5 hypotheses, not over tracks
        th_h = rad.cherenkov_angle(p, m)
        s_h = acc * rad.expected_photons(th_h) * (1.0 - rad.ring_loss)
        g = norm * np.exp(-0.5 * ((theta - th_h[idx]) / rad.sigma_photon) ** 2)
        dens = s_h[idx] * g + bkg[idx] * u
        out[:, j] = -(s_h + bkg) + np.bincount(idx, weights=np.log(np.maximum(dens, 1e-300)), minlength=n)
    return out


def rich_response(p, eta, species, n_tracks, rng: SeedLike = None, radiators=(RICH1, RICH2),
                  chunk_size: int = 50000) -> pd.DataFrame:
    """RICH DLLs of tracks: columns ``rich_dll_e``, ``rich_dll_mu``, ``rich_dll_k``, ``rich_dll_p``
    (DLL_x = ln L(x) - ln L(pi), summed over the gas radiators a track crosses) and ``has_rich``.

    A track has RICH information (``has_rich``) when it lies in the angular acceptance of a gas
    radiator in which a pion would radiate (p above the radiator's pion threshold): below the pion
    threshold of every radiator it crosses, the RICH cannot tell pi, K and p apart, and LHCb's RICH
    track selection does not build a RichPID for it. Tracks without RICH information get NaN DLLs.

    Args:
        p: momentum [MeV/c]; eta: pseudorapidity; species: absolute PDG ids (or names);
        n_tracks: occupancy of the track's event (number of tracks); rng: seed or Generator.
        radiators: the gas radiators (default RICH1 C4F10 and RICH2 CF4).
        chunk_size: tracks per vectorised block (bounds memory: ~ 50 photons per track).
    """
    rng = get_rng(rng)
    p, eta, n_tracks = (np.asarray(a, dtype=float) for a in (p, eta, n_tracks))
    code = species_codes(species)
    n = len(p)
    lnl = np.zeros((n, len(SPECIES)))
    has = np.zeros(n, dtype=bool)
    m_pi = MASSES[211]
    for rad in radiators:
        acc = rad.in_acceptance(eta)
        has |= acc & (p > rad.threshold(m_pi))
    for rad in radiators:
        use = np.flatnonzero(has & rad.in_acceptance(eta))
        for start in range(0, len(use), chunk_size):
            sel = use[start:start + chunk_size]
            lnl[sel] += _radiator_loglik(rad, p[sel], code[sel], n_tracks[sel], rng)
    dll = lnl - lnl[:, [_PI]]
    dll[~has] = np.nan
    return pd.DataFrame({
        "rich_dll_e": dll[:, 0].astype(np.float32),
        "rich_dll_mu": dll[:, 1].astype(np.float32),
        "rich_dll_k": dll[:, 3].astype(np.float32),
        "rich_dll_p": dll[:, 4].astype(np.float32),
        "has_rich": has,
    })


# --------------------------------------------------------------------------------------------
# Muon system
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MuonSystem:
    """Muon stations M2-M5 behind the calorimeters and iron filters [MUON].

    * Penetration: a muon reaches station k when its momentum (smeared by range straggling of
      relative width ``straggling``) exceeds ``station_p[k]`` (about 3 GeV/c for M2, 6 GeV/c to
      cross all stations [MUON, Sect. 2]); each reached station records a hit in the FOI with
      ``hit_efficiency``.
    * IsMuon [MUON, Table 1]: 3 < p < 6 GeV/c: M2 and M3; 6 < p < 10 GeV/c: M2, M3 and (M4 or M5);
      p > 10 GeV/c: M2, M3, M4 and M5; never below ``p_min`` = 3 GeV/c.
    * Mis-identification of hadrons: (a) decay in flight pi/K -> mu nu before the calorimeter,
      probability 1 - exp(-L / (beta gamma c tau)) times the branching fraction to a muon and the
      probability that the kinked track is still matched (``kink_accept``); the muon carries a
      fraction x ~ U(m_mu^2/m^2, 1) of the momentum; (b) punch-through of hadronic showers,
      reaching station k with probability ``punch[k] * sqrt(p / 10 GeV)`` (correlated: a shower
      that reaches M5 also hits M2-M4); (c) random hits in the FOI, Poisson with mean
      ``random[k] * n_tracks / 100 * (1 + (p_foi/p)^2)`` (the FOI shrinks as multiple scattering
      falls with p). The total falls with p below ~20 GeV/c, as in [MUON, Fig. 8].
    * D^2 = mean over stations with hits of (dx^2 + dy^2)/2 in units of the expected
      multiple-scattering error; muon hits are Gaussian (kinked decays have an extra offset),
      shower hits are broader, random hits uniform in the FOI (half-width ``foi`` sigmas).
      MuonMuLL = ln P_mu(D^2' > D^2) with D^2_mu ~ Gamma(n, 1/n) (n stations with hits);
      MuonBkgLL = ln P_bkg(D^2' < D^2) with the random-hit D^2 approximated by a Gamma of the same
      mean and variance, both clipped at ln(1e-5) — in the spirit of [MUON, Sect. 4].
    * Acceptance: ``eta_min < eta < eta_max`` (M2 covers about 20-300 mrad).
    """

    station_p: tuple[float, float, float, float] = (2800.0, 3300.0, 4600.0, 5800.0)
    straggling: float = 0.07
    hit_efficiency: float = 0.995
    p_min: float = 3000.0
    eta_min: float = 1.9
    eta_max: float = 4.7
    decay_length: float = 6000.0
    branching_to_mu: Mapping[int, float] = dataclasses.field(default_factory=lambda: {211: 0.9999, 321: 0.67})
    kink_accept: Mapping[int, float] = dataclasses.field(default_factory=lambda: {211: 0.8, 321: 0.3})
    kink_offset: Mapping[int, float] = dataclasses.field(default_factory=lambda: {211: 1.0, 321: 2.0})
    punch: tuple[float, float, float, float] = (0.012, 0.006, 0.003, 0.002)
    random: tuple[float, float, float, float] = (0.05, 0.035, 0.03, 0.03)
    p_foi: float = 6000.0
    foi: float = 3.5
    shower_width: float = 2.0

    def in_acceptance(self, eta) -> np.ndarray:
        eta = np.asarray(eta, dtype=float)
        return (eta > self.eta_min) & (eta < self.eta_max)


def muon_isMuon_efficiency(p, muon: MuonSystem | None = None) -> np.ndarray:
    """Expected IsMuon efficiency of a muon of momentum ``p`` [MeV/c] in this model (no random hits).

    The deepest required station (M3 below 6 GeV/c, M4 in 6-10 GeV/c, M5 above) must be reached,
    P = Phi((p - p_station) / (straggling p)), and every required station must fire
    (hit_efficiency^n_required; the M4-or-M5 alternative is neglected).
    """
    from scipy.special import ndtr

    muon = muon or MuonSystem()
    p = np.asarray(p, dtype=float)
    st = np.asarray(muon.station_p)
    deepest = np.where(p < 6000.0, st[1], np.where(p < 10000.0, st[2], st[3]))
    n_req = np.where(p < 6000.0, 2, np.where(p < 10000.0, 3, 4))
    eff = ndtr((p - deepest) / (muon.straggling * p)) * muon.hit_efficiency**n_req
    return np.where(p > muon.p_min, eff, 0.0)


def _bkg_gamma(foi: float, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shape and scale of the Gamma approximating the random-hit D^2 over n stations.

    r ~ U(-a, a): E[r^2] = a^2/3, Var[r^2] = 4 a^4 / 45; D^2 = mean over n stations of
    (rx^2 + ry^2)/2 has mean a^2/3 and variance 2 a^4 / (45 n): shape 2.5 n, scale a^2/(7.5 n).
    """
    n = np.maximum(n, 1)
    return 2.5 * n, foi**2 / (7.5 * n)


def muon_response(p, eta, species, n_tracks, rng: SeedLike = None, muon: MuonSystem | None = None) -> pd.DataFrame:
    """Muon-system response: ``is_muon`` (0/1), ``muon_mu_ll``, ``muon_bkg_ll`` (NaN unless
    IsMuon) and ``in_muon_acceptance``. See :class:`MuonSystem` for the model and its sources."""
    from scipy.special import gammainc, gammaincc

    muon = muon or MuonSystem()
    rng = get_rng(rng)
    p, eta, n_tracks = (np.asarray(a, dtype=float) for a in (p, eta, n_tracks))
    code = species_codes(species)
    pdg = np.array(SPECIES)[code]
    n = len(p)
    acc = muon.in_acceptance(eta)
    st_p = np.array(muon.station_p)

    # (a) true muons and decays in flight: a muon of momentum p_mu
    is_mu = pdg == 13
    p_mu = np.where(is_mu, p, 0.0)
    offset = np.zeros(n)
    for h in (211, 321):
        sel = pdg == h
        m = MASSES[h]
        bgct = p / m * CTAU[h]
        prob = (1.0 - np.exp(-muon.decay_length / bgct)) * muon.branching_to_mu[h] * muon.kink_accept[h]
        dif = sel & (rng.random(n) < prob)
        r = (MASSES[13] / m) ** 2
        x = r + (1.0 - r) * rng.random(n)
        p_mu = np.where(dif, p * x, p_mu)
        offset = np.where(dif, muon.kink_offset[h], offset)
    range_p = p_mu * (1.0 + muon.straggling * rng.standard_normal(n))
    mu_hit = (range_p[:, None] > st_p[None, :]) & (rng.random((n, 4)) < muon.hit_efficiency)

    # (b) punch-through of hadron showers (correlated depth), (c) random hits in the FOI
    hadron = (pdg == 211) | (pdg == 321) | (pdg == 2212)
    depth_u = rng.random(n)
    q = np.array(muon.punch)[None, :] * np.sqrt(p / 1e4)[:, None]
    punch_hit = hadron[:, None] & (depth_u[:, None] < q)
    mu_rand = np.array(muon.random)[None, :] * (n_tracks / 100.0)[:, None] * (1.0 + (muon.p_foi / p) ** 2)[:, None]
    rand_hit = rng.random((n, 4)) < -np.expm1(-mu_rand)
    hit = (mu_hit | punch_hit | rand_hit) & acc[:, None]

    m2, m3, m4, m5 = hit.T
    is_muon = np.where(
        p < 6000.0, m2 & m3, np.where(p < 10000.0, m2 & m3 & (m4 | m5), m2 & m3 & m4 & m5)
    ) & (p > muon.p_min) & acc

    # D^2 from the hit residuals (normalised to the multiple-scattering error)
    zx, zy = rng.standard_normal((2, n, 4))
    res_mu = (zx + offset[:, None] * rng.standard_normal((n, 4))) ** 2 + (zy + offset[:, None] * rng.standard_normal((n, 4))) ** 2
    res_sh = muon.shower_width**2 * (zx**2 + zy**2)
    ux, uy = muon.foi * (2.0 * rng.random((2, n, 4)) - 1.0)
    res_rand = ux**2 + uy**2
    res = np.where(mu_hit, res_mu, np.where(punch_hit, res_sh, res_rand)) / 2.0
    n_hit = hit.sum(axis=1)
    d2 = np.where(hit, res, 0.0).sum(axis=1) / np.maximum(n_hit, 1)
    k = np.maximum(n_hit, 1).astype(float)
    mu_ll = np.log(np.maximum(gammaincc(k, k * d2), 1e-5))
    shape, scale = _bkg_gamma(muon.foi, k)
    bkg_ll = np.log(np.maximum(gammainc(shape, d2 / scale), 1e-5))
    mu_ll = np.where(is_muon, np.maximum(mu_ll, _LL_FLOOR), np.nan)
    bkg_ll = np.where(is_muon, np.maximum(bkg_ll, _LL_FLOOR), np.nan)
    return pd.DataFrame({
        "is_muon": is_muon.astype(np.float32),
        "muon_mu_ll": mu_ll.astype(np.float32),
        "muon_bkg_ll": bkg_ll.astype(np.float32),
        "in_muon_acceptance": acc,
    })


# --------------------------------------------------------------------------------------------
# Calorimeter
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Calorimeter:
    """Electromagnetic calorimeter E/p for electron identification [PERF, Sect. 5].

    * Electrons: E/p = 1 with sigma_E/E = a/sqrt(E/GeV) (+) b (a = 10%, b = 1%); with probability
      ``brem_tail`` the cluster misses part of the energy (bremsstrahlung photon in another
      cluster, leakage): E/p multiplied by U(``tail_min``, 1).
    * Hadrons: with probability 1 - exp(-``lambda_ecal``) (ECAL depth ~1.1 interaction lengths) a
      shower starts: E/p ~ Beta(``hadron_a``, ``hadron_b``) (mean ~0.3); otherwise a minimum
      ionising deposit of ``e_mip`` MeV (E/p = e_mip/p), as for muons.
    * CaloDLLe = ln f_e(E/p) - ln f_h(E/p) with the pdfs of this model (the reconstruction knows
      them), clipped to [-``dll_clip``, ``dll_clip``].
    """

    a: float = 0.10
    b: float = 0.01
    brem_tail: float = 0.25
    tail_min: float = 0.6
    lambda_ecal: float = 1.1
    hadron_a: float = 2.0
    hadron_b: float = 4.5
    e_mip: float = 300.0
    eta_min: float = 1.9
    eta_max: float = 4.5
    dll_clip: float = 15.0

    def in_acceptance(self, eta) -> np.ndarray:
        eta = np.asarray(eta, dtype=float)
        return (eta > self.eta_min) & (eta < self.eta_max)

    def resolution(self, e) -> np.ndarray:
        """Relative energy resolution sigma_E/E at energy ``e`` [MeV]."""
        return np.hypot(self.a / np.sqrt(np.maximum(np.asarray(e, dtype=float), 1.0) / 1000.0), self.b)


def calo_response(p, eta, species, rng: SeedLike = None, calo: Calorimeter | None = None) -> pd.DataFrame:
    """Calorimeter response: ``calo_e_over_p``, ``calo_dll_e`` (NaN outside the acceptance) and
    ``in_calo_acceptance``. See :class:`Calorimeter`."""
    from scipy.special import betaln

    calo = calo or Calorimeter()
    rng = get_rng(rng)
    p, eta = (np.asarray(a, dtype=float) for a in (p, eta))
    pdg = np.array(SPECIES)[species_codes(species)]
    n = len(p)
    acc = calo.in_acceptance(eta)
    sig = calo.resolution(p)
    tail = rng.random(n) < calo.brem_tail
    frac = np.where(tail, calo.tail_min + (1.0 - calo.tail_min) * rng.random(n), 1.0)
    ep_e = frac * (1.0 + sig * rng.standard_normal(n))
    shower = rng.random(n) < -np.expm1(-calo.lambda_ecal)
    ep_sh = rng.beta(calo.hadron_a, calo.hadron_b, n)
    mip = calo.e_mip / p
    ep_mip = mip * (1.0 + 0.3 * rng.standard_normal(n))
    is_e = pdg == 11
    is_mu = pdg == 13
    ep = np.where(is_e, ep_e, np.where(is_mu | ~shower, ep_mip, ep_sh))

    # the reconstruction's pdfs
    def gauss(x, mu, s):
        return np.exp(-0.5 * ((x - mu) / s) ** 2) / (np.sqrt(2 * np.pi) * s)

    x = ep
    f_tail = np.where((x > calo.tail_min) & (x < 1.0), 1.0 / (1.0 - calo.tail_min), 0.0)
    f_e = (1 - calo.brem_tail) * gauss(x, 1.0, sig) + calo.brem_tail * np.maximum(f_tail, gauss(x, 1.0, sig))
    xc = np.clip(x, 1e-6, 1 - 1e-6)
    beta_pdf = np.exp((calo.hadron_a - 1) * np.log(xc) + (calo.hadron_b - 1) * np.log1p(-xc) - betaln(calo.hadron_a, calo.hadron_b))
    beta_pdf = np.where((x > 0) & (x < 1), beta_pdf, 0.0)
    p_sh = -np.expm1(-calo.lambda_ecal)
    f_h = p_sh * beta_pdf + (1 - p_sh) * gauss(x, mip, 0.3 * mip + 1e-3)
    dll = np.clip(np.log(f_e + 1e-6) - np.log(f_h + 1e-6), -calo.dll_clip, calo.dll_clip)
    return pd.DataFrame({
        "calo_e_over_p": np.where(acc, ep, np.nan).astype(np.float32),
        "calo_dll_e": np.where(acc, dll, np.nan).astype(np.float32),
        "in_calo_acceptance": acc,
    })


# --------------------------------------------------------------------------------------------
# The whole response
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ReferencePID:
    """The reference detector's PID system: two RICH gas radiators, muon system, calorimeter.

    Call it with arrays of track properties to get the PID variables (see :func:`reference_pid`).
    ``config()`` gives the parameters as a JSON-able dict (for provenance).
    """

    radiators: tuple[Radiator, ...] = (RICH1, RICH2)
    muon: MuonSystem = dataclasses.field(default_factory=MuonSystem)
    calo: Calorimeter = dataclasses.field(default_factory=Calorimeter)

    def config(self) -> dict:
        def conv(obj):
            d = dataclasses.asdict(obj)
            return {k: (dict(v) if isinstance(v, Mapping) else (list(v) if isinstance(v, tuple) else v))
                    for k, v in d.items()}

        return {"radiators": [conv(r) for r in self.radiators], "muon": conv(self.muon), "calo": conv(self.calo)}

    def __call__(self, p, eta, species, charge, n_tracks, rng: SeedLike = None,
                 with_probnn: bool = True) -> pd.DataFrame:
        rng = get_rng(rng)
        p, eta, n_tracks, charge = (np.asarray(a, dtype=float) for a in (p, eta, n_tracks, charge))
        n = len(p)
        for name, a in (("eta", eta), ("n_tracks", n_tracks), ("charge", charge)):
            if a.shape != (n,):
                raise DataError(f"reference PID: {name} has shape {a.shape}, expected ({n},) like p")
        for name, a in (("p", p), ("eta", eta), ("n_tracks", n_tracks)):
            bad = ~np.isfinite(a)
            if bad.any():
                raise DataError(f"reference PID: {name} has {int(bad.sum())} non-finite values")
        if (p <= 0).any():
            raise DataError(f"reference PID: p must be positive [MeV/c]; {int((p <= 0).sum())} values are not")
        code = species_codes(species)
        if code.shape != (n,):
            raise DataError(f"reference PID: species has shape {code.shape}, expected ({n},) like p")
        pdg = np.array(SPECIES)[code]
        rich = rich_response(p, eta, pdg, n_tracks, rng, radiators=self.radiators)
        mu = muon_response(p, eta, pdg, n_tracks, rng, muon=self.muon)
        cal = calo_response(p, eta, pdg, rng, calo=self.calo)
        r = {c: rich[c].to_numpy(dtype=float) for c in ("rich_dll_e", "rich_dll_mu", "rich_dll_k", "rich_dll_p")}
        r0 = {c: np.nan_to_num(v, nan=0.0) for c, v in r.items()}
        is_mu = mu["is_muon"].to_numpy() > 0.5
        muon_dll = np.where(is_mu, mu["muon_mu_ll"].to_numpy(dtype=float) - mu["muon_bkg_ll"].to_numpy(dtype=float), 0.0)
        calo_dll = np.nan_to_num(cal["calo_dll_e"].to_numpy(dtype=float), nan=0.0)
        out = pd.DataFrame({
            **{c: rich[c] for c in r},
            "is_muon": mu["is_muon"],
            "muon_mu_ll": mu["muon_mu_ll"],
            "muon_bkg_ll": mu["muon_bkg_ll"],
            "pid_e": (r0["rich_dll_e"] + calo_dll).astype(np.float32),
            "pid_mu": (r0["rich_dll_mu"] + muon_dll).astype(np.float32),
            "pid_k": r0["rich_dll_k"].astype(np.float32),
            "pid_p": r0["rich_dll_p"].astype(np.float32),
            "has_rich": rich["has_rich"],
            "in_muon_acceptance": mu["in_muon_acceptance"],
            "in_calo_acceptance": cal["in_calo_acceptance"],
            "calo_e_over_p": cal["calo_e_over_p"],
            "calo_dll_e": cal["calo_dll_e"],
        })
        out = out[list(PID_COLUMNS) + list(FLAG_COLUMNS)]
        if with_probnn:  # a fixed network of the response: no random numbers drawn
            from mambah.reference.probnn import load_probnn

            nn = load_probnn()(p, eta, n_tracks, out)
            out = pd.concat([out, nn.set_index(out.index)], axis=1)
        return out


def reference_pid(p, eta, species, charge, n_tracks, rng: SeedLike = None,
                  detector: ReferencePID | None = None, with_probnn: bool = True) -> pd.DataFrame:
    """PID variables of tracks from the reference detector.

    Args:
        p: momentum [MeV/c]. eta: pseudorapidity. species: absolute (or signed) PDG ids of the
            true species, 11/13/211/321/2212, or names e/mu/pi/K/p. charge: +-1 (the response is
            charge-symmetric; accepted so that every PID producer has the same signature).
        n_tracks: number of tracks in the track's event (occupancy).
        rng: seed or numpy Generator. detector: parameters (default :class:`ReferencePID`).

    Returns:
        DataFrame, one row per track, with the columns of :data:`~mambah.store.schema.PID_COLUMNS`
        (``rich_dll_e``, ``rich_dll_mu``, ``rich_dll_k``, ``rich_dll_p``, ``is_muon``,
        ``muon_mu_ll``, ``muon_bkg_ll``, ``pid_e``, ``pid_mu``, ``pid_k``, ``pid_p``) followed by
        :data:`FLAG_COLUMNS` (``has_rich``, ``in_muon_acceptance``, ``in_calo_acceptance``,
        ``calo_e_over_p``, ``calo_dll_e``), then with ``with_probnn`` (default) the reference ProbNN
        outputs ``probnn_e``, ``probnn_mu``, ``probnn_pi``, ``probnn_k``, ``probnn_p``,
        ``probnn_ghost`` (:mod:`mambah.reference.probnn`: a fixed network of the other columns, P, ETA
        and nTracks; it draws no random number, so the other columns do not depend on it). NaN
        marks information that does not exist (see the module docstring).
    """
    return (detector or ReferencePID())(p, eta, species, charge, n_tracks, rng, with_probnn=with_probnn)


def lhcb_sentinels(df: pd.DataFrame, value: float = -1000.0) -> pd.DataFrame:
    """Copy of ``df`` with NaN replaced by ``value`` (-1000: TupleToolPID's default for a missing
    ProtoParticle info) in the float columns, as in LHCb ntuples."""
    out = df.copy()
    for c in out.columns:
        if out[c].dtype.kind == "f":
            out[c] = out[c].fillna(value)
    return out


@dataclasses.dataclass(frozen=True)
class ReferencePIDStage:
    """Pipeline stage: fill the PID columns of ``particles`` from the reference detector.

    Reads ``particles`` (``px``, ``py``, ``pz``, ``pid``, ``charge``, ``event``) and
    ``events.n_tracks``; tracks of species e, mu, pi, K, p get the reference response, other rows
    (composites) NaN. The random numbers come from ``batch.rng(self.name)``.
    """

    name: str = "reference_pid"
    detector: ReferencePID = dataclasses.field(default_factory=ReferencePID)

    def config(self) -> dict:
        return {"detector": self.detector.config()}

    def __call__(self, batch):
        parts = batch["particles"]
        events = batch["events"]
        px, py, pz = (parts[c].to_numpy(dtype=float) for c in ("px", "py", "pz"))
        p, eta = p_eta(px, py, pz)
        apid = np.abs(parts["pid"].to_numpy())
        track = np.isin(apid, SPECIES) & (p > 0)
        ntr = events["n_tracks"].to_numpy()
        ev = parts["event"].to_numpy()
        ev_index = pd.Index(events["event"].to_numpy())
        pos = ev_index.get_indexer(ev)
        if (pos[track] < 0).any():
            raise DataError(f"batch {batch.id}: particles refer to events missing from the events table")
        resp = self.detector(p[track], eta[track], apid[track], parts["charge"].to_numpy()[track],
                             ntr[pos[track]], batch.rng(self.name))
        out = parts.copy()
        # the reference ProbNN too (where the table has its columns: the batch's column contract)
        probnn = [c for c in resp.columns if c.startswith("probnn_") and c in parts.columns]
        for c, dt in (*PID_COLUMNS.items(), *((c, "float32") for c in probnn)):
            col = np.full(len(parts), np.nan, dtype=dt)
            col[track] = resp[c].to_numpy(dtype=dt)
            out[c] = col
        batch["particles"] = out
        return batch
