"""Columns: the tables of a batch, their columns and numpy dtypes, and their units.

:data:`COLUMNS` is the single source of truth for the in-memory batch tables: the name and numpy
dtype of every column the stages produce and the store writes (the store's SQLAlchemy schema,
:mod:`mambah.store.schema`, is built to match it, and a test checks that they agree).

Units: MeV (energies, momenta, masses), mm (positions), ns (times) — the LHCb convention.
"""

from __future__ import annotations

__all__ = ["COLUMNS", "DATA_TABLES", "PID_COLUMNS"]

#: PID variables of reconstructed tracks (NaN where not produced, e.g. outside the RICH acceptance).
PID_COLUMNS: dict[str, str] = {
    "rich_dll_e": "float32",
    "rich_dll_mu": "float32",
    "rich_dll_k": "float32",
    "rich_dll_p": "float32",
    "is_muon": "float32",
    "muon_mu_ll": "float32",
    "muon_bkg_ll": "float32",
    "pid_e": "float32",
    "pid_mu": "float32",
    "pid_k": "float32",
    "pid_p": "float32",
}

#: Columns of each data table as produced by the stages: name -> numpy dtype.
COLUMNS: dict[str, dict[str, str]] = {
    "events": {
        "batch": "int64",
        "event": "int32",
        "pv_x": "float32",
        "pv_y": "float32",
        "pv_z": "float32",
        "pv_t": "float32",
        "n_tracks": "int32",
        "weight": "float32",
    },
    "mc_particles": {
        "batch": "int64",
        "index": "int32",
        "event": "int32",
        "pid": "int32",
        "px": "float64",
        "py": "float64",
        "pz": "float64",
        "e": "float64",
        "prod_vertex": "int32",
        "decay_vertex": "int32",
        "mother": "int32",
        "reconstructed": "bool",
    },
    "mc_vertices": {
        "batch": "int64",
        "index": "int32",
        "event": "int32",
        "x": "float32",
        "y": "float32",
        "z": "float32",
        "t": "float32",
        "mother": "int32",
    },
    "particles": {
        "batch": "int64",
        "index": "int32",
        "event": "int32",
        "mc_particle": "int32",
        "pid": "int32",
        "charge": "int8",
        "px": "float64",
        "py": "float64",
        "pz": "float64",
        "e": "float64",
        "m": "float64",
        "mother": "int32",
        "vertex": "int32",
        **PID_COLUMNS,
    },
    "vertices": {
        "batch": "int64",
        "index": "int32",
        "event": "int32",
        "particle": "int32",
        "mc_vertex": "int32",
        "x": "float32",
        "y": "float32",
        "z": "float32",
        "m": "float64",
        "n_daughters": "int16",
    },
}

#: Data tables in write order (parents before children).
DATA_TABLES: tuple[str, ...] = ("events", "mc_vertices", "mc_particles", "particles", "vertices")
