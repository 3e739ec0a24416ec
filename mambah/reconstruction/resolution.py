"""Resolution: reconstructed momenta of the tracks.

For every track row of ``particles`` (``vertex == -1`` and a truth link), the reconstructed
momentum is drawn from the resolution network conditioned on the true momentum of its MC
particle (so running the stage twice redraws rather than smears twice); ``e`` is recomputed
with the row's mass hypothesis ``m``. Randomness from ``batch.rng(name)``.

``model="reference"`` uses the reference detector's exact smearing instead of a network.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mambah.errors import ConfigurationError
from mambah.reconstruction._common import REFERENCE, OneModelStage, require_tables, rows_by_index

__all__ = ["Resolution", "DEFAULT_RESOLUTION"]

DEFAULT_RESOLUTION = "resolution-ref-v1"


@dataclasses.dataclass(frozen=True)
class Resolution(OneModelStage):
    """The momentum-resolution stage.

    Args:
        model: model name under ``models/``, a model directory, or ``"reference"``.
        name: stage name (also the name of its random stream).
    """

    model: str = DEFAULT_RESOLUTION
    name: str = "resolution"

    def smear(self, px, py, pz, pid, rng, out_of_range: dict | None = None):
        """Reconstructed (px, py, pz) [MeV/c] for true momenta, with this stage's model.

        ``out_of_range``, when given, receives ``{model name: [tracks outside its training
        range, tracks]}`` (the network evaluates those at the nearest edge of its range)."""
        if self.model == REFERENCE:
            from mambah.reference.tracking import TrackingDetector

            return TrackingDetector().smear(px, py, pz, pid, rng)
        from mambah.nn.registry import load_model

        m = load_model(self.model, kind="resolution")
        counts: list = []
        out = m.sample(px, py, pz, pid, rng, counts=counts)
        if out_of_range is not None:
            out_of_range[m.name] = [counts[0].count, counts[0].n]
        return out

    def __call__(self, batch):
        require_tables(batch, self.name, ("mc_particles",))
        if "particles" not in batch:
            raise ConfigurationError(f"stage {self.name!r} needs the particles table; run Efficiency first")
        parts = batch["particles"].copy()
        mc = batch["mc_particles"]
        track = np.nonzero((parts["vertex"].to_numpy() < 0) & (parts["mc_particle"].to_numpy() >= 0))[0]
        rows = rows_by_index(mc, parts["mc_particle"].to_numpy()[track], "particles.mc_particle values")
        px, py, pz = (mc[c].to_numpy(np.float64)[rows] for c in ("px", "py", "pz"))
        pid = mc["pid"].to_numpy(np.int64)[rows]
        out_of_range: dict[str, list[int]] = {}
        rx, ry, rz = self.smear(px, py, pz, pid, batch.rng(self.name), out_of_range)
        m = parts["m"].to_numpy(np.float64)[track]
        for c, v in (("px", rx), ("py", ry), ("pz", rz), ("e", np.sqrt(rx * rx + ry * ry + rz * rz + m * m))):
            col = parts[c].to_numpy(np.float64, copy=True)
            col[track] = v
            parts[c] = col
        batch["particles"] = parts
        info = batch.info.setdefault("reconstruction", {})["resolution"] = {"tracks": int(len(track))}
        if out_of_range:
            info["out_of_range"] = out_of_range
        return batch
