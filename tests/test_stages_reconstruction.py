"""Reconstruction stages on batches that follow the generation layout contract.

``make_batch`` builds a Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu batch with
phasespace directly (particle-major mc_particles, depth-first nodes, mc_vertices indexing as
in the contract), so these tests do not depend on the generation stages.
"""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from mambah.batch import Batch
from mambah.errors import ConfigurationError, ModelDirError
from mambah.reconstruction import Composites, Efficiency, Occupancy, Resolution
from mambah.physics.columns import PID_COLUMNS, vertexing_defaults
from mambah.store.schema import COLUMNS

M = {"Lb": 5619.60, "Lc": 2286.46, "p": 938.27208943, "K": 493.677, "pi": 139.57039, "mu": 105.6583755, "nu": 0.0}
CTAU = {"Lb": 0.4407, "Lc": 0.0606}  # mm (PDG)

TREE = [
    {"name": "Lambda_b0", "pid": 5122, "mother": -1, "children": [1, 5, 6], "stable": False, "charge": 0},
    {"name": "Lambda_c+", "pid": 4122, "mother": 0, "children": [2, 3, 4], "stable": False, "charge": 1},
    {"name": "p+", "pid": 2212, "mother": 1, "children": [], "stable": True, "charge": 1},
    {"name": "K-", "pid": -321, "mother": 1, "children": [], "stable": True, "charge": -1},
    {"name": "pi+", "pid": 211, "mother": 1, "children": [], "stable": True, "charge": 1},
    {"name": "mu-", "pid": 13, "mother": 0, "children": [], "stable": True, "charge": -1},
    {"name": "anti-nu_mu", "pid": -14, "mother": 0, "children": [], "stable": True, "charge": 0},
]


def _boost(p4: np.ndarray, mother: np.ndarray) -> np.ndarray:
    """Boost four-vectors (px, py, pz, E) from the rest frame of ``mother`` (lab four-vectors) to the lab."""
    b = mother[:, :3] / mother[:, 3:4]
    b2 = np.sum(b * b, axis=1, keepdims=True)
    g = 1.0 / np.sqrt(1.0 - b2)
    bp = np.sum(b * p4[:, :3], axis=1, keepdims=True)
    g2 = np.where(b2 > 0, (g - 1.0) / np.where(b2 > 0, b2, 1.0), 0.0)
    p3 = p4[:, :3] + g2 * bp * b + g * b * p4[:, 3:4]
    return np.concatenate([p3, g * (p4[:, 3:4] + bp)], axis=1)


