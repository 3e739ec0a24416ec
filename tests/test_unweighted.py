"""Unweighted events by default, decay models in descriptors (issue 26).

The unweighted sample (accept-reject on phase-space weight x decay-model weight) must reproduce
the weighted one *with its weights* and differ from it *without* them: the second check gives the
first its power. Two-sample comparisons use a weighted Kolmogorov-Smirnov test: the largest
distance between the weighted empirical CDFs, with the asymptotic Kolmogorov distribution at the
effective sizes ``n_eff = (sum w)^2 / sum w^2`` (Kish); every sample is seeded.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import types
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mambah.errors import DescriptorError
from mambah.generation import PhaseSpaceDecay, generator_stages, parse_descriptor
from mambah.pipeline import Pipeline

LB = "Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu"
LB_LQCD = LB + " Lb2LclnuLQCD"
BU = "B+ -> (J/psi(1S) -> mu+ mu-) K+"
P_MIN = 1e-3  # "not small": a false alarm rate of 0.1 % per test for a correct generator
P_TINY = 1e-8  # the weights matter: without them the samples must disagree


def run(descriptor, n, seed, batch_id=0, **decay):
    pipe = Pipeline(generator_stages(descriptor, **decay))
    return pipe.process(pipe.make_batch(batch_id, seed, n))


def weighted_ks(x1, x2, w1=None, w2=None) -> tuple[float, float]:
    """(D, p) of the two-sample KS test with weights (asymptotic, Kish effective sizes)."""
    w1 = np.ones(len(x1)) if w1 is None else np.asarray(w1, float)
    w2 = np.ones(len(x2)) if w2 is None else np.asarray(w2, float)
    o1, o2 = np.argsort(x1), np.argsort(x2)
    x1, w1, x2, w2 = x1[o1], w1[o1], x2[o2], w2[o2]
    c1 = np.concatenate([[0.0], np.cumsum(w1)]) / w1.sum()
    c2 = np.concatenate([[0.0], np.cumsum(w2)]) / w2.sum()
    grid = np.concatenate([x1, x2])
    d = np.max(np.abs(c1[np.searchsorted(x1, grid, side="right")] - c2[np.searchsorted(x2, grid, side="right")]))
    n1, n2 = w1.sum() ** 2 / (w1**2).sum(), w2.sum() ** 2 / (w2**2).sum()
    return float(d), float(stats.kstwobign.sf(d * np.sqrt(n1 * n2 / (n1 + n2))))


def mass2(p):
    return p[3] ** 2 - p[0] ** 2 - p[1] ** 2 - p[2] ** 2


def observables(batch) -> dict[str, np.ndarray]:
    """m^2(pK), m^2(K pi) of the Lambda_c+ (GeV^2) and the q^2 = m^2(mu nu) of the Lambda_b0 decay."""
    p4 = batch.arrays["mc_p4"] / 1000.0
    return {"m2_pK": mass2(p4[:, 2] + p4[:, 3]), "m2_Kpi": mass2(p4[:, 3] + p4[:, 4]),
            "q2": mass2(p4[:, 5] + p4[:, 6])}


@pytest.fixture(scope="module", params=[LB, LB_LQCD], ids=["phsp", "lqcd"])
def samples(request):
    unweighted = run(request.param, 20_000, seed=31)
    weighted = run(request.param, 60_000, seed=32, unweight=False)
    return request.param, unweighted, weighted


@pytest.mark.parametrize("var", ["m2_pK", "m2_Kpi", "q2"])
def test_unweighted_reproduces_weighted_with_weights(samples, var):
    descriptor, unw, wtd = samples
    assert (unw["events"]["weight"] == 1.0).all() and unw.info["generator"]["unit_weights"]
    w = wtd["events"]["weight"].to_numpy(np.float64)
    assert not wtd.info["generator"]["unit_weights"] and w.std() > 0
    assert np.allclose(w, wtd.arrays["decay_weight"], rtol=1e-6)
    x_u, x_w = observables(unw)[var], observables(wtd)[var]
    d, p = weighted_ks(x_u, x_w, None, w)
    print(f"{descriptor} {var}: with weights D={d:.4f} p={p:.3g}")
    assert p > P_MIN, (var, d, p)
    d0, p0 = weighted_ks(x_u, x_w)  # the weighted sample read without its weights
    print(f"{descriptor} {var}: without weights D={d0:.4f} p={p0:.3g}")
    assert p0 < P_TINY, (var, d0, p0)


def test_the_model_changes_q2():
    """With the lattice form factors q^2 is not phase space (independent unweighted samples)."""
    lqcd = run(LB_LQCD, 20_000, seed=35)
    phsp = run(LB, 20_000, seed=33)
    d, p = weighted_ks(observables(lqcd)["q2"], observables(phsp)["q2"])
    assert p < P_TINY, (d, p)


# ---------------------------------------------------------------------------------- provenance
def test_acceptance_efficiency_is_recorded():
    n = 20_000
    b = run(LB_LQCD, n, seed=34)
    acc = b.info["generator_acceptance"]
    assert acc["unweight"] and acc["rejection"] and acc["n_accepted"] >= n
    # staged: the Lambda_b0 and the Lambda_c+ decays are accept-rejected on their own; the efficiency
    # is the product of the two groups' (the probability that a whole chain would be kept)
    groups = acc["groups"]
    assert set(groups) == {"Lambda_b0 -> Lambda_c+ mu- anti-nu_mu Lb2LclnuLQCD", "Lambda_c+ -> p+ K- pi+"}
    assert acc["efficiency"] == pytest.approx(np.prod([g["n_accepted"] / g["n_generated"] for g in groups.values()]))
    assert acc["n_generated"] == acc["n_accepted"] == n  # every gun hadron got a whole unit-weight chain
    for g in groups.values():
        # the number kept is binomial given the weights: its mean is sum(w), the recorded mean weight
        mean_w = g["mean_weight"]
        sigma = np.sqrt(g["n_generated"] * mean_w * (1 - mean_w))
        assert abs(g["n_accepted"] - mean_w * g["n_generated"]) < 5 * sigma
        assert g["n_accepted"] >= n and g["efficiency"] < 1
    assert acc["mean_weight"] == pytest.approx(np.prod([g["mean_weight"] for g in groups.values()]))
    # and it agrees with the mean weight of an independent weighted sample
    w = run(LB_LQCD, 40_000, seed=35, unweight=False)["events"]["weight"].to_numpy(np.float64)
    assert abs(acc["efficiency"] - w.mean()) < 5 * np.hypot(acc["uncertainty"], w.std() / np.sqrt(len(w)))
    assert acc["unweight_efficiency"] == pytest.approx(acc["efficiency"])  # no eta acceptance here
    models = b.info["generator"]["models"]
    assert models["nodes"]["0"]["model"] == "Lb2LclnuLQCD" and models["max_weight"] > 0
    assert models["n_over"] == 0
    import json

    json.dumps(b.info, allow_nan=False)
    assert PhaseSpaceDecay(LB_LQCD).config()["models"] == {"0": ["Lb2LclnuLQCD", []]}


def test_unit_weight_chain_needs_no_rejection():
    """Two-body decays with fixed masses and phase space: unweighted = weighted, event by event."""
    a = run(BU, 3000, seed=36)
    b = run(BU, 3000, seed=36, unweight=False)
    for t in ("events", "mc_particles", "mc_vertices"):
        pd.testing.assert_frame_equal(a[t], b[t])
    acc = a.info["generator_acceptance"]
    assert acc["efficiency"] == 1.0 and not acc["rejection"] and acc["n_generated"] == 3000
    assert (a["events"]["weight"] == 1.0).all()


def test_defaults_are_unweighted():
    from mambah.simulation import standard_pipeline

    assert PhaseSpaceDecay(LB).unweight is True
    assert generator_stages(LB)[1].unweight is True
    assert standard_pipeline(LB, level="truth").stages[1].unweight is True
    assert standard_pipeline(LB, level="truth", unweight=False).stages[1].unweight is False


# ------------------------------------------------------------------------------ reproducibility
def test_same_seed_same_batch_twice():
    a = run(LB_LQCD, 3000, seed=37, batch_id=2)
    run(LB, 1000, seed=1)  # another chain in between must not disturb the random streams
    b = run(LB_LQCD, 3000, seed=37, batch_id=2)
    c = run(LB_LQCD, 3000, seed=37, batch_id=3)
    for t in ("events", "mc_particles", "mc_vertices"):
        pd.testing.assert_frame_equal(a[t], b[t])
    assert a.info["generator_acceptance"] == b.info["generator_acceptance"]
    assert not np.allclose(a.arrays["mc_p4"], c.arrays["mc_p4"])


# ------------------------------------------------------------- the plumbing, with a stand-in model
def _stand_in_models():
    """A stand-in for mambah.generation.models: model 'TOY' weights an event by x^2, x the mu+
    energy share of the J/psi in the B rest frame, (P_B . p_mu+) / (P_B . p_Jpsi)."""
    mod = types.ModuleType("mambah.generation.models")

    def x_of(p4):
        dot = lambda a, b: a[3] * b[3] - a[0] * b[0] - a[1] * b[1] - a[2] * b[2]  # noqa: E731
        return dot(p4[:, 0], p4[:, 2]) / dot(p4[:, 0], p4[:, 1])

    class DecayModelWeight:
        def __init__(self, tree, models):
            self.models, self.max_weight, self.n_over = models, 1.0, 0

        def __call__(self, p4):
            return x_of(p4) ** 2

        def config(self):
            return {"models": {str(k): v[0] for k, v in self.models.items()}, "max_weight": 1.0, "factors": []}

    mod.KNOWN_MODELS = ("PHSP", "TOY")
    mod.check_models = lambda tree, models: None
    mod.model_help = lambda: "TOY: x^2"
    mod.DecayModelWeight = DecayModelWeight
    mod.x_of = x_of
    return mod


def test_model_weight_is_folded_into_the_accept_reject(monkeypatch):
    from mambah.generation import decay

    toy = _stand_in_models()
    monkeypatch.setitem(sys.modules, "mambah.generation.models", toy)
    monkeypatch.setattr(decay, "_WEIGHTS", {})
    desc = "B+ -> (J/psi(1S) -> mu+ mu- TOY) K+"
    assert parse_descriptor(desc).models() == {1: ("TOY", ())}
    unw = run(desc, 10_000, seed=38)
    wtd = run(desc, 30_000, seed=39, unweight=False)
    x_u, x_w = toy.x_of(unw.arrays["mc_p4"]), toy.x_of(wtd.arrays["mc_p4"])
    w = wtd["events"]["weight"].to_numpy(np.float64)
    assert np.allclose(w, x_w**2, rtol=1e-6)  # phase-space weight 1 here: the weight is the model's
    assert weighted_ks(x_u, x_w, None, w)[1] > P_MIN
    assert weighted_ks(x_u, x_w)[1] < P_TINY
    acc = unw.info["generator_acceptance"]
    # the efficiency is the mean model weight <x^2>, measured on the independent weighted sample
    assert acc["rejection"] and abs(acc["efficiency"] - w.mean()) < 5 * np.hypot(acc["uncertainty"],
                                                                               w.std() / np.sqrt(len(w)))
    assert unw.info["generator"]["models"]["nodes"] == {"1": {"particle": "J/psi(1S)", "model": "TOY", "params": []}}


# ----------------------------------------------------------------------------------- descriptors
@pytest.mark.parametrize("text, models", [
    ("B+ -> (J/psi(1S) -> mu+ mu- VLL) K+ SVS", {0: ("SVS", ()), 1: ("VLL", ())}),
    ("B0 -> (J/psi(1S) -> mu+ mu- VLL) (K*(892)0 -> K+ pi- VSS) SVV_HELAMP 0.159 1.563 0.775 0.0 0.612 2.712",
     {0: ("SVV_HELAMP", (0.159, 1.563, 0.775, 0.0, 0.612, 2.712)), 1: ("VLL", ()), 4: ("VSS", ())}),
    (LB_LQCD, {0: ("Lb2LclnuLQCD", ())}),
    ("[B+ -> (J/psi(1S) -> mu+ mu- VLL) K+ SVS]CC", {0: ("SVS", ()), 1: ("VLL", ())}),
    ("Lambda_b0 -> (Lambda_c+ -> p+ K- pi+ PHSP) mu- anti-nu_mu", {1: ("PHSP", ())}),
])
def test_descriptor_round_trip_with_models(text, models):
    d = parse_descriptor(text)
    assert d.models() == models
    assert str(d) == text
    assert parse_descriptor(str(d)).models() == models
    assert [n["name"] for n in d.tree()] == [n["name"] for n in parse_descriptor(d.head.to_string(models=False)).tree()]


@pytest.mark.parametrize("text, bad, words", [
    ("B+ -> (J/psi(1S) -> mu+ mu- VLLL) K+", "VLLL", ["neither a particle nor a known decay model", "'VLL'", "SVS"]),
    ("B+ -> (J/psi(1S) -> mu+ mu-) K+ BOGUS", "BOGUS", ["known decay models: PHSP"]),
    ("B+ -> (J/psi(1S) -> mu+ mu- VSS) K+", "VSS", ["VSS", "J/psi(1S)"]),
    ("B+ -> (J/psi(1S) -> mu+ mu-) K+ SVS 1.5", "SVS", ["parameter"]),
    ("B+ -> (J/psi(1S) -> mu+ mu-) SVS K+", "SVS", ["at least two daughters"]),
    ("B+ -> (J/psi(1S) -> mu+ mu- VLL K+) ", "K+", ["after all the daughters"]),
    ("B+ -> (J/psi(1S) -> mu+ mu-) K+ 0.5", "0.5", ["follow a decay model"]),
])
def test_bad_model_tokens_are_marked(text, bad, words):
    with pytest.raises(DescriptorError) as info:
        parse_descriptor(text)
    msg = str(info.value)
    for w in words:
        assert w in msg, (w, msg)
    line, marks = msg.splitlines()[-2:]
    start = line.index(bad, line.index("->"))
    assert marks.index("^") == start and marks.count("^") == len(bad), msg


@pytest.mark.parametrize("text, dropped, clean", [
    ("B+ -> (J/psi(1S) -> mu+ mu- VLL) K+ BTOSLLBALL 6", ["BTOSLLBALL"], "B+ -> (J/psi(1S) -> mu+ mu- VLL) K+"),
    ("[B0 -> K+ pi- FOO]CC", ["FOO"], "[B0 -> K+ pi-]CC"),
    ("B+ -> (J/psi(1S) -> mu+ mu- XYZ 1 2) K+ SVS", ["XYZ"], "B+ -> (J/psi(1S) -> mu+ mu-) K+ SVS"),
    ("B+ -> (D0 -> K- pi+ BAR) (D*(2010)- -> D~0 pi- BAZ) pi+ pi+", ["BAR", "BAZ"],
     "B+ -> (D0 -> K- pi+) (D*(2010)- -> D~0 pi-) pi+ pi+"),
])
def test_unknown_models_as_phase_space_when_asked(text, dropped, clean):
    """``unknown_models="phsp"``: each unknown model is dropped (with its numbers) and named in its
    own warning with the offending piece marked; known models stay; the default stays an error."""
    from mambah.errors import UnknownModelWarning

    with pytest.raises(DescriptorError, match="neither a particle nor a known decay model"):
        parse_descriptor(text)
    with pytest.warns(UnknownModelWarning) as record:
        d = parse_descriptor(text, unknown_models="phsp")
    assert d.text == clean
    assert d.models() == parse_descriptor(clean).models()
    msgs = [str(w.message) for w in record if issubclass(w.category, UnknownModelWarning)]
    assert sorted(m.split("'")[1] for m in msgs) == sorted(dropped)
    for m in msgs:
        name = m.split("'")[1]
        line, marks = m.splitlines()[-2:]
        assert marks.index("^") == line.index(name, line.index("->")), m
        assert "phase space" in m and "known: PHSP" in m
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert parse_descriptor(clean, unknown_models="phsp").text == clean  # nothing to drop: no warning
    # an unknown *particle* is still an error in the lenient mode (only model-like words after the
    # daughters are taken as models), and so is an unknown mode value
    with pytest.raises(DescriptorError, match="kaon"):
        parse_descriptor("B+ -> kaon+ pi0 FOO", unknown_models="phsp")
    with pytest.raises(DescriptorError, match="unknown_models"):
        parse_descriptor(clean, unknown_models="ignore")


def test_dec_file_pick_warns_when_the_model_is_not_used():
    from mambah.errors import UnknownModelWarning
    from mambah.generation.decfile import decay_modes, pick_decay_mode

    modes = decay_modes("B+", min_fraction=0.005)
    unused = [m for m in modes if not m.model_used]
    assert unused, [m.model for m in modes]
    for seed in range(200):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            m = pick_decay_mode("B+", seed=seed, min_fraction=0.005)
        warned = [w for w in record if issubclass(w.category, UnknownModelWarning)]
        assert bool(warned) == (not m.model_used), (m, record)
        if warned:
            assert m.model in str(warned[0].message) and "phase space" in str(warned[0].message)
            break
    else:
        pytest.fail("no mode without its model was picked in 200 seeds")


def test_dec_file_modes_carry_their_models():
    from mambah.generation.decfile import decay_modes

    modes = {m.descriptor: m for m in decay_modes("D*+", min_fraction=0.1)}
    m = modes["D*+ -> D0 pi+ VSS"]
    assert m.model == "VSS" and m.model_used and parse_descriptor(m.descriptor).models() == {0: ("VSS", ())}
    b0 = [m for m in decay_modes("B0", min_fraction=0.04) if m.model == "HQET2"]
    assert b0 and all(m.model_used and m.params and "HQET2" in m.descriptor for m in b0)


# ------------------------------------------------------------------------------------------- CLI
def _mambah(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "mambah", *args], capture_output=True, text=True, timeout=timeout)


def test_cli_weighted_flag_reaches_the_pipeline_and_is_reported(tmp_path, caplog):
    from mambah.store import Store

    url = f"duckdb:///{tmp_path / 's.duckdb'}"
    common = ["simulate", LB_LQCD, "--events", "3000", "--batch-size", "3000", "--level", "truth", "--db", url]
    r = _mambah(*common, "--production", "w", "--weighted")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "WEIGHTED" in r.stdout and "'weight'" in r.stdout, r.stdout
    r = _mambah(*common, "--production", "u")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "unweighted events (weight 1), accept-reject efficiency" in r.stdout, r.stdout
    # the whole-chain efficiency (the two decays' product, ~18% for the lattice model) and each decay's
    eff = re.search(r"accept-reject efficiency ([0-9.]+)% of whole chains", r.stdout)
    assert eff and 14 < float(eff.group(1)) < 23, r.stdout
    assert "Lambda_c+ -> p+ K- pi+: " in r.stdout, r.stdout
    with Store(url) as store:
        def weights(prod):
            ids = store.read("batches", columns=["batch"], where={"production": prod})["batch"].tolist()
            return store.read("events", columns=["weight"], batches=ids)["weight"].to_numpy()

        ww, wu = weights("w"), weights("u")
        assert len(ww) == len(wu) == 3000 and ww.std() > 0 and (wu == 1.0).all()
        with caplog.at_level(logging.WARNING, logger="mambah"):
            store.export_ntuple(tmp_path / "w.parquet", production="w")
        assert any("WEIGHTED" in r.getMessage() and "'weight'" in r.getMessage() for r in caplog.records)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mambah"):
            store.export_ntuple(tmp_path / "u.parquet", production="u")
        assert not any("WEIGHTED" in r.getMessage() for r in caplog.records)
        assert (pd.read_parquet(tmp_path / "u.parquet")["weight"] == 1.0).all()
    h = _mambah("simulate", "--help", timeout=120)
    assert "--weighted" in h.stdout and "weight" in h.stdout.split("--weighted", 1)[1]
    assert "--unknown-models" in h.stdout


def test_cli_unknown_models(tmp_path):
    """Refused by default, naming the model; with ``--unknown-models phsp`` generated as phase space
    with the warning on stderr and the generated descriptor in the summary."""
    url = f"duckdb:///{tmp_path / 's.duckdb'}"
    common = ["simulate", "B+ -> (J/psi(1S) -> mu+ mu- VLL) K+ BTOSLLBALL 6", "--events", "500",
              "--batch-size", "500", "--level", "truth", "--db", url]
    r = _mambah(*common)
    assert r.returncode != 0 and "BTOSLLBALL" in r.stderr and "known decay models" in r.stderr, r.stderr[-2000:]
    r = _mambah(*common, "--unknown-models", "phsp")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "UnknownModelWarning" in r.stderr and "'BTOSLLBALL'" in r.stderr and "phase space" in r.stderr, r.stderr
    assert "VLL" in r.stdout and "BTOSLLBALL" not in r.stdout, r.stdout


# ------------------------------------------------------------------------------ staged groups
@pytest.mark.parametrize("descriptor, expected", [
    # a fixed-mass daughter whose decay no model correlates with its mother: generated on its own
    ("Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu Lb2LclnuLQCD",
     ["Lambda_b0 -> Lambda_c+ mu- anti-nu_mu Lb2LclnuLQCD", "Lambda_c+ -> p+ K- pi+"]),
    # SVS correlates the J/psi's decay with the B's: one group
    ("B+ -> (J/psi(1S) -> mu+ mu- VLL) K+ SVS", ["B+ -> (J/psi(1S) -> mu+ mu- VLL) K+ SVS"]),
    # without SVS the VLL J/psi is unpolarised: two groups (the VLL weight is then 1)
    ("B+ -> (J/psi(1S) -> mu+ mu- VLL) K+", ["B+ -> J/psi(1S) K+", "J/psi(1S) -> mu+ mu- VLL"]),
    # a Breit-Wigner K*0 gets its mass from its mother's decay: it stays in the mother's group
    ("B0 -> (K*(892)0 -> K+ pi-) mu+ mu-", ["B0 -> (K*(892)0 -> K+ pi-) mu+ mu-"]),
])
def test_decay_groups(descriptor, expected):
    from mambah.generation.decay import _groups

    groups = _groups(parse_descriptor(descriptor))
    assert [g.desc.head.to_string() for g in groups] == expected
    nodes = [i for g in groups for i in g.index[1 if g.root else 0:]]
    assert sorted(nodes) == list(range(len(parse_descriptor(descriptor).nodes())))  # every node exactly once


def test_staged_and_whole_chain_unweighting_agree(monkeypatch):
    """The staged accept-reject and the whole-chain one (the fallback for models that may read beyond
    their own decay) give the same distributions: independent samples, KS test."""
    from mambah.generation import decay

    staged = run(LB_LQCD, 20_000, seed=41)
    monkeypatch.setattr(decay, "_groups", lambda desc: None)
    whole = run(LB_LQCD, 20_000, seed=42)
    assert staged.info["generator_acceptance"]["groups"] and whole.info["generator_acceptance"]["groups"] is None
    for var in ("m2_pK", "m2_Kpi", "q2"):
        d, p = weighted_ks(observables(staged)[var], observables(whole)[var])
        assert p > P_MIN, (var, d, p)
    e_s, e_w = (b.info["generator_acceptance"] for b in (staged, whole))
    assert abs(e_s["efficiency"] - e_w["efficiency"]) < 5 * np.hypot(e_s["uncertainty"], e_w["uncertainty"])
