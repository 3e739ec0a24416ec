"""PID: the particle-identification variables of reconstructed tracks from chained PID models.

Every track row of ``particles`` (``vertex == -1`` and a truth link) gets the PID columns of
:data:`mambah.physics.PID_COLUMNS` from the chain of its *true* species (``|pid|`` of its MC
particle; see :mod:`mambah.pid.chain`), evaluated per species on all its tracks at once. The
conditions are the reconstructed momentum ``p = |p|`` [MeV/c], the pseudorapidity
``eta = asinh(pz / pT)`` (:func:`mambah.physics.p_eta`), the event's ``n_tracks`` (``events`` table) and the charge.
Missing information is NaN, as the reference detector writes it (RICH DLLs outside the RICH
acceptance, muon likelihoods of non-IsMuon tracks). Tracks of species without a chain (e.g.
deuterons) keep NaN, with one logged warning per process (:func:`mambah.simulation.standard_pipeline`
refuses such descriptors when it builds the chain). Randomness from ``batch.rng(name)``.

Conditions outside a model's training range are clamped to the range edges. The stage reports
them once per production and model, not once per step and batch as the models themselves would:
the chains return each step's counts as data (:meth:`PidChain.generate_columns
<mambah.pid.chain.PidChain.generate_columns>` with ``counts``, the models then stay quiet), and
the first batch of a production (``batch.info["production"]``) in which a model sees such rows
emits one structured :class:`~mambah.errors.OutOfRangeWarning` for it (fields ``model``,
``count``, ``n``, ``detail``, ``action``); every batch records ``{model: [rows outside, rows evaluated]}`` in
``batch.info["reconstruction"]["pid"]["out_of_range"]`` (kept with the batch's provenance in the
store), and :func:`out_of_range_totals` sums them over the batches this process ran.

Example:
    >>> from mambah.pid.stage import PID                       # doctest: +SKIP
    >>> batch = PID()(batch)                                     # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import warnings
from typing import Any

import numpy as np

from mambah.errors import ConfigurationError, OutOfRangeWarning
from mambah.physics import SPECIES, SPECIES_PDG, p_eta
from mambah.reconstruction._common import as_config, require_tables, rows_by_index

__all__ = ["PID", "out_of_range_totals"]

log = logging.getLogger(__name__)
_WARNED: set = set()

# out-of-range bookkeeping of this process: (production, model) -> [rows outside, rows evaluated]
_RANGE: dict[tuple[str | None, str], list[int]] = {}
_RANGE_WARNED: set[tuple[str | None, str]] = set()
_RANGE_LOCK = threading.Lock()


def out_of_range_totals(production: str | None = None) -> dict[str, tuple[int, int]]:
    """``{model: (rows outside its training range, rows evaluated)}`` over the batches of
    ``production`` (``None``: batches run outside a production) that the PID stages of this
    process ran."""
    with _RANGE_LOCK:
        return {m: (v[0], v[1]) for (p, m), v in _RANGE.items() if p == production}


@dataclasses.dataclass(frozen=True)
class PID:
    """The PID stage.

    Args:
        models_dir: directory of the ``pid-<species>-*`` models (default: the shipped ``models/``).
        species: species to simulate (``e``, ``mu``, ``pi``, ``K``, ``p``); each needs a complete chain.
        name: stage name (also the name of its random stream).
        threads: species evaluated concurrently (the result does not depend on it).

    Raises:
        ConfigurationError: at construction, when a requested species has no chain (the message
            lists the species that have one).
    """

    models_dir: str | None = None
    species: tuple[str, ...] = SPECIES
    name: str = "pid"
    threads: int = 2

    def __post_init__(self):
        from mambah.pid.chain import available_chains

        object.__setattr__(self, "species", tuple(self.species))
        if self.models_dir is not None:
            object.__setattr__(self, "models_dir", str(self.models_dir))
        unknown = [s for s in self.species if s not in SPECIES_PDG]
        if unknown:
            raise ConfigurationError(f"PID stage: unknown species {unknown}; known: {list(SPECIES_PDG)}")
        avail = available_chains(self.models_dir)
        missing = [s for s in self.species if s not in avail]
        if missing:
            raise ConfigurationError(
                f"PID stage: no PID model chain for species {missing} in "
                f"{self.models_dir or 'the shipped models'}; available: {', '.join(avail) or 'none'} "
                "(train one with examples/train_pid_chain.py, or pass species=...)")

    def config(self) -> dict[str, Any]:
        d = as_config(self)
        d["species"] = list(self.species)
        return d

    def chains(self) -> dict:
        """``species -> PidChain`` (loaded and checked once per process)."""
        from mambah.pid.chain import build_chain

        return {s: build_chain(s, None, self.models_dir) for s in self.species}

    def model_versions(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for chain in self.chains().values():
            out.update(chain.model_versions())
        return out

    def model_dirs(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for chain in self.chains().values():
            out.update(chain.model_dirs())
        return out

    def __call__(self, batch):
        from mambah.pid.chain import CHAIN_OUTPUTS

        require_tables(batch, self.name, ("mc_particles", "events"))
        if "particles" not in batch:
            raise ConfigurationError(f"stage {self.name!r} needs the particles table; run Efficiency first")
        parts = batch["particles"].copy()
        mc, ev = batch["mc_particles"], batch["events"]
        # charged tracks only: the neutral rows of a Neutrals stage (photons) have no PID chain
        track = np.nonzero((parts["vertex"].to_numpy() < 0) & (parts["mc_particle"].to_numpy() >= 0)
                           & (parts["charge"].to_numpy() != 0))[0]
        rows = rows_by_index(mc, parts["mc_particle"].to_numpy()[track], "particles.mc_particle values")
        apid = np.abs(mc["pid"].to_numpy(np.int64)[rows])
        px, py, pz = (parts[c].to_numpy(np.float64)[track] for c in ("px", "py", "pz"))
        p, eta = p_eta(px, py, pz)
        evt = ev["event"].to_numpy(np.int64)
        order = np.argsort(evt, kind="stable")
        tev = parts["event"].to_numpy(np.int64)[track]
        j = np.clip(np.searchsorted(evt, tev, sorter=order), 0, max(len(evt) - 1, 0))
        erow = order[j] if len(evt) else j
        if len(track) and (not len(evt) or np.any(evt[erow] != tev)):
            raise ConfigurationError(f"stage {self.name!r}: some tracks belong to events missing from the events table")
        ntr = ev["n_tracks"].to_numpy(np.float64)[erow]
        charge = parts["charge"].to_numpy(np.float64)[track]
        out = {c: np.full(len(parts), np.nan, np.float32) for c in CHAIN_OUTPUTS.values()}
        # one independent stream per species (drawn in a fixed order), so that the species can run
        # concurrently (numpy and TensorFlow release the GIL) and the result does not depend on it
        seeds = batch.rng(self.name).integers(0, 2**63 - 1, size=len(self.species))
        chains = self.chains()
        counts = {}
        todo = []
        for s, seed in zip(self.species, seeds):
            sel = np.nonzero(apid == SPECIES_PDG[s])[0]
            counts[s] = int(len(sel))
            if len(sel):
                todo.append((s, sel, int(seed)))

        def run(job):
            s, sel, seed = job
            steps = {}
            gen = chains[s].generate_columns({"P": p[sel], "ETA": eta[sel], "nTracks": ntr[sel], "charge": charge[sel]},
                                             np.random.default_rng(seed), counts=steps)
            return gen, steps

        # the chains count each step's rows outside its training range (``counts``) and the models
        # stay quiet; the counts are reported once per model and production (_report)
        if self.threads > 1 and len(todo) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(self.threads, len(todo))) as ex:
                results = list(ex.map(run, todo))
        else:
            results = [run(j) for j in todo]
        step_counts: dict = {}
        for _, steps in results:
            step_counts.update(steps)
        out_of_range = self._report(step_counts, batch)
        for (s, sel, _), (gen, _) in zip(todo, results):
            for col, store_col in CHAIN_OUTPUTS.items():
                out[store_col][track[sel]] = gen[col]
        known = np.isin(apid, [SPECIES_PDG[s] for s in self.species])
        if not known.all():
            other = sorted(set(apid[~known].tolist()))
            new = [o for o in other if o not in _WARNED]
            if new:
                _WARNED.update(new)
                log.warning("PID stage: %d tracks with true |pid| %s have no PID chain (simulated: %s); their PID "
                            "columns stay NaN", int((~known).sum()), other, list(self.species))
        for c, v in out.items():
            parts[c] = v
        batch["particles"] = parts
        batch.info.setdefault("reconstruction", {})["pid"] = {"tracks": counts, "no_chain": int((~known).sum()),
                                                               "out_of_range": out_of_range}
        return batch

    @staticmethod
    def _report(step_counts: dict, batch) -> dict[str, list[int]]:
        """Add this batch's out-of-range counts (``{model: RangeCounts}``) to the production's, and
        warn (:class:`~mambah.errors.OutOfRangeWarning`, with its fields) for the models that see
        out-of-range rows for the first time in the production."""
        production = batch.info.get("production")
        first = []
        with _RANGE_LOCK:
            for model, c in step_counts.items():
                tot = _RANGE.setdefault((production, model), [0, 0])
                tot[0] += c.count
                tot[1] += c.n
                if c.count and (production, model) not in _RANGE_WARNED:
                    _RANGE_WARNED.add((production, model))
                    first.append((model, c))
        where = f"production {production!r}" if production is not None else "this process"
        for model, c in first:
            action = "clamped to the range edges"
            warnings.warn(OutOfRangeWarning(
                f"PID model {model!r}: {c.count} of {c.n} tracks ({100 * c.fraction:.3g}%) of batch {batch.id} have "
                f"conditions outside its training range ({c.text}); they are {action} (reported once per "
                f"model in {where}; every batch's counts are in its provenance, reconstruction.pid.out_of_range)",
                model=model, count=c.count, n=c.n, detail=c.detail, action=action), stacklevel=3)
        return {model: [c.count, c.n] for model, c in step_counts.items()}
