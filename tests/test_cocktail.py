"""Background cocktails: several decay channels in one production (issue 24).

Every check compares with an independent computation: channel fractions against the rates within
binomial errors, each channel's decay tree against the PDG facts of the ``particle`` package,
swapped masses recomputed from the stored momenta, ``.dec`` rates read with DecayLanguage
directly, a regenerated batch against the stored rows.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from particle import Particle

from mambah.errors import ConfigurationError, DescriptorError, UnknownParticleError

ROOT = Path(__file__).resolve().parent.parent
SIGNAL, PIPI, KK = "B0 -> K+ pi-", "B0 -> pi+ pi-", "B_s0 -> K+ K-"


def _pdg_mass(pid: int) -> float:
    return float(Particle.from_pdgid(int(pid)).mass)


# --------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("rates, message", [
    ([0.5], r"1 rate\(s\) 0.5 for 2 channel\(s\)"),
    ([0.5, 0.3, 0.2], r"3 rate\(s\) .* for 2 channel\(s\)"),
    ([0.5, -0.1], r"rate of channel 1 is -0.1: rates must be finite and non-negative"),
    ([float("nan"), 1.0], r"rate of channel 0 is nan"),
    ([1.0, float("inf")], r"rate of channel 1 is inf"),
    ([0, 0.0], r"every rate is zero"),
    ("0.5,abc", r"rate of channel 1 is 'abc', not a number"),
])
def test_bad_rates_are_refused(rates, message):
    from mambah.simulation import cocktail_pipeline

    with pytest.raises(ConfigurationError, match=message):
        cocktail_pipeline([PIPI, KK], rates)


def test_a_bad_descriptor_names_its_channel():
    from mambah.simulation import cocktail_pipeline

    with pytest.raises(DescriptorError, match=r"channel 1 \('B_s0 -> K\+ K\+'\): .*charge is not conserved"):
        cocktail_pipeline([PIPI, "B_s0 -> K+ K+"], [1, 1])
    with pytest.raises(UnknownParticleError, match=r"channel 2 \('B0 -> K\+ pion-'\)"):
        cocktail_pipeline([PIPI, KK, "B0 -> K+ pion-"], [1, 1, 1])


def test_swaps_name_their_channel():
    from mambah.generation.cocktail import route_swaps
    from mambah.simulation import cocktail_pipeline

    assert route_swaps([SIGNAL, PIPI, KK], ["1:pi+=K+", "B_s0 -> K+ ^K- : pi-", " 2 : K+=K+"]) == \
        [(), ("pi+=K+",), ("B_s0 -> K+ ^K- : pi-", "K+=K+")]
    assert route_swaps([PIPI, KK], {1: "K-=pi-"}) == [(), ("K-=pi-",)]
    with pytest.raises(ConfigurationError, match=r"in a cocktail a swap names its channel, as 'N:pi\+=K\+'"):
        cocktail_pipeline([PIPI, KK], [1, 1], reconstruct_as=["pi+=K+"])
    with pytest.raises(ConfigurationError, match=r"there is no channel 2; the channels are 0 to 1"):
        cocktail_pipeline([PIPI, KK], [1, 1], reconstruct_as=["2:pi+=K+"])
    with pytest.raises(ConfigurationError, match="matches no channel"):
        cocktail_pipeline([PIPI, KK], [1, 1], reconstruct_as=["B0 -> ^K+ pi- : pi+"])
    # a bad swap is refused as for one descriptor, with its channel named
    with pytest.raises(DescriptorError, match=r"channel 1 \('B_s0 -> K\+ K-'\): reconstruct-as: .*changes the charge"):
        cocktail_pipeline([PIPI, KK], [1, 1], reconstruct_as=["1:K-=pi+"])


def test_cli_refuses_bad_rates_before_anything_runs(tmp_path):
    db = tmp_path / "never.duckdb"
    r = subprocess.run([sys.executable, "-m", "mambah", "simulate", PIPI, KK, "--rates", "1,2,3", "--events", "10",
                        "--db", f"duckdb:///{db}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "mambah simulate: error: 3 rate(s) 1, 2, 3 for 2 channel(s)" in r.stderr
    assert not db.exists()


# ------------------------------------------------------------------------------- generator level
@pytest.fixture(scope="module")
def truth_batches():
    from mambah.simulation import cocktail_pipeline

    pipe = cocktail_pipeline([SIGNAL, PIPI, "Lambda_b0 -> p+ K-"], [0.6, 0.3, 0.1], level="truth")
    # batches of 2000: every channel's phasespace calls have 1024 events (one compilation per chain)
    return pipe, pipe.run(n_events=16_000, batch_size=2_000, seed=7)


def test_channel_fractions_follow_the_rates(truth_batches):
    """Over 16k events, each channel's count is within 4 binomial standard deviations of N f,
    and the per-batch counts scatter (a multinomial draw per batch, not a rounding)."""
    from mambah.batch import event_channels

    pipe, batches = truth_batches
    f = np.array([0.6, 0.3, 0.1])
    assert np.allclose(pipe.fractions, f)
    per_batch = np.array([np.bincount(event_channels(b.info, b.n_events), minlength=3) for b in batches])
    assert (per_batch.sum(axis=1) == 2_000).all()
    n = per_batch.sum(axis=0)
    N = n.sum()
    sigma = np.sqrt(N * f * (1 - f))
    assert (np.abs(n - N * f) < 4 * sigma).all(), (n, N * f, sigma)
    assert len({tuple(r) for r in per_batch}) > 1
    for b, counts in zip(batches, per_batch):
        assert [r["n_events"] for r in b.info["cocktail"]["channels"]] == counts.tolist()


def test_each_channel_carries_its_decay_tree(truth_batches):
    """Head and daughters of every event are those of its channel (PDG ids and masses from
    ``particle``), and every reference (mother, vertices, event) stays inside the event."""
    from mambah.batch import event_channels

    _, batches = truth_batches
    want = {0: (511, [321, -211]), 1: (511, [211, -211]), 2: (5122, [2212, -321])}
    for b in batches:
        ch = event_channels(b.info, b.n_events)
        mc = b["mc_particles"]
        assert (mc["index"].to_numpy() == np.arange(len(mc))).all()
        ev = mc["event"].to_numpy()
        heads = mc[mc["mother"] < 0]
        assert len(heads) == b.n_events and sorted(heads["event"]) == list(range(b.n_events))
        for c, (head, kids) in want.items():
            mine = heads[ch[heads["event"].to_numpy()] == c]
            assert (mine["pid"] == head).all()
            p4 = mine[["px", "py", "pz", "e"]].to_numpy()
            m = np.sqrt(p4[:, 3] ** 2 - (p4[:, :3] ** 2).sum(axis=1))
            np.testing.assert_allclose(m, _pdg_mass(head), rtol=1e-9)
            d = mc[(mc["mother"] >= 0) & (ch[ev] == c)]
            assert len(d) == 2 * len(mine)
            assert sorted(d["pid"].unique()) == sorted(kids)
            assert (mc["event"].to_numpy()[d["mother"].to_numpy()] == d["event"].to_numpy()).all()
        vt = b["mc_vertices"]
        for col in ("prod_vertex", "decay_vertex"):
            v = mc[col].to_numpy()
            ok = v >= 0
            assert (vt["event"].to_numpy()[v[ok]] == ev[ok]).all()
        assert b.info["cocktail"]["channels"][2]["decay_tree"][0]["name"] == "Lambda_b0"


def test_dec_rates_are_the_files_branching_fractions():
    """Rates from the .dec file equal DecayLanguage's own numbers (product over the decays)."""
    from mambah.generation.cocktail import dec_rates
    from mambah.generation.decfile import _parser, default_dec_file

    parser = _parser(str(default_dec_file()))  # DecayLanguage's parser of the file (parsed once: 7 s)

    def bf(mother, kids):
        finals = sorted({n for mode in parser.list_decay_modes(mother) for n in mode})
        modes = parser.build_decay_chains(mother, stable_particles=finals)[mother]
        return sum(m["bf"] for m in modes if sorted(m["fs"]) == sorted(kids))

    got = dec_rates([SIGNAL, KK, "B+ -> (J/psi(1S) -> mu+ mu-) K+"])
    assert got[0] == pytest.approx(bf("B0", ["K+", "pi-"]))
    assert got[1] == pytest.approx(bf("B_s0", ["K+", "K-"]))
    assert got[2] == pytest.approx(bf("B+", ["J/psi", "K+"]) * bf("J/psi", ["mu+", "mu-"]))
    from mambah.simulation import cocktail_pipeline

    pipe = cocktail_pipeline([SIGNAL, KK], "dec", level="truth")
    assert pipe.fractions == pytest.approx(np.array(got[:2]) / sum(got[:2]))
    six = "B0 -> K+ K- K+ K- K+ K-"
    with pytest.raises(ConfigurationError, match=r"channel 1 \('B0 -> K\+ K- K\+ K- K\+ K-'\): .*no mode B0 -> K\+ K-"):
        dec_rates([SIGNAL, six])


