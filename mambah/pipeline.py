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

from mambah.batch import Batch, concat_batches
from mambah.errors import ConfigurationError
from mambah.random import batch_seed

__all__ = ["Stage", "Pipeline", "CocktailPipeline", "production_batch", "batch_sizes"]

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


#: provenance keys of a channel's own batch that are not copied into the cocktail's channel record
#: (the cocktail records its pipeline, models and timings itself)
_NOT_PER_CHANNEL = ("pipeline", "models", "timings", "production", "production_index", "production_seed",
                    "pid_variations")


def _merge_variation_plans(plan: dict | None, other: dict, channel: int) -> dict:
    """The PID variation plan of a cocktail batch (``{members, steps, without_members}``, see
    :meth:`mambah.pid.stage.PID.variation_plan`) from its channels' plans: one K, the species'
    varied steps and the species without members of every channel."""
    if plan is None:
        return {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
                for k, v in other.items()}
    if plan["members"] != other["members"]:
        raise ConfigurationError(f"cocktail channel {channel}'s PID variations have K = {other['members']} members, "
                                 f"an earlier channel's {plan['members']}")
    steps = dict(plan["steps"])
    for sp, st in other["steps"].items():
        if steps.setdefault(sp, st) != st:
            raise ConfigurationError(f"cocktail channel {channel} varies the {sp} chain's steps {st}, an earlier "
                                     f"channel {steps[sp]}")
    return {"members": plan["members"], "steps": steps,
            "without_members": sorted(set(plan["without_members"]) | set(other["without_members"]))}


