"""The Vertexing stage (opt-in, reference mode): track states, decay-vertex fits and the variables
an LHCb selection cuts on.

Runs after :class:`~mambah.reconstruction.composites.Composites` (not in the default pipeline:
add it to a :class:`~mambah.pipeline.Pipeline` yourself). Per batch:

1. **Track states**: every track gets the reference detector's measured state closest to the
   beam, its covariance, type, chi2/ndof and ghost probability
   (:class:`mambah.reference.trackstates.TrackStateModel`, from the track's true momentum and
   origin; the states' q/p is drawn there, independently of the Resolution stage's momentum).
   The track type is the one the Efficiency stage drew (``particles.track_type``: the 4-class
   network's class, or the reference detector's), else the reference detector's from the origin.
   ``model`` must be ``"reference"``: the trained covariance model is a later step.
2. **Own PV**: the event's true PV smeared with a Gaussian of widths ``pv_sigma_xy``,
   ``pv_sigma_z`` scaled by ``sqrt(pv_ref_tracks / nTracks)`` (13 um and 71 um for 25 tracks
   [VELO]: LHCb VELO group, JINST 9 (2014) P09007; ``nTracks`` from the Occupancy stage, at
   least ``pv_min_tracks``). Fitting the PV from the event's tracks, and pile-up PVs (so that
   MINIPCHI2 differs from IPCHI2_OWNPV), are later steps: today ``minipchi2`` is over the one PV.
3. **Decay vertices**, bottom-up through the decay tree: a composite's vertex is fitted
   (:func:`mambah.reconstruction.vertexing.fit_vertex`, 5-parameter states) from its direct
   daughters: tracks with their measured states, composite daughters with the state of their
   fitted vertex and momentum (``(x, y, tx, ty, 1/|P|)`` at the fitted z, covariance propagated
   from the daughter fit). A composite with fewer than two fitted daughters, or with a daughter
   that has no state, gets NaN everywhere (vertex position included) and ``ndof = -1``.
4. **Variables** (``particles`` columns; the composite's position, momentum and covariance are
   the fit's): ``ip_ownpv``, ``ipchi2_ownpv``, ``minipchi2`` (tracks and composites);
   ``fd_ownpv``, ``fdchi2_ownpv``, ``dira_ownpv``, ``tau`` and ``tau_err`` (proper time with the
   composite's reconstructed mass ``m``), ``doca_max`` (the largest DOCA of pairs of direct
   daughters), ``mcorr`` (corrected mass from ``m`` and the fitted momentum) for composites;
   ``track_type``, ``track_chi2ndof``, ``track_ghost_prob`` for tracks. ``vertices``: ``x, y, z``
   become the fitted position, with ``chi2``, ``ndof`` and the covariance ``cov_**``. ``events``:
   ``ownpv_x/y/z``.

The composite's ``px, py, pz, e, m`` columns are not changed (they are the sums of the Resolution
stage's momenta); the fitted momentum enters the variables above only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from mambah.errors import ConfigurationError
from mambah.reconstruction import vertexing as vx
from mambah.reconstruction._common import REFERENCE, as_config, require_tables, rows_by_index
from mambah.reconstruction.composites import plan_composites

__all__ = ["Vertexing"]


def _composite_state(pos: np.ndarray, mom: np.ndarray, cov6: np.ndarray):
    """A fitted particle as a 5-parameter straight-line state ``(x, y, tx, ty, 1/|P|)`` at the
    plane of its fitted z, and the state's covariance (Jacobian propagation from the 6x6)."""
    px, py, pz = mom[:, 0], mom[:, 1], mom[:, 2]
    p = np.sqrt(px * px + py * py + pz * pz)
    tx, ty = px / pz, py / pz
    state = np.stack([pos[:, 0], pos[:, 1], tx, ty, 1.0 / p], axis=-1)
    J = np.zeros((len(p), 5, 6))
    J[:, 0, 0] = J[:, 1, 1] = 1.0
    J[:, 0, 2] = -tx  # the plane is fixed at the fitted z: x(z0) = vx + tx (z0 - vz)
    J[:, 1, 2] = -ty
    J[:, 2, 3] = 1.0 / pz
    J[:, 2, 5] = -px / (pz * pz)
    J[:, 3, 4] = 1.0 / pz
    J[:, 3, 5] = -py / (pz * pz)
    J[:, 4, 3:] = -mom / (p**3)[:, None]
    cov = J @ cov6 @ np.swapaxes(J, 1, 2)
    return state, 0.5 * (cov + np.swapaxes(cov, 1, 2)), pos[:, 2]