# -------------------------------------------------------------------------- reconstruction, store
@pytest.fixture(scope="module")
def reco_store():
    from mambah import Store, run_production
    from mambah.simulation import cocktail_pipeline

    pipe = cocktail_pipeline([SIGNAL, PIPI, KK], [2, 1, 1], reconstruct_as=["1:pi+=K+", "B_s0 -> K+ ^K- : pi-"],
                             pid=False)
    store = Store("duckdb:///:memory:")
    # the models' OutOfRangeWarning is shown once per process (pyproject: "default"), not required here
    run_production(pipe, n_events=3_000, batch_size=1_500, seed=3, store=store, production="cocktail")
    yield pipe, store
    store.close()


def test_swaps_per_channel_and_the_ntuple(reco_store):
    """Each channel is reconstructed with its own swaps: the composite's mass equals the sum of its
    stored tracks with the hypotheses' PDG masses, m_truehyp the same with the true ones; the
    ntuple's channel branch equals the store's, its IDs are the hypotheses'."""
    _, store = reco_store
    ch = store.event_channels()
    assert sorted(ch["channel"].unique()) == [0, 1, 2]
    assert set(ch["descriptor"]) == {SIGNAL, PIPI, KK}
    par = store.read("particles")
    vert = store.read("vertices")
    hyp = {0: {321: 321, -211: -211}, 1: {211: 321, -211: -211}, 2: {321: 321, -321: -211}}
    key = ch.set_index(["batch", "event"])["channel"]
    tracks = par[par["vertex"] < 0]
    tch = key.reindex(list(zip(tracks["batch"], tracks["event"]))).to_numpy()
    p2 = (tracks[["px", "py", "pz"]].to_numpy() ** 2).sum(axis=1)
    m_hyp = np.array([_pdg_mass(hyp[c][pid]) for c, pid in zip(tch, tracks["pid"])])
    m_true = np.array([_pdg_mass(pid) for pid in tracks["pid"]])
    np.testing.assert_allclose(tracks["m"].to_numpy(), m_hyp, rtol=1e-12)
    t = tracks.assign(e_hyp=np.sqrt(p2 + m_hyp**2), e_true=np.sqrt(p2 + m_true**2))
    s = t.groupby(["batch", "mother"])[["px", "py", "pz", "e_hyp", "e_true"]].sum()
    comp = par[par["vertex"] >= 0].set_index(["batch", "index"])
    s = s.loc[comp.index]
    pp = (s[["px", "py", "pz"]].to_numpy() ** 2).sum(axis=1)
    v = vert.set_index(["batch", "particle"]).loc[comp.index]
    np.testing.assert_allclose(v["m"].to_numpy(), np.sqrt(s["e_hyp"] ** 2 - pp), rtol=1e-9)
    np.testing.assert_allclose(v["m_truehyp"].to_numpy(), np.sqrt(s["e_true"] ** 2 - pp), rtol=1e-9)
    cch = key.reindex(list(zip(comp.reset_index()["batch"], comp["event"]))).to_numpy()
    assert np.allclose(v["m"].to_numpy()[cch == 0], v["m_truehyp"].to_numpy()[cch == 0])
    assert (np.abs(v["m"].to_numpy() - v["m_truehyp"].to_numpy())[cch > 0] > 1e-3).all()

    nt = store.candidates()
    assert len(nt) == len(ch)
    merged = nt.merge(ch, on=["batch", "event"], suffixes=("", "_store"))
    assert (merged["channel"] == merged["channel_store"]).all()
    assert {"B0_M", "B0_M_TRUEHYP", "K_M_TRUEHYP", "pi_M_TRUEHYP", "channel"} <= set(nt.columns)
    ok = nt["B0_M"].notna()
    np.testing.assert_allclose(nt.loc[ok, "B0_M"].to_numpy(),
                               vert.set_index(["batch", "event"]).loc[list(zip(nt.loc[ok, "batch"], nt.loc[ok, "event"])),
                                                                     "m"].to_numpy(), rtol=1e-9)
    rec = nt[nt["K_TRUEID"] != 0]
    for c, (k_true, pi_true) in {0: (321, -211), 1: (211, -211), 2: (321, -321)}.items():
        r = nt[(nt["channel"] == c) & nt["B0_M"].notna()]
        assert len(r) > 20
        assert (r["K_TRUEID"] == k_true).all() and (r["pi_TRUEID"] == pi_true).all()
        assert (r["K_ID"] == 321).all() and (r["pi_ID"] == -211).all()
        assert (r["B0_TRUEID"] == (531 if c == 2 else 511)).all()
    assert len(rec)
    # a channel alone
    only = store.candidates(channels=[1])
    assert (only["channel"] == 1).all() and len(only) == int((ch["channel"] == 1).sum())


