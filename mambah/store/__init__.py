"""The relational event store: one SQLAlchemy schema, DuckDB (default), SQLite or PostgreSQL.

See :class:`~mambah.store.store.Store`. Heavy optional parts (uproot exports, the flat
ntuple) are imported on first use.
"""

from __future__ import annotations

from mambah._lazy import lazy_attributes
from mambah.store.store import DEFAULT_URL, KEYS, BatchValidationError, Store, normalise_url

_LAZY = {
    "candidate_ntuple": "mambah.store.ntuple",
    "export_ntuple": "mambah.store.ntuple",
    "default_prefixes": "mambah.store.ntuple",
    "export_parquet": "mambah.store.export",
    "export_root": "mambah.store.export",
}

__all__ = ["Store", "normalise_url", "DEFAULT_URL", "KEYS", "BatchValidationError", *_LAZY]

__getattr__, __dir__ = lazy_attributes("mambah.store", _LAZY, globals(), __all__)
