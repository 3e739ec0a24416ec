"""Reconstruction: what the detector makes of the generated particles, stage by stage.

``Occupancy`` (nTracks) -> ``Efficiency`` (which charged particles become tracks, of which type,
after the explicit geometric acceptance :class:`TrackAcceptance`) ->
``Resolution`` (their measured momenta) -> ``Composites`` (decay candidates built from the
tracks) -> ``Vertexing`` (opt-in, not in the default pipeline yet: track states, decay-vertex
fits and the selection variables, :mod:`mambah.reconstruction.vertexstage`; the fit and the
variables as pure functions in :mod:`mambah.reconstruction.vertexing`). Each stage is a frozen dataclass with ``name``, ``__call__(batch) -> batch``,
``config()`` and ``model_versions()``; models are loaded lazily through the model registry
(:mod:`mambah.nn.registry`), and the dataclass fields are plain strings and numbers, so stages
pickle for Dask. The PID stage is in :mod:`mambah.pid`. Mass-hypothesis swaps (a track
reconstructed as another particle, ``Composites(reconstruct_as=...)``) are resolved and checked
by :mod:`mambah.reconstruction.hypotheses`. ``Neutrals`` (opt-in, reference calorimeter only)
gives photons rows of ``particles`` before ``Composites``; ``Bremsstrahlung`` (opt-in, reference
detector only) lowers the electron tracks' momenta by their brem loss and adds back what brem
recovery finds, after ``Resolution`` (:mod:`mambah.reconstruction.brem`); neutral final-state particles that no
stage reconstructs are refused unless left invisible (:mod:`mambah.reconstruction.visibility`).
"""

from __future__ import annotations

from mambah.reconstruction.acceptance import TrackAcceptance
from mambah.reconstruction.brem import Bremsstrahlung
from mambah.reconstruction.composites import Composites
from mambah.reconstruction.efficiency import Efficiency
from mambah.reconstruction.neutrals import Neutrals
from mambah.reconstruction.occupancy import Occupancy
from mambah.reconstruction.resolution import Resolution
from mambah.reconstruction.vertexstage import Vertexing

__all__ = ["Occupancy", "Efficiency", "Resolution", "Bremsstrahlung", "Neutrals", "Composites", "Vertexing",
           "TrackAcceptance"]
