"""The flat per-candidate ntuple: one row per event, LHCb-style branches per decay-tree node.

The candidate of an event is the head of its decay tree (node 0 of ``batch.info["decay_tree"]``,
stored in the ``config`` JSON of the ``batches`` table). Every node gets a short prefix derived
from its particle name (``Lambda_b0 -> Lb``, ``Lambda_c+ -> Lc``, ``p+ -> p``, ``K- -> K``,
``J/psi(1S) -> Jpsi``, ``B+ -> B``; clashes get numeric suffixes ``pi1, pi2``; any prefix can be
overridden) and a group of branches:

truth (every node, from ``mc_particles`` and ``mc_vertices``)
    ``X_TRUEID``, ``X_TRUEP_X/Y/Z``, ``X_TRUEP_E``, ``X_TRUEP``, ``X_TRUEPT``, ``X_TRUE_M``,
    ``X_TRUEORIGINVERTEX_X/Y/Z``, ``X_Reconstructed``; for decaying nodes also
    ``X_TRUEENDVERTEX_X/Y/Z`` and ``X_TRUETAU`` (proper decay time in ns,
    ``tau = (t_end - t_origin) * m / E``: the lab-frame time divided by the Lorentz factor
    ``gamma = E / m``).
tracks (charged stable nodes, from the ``particles`` row whose ``mc_particle`` is this node; NaN
where the particle was not reconstructed; also photons when a Neutrals stage reconstructed them,
``gamma_PT``, ``gamma_PE``, ``gamma_ID``..., without PID branches)
    ``X_PX/PY/PZ``, ``X_PE``, ``X_P``, ``X_PT``, ``X_ETA``, ``X_M``, ``X_ID`` and the PID
    variables under their LHCb names: ``X_PIDe``, ``X_PIDmu``, ``X_PIDK``, ``X_PIDp`` (combined
    DLLs), ``X_RichDLLe``, ``X_RichDLLmu``, ``X_RichDLLk``, ``X_RichDLLp``, ``X_isMuon``,
    ``X_MuonMuLL``, ``X_MuonBkgLL``.
composites (decaying nodes)
    ``X_PX/PY/PZ``, ``X_PE``, ``X_P``, ``X_PT``, ``X_ETA``, ``X_M``: from a reconstructed
    composite linked to the node when the store has one, otherwise the four-momentum sum of
    the node's reconstructed charged descendants (the *visible* mass: ``Lb_M`` of
    ``Lambda_b0 -> Lambda_c+ mu- nu`` is the ``Lambda_c+ mu-`` mass, as in an LHCb selection);
    NaN if any of those tracks is missing. ``X_ENDVERTEX_X/Y/Z`` from the linked vertex.
    ``X_NINVISIBLE``: the node's stable neutral descendants that no stage reconstructs
    (neutrinos; particles left invisible with ``mambah simulate --invisible``): ``X_M`` is a
    partial mass when it is > 0 (from the vertex row's ``n_invisible``, or, without a linked
    composite, counted in the decay tree; -1: unknown, a store written before schema version 4).
    A ``pi0 -> gamma gamma`` of a production with a Neutrals stage (``--neutrals``) also gets
    ``pi0_Type`` (int8, LHCb's TupleToolPi0Info): 1 merged (its kinematics from the merged-pi0 row,
    ``pi0_M`` the PDG pi0 mass), 2 resolved (the sum of its two photons), 0 neither.
mass hypotheses (a production with swaps, ``reconstruct_as``; see
:mod:`mambah.reconstruction.hypotheses`)
    ``X_M`` is the mass as reconstructed, under the chosen hypotheses; the nodes it differs for
    get ``X_M_TRUEHYP`` beside it, the mass with every track under its true species' hypothesis:
    each swapped track (``X_M`` = the hypothesis' mass, ``X_PE`` its energy, ``X_ID`` the
    hypothesis' PDG id as LHCb's ``SubstitutePID`` sets it, ``X_TRUEID`` the true one) and each
    composite above one (``X_M_TRUEHYP`` from the vertex row's ``m_truehyp``, or, for a node
    without a linked composite, the sum of its tracks with their true-hypothesis energies). The
    PID branches are those of the true species. Productions with different swaps are different
    ntuples (they are not mixed, as different decay trees are not).
background cocktails (:func:`mambah.simulation.cocktail_pipeline`)
    each channel of a cocktail batch is a block of its events with its own decay tree (recorded
    in the batch's ``config["cocktail"]``); channels whose trees have the same shape (mothers,
    stable flags, charges, node by node) share one ntuple, with the prefixes of the lowest channel
    among them and the swaps of each channel (``X_ID`` the hypothesis' where that channel swaps
    ``X``; ``X_M_TRUEHYP`` for a node any of them swaps), plus a ``channel`` branch (int16, the
    channel's index). Channels of other shapes are other ntuples: select them with ``channels``.
brem (a production made with ``mambah simulate --brem reference``, :mod:`mambah.reconstruction.brem`)
    electron and positron tracks get ``X_HASBREMADDED`` (int8): 1 where brem recovery added a
    photon to the track, 0 where it did not, -1 where the electron was not reconstructed (or its
    batch was made without the stage). Without the stage in any selected batch: no such branch. In a
    cocktail ntuple, whose channels may put other species on a node, every track gets it (0 for a
    track that is not an electron).
ProbNN (issue 24: chains with a ``probnn`` step, :mod:`mambah.pid.chain`)
    every track gets ``X_ProbNNe``, ``X_ProbNNmu``, ``X_ProbNNpi``, ``X_ProbNNk``, ``X_ProbNNp``,
    ``X_ProbNNghost`` (float32, NaN where its species' chain has no ProbNN step) when any track of
    the selected batches has them; otherwise no such branches.
PID variations (a production made with ``mambah simulate --pid-variations``, K ensemble members)
    every PID branch of a track once more per member k = 1..K: ``X_<PID>_var<k>`` (``K_PIDK_var1``,
    ``p_RichDLLp_var3`` ...; the naming of ``mambah generate --variations``), from the
    ``pid_variations`` table; NaN for a track whose species' chain has no members (and where the
    nominal branch is NaN). With ProbNN branches, ``X_ProbNNk_var<k>`` ... too (NaN in batches
    written before schema 6). Batches with different K (or with and without variations) are
    different ntuples.
event
    ``batch``, ``event``, ``nTracks``, ``weight``. ``weight`` is the generator weight: 1 for the
    default unweighted production; for a weighted one (``mambah simulate --weighted``) the
    phase-space times decay-model weight, which every histogram of the ntuple must then use
    (:func:`export_ntuple` logs a warning saying so).

Everything is vectorised: the particle-major layout (``index = node * n_events + event``) maps
every row to its (node, event) cell by integer arithmetic; there is no loop over events.
Momenta in MeV, positions in mm, times in ns.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mambah.errors import ConfigurationError, MambahError, StoreError
from mambah.physics import eta as pseudorapidity
from mambah.physics import SPECIES_PDG, pdg_mass
from mambah.physics.columns import COLUMN_MAP, PID_COLUMNS, PROBNN_COLUMNS, lhcb_name, lhcb_names

__all__ = ["default_prefix", "default_prefixes", "candidate_ntuple", "iter_candidates", "export_ntuple",
           "PID_BRANCHES"]

log = logging.getLogger(__name__)

#: store PID column -> LHCb branch suffix (from the column map, :data:`mambah.physics.COLUMN_MAP`)
PID_BRANCHES: dict[str, str] = lhcb_names(c.store for c in COLUMN_MAP if c.store in PID_COLUMNS)
if set(PID_BRANCHES) != set(PID_COLUMNS):  # pragma: no cover - a schema change must update this map
    raise MambahError(f"PID_BRANCHES does not cover schema.PID_COLUMNS: {sorted(set(PID_COLUMNS) ^ set(PID_BRANCHES))}")

#: particle name (either charge) -> LHCb-style prefix
_KNOWN = {
    "Lambda_b0": "Lb", "Lambda_c+": "Lc", "Lambda0": "L0", "Xi_b-": "Xib", "Xi_b0": "Xib0",
    "Xi_c+": "Xic", "Xi_c0": "Xic0", "Omega_b-": "Omegab", "Omega_c0": "Omegac", "Sigma_c++": "Sigmacpp",
    "Sigma_c0": "Sigmac0", "B+": "B", "B0": "B0", "B_s0": "Bs", "B_c+": "Bc", "D0": "D0", "D+": "D",
    "D_s+": "Ds", "D*(2010)+": "Dst", "D*(2007)0": "Dst0", "J/psi(1S)": "Jpsi", "psi(2S)": "psi2S",
    "K*(892)0": "Kst", "K*(892)+": "Kstp", "phi(1020)": "phi", "K_S0": "KS", "K_L0": "KL",
    "rho(770)0": "rho", "omega(782)": "omega", "eta": "eta", "eta'(958)": "etap", "pi0": "pi0",
    "gamma": "gamma", "p+": "p", "n0": "n", "K+": "K", "pi+": "pi", "mu+": "mu", "e+": "e", "tau+": "tau",
    "nu_e": "nu_e", "nu_mu": "nu_mu", "nu_tau": "nu_tau",
}
_CC = {"+": "-", "-": "+"}


def default_prefix(name: str) -> str:
    """The LHCb-style prefix of a particle name (``Lambda_c+ -> Lc``, ``K- -> K``, ``anti-nu_mu -> nu_mu``)."""
    base = name[5:] if name.startswith("anti-") else name
    if base in _KNOWN:
        return _KNOWN[base]
    if base and base[-1] in _CC and base[:-1] + _CC[base[-1]] in _KNOWN:
        return _KNOWN[base[:-1] + _CC[base[-1]]]
    s = re.sub(r"\(.*?\)", "", base)  # J/psi(1S) -> J/psi
    s = re.sub(r"[+\-~*']+$", "", s)  # charge and excitation marks
    s = re.sub(r"\W|_", "", s)
    if not s:
        s = "P"
    if s[0].isdigit():
        s = "P" + s
    return s


def default_prefixes(tree: Sequence[Mapping[str, Any]],
                     overrides: Mapping[str | int, str] | None = None) -> list[str]:
    """One prefix per decay-tree node: defaults, numeric suffixes on clashes, then ``overrides``.

    Args:
        tree: the nodes (``batch.info["decay_tree"]``).
        overrides: node name (all nodes of that name) or node number -> prefix.

    Raises:
        ConfigurationError: an override names no node, or two nodes end up with one prefix.
    """
    names = [str(n["name"]) for n in tree]
    pref = [default_prefix(n) for n in names]
    counts: dict[str, int] = {}
    for p in pref:
        counts[p] = counts.get(p, 0) + 1
    seen: dict[str, int] = {}
    for i, p in enumerate(pref):
        if counts[p] > 1:
            seen[p] = seen.get(p, 0) + 1
            cand = f"{p}{seen[p]}"
            while cand in counts:
                seen[p] += 1
                cand = f"{p}{seen[p]}"
            pref[i] = cand
    for key, value in (overrides or {}).items():
        if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ConfigurationError(f"prefix {value!r} for {key!r} is not a valid branch-name prefix")
        if isinstance(key, (int, np.integer)) or (isinstance(key, str) and key.isdigit()):
            k = int(key)
            if not 0 <= k < len(tree):
                raise ConfigurationError(f"no decay-tree node {k}; nodes 0..{len(tree) - 1}: {', '.join(names)}")
            pref[k] = value
        else:
            hits = [i for i, n in enumerate(names) if n == key]
            if not hits:
                raise ConfigurationError(f"no decay-tree node named {key!r}; nodes: {', '.join(names)}")
            for i in hits:
                pref[i] = value
    dup = {p for p in pref if pref.count(p) > 1}
    if dup:
        detail = "; ".join(f"{p}: nodes {[i for i, q in enumerate(pref) if q == p]}" for p in sorted(dup))
        raise ConfigurationError(f"two decay-tree nodes share a prefix ({detail}); override one by node number")
    return pref


# ---------------------------------------------------------------------------------------------
def _segment(batch: int, n: int, channel: int = -1, first_event: int = 0, first_mc: int = 0,
             hyps: list | None = None, n_var: int = 0) -> dict[str, Any]:
    """A block of events of one decay tree: a whole batch, or one channel of a cocktail batch
    (its events ``first_event ..`` and its ``mc_particles`` rows ``first_mc ..``, particle-major)."""
    return {"batch": int(batch), "n": int(n), "channel": int(channel), "first_event": int(first_event),
            "first_mc": int(first_mc), "hyps": hyps or [], "n_var": int(n_var)}


def _shape_key(tree: Sequence[Mapping[str, Any]]) -> str:
    """The shape of a decay tree for merging cocktail channels: mothers, stable flags and charges."""
    return json.dumps([(int(nd["mother"]), bool(nd["stable"]), int(nd.get("charge", 0))) for nd in tree])


def _groups(store, batches: Iterable[int] | None, production: str | None,
            channels: Iterable[int] | None = None) -> tuple[list, dict]:
    """Segments grouped by decay tree: ([(tree, segments, hyps)], details by group).

    A batch of one decay tree is one segment; its group key is the tree and its mass hypotheses.
    A cocktail batch (``cocktail`` in its config) gives one segment per channel with events; the
    channels are grouped by the *shape* of their trees (mothers, stable flags, charges), so
    channels reconstructed the same way (B0 -> K+ pi-, B0 -> pi+ pi- and B_s0 -> K+ K-, each with its
    swaps) share one ntuple whose prefixes are those of the lowest channel of the group.
    ``channels``: keep only these channel indices (cocktail batches only)."""
    where = {"production": production} if production is not None else None
    bt = store.read("batches", columns=["batch", "production", "n_events", "config"], batches=batches, where=where)
    if bt.empty:
        what = []
        if production is not None:
            what.append(f"production {production!r}")
        if batches is not None:
            what.append("the selected batches")
        raise StoreError(f"no batches to export in {store.url}" + (f" for {' and '.join(what)}" if what else ""))
    want = None if channels is None else {int(c) for c in channels}
    groups: dict[str, dict[str, Any]] = {}
    no_tree = []

    def add(key, tree, seg, prod, label):
        g = groups.setdefault(key, {"tree": tree, "segments": [], "productions": set(), "hyps": seg["hyps"],
                                    "labels": {}, "first_channel": seg["channel"], "n_var": seg["n_var"]})
        if seg["channel"] >= 0 and seg["channel"] < g["first_channel"]:
            g["tree"], g["first_channel"] = tree, seg["channel"]
        g["segments"].append(seg)
        g["productions"].add(str(prod))
        g["labels"].setdefault(label, 0)
        g["labels"][label] += seg["n"]

    for b, prod, n, cfg in bt.itertuples(index=False):
        try:
            info = json.loads(cfg) if cfg else {}
        except (json.JSONDecodeError, AttributeError):
            info = {}
        cocktail = info.get("cocktail") if isinstance(info, Mapping) else None
        if cocktail:
            for rec in cocktail.get("channels", []):
                c = int(rec["channel"])
                if int(rec["n_events"]) == 0 or (want is not None and c not in want):
                    continue
                tree = rec.get("decay_tree")
                if not tree:
                    no_tree.append(int(b))
                    continue
                hyps = _hypotheses(rec)
                n_var = _n_variations(info)  # the batch's plan (one for all its channels)
                seg = _segment(b, rec["n_events"], c, rec["first_event"], rec["first_mc_particle"], hyps, n_var)
                label = f"channel {c}: {rec.get('descriptor', ' '.join(nd['name'] for nd in tree))}"
                if hyps:
                    label += "; reconstructed as: " + ", ".join(f"{tree[h['node']]['name']} -> {h['hypothesis']}"
                                                               for h in hyps)
                if n_var:
                    label += f"; PID variations: K = {n_var}"
                add("cocktail " + _shape_key(tree) + (f"|pid_variations={n_var}" if n_var else ""), tree, seg, prod,
                    label)
            continue
        if want is not None:
            continue
        tree = info.get("decay_tree") if isinstance(info, Mapping) else None
        if not tree:
            no_tree.append(int(b))
            continue
        hyps = _hypotheses(info)
        n_var = _n_variations(info)
        key = json.dumps([(nd["name"], nd["pid"], nd["mother"]) for nd in tree])
        if hyps:  # another set of mass hypotheses is another ntuple
            key += json.dumps([(h["node"], h["hypothesis_pid"]) for h in hyps])
        seen = {abs(int(p)) for p in (info.get("reconstructed_neutrals") or ())}
        if seen:  # reconstructed neutrals (photons of a Neutrals stage): another ntuple
            tree = [dict(nd, seen=bool(nd["stable"]) and int(nd.get("charge", 0)) == 0 and abs(int(nd["pid"])) in seen)
                    for nd in tree]
            key += json.dumps(sorted(seen))
        if n_var:  # other branches
            key += f"|pid_variations={n_var}"
        label = " ".join(nd["name"] for nd in tree)
        if hyps:
            label += "; reconstructed as: " + ", ".join(f"{tree[h['node']]['name']} -> {h['hypothesis']}" for h in hyps)
        if n_var:
            label += f"; PID variations: K = {n_var}"
        add(key, tree, _segment(b, n, hyps=hyps, n_var=n_var), prod, label)
    if no_tree:
        raise StoreError(
            f"batch(es) {no_tree[:10]}{'...' if len(no_tree) > 10 else ''} of {store.url} have no decay tree in "
            "their config (batch.info['decay_tree']): they cannot give candidates; select other batches"
        )
    if not groups:
        raise StoreError(f"no events of channel(s) {sorted(want or ())} in the selected batches of {store.url}")
    return [(g["tree"], g["segments"], g["hyps"]) for g in groups.values()], groups


def _n_variations(info: Mapping[str, Any]) -> int:
    """K of a batch made with PID variations (``pid_variations.members`` of its provenance), else 0."""
    plan = info.get("pid_variations") if isinstance(info, Mapping) else None
    try:
        return int(plan["members"]) if plan else 0
    except (KeyError, TypeError, ValueError):
        raise StoreError(f"the PID variations recorded in a batch's provenance are malformed: {plan!r}") from None


def _hypotheses(info: Mapping[str, Any]) -> list[dict]:
    """The mass-hypothesis swaps of a batch's provenance (``mass_hypotheses``, written by
    :class:`mambah.reconstruction.Composites`), sorted by node; ``[]`` without swaps."""
    hyps = info.get("mass_hypotheses") if isinstance(info, Mapping) else None
    if not hyps:
        return []
    try:
        return sorted(({"node": int(h["node"]), "pid": int(h["pid"]), "hypothesis": str(h["hypothesis"]),
                        "hypothesis_pid": int(h["hypothesis_pid"]), "hypothesis_mass": float(h["hypothesis_mass"])}
                       for h in hyps), key=lambda h: h["node"])
    except (KeyError, TypeError, ValueError):
        raise StoreError(f"the mass hypotheses recorded in a batch's provenance are malformed: {hyps!r}") from None


def _lookup(keys_sorted: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``query`` in ``keys_sorted`` and whether they were found."""
    pos = np.searchsorted(keys_sorted, query)
    pos_c = np.minimum(pos, max(len(keys_sorted) - 1, 0))
    found = (pos < len(keys_sorted)) & (keys_sorted[pos_c] == query) if len(keys_sorted) else np.zeros(len(query), bool)
    return pos_c, found


