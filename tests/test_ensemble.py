"""Ensembles of PID GANs: bootstrap members trained from scratch or warm-started, one directory, one card.

Tiny networks and a few epochs: what is tested is the bookkeeping (seeds, budgets, weights, shared
preprocessing, the directory and its card) and the CLI, not the quality of the fits.
"""

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from mambah.errors import ConfigurationError, DataError
from mambah.physics import describe_column
from mambah.training.ensemble import (BOOTSTRAP, bootstrap_counts, member_config, member_file, member_seed,
                                      train_ensemble)
from mambah.training.gan import CramerGANTrainer, GANConfig, GANInit

# the held-out rows may lie a little outside the training rows' range: not what is tested here
pytestmark = pytest.mark.filterwarnings("ignore::mambah.errors.OutOfRangeWarning")

CONDS, TARGS = ["P", "ETA", "nLongTracks"], ["DLLp"]
TINY = ["--epochs", "4", "--batch-size", "256", "--gen-width", "16", "--gen-depth", "2", "--critic-width", "16",
        "--critic-depth", "2", "--critic-outputs", "4", "--noise", "3", "--validate-every", "1000"]


def mambah(*args):
    return subprocess.run([sys.executable, "-m", "mambah", "-q", *map(str, args)], capture_output=True, text=True)


