"""PID model directories: save, load, generate, range warnings, bad directories, ONNX export."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from mambah.errors import DataError, MissingColumnError, ModelDirError, OutOfRangeWarning
from mambah.nn.pidmodel import PidModel
from mambah.physics import describe_column
from mambah.training.gan import CramerGANTrainer, GANConfig, save_pid_model

CONDS, TARGS = ["P", "ETA", "nLongTracks"], ["DLLp", "DLLK"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    rng = np.random.default_rng(0)
    n = 2000
    p, eta, nt = rng.exponential(30000, n) + 3000, rng.uniform(2, 5, n), rng.poisson(90, n).astype(float)
    c = np.column_stack([p, eta, nt])
    y = np.column_stack([20 + 1e-4 * p + 10 * rng.standard_normal(n), -5 + rng.standard_normal(n) * 5])
    cfg = GANConfig(n_noise=3, gen_width=16, gen_depth=2, critic_width=16, critic_depth=2, critic_outputs=4,
                    batch_size=500, epochs=2, max_time=1e9, seed=0)
    t = CramerGANTrainer(cfg, condition_names=CONDS, target_names=TARGS).fit(c, y)
    out = tmp_path_factory.mktemp("models") / "pid-test"
    card = {"name": "pid-test", "kind": "pid", "species": "p", "conditions": [describe_column(x) for x in CONDS],
            "targets": [describe_column(x) for x in TARGS], "hyperparameters": {"n_noise": 3}}
    save_pid_model(out, t, card)
    return out, c


def test_load_and_generate(model_dir):
    path, c = model_dir
    m = PidModel.load(path)
    assert m.conditions == CONDS and m.targets == TARGS
    assert m.card["conditions"][0] == {"name": "P", "unit": "MeV/c", "quantity": "p"}
    df = pd.DataFrame(c, columns=CONDS, index=np.arange(100, 100 + len(c)))
    out = m.generate(df, seed=3)
    assert list(out.columns) == TARGS and out.index.equals(df.index)
    assert np.isfinite(out.to_numpy()).all()
    pd.testing.assert_frame_equal(out, m.generate(df, seed=3))
    assert not np.allclose(out.to_numpy(), m.generate(df, seed=4).to_numpy())
    # the array form, in the network's column order
    np.testing.assert_array_equal(m.generate(c, seed=3).to_numpy(), out.to_numpy())


def test_out_of_range_warns_with_the_fraction(model_dir):
    path, c = model_dir
    m = PidModel.load(path)
    cc = c[:200].copy()
    cc[:50, 1] = 7.0  # eta = 7: outside [2, 5]
    with pytest.warns(OutOfRangeWarning, match=r"25% of the rows \(50 of 200\) .*ETA: 50 outside"):
        m.generate(cc, seed=0)


def test_bad_conditions(model_dir):
    path, c = model_dir
    m = PidModel.load(path)
    df = pd.DataFrame(c[:10], columns=CONDS)
    with pytest.raises(MissingColumnError, match="nLongTracks"):
        m.generate(df.drop(columns="nLongTracks"))
    df.loc[3, "P"] = np.nan
    with pytest.raises(DataError, match="1 of 10 rows"):
        m.generate(df)
    assert len(m.generate(df, drop_nonfinite=True)) == 9
    with pytest.raises(DataError, match=r"shape \(n, 3\)"):
        m.generate(c[:, :2])


def test_missing_file_other_version_other_kind(model_dir, tmp_path):
    path, _ = model_dir
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    (broken / "arrays.npz").unlink()
    with pytest.raises(ModelDirError, match="missing 'arrays.npz'"):
        PidModel.load(broken)
    other = tmp_path / "other"
    shutil.copytree(path, other)
    card = json.loads((other / "card.json").read_text())
    card["format"] = 99
    (other / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelDirError, match="format 99"):
        PidModel.load(other)
    card["format"] = 1
    card["kind"] = "efficiency"
    (other / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelDirError, match="not a 'pid' model"):
        PidModel.load(other)


def test_onnx_export_matches_keras(model_dir, tmp_path):
    pytest.importorskip("onnxruntime", reason="pip install 'mambah[onnx]'")
    pytest.importorskip("tf2onnx", reason="pip install 'mambah[onnx]'")
    import onnxruntime as ort

    path, c = model_dir
    m = PidModel.load(path)
    f = m.export_onnx(tmp_path / "gen.onnx")
    sess = ort.InferenceSession(str(f))
    assert [i.name for i in sess.get_inputs()] == ["conditions", "noise"]
    rng = np.random.default_rng(1)
    cond = m.cond_pre.transform(c[:500])
    noise = rng.standard_normal((500, m.n_noise)).astype(np.float32)
    onnx_out = sess.run(None, {"conditions": cond, "noise": noise})[0]
    keras_out = m.generator([cond, noise]).numpy()
    np.testing.assert_allclose(onnx_out, keras_out, atol=1e-5, rtol=0)
