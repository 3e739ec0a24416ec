"""The reference detector, tracking part: track types, states closest to the beam, their covariance.

Per reconstructed track, the state closest to the beam ``(x, y, tx, ty, q/p)`` at the plane
``z`` where the true line passes closest to the beam axis, its 5x5 covariance, a track type, a
track chi2 and ndof and a ghost probability. The measured state is the true one plus Gaussian
noise drawn from the covariance, so the closure pulls of anything computed from states (IP,
vertex positions) are exactly 1 by construction. Not LHCb truth: documented round numbers of
the published order, with their sources.

Sources:

* [VELO] LHCb VELO group, "Performance of the LHCb Vertex Locator", JINST 9 (2014) P09007,
  arXiv:1405.7808: sensors at 7 mm from the beam, strips from r = 8.2 mm; best hit resolution
  4 um; PV resolution 13 um (transverse) and 71 um (z) for 25 tracks; IP resolution below 35 um
  for pT > 1 GeV/c, parameterised for 2012 data as sigma(IPx) ~ 12 + 23/pT[GeV/c] um; the RF foil
  is the largest contribution to the material before the first measured point.
* [LHCb-DP] LHCb collaboration, "LHCb detector performance", Int. J. Mod. Phys. A 30 (2015)
  1530022, arXiv:1412.6352: track types (long: VELO + T stations; upstream: VELO + TT, bent out
  of the acceptance by the magnet below about 2 GeV/c; downstream: TT + T, used for K0S and Lambda
  decaying after the VELO), momentum resolution of upstream tracks of order 15 %; the TT (UT)
  stands at z ~ 2.3-2.7 m.
* [PDG-MS] Highland's multiple-scattering angle (PDG, "Passage of particles through matter",
  Eq. 34.16 of the 2024 edition), as in :mod:`mambah.reference.tracking`.

Track types (LHCb's ``TRACK_Type`` codes), from where the particle was produced (its origin
``(x, y, z)``) and its momentum:

* ``LONG`` (3): origin inside the VELO region, ``z < z_velo`` (500 mm, the
  :class:`~mambah.reference.tracking.TrackingDetector`'s ``z_velo``: three VELO stations needed)
  and ``rho < rho_velo`` (40 mm), with ``p >= p_min`` (2 GeV/c, its T-station threshold);
* ``UPSTREAM`` (4): origin in the VELO region, ``p < p_min``;
* ``DOWNSTREAM`` (5): origin outside the VELO region (``z >= z_velo`` or ``rho >= rho_velo``)
  but before the UT, ``z < z_ut`` (2300 mm, its front), and ``p >= p_min``: decays after the VELO
  (long-lived K0S and Lambda daughters);
* ``0``: none (origin after the UT, or a downstream-origin particle below ``p_min``).

In a production the Efficiency stage draws every track's type (the 4-class efficiency) and the
states take that type; :meth:`TrackStateModel.track_type` is the fallback where none was drawn.
The track-state network :mod:`mambah.nn.trackstate` is learned from :func:`trackstate_sample`.

Covariance of the state closest to the beam (lengths mm, momenta GeV/c inside the formulas):

* long and upstream tracks (a VELO segment): per transverse projection, a hit-resolution term
  ``sigma_hit`` = 12 um at the beam (the constant term of [VELO]) with a slope measurement term
  ``slope_meas`` (the TrackingDetector's), and multiple scattering at the first measured point
  (radius ``r_first`` = 8.2 mm [VELO]): a kink of rms ``theta0`` (Highland, effective material
  ``x_over_x0`` before the first measurement) seen from the beam over the distance
  ``D = r_first / tan(theta) = r_first pz / pT``. Extrapolating the measured segment back to the
  beam, the kink ``delta`` moves the slope by ``delta`` and the position by ``-D delta``::

      var(x)    = sigma_hit^2 + D^2 theta0^2        cov(x, tx) = -D theta0^2
      var(tx)   = slope_meas^2 + theta0^2           (the same for y, ty; x and y independent)

  so sigma(IPx) = sigma_hit (+) 13.6 MeV sqrt(x/X0) (1 + 0.038 ln(x/X0/beta^2)) r_first / (beta pT),
  added in quadrature. ``x_over_x0`` is solved so that this term is 32.9 um GeV/c at beta = 1,
  which gives 35 um at pT = 1 GeV/c as the linear [VELO] parameterisation does, and 12 um at
  high pT (within 15 % of 12 + 23/pT between 1 and 20 GeV/c). The solution, x/X0 ~ 0.10, is the
  effective material of the RF foil at the grazing incidence of forward tracks and of the first
  sensor.
* ``q/p``: ``sigma(q/p) = |q/p| sigma_p/p`` with the TrackingDetector's core momentum resolution
  (its wide tail is not drawn here: the states are Gaussian by construction), times
  ``upstream_p_scale`` (15 / 0.5 = 30: the 15 % of [LHCb-DP] against a long track's 0.5 %) for
  upstream tracks and ``downstream_p_scale`` (1.2, a reference-detector choice: no VELO point in
  the momentum fit) for downstream tracks. ``q/p`` is uncorrelated with the other parameters.
* downstream tracks (no VELO hits): a segment measured at the UT (``z_ut``) with position
  resolution ``ut_sigma`` = 50 um and slope resolution ``sqrt(down_slope_meas^2 +
  theta0_ut^2)`` (``down_slope_meas`` = 0.3 mrad; ``theta0_ut`` from ``ut_x_over_x0`` = 0.05),
  extrapolated back over ``L = z_ut - z``: ``var(x) = ut_sigma^2 + L^2 var(tx)``, ``cov(x, tx) =
  -L var(tx)``: ~0.6 mm at the beam for L ~ 2 m (reference-detector choices of the order of the
  mm-scale vertex resolution of downstream K0S at LHCb).

Track quality (reference-detector choices, simple documented distributions):

* ``ndof``: 25 (long), 12 (upstream), 16 (downstream); ``chi2 = s * X`` with ``X ~ chi2(ndof)``
  and ``s = 1`` for a fraction ``1 - chi2_tail_fraction`` (0.95) of the tracks and
  ``chi2_tail_scale`` (2.5) for the rest (hard scatters, wrong hits);
* ghost probability of a true (matched) track: ``Beta(0.6, 12)`` (mean 0.048; a few per cent
  above 0.3, the usual cut).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from mambah.errors import ConfigurationError, DataError
from mambah.physics import pdg_charge, pdg_mass, state_at_beam
from mambah.random import SeedLike, get_rng
from mambah.reference.tracking import TrackingDetector

__all__ = ["TrackStateModel", "trackstate_sample", "LONG", "UPSTREAM", "DOWNSTREAM", "TRACK_TYPES"]

LONG, UPSTREAM, DOWNSTREAM = 3, 4, 5
#: LHCb's ``TRACK_Type`` codes of the types the reference detector makes
TRACK_TYPES = {"long": LONG, "upstream": UPSTREAM, "downstream": DOWNSTREAM}


def _highland(x_over_x0: float, p_gev: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Projected multiple-scattering angle (rad), Eq. 34.16 of [PDG-MS], unit charge."""
    return 0.0136 / (beta * p_gev) * math.sqrt(x_over_x0) * (1.0 + 0.038 * np.log(x_over_x0 / beta**2))


