"""Training and closure of the track-state network (:mod:`mambah.nn.trackstate`).

:func:`fit_trackstate` trains its two networks on reference-detector tracks
(:func:`mambah.reference.trackstates.trackstate_sample`, ``mambah detector trackstate-sample``):
the covariance regression (the 15 parameters of
:func:`~mambah.nn.trackstate.params_from_covariance`, fitted by the Kullback-Leibler divergence of
the Gaussians, :func:`covariance_kl_loss`) and the track-quality mixture-density
network (negative log-likelihood of ``ln(chi2/ndof)`` and ``logit(ghost probability)``,
:func:`mambah.training.tracking.mdn_loss`). :func:`trackstate_closure` is the validation score on
held-out tracks: the pulls of the reference detector's own state residuals against the learned
covariance in bins of (pT, eta) and type, the learned against the true standard deviations, and
the track-quality distributions.

Example:
    >>> from mambah.reference.trackstates import trackstate_sample
    >>> nets, arrays, info = fit_trackstate(trackstate_sample(50_000, seed=1), epochs=3)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mambah.errors import DataError
from mambah.nn.dense import DenseStack, build_mlp
from mambah.nn.trackstate import (
    GHOST_CLIP,
    N_CONT,
    TRACK_TYPE_ORDER,
    TRACKSTATE_FEATURES,
    params_from_covariance,
    trackstate_features,
)
from mambah.nn.tracking import RangeScaler
from mambah.physics import SPECIES, pdg_charge, state_at_beam
from mambah.training.tracking import _check_pids, _fit_keras, _mdn_nll_numpy, _plain_copy, _split, mdn_loss

__all__ = ["fit_trackstate", "trackstate_closure", "covariance_kl_loss", "covariance_kl_numpy", "covariance_from_columns", "STATE_NAMES"]

STATE_NAMES = ("x", "y", "tx", "ty", "qop")
_COLUMNS = ["px", "py", "pz", "x", "y", "z", "pid", "track_type",
            *(f"cov_{i}{j}" for i in range(5) for j in range(i, 5)), "track_chi2", "track_ndof", "ghost_prob"]


def covariance_from_columns(df) -> np.ndarray:
    """The (n, 5, 5) covariances of a table's ``cov_ij`` columns (i <= j)."""
    cov = np.empty((len(df), 5, 5))
    for i in range(5):
        for j in range(i, 5):
            cov[:, i, j] = cov[:, j, i] = df[f"cov_{i}{j}"].to_numpy(np.float64)
    return cov


def _quality_targets(df) -> np.ndarray:
    chi2 = df["track_chi2"].to_numpy(np.float64)
    ndof = df["track_ndof"].to_numpy(np.float64)
    g = np.clip(df["ghost_prob"].to_numpy(np.float64), GHOST_CLIP, 1 - GHOST_CLIP)
    return np.stack([np.log(chi2 / ndof), np.log(g) - np.log1p(-g)], axis=1)


def _features(df) -> np.ndarray:
    return trackstate_features(*(df[c].to_numpy() for c in ("px", "py", "pz", "x", "y", "z", "pid", "track_type")))


#: why these networks (written into every card; the closure in ``metrics.closure`` is the evidence)
MODEL_CHOICE = (
    "Covariance: a regression network, not a generative model, because the reference detector's state covariance "
    "is a deterministic function of the conditions (momentum, direction, species, type, the state's z); its 15 "
    "outputs are 5 log sigmas and 10 atanh canonical partial correlations, from which the Cholesky factor is built, "
    "so every output is a positive-definite covariance; fitted by squared error and then with the Gaussians' KL "
    "divergence, which weighs the nearly degenerate position-slope directions by what they do to chi2. Residuals: "
    "Gaussian from the learned covariance (the reference's are Gaussian; the closure's pulls of the reference's own "
    "residuals against the learned covariance test both). chi2/ndof and ghost probability: a mixture-density "
    "network (1D Gaussian mixtures of ln(chi2/ndof) and logit(ghost prob)), trained by maximum likelihood: stable, "
    "its likelihood is a validation score, and the reference's chi2 (a scale mixture of chi2 laws) and Beta ghost "
    "probability are smooth 1D densities a few Gaussians represent; a GAN or a flow would add an adversary or "
    "invertibility constraints for no gain in 1D."
)


