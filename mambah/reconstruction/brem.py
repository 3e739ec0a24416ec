"""Bremsstrahlung: electron tracks lose momentum before the magnet, brem recovery adds some back (opt-in).

``Bremsstrahlung(model="reference")`` applies the reference detector's bremsstrahlung and brem
recovery (:class:`mambah.reference.brem.BremDetector`: a documented X/X0 profile before the
magnet, the Bethe-Heitler law per layer, recovery of the emitted photons found in the ECAL with
an efficiency and the ECAL energy resolution) to every reconstructed electron and positron track
(a ``particles`` row with ``vertex == -1`` whose MC truth has |PDG id| 11; the *true* species
radiates, whatever mass hypothesis the track carries). For each such track, with the brem drawn
from its true momentum and origin vertex::

    p_reco  <-  kept * p_reco + E_added * p_reco / |p_reco|

where ``p_reco`` is the momentum the Resolution stage measured, ``kept`` the fraction of the
electron's momentum left at the magnet (the momentum measurement sees only that; the tracking
resolution is a relative one, so scaling the measured momentum is the measurement of the reduced
one to that order) and ``E_added`` the measured energy of the recovered photons, added along the
track (collinear emission). ``e`` is recomputed with the row's mass hypothesis. Other rows keep
every value bit for bit.

``particles.has_brem_added`` (LHCb's ``HASBREMADDED``; ntuple ``X_HASBREMADDED``): 1 where
recovery added at least one photon, 0 for the other electron tracks and for every other track;
-1 (:data:`mambah.physics.columns.BREM_NOT_COMPUTED`) where this stage did not run, and for
composites and neutral rows. ``recovery=False`` keeps the loss and adds nothing back (every flag
0): the same random draws as with recovery, so the two productions of one seed differ only by the
added photons. Counts in ``batch.info["reconstruction"][name]``: ``tracks``, ``electrons``,
``with_brem_added``.

It runs after ``Resolution`` and before ``Neutrals``/``Composites`` (refused after the composites
exist, and refused twice on one batch: the electrons would radiate twice). Randomness from
``batch.rng(name)``. ``standard_pipeline(..., brem="reference")``, ``mambah simulate --brem reference``.

``model="model"`` (``--brem model``: the shipped :data:`DEFAULT_BREM_MODEL`) or the name or
directory of a trained brem model (card kind ``"brem"``, :class:`mambah.nn.calo.BremModel`, trained
by ``mambah train brem`` on reference samples) draws instead, per electron track, the
HASBREMADDED flag and the response ``s = p_after_recovery / p_true`` from the networks, conditioned
on the electron's true momentum and origin z, and scales the measured momentum by ``s``
(``recovery=False`` is refused with a network: it learned the response after recovery).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from mambah.errors import ConfigurationError
from mambah.physics import SPECIES_PDG
from mambah.physics.columns import BREM_NOT_COMPUTED
from mambah.reconstruction._common import ReferenceOrModelStage, require_tables, rows_by_index

__all__ = ["Bremsstrahlung", "BREM_MODELS", "DEFAULT_BREM_MODEL", "ELECTRON_PID"]

#: The brem models the stage knows by keyword (any other value is a brem model's name or directory).
BREM_MODELS: tuple[str, ...] = ("reference", "model")
#: The shipped brem network ``model="model"`` stands for.
DEFAULT_BREM_MODEL = "brem-e-ref-v1"
#: |PDG id| of the electron (from the ``particle`` package, :data:`mambah.physics.SPECIES_PDG`).
ELECTRON_PID: int = SPECIES_PDG["e"]


@dataclasses.dataclass(frozen=True)
class Bremsstrahlung(ReferenceOrModelStage):
    """Bremsstrahlung and brem recovery of the electron tracks (see the module docstring).

    Args:
        model: ``"reference"``, ``"model"`` (the shipped :data:`DEFAULT_BREM_MODEL`) or a brem
            model's name under ``models/`` or directory.
        recovery: add the recovered photons back (default); ``False``: the loss only.
        name: stage name (also the name of its random stream).
    """

    model: str = "reference"
    recovery: bool = True
    name: str = "brem"

    def __post_init__(self):
        if not isinstance(self.recovery, bool):
            raise ConfigurationError(f"Bremsstrahlung: recovery must be True or False, got {self.recovery!r}")
        self.check_model("Bremsstrahlung", "brem", BREM_MODELS)
        if self.model != "reference":
            if not self.recovery:
                raise ConfigurationError("Bremsstrahlung: recovery=False needs model='reference' (a brem network "
                                         "learned the response after recovery)")

    @property
    def model_dir(self) -> str:
        """The brem model's name or directory (``"model"`` resolved to :data:`DEFAULT_BREM_MODEL`)."""
        return DEFAULT_BREM_MODEL if self.model == "model" else self.model

    def config(self) -> dict[str, Any]:
        if self.model != "reference":
            return {"model": self.model, "recovery": self.recovery, "name": self.name}
        from mambah.reference.brem import BremDetector

        detector = json.loads(json.dumps(BremDetector().config(), default=str))
        return {"model": self.model, "recovery": self.recovery, "name": self.name, "detector": detector}

    def __call__(self, batch):
        from mambah.reference.brem import BremDetector

        require_tables(batch, self.name, ("mc_particles", "mc_vertices", "particles"))
        if "vertices" in batch and len(batch["vertices"]):
            raise ConfigurationError(f"stage {self.name!r} must run before Composites (batch {batch.id} has vertices)")
        parts = batch["particles"]
        mc, vt = batch["mc_particles"], batch["mc_vertices"]
        track = np.flatnonzero((parts["vertex"].to_numpy() < 0) & (parts["mc_particle"].to_numpy() >= 0)
                               & (parts["charge"].to_numpy() != 0))
        flag = parts["has_brem_added"].to_numpy(np.int8, copy=True)
        if (flag[track] != BREM_NOT_COMPUTED).any():
            raise ConfigurationError(f"stage {self.name!r}: batch {batch.id} has brem applied already (has_brem_added "
                                     "set); the electrons would radiate twice")
        rows = rows_by_index(mc, parts["mc_particle"].to_numpy()[track], "particles.mc_particle values")
        ele = np.abs(mc["pid"].to_numpy(np.int64)[rows]) == ELECTRON_PID
        et, erow = track[ele], rows[ele]
        px, py, pz = (mc[c].to_numpy(np.float64)[erow] for c in ("px", "py", "pz"))
        vrow = rows_by_index(vt, mc["prod_vertex"].to_numpy()[erow], "mc_particles.prod_vertex values")
        ox, oy, oz = (vt[c].to_numpy(np.float64)[vrow] for c in ("x", "y", "z"))
        parts = parts.copy()
        rx, ry, rz = (parts[c].to_numpy(np.float64)[et] for c in ("px", "py", "pz"))
        out_of_range = None
        if self.model == "reference":
            r = BremDetector().response(px, py, pz, ox, oy, oz, seed=batch.rng(self.name))
            added = r["brem_e_added"] if self.recovery else np.zeros(len(et))
            has = r["has_brem_added"] if self.recovery else np.zeros(len(et), dtype=bool)
            p = np.sqrt(rx * rx + ry * ry + rz * rz)
            with np.errstate(divide="ignore", invalid="ignore"):
                scale = r["kept"] + np.where(p > 0, added / p, 0.0)
        else:
            from mambah.nn.registry import load_model

            net = load_model(self.model_dir, kind="brem")
            counts: list = []
            has, scale = net.sample(px, py, pz, oz, seed=batch.rng(self.name), counts=counts)
            if counts and counts[0].count:
                out_of_range = {net.name: [counts[0].count, counts[0].n]}
        m = parts["m"].to_numpy(np.float64)[et]
        nx, ny, nz = rx * scale, ry * scale, rz * scale
        for c, v in (("px", nx), ("py", ny), ("pz", nz), ("e", np.sqrt(nx * nx + ny * ny + nz * nz + m * m))):
            col = parts[c].to_numpy(np.float64, copy=True)
            col[et] = v
            parts[c] = col
        flag[track] = 0
        flag[et] = has.astype(np.int8)
        parts["has_brem_added"] = flag
        batch["particles"] = parts
        info = batch.info.setdefault("reconstruction", {})[self.name] = {
            "tracks": int(len(track)), "electrons": int(len(et)), "with_brem_added": int(has.sum())}
        if out_of_range:
            info["out_of_range"] = out_of_range
        return batch