def _solve_material(term_mm_gev: float, r_first: float) -> float:
    """x/X0 with 0.0136 sqrt(x) (1 + 0.038 ln x) r_first = term (beta = 1), by bisection."""
    lo, hi = 1e-4, 1.0
    f = lambda x: 0.0136 * math.sqrt(x) * (1.0 + 0.038 * math.log(x)) * r_first - term_mm_gev  # noqa: E731
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    return math.sqrt(lo * hi)


#: 1/pT term of sigma(IPx), mm GeV/c: sqrt(35^2 - 12^2) um at pT = 1 GeV/c ([VELO], see the docstring)
_IP_MS_TERM = math.sqrt(0.035**2 - 0.012**2)
_X_OVER_X0 = _solve_material(_IP_MS_TERM, 8.2)


@dataclasses.dataclass(frozen=True)
class TrackStateModel:
    """Parameters of the reference detector's track states (see the module docstring).

    Attributes:
        sigma_hit: position resolution at the beam from the VELO hits, mm.
        r_first: radius of the first measured point, mm.
        x_over_x0: effective material before the first measured point, radiation lengths.
        z_ut: z of the UT (front), mm; downstream tracks start before it.
        ut_sigma: position resolution of a downstream segment at the UT, mm.
        down_slope_meas: slope resolution of a downstream segment (measurement), rad.
        ut_x_over_x0: material at the UT for the downstream slopes' multiple scattering.
        upstream_p_scale, downstream_p_scale: momentum resolution relative to a long track's.
        ndof: track ndof of (long, upstream, downstream) tracks.
        chi2_tail_fraction, chi2_tail_scale: fraction of tracks with a chi2 scaled up, and the scale.
        ghost_beta: the (a, b) of the Beta distribution of true tracks' ghost probability.
        detector: the tracking detector (its z_velo, rho_velo, p_min, slope_meas and momentum
            resolution are used).
    """

    sigma_hit: float = 0.012
    r_first: float = 8.2
    x_over_x0: float = _X_OVER_X0
    z_ut: float = 2300.0
    ut_sigma: float = 0.05
    down_slope_meas: float = 3.0e-4
    ut_x_over_x0: float = 0.05
    upstream_p_scale: float = 30.0
    downstream_p_scale: float = 1.2
    ndof: tuple[int, int, int] = (25, 12, 16)
    chi2_tail_fraction: float = 0.05
    chi2_tail_scale: float = 2.5
    ghost_beta: tuple[float, float] = (0.6, 12.0)
    detector: TrackingDetector = dataclasses.field(default_factory=TrackingDetector)

    def __post_init__(self):
        for f in ("sigma_hit", "r_first", "x_over_x0", "ut_sigma", "down_slope_meas", "ut_x_over_x0",
                  "upstream_p_scale", "downstream_p_scale", "chi2_tail_scale"):
            if not getattr(self, f) > 0:
                raise ConfigurationError(f"TrackStateModel.{f} must be > 0, got {getattr(self, f)!r}")
        if not 0 <= self.chi2_tail_fraction < 1:
            raise ConfigurationError(f"chi2_tail_fraction must be in [0, 1), got {self.chi2_tail_fraction}")
        if self.z_ut <= self.detector.z_velo:
            raise ConfigurationError(f"z_ut ({self.z_ut} mm) must be beyond the VELO region (z_velo = "
                                     f"{self.detector.z_velo} mm)")

    def config(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # --- types and geometry ----------------------------------------------------------------------
    def track_type(self, px, py, pz, x, y, z) -> np.ndarray:
        """``TRACK_Type`` (3 long, 4 upstream, 5 downstream, 0 none) from the origin and momentum."""
        p = np.sqrt(np.asarray(px, float) ** 2 + np.asarray(py, float) ** 2 + np.asarray(pz, float) ** 2) * 1e-3
        z = np.asarray(z, dtype=np.float64)
        rho = np.hypot(np.asarray(x, float), np.asarray(y, float))
        det = self.detector
        velo = (z < det.z_velo) & (rho < det.rho_velo)
        fast = p >= det.p_min
        down = ~velo & (z < self.z_ut) & fast
        return np.where(velo, np.where(fast, LONG, UPSTREAM), np.where(down, DOWNSTREAM, 0)).astype(np.int8)

    @staticmethod
    def true_state(px, py, pz, x, y, z, charge) -> tuple[np.ndarray, np.ndarray]:
        """The true state ``(x, y, tx, ty, q/p)`` (n, 5) at the plane ``z_s`` (n,) where the line
        through the origin ``(x, y, z)`` along the momentum passes closest to the beam axis."""
        pz = np.asarray(pz, dtype=np.float64)
        if (pz <= 0).any():
            raise DataError(f"track states need forward tracks (pz > 0); {int((pz <= 0).sum())} have pz <= 0")
        return state_at_beam(px, py, pz, x, y, z, charge)

    # --- covariance ------------------------------------------------------------------------------
    def covariance(self, px, py, pz, pid, track_type, z_state) -> np.ndarray:
        """The 5x5 covariance (n, 5, 5) of the state closest to the beam (see the module docstring)."""
        px, py, pz, zs = (np.asarray(a, dtype=np.float64) for a in (px, py, pz, z_state))
        tt = np.asarray(track_type)
        if not np.isin(tt, (LONG, UPSTREAM, DOWNSTREAM)).all():
            raise DataError(f"covariance: track types must be {TRACK_TYPES}, got {sorted(set(np.unique(tt).tolist()))}")
        p = np.sqrt(px * px + py * py + pz * pz)
        pg = p * 1e-3
        ptg = np.hypot(px, py) * 1e-3
        m = pdg_mass(np.broadcast_to(pid, p.shape)) * 1e-3
        beta = pg / np.sqrt(pg * pg + m * m)
        det = self.detector
        # VELO segment (long, upstream)
        th = _highland(self.x_over_x0, pg, beta)
        D = self.r_first * (pz * 1e-3) / np.maximum(ptg, 1e-9)
        vx_velo = self.sigma_hit**2 + (D * th) ** 2
        cxt_velo = -D * th * th
        vt_velo = det.slope_meas**2 + th * th
        # downstream segment, extrapolated from the UT
        th_ut = _highland(self.ut_x_over_x0, pg, beta)
        vt_down = self.down_slope_meas**2 + th_ut * th_ut
        L = self.z_ut - zs
        vx_down = self.ut_sigma**2 + L * L * vt_down
        cxt_down = -L * vt_down
        down = tt == DOWNSTREAM
        vx = np.where(down, vx_down, vx_velo)
        cxt = np.where(down, cxt_down, cxt_velo)
        vt = np.where(down, vt_down, vt_velo)
        scale = np.select([tt == UPSTREAM, down], [self.upstream_p_scale, self.downstream_p_scale], 1.0)
        sq = det.sigma_p(p, pid) * scale / p  # sigma(q/p) = sigma_p/p * |q/p|, |q/p| = 1/p
        cov = np.zeros(p.shape + (5, 5))
        for a, b in ((0, 2), (1, 3)):
            cov[..., a, a] = vx
            cov[..., b, b] = vt
            cov[..., a, b] = cov[..., b, a] = cxt
        cov[..., 4, 4] = sq * sq
        return cov

    def velo_covariance(self, px, py, pz, pid) -> np.ndarray:
        """The (n, 4, 4) covariance of ``(x, y, tx, ty)`` of tracks with a VELO segment (long or
        upstream: the same block as :meth:`covariance`'s), without the momentum part."""
        px, py, pz = (np.asarray(a, dtype=np.float64) for a in (px, py, pz))
        p2 = px * px + py * py + pz * pz
        pg = np.sqrt(p2) * 1e-3
        ptg = np.hypot(px, py) * 1e-3
        m = pdg_mass(np.asarray(pid)) * 1e-3  # one species (a scalar) or one per track
        beta = pg / np.sqrt(pg * pg + m * m)
        th = _highland(self.x_over_x0, pg, beta)
        D = self.r_first * (np.abs(pz) * 1e-3) / np.maximum(ptg, 1e-9)
        cov = np.zeros(px.shape + (4, 4))
        vxx = self.sigma_hit**2 + (D * th) ** 2
        cxt = -D * th * th
        vtt = self.detector.slope_meas**2 + th * th
        for a, b in ((0, 2), (1, 3)):
            cov[..., a, a] = vxx
            cov[..., b, b] = vtt
            cov[..., a, b] = cov[..., b, a] = cxt
        return cov

    def sigma_ip(self, pt, p=None, pid=211) -> np.ndarray:
        """sigma(IPx) (mm) of a long track of transverse momentum ``pt`` (MeV/c), from the state's
        covariance (position at the beam); ``p`` defaults to a fast track (beta = 1)."""
        pt = np.asarray(pt, dtype=np.float64)
        p = pt * 100.0 if p is None else np.asarray(p, dtype=np.float64)
        pz = np.sqrt(p * p - pt * pt)
        cov = self.covariance(pt, np.zeros_like(pt), pz, pid, np.full(pt.shape, LONG), np.zeros_like(pt))
        return np.sqrt(cov[..., 0, 0])

    # --- the measurement -------------------------------------------------------------------------
    def measure(self, px, py, pz, x, y, z, pid, seed: SeedLike = None, track_type=None) -> dict[str, np.ndarray]:
        """Measured states of tracks with true momentum ``p`` (MeV/c) and origin ``(x, y, z)`` (mm).

        Args:
            track_type: the tracks' types; by default :meth:`track_type` (tracks of type 0 are
                refused: they are not reconstructed).

        Returns:
            dict with ``state`` (n, 5) measured, ``true_state`` (n, 5), ``z`` (n,) the states' plane,
            ``cov`` (n, 5, 5), ``type`` (int8), ``chi2``, ``ndof`` (int16), ``ghost_prob``.
        """
        rng = get_rng(seed)
        px, py, pz = (np.asarray(a, dtype=np.float64) for a in (px, py, pz))
        pid = np.asarray(pid)
        tt = self.track_type(px, py, pz, x, y, z) if track_type is None else np.asarray(track_type, dtype=np.int8)
        if (tt == 0).any():
            raise DataError(f"measure: {int((tt == 0).sum())} tracks have no track type (origin beyond the UT at "
                            f"z = {self.z_ut} mm, or below p_min after the VELO); they are not reconstructed")
        truth, zs = self.true_state(px, py, pz, x, y, z, pdg_charge(pid))
        cov = self.covariance(px, py, pz, pid, tt, zs)
        n = len(px)
        # the 5x5 is block diagonal: (x, tx), (y, ty), (q/p); draw each block
        noise = np.empty((n, 5))
        for a, b in ((0, 2), (1, 3)):
            va, vb, c = cov[:, a, a], cov[:, b, b], cov[:, a, b]
            l11 = np.sqrt(va)
            l21 = c / l11
            l22 = np.sqrt(vb - l21 * l21)
            u, w = rng.standard_normal(n), rng.standard_normal(n)
            noise[:, a] = l11 * u
            noise[:, b] = l21 * u + l22 * w
        noise[:, 4] = np.sqrt(cov[:, 4, 4]) * rng.standard_normal(n)
        ndof = np.select([tt == LONG, tt == UPSTREAM], [self.ndof[0], self.ndof[1]], self.ndof[2]).astype(np.int16)
        tail = rng.random(n) < self.chi2_tail_fraction
        chi2 = rng.chisquare(ndof) * np.where(tail, self.chi2_tail_scale, 1.0)
        ghost = rng.beta(*self.ghost_beta, n)
        return {"state": truth + noise, "true_state": truth, "z": zs, "cov": cov, "type": tt, "chi2": chi2,
                "ndof": ndof, "ghost_prob": ghost}


def trackstate_sample(n: int, seed: SeedLike = None, model: TrackStateModel | None = None, gun=None):
    """Reconstructed single tracks with their reference states: the training and closure table of
    the track-state network (:mod:`mambah.nn.trackstate`, ``mambah train trackstate``).

    Draws ``n`` particles of :func:`mambah.reference.tracking.tracking_sample` (its ``gun``, acceptance
    and 4-class efficiency) and keeps the reconstructed ones (``track_type`` 3, 4 or 5), measured by
    :meth:`TrackStateModel.measure` with their drawn type. Columns: ``pid, px, py, pz`` (true, MeV/c),
    ``x, y, z`` (origin, mm), ``track_type``, ``z_state`` (mm), the true and measured states
    ``true_x ... true_qop`` and ``state_x ... state_qop``, the 15 covariance elements ``cov_ij``
    (i <= j; order x, y, tx, ty, q/p), ``track_chi2``, ``track_ndof``, ``ghost_prob``.
    """
    import pandas as pd

    from mambah.reference.tracking import tracking_sample

    rng = get_rng(seed)
    model = model or TrackStateModel()
    t = tracking_sample(n, rng, detector=model.detector, gun=gun)
    t = t.loc[t["track_type"].to_numpy() > 0].reset_index(drop=True)
    m = model.measure(*(t[c].to_numpy() for c in ("px", "py", "pz", "x", "y", "z", "pid")), rng,
                      track_type=t["track_type"].to_numpy())
    names = ("x", "y", "tx", "ty", "qop")
    cols = {c: t[c].to_numpy() for c in ("pid", "px", "py", "pz", "x", "y", "z", "track_type")}
    cols["z_state"] = m["z"]
    cols.update({f"true_{k}": m["true_state"][:, j] for j, k in enumerate(names)})
    cols.update({f"state_{k}": m["state"][:, j] for j, k in enumerate(names)})
    cols.update({f"cov_{i}{j}": m["cov"][:, i, j] for i in range(5) for j in range(i, 5)})
    cols.update({"track_chi2": m["chi2"], "track_ndof": m["ndof"], "ghost_prob": m["ghost_prob"]})
    return pd.DataFrame(cols)
