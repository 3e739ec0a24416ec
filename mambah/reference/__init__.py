"""The reference detector: a documented, physics-motivated stand-in for full simulation.

It gives training and validation samples a known truth. It is never LHCb truth. The tracking
part lives in :mod:`mambah.reference.tracking` (acceptance, efficiency, momentum resolution) and
:mod:`mambah.reference.trackstates` (track types, states closest to the beam and their
covariance, track chi2 and ghost probability); :mod:`mambah.reference.pileup` draws the pp
collisions of a bunch crossing (pile-up) and their prompt tracks for the primary-vertex fits.
"""

from __future__ import annotations

from mambah.reference.tracking import TrackGun, TrackingDetector, tracking_sample
from mambah.reference.trackstates import TrackStateModel, trackstate_sample

__all__ = ["TrackingDetector", "TrackGun", "TrackStateModel", "tracking_sample", "trackstate_sample"]
