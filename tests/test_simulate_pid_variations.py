"""``mambah simulate --pid-variations``: the PID chain once per ensemble member, with the nominal's noise.

The ensembles here are tiny and untrained (the shipped kaon RICH and global generators with
perturbed weights, tests/ensemble_helpers.py): what is tested is the contract: the nominal is
unchanged, member k of the chain is member k of every step with members evaluated on the
nominal's random numbers (checked against an independent chain whose steps *are* member k), the
``pid_variations`` table on every backend, batch atomicity, the ntuple branches, the errors.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ensemble_helpers import MODELS, models_with_members  # noqa: E402

from mambah.errors import ConfigurationError  # noqa: E402
from mambah.store.schema import COLUMNS, PID_COLUMNS  # noqa: E402
from mambah.store.testing import pg_schema  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::mambah.nn.pidmodel.OutOfRangeWarning")

K = 2
DESCRIPTOR = "B+ -> (J/psi -> mu+ mu-) K+"
K_CHAIN = [f"pid-K-{r}" for r in ("flags", "muon", "rich", "global")]


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def varied_models(tmp_path_factory) -> Path:
    """Every shipped model, with K perturbed members for the kaon RICH and global steps."""
    return models_with_members(tmp_path_factory.mktemp("var"), {"pid-K-rich": K, "pid-K-global": K})


def _member_as_nominal(src: Path, dst: Path, k: int) -> Path:
    """A model directory whose (only) generator is member k of ``src``: an independent evaluation."""
    from mambah.modeldir import load_arrays, load_network, save_model_dir
    from mambah.nn.support import support_of

    from ensemble_helpers import _carry_correction

    card = json.loads((src / "card.json").read_text())
    for key in ("files", "format", "created", "mambah_version", "ensemble"):
        card.pop(key, None)
    correction = card.pop("marginal_correction", None)  # member k's map becomes the nominal's
    save_model_dir(dst, card, networks={"generator": load_network(src, f"members/member-{k:02d}")},
                   arrays=load_arrays(src), support=support_of(src))
    return _carry_correction(src, dst, correction, 0, member=k)


def _inputs(n=4000, seed=3):
    rng = np.random.default_rng(seed)
    return {"P": rng.exponential(25000.0, n) + 3000.0, "ETA": rng.uniform(2.0, 5.0, n),
            "nTracks": rng.poisson(80, n).astype(float), "charge": rng.choice([-1.0, 1.0], n)}


def _equal(a: dict, b: dict, cols=None):
    for c in cols or a:
        np.testing.assert_array_equal(a[c], b[c], err_msg=c)


# ------------------------------------------------------------------------------------ the chain
def test_chain_nominal_unchanged_members_equal_independent_chains(varied_models, tmp_path):
    from mambah.pid.chain import build_chain

    chain = build_chain("K", None, varied_models)
    assert chain.member_counts() == {"pid-K-rich": K, "pid-K-global": K} and chain.n_members() == K
    x = _inputs()
    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
    nominal = chain.generate_columns(x, rng_a)
    lanes = chain.generate_variations_columns(x, rng_b)
    assert len(lanes) == K + 1
    _equal(nominal, lanes[0])
    assert rng_a.random() == rng_b.random()  # the random stream is left where the nominal leaves it
    for k in range(1, K + 1):
        # independent: a chain whose rich and global steps are member k, same seed
        d = tmp_path / f"m{k}"
        d.mkdir()
        for name in K_CHAIN:
            if name in ("pid-K-rich", "pid-K-global"):
                _member_as_nominal(varied_models / name, d / name, k)
            else:
                (d / name).symlink_to(MODELS / name)
        indep = build_chain("K", None, d).generate_columns(x, np.random.default_rng(9))
        _equal(indep, lanes[k])
        # steps without members: identical; steps with members: different
        _equal(nominal, lanes[k], ["isMuon", "MuonMuLL", "MuonBkgLL"])
        rich = np.isfinite(nominal["RichDLLk"])
        assert rich.sum() > 1000
        assert np.mean(lanes[k]["RichDLLk"][rich] != nominal["RichDLLk"][rich]) > 0.9
        np.testing.assert_array_equal(np.isfinite(lanes[k]["RichDLLk"]), rich)  # the same flags
    assert np.mean(lanes[1]["PIDK"] != lanes[2]["PIDK"]) > 0.5


def test_flag_members_vary_the_flags_and_every_step_after_them(tmp_path):
    """A flags step with members (mambah train flags --ensemble K): the nominal is unchanged; lane k's
    flags and muon step (the first step after them) equal those of an independent chain whose flags
    step is member k (the same random state up to there); every later step draws with the nominal's
    state at that step (each step's noise is the nominal's, replayed), on the rows of the lane's own
    flags."""
    from ensemble_helpers import flag_member_as_nominal
    from mambah.pid.chain import build_chain, chain_members

    varied = {"pid-K-flags": K, "pid-K-rich": K, "pid-K-global": K}
    models = models_with_members(tmp_path / "v", varied, links=K_CHAIN, scale=0.3)
    assert chain_members("K", models) == varied
    chain = build_chain("K", None, models)
    x = _inputs(3000, seed=8)
    nominal = chain.generate_columns(x, np.random.default_rng(2))
    lanes = chain.generate_variations_columns(x, np.random.default_rng(2))
    _equal(nominal, lanes[0])
    _equal(nominal, build_chain("K", None, MODELS).generate_columns(x, np.random.default_rng(2)))
    for k in range(1, K + 1):
        d = tmp_path / f"m{k}"
        d.mkdir()
        for name in K_CHAIN:
            if name == "pid-K-flags":
                flag_member_as_nominal(models / name, d / name, k)
            elif name in varied:
                _member_as_nominal(models / name, d / name, k)
            else:
                (d / name).symlink_to(MODELS / name)
        indep = build_chain("K", None, d).generate_columns(x, np.random.default_rng(2))
        _equal(indep, lanes[k], ["isMuon", "MuonMuLL", "MuonBkgLL"])
        np.testing.assert_array_equal(np.isfinite(indep["RichDLLk"]), np.isfinite(lanes[k]["RichDLLk"]))
        flips = (lanes[k]["isMuon"] != nominal["isMuon"]) | (np.isfinite(lanes[k]["RichDLLk"]) != np.isfinite(nominal["RichDLLk"]))
        assert 0 < flips.mean() < 0.3, flips.mean()
        # a RICH row of both lanes: the same noise (the nominal's), a different generator (member k)
        both = np.isfinite(lanes[k]["RichDLLk"]) & np.isfinite(nominal["RichDLLk"])
        assert both.sum() > 1000 and np.mean(lanes[k]["RichDLLk"][both] != nominal["RichDLLk"][both]) > 0.9


def _tiny_gan(path: Path, conditions, targets, members: int, selection: str, seed: int) -> Path:
    """An untrained GAN model directory (with ``members`` untrained members) fitted on made-up data."""
    import keras

    from mambah.modeldir import save_model_dir
    from mambah.nn.layers import build_generator
    from mambah.nn.preprocessing import QuantileGaussianizer
    from mambah.physics import describe_column

    rng = np.random.default_rng(seed)
    n = 3000
    c = np.column_stack([rng.exponential(25000.0, n) + 1000.0, rng.uniform(1.5, 5.5, n), rng.uniform(0, 400, n),
                         rng.choice([-1.0, 1.0], n), rng.normal(0.0, 30.0, n)])[:, :len(conditions)]
    y = rng.normal(0.0, 5.0, (n, len(targets)))
    nets = {}
    for j in range(members + 1):
        keras.utils.set_random_seed(seed + j)
        nets["generator" if j == 0 else f"members/member-{j:02d}"] = build_generator(len(conditions), 4, len(targets),
                                                                                     width=8, depth=2)
    card = {"name": path.name, "kind": "pid", "species": "K", "conditions": [describe_column(x) for x in conditions],
            "targets": [describe_column(x) for x in targets], "hyperparameters": {"n_noise": 4},
            "training_data": {"selection": selection}}
    if members:
        card["ensemble"] = {"members": members, "files": [f"members/member-{j:02d}.keras" for j in range(1, members + 1)],
                            "seeds": list(range(members)), "bootstrap": "none (test)", "warm_start": False}
    arrays = {**QuantileGaussianizer(n_knots=101).fit(c).to_arrays("cond"),
              **QuantileGaussianizer(n_knots=101).fit(y).to_arrays("targ")}
    return save_model_dir(path, card, networks=nets, arrays=arrays)


@pytest.mark.parametrize("global_members", [0, K])
def test_a_step_conditioned_on_a_varied_step_varies(varied_models, tmp_path, global_members):
    """A global step conditioned on RichDLLk: without members of its own it varies through its
    conditions (the nominal model on member k's RICH outputs); with members it is member k on them.
    Either way member k of the chain equals the chain whose steps are member k, same seed."""
    from mambah.pid.chain import ChainStep, build_chain

    conds = ["P", "ETA", "nTracks", "charge", "RichDLLk"]
    # (applied where the RICH DLLs exist: its condition RichDLLk is NaN elsewhere)
    glob = _tiny_gan(tmp_path / "glob", conds, ["CaloDLLe"], global_members, "hasRich == 1", 5)

    def steps(rich, g):
        return [ChainStep("flags", str(varied_models / "pid-K-flags")), ChainStep("muon", str(varied_models / "pid-K-muon"), "isMuon"),
                ChainStep("rich", str(rich), "hasRich"), ChainStep("global", str(g), "hasRich")]

    chain = build_chain("K", steps(varied_models / "pid-K-rich", glob))
    x = _inputs(3000, 4)
    lanes = chain.generate_variations_columns(x, np.random.default_rng(2))
    _equal(chain.generate_columns(x, np.random.default_rng(2)), lanes[0])
    for k in range(1, K + 1):
        rich_k = _member_as_nominal(varied_models / "pid-K-rich", tmp_path / f"rich{k}", k)
        glob_k = _member_as_nominal(glob, tmp_path / f"glob{k}", k) if global_members else glob
        indep = build_chain("K", steps(rich_k, glob_k)).generate_columns(x, np.random.default_rng(2))
        _equal(indep, lanes[k])
        rich = np.isfinite(lanes[0]["RichDLLe"])
        calo_k, calo_0 = (lanes[j]["PIDe"][rich] - lanes[j]["RichDLLe"][rich] for j in (k, 0))
        assert np.mean(calo_k != calo_0) > 0.9


def test_steps_with_different_k_are_refused(tmp_path):
    from mambah.pid.stage import PID

    d = models_with_members(tmp_path, {"pid-K-rich": 2, "pid-K-global": 3}, links=K_CHAIN)
    with pytest.raises(ConfigurationError, match=r"different numbers of ensemble members.*pid-K-rich: 2.*pid-K-global: 3"):
        PID(models_dir=str(d), species=("K",), variations=True)
    from mambah.pid.chain import build_chain

    with pytest.raises(ConfigurationError, match="different numbers of ensemble members"):
        build_chain("K", None, d).generate_variations_columns(_inputs(10), np.random.default_rng(1))


def test_no_members_anywhere_is_refused_naming_the_steps(tmp_path):
    from mambah.pid.chain import load_chain
    from mambah.pid.stage import PID

    # the shipped models without their members (the shipped chains of e, pi, K and p have members in
    # their muon steps, K's in every step)
    d = models_with_members(tmp_path, {})
    with pytest.raises(ConfigurationError, match=r"no step of the PID chains.*p: pid-p-flags, pid-p-muon, pid-p-rich, "
                                                 r"pid-p-global.*pi: pid-pi-flags"):
        PID(species=("p", "pi"), variations=True, models_dir=str(d))
    with pytest.raises(ConfigurationError, match="has no ensemble members in any step"):
        load_chain("pi", d).generate_variations_columns(_inputs(10), np.random.default_rng(1))
    from mambah.simulation import standard_pipeline

    with pytest.raises(ConfigurationError, match="no step of the PID chains"):
        standard_pipeline("B0 -> pi+ pi-", pid_variations=True, models_dir=d)
    with pytest.raises(ConfigurationError, match="needs the PID stage"):
        standard_pipeline(DESCRIPTOR, pid=False, pid_variations=True)


# ------------------------------------------------------------------------------------ the stage
@pytest.fixture(scope="module")
def batches(varied_models):
    """Two batches of the same production, made without and with variations."""
    from mambah.simulation import standard_pipeline

    out = {}
    for var in (False, True):
        pl = standard_pipeline(DESCRIPTOR, models_dir=varied_models, pid_variations=var)
        out[var] = [pl.process(pl.make_batch(i, 17, 150)) for i in range(2)]
    return out


def test_stage_nominal_unchanged_and_variation_rows(batches):
    for plain, var in zip(batches[False], batches[True]):
        pd.testing.assert_frame_equal(plain["particles"], var["particles"])
        assert "pid_variations" not in plain and "pid_variations" not in plain.info
        plan = var.info["pid_variations"]
        assert plan["members"] == K and plan["steps"] == {"K": {"pid-K-rich": K, "pid-K-global": K}}
        assert plan["without_members"] == ["mu"]
        v, parts, mc = var["pid_variations"], var["particles"], var["mc_particles"]
        assert list(v.columns) == list(COLUMNS["pid_variations"])
        assert v.dtypes.astype(str).to_dict() == COLUMNS["pid_variations"]
        # one row per kaon track and member, none for the muons (no members)
        track = (parts["vertex"] < 0) & (parts["mc_particle"] >= 0)
        apid = np.abs(mc.set_index("index").loc[parts["mc_particle"][track], "pid"].to_numpy())
        kaons = parts["index"][track].to_numpy()[apid == 321]
        assert len(kaons) > 50
        assert len(v) == K * len(kaons)
        for k in range(1, K + 1):
            rows = v[v["member"] == k].set_index("particle").loc[kaons]
            nom = parts.set_index("index").loc[kaons]
            np.testing.assert_array_equal(rows["is_muon"], nom["is_muon"])  # flags: no members
            np.testing.assert_array_equal(np.isnan(rows["rich_dll_k"]), np.isnan(nom["rich_dll_k"]))
            fin = np.isfinite(nom["rich_dll_k"].to_numpy())
            assert np.mean(rows["pid_k"].to_numpy()[fin] != nom["pid_k"].to_numpy()[fin]) > 0.9
        assert var.info["pipeline"]["pid"]["variations"] == plan  # the config records the plan


def test_stage_config_without_variations_is_unchanged():
    from mambah.pid.stage import PID

    assert set(PID(species=("K",)).config()) == {"models_dir", "species", "name", "threads"}


# ------------------------------------------------------------------------------------ the store
@pytest.fixture(params=["duckdb", "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request, tmp_path):
    if request.param == "duckdb":
        yield f"duckdb:///{tmp_path}/s.duckdb"
    elif request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/s.sqlite"
    else:
        with pg_schema(request.getfixturevalue("postgres_url")) as u:
            yield u


def test_store_round_trip_and_atomic_delete(batches, url):
    from mambah.store import Store

    with Store(url) as st:
        for b in batches[True]:
            st.write_batch(copy.deepcopy(b))
        for b in batches[True]:
            got = st.read("pid_variations", batches=[b.id])
            want = b["pid_variations"].reset_index(drop=True)
            pd.testing.assert_frame_equal(got, want)
            assert st.batch_info(b.id)["config"]["pid_variations"]["members"] == K
        n0 = st.count("pid_variations", batches=[batches[True][0].id])
        assert n0 == len(batches[True][0]["pid_variations"]) > 0
        st.delete_batches([batches[True][0].id])
        assert st.count("pid_variations", batches=[batches[True][0].id]) == 0
        assert st.count("pid_variations") == len(batches[True][1]["pid_variations"])
        # a batch whose write fails leaves no variation rows (one transaction)
        bad = copy.deepcopy(batches[True][0])
        bad["vertices"] = bad["vertices"].assign(n_daughters=bad["vertices"]["n_daughters"].astype("int16"))

        class Boom(Exception):
            pass

        orig = st.backend.insert

        def insert(driver, table, df):
            if table.name == "vertices":  # after events ... particles, before pid_variations
                raise Boom()
            return orig(driver, table, df)

        st.backend.insert = insert
        with pytest.raises(Boom):
            st.write_batch(bad)
        st.backend.insert = orig
        assert not st.has_batch(bad.id) and st.count("pid_variations", batches=[bad.id]) == 0


def test_store_without_variations_has_an_empty_table(batches, tmp_path):
    from mambah.store import Store

    with Store(f"duckdb:///{tmp_path}/p.duckdb") as st:
        st.write_batch(copy.deepcopy(batches[False][0]))
        assert st.count("pid_variations") == 0
        assert st.read("pid_variations").empty


def test_duplicated_member_rows_are_refused(batches, tmp_path):
    from mambah.store import Store
    from mambah.store.rows import BatchValidationError

    b = copy.deepcopy(batches[True][0])
    v = b["pid_variations"]
    b["pid_variations"] = pd.concat([v, v.iloc[:1]], ignore_index=True)
    with Store(f"sqlite:///{tmp_path}/d.sqlite") as st:
        with pytest.raises(BatchValidationError, match=r"duplicated particle, member"):
            st.write_batch(b)
        assert st.batch_ids() == []


def test_a_version_3_store_is_upgraded(url, batches):
    from mambah.errors import SchemaVersionError
    from mambah.store import Store
    from mambah.physics.columns import BREM_COLUMNS, VERTEXING_COLUMNS
    from mambah.store import schema as S

    with Store(url) as st:
        st.write_batch(copy.deepcopy(batches[False][0]))
        before = st.read("particles")
        vertices = st.read("vertices")
        with st._tx() as c:  # what a version-3 store looks like
            c.exec_driver_sql("DROP TABLE pid_variations")
            c.exec_driver_sql("ALTER TABLE vertices DROP COLUMN n_invisible")
            for table, cols in (*VERTEXING_COLUMNS.items(), *BREM_COLUMNS.items()):
                for col in cols:
                    c.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN {col}")
            c.exec_driver_sql("UPDATE mambah_meta SET value = '3' WHERE key = 'schema_version'")
    with Store(url) as st:
        assert st.get_meta("schema_version") == str(S.SCHEMA_VERSION) == "6" and st.count("pid_variations") == 0
        # the columns the test dropped come back at their "not computed" value (checked below); the others
        # are as written (track_type is the Efficiency stage's since the 4-class efficiency)
        readded = [c for t, cols in (*VERTEXING_COLUMNS.items(), *BREM_COLUMNS.items()) if t == "particles" for c in cols]
        pd.testing.assert_frame_equal(st.read("particles").drop(columns=readded), before.drop(columns=readded))
        # the column added by the upgrade: -1 (unknown) in the rows written before it
        upgraded = st.read("vertices")
        assert len(upgraded) == len(vertices) > 0 and (upgraded["n_invisible"] == -1).all()
        pd.testing.assert_frame_equal(upgraded.drop(columns="n_invisible"), vertices.drop(columns="n_invisible"))
        # and the Vertexing and Bremsstrahlung stages' columns, at their "not computed" value
        for table, cols in (*VERTEXING_COLUMNS.items(), *BREM_COLUMNS.items()):
            got = st.read(table)
            for col, (_, fill) in cols.items():
                v = got[col].to_numpy(dtype=float)
                assert (np.isnan(v) if fill != fill else v == fill).all(), (table, col)
        st.write_batch(copy.deepcopy(batches[True][1]))
        assert st.count("pid_variations") == len(batches[True][1]["pid_variations"])
        with st._tx() as c:
            c.exec_driver_sql("UPDATE mambah_meta SET value = '2' WHERE key = 'schema_version'")
    with pytest.raises(SchemaVersionError, match="schema version 2"):
        Store(url)


def test_a_version_5_store_gets_the_probnn_columns_of_pid_variations(batches, tmp_path):
    """Schema 6 adds ``pid_variations.probnn_*``: a version-5 store's variation rows keep their
    values and read NaN there; new batches write them."""
    from mambah.store import Store
    from mambah.store import schema as S

    url = f"duckdb:///{tmp_path}/v5.duckdb"
    probnn = [c for c in COLUMNS["pid_variations"] if c.startswith("probnn_")]
    assert len(probnn) == 6
    with Store(url) as st:
        st.write_batch(copy.deepcopy(batches[True][0]))
        before = st.read("pid_variations")
        with st._tx() as c:  # what a version-5 store looks like
            for col in probnn:
                c.exec_driver_sql(f"ALTER TABLE pid_variations DROP COLUMN {col}")
            c.exec_driver_sql("UPDATE mambah_meta SET value = '5' WHERE key = 'schema_version'")
    with Store(url) as st:
        assert st.get_meta("schema_version") == str(S.SCHEMA_VERSION) == "6"
        after = st.read("pid_variations")
        assert after[probnn].isna().all().all()
        pd.testing.assert_frame_equal(after.drop(columns=probnn), before.drop(columns=probnn))
        st.write_batch(copy.deepcopy(batches[True][1]))
        assert st.count("pid_variations") == len(before) + len(batches[True][1]["pid_variations"])


@pytest.fixture(scope="module")
def probnn_batches(varied_models):
    """One batch made with ProbNN, without and with variations (the kaon RICH step has members)."""
    from mambah.simulation import standard_pipeline

    out = {}
    for var in (False, True):
        pl = standard_pipeline(DESCRIPTOR, models_dir=varied_models, pid_variations=var, probnn=True)
        out[var] = pl.process(pl.make_batch(0, 17, 300))
    return out


def test_probnn_of_each_member_equals_the_chain_whose_steps_are_member_k(varied_models, tmp_path):
    """The ProbNN step of member k reads member k's DLLs: equal to an independent chain whose RICH
    and global steps are member k (with the nominal ProbNN step), same seed."""
    from mambah.pid.chain import build_chain

    chain = build_chain("K", None, varied_models)
    assert chain.steps[-1].role == "probnn"
    x = _inputs(3000, 5)
    nominal = chain.generate_columns(x, np.random.default_rng(4))
    lanes = chain.generate_variations_columns(x, np.random.default_rng(4))
    _equal(nominal, lanes[0])
    for k in range(1, K + 1):
        d = tmp_path / f"p{k}"
        d.mkdir()
        for name in (*K_CHAIN, "pid-K-probnn"):
            if name in ("pid-K-rich", "pid-K-global"):
                _member_as_nominal(varied_models / name, d / name, k)
            else:
                (d / name).symlink_to(MODELS / name)
        indep = build_chain("K", None, d).generate_columns(x, np.random.default_rng(4))
        _equal(indep, lanes[k], ["ProbNNk", "ProbNNpi", "ProbNNp", "ProbNNe", "ProbNNmu", "ProbNNghost"])
        fin = np.isfinite(nominal["ProbNNk"])
        assert fin.sum() > 2000 and np.mean(lanes[k]["ProbNNk"][fin] != nominal["ProbNNk"][fin]) > 0.5


def test_probnn_variations_in_the_table_and_the_ntuple(probnn_batches, tmp_path):
    from mambah.store import Store
    from mambah.store.ntuple import candidate_ntuple

    plain, var = probnn_batches[False], probnn_batches[True]
    pd.testing.assert_frame_equal(plain["particles"], var["particles"])  # the nominal is unchanged
    v = var["pid_variations"]
    assert v.dtypes.astype(str).to_dict() == COLUMNS["pid_variations"]
    nom = var["particles"].set_index("index").loc[v["particle"]]
    for col in ("probnn_k", "probnn_pi", "probnn_p"):
        # finite exactly where the nominal is (every kaon track), and the members differ from it
        np.testing.assert_array_equal(np.isfinite(v[col].to_numpy()), np.isfinite(nom[col].to_numpy()))
        assert np.isfinite(v[col]).mean() > 0.9
        assert np.mean(v[col].to_numpy() != nom[col].to_numpy()) > 0.5, col
    with Store(f"duckdb:///{tmp_path}/pn.duckdb") as st:
        st.write_batch(copy.deepcopy(var))
        pd.testing.assert_frame_equal(st.read("pid_variations"), v.reset_index(drop=True))
        nt = candidate_ntuple(st)
        got = st.read("pid_variations").set_index(["particle", "member"])
        parts = st.read("particles")
    for k in range(1, K + 1):
        assert f"K_ProbNNk_var{k}" in nt.columns and f"mu1_ProbNNmu_var{k}" in nt.columns
    assert np.isnan(nt["mu1_ProbNNmu_var1"]).all() and np.isfinite(nt["mu1_ProbNNmu"]).any()  # no members
    # independent: the kaon's row through its MC particle
    node = [nd["name"] for nd in var.info["decay_tree"]].index("K+")
    p = parts.set_index("mc_particle")
    reco = np.flatnonzero(np.isfinite(nt["K_ProbNNk"].to_numpy()))
    assert len(reco) > 100
    for i in reco[:30]:
        e = int(nt["event"].iloc[i])
        row = p.loc[node * 300 + e]
        if isinstance(row, pd.DataFrame):
            row = row.iloc[0]
        for k in range(1, K + 1):
            assert got.loc[(int(row["index"]), k), "probnn_k"] == nt[f"K_ProbNNk_var{k}"].iloc[i]


# ------------------------------------------------------------------------------------ the ntuple
def test_ntuple_variation_branches(batches, tmp_path):
    from mambah.store import Store
    from mambah.store.ntuple import PID_BRANCHES, candidate_ntuple

    with Store(f"duckdb:///{tmp_path}/n.duckdb") as st:
        for b in batches[True]:
            st.write_batch(copy.deepcopy(b))
        nt = candidate_ntuple(st)
        var = st.read("pid_variations")
        parts = st.read("particles")
    with Store(f"duckdb:///{tmp_path}/m.duckdb") as st:
        for b in batches[False]:
            st.write_batch(copy.deepcopy(b))
        plain = candidate_ntuple(st)
    assert not [c for c in plain.columns if "_var" in c]
    extra = sorted(set(nt.columns) - set(plain.columns))
    want = sorted(f"{X}_{s}_var{k}" for X in ("K", "mu1", "mu2") for s in PID_BRANCHES.values() for k in range(1, K + 1))
    assert extra == want
    pd.testing.assert_frame_equal(nt[plain.columns], plain)
    # independent: the kaon's particles row (through its MC particle) and its pid_variations rows
    reco = np.isfinite(nt["K_PIDK"].to_numpy())
    assert reco.sum() > 100
    p = parts.set_index(["batch", "mc_particle"])
    v = var.set_index(["batch", "particle", "member"])
    n_ev = 150
    node = [nd["name"] for nd in batches[True][0].info["decay_tree"]].index("K+")
    for i in np.flatnonzero(reco)[:40]:
        b, e = int(nt["batch"].iloc[i]), int(nt["event"].iloc[i])
        row = p.loc[(b, node * n_ev + e)]  # the particle-major MC index of the K+ node
        if isinstance(row, pd.DataFrame):
            row = row.iloc[0]
        assert np.isclose(row["pid_k"], nt["K_PIDK"].iloc[i], equal_nan=True)
        for k in range(1, K + 1):
            assert v.loc[(b, int(row["index"]), k), "pid_k"] == nt[f"K_PIDK_var{k}"].iloc[i]
    # the muons' chain has no members: NaN
    assert np.isnan(nt["mu1_PIDmu_var1"]).all() and np.isfinite(nt["mu1_PIDmu"]).any()


# ------------------------------------------------------------------------------------ the CLI
def _mambah(*args):
    return subprocess.run([sys.executable, "-m", "mambah", *args], capture_output=True, text=True, timeout=600)


# slow: the CLI end to end (16 s); the stage, the store round trip, the ntuple branches and the CLI refusal are tested in-process above
@pytest.mark.slow
def test_cli_pid_variations(varied_models, tmp_path):
    db = tmp_path / "cli.duckdb"
    r = _mambah("simulate", DESCRIPTOR, "--events", "200", "--batch-size", "100", "--seed", "3", "--db", str(db),
                "--models", str(varied_models), "--pid-variations")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"PID variations: K = {K} members (K: pid-K-rich, pid-K-global); no members, no variations: mu" in r.stdout
    out = tmp_path / "nt.root"
    r = _mambah("export", "--db", str(db), "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    import uproot

    with uproot.open(out) as f:
        names = f["DecayTree"].keys()
    assert {f"K_PIDK_var{k}" for k in range(1, K + 1)} <= set(names) and "K_PIDK_var3" not in names


def test_cli_refuses_without_members_before_writing(tmp_path):
    db = tmp_path / "none.duckdb"
    d = models_with_members(tmp_path, {})  # the shipped models without members (pi's muon step has some)
    r = _mambah("simulate", "B0 -> pi+ pi-", "--events", "100", "--db", str(db), "--pid-variations", "--models", str(d))
    assert r.returncode != 0
    assert "no step of the PID chains" in r.stderr and "pid-pi-rich" in r.stderr
    assert not db.exists()


def test_ntuple_of_synthetic_variations_in_chunks_and_mixing_is_refused(tmp_path):
    from mambah.errors import StoreError
    from mambah.store import Store
    from mambah.store.ntuple import candidate_ntuple, iter_candidates
    from mambah.store.testing import synthetic_batch

    with Store(f"sqlite:///{tmp_path}/s.sqlite") as st:
        for i in range(3):
            st.write_batch(synthetic_batch(i, 40, seed=i, variations=3))
        chunks = list(iter_candidates(st, chunk_events=40))
        assert len(chunks) == 3
        nt = pd.concat(chunks, ignore_index=True)
        par, var = st.read("particles"), st.read("pid_variations")
        # independent: each reconstructed proton's rows, by (batch, event) -> particle -> member
        tree = synthetic_batch(0, 1).info["decay_tree"]
        node = [nd["name"] for nd in tree].index("p+")
        v = var.set_index(["batch", "particle", "member"])["pid_p"]
        for b, e, got in zip(nt["batch"], nt["event"], nt["p_PIDp_var3"]):
            row = par[(par["batch"] == b) & (par["mc_particle"] == node * 40 + e)]
            want = v.loc[(b, int(row["index"].iloc[0]), 3)] if len(row) else np.nan
            np.testing.assert_equal(got, want)
        assert "p_PIDp_var4" not in nt
        st.write_batch(synthetic_batch(3, 40, seed=3))  # no variations: another ntuple
        with pytest.raises(StoreError, match="PID variations: K = 3"):
            candidate_ntuple(st)
        assert "p_PIDp_var1" not in candidate_ntuple(st, batches=[3])


@pytest.mark.parametrize("backend", ["duckdb", "sqlite"])
def test_spooled_batch_with_variations_commits_whole(batches, tmp_path, backend):
    """The Dask path: a worker spools the batch to Parquet, the client commits it in one transaction."""
    from mambah.store import Store
    from mambah.store.spool import write_spool

    b = copy.deepcopy(batches[True][1])
    (tmp_path / "spool").mkdir()
    summary = write_spool(b, tmp_path / "spool", digest="d")
    with Store(f"{backend}:///{tmp_path}/sp.{backend}") as st:
        assert st.write_spooled(summary["spool"]) is True
        pd.testing.assert_frame_equal(st.read("pid_variations"), b["pid_variations"].reset_index(drop=True))
        pd.testing.assert_frame_equal(st.read("particles"), b["particles"].reset_index(drop=True), check_dtype=False)