@dataclasses.dataclass(frozen=True)
class Vertexing:
    """The vertexing stage (see the module docstring).

    Args:
        model: ``"reference"`` (the reference detector's track states; the only mode so far).
        pv_sigma_xy, pv_sigma_z: PV resolution (mm) for ``pv_ref_tracks`` tracks.
        pv_ref_tracks: track count at which the resolutions above hold; they scale as
            ``sqrt(pv_ref_tracks / nTracks)``.
        pv_min_tracks: floor of ``nTracks`` in that scaling.
        name: stage name (also the name of its random stream).
    """

    model: str = REFERENCE
    pv_sigma_xy: float = 0.013
    pv_sigma_z: float = 0.071
    pv_ref_tracks: int = 25
    pv_min_tracks: int = 5
    name: str = "vertexing"

    def __post_init__(self):
        if self.model != REFERENCE:
            raise ConfigurationError(f"Vertexing(model={self.model!r}): only the reference detector's track states "
                                     f"(model={REFERENCE!r}) exist so far; the trained covariance model is a later step")
        if not (self.pv_sigma_xy > 0 and self.pv_sigma_z > 0 and self.pv_ref_tracks > 0 and self.pv_min_tracks > 0):
            raise ConfigurationError(f"Vertexing: PV resolutions and track counts must be > 0, got {self.config()}")

    def config(self) -> dict[str, Any]:
        return as_config(self)

    def model_versions(self) -> dict[str, Any]:
        import hashlib
        import json

        from mambah._version import __version__
        from mambah.reference.trackstates import TrackStateModel

        cfg = json.dumps(dataclasses.asdict(TrackStateModel()), sort_keys=True, default=str)
        return {"reference-trackstates": {"version": __version__,
                                          "hash": hashlib.sha256(cfg.encode()).hexdigest()[:16]}}

    def __call__(self, batch):
        from mambah.reference.trackstates import TrackStateModel

        require_tables(batch, self.name, ("events", "mc_particles", "mc_vertices", "particles", "vertices"))
        tree = batch.info.get("decay_tree")
        if not tree:
            raise ConfigurationError(f"stage {self.name!r} needs batch.info['decay_tree'] (set by PhaseSpaceDecay)")
        n = batch.n_events
        rng = batch.rng(self.name)
        mc, mcv, ev = batch["mc_particles"], batch["mc_vertices"], batch["events"]
        parts = batch["particles"].copy()
        verts = batch["vertices"].copy()
        events = ev.copy()
        if len(mc) != len(tree) * n:
            raise ConfigurationError(f"batch {batch.id}: mc_particles is not in the particle-major layout of the "
                                     f"{len(tree)}-node decay tree")
        nrow = len(parts)
        mc_pos = rows_by_index(mc, parts["mc_particle"].to_numpy(), "particles.mc_particle values")
        node_of = mc_pos // n
        event_of = parts["event"].to_numpy(np.int64)
        is_comp = parts["vertex"].to_numpy() >= 0
        is_track = ~is_comp

        # --- own PV --------------------------------------------------------------------------
        ntr = np.maximum(events["n_tracks"].to_numpy(np.float64), self.pv_min_tracks)
        scale = np.sqrt(self.pv_ref_tracks / ntr)
        sxy, sz = self.pv_sigma_xy * scale, self.pv_sigma_z * scale
        true_pv = np.stack([events[c].to_numpy(np.float64) for c in ("pv_x", "pv_y", "pv_z")], -1)
        ev_idx = events["event"].to_numpy(np.int64)
        pv = true_pv + rng.standard_normal((len(events), 3)) * np.stack([sxy, sxy, sz], -1)
        pv_cov = np.zeros((len(events), 3, 3))
        pv_cov[:, 0, 0] = pv_cov[:, 1, 1] = sxy * sxy
        pv_cov[:, 2, 2] = sz * sz
        ev_pos = np.full(n, -1, dtype=np.int64)
        ev_pos[ev_idx] = np.arange(len(events))
        for i, c in enumerate(("ownpv_x", "ownpv_y", "ownpv_z")):
            events[c] = pv[:, i].astype(np.float32)

        # --- track states ----------------------------------------------------------------------
        state = np.full((nrow, 5), np.nan)
        cov = np.full((nrow, 5, 5), np.nan)
        zref = np.full(nrow, np.nan)
        tr = np.nonzero(is_track)[0]
        tm = mc_pos[tr]
        px, py, pz = (mc[c].to_numpy(np.float64)[tm] for c in ("px", "py", "pz"))
        prod = rows_by_index(mcv, mc["prod_vertex"].to_numpy()[tm], "mc_particles.prod_vertex values")
        ox, oy, oz = (mcv[c].to_numpy(np.float64)[prod] for c in ("x", "y", "z"))
        model = TrackStateModel()
        # the Efficiency stage's drawn class (network or reference) where it set one, else the
        # reference detector's type from the origin and momentum
        eff_type = parts["track_type"].to_numpy()[tr].astype(np.int8)
        ttype = np.where(eff_type > 0, eff_type, model.track_type(px, py, pz, ox, oy, oz)).astype(np.int8)
        ok = (ttype > 0) & (pz > 0)
        meas = model.measure(px[ok], py[ok], pz[ok], ox[ok], oy[ok], oz[ok], mc["pid"].to_numpy()[tm][ok], rng,
                             track_type=ttype[ok])
        rows_ok = tr[ok]
        state[rows_ok], cov[rows_ok], zref[rows_ok] = meas["state"], meas["cov"], meas["z"]
        cols = {c: parts[c].to_numpy(copy=True) for c in
                ("track_type", "track_chi2ndof", "track_ghost_prob", "ip_ownpv", "ipchi2_ownpv", "minipchi2",
                 "fd_ownpv", "fdchi2_ownpv", "dira_ownpv", "tau", "tau_err", "doca_max", "mcorr")}
        cols["track_type"][tr] = ttype
        cols["track_chi2ndof"][rows_ok] = meas["chi2"] / meas["ndof"]
        cols["track_ghost_prob"][rows_ok] = meas["ghost_prob"]
        # particle form (position, momentum, 6x6) of every row with a state / a fit
        ppos = np.full((nrow, 3), np.nan)
        pmom = np.full((nrow, 3), np.nan)
        pcov = np.full((nrow, 6, 6), np.nan)
        if len(rows_ok):
            ppos[rows_ok], pmom[rows_ok], pcov[rows_ok] = vx.particle_from_state(meas["state"], meas["cov"], meas["z"])

        # --- decay vertices, bottom-up -----------------------------------------------------------
        plan = plan_composites(tree)
        row_at = np.full((len(tree), n), -1, dtype=np.int64)
        row_at[node_of, event_of] = np.arange(nrow)
        vrow_of = parts["vertex"].to_numpy(np.int64)
        vpos = rows_by_index(verts, vrow_of[is_comp], "particles.vertex values") if len(verts) else np.zeros(0, int)
        vrow = np.full(nrow, -1, dtype=np.int64)
        vrow[np.nonzero(is_comp)[0]] = vpos
        vfit = {c: verts[c].to_numpy(copy=True).astype(np.float64) for c in
                ("x", "y", "z", "chi2", "cov_xx", "cov_yy", "cov_zz", "cov_xy", "cov_xz", "cov_yz")}
        vndof = verts["ndof"].to_numpy(copy=True)
        for c in ("x", "y", "z"):
            vfit[c][:] = np.nan  # fitted below, NaN where no fit
        n_unfit = 0
        mass = parts["m"].to_numpy(np.float64)
        def depth(k: int) -> int:
            d = 0
            while int(tree[k]["mother"]) >= 0:
                k, d = int(tree[k]["mother"]), d + 1
            return d

        for k in sorted(plan["tracks"], key=depth, reverse=True):  # daughters before their mothers
            daughters = [j for j in range(len(tree)) if plan["attach"][j] == k
                         and (j in plan["tracks"] or j in plan["track_nodes"])]
            crow = row_at[k]
            built = crow >= 0
            rows = crow[built]
            if not len(rows):
                continue
            drows = row_at[daughters][:, built].T  # (m, N)
            if len(daughters) < 2:
                n_unfit += len(rows)
                continue
            dstate = np.full(drows.shape + (5,), np.nan)
            dcov = np.full(drows.shape + (5, 5), np.nan)
            dz = np.full(drows.shape, np.nan)
            for a, j in enumerate(daughters):
                r = drows[:, a]
                if j in plan["tracks"]:  # a composite daughter: the state of its fit
                    good = np.isfinite(ppos[r]).all(axis=1)
                    if good.any():
                        s5, c5, z5 = _composite_state(ppos[r[good]], pmom[r[good]], pcov[r[good]])
                        dstate[good, a], dcov[good, a], dz[good, a] = s5, c5, z5
                else:
                    dstate[:, a], dcov[:, a], dz[:, a] = state[r], cov[r], zref[r]
            good = np.isfinite(dstate).all(axis=(1, 2)) & np.isfinite(dz).all(axis=1)
            n_unfit += int((~good).sum())
            if not good.any():
                continue
            fit = vx.fit_vertex(dstate[good], dcov[good], dz[good])
            g = rows[good]
            pos, mom, c6 = fit.particle()
            ppos[g], pmom[g], pcov[g] = pos, mom, c6
            vr = vrow[g]
            for i, c in enumerate(("x", "y", "z")):
                vfit[c][vr] = pos[:, i]
            vfit["chi2"][vr] = fit.chi2
            vndof[vr] = fit.ndof
            for c, (i, j) in (("cov_xx", (0, 0)), ("cov_yy", (1, 1)), ("cov_zz", (2, 2)), ("cov_xy", (0, 1)),
                              ("cov_xz", (0, 2)), ("cov_yz", (1, 2))):
                vfit[c][vr] = fit.covariance[:, i, j]
            # DOCA of pairs of direct daughters (their lines: states' positions and momenta)
            dpos = np.full(drows.shape + (3,), np.nan)[good]
            dmom = np.full(drows.shape + (3,), np.nan)[good]
            for a in range(len(daughters)):
                dpos[:, a], dmom[:, a] = ppos[drows[good, a]], pmom[drows[good, a]]
            docas = [vx.doca(dpos[:, a], dmom[:, a], dpos[:, b], dmom[:, b])
                     for a in range(len(daughters)) for b in range(a + 1, len(daughters))]
            cols["doca_max"][g] = np.max(np.stack(docas), axis=0)
            # flight, pointing and time with respect to the own PV
            e = ev_pos[event_of[g]]
            opv, ocov = pv[e], pv_cov[e]
            cols["fd_ownpv"][g] = vx.flight_distance(opv, pos)
            cols["fdchi2_ownpv"][g] = vx.fd_chi2(opv, ocov, pos, fit.covariance)
            cols["dira_ownpv"][g] = vx.dira(opv, pos, mom)
            t, et = vx.decay_time(opv, ocov, pos, fit.covariance, mom, fit.momentum_covariance, mass[g],
                                  fit.position_momentum_covariance)
            cols["tau"][g], cols["tau_err"][g] = t, et
            cols["mcorr"][g] = vx.corrected_mass(mass[g], mom, opv, pos)
        # IP of every row with a state or a fit, with respect to its own PV
        has = np.isfinite(ppos).all(axis=1)
        e = ev_pos[event_of[has]]
        with np.errstate(invalid="ignore", divide="ignore"):
            cols["ip_ownpv"][has] = vx.impact_parameter(ppos[has], pmom[has], pv[e])
            ipc = vx.ip_chi2(ppos[has], pmom[has], pcov[has], pv[e], pv_cov[e])
        cols["ipchi2_ownpv"][has] = ipc
        cols["minipchi2"][has] = vx.min_ip_chi2(ppos[has], pmom[has], pcov[has], pv[e][:, None], pv_cov[e][:, None])
        for c, v in cols.items():
            parts[c] = v.astype(parts[c].dtype)
        for c, v in vfit.items():
            verts[c] = v.astype(verts[c].dtype)
        verts["ndof"] = vndof.astype(verts["ndof"].dtype)
        batch["particles"] = parts
        batch["vertices"] = verts
        batch["events"] = events
        batch.info.setdefault("reconstruction", {})["vertexing"] = {
            "tracks": int(len(tr)), "tracks_without_state": int((~ok).sum()),
            "vertices": int(is_comp.sum()), "vertices_not_fitted": int(n_unfit),
            "pv_resolution_mm": [self.pv_sigma_xy, self.pv_sigma_z, self.pv_ref_tracks],
        }
        return batch

