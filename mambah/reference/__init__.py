"""The reference detector: a documented, physics-motivated stand-in for full simulation.

It gives training and validation samples a known truth. It is never LHCb truth. The tracking
part lives in :mod:`mambah.reference.tracking`.
"""

from __future__ import annotations

from mambah.reference.tracking import TrackGun, TrackingDetector, tracking_sample

__all__ = ["TrackingDetector", "TrackGun", "tracking_sample"]
