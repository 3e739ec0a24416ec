"""Reconstruction stages: occupancy, tracking efficiency, momentum resolution, composites, PID.

Each stage is a frozen dataclass with ``name``, ``__call__(batch) -> batch``, ``config()`` and
``model_versions()``; models are loaded lazily and cached per process, and the dataclass fields
are plain strings and numbers, so stages pickle for Dask.
"""

from __future__ import annotations

from .composites import Composites
from .efficiency import Efficiency
from .occupancy import Occupancy
from .pid import PID
from .resolution import Resolution

__all__ = ["Occupancy", "Efficiency", "Resolution", "Composites", "PID"]
