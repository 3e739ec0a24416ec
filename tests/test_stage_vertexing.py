"""The opt-in Vertexing stage in reference mode: closure of the decay-vertex fits (chi2 and
position pulls against the true decay vertices), the documented columns, the LHCb selection
separating a b-hadron decay from a prompt charm decay, and NaN for composites without a fit."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mambah import Composites, Efficiency, Occupancy, Pipeline, Resolution, generator_stages
from mambah.errors import ConfigurationError
from mambah.physics.columns import VERTEXING_COLUMNS
from mambah.reconstruction import Vertexing


def run(descriptor: str, n: int = 2500, seed: int = 1, vertexing=True, invisible=()):
    stages = [*generator_stages(descriptor), Occupancy(), Efficiency(model="reference"),
              Resolution(model="reference"), Composites(invisible=invisible)]
    if vertexing:
        stages.append(Vertexing() if vertexing is True else Vertexing(model=vertexing))
    pipe = Pipeline(stages)
    return pipe.process(pipe.make_batch(0, production_seed=seed, n_events=n))


@pytest.fixture(scope="module")
def lb():
    return run("Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu")


@pytest.fixture(scope="module")
def lc():
    return run("Lambda_c+ -> p+ K- pi+")


def test_without_the_stage_the_columns_are_not_computed():
    b = run("Lambda_c+ -> p+ K- pi+", n=300, vertexing=False)
    for table, cols in VERTEXING_COLUMNS.items():
        for c, (_, fill) in cols.items():
            if c == "track_type":  # set by the Efficiency stage (its drawn class), with or without Vertexing
                tracks = b[table]["vertex"].to_numpy() < 0
                assert (b[table][c].to_numpy()[tracks] == 3).all() and (b[table][c].to_numpy()[~tracks] == 0).all()
                continue
            v = b[table][c].to_numpy()
            assert (np.isnan(v) if np.isnan(fill) else v == fill).all(), (table, c)


def test_vertex_fits_close_on_the_true_decay_vertices(lb, lc):
    """Vertex chi2 is chi2(ndof) (flat p-values) and (fitted - true)/error has unit width."""
    for b in (lb, lc):
        v, mcv = b["vertices"], b["mc_vertices"].set_index("index")
        assert (v["ndof"] >= 1).all()
        pvals = stats.chi2.sf(v["chi2"].to_numpy(np.float64), v["ndof"].to_numpy())
        assert stats.kstest(pvals, "uniform").pvalue > 1e-3
        true = mcv.loc[v["mc_vertex"].to_numpy(), ["x", "y", "z"]].to_numpy(np.float64)
        fit = v[["x", "y", "z"]].to_numpy(np.float64)
        err = np.sqrt(v[["cov_xx", "cov_yy", "cov_zz"]].to_numpy(np.float64))
        pulls = (fit - true) / err
        # robust estimates, 4 standard errors: median 1.25/sqrt(N), IQR/1.349 about 1.1/sqrt(N)
        n = len(pulls)
        np.testing.assert_allclose(np.median(pulls, axis=0), 0.0, atol=4 * 1.25 / np.sqrt(n))
        np.testing.assert_allclose(stats.iqr(pulls, axis=0) / 1.349, 1.0, atol=4 * 1.1 / np.sqrt(n))


def test_vertex_fits_close_with_the_track_state_network():
    """With the shipped track-state network the decay vertices close as with the reference detector:
    chi2 p-values flat, position pulls of unit width (the network's residuals are drawn from its
    covariance, so this checks that the states, covariances and fit fit together)."""
    b = run("Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu", vertexing="model")
    test_vertex_fits_close_on_the_true_decay_vertices(b, b)
    assert b.info["reconstruction"]["vertexing"]["tracks_without_state"] == 0


def test_columns_and_the_b_hadron_selection(lb, lc):
    """The selection every b-hadron analysis starts with keeps most Lambda_b0 candidates with a
    reconstructed Lambda_c+ and rejects prompt Lambda_c+ by the flight-distance cut."""
    def sel(b, head):
        p = b["particles"]
        comp = p[p["vertex"] >= 0].set_index("index")
        trk = p[p["vertex"] < 0]
        v = b["vertices"].set_index("index")
        c = comp[np.abs(comp["pid"]) == head]
        dmin = trk.groupby("event")["ipchi2_ownpv"].min()
        ok = ((dmin.reindex(c["event"]).to_numpy() > 9)
              & (v.loc[c["vertex"], "chi2"].to_numpy() / v.loc[c["vertex"], "ndof"].to_numpy() < 10)
              & (c["fdchi2_ownpv"].to_numpy() > 100) & (c["dira_ownpv"].to_numpy() > 0.999))
        return ok.mean(), c
    eff_b, cb = sel(lb, 5122)
    eff_c, cc = sel(lc, 4122)
    assert eff_b > 0.3 and eff_c < 0.05, (eff_b, eff_c)
    assert (cb["tau"] > 0).mean() > 0.95
    assert np.median(cb["mcorr"]) > np.median(cb["m"])
    tr = lb["particles"][lb["particles"]["vertex"] < 0]
    assert set(np.unique(tr["track_type"])) <= {3, 4, 5}
    assert np.isfinite(tr[["ipchi2_ownpv", "track_chi2ndof", "track_ghost_prob"]].to_numpy()).all()
    assert np.isnan(tr["fdchi2_ownpv"]).all() and np.isnan(tr["mcorr"]).all()
    assert np.isfinite(lb["events"][["ownpv_x", "ownpv_y", "ownpv_z"]].to_numpy()).all()


def test_a_composite_with_one_daughter_to_fit_gets_nan_not_zero():
    """B_s0 -> (phi(1020) -> K+ K-) gamma: the B_s0 is built from the phi's two tracks but has one
    direct daughter to fit, so its vertex and variables are NaN (ndof -1); the phi is fitted."""
    b = run("B_s0 -> (phi(1020) -> K+ K-) gamma", n=600, invisible=("gamma",))
    p, v = b["particles"], b["vertices"].set_index("index")
    b0 = p[np.abs(p["pid"]) == 531]
    d = p[np.abs(p["pid"]) == 333]
    assert len(b0) and len(d)
    assert np.isnan(b0[["ipchi2_ownpv", "fdchi2_ownpv", "dira_ownpv", "tau", "mcorr", "doca_max"]].to_numpy()).all()
    assert (v.loc[b0["vertex"], "ndof"] == -1).all() and np.isnan(v.loc[b0["vertex"], ["x", "chi2"]].to_numpy()).all()
    assert (v.loc[d["vertex"], "ndof"] == 1).all() and np.isfinite(d["fdchi2_ownpv"]).all()
    assert b.info["reconstruction"]["vertexing"]["vertices_not_fitted"] == len(b0)


def test_an_unknown_track_state_model_is_refused_naming_the_choices():
    with pytest.raises(ConfigurationError, match="unknown model 'vertexing-v1': not one of reference, model"):
        Vertexing(model="vertexing-v1")
    assert Vertexing().model == "reference" and Vertexing(model="model").model_dir == "trackstate-ref-v1"


def test_store_and_ntuple_carry_the_columns_only_when_the_stage_ran():
    from mambah import Store, run_production

    def pipe(vertexing):
        stages = [*generator_stages("Lambda_c+ -> p+ K- pi+"), Occupancy(), Efficiency(model="reference"),
                  Resolution(model="reference"), Composites()]
        return Pipeline(stages + ([Vertexing()] if vertexing else []))

    with Store("duckdb:///:memory:") as store:
        run_production(pipe(True), n_events=400, batch_size=200, seed=3, store=store, production="on")
        run_production(pipe(False), n_events=200, batch_size=200, seed=4, store=store, production="off")
        on = store.candidates(production="on")
        off = store.candidates(production="off")
        v = store.read("vertices", batches=[0, 1])
    lc = [c for c in on.columns if c.endswith("_IPCHI2_OWNPV")]
    assert len(lc) == 4  # Lambda_c+ and its three tracks
    head = lc[0].split("_IPCHI2_OWNPV")[0] if lc[0].startswith("Lc") else "Lc"
    for branch in ("FDCHI2_OWNPV", "DIRA_OWNPV", "ENDVERTEX_CHI2", "ENDVERTEX_NDOF", "TAU", "MCORR", "DOCAMAX"):
        assert f"{head}_{branch}" in on.columns, (head, branch, list(on.columns))
    built = np.isfinite(on[f"{head}_ENDVERTEX_CHI2"])
    assert built.sum() == len(v) > 0 and (on.loc[built, f"{head}_ENDVERTEX_NDOF"] == 3).all()
    assert not [c for c in off.columns if "OWNPV" in c or ("TRACK_" in c and not c.endswith("_TRACK_Type"))]
    types = off[[c for c in off.columns if c.endswith("_TRACK_Type")]].to_numpy()
    assert types.shape[1] == 3 and (types[np.isfinite(types)] == 3).all()  # the Efficiency stage's (long tracks)
    assert (v["ndof"] == 3).all() and np.isfinite(v["chi2"]).all()


def test_standard_pipeline_adds_the_stage_only_when_asked():
    from mambah import standard_pipeline

    names = [type(s).__name__ for s in standard_pipeline("Lambda_c+ -> p+ K- pi+", pid=False).stages]
    assert "Vertexing" not in names
    names = [type(s).__name__ for s in standard_pipeline("Lambda_c+ -> p+ K- pi+", pid=False, vertexing=True).stages]
    assert names[names.index("Composites") + 1] == "Vertexing"
    with pytest.raises(ConfigurationError, match="vertexing=True needs the reconstruction"):
        standard_pipeline("Lambda_c+ -> p+ K- pi+", level="truth", vertexing=True)


def test_cli_vertexing_flag_and_production_name(tmp_path):
    """``mambah simulate --vertexing`` as users call it: the production's name hashes the option
    only when given (without it the name is the descriptor's hash, as before), the run says what the
    stage did, and the ntuple carries the branches."""
    import hashlib
    import subprocess
    import sys

    from mambah import Store
    from mambah.cli.cmd_simulate import default_production_name

    lc = "Lambda_c+ ->  p+ K- pi+"
    plain = f"{hashlib.sha256(' '.join(lc.split()).encode()).hexdigest()[:8]}-seed4"
    assert default_production_name(lc, 4) == plain
    name = default_production_name(lc, 4, vertexing=True)
    assert name != plain and name.endswith("-seed4")
    db = f"duckdb:///{tmp_path}/v.duckdb"
    r = subprocess.run([sys.executable, "-m", "mambah", "-q", "simulate", lc, "--vertexing", "--level", "truth",
                        "--events", "10", "--db", db], capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "--vertexing needs --level reco" in r.stderr, r.stderr
    assert not (tmp_path / "v.duckdb").exists()
    r = subprocess.run([sys.executable, "-m", "mambah", "-q", "simulate", lc, "--vertexing", "--no-pid", "--seed", "4",
                        "--events", "600", "--db", db], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert f"production {name!r}" in r.stdout
    assert "vertexing (--vertexing" in r.stdout and "with a vertex fit" in r.stdout
    with Store(db) as st:
        nt = st.candidates(production=name)
        comps = int((st.read("particles")["vertex"] >= 0).sum())
    built = nt["Lc_M"].notna()
    assert built.sum() == comps > 20
    assert np.isfinite(nt.loc[built, ["Lc_IPCHI2_OWNPV", "Lc_FDCHI2_OWNPV", "Lc_ENDVERTEX_CHI2"]]).all().all()
    assert (nt.loc[built, "Lc_ENDVERTEX_NDOF"] == 3).all() and np.isfinite(nt.loc[nt["p_P"].notna(), "p_IPCHI2_OWNPV"]).all()