def _corr_cholesky_rows(w, ops):
    """Rows (list of 5 lists of (n,) tensors, lower triangle) of the correlation Cholesky factor of
    partial correlations ``w`` (n, 10) in :data:`~mambah.nn.trackstate.PAIRS` order, and the (n,)
    ``rem`` of each row (its squared diagonal)."""
    rows, rems, k = [], [], 0
    for i in range(5):
        rem = ops.ones_like(w[:, 0])
        row = []
        for _j in range(i):
            el = w[:, k] * ops.sqrt(ops.maximum(rem, 1e-12))
            rem = rem - el * el
            row.append(el)
            k += 1
        rem = ops.maximum(rem, 1e-12)
        row.append(ops.sqrt(rem))
        rows.append(row)
        rems.append(rem)
    return rows, rems


def covariance_kl_loss(cov_mean: np.ndarray, cov_scale: np.ndarray):
    """Keras loss: the Kullback-Leibler divergence KL(N(0, C_true) || N(0, C_model)) per track.

    ``y_true`` and ``y_pred`` are standardised parameters (``(params - cov_mean) / cov_scale``).
    The divergence, ``(tr(C_m^-1 C_t) - 5 + ln det C_m - ln det C_t) / 2``, is the expected excess
    negative log-likelihood of the true residuals under the model's covariance, with no sampling
    noise: it is zero only for C_m = C_t, and its trace term is the mean of the residuals' chi2
    ``r^T C_m^-1 r`` (5 when the covariance is right) -- the quantity the vertex and IP chi2 depend
    on, also along the nearly degenerate directions (position-slope correlations near -1) where a
    squared error of the parameters says little. Computed in the coordinates scaled by the true
    sigmas (it is invariant under linear maps), in float32.
    """
    from keras import ops

    mean = ops.convert_to_tensor(np.asarray(cov_mean, np.float32))
    scale = ops.convert_to_tensor(np.asarray(cov_scale, np.float32))

    def loss(y_true, y_pred):
        pt = y_true * scale + mean
        pm = y_pred * scale + mean
        t_rows, t_rem = _corr_cholesky_rows(ops.tanh(pt[:, 5:]), ops)
        m_rows, m_rem = _corr_cholesky_rows(ops.tanh(pm[:, 5:]), ops)
        s = [ops.exp(pm[:, i] - pt[:, i]) for i in range(5)]
        # X = L_m'^-1 L_t, L_m' = diag(s) L_corr_m, by forward substitution, row by row (columns 0..4)
        trace = 0.0
        X = []
        for i in range(5):
            xi = []
            for c in range(5):
                b = t_rows[i][c] if c <= i else 0.0
                acc = b - sum(s[i] * m_rows[i][k] * X[k][c] for k in range(i))
                xi.append(acc / (s[i] * m_rows[i][i]))
            X.append(xi)
            trace = trace + sum(v * v for v in xi)
        logdet = sum(2.0 * ops.log(s[i]) + ops.log(m_rem[i]) - ops.log(t_rem[i]) for i in range(5))
        return 0.5 * (trace - 5.0 + logdet)

    return loss


def covariance_kl_numpy(params_true: np.ndarray, params_model: np.ndarray) -> np.ndarray:
    """KL(N(0, C_true) || N(0, C_model)) per row of two (n, 15) parameter arrays (float64)."""
    from mambah.nn.trackstate import cholesky_from_params

    Lt = cholesky_from_params(params_true)
    Lm = cholesky_from_params(params_model)
    X = np.linalg.solve(Lm, Lt)
    tr = (X * X).sum(axis=(1, 2))
    logdet = 2 * (np.log(np.einsum("nii->ni", Lm)).sum(axis=1) - np.log(np.einsum("nii->ni", Lt)).sum(axis=1))
    return 0.5 * (tr - 5.0 + logdet)


