"""Synthetic batches that follow the generation contract, for tests and benchmarks of the store.

:func:`synthetic_batch` builds the reference channel
``Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu`` without any physics machinery: random
daughter momenta, parents as the sums of their daughters (so four-momentum is conserved exactly),
a reconstructed track for most charged stable particles, random PID variables. The layout is the
one of the generation stage (particle-major ``index = node * n_events + event``, vertices
``n_events * (1 + k) + event`` for the k-th decaying node, ``batch.info["decay_tree"]``).
"""

from __future__ import annotations

import contextlib
import uuid

import numpy as np

from mambah.batch import Batch, empty_table
from mambah.physics import species_mass, species_of_pdg
from mambah.physics.columns import PID_COLUMNS

__all__ = ["REFERENCE_TREE", "synthetic_batch", "pg_schema"]

#: Decay-tree nodes of the reference channel (depth-first, head = 0), as batch.info["decay_tree"].
REFERENCE_TREE = [
    {"name": "Lambda_b0", "pid": 5122, "mother": -1, "children": [1, 5, 6], "stable": False, "charge": 0},
    {"name": "Lambda_c+", "pid": 4122, "mother": 0, "children": [2, 3, 4], "stable": False, "charge": 1},
    {"name": "p+", "pid": 2212, "mother": 1, "children": [], "stable": True, "charge": 1},
    {"name": "K-", "pid": -321, "mother": 1, "children": [], "stable": True, "charge": -1},
    {"name": "pi+", "pid": 211, "mother": 1, "children": [], "stable": True, "charge": 1},
    {"name": "mu-", "pid": 13, "mother": 0, "children": [], "stable": True, "charge": -1},
    {"name": "anti-nu_mu", "pid": -14, "mother": 0, "children": [], "stable": True, "charge": 0},
]


def _mass(pid: int) -> float:
    """Mass (MeV) of a trackable species (from :mod:`mambah.physics`), 0 for anything else (the
    fixture's neutrinos, and the composites it stores as massless placeholders)."""
    name = species_of_pdg(pid)
    return species_mass(name) if name is not None else 0.0


