"""Training of the reference detector's ProbNN (:mod:`mambah.reference.probnn`): the ghost model,
the training sample and the (one-off) fit. Kept apart from the network's evaluation, which the
reference PID response (:mod:`mambah.reference.pid`) calls."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from mambah.random import SeedLike, get_rng
from mambah.reference.probnn import (CLASSES, FEATURES, GHOST_LOG_P_SPREAD, GHOST_MIX, PROBNN_NAMES, ReferenceProbNN,
                                     load_probnn, probnn_features)

__all__ = ["ghost_response", "training_sample", "train_reference_probnn"]


def ghost_response(p, eta, n_tracks, rng: SeedLike = None, detector=None) -> pd.DataFrame:
    """The PID response of ghost tracks of measured momentum ``p``, ``eta`` and occupancy
    ``n_tracks`` under the reference detector's ghost model (module docstring): the RICH, muon
    and calorimeter responses of three independent particles of :data:`GHOST_MIX` species whose
    momenta are ``p * exp(0.6 N(0, 1))``. Columns as :func:`~mambah.reference.pid.reference_pid`'s
    sub-detector columns (:data:`INPUT_COLUMNS`)."""
    from mambah.reference.pid import ReferencePID, calo_response, muon_response, rich_response

    det = detector or ReferencePID()
    rng = get_rng(rng)
    p, eta, n_tracks = (np.asarray(a, dtype=float) for a in (p, eta, n_tracks))
    n = len(p)
    ids = np.array(list(GHOST_MIX))
    frac = np.array(list(GHOST_MIX.values()))
    sp = ids[rng.choice(len(ids), (3, n), p=frac / frac.sum())]
    ps = p[None, :] * np.exp(GHOST_LOG_P_SPREAD * rng.standard_normal((3, n)))
    ps = np.maximum(ps, 500.0)
    rich = rich_response(ps[0], eta, sp[0], n_tracks, rng, radiators=det.radiators)
    mu = muon_response(ps[1], eta, sp[1], n_tracks, rng, muon=det.muon)
    cal = calo_response(ps[2], eta, sp[2], rng, calo=det.calo)
    out = {c: rich[c].to_numpy() for c in ("rich_dll_e", "rich_dll_mu", "rich_dll_k", "rich_dll_p", "has_rich")}
    out.update({c: mu[c].to_numpy() for c in ("is_muon", "muon_mu_ll", "muon_bkg_ll", "in_muon_acceptance")})
    out.update({c: cal[c].to_numpy() for c in ("in_calo_acceptance", "calo_e_over_p", "calo_dll_e")})
    return pd.DataFrame(out)


def training_sample(n_per_class: int, seed: SeedLike = None) -> tuple[np.ndarray, np.ndarray]:
    """Features ``(6 n, 15)`` and class index ``(6 n,)`` (order of :data:`PROBNN_NAMES`) of
    ``n_per_class`` tracks of each of e, mu, pi, K, p and ghosts (kinematics in the module docstring)."""
    from mambah.reference.pid import reference_pid

    rng = get_rng(seed)
    xs, ys = [], []
    for k, cls in enumerate(CLASSES):
        n = int(n_per_class)
        p = np.exp(rng.uniform(np.log(2e3), np.log(2e5), n))
        eta = rng.uniform(1.9, 5.0, n)
        ntr = np.maximum(np.rint(rng.gamma(4.0, 110.0 / 4.0, n)), 5)
        charge = np.where(rng.random(n) < 0.5, 1.0, -1.0)
        resp = ghost_response(p, eta, ntr, rng) if cls == 0 else \
            reference_pid(p, eta, np.full(n, cls), charge, ntr, rng, with_probnn=False)
        xs.append(probnn_features(p, eta, ntr, resp))
        ys.append(np.full(n, k))
    return np.concatenate(xs), np.concatenate(ys)


def train_reference_probnn(out: str | Path, n_per_class: int = 100_000, seed: int = 24, epochs: int = 20,
                           valid_per_class: int = 20_000, command: str = "") -> dict:
    """Train the reference ProbNN (Keras; imported here) and write ``weights.npz`` and ``card.json``
    in ``out``. Training sample seed ``seed``, held-out sample seed ``seed + 1``. Returns the card."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.threading.set_inter_op_parallelism_threads(2)
    x, y = training_sample(n_per_class, seed)
    xv, yv = training_sample(valid_per_class, seed + 1)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    norm = lambda a: ((a - mean) / scale).astype(np.float32)  # noqa: E731
    onehot = lambda c: np.eye(len(CLASSES), dtype=np.float32)[c]  # noqa: E731
    reg = keras.regularizers.L2(1e-5)
    model = keras.Sequential([keras.Input((len(FEATURES),)),
                              keras.layers.Dense(32, activation="tanh", kernel_regularizer=reg),
                              keras.layers.Dense(32, activation="tanh", kernel_regularizer=reg),
                              keras.layers.Dense(len(CLASSES), activation="sigmoid", kernel_regularizer=reg)])
    sched = keras.optimizers.schedules.CosineDecay(3e-3, decay_steps=epochs * (len(x) // 1024 + 1), alpha=0.03)
    model.compile(optimizer=keras.optimizers.Adam(sched), loss="binary_crossentropy")
    hist = model.fit(norm(x), onehot(y), batch_size=1024, epochs=epochs, shuffle=True, verbose=2,
                     validation_data=(norm(xv), onehot(yv)))
    arrays = {"mean": mean, "scale": scale}
    for i, layer in enumerate(model.layers):
        w, b = layer.get_weights()
        arrays[f"W{i}"], arrays[f"b{i}"] = w.astype(np.float64), b.astype(np.float64)
    net = ReferenceProbNN(arrays, {})
    prob = 1.0 / (1.0 + np.exp(-net.logits(xv)))
    from sklearn.metrics import roc_auc_score

    aucs = {name: float(roc_auc_score(yv == k, prob[:, k])) for k, name in enumerate(PROBNN_NAMES.values())}
    card = {
        "name": "reference-probnn", "version": "1", "kind": "reference-probnn",
        "description": "the reference detector's global PID classifier (mambah.reference.probnn): one-vs-rest "
                       "sigmoid outputs, trained once on the reference detector's full PID response",
        "features": list(FEATURES), "outputs": list(PROBNN_NAMES.values()), "classes_pdg": list(CLASSES),
        "architecture": "15 -> Dense(32, tanh) -> Dense(32, tanh) -> Dense(6, sigmoid); inputs standardised with mean/scale",
        "training": {"n_per_class": int(n_per_class), "sample_seed": int(seed), "valid_per_class": int(valid_per_class),
                     "valid_seed": int(seed + 1), "epochs": int(epochs), "batch_size": 1024,
                     "optimizer": "Adam, cosine decay 3e-3 -> 9e-5", "loss": "binary cross-entropy per output",
                     "l2": 1e-5, "keras_seed": int(seed), "command": command,
                     "final_loss": float(hist.history["loss"][-1]), "final_val_loss": float(hist.history["val_loss"][-1])},
        "metrics": {"held_out_auc_one_vs_rest": aucs},
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "weights.npz", **arrays)
    (out / "card.json").write_text(json.dumps(card, indent=1))
    load_probnn.cache_clear()
    return card
