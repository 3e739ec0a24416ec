"""Training of the calorimeter networks of :mod:`mambah.nn.calo`: the electron brem response and the
photon / pi0 response (issue 25).

:func:`fit_brem` trains, on single electrons with their ``HASBREMADDED`` flag and momentum response
(``mambah detector brem-sample``), the flag classifier (binary cross-entropy) and the two
mixture-density networks of the response without / with brem added (maximum likelihood,
:func:`mambah.training.tracking.mdn_loss`). :func:`fit_photon` trains, on single photons and on
pi0 -> gamma gamma (``mambah detector photon-sample``), the single-photon efficiency classifier
(photons in the ECAL acceptance), the 3-class pi0 classifier (resolved / merged / merged and lost;
categorical cross-entropy) and the energy and position MDN. Each returns ``(networks, arrays,
card fields)``; ``mambah train brem`` / ``mambah train photon`` write them as model directories.
Every metric is a held-out score before and after training (so a card shows that training helped).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mambah.errors import DataError
from mambah.nn.calo import (
    BREM_FEATURES,
    PHOTON_FEATURES,
    PI0_FEATURES,
    EcalGeometry,
    brem_features,
    brem_targets,
    photon_features,
    pi0_features,
)
from mambah.nn.dense import DenseStack, build_mlp
from mambah.nn.tracking import RangeScaler
from mambah.training.tracking import _fit_keras, _mdn_nll_numpy, _plain_copy, _split
from mambah.physics import p_eta

__all__ = ["fit_brem", "fit_photon", "photon_geometry", "efficiency_closure_table"]


def _transform(scaler: RangeScaler, feats: np.ndarray) -> np.ndarray:
    """Scaled features of every row; the held-out rows outside the training rows' range are clipped
    to it silently (that is what the model does with them)."""
    import warnings

    from mambah.errors import OutOfRangeWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)
        return scaler.transform(feats)


def _fit(model, loss, x, y, xv, yv, epochs, batch_size, learning_rate, progress):
    """The tracking networks' fit (:func:`mambah.training.tracking._fit_keras`); returns an uncompiled
    copy of the kept model and the history."""
    hist = _fit_keras(model, loss, x, y, xv, yv, epochs, batch_size, learning_rate, progress)
    return _plain_copy(model), hist


def _bce(logit: np.ndarray, label: np.ndarray) -> float:
    p = np.clip(1.0 / (1.0 + np.exp(-logit.astype(np.float64))), 1e-7, 1 - 1e-7)
    return float(-np.mean(label * np.log(p) + (1 - label) * np.log1p(-p)))


def _cce(logits: np.ndarray, label: np.ndarray) -> float:
    o = logits.astype(np.float64)
    o = o - o.max(axis=1, keepdims=True)
    logp = o - np.log(np.exp(o).sum(axis=1, keepdims=True))
    return float(-np.mean(logp[np.arange(len(label)), label]))


def _classifier(x, label, tr, va, n_out, hidden, seed, fit_args):
    import keras

    model = build_mlp(x.shape[1], n_out, hidden, seed=seed)
    if n_out == 1:
        loss, score = keras.losses.BinaryCrossentropy(from_logits=True), lambda o, l: _bce(o[:, 0], l)
        lab = label.astype(np.float32)
    else:
        loss, score = keras.losses.SparseCategoricalCrossentropy(from_logits=True), _cce
        lab = label.astype(np.int64)
    before = score(DenseStack.from_keras(model)(x[va]), lab[va])
    model, hist = _fit(model, loss, x[tr], lab[tr], x[va], lab[va], *fit_args)
    after = score(DenseStack.from_keras(model)(x[va]), lab[va])
    return model, hist, before, after


def _mdn(x, y, tr, va, k, hidden, seed, fit_args):
    from mambah.training.tracking import mdn_loss

    q = np.percentile(y[tr], [15.87, 84.13], axis=0)
    ts = np.maximum(0.5 * (q[1] - q[0]), 1e-6).astype(np.float32)
    ys = (y / ts).astype(np.float32)
    kk = [int(k)] * y.shape[1]
    model = build_mlp(x.shape[1], 3 * sum(kk), hidden, seed=seed)
    before = _mdn_nll_numpy(DenseStack.from_keras(model)(x[va]), y[va], kk, ts)
    model, hist = _fit(model, mdn_loss(kk), x[tr], ys[tr], x[va], ys[va], *fit_args)
    after = _mdn_nll_numpy(DenseStack.from_keras(model)(x[va]), y[va], kk, ts)
    return model, hist, before, after, ts


def fit_brem(
    df,
    *,
    name: str = "brem",
    hidden: Sequence[int] = (64, 64),
    k_loss: int = 6,
    k_recovered: int = 6,
    epochs: int = 20,
    batch_size: int = 4096,
    learning_rate: float = 3e-3,
    val_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = False,
    **_ignored,
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any]]:
    """Train the brem networks on single electrons.

    Args:
        df: columns ``px, py, pz`` (true, MeV/c), ``z`` (origin, mm), ``has_brem_added`` (0/1) and
            ``brem_scale`` (p after recovery / p true, > 0).

    Returns:
        ``({"flag", "loss", "recovered"}: Keras models, arrays, card fields)``.
    """
    from mambah.io import check_finite, require_columns

    cols = ["px", "py", "pz", "z", "has_brem_added", "brem_scale"]
    require_columns(df, cols, where="the brem training data")
    check_finite(df, cols, where="the brem training data")
    flag = df["has_brem_added"].to_numpy()
    if not np.isin(flag, (0, 1)).all():
        raise DataError("the brem training data: column 'has_brem_added' must hold 0/1")
    if flag.min() == flag.max():
        raise DataError("the brem training data: column 'has_brem_added' has a single class; need both")
    scale = df["brem_scale"].to_numpy(np.float64)
    if (scale <= 0).any() or (scale[flag == 0] > 1 + 1e-12).any():
        raise DataError("the brem training data: 'brem_scale' must be > 0, and <= 1 where no brem was added")
    feats = brem_features(*(df[c].to_numpy() for c in ("px", "py", "pz", "z")))
    tr, va = _split(len(df), val_fraction, seed)
    scaler = RangeScaler.fit(feats[tr], len(BREM_FEATURES), BREM_FEATURES, name)
    x = _transform(scaler, feats)
    y = brem_targets(scale, flag)[:, None]
    fit_args = (epochs, batch_size, learning_rate, progress)
    nets, hist, metrics, arrays = {}, {}, {}, dict(scaler.arrays())
    nets["flag"], hist["flag"], b, a = _classifier(x, flag, tr, va, 1, hidden, seed, fit_args)
    metrics["flag_val_bce_before"], metrics["flag_val_bce"] = b, a
    f = flag.astype(bool)
    for label, sel, k in (("loss", ~f, k_loss), ("recovered", f, k_recovered)):
        idx = np.flatnonzero(sel)
        mtr, mva = idx[np.isin(idx, tr)], idx[np.isin(idx, va)]
        nets[label], hist[label], b, a, ts = _mdn(x, y, mtr, mva, k, hidden, seed, fit_args)
        metrics[f"{label}_val_nll_before"], metrics[f"{label}_val_nll"] = b, a
        arrays[f"{label}_target_scale"] = ts
    # closure on the validation electrons: the flag fraction and the response quantiles
    from mambah.nn.calo import BremModel

    m = BremModel(None, {"name": name, "hyperparameters": {"k_loss": k_loss, "k_recovered": k_recovered}}, arrays,
                  tuple(DenseStack.from_keras(nets[k]) for k in ("flag", "loss", "recovered")), scaler)
    c = df.iloc[va]
    import warnings

    from mambah.errors import OutOfRangeWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)
        fl, s = m.sample(*(c[col].to_numpy() for col in ("px", "py", "pz", "z")), seed=seed + 1)
    qs = [0.05, 0.25, 0.5, 0.75, 0.95]
    metrics.update({
        "n_val": int(len(va)),
        "val_brem_added_fraction": {"reference": float(flag[va].mean()), "model": float(fl.mean())},
        "val_response_quantiles": {"q": qs, "reference": np.quantile(scale[va], qs).round(5).tolist(),
                                   "model": np.quantile(s, qs).round(5).tolist()},
    })
    hyper = {"hidden": list(map(int, hidden)), "activation": "relu", "k_loss": int(k_loss),
             "k_recovered": int(k_recovered), "epochs": int(epochs), "batch_size": int(batch_size),
             "learning_rate": float(learning_rate), "schedule": "cosine decay to 5%", "optimizer": "Adam",
             "losses": {"flag": "binary cross-entropy (from logits)", "loss": "MDN NLL of ln(-ln s)",
                        "recovered": "MDN NLL of ln s"},
             "val_fraction": float(val_fraction), "seed": int(seed), "features": BREM_FEATURES, "n_train": int(len(tr))}
    return nets, arrays, {"metrics": metrics, "hyperparameters": hyper, "history": hist}


def photon_geometry(calorimeter=None) -> dict[str, float]:
    """The ECAL face a photon model's card records (``geometry``; default: the reference ECAL's)."""
    from mambah.reference.calorimeter import Calorimeter

    cal = calorimeter or Calorimeter()
    return {k: float(getattr(cal, k)) for k in EcalGeometry.KEYS}


def fit_photon(
    photons,
    pi0,
    *,
    name: str = "photon",
    geometry: dict | None = None,
    hidden: Sequence[int] = (64, 64),
    k_response: int = 2,
    epochs: int = 20,
    batch_size: int = 4096,
    learning_rate: float = 3e-3,
    val_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = False,
    **_ignored,
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any]]:
    """Train the photon networks.

    Args:
        photons: single photons: ``px, py, pz`` (MeV/c), ``x, y, z`` (origin, mm), ``reconstructed``
            (0/1), ``e_reco, x_reco, y_reco`` (MeV, mm at the ECAL face; NaN where not reconstructed).
        pi0: pi0 -> gamma gamma: ``g1_px .. g2_pz`` (MeV/c), ``x, y, z`` (decay point, mm) and
            ``pi0_class`` (0 resolved, 1 merged and reconstructed, 2 merged and lost).
        geometry: the ECAL face (:func:`photon_geometry`), applied explicitly: only photons on the
            face train the efficiency.

    Returns:
        ``({"efficiency", "pi0", "response"}: Keras models, arrays, card fields)``.
    """
    from mambah.io import check_finite, require_columns

    geo = EcalGeometry(geometry or photon_geometry(), where="fit_photon")
    pc = ["px", "py", "pz", "x", "y", "z", "reconstructed", "e_reco", "x_reco", "y_reco"]
    require_columns(photons, pc, where="the photon training data")
    check_finite(photons, pc[:7], where="the photon training data")
    qc = ["g1_px", "g1_py", "g1_pz", "g2_px", "g2_py", "g2_pz", "x", "y", "z", "pi0_class"]
    require_columns(pi0, qc, where="the pi0 training data")
    check_finite(pi0, qc, where="the pi0 training data")
    px, py, pz, x0, y0, z0 = (photons[c].to_numpy(np.float64) for c in pc[:6])
    e, eta = p_eta(px, py, pz)
    xe, ye = geo.impact(px, py, pz, x0, y0, z0)
    acc = geo.accept(xe, ye)
    if acc.sum() < 100:
        raise DataError(f"the photon training data has {int(acc.sum())} photons on the ECAL face; need at least 100")
    reco = photons["reconstructed"].to_numpy()
    if reco[~acc].any():
        raise DataError(f"the photon training data has {int(reco[~acc].sum())} photons reconstructed outside the "
                        "ECAL face of the geometry given: wrong geometry?")
    feats = photon_features(e[acc], eta[acc], xe[acc], ye[acc])
    label = reco[acc]
    tr, va = _split(len(feats), val_fraction, seed)
    scaler = RangeScaler.fit(feats[tr], len(PHOTON_FEATURES), PHOTON_FEATURES, name)
    x = _transform(scaler, feats)
    fit_args = (epochs, batch_size, learning_rate, progress)
    nets, hist, metrics = {}, {}, {}
    nets["efficiency"], hist["efficiency"], b, a = _classifier(x, label, tr, va, 1, hidden, seed, fit_args)
    metrics["efficiency_val_bce_before"], metrics["efficiency_val_bce"] = b, a
    # response of the reconstructed photons: 100 (E_reco/E - 1) [%], x_reco - x, y_reco - y [mm]
    ra = np.flatnonzero(acc)
    er, xr, yr = (photons[c].to_numpy(np.float64)[ra] for c in ("e_reco", "x_reco", "y_reco"))
    y = np.stack([100.0 * (er / e[ra] - 1.0), xr - xe[ra], yr - ye[ra]], axis=1)
    ok = np.flatnonzero(label.astype(bool) & np.isfinite(y).all(axis=1))
    rtr, rva = ok[np.isin(ok, tr)], ok[np.isin(ok, va)]
    yy = np.where(np.isfinite(y), y, 0.0)
    nets["response"], hist["response"], b, a, ts = _mdn(x, yy, rtr, rva, k_response, hidden, seed, fit_args)
    metrics["response_val_nll_before"], metrics["response_val_nll"] = b, a
    # pi0 classes
    g1 = [pi0[f"g1_{c}"].to_numpy(np.float64) for c in ("px", "py", "pz")]
    g2 = [pi0[f"g2_{c}"].to_numpy(np.float64) for c in ("px", "py", "pz")]
    o = [pi0[c].to_numpy(np.float64) for c in ("x", "y", "z")]
    cls = pi0["pi0_class"].to_numpy().astype(np.int64)
    if not np.isin(cls, (0, 1, 2)).all():
        raise DataError("the pi0 training data: 'pi0_class' must hold 0 (resolved), 1 (merged), 2 (merged, lost)")
    f0 = geo.pi0_features(g1, g2, *o)
    t0, v0 = _split(len(f0), val_fraction, seed)
    s0 = RangeScaler.fit(f0[t0], len(PI0_FEATURES), PI0_FEATURES, name)
    nets["pi0"], hist["pi0"], b, a = _classifier(_transform(s0, f0), cls, t0, v0, 3, hidden, seed, fit_args)
    metrics["pi0_val_cce_before"], metrics["pi0_val_cce"] = b, a
    arrays = {**scaler.arrays(), **s0.arrays("pi0_"), "response_target_scale": ts}
    # efficiency closure on the validation photons, in (E, eta) bins
    eff_va = 1.0 / (1.0 + np.exp(-DenseStack.from_keras(nets["efficiency"])(x[va])[:, 0].astype(np.float64)))
    metrics["efficiency_closure_val"] = efficiency_closure_table(eff_va, label[va], e[acc][va], eta[acc][va])
    metrics["n_val"] = int(len(va))
    metrics["pi0_class_fractions_val"] = (np.bincount(cls[v0], minlength=3) / len(v0)).round(4).tolist()
    hyper = {"hidden": list(map(int, hidden)), "activation": "relu", "k_response": int(k_response),
             "epochs": int(epochs), "batch_size": int(batch_size), "learning_rate": float(learning_rate),
             "schedule": "cosine decay to 5%", "optimizer": "Adam",
             "losses": {"efficiency": "binary cross-entropy (from logits)",
                        "pi0": "categorical cross-entropy (from logits)",
                        "response": "MDN NLL of (100 dE/E [%], dx [mm], dy [mm])"},
             "val_fraction": float(val_fraction), "seed": int(seed), "features": PHOTON_FEATURES,
             "pi0_features": PI0_FEATURES, "n_train": int(len(tr)), "n_train_pi0": int(len(t0))}
    return nets, arrays, {"metrics": metrics, "hyperparameters": hyper, "history": hist, "geometry": geo.__dict__}


def efficiency_closure_table(prob, label, e, eta, *, e_edges=None, eta_edges=None, min_count: int = 1000) -> dict:
    """Mean model probability minus the reference's mean outcome (or probability) per (E, eta) bin;
    ``max_abs_diff`` over the bins with at least ``min_count`` photons."""
    e_edges = np.asarray(e_edges if e_edges is not None else [150, 500, 1e3, 2e3, 5e3, 1e4, 3e4, 1e5, 3e5])
    eta_edges = np.asarray(eta_edges if eta_edges is not None else [1.6, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.4])
    ie = np.digitize(e, e_edges) - 1
    ih = np.digitize(eta, eta_edges) - 1
    ok = (ie >= 0) & (ie < len(e_edges) - 1) & (ih >= 0) & (ih < len(eta_edges) - 1)
    shape = (len(e_edges) - 1, len(eta_edges) - 1)
    flat = np.ravel_multi_index((ie[ok], ih[ok]), shape)
    cnt = np.bincount(flat, minlength=np.prod(shape)).reshape(shape)
    sm = np.bincount(flat, prob[ok], minlength=np.prod(shape)).reshape(shape)
    sr = np.bincount(flat, np.asarray(label, dtype=float)[ok], minlength=np.prod(shape)).reshape(shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = np.where(cnt >= min_count, (sm - sr) / cnt, np.nan)
    return {"e_edges": e_edges.tolist(), "eta_edges": eta_edges.tolist(), "min_count": int(min_count),
            "counts": cnt.tolist(), "diff": [[None if not np.isfinite(v) else round(float(v), 5) for v in row]
                                             for row in diff],
            "max_abs_diff": float(np.nanmax(np.abs(diff))) if np.isfinite(diff).any() else float("nan"),
            "n_bins": int(np.isfinite(diff).sum())}
