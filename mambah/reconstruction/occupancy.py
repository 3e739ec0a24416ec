"""Occupancy: the number of tracks per event, ``events.n_tracks``.

The occupancy model is a histogram of tracks per event shipped as a model directory
(``kind: "occupancy"``; arrays ``edges`` (integer bin edges, a bin is ``[lo, hi)``) and
``counts``). The stage draws a bin with probability proportional to its count and a uniform
integer inside it.

The shipped default, ``occupancy-lc-run3-v1``, is the **sWeighted** histogram of
``nLongTracks`` of the real LHCb Run 3 Lambda_c+ -> p K- pi+ calibration protons (public
pidcalib2 test data subset, GPL-3.0). sWeighted, because mambah simulates signal decays: the
occupancy of events that contain a signal candidate is the signal's occupancy, whereas the
unweighted histogram mixes in the combinatorial background, which comes preferentially from
busier events. The calibration sample is also what the PID networks are trained on, so they see
the same occupancy. Bins whose summed sWeights are negative (statistical fluctuations of the
subtraction in the sparse high-occupancy tail) are set to zero; the card records how many.

The model is :class:`mambah.nn.occupancy.OccupancyModel` (loaded through the registry,
:func:`mambah.nn.registry.load_model`); it is built by
:func:`mambah.training.occupancy.build_occupancy_model` (``mambah detector occupancy``).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from mambah.errors import ConfigurationError
from mambah.nn.occupancy import OccupancyModel  # noqa: F401  (re-exported: the model this stage samples)
from mambah.reconstruction._common import OneModelStage

__all__ = ["Occupancy", "OccupancyModel", "DEFAULT_OCCUPANCY"]

log = logging.getLogger(__name__)

DEFAULT_OCCUPANCY = "occupancy-lc-run3-v1"


@dataclasses.dataclass(frozen=True)
class Occupancy(OneModelStage):
    """Fill ``events.n_tracks`` from an occupancy histogram (seeded by ``batch.rng(name)``).

    Args:
        model: name of a model under ``models/`` or a model directory (default
            :data:`DEFAULT_OCCUPANCY`).
        name: stage name (also the name of its random stream).

    If the batch has no ``events`` table yet, one is created with the batch's events (PV at the
    origin, weight 1).
    """

    model: str = DEFAULT_OCCUPANCY
    name: str = "occupancy"

    def __call__(self, batch):
        from mambah.batch import empty_table

        from mambah.nn.registry import load_model

        m = load_model(self.model, kind="occupancy")
        n = batch.n_events
        if "events" in batch:
            ev = batch["events"]
            if len(ev) != n:
                raise ConfigurationError(f"batch {batch.id}: the events table has {len(ev)} rows for {n} events")
            ev = ev.copy()
        else:
            ev = empty_table("events", n)
            ev["batch"] = np.int64(batch.id)
            ev["event"] = np.arange(n, dtype=np.int32)
            ev["weight"] = np.float32(1.0)
        ev["n_tracks"] = m.sample(n, batch.rng(self.name))
        batch["events"] = ev
        return batch
