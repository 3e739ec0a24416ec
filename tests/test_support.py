"""The data-support check (mambah.nn.support): cells of (log10 P, ETA) where a model's data had
(almost) no signal, counted and reported for the rows a model evaluates there."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mambah.errors import DataError, ModelDirError, OutOfSupportWarning
from mambah.nn.support import ETA_STEP, MIN_WEIGHT, P_STEP, Support, source_entry, support_of, write_support

MODELS = Path(__file__).resolve().parent.parent / "models"


def _brute_unsupported(p, eta, data_p, data_eta, data_w, min_weight):
    """The definition, cell by cell with explicit edges: the summed weight of the data rows in the same
    (floor(log10 P / P_STEP), floor(ETA / ETA_STEP)) cell is below min_weight."""
    cell = {}
    for a, b, w in zip(data_p, data_eta, data_w):
        key = (int(np.floor(np.log10(a) / P_STEP)), int(np.floor(b / ETA_STEP)))
        cell[key] = cell.get(key, 0.0) + w
    out = []
    for a, b in zip(p, eta):
        if not (a > 0 and np.isfinite(a) and np.isfinite(b)):
            out.append(True)
            continue
        key = (int(np.floor(np.log10(a) / P_STEP)), int(np.floor(b / ETA_STEP)))
        out.append(cell.get(key, 0.0) < min_weight)
    return np.array(out)


def _band(n=20000, seed=1):
    """Rows on a diagonal band of (log P, ETA), like a calibration sample with a transverse-momentum
    requirement (low p only at low eta), with sWeights of both signs."""
    rng = np.random.default_rng(seed)
    eta = rng.uniform(2.0, 5.0, n)
    p = 10 ** (3.3 + 0.5 * (eta - 2.0) + rng.normal(0, 0.15, n))  # MeV/c
    w = np.where(rng.random(n) < 0.3, -0.4, 1.0)
    return p, eta, w


def test_unsupported_rows_are_the_cells_below_min_weight():
    p, eta, w = _band()
    s = Support.from_data(p, eta, w)
    rng = np.random.default_rng(2)
    qp = 10 ** rng.uniform(3.0, 6.0, 5000)
    qe = rng.uniform(1.5, 5.5, 5000)
    qp[:3], qe[:3] = [0.0, -5.0, np.inf], [3.0, 3.0, 3.0]  # never supported
    got = s.unsupported(qp, qe)
    want = _brute_unsupported(qp, qe, p, eta, w, MIN_WEIGHT)
    np.testing.assert_array_equal(got, want)
    assert 0.2 < got.mean() < 0.95 and s.count(qp, qe) == int(want.sum())
    # the band's own rows are (almost all) supported; high p at low eta is not (inside the box range)
    assert s.unsupported(p, eta).mean() < 0.02
    assert s.unsupported([60000.0], [2.1])[0] and not s.unsupported([3000.0], [2.1])[0]
    # a larger min_weight supports fewer cells
    assert s.with_min_weight(200).count(qp, qe) > s.count(qp, qe)
    assert s.describe()["cells_supported"] == int((s.weight >= MIN_WEIGHT).sum())
    # only the rows within given bounds (a model's training range)
    within = (qp > 2000) & (qp < 1e5) & (qe > 2) & (qe < 5)
    assert s.count(qp, qe, (2000, 1e5, 2, 5)) == int((want & within).sum()) < int(want.sum())


def test_merged_equals_the_support_of_the_pooled_data():
    p, eta, w = _band(seed=3)
    q, f, v = _band(n=5000, seed=4)
    q = q * 20  # another sample, shifted to higher momenta: the union covers both
    a, b = Support.from_data(p, eta, w), Support.from_data(q, f, v)
    both = Support.from_data(np.r_[p, q], np.r_[eta, f], np.r_[w, v])
    m = a.merged(b)
    assert m.origin == both.origin
    np.testing.assert_allclose(m.weight, both.weight)
    np.testing.assert_array_equal(m.rows, both.rows)
    assert a.count(q, f) > 0.5 * len(q) and m.count(q, f) < a.count(q, f)


def test_bad_data_and_bad_files_are_refused(tmp_path):
    with pytest.raises(DataError, match="row 1"):
        Support.from_data([1000.0, np.nan], [3.0, 3.0])
    with pytest.raises(DataError, match="P <= 0"):
        Support.from_data([1000.0, 0.0], [3.0, 3.0])
    with pytest.raises(DataError, match="no rows"):
        Support.from_data([], [])
    s = Support.from_data(*_band(n=2000)[:2])
    s.save(tmp_path)
    back = Support.load(tmp_path)
    assert back.origin == s.origin and np.array_equal(back.weight, s.weight) and back.min_weight == s.min_weight
    (tmp_path / "support.npz").write_bytes(b"not a zip")
    with pytest.raises(ModelDirError, match="not a valid support table"):
        Support.load(tmp_path)
    np.savez(tmp_path / "support.npz", origin=np.array([1, 2]), weight=np.ones((2, 2)), rows=np.ones((2, 2)),
             min_weight=10.0, steps=np.array([0.2, 0.25]))
    with pytest.raises(ModelDirError, match="lattice steps"):
        Support.load(tmp_path)
    with pytest.raises(ModelDirError, match="missing"):
        Support.load(tmp_path / "nowhere")


def _with_support(src: Path, dst: Path, p, eta, w=None) -> Path:
    shutil.copytree(src, dst)
    s = Support.from_data(p, eta, w)
    write_support(dst, s, [source_entry("training data", [], len(p), np.ones(len(p)) if w is None else w, None, None)])
    return dst


@pytest.fixture(scope="module")
def low_eta_models(tmp_path_factory):
    """The shipped kaon RICH GAN and flags classifier with a support of rows at eta < 3.5 only."""
    d = tmp_path_factory.mktemp("support")
    rng = np.random.default_rng(5)
    p, eta = 10 ** rng.uniform(3.4, 5.1, 40000), rng.uniform(2.0, 3.5, 40000)
    return {name: _with_support(MODELS / name, d / name, p, eta) for name in ("pid-K-rich", "pid-K-flags")}, (p, eta)


def _conditions(model, n=3000, seed=6):
    """Conditions of kaons from the shipped model's own training range, half of them at eta > 3.5."""
    from mambah.reference.calibration import calib_sample

    from mambah.pid.chain import prepare_training_table

    t = prepare_training_table(calib_sample("K", n, seed=seed, pure=True))
    return t[model.conditions].to_numpy(dtype=float)