def make_batch(n: int, seed: int, batch_id: int = 7) -> Batch:
    """A reference-channel batch in the generation layout (half of the events charge-conjugated)."""
    import phasespace

    rng = np.random.default_rng(seed)
    lc = phasespace.GenParticle("Lc", M["Lc"]).set_children(
        phasespace.GenParticle("p", M["p"]), phasespace.GenParticle("K", M["K"]), phasespace.GenParticle("pi", M["pi"]))
    lb = phasespace.GenParticle("Lb", M["Lb"]).set_children(lc, phasespace.GenParticle("mu", M["mu"]),
                                                             phasespace.GenParticle("nu", M["nu"]))
    p = np.exp(rng.uniform(np.log(40e3), np.log(250e3), n))
    eta = rng.uniform(2.3, 4.7, n)
    phi = rng.uniform(-np.pi, np.pi, n)
    th = 2 * np.arctan(np.exp(-eta))
    mom = np.stack([p * np.sin(th) * np.cos(phi), p * np.sin(th) * np.sin(phi), p * np.cos(th),
                    np.sqrt(p**2 + M["Lb"] ** 2)], axis=1)
    _, parts = lb.generate(n_events=n, seed=seed)
    p4 = {k: _boost(np.asarray(v, dtype=float), mom) for k, v in parts.items()}
    p4["Lb"] = mom
    order = ["Lb", "Lc", "p", "K", "pi", "mu", "nu"]
    conj = rng.random(n) < 0.5
    pid = np.concatenate([np.where(conj, -node["pid"], node["pid"]) for node in TREE])
    all4 = np.concatenate([p4[k] for k in order])
    pv = np.stack([rng.normal(0, 0.04, n), rng.normal(0, 0.04, n), rng.normal(0, 45, n)], axis=1)

    def decay(p4k, ctau, origin):
        pp = np.linalg.norm(p4k[:, :3], axis=1)
        d = rng.exponential(ctau * pp / np.sqrt(p4k[:, 3] ** 2 - pp**2))
        return origin + p4k[:, :3] / pp[:, None] * d[:, None]

    v_lb = decay(p4["Lb"], CTAU["Lb"], pv)
    v_lc = decay(p4["Lc"], CTAU["Lc"], v_lb)
    ev = np.arange(n)
    prod = {0: ev, 1: n + ev, 5: n + ev, 6: n + ev, 2: 2 * n + ev, 3: 2 * n + ev, 4: 2 * n + ev}
    dec = {0: n + ev, 1: 2 * n + ev}
    mc = pd.DataFrame({
        "batch": np.full(7 * n, batch_id, np.int64),
        "index": np.arange(7 * n, dtype=np.int32),
        "event": np.tile(ev, 7).astype(np.int32),
        "pid": pid.astype(np.int32),
        "px": all4[:, 0].astype(np.float64), "py": all4[:, 1].astype(np.float64),
        "pz": all4[:, 2].astype(np.float64), "e": all4[:, 3].astype(np.float64),
        "prod_vertex": np.concatenate([prod[k] for k in range(7)]).astype(np.int32),
        "decay_vertex": np.concatenate([dec.get(k, np.full(n, -1)) for k in range(7)]).astype(np.int32),
        "mother": np.concatenate([np.full(n, -1)] + [TREE[k]["mother"] * n + ev for k in range(1, 7)]).astype(np.int32),
        "reconstructed": np.zeros(7 * n, bool),
    })
    pos = np.concatenate([pv, v_lb, v_lc])
    vt = pd.DataFrame({
        "batch": np.full(3 * n, batch_id, np.int64), "index": np.arange(3 * n, dtype=np.int32),
        "event": np.tile(ev, 3).astype(np.int32),
        "x": pos[:, 0].astype(np.float32), "y": pos[:, 1].astype(np.float32), "z": pos[:, 2].astype(np.float32),
        "t": np.zeros(3 * n, np.float32),
        "mother": np.concatenate([np.full(n, -1), ev, n + ev]).astype(np.int32),
    })
    evt = pd.DataFrame({"batch": np.full(n, batch_id, np.int64), "event": ev.astype(np.int32),
                        "pv_x": pv[:, 0].astype(np.float32), "pv_y": pv[:, 1].astype(np.float32),
                        "pv_z": pv[:, 2].astype(np.float32), "pv_t": np.zeros(n, np.float32),
                        "n_tracks": np.zeros(n, np.int32), "weight": np.ones(n, np.float32),
                        **vertexing_defaults("events", n)})
    b = Batch(id=batch_id, seed=seed, n_events=n, tables={"events": evt, "mc_particles": mc, "mc_vertices": vt})
    b.info["decay_tree"] = [dict(node) for node in TREE]
    return b


def reconstruct(batch, eff="reference", res="reference"):
    for stage in (Occupancy(), Efficiency(eff), Resolution(res), Composites()):
        batch = stage(batch)
    return batch


def _check_dtypes(batch):
    for t in ("events", "mc_particles", "particles", "vertices"):
        df = batch[t]
        assert list(df.columns) == list(COLUMNS[t]), t
        for c, d in COLUMNS[t].items():
            assert df[c].dtype == np.dtype(d), (t, c, df[c].dtype)


@pytest.fixture(scope="module")
def reco_batch():
    return reconstruct(make_batch(4000, seed=11))


