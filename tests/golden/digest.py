"""Digest of a production's store tables (sorted by key, every column), for the golden test."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

GOLDEN = Path(__file__).resolve().parent / "production.npz"
#: the README's main job: unweighted events with the lattice form factors of the semileptonic decay
DESCRIPTOR = "Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu Lb2LclnuLQCD"
TABLES = ("events", "mc_particles", "mc_vertices", "particles", "vertices")
_KEYS = {"events": ["batch", "event"]}


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    keys = [k for k in ("batch", "event", "index") if k in df.columns]
    df = df.sort_values(keys, kind="stable").reset_index(drop=True)
    return df[sorted(df.columns)]


def table_arrays(df: pd.DataFrame) -> dict[str, np.ndarray]:
    df = _sorted(df)
    return {c: df[c].to_numpy() for c in df.columns}


def digest(df: pd.DataFrame) -> str:
    h = hashlib.sha256()
    for c, v in table_arrays(df).items():
        h.update(c.encode())
        a = np.asarray(v)
        if a.dtype == object:
            h.update(repr(a.tolist()).encode())
        else:
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]