def fit_trackstate(
    df,
    *,
    name: str = "trackstate",
    species: Sequence[str] = SPECIES,
    hidden: Sequence[int] = (64, 64, 64),
    k_chi2: int = 3,
    k_ghost: int = 3,
    epochs: int = 20,
    kl_epochs: int = 10,
    kl_weight: float = 0.1,
    batch_size: int = 4096,
    learning_rate: float = 3e-3,
    val_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = False,
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any]]:
    """Train the covariance and track-quality networks.

    Args:
        df: columns ``px, py, pz`` (true, MeV/c), ``x, y, z`` (origin, mm), ``pid``, ``track_type``
            (3, 4, 5), ``cov_ij`` (i <= j, the state covariance), ``track_chi2``, ``track_ndof``,
            ``ghost_prob``.

    Returns:
        ``({"cov": keras model, "quality": keras model}, arrays, info)`` with ``info`` holding
        ``metrics``, ``hyperparameters`` and ``history``.
    """
    from mambah.io import check_finite, require_columns

    require_columns(df, _COLUMNS, where="the track-state training data")
    check_finite(df, _COLUMNS, where="the track-state training data")
    if len(df) < 200:
        raise DataError(f"the track-state training data has {len(df)} tracks; need at least 200")
    _check_pids(df["pid"].to_numpy(np.int64), species, "the track-state training data")
    tt = df["track_type"].to_numpy()
    if not np.isin(tt, TRACK_TYPE_ORDER).all():
        raise DataError(f"the track-state training data has track types {sorted(set(np.unique(tt).tolist()))}; "
                        f"only reconstructed tracks {TRACK_TYPE_ORDER} (long, upstream, downstream) are learned")
    if (df["pz"].to_numpy() <= 0).any():
        raise DataError("the track-state training data has tracks with pz <= 0")
    for c in ("track_chi2", "track_ndof"):
        if (df[c].to_numpy() <= 0).any():
            raise DataError(f"the track-state training data has {c} <= 0 in {int((df[c].to_numpy() <= 0).sum())} rows")
    g = df["ghost_prob"].to_numpy()
    if ((g < 0) | (g > 1)).any():
        raise DataError("the track-state training data has ghost_prob outside [0, 1]")
    try:
        params = params_from_covariance(covariance_from_columns(df))
    except DataError as e:
        raise DataError(f"the track-state training data: {e}") from None
    quality = _quality_targets(df)
    feats = _features(df)
    tr, va = _split(len(df), val_fraction, seed)
    scaler = RangeScaler.fit(feats[tr], N_CONT, TRACKSTATE_FEATURES, name)
    x = scaler.transform(feats)
    cov_mean = params[tr].mean(axis=0)
    sd = params[tr].std(axis=0)
    cov_scale = np.where(sd > 1e-12, sd, 1.0)
    yc = ((params - cov_mean) / cov_scale).astype(np.float32)
    q = np.percentile(quality[tr], [15.87, 84.13], axis=0)
    qscale = (0.5 * (q[1] - q[0])).astype(np.float32)
    yq = (quality / qscale).astype(np.float32)
    k = [int(k_chi2), int(k_ghost)]
    cov_net = build_mlp(x.shape[1], 15, hidden, seed=seed)
    qual_net = build_mlp(x.shape[1], 3 * sum(k), hidden[:2], seed=seed + 1)
    def kl_val(net) -> float:
        pred = DenseStack.from_keras(net)(x[va]).astype(np.float64) * cov_scale + cov_mean
        return float(covariance_kl_numpy(params[va], pred).mean())

    mse_before = float(np.mean((DenseStack.from_keras(cov_net)(x[va]) - yc[va]) ** 2))
    kl_before = kl_val(cov_net)
    nll_before = _mdn_nll_numpy(DenseStack.from_keras(qual_net)(x[va]), quality[va], k, qscale)
    h_cov = _fit_keras(cov_net, "mse", x[tr], yc[tr], x[va], yc[va], epochs, batch_size, learning_rate, progress)
    if kl_epochs:
        kl = covariance_kl_loss(cov_mean, cov_scale)
        from keras import ops

        # log(1 + KL) per track: the same minimum, but a few tracks with a huge divergence (nearly
        # degenerate covariances at the start of the phase) cannot dominate the gradient
        mse_kl = lambda yt, yp: ops.mean((yt - yp) ** 2, axis=-1) + kl_weight * ops.log1p(kl(yt, yp))  # noqa: E731
        h_kl = _fit_keras(cov_net, mse_kl, x[tr], yc[tr], x[va], yc[va], kl_epochs, batch_size,
                          learning_rate * 0.3, progress)
        h_cov = {**h_cov, **{f"kl_{k}": v for k, v in h_kl.items()}}
    h_q = _fit_keras(qual_net, mdn_loss(k), x[tr], yq[tr], x[va], yq[va], epochs, batch_size, learning_rate, progress)
    cov_net, qual_net = _plain_copy(cov_net), _plain_copy(qual_net)
    pred = DenseStack.from_keras(cov_net)(x[va]).astype(np.float64) * cov_scale + cov_mean
    err = pred - params[va]
    ndof_by_type = []
    for code in TRACK_TYPE_ORDER:
        nd = df["track_ndof"].to_numpy(np.int64)[tt == code]
        ndof_by_type.append(int(np.bincount(nd).argmax()) if len(nd) else 0)
    metrics: dict[str, Any] = {
        "val_cov_mse_before": mse_before,
        "val_cov_mse": float(np.mean((DenseStack.from_keras(cov_net)(x[va]) - yc[va]) ** 2)),
        "val_cov_kl_before": kl_before,
        "val_cov_kl": kl_val(cov_net),
        "val_ln_sigma_rms_error": [float(v) for v in np.sqrt((err[:, :5] ** 2).mean(axis=0))],
        "val_atanh_rho_rms_error_max": float(np.sqrt((err[:, 5:] ** 2).mean(axis=0)).max()),
        "val_quality_nll_before": nll_before,
        "val_quality_nll": _mdn_nll_numpy(DenseStack.from_keras(qual_net)(x[va]), quality[va], k, qscale),
        "n_val": int(len(va)),
    }
    arrays = {**scaler.arrays(), "cov_mean": cov_mean.astype(np.float64), "cov_scale": cov_scale.astype(np.float64),
              "quality_scale": qscale, "ndof_by_type": np.asarray(ndof_by_type, np.int16)}
    hyper = {"hidden_cov": list(map(int, hidden)), "hidden_quality": list(map(int, hidden[:2])), "activation": "relu",
             "k_chi2": int(k_chi2), "k_ghost": int(k_ghost), "epochs": int(epochs), "kl_epochs": int(kl_epochs),
             "kl_weight": float(kl_weight),
             "epochs_run": [len(h_cov.get("loss", [])), len(h_q.get("loss", []))], "batch_size": int(batch_size),
             "learning_rate": float(learning_rate), "schedule": "cosine decay to 5%", "optimizer": "Adam",
             "loss": "cov: mean squared error of the standardised parameters, then (kl_epochs) plus kl_weight * "
                     "log(1 + KL(N(0, C_true) || N(0, C_model))) (covariance_kl_loss); quality: "
                     "mixture-density negative log-likelihood", "val_fraction": float(val_fraction), "seed": int(seed),
             "features": TRACKSTATE_FEATURES, "n_train": int(len(tr)), "ndof_by_type": ndof_by_type}
    return ({"cov": cov_net, "quality": qual_net}, arrays,
            {"metrics": metrics, "hyperparameters": hyper, "history": {"cov": h_cov, "quality": h_q},
             "card": {"model_choice": MODEL_CHOICE}})


