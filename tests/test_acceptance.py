"""Issue 23: the explicit geometric acceptance before the tracking networks, and the 4-class
(not reconstructed / long / upstream / downstream) efficiency with its TRACK_Type.

A tiny 4-class model is trained here (a few seconds) through ``mambah train efficiency --classes
track-type``; the shipped model's closure is in its card and in ``benchmarks/acceptance.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from mambah import Composites, Occupancy, Pipeline, Resolution, generator_stages
from mambah.errors import ConfigurationError, ModelDirError
from mambah.reconstruction import Efficiency, Vertexing
from mambah.reconstruction.acceptance import TYPE_CODES, TrackAcceptance
from mambah.reference.tracking import TrackGun, TrackingDetector, tracking_sample

ACC = TrackAcceptance()


def _track(p_gev, eta, z=0.0, rho=0.0, phi=0.3):
    th = 2 * np.arctan(np.exp(-np.asarray(eta, float)))
    p = np.asarray(p_gev, float) * 1e3
    return (p * np.sin(th) * np.cos(phi), p * np.sin(th) * np.sin(phi), p * np.cos(th), rho * np.cos(1.0),
            rho * np.sin(1.0), z)


@pytest.mark.parametrize("args, expected", [
    ((10.0, 3.0), (True, False, False)),            # prompt, fast: long only
    ((3.0, 3.0), (True, True, False)),              # slow enough to be bent out: long or upstream
    ((10.0, 3.0, 1500.0), (False, False, True)),    # born after the VELO, before the UT: downstream only
    ((10.0, 3.0, 300.0, 20.0), (True, False, True)),  # in the VELO region's edge: long or downstream
    ((10.0, 1.5), (False, False, False)),           # too wide an angle
    ((10.0, 5.6), (False, False, False)),           # in the beam pipe
    ((0.4, 3.0), (False, False, False)),            # below the magnet's cut-off
    ((10.0, 3.0, 2600.0), (False, False, False)),   # born behind the UT
    ((10.0, 3.0, -400.0), (False, False, False)),   # before the VELO
    ((10.0, 3.0, 100.0, 1200.0), (False, False, False)),  # far off the beam line
])
def test_the_geometry_decides_the_possible_track_types(args, expected):
    got = ACC.types(*(np.atleast_1d(a) for a in _track(*args)))[0]
    assert tuple(bool(v) for v in got) == expected


def test_backward_particles_are_outside():
    assert not ACC.inside(np.array([100.0]), np.array([0.0]), np.array([-10_000.0]), *np.zeros((3, 1))).any()


def test_the_acceptance_costs_almost_no_reference_track():
    """The hard acceptance is the outer envelope of the reference detector's soft edges: on the
    README's main channel, the tracks the reference detector would make but the acceptance rules
    out are below 0.1 % of its long tracks and 0.5 % of its upstream tracks. (Its downstream
    probability of prompt particles, ~0.1 % each from the soft VELO edge in rho, is ruled out on
    purpose: a particle born in the VELO's core makes a VELO segment.)"""
    from mambah.physics import species_index

    pipe = Pipeline(generator_stages("Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu", unweight=False))
    b = pipe.process(pipe.make_batch(0, production_seed=4, n_events=5000))
    mc, vt = b["mc_particles"], b["mc_vertices"].set_index("index")
    c = mc[(species_index(mc["pid"].to_numpy()) >= 0) & (mc["decay_vertex"] < 0)]
    o = vt.loc[c["prod_vertex"]]
    args = [c[k].to_numpy() for k in ("px", "py", "pz")] + [o[k].to_numpy() for k in ("x", "y", "z")]
    probs = TrackingDetector().type_probabilities(*args, c["pid"].to_numpy())
    allowed = ACC.types(*args)
    lost = (probs[:, 1:] * ~allowed).sum(axis=0) / probs[:, 1:].sum(axis=0)
    assert lost[0] < 1e-3 and lost[1] < 5e-3, lost
    assert 0.1 < 1 - allowed.any(axis=1).mean() < 0.4  # a good part of the generated particles are outside
    assert np.allclose(probs.sum(axis=1), 1.0) and (probs >= -1e-12).all()


def test_the_long_class_is_the_binary_efficiency_and_the_sample_draws_types():
    df = tracking_sample(20_000, seed=2)
    assert np.allclose(df["eff_long"], df["eff_true"])
    assert ((df["track_type"] == 3) == (df["reconstructed"] == 1)).all()
    assert set(np.unique(df["track_type"])) == {0, 3, 4, 5}


def test_a_model_that_does_not_cover_the_acceptance_is_refused_loudly():
    from mambah.nn.registry import load_model

    v1 = load_model("efficiency-ref-v1", kind="efficiency")  # trained on p < 400 GeV/c, z > -240 mm
    with pytest.raises(ModelDirError, match=r"'efficiency-ref-v1' does not cover the geometric acceptance.*ln_p_gev"):
        ACC.check_model(v1)
    narrow = TrackAcceptance(p_max=399e3, z_min=-240.0)
    narrow.check_model(v1)  # covers a narrower acceptance
    pipe = Pipeline([*generator_stages("Lambda_c+ -> p+ K- pi+"), Occupancy(), Efficiency("efficiency-ref-v1")])
    batch = pipe.make_batch(0, production_seed=1, n_events=50)
    with pytest.raises(ModelDirError, match="does not cover the geometric acceptance"):
        pipe.process(batch)


def test_bad_stage_options():
    with pytest.raises(ConfigurationError, match="track_types"):
        Efficiency(track_types=("long", "velo"))
    with pytest.raises(ConfigurationError, match="binary"):
        Efficiency("efficiency-ref-v1", track_types=("long", "downstream"),
                   acceptance=TrackAcceptance(p_max=399e3, z_min=-240.0))._type_probabilities(
            *(np.ones(1),) * 6, np.array([211]))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny 4-class model trained through the CLI on the acceptance's domain."""
    from mambah.cli import main

    d = tmp_path_factory.mktemp("acc")
    assert main(["detector", "tracking-sample", "--events", "250000", "--seed", "5", "--domain", "acceptance",
                 "--out", str(d / "t.parquet")]) == 0
    assert main(["-q", "train", "efficiency", "--classes", "track-type", "--data", str(d / "t.parquet"),
                 "--out", str(d / "tiny"), "--hidden", "32,32", "--epochs", "8", "--learning-rate", "5e-3",
                 "--batch-size", "2048"]) == 0
    return str(d / "tiny")


def test_tiny_four_class_model_closes_on_the_reference_truth(tiny):
    import json
    from pathlib import Path

    from mambah.nn.registry import load_model
    from mambah.physics import p_eta
    from mambah.training.tracking import efficiency_closure

    card = json.loads((Path(tiny) / "card.json").read_text())
    assert card["classes"] == ["none", "long", "upstream", "downstream"] and card["class_codes"] == [0, 3, 4, 5]
    m = load_model(tiny, kind="efficiency")
    ACC.check_model(m)  # its range is the acceptance's box
    gun = TrackGun(p_lo=ACC.p_min, p_hi=ACC.p_max, box=0.2)
    t = gun(120_000, seed=11)
    ins = ACC.inside(t["px"], t["py"], t["pz"], t["x"], t["y"], t["z"])
    t = {k: v[ins] for k, v in t.items()}
    args = [t[c] for c in ("px", "py", "pz", "x", "y", "z", "pid")]
    counts: list = []
    prob = m.type_probabilities(*args, counts=counts)
    assert counts[0].count == 0  # nothing at the range edges
    truth = TrackingDetector().type_probabilities(*args)
    p, eta = p_eta(t["px"], t["py"], t["pz"])
    for k, name in enumerate(["none", "long", "upstream", "downstream"]):
        c = efficiency_closure(prob[:, k], truth[:, k], p, eta, p_edges=[5e2, 2e3, 5e3, 2e4, 1e5, 6.8e6],
                               eta_edges=[1.6, 2.5, 3.5, 4.5, 5.4], min_count=2000)
        assert c["n_bins"] >= 15 and c["max_abs_diff"] < 0.05, (name, c["max_abs_diff"], c["n_bins"])


def _run(model, n=2000, descriptor="Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu", **kw):
    stages = [*generator_stages(descriptor), Occupancy(), Efficiency(model, **kw), Resolution("reference"),
              Composites()]
    pipe = Pipeline(stages)
    return pipe.process(pipe.make_batch(0, production_seed=3, n_events=n))


def test_the_stage_evaluates_the_network_only_inside_the_acceptance(tiny):
    b = _run(tiny)
    info = b.info["reconstruction"]["efficiency"]
    bad, n = info["out_of_range"]["tiny"]
    assert bad == 0 and n == info["in_acceptance"] < info["candidates"]
    mc, vt = b["mc_particles"], b["mc_vertices"].set_index("index")
    reco = mc[mc["reconstructed"]]
    org = vt.loc[reco["prod_vertex"]]
    assert ACC.inside(reco["px"], reco["py"], reco["pz"], org["x"], org["y"], org["z"]).all()
    parts = b["particles"]
    assert (parts.loc[parts["vertex"] < 0, "track_type"] == 3).all()  # default: long tracks only
    assert (parts.loc[parts["vertex"] >= 0, "track_type"] == 0).all()  # composites have no track type


def test_downstream_tracks_of_long_lived_daughters_get_their_type(tiny):
    desc = "B0 -> (J/psi(1S) -> mu+ mu-) (K_S0 -> pi+ pi-)"
    for model in ("reference", tiny):
        b = _run(model, n=2000, descriptor=desc, track_types=("long", "upstream", "downstream"))
        parts, mc = b["particles"], b["mc_particles"].set_index("index")
        tr = parts[parts["vertex"] < 0]
        mother_pid = mc.loc[mc.loc[tr["mc_particle"], "mother"].to_numpy(), "pid"].to_numpy()
        tt = tr["track_type"].to_numpy()
        assert set(np.unique(tt)) <= {3, 4, 5}
        from_ks = np.abs(mother_pid) == 310
        # a good part of the K0S pions are downstream tracks, the muons nearly never
        assert (tt[from_ks] == 5).mean() > 0.2, model
        assert (tt[~from_ks] == 5).mean() < 0.01, model
        types = b.info["reconstruction"]["efficiency"]["types"]
        assert set(types) == set(TYPE_CODES) and types["downstream"] > 0


def test_vertexing_uses_the_efficiency_stage_type():
    desc = "B0 -> (J/psi(1S) -> mu+ mu-) (K_S0 -> pi+ pi-)"
    stages = [*generator_stages(desc), Occupancy(), Efficiency("reference", track_types=("long", "downstream")),
              Resolution("reference"), Composites()]
    pipe = Pipeline(stages)
    b = pipe.process(pipe.make_batch(0, production_seed=8, n_events=1500))
    before = b["particles"]["track_type"].to_numpy()
    after = Vertexing()(b)["particles"]["track_type"].to_numpy()
    tracks = b["particles"]["vertex"].to_numpy() < 0
    assert (after[tracks] == before[tracks]).all() and (before[tracks] == 5).any()


def test_reference_mode_keeps_the_long_track_efficiency():
    """Inside the acceptance the stage draws long tracks with the reference long-track efficiency
    (the former binary stage's): the reconstructed fraction matches the mean probability."""
    b = _run("reference", n=4000)
    info = b.info["reconstruction"]["efficiency"]
    mc, vt = b["mc_particles"], b["mc_vertices"].set_index("index")
    from mambah.physics import species_index

    cand = mc[(species_index(mc["pid"].to_numpy()) >= 0) & (mc["decay_vertex"] < 0)]
    org = vt.loc[cand["prod_vertex"]]
    args = (cand["px"].to_numpy(), cand["py"].to_numpy(), cand["pz"].to_numpy(), org["x"].to_numpy(),
            org["y"].to_numpy(), org["z"].to_numpy())
    p_long = TrackingDetector().efficiency(*args, cand["pid"].to_numpy()) * ACC.types(*args)[:, 0]
    n = info["reconstructed"]
    assert n == pytest.approx(p_long.sum(), abs=4 * np.sqrt(p_long.sum()))


def test_standard_pipeline_track_types():
    from mambah import standard_pipeline

    desc = "B0 -> (J/psi(1S) -> mu+ mu-) (K_S0 -> pi+ pi-)"
    eff = [s for s in standard_pipeline(desc, pid=False).stages if s.name == "efficiency"][0]
    assert eff.model == "efficiency-ref-v2" and eff.track_types == ("long",)
    assert eff.config()["acceptance"] == ACC.config()
    eff = [s for s in standard_pipeline(desc, pid=False, track_types="long,downstream".split(",")).stages
           if s.name == "efficiency"][0]
    assert eff.track_types == ("long", "downstream")
