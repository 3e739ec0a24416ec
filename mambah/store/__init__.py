"""The relational event store: one SQLAlchemy schema, DuckDB (default), SQLite or PostgreSQL.

See :class:`~mambah.store.store.Store`. Heavy optional parts (uproot exports, the flat
ntuple) are imported on first use.
"""

from __future__ import annotations

from mambah.store.store import DEFAULT_URL, KEYS, BatchValidationError, Store, normalise_url

__all__ = ["Store", "normalise_url", "DEFAULT_URL", "KEYS", "BatchValidationError",
           "candidate_ntuple", "export_ntuple", "default_prefixes", "export_parquet", "export_root"]


def __getattr__(name: str):
    if name in ("candidate_ntuple", "export_ntuple", "default_prefixes"):
        from mambah.store import ntuple

        return getattr(ntuple, name)
    if name in ("export_parquet", "export_root"):
        from mambah.store import export

        return getattr(export, name)
    raise AttributeError(f"module 'mambah.store' has no attribute {name!r}")
