"""``mambah validate --db``: the QA of a production read back from a real store (DuckDB file)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from mambah.store import Store
from mambah.store.testing import REFERENCE_TREE, synthetic_batch
from mambah.validation.production import validate_production

N_EVENTS, N_BATCHES, EFF = 800, 2, 0.8


@pytest.fixture(scope="module")
def production(tmp_path_factory):
    d = tmp_path_factory.mktemp("prod")
    url = f"duckdb:///{d / 'prod.duckdb'}"
    batches = [synthetic_batch(b, N_EVENTS, seed=3, efficiency=EFF) for b in range(N_BATCHES)]
    with Store(url) as st:
        for b in batches:
            st.write_batch(b)
    return url, batches, d


@pytest.fixture(scope="module")
def qa(production):
    url, batches, d = production
    return validate_production(url, d / "report"), d / "report"


def test_counts_and_species(qa, production):
    s, _ = qa
    _, batches, _ = production
    parts = pd.concat([b.tables["particles"] for b in batches])
    assert s["n_batches"] == N_BATCHES and s["n_events"] == N_BATCHES * N_EVENTS
    assert s["rows"]["particles"] == len(parts)
    counts = parts["pid"].abs().value_counts()
    assert {k: v["n"] for k, v in s["species"].items()} == {
        "p": counts[2212], "K": counts[321], "pi": counts[211], "mu": counts[13]}
    kp = s["species"]["K"]["pid_requirements"]["pid_k > 5"]["eff"]
    k = parts[parts["pid"].abs() == 321]
    assert kp == pytest.approx(np.mean(k["pid_k"] > 5))


def test_reconstruction_efficiency_matches_generated_value(qa):
    s, _ = qa
    n = N_BATCHES * N_EVENTS
    tol = 4 * np.sqrt(EFF * (1 - EFF) / n)  # binomial, 4 sigma
    for sp in ("p", "K", "pi", "mu"):
        assert s["reco_efficiency"][sp]["n"] == n
        assert abs(s["reco_efficiency"][sp]["eff"] - EFF) < tol, (sp, s["reco_efficiency"][sp])


def test_composite_mass_independent_computation(qa, production):
    """Λc+ -> p K- pi+ mass from the reconstructed tracks, recomputed with the layout contract."""
    s, _ = qa
    _, batches, _ = production
    masses = []
    for b in batches:
        n = b.n_events
        parts = b.tables["particles"]
        # nodes 2, 3, 4 are the Λc daughters: mc index = node * n_events + event
        picked = []
        for node in (2, 3, 4):
            sel = parts[(parts["mc_particle"] >= node * n) & (parts["mc_particle"] < (node + 1) * n)]
            picked.append(sel.drop_duplicates("mc_particle").set_index("event")[["px", "py", "pz", "e"]])
        common = picked[0].index.intersection(picked[1].index).intersection(picked[2].index)
        tot = sum(p.loc[common].to_numpy(float) for p in picked)
        masses.append(np.sqrt(np.clip(tot[:, 3] ** 2 - (tot[:, :3] ** 2).sum(axis=1), 0, None)))
    m = np.concatenate(masses)
    lc = s["composites"]["Lambda(c)+"]
    assert REFERENCE_TREE[1]["name"] == "Lambda_c+"
    assert lc["n"] == N_BATCHES * N_EVENTS
    assert lc["n_fully_reconstructed"] == len(m)
    assert lc["mass_median"] == pytest.approx(np.median(m), rel=1e-4)
    assert lc["pdg_mass"] == pytest.approx(2286.46, abs=0.5)


def test_report_folder(qa):
    s, out = qa
    page = (out / "index.html").read_text()
    srcs = re.findall(r"<img src='([^']+)'", page)
    assert srcs and all((out / x).is_file() for x in srcs)
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["n_events"] == s["n_events"]
    assert "mass_Lambda_c__.png" in srcs


def test_cli_db(production, tmp_path):
    url, _, _ = production
    r = subprocess.run([sys.executable, "-m", "mambah", "-q", "validate", "--db", url], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"{N_BATCHES} batches, {N_BATCHES * N_EVENTS} events" in r.stdout
    assert "reconstruction efficiency" in r.stdout
    missing = tmp_path / "nope.duckdb"
    r = subprocess.run([sys.executable, "-m", "mambah", "-q", "validate", "--db", f"duckdb:///{missing}"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "no store" in r.stderr, r.stderr
    assert not missing.exists()