def _robust_width(a: np.ndarray) -> float:
    q = np.percentile(a, [15.87, 84.13])
    return float(0.5 * (q[1] - q[0]))


def trackstate_closure(model, df, *, pt_edges=(0.0, 0.5, 1.0, 2.0, 5.0, 1e3), eta_edges=(2.0, 3.0, 4.0, 5.5),
                       min_count: int = 500, seed: int = 0) -> dict[str, Any]:
    """The learned covariance and track quality against the reference detector on held-out tracks.

    Pulls ``(measured - true) / sigma_model`` of the reference detector's own state residuals
    (x and y at the state, the IP-like coordinates, and q/p) in bins of true pT [GeV/c], eta and
    type: their mean and standard deviation (1.00 for a covariance that matches the residuals);
    the mean of the 5-parameter chi2 ``r^T C_model^-1 r`` (5 for a matching covariance); the ratio
    of the model's sigma(x) to the reference's; and the model's track chi2/ndof and ghost
    probability against the reference's (quantiles, fraction with ghost_prob > 0.3). The impact
    parameter of the measured track to its true origin, divided by its error propagated from the
    model's covariance: ``pull_ipx/ipy`` (mean 0, width 1) and ``ipchi2_mean`` (2) per bin.
    """
    from scipy.stats import ks_2samp

    from mambah.reconstruction.vertexing import ip_residual, particle_from_state

    cols = [df[c].to_numpy() for c in ("px", "py", "pz", "x", "y", "z", "pid", "track_type")]
    px, py, pz = (np.asarray(c, np.float64) for c in cols[:3])
    meas = np.stack([df[f"state_{k}"].to_numpy(np.float64) for k in STATE_NAMES], axis=1)
    truth, _ = state_at_beam(*cols[:6], pdg_charge(cols[6]))
    ref_cov = covariance_from_columns(df)
    m = model.measure(*cols[:7], seed=seed, track_type=cols[7])
    cov = m["cov"]
    r = meas - truth
    sig = np.sqrt(np.einsum("nii->ni", cov))
    pulls = r / sig
    chi2 = np.einsum("ni,ni->n", r, np.linalg.solve(cov, r[..., None])[..., 0])
    ratio = sig[:, 0] / np.sqrt(ref_cov[:, 0, 0])
    pos, mom, cov6 = particle_from_state(meas, cov, m["z"])
    origin = np.stack([np.asarray(c, np.float64) for c in cols[3:6]], axis=-1)
    ip_r, ip_c = ip_residual(pos, mom, cov6, origin, np.zeros((len(origin), 3, 3)))
    ip_pulls = ip_r / np.sqrt(np.einsum("nii->ni", ip_c))
    ip_chi2 = np.einsum("ni,ni->n", ip_r, np.linalg.solve(ip_c, ip_r[..., None])[..., 0])
    pt_ = np.hypot(px, py) * 1e-3
    eta = np.arcsinh(pz / np.maximum(np.hypot(px, py), 1e-3))
    tt = np.asarray(cols[7])
    bins = []
    for code in TRACK_TYPE_ORDER:
        for a, b in zip(pt_edges[:-1], pt_edges[1:]):
            for c, d in zip(eta_edges[:-1], eta_edges[1:]):
                sel = (tt == code) & (pt_ >= a) & (pt_ < b) & (eta >= c) & (eta < d)
                nsel = int(sel.sum())
                if nsel < min_count:
                    continue
                row = {"type": int(code), "pt": [a, b], "eta": [c, d], "n": nsel,
                       "chi2_mean": float(chi2[sel].mean()), "sigma_x_ratio_median": float(np.median(ratio[sel]))}
                for j, k in ((0, "x"), (1, "y"), (4, "qop")):
                    row[f"pull_{k}_mean"] = float(pulls[sel, j].mean())
                    row[f"pull_{k}_std"] = float(pulls[sel, j].std())
                for j, k in ((0, "ipx"), (1, "ipy")):
                    row[f"pull_{k}_mean"] = float(ip_pulls[sel, j].mean())
                    row[f"pull_{k}_std"] = float(ip_pulls[sel, j].std())
                row["ipchi2_mean"] = float(ip_chi2[sel].mean())
                bins.append(row)
    # downstream tracks by the plane of their state (the lever arm from the UT: the covariance changes
    # sign of its position-slope correlation where the state's plane crosses the UT)
    zs = m["z"]
    by_z = []
    for a, b in ((-1e9, -2000.0), (-2000.0, -500.0), (-500.0, 500.0), (500.0, 2000.0), (2000.0, 1e9)):
        sel = (tt == TRACK_TYPE_ORDER[2]) & (zs >= a) & (zs < b)
        if sel.sum() >= min_count // 5:
            by_z.append({"type": int(TRACK_TYPE_ORDER[2]), "z_state": [a, b], "n": int(sel.sum()),
                         "pull_x_std": float(pulls[sel, 0].std()), "pull_y_std": float(pulls[sel, 1].std()),
                         "chi2_mean": float(chi2[sel].mean()), "chi2_median": float(np.median(chi2[sel]))})
    ref_q = np.log(df["track_chi2"].to_numpy(np.float64) / df["track_ndof"].to_numpy(np.float64))
    mod_q = np.log(m["chi2"] / m["ndof"])
    ref_g, mod_g = df["ghost_prob"].to_numpy(np.float64), m["ghost_prob"]
    qs = [5, 25, 50, 75, 95, 99]
    out = {
        "n": int(len(df)),
        "bins": bins,
        "downstream_by_z_state": by_z,
        "pull_std_max_dev": max(abs(b[f"pull_{k}_std"] - 1) for b in bins for k in ("x", "y")) if bins else float("nan"),
        "pull_mean_max_abs": max(abs(b[f"pull_{k}_mean"]) for b in bins for k in ("x", "y")) if bins else float("nan"),
        "ip_pull_std_max_dev": {
            int(code): max((abs(b[f"pull_{k}_std"] - 1) for b in bins if b["type"] == code for k in ("ipx", "ipy")),
                           default=float("nan")) for code in TRACK_TYPE_ORDER},
        "ip_pull_mean_max_abs": {
            int(code): max((abs(b[f"pull_{k}_mean"]) for b in bins if b["type"] == code for k in ("ipx", "ipy")),
                           default=float("nan")) for code in TRACK_TYPE_ORDER},
        "chi2_mean": float(chi2.mean()),
        "sigma_x_ratio_median": float(np.median(ratio)),
        "sigma_x_ratio_q01_q99": [float(v) for v in np.percentile(ratio, [1, 99])],
        "chi2ndof_quantiles": {"q": qs, "model": np.exp(np.percentile(mod_q, qs)).round(4).tolist(),
                               "reference": np.exp(np.percentile(ref_q, qs)).round(4).tolist()},
        "chi2ndof_ks": float(ks_2samp(mod_q, ref_q).statistic),
        "ndof_agree": float(np.mean(m["ndof"] == df["track_ndof"].to_numpy())),
        "ghost_quantiles": {"q": qs, "model": np.percentile(mod_g, qs).round(4).tolist(),
                            "reference": np.percentile(ref_g, qs).round(4).tolist()},
        "ghost_ks": float(ks_2samp(mod_g, ref_g).statistic),
        "ghost_above_0p3": {"model": float(np.mean(mod_g > 0.3)), "reference": float(np.mean(ref_g > 0.3))},
    }
    return out
