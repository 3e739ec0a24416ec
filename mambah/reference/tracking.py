"""The reference detector, tracking part: acceptance, tracking efficiency, momentum resolution.

A documented, physics-motivated stand-in for the full simulation of an LHCb-like forward
tracker. It gives every training sample an exact, known truth so that the trained efficiency
and resolution networks have closure tests. It is **not** LHCb truth: the numbers below are
round values chosen to resemble the published performance, with their sources.

Sources:

* [LHCb-DP] LHCb collaboration, "LHCb detector performance", Int. J. Mod. Phys. A 30 (2015)
  1530022, arXiv:1412.6352: acceptance 2 < eta < 5; long-track efficiency above 96 % for
  p > 5 GeV/c; relative momentum resolution dp/p from 0.5 % at low momentum to 1.0 % at
  200 GeV/c; VELO modules spread over -300 mm < z < 750 mm around the interaction point.
* [LHCb-TRK] LHCb collaboration, "Measurement of the track reconstruction efficiency at LHCb",
  JINST 10 (2015) P02007, arXiv:1408.1251: efficiency plateau ~ 96-98 %, lower for hadrons
  than for muons because of hadronic interactions in the detector material (a few per cent).
* [PDG-MS] Particle Data Group, Review of Particle Physics, "Passage of particles through
  matter", Highland formula for the multiple-scattering angle, Eq. 34.16 of the 2024 edition:
  ``theta0 = 13.6 MeV / (beta c p) * z * sqrt(x/X0) * (1 + 0.038 ln(x z^2 / (X0 beta^2)))``.

Formulas (p in GeV/c, lengths in mm; sigma(t) = 1 / (1 + exp(-t)) is the logistic function)::

    acceptance(p, eta) = sigma((eta - eta_min) / eta_edge) * sigma((eta_max - eta) / eta_edge)
                         * sigma((p - p_min) / p_edge)
    efficiency = acceptance * plateau[species] * (1 - low_p_loss * exp(-(p - p_min) / low_p_scale))
                 * sigma((z_velo - z) / z_edge) * sigma((rho_velo - rho) / rho_edge)

with rho = sqrt(x^2 + y^2) the transverse distance of the track's origin from the beam line and
z its longitudinal position: tracks born after most of the VELO (K0S and Lambda daughters
decaying far downstream) cannot be reconstructed as long tracks.

Track types (:meth:`TrackingDetector.type_probabilities`, the truth of the 4-class efficiency: not
reconstructed / long / upstream / downstream). With ``v = sigma((z_velo - z) / z_edge) *
sigma((rho_velo - rho) / rho_edge)`` (a VELO segment is possible), ``s = sigma((p - p_min) /
p_edge)`` (the track reaches the T stations through the magnet) and ``A_eta`` the two eta
factors above::

    P(long)       = efficiency (above) = A_eta * s * plateau * low * v
    P(upstream)   = A_eta * (1 - s) * sigma((p - up_p_min) / up_p_edge) * plateau * up_scale * v
    P(downstream) = A_eta * s * low * plateau * down_scale * (1 - v) * sigma((z_ut - z) / ut_edge)
    P(none)       = 1 - the three

Upstream tracks (VELO + UT) are the VELO tracks bent out by the magnet before the T stations
(below p_min, above ~1 GeV/c where they still reach the UT); downstream tracks (UT + T) are those
born after the VELO and before the UT (z_ut = 2.3 m [LHCb-DP]): long-lived K0S and Lambda
daughters. ``up_scale`` (0.90) and ``down_scale`` (0.85) are reference-detector choices of the
order of LHCb's (lower than long tracks': fewer hits, no VELO seed for downstream tracks). The
three never sum above 1 (``v`` and ``1 - v`` split the origins, ``s`` and ``1 - s`` the momenta).
The explicit geometric acceptance (:mod:`mambah.reconstruction.acceptance`) is applied by the
Efficiency stage before any of this is evaluated.

Relative momentum resolution, a two-Gaussian mixture (core + wide tail)::

    sigma_p/p = sqrt((a_ms / beta)^2 + (b_hit * p)^2)        # multiple scattering (+) hit resolution
    (p_reco - p_true) / p_true ~ (1 - f_tail) N(0, sigma_p/p) + f_tail N(0, k_tail * sigma_p/p)

``a_ms`` and ``b_hit`` are solved from sigma_p/p = 0.5 % at 20 GeV and 1.0 % at 200 GeV
(beta = 1) [LHCb-DP]. The multiple-scattering term grows as 1/beta at low momentum for heavy
particles. The slopes tx = px/pz and ty = py/pz are smeared independently with::

    sigma_slope = sqrt(theta0(p, beta)^2 + slope_meas^2)

where theta0 is the Highland angle [PDG-MS] for the material ``x_over_x0`` in front of the first
measurement (RF foil and first VELO sensors).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np

from mambah.errors import ConfigurationError
from mambah.physics import (
    SPECIES,
    TRACKABLE_PIDS,
    p_eta,
    pdg_charge,
    rebuild_momentum,
    species_index,
    species_mass,
)
from mambah.random import SeedLike, get_rng

__all__ = [
    "TrackingDetector",
    "TrackGun",
    "tracking_sample",
]

log = logging.getLogger(__name__)

# The species, their masses and charges, and the kinematics come from :mod:`mambah.physics` (the
# one place that reads ``particle``).


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * t))


def _solve_resolution_terms(p1: float, s1: float, p2: float, s2: float) -> tuple[float, float]:
    """(a, b) with sqrt(a^2 + (b p)^2) = s1 at p1 and s2 at p2 (p in GeV)."""
    b2 = (s2 * s2 - s1 * s1) / (p2 * p2 - p1 * p1)
    a2 = s1 * s1 - b2 * p1 * p1
    return math.sqrt(a2), math.sqrt(b2)


_A_MS, _B_HIT = _solve_resolution_terms(20.0, 0.005, 200.0, 0.010)


@dataclasses.dataclass(frozen=True)
class TrackingDetector:
    """Parameters of the reference tracker (see the module docstring for formulas and sources).

    Units: momenta in GeV/c here (the public methods take MeV, the mambah unit), lengths in mm.

    Attributes:
        eta_min, eta_max: pseudorapidity acceptance (2 < eta < 5 [LHCb-DP]).
        eta_edge: width of the logistic edges of the eta acceptance.
        p_min: momentum below which tracks are bent out of the tracking stations, GeV/c.
        p_edge: width of that threshold, GeV/c.
        plateau: efficiency plateau per species (e, mu, pi, K, p): 0.97 for muons [LHCb-TRK];
            hadrons lose 1.5-2.5 % to hadronic interactions [LHCb-TRK]; electrons 7 % to
            bremsstrahlung (a reference-detector choice).
        low_p_loss, low_p_scale: extra loss at low momentum, ``low_p_loss * exp(-(p - p_min) /
            low_p_scale)``; gives > 96 % of the plateau at p = 5 GeV/c [LHCb-DP].
        z_velo, z_edge: origins beyond ``z_velo`` (mm) leave too few VELO hits for a long track
            (the VELO ends at z ~ 750 mm [LHCb-DP]; three stations are needed).
        rho_velo, rho_edge: origins farther than ``rho_velo`` (mm) from the beam line miss the
            VELO sensors' sensitive area.
        res_a_ms, res_b_hit: the two terms of sigma_p/p (dimensionless, and per GeV/c).
        tail_fraction, tail_scale: fraction of tracks in the wide resolution Gaussian and its
            width relative to the core (non-Gaussian tails: wrong hits, hard scatters).
        x_over_x0: material in front of the first measurement, in radiation lengths.
        slope_meas: slope measurement resolution for infinite momentum, rad.
        up_p_min, up_p_edge: momentum (GeV/c) above which a VELO track bent out by the magnet
            still reaches the UT (an upstream track), and the width of that threshold.
        up_scale, down_scale: upstream and downstream efficiency plateaus relative to a long track's.
        z_ut, ut_edge: origins beyond ``z_ut`` (mm, the UT's front) leave no UT hits: no
            downstream track.
    """

    eta_min: float = 2.0
    eta_max: float = 5.0
    eta_edge: float = 0.1
    p_min: float = 2.0
    p_edge: float = 0.4
    plateau: tuple[float, float, float, float, float] = (0.90, 0.97, 0.955, 0.95, 0.945)
    low_p_loss: float = 0.25
    low_p_scale: float = 1.0
    z_velo: float = 500.0
    z_edge: float = 60.0
    rho_velo: float = 40.0
    rho_edge: float = 6.0
    res_a_ms: float = _A_MS
    res_b_hit: float = _B_HIT
    tail_fraction: float = 0.05
    tail_scale: float = 3.0
    x_over_x0: float = 0.02
    slope_meas: float = 2.0e-5
    up_p_min: float = 1.0
    up_p_edge: float = 0.08
    up_scale: float = 0.90
    down_scale: float = 0.85
    z_ut: float = 2300.0
    ut_edge: float = 30.0

    def __post_init__(self):
        if not self.eta_min < self.eta_max:
            raise ConfigurationError(f"eta_min ({self.eta_min}) must be below eta_max ({self.eta_max})")
        if len(self.plateau) != len(SPECIES) or not all(0 < v <= 1 for v in self.plateau):
            raise ConfigurationError(f"plateau needs {len(SPECIES)} values in (0, 1] for {SPECIES}, got {self.plateau!r}")
        if not 0 <= self.tail_fraction < 1:
            raise ConfigurationError(f"tail_fraction must be in [0, 1), got {self.tail_fraction}")

    def config(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # --- acceptance and efficiency -------------------------------------------------------------
    def acceptance(self, px, py, pz) -> np.ndarray:
        """Probability that a track with momentum (px, py, pz) [MeV] is inside the acceptance."""
        p, eta = p_eta(px, py, pz)
        pg = p * 1e-3
        return (
            _sigmoid((eta - self.eta_min) / self.eta_edge)
            * _sigmoid((self.eta_max - eta) / self.eta_edge)
            * _sigmoid((pg - self.p_min) / self.p_edge)
        )

    def efficiency(self, px, py, pz, x, y, z, pid) -> np.ndarray:
        """Probability that a charged particle is reconstructed as a long track.

        Args:
            px, py, pz: true momentum, MeV/c.
            x, y, z: origin (production vertex), mm.
            pid: PDG id; species other than e, mu, pi, K, p get probability 0.
        """
        p, eta = p_eta(px, py, pz)
        pg = p * 1e-3
        sp = species_index(pid)
        plateau = np.asarray(self.plateau + (0.0,))[sp]  # index -1 -> 0
        rho = np.hypot(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
        z = np.asarray(z, dtype=np.float64)
        low = 1.0 - self.low_p_loss * np.exp(-np.clip(pg - self.p_min, 0.0, None) / self.low_p_scale)
        return (
            _sigmoid((eta - self.eta_min) / self.eta_edge)
            * _sigmoid((self.eta_max - eta) / self.eta_edge)
            * _sigmoid((pg - self.p_min) / self.p_edge)
            * plateau
            * low
            * _sigmoid((self.z_velo - z) / self.z_edge)
            * _sigmoid((self.rho_velo - rho) / self.rho_edge)
        )

    def type_probabilities(self, px, py, pz, x, y, z, pid) -> np.ndarray:
        """(n, 4) probabilities of (not reconstructed, long, upstream, downstream); see the module
        docstring. Species other than e, mu, pi, K, p are never reconstructed."""
        p, eta = p_eta(px, py, pz)
        pg = p * 1e-3
        sp = species_index(pid)
        plateau = np.asarray(self.plateau + (0.0,))[sp]
        rho = np.hypot(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
        z = np.asarray(z, dtype=np.float64)
        a_eta = _sigmoid((eta - self.eta_min) / self.eta_edge) * _sigmoid((self.eta_max - eta) / self.eta_edge)
        s = _sigmoid((pg - self.p_min) / self.p_edge)
        low = 1.0 - self.low_p_loss * np.exp(-np.clip(pg - self.p_min, 0.0, None) / self.low_p_scale)
        v = _sigmoid((self.z_velo - z) / self.z_edge) * _sigmoid((self.rho_velo - rho) / self.rho_edge)
        out = np.empty(p.shape + (4,))
        out[..., 1] = a_eta * s * plateau * low * v
        out[..., 2] = a_eta * (1.0 - s) * _sigmoid((pg - self.up_p_min) / self.up_p_edge) * plateau * self.up_scale * v
        out[..., 3] = (a_eta * s * low * plateau * self.down_scale * (1.0 - v)
                       * _sigmoid((self.z_ut - z) / self.ut_edge))
        out[..., 0] = 1.0 - out[..., 1:].sum(axis=-1)
        return out

    # --- resolution ----------------------------------------------------------------------------
    def _beta(self, p_gev: np.ndarray, pid) -> np.ndarray:
        m = np.asarray(_lookup_fast_mass(pid)) * 1e-3
        return p_gev / np.sqrt(p_gev * p_gev + m * m)

    def sigma_p(self, p, pid=211) -> np.ndarray:
        """Core relative momentum resolution sigma_p/p at momentum ``p`` [MeV/c]."""
        pg = np.asarray(p, dtype=np.float64) * 1e-3
        beta = self._beta(pg, np.broadcast_to(pid, pg.shape))
        return np.sqrt((self.res_a_ms / beta) ** 2 + (self.res_b_hit * pg) ** 2)

    def sigma_slope(self, p, pid=211) -> np.ndarray:
        """Slope resolution (rad) at momentum ``p`` [MeV/c]: Highland angle (+) measurement term."""
        p = np.asarray(p, dtype=np.float64)
        beta = self._beta(p * 1e-3, np.broadcast_to(pid, p.shape))
        x = self.x_over_x0
        theta0 = 13.6 / (beta * p) * math.sqrt(x) * (1.0 + 0.038 * np.log(x / beta**2))
        return np.sqrt(theta0 * theta0 + self.slope_meas**2)

    def smear(self, px, py, pz, pid, seed: SeedLike = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Reconstructed momentum (MeV/c) drawn from the truth resolution model.

        The magnitude gets the two-Gaussian relative smearing, the slopes tx = px/pz and
        ty = py/pz Gaussian smearing with :meth:`sigma_slope`; the reconstructed components are
        rebuilt from (p, tx, ty), with pz along the sign of the true pz.
        """
        rng = get_rng(seed)
        px = np.asarray(px, dtype=np.float64)
        py = np.asarray(py, dtype=np.float64)
        pz = np.asarray(pz, dtype=np.float64)
        n = px.shape
        p = np.sqrt(px * px + py * py + pz * pz)
        s = self.sigma_p(p, pid)
        wide = rng.random(n) < self.tail_fraction
        r = rng.standard_normal(n) * s * np.where(wide, self.tail_scale, 1.0)
        st = self.sigma_slope(p, pid)
        dtx = rng.standard_normal(n) * st
        dty = rng.standard_normal(n) * st
        return rebuild_momentum(px, py, pz, r, dtx, dty)


def _lookup_fast_mass(pid) -> np.ndarray:
    """Mass (MeV) of trackable species (sign ignored); pion mass for anything else."""
    sp = species_index(pid)
    masses = np.array([species_mass(s) for s in SPECIES] + [species_mass("pi")])
    return masses[sp]


@dataclasses.dataclass(frozen=True)
class TrackGun:
    """Single tracks with LHCb-like spread for training and closure samples.

    The gun covers (a little beyond) the detector's domain so that networks learn the edges:

    * species: uniform over e, mu, pi, K, p (balanced classes; charge sign random);
    * pseudorapidity uniform in [eta_lo, eta_hi], azimuth uniform;
    * momentum log-uniform in [p_lo, p_hi] MeV/c (b- and c-hadron daughters at LHCb span
      2-200 GeV/c, a log-flat spectrum puts equal statistics per decade; the range starts well
      below the tracking threshold so that networks learn the efficiency's fall to zero);
    * origin: a fraction ``prompt`` at the primary vertex (luminous region: Gaussian,
      sigma_xy = 0.04 mm, sigma_z = 45 mm, LHCb Run 3 conditions), the rest displaced along the
      track direction by a flight distance log-uniform in [1, 3000] mm, covering b/c-hadron
      decays and K0S / Lambda decays up to and beyond the end of the VELO;
    * a fraction ``box`` (default 0) of the origins instead uniform in z over ``box_z`` (mm) and in
      radius over [0, ``box_rho``) (uniform azimuth): so that a sample covers a whole origin domain
      (the geometric acceptance's, :mod:`mambah.reconstruction.acceptance`) up to its edges;
    * ``kink`` (rad, default 0): the displaced origins lie along the flight of a parent instead of
      along the track itself, the track's direction tilted by an angle log-uniform in [1 mrad,
      ``kink``] at a random azimuth (a decay's opening angle: a K0S or Lambda daughter's line does
      not point back to the PV, so its closest approach to the beam spreads over metres).
    """

    eta_lo: float = 1.6
    eta_hi: float = 5.4
    p_lo: float = 500.0
    p_hi: float = 400_000.0
    prompt: float = 0.5
    sigma_xy: float = 0.04
    sigma_z: float = 45.0
    flight_lo: float = 1.0
    flight_hi: float = 3000.0
    box: float = 0.0
    box_z: tuple[float, float] = (-300.0, 2500.0)
    box_rho: float = 1100.0
    kink: float = 0.0

    def __call__(self, n: int, seed: SeedLike = None) -> dict[str, np.ndarray]:
        rng = get_rng(seed)
        n = int(n)
        sp = rng.integers(0, len(SPECIES), n)
        sign = np.where(rng.random(n) < 0.5, 1, -1)
        pid = np.asarray(TRACKABLE_PIDS)[sp] * sign
        eta = rng.uniform(self.eta_lo, self.eta_hi, n)
        phi = rng.uniform(-np.pi, np.pi, n)
        p = np.exp(rng.uniform(np.log(self.p_lo), np.log(self.p_hi), n))
        theta = 2.0 * np.arctan(np.exp(-eta))
        px, py, pz = p * np.sin(theta) * np.cos(phi), p * np.sin(theta) * np.sin(phi), p * np.cos(theta)
        x = rng.normal(0.0, self.sigma_xy, n)
        y = rng.normal(0.0, self.sigma_xy, n)
        z = rng.normal(0.0, self.sigma_z, n)
        displaced = rng.random(n) >= self.prompt
        d = np.where(displaced, np.exp(rng.uniform(np.log(self.flight_lo), np.log(self.flight_hi), n)), 0.0)
        if self.kink > 0:
            ux, uy, uz = px / p, py / p, pz / p
            alpha = np.exp(rng.uniform(np.log(1e-3), np.log(self.kink), n))
            beta = rng.uniform(-np.pi, np.pi, n)
            # e1, e2: an orthonormal pair perpendicular to the direction (never along z: eta <= eta_hi)
            nrm = np.hypot(ux, uy)
            e1x, e1y = uy / nrm, -ux / nrm
            e2x, e2y, e2z = -uz * e1y, uz * e1x, ux * e1y - uy * e1x
            wx, wy, wz = np.cos(beta) * e1x + np.sin(beta) * e2x, np.cos(beta) * e1y + np.sin(beta) * e2y, np.sin(beta) * e2z
            ca, sa = np.cos(alpha), np.sin(alpha)
            x, y, z = x + d * (ca * ux + sa * wx), y + d * (ca * uy + sa * wy), z + d * (ca * uz + sa * wz)
        else:
            x, y, z = x + d * px / p, y + d * py / p, z + d * pz / p
        if self.box > 0:
            inbox = rng.random(n) < self.box
            k = int(inbox.sum())
            r = rng.uniform(0.0, self.box_rho, k)
            ph = rng.uniform(-np.pi, np.pi, k)
            x[inbox], y[inbox] = r * np.cos(ph), r * np.sin(ph)
            z[inbox] = rng.uniform(self.box_z[0], self.box_z[1], k)
        return {"pid": pid.astype(np.int32), "px": px, "py": py, "pz": pz, "x": x, "y": y, "z": z}


def tracking_sample(
    n: int,
    seed: SeedLike = None,
    detector: TrackingDetector | None = None,
    gun: TrackGun | None = None,
):
    """A truth + reco table of single tracks for training and closure tests.

    Columns: ``pid, charge, px, py, pz`` (true momentum, MeV/c), ``x, y, z`` (origin, mm),
    ``eff_true`` (the reference-detector efficiency), ``reconstructed`` (its Bernoulli draw,
    0/1), ``px_reco, py_reco, pz_reco`` (reference-detector smearing; NaN when not
    reconstructed); the 4-class truth: ``eff_long``, ``eff_upstream``, ``eff_downstream``
    (:meth:`TrackingDetector.type_probabilities`; ``eff_long`` is ``eff_true``) and
    ``track_type`` (the drawn class in LHCb's codes: 0 none, 3 long, 4 upstream, 5 downstream;
    drawn with the same uniform number as ``reconstructed``, so ``reconstructed == (track_type == 3)``).
    """
    import pandas as pd

    det = detector or TrackingDetector()
    rng = get_rng(seed)
    t = (gun or TrackGun())(n, rng)
    eff = det.efficiency(t["px"], t["py"], t["pz"], t["x"], t["y"], t["z"], t["pid"])
    u = rng.random(len(eff))
    reco = u < eff
    probs = det.type_probabilities(t["px"], t["py"], t["pz"], t["x"], t["y"], t["z"], t["pid"])
    cum = np.cumsum(probs[:, 1:], axis=1)
    ttype = np.select([reco, u < cum[:, 1], u < cum[:, 2]], [3, 4, 5], 0).astype(np.int8)
    rx, ry, rz = det.smear(t["px"], t["py"], t["pz"], t["pid"], rng)
    nan = np.float64(np.nan)
    df = pd.DataFrame(
        {
            "pid": t["pid"],
            "charge": pdg_charge(t["pid"]).astype(np.int8),
            **{k: t[k] for k in ("px", "py", "pz", "x", "y", "z")},
            "eff_true": eff,
            "reconstructed": reco.astype(np.int8),
            "px_reco": np.where(reco, rx, nan),
            "py_reco": np.where(reco, ry, nan),
            "pz_reco": np.where(reco, rz, nan),
            "eff_long": probs[:, 1],
            "eff_upstream": probs[:, 2],
            "eff_downstream": probs[:, 3],
            "track_type": ttype,
        }
    )
    return df