def synthetic_batch(batch_id: int, n_events: int, seed: int = 0, *, efficiency: float = 0.9,
                    conjugate_fraction: float = 0.5, tree: list | None = None, variations: int = 0) -> Batch:
    """A batch of the reference channel with every table of the store filled (vectorised).

    Args:
        batch_id: the batch id.
        n_events: events in the batch.
        seed: seed of the random numbers.
        efficiency: probability that a charged stable particle becomes a reconstructed track.
        conjugate_fraction: fraction of events with charge-conjugated PDG ids.
        tree: decay-tree nodes (default :data:`REFERENCE_TREE`; the stable nodes' masses must be
            those of p, K, pi, mu or nu).
        variations: K > 0 fills ``pid_variations`` with K members of every track (the nominal PID
            plus noise; ``batch.info["pid_variations"]`` records K); 0 (default): the table is empty.
    """
    tree = REFERENCE_TREE if tree is None else tree
    rng = np.random.default_rng([seed, batch_id])
    n, k = int(n_events), len(tree)
    cc = np.where(rng.random(n) < conjugate_fraction, -1, 1)
    p4 = np.zeros((k, n, 4))
    for node in reversed(range(k)):  # children have higher node numbers: fill them first
        nd = tree[node]
        if nd["stable"]:
            pt = rng.exponential(1500.0, n) + 200.0
            eta = rng.uniform(2.0, 5.0, n)
            phi = rng.uniform(-np.pi, np.pi, n)
            px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
            m = _mass(nd["pid"])
            p4[node] = np.stack([px, py, pz, np.sqrt(px**2 + py**2 + pz**2 + m**2)], axis=1)
        else:
            p4[node] = p4[nd["children"]].sum(axis=0)
    decaying = [i for i, nd in enumerate(tree) if not nd["stable"]]
    vtx_of = {node: n * (1 + j) for j, node in enumerate(decaying)}  # + event
    ev = np.arange(n, dtype=np.int32)

    # mc_vertices: PVs then one decay vertex per decaying node
    nv = n * (1 + len(decaying))
    mcv = empty_table("mc_vertices", nv)
    mcv["batch"] = np.int64(batch_id)
    mcv["index"] = np.arange(nv, dtype=np.int32)
    mcv["event"] = np.tile(ev, 1 + len(decaying))
    pv = rng.normal(0, [0.04, 0.04, 45.0], (n, 3))
    pos = [pv]
    times = [rng.normal(0, 0.2, n)]
    mothers = [np.full(n, -1)]
    for node in decaying:
        prod = tree[node]["mother"]
        start = pv if prod < 0 else pos[1 + decaying.index(prod)]
        t0 = times[0] if prod < 0 else times[1 + decaying.index(prod)]
        p = np.linalg.norm(p4[node, :, :3], axis=1)
        flight = rng.exponential(1.0, n) * p / 5000.0  # mm, a displaced vertex
        pos.append(start + p4[node, :, :3] / p[:, None] * flight[:, None])
        times.append(t0 + flight / 299.792458 * p4[node, :, 3] / p)
        mothers.append(node * n + ev)
    allpos = np.concatenate(pos)
    mcv["x"], mcv["y"], mcv["z"] = (allpos[:, i].astype(np.float32) for i in range(3))
    mcv["t"] = np.concatenate(times).astype(np.float32)
    mcv["mother"] = np.concatenate(mothers).astype(np.int32)

    # mc_particles, particle-major
    m = k * n
    mcp = empty_table("mc_particles", m)
    node_of = np.repeat(np.arange(k), n)
    mcp["batch"] = np.int64(batch_id)
    mcp["index"] = np.arange(m, dtype=np.int32)
    mcp["event"] = np.tile(ev, k)
    pids = np.array([nd["pid"] for nd in tree])
    mcp["pid"] = (pids[node_of] * np.tile(cc, k)).astype(np.int32)
    for i, c in enumerate(("px", "py", "pz", "e")):
        mcp[c] = p4[:, :, i].reshape(-1)
    moth = np.array([nd["mother"] for nd in tree])
    prodv = np.array([-1 if nd["mother"] < 0 else vtx_of[nd["mother"]] for nd in tree])
    decv = np.array([vtx_of.get(i, -1) for i in range(k)])
    evk = np.tile(ev, k)
    mcp["mother"] = np.where(moth[node_of] < 0, -1, moth[node_of] * n + evk).astype(np.int32)
    mcp["prod_vertex"] = np.where(prodv[node_of] < 0, evk, prodv[node_of] + evk).astype(np.int32)
    mcp["decay_vertex"] = np.where(decv[node_of] < 0, -1, decv[node_of] + evk).astype(np.int32)
    charged = np.array([nd["stable"] and nd["charge"] != 0 for nd in tree])
    reco = charged[node_of] & (rng.random(m) < efficiency)
    mcp["reconstructed"] = reco

    # particles: one track per reconstructed MC particle, ordered by event then node
    src = np.flatnonzero(reco)
    src = src[np.lexsort((node_of[src], evk[src]))]
    npart = len(src)
    par = empty_table("particles", npart)
    par["batch"] = np.int64(batch_id)
    par["index"] = np.arange(npart, dtype=np.int32)
    par["event"] = evk[src].astype(np.int32)
    par["mc_particle"] = src.astype(np.int32)
    par["pid"] = mcp["pid"].to_numpy()[src]
    ch = np.array([nd["charge"] for nd in tree])
    par["charge"] = (ch[node_of[src]] * np.tile(cc, k)[src]).astype(np.int8)
    smear = 1 + rng.normal(0, 0.005, npart)
    for c in ("px", "py", "pz"):
        par[c] = mcp[c].to_numpy()[src] * smear
    mass = np.array([_mass(int(p)) for p in pids])[node_of[src]]
    p2 = sum(par[c].to_numpy().astype(np.float64) ** 2 for c in ("px", "py", "pz"))
    par["e"] = np.sqrt(p2 + mass**2)
    par["m"] = mass.astype(np.float64)
    par["mother"] = np.int32(-1)
    par["vertex"] = np.int32(-1)
    for c in PID_COLUMNS:
        par[c] = rng.normal(0, 10, npart).astype(np.float32)
    par["is_muon"] = (rng.random(npart) < 0.1).astype(np.float32)

    evt = empty_table("events", n)
    evt["batch"] = np.int64(batch_id)
    evt["event"] = ev
    evt["pv_x"], evt["pv_y"], evt["pv_z"] = (pv[:, i].astype(np.float32) for i in range(3))
    evt["pv_t"] = times[0].astype(np.float32)
    evt["n_tracks"] = rng.poisson(120, n).astype(np.int32)
    evt["weight"] = np.float32(1.0)

    b = Batch(id=int(batch_id), seed=int(seed), n_events=n)
    var = empty_table("pid_variations", npart * variations)
    if variations:  # drawn last: the other tables do not depend on it
        var["batch"] = np.int64(batch_id)
        var["particle"] = np.repeat(np.arange(npart, dtype=np.int32), variations)
        var["member"] = np.tile(np.arange(1, variations + 1, dtype=np.int16), npart)
        for c in PID_COLUMNS:
            var[c] = (np.repeat(par[c].to_numpy(), variations) + rng.normal(0, 1, len(var))).astype(np.float32)
    b.tables = {"events": evt, "mc_vertices": mcv, "mc_particles": mcp, "particles": par,
                "vertices": empty_table("vertices"), "pid_variations": var}
    b.info = {"production": "synthetic", "decay_tree": [dict(nd) for nd in tree],
              "descriptor": "Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu",
              "timings": {"synthetic": 0.0}, "models": {"pid_p": {"version": "1", "hash": "0" * 16}}}
    if variations:
        b.info["pid_variations"] = {"members": int(variations), "steps": {}, "without_members": []}
    return b


@contextlib.contextmanager
def pg_schema(postgres_url: str, prefix: str = "mambah_test"):
    """A fresh PostgreSQL schema, dropped on exit; yields a store URL whose search_path is it.

    Lets tests (and benchmarks) use the shared server without touching each other's tables::

        with pg_schema("postgresql+psycopg://postgres@127.0.0.1:5432/test") as url:
            store = Store(url)
    """
    from sqlalchemy.engine import make_url

    from mambah import extras

    psycopg = extras.psycopg()
    from psycopg import sql

    u = make_url(postgres_url)
    dsn = f"host={u.host or 'localhost'} port={u.port or 5432} user={u.username} dbname={u.database}"
    if u.password:
        dsn += f" password={u.password}"
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield u.update_query_dict({"options": f"-csearch_path={name}"}).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
