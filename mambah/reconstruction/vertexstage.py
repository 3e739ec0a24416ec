"""The Vertexing stage (opt-in, reference mode): track states, primary-vertex and decay-vertex fits,
and the variables an LHCb selection cuts on.

Runs after :class:`~mambah.reconstruction.composites.Composites` (not in the default pipeline:
``standard_pipeline(..., vertexing=True)``, ``mambah simulate --vertexing [--pileup MU]``). Per batch:

1. **Track states**: every track gets the reference detector's measured state closest to the
   beam, its covariance, type, chi2/ndof and ghost probability
   (:class:`mambah.reference.trackstates.TrackStateModel`, from the track's true momentum and
   origin; the states' q/p is drawn there, independently of the Resolution stage's momentum), or,
   with ``model="model"`` (or a model's name or directory), from the track-state network learned
   from it (:class:`mambah.nn.trackstate.TrackStateNet`: the covariance, Gaussian residuals drawn
   from it, chi2/ndof and ghost probability; inputs outside its training range are evaluated at
   the edge and counted in the batch's ``out_of_range`` record, as the other networks'; a
   covariance that is not positive definite is an error naming the model).
   The track type is the one the Efficiency stage drew (``particles.track_type``: the 4-class
   network's class, or the reference detector's), else the reference detector's from the origin.
2. **Primary vertices, fitted from tracks** (:mod:`mambah.reference.pileup` draws the collisions):
   the event has its signal collision at the generator's PV plus ``N_pu ~ Poisson(pileup)`` extra
   visible collisions (``pileup`` default :data:`~mambah.reference.pileup.DEFAULT_PILEUP_MU` = 5.5,
   LHCb Upgrade I) at positions from the luminous region. Every collision has reconstructed prompt
   VELO tracks: the signal collision the event's reconstructed tracks produced at the PV (not the
   signal decay's descendants; none for a decaying head) plus drawn "underlying event" tracks, each
   pile-up collision its drawn tracks (a negative binomial multiplicity, mean 20; no
   ``mc_particles`` rows for them). A collision with at least ``pv_min_tracks`` tracks is a
   reconstructed PV: its position is fitted from its tracks' 4-parameter states and covariances by
   the vectorised least-squares vertex fit (:func:`mambah.reconstruction.vertexing.fit_vertex` with
   a mask for the different track counts; PVs grouped by track count so that little is padded; no
   Python loop over events; about 200 tracks per event at mu = 5.5 are drawn and fitted in chunks
   of :data:`CHUNK_TRACKS`, which bounds the memory), so its resolution scales with its tracks
   (about 1/sqrt(N): 11 um transverse and 70 um in z for 25 tracks, LHCb's VELO figures). The
   signal collision's underlying event is drawn with at least ``pv_min_tracks`` tracks, so the
   signal PV is always reconstructed. Tracks are assigned to their true collision (no PV finding,
   no track-to-PV ambiguity: a PV finder's splitting and merging are not modelled) and the fit is
   a plain least-squares fit (no adaptive down-weighting: the reference tracks have no outliers).
3. **Decay vertices**, bottom-up through the decay tree: a composite's vertex is fitted
   (:func:`mambah.reconstruction.vertexing.fit_vertex`, 5-parameter states) from its direct
   daughters: tracks with their measured states, composite daughters with the state of their
   fitted vertex and momentum (``(x, y, tx, ty, 1/|P|)`` at the fitted z, covariance propagated
   from the daughter fit). A composite with fewer than two fitted daughters, or with a daughter
   that has no state, gets NaN everywhere (vertex position included) and ``ndof = -1``.
4. **Own PV** (LHCb's best-PV association): the PV with the smallest IPCHI2 of the event's
   candidate, its highest fitted composite (the head when it has a fit); every particle of the
   event is measured against it. An event without a fitted composite takes the signal
   collision's PV. ``MINIPCHI2`` is the smallest IPCHI2 over all the event's fitted PVs (so
   ``MINIPCHI2 <= IPCHI2_OWNPV``).
5. **Variables** (``particles`` columns; the composite's position, momentum and covariance are
   the fit's): ``ip_ownpv``, ``ipchi2_ownpv``, ``minipchi2`` (tracks and composites);
   ``fd_ownpv``, ``fdchi2_ownpv``, ``dira_ownpv``, ``tau`` and ``tau_err`` (proper time with the
   composite's reconstructed mass ``m``), ``doca_max`` (the largest DOCA of pairs of direct
   daughters), ``mcorr`` (corrected mass from ``m`` and the fitted momentum) for composites;
   ``track_type``, ``track_chi2ndof``, ``track_ghost_prob`` for tracks. ``vertices``: ``x, y, z``
   become the fitted position, with ``chi2``, ``ndof`` and the covariance ``cov_**``. ``events``:
   ``ownpv_x/y/z`` (the own PV), ``n_pvs`` (reconstructed PVs of the event, ntuple ``nPVs``) and
   ``ownpv_ntracks`` (the own PV's tracks).

The composite's ``px, py, pz, e, m`` columns are not changed (they are the sums of the Resolution
stage's momenta); the fitted momentum enters the variables above only. The track states and
decay vertices use the stage's random stream (``batch.rng(name)``), the collisions a second one
(``batch.rng(name + "-pvs")``), so the decay-vertex fits do not depend on the pile-up setting.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from mambah.errors import ConfigurationError, DataError
from mambah.reconstruction import vertexing as vx
from mambah.reconstruction._common import (
    REFERENCE,
    ReferenceOrModelStage,
    as_config,
    model_dir_entry,
    model_version_entry,
    require_tables,
    rows_by_index,
)
from mambah.reconstruction.composites import plan_composites

__all__ = ["Vertexing", "fit_primary_vertices", "DEFAULT_TRACKSTATE_MODEL", "TRACKSTATE_MODELS"]

#: the shipped track-state network (``Vertexing(model="model")``)
DEFAULT_TRACKSTATE_MODEL = "trackstate-ref-v1"
#: the ``model`` values with a meaning of their own (anything else: a model's name or directory)
TRACKSTATE_MODELS = (REFERENCE, "model")

#: the collisions' tracks are drawn and fitted in chunks of about this many tracks (bounds the memory)
CHUNK_TRACKS = 500_000


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


def fit_primary_vertices(pv_of_track, states, covariances, z, n_pvs: int, min_tracks: int = 2,
                         growth: float = 1.3) -> dict[str, np.ndarray]:
    """Fit ``n_pvs`` primary vertices, each from its tracks, in a few vectorised calls.

    The PVs are grouped by track count (counts within a factor ``growth`` of each other share a
    group), each group is padded to its largest count and fitted at once by
    :func:`~mambah.reconstruction.vertexing.fit_vertex` with a mask: a handful of calls whatever the
    number of events.

    Args:
        pv_of_track: (T,) the PV (0 ... n_pvs - 1) of each track.
        states, covariances, z: the tracks' (T, 4) states ``(x, y, tx, ty)``, (T, 4, 4)
            covariances and (T,) planes.
        n_pvs: number of PVs.
        min_tracks: a PV with fewer tracks is not fitted (NaN, ``ndof`` -1): not reconstructed.

    Returns:
        dict of ``position`` (P, 3), ``covariance`` (P, 3, 3), ``chi2`` (P,), ``ndof`` (P,),
        ``n_tracks`` (P,) and ``fitted`` (P,) bool.
    """
    pv_of_track = np.asarray(pv_of_track, dtype=np.int64)
    s = np.asarray(states, dtype=np.float64)
    V = np.asarray(covariances, dtype=np.float64)
    zz = np.asarray(z, dtype=np.float64)
    T = len(pv_of_track)
    if s.shape != (T, 4) or V.shape != (T, 4, 4) or zz.shape != (T,):
        raise DataError(f"fit_primary_vertices: need (T, 4) states, (T, 4, 4) covariances and (T,) z for T = {T} "
                        f"tracks, got {s.shape}, {V.shape}, {zz.shape}")
    if T and (pv_of_track.min() < 0 or pv_of_track.max() >= n_pvs):
        raise DataError(f"fit_primary_vertices: track PV numbers must be in [0, {n_pvs}), got "
                        f"[{pv_of_track.min()}, {pv_of_track.max()}]")
    min_tracks = max(int(min_tracks), 2)
    order = np.argsort(pv_of_track, kind="stable")
    count = np.bincount(pv_of_track, minlength=n_pvs)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    out = {"position": np.full((n_pvs, 3), np.nan), "covariance": np.full((n_pvs, 3, 3), np.nan),
           "chi2": np.full(n_pvs, np.nan), "ndof": np.full(n_pvs, -1, dtype=np.int64), "n_tracks": count,
           "fitted": count >= min_tracks}
    todo = np.nonzero(out["fitted"])[0]
    if not len(todo):
        return out
    todo = todo[np.argsort(count[todo], kind="stable")]
    c = count[todo]
    lo = 0
    while lo < len(todo):  # groups of similar track counts (sorted): [c_lo, growth * c_lo]
        hi = int(np.searchsorted(c, growth * c[lo], side="right"))
        pvs = todo[lo:hi]
        nmax = int(c[hi - 1])
        slot = np.arange(nmax)
        mask = slot[None, :] < count[pvs][:, None]
        idx = order[np.minimum(start[pvs][:, None] + slot[None, :], T - 1)]
        # seed: the tracks' points closest to the beam weighted by 1/var(x) (as LHCb's beam-line PV
        # finder seeds from the tracks' z of closest approach); the unweighted point closest to all
        # lines can be tens of mm off when a few low-momentum tracks with large errors dominate it
        wt = np.where(mask, 1.0 / (V[idx, 0, 0] + V[idx, 1, 1]), 0.0)
        seed = np.stack([(wt * s[idx, 0]).sum(1), (wt * s[idx, 1]).sum(1), (wt * zz[idx]).sum(1)], -1)
        seed /= wt.sum(1)[:, None]
        fit = vx.fit_vertex(s[idx], V[idx], zz[idx], mask=mask, start=seed)
        out["position"][pvs] = fit.position
        out["covariance"][pvs] = fit.covariance
        out["chi2"][pvs] = fit.chi2
        out["ndof"][pvs] = fit.ndof
        lo = hi
    return out


@dataclasses.dataclass(frozen=True)
class Vertexing(ReferenceOrModelStage):
    """The vertexing stage (see the module docstring).

    Args:
        model: ``"reference"`` (the reference detector's track states), ``"model"`` (the shipped
            track-state network :data:`DEFAULT_TRACKSTATE_MODEL`) or a track-state model's name or
            directory.
        pileup: mean number of extra visible pp collisions per event (Poisson); None: the LHCb
            Upgrade I value :data:`mambah.reference.pileup.DEFAULT_PILEUP_MU`; 0: the signal
            collision only.
        pv_min_tracks: a collision with fewer tracks is not a reconstructed PV (the signal
            collision's underlying event has at least this many).
        name: stage name (also the name of its random streams).
    """

    model: str = REFERENCE
    pileup: float | None = None
    pv_min_tracks: int = 5
    name: str = "vertexing"

    def __post_init__(self):
        self.check_model("Vertexing", "trackstate", TRACKSTATE_MODELS)
        if self.pileup is not None and not (np.isfinite(self.pileup) and self.pileup >= 0):
            raise ConfigurationError(f"Vertexing(pileup={self.pileup!r}): the mean number of pile-up collisions "
                                     "must be a number >= 0 (or None for the LHCb Upgrade I value)")
        if not (isinstance(self.pv_min_tracks, (int, np.integer)) and self.pv_min_tracks >= 2):
            raise ConfigurationError(f"Vertexing(pv_min_tracks={self.pv_min_tracks!r}): a PV needs an integer "
                                     ">= 2 tracks")

    @property
    def model_dir(self) -> str:
        """The track-state model's name or directory (``"model"``: :data:`DEFAULT_TRACKSTATE_MODEL`)."""
        return DEFAULT_TRACKSTATE_MODEL if self.model == "model" else self.model

    @property
    def mu(self) -> float:
        """The pile-up mean in use."""
        from mambah.reference.pileup import DEFAULT_PILEUP_MU

        return DEFAULT_PILEUP_MU if self.pileup is None else float(self.pileup)

    def config(self) -> dict[str, Any]:
        return as_config(self)

    def model_versions(self) -> dict[str, Any]:
        import hashlib
        import json

        from mambah._version import __version__
        from mambah.reference.pileup import PileUpModel
        from mambah.reference.trackstates import TrackStateModel

        pu = json.dumps(dataclasses.asdict(PileUpModel(mu=self.mu)), sort_keys=True, default=str)
        out = {"reference-pileup": {"version": __version__, "hash": hashlib.sha256(pu.encode()).hexdigest()[:16]}}
        if self.model != REFERENCE:
            return {**model_version_entry(self.model_dir), **out}
        cfg = json.dumps(dataclasses.asdict(TrackStateModel()), sort_keys=True, default=str)
        return {"reference-trackstates": {"version": __version__,
                                          "hash": hashlib.sha256(cfg.encode()).hexdigest()[:16]}, **out}

    def model_dirs(self) -> dict[str, Any]:
        return {} if self.model == REFERENCE else model_dir_entry(self.model_dir)

    def collisions(self, batch, track_rows, state, cov, zref, prod_is_pv, event_of):
        """The event's collisions and their fitted PVs (step 2 of the module docstring).

        Returns dict: ``event`` (P,) of each collision, ``signal`` (P,) bool, ``true`` (P, 3), the
        :func:`fit_primary_vertices` output, and the padded per-event ``(n, K, 3)`` positions and
        ``(n, K, 3, 3)`` covariances of the reconstructed PVs (NaN rows absent) with ``slot`` (P,)
        each PV's column there (-1: not reconstructed).
        """
        from mambah.reference.pileup import PileUpModel

        rng = batch.rng(self.name + "-pvs")
        pu = PileUpModel(mu=self.mu)
        n = batch.n_events
        events = batch["events"]
        ev_idx = events["event"].to_numpy(np.int64)
        true_sig = np.full((n, 3), np.nan)
        true_sig[ev_idx] = np.stack([events[c].to_numpy(np.float64) for c in ("pv_x", "pv_y", "pv_z")], -1)
        n_pu = pu.n_pileup(n, rng)
        pv_event = np.concatenate([np.arange(n), np.repeat(np.arange(n), n_pu)])
        signal = np.zeros(len(pv_event), dtype=bool)
        signal[:n] = True
        true = np.concatenate([true_sig, pu.positions(int(n_pu.sum()), rng)])
        # tracks: the signal collision's underlying event (>= pv_min_tracks) and the pile-up's
        ue = np.concatenate([pu.multiplicity(n, rng, minimum=self.pv_min_tracks),
                             pu.multiplicity(int(n_pu.sum()), rng)])
        # the event's own reconstructed tracks produced at the PV belong to the signal collision
        own = track_rows[prod_is_pv]
        own_pv = event_of[own]
        # drawn and fitted in chunks of at most CHUNK_TRACKS tracks (memory: ~200 tracks per event)
        P = len(pv_event)
        fit = {"position": np.full((P, 3), np.nan), "covariance": np.full((P, 3, 3), np.nan),
               "chi2": np.full(P, np.nan), "ndof": np.full(P, -1, dtype=np.int64),
               "n_tracks": np.zeros(P, dtype=np.int64), "fitted": np.zeros(P, dtype=bool)}
        ends = np.searchsorted(np.cumsum(ue), np.arange(1, int(ue.sum()) // CHUNK_TRACKS + 1) * CHUNK_TRACKS)
        bounds = np.unique(np.concatenate([[0], np.minimum(ends + 1, P), [P]]))
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            ue_pv = np.repeat(np.arange(lo, hi), ue[lo:hi])
            ue_state, ue_cov, ue_z = pu.tracks(true[ue_pv], rng)
            mine = (own_pv >= lo) & (own_pv < hi)
            o = own[mine]
            part = fit_primary_vertices(np.concatenate([own_pv[mine], ue_pv]) - lo,
                                        np.concatenate([state[o, :4], ue_state]),
                                        np.concatenate([cov[o, :4, :4], ue_cov]), np.concatenate([zref[o], ue_z]),
                                        int(hi - lo), min_tracks=self.pv_min_tracks)
            for k, v in part.items():
                fit[k][lo:hi] = v
        # padded per-event table of the reconstructed PVs
        rec = np.nonzero(fit["fitted"])[0]
        rec = rec[np.argsort(pv_event[rec], kind="stable")]
        per_event = np.bincount(pv_event[rec], minlength=n)
        K = max(int(per_event.max()) if n else 0, 1)
        first = np.concatenate([[0], np.cumsum(per_event)[:-1]])
        slot = np.full(len(pv_event), -1, dtype=np.int64)
        slot[rec] = np.arange(len(rec)) - first[pv_event[rec]]
        pos = np.full((n, K, 3), np.nan)
        pcov = np.full((n, K, 3, 3), np.nan)
        pos[pv_event[rec], slot[rec]] = fit["position"][rec]
        pcov[pv_event[rec], slot[rec]] = fit["covariance"][rec]
        return {"event": pv_event, "signal": signal, "true": true, "fit": fit, "slot": slot, "pos": pos, "cov": pcov,
                "n_pvs": per_event, "n_pileup": n_pu, "n_tracks": fit["n_tracks"]}

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
        if len(events) != n:
            raise ConfigurationError(f"batch {batch.id}: the events table has {len(events)} rows for {n} events")
        nrow = len(parts)
        mc_pos = rows_by_index(mc, parts["mc_particle"].to_numpy(), "particles.mc_particle values")
        node_of = mc_pos // n
        event_of = parts["event"].to_numpy(np.int64)
        is_comp = parts["vertex"].to_numpy() >= 0
        is_track = ~is_comp
        ev_pos = np.full(n, -1, dtype=np.int64)
        ev_pos[events["event"].to_numpy(np.int64)] = np.arange(len(events))

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
        counts: list = []
        if self.model == REFERENCE:
            meas = model.measure(px[ok], py[ok], pz[ok], ox[ok], oy[ok], oz[ok], mc["pid"].to_numpy()[tm][ok], rng,
                                 track_type=ttype[ok])
        else:
            from mambah.nn.registry import load_model

            net = load_model(self.model_dir, kind="trackstate")
            meas = net.measure(px[ok], py[ok], pz[ok], ox[ok], oy[ok], oz[ok], mc["pid"].to_numpy()[tm][ok], rng,
                               track_type=ttype[ok], counts=counts)
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

        fitted = np.zeros(nrow, dtype=bool)
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
            fitted[g] = True
            ppos[g], pmom[g], pcov[g] = fit.particle()
            vr = vrow[g]
            for i, c in enumerate(("x", "y", "z")):
                vfit[c][vr] = fit.position[:, i]
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

        # --- primary vertices fitted from tracks, pile-up ------------------------------------------
        prod_ok = prod[ok]
        mother = mcv["mother"].to_numpy(np.int64)[prod_ok] if "mother" in mcv else np.zeros(len(prod_ok), np.int64)
        pvs = self.collisions(batch, rows_ok, state, cov, zref, mother < 0, event_of)
        K = pvs["pos"].shape[1]
        has = np.isfinite(ppos).all(axis=1)
        hrows = np.nonzero(has)[0]
        he = event_of[hrows]
        # IPCHI2 of every row to every PV of its event, (rows, K), inf for absent PVs: one PV column at a
        # time (a loop over the K <~ 20 columns, not over events: bounded memory)
        ipc_all = np.full((len(hrows), K), np.inf)
        hp, hm, hc = ppos[hrows], pmom[hrows], pcov[hrows]
        for k in range(K):
            at = np.nonzero(np.isfinite(pvs["pos"][he, k, 0]))[0]
            if len(at):
                with np.errstate(invalid="ignore", divide="ignore"):
                    ipc_all[at, k] = vx.ip_chi2(hp[at], hm[at], hc[at], pvs["pos"][he[at], k], pvs["cov"][he[at], k])
        ipc_all = np.where(np.isnan(ipc_all), np.inf, ipc_all)
        # own PV per event: best PV of the highest fitted composite; else the signal collision's PV
        own_slot = pvs["slot"][:n].copy()  # the signal PV's column (always reconstructed)
        chosen = np.zeros(n, dtype=bool)
        by_head = np.zeros(n, dtype=bool)  # the own PV is the tree head's best PV
        where = np.full(nrow, -1, dtype=np.int64)
        where[hrows] = np.arange(len(hrows))
        for k in sorted(plan["tracks"], key=depth):  # the head first
            r = row_at[k]
            sel = (r >= 0)
            sel[sel] = fitted[r[sel]]
            sel &= ~chosen
            if not sel.any():
                continue
            e = np.nonzero(sel)[0]
            own_slot[e] = np.argmin(ipc_all[where[r[e]]], axis=1)
            chosen[e] = True
            by_head[e] = int(tree[k]["mother"]) < 0
        if (own_slot < 0).any():  # pragma: no cover - the signal PV has >= pv_min_tracks tracks by construction
            raise DataError(f"batch {batch.id}: {int((own_slot < 0).sum())} events have no reconstructed signal PV")
        ev_range = np.arange(n)
        opv_all, ocov_all = pvs["pos"][ev_range, own_slot], pvs["cov"][ev_range, own_slot]
        # IP of every row with a state or a fit, with respect to its event's own PV; MINIPCHI2 over all PVs
        opv, ocov = opv_all[he], ocov_all[he]
        with np.errstate(invalid="ignore", divide="ignore"):
            cols["ip_ownpv"][hrows] = vx.impact_parameter(ppos[hrows], pmom[hrows], opv)
            cols["ipchi2_ownpv"][hrows] = ipc_all[np.arange(len(hrows)), own_slot[he]]
        cols["minipchi2"][hrows] = ipc_all.min(axis=1) if K else np.nan
        # flight, pointing and time of the fitted composites with respect to the own PV
        g = np.nonzero(fitted)[0]
        if len(g):
            e = event_of[g]
            opv, ocov = opv_all[e], ocov_all[e]
            pos, mom, c6 = ppos[g], pmom[g], pcov[g]
            C, Cp, Cxp = c6[:, :3, :3], c6[:, 3:, 3:], c6[:, :3, 3:]
            cols["fd_ownpv"][g] = vx.flight_distance(opv, pos)
            cols["fdchi2_ownpv"][g] = vx.fd_chi2(opv, ocov, pos, C)
            cols["dira_ownpv"][g] = vx.dira(opv, pos, mom)
            t, et = vx.decay_time(opv, ocov, pos, C, mom, Cp, mass[g], Cxp)
            cols["tau"][g], cols["tau_err"][g] = t, et
            cols["mcorr"][g] = vx.corrected_mass(mass[g], mom, opv, pos)
        for i, c in enumerate(("ownpv_x", "ownpv_y", "ownpv_z")):
            events[c] = opv_all[events["event"].to_numpy(np.int64), i].astype(np.float32)
        pv_id = np.full((n, K), -1, dtype=np.int64)  # collision number of each padded PV
        rec = pvs["slot"] >= 0
        pv_id[pvs["event"][rec], pvs["slot"][rec]] = np.nonzero(rec)[0]
        own_pv = pv_id[ev_range, own_slot]
        if "n_pvs" in events:
            events["n_pvs"] = pvs["n_pvs"][events["event"].to_numpy(np.int64)].astype(events["n_pvs"].dtype)
        if "ownpv_ntracks" in events:
            events["ownpv_ntracks"] = pvs["n_tracks"][own_pv][events["event"].to_numpy(np.int64)].astype(
                events["ownpv_ntracks"].dtype)
        for c, v in cols.items():
            parts[c] = v.astype(parts[c].dtype)
        for c, v in vfit.items():
            verts[c] = v.astype(verts[c].dtype)
        verts["ndof"] = vndof.astype(verts["ndof"].dtype)
        batch["particles"] = parts
        batch["vertices"] = verts
        batch["events"] = events
        fitpv = pvs["fit"]
        info = batch.info.setdefault("reconstruction", {})["vertexing"] = {
            "tracks": int(len(tr)), "tracks_without_state": int((~ok).sum()),
            "vertices": int(is_comp.sum()), "vertices_not_fitted": int(n_unfit),
            "pileup_mu": self.mu, "collisions": int(len(pvs["event"])), "pvs": int(fitpv["fitted"].sum()),
            "pv_tracks": int(fitpv["n_tracks"][fitpv["fitted"]].sum()),
            "ownpv_is_signal": int(pvs["signal"][own_pv].sum()),
            "events_with_candidate": int(chosen.sum()),
            "candidate_ownpv_is_signal": int(pvs["signal"][own_pv][chosen].sum()),
            "events_with_head": int(by_head.sum()), "head_ownpv_is_signal": int(pvs["signal"][own_pv][by_head].sum()),
        }
        if counts and counts[0].count:
            info["out_of_range"] = {net.name: [counts[0].count, counts[0].n]}
        return batch