def test_store_navigation_stays_in_the_channel(reco_store):
    """The batch-local references of a channel after the first point at its own rows."""
    _, store = reco_store
    ch = store.event_channels()
    b, e = (int(x) for x in ch.loc[ch["channel"] == 2, ["batch", "event"]].iloc[0])
    tree = store.decay_tree(b, e)
    assert sorted(tree["pid"]) == sorted([531, 321, -321])


def test_regenerate_a_cocktail_batch(reco_store):
    from mambah.production import regenerate_batch
    from mambah.simulation import cocktail_pipeline
    from mambah.store.store import prepare_tables

    pipe, store = reco_store
    with pytest.warns(UserWarning, match="training range"):
        batch = regenerate_batch(pipe, store, 1)
    for table, df in prepare_tables(batch).items():
        stored = store.read(table, batches=[1])
        assert len(stored) == len(df), table
        for col in stored.columns:
            np.testing.assert_array_equal(df[col].to_numpy(), stored[col].to_numpy(), err_msg=f"{table}.{col}")
    info = store.batch_info(1)["config"]
    assert [c["descriptor"] for c in info["cocktail"]["channels"]] == [SIGNAL, PIPI, KK]
    assert [c["rate"] for c in info["pipeline"]["cocktail"]["channels"].values()] == [2, 1, 1]
    other = cocktail_pipeline([SIGNAL, PIPI, KK], [1, 1, 1], reconstruct_as=["1:pi+=K+", "B_s0 -> K+ ^K- : pi-"],
                              pid=False)
    with pytest.raises(ConfigurationError, match=r"cannot regenerate batch 1 (.|\n)*config.cocktail.channels.0.fraction: 0.5 -> 0.333"):
        regenerate_batch(other, store, 1)


