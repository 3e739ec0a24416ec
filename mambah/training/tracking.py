"""Training of the reconstruction networks: the tracking-efficiency classifier and the resolution MDN.

:func:`fit_efficiency` trains the efficiency classifier (binary cross-entropy on reconstructed/not
labels, whose minimiser is the true conditional probability) and :func:`fit_resolution` the
momentum-resolution mixture-density network (maximum likelihood, :func:`mdn_loss`; Bishop,
"Mixture Density Networks", NCRG/94/004, 1994). Both return the Keras network, the preprocessing
arrays and the card's metrics, hyperparameters and history; ``mambah train efficiency`` and
``mambah train resolution`` write them as model directories, which load as
:class:`~mambah.nn.tracking.EfficiencyModel` and :class:`~mambah.nn.tracking.ResolutionModel`
(features, preprocessing and the networks' evaluation: :mod:`mambah.nn.tracking`).
:func:`efficiency_closure` and :func:`resolution_closure` are the validation scores.

Example:
    >>> model, arrays, info = fit_efficiency(tracking_sample(40_000, seed=8), epochs=6)  # doctest: +SKIP
    >>> info["metrics"]["val_bce"] < info["metrics"]["val_bce_before"]                    # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mambah.errors import DataError
from mambah.nn.dense import DenseStack, build_mlp
from mambah.nn.tracking import (
    EFFICIENCY_FEATURES,
    RESOLUTION_FEATURES,
    RangeScaler,
    ResolutionModel,
    efficiency_features,
    resolution_features,
    resolution_targets,
    split_mdn,
)
from mambah.physics import SPECIES, TRACKABLE_PIDS, p_eta, species_index

__all__ = ["TRACK_TYPE_CLASSES", "fit_efficiency", "fit_resolution", "mdn_loss", "efficiency_closure", "resolution_closure", "card_json"]

log = logging.getLogger(__name__)


def _check_pids(pid: np.ndarray, species: Sequence[str], where: str) -> None:
    sp = species_index(pid)
    allowed = [SPECIES.index(s) for s in species]
    bad = ~np.isin(sp, allowed)
    if bad.any():
        ids = sorted({int(v) for v in pid[bad][:1000]})[:10]
        raise DataError(f"{where}: column 'pid' has {int(bad.sum())} rows with PDG ids {ids} outside the "
                        f"species {', '.join(species)} (|pid| in {TRACKABLE_PIDS})")


def _split(n: int, val_fraction: float, seed: int):
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_val = max(1, int(round(n * val_fraction)))
    return perm[n_val:], perm[:n_val]


def _fit_keras(model, loss, x, y, xv, yv, epochs, batch_size, learning_rate, progress: bool):
    import keras

    steps = max(1, int(np.ceil(len(x) / batch_size))) * int(epochs)
    sched = keras.optimizers.schedules.CosineDecay(float(learning_rate), steps, alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(sched), loss=loss)
    # the learning rate decays over all epochs; keep the weights of the best validation epoch
    cb = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=int(epochs), restore_best_weights=True)]
    hist = model.fit(x, y, validation_data=(xv, yv), epochs=int(epochs), batch_size=int(batch_size),
                     verbose=2 if progress else 0, callbacks=cb, shuffle=True)
    return {k: [float(v) for v in vals] for k, vals in hist.history.items()}


def _plain_copy(model):
    """An uncompiled copy of ``model`` (so the saved file holds no training-only objects)."""
    import keras

    clone = keras.Sequential.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    return clone


def _bce_numpy(prob: np.ndarray, label: np.ndarray) -> float:
    p = np.clip(prob, 1e-7, 1 - 1e-7)
    return float(-np.mean(label * np.log(p) + (1 - label) * np.log1p(-p)))


def efficiency_closure(prob: np.ndarray, ref: np.ndarray, p: np.ndarray, eta: np.ndarray, *,
                       p_edges=None, eta_edges=None, min_count: int = 2000) -> dict[str, Any]:
    """Mean model probability minus mean reference (truth probability or 0/1 label) per (p, eta) bin.

    The per-bin means and their difference are those of
    :func:`mambah.validation.efficiency.efficiency_in_bins` (unit weights; the reference as the
    reference sample, the model's probabilities as the generated one, same rows).

    Args:
        prob: the model's probability per track.
        ref: the reference per track: the true probability or the 0/1 outcome.
        p, eta: momentum [MeV/c] and pseudorapidity per track (the binning).
        p_edges, eta_edges: bin edges (defaults: 0.5-400 GeV/c in 9 bins, η 1.6-5.4 in 8 bins).
        min_count: bins with fewer tracks get ``diff`` NaN and are left out of ``max_abs_diff``.

    Returns:
        ``{"p_edges", "eta_edges", "counts" (tracks per bin, p rows × η columns), "diff",
        "max_abs_diff" (over bins with at least ``min_count`` tracks), "n_bins" (those bins)}``.
    """
    import pandas as pd

    from mambah.validation.efficiency import efficiency_in_bins

    p_edges = np.asarray(p_edges if p_edges is not None else [5e2, 1e3, 2e3, 3e3, 5e3, 1e4, 2e4, 5e4, 1e5, 4e5])
    eta_edges = np.asarray(eta_edges if eta_edges is not None else [1.6, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.4])
    kin = {"p": np.asarray(p, dtype=float), "eta": np.asarray(eta, dtype=float)}
    tab = efficiency_in_bins(pd.DataFrame({**kin, "value": np.asarray(ref, dtype=float)}),
                             pd.DataFrame({**kin, "value": np.asarray(prob, dtype=float)}),
                             lambda d: d["value"].to_numpy(), bins={"p": p_edges, "eta": eta_edges})
    shape = (len(p_edges) - 1, len(eta_edges) - 1)
    cnt = tab["n_ref"].to_numpy().reshape(shape)
    diff = tab["diff"].to_numpy().reshape(shape)
    enough = cnt >= min_count
    return {
        "p_edges": p_edges.tolist(),
        "eta_edges": eta_edges.tolist(),
        "counts": cnt.tolist(),
        "diff": np.where(enough, diff, np.nan).tolist(),
        "max_abs_diff": float(np.nanmax(np.abs(np.where(enough, diff, np.nan)))) if enough.any() else float("nan"),
        "n_bins": int(enough.sum()),
    }


#: the 4-class efficiency's classes: (name, TRACK_Type code), the network's outputs in this order
TRACK_TYPE_CLASSES = [("none", 0), ("long", 3), ("upstream", 4), ("downstream", 5)]
#: closure binning of the 4-class model: the 0.5 GeV/c - 6.8 TeV/c of the acceptance
TYPE_P_EDGES = [5e2, 1e3, 2e3, 3e3, 5e3, 1e4, 2e4, 5e4, 1e5, 4e5, 6.8e6]


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _domain_scaler(feats: np.ndarray, tr: np.ndarray, domain: Mapping[str, tuple[float, float]], name: str):
    """A scaler fitted on the training rows whose range (``lo``, ``hi``) is the declared ``domain``
    (the acceptance box); every row must lie inside it."""
    scaler = RangeScaler.fit(feats[tr], 4, EFFICIENCY_FEATURES, name)
    lo = np.array([domain[n][0] for n in EFFICIENCY_FEATURES[:4]], dtype=np.float32)
    hi = np.array([domain[n][1] for n in EFFICIENCY_FEATURES[:4]], dtype=np.float32)
    c = feats[:, :4]
    out = (c < lo - 1e-4) | (c > hi + 1e-4)
    if out.any():
        per = {n: int(v) for n, v in zip(EFFICIENCY_FEATURES[:4], out.sum(axis=0)) if v}
        raise DataError(f"the efficiency training data: {int(out.any(axis=1).sum())} rows lie outside the declared "
                        f"domain (the geometric acceptance) in {per}; make the sample inside it (mambah detector "
                        "tracking-sample --domain acceptance) or select it")
    return RangeScaler(scaler.mean, scaler.scale, lo, hi, EFFICIENCY_FEATURES[:4], name)


def fit_efficiency(
    df,
    *,
    name: str = "efficiency",
    classes: str = "reconstructed",
    domain: Mapping[str, tuple[float, float]] | None = None,
    species: Sequence[str] = SPECIES,
    hidden: Sequence[int] = (64, 64),
    epochs: int = 20,
    batch_size: int = 4096,
    learning_rate: float = 3e-3,
    val_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = False,
) -> tuple[Any, dict[str, np.ndarray], dict[str, Any]]:
    """Train an efficiency classifier on a table of particles.

    Args:
        df: columns ``px, py, pz`` (MeV/c), ``x, y, z`` (origin, mm), ``pid`` and
            ``reconstructed`` (0/1); optionally ``eff_true`` (the reference detector's
            probability), used only for the validation metrics. With ``classes="track-type"``:
            ``track_type`` (LHCb codes 0 none, 3 long, 4 upstream, 5 downstream) instead of
            ``reconstructed``, optionally ``eff_long``, ``eff_upstream``, ``eff_downstream`` (truth,
            validation only).
        classes: ``"reconstructed"`` (binary: a long track or not; one logit) or
            ``"track-type"`` (the 4-class efficiency: none / long / upstream / downstream; four
            logits, softmax, trained with categorical cross-entropy, whose minimiser is the true
            conditional class probability).
        domain: ``{feature: (lo, hi)}`` of the continuous features (e.g.
            :meth:`mambah.reconstruction.acceptance.TrackAcceptance.feature_bounds`): the model's
            recorded training range is this domain (the data must lie inside it) instead of the
            data's minimum and maximum.

    Returns:
        (keras model, arrays for the model directory, card fields: metrics, hyperparameters,
        history).
    """
    import keras

    from mambah.io import check_finite, require_columns

    if classes not in ("reconstructed", "track-type"):
        raise DataError(f"classes must be 'reconstructed' or 'track-type', not {classes!r}")
    if classes == "track-type":
        return _fit_track_types(df, name=name, species=species, hidden=hidden, epochs=epochs, batch_size=batch_size,
                                learning_rate=learning_rate, val_fraction=val_fraction, seed=seed, progress=progress,
                                domain=domain)
    cols = ["px", "py", "pz", "x", "y", "z", "pid", "reconstructed"]
    require_columns(df, cols, where="the efficiency training data")
    check_finite(df, cols, where="the efficiency training data")
    pid = df["pid"].to_numpy(np.int64)
    _check_pids(pid, species, "the efficiency training data")
    label = df["reconstructed"].to_numpy(np.float32)
    if not np.isin(label, (0.0, 1.0)).all():
        raise DataError("the efficiency training data: column 'reconstructed' must hold 0/1 (or booleans)")
    if label.min() == label.max():
        raise DataError("the efficiency training data: column 'reconstructed' has a single class; need both")
    feats = efficiency_features(*(df[c].to_numpy() for c in ("px", "py", "pz", "x", "y", "z")), pid)
    tr, va = _split(len(df), val_fraction, seed)
    scaler = (RangeScaler.fit(feats[tr], 4, EFFICIENCY_FEATURES, name) if domain is None
              else _domain_scaler(feats, tr, domain, name))
    x = scaler.transform(feats)
    model = build_mlp(x.shape[1], 1, hidden, seed=seed)
    loss = keras.losses.BinaryCrossentropy(from_logits=True)
    net0 = DenseStack.from_keras(model)
    bce_before = _bce_numpy(1 / (1 + np.exp(-net0(x[va])[:, 0])), label[va])
    history = _fit_keras(model, loss, x[tr], label[tr], x[va], label[va], epochs, batch_size, learning_rate, progress)
    model = _plain_copy(model)
    net = DenseStack.from_keras(model)
    prob_va = 1 / (1 + np.exp(-net(x[va])[:, 0].astype(np.float64)))
    p, eta = p_eta(df["px"].to_numpy()[va], df["py"].to_numpy()[va], df["pz"].to_numpy()[va])
    metrics: dict[str, Any] = {
        "val_bce_before": bce_before,
        "val_bce": _bce_numpy(prob_va, label[va]),
        "n_val": int(len(va)),
        "closure_vs_labels": _strip(efficiency_closure(prob_va, label[va], p, eta)),
    }
    if "eff_true" in df.columns:
        truth = df["eff_true"].to_numpy(np.float64)[va]
        metrics["val_bce_truth"] = _bce_numpy(truth, label[va])
        metrics["closure_vs_truth"] = _strip(efficiency_closure(prob_va, truth, p, eta))
    arrays = scaler.arrays()
    hyper = {"hidden": list(map(int, hidden)), "activation": "relu", "epochs": int(epochs),
             "epochs_run": len(history.get("loss", [])), "batch_size": int(batch_size),
             "learning_rate": float(learning_rate), "schedule": "cosine decay to 5%", "optimizer": "Adam",
             "loss": "binary cross-entropy (from logits)", "val_fraction": float(val_fraction), "seed": int(seed),
             "features": EFFICIENCY_FEATURES, "n_train": int(len(tr))}
    return model, arrays, {"metrics": metrics, "hyperparameters": hyper, "history": history}


def _fit_track_types(df, *, name, species, hidden, epochs, batch_size, learning_rate, val_fraction, seed, progress,
                     domain):
    """The 4-class efficiency (see :func:`fit_efficiency`)."""
    import keras

    from mambah.io import check_finite, require_columns

    cols = ["px", "py", "pz", "x", "y", "z", "pid", "track_type"]
    require_columns(df, cols, where="the efficiency training data")
    check_finite(df, cols, where="the efficiency training data")
    pid = df["pid"].to_numpy(np.int64)
    _check_pids(pid, species, "the efficiency training data")
    codes = df["track_type"].to_numpy(np.int64)
    known = [c for _, c in TRACK_TYPE_CLASSES]
    if not np.isin(codes, known).all():
        bad = sorted(set(np.unique(codes[~np.isin(codes, known)]).tolist()))[:10]
        raise DataError(f"the efficiency training data: column 'track_type' must hold the codes {known} "
                        f"(none, long, upstream, downstream), found {bad}")
    label = np.searchsorted(known, codes).astype(np.int32)
    counts = np.bincount(label, minlength=4)
    if (counts == 0).any():
        empty = [TRACK_TYPE_CLASSES[k][0] for k in range(4) if counts[k] == 0]
        raise DataError(f"the efficiency training data has no track of class(es) {', '.join(empty)}; need all four")
    feats = efficiency_features(*(df[c].to_numpy() for c in ("px", "py", "pz", "x", "y", "z")), pid)
    tr, va = _split(len(df), val_fraction, seed)
    scaler = (RangeScaler.fit(feats[tr], 4, EFFICIENCY_FEATURES, name) if domain is None
              else _domain_scaler(feats, tr, domain, name))
    x = scaler.transform(feats)
    model = build_mlp(x.shape[1], 4, hidden, seed=seed)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def cce(prob, lab):
        return float(-np.mean(np.log(np.clip(prob[np.arange(len(lab)), lab], 1e-7, 1.0))))

    cce_before = cce(_softmax(DenseStack.from_keras(model)(x[va])), label[va])
    history = _fit_keras(model, loss, x[tr], label[tr], x[va], label[va], epochs, batch_size, learning_rate, progress)
    model = _plain_copy(model)
    prob_va = _softmax(DenseStack.from_keras(model)(x[va]))
    p, eta = p_eta(df["px"].to_numpy()[va], df["py"].to_numpy()[va], df["pz"].to_numpy()[va])
    onehot = np.eye(4)[label[va]]
    metrics: dict[str, Any] = {
        "val_cce_before": cce_before,
        "val_cce": cce(prob_va, label[va]),
        "n_val": int(len(va)),
        "class_fractions": {c: float(v) for (c, _), v in zip(TRACK_TYPE_CLASSES, counts / counts.sum())},
        "closure_vs_labels": {c: _strip(efficiency_closure(prob_va[:, k], onehot[:, k], p, eta, p_edges=TYPE_P_EDGES))
                              for k, (c, _) in enumerate(TRACK_TYPE_CLASSES)},
    }
    truth_cols = ["eff_long", "eff_upstream", "eff_downstream"]
    if all(c in df.columns for c in truth_cols):
        t = df[truth_cols].to_numpy(np.float64)[va]
        truth = np.concatenate([1.0 - t.sum(axis=1, keepdims=True), t], axis=1)
        metrics["val_cce_truth"] = float(-np.mean(np.log(np.clip(truth[np.arange(len(va)), label[va]], 1e-7, 1.0))))
        clos = {c: _strip(efficiency_closure(prob_va[:, k], truth[:, k], p, eta, p_edges=TYPE_P_EDGES))
                for k, (c, _) in enumerate(TRACK_TYPE_CLASSES)}
        metrics["closure_vs_truth"] = clos
        metrics["closure_vs_truth_max_abs_diff"] = max(v["max_abs_diff"] for v in clos.values())
    arrays = scaler.arrays()
    hyper = {"hidden": list(map(int, hidden)), "activation": "relu", "epochs": int(epochs),
             "epochs_run": len(history.get("loss", [])), "batch_size": int(batch_size),
             "learning_rate": float(learning_rate), "schedule": "cosine decay to 5%", "optimizer": "Adam",
             "loss": "categorical cross-entropy (from logits, 4 classes)", "val_fraction": float(val_fraction),
             "seed": int(seed), "features": EFFICIENCY_FEATURES, "n_train": int(len(tr)),
             "classes": [c for c, _ in TRACK_TYPE_CLASSES], "class_codes": known,
             "range": "declared domain" if domain is not None else "training data min/max"}
    extra = {"classes": [c for c, _ in TRACK_TYPE_CLASSES], "class_codes": known}
    if domain is not None:
        extra["domain"] = {k: [float(a), float(b)] for k, (a, b) in domain.items()}
    return model, arrays, {"metrics": metrics, "hyperparameters": hyper, "history": history, "card": extra}


def _strip(c: dict) -> dict:
    """The compact part of a closure result for a card."""
    return {"max_abs_diff": c["max_abs_diff"], "n_bins": c["n_bins"], "min_count": 2000,
            "p_edges": c["p_edges"], "eta_edges": c["eta_edges"],
            "diff": [[None if not np.isfinite(v) else round(v, 5) for v in row] for row in c["diff"]]}


def mdn_loss(k: Sequence[int]):
    """Negative log-likelihood of independent 1D Gaussian mixtures (one per target column)."""
    import keras
    from keras import ops

    k = [int(v) for v in k]
    half_log_2pi = 0.5 * float(np.log(2 * np.pi))

    def loss(y_true, y_pred):
        total = 0.0
        i = 0
        for j, kk in enumerate(k):
            logits = y_pred[:, i : i + kk]
            mu = y_pred[:, i + kk : i + 2 * kk]
            logs = ops.clip(y_pred[:, i + 2 * kk : i + 3 * kk], -15.0, 10.0)
            y = y_true[:, j : j + 1]
            z = (y - mu) * ops.exp(-logs)
            logp = keras.ops.log_softmax(logits, axis=1) - logs - 0.5 * z * z - half_log_2pi
            total = total - ops.logsumexp(logp, axis=1)
            i += 3 * kk
        return total

    return loss


def _mdn_nll_numpy(out: np.ndarray, y: np.ndarray, k, target_scale) -> float:
    total = np.zeros(len(y))
    for j, (w, mu, sig) in enumerate(split_mdn(out, k, target_scale)):
        z = (y[:, j][None, :] - mu) / sig
        dens = (w / (sig * np.sqrt(2 * np.pi)) * np.exp(-0.5 * z * z)).sum(axis=0)
        total -= np.log(np.maximum(dens, 1e-300))
    return float(total.mean())


def fit_resolution(
    df,
    *,
    name: str = "resolution",
    species: Sequence[str] = SPECIES,
    hidden: Sequence[int] = (64, 64),
    k_p: int = 3,
    k_slope: int = 2,
    epochs: int = 20,
    batch_size: int = 4096,
    learning_rate: float = 3e-3,
    val_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = False,
) -> tuple[Any, dict[str, np.ndarray], dict[str, Any]]:
    """Train the resolution MDN on reconstructed tracks.

    Args:
        df: columns ``px, py, pz`` (true, MeV/c), ``px_reco, py_reco, pz_reco`` (MeV/c) and
            ``pid``; rows with NaN reconstructed momenta (not reconstructed) are dropped.
    """
    from mambah.io import check_finite, require_columns

    cols = ["px", "py", "pz", "pid", "px_reco", "py_reco", "pz_reco"]
    require_columns(df, cols, where="the resolution training data")
    check_finite(df, ["px", "py", "pz", "pid"], where="the resolution training data")
    reco = df[["px_reco", "py_reco", "pz_reco"]].to_numpy(np.float64)
    keep = np.isfinite(reco).all(axis=1)
    if "reconstructed" in df.columns:
        keep &= df["reconstructed"].to_numpy() > 0
    df = df.loc[keep]
    if len(df) < 100:
        raise DataError(f"the resolution training data has {len(df)} reconstructed tracks; need at least 100")
    pid = df["pid"].to_numpy(np.int64)
    _check_pids(pid, species, "the resolution training data")
    true = [df[c].to_numpy(np.float64) for c in ("px", "py", "pz")]
    if (true[2] <= 0).any():
        raise DataError(f"the resolution training data has {int((true[2] <= 0).sum())} tracks with pz <= 0; "
                        "a forward tracker reconstructs only pz > 0")
    y = resolution_targets(*true, *(df[c].to_numpy(np.float64) for c in ("px_reco", "py_reco", "pz_reco")))
    feats = resolution_features(*true, pid)
    tr, va = _split(len(df), val_fraction, seed)
    scaler = RangeScaler.fit(feats[tr], 2, RESOLUTION_FEATURES, name)
    x = scaler.transform(feats)
    # targets in units of their robust width, so that the network's outputs are O(1)
    q = np.percentile(y[tr], [15.87, 84.13], axis=0)
    target_scale = (0.5 * (q[1] - q[0])).astype(np.float32)
    ys = (y / target_scale).astype(np.float32)
    k = [int(k_p), int(k_slope), int(k_slope)]
    model = build_mlp(x.shape[1], 3 * sum(k), hidden, seed=seed)
    nll_before = _mdn_nll_numpy(DenseStack.from_keras(model)(x[va]), y[va], k, target_scale)
    history = _fit_keras(model, mdn_loss(k), x[tr], ys[tr], x[va], ys[va], epochs, batch_size, learning_rate, progress)
    model = _plain_copy(model)
    out_va = DenseStack.from_keras(model)(x[va])
    metrics: dict[str, Any] = {
        "val_nll_before": nll_before,
        "val_nll": _mdn_nll_numpy(out_va, y[va], k, target_scale),
        "n_val": int(len(va)),
    }
    arrays = {**scaler.arrays(), "target_scale": target_scale}
    hyper = {"hidden": list(map(int, hidden)), "activation": "relu", "k_p": int(k_p), "k_slope": int(k_slope),
             "epochs": int(epochs), "epochs_run": len(history.get("loss", [])), "batch_size": int(batch_size),
             "learning_rate": float(learning_rate), "schedule": "cosine decay to 5%", "optimizer": "Adam",
             "loss": "mixture-density negative log-likelihood", "val_fraction": float(val_fraction),
             "seed": int(seed), "features": RESOLUTION_FEATURES,
             "targets_internal": ["100 (p_reco/p_true - 1) [%]", "1000 d(px/pz) [mrad]", "1000 d(py/pz) [mrad]"],
             "n_train": int(len(tr))}
    return model, arrays, {"metrics": metrics, "hyperparameters": hyper, "history": history}


def resolution_closure(model: ResolutionModel, df, detector=None, seed: int = 0, p_edges=None) -> dict[str, Any]:
    """Compare (p_reco - p_true)/p_true of the model and of the reference truth in bins of p.

    Both are drawn for the same true momenta. Per bin: the widths (half the 15.87-84.13 %
    interquantile range), their ratio, the standard deviations, and a two-sample KS test.
    """
    from scipy.stats import ks_2samp

    from mambah.reference.tracking import TrackingDetector

    det = detector or TrackingDetector()
    px, py, pz = (df[c].to_numpy(np.float64) for c in ("px", "py", "pz"))
    pid = df["pid"].to_numpy(np.int64)
    rng = np.random.default_rng(seed)
    mx, my, mz = model.sample(px, py, pz, pid, rng)
    tx, ty, tz = det.smear(px, py, pz, pid, rng)
    p = np.sqrt(px * px + py * py + pz * pz)
    r_model = np.sqrt(mx * mx + my * my + mz * mz) / p - 1
    r_true = np.sqrt(tx * tx + ty * ty + tz * tz) / p - 1
    edges = np.asarray(p_edges if p_edges is not None else [2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 4e5])
    bins = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (p >= lo) & (p < hi)
        if sel.sum() < 50:
            continue
        a, b = r_model[sel], r_true[sel]
        wa = 0.5 * np.subtract(*np.percentile(a, [84.13, 15.87]))
        wb = 0.5 * np.subtract(*np.percentile(b, [84.13, 15.87]))
        ks = ks_2samp(a, b)
        bins.append({"p_lo": float(lo), "p_hi": float(hi), "n": int(sel.sum()), "width_model": float(wa),
                     "width_truth": float(wb), "width_ratio": float(wa / wb), "std_model": float(a.std()),
                     "std_truth": float(b.std()), "ks_stat": float(ks.statistic), "ks_pvalue": float(ks.pvalue)})
    return {"bins": bins, "max_width_dev": max(abs(b["width_ratio"] - 1) for b in bins) if bins else float("nan"),
            "min_ks_pvalue": min(b["ks_pvalue"] for b in bins) if bins else float("nan")}


def card_json(card: Mapping[str, Any]) -> str:
    """A card as indented JSON."""
    return json.dumps(card, indent=2)
