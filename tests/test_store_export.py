"""Exports of the store: the flat candidate ntuple (checked against an independent pandas
reference), Parquet and ROOT files (read back with uproot), and the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from mambah.errors import ConfigurationError, StoreError
from mambah.store import Store, default_prefixes
from mambah.store import schema as S
from mambah.store.ntuple import default_prefix
from mambah.store.testing import REFERENCE_TREE, synthetic_batch

BJPSIK = [
    {"name": "B+", "pid": 521, "mother": -1, "children": [1, 4], "stable": False, "charge": 1},
    {"name": "J/psi(1S)", "pid": 443, "mother": 0, "children": [2, 3], "stable": False, "charge": 0},
    {"name": "mu+", "pid": -13, "mother": 1, "children": [], "stable": True, "charge": 1},
    {"name": "mu-", "pid": 13, "mother": 1, "children": [], "stable": True, "charge": -1},
    {"name": "K+", "pid": 321, "mother": 0, "children": [], "stable": True, "charge": 1},
]


@pytest.fixture
def store(tmp_path):
    with Store(f"duckdb:///{tmp_path}/s.duckdb") as s:
        s.write_batch(synthetic_batch(3, 200, seed=1))
        s.write_batch(synthetic_batch(10, 150, seed=2))
        yield s


def test_default_prefixes():
    assert [default_prefix(n["name"]) for n in REFERENCE_TREE] == ["Lb", "Lc", "p", "K", "pi", "mu", "nu_mu"]
    assert [default_prefix(n) for n in ("J/psi(1S)", "B+", "B-", "anti-Lambda_c-", "Sigma_b+", "D*(2010)-")] == \
        ["Jpsi", "B", "B", "Lc", "Sigmab", "Dst"]
    assert default_prefixes(BJPSIK) == ["B", "Jpsi", "mu1", "mu2", "K"]
    assert default_prefixes(BJPSIK, {"mu+": "mup", 3: "mum"}) == ["B", "Jpsi", "mup", "mum", "K"]
    with pytest.raises(ConfigurationError, match="no decay-tree node named 'mu'; nodes: B\\+, J/psi"):
        default_prefixes(BJPSIK, {"mu": "x"})
    with pytest.raises(ConfigurationError, match="share a prefix"):
        default_prefixes(BJPSIK, {4: "B"})
    with pytest.raises(ConfigurationError, match="not a valid branch-name prefix"):
        default_prefixes(BJPSIK, {0: "B+"})


def _reference(store) -> pd.DataFrame:
    """Candidate quantities computed independently with pandas merges."""
    nev = store.read("batches", columns=["batch", "n_events"]).set_index("batch")["n_events"]
    mc = store.read("mc_particles")
    mc["node"] = mc["index"] // mc["batch"].map(nev)
    par = store.read("particles")
    par = par.merge(mc[["batch", "index", "node"]].rename(columns={"index": "mc_particle"}), on=["batch", "mc_particle"])
    ref = store.read("events", columns=["batch", "event", "n_tracks"])
    for node, X in enumerate(["Lb", "Lc", "p", "K", "pi", "mu", "nu_mu"]):
        t = mc[mc.node == node][["batch", "event", "pid"]].rename(columns={"pid": f"{X}_TRUEID"})
        ref = ref.merge(t, on=["batch", "event"], how="left")
    for node, X in [(2, "p"), (5, "mu")]:
        r = par[par.node == node].copy()
        r[f"{X}_P"] = np.sqrt(r.px.astype(float) ** 2 + r.py.astype(float) ** 2 + r.pz.astype(float) ** 2)
        r[f"{X}_PIDp"] = r["pid_p"].astype(float)
        r[f"{X}_isMuon"] = r["is_muon"].astype(float)
        ref = ref.merge(r[["batch", "event", f"{X}_P", f"{X}_PIDp", f"{X}_isMuon"]], on=["batch", "event"], how="left")
    for X, nodes in [("Lc", [2, 3, 4]), ("Lb", [2, 3, 4, 5])]:
        r = par[par.node.isin(nodes)].astype({c: float for c in ("px", "py", "pz", "e")})
        g = r.groupby(["batch", "event"]).agg(px=("px", "sum"), py=("py", "sum"), pz=("pz", "sum"), e=("e", "sum"),
                                              n=("px", "size")).reset_index()
        g = g[g.n == len(nodes)]
        g[f"{X}_M"] = np.sqrt(g.e**2 - g.px**2 - g.py**2 - g.pz**2)
        ref = ref.merge(g[["batch", "event", f"{X}_M"]], on=["batch", "event"], how="left")
    # proper time of the Lambda_b: lab time between its vertices over gamma = E/m
    mcv = store.read("mc_vertices", columns=["batch", "index", "t"])
    lb = mc[mc.node == 0].astype({c: float for c in ("px", "py", "pz", "e")})
    lb = lb.merge(mcv.rename(columns={"index": "decay_vertex", "t": "t1"}), on=["batch", "decay_vertex"])
    lb = lb.merge(mcv.rename(columns={"index": "prod_vertex", "t": "t0"}), on=["batch", "prod_vertex"])
    m = np.sqrt(lb.e**2 - lb.px**2 - lb.py**2 - lb.pz**2)
    lb["Lb_TRUETAU"] = (lb.t1.astype(float) - lb.t0.astype(float)) * m / lb.e
    return ref.merge(lb[["batch", "event", "Lb_TRUETAU"]], on=["batch", "event"], how="left")


def test_candidate_ntuple_matches_an_independent_reference(store):
    nt = store.candidates()
    assert len(nt) == 350 and nt["batch"].tolist() == [3] * 200 + [10] * 150
    ref = _reference(store)
    assert nt["event"].tolist() == ref["event"].tolist()
    np.testing.assert_array_equal(nt["nTracks"], ref["n_tracks"])
    for X in ["Lb", "Lc", "p", "K", "pi", "mu", "nu_mu"]:
        np.testing.assert_array_equal(nt[f"{X}_TRUEID"], ref[f"{X}_TRUEID"])
    assert set(np.unique(nt["p_TRUEID"])) == {2212, -2212}  # both charges present
    for col in ["p_P", "p_PIDp", "mu_P", "mu_isMuon", "Lc_M", "Lb_M", "Lb_TRUETAU"]:
        got, want = nt[col].to_numpy(), ref[col].to_numpy()
        assert np.array_equal(np.isnan(got), np.isnan(want)), col
        assert np.isnan(got).sum() < len(got) / 2, col  # most candidates are reconstructed
        np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], rtol=1e-6, err_msg=col)
    # a track that was not reconstructed has NaN reco branches but its truth
    miss = nt["p_Reconstructed"] == 0
    assert miss.any() and nt.loc[miss, "p_PT"].isna().all() and nt.loc[miss, "p_TRUEPT"].notna().all()
    # LHCb-style names of the reference channel
    for b in ["Lb_M", "Lc_M", "p_P", "p_PT", "p_ETA", "p_PIDp", "p_PIDK", "p_TRUEID", "mu_isMuon", "nTracks",
              "K_RichDLLk", "mu_MuonMuLL", "mu_MuonBkgLL", "pi_PIDe", "Lc_TRUEENDVERTEX_Z", "p_TRUEP_X", "Lb_TRUE_M"]:
        assert b in nt.columns, b
    assert "nu_mu_P" not in nt.columns and "nu_mu_TRUEP_E" in nt.columns  # neutrinos: truth only
    eta = nt["p_ETA"].dropna()
    assert ((eta > 1.9) & (eta < 5.1)).all()  # the synthetic tracks are generated in 2 < eta < 5


def test_linked_composite_and_vertex_are_used(tmp_path):
    b = synthetic_batch(0, 20)
    n = 20
    par = b.tables["particles"]
    lc = pd.DataFrame({c: np.zeros(1, dtype=d) for c, d in S.COLUMNS["particles"].items()})
    lc[["batch", "index", "event", "mc_particle", "pid", "vertex", "mother"]] = [0, len(par), 0, 1 * n + 0, 4122, 0, -1]
    lc[["px", "py", "pz", "e", "m"]] = [100.0, 200.0, 30000.0, 30100.0, 2286.5]
    b.tables["particles"] = pd.concat([par, lc.astype(S.COLUMNS["particles"])], ignore_index=True)
    v = pd.DataFrame({c: np.zeros(1, dtype=d) for c, d in S.COLUMNS["vertices"].items()})
    v[["x", "y", "z", "m"]] = [0.5, -0.25, 12.0, 2286.5]
    v["particle"] = len(par)
    b.tables["vertices"] = v.astype(S.COLUMNS["vertices"])
    with Store(f"sqlite:///{tmp_path}/s.sqlite") as s:
        s.write_batch(b)
        nt = s.candidates(prefixes={"Lambda_c+": "Lambdac"})
    assert nt.loc[0, "Lambdac_M"] == pytest.approx(2286.5)
    assert nt.loc[0, "Lambdac_PZ"] == pytest.approx(30000.0)
    assert (nt.loc[0, "Lambdac_ENDVERTEX_X"], nt.loc[0, "Lambdac_ENDVERTEX_Z"]) == pytest.approx((0.5, 12.0))
    assert nt.loc[1:, "Lambdac_ENDVERTEX_X"].isna().all()
    # other events: the mass of the reconstructed p K pi
    ok = nt.loc[1:, ["p_PE", "K_PE", "pi_PE"]].notna().all(axis=1)
    assert ok.any() and nt.loc[1:, "Lambdac_M"][ok].notna().all() and nt.loc[1:, "Lambdac_M"][~ok].isna().all()


def test_mixed_decay_trees_need_a_choice(store):
    b = synthetic_batch(20, 50, tree=BJPSIK)
    b.info["production"] = "bjpsik"
    b.info["decay_tree"] = BJPSIK
    store.write_batch(b)
    with pytest.raises(StoreError, match=r"2 different decay trees(.|\n)*\[B\+ J/psi\(1S\) mu\+ mu- K\+\]: 1 batch\(es\), production\(s\) bjpsik"):
        store.candidates()
    nt = store.candidates(production="bjpsik")
    assert len(nt) == 50 and {"B_M", "Jpsi_M", "mu1_PIDmu", "mu2_isMuon", "K_PIDK"} <= set(nt.columns)
    assert len(store.candidates(batches=[3])) == 200
    with pytest.raises(StoreError, match="no batches to export .* for production 'nope'"):
        store.candidates(production="nope")


def test_batches_without_tree_or_with_another_layout_are_refused(tmp_path):
    with Store(f"duckdb:///{tmp_path}/a.duckdb") as s:
        b = synthetic_batch(0, 10)
        del b.info["decay_tree"]
        s.write_batch(b)
        with pytest.raises(StoreError, match=r"batch\(es\) \[0\] .* have no decay tree"):
            s.candidates()
    with Store(f"duckdb:///{tmp_path}/b.duckdb") as s:
        b = synthetic_batch(0, 10)
        b.info["decay_tree"] = REFERENCE_TREE[:3]  # fewer nodes than rows per event
        s.write_batch(b)
        with pytest.raises(StoreError, match="do not follow the particle-major layout"):
            s.candidates()


def test_table_exports_read_back(store, tmp_path):
    import uproot

    root = store.export_root(tmp_path / "out" / "store.root")
    with uproot.open(root) as f:
        for t in S.DATA_TABLES:
            got = f[t].arrays(library="pd")
            want = store.read(t)
            assert list(got.columns) == list(want.columns)
            pd.testing.assert_frame_equal(got.reset_index(drop=True), want, check_dtype=False)
        assert f["batches"]["batch"].array(library="np").tolist() == [3, 10]
        prov = json.loads(str(f["batches_json"]))
        assert [r["batch"] for r in prov] == [3, 10] and prov[0]["config"]["decay_tree"] == REFERENCE_TREE
    files = store.export_parquet(tmp_path / "pq", tables=["particles", "batches"])
    assert [p.name for p in files] == ["particles.parquet", "batches.parquet"]
    pd.testing.assert_frame_equal(pd.read_parquet(files[0]), store.read("particles"))
    ds = store.export_parquet(tmp_path / "ds", tables=["mc_particles"], dataset=True, batches=[10])
    assert sorted(p.name for p in ds[0].iterdir()) == ["batch=10.parquet"]
    pd.testing.assert_frame_equal(pd.read_parquet(ds[0]), store.read("mc_particles", batches=[10]))
    with pytest.raises(ConfigurationError, match="cannot export table"):
        store.export_parquet(tmp_path / "x", tables=["nope"])


def test_ntuple_files_read_back(store, tmp_path):
    import uproot

    nt = store.candidates()
    path = store.export_ntuple(f"{tmp_path}/nt.root:Lb2LcMuNu", chunk_events=120)  # several chunks
    with uproot.open(path) as f:
        got = f["Lb2LcMuNu"].arrays(library="pd")
    pd.testing.assert_frame_equal(got, nt, check_dtype=False)
    pq = store.export_ntuple(tmp_path / "nt.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(pq), nt)
    with pytest.raises(ConfigurationError, match=r"\.root or \.parquet"):
        store.export_ntuple(tmp_path / "nt.txt")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("s.duckdb")) == ["nt.parquet", "nt.root"]


# --- the command line --------------------------------------------------------------------------
def _mambah(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "mambah", *args], capture_output=True, text=True, cwd=cwd)


def test_cli(tmp_path):
    import uproot

    db = f"duckdb:///{tmp_path}/cli.duckdb"
    with Store(db) as s:
        s.write_batch(synthetic_batch(0, 60))
        s.write_batch(synthetic_batch(1, 40))
    r = _mambah("store", "summary", "--db", db)
    assert r.returncode == 0, r.stderr
    assert "batches      2" in r.stdout and "events       100" in r.stdout and "mc_particles 700" in r.stdout
    assert "synthetic (2 batches)" in r.stdout and "nanobind" not in r.stderr
    r = _mambah("store", "list", "--db", db)
    assert r.returncode == 0 and "n_particles" in r.stdout and len(r.stdout.strip().splitlines()) == 3
    r = _mambah("export", "--db", db, "--out", str(tmp_path / "nt.root"), "--decay-tree", "Lb2LcMuNu",
                "--prefix", "p+=proton")
    assert r.returncode == 0, r.stderr
    with uproot.open(tmp_path / "nt.root") as f:
        t = f["Lb2LcMuNu"]
        assert t.num_entries == 100
        assert {"Lb_M", "Lc_M", "proton_P", "proton_PIDp", "proton_TRUEID", "mu_isMuon", "nTracks"} <= set(t.keys())
    r = _mambah("store", "export", "--db", db, "--out", str(tmp_path / "tables.root"))
    assert r.returncode == 0, r.stderr
    with uproot.open(tmp_path / "tables.root") as f:
        assert f["mc_particles"].num_entries == 700
    r = _mambah("store", "delete", "--db", db, "--batch", "7")
    assert r.returncode == 2 and "batch(es) [7] not in the store" in r.stderr
    r = _mambah("store", "delete", "--db", db, "--all")
    assert r.returncode == 2 and "add --yes to confirm" in r.stderr
    r = _mambah("store", "delete", "--db", db, "--batch", "1")
    assert r.returncode == 0 and "deleted 1 batch(es)" in r.stdout
    r = _mambah("store", "delete", "--db", db, "--all", "--yes")
    assert r.returncode == 0 and "deleted 1 batch(es)" in r.stdout
    r = _mambah("export", "--db", db, "--out", str(tmp_path / "empty.root"))
    assert r.returncode == 2 and "no batches to export" in r.stderr


def test_cli_bad_databases(tmp_path):
    r = _mambah("store", "summary", "--db", "mysql://u@localhost/db")
    assert r.returncode == 2 and "unknown database URL scheme 'mysql'" in r.stderr
    r = _mambah("store", "summary", "--db", str(tmp_path / "absent.duckdb"))
    assert r.returncode == 2 and "no store at" in r.stderr
    assert not (tmp_path / "absent.duckdb").exists()
    r = _mambah("store", "summary", "--db", "postgresql://postgres@127.0.0.1:1/test")
    assert r.returncode == 2 and "PostgreSQL server at 127.0.0.1:1" in r.stderr


@pytest.mark.slow
def test_ntuple_of_the_full_chain(tmp_path):
    """Generation + reconstruction stages -> store -> ntuple: physics checks on the branches."""
    from particle import Particle

    from mambah.generation import generator_stages
    from mambah.pipeline import Pipeline
    from mambah.reconstruction.composites import Composites
    from mambah.reconstruction.efficiency import Efficiency
    from mambah.reconstruction.occupancy import Occupancy
    from mambah.reconstruction.resolution import Resolution

    desc = "Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu"
    pipe = Pipeline([*generator_stages(desc, charge_conjugate="both"), Occupancy(), Efficiency(), Resolution(),
                     Composites()])
    b = pipe.process(pipe.make_batch(0, production_seed=5, n_events=3000))
    with Store(f"duckdb:///{tmp_path}/chain.duckdb") as st:
        st.write_batch(b)
        nt = st.candidates()
    # proper decay time of the Lambda_b0: exponential with the PDG lifetime (mean = tau, sd = tau)
    tau = Particle.from_pdgid(5122).lifetime  # ns
    assert nt["Lb_TRUETAU"].mean() == pytest.approx(tau, rel=5 / np.sqrt(len(nt)))
    # the Lambda_c+ candidates are the composites of the reconstruction, at the Lambda_c+ mass
    parts = b.tables["particles"]
    lc = parts[np.abs(parts["pid"]) == 4122]
    assert nt["Lc_M"].notna().sum() == len(lc) > 0
    assert np.nanmedian(nt["Lc_M"]) == pytest.approx(Particle.from_pdgid(4122).mass, abs=2.0)
    # visible Lambda_b0 mass below the Lambda_b0 mass (the neutrino is missing)
    assert (nt["Lb_M"].dropna() < Particle.from_pdgid(5122).mass + 30).all()
    assert set(np.unique(nt["p_TRUEID"])) == {2212, -2212}
    np.testing.assert_array_equal(nt["nTracks"], b.tables["events"]["n_tracks"])
