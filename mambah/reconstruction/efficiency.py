"""Efficiency: which generated long-lived charged particles become reconstructed tracks.

Candidates are the rows of ``mc_particles`` of the species ``e, mu, pi, K, p`` (any charge sign)
that do not decay in the event (``decay_vertex == -1``). Each passes with the probability of the
efficiency network, evaluated on its true momentum and the position of its production vertex
(a Bernoulli draw from ``batch.rng(name)``). Survivors:

* get ``mc_particles.reconstructed = True`` (all other rows False);
* become rows of ``particles``: ``mc_particle`` (truth link), ``pid`` (the true PDG id),
  ``charge``, momentum (the true one until the :class:`~mambah.reconstruction.resolution.Resolution`
  stage smears it), ``m`` and ``e`` with the true species' PDG mass hypothesis, ``mother`` and
  ``vertex`` -1 (set by :class:`~mambah.reconstruction.composites.Composites`), PID columns NaN (set by the
  PID stage).

``model="reference"`` uses the reference detector's exact efficiency instead of a network (truth
productions and closure tests).

Candidates outside the network's training range are evaluated at the nearest edge of the range;
the model logs that once per process (:mod:`mambah.nn.tracking`; the rows are counted by the
model's :meth:`~mambah.nn.model.Model.check_range`), and every batch records
``{model: [candidates outside, candidates]}`` in
``batch.info["reconstruction"]["efficiency"]["out_of_range"]`` (kept with the batch's provenance
in the store); :func:`out_of_range_totals` sums them over the batches this process ran.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import numpy as np
import pandas as pd

from mambah.errors import ConfigurationError
from mambah.physics import SPECIES, pdg_charge, pdg_mass, species_index
from mambah.physics.columns import COLUMNS, PID_COLUMNS, brem_defaults, probnn_defaults, vertexing_defaults
from mambah.reconstruction._common import REFERENCE, OneModelStage, require_tables, rows_by_index

__all__ = ["Efficiency", "DEFAULT_EFFICIENCY", "track_rows", "out_of_range_totals"]

DEFAULT_EFFICIENCY = "efficiency-ref-v1"

# (production, model) -> [candidates outside the training range, candidates], this process
_RANGE: dict[tuple[str | None, str], list[int]] = {}
_RANGE_LOCK = threading.Lock()


def out_of_range_totals(production: str | None = None) -> dict[str, tuple[int, int]]:
    """``{model: (candidates outside its training range, candidates)}`` over the batches of
    ``production`` (``None``: batches run outside a production) that this process ran."""
    with _RANGE_LOCK:
        return {m: (v[0], v[1]) for (p, m), v in _RANGE.items() if p == production}


@dataclasses.dataclass(frozen=True)
class Efficiency(OneModelStage):
    """The tracking-efficiency stage.

    Args:
        model: model name under ``models/``, a model directory, or ``"reference"``.
        species: species to reconstruct (subset of e, mu, pi, K, p); each must be one the model
            was trained for.
        name: stage name (also the name of its random stream).
    """

    model: str = DEFAULT_EFFICIENCY
    species: tuple[str, ...] = SPECIES
    name: str = "efficiency"

    def __post_init__(self):
        object.__setattr__(self, "species", tuple(self.species))
        bad = [s for s in self.species if s not in SPECIES]
        if bad:
            raise ConfigurationError(f"Efficiency: unknown species {bad}; trackable species are {', '.join(SPECIES)}")

    def _probability(self, px, py, pz, x, y, z, pid, out_of_range: dict | None = None) -> np.ndarray:
        if self.model == REFERENCE:
            from mambah.reference.tracking import TrackingDetector

            return TrackingDetector().efficiency(px, py, pz, x, y, z, pid)
        from mambah.nn.registry import load_model

        m = load_model(self.model, kind="efficiency")
        missing = [s for s in self.species if s not in m.species]
        if missing:
            raise ConfigurationError(
                f"efficiency model {m.name!r} was trained for species {', '.join(m.species)}, not for "
                f"{', '.join(missing)}; pass species={tuple(s for s in self.species if s in m.species)!r} "
                "or a model trained for them"
            )
        counts: list = []
        prob = m.probability(px, py, pz, x, y, z, pid, counts=counts)
        if out_of_range is not None:
            out_of_range[m.name] = [counts[0].count, counts[0].n]
        return prob

    def __call__(self, batch):
        require_tables(batch, self.name, ("mc_particles", "mc_vertices"))
        if "particles" in batch and len(batch["particles"]):
            raise ConfigurationError(f"batch {batch.id} already has {len(batch['particles'])} reconstructed "
                                     f"particles; the {self.name!r} stage must run once, before Resolution")
        mc = batch["mc_particles"]
        vt = batch["mc_vertices"]
        pid = mc["pid"].to_numpy(np.int64)
        sp = species_index(pid)
        wanted = np.isin(sp, [SPECIES.index(s) for s in self.species])
        cand = np.nonzero(wanted & (mc["decay_vertex"].to_numpy() < 0))[0]
        pv = mc["prod_vertex"].to_numpy()[cand]
        if (pv < 0).any():
            raise ConfigurationError(f"batch {batch.id}: {int((pv < 0).sum())} final-state particles have no "
                                     "production vertex (mc_particles.prod_vertex == -1)")
        vrow = rows_by_index(vt, pv, "mc_particles.prod_vertex values")
        cols = {c: mc[c].to_numpy(np.float64)[cand] for c in ("px", "py", "pz")}
        org = {c: vt[c].to_numpy(np.float64)[vrow] for c in ("x", "y", "z")}
        out_of_range: dict[str, list[int]] = {}
        prob = self._probability(cols["px"], cols["py"], cols["pz"], org["x"], org["y"], org["z"], pid[cand],
                                 out_of_range)
        production = batch.info.get("production")
        with _RANGE_LOCK:
            for model, (bad, n) in out_of_range.items():
                tot = _RANGE.setdefault((production, model), [0, 0])
                tot[0] += bad
                tot[1] += n
        passed = batch.rng(self.name).random(len(cand)) < prob
        sel = cand[passed]
        reco = np.zeros(len(mc), dtype=bool)
        reco[sel] = True
        mc = mc.copy()
        mc["reconstructed"] = reco
        batch["mc_particles"] = mc
        batch["particles"] = track_rows(batch.id, mc, sel)
        info = batch.info.setdefault("reconstruction", {})
        info["efficiency"] = {"candidates": int(len(cand)), "reconstructed": int(len(sel))}
        if out_of_range:
            info["efficiency"]["out_of_range"] = out_of_range
        return batch


def track_rows(batch_id: int, mc: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    """``particles`` rows (true momentum, PDG mass hypothesis) for the ``mc_particles`` rows ``rows``."""
    n = len(rows)
    pid = mc["pid"].to_numpy(np.int64)[rows]
    px, py, pz = (mc[c].to_numpy(np.float64)[rows] for c in ("px", "py", "pz"))
    m = pdg_mass(pid) if n else np.zeros(0)
    data: dict[str, Any] = {
        "batch": np.full(n, batch_id, dtype=np.int64),
        "index": np.arange(n, dtype=np.int32),
        "event": mc["event"].to_numpy()[rows].astype(np.int32),
        "mc_particle": mc["index"].to_numpy()[rows].astype(np.int32),
        "pid": pid.astype(np.int32),
        "charge": (pdg_charge(pid) if n else np.zeros(0)).astype(np.int8),
        "px": px.astype(np.float64),
        "py": py.astype(np.float64),
        "pz": pz.astype(np.float64),
        "e": np.sqrt(px * px + py * py + pz * pz + m * m).astype(np.float64),
        "m": m.astype(np.float64),
        "mother": np.full(n, -1, dtype=np.int32),
        "vertex": np.full(n, -1, dtype=np.int32),
    }
    for c, dt in PID_COLUMNS.items():
        data[c] = np.full(n, np.nan, dtype=dt)
    data.update(vertexing_defaults("particles", n))
    data.update(brem_defaults("particles", n))
    data.update(probnn_defaults("particles", n))  # ProbNN: NaN until the PID stage draws it
    df = pd.DataFrame(data)
    return df[list(COLUMNS["particles"])]

