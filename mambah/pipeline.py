"""A pipeline: a list of stages run over batches, optionally into a store.

A stage is any callable ``stage(batch) -> batch`` (frozen dataclasses in mambah) with a ``name``
attribute; it may also offer ``config() -> dict`` (recorded in the batch's provenance) and
``model_versions() -> dict`` (name -> {version, hash}) and ``model_dirs() -> dict`` (name -> model
directory, registered in the store's ``models`` table by a production).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from mambah.batch import Batch
from mambah.random import batch_seed

__all__ = ["Stage", "Pipeline"]

log = logging.getLogger(__name__)


@runtime_checkable
class Stage(Protocol):
    name: str

    def __call__(self, batch: Batch) -> Batch: ...


def _stage_name(stage: Callable) -> str:
    return getattr(stage, "name", None) or type(stage).__name__


class Pipeline:
    """Stages applied in order to each batch.

    Example:
        >>> from mambah import Pipeline, ParticleGun, PhaseSpaceDecay, Store   # doctest: +SKIP
        >>> pipe = Pipeline([ParticleGun("B+"), PhaseSpaceDecay("B+ -> (J/psi(1S) -> mu+ mu-) K+")])
        >>> pipe.run(n_events=100_000, batch_size=10_000, seed=42, store=Store())
    """

    def __init__(self, stages: Sequence[Callable[[Batch], Batch]]):
        self.stages = list(stages)
        names = [_stage_name(s) for s in self.stages]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"stage names must be unique (they seed the stages' random streams): {sorted(dup)}")
        self._provenance: dict[str, Any] | None = None

    def config(self) -> dict[str, Any]:
        return {_stage_name(s): (s.config() if hasattr(s, "config") else {}) for s in self.stages}

    def _merged(self, method: str) -> dict[str, Any]:
        """The union of the stages' ``method()`` dictionaries (stages without it contribute nothing)."""
        out: dict[str, Any] = {}
        for s in self.stages:
            if hasattr(s, method):
                out.update(getattr(s, method)())
        return out

    def model_versions(self) -> dict[str, Any]:
        return self._merged("model_versions")

    def model_dirs(self) -> dict[str, Any]:
        """``{name: directory}`` of every model the stages load."""
        return self._merged("model_dirs")

    def make_batch(self, batch_id: int, production_seed: int, n_events: int) -> Batch:
        return Batch(id=int(batch_id), seed=batch_seed(production_seed, batch_id), n_events=int(n_events))

    def provenance(self) -> dict[str, Any]:
        """Pipeline configuration and model versions (computed once; recorded with every batch)."""
        if self._provenance is None:
            self._provenance = {"pipeline": self.config(), "models": self.model_versions()}
        return self._provenance

    def process(self, batch: Batch) -> Batch:
        """Run every stage on ``batch``; per-stage wall times go to ``batch.info['timings']``,
        the pipeline configuration and model versions to ``batch.info`` (the batch's provenance)."""
        batch.info.update(self.provenance())
        timings = batch.info.setdefault("timings", {})
        for stage in self.stages:
            t0 = time.perf_counter()
            batch = stage(batch)
            timings[_stage_name(stage)] = timings.get(_stage_name(stage), 0.0) + time.perf_counter() - t0
        return batch