def test_efficiency_stage_selects_final_state_charged_tracks(reco_batch):
    b = reco_batch
    _check_dtypes(b)
    mc, parts = b["mc_particles"], b["particles"]
    n = b.n_events
    node = mc["index"].to_numpy() // n
    reco = mc["reconstructed"].to_numpy()
    assert not reco[np.isin(node, [0, 1, 6])].any()  # decaying particles and the neutrino never
    tracks = parts[parts.vertex < 0]
    assert len(tracks) == reco.sum()
    np.testing.assert_array_equal(np.sort(tracks.mc_particle), np.nonzero(reco)[0])
    # truth link, true pid, charge, mass hypothesis of the true species
    linked = mc.set_index("index").loc[tracks.mc_particle]
    np.testing.assert_array_equal(tracks.pid.to_numpy(), linked.pid.to_numpy())
    np.testing.assert_array_equal(tracks.event.to_numpy(), linked.event.to_numpy())
    hyp = {2212: 938.272, 321: 493.677, 211: 139.570, 13: 105.658}
    np.testing.assert_allclose(tracks.m.to_numpy(), [hyp[abs(int(v))] for v in tracks.pid], atol=1e-3)
    np.testing.assert_array_equal(np.sign(tracks.charge), np.sign(tracks.pid) * np.where(np.abs(tracks.pid) == 13, -1, 1))
    assert tracks[list(PID_COLUMNS)].isna().all().all()  # PID columns: NaN
    # the fraction reconstructed matches the reference probability (binomial tolerance)
    from mambah.reference.tracking import TrackingDetector

    cand = np.isin(node, [2, 3, 4, 5])
    vt = b["mc_vertices"]
    pv = mc.prod_vertex.to_numpy()[cand]
    prob = TrackingDetector().efficiency(*(mc[c].to_numpy(float)[cand] for c in ("px", "py", "pz")),
                                         *(vt[c].to_numpy(float)[pv] for c in ("x", "y", "z")), mc.pid.to_numpy()[cand])
    assert reco[cand].sum() == pytest.approx(prob.sum(), abs=5 * np.sqrt(np.sum(prob * (1 - prob))))


def test_composites_rows_links_and_masses(reco_batch):
    b = reco_batch
    n = b.n_events
    mc, parts, verts = b["mc_particles"], b["particles"], b["vertices"]
    reco = mc["reconstructed"].to_numpy().reshape(7, n)
    comp = parts[parts.vertex >= 0]
    assert np.array_equal(parts["index"].to_numpy(), np.arange(len(parts)))
    lc = comp[np.abs(comp.pid) == 4122]
    lb = comp[np.abs(comp.pid) == 5122]
    # a Lambda_c+ exactly where p, K, pi were reconstructed; a Lambda_b0 where also the muon was
    np.testing.assert_array_equal(np.sort(lc.event), np.nonzero(reco[2:5].all(axis=0))[0])
    np.testing.assert_array_equal(np.sort(lb.event), np.nonzero(reco[2:6].all(axis=0))[0])
    assert len(verts) == len(comp)
    # vertex rows and links
    v = verts.set_index("index").loc[comp.vertex]
    np.testing.assert_array_equal(v.particle.to_numpy(), comp["index"].to_numpy())
    np.testing.assert_allclose(v.m.to_numpy(), comp.m.to_numpy())
    assert set(verts.n_daughters[np.isin(verts.particle, lc["index"])]) == {3}
    assert set(verts.n_daughters[np.isin(verts.particle, lb["index"])]) == {2}  # Lambda_c+ and mu-
    np.testing.assert_array_equal(v.mc_vertex.to_numpy(), mc.decay_vertex.to_numpy()[comp.mc_particle])
    np.testing.assert_array_equal(v.event.to_numpy(), comp.event.to_numpy())
    # per-row pid follows charge conjugation; charge of Lc = sum of its tracks'
    np.testing.assert_array_equal(lc.pid.to_numpy(), mc.pid.to_numpy()[lc.mc_particle])
    assert set(lc.charge * np.sign(lc.pid)) == {1}
    assert set(lb.charge) == {0}
    # daughters point to their composite; momentum is the sum of the daughters'
    tracks = parts[parts.vertex < 0]
    kids = tracks[tracks.mother >= 0].groupby("mother")[["px", "py", "pz", "e"]].sum()
    kids_c = comp[comp.mother >= 0].groupby("mother")[["px", "py", "pz", "e"]].sum()
    tot = kids.add(kids_c, fill_value=0.0)
    mine = comp.set_index("index").loc[tot.index]
    np.testing.assert_allclose(tot[["px", "py", "pz", "e"]].to_numpy(), mine[["px", "py", "pz", "e"]].to_numpy(),
                               rtol=2e-5, atol=0.5)
    assert (lc.mother.isin(lb["index"]) | (lc.mother == -1)).all()
    np.testing.assert_array_equal(np.sort(lc.mother[lc.mother >= 0]), np.sort(lb["index"]))
    # masses: Lc peaks at its PDG mass (smearing only); the semileptonic Lb keeps its visible mass < M(Lb)
    assert np.median(lc.m) == pytest.approx(M["Lc"], abs=2.0)
    assert np.mean(lb.m > M["Lb"] + 50) < 0.01 and np.median(lb.m) < M["Lb"] - 200
    # vertex positions: smeared truth with the documented widths
    vt = b["mc_vertices"].set_index("index")
    d = verts[["x", "y", "z"]].to_numpy() - vt.loc[verts.mc_vertex, ["x", "y", "z"]].to_numpy()
    assert d[:, 0].std() == pytest.approx(0.02, rel=0.1) and d[:, 2].std() == pytest.approx(0.2, rel=0.1)