def _table(n=2000, seed=1):
    """A calibration-like table with sWeights (some negative)."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "P": rng.exponential(30000, n) + 3000, "ETA": rng.uniform(2, 5, n),
        "nLongTracks": rng.poisson(90, n).astype(float), "DLLp": rng.normal(20, 15, n),
        "sWeight": np.where(rng.random(n) < 0.3, -0.3, 1.0),
    })


def _tiny_config(**kw):
    return GANConfig(**{**dict(n_noise=3, gen_width=16, gen_depth=2, critic_width=16, critic_depth=2, critic_outputs=4,
                               batch_size=250, epochs=2, max_time=1e9, seed=0), **kw})


# ----------------------------------------------------------------------------- the pieces
def test_bootstrap_counts_are_poisson_one_and_seeded():
    a = bootstrap_counts(200_000, 1003)
    assert a.dtype == np.float64 and (a >= 0).all() and np.all(a == np.round(a))
    # Poisson(1): mean 1 and variance 1, within 5 standard errors (se ~ 0.0022 and ~0.0045)
    assert abs(a.mean() - 1) < 0.011 and abs(a.var() - 1) < 0.023
    assert abs(np.mean(a == 0) - math.exp(-1)) < 0.006
    np.testing.assert_array_equal(a, bootstrap_counts(200_000, 1003))
    assert not np.array_equal(a, bootstrap_counts(200_000, 2003))


def test_member_seeds_configs_and_files():
    cfg = GANConfig(seed=7, epochs=10, max_time=600.0)
    assert [member_seed(7, k) for k in (1, 2, 3)] == [1007, 2007, 3007]
    scratch = member_config(cfg, 2)
    assert scratch.seed == 2007 and scratch.epochs == 10 and scratch.max_time == 600.0 and cfg.seed == 7
    warm = member_config(cfg, 1, warm_start=True, warm_fraction=0.25)
    assert warm.seed == 1007 and warm.epochs == 3 and warm.max_time == 150.0
    with pytest.raises(ConfigurationError, match="warm_fraction"):
        member_config(cfg, 1, warm_start=True, warm_fraction=0.0)
    assert member_file(3, 9) == "members/member-03.keras" and member_file(7, 120) == "members/member-007.keras"


def test_row_weights_are_checked():
    df = _table(600)
    t = CramerGANTrainer(_tiny_config(epochs=1))
    with pytest.raises(DataError, match="row_weights must be 600 finite values >= 0"):
        t.fit(df[CONDS], df[TARGS], df["sWeight"], row_weights=-np.ones(600))
    with pytest.raises(DataError, match="row_weights must be 600"):
        t.fit(df[CONDS], df[TARGS], df["sWeight"], row_weights=np.ones(5))
    with pytest.raises(ConfigurationError, match="members >= 1"):
        train_ensemble(df[CONDS], df[TARGS], members=0, config=_tiny_config())


# ----------------------------------------------------------------------------- Python API
@pytest.fixture(scope="module")
def nominal():
    df = _table()
    c, y, w = df[CONDS].to_numpy(), df[TARGS].to_numpy(), df["sWeight"].to_numpy()
    t = CramerGANTrainer(_tiny_config(), condition_names=CONDS, target_names=TARGS).fit(c[:1600], y[:1600], w[:1600])
    return t, (c, y, w)


def test_a_warm_start_begins_at_the_given_weights(nominal):
    """With a vanishing learning rate, a fit from GANInit(weights) ends where it began, and keeps the
    given preprocessing (the very objects)."""
    t0, (c, y, w) = nominal
    init = GANInit.from_trainer(t0, weights=True)
    cfg = _tiny_config(epochs=1, g_lr=1e-12, c_lr=1e-12, lr_final=1e-12, seed=5)
    t = CramerGANTrainer(cfg).fit(c[:1600], y[:1600], w[:1600], row_weights=bootstrap_counts(1600, 5), init=init)
    assert t.cond_pre_ is t0.cond_pre_ and t.targ_pre_ is t0.targ_pre_
    for a, b in zip(t.generator_.get_weights(), t0.generator_.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # without weights: the preprocessing only, a fresh initialisation
    t2 = CramerGANTrainer(cfg).fit(c[:1600], y[:1600], w[:1600], init=GANInit.from_trainer(t0))
    assert t2.cond_pre_ is t0.cond_pre_
    assert max(np.abs(a - b).max() for a, b in zip(t2.generator_.get_weights(), t0.generator_.get_weights())) > 0.01


def test_train_ensemble_warm_started(nominal, tmp_path):
    from mambah.nn.pidmodel import PidModel

    t0, (c, y, w) = nominal
    ens = train_ensemble(c[:1600], y[:1600], w[:1600], members=2, nominal=t0, warm_start=True, warm_fraction=0.5)
    assert ens.nominal is t0 and ens.seeds == [1000, 2000] and ens.warm_start and ens.warm_fraction == 0.5
    steps_per_epoch = 1600 // 250
    assert [m.steps_ for m in ens.members] == [1 * steps_per_epoch] * 2  # ceil(2 epochs x 0.5)
    assert t0.steps_ == 2 * steps_per_epoch
    assert all(m.cond_pre_ is t0.cond_pre_ and m.targ_pre_ is t0.targ_pre_ for m in ens.members)
    assert all(m.weight_mean_ != t0.weight_mean_ for m in ens.members)  # the bootstrap replica's weights
    card = {"name": "ens", "kind": "pid", "species": "p", "conditions": [describe_column(x) for x in CONDS],
            "targets": [describe_column(x) for x in TARGS]}
    out = ens.save(tmp_path / "ens", card)
    saved = json.loads((out / "card.json").read_text())
    e = saved["ensemble"]
    assert e["members"] == 2 and e["warm_start"] is True and e["warm_fraction"] == 0.5 and e["bootstrap"] == BOOTSTRAP
    assert e["steps_per_member"] == [steps_per_epoch] * 2 and e["selection_bdt_ks"] == [None, None]
    assert set(e["files"]) < set(saved["files"]) and saved["hyperparameters"]["n_noise"] == 3
    m = PidModel.load(out)
    assert m.n_members == 2
    for k, member in enumerate(ens.members, start=1):  # saved as trained
        np.testing.assert_array_equal(m.members[k - 1].get_weights()[0], member.generator_.get_weights()[0])
    v = m.generate_variations(c[1600:], seed=2)
    np.testing.assert_array_equal(v["DLLp"], m.generate(c[1600:], seed=2)["DLLp"])
    assert not np.allclose(v["DLLp_var1"], v["DLLp"]) and not np.allclose(v["DLLp_var1"], v["DLLp_var2"])


# ----------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def cli_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("calib")
    _table().to_csv(d / "calib.csv", index=False)
    r = mambah("train", "pid", "--data", d / "calib.csv", "--species", "p", "--targets", "DLLp", "--weight", "sWeight",
               "--out", d / "model", "--seed", "3", *TINY, "--ensemble", "2")
    assert r.returncode == 0, r.stderr
    return d, r


def test_cli_trains_the_nominal_and_its_members_into_one_directory(cli_model):
    d, r = cli_model
    path = d / "model"
    card = json.loads((path / "card.json").read_text())
    e = card["ensemble"]
    assert e["members"] == 2 and e["files"] == ["members/member-01.keras", "members/member-02.keras"]
    assert e["seeds"] == [1003, 2003] and e["warm_start"] is False and e["warm_fraction"] is None
    assert set(e["files"]) | {"generator.keras", "arrays.npz", "support.npz"} == set(card["files"])
    assert sorted(p.name for p in path.iterdir()) == ["arrays.npz", "card.json", "generator.keras", "members",
                                                      "support.npz"]
    # from scratch: the nominal's budget, so as many steps as the nominal
    assert e["steps_per_member"] == [card["training"]["steps"]] * 2 == [4 * (1600 // 256)] * 2
    assert all(s > 0 for s in e["seconds_per_member"]) and len(e["valid_bdt_ks"]) == 2
    assert all(0 <= x <= 1 for x in e["valid_bdt_ks"] + e["selection_bdt_ks"])
    assert "--ensemble 2" in card["command"]
    assert "2 ensemble members (from scratch), seeds [1003, 2003]" in r.stdout
    assert not (d / ".model.checkpoint").exists()


def test_cli_ensemble_loads_and_generates_variations(cli_model, tmp_path):
    from mambah.nn.pidmodel import PidModel

    d, _ = cli_model
    m = PidModel.load(d / "model")
    assert m.n_members == 2
    df = pd.read_csv(d / "calib.csv")
    v = m.generate_variations(df, seed=8)
    np.testing.assert_array_equal(v["DLLp"], m.generate(df, seed=8)["DLLp"])
    spread = v[["DLLp_var1", "DLLp_var2"]].to_numpy() - v[["DLLp"]].to_numpy()
    assert (np.abs(spread).mean(axis=0) > 0.01).all()


@pytest.mark.slow
def test_cli_the_nominal_is_the_model_trained_without_ensemble(cli_model, tmp_path):
    """--ensemble changes nothing in the nominal: the same training as without it (to the float32
    round-off that separates any two CPU trainings in different processes, ~1e-7 on the weights)."""
    from mambah.nn.pidmodel import PidModel

    d, _ = cli_model
    r = mambah("train", "pid", "--data", d / "calib.csv", "--species", "p", "--targets", "DLLp", "--weight", "sWeight",
               "--out", tmp_path / "plain", "--seed", "3", *TINY)
    assert r.returncode == 0, r.stderr
    plain, ens = PidModel.load(tmp_path / "plain"), PidModel.load(d / "model")
    assert plain.n_members == 0
    c = pd.read_csv(d / "calib.csv")[CONDS].to_numpy()
    y_plain, y_ens = plain.generate_array(c, seed=8), ens.generate_array(c, seed=8)
    np.testing.assert_allclose(y_plain, y_ens, rtol=0, atol=1e-3)
    assert np.abs(ens.generate_variations_array(c, seed=8)[1:] - y_ens).max() > 0.1  # the members are not


@pytest.mark.parametrize("args, message", [
    (["--warm-start"], "--warm-start and --warm-fraction need --ensemble K"),
    (["--ensemble", "2", "--warm-fraction", "0.5"], "--warm-fraction applies to warm-started members"),
    (["--ensemble", "2", "--warm-start", "--warm-fraction", "1.5"], "--warm-fraction must be in (0, 1]"),
    (["--ensemble", "-1"], "--ensemble must be >= 0"),
])
def test_cli_ensemble_options_are_checked(tmp_path, args, message):
    _table(50).to_csv(tmp_path / "c.csv", index=False)
    r = mambah("train", "pid", "--data", tmp_path / "c.csv", "--species", "p", "--targets", "DLLp",
               "--out", tmp_path / "m", *args)
    assert r.returncode == 2 and message in r.stderr.replace("\n", " "), r.stderr
    assert not (tmp_path / "m").exists()


# ----------------------------------------------------------------------------- members of an existing nominal
@pytest.fixture(scope="module")
def plain_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("plain")
    _table().to_csv(d / "calib.csv", index=False)
    _table(seed=9).to_csv(d / "other.csv", index=False)
    r = mambah("train", "pid", "--data", d / "calib.csv", "--species", "p", "--targets", "DLLp", "--weight", "sWeight",
               "--out", d / "model", "--seed", "3", *TINY)
    assert r.returncode == 0, r.stderr
    return d


def test_cli_members_of_an_existing_nominal(plain_model):
    """--nominal-from: the nominal (network, preprocessing, card) is the directory's, unchanged; the
    members are warm-started from its generator, seeded from its seed, fitted on the given file."""
    from mambah.nn.pidmodel import PidModel

    d = plain_model
    r = mambah("train", "pid", "--data", d / "other.csv", "--species", "p", "--conditions", "P,ETA,nLongTracks",
               "--targets", "DLLp", "--weight", "sWeight", "--out", d / "with-members", "--nominal-from", d / "model",
               "--ensemble", "2", "--warm-start", "--epochs", "2", "--validate-every", "1000")
    assert r.returncode == 0, r.stderr
    before, card = (json.loads((p / "card.json").read_text()) for p in (d / "model", d / "with-members"))
    for key in ("training_data", "metrics", "training", "hyperparameters", "command", "name"):
        assert card[key] == before[key], key
    assert card["files"]["arrays.npz"] == before["files"]["arrays.npz"]
    e = card["ensemble"]
    assert e["members"] == 2 and e["seeds"] == [1003, 2003] and e["warm_start"] is True
    assert e["training_data"]["file"] == "other.csv" and e["training_data"]["sha256"] != before["training_data"]["sha256"]
    assert e["steps_per_member"] == [2 * (1600 // 256)] * 2 and e["member_budget"]["epochs"] == 2
    assert "nominal of" in r.stdout and "--nominal-from" in e["command"]
    m0, m = PidModel.load(d / "model"), PidModel.load(d / "with-members")
    c = _table()[CONDS].to_numpy()
    np.testing.assert_array_equal(m.generate_array(c, seed=4), m0.generate_array(c, seed=4))
    var = m.generate_variations_array(c, seed=4)
    assert np.abs(var[1:] - var[0]).max() > 1e-3  # the members moved away from the nominal


@pytest.mark.parametrize("args, message", [
    (["--warm-start"], "trains ensemble members only: give --ensemble K"),
    (["--ensemble", "1", "--gen-width", "32"], "do not give --gen-width"),
    (["--ensemble", "1", "--seed", "5"], "--seed 5 differs from the nominal's 3"),
    (["--ensemble", "1", "--targets", "DLLp,P"], "must be those of"),
])
def test_cli_nominal_from_options_are_checked(plain_model, tmp_path, args, message):
    d = plain_model
    base = ["train", "pid", "--data", d / "other.csv", "--species", "p", "--targets", "DLLp", "--weight", "sWeight",
            "--out", tmp_path / "m", "--nominal-from", d / "model"]
    if "--targets" in args:
        i = base.index("--targets")
        del base[i:i + 2]
    r = mambah(*base, *args)
    assert r.returncode == 2 and message in r.stderr.replace("\n", " "), r.stderr
    assert not (tmp_path / "m").exists()
