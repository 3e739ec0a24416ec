"""Resolution: reconstructed momenta of the tracks.

For every track row of ``particles`` (``vertex == -1`` and a truth link), the reconstructed
momentum is drawn from the resolution network conditioned on the true momentum of its MC
particle (so running the stage twice redraws rather than smears twice); ``e`` is recomputed
with the row's mass hypothesis ``m``. Randomness from ``batch.rng(name)``.

``model="reference"`` uses the reference detector's exact smearing instead of a network.

The resolution models describe **long tracks**. Upstream and downstream tracks (``particles.track_type``
4 and 5, kept with ``Efficiency(track_types=...)``) have a worse momentum resolution (an upstream
track's momentum comes from the VELO-UT kick only, about 30 times a long track's; a downstream
track has no VELO point): their relative momentum residual ``p_reco / p_true - 1`` is scaled by
``sigma(q/p | type) / sigma(q/p | long)`` at the same true momentum, direction and origin, taken from
the track states: the reference detector's (:class:`~mambah.reference.trackstates.TrackStateModel`,
its ``upstream_p_scale`` and ``downstream_p_scale``) in reference mode, and the track-state network
(``types_model``, default ``trackstate-ref-v1``, learned from it) otherwise. The batch's
``reconstruction.resolution`` record counts them (``upstream``, ``downstream``) and names the source.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mambah.errors import ConfigurationError
from mambah.reconstruction._common import (REFERENCE, OneModelStage, model_dir_entry, model_version_entry,
                                          require_tables, rows_by_index)

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
    types_model: str = "trackstate-ref-v1"

    def model_versions(self):
        out = super().model_versions()
        if self.model != REFERENCE:
            out.update(model_version_entry(self.types_model))
        return out

    def model_dirs(self):
        out = super().model_dirs()
        if self.model != REFERENCE:
            out.update(model_dir_entry(self.types_model))
        return out

    def type_scale(self, px, py, pz, x, y, z, pid, track_type) -> np.ndarray:
        """sigma(q/p | type) / sigma(q/p | long) of tracks (1 for long tracks); see the module docstring."""
        tt = np.asarray(track_type)
        out = np.ones(len(tt))
        other = np.isin(tt, (4, 5))
        if not other.any():
            return out
        a = [np.asarray(v)[other] for v in (px, py, pz, x, y, z, pid)]
        long_ = np.full(int(other.sum()), 3, dtype=np.int8)
        if self.model == REFERENCE:
            from mambah.reference.trackstates import TrackStateModel

            ts = TrackStateModel()
            _, zs = ts.true_state(*a[:6], np.ones(len(long_)))
            var = [ts.covariance(*a[:3], a[6], t, zs)[:, 4, 4] for t in (tt[other], long_)]
        else:
            from mambah.nn.registry import load_model

            net = load_model(self.types_model, kind="trackstate")
            var = [net.covariance(*a, t)[:, 4, 4] for t in (tt[other], long_)]
        out[other] = np.sqrt(var[0] / var[1])
        return out

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
        info_types = {}
        if "track_type" in parts:
            tt = parts["track_type"].to_numpy()[track]
            if np.isin(tt, (4, 5)).any():
                vt = batch["mc_vertices"]
                vrow = rows_by_index(vt, mc["prod_vertex"].to_numpy()[rows], "mc_particles.prod_vertex values")
                ox, oy, oz = (vt[c].to_numpy(np.float64)[vrow] for c in ("x", "y", "z"))
                scale = self.type_scale(px, py, pz, ox, oy, oz, pid, tt)
                p_true = np.sqrt(px * px + py * py + pz * pz)
                f = 1.0 + scale * (np.sqrt(rx * rx + ry * ry + rz * rz) / p_true - 1.0)
                r = np.sqrt(rx * rx + ry * ry + rz * rz)
                f = f * p_true / r
                rx, ry, rz = rx * f, ry * f, rz * f
                info_types = {"upstream": int((tt == 4).sum()), "downstream": int((tt == 5).sum()),
                              "type_scale_from": "reference" if self.model == REFERENCE else self.types_model}
        m = parts["m"].to_numpy(np.float64)[track]
        for c, v in (("px", rx), ("py", ry), ("pz", rz), ("e", np.sqrt(rx * rx + ry * ry + rz * rz + m * m))):
            col = parts[c].to_numpy(np.float64, copy=True)
            col[track] = v
            parts[c] = col
        batch["particles"] = parts
        info = batch.info.setdefault("reconstruction", {})["resolution"] = {"tracks": int(len(track)), **info_types}
        if out_of_range:
            info["out_of_range"] = out_of_range
        return batch
