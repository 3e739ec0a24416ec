"""Sanity cases with known answers: does the validation have the power to see a bad model?

From one reference sample (e.g. sWeighted calibration data) build "generated" samples whose
quality is known, score them all with :func:`~mambah.validation.bdt.bdt_ks_score` and check the
ordering. The reference is split into two disjoint halves A and B; A is the reference, and each
case is built from the conditions of B (so it carries B's sWeights, as a generated sample must):

=================  =========================================================  ==================
case               generated sample                                           expected score
=================  =========================================================  ==================
``null``           B itself                                                   statistical floor
``shifted``        B with every target shifted by ``shift`` x its std         clearly worse
``shuffled``       B with the targets permuted across rows (conditioning      clearly worse
                   destroyed; with signed weights the weighted target
                   marginal changes too, as background rows swap weights)
``unconditional``  targets drawn from their weighted marginal (histogram of   clearly worse
                   B, negative bins clipped), independently of the conditions
``binned_p_eta``   targets drawn from their weighted histogram in the same    worse (sees the
                   (p, η) bin as the row (quantile bins), ignoring occupancy  occupancy term)
``copy_weight1``   B with weight 1 instead of its sWeights (the classic        bad: conditions
                   mistake)                                                   follow sig + bkg
=================  =========================================================  ==================
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from mambah.errors import ConfigurationError
from mambah.validation.stats import weighted_quantiles

log = logging.getLogger(__name__)

__all__ = ["resample_binned", "sanity_cases", "sanity_table", "CASES"]

CASES = ("null", "shifted", "shuffled", "unconditional", "binned_p_eta", "copy_weight1")


def _cells(df: pd.DataFrame, columns: Sequence[str], w: np.ndarray, n_bins: int, edges: dict | None = None):
    """Index of the quantile cell (product of per-column quantile bins) of every row."""
    edges = {} if edges is None else edges
    cell = np.zeros(len(df), dtype=np.int64)
    for c in columns:
        if c not in edges:
            e = np.unique(weighted_quantiles(df[c].to_numpy(float), np.linspace(0, 1, n_bins + 1)[1:-1], w))
            edges[c] = e
        cell = cell * (len(edges[c]) + 1) + np.searchsorted(edges[c], df[c].to_numpy(float), side="right")
    return cell, edges


def resample_binned(
    source: pd.DataFrame,
    target: str,
    weight: np.ndarray,
    into: pd.DataFrame,
    by: Sequence[str] = (),
    *,
    n_bins: int = 10,
    n_target_bins: int = 60,
    seed: int = 0,
) -> np.ndarray:
    """Draw ``target`` for every row of ``into`` from its weighted histogram in the row's cell.

    The cells are the quantile bins (``n_bins`` per column of ``by``; none = one cell, i.e. the
    weighted marginal). In each cell the histogram of ``target`` (``n_target_bins`` weighted
    quantile bins of the whole source) is filled with the signed weights, negative bins are set to
    zero, a bin is drawn from it and a value uniformly inside the bin. A cell with no positive
    content falls back to the marginal. Vectorised over rows (inverse-CDF by ``searchsorted``).
    """
    rng = np.random.default_rng(seed)
    x = source[target].to_numpy(float)
    w = np.asarray(weight, dtype=float)
    tedges = np.unique(np.r_[x.min(), weighted_quantiles(x, np.linspace(0, 1, n_target_bins + 1)[1:-1], w), x.max()])
    nt = len(tedges) - 1
    tbin = np.clip(np.searchsorted(tedges, x, side="right") - 1, 0, nt - 1)
    src_cell, edges = _cells(source, list(by), w, n_bins)
    dst_cell, _ = _cells(into, list(by), w, n_bins, edges)
    n_cells = int(max(src_cell.max(initial=0), dst_cell.max(initial=0))) + 1
    hist = np.zeros((n_cells, nt))
    np.add.at(hist, (src_cell, tbin), w)
    hist = np.clip(hist, 0, None)
    marginal = np.clip(np.bincount(tbin, weights=w, minlength=nt), 0, None)
    empty = hist.sum(axis=1) <= 0
    hist[empty] = marginal
    cdf = np.cumsum(hist, axis=1)
    cdf /= cdf[:, -1:]
    # one monotone array over all cells: cell k occupies (k, k + 1]
    flat = (cdf + np.arange(n_cells)[:, None]).ravel()
    u = rng.random(len(into))
    b = np.searchsorted(flat, dst_cell + u, side="left") - dst_cell * nt
    b = np.clip(b, 0, nt - 1)
    return tedges[b] + rng.random(len(into)) * (tedges[b + 1] - tedges[b])


def sanity_cases(
    ref: pd.DataFrame,
    conditions: Sequence[str],
    targets: Sequence[str],
    weight: str | None = None,
    *,
    p: str | None = None,
    eta: str | None = None,
    shift: float = 0.2,
    seed: int = 0,
    cases: Sequence[str] = CASES,
) -> tuple[pd.DataFrame, dict[str, tuple[pd.DataFrame, str | None]]]:
    """Split ``ref`` in halves A, B and build the generated samples of :data:`CASES` from B.

    Returns:
        ``(A, {case: (generated DataFrame, its weight column or None)})``.
    """
    unknown = set(cases) - set(CASES)
    if unknown:
        raise ConfigurationError(f"unknown sanity cases {sorted(unknown)}; known: {', '.join(CASES)}")
    rng = np.random.default_rng([seed, 31337])
    perm = rng.permutation(len(ref))
    a = ref.iloc[np.sort(perm[: len(ref) // 2])].reset_index(drop=True)
    b = ref.iloc[np.sort(perm[len(ref) // 2:])].reset_index(drop=True)
    wb = b[weight].to_numpy(float) if weight else np.ones(len(b))
    out: dict[str, tuple[pd.DataFrame, str | None]] = {}
    for case in cases:
        g = b.copy()
        gw = weight
        if case == "shifted":
            for t in targets:
                g[t] = g[t] + shift * float(np.std(b[t].to_numpy(float)))
        elif case == "shuffled":
            for t in targets:
                g[t] = rng.permutation(g[t].to_numpy())
        elif case == "unconditional":
            for i, t in enumerate(targets):
                g[t] = resample_binned(b, t, wb, b, (), seed=seed * 1000 + i)
        elif case == "binned_p_eta":
            by = [c for c in (p, eta) if c is not None]
            if not by:
                raise ConfigurationError("the binned_p_eta case needs p= and/or eta= (column names)")
            for i, t in enumerate(targets):
                g[t] = resample_binned(b, t, wb, b, by, seed=seed * 1000 + 100 + i)
        elif case == "copy_weight1":
            gw = None
        out[case] = (g, gw)
    return a, out


def sanity_table(
    ref: pd.DataFrame,
    conditions: Sequence[str],
    targets: Sequence[str],
    weight: str | None = None,
    *,
    p: str | None = None,
    eta: str | None = None,
    shift: float = 0.2,
    seed: int = 0,
    cases: Sequence[str] = CASES,
    train_weights: Sequence[str] = ("signed",),
    **score_options,
) -> pd.DataFrame:
    """Score every sanity case; one row per (case, train_weights) with KS, AUC and spreads."""
    from mambah.validation.bdt import bdt_ks_score

    a, gens = sanity_cases(ref, conditions, targets, weight, p=p, eta=eta, shift=shift, seed=seed, cases=cases)
    columns = [*conditions, *targets]
    rows = []
    for case, (g, gw) in gens.items():
        for tw in train_weights:
            res = bdt_ks_score(a, g, columns, ref_weight=weight, gen_weight=gw, seed=seed, train_weights=tw,
                               **score_options)
            rows.append({"case": case, "train_weights": tw, "bdt_ks": res.bdt_ks, "bdt_ks_std": res.bdt_ks_std,
                         "auc": res.auc, "auc_std": res.auc_std, "n_ref": res.n_ref, "n_gen": res.n_gen})
            log.info("sanity %s (%s): KS %.4f ± %.4f", case, tw, res.bdt_ks, res.bdt_ks_std)
    return pd.DataFrame(rows)