def _kinematics(out: dict, prefix: str, px, py, pz, e, mass: np.ndarray | None = None) -> None:
    p = np.sqrt(px**2 + py**2 + pz**2)
    out[f"{prefix}_PX"], out[f"{prefix}_PY"], out[f"{prefix}_PZ"], out[f"{prefix}_PE"] = px, py, pz, e
    out[f"{prefix}_P"] = p
    out[f"{prefix}_PT"] = np.hypot(px, py)
    out[f"{prefix}_ETA"] = pseudorapidity(px, py, pz)
    if mass is None:
        m2 = e**2 - p**2
        mass = np.where(np.isnan(m2), np.nan, np.sqrt(np.clip(m2, 0, None)))
    out[f"{prefix}_M"] = mass


def _chunk_ntuple(store, tree: list, segs: list[dict], prefixes: list[str], cocktail: bool = False,
                  n_var: int = 0) -> pd.DataFrame:
    """The candidates of ``segs`` (whole batches, or channels of cocktail batches, of one tree shape).

    Each segment's events are a contiguous block of its batch (``first_event``, ``n``) and its
    ``mc_particles`` rows a particle-major block (``index = first_mc + node * n + local event``);
    every table row is mapped to its segment by a sorted search on (batch, index), vectorised."""
    segs = sorted(segs, key=lambda g: (g["batch"], g["first_event"]))
    ids_arr = np.array(sorted({g["batch"] for g in segs}), dtype=np.int64)
    sb = np.searchsorted(ids_arr, np.array([g["batch"] for g in segs], dtype=np.int64)).astype(np.int64)  # batch pos
    N = np.array([g["n"] for g in segs], dtype=np.int64)
    E0 = np.array([g["first_event"] for g in segs], dtype=np.int64)
    M0 = np.array([g["first_mc"] for g in segs], dtype=np.int64)
    off = np.concatenate([[0], np.cumsum(N)[:-1]]).astype(np.int64)
    total = int(N.sum())
    K = len(tree)
    out: dict[str, np.ndarray] = {}
    out["batch"] = np.repeat(ids_arr[sb], N)
    local_all = np.arange(total, dtype=np.int64) - np.repeat(off, N)
    out["event"] = (np.repeat(E0, N) + local_all).astype(np.int32)
    if cocktail:
        out["channel"] = np.repeat(np.array([g["channel"] for g in segs], dtype=np.int16), N)
    ev_keys = sb << 32 | E0
    mc_keys = sb << 32 | M0

    def segment_of(bpos: np.ndarray, value: np.ndarray, keys: np.ndarray, width: np.ndarray):
        """(segment, local offset, found) of rows (batch position, index) against segment starts."""
        q = bpos.astype(np.int64) << 32 | np.maximum(value, 0).astype(np.int64)
        sg = np.searchsorted(keys, q, side="right") - 1
        sgc = np.maximum(sg, 0)
        local = value.astype(np.int64) - (keys[sgc] & 0xFFFFFFFF)
        found = (sg >= 0) & (sb[sgc] == bpos) & (value >= 0) & (local < width[sgc])
        return sgc, local, found

    ev = store.read("events", columns=["batch", "event", "n_tracks", "weight", "n_pvs"], batches=ids_arr.tolist())
    bpos = np.searchsorted(ids_arr, ev["batch"].to_numpy())
    sg, local, ok = segment_of(bpos, ev["event"].to_numpy().astype(np.int64), ev_keys, N)
    row = off[sg[ok]] + local[ok]
    ntr = np.full(total, -1, dtype=np.int32)
    ntr[row] = ev["n_tracks"].to_numpy()[ok]
    w = np.full(total, np.nan)
    w[row] = ev["weight"].to_numpy()[ok]
    out["nTracks"], out["weight"] = ntr, w
    npv = np.full(total, -1, dtype=np.int16)  # the Vertexing stage's PV count (branch nPVs where it ran)
    npv[row] = ev["n_pvs"].to_numpy()[ok]

    # MC truth: every mc_particles row of a segment sits in cell (node, event) of a K x total grid
    mc = store.read("mc_particles", columns=["batch", "index", "event", "pid", "px", "py", "pz", "e",
                                             "prod_vertex", "decay_vertex", "reconstructed"],
                    batches=ids_arr.tolist())
    bpos_all = np.searchsorted(ids_arr, mc["batch"].to_numpy())
    sg, local, ok = segment_of(bpos_all, mc["index"].to_numpy().astype(np.int64), mc_keys, K * N)
    # rows of a cocktail's other channels (another shape, or not selected) are not ours; a batch of
    # one tree has no other rows
    plain = np.isin(bpos_all, sb[np.array([g["channel"] < 0 for g in segs])])
    stray = ~ok & plain
    if stray.any():
        b0 = int(mc["batch"].to_numpy()[stray][0])
        raise StoreError(
            f"mc_particles of batch {b0} do not follow the particle-major layout index = node * n_events + event "
            f"of its {K}-node decay tree ({int(stray.sum())} rows); cannot build candidates"
        )
    mc = mc.loc[ok].reset_index(drop=True)
    bpos, sg, local = bpos_all[ok], sg[ok], local[ok]
    Nb = N[sg]
    node, evn = local // Nb, local % Nb
    bad = (node >= K) | (evn + E0[sg] != mc["event"].to_numpy())
    if bad.any():
        b0 = int(mc["batch"].to_numpy()[bad][0])
        raise StoreError(
            f"mc_particles of batch {b0} do not follow the particle-major layout index = node * n_events + event "
            f"of its {K}-node decay tree ({int(bad.sum())} rows); cannot build candidates"
        )
    flat = node * total + off[sg] + evn

    def grid(values, fill, dtype):
        g = np.full(K * total, fill, dtype=dtype)
        g[flat] = values
        return g.reshape(K, total)

    tid = grid(mc["pid"].to_numpy(), 0, np.int32)
    tp = {c: grid(mc[c].to_numpy(), np.nan, np.float64) for c in ("px", "py", "pz", "e")}
    reco_flag = grid(mc["reconstructed"].to_numpy(), False, bool)

    mcv = store.read("mc_vertices", columns=["batch", "index", "x", "y", "z", "t"], batches=ids_arr.tolist())
    vkey = np.searchsorted(ids_arr, mcv["batch"].to_numpy()).astype(np.int64) << 32 | mcv["index"].to_numpy().astype(np.int64)
    order = np.argsort(vkey, kind="stable")
    vkey = vkey[order]
    vxyz = {c: mcv[c].to_numpy()[order].astype(np.float64) for c in ("x", "y", "z", "t")}

    def vertex_grid(col: str):
        v = mc[col].to_numpy().astype(np.int64)
        pos, found = _lookup(vkey, bpos.astype(np.int64) << 32 | np.maximum(v, 0))
        found &= v >= 0
        res = {}
        for c in ("x", "y", "z", "t"):
            val = np.where(found, vxyz[c][pos] if len(vkey) else np.nan, np.nan)
            res[c] = grid(val, np.nan, np.float64)
        return res

    origin, end = vertex_grid("prod_vertex"), vertex_grid("decay_vertex")

    # reconstructed particles linked to a node
    par = store.read("particles", batches=ids_arr.tolist())
    link = par["mc_particle"].to_numpy().astype(np.int64)
    pb = np.searchsorted(ids_arr, par["batch"].to_numpy())
    psg, plocal, keep = segment_of(pb, link, mc_keys, K * N)
    pN = N[psg]
    pnode = np.where(keep, plocal // pN, -1)
    keep &= pnode < K
    pflat = pnode * total + off[psg] + np.where(keep, plocal % pN, 0)
    pflat, first = np.unique(pflat[keep], return_index=True)  # first reco particle per MC particle
    prow = np.flatnonzero(keep)[first]
    have = np.zeros(K * total, dtype=bool)
    have[pflat] = True
    have = have.reshape(K, total)

    def rgrid(col: str, dtype=np.float64, fill=np.nan):
        g = np.full(K * total, fill, dtype=dtype)
        g[pflat] = par[col].to_numpy()[prow]
        return g.reshape(K, total)

    rp = {c: rgrid(c) for c in ("px", "py", "pz", "e", "m")}
    rid = rgrid("pid", np.int32, 0)
    rvtx = rgrid("vertex", np.int64, -1)
    # the Vertexing stage's branches, only where it ran (a production without it keeps its ntuple)
    vtx_on = "track_chi2ndof" in par.columns and bool(np.isfinite(par["track_chi2ndof"].to_numpy()).any())
    # the track type alone: set by the Efficiency stage (its drawn class) even without the Vertexing stage
    type_on = "track_type" in par.columns and bool((par["track_type"].to_numpy() != 0).any())
    vcols = ["batch", "index", "x", "y", "z", "m_truehyp", "n_invisible"] + (["chi2", "ndof"] if vtx_on else [])
    track_vtx = ("track_type", "track_chi2ndof", "track_ghost_prob", "ip_ownpv", "ipchi2_ownpv", "minipchi2")
    comp_vtx = ("ip_ownpv", "ipchi2_ownpv", "minipchi2", "fd_ownpv", "fdchi2_ownpv", "dira_ownpv", "tau", "tau_err",
                "doca_max", "mcorr")
    vg = {c: rgrid(c) for c in dict.fromkeys(track_vtx + comp_vtx)} if vtx_on else {}
    if type_on and not vtx_on:
        vg["track_type"] = rgrid("track_type")
    track_cols = track_vtx if vtx_on else (("track_type",) if type_on else ())
    if vtx_on and (npv >= 0).any():
        out["nPVs"] = npv
    # the Bremsstrahlung stage's flag, only where it ran (-1: no track in that event, or a batch without it)
    brem_on = "has_brem_added" in par.columns and bool((par["has_brem_added"].to_numpy() >= 0).any())
    brem_g = rgrid("has_brem_added", np.int8, -1) if brem_on else None
    # ProbNN (issue 24), only where a chain drew it (NaN: a track whose chain has no probnn step)
    probnn_cols = [c for c in PROBNN_COLUMNS["particles"] if c in par.columns]
    probnn_on = bool(probnn_cols) and bool(np.isfinite(par[probnn_cols[0]].to_numpy()).any())
    probnn_g = {c: rgrid(c, np.float32) for c in probnn_cols} if probnn_on else {}
    vert = store.read("vertices", columns=vcols, batches=ids_arr.tolist())
    vk = np.searchsorted(ids_arr, vert["batch"].to_numpy()).astype(np.int64) << 32 | vert["index"].to_numpy().astype(np.int64)
    vorder = np.argsort(vk, kind="stable")
    vk = vk[vorder]

    children = [list(nd.get("children", [])) for nd in tree]

    def neutrals_below(k: int) -> int:
        n, stack = 0, list(children[k])
        while stack:
            c = stack.pop()
            if tree[c]["stable"]:
                n += int(tree[c].get("charge", 0)) == 0 and not tree[c].get("seen", False)
            else:
                stack.extend(children[c])
        return n

    def charged_tracks_below(k: int) -> list[int]:
        outl, stack = [], list(children[k])
        while stack:
            c = stack.pop()
            if tree[c]["stable"]:
                if int(tree[c].get("charge", 0)) != 0 or tree[c].get("seen", False):
                    outl.append(c)
            else:
                stack.extend(children[c])
        return sorted(outl)

    batch_pos_rows = np.repeat(sb, N)
    vvals = {c: vert[c].to_numpy()[vorder].astype(np.float64) for c in vcols[2:] if c != "n_invisible"}
    v_ninv = vert["n_invisible"].to_numpy()[vorder].astype(np.int16)
    is_track = [bool(nd["stable"]) and int(nd.get("charge", 0)) != 0 for nd in tree]
    pidg = {col: rgrid(col) for col in PID_BRANCHES} if any(is_track) else {}
    varg = _variation_grids(store, ids_arr, par, prow, pflat, K, total, n_var, tuple(probnn_g)) \
        if n_var and any(is_track) else {}
    # swapped[node]: per candidate, the hypothesis' PDG id (as written for the decay) or 0 where the
    # node is not swapped; sign[node]: the sign of the node's PDG id as written
    swapped: dict[int, np.ndarray] = {}
    sign: dict[int, int] = {}
    for j, g in enumerate(segs):
        for h in g["hyps"]:
            k = int(h["node"])
            swapped.setdefault(k, np.zeros(total, dtype=np.int64))[off[j]:off[j] + N[j]] = int(h["hypothesis_pid"])
            sign[k] = int(np.sign(int(h["pid"])))
    if swapped:
        # true-hypothesis masses and energies of the tracks (mass of the true PDG id of the MC truth)
        m_true = np.full((K, total), np.nan)
        for k in np.flatnonzero(is_track):
            m_true[k, have[k]] = pdg_mass(tid[k][have[k]])
        e_true = np.sqrt(rp["px"] ** 2 + rp["py"] ** 2 + rp["pz"] ** 2 + m_true**2)
    for k, nd in enumerate(tree):
        X = prefixes[k]
        out[f"{X}_TRUEID"] = tid[k]
        out[f"{X}_TRUEP_X"], out[f"{X}_TRUEP_Y"], out[f"{X}_TRUEP_Z"] = tp["px"][k], tp["py"][k], tp["pz"][k]
        out[f"{X}_TRUEP_E"] = tp["e"][k]
        tpp = np.sqrt(tp["px"][k] ** 2 + tp["py"][k] ** 2 + tp["pz"][k] ** 2)
        out[f"{X}_TRUEP"] = tpp
        out[f"{X}_TRUEPT"] = np.hypot(tp["px"][k], tp["py"][k])
        tm = np.sqrt(np.clip(tp["e"][k] ** 2 - tpp**2, 0, None))
        out[f"{X}_TRUE_M"] = tm
        for c in ("x", "y", "z"):
            out[f"{X}_TRUEORIGINVERTEX_{c.upper()}"] = origin[c][k]
        out[f"{X}_Reconstructed"] = reco_flag[k].astype(np.int8)
        stable = bool(nd["stable"])
        if not stable:
            for c in ("x", "y", "z"):
                out[f"{X}_TRUEENDVERTEX_{c.upper()}"] = end[c][k]
            with np.errstate(divide="ignore", invalid="ignore"):
                out[f"{X}_TRUETAU"] = (end["t"][k] - origin["t"][k]) * tm / tp["e"][k]
        if is_track[k]:
            _kinematics(out, X, rp["px"][k], rp["py"][k], rp["pz"][k], rp["e"][k], mass=rp["m"][k])
            out[f"{X}_ID"] = rid[k]
            if k in swapped:  # LHCb's SubstitutePID: the ID is the hypothesis', the sign the row's
                hp = swapped[k]
                out[f"{X}_ID"] = np.where(hp != 0, np.sign(rid[k]) * sign[k] * hp, rid[k]).astype(np.int32)
                out[f"{X}_M_TRUEHYP"] = m_true[k]
            for col, suffix in PID_BRANCHES.items():
                out[f"{X}_{suffix}"] = pidg[col][k]
            for j in range(n_var):
                for col, suffix in PID_BRANCHES.items():
                    out[f"{X}_{suffix}_var{j + 1}"] = varg[col][j, k]
            for col in track_cols:
                out[f"{X}_{lhcb_name(col)}"] = vg[col][k]
            # a cocktail's channels share nodes across species (e+ e- beside mu+ mu-): every track then
            if brem_on and (cocktail or abs(int(nd["pid"])) == SPECIES_PDG["e"]):
                out[f"{X}_{lhcb_name('has_brem_added')}"] = brem_g[k]
            for col, g in probnn_g.items():
                out[f"{X}_{lhcb_name(col)}"] = g[k]
                for j in range(n_var):
                    out[f"{X}_{lhcb_name(col)}_var{j + 1}"] = varg[col][j, k]
        elif stable and nd.get("seen", False):  # a reconstructed neutral (photon): its kinematics
            _kinematics(out, X, rp["px"][k], rp["py"][k], rp["pz"][k], rp["e"][k], mass=rp["m"][k])
            out[f"{X}_ID"] = rid[k]
        elif not stable:
            tracks = charged_tracks_below(k)
            if tracks:
                s = {c: rp[c][tracks].sum(axis=0) for c in ("px", "py", "pz", "e")}  # NaN if any is missing
            else:
                s = {c: np.full(total, np.nan) for c in ("px", "py", "pz", "e")}
            linked = have[k]
            comp = {c: np.where(linked, rp[c][k], s[c]) for c in s}
            _kinematics(out, X, comp["px"], comp["py"], comp["pz"], comp["e"])
            out[f"{X}_M"] = np.where(linked, rp["m"][k], out[f"{X}_M"])
            v = rvtx[k]
            pos, found = _lookup(vk, batch_pos_rows << 32 | np.maximum(v, 0))
            found &= v >= 0
            for c in ("x", "y", "z"):
                out[f"{X}_ENDVERTEX_{c.upper()}"] = np.where(found, vvals[c][pos] if len(vk) else np.nan, np.nan)
            out[f"{X}_NINVISIBLE"] = np.where(found, v_ninv[pos] if len(vk) else 0, neutrals_below(k)).astype(np.int16)
            if abs(int(nd["pid"])) == 111 and len(children[k]) == 2 and all(tree[c].get("seen") for c in children[k]):
                # pi0 -> gamma gamma of a Neutrals production, LHCb's TupleToolPi0Info "Type": 1 merged (its row),
                # 2 resolved (both photons), 0 neither
                out[f"{X}_Type"] = np.where(linked, 1, np.where(np.isfinite(s["e"]), 2, 0)).astype(np.int8)
            if vtx_on:
                for c in ("chi2", "ndof"):
                    out[f"{X}_{lhcb_name(c)}"] = np.where(found, vvals[c][pos] if len(vk) else np.nan, np.nan)
                for col in comp_vtx:
                    out[f"{X}_{lhcb_name(col)}"] = vg[col][k]
            if any(t in swapped for t in tracks):
                if tracks:
                    m2 = e_true[tracks].sum(axis=0) ** 2 - sum(rp[c][tracks].sum(axis=0) ** 2 for c in ("px", "py", "pz"))
                    fallback = np.where(np.isnan(m2), np.nan, np.sqrt(np.clip(m2, 0, None)))
                else:
                    fallback = np.full(total, np.nan)
                out[f"{X}_M_TRUEHYP"] = np.where(found, vvals["m_truehyp"][pos] if len(vk) else np.nan, fallback)
    return pd.DataFrame(out)


def _variation_grids(store, ids_arr: np.ndarray, par: pd.DataFrame, prow: np.ndarray, pflat: np.ndarray, K: int,
                     total: int, n_var: int, extra: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """``{PID column: (n_var, K nodes, total events)}`` from the ``pid_variations`` rows of the
    particles rows ``prow`` (the track of each (node, event) cell ``pflat``); NaN where none.
    ``extra``: further columns of the table (the ProbNN columns)."""
    var = store.read("pid_variations", batches=ids_arr.tolist())
    pkey = np.searchsorted(ids_arr, par["batch"].to_numpy()[prow]).astype(np.int64) << 32 | \
        par["index"].to_numpy()[prow].astype(np.int64)
    order = np.argsort(pkey, kind="stable")
    pkey, cell = pkey[order], pflat[order]
    vkey = np.searchsorted(ids_arr, var["batch"].to_numpy()).astype(np.int64) << 32 | \
        var["particle"].to_numpy().astype(np.int64)
    pos, found = _lookup(pkey, vkey)
    member = var["member"].to_numpy().astype(np.int64)
    found &= (member >= 1) & (member <= n_var)
    flat = (member[found] - 1) * (K * total) + cell[pos[found]]
    out = {}
    for col in (*PID_BRANCHES, *extra):
        g = np.full(n_var * K * total, np.nan, dtype=np.float32)
        g[flat] = var[col].to_numpy()[found]
        out[col] = g.reshape(n_var, K, total)
    return out


def iter_candidates(store, *, batches: Iterable[int] | None = None, production: str | None = None,
                    prefixes: Mapping[str | int, str] | None = None, chunk_events: int = 500_000,
                    channels: Iterable[int] | None = None):
    """Yield the candidate ntuple in chunks of whole batches (about ``chunk_events`` events each).

    ``channels``: of cocktail batches, only these channels (by index); the candidates of a cocktail
    carry their channel in the ``channel`` branch.

    Raises:
        StoreError: no batch selected, batches without a decay tree, or batches of different
            decay trees mixed (select one with ``production``, ``batches`` or ``channels``).
    """
    groups, info = _groups(store, batches, production, channels)
    if len(groups) > 1:
        lines = []
        for g in info.values():
            n_batches = len({s["batch"] for s in g["segments"]})
            for label, n in g["labels"].items():
                events = f"{n} events in " if g["first_channel"] >= 0 else ""
                lines.append(f"  [{label}]: {events}{n_batches} batch(es), production(s) "
                             f"{', '.join(sorted(g['productions']))}")
        raise StoreError(
            f"the selected batches of {store.url} hold {len(groups)} different decay trees (or mass hypotheses, or "
            "numbers of PID variations); "
            "export one at a "
            "time with production=... (CLI: --production), batches=... (CLI: --batch) or, for a cocktail whose "
            "channels differ in shape, channels=... (CLI: --channel):\n" + "\n".join(lines)
        )
    tree, segs, _ = groups[0]
    cocktail = any(g["channel"] >= 0 for g in segs)
    n_var = segs[0]["n_var"]
    pref = default_prefixes(tree, prefixes)
    by_batch: dict[int, list[dict]] = {}
    for g in segs:
        by_batch.setdefault(g["batch"], []).append(g)
    chunk: list[dict] = []
    size = 0
    for b in sorted(by_batch):
        chunk += by_batch[b]
        size += sum(g["n"] for g in by_batch[b])
        if size >= chunk_events:
            yield _chunk_ntuple(store, tree, chunk, pref, cocktail, n_var)
            chunk, size = [], 0
    if chunk:
        yield _chunk_ntuple(store, tree, chunk, pref, cocktail, n_var)


def candidate_ntuple(store, *, batches: Iterable[int] | None = None, production: str | None = None,
                     prefixes: Mapping[str | int, str] | None = None,
                     channels: Iterable[int] | None = None) -> pd.DataFrame:
    """The whole candidate ntuple as one DataFrame (see the module docstring for the branches)."""
    parts = list(iter_candidates(store, batches=batches, production=production, prefixes=prefixes,
                                 channels=channels))
    return parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)


def export_ntuple(store, out: str | os.PathLike, *, tree: str | None = None, batches: Iterable[int] | None = None,
                  production: str | None = None, prefixes: Mapping[str | int, str] | None = None,
                  chunk_events: int = 500_000, channels: Iterable[int] | None = None) -> Path:
    """Write the candidate ntuple to ROOT (TTree ``tree``, default ``DecayTree``) or Parquet.

    ``out`` may be ``file.root:TREE``. The file is written under a temporary name and renamed,
    so an interrupted export leaves no half-written file.
    """
    from mambah.io import split_spec

    path, spec_tree = split_spec(out)
    tree = tree or spec_tree or "DecayTree"
    suffix = path.name.lower()
    if not suffix.endswith((".root", ".parquet", ".pq")):
        raise ConfigurationError(f"write the ntuple to a .root or .parquet file, not {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    weights = {"weighted": 0}

    def watch(dfs):
        for df in dfs:
            weights["weighted"] += int(np.count_nonzero(df["weight"].to_numpy() != 1.0))
            yield df

    chunks = watch(iter_candidates(store, batches=batches, production=production, prefixes=prefixes,
                                   chunk_events=chunk_events, channels=channels))
    n = 0
    try:
        if suffix.endswith(".root"):
            import uproot

            from mambah.store.export import write_tree

            with uproot.recreate(tmp) as f:
                n = write_tree(f, tree, ({c: df[c].to_numpy() for c in df.columns} for df in chunks))
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            writer = None
            try:
                for df in chunks:
                    t = pa.Table.from_pandas(df, preserve_index=False)
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, t.schema)
                    writer.write_table(t)
                    n += len(df)
            finally:
                if writer is not None:
                    writer.close()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    log.info("wrote %d candidates to %s", n, path)
    if weights["weighted"]:
        log.warning("%s: %d of %d candidates are WEIGHTED events (a production made with --weighted / unweight=False): "
                    "fill every histogram with the 'weight' branch, or the distributions are wrong", path,
                    weights["weighted"], n)
    return path
