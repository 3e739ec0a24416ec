"""Variations of a PID model with an ensemble: the members' targets with the nominal's noise.

The generators here are untrained (random weights, each member its own initialisation): what is
tested is the inference contract (shared preprocessing and noise, the nominal bit for bit, one
range warning, the model directory with its members), not the training (tests/test_ensemble.py).
"""

import json
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

from mambah.errors import ConfigurationError, ModelDirError, OutOfRangeWarning
from mambah.modeldir import save_model_dir
from mambah.nn.pidmodel import PidModel
from mambah.nn.preprocessing import QuantileGaussianizer
from mambah.physics import describe_column

CONDS, TARGS = ["P", "ETA", "nLongTracks"], ["DLLp", "DLLK"]
N_NOISE = 5


def _sample(n=5000, seed=7):
    rng = np.random.default_rng(seed)
    c = np.column_stack([rng.exponential(30000.0, n) + 3000.0, rng.uniform(2.0, 5.0, n),
                         rng.poisson(80, n).astype(float)])
    y = np.column_stack([rng.normal(20.0, 15.0, n), rng.normal(-5.0, 6.0, n)])
    return c, y


def _generator(seed):
    import keras

    from mambah.nn.layers import build_generator

    keras.utils.set_random_seed(seed)
    return build_generator(len(CONDS), N_NOISE, len(TARGS), width=16, depth=2)


def _card(members=0):
    card = {"name": "pid-variations-test", "kind": "pid", "species": "p",
            "conditions": [describe_column(x) for x in CONDS], "targets": [describe_column(x) for x in TARGS],
            "hyperparameters": {"n_noise": N_NOISE}}
    if members:
        card["ensemble"] = {"members": members, "files": [f"members/member-{k:02d}.keras" for k in range(1, members + 1)],
                            "bootstrap": "poisson(1) x sWeight", "seeds": [1000 * k for k in range(1, members + 1)],
                            "warm_start": False}
    return card


@pytest.fixture(scope="module")
def parts():
    c, y = _sample()
    c = np.vstack([c, [[1000.0, 1.5, 0.0], [1e6, 5.5, 300.0]]])  # a training range that holds every probe row
    return QuantileGaussianizer(n_knots=201).fit(c), QuantileGaussianizer(n_knots=201).fit(y), \
        [_generator(s) for s in (1, 2, 3)]


@pytest.fixture(scope="module")
def model_dir(parts, tmp_path_factory):
    cond_pre, targ_pre, (g0, g1, g2) = parts
    out = tmp_path_factory.mktemp("models") / "pid-var"
    arrays = {**cond_pre.to_arrays("cond"), **targ_pre.to_arrays("targ")}
    save_model_dir(out, _card(2), networks={"generator": g0, "members/member-01": g1, "members/member-02": g2},
                   arrays=arrays)
    return out


@pytest.fixture(scope="module")
def plain_dir(parts, tmp_path_factory):
    cond_pre, targ_pre, (g0, _, _) = parts
    out = tmp_path_factory.mktemp("models") / "pid-plain"
    save_model_dir(out, _card(0), networks={"generator": g0},
                   arrays={**cond_pre.to_arrays("cond"), **targ_pre.to_arrays("targ")})
    return out


def test_layout_and_card_of_a_model_with_members(model_dir):
    card = json.loads((model_dir / "card.json").read_text())
    assert set(card["files"]) == {"generator.keras", "arrays.npz", "members/member-01.keras", "members/member-02.keras"}
    assert sorted(p.name for p in (model_dir / "members").iterdir()) == ["member-01.keras", "member-02.keras"]
    m = PidModel.load(model_dir)
    assert m.n_members == 2 and m.member_files == card["ensemble"]["files"]
    assert "mambah.nn.pidmodel.members" not in m._memo  # the members are loaded on first use only
    assert len(m.members) == 2


def test_nominal_columns_are_generate_bit_for_bit(model_dir):
    m = PidModel.load(model_dir)
    c, _ = _sample(3000, seed=11)
    df = pd.DataFrame(c, columns=CONDS, index=np.arange(50, 50 + len(c)))
    v = m.generate_variations(df, seed=4)
    assert list(v.columns) == TARGS + [f"{t}_var{k}" for k in (1, 2) for t in TARGS]
    assert v.index.equals(df.index)
    g = m.generate(df, seed=4)
    for t in TARGS:
        np.testing.assert_array_equal(v[t].to_numpy(), g[t].to_numpy())
    # several chunks in flight (two workers): still the nominal's own numbers
    a = m.generate_variations_array(c, seed=9, chunk=700)
    assert a.shape == (3, len(c), len(TARGS))
    np.testing.assert_array_equal(a[0], m.generate_array(c, seed=9, chunk=700))
    # the chunking does not change the result beyond the network's float32 round-off
    np.testing.assert_allclose(m.generate_variations_array(c, seed=9), a, rtol=0, atol=1e-4)
    assert m.generate_variations_array(c[:0], seed=1).shape == (3, 0, len(TARGS))


def test_members_differ_from_the_nominal_and_from_each_other(model_dir):
    m = PidModel.load(model_dir)
    c, _ = _sample(2000, seed=12)
    v = m.generate_variations(c, seed=1)
    for t in TARGS:
        for k in (1, 2):
            assert np.abs(v[f"{t}_var{k}"] - v[t]).mean() > 0.01 * v[t].std()
        assert not np.allclose(v[f"{t}_var1"], v[f"{t}_var2"])