def _expected(model, c, p, eta):
    """Rows of the conditions ``c`` inside the model's training range of P and ETA (the others are out of
    range) whose cell has less than MIN_WEIGHT of the support data (p, eta), by the definition."""
    lo, hi = model.cond_pre.range_()
    ip, ie = model.conditions.index("P"), model.conditions.index("ETA")
    inside = (c[:, ip] >= lo[ip]) & (c[:, ip] <= hi[ip]) & (c[:, ie] >= lo[ie]) & (c[:, ie] <= hi[ie])
    assert 0 < inside.sum() < len(c) or inside.all()
    miss = _brute_unsupported(c[:, ip], c[:, ie], p, eta, np.ones(len(p)), MIN_WEIGHT)
    return int((miss & inside).sum())


def test_models_report_rows_outside_their_support_and_generate_them_unchanged(low_eta_models):
    from mambah.nn.flags import FlagModel
    from mambah.nn.pidmodel import PidModel

    dirs, (p, eta) = low_eta_models
    gan, plain = PidModel.load(dirs["pid-K-rich"]), PidModel.load(MODELS / "pid-K-rich")
    c = _conditions(gan)
    want = _expected(gan, c, p, eta)
    assert 0 < want < len(c)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = gan.generate_array(c, seed=3)
    w = [x.message for x in caught if issubclass(x.category, OutOfSupportWarning)]
    assert len(w) == 1 and w[0].count == want and w[0].n == len(c) and w[0].model == gan.name
    assert "extrapolation" in str(w[0]) and "pid-K-rich" in str(w[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_array_equal(y, plain.generate_array(c, seed=3))  # the support changes no output
    counts: list = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gan.generate_array(c, seed=3, counts=counts)
    assert not [x for x in caught if issubclass(x.category, OutOfSupportWarning)]
    assert counts[0].unsupported == want and counts[0].n == len(c)
    assert gan.check_range(c).unsupported == want
    plain.set_support(None)  # a model without a table counts nothing
    assert plain.support is None and plain.check_range(c).unsupported is None
    # a flags classifier, compiled and numpy paths
    flags = FlagModel.load(dirs["pid-K-flags"])
    cf = _conditions(flags)
    wf = _expected(flags, cf, p, eta)
    for compiled in (True, False):
        counts = []
        flags.sample(cf, np.random.default_rng(1), compiled=compiled, counts=counts)
        assert counts[0].unsupported == wf
    with pytest.warns(OutOfSupportWarning, match=f"{wf} of {len(cf)} rows"):
        flags.sample(cf, np.random.default_rng(1))


def test_a_card_with_a_support_section_needs_its_table(tmp_path):
    from mambah.modeldir import save_model_dir
    from mambah.nn.pidmodel import PidModel

    d = _with_support(MODELS / "pid-K-global", tmp_path / "m", [3000.0, 40000.0], [2.5, 3.5])
    card = json.loads((d / "card.json").read_text())
    assert "support.npz" in card["files"] and card["support"]["sources"][0]["rows"] == 2
    for key in ("files", "format", "created", "mambah_version"):
        card.pop(key)
    with pytest.raises(ModelDirError, match="'support' section but no support table"):
        save_model_dir(tmp_path / "copy", card)
    (d / "support.npz").write_bytes(b"x")
    with pytest.raises(ModelDirError):  # the hash no longer matches the card
        PidModel.load(d)


def _mambah(*args):
    return subprocess.run([sys.executable, "-m", "mambah", *map(str, args)], capture_output=True, text=True)


def test_cli_models_support_checks_the_training_sample_and_adds_data(tmp_path):
    """``mambah models support``: the data given as the training data must have the card's selected rows
    and summed weight; --other-data and --add are recorded; the table is the data's."""
    d = tmp_path / "pid-K-global"
    shutil.copytree(MODELS / "pid-K-global", d)
    card = json.loads((d / "card.json").read_text())
    card.pop("support", None)
    p, eta, w = _band(n=3000, seed=7)
    df = pd.DataFrame({"P": p, "ETA": eta, "sWeight": w, "hasCalo": np.r_[np.zeros(100), np.ones(2900)]})
    f = tmp_path / "train.parquet"
    df.to_parquet(f)
    sel = df[df.hasCalo == 1]
    card["training_data"].update(selection="hasCalo == 1", weight="sWeight", n_selected=len(sel) + 1,
                                 sum_weights=float(sel.sWeight.sum()))
    from mambah.modeldir import load_arrays, load_network, save_model_dir

    for key in ("files", "format", "created", "mambah_version"):
        card.pop(key)
    save_model_dir(d, card, networks={"generator": load_network(MODELS / "pid-K-global", "generator")},
                   arrays=load_arrays(MODELS / "pid-K-global"), overwrite=True)
    r = _mambah("models", "support", d, "--data", f)
    assert r.returncode != 0 and "not the model's training data" in r.stderr and f"{len(sel)} rows" in r.stderr
    assert support_of(d) is None  # nothing written
    r = _mambah("models", "support", d, "--data", f, "--other-data")
    assert r.returncode == 0, r.stderr
    s = support_of(d)
    ref = Support.from_data(sel.P, sel.ETA, sel.sWeight)
    assert s.origin == ref.origin and np.allclose(s.weight, ref.weight)
    src = json.loads((d / "card.json").read_text())["support"]["sources"]
    assert len(src) == 1 and src[0]["what"].startswith("other data") and src[0]["rows"] == len(sel)
    assert src[0]["selection"] == "hasCalo == 1" and "--other-data" in src[0]["command"]
    # further data the model was fitted on: merged, a second source
    df2 = df.assign(P=df.P * 30)
    f2 = tmp_path / "more.parquet"
    df2.to_parquet(f2)
    r = _mambah("models", "support", d, "--data", f2, "--add", "--what", "calibration data of its quantile map")
    assert r.returncode == 0, r.stderr
    s2 = support_of(d)
    sel2 = df2[df2.hasCalo == 1]
    both = ref.merged(Support.from_data(sel2.P, sel2.ETA, sel2.sWeight))
    assert s2.origin == both.origin and np.allclose(s2.weight, both.weight)
    src = json.loads((d / "card.json").read_text())["support"]["sources"]
    assert [x["what"] for x in src][1] == "calibration data of its quantile map"
    r = _mambah("models", "support", tmp_path / "nowhere", "--data", f)
    assert r.returncode != 0
