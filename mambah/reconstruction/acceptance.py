"""The explicit geometric acceptance of the tracker: which particles can be a track of which type.

Applied by the :class:`~mambah.reconstruction.efficiency.Efficiency` stage *before* any tracking
network (or the reference detector) is evaluated: a particle outside the acceptance is not
reconstructed and is never passed to a network; a particle inside is, by construction, inside
the efficiency network's training range (:meth:`TrackAcceptance.check_model`, a loud
:class:`~mambah.errors.ModelDirError` when a model's range does not cover the acceptance: no
network is ever evaluated at its range edges).

The geometry (an LHCb-like forward spectrometer; lengths in mm, momenta in MeV/c). A particle is
inside when all of these hold, with ``p``, ``eta`` its true momentum and pseudorapidity (the
direction seen from its origin) and ``(x, y, z)`` its origin, ``rho = sqrt(x^2 + y^2)``:

* **angle**: ``eta_min <= eta <= eta_max`` (1.6 and 5.4, polar angles 403 and 9 mrad) and
  ``pz > 0``: the outer envelope of the sensitive areas of VELO, UT and SciFi. The VELO covers
  1.6 < eta < 4.9 for tracks from the interaction region [LHCb-DP]; the UT and SciFi about
  2 < eta < 5, down to the beam pipe's ~10 mrad [LHCb-DP]. The reference detector's efficiency
  falls smoothly at eta 2 and 5 (logistic edges of width 0.1), inside this envelope: beyond it,
  at 6 widths, it is below 0.3 %.
* **momentum**: ``p_min <= p <= p_max``: below 0.5 GeV/c a track curls up in the magnet's fringe
  field and multiple scattering before it reaches the UT (the magnet's momentum cut-off; tracks
  through the magnet to the SciFi need about 2 GeV/c [LHCb-DP], which the efficiency models as
  its own smooth threshold); ``p_max`` = 6.8 TeV/c, the Run 3 beam momentum, is the kinematic
  bound (not a detector limit: it makes the trained range finite).
* **origin**: ``z_min <= z < z_max`` and ``rho < rho_max``: the VELO starts at z ~ -300 mm
  [LHCb-DP] (6.7 standard deviations of the Run 3 luminous region); a particle born after
  ``z_max`` = 2500 mm (behind the UT's front, which stands at z ~ 2.3 m [LHCb-DP]) leaves too
  few UT hits and makes no long, upstream or downstream track; ``rho_max`` = 1100 mm is
  ``z_max tan(theta_max)`` (2500 mm x 0.41 plus margin): the farthest from the beam that a
  particle flying from the interaction region inside the angular acceptance is before the UT.

The reference detector (:mod:`mambah.reference.tracking`) has soft edges inside the angle,
``p_min``, ``z_max`` and the per-type bounds below (beyond them its probabilities are below 0.3 %,
a test checks it); ``z_min``, ``p_max`` and ``rho_max`` bound its domain (it has no upstream end,
no momentum limit, no radial limit).

and at least one track type is possible:

* **long** (VELO + UT + SciFi, code 3) and **upstream** (VELO + UT, code 4): a VELO segment needs
  the origin in the VELO region, ``z < velo_z_max`` (860 mm) and ``rho < velo_rho_max`` (76 mm):
  the reference VELO's soft end (500 mm, 40 mm) plus 6 widths of its edges (60 mm, 6 mm): the
  last modules at z ~ 750 mm [LHCb-DP]. Upstream tracks are VELO tracks bent out before the
  SciFi: ``p < up_p_max`` (5 GeV/c; above it the reference detector's upstream probability is
  below 0.1 %).
* **downstream** (UT + SciFi, code 5; long-lived K0S and Lambda daughters decaying after the
  VELO): origin outside the core of the VELO region, ``z >= down_z_min`` (140 mm) or
  ``rho >= down_rho_min`` (4 mm) (a particle born inside it makes a VELO segment: the reference
  detector's downstream probability is below 0.3 % there), and ``z < z_max`` (the UT).

Sources: [LHCb-DP] LHCb collaboration, "LHCb detector performance", Int. J. Mod. Phys. A 30
(2015) 1530022, arXiv:1412.6352 (acceptance, VELO extent, UT/TT position, track types);
"LHCb VELO Upgrade TDR", CERN-LHCC-2013-021 (the VELO's angular coverage). The soft edges of the
reference detector are in :mod:`mambah.reference.tracking`.

The **network range invariant**: an efficiency model's training range (its card's ``lo``/``hi``
of ln(p/GeV), eta, origin z / 100 mm and origin rho / 10 mm) must contain the acceptance's box
(:meth:`TrackAcceptance.feature_bounds`), up to float32 rounding (:data:`RANGE_TOLERANCE`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from mambah.errors import ConfigurationError, ModelDirError

__all__ = ["TrackAcceptance", "TYPE_CODES", "RANGE_TOLERANCE"]

#: LHCb's ``TRACK_Type`` codes of the acceptance's track types, in its order
TYPE_CODES = {"long": 3, "upstream": 4, "downstream": 5}
#: how far (in feature units) a model's range may fall short of the acceptance box: float32 rounding
RANGE_TOLERANCE = 1e-4


@dataclasses.dataclass(frozen=True)
class TrackAcceptance:
    """The tracker's geometric acceptance (see the module docstring for the numbers' sources).

    Units: MeV/c and mm.
    """

    eta_min: float = 1.6
    eta_max: float = 5.4
    p_min: float = 500.0
    p_max: float = 6.8e6
    z_min: float = -300.0
    z_max: float = 2500.0
    rho_max: float = 1100.0
    velo_z_max: float = 860.0
    velo_rho_max: float = 76.0
    up_p_max: float = 5000.0
    down_z_min: float = 140.0
    down_rho_min: float = 4.0

    def __post_init__(self):
        checks = [(self.eta_min < self.eta_max, "eta_min < eta_max"), (0 < self.p_min < self.p_max, "0 < p_min < p_max"),
                  (self.z_min < self.z_max, "z_min < z_max"), (self.rho_max > 0, "rho_max > 0"),
                  (self.velo_z_max <= self.z_max, "velo_z_max <= z_max"),
                  (0 < self.velo_rho_max <= self.rho_max, "0 < velo_rho_max <= rho_max"),
                  (self.up_p_max > self.p_min, "up_p_max > p_min")]
        bad = [what for ok, what in checks if not ok]
        if bad:
            raise ConfigurationError(f"TrackAcceptance: need {', '.join(bad)}; got {self.config()}")

    def config(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def feature_bounds(self) -> dict[str, tuple[float, float]]:
        """The acceptance box in the efficiency network's continuous features (``ln_p_gev``,
        ``eta``, ``origin_z_100mm``, ``origin_rho_10mm``; :mod:`mambah.nn.tracking`)."""
        return {"ln_p_gev": (float(np.log(self.p_min * 1e-3)), float(np.log(self.p_max * 1e-3))),
                "eta": (self.eta_min, self.eta_max),
                "origin_z_100mm": (self.z_min / 100.0, self.z_max / 100.0),
                "origin_rho_10mm": (0.0, self.rho_max / 10.0)}

    def types(self, px, py, pz, x, y, z) -> np.ndarray:
        """(n, 3) booleans: may the particle be a (long, upstream, downstream) track? All False
        outside the acceptance."""
        px, py, pz, x, y, z = (np.asarray(a, dtype=np.float64) for a in (px, py, pz, x, y, z))
        pt2 = px * px + py * py
        p = np.sqrt(pt2 + pz * pz)
        pt = np.sqrt(pt2)
        with np.errstate(divide="ignore", invalid="ignore"):
            eta = np.arcsinh(np.where(pt > 0, pz / pt, np.inf))
        rho = np.hypot(x, y)
        inside = ((pz > 0) & (eta >= self.eta_min) & (eta <= self.eta_max) & (p >= self.p_min) & (p <= self.p_max)
                  & (z >= self.z_min) & (z < self.z_max) & (rho < self.rho_max))
        velo = inside & (z < self.velo_z_max) & (rho < self.velo_rho_max)
        out = np.empty(p.shape + (3,), dtype=bool)
        out[..., 0] = velo
        out[..., 1] = velo & (p < self.up_p_max)
        out[..., 2] = inside & ((z >= self.down_z_min) | (rho >= self.down_rho_min))
        return out

    def inside(self, px, py, pz, x, y, z) -> np.ndarray:
        """Booleans: is the particle inside the acceptance (some track type possible)?"""
        return self.types(px, py, pz, x, y, z).any(axis=-1)

    def check_model(self, model) -> None:
        """Raise :class:`~mambah.errors.ModelDirError` unless ``model``'s training range (its
        :meth:`~mambah.nn.model.Model.training_range`) covers the acceptance box, naming the model,
        the features and both ranges."""
        names, lo, hi = model.training_range()
        bounds = self.feature_bounds()
        short = []
        for j, name in enumerate(names):
            if name not in bounds:
                continue
            a, b = bounds[name]
            if lo[j] > a + RANGE_TOLERANCE or hi[j] < b - RANGE_TOLERANCE:
                short.append(f"{name} trained on [{lo[j]:.4g}, {hi[j]:.4g}], acceptance [{a:.4g}, {b:.4g}]")
        missing = [n for n in bounds if n not in names]
        if missing:
            short.append(f"no training range for {', '.join(missing)}")
        if short:
            raise ModelDirError(
                f"efficiency model {getattr(model, 'name', '?')!r} does not cover the geometric acceptance "
                f"(its network would be evaluated outside its training range): {'; '.join(short)}. Use a model "
                "trained on the acceptance's domain (e.g. efficiency-ref-v2: mambah detector tracking-sample "
                "--domain acceptance) or a narrower TrackAcceptance"
            )
