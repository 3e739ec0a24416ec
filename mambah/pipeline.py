"""A pipeline: a list of stages run over batches, and the one definition of a production's batch i.

A stage is any callable ``stage(batch) -> batch`` (frozen dataclasses in mambah) with a ``name``
attribute; it may also offer ``config() -> dict`` (recorded in the batch's provenance) and
``model_versions() -> dict`` (name -> {version, hash}) and ``model_dirs() -> dict`` (name -> model
directory, registered in the store's ``models`` table by a production).

Batch ``i`` of a production seeded with ``seed`` whose first batch id is ``first_batch`` has the
id ``first_batch + i``, the seed ``batch_seed(seed, i)`` and ``batch_sizes(n_events,
batch_size)[i]`` events (:func:`production_batch`). The store records ``first_batch`` with the
production (:mod:`mambah.production`), so a stored batch is regenerated bit for bit from its id
(:func:`mambah.production.regenerate_batch`). :meth:`Pipeline.make_batch` and
:meth:`Pipeline.run` (in memory) use the same definition, with ``first_batch=0`` unless told.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from mambah.batch import Batch
from mambah.errors import ConfigurationError
from mambah.random import batch_seed

__all__ = ["Stage", "Pipeline", "production_batch", "batch_sizes"]

log = logging.getLogger(__name__)


def batch_sizes(n_events: int, batch_size: int) -> list[int]:
    """Events of each batch of a production of ``n_events`` in batches of ``batch_size``: full
    batches, the last one holding the remainder.

    Raises:
        ConfigurationError: ``n_events`` or ``batch_size`` is not positive.
    """
    if int(n_events) <= 0 or int(batch_size) <= 0:
        raise ConfigurationError(f"n_events and batch_size must be positive, got {n_events} and {batch_size}")
    n_events, batch_size = int(n_events), int(batch_size)
    n = math.ceil(n_events / batch_size)
    return [min(batch_size, n_events - i * batch_size) for i in range(n)]


def production_batch(index: int, production_seed: int, n_events: int, *, first_batch: int = 0,
                     production: str | None = None) -> Batch:
    """Batch ``index`` of a production, empty (the stages fill it): the one definition of "batch i".

    Args:
        index: position of the batch in its production (0, 1, ...).
        production_seed: the production's seed.
        n_events: events of this batch.
        first_batch: the global id of the production's batch 0 (a production appended to a store
            that holds batches already starts after them).
        production: the production's name; when given, ``batch.info`` records ``production``,
            ``production_index`` and ``production_seed`` (they go into the ``batches`` row).

    Returns:
        ``Batch(id=first_batch + index, seed=batch_seed(production_seed, index), n_events)``: the
        seed depends on the index in the production, not on the global id, so a production's
        content does not depend on what the store held before it.
    """
    b = Batch(id=int(first_batch) + int(index), seed=batch_seed(production_seed, index), n_events=int(n_events))
    if production is not None:
        b.info.update(production=production, production_index=int(index), production_seed=int(production_seed))
    return b


@runtime_checkable
class Stage(Protocol):
    name: str

    def __call__(self, batch: Batch) -> Batch: ...


def _stage_name(stage: Callable) -> str:
    return getattr(stage, "name", None) or type(stage).__name__


class Pipeline:
    """Stages applied in order to each batch.

    Args:
        stages: the stages, in order; their names must be unique (they name the stages' random
            streams).

    Raises:
        ConfigurationError: two stages share a name.

    Example:
        >>> from mambah import Pipeline, generator_stages                      # doctest: +SKIP
        >>> pipe = Pipeline(generator_stages("B+ -> (J/psi(1S) -> mu+ mu-) K+"))
        >>> batch = pipe.process(pipe.make_batch(0, production_seed=42, n_events=10_000))
        >>> batches = pipe.run(n_events=30_000, batch_size=10_000, seed=42)  # 3 batches, in memory

    Into an event store (resumable, on Dask if asked), run it as a production:
    ``mambah.run_production(pipe, n_events=..., batch_size=..., seed=42, store=Store())``.
    """

    def __init__(self, stages: Sequence[Callable[[Batch], Batch]]):
        self.stages = list(stages)
        names = [_stage_name(s) for s in self.stages]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ConfigurationError(f"stage names must be unique (they name the stages' random streams), "
                                     f"but {', '.join(sorted(dup))} appear more than once; give the stages "
                                     "distinct names (name=...)")
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

    def make_batch(self, index: int, production_seed: int, n_events: int, *, first_batch: int = 0) -> Batch:
        """Batch ``index`` of a production (empty; :meth:`process` fills it), as
        :func:`production_batch` defines it: id ``first_batch + index``, seed
        ``batch_seed(production_seed, index)``. With the default ``first_batch=0`` the id is the index."""
        return production_batch(index, production_seed, n_events, first_batch=first_batch)

    def run(self, *, n_events: int, batch_size: int, seed: int, first_batch: int = 0,
            production: str | None = None) -> list[Batch]:
        """Simulate ``n_events`` in batches of ``batch_size``, in memory, without a store.

        The batches are those a production with the same arguments writes into a store
        (:func:`mambah.production.run_production`; its first batch id is recorded in the store,
        pass it as ``first_batch`` to get the same ids): batch ``i`` has id ``first_batch + i``
        and seed ``batch_seed(seed, i)``. Every batch is kept in memory; for productions larger
        than memory, or to resume, run on Dask or keep the result, use ``run_production``.

        Returns:
            The processed batches, in order.

        Raises:
            ConfigurationError: ``n_events`` or ``batch_size`` is not positive.
        """
        return [self.process(production_batch(i, seed, size, first_batch=first_batch, production=production))
                for i, size in enumerate(batch_sizes(n_events, batch_size))]

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
