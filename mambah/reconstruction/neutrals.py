"""Neutrals: photons reconstructed in the calorimeter become rows of ``particles`` (opt-in).

``Neutrals(model="reference")`` gives every generated final-state photon the response of the
reference ECAL (:class:`mambah.reference.calorimeter.Calorimeter`: acceptance, efficiency,
sigma_E/E = 10 %/sqrt(E) (+) 1 %, position resolution); a reconstructed photon becomes a
``particles`` row (``pid`` 22, ``charge`` 0, ``m`` 0, momentum from the cluster: |p| = E_reco,
pointing from the photon's true origin to the measured cluster position, ``mc_particle`` its
truth, ``mother``/``vertex`` -1 until :class:`~mambah.reconstruction.Composites` attaches it) and
its ``mc_particles.reconstructed`` is set. Composites built with ``Composites(neutrals=(22,))``
then include photons: ``B0 -> (K*(892)0 -> K+ pi-) gamma`` gets its B0 mass back.

The two photons of a ``pi0 -> gamma gamma`` decay go through
:meth:`~mambah.reference.calorimeter.Calorimeter.pi0_response`: when they are resolved each
reconstructed one is a row as above; when they *merge* into one cluster (high-pT pi0) neither
photon gets a row, so the candidates above that pi0 are not built in that event, as in an
analysis that reconstructs resolved pi0 only. The merged ones are counted in
``batch.info["reconstruction"]["neutrals"]["merged_pi0"]`` (a merged-pi0 candidate is not
built yet). It must run after the charged tracks exist (after ``Resolution``) and before
``Composites``; the PID stage skips neutral rows.

Only ``model="reference"`` exists: no photon network has been trained yet (issue 25, second
part). The stage is therefore opt-in (``standard_pipeline(..., neutrals="reference")``,
``mambah simulate --neutrals reference``); without it a descriptor with a photon is refused.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np
import pandas as pd

from mambah.errors import ConfigurationError
from mambah.physics.columns import COLUMNS, PID_COLUMNS, brem_defaults, probnn_defaults, vertexing_defaults
from mambah.reconstruction._common import require_tables, rows_by_index

__all__ = ["Neutrals", "NEUTRAL_MODELS", "PHOTON_PID"]

#: The neutral-response models the stage knows.
NEUTRAL_MODELS: tuple[str, ...] = ("reference",)
#: |PDG id| of the photon (from the ``particle`` package).
PHOTON_PID: int = 22


@functools.lru_cache(maxsize=None)
def _pdgid(name: str) -> int:
    from mambah.generation.particles import resolve

    return abs(int(resolve(name).pid))


@dataclasses.dataclass(frozen=True)
class Neutrals:
    """Reconstruct final-state photons with the reference calorimeter (see the module docstring).

    Args:
        model: ``"reference"`` (the only one).
        name: stage name (also the name of its random stream).
    """

    model: str = "reference"
    name: str = "neutrals"

    def __post_init__(self):
        if self.model not in NEUTRAL_MODELS:
            raise ConfigurationError(f"Neutrals: unknown model {self.model!r}; known: {', '.join(NEUTRAL_MODELS)} "
                                     "(no photon network has been trained yet)")
        if _pdgid("gamma") != PHOTON_PID:  # pragma: no cover - a check of the constant against `particle`
            raise ConfigurationError("PHOTON_PID disagrees with the particle package")

    @property
    def pids(self) -> tuple[int, ...]:
        """|PDG id|s this stage gives rows to."""
        return (PHOTON_PID,)

    def config(self) -> dict[str, Any]:
        from mambah.reference.calorimeter import Calorimeter

        return {"model": self.model, "name": self.name, "calorimeter": Calorimeter().config()}

    def model_versions(self) -> dict[str, Any]:
        return {}

    def __call__(self, batch):
        from mambah.reference.calorimeter import Calorimeter

        require_tables(batch, self.name, ("mc_particles", "mc_vertices", "particles"))
        tree = batch.info.get("decay_tree")
        if not tree:
            raise ConfigurationError(f"stage {self.name!r} needs batch.info['decay_tree'] (set by PhaseSpaceDecay)")
        if "vertices" in batch and len(batch["vertices"]):
            raise ConfigurationError(f"stage {self.name!r} must run before Composites (batch {batch.id} has vertices)")
        n = batch.n_events
        mc, vt = batch["mc_particles"], batch["mc_vertices"]
        if len(mc) != len(tree) * n:
            raise ConfigurationError(f"batch {batch.id}: mc_particles is not in the particle-major layout of its tree")
        pi0 = _pdgid("pi0")
        photons = [k for k, nd in enumerate(tree) if nd["stable"] and abs(int(nd["pid"])) == PHOTON_PID]
        pairs = [k for k, nd in enumerate(tree) if not nd["stable"] and abs(int(nd["pid"])) == pi0
                 and len(nd["children"]) == 2 and all(int(c) in photons for c in nd["children"])]
        paired = {int(c) for k in pairs for c in tree[k]["children"]}
        single = [k for k in photons if k not in paired]
        rng = batch.rng(self.name)
        cal = Calorimeter()
        px, py, pz = (mc[c].to_numpy(np.float64) for c in ("px", "py", "pz"))
        vrow = rows_by_index(vt, mc["prod_vertex"].to_numpy(), "mc_particles.prod_vertex values")
        ox, oy, oz = (vt[c].to_numpy(np.float64)[vrow] for c in ("x", "y", "z"))
        ev = np.arange(n)
        found_slots, cols = [], {c: [] for c in ("px", "py", "pz", "e")}

        def keep(slots, r):
            ok = r["reconstructed"]
            found_slots.append(slots[ok])
            for c in cols:
                cols[c].append(r[c][ok])

        for k in single:
            s = k * n + ev
            keep(s, cal.photon_response(px[s], py[s], pz[s], ox[s], oy[s], oz[s], seed=rng))
        merged = 0
        for k in pairs:
            c1, c2 = (int(c) for c in tree[k]["children"])
            s1, s2 = c1 * n + ev, c2 * n + ev
            r = cal.pi0_response((px[s1], py[s1], pz[s1]), (px[s2], py[s2], pz[s2]), ox[s1], oy[s1], oz[s1], seed=rng)
            merged += int(r["merged"].sum())
            keep(s1, r["photons"][0])
            keep(s2, r["photons"][1])
        slots = np.concatenate(found_slots) if found_slots else np.zeros(0, dtype=np.int64)
        parts = batch["particles"]
        m = len(slots)
        data: dict[str, Any] = {
            "batch": np.full(m, batch.id, dtype=np.int64),
            "index": (len(parts) + np.arange(m)).astype(np.int32),
            "event": mc["event"].to_numpy()[slots].astype(np.int32),
            "mc_particle": mc["index"].to_numpy()[slots].astype(np.int32),
            "pid": mc["pid"].to_numpy()[slots].astype(np.int32),
            "charge": np.zeros(m, dtype=np.int8),
            **{c: (np.concatenate(v) if v else np.zeros(0)).astype(np.float64) for c, v in cols.items()},
            "m": np.zeros(m, dtype=np.float64),
            "mother": np.full(m, -1, dtype=np.int32),
            "vertex": np.full(m, -1, dtype=np.int32),
        }
        for c, dt in PID_COLUMNS.items():
            data[c] = np.full(m, np.nan, dtype=dt)
        data.update(vertexing_defaults("particles", m))  # photons: no track state, no vertex fit
        data.update(brem_defaults("particles", m))  # not a track: no brem flag
        data.update(probnn_defaults("particles", m))  # ProbNN: NaN until the PID stage draws it
        rows = pd.DataFrame(data)[list(COLUMNS["particles"])]
        batch["particles"] = pd.concat([parts, rows], ignore_index=True) if len(parts) else rows
        for c, d in COLUMNS["particles"].items():
            batch["particles"][c] = batch["particles"][c].astype(d)
        reco = mc["reconstructed"].to_numpy(copy=True)
        reco[slots] = True
        mc = mc.copy()
        mc["reconstructed"] = reco
        batch["mc_particles"] = mc
        batch.info.setdefault("reconstruction", {})[self.name] = {
            "photons": int(len(photons) * n), "reconstructed": int(m), "pi0": int(len(pairs) * n), "merged_pi0": merged}
        return batch