def test_every_member_uses_the_nominal_noise(parts):
    """A member with the nominal's weights reproduces it exactly; any member equals a model whose
    nominal it is, drawn with the same seed."""
    import keras

    cond_pre, targ_pre, (g0, g1, _) = parts
    twin = keras.models.clone_model(g0)
    twin.set_weights(g0.get_weights())
    m = PidModel(g0, cond_pre, targ_pre, _card(0), members=[twin, g1])
    assert m.n_members == 2
    c, _ = _sample(2500, seed=13)
    a = m.generate_variations_array(c, seed=21, chunk=1000)
    np.testing.assert_array_equal(a[1], a[0])
    alone = PidModel(g1, cond_pre, targ_pre, _card(0)).generate_array(c, seed=21, chunk=1000)
    np.testing.assert_array_equal(a[2], alone)
    assert not np.allclose(a[2], a[0])


def test_out_of_range_warns_once(model_dir):
    m = PidModel.load(model_dir)
    c, _ = _sample(400, seed=14)
    c[:40, 1] = 7.0  # eta outside [2, 5]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m.generate_variations(c, seed=0)
    out = [w for w in caught if issubclass(w.category, OutOfRangeWarning)]
    assert len(out) == 1 and out[0].message.count == 40 and out[0].message.n == 400
    sink = []
    m.generate_variations_array(c, seed=0, counts=sink)
    assert len(sink) == 1 and sink[0].count == 40


def test_a_model_without_members_has_no_variations(plain_dir):
    m = PidModel.load(plain_dir)
    assert m.n_members == 0 and m.members == [] and "ensemble" not in m.card
    c, _ = _sample(10)
    with pytest.raises(ConfigurationError, match=r"no ensemble members.*--ensemble K"):
        m.generate_variations(c, seed=0)
    with pytest.raises(ConfigurationError, match="no ensemble members"):
        m.generate_variations_array(c, seed=0)
    assert m.generate(c, seed=0).shape == (10, 2)


def test_a_missing_or_corrupt_member_is_named(model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    with open(broken / "members" / "member-02.keras", "r+b") as f:
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(ModelDirError, match=r"'members/member-02.keras' does not match the hash"):
        PidModel.load(broken)
    (broken / "members" / "member-02.keras").unlink()
    with pytest.raises(ModelDirError, match=r"missing 'members/member-02.keras'"):
        PidModel.load(broken)


def test_an_inconsistent_ensemble_section_is_refused(model_dir, tmp_path):
    for change, message in ((lambda e: e.update(members=3), "must give 'members'"),
                            (lambda e: e["files"].__setitem__(1, "members/member-09.keras"),
                             "member 'members/member-09.keras' is not a .keras file listed")):
        bad = tmp_path / f"bad{len(list(tmp_path.iterdir()))}"
        shutil.copytree(model_dir, bad)
        card = json.loads((bad / "card.json").read_text())
        change(card["ensemble"])
        (bad / "card.json").write_text(json.dumps(card))
        with pytest.raises(ModelDirError, match=message):
            PidModel.load(bad)


def test_file_names_must_stay_inside_the_directory(parts, tmp_path):
    _, _, (g0, _, _) = parts
    with pytest.raises(ModelDirError, match="must be a relative path inside"):
        save_model_dir(tmp_path / "m", _card(0), networks={"../generator": g0})
    assert not (tmp_path / "m").exists() and not (tmp_path / "generator.keras").exists()


def test_registry_loads_the_ensemble(model_dir):
    from mambah.nn.registry import clear_cache, load_model

    clear_cache()
    try:
        m = load_model(model_dir, kind="pid")
        assert m.n_members == 2 and load_model(model_dir) is m
    finally:
        clear_cache()


def _mambah(*args):
    return subprocess.run([sys.executable, "-m", "mambah", "-q", *map(str, args)], capture_output=True, text=True)


def test_cli_generate_variations(model_dir, plain_dir, tmp_path):
    c, _ = _sample(300, seed=15)
    df = pd.DataFrame(c, columns=CONDS).assign(runNumber=np.arange(300))
    df.to_parquet(tmp_path / "in.parquet")
    r = _mambah("generate", "--model", model_dir, "--data", tmp_path / "in.parquet", "--out", tmp_path / "v.parquet",
                "--seed", 3, "--variations")
    assert r.returncode == 0, r.stderr
    assert "2 variations of each" in r.stdout
    out = pd.read_parquet(tmp_path / "v.parquet")
    assert list(out.columns) == CONDS + ["runNumber"] + TARGS + [f"{t}_var{k}" for k in (1, 2) for t in TARGS]
    np.testing.assert_array_equal(out["runNumber"], df["runNumber"])
    expected = PidModel.load(model_dir).generate_variations(df, seed=3)
    pd.testing.assert_frame_equal(out[expected.columns], expected)
    # without members: a clear error, nothing written
    r = _mambah("generate", "--model", plain_dir, "--data", tmp_path / "in.parquet", "--out", tmp_path / "p.parquet",
                "--variations")
    assert r.returncode == 2
    assert "has no ensemble members" in r.stderr and "--ensemble K" in r.stderr
    assert not (tmp_path / "p.parquet").exists()
