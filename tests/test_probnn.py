"""ProbNN (issue 24): the reference detector's global PID classifier and the chain's ``probnn`` step.

The chain step here is a tiny untrained generator (quantile maps fitted on a real calibration
table): what is tested is the mechanics (the step runs last, on the combined DLLs it is conditioned
on, the earlier outputs are unchanged bit for bit, outputs in [0, 1], the PID stage's columns, the
store and the ntuple branches, build-time errors). The closure of the shipped steps is measured by
``examples/train_pid_chain.py --closure`` (cards' ``metrics.probnn_closure``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mambah.errors import ConfigurationError
from mambah.modeldir import default_models_dir
from mambah.pid.chain import (CHAIN_OUTPUTS, PROBNN_CONDITIONS, PROBNN_DELTAS, PROBNN_OUTPUTS, PROBNN_TARGETS, ChainStep,
                              build_chain, default_chain_steps, prepare_training_table)
from mambah.reference.calibration import calib_sample
from mambah.reference.pid import reference_pid
from mambah.reference.probnn import FEATURES, PROBNN_NAMES, WEIGHTS_DIR, load_probnn
from mambah.reference.probnn_training import ghost_response

pytestmark = pytest.mark.filterwarnings("ignore::mambah.nn.pidmodel.OutOfRangeWarning")

MODELS = default_models_dir()
CORE = ("flags", "muon", "rich", "global")


# ------------------------------------------------------------------------------ the reference
def _tracks(species, n=4000, seed=1, p=None):
    rng = np.random.default_rng(seed)
    p = np.exp(rng.uniform(np.log(3e3), np.log(1e5), n)) if p is None else np.full(n, p)
    return dict(p=p, eta=rng.uniform(2.0, 4.8, n), species=np.full(n, species), charge=rng.choice([-1.0, 1.0], n),
                n_tracks=rng.gamma(4.0, 25.0, n) + 5)


def test_reference_probnn_is_a_fixed_network_of_the_response():
    """The six outputs are in [0, 1]; the other columns are those without ProbNN (no random numbers
    drawn); recomputing the network from the response columns gives the same values."""
    t = _tracks(321)
    a = reference_pid(**t, rng=5)
    b = reference_pid(**t, rng=5, with_probnn=False)
    assert list(a.columns[:len(b.columns)]) == list(b.columns) and list(a.columns[len(b.columns):]) == list(PROBNN_NAMES)
    pd.testing.assert_frame_equal(a[b.columns], b)
    v = a[list(PROBNN_NAMES)].to_numpy()
    assert v.dtype == np.float32 and np.isfinite(v).all() and (v >= 0).all() and (v <= 1).all()
    again = load_probnn()(t["p"], t["eta"], t["n_tracks"], b)
    np.testing.assert_array_equal(again.to_numpy(), v)


def test_reference_probnn_separates_the_species():
    """At 20 GeV/c in both RICHes the true species' output has the highest median, above 0.5; a
    kaon's ProbNNk and a pion's ProbNNpi fall below the RICH thresholds (information lost)."""
    for sp, col in ((11, "probnn_e"), (13, "probnn_mu"), (211, "probnn_pi"), (321, "probnn_k"), (2212, "probnn_p")):
        df = reference_pid(**_tracks(sp, 3000, 2, p=20e3), rng=3)
        med = df[list(PROBNN_NAMES)].median()
        assert med.idxmax() == col and med[col] > 0.5, (sp, med.to_dict())
    hi = reference_pid(**_tracks(321, 3000, 2, p=30e3), rng=3)["probnn_k"].mean()
    lo = reference_pid(**_tracks(321, 3000, 2, p=4e3), rng=3)["probnn_k"].mean()
    assert hi > lo + 0.2


def test_ghost_model_and_probnnghost():
    """Ghosts (three segments of different particles) score a higher ProbNNghost than true pions."""
    t = _tracks(211, 3000, 4)
    g = ghost_response(t["p"], t["eta"], t["n_tracks"], 6)
    nn = load_probnn()
    pg = nn(t["p"], t["eta"], t["n_tracks"], g)["probnn_ghost"].to_numpy()
    pt = reference_pid(**t, rng=6)["probnn_ghost"].to_numpy()
    assert np.median(pg) > np.median(pt) + 0.2


def test_shipped_weights_are_plain_arrays_with_provenance():
    card = json.loads((WEIGHTS_DIR / "card.json").read_text())
    assert card["features"] == list(FEATURES) and card["outputs"] == list(PROBNN_NAMES.values())
    tr = card["training"]
    assert tr["command"].startswith("python examples/train_reference_probnn.py") and tr["sample_seed"] != tr["valid_seed"]
    with np.load(WEIGHTS_DIR / "weights.npz", allow_pickle=False) as f:
        assert all(f[k].dtype.kind == "f" for k in f.files)
    assert sum(p.stat().st_size for p in WEIGHTS_DIR.iterdir()) < 100_000
    assert min(card["metrics"]["held_out_auc_one_vs_rest"].values()) > 0.8


def test_calibration_samples_carry_probnn():
    df = calib_sample("p", 2000, seed=2)
    for c in PROBNN_TARGETS:
        v = df[c].to_numpy()
        assert np.isfinite(v).all() and (v >= 0).all() and (v <= 1).all()
    sig = df["is_signal"].to_numpy()
    assert df["ProbNNp"][sig].mean() > df["ProbNNp"][~sig].mean() + 0.2


# ------------------------------------------------------------------------------ the chain step
def _tiny_probnn(path: Path, species: str, conditions=None, seed: int = 3) -> Path:
    """An untrained probnn step (quantile maps fitted on a calibration table of ``species``)."""
    import keras

    from mambah.modeldir import save_model_dir
    from mambah.nn.layers import build_generator
    from mambah.nn.preprocessing import QuantileGaussianizer
    from mambah.physics import describe_column

    conditions = list(conditions or ["P", "ETA", "nTracks", "charge", *PROBNN_CONDITIONS])
    df = prepare_training_table(calib_sample(species, 3000, seed=seed, pure=True))
    c = df[[x for x in conditions if x in df]].to_numpy(dtype=float)
    if c.shape[1] < len(conditions):  # a made-up condition (for the error test)
        c = np.column_stack([c, np.random.default_rng(seed).normal(size=(len(c), len(conditions) - c.shape[1]))])
    y = df[list(PROBNN_DELTAS)].to_numpy(dtype=float)
    keras.utils.set_random_seed(seed)
    card = {"name": path.name, "kind": "pid", "species": species,
            "conditions": [describe_column(x) for x in conditions],
            "targets": [describe_column(x) for x in PROBNN_DELTAS], "hyperparameters": {"n_noise": 4},
            "training_data": {}}
    arrays = {**QuantileGaussianizer(n_knots=101).fit(c).to_arrays("cond"),
              **QuantileGaussianizer(n_knots=101).fit(y).to_arrays("targ")}
    return save_model_dir(path, card, networks={"generator": build_generator(len(conditions), 4, len(PROBNN_TARGETS),
                                                                              width=8, depth=2)}, arrays=arrays)


@pytest.fixture(scope="module")
def models_without_probnn(tmp_path_factory) -> Path:
    """The shipped models (linked) without their probnn steps."""
    d = tmp_path_factory.mktemp("noprobnn")
    for m in MODELS.iterdir():
        if not m.name.endswith("-probnn"):
            (d / m.name).symlink_to(m)
    return d


@pytest.fixture(scope="module")
def models_with_probnn(tmp_path_factory, models_without_probnn) -> Path:
    """The shipped models (linked) without their probnn steps, and a tiny pid-K-probnn."""
    d = tmp_path_factory.mktemp("probnn")
    for m in models_without_probnn.iterdir():
        (d / m.name).symlink_to(m)
    _tiny_probnn(d / "pid-K-probnn", "K")
    return d


def _inputs(n=3000, seed=3):
    rng = np.random.default_rng(seed)
    return {"P": rng.exponential(25000.0, n) + 3000.0, "ETA": rng.uniform(2.0, 5.0, n),
            "nTracks": rng.poisson(80, n).astype(float), "charge": rng.choice([-1.0, 1.0], n)}


def test_chain_runs_probnn_last_and_leaves_the_rest_unchanged(models_with_probnn, models_without_probnn):
    steps = default_chain_steps("K", models_with_probnn)
    assert [s.role for s in steps] == [*CORE, "probnn"] and steps[-1].applies is None
    assert [s.role for s in default_chain_steps("pi", models_with_probnn)] == list(CORE)
    chain = build_chain("K", None, models_with_probnn)
    plain = build_chain("K", None, models_without_probnn)
    x = _inputs()
    a = chain.generate_columns(x, np.random.default_rng(4))
    b = plain.generate_columns(x, np.random.default_rng(4))
    assert set(a) == set(CHAIN_OUTPUTS) | set(PROBNN_OUTPUTS) and set(b) == set(CHAIN_OUTPUTS)
    for c in CHAIN_OUTPUTS:  # the probnn step draws after every other step
        np.testing.assert_array_equal(a[c], b[c], err_msg=c)
    v = np.column_stack([a[c] for c in PROBNN_TARGETS])
    assert v.dtype == np.float32 and np.isfinite(v).all() and (v >= 0).all() and (v <= 1).all()
    assert np.std(v, axis=0).min() > 0  # drawn, not constant
    # conditioned on the combined DLLs: other DLLs give other ProbNN for the same noise
    m = chain.models[-1]
    assert {"PIDK", "PIDp", "isMuon"} <= set(m.conditions)


def test_probnn_condition_nobody_produces_is_refused(models_with_probnn, tmp_path):
    bad = _tiny_probnn(tmp_path / "bad", "K", ["P", "ETA", "nTracks", "charge", "ProbNNwhatever"])
    steps = [ChainStep(r, str(MODELS / f"pid-K-{r}")) for r in ("flags",)] + \
        [ChainStep("muon", str(MODELS / "pid-K-muon"), "isMuon"), ChainStep("rich", str(MODELS / "pid-K-rich"), "hasRich"),
         ChainStep("global", str(MODELS / "pid-K-global"), "hasCalo"), ChainStep("probnn", str(bad))]
    assert [s.role for s in default_chain_steps("K")] == [*CORE, "probnn"]  # the shipped chains have the step
    with pytest.raises(ConfigurationError, match="ProbNNwhatever"):
        build_chain("K", steps)
    # a step before the DLLs exist cannot take the combined DLLs
    early = [ChainStep("flags", str(MODELS / "pid-K-flags")), ChainStep("probnn", str(models_with_probnn / "pid-K-probnn"))]
    with pytest.raises(ConfigurationError, match="PIDK"):
        build_chain("K", early)


def _track_batch(n=3000):
    from mambah.batch import Batch

    rng = np.random.default_rng(5)
    pdg = np.array([211, 321])[np.arange(n) % 2] * rng.choice([-1, 1], n)
    p, eta, phi = np.exp(rng.uniform(np.log(3e3), np.log(1e5), n)), rng.uniform(2.2, 4.6, n), rng.uniform(-3, 3, n)
    pt, ev, idx = p / np.cosh(eta), np.arange(n) // 50, np.arange(n, dtype=np.int32)
    parts = pd.DataFrame({"batch": 1, "index": idx, "event": ev.astype(np.int32), "mc_particle": idx,
                          "pid": pdg.astype(np.int32), "charge": np.sign(pdg).astype(np.int8),
                          "px": pt * np.cos(phi), "py": pt * np.sin(phi), "pz": pt * np.sinh(eta), "vertex": np.int32(-1)})
    mc = pd.DataFrame({"batch": 1, "index": idx, "event": ev.astype(np.int32), "pid": pdg.astype(np.int32)})
    events = pd.DataFrame({"batch": 1, "event": np.arange(ev[-1] + 1, dtype=np.int32),
                           "n_tracks": rng.integers(20, 300, ev[-1] + 1).astype(np.int32)})
    return Batch(id=1, seed=3, n_events=int(ev[-1] + 1), tables={"particles": parts, "mc_particles": mc, "events": events})


def test_pid_stage_writes_probnn_for_chains_with_the_step(models_with_probnn, models_without_probnn):
    """K tracks (chain with a probnn step) get ProbNN in [0, 1], pions (none) NaN; the PID columns are
    those of the stage without the step."""
    from mambah.pid.stage import PID

    a = PID(models_dir=str(models_with_probnn), species=("pi", "K"), probnn=True)(_track_batch())["particles"]
    b = PID(models_dir=str(models_without_probnn), species=("pi", "K"))(_track_batch())["particles"]
    # without probnn=True (the default) the step is not run: the PID columns are the same, ProbNN NaN
    c = PID(models_dir=str(models_with_probnn), species=("pi", "K"))(_track_batch())["particles"]
    pd.testing.assert_frame_equal(c, b)
    assert c["probnn_k"].isna().all()
    with pytest.raises(ConfigurationError, match="no chain of .* has a ProbNN step"):
        PID(models_dir=str(models_without_probnn), species=("pi", "K"), probnn=True)
    k = np.abs(a["pid"].to_numpy()) == 321
    for c in PROBNN_OUTPUTS.values():
        v = a[c].to_numpy()
        assert v.dtype == np.float32 and ((v[k] >= 0) & (v[k] <= 1)).all() and np.isnan(v[~k]).all(), c
        assert c not in b or np.isnan(b[c].to_numpy()).all()
    for c in CHAIN_OUTPUTS.values():
        np.testing.assert_array_equal(a[c].to_numpy(), b[c].to_numpy(), err_msg=c)


@pytest.mark.slow
def test_pid_stage_writes_probnn_columns_store_and_ntuple(models_with_probnn, tmp_path):
    """A production with a K ProbNN step: K tracks get finite ProbNN, the pion's stay NaN; the store
    keeps them; the ntuple has X_ProbNNk etc. (NaN for the pion)."""
    from mambah.production import run_production
    from mambah.simulation import standard_pipeline
    from mambah.store import Store, candidate_ntuple

    pipe = standard_pipeline("B0 -> K+ pi-", models_dir=models_with_probnn, probnn=True)
    with Store("duckdb:///:memory:") as st:
        run_production(pipe, n_events=400, batch_size=400, seed=11, store=st, production="probnn")
        par = st.read("particles")
        nt = candidate_ntuple(st)
    track = par["vertex"].to_numpy() < 0
    k = track & (np.abs(par["pid"].to_numpy()) == 321) & np.isfinite(par["pid_k"].to_numpy())
    pi = track & (np.abs(par["pid"].to_numpy()) == 211)
    assert k.sum() > 100 and pi.sum() > 100
    for c in PROBNN_OUTPUTS.values():
        v = par[c].to_numpy()
        assert np.isfinite(v[k]).all() and ((v[k] >= 0) & (v[k] <= 1)).all(), c
        assert np.isnan(v[pi]).all() and np.isnan(v[~track]).all(), c
    for name in PROBNN_TARGETS:
        assert f"K_{name}" in nt and f"pi_{name}" in nt, sorted(nt.columns)[:20]
    rec = nt["K_Reconstructed"].to_numpy() > 0
    assert np.isfinite(nt["K_ProbNNk"].to_numpy()[rec]).all() and np.isnan(nt["pi_ProbNNk"].to_numpy()).all()


def test_residual_targets_invert_exactly():
    """dProbNNx = logit(ProbNNx) - logit(SurProbNNx) on a calibration table, and back: the float32 values
    exactly; outside the calorimeter acceptance the surrogate is the reference ProbNN itself (d ~ 0, float32)."""
    from mambah.pid.chain import probnn_from_deltas

    df = prepare_training_table(calib_sample("e", 4000, seed=8, pure=True))
    back = probnn_from_deltas({c: df[c].to_numpy() for c in df.columns})
    for t in PROBNN_TARGETS:
        np.testing.assert_array_equal(back[t].astype(np.float32), df[t].to_numpy(), err_msg=t)
        out = df["hasCalo"].to_numpy() < 0.5
        # (the chain's surrogate is evaluated in float32: equal to the reference's float64 to ~1e-6)
        assert out.sum() > 50 and np.abs(df[f"d{t}"].to_numpy()[out]).max() < 1e-3
    # the electrons' ProbNNe depends on the E/p the chain does not draw: the deltas are not all 0 inside
    assert np.mean(df["dProbNNe"].to_numpy()[df["hasCalo"].to_numpy() > 0.5] != 0) > 0.5
