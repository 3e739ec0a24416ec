"""The model interface (mambah.nn.model) and the model registry (mambah.nn.registry).

Every shipped model loads through the registry as the kind its card names and implements the
interface; a model retrained in place under the same name is served anew, in this process and in
a running Dask worker; an unchanged model is not read again; the out-of-range warning carries
its fields.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings

import numpy as np
import pytest

from mambah.errors import ModelDirError, OutOfRangeWarning, OutOfSupportWarning
from mambah.modeldir import default_models_dir, load_arrays, model_hash
from mambah.nn import registry
from mambah.nn.model import Model, RangeCounts
from mambah.nn.registry import load_model, model_class

MODELS = default_models_dir()
SHIPPED = sorted(d.name for d in MODELS.iterdir() if (d / "card.json").is_file())
FLAGS = "pid-mu-flags"  # a small PID step evaluated in numpy (no TensorFlow in the Dask worker)


def _card(path):
    return json.loads((path / "card.json").read_text())


def _conditions_at(m: Model, where: str) -> np.ndarray:
    """Two rows of raw conditions: inside the training range (``"inside"``) or above it (``"above"``)."""
    if m.kind in ("pid", "pid-flags"):
        lo, hi = m.cond_pre.range_()
        row = 0.5 * (lo + hi) if where == "inside" else hi + np.abs(hi) + 1.0
        return np.vstack([row, row])
    if m.kind in ("efficiency", "resolution"):
        p = 2e4 if where == "inside" else 1e9  # MeV/c: 20 GeV/c, or far above any training momentum
        row = [0.05 * p, 0.0, p] + ([0.1, 0.1, 10.0] if m.kind == "efficiency" else []) + [211]  # origin [mm]
        return np.array([row, row], dtype=float)
    if m.kind in ("brem", "photon"):  # the calorimeter networks (issue 25): momentum and origin
        p = 2e4 if where == "inside" else 1e9
        row = [0.05 * p, 0.0, p] + ([10.0] if m.kind == "brem" else [0.1, 0.1, 10.0])
        return np.array([row, row], dtype=float)
    if m.kind == "trackstate":  # px, py, pz, origin x, y, z, pid, track type
        p = 2e4 if where == "inside" else 1e9
        return np.array([[0.05 * p, 0.0, p, 0.0, 0.0, 10.0, 211, 3]] * 2, dtype=float)
    return np.empty((2, 0))


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_model_loads_through_the_registry_as_its_kind(name):
    path = MODELS / name
    card = _card(path)
    m = load_model(name)
    assert isinstance(m, Model) and isinstance(m, model_class(card["kind"])) and m.kind == card["kind"]
    assert load_model(path) is m  # a name and its directory are one model
    assert (m.path.resolve(), m.card, m.name, m.version) == (path.resolve(), card, card["name"], str(card["version"]))
    assert m.hash == model_hash(path) and m.content_hash == registry.content_hash(path)
    assert m.conditions == [c["name"] for c in card["conditions"]]
    assert m.targets == [t["name"] for t in card["targets"]]
    names, lo, hi = m.training_range()
    assert len(names) == len(lo) == len(hi) and np.all(np.asarray(lo) <= np.asarray(hi))
    inside = _conditions_at(m, "inside")
    c = m.check_range(inside)
    # (a model with a data-support table also says how many of the rows lie outside its data's support)
    assert c == RangeCounts(m.name, 0, 2, unsupported=None if "support" not in card else c.unsupported)
    assert c.unsupported is None if "support" not in card else 0 <= c.unsupported <= 2
    assert len(m.preprocess(inside)) == 2
    if names:
        c = m.check_range(_conditions_at(m, "above"))
        assert (c.count, c.n, c.fraction) == (2, 2, 1.0) and c.detail and set(c.detail) <= set(names)
    with pytest.raises(ModelDirError, match=f"{card['kind']!r} model, not 'no-such-kind'"):
        load_model(name, kind="no-such-kind")


def test_the_out_of_range_warning_carries_its_fields():
    m = load_model(FLAGS)
    counts = m.check_range(_conditions_at(m, "above"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m.warn_out_of_range(counts)
        m.warn_out_of_range(m.check_range(_conditions_at(m, "inside")))  # nothing outside: no warning
    caught = [w for w in caught if w.category is not OutOfSupportWarning]  # (the "inside" rows' cells: not this test's)
    assert len(caught) == 1 and caught[0].category is OutOfRangeWarning
    w = caught[0].message
    assert (w.model, w.count, w.n, w.action) == (FLAGS, 2, 2, "clamped to the range edges")
    assert w.detail == counts.detail and set(w.detail) == set(m.conditions)
    assert "100% of the rows (2 of 2)" in str(w) and FLAGS in str(w)
    # the model emits the same structured warning when it evaluates such rows itself
    with pytest.warns(OutOfRangeWarning) as rec:
        m.probabilities(_conditions_at(m, "above"))
    assert (rec[0].message.model, rec[0].message.count, rec[0].message.n) == (FLAGS, 2, 2)


# ------------------------------------------------------------------------------- retrained in place
def _copy(tmp_path, name=FLAGS):
    dst = tmp_path / name
    shutil.copytree(MODELS / name, dst)
    return dst


def _retrain_in_place(path, shift: float) -> None:
    """New weights for the flags classifier at ``path``, written as a training writes a model directory
    (a new directory renamed into place; the card's file hashes follow)."""
    arrays = load_arrays(path)
    last = max(int(k[5:]) for k in arrays if k.startswith("net_b"))
    arrays[f"net_b{last}"] = arrays[f"net_b{last}"] + np.float32(shift)  # moves every logit
    card = _card(path)
    tmp = path.with_name(path.name + ".new")
    shutil.copytree(path, tmp)
    np.savez(tmp / "arrays.npz", **arrays)
    card["files"]["arrays.npz"] = hashlib.sha256((tmp / "arrays.npz").read_bytes()).hexdigest()
    (tmp / "card.json").write_text(json.dumps(card, indent=2))
    shutil.rmtree(path)
    os.replace(tmp, path)


X = np.array([[5_000.0, 2.5, 80.0, 1.0], [20_000.0, 3.5, 120.0, -1.0], [60_000.0, 4.2, 40.0, 1.0]])


def _probabilities(path) -> tuple[int, int, list]:
    """(process id, id of the served model, its probabilities on X): what a Dask worker answers."""
    m = load_model(str(path), kind="pid-flags")
    x = np.column_stack([X[:, ["P", "ETA", "nTracks", "charge"].index(c)] for c in m.conditions]) \
        if set(m.conditions) <= {"P", "ETA", "nTracks", "charge"} else None
    if x is None:  # a classifier with the RICH threshold codes among its conditions
        from mambah.pid.chain import rich_threshold_codes

        cols = {"P": X[:, 0], "ETA": X[:, 1], "nTracks": X[:, 2], "charge": X[:, 3],
                **rich_threshold_codes(X[:, 0], X[:, 1])}
        x = np.column_stack([cols[c] for c in m.conditions])
    return os.getpid(), id(m), m.probabilities(x).tolist()


def test_a_model_retrained_in_place_is_served_anew_and_an_unchanged_one_is_not_read_again(tmp_path, monkeypatch):
    path = _copy(tmp_path)
    _, first, p1 = _probabilities(path)
    m1 = load_model(path)
    # unchanged: the same object, neither loaded nor hashed again
    calls = []
    real_hash = registry.content_hash
    monkeypatch.setattr(registry, "content_hash", lambda p: calls.append(p) or real_hash(p))
    monkeypatch.setattr(type(m1), "load", classmethod(lambda cls, p: pytest.fail("an unchanged model was re-read")))
    assert load_model(path) is m1 and load_model(str(path)) is m1 and not calls
    monkeypatch.undo()
    _retrain_in_place(path, 1.5)
    _, second, p2 = _probabilities(path)
    m2 = load_model(path)
    assert m2 is not m1 and m2.content_hash != m1.content_hash and m2.hash != m1.hash
    assert not np.allclose(p1, p2)
    assert registry.cached_models()[str(path.resolve())][1] is m2  # only the newest version is kept


def test_the_pid_chain_is_rebuilt_when_a_step_is_retrained_in_place(tmp_path):
    from mambah.pid.chain import ROLES, build_chain

    for r in ROLES:
        shutil.copytree(MODELS / f"pid-mu-{r}", tmp_path / f"pid-mu-{r}")
    chain = build_chain("mu", None, tmp_path)
    assert build_chain("mu", None, tmp_path) is chain
    _retrain_in_place(tmp_path / "pid-mu-flags", -3.0)
    again = build_chain("mu", None, tmp_path)
    assert again is not chain and again.models[0] is not chain.models[0]
    assert all(a is b for a, b in zip(again.models[1:], chain.models[1:]))  # the other steps are unchanged


def test_a_selection_other_than_flag_equals_one_is_refused(tmp_path):
    from mambah.pid.chain import default_chain_steps

    for r in ("flags", "muon", "rich", "global"):
        shutil.copytree(MODELS / f"pid-K-{r}", tmp_path / f"pid-K-{r}")
    card = _card(tmp_path / "pid-K-global")
    card["training_data"]["selection"] = "hasCalo == 1 & P > 3000"
    (tmp_path / "pid-K-global" / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelDirError, match=r"pid-K-global.*card\.json.*'hasCalo == 1 & P > 3000'"):
        default_chain_steps("K", tmp_path)


def test_a_model_retrained_in_place_is_served_anew_by_a_running_dask_worker(tmp_path):
    distributed = pytest.importorskip("distributed", reason="the Dask test needs distributed (pip install 'mambah[dask]')")
    path = _copy(tmp_path)
    with distributed.LocalCluster(n_workers=1, processes=True, threads_per_worker=1, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        pid1, id1, p1 = client.submit(_probabilities, str(path), pure=False).result()
        assert client.submit(_probabilities, str(path), pure=False).result()[:2] == (pid1, id1)  # cached
        assert pid1 != os.getpid()
        _retrain_in_place(path, 1.5)
        pid2, id2, p2 = client.submit(_probabilities, str(path), pure=False).result()
    assert pid2 == pid1  # the same long-lived worker process
    assert id2 != id1 and not np.allclose(p1, p2)
    assert np.allclose(p2, _probabilities(path)[2])  # what this process serves for the new weights