def test_occupancy_stage_follows_the_shipped_histogram(reco_batch):
    from mambah.reconstruction.occupancy import OccupancyModel

    m = OccupancyModel.load("occupancy-lc-run3-v1")
    b = make_batch(10, seed=1)
    b.n_events = 200_000
    del b.tables["events"]
    nt = Occupancy()(b)["events"]["n_tracks"].to_numpy()
    counts, _ = np.histogram(nt, bins=m.edges)
    expect = m.counts / m.counts.sum() * len(nt)
    ok = expect > 20
    chi2 = np.sum((counts[ok] - expect[ok]) ** 2 / expect[ok])
    dof = ok.sum()
    assert chi2 < dof + 5 * np.sqrt(2 * dof)
    assert counts[~ok].sum() == pytest.approx(expect[~ok].sum(), abs=5 * np.sqrt(expect[~ok].sum()) + 5)
    assert nt.mean() == pytest.approx(m.mean(), abs=5 * nt.std() / np.sqrt(len(nt)))
    # reproducible from the batch seed, independent of other stages
    again = Occupancy()(make_batch(10, seed=1).__class__(id=7, seed=1, n_events=200_000))["events"]["n_tracks"]
    np.testing.assert_array_equal(again.to_numpy(), nt)


def test_stages_are_seeded_and_picklable():
    a = reconstruct(make_batch(500, seed=3))
    b = reconstruct(make_batch(500, seed=3))
    for t in ("particles", "vertices", "events"):
        pd.testing.assert_frame_equal(a[t], b[t])
    for s in (Occupancy(), Efficiency(), Resolution(), Composites(), Efficiency("reference")):
        s2 = pickle.loads(pickle.dumps(s))
        assert s2 == s and s2.config() == s.config()
    mv = Efficiency().model_versions()
    assert list(mv) == ["efficiency-ref-v2"] and set(mv["efficiency-ref-v2"]) == {"version", "hash"}
    assert "occupancy-lc-run3-v1" in Occupancy().model_versions()


def test_networks_in_the_chain_and_lambda_c_mass_width_closure():
    """The Lambda_c+ peak with the NN resolution has the width of the truth smearing within 5 %."""
    b_nn = reconstruct(make_batch(30_000, seed=21), eff="reference", res="resolution-ref-v1")
    b_ref = reconstruct(make_batch(30_000, seed=21), eff="reference", res="reference")

    def lc_mass(b):
        p = b["particles"]
        return p.m[np.abs(p.pid) == 4122].to_numpy(float)

    m_nn, m_ref = lc_mass(b_nn), lc_mass(b_ref)
    assert len(m_nn) == len(m_ref) > 10_000  # same efficiency draws, different smearing

    def width(m):
        return 0.5 * np.subtract(*np.percentile(m, [84.13, 15.87]))

    w_nn, w_ref = width(m_nn), width(m_ref)
    assert 3.0 < w_ref < 15.0  # MeV, an LHCb-like Lambda_c+ resolution
    assert w_nn / w_ref == pytest.approx(1.0, abs=0.05)
    assert np.median(m_nn) == pytest.approx(np.median(m_ref), abs=0.2 * w_ref)
    # and the NN efficiency in the chain: same number of Lambda_c+ within the binomial spread
    b_eff = reconstruct(make_batch(30_000, seed=21), eff="efficiency-ref-v2", res="resolution-ref-v1")
    n_eff = len(lc_mass(b_eff))
    assert n_eff == pytest.approx(len(m_ref), abs=5 * np.sqrt(len(m_ref)) + 0.01 * len(m_ref))


