"""Weighted two-sample statistics that accept signed (sPlot) weights.

Every function here is vectorised (sort + ``searchsorted`` + ``cumsum``) and accepts negative
weights: an sWeighted sample is a signed measure, and its "distribution function" is the signed
cumulative sum of weights normalised by the total, which need not be monotonic nor stay inside
[0, 1]. The statistics are then computed with the same formulas as for positive weights; their
values are what the sPlot technique promises on average (Pivk & Le Diberder,
Nucl. Instrum. Meth. A 555 (2005) 356, arXiv:physics/0402083, Sect. 4: sWeighted sums are
unbiased estimators of signal-only sums), not bounds that hold row by row.
"""

from __future__ import annotations

import numpy as np

from mambah.errors import DataError

__all__ = ["weighted_ecdf", "weighted_ks", "weighted_auc", "weighted_quantiles", "effective_size"]


def _prepare(x, w, name: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=float).ravel()
    w = np.ones_like(x) if w is None else np.asarray(w, dtype=float).ravel()
    if w.shape != x.shape:
        raise DataError(f"{name}: {len(w)} weights for {len(x)} values")
    if len(x) == 0:
        raise DataError(f"{name} is empty")
    s = float(w.sum())
    if not np.isfinite(s) or s <= 0:
        raise DataError(f"{name}: the weights sum to {s:.6g} <= 0; a weighted sample needs a positive total")
    return x, w


def weighted_ecdf(x, w, at) -> np.ndarray:
    """Weighted empirical distribution function of ``x`` evaluated at ``at``.

    ``F(t) = sum(w_i for x_i <= t) / sum(w_i)``; with signed weights ``F`` may leave [0, 1].
    """
    x, w = _prepare(x, w, "weighted_ecdf")
    order = np.argsort(x, kind="stable")
    xs = x[order]
    cw = np.concatenate([[0.0], np.cumsum(w[order])])
    return cw[np.searchsorted(xs, np.asarray(at, dtype=float), side="right")] / cw[-1]


def weighted_ks(x1, x2, w1=None, w2=None) -> float:
    """Weighted two-sample Kolmogorov-Smirnov distance ``max_t |F1(t) - F2(t)|``.

    The maximum over all ``t`` is reached at one of the pooled sample values (the ECDFs are right-
    continuous step functions), so both ECDFs are evaluated there. Without weights this equals
    ``scipy.stats.ks_2samp(x1, x2).statistic``. 0 means identical distributions, 1 fully separated.

    Args:
        x1, x2: the two samples (1D).
        w1, w2: their weights (``None`` = 1); signed weights allowed, each total must be > 0.
    """
    x1, w1 = _prepare(x1, w1, "first sample")
    x2, w2 = _prepare(x2, w2, "second sample")
    at = np.concatenate([x1, x2])
    return float(np.max(np.abs(weighted_ecdf(x1, w1, at) - weighted_ecdf(x2, w2, at))))


def weighted_auc(score_neg, score_pos, w_neg=None, w_pos=None) -> float:
    """Weighted ROC AUC in its Mann-Whitney form.

    ``AUC = sum_ij w_i w_j ([s_j > s_i] + 0.5 [s_j = s_i]) / (sum_i w_i sum_j w_j)`` with ``i``
    over the negative class and ``j`` over the positive class (Hanley & McNeil, Radiology 143
    (1982) 29). It is the area under the weighted ROC curve and equals
    ``sklearn.metrics.roc_auc_score`` for positive weights; unlike the latter (whose trapezoid
    integration refuses a non-monotonic curve) it is well defined for signed weights.
    0.5 = no separation, 1 = positives always score higher.
    """
    sn, wn = _prepare(score_neg, w_neg, "negative class")
    sp, wp = _prepare(score_pos, w_pos, "positive class")
    order = np.argsort(sn, kind="stable")
    sns = sn[order]
    cw = np.concatenate([[0.0], np.cumsum(wn[order])])
    below = cw[np.searchsorted(sns, sp, side="left")]
    upto = cw[np.searchsorted(sns, sp, side="right")]
    num = np.sum(wp * (below + 0.5 * (upto - below)))
    return float(num / (cw[-1] * wp.sum()))


def weighted_quantiles(x, q, w=None) -> np.ndarray:
    """Quantiles ``q`` (in [0, 1]) of ``x`` under weights ``w``.

    Uses the weighted ECDF with negative weights clipped at zero (a quantile of a signed measure is
    not well defined where the ECDF decreases; for bin edges the clipped version is stable and only
    moves edges, never drops rows). Returns the smallest ``x`` whose clipped ECDF reaches ``q``.
    """
    x = np.asarray(x, dtype=float).ravel()
    w = np.ones_like(x) if w is None else np.clip(np.asarray(w, dtype=float).ravel(), 0, None)
    order = np.argsort(x, kind="stable")
    xs, cw = x[order], np.cumsum(w[order])
    if cw[-1] <= 0:
        cw = np.arange(1, len(xs) + 1, dtype=float)
    idx = np.searchsorted(cw / cw[-1], np.asarray(q, dtype=float), side="left")
    return xs[np.clip(idx, 0, len(xs) - 1)]


def effective_size(w) -> float:
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` (the statistical weight of a sample)."""
    w = np.asarray(w, dtype=float)
    s2 = float(np.sum(w * w))
    return float(w.sum() ** 2 / s2) if s2 > 0 else 0.0
