"""Composites: reconstructed decay vertices and composite candidates from the decay tree.

For every decaying node of ``batch.info["decay_tree"]`` whose visible charged final state was
fully reconstructed, the stage adds one composite row to ``particles`` and one row to
``vertices`` per event, vectorised over events (a Python loop runs over the few tree nodes only).

Rules, as an LHCb selection would build candidates:

* the *charged tracks* of a node are its stable descendants (recursively, through intermediate
  decaying particles such as K0S or Lambda_c+) that are charged and trackable (e, mu, pi, K, p);
* stable neutral descendants (neutrinos, photons, K0L, neutrons, ...) are not seen: the
  composite has the *visible* momentum and mass (a semileptonic Lambda_b0 -> Lambda_c+ mu- nu
  keeps its visible mass, below the Lambda_b0 mass), its charge is the sum of its tracks'; the
  vertex row's ``n_invisible`` counts them (ntuple ``X_NINVISIBLE``): the mass is partial when it
  is > 0. Neutrinos are invisible by design; any other stable neutral particle must be declared
  invisible (``invisible=("gamma",)``, :mod:`mambah.reconstruction.visibility`), or the stage
  refuses the batch, naming it (no photon is ever dropped silently; :func:`standard_pipeline
  <mambah.simulation.standard_pipeline>` refuses such a descriptor before anything runs);
* stable neutral descendants that a stage reconstructs (photons from
  :class:`~mambah.reconstruction.neutrals.Neutrals`, declared with ``neutrals=(22,)``) are part
  of the candidates above them, like tracks (but they do not count towards the two tracks a
  vertex needs); a ``pi0 -> gamma gamma`` node with a merged-pi0 row of that stage (``pid`` 111,
  :mod:`mambah.reconstruction.neutrals`) in an event stands for its two photons there: the
  candidates above it are then built from that row (``n_daughters`` one less than with two
  photons), and their vertex smearing is drawn after all others, so that the candidates with
  resolved pi0 keep the numbers they have without merged rows;
* a stable charged descendant that is not trackable (e.g. a Sigma+ left undecayed) makes the node
  unreconstructible;
* a node is built in an event iff it has at least two charged tracks and all of them were
  reconstructed there (``mc_particles.reconstructed``); a decaying node with fewer than two
  tracks (e.g. pi0 -> gamma gamma, tau- -> pi- nu) gets no vertex, and its tracks attach to the
  nearest built ancestor.

Composite rows: ``pid`` = the true PDG id of the node (CC-aware, per row), momentum and energy =
sums over the tracks (whose energies use the true species' mass hypothesis, or the one chosen by
``reconstruct_as``), ``m`` = the invariant mass sqrt(E^2 - p^2), ``mc_particle`` = the node's MC
particle, ``vertex`` = its row in ``vertices``, ``mother`` = the composite row of the nearest
built ancestor (or -1). Tracks' ``mother`` is set the same way. PID columns stay NaN.

Mass hypotheses (``reconstruct_as``, :mod:`mambah.reconstruction.hypotheses`): a swapped track
keeps its reconstructed three-momentum and gets ``m`` = the hypothesis' PDG mass
(:func:`mambah.physics.particle_mass`) and ``e = sqrt(p^2 + m^2)``; its ``pid`` (the true PDG id)
and PID columns are untouched (the PID stage draws them for the true species). The composites
above it are summed from the swapped four-momenta, so their ``m`` is the mass as reconstructed
under the chosen hypotheses; the vertex row keeps ``m_truehyp``, the same sum with every track
under its true species' hypothesis (equal to ``m`` without swaps). The swaps are recorded in the
stage's ``config()`` (a production with other swaps is another configuration) and, with the
hypotheses' masses, in ``batch.info["mass_hypotheses"]``.

Vertex rows: ``mc_vertex`` = the node's true decay vertex, position = the true position smeared
with a Gaussian of widths (``sigma_xy``, ``sigma_xy``, ``sigma_z``) — defaults 0.02 mm and
0.2 mm, typical of two- and three-track secondary vertices in the LHCb VELO (LHCb VELO
collaboration, "Performance of the LHCb Vertex Locator", JINST 9 (2014) P09007,
arXiv:1405.7808: 13 um / 71 um for 25-track primary vertices, scaling roughly as 1/sqrt(N)),
``m`` = the composite's mass, ``m_truehyp`` = its mass under the true hypotheses,
``n_daughters`` = its direct reconstructed daughters, ``n_invisible`` = its stable neutral
descendants (neutrinos and particles left invisible: its mass is partial when > 0).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from mambah.errors import ConfigurationError
from mambah.physics import TRACKABLE_PIDS, particle_mass, pdg_charge
from mambah.physics.columns import COLUMNS, PID_COLUMNS, brem_defaults, probnn_defaults, vertexing_defaults
from mambah.reconstruction._common import as_config, require_tables, rows_by_index
from mambah.reconstruction.hypotheses import MassHypothesis, as_hypotheses
from mambah.reconstruction.neutrals import PHOTON_PID, merged_pi0_nodes
from mambah.reconstruction.visibility import invisible_pids, unseen_nodes

__all__ = ["Composites", "plan_composites"]


def plan_composites(tree: list[dict], seen=()) -> dict[str, Any]:
    """Which nodes become composites, their tracks and their nearest composite ancestors.

    Returns a dict with ``tracks`` (node -> list of trackable stable descendant nodes) for the
    buildable composite nodes (in node order), ``track_nodes`` (all trackable stable nodes),
    ``attach`` (node -> nearest buildable composite ancestor, or -1), ``n_daughters`` and
    ``n_invisible`` (node -> its stable neutral descendants, which no stage reconstructs: the
    composite's mass is partial when it is > 0). ``seen``: |PDG id|s of the stable neutral
    particles a stage reconstructs (:class:`~mambah.reconstruction.neutrals.Neutrals`): they are
    part of their ancestors' candidates (which need them reconstructed, besides their two or more
    charged tracks), are listed in ``track_nodes`` and are not counted in ``n_invisible``.
    """
    n = len(tree)
    for k, node in enumerate(tree):
        for key in ("pid", "mother", "children", "stable"):
            if key not in node:
                raise ConfigurationError(f"decay_tree node {k} lacks {key!r}: {node!r}")

    def charge(node) -> int:
        if "charge" in node:
            return int(node["charge"])
        return int(pdg_charge(np.array([node["pid"]]))[0])

    trackable = [bool(tree[k]["stable"]) and abs(int(tree[k]["pid"])) in TRACKABLE_PIDS and charge(tree[k]) != 0
                 for k in range(n)]
    blocking = [bool(tree[k]["stable"]) and charge(tree[k]) != 0 and not trackable[k] for k in range(n)]
    seen = {abs(int(p)) for p in seen}
    neutral_seen = [bool(tree[k]["stable"]) and charge(tree[k]) == 0 and abs(int(tree[k]["pid"])) in seen
                    for k in range(n)]

    def descendants(k):
        out = []
        for c in tree[k]["children"]:
            c = int(c)
            if tree[c]["stable"]:
                out.append(c)
            else:
                out.extend(descendants(c))
        return out

    tracks: dict[int, list[int]] = {}
    for k in range(n):
        if tree[k]["stable"]:
            continue
        d = descendants(k)
        if any(blocking[j] for j in d):
            continue
        t = [j for j in d if trackable[j]]
        if len(t) >= 2:
            tracks[k] = sorted(t + [j for j in d if neutral_seen[j]])
    attach = []
    for k in range(n):
        m = int(tree[k]["mother"])
        while m >= 0 and m not in tracks:
            m = int(tree[m]["mother"])
        attach.append(m)
    n_daughters = {k: sum(1 for j in range(n) if attach[j] == k and (trackable[j] or neutral_seen[j] or j in tracks))
                   for k in tracks}
    n_invisible = {k: sum(1 for j in descendants(k) if charge(tree[j]) == 0 and not neutral_seen[j]) for k in tracks}
    return {"tracks": tracks, "track_nodes": [k for k in range(n) if trackable[k] or neutral_seen[k]], "attach": attach,
            "n_daughters": n_daughters, "n_invisible": n_invisible}


@dataclasses.dataclass(frozen=True)
class Composites:
    """Build composite candidates and reconstructed vertices (see the module docstring).

    Args:
        sigma_xy: transverse vertex resolution, mm.
        sigma_z: longitudinal vertex resolution, mm.
        name: stage name (also the name of its random stream).
        reconstruct_as: mass-hypothesis swaps, resolved against the descriptor by
            :func:`mambah.reconstruction.hypotheses.mass_hypotheses` (or their ``config()``
            dicts); empty: every track under its true species' hypothesis.
        invisible: stable neutral particles (other than neutrinos, always invisible) that may be
            left out of the composites, as names or PDG ids (``("gamma", "pi0")``; normalised to
            sorted |PDG id|s by :func:`mambah.reconstruction.visibility.invisible_pids`). A decay
            tree with another one in its final state is refused with a ConfigurationError.
        neutrals: stable neutral particles that a stage before this one reconstructs (rows of
            ``particles`` with ``charge`` 0, e.g. photons from
            :class:`~mambah.reconstruction.neutrals.Neutrals`: ``neutrals=(22,)``): they become
            part of the candidates above them, which are then built only where they were
            reconstructed too.

    Example:
        >>> from mambah.reconstruction.hypotheses import mass_hypotheses
        >>> stage = Composites(reconstruct_as=mass_hypotheses("B0 -> K+ pi-", "pi-=K-"))
        >>> stage.config()["reconstruct_as"]
        [{'node': 2, 'particle': 'pi-', 'pid': -211, 'hypothesis': 'K-', 'hypothesis_pid': -321}]
    """

    sigma_xy: float = 0.02
    sigma_z: float = 0.2
    name: str = "composites"
    reconstruct_as: tuple[MassHypothesis, ...] = ()
    invisible: tuple[int, ...] = ()
    neutrals: tuple[int, ...] = ()

    def __post_init__(self):
        if self.sigma_xy < 0 or self.sigma_z < 0:
            raise ConfigurationError(f"vertex resolutions must be >= 0, got {self.sigma_xy}, {self.sigma_z}")
        object.__setattr__(self, "reconstruct_as", as_hypotheses(self.reconstruct_as))
        object.__setattr__(self, "invisible", invisible_pids(self.invisible))
        object.__setattr__(self, "neutrals", invisible_pids(self.neutrals))

    def config(self) -> dict[str, Any]:
        """The stage's fields; ``reconstruct_as`` only when there are swaps (so that the
        configuration of a production without swaps is what it was before they existed)."""
        d = as_config(self)
        if self.reconstruct_as:
            d["reconstruct_as"] = [h.config() for h in self.reconstruct_as]
        else:
            del d["reconstruct_as"]
        for key in ("invisible", "neutrals"):
            if getattr(self, key):
                d[key] = list(getattr(self, key))
            else:
                del d[key]
        return d

    def _check_visible(self, tree: list[dict], batch_id: int) -> None:
        """Refuse a tree with a stable neutral final-state particle nobody reconstructs and the
        user did not declare invisible (its composites would have a silently partial mass)."""
        unseen = unseen_nodes(tree, self.invisible, self.neutrals)
        if unseen:
            names = sorted({f"{tree[k].get('name', tree[k]['pid'])} (PDG id {tree[k]['pid']})" for k in unseen})
            raise ConfigurationError(
                f"stage {self.name!r}, batch {batch_id}: the final-state particle(s) {', '.join(names)} are neutral and "
                "no stage reconstructs them; the composites above them would silently lack them. Leave them "
                "invisible on purpose (Composites(invisible=(...)); standard_pipeline(..., invisible=...); "
                "mambah simulate --invisible NAME), or give them a decay in the descriptor")

    def _swap_masses(self, tree: list[dict], batch_id: int) -> dict[int, float]:
        """``{node: hypothesis mass (MeV/c^2)}``, after checking the swaps against ``tree``."""
        out = {}
        for h in self.reconstruct_as:
            nd = tree[h.node] if 0 <= h.node < len(tree) else None
            if nd is None or abs(int(nd["pid"])) != abs(h.pid) or not nd["stable"]:
                what = f"node {h.node} is {nd['name']!r}" if nd is not None else f"it has {len(tree)} nodes"
                raise ConfigurationError(
                    f"stage {self.name!r}: the swap {h} does not fit the decay tree of batch {batch_id} ({what}); "
                    "resolve the swaps against the descriptor being simulated (mass_hypotheses(descriptor, ...))")
            out[h.node] = particle_mass(h.hypothesis_pid)
        return out

    def model_versions(self) -> dict[str, Any]:
        return {}

    def __call__(self, batch):
        require_tables(batch, self.name, ("mc_particles", "mc_vertices", "particles"))
        tree = batch.info.get("decay_tree")
        if not tree:
            raise ConfigurationError(f"stage {self.name!r} needs batch.info['decay_tree'] (set by PhaseSpaceDecay); "
                                     f"batch {batch.id} has none")
        n = batch.n_events
        mc = batch["mc_particles"]
        if len(mc) != len(tree) * n:
            raise ConfigurationError(
                f"batch {batch.id}: mc_particles has {len(mc)} rows, the particle-major layout of a {len(tree)}-node "
                f"decay tree with {n} events needs {len(tree) * n}"
            )
        parts = batch["particles"]
        is_track = (parts["vertex"].to_numpy() < 0) & (parts["mc_particle"].to_numpy() >= 0)
        if "vertices" in batch and len(batch["vertices"]):
            raise ConfigurationError(f"batch {batch.id} already has vertices; the {self.name!r} stage must run once")
        parts = parts.loc[is_track].reset_index(drop=True)  # composites are rebuilt from the tracks
        n_tracks = len(parts)
        mc_pos = rows_by_index(mc, parts["mc_particle"].to_numpy(), "particles.mc_particle values")
        # particle row of the track for every (node, event) slot; -1 where none
        track_row = np.full(len(tree) * n, -1, dtype=np.int64)
        track_row[mc_pos] = np.arange(n_tracks)
        self._check_visible(tree, batch.id)
        plan = plan_composites(tree, seen=self.neutrals)
        nodes = sorted(plan["tracks"])
        px, py, pz, e = (parts[c].to_numpy(np.float64) for c in ("px", "py", "pz", "e"))
        e_true = e  # energies under the true species' hypotheses
        track_node = mc_pos // n
        track_event = mc_pos % n
        swaps = self._swap_masses(tree, batch.id)
        if swaps:
            e = e.copy()
            m_track = parts["m"].to_numpy(np.float64).copy()
            for k, mass in swaps.items():
                sel = track_node == k
                e[sel] = np.sqrt(px[sel] * px[sel] + py[sel] * py[sel] + pz[sel] * pz[sel] + mass * mass)
                m_track[sel] = mass
        charge = parts["charge"].to_numpy(np.int64)
        # merged pi0 (a Neutrals row linked to a pi0 -> gamma gamma node): where one exists it stands for
        # the node's two photons in the candidates above it (they point at a zero row, index n_tracks)
        merged = {}
        if PHOTON_PID in self.neutrals:
            merged = {p: c for p, c in merged_pi0_nodes(tree).items() if (track_row[p * n:(p + 1) * n] >= 0).any()}
        sp, sq = (px, py, pz, e, e_true), charge  # the summed quantities, with the zero row if needed
        if merged:
            sp, sq = tuple(np.append(a, 0.0) for a in sp), np.append(charge, 0)
        built: dict[int, np.ndarray] = {}  # node -> composite row per event (-1 = not built)
        blocks = []
        offset = n_tracks
        ev_all = np.arange(n)
        for k in nodes:
            rows = track_row.reshape(len(tree), n)[plan["tracks"][k]]  # (n_tracks_k, n)
            for p, (c1, c2) in merged.items():
                if c1 in plan["tracks"][k] and c2 in plan["tracks"][k]:
                    mrow = track_row[p * n:(p + 1) * n]
                    has = mrow >= 0
                    i1, i2 = plan["tracks"][k].index(c1), plan["tracks"][k].index(c2)
                    rows[i1, has], rows[i2, has] = mrow[has], n_tracks
            ok = (rows >= 0).all(axis=0)
            evs = ev_all[ok]
            r = rows[:, ok]
            row_of = np.full(n, -1, dtype=np.int64)
            row_of[evs] = offset + np.arange(len(evs))
            built[k] = row_of
            offset += len(evs)
            blocks.append((k, evs, sp[0][r].sum(axis=0), sp[1][r].sum(axis=0), sp[2][r].sum(axis=0),
                           sp[3][r].sum(axis=0), sq[r].sum(axis=0), sp[4][r].sum(axis=0)))
        # mothers: tracks and composites attach to their nearest built ancestor
        mother = np.full(n_tracks, -1, dtype=np.int64)
        for j in [*plan["track_nodes"], *merged]:
            a = plan["attach"][j]
            if a >= 0:
                sel = track_node == j
                mother[sel] = built[a][track_event[sel]]
        parts = parts.copy()
        parts["mother"] = mother.astype(np.int32)
        if swaps:
            parts["e"] = e
            parts["m"] = m_track
        comp_frames, vert_frames = [], []
        vt = batch["mc_vertices"]
        rng = batch.rng(self.name)
        mc_index = mc["index"].to_numpy()
        mc_pid = mc["pid"].to_numpy()
        dv = mc["decay_vertex"].to_numpy()
        # vertex smearing: the candidates with a merged pi0 draw after all others, so that the others keep
        # the numbers they have in a production without merged pi0 rows
        sig = np.array([self.sigma_xy, self.sigma_xy, self.sigma_z])[:, None]
        smear, late = [], []
        for k, evs, *_ in blocks:
            late_k = np.zeros(len(evs), dtype=bool)
            for p, (c1, _) in merged.items():
                if c1 in plan["tracks"][k]:
                    late_k |= track_row[p * n + evs] >= 0
            d = np.zeros((3, len(evs)))
            mb = int((~late_k).sum())
            if mb:
                for i in range(3):
                    d[i, ~late_k] = rng.normal(0.0, sig[i, 0], mb)
            smear.append(d)
            late.append(late_k)
        for d, late_k in zip(smear, late):
            if late_k.any():
                for i in range(3):
                    d[i, late_k] = rng.normal(0.0, sig[i, 0], int(late_k.sum()))
        for (k, evs, cpx, cpy, cpz, ce, cq, ce_true), d in zip(blocks, smear):
            m = len(evs)
            if m == 0:
                continue
            slot = k * n + evs
            a = plan["attach"][k]
            p2 = cpx * cpx + cpy * cpy + cpz * cpz
            cm = np.sqrt(np.maximum(ce * ce - p2, 0.0))
            cm_true = np.sqrt(np.maximum(ce_true * ce_true - p2, 0.0)) if swaps else cm
            rows = built[k][evs]
            n_dau = np.full(m, plan["n_daughters"][k], dtype=np.int16)
            for p, (c1, _) in merged.items():  # a merged pi0 is one daughter where its photons were two
                if plan["attach"][c1] == k:
                    n_dau -= (track_row[p * n + evs] >= 0).astype(np.int16)
            comp = {
                "batch": np.full(m, batch.id, dtype=np.int64),
                "index": rows.astype(np.int32),
                "event": evs.astype(np.int32),
                "mc_particle": mc_index[slot].astype(np.int32),
                "pid": mc_pid[slot].astype(np.int32),
                "charge": cq.astype(np.int8),
                "px": cpx.astype(np.float64),
                "py": cpy.astype(np.float64),
                "pz": cpz.astype(np.float64),
                "e": ce.astype(np.float64),
                "m": cm.astype(np.float64),
                "mother": (built[a][evs] if a >= 0 else np.full(m, -1)).astype(np.int32),
                "vertex": (rows - n_tracks).astype(np.int32),
            }
            for c, dt in PID_COLUMNS.items():
                comp[c] = np.full(m, np.nan, dtype=dt)
            comp.update(vertexing_defaults("particles", m))
            comp.update(brem_defaults("particles", m))
            comp.update(probnn_defaults("particles", m))  # ProbNN: NaN until the PID stage draws it
            comp_frames.append(pd.DataFrame(comp))
            vrow = rows_by_index(vt, dv[slot], "mc_particles.decay_vertex values of decaying nodes")
            vert_frames.append(pd.DataFrame({
                "batch": np.full(m, batch.id, dtype=np.int64),
                "index": (rows - n_tracks).astype(np.int32),
                "event": evs.astype(np.int32),
                "particle": rows.astype(np.int32),
                "mc_vertex": dv[slot].astype(np.int32),
                "x": (vt["x"].to_numpy(np.float64)[vrow] + d[0]).astype(np.float32),
                "y": (vt["y"].to_numpy(np.float64)[vrow] + d[1]).astype(np.float32),
                "z": (vt["z"].to_numpy(np.float64)[vrow] + d[2]).astype(np.float32),
                "m": cm.astype(np.float64),
                "m_truehyp": cm_true.astype(np.float64),
                "n_daughters": n_dau,
                "n_invisible": np.full(m, plan["n_invisible"][k], dtype=np.int16),
                **vertexing_defaults("vertices", m),
            }))
        pcols = list(COLUMNS["particles"])
        vcols = list(COLUMNS["vertices"])
        allp = pd.concat([parts[pcols], *[f[pcols] for f in comp_frames]], ignore_index=True)
        allv = (pd.concat([f[vcols] for f in vert_frames], ignore_index=True) if vert_frames
                else pd.DataFrame({c: np.zeros(0, dtype=d) for c, d in COLUMNS["vertices"].items()}))
        for c, d in COLUMNS["particles"].items():
            allp[c] = allp[c].astype(d)
        for c, d in COLUMNS["vertices"].items():
            allv[c] = allv[c].astype(d)
        batch["particles"] = allp
        batch["vertices"] = allv
        batch.info.setdefault("reconstruction", {})["composites"] = {
            str(tree[k].get("name", k)): int(len(b[1])) for k, b in zip(nodes, blocks)
        }
        if self.neutrals:  # the ntuple adds these particles' rows to the candidates above them
            batch.info["reconstructed_neutrals"] = list(self.neutrals)
        if swaps:
            batch.info["mass_hypotheses"] = [{**h.config(), "hypothesis_mass": swaps[h.node]}
                                             for h in self.reconstruct_as]
        return batch