def test_bad_input_gets_clear_errors(tmp_path):
    b = make_batch(50, seed=2)
    with pytest.raises(ConfigurationError, match="needs the particles table"):
        Resolution()(make_batch(50, seed=2))
    with pytest.raises(ConfigurationError, match="unknown species"):
        Efficiency(species=("pi", "kaon"))
    b2 = Batch(id=1, seed=1, n_events=10)
    with pytest.raises(ConfigurationError, match="run the generation stages"):
        Efficiency()(b2)
    b = Efficiency("reference")(b)
    with pytest.raises(ConfigurationError, match="must run once"):
        Efficiency("reference")(b)
    b.info.pop("decay_tree")
    with pytest.raises(ConfigurationError, match="decay_tree"):
        Composites()(b)
    with pytest.raises(ModelDirError, match="no model 'efficiency-nope'"):
        Efficiency("efficiency-nope")(make_batch(50, seed=2))
    # a resolution model used as an efficiency model: names the model and the kind
    with pytest.raises(ModelDirError, match="'resolution-ref-v1'.*not 'efficiency'"):
        Efficiency("resolution-ref-v1")(make_batch(50, seed=2))


def test_on_a_generated_batch_of_the_reference_channel(tmp_path):
    """Generation stages -> reconstruction stages -> store, for the reference channel with CC."""
    from mambah.generation import generator_stages
    from mambah.pipeline import Pipeline
    from mambah.store import Store

    desc = "Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu"
    pipe = Pipeline([*generator_stages(desc, charge_conjugate="both"), Occupancy(), Efficiency(), Resolution(),
                     Composites()])
    b = pipe.process(pipe.make_batch(0, production_seed=5, n_events=5000))
    _check_dtypes(b)
    tree = b.info["decay_tree"]
    names = [node["name"] for node in tree]
    parts = b["particles"]
    lc = parts[np.abs(parts.pid) == 4122]
    n = b.n_events
    reco = b["mc_particles"]["reconstructed"].to_numpy().reshape(len(tree), n)
    kids = [names.index(x) for x in ("p+", "K-", "pi+")]
    np.testing.assert_array_equal(np.sort(lc.event), np.nonzero(reco[kids].all(axis=0))[0])
    assert len(lc) > 0.2 * n
    # the peak sits at the Lambda_c+ mass with an LHCb-like resolution; both charges present
    w = 0.5 * np.subtract(*np.percentile(lc.m, [84.13, 15.87]))
    assert np.median(lc.m) == pytest.approx(M["Lc"], abs=1.0) and 2.0 < w < 15.0
    assert set(np.sign(lc.pid)) == {-1, 1}
    assert (b["events"].n_tracks > 0).all()
    mv = pipe.model_versions()
    assert {"efficiency-ref-v2", "resolution-ref-v1", "occupancy-lc-run3-v1"} <= set(mv)
    with Store(f"duckdb:///{tmp_path / 'r.duckdb'}") as st:
        st.write_batch(b)
        back = st.read("particles")
        assert len(back) == len(parts)
        v = st.read("vertices")
        assert len(v) == len(b["vertices"])