class CocktailPipeline(Pipeline):
    """Several decay channels in one production (a background cocktail), one pipeline per channel.

    Each batch is split among the channels by one multinomial draw from the batch's seed (stream
    ``"cocktail"``; :func:`mambah.generation.cocktail.split_events`); channel ``c``'s events are
    generated and reconstructed by its own pipeline as a batch of their own, with the same id and
    the seed :func:`mambah.generation.cocktail.channel_seed` (batch seed, ``c``); then the channels'
    tables are concatenated in channel order (:func:`mambah.batch.concat_batches`): the events of
    channel ``c`` are the contiguous block ``first_event .. first_event + n_events - 1`` of the
    batch, and its rows of every table a contiguous block whose batch-local references stay inside
    it. A channel that draws no events is not run.

    The batch's provenance (``batch.info["cocktail"]``, the ``config`` of its ``batches`` row) holds,
    per channel, its index, descriptor, rate, fraction and swaps, its events (``n_events``,
    ``first_event``), the first row of each of its tables (``first_mc_particle``,
    ``first_mc_vertex``, ``first_particle``, ``first_vertex``) and its own generator record
    (``decay_tree``, ``generator``, ``generator_acceptance``, ``mass_hypotheses``,
    ``reconstruction``...). :func:`mambah.batch.event_channels` gives the channel of every event from it; the
    candidate ntuple has a ``channel`` branch. The out-of-range counts of the models are summed
    over the channels into ``batch.info["reconstruction"]`` (as a one-channel batch has them).

    Args:
        channels: the channels' pipelines (e.g. :func:`mambah.simulation.standard_pipeline` each).
        fractions: their fractions of the events (normalised; see
            :func:`mambah.generation.cocktail.check_rates`).
        labels: per channel, what the provenance records of it (descriptor, rate, swaps: a
            :meth:`mambah.generation.cocktail.Channel.config`); default ``{}``.

    Raises:
        ConfigurationError: no channel, or as many fractions or labels as channels.
    """

    def __init__(self, channels, fractions, labels=None):
        from mambah.generation.cocktail import check_rates

        self.channels = list(channels)
        if not self.channels:
            raise ConfigurationError("a cocktail needs at least one channel")
        self.fractions = check_rates(list(fractions), len(self.channels))
        self.labels = [dict(x) for x in (labels if labels is not None else [{} for _ in self.channels])]
        if len(self.labels) != len(self.channels):
            raise ConfigurationError(f"{len(self.labels)} labels for {len(self.channels)} channels")
        super().__init__([])

    def config(self) -> dict[str, Any]:
        """``{"cocktail": {"channels": {"0": {descriptor, rate, fraction, reconstruct_as, pipeline}, ...}}}``
        (keyed by the channel's index, so that a difference on resume names the channel and field)."""
        return {"cocktail": {"channels": {str(c): {**lab, "fraction": f, "pipeline": p.config()}
                                          for c, (lab, f, p) in enumerate(zip(self.labels, self.fractions,
                                                                              self.channels))}}}

    def _merged(self, method: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for p in self.channels:
            out.update(getattr(p, method)())
        return out

    def provenance(self) -> dict[str, Any]:
        """As :meth:`Pipeline.provenance`; the channels' own are computed here too, so that a
        production computes every model hash once, before the pipeline is pickled to Dask workers."""
        for p in self.channels:
            p.provenance()
        return super().provenance()

    def process(self, batch: Batch) -> Batch:
        """Split the batch among the channels, run each channel's pipeline on its events, and
        concatenate their tables (see the class docstring)."""
        from mambah.generation.cocktail import channel_seed, split_events

        t_start = time.perf_counter()
        batch.info.update(self.provenance())
        timings = batch.info.setdefault("timings", {})
        counts = split_events(batch.n_events, self.fractions, batch.rng("cocktail"))
        parts, records = [], []
        for c, (pipe, n) in enumerate(zip(self.channels, counts)):
            rec: dict[str, Any] = {"channel": c, **self.labels[c], "fraction": self.fractions[c], "n_events": int(n)}
            records.append(rec)
            if n == 0:
                continue
            sub = pipe.process(Batch(id=batch.id, seed=channel_seed(batch.seed, c), n_events=int(n)))
            for k, v in sub.info.get("timings", {}).items():
                timings[k] = timings.get(k, 0.0) + v
            rec.update({k: v for k, v in sub.info.items() if k not in _NOT_PER_CHANNEL})
            if "pid_variations" in sub.info:  # the channels' PID plans: the same K, their species merged
                batch.info["pid_variations"] = _merge_variation_plans(batch.info.get("pid_variations"),
                                                                      sub.info["pid_variations"], c)
            parts.append((rec, sub))
        tables, offsets = concat_batches(batch.id, [sub for _, sub in parts])
        batch.tables.update(tables)
        empty = {"first_event": -1, "first_mc_particle": -1, "first_mc_vertex": -1, "first_particle": -1,
                 "first_vertex": -1}
        for rec in records:
            rec.update(empty)
        for (rec, _), off in zip(parts, offsets):
            rec.update({"first_event": off["events"], "first_mc_particle": off["mc_particles"],
                        "first_mc_vertex": off["mc_vertices"], "first_particle": off["particles"],
                        "first_vertex": off["vertices"]})
        batch.info["cocktail"] = {"channels": records, "n_events": [int(n) for n in counts]}
        out_of_range: dict[str, dict[str, list[int]]] = {}
        for rec, _ in parts:
            reco = rec.get("reconstruction")
            for stage, entry in (reco.items() if isinstance(reco, dict) else ()):
                counts_ = entry.get("out_of_range") if isinstance(entry, dict) else None
                for model, value in (counts_.items() if isinstance(counts_, dict) else ()):
                    t = out_of_range.setdefault(stage, {}).setdefault(model, [0, 0])
                    t[0] += int(value[0])
                    t[1] += int(value[1])
        if out_of_range:
            batch.info["reconstruction"] = {s: {"out_of_range": m} for s, m in out_of_range.items()}
        timings["cocktail"] = time.perf_counter() - t_start - sum(v for k, v in timings.items() if k != "cocktail")
        return batch
