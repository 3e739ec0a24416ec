"""The reference detector, calorimeter part: photons and pi0 -> gamma gamma in the ECAL.

A documented, physics-motivated stand-in for the full simulation of an LHCb-like
electromagnetic calorimeter (a shashlik ECAL in three regions of square cells). It gives photon
and pi0 samples a known truth for closure tests. It is **not** LHCb truth: the numbers are round
values resembling the published design and performance, with their sources; those marked
*reference choice* are mambah's own.

Sources:

* [JINST] LHCb collaboration, "The LHCb Detector at the LHC", JINST 3 (2008) S08005, Sect. 6.2
  (calorimeters): ECAL front face at z ~ 12.5 m from the interaction point; outer dimensions
  7.76 m x 6.30 m; square cells of 40.4 mm (inner region), 60.6 mm (middle) and 121.2 mm (outer);
  design energy resolution sigma_E/E = 10 %/sqrt(E/GeV) (+) 1 % (added in quadrature).
* [DP] LHCb collaboration, "LHCb detector performance", Int. J. Mod. Phys. A 30 (2015) 1530022,
  arXiv:1412.6352, Sect. 5 (calorimeter performance): photons are reconstructed from clusters
  with E_T above a few hundred MeV; a pi0 with p_T above about 2 GeV/c mostly gives a single
  *merged* cluster (its photons' separation at the ECAL is below the size of a cluster), below
  that two *resolved* photons; a photon/pi0 separation variable is built from the cluster shape.
* [PDG] the pi0 mass from the ``particle`` package (:func:`mambah.physics.particle_mass`).

Geometry (lengths in mm, z along the beam; a photon flies in a straight line from its origin)::

    impact at the ECAL face: (x, y) = origin + (z_ecal - z_origin) * (px, py) / pz
    acceptance:  |x| < x_outer and |y| < y_outer, and not (|x| < hole and |y| < hole)
    cell size:   inner (|x| < x_inner and |y| < y_inner), middle (|x| < x_middle, |y| < y_middle), outer

Region boundaries ``x_inner, y_inner = 970, 725``, ``x_middle, y_middle = 1940, 1450``,
``x_outer, y_outer = 3880, 3150`` (half of the 7.76 m x 6.30 m face [JINST]) and the beam hole
``hole = 323`` (8 inner cells: a reference choice close to [JINST]'s beam-pipe opening).

Response to a photon of energy E (GeV in the formulas, MeV in the arguments)::

    efficiency   = plateau * sigmoid((E_T - et_min) / et_edge)                  (in acceptance)
    E_reco       = E * (1 + sigma_E/E * N(0, 1)),  sigma_E/E = sqrt(a^2 / E + b^2)   [JINST]
    x_reco       = x + sigma_xy * N(0, 1),  sigma_xy = cell * sqrt(c^2 / E + d^2)     (same for y)

with a = 0.10, b = 0.01 [JINST]; plateau = 0.95, et_min = 200 MeV, et_edge = 30 MeV, c = 0.30,
d = 0.05 (reference choices, of the order of [DP]). The reconstructed photon momentum points
from the photon's origin to (x_reco, y_reco, z_ecal), with |p| = E_reco.

pi0 -> gamma gamma: the two photons' impact points are ``dist`` apart at the ECAL face; with
``cell`` the cell size at their energy-weighted centre the pi0 is

    merged   if dist < merge_cells * cell   (merge_cells = 2: the two 3x3-cell clusters overlap;
                                             one cluster of energy E1 + E2 at the weighted centre)
    resolved otherwise                       (each photon reconstructed on its own, as above).

At high momentum dist ~ (z_ecal - z_origin) * 2 m_pi0 / E (the minimum opening angle is
2 m_pi0 / E), so the merged fraction rises with the pi0's p_T [DP].

Photon / pi0 identification (``is_not_pi0``, after LHCb's ``IsNotPi0``; a documented simple
discriminant, reference choice): the energy-weighted transverse spread of a cluster's photons,
``s = sqrt(E1 E2) / (E1 + E2) * dist`` (0 for a single photon), is measured with a Gaussian
error ``sigma_s = shape_noise * cell`` (shape_noise = 0.15) and turned into the p-value of the
single-photon hypothesis::

    is_not_pi0 = erfc(|s + sigma_s N(0, 1)| / (sqrt(2) sigma_s))

uniform on [0, 1] for single photons, near 0 for merged pi0 whose showers the cluster shape
resolves. Every function is vectorised over arrays and draws from the numpy Generator it is given.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from mambah.errors import ConfigurationError
from mambah.random import SeedLike, get_rng

__all__ = ["Calorimeter", "PHOTON", "MERGED_PI0", "RESOLVED_PI0", "LOST", "photon_sample", "pi0_sample"]

#: Classes of the calorimeter response to a pi0 (``Calorimeter.pi0_response()["kind"]``).
LOST, PHOTON, RESOLVED_PI0, MERGED_PI0 = 0, 1, 2, 3


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * t))


def _erfc(x: np.ndarray) -> np.ndarray:
    from scipy.special import erfc

    return erfc(x)


@dataclasses.dataclass(frozen=True)
class Calorimeter:
    """Parameters of the reference ECAL (see the module docstring for formulas and sources).

    Units: MeV and mm in the arguments; the resolution formulas take E in GeV.

    Attributes:
        z_ecal: z of the ECAL front face, mm [JINST].
        x_outer, y_outer: half sizes of the ECAL face, mm [JINST].
        x_middle, y_middle, x_inner, y_inner: half sizes of the middle and inner regions, mm.
        hole: half size of the square beam hole, mm (reference choice).
        cells: cell sizes of the inner, middle and outer regions, mm [JINST].
        stochastic, constant: a and b of sigma_E/E = sqrt(a^2/E + b^2), E in GeV [JINST].
        plateau, et_min, et_edge: photon reconstruction efficiency plateau, E_T threshold and
            the width of its turn-on, MeV (reference choices).
        pos_stochastic, pos_constant: c and d of the position resolution in cell units.
        merge_cells: a pi0 is merged when its photons are closer than this many cells.
        shape_noise: error of the measured cluster spread, in cell units (``is_not_pi0``).
    """

    z_ecal: float = 12520.0
    x_outer: float = 3880.0
    y_outer: float = 3150.0
    x_middle: float = 1940.0
    y_middle: float = 1450.0
    x_inner: float = 970.0
    y_inner: float = 725.0
    hole: float = 323.0
    cells: tuple[float, float, float] = (40.4, 60.6, 121.2)
    stochastic: float = 0.10
    constant: float = 0.01
    plateau: float = 0.95
    et_min: float = 200.0
    et_edge: float = 30.0
    pos_stochastic: float = 0.30
    pos_constant: float = 0.05
    merge_cells: float = 2.0
    shape_noise: float = 0.15

    def __post_init__(self):
        if not 0 < self.plateau <= 1:
            raise ConfigurationError(f"Calorimeter: plateau must be in (0, 1], got {self.plateau}")
        if min(self.stochastic, self.constant, self.pos_stochastic, self.pos_constant) < 0:
            raise ConfigurationError("Calorimeter: resolution terms must be >= 0")
        if not (0 < self.hole < self.x_inner < self.x_middle < self.x_outer
                and self.hole < self.y_inner < self.y_middle < self.y_outer):
            raise ConfigurationError("Calorimeter: the regions must nest: hole < inner < middle < outer")
        if len(self.cells) != 3 or min(self.cells) <= 0 or self.shape_noise <= 0:
            raise ConfigurationError(f"Calorimeter: three positive cell sizes and shape_noise > 0 needed, "
                                     f"got {self.cells!r}, {self.shape_noise}")

    def config(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # --- geometry --------------------------------------------------------------------------------
    def impact(self, px, py, pz, x=0.0, y=0.0, z=0.0) -> tuple[np.ndarray, np.ndarray]:
        """Where a neutral particle from (x, y, z) with momentum (px, py, pz) meets the ECAL face
        (mm); NaN for pz <= 0 or an origin beyond the face."""
        px, py, pz = (np.asarray(a, dtype=np.float64) for a in (px, py, pz))
        dz = self.z_ecal - np.asarray(z, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.where((pz > 0) & (dz > 0), dz / pz, np.nan)
        return np.asarray(x, dtype=np.float64) + s * px, np.asarray(y, dtype=np.float64) + s * py

    def in_acceptance(self, xe, ye) -> np.ndarray:
        """True where an impact point (mm) is on the ECAL face, outside the beam hole."""
        ax, ay = np.abs(np.asarray(xe, dtype=np.float64)), np.abs(np.asarray(ye, dtype=np.float64))
        with np.errstate(invalid="ignore"):
            return (ax < self.x_outer) & (ay < self.y_outer) & ~((ax < self.hole) & (ay < self.hole))

    def cell_size(self, xe, ye) -> np.ndarray:
        """Cell size (mm) of the region an impact point falls in (the outer size outside the face)."""
        ax, ay = np.abs(np.asarray(xe, dtype=np.float64)), np.abs(np.asarray(ye, dtype=np.float64))
        inner = (ax < self.x_inner) & (ay < self.y_inner)
        middle = (ax < self.x_middle) & (ay < self.y_middle) & ~inner
        return np.where(inner, self.cells[0], np.where(middle, self.cells[1], self.cells[2]))

    # --- response --------------------------------------------------------------------------------
    def sigma_e(self, e) -> np.ndarray:
        """Relative energy resolution sigma_E/E at energy ``e`` (MeV): 10%/sqrt(E/GeV) (+) 1% [JINST]."""
        eg = np.maximum(np.asarray(e, dtype=np.float64) * 1e-3, 1e-9)
        return np.sqrt(self.stochastic**2 / eg + self.constant**2)

    def sigma_xy(self, e, cell) -> np.ndarray:
        """Position resolution (mm) of a cluster of energy ``e`` (MeV) in cells of size ``cell`` (mm)."""
        eg = np.maximum(np.asarray(e, dtype=np.float64) * 1e-3, 1e-9)
        return np.asarray(cell, dtype=np.float64) * np.sqrt(self.pos_stochastic**2 / eg + self.pos_constant**2)

    def efficiency(self, et, in_acc) -> np.ndarray:
        """Probability that a photon (or merged cluster) of transverse energy ``et`` (MeV) is
        reconstructed; 0 outside the acceptance."""
        return np.where(in_acc, self.plateau * _sigmoid((np.asarray(et, dtype=np.float64) - self.et_min)
                                                        / self.et_edge), 0.0)

    def is_not_pi0(self, spread, cell, rng: np.random.Generator) -> np.ndarray:
        """The photon/pi0 discriminant of a cluster whose photons' true energy-weighted spread is
        ``spread`` (mm; 0 for one photon): uniform on [0, 1] for single photons, small for merged pi0."""
        sigma = self.shape_noise * np.asarray(cell, dtype=np.float64)
        s = np.asarray(spread, dtype=np.float64) + sigma * rng.standard_normal(np.shape(sigma))
        return _erfc(np.abs(s) / (np.sqrt(2.0) * sigma))

    def _cluster(self, e, xe, ye, cell, x0, y0, z0, rng):
        """Smear a cluster of true energy ``e`` at (xe, ye): energy, position, and the momentum
        pointing from the origin (x0, y0, z0) to the measured position with |p| = E_reco."""
        n = np.shape(e)
        e_reco = e * (1.0 + self.sigma_e(e) * rng.standard_normal(n))
        e_reco = np.maximum(e_reco, 0.0)
        sxy = self.sigma_xy(e, cell)
        xr = xe + sxy * rng.standard_normal(n)
        yr = ye + sxy * rng.standard_normal(n)
        dx, dy, dz = xr - x0, yr - y0, self.z_ecal - z0
        norm = np.sqrt(dx * dx + dy * dy + dz * dz)
        with np.errstate(invalid="ignore", divide="ignore"):
            u = (dx / norm, dy / norm, dz / norm)
        return e_reco, xr, yr, e_reco * u[0], e_reco * u[1], e_reco * u[2]

    def cluster_response(self, e, xe, ye, x=0.0, y=0.0, z=0.0, *, seed: SeedLike = None) -> dict[str, np.ndarray]:
        """Smear clusters of true energy ``e`` (MeV) centred at (xe, ye) on the ECAL face (mm) from
        particles that left (x, y, z) (mm), with the resolution of the region they fall in (the same
        formulas as a photon's and a merged pi0's cluster).

        Returns:
            ``{"e", "x", "y", "px", "py", "pz"}``: the measured energy and position, and the momentum
            pointing from the origin to the measured position with |p| = E_reco (massless).
        """
        rng = get_rng(seed)
        e = np.asarray(e, dtype=np.float64)
        xe, ye = (np.broadcast_to(np.asarray(a, dtype=np.float64), e.shape) for a in (xe, ye))
        x0, y0, z0 = (np.broadcast_to(np.asarray(a, dtype=np.float64), e.shape) for a in (x, y, z))
        out = self._cluster(e, xe, ye, self.cell_size(xe, ye), x0, y0, z0, rng)
        return dict(zip(("e", "x", "y", "px", "py", "pz"), out))

    def photon_response(self, px, py, pz, x=0.0, y=0.0, z=0.0, *, seed: SeedLike = None) -> dict[str, np.ndarray]:
        """The ECAL's answer to photons of momentum (px, py, pz) [MeV/c] from (x, y, z) [mm].

        Returns:
            ``{"in_acceptance", "reconstructed", "e", "x", "y", "px", "py", "pz", "is_not_pi0",
            "x_true", "y_true"}``: the booleans, the reconstructed energy (MeV), cluster position
            at the ECAL face (mm) and momentum (MeV/c), the photon/pi0 discriminant (NaN where not
            reconstructed) and the true impact point.
        """
        rng = get_rng(seed)
        px, py, pz = (np.asarray(a, dtype=np.float64) for a in (px, py, pz))
        x0, y0, z0 = (np.broadcast_to(np.asarray(a, dtype=np.float64), px.shape) for a in (x, y, z))
        e = np.sqrt(px * px + py * py + pz * pz)
        xe, ye = self.impact(px, py, pz, x0, y0, z0)
        acc = self.in_acceptance(xe, ye)
        reco = rng.random(px.shape) < self.efficiency(np.hypot(px, py), acc)
        cell = self.cell_size(xe, ye)
        e_r, xr, yr, qx, qy, qz = self._cluster(e, np.nan_to_num(xe), np.nan_to_num(ye), cell, x0, y0, z0, rng)
        nip = self.is_not_pi0(np.zeros(px.shape), cell, rng)
        nan = np.nan
        return {
            "in_acceptance": acc, "reconstructed": reco,
            "e": np.where(reco, e_r, nan), "x": np.where(reco, xr, nan), "y": np.where(reco, yr, nan),
            "px": np.where(reco, qx, nan), "py": np.where(reco, qy, nan), "pz": np.where(reco, qz, nan),
            "is_not_pi0": np.where(reco, nip, nan), "x_true": xe, "y_true": ye,
        }

    def pi0_response(self, g1: tuple, g2: tuple, x=0.0, y=0.0, z=0.0, *, seed: SeedLike = None) -> dict[str, Any]:
        """The ECAL's answer to pi0 -> gamma gamma: two resolved photons, one merged cluster, or lost.

        Args:
            g1, g2: the two photons' momenta ``(px, py, pz)`` [MeV/c], arrays of one length.
            x, y, z: the pi0's decay point (the photons' origin) [mm].

        Returns:
            ``{"kind", "merged", "separation", "cell", "merged_cluster", "photons"}``: ``kind`` per
            pi0 (:data:`MERGED_PI0` if merged and reconstructed, :data:`RESOLVED_PI0` if resolved
            and both photons reconstructed, :data:`PHOTON` if resolved with one photon only,
            :data:`LOST` otherwise); ``merged`` whether the photons' separation at the ECAL face,
            ``separation`` (mm), is below ``merge_cells`` cells; ``merged_cluster`` the cluster
            of the merged ones (``e, x, y, px, py, pz, is_not_pi0``, NaN elsewhere; ``px, py, pz``
            its momentum, whose mass is 0: a merged pi0 is reconstructed with the pi0 mass
            constraint by the user, as LHCb does); ``photons`` the two
            :meth:`photon_response` dicts, with NaN where the pi0 is merged.
        """
        rng = get_rng(seed)
        p1 = [np.asarray(a, dtype=np.float64) for a in g1]
        p2 = [np.asarray(a, dtype=np.float64) for a in g2]
        shape = p1[0].shape
        x0, y0, z0 = (np.broadcast_to(np.asarray(a, dtype=np.float64), shape) for a in (x, y, z))
        e1 = np.sqrt(sum(c * c for c in p1))
        e2 = np.sqrt(sum(c * c for c in p2))
        x1, y1 = self.impact(*p1, x0, y0, z0)
        x2, y2 = self.impact(*p2, x0, y0, z0)
        sep = np.hypot(x1 - x2, y1 - y2)
        e = e1 + e2
        xc, yc = (e1 * x1 + e2 * x2) / e, (e1 * y1 + e2 * y2) / e
        cell = self.cell_size(xc, yc)
        with np.errstate(invalid="ignore"):
            merged = sep < self.merge_cells * cell
        r1 = self.photon_response(*p1, x0, y0, z0, seed=rng)
        r2 = self.photon_response(*p2, x0, y0, z0, seed=rng)
        # merged: one cluster, in acceptance where its centre is
        acc_m = self.in_acceptance(xc, yc)
        pt = np.hypot(p1[0] + p2[0], p1[1] + p2[1])
        reco_m = merged & (rng.random(shape) < self.efficiency(pt, acc_m))
        e_r, xr, yr, qx, qy, qz = self._cluster(e, np.nan_to_num(xc), np.nan_to_num(yc), cell, x0, y0, z0, rng)
        spread = np.sqrt(e1 * e2) / e * np.nan_to_num(sep)
        nip = self.is_not_pi0(spread, cell, rng)
        nan = np.nan
        mc = {k: np.where(reco_m, v, nan) for k, v in
              {"e": e_r, "x": xr, "y": yr, "px": qx, "py": qy, "pz": qz, "is_not_pi0": nip}.items()}
        for r in (r1, r2):
            r["reconstructed"] = r["reconstructed"] & ~merged
            for k in ("e", "x", "y", "px", "py", "pz", "is_not_pi0"):
                r[k] = np.where(r["reconstructed"], r[k], nan)
        n_ph = r1["reconstructed"].astype(int) + r2["reconstructed"].astype(int)
        kind = np.where(reco_m, MERGED_PI0, np.where(n_ph == 2, RESOLVED_PI0, np.where(n_ph == 1, PHOTON, LOST)))
        return {"kind": kind, "merged": merged, "separation": sep, "cell": cell, "merged_cluster": mc,
                "photons": (r1, r2)}


def _gun(n: int, rng: np.random.Generator, p_lo: float, p_hi: float, eta_lo: float, eta_hi: float,
         prompt: float, flight_hi: float):
    """Momenta log-flat in [p_lo, p_hi] MeV/c, eta flat, phi flat; origins: a fraction ``prompt`` at
    the luminous region (sigma_xy 0.04 mm, sigma_z 45 mm), the rest displaced along the momentum by a
    log-flat flight distance in [1, flight_hi] mm."""
    eta = rng.uniform(eta_lo, eta_hi, n)
    phi = rng.uniform(-np.pi, np.pi, n)
    p = np.exp(rng.uniform(np.log(p_lo), np.log(p_hi), n))
    pt = p / np.cosh(eta)
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    d = np.where(rng.random(n) < prompt, 0.0, np.exp(rng.uniform(0.0, np.log(flight_hi), n)))
    x = rng.normal(0.0, 0.04, n) + d * px / p
    y = rng.normal(0.0, 0.04, n) + d * py / p
    z = rng.normal(0.0, 45.0, n) + d * pz / p
    return px, py, pz, x, y, z


def photon_sample(n: int, seed: SeedLike = None, *, e_lo: float = 150.0, e_hi: float = 300_000.0,
                  calorimeter: Calorimeter | None = None):
    """Single photons through the reference ECAL: the training sample of the photon network's
    efficiency and response (``mambah detector photon-sample``).

    Photons log-flat in E [e_lo, e_hi] MeV, eta flat in [1.6, 5.4], half from the luminous region,
    half displaced by up to 1 m (b, c and K0S decays).

    Returns:
        A DataFrame: ``px, py, pz`` [MeV/c], ``x, y, z`` (origin, mm), ``x_true, y_true`` (impact on
        the ECAL face, mm), ``in_acceptance`` and ``reconstructed`` (0/1), ``e_reco, x_reco, y_reco``
        (MeV, mm; NaN where not reconstructed).
    """
    import pandas as pd

    rng = get_rng(seed)
    cal = calorimeter or Calorimeter()
    px, py, pz, x, y, z = _gun(int(n), rng, e_lo, e_hi, 1.6, 5.4, 0.5, 1000.0)
    r = cal.photon_response(px, py, pz, x, y, z, seed=rng)
    return pd.DataFrame({"px": px, "py": py, "pz": pz, "x": x, "y": y, "z": z, "x_true": r["x_true"],
                         "y_true": r["y_true"], "in_acceptance": r["in_acceptance"].astype(np.int8),
                         "reconstructed": r["reconstructed"].astype(np.int8), "e_reco": r["e"], "x_reco": r["x"],
                         "y_reco": r["y"]})


def pi0_sample(n: int, seed: SeedLike = None, *, p_lo: float = 500.0, p_hi: float = 300_000.0,
               calorimeter: Calorimeter | None = None):
    """pi0 -> gamma gamma through the reference ECAL: the training sample of the photon network's
    pi0 classes (``mambah detector photon-sample --pi0``).

    pi0 log-flat in p [p_lo, p_hi] MeV/c, eta flat in [1.6, 5.4], origins as in
    :func:`photon_sample`; the decay is isotropic in the pi0 rest frame (pi0 mass from the
    ``particle`` package).

    Returns:
        A DataFrame: ``g1_px, g1_py, g1_pz, g2_px, g2_py, g2_pz`` [MeV/c], ``x, y, z`` (decay point,
        mm), ``kind`` (:data:`LOST`, :data:`PHOTON`, :data:`RESOLVED_PI0`, :data:`MERGED_PI0`),
        ``merged`` (0/1) and ``pi0_class``: 0 resolved, 1 merged and reconstructed, 2 merged and lost.
    """
    import pandas as pd

    from mambah.physics import boost_to_lab, particle_mass

    rng = get_rng(seed)
    cal = calorimeter or Calorimeter()
    n = int(n)
    m = particle_mass(111)
    px, py, pz, x, y, z = _gun(n, rng, p_lo, p_hi, 1.6, 5.4, 0.5, 1000.0)
    cos_t = rng.uniform(-1.0, 1.0, n)
    phi = rng.uniform(-np.pi, np.pi, n)
    sin_t = np.sqrt(1.0 - cos_t * cos_t)
    k = 0.5 * m
    rest = np.stack([k * sin_t * np.cos(phi), k * sin_t * np.sin(phi), k * cos_t, np.full(n, k)])
    mother = np.stack([px, py, pz, np.sqrt(px * px + py * py + pz * pz + m * m)])
    g1 = boost_to_lab(rest, mother, m).T
    g2 = boost_to_lab(rest * np.array([-1.0, -1.0, -1.0, 1.0])[:, None], mother, m).T
    r = cal.pi0_response(tuple(g1[:, j] for j in range(3)), tuple(g2[:, j] for j in range(3)), x, y, z, seed=rng)
    merged = r["merged"]
    cls = np.where(merged, np.where(r["kind"] == MERGED_PI0, 1, 2), 0).astype(np.int8)
    return pd.DataFrame({"g1_px": g1[:, 0], "g1_py": g1[:, 1], "g1_pz": g1[:, 2], "g2_px": g2[:, 0],
                         "g2_py": g2[:, 1], "g2_pz": g2[:, 2], "x": x, "y": y, "z": z,
                         "kind": r["kind"].astype(np.int8), "merged": merged.astype(np.int8), "pi0_class": cls})