# ----------------------------------------------------------------------------------------- CLI
@pytest.mark.slow
def test_cli_cocktail_and_export(tmp_path):
    """As users call it (two processes: ~25 s, mostly TensorFlow's start and the chains' compilation)."""
    db = f"sqlite:///{tmp_path}/ck.sqlite"
    r = subprocess.run([sys.executable, "-m", "mambah", "-q", "simulate", PIPI, KK, "--rates", "3,1", "--level", "truth",
                        "--events", "1000", "--batch-size", "500", "--db", db],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "channel 0: B0 -> pi+ pi-  rate fraction 0.75" in r.stdout
    assert "channel 1: B_s0 -> K+ K-  rate fraction 0.25" in r.stdout
    out = tmp_path / "nt.parquet"
    r = subprocess.run([sys.executable, "-m", "mambah", "-q", "export", "--db", db, "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    import pandas as pd

    from mambah import Store

    nt = pd.read_parquet(out)
    with Store(db) as st:
        ch = st.event_channels()
        cfg = st.batch_info(0)["config"]
    assert len(nt) == 1000 == len(ch)
    m = nt.merge(ch, on=["batch", "event"])
    assert (m["channel_x"] == m["channel_y"]).all()
    assert (nt.loc[nt["channel"] == 1, "B0_TRUEID"] == 531).all()
    assert json.dumps(cfg["cocktail"]["channels"][1]["decay_tree"])


def test_ntuple_merges_channels_of_one_shape_only(truth_batches):
    """Channels whose trees have the same shape share one ntuple (prefixes of channel 0); a channel
    of another shape (here the same decay written with its tracks in the other order) must be
    chosen with ``channels``."""
    from mambah import Store
    from mambah.batch import event_channels
    from mambah.errors import StoreError
    from mambah.simulation import cocktail_pipeline

    _, batches = truth_batches
    with Store("duckdb:///:memory:") as st:
        st.write_batches(batches[:2])
        nt = st.candidates()
        ch = np.concatenate([event_channels(b.info, b.n_events) for b in batches[:2]])
        assert (nt["channel"].to_numpy() == ch).all()
        assert set(nt.loc[nt["channel"] == 2, "B0_TRUEID"]) == {5122}
        assert set(nt.loc[nt["channel"] == 2, "K_TRUEID"]) == {2212}
        assert set(nt.loc[nt["channel"] == 1, "K_TRUEID"]) == {211}
        np.testing.assert_allclose(nt.loc[nt["channel"] == 2, "B0_TRUE_M"], _pdg_mass(5122), rtol=1e-6)

        pipe = cocktail_pipeline([SIGNAL, "B0 -> pi- K+"], [1, 1], level="truth")
        b = pipe.process(pipe.make_batch(0, production_seed=1, n_events=300, first_batch=10))
        st.write_batch(b)
        with pytest.raises(StoreError, match=r"2 different decay trees(.|\n)*CLI: --channel(.|\n)*"
                                             r"\[channel 1: B0 -> pi- K\+\]: \d+ events in 1 batch\(es\)"):
            st.candidates(batches=[10])
        one = st.candidates(batches=[10], channels=[1])
        assert (one["channel"] == 1).all() and {"pi_TRUEID", "K_TRUEID"} <= set(one.columns)
        assert len(one) == int((event_channels(b.info, b.n_events) == 1).sum())


@pytest.mark.slow
def test_dask_cocktail_equals_in_process(tmp_path):
    """Two Dask workers spooling cocktail batches into a DuckDB file write what one process writes."""
    from mambah import Store, run_production
    from mambah.simulation import cocktail_pipeline

    pipe = cocktail_pipeline([SIGNAL, PIPI], [1, 1], level="truth")
    with Store(f"duckdb:///{tmp_path}/a.duckdb") as a, Store(f"duckdb:///{tmp_path}/b.duckdb") as b:
        run_production(pipe, n_events=3000, batch_size=1000, seed=2, store=a, production="x")
        run_production(pipe, n_events=3000, batch_size=1000, seed=2, store=b, production="x", workers=2)
        for t in ("events", "mc_particles", "mc_vertices"):
            x, y = a.read(t), b.read(t)
            assert x.shape == y.shape, t
            for c in x.columns:
                np.testing.assert_array_equal(x[c].to_numpy(), y[c].to_numpy(), err_msg=f"{t}.{c}")
        assert a.event_channels().equals(b.event_channels())


# ------------------------------------------------------------------------------------ vertexing
def test_vertexing_in_a_cocktail_equals_each_channel_alone():
    """The Vertexing stage runs inside each channel; after the concatenation every one of its
    columns equals, row for row, the channel simulated alone with the same seed, the flight
    distance recomputed from the concatenated tables (vertex row through ``particles.vertex``, own
    PV through ``particles.event``) equals ``fd_ownpv``, and the ntuple carries the branches with
    the ``channel`` branch: finite for built composites, NaN where none was built."""
    from mambah import Store
    from mambah.batch import Batch
    from mambah.generation.cocktail import channel_seed
    from mambah.physics.columns import VERTEXING_COLUMNS
    from mambah.simulation import cocktail_pipeline, standard_pipeline

    lc, lb, xic = "Lambda_c+ -> p+ K- pi+", "Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu", "Xi_c+ -> p+ K- pi+"
    pipe = cocktail_pipeline([lc, lb, xic], [1, 1, 1], pid=False, vertexing=True)
    b = pipe.process(pipe.make_batch(0, production_seed=5, n_events=1500))
    own = {"vertices": ("x", "y", "z")}
    first = {"events": "first_event", "particles": "first_particle", "vertices": "first_vertex"}
    for rec in b.info["cocktail"]["channels"]:
        c, n = rec["channel"], rec["n_events"]
        assert n > 300, rec
        alone = standard_pipeline([lc, lb, xic][c], pid=False, vertexing=True, fixed_shapes=True).process(
            Batch(id=0, seed=channel_seed(b.seed, c), n_events=n))
        for table, key in first.items():
            mine = b[table].iloc[rec[key]:rec[key] + len(alone[table])]
            assert len(alone[table]) and len(mine) == len(alone[table]), (c, table)
            for col in (*VERTEXING_COLUMNS[table], *own.get(table, ())):
                np.testing.assert_array_equal(mine[col].to_numpy(), alone[table][col].to_numpy(),
                                              err_msg=f"channel {c}: {table}.{col}")
    par, vert, ev = b["particles"], b["vertices"], b["events"]
    comp = par[par["vertex"] >= 0]
    v = vert.set_index("index").loc[comp["vertex"].to_numpy()]
    assert (v["particle"].to_numpy() == comp["index"].to_numpy()).all()
    pv = ev.set_index("event").loc[comp["event"].to_numpy(), ["ownpv_x", "ownpv_y", "ownpv_z"]].to_numpy(np.float64)
    fd = np.linalg.norm(v[["x", "y", "z"]].to_numpy(np.float64) - pv, axis=1)
    np.testing.assert_allclose(comp["fd_ownpv"].to_numpy(np.float64), fd, rtol=1e-4, atol=1e-4)
    assert (v["ndof"] >= 1).all() and np.isfinite(comp[["ipchi2_ownpv", "fdchi2_ownpv", "dira_ownpv", "mcorr"]]).all().all()
    tracks = par[par["vertex"] < 0]
    assert np.isfinite(tracks["ipchi2_ownpv"]).all() and np.isnan(tracks["fdchi2_ownpv"]).all()

    with Store("duckdb:///:memory:") as st:
        st.write_batch(b)
        charm = st.candidates(channels=[0, 2])  # Lambda_c+ and Xi_c+ -> p K- pi+: one shape, one ntuple
        semi = st.candidates(channels=[1])
    assert set(charm["channel"]) == {0, 2} and (semi["channel"] == 1).all()
    for nt, heads in ((charm, ("Lc",)), (semi, ("Lb", "Lc"))):
        for h in heads:
            built = nt[f"{h}_M"].notna() & nt["p_P"].notna() & nt["K_P"].notna() & nt["pi_P"].notna()
            for br in ("IPCHI2_OWNPV", "FDCHI2_OWNPV", "DIRA_OWNPV", "ENDVERTEX_CHI2", "MCORR"):
                x = nt[f"{h}_{br}"].to_numpy()
                assert np.isfinite(x[built.to_numpy()]).all() and np.isnan(x[~built.to_numpy()]).all(), (h, br)
            assert built.sum() > 50
        assert np.isfinite(nt.loc[nt["p_P"].notna(), "p_IPCHI2_OWNPV"]).all()
    # the ntuple's values are the store's: the head's FD chi2 of each event, per channel
    key = comp.assign(h=np.abs(comp["pid"])).query("h in (4122, 4232)").set_index("event")["fdchi2_ownpv"]
    ok = charm["Lc_FDCHI2_OWNPV"].notna()
    np.testing.assert_array_equal(charm.loc[ok, "Lc_FDCHI2_OWNPV"].to_numpy(np.float32),
                                  key.loc[charm.loc[ok, "event"].to_numpy()].to_numpy(np.float32))


# ------------------------------------------------------------------------------------ PID variations
def test_pid_variations_in_a_cocktail_equal_each_channel_alone():
    """--pid-variations in a cocktail: each channel's ``pid_variations`` rows (their ``particle`` shifted
    to the channel's first particle) equal the channel simulated alone with the same seed, the plan is
    the production's (``batch.info["pid_variations"]``), and the store and the ntuple carry them."""
    from mambah import Store
    from mambah.batch import Batch
    from mambah.generation.cocktail import channel_seed
    from mambah.simulation import cocktail_pipeline, standard_pipeline

    chans = ["B0 -> K+ pi-", "B_s0 -> K+ K-"]
    pipe = cocktail_pipeline(chans, [1, 1], pid_variations=True)
    b = pipe.process(pipe.make_batch(0, production_seed=9, n_events=400))
    var = b["pid_variations"]
    k = b.info["pid_variations"]["members"]
    assert k >= 2 and len(var) and set(var["member"]) == set(range(1, k + 1))
    assert "pid_variations" not in b.info["cocktail"]["channels"][0]
    for rec in b.info["cocktail"]["channels"]:
        c, n = rec["channel"], rec["n_events"]
        alone = standard_pipeline(chans[c], pid_variations=True, fixed_shapes=True).process(
            Batch(id=0, seed=channel_seed(b.seed, c), n_events=n))
        first, n_par = rec["first_particle"], len(alone["particles"])
        mine = var[(var["particle"] >= first) & (var["particle"] < first + n_par)].reset_index(drop=True)
        ref = alone["pid_variations"].reset_index(drop=True)
        assert len(ref) and len(mine) == len(ref), c
        np.testing.assert_array_equal(mine["particle"].to_numpy(), ref["particle"].to_numpy() + first)
        for col in ref.columns.drop(["batch", "particle"]):
            np.testing.assert_array_equal(mine[col].to_numpy(), ref[col].to_numpy(), err_msg=f"channel {c}: {col}")
    # every row refers to a track of its own batch whose chain has members: kaons (every step) and
    # pions (their muon step)
    par = b["particles"].set_index("index").loc[var["particle"].to_numpy()]
    apid = np.abs(par["pid"].to_numpy())
    assert np.isin(apid, [211, 321]).all() and (apid == 321).any()
    with Store("duckdb:///:memory:") as st:
        st.write_batch(b)
        nt = st.candidates(channels=[1])
        assert len(st.read("pid_variations")) == len(var)
    # B_s0 -> K+ K-: both tracks are kaons, whose chain has members: every member's branch is there
    heads = [c[:-len("_PIDK")] for c in nt.columns if c.endswith("_PIDK")]
    assert len(heads) == 2, nt.columns
    for h in heads:
        for j in range(1, k + 1):
            x, nom = nt[f"{h}_PIDK_var{j}"].to_numpy(), nt[f"{h}_PIDK"].to_numpy()
            assert (np.isfinite(x) == np.isfinite(nom)).all() and np.isfinite(x).sum() > 100, (h, j)
        # the members differ from the nominal (an ensemble), by little (the nominal's noise)
        d = np.abs(nt[f"{h}_PIDK_var1"] - nt[f"{h}_PIDK"]).dropna()
        assert 0 < d.median() < 5, (h, d.median())
