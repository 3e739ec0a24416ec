"""Shared fixtures: backends, the real calibration sample, a light TensorFlow."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
PG_HOST, PG_PORT = "127.0.0.1", 5432


def _pg_answers() -> bool:
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """URL of the real PostgreSQL test server; skips (with the reason) where none answers."""
    if not _pg_answers():
        pytest.skip(f"no PostgreSQL server answers at {PG_HOST}:{PG_PORT} (database 'test', trust auth)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed: pip install 'mambah[postgres]'")
    return os.environ.get("MAMBAH_TEST_PG_URL", f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/test")


@pytest.fixture(scope="session")
def real_data_path() -> Path:
    """The real LHCb Run 3 proton calibration sample beside the checkout (../shared/data)."""
    p = SHARED_DATA / "lc_protons_run3.parquet"
    if not p.exists():
        pytest.skip(f"real calibration data not found at {p}")
    return p
