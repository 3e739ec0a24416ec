"""Generator arrays -> the ``events``, ``mc_particles`` and ``mc_vertices`` tables of a batch.

Layout (the generation contract of mambah):

- ``mc_particles`` is particle-major: ``index = node * n_events + event``, nodes numbered
  depth-first (head = 0) as in ``batch.info["decay_tree"]``;
- ``mc_vertices``: the PV of event ``e`` has index ``e`` (mother -1); the decay vertex of the
  k-th decaying node (counted in node order) has index ``n_events * (1 + k) + e``;
- ``prod_vertex`` / ``decay_vertex`` / ``mother`` are batch-local indices, -1 = none.

Building the tables costs a few vectorised numpy passes; DataFrames are made with ``copy=False``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mambah.physics.columns import COLUMNS, vertexing_defaults

__all__ = ["fill_tables", "vertex_layout"]


def vertex_layout(tree: list[dict]) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """Per-node offsets of the layout.

    Returns:
        decaying: node numbers of the decaying nodes, in node order (k-th -> vertex block 1+k);
        prod_block: per node, the vertex block of its production vertex (0 = PV);
        decay_block: per node, the vertex block of its decay vertex (-1 = none);
        mother: per node, the mother node (-1 = head).
    """
    decaying = [i for i, n in enumerate(tree) if n["children"]]
    block = {node: 1 + k for k, node in enumerate(decaying)}
    mother = np.array([n["mother"] for n in tree], dtype=np.int64)
    prod_block = np.array([0 if m < 0 else block[m] for m in mother], dtype=np.int64)
    decay_block = np.array([block.get(i, -1) for i in range(len(tree))], dtype=np.int64)
    return decaying, prod_block, decay_block, mother


def fill_tables(batch, tree: list[dict], pid: np.ndarray, p4: np.ndarray, vtx: np.ndarray,
                weight: np.ndarray | None) -> None:
    """Write the three generator tables into ``batch.tables``.

    Args:
        batch: the :class:`~mambah.batch.Batch`.
        tree: the decay-tree node list.
        pid: PDG ids, shape ``(n_nodes, n_events)``.
        p4: four-momenta (MeV), shape ``(4, n_nodes, n_events)``: px, py, pz, E.
        vtx: vertices (mm, ns), shape ``(4, n_vertices, n_events)``: x, y, z, t; block 0 = PV.
        weight: per-event weight, or None for unit weights.
    """
    n = batch.n_events
    nn = len(tree)
    decaying, prod_block, decay_block, mother = vertex_layout(tree)
    nv = 1 + len(decaying)
    ev = np.arange(n, dtype=np.int32)
    bid = np.int64(batch.id)
    f32 = np.float32

    events = {
        "batch": np.full(n, bid, dtype=np.int64),
        "event": ev,
        "pv_x": vtx[0, 0].astype(f32),
        "pv_y": vtx[1, 0].astype(f32),
        "pv_z": vtx[2, 0].astype(f32),
        "pv_t": vtx[3, 0].astype(f32),
        "n_tracks": np.zeros(n, dtype=np.int32),
        "weight": np.ones(n, dtype=f32) if weight is None else np.asarray(weight, dtype=f32),
        **vertexing_defaults("events", n),
    }

    def per_node(offsets: np.ndarray, none_mask: np.ndarray) -> np.ndarray:
        out = offsets.astype(np.int32)[:, None] + ev[None, :]
        out[none_mask] = -1
        return out.reshape(-1)

    mcp = {
        "batch": np.full(nn * n, bid, dtype=np.int64),
        "index": np.arange(nn * n, dtype=np.int32),
        "event": np.tile(ev, nn),
        "pid": np.ascontiguousarray(pid, dtype=np.int32).reshape(-1),
        "px": p4[0].astype(np.float64).reshape(-1),  # four-momenta in float64 (see schema._f64)
        "py": p4[1].astype(np.float64).reshape(-1),
        "pz": p4[2].astype(np.float64).reshape(-1),
        "e": p4[3].astype(np.float64).reshape(-1),
        "prod_vertex": per_node(prod_block * n, np.zeros(nn, bool)),
        "decay_vertex": per_node(decay_block * n, decay_block < 0),
        "mother": per_node(mother * n, mother < 0),
        "reconstructed": np.zeros(nn * n, dtype=bool),
    }

    vmother = np.array([-1] + decaying, dtype=np.int64)
    mcv = {
        "batch": np.full(nv * n, bid, dtype=np.int64),
        "index": np.arange(nv * n, dtype=np.int32),
        "event": np.tile(ev, nv),
        "x": vtx[0].astype(f32).reshape(-1),
        "y": vtx[1].astype(f32).reshape(-1),
        "z": vtx[2].astype(f32).reshape(-1),
        "t": vtx[3].astype(f32).reshape(-1),
        "mother": per_node(vmother * n, vmother < 0),
    }
    for table, cols in (("events", events), ("mc_particles", mcp), ("mc_vertices", mcv)):
        want = COLUMNS[table]
        batch.tables[table] = pd.DataFrame({c: cols[c].astype(want[c], copy=False) for c in want}, copy=False)