def test_occupancy_model_from_the_real_calibration_sample(tmp_path, real_data_path):
    """The CLI rebuilds the shipped histogram from the real sample (sWeighted nLongTracks)."""
    import json
    import subprocess
    import sys

    from mambah.modeldir import default_models_dir, load_arrays
    from mambah.reconstruction.occupancy import OccupancyModel

    out = tmp_path / "occ"
    r = subprocess.run([sys.executable, "-m", "mambah", "-q", "detector", "occupancy", "--data", str(real_data_path),
                        "--weight", "sWeight", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    shipped = load_arrays(default_models_dir() / "occupancy-lc-run3-v1")
    mine = load_arrays(out)
    np.testing.assert_array_equal(mine["edges"], shipped["edges"])
    np.testing.assert_allclose(mine["counts"], shipped["counts"])
    card = json.loads((default_models_dir() / "occupancy-lc-run3-v1" / "card.json").read_text())
    import hashlib

    assert card["training_data"]["sha256"] == hashlib.sha256(real_data_path.read_bytes()).hexdigest()
    assert "pidcalib2" in card["training_data"]["description"] and "GPL-3.0" in card["training_data"]["license"]
    # the sWeighted mean of the data is reproduced by the histogram (bin-centre approximation)
    m = OccupancyModel.load(out)
    assert m.mean() == pytest.approx(card["metrics"]["data_mean"], abs=1.0)
    # bad input: a missing column is named with the available ones; nothing is written
    r = subprocess.run([sys.executable, "-m", "mambah", "detector", "occupancy", "--data", str(real_data_path),
                        "--column", "nTracks", "--out", str(tmp_path / "bad")], capture_output=True, text=True)
    assert r.returncode == 2 and "nTracks" in r.stderr and "nLongTracks" in r.stderr
    assert not (tmp_path / "bad").exists()


def test_corrupt_occupancy_model_is_refused(tmp_path):
    import shutil

    from mambah.modeldir import default_models_dir

    d = tmp_path / "occ"
    shutil.copytree(default_models_dir() / "occupancy-lc-run3-v1", d)
    (d / "arrays.npz").write_bytes(b"\x00" * 10)
    with pytest.raises(ModelDirError, match="does not match the hash"):
        Occupancy(str(d))(make_batch(10, seed=1))


def test_plan_composites_handles_neutrals_intermediates_and_untrackable_particles():
    from mambah.reconstruction.composites import plan_composites

    def node(name, pid, mother, children, stable, charge):
        return {"name": name, "pid": pid, "mother": mother, "children": children, "stable": stable, "charge": charge}

    # B0 -> (J/psi -> mu+ mu-) (K_S0 -> pi+ pi-) (pi0 -> gamma gamma)
    tree = [node("B0", 511, -1, [1, 4, 7], False, 0), node("J/psi", 443, 0, [2, 3], False, 0),
            node("mu+", -13, 1, [], True, 1), node("mu-", 13, 1, [], True, -1),
            node("K_S0", 310, 0, [5, 6], False, 0), node("pi+", 211, 4, [], True, 1), node("pi-", -211, 4, [], True, -1),
            node("pi0", 111, 0, [8, 9], False, 0), node("gamma", 22, 7, [], True, 0), node("gamma", 22, 7, [], True, 0)]
    plan = plan_composites(tree)
    assert plan["tracks"] == {0: [2, 3, 5, 6], 1: [2, 3], 4: [5, 6]}  # no pi0 candidate: no charged tracks
    assert plan["attach"] == [-1, 0, 1, 1, 0, 4, 4, 0, 0, 0]
    assert plan["n_daughters"] == {0: 2, 1: 2, 4: 2}  # the B0 vertex: J/psi and K_S0 (pi0 unseen)
    # a charged particle that is not trackable (a Sigma+ left undecayed) blocks its ancestors
    tree2 = [node("Lambda_c+", 4122, -1, [1, 2], False, 1), node("Sigma+", 3222, 0, [], True, 1),
             node("pi+", 211, 0, [], True, 1)]
    assert plan_composites(tree2)["tracks"] == {}
    # tau- -> pi- nu: one track only, no vertex of its own; the pion attaches to the B
    tree3 = [node("B-", -521, -1, [1, 4], False, -1), node("tau-", 15, 0, [2, 3], False, -1),
             node("pi-", -211, 1, [], True, -1), node("nu_tau", 16, 1, [], True, 0), node("K-", -321, 0, [], True, -1)]
    plan3 = plan_composites(tree3)
    assert plan3["tracks"] == {0: [2, 4]} and plan3["attach"][2] == 0 and plan3["n_daughters"] == {0: 2}
