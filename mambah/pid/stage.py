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

**ProbNN** (issue 24): the tracks of a species whose models directory has ``pid-<s>-probnn`` also
get ``probnn_e, probnn_mu, probnn_pi, probnn_k, probnn_p, probnn_ghost`` (:data:`mambah.physics.columns.PROBNN_COLUMNS`,
ntuple ``X_ProbNNe`` ...), drawn by the chain's last step from the kinematics and the PID already
drawn; NaN for the other tracks. With variations they are drawn per ensemble member too (the
``probnn_*`` columns of ``pid_variations``, schema 6): the ProbNN step of member k reads member k's
DLLs and flags, and varies with its own members where it has them.

Conditions outside a model's training range are clamped to the range edges. The stage reports
them once per production and model, not once per step and batch as the models themselves would:
the chains return each step's counts as data (:meth:`PidChain.generate_columns
<mambah.pid.chain.PidChain.generate_columns>` with ``counts``, the models then stay quiet), and
the first batch of a production (``batch.info["production"]``) in which a model sees such rows
emits one structured :class:`~mambah.errors.OutOfRangeWarning` for it (fields ``model``,
``count``, ``n``, ``detail``, ``action``); every batch records ``{model: [rows outside, rows evaluated]}`` in
``batch.info["reconstruction"]["pid"]["out_of_range"]`` (kept with the batch's provenance in the
store), and :func:`out_of_range_totals` sums them over the batches this process ran.

**Uncalibrated rows.** The steps with a quantile calibration (``marginals.npz``, :mod:`mambah.nn.marginals`)
map their outputs per (P, ETA) bin and RICH-threshold state; where the calibration sample held too
little signal there is no map, and those tracks keep the network's own output (the README's main job:
2.9% of the pions with RICH information, almost all below 3 GeV/c; 0.07% of the protons). They are
reported the same way: one
:class:`~mambah.errors.UncalibratedWarning` per model and production, ``{model: [rows unmapped, rows
evaluated]}`` in ``batch.info["reconstruction"]["pid"]["uncalibrated"]`` for every calibrated model, and
:func:`uncalibrated_totals`.

**Rows outside the data's support.** A model with a support table (``support.npz``,
:mod:`mambah.nn.support`) knows the sWeighted signal its data held in cells of (log10 P, ETA); its
rows in cells with less than the table's ``min_weight`` are inside the training range condition by
condition but outside the data, and the network extrapolates there. They are generated all the same
and reported the same way: one :class:`~mambah.errors.OutOfSupportWarning` per model and
production, ``{model: [rows, rows evaluated]}`` in ``batch.info["reconstruction"]["pid"]["unsupported"]``
for every model with a support table, and :func:`unsupported_totals`.

**Variations** (``PID(variations=True)``, ``mambah simulate --pid-variations``): every track of a
species whose chain has ensemble members (``mambah train pid ... --ensemble K``) also gets its PID
columns once per member k = 1..K, drawn with the nominal's noise and flag uniforms
(:meth:`PidChain.generate_variations_columns <mambah.pid.chain.PidChain.generate_variations_columns>`:
member k of the chain is member k of every step that has members, the nominal model elsewhere),
in the batch table ``pid_variations`` (``batch, particle, member`` and the PID columns; one row per
track and member). The nominal columns of ``particles`` are exactly those of a production without
variations. Checked when the stage is built, before anything runs
(:meth:`PID.variation_plan`): at least one simulated chain must have members, and every step with
members, in every chain, must have the same K (:class:`~mambah.errors.ConfigurationError` naming
the chains and steps otherwise). Tracks of a species whose chain has no members get no
``pid_variations`` rows (their ``_var<k>`` ntuple branches are NaN); the plan (K, the steps that
vary, the species without members) is in the stage's config and in every batch's provenance
(``batch.info["pid_variations"]``), and the stage logs the species without members once.

Example:
    >>> from mambah.pid.stage import PID                       # doctest: +SKIP
    >>> batch = PID()(batch)                                     # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from mambah.errors import ConfigurationError, OutOfRangeWarning
from mambah.physics import SPECIES, SPECIES_PDG, p_eta
from mambah.reconstruction._common import as_config, require_tables, rows_by_index

__all__ = ["PID", "out_of_range_totals", "uncalibrated_totals", "unsupported_totals"]

log = logging.getLogger(__name__)
_WARNED: set = set()

# out-of-range bookkeeping of this process: (production, model) -> [rows outside, rows evaluated]
_RANGE: dict[tuple[str | None, str], list[int]] = {}
_RANGE_WARNED: set[tuple[str | None, str]] = set()
# rows the calibrated models left unmapped: (production, model) -> [rows unmapped, rows evaluated]
_UNCAL: dict[tuple[str | None, str], list[int]] = {}
_UNCAL_WARNED: set[tuple[str | None, str]] = set()
# rows in cells outside the models' data support: (production, model) -> [rows, rows evaluated]
_UNSUP: dict[tuple[str | None, str], list[int]] = {}
_UNSUP_WARNED: set[tuple[str | None, str]] = set()
_RANGE_LOCK = threading.Lock()


def out_of_range_totals(production: str | None = None) -> dict[str, tuple[int, int]]:
    """``{model: (rows outside its training range, rows evaluated)}`` over the batches of
    ``production`` (``None``: batches run outside a production) that the PID stages of this
    process ran."""
    with _RANGE_LOCK:
        return {m: (v[0], v[1]) for (p, m), v in _RANGE.items() if p == production}


def _add_counts(totals: dict, warned: set, production: str | None, counts: dict[str, tuple[int, int]]) -> list[str]:
    """Add ``{model: (rows, rows evaluated)}`` to the process ``totals`` of ``production``; the models
    with rows that ``warned`` does not hold yet (now added): those to warn about."""
    first = []
    with _RANGE_LOCK:
        for model, (bad, n) in counts.items():
            tot = totals.setdefault((production, model), [0, 0])
            tot[0] += bad
            tot[1] += n
            if bad and (production, model) not in warned:
                warned.add((production, model))
                first.append(model)
    return first


def uncalibrated_totals(production: str | None = None) -> dict[str, tuple[int, int]]:
    """``{model: (rows its quantile calibration left unmapped, rows evaluated)}`` of the calibrated
    models, over the batches of ``production`` (``None``: outside a production) that the PID stages of
    this process ran (:class:`~mambah.errors.UncalibratedWarning`)."""
    with _RANGE_LOCK:
        return {m: (v[0], v[1]) for (p, m), v in _UNCAL.items() if p == production}


def unsupported_totals(production: str | None = None) -> dict[str, tuple[int, int]]:
    """``{model: (rows in (P, ETA) cells outside its data support, rows evaluated)}`` of the models
    with a support table (:mod:`mambah.nn.support`), over the batches of ``production`` (``None``:
    outside a production) that the PID stages of this process ran
    (:class:`~mambah.errors.OutOfSupportWarning`)."""
    with _RANGE_LOCK:
        return {m: (v[0], v[1]) for (p, m), v in _UNSUP.items() if p == production}


@dataclasses.dataclass(frozen=True)
class PID:
    """The PID stage.

    Args:
        models_dir: directory of the ``pid-<species>-*`` models (default: the shipped ``models/``).
        species: species to simulate (``e``, ``mu``, ``pi``, ``K``, ``p``); each needs a complete chain.
        name: stage name (also the name of its random stream).
        threads: species evaluated concurrently (the result does not depend on it). Each chain keeps
            two compiled calls in flight and does its maps and bookkeeping in numpy between them; 3
            chains at once keep 2 cores busier than 2 (the five equal chains of ``benchmarks/pid.py``
            with ProbNN: 430k -> 462k tracks/s, the same CPU time, 2026-12-07).
        variations: also draw the PID columns once per ensemble member of the chains (the batch
            table ``pid_variations``; see the module docstring).
        probnn: also run the chains' optional ProbNN step (``pid-<species>-probnn``, issue 24: the
            ``probnn_*`` columns, ntuple ``X_ProbNNk`` ...; NaN without it). Off by default: the
            step is the chain's most expensive (about 2x the PID stage's time with the shipped
            steps), and most productions do not cut on ProbNN.

    Raises:
        ConfigurationError: at construction, when a requested species has no chain (the message
            lists the species that have one), or with ``variations`` when no chain has ensemble
            members or the steps with members have different K.
    """

    models_dir: str | None = None
    species: tuple[str, ...] = SPECIES
    name: str = "pid"
    threads: int = 3
    variations: bool = False
    probnn: bool = False

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
        if self.probnn and not any(st.role == "probnn" for s in self.species for st in self.chain_steps(s)):
            raise ConfigurationError(
                f"PID stage: ProbNN asked for, but no chain of {list(self.species)} has a ProbNN step (a model "
                f"pid-<species>-probnn in {self.models_dir or 'the shipped models'}); train one with "
                "examples/train_pid_chain.py --roles probnn, or simulate without --probnn")
        if self.variations:
            self.variation_plan()

    def config(self) -> dict[str, Any]:
        d = as_config(self)
        d["species"] = list(self.species)
        if self.variations:
            d["variations"] = self.variation_plan()
        else:  # (the config of a production without variations is what it always was)
            del d["variations"]
        if not self.probnn:  # likewise without ProbNN
            del d["probnn"]
        return d

    def chain_steps(self, species: str) -> list:
        """The steps of the chain of ``species`` this stage runs: the default chain
        (:func:`mambah.pid.chain.default_chain_steps`), without its ProbNN step unless :attr:`probnn`."""
        from mambah.pid.chain import default_chain_steps

        steps = default_chain_steps(species, self.models_dir)
        return steps if self.probnn else [st for st in steps if st.role != "probnn"]

    def variation_plan(self) -> dict[str, Any]:
        """What ``variations=True`` does, from the model cards (nothing is loaded): ``{"members": K,
        "steps": {species: {model: K}} (the steps that vary), "without_members": [species]}``.

        Raises:
            ConfigurationError: no chain of :attr:`species` has a step with ensemble members (names
                every chain's steps), or steps have different K (names them).
        """
        from mambah.pid.chain import _common_k, chain_members, default_chain_steps

        steps = {s: chain_members(s, self.models_dir, steps=self.chain_steps(s)) for s in self.species}
        with_members = {s: m for s, m in steps.items() if m}
        if not with_members:
            chains = "; ".join(f"{s}: {', '.join(Path(st.model).name for st in default_chain_steps(s, self.models_dir))}"
                               for s in self.species)
            raise ConfigurationError(
                f"PID variations asked for, but no step of the PID chains simulated here has ensemble members "
                f"({chains}; in {self.models_dir or 'the shipped models'}); train a step's members with "
                "mambah train pid ... --ensemble K, or simulate without --pid-variations")
        k = _common_k(", ".join(with_members), {f"{s}/{m}": k for s, ms in with_members.items() for m, k in ms.items()})
        return {"members": k, "steps": with_members,
                "without_members": [s for s in self.species if s not in with_members]}

    def chains(self) -> dict:
        """``species -> PidChain`` (loaded and checked once per process)."""
        from mambah.pid.chain import build_chain

        return {s: build_chain(s, self.chain_steps(s), self.models_dir) for s in self.species}

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
        from mambah.pid.chain import CHAIN_OUTPUTS, PROBNN_OUTPUTS

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
        out = {c: np.full(len(parts), np.nan, np.float32) for c in (*CHAIN_OUTPUTS.values(), *PROBNN_OUTPUTS.values())}
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

        plan = self.variation_plan() if self.variations else None
        varied = set(plan["steps"]) if plan else set()

        def run(job):
            s, sel, seed = job
            steps = {}
            inputs = {"P": p[sel], "ETA": eta[sel], "nTracks": ntr[sel], "charge": charge[sel]}
            if s in varied:  # the nominal (lane 0) is bit for bit generate_columns'
                lanes = chains[s].generate_variations_columns(inputs, np.random.default_rng(seed), counts=steps)
                return lanes[0], steps, lanes[1:]
            gen = chains[s].generate_columns(inputs, np.random.default_rng(seed), counts=steps)
            return gen, steps, []

        # the chains count each step's rows outside its training range (``counts``) and the models
        # stay quiet; the counts are reported once per model and production (_report)
        # numpy's BLAS single-threaded meanwhile (the surrogate ProbNN network's products): the chains'
        # threads and TensorFlow's keep the cores busy, and BLAS threads spinning beside them cost the
        # stage with ProbNN 11-26% of its speed (alternating runs of 500k tracks, 2 cores, 2026-12-07).
        # (process-wide while the stage runs: threadpoolctl restores the previous limit afterwards)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, user_api="blas"):
            if self.threads > 1 and len(todo) > 1:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(min(self.threads, len(todo))) as ex:
                    results = list(ex.map(run, todo))
            else:
                results = [run(j) for j in todo]
        step_counts: dict = {}
        for _, steps, _ in results:
            step_counts.update(steps)
        out_of_range = self._report(step_counts, batch)
        from mambah.pid.chain import _model_name

        models = {_model_name(m, step): m for c in chains.values() for step, m in zip(c.steps, c.models)}
        uncalibrated = self._report_field(step_counts, batch, models, "uncalibrated")
        unsupported = self._report_field(step_counts, batch, models, "unsupported")
        for (s, sel, _), (gen, _, _) in zip(todo, results):
            for col, store_col in CHAIN_OUTPUTS.items():
                out[store_col][track[sel]] = gen[col]
            for col, store_col in PROBNN_OUTPUTS.items():  # chains with a probnn step (NaN elsewhere)
                if col in gen:
                    out[store_col][track[sel]] = gen[col]
        if plan is not None:
            batch["pid_variations"] = self._variations_table(batch.id, parts["index"].to_numpy(), track, todo, results,
                                                             plan["members"])
            batch.info["pid_variations"] = plan
            self._log_without_members(plan)
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
                                                               "out_of_range": out_of_range,
                                                               "uncalibrated": uncalibrated,
                                                               "unsupported": unsupported}
        return batch

    @staticmethod
    def _variations_table(batch_id: int, index: np.ndarray, track: np.ndarray, todo: list, results: list, k: int):
        """The ``pid_variations`` rows: for every track of a varied species and member 1..K, the
        PID columns; sorted by (particle, member)."""
        import pandas as pd

        from mambah.physics import COLUMNS
        from mambah.pid.chain import CHAIN_OUTPUTS, PROBNN_OUTPUTS

        rows = [(track[sel], lanes) for (_, sel, _), (_, _, lanes) in zip(todo, results) if lanes]
        tracks = np.concatenate([index[t] for t, _ in rows] or [np.empty(0, np.int64)])
        order = np.argsort(tracks, kind="stable")  # (particle, member) order: a track's K rows together
        n = len(tracks)
        table = {"batch": np.full(n * k, batch_id), "particle": np.repeat(tracks[order], k),
                 "member": np.tile(np.arange(1, k + 1), n)}

        def member_values(lanes, col, n_rows):  # (rows, K); NaN where the chain lacks the column (ProbNN)
            if col not in lanes[0]:
                return np.full((n_rows, k), np.nan, np.float32)
            return np.stack([lane[col] for lane in lanes], axis=1)

        for col, store_col in (*CHAIN_OUTPUTS.items(), *PROBNN_OUTPUTS.items()):
            v = np.concatenate([member_values(lanes, col, len(t)) for t, lanes in rows]
                               or [np.empty((0, k), np.float32)])
            table[store_col] = v[order].reshape(-1)
        dtypes = COLUMNS["pid_variations"]
        return pd.DataFrame({c: table[c].astype(d, copy=False) for c, d in dtypes.items()})

    @staticmethod
    def _log_without_members(plan: dict) -> None:
        key = ("pid_variations", tuple(plan["without_members"]))
        if plan["without_members"] and key not in _WARNED:
            _WARNED.add(key)
            log.warning("PID variations: the chains of %s have no ensemble members; their tracks get no pid_variations "
                        "rows (NaN _var<k> ntuple branches). Varied steps (K = %d): %s", plan["without_members"],
                        plan["members"], plan["steps"])

    @staticmethod
    def _report(step_counts: dict, batch) -> dict[str, list[int]]:
        """Add this batch's out-of-range counts (``{model: RangeCounts}``) to the production's, and
        warn (:class:`~mambah.errors.OutOfRangeWarning`, with its fields) for the models that see
        out-of-range rows for the first time in the production."""
        production = batch.info.get("production")
        first = _add_counts(_RANGE, _RANGE_WARNED, production, {m: (c.count, c.n) for m, c in step_counts.items()})
        where = f"production {production!r}" if production is not None else "this process"
        for model in first:
            c = step_counts[model]
            action = "clamped to the range edges"
            warnings.warn(OutOfRangeWarning(
                f"PID model {model!r}: {c.count} of {c.n} tracks ({100 * c.fraction:.3g}%) of batch {batch.id} have "
                f"conditions outside its training range ({c.text}); they are {action} (reported once per "
                f"model in {where}; every batch's counts are in its provenance, reconstruction.pid.out_of_range)",
                model=model, count=c.count, n=c.n, detail=c.detail, action=action), stacklevel=3)
        return {model: [c.count, c.n] for model, c in step_counts.items()}

    @staticmethod
    def _report_field(step_counts: dict, batch, models: dict, field: str) -> dict[str, list[int]]:
        """The rows a ``RangeCounts`` field counts: ``"uncalibrated"`` (the calibrated models' rows left
        unmapped, :class:`~mambah.errors.UncalibratedWarning`) or ``"unsupported"`` (rows outside the
        models' data support, :class:`~mambah.errors.OutOfSupportWarning`). Added to the production's,
        one warning per model the first time in the production that it has such rows; returns
        ``{model: [rows, rows evaluated]}`` for the models that count them (the batch's provenance)."""
        totals, warned, make = {"uncalibrated": (_UNCAL, _UNCAL_WARNED, "uncalibrated_warning"),
                                "unsupported": (_UNSUP, _UNSUP_WARNED, "support_warning")}[field]
        production = batch.info.get("production")
        counts = {m: (getattr(c, field), c.n) for m, c in step_counts.items() if getattr(c, field) is not None}
        first = _add_counts(totals, warned, production, counts)
        where = f"production {production!r}" if production is not None else "this process"
        for model in first:
            c = step_counts[model]
            w = getattr(models[model], make)(getattr(c, field), c.n, f" of batch {batch.id}")
            warnings.warn(type(w)(f"PID {w} (reported once per model in {where}; every batch's counts are in its "
                                  f"provenance, reconstruction.pid.{field})", model=w.model, count=w.count,
                                  n=w.n, action=w.action), stacklevel=3)
        return {model: list(v) for model, v in counts.items()}
