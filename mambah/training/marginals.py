"""Fit the marginal calibration of a trained PID GAN (:mod:`mambah.nn.marginals`) on a calibration sample.

    corr, info = fit_marginal_correction(model, table, weight="sWeight")
    write_marginal_correction(model.path, corr, info)        # CLI: mambah train marginals

The fit sample should be a calibration sample the GAN was not trained on (or a larger one: the map
needs the tails, which a GAN's training sample may hold too few of); the card records which.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from mambah.errors import ConfigurationError, DataError, MissingColumnError
from mambah.nn.logit import clipped_logit
from mambah.nn.marginals import (
    FILE,
    LEVELS,
    MAX_LOGIT_SHIFT,
    MAX_REL_ERROR,
    MIN_BIN_WEIGHT,
    FlagCalibration,
    MarginalCorrection,
    strict_knots,
    map_values,
    monotone_ecdf_quantiles,
)

__all__ = ["fit_marginal_correction", "fit_flag_calibration", "write_marginal_correction", "bin_edges"]

log = logging.getLogger(__name__)


def bin_edges(x: np.ndarray, w: np.ndarray, n: int, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """``n`` bins of equal sWeighted population (negative weights clipped for the edges), the outer
    edges at the sample's extremes (or ``lo``/``hi``)."""
    from mambah.validation.stats import weighted_quantiles

    inner = weighted_quantiles(x, np.linspace(0, 1, n + 1)[1:-1], w)
    e = np.unique(np.r_[x.min() if lo is None else lo, inner, x.max() if hi is None else hi])
    if len(e) < 2:
        raise DataError("cannot make bins: the column holds a single value")
    return e


class _FitInputs:
    """The checked inputs of a calibration fit: the selected rows' conditions, targets and weights,
    the bin edges, the split and each row's cell (see :func:`fit_marginal_correction`)."""

    def __init__(self, model, data, weight, selection, targets, p_bins, eta_bins, split, where, extra_p_edges=()):
        targets = list(model.targets) if targets is None else list(targets)
        bad = [t for t in targets if t not in model.targets]
        if bad:
            raise ConfigurationError(f"model {model.name!r} has no target(s) {bad}; its targets: {model.targets}")
        if not {"P", "ETA"} <= set(model.conditions):
            raise ConfigurationError(f"model {model.name!r} has no P and ETA conditions: nothing to bin the correction in")
        if selection == "card":
            selection = (model.card.get("training_data") or {}).get("selection") or None
        need = list(dict.fromkeys([*model.conditions, *targets, *([weight] if weight else [])]))
        missing = [c for c in need if c not in data.columns]
        if missing:
            raise MissingColumnError(missing, list(data.columns), where=where)
        n_read = len(data)
        if selection:
            try:
                data = data.query(selection)
            except Exception as e:  # pandas raises many types for a bad query
                raise ConfigurationError(f"selection {selection!r} failed on {where}: {type(e).__name__}: {e}") from None
        if len(data) < 100:
            raise DataError(f"{where}: {len(data)} rows (of {n_read}) after the selection {selection!r}: too few to fit")
        cond = data[model.conditions].to_numpy(np.float32)
        y_data = data[targets].to_numpy(np.float32)
        w = np.ones(len(data)) if weight is None else data[weight].to_numpy(float)
        del data
        for name, a in (("conditions", cond), ("targets", y_data), ("weights", w[:, None])):
            bad_rows = ~np.all(np.isfinite(a), axis=1)
            if bad_rows.any():
                raise DataError(f"{where}: {int(bad_rows.sum())} rows with NaN/inf {name} after the selection "
                                f"{selection!r} (first at row {int(np.flatnonzero(bad_rows)[0])})")
        p = cond[:, model.conditions.index("P")].astype(float)
        eta = cond[:, model.conditions.index("ETA")].astype(float)
        p_edges, eta_edges = bin_edges(p, w, p_bins), bin_edges(eta, w, eta_bins)
        extra = np.asarray(extra_p_edges, float).ravel()
        if len(extra):
            if not np.all(np.isfinite(extra)) or np.any(extra <= 0):
                raise ConfigurationError(f"extra P edges must be finite and positive (MeV/c), not {extra.tolist()}")
            p_edges = np.unique(np.r_[p_edges, extra[(extra > p_edges[0]) & (extra < p_edges[-1])]])
        if isinstance(split, str) and split.lower() == "none":
            split = []
        if split == "auto":
            split = [c for c in model.conditions if c not in ("P", "ETA", "charge")
                     and np.isin(np.unique(cond[:, model.conditions.index(c)]), (0.0, 1.0)).all()]
        split = [] if not split else ([split] if isinstance(split, str) else list(split))
        lacking = [c for c in split if c not in model.conditions]
        if lacking:
            raise ConfigurationError(f"split columns {lacking} are not conditions of model {model.name!r}")
        codes = MarginalCorrection.state_codes(cond[:, [model.conditions.index(c) for c in split]]) if split \
            else np.zeros(len(w), np.int64)
        states = np.unique(codes)
        ns = len(states)
        self.cells = MarginalCorrection.cells(p, eta, codes, p_edges, eta_edges, states)  # (every code is in states)
        self.n_bins = (len(p_edges) - 1) * (len(eta_edges) - 1) * ns
        self.n = len(w)
        self.targets, self.cond, self.y_data, self.w, self.p, self.eta = targets, cond, y_data, w, p, eta
        self.p_edges, self.eta_edges, self.split, self.codes, self.states = p_edges, eta_edges, split, codes, states
        self.selection, self.n_read = selection, n_read
        self.weight = weight
        # the rows grouped by cell: cell k's rows are by_bin[starts[k]:starts[k + 1]]
        self.by_bin = np.argsort(self.cells, kind="stable")
        self.starts = np.searchsorted(self.cells[self.by_bin], np.arange(self.n_bins + 1))
        self.sum_w = np.array([w[self.rows(k)].sum() for k in range(self.n_bins)])

    def rows(self, k: int) -> np.ndarray:
        """The rows of cell ``k``."""
        return self.by_bin[self.starts[k]:self.starts[k + 1]]

    def replicas(self, seed: int, k_members: int) -> tuple[list[int], list[np.ndarray]]:
        """The members' bootstrap replicas: seeds ``seed + 1000 k`` and Poisson(1) counts (float32) per row."""
        seeds = [seed + 1000 * k for k in range(1, k_members + 1)]
        return seeds, [np.random.default_rng(s).poisson(1.0, self.n).astype(np.float32) for s in seeds]

    def info(self, min_weight: float, skipped: list[int], n_corrected: int, seeds: list[int]) -> dict:
        """The card section's entries common to the fits: fit data, bins, members."""
        sw, w = self.sum_w, self.w
        return {
            "fit_data": {"rows": int(self.n_read), "selected": int(self.n), "selection": self.selection,
                         "weight": self.weight, "sum_weights": float(w.sum())},
            "bins": {"p_edges": self.p_edges, "eta_edges": self.eta_edges, "split": self.split,
                     "n_states": int(len(self.states)), "n_bins": int(self.n_bins),
                     "n_bins_with_rows": int(np.count_nonzero(np.diff(self.starts))),
                     "n_bins_corrected": int(n_corrected),
                     "sum_weights_median": float(np.median(sw[sw > 0])) if (sw > 0).any() else 0.0,
                     "not_corrected": [int(k) for k in skipped], "min_weight": float(min_weight),
                     "not_corrected_weight_fraction": float(sw[skipped].sum() / w.sum()) if skipped else 0.0},
            "members": {"n": len(seeds), "bootstrap": "Poisson(1) counts x sWeights", "seeds": seeds},
        }


def fit_marginal_correction(model, data: pd.DataFrame, *, weight: str | None = "sWeight",
                            selection: str | None = "card", targets: list[str] | None = None,
                            p_bins: int = 24, eta_bins: int = 2, split: list[str] | str | None = "auto",
                            repeats: int = 2, seed: int = 0, given: dict[str, str] | None = None, classes: int = 5,
                            sums=(), extra_p_edges=(), logit_offsets: dict[str, str] | None = None,
                            min_weight: float = MIN_BIN_WEIGHT, where: str = "data", slice_rows: int = 1_000_000):
    """The quantile maps of ``model`` (a :class:`~mambah.nn.pidmodel.PidModel`, its members included)
    onto ``data``'s sWeighted distributions in (P, ETA) bins.

    Args:
        data: the calibration table: the model's conditions and targets and the weight column.
        weight: the sWeight column (``None``: weight 1).
        selection: a pandas query for the rows the model describes; ``"card"`` (default): the
            model's training selection (``training_data.selection`` of its card, e.g. ``hasRich == 1``).
        targets: the targets to correct (default: all of the model's).
        p_bins, eta_bins: bins of equal sWeighted population in P and ETA.
        extra_p_edges: further P edges (MeV/c) inserted among those, where the response changes fast
            inside a bin (just above a Cherenkov threshold: a kaon's PIDK > 5 rate rises from 36% to
            63% across the lowest of 48 bins, 2.6-3.4 GeV/c, and a bin's single map gets the rise wrong).
        split: 0/1 conditions whose state splits the bins too (:attr:`MarginalCorrection.split`);
            ``"auto"`` (default): every condition of the model that holds only 0 and 1 in the data,
            except ``charge`` (for the RICH steps: the radiators' acceptance and threshold codes);
            ``"none"`` or ``[]``: no split.
        repeats: model draws per row (more draws, less noise in the model's quantiles). The model's
            quantiles weight each draw with its row's sWeight, as the data's: the model is evaluated
            on the conditions of the signal, not on those of the signal and the background (with
            weights clipped at 0, the proton RICH step's DLLK > 5 came out 4% too high in bins where
            the background sits at other eta than the signal).
        seed: the model's noise (seed, seed + 1, ...) and the members' bootstrap replicas of the data
            (Poisson(1) counts with seeds ``seed + 1000 k``).
        min_weight: a bin whose sWeighted signal is below this is not corrected.
        slice_rows: rows generated at a time (the model's outputs are kept as float32).
        given: conditional maps, ``{target: given}``: ``target`` is mapped in each bin separately in
            ``classes`` classes of ``given`` (another corrected target, mapped first), of equal
            sWeighted data population (the class edges are the data's quantiles of ``given`` in the
            bin; a model row's class is that of its mapped ``given``). Marginal maps keep the model's
            copula of two targets; a cut on their sum or on both (the kaon chain's ``PIDp > 5`` =
            ``RichDLLk + RichDLLpK > 5``; a proton's ``PIDK > 5`` with ``PIDp - PIDK < 0``) then carries
            its error. With ``RichDLLpK`` given ``RichDLLk``, the joint distribution of the two is the
            data's at the resolution of the classes. A class with less than ``min_weight / classes``
            sWeighted signal is left unmapped (identity).
        classes: the number of classes of a conditional map.
        sums: conditional targets whose map is of ``target + given`` (the sum's distribution in each bin
            becomes the data's exactly; the target is the mapped sum minus the given target), e.g.
            ``RichDLLpK`` so that ``PIDp = RichDLLk + RichDLLpK`` is right.
        logit_offsets: ``{target: condition}``: the target is mapped as ``target + logit(condition)``
            (:mod:`mambah.nn.marginals`): a residual ProbNN step's ``dProbNNk`` with ``SurProbNNk``, so that
            ``logit(ProbNNk)`` in every bin, and with it every cut on ``ProbNNk``, is the data's.

    Returns:
        ``(correction, info)``: the :class:`~mambah.nn.marginals.MarginalCorrection` and the card's
        ``"marginal_correction"`` section (without the command).

    The model's own correction, if it has one, is set aside while the model is evaluated (the map
    is fitted to the raw generator) and restored afterwards: do not generate from the same model
    object in another thread meanwhile.
    """
    given = dict(given or {})
    if given:
        all_t = list(model.targets) if targets is None else list(targets)
        bad = {t: a for t, a in given.items() if t not in all_t or a not in all_t or a in given or t == a}
        if bad:
            raise ConfigurationError(f"conditional maps {bad}: each target and the target it is given must be corrected "
                                     f"targets ({all_t}), and a given target must not be conditional itself")
        if set(sums) - set(given):
            raise ConfigurationError(f"sums {sorted(set(sums) - set(given))}: not conditional targets ({sorted(given)})")
        if int(classes) < 2:
            raise ConfigurationError(f"a conditional map needs at least 2 classes, not {classes}")
    logit_offsets = dict(logit_offsets or {})
    if logit_offsets:
        all_t = list(model.targets) if targets is None else list(targets)
        bad = {t: c for t, c in logit_offsets.items() if t not in all_t or t in given or c not in model.conditions}
        if bad:
            raise ConfigurationError(f"logit offsets {bad}: each must pair an unconditionally corrected target "
                                     f"({[t for t in all_t if t not in given]}) with a condition of model "
                                     f"{model.name!r} ({model.conditions})")
    f = _FitInputs(model, data, weight, selection, targets, p_bins, eta_bins, split, where, extra_p_edges)
    del data
    targets, cond, y_data, w, n = f.targets, f.cond, f.y_data, f.w, f.n
    # per corrected target: its rows' logit offsets (0 without one)
    offsets = {j: clipped_logit(cond[:, model.conditions.index(logit_offsets[t])])
               for j, t in enumerate(targets) if t in logit_offsets}
    p_edges, eta_edges, split, states = f.p_edges, f.eta_edges, f.split, f.states
    k_members = model.n_members
    cols = [model.targets.index(t) for t in targets]
    gen = np.empty((repeats, k_members + 1, n, len(targets)), np.float32)
    corr0 = model.correction
    model.set_correction(None)
    try:
        for r in range(repeats):
            rng = np.random.default_rng(seed + r)
            for a in range(0, n, slice_rows):
                c = cond[a:a + slice_rows].astype(float)
                g = model.generate_variations_array(c, rng, check_range=False) if k_members \
                    else model.generate_array(c, rng, check_range=False)[None]
                gen[r, :, a:a + slice_rows] = g[:, :, cols]
    finally:
        model.set_correction(corr0)
    n_bins = f.n_bins
    L = len(LEVELS)
    plain = [j for j, t in enumerate(targets) if t not in given]  # the unconditionally mapped targets
    pairs = [(targets.index(t), plain.index(targets.index(a))) for t, a in given.items()]  # (column, its given's map)
    gk = np.empty((k_members + 1, n_bins, len(plain), L))
    dk = np.empty_like(gk)
    nc = int(classes)
    ce = np.zeros((k_members + 1, n_bins, len(pairs), nc - 1))
    cgk = np.empty((k_members + 1, n_bins, len(pairs), nc, L))
    cdk = np.empty_like(cgk)
    replica_seeds, boot = f.replicas(seed, k_members)
    skipped, thin_classes = [], []
    for k_bin in range(n_bins):
        rows = f.rows(k_bin)
        ok = f.sum_w[k_bin] >= min_weight
        if not ok and len(rows):
            skipped.append(k_bin)
        wg = np.tile(w[rows], repeats)
        for i, j in enumerate(plain):
            xd = y_data[rows, j].astype(float)
            off_g = None
            if j in offsets:  # the map is of target + logit(condition), on both sides
                xd = xd + offsets[j][rows]
                off_g = np.tile(offsets[j][rows], repeats)
            od = np.argsort(xd, kind="stable") if ok else None
            for m in range(k_members + 1):
                xg = gen[:, m, rows, j].astype(float).ravel()
                if off_g is not None:
                    xg = xg + off_g
                if not ok:  # identity: the same knots on both sides (the model's own quantiles)
                    gk[m, k_bin, i] = dk[m, k_bin, i] = _identity(xg)
                    continue
                gk[m, k_bin, i] = monotone_ecdf_quantiles(xg, wg, LEVELS)
                wd = w[rows] if m == 0 else w[rows] * boot[m - 1][rows]
                dk[m, k_bin, i] = monotone_ecdf_quantiles(xd, wd, LEVELS, order=od)
        for i, (j, ia) in enumerate(pairs):
            ja = plain[ia]
            for m in range(k_members + 1):
                xg = gen[:, m, rows, j].astype(float).ravel()
                if not ok:
                    cgk[m, k_bin, i] = cdk[m, k_bin, i] = _identity(xg)
                    continue
                wd = w[rows] if m == 0 else w[rows] * boot[m - 1][rows]
                ad = y_data[rows, ja].astype(float)
                # the classes: equal sWeighted data population of the given target; the model's rows by
                # their *mapped* given target (as the correction classifies them)
                edges = monotone_ecdf_quantiles(ad, wd, np.arange(1, nc) / nc)
                ce[m, k_bin, i] = edges
                cd = np.searchsorted(edges, ad, side="right")
                ag = map_values(gen[:, m, rows, ja].astype(float).ravel(), strict_knots(gk[m, k_bin, ia], L), dk[m, k_bin, ia])
                cg = np.searchsorted(edges, ag, side="right")
                xd = y_data[rows, j].astype(float)
                xgc = xg
                if targets[j] in sums:  # the sum is mapped: the model's target + its mapped given, the data's sum
                    xgc, xd = xg + ag, xd + ad
                for c in range(nc):
                    sd, sg = cd == c, cg == c
                    if wd[sd].sum() < min_weight / nc or wg[sg].sum() <= 0:
                        cgk[m, k_bin, i, c] = cdk[m, k_bin, i, c] = _identity(xgc[sg] if sg.any() else xgc)
                        if m == 0:
                            thin_classes.append({"bin": int(k_bin), "target": targets[j], "class": c})
                        continue
                    cgk[m, k_bin, i, c] = monotone_ecdf_quantiles(xgc[sg], wg[sg], LEVELS)
                    cdk[m, k_bin, i, c] = monotone_ecdf_quantiles(xd[sd], wd[sd], LEVELS)
    cond = {} if not pairs else dict(given=given, class_edges=ce, cgen=cgk, cdata=cdk, sums=tuple(sums))
    corr = MarginalCorrection([targets[j] for j in plain], p_edges, eta_edges, LEVELS, gk, dk, split, states,
                              **cond, logit_offsets=logit_offsets).compact()
    info = {
        "method": "quantile mapping y = Q_data,b(F_model,b(x)) per target in (P, ETA) bins of equal sWeighted "
                  "population, split by the state of the 0/1 conditions 'split'; both sides sWeighted (the model "
                  "on the data rows' conditions) (mambah.nn.marginals, PIDCorr-style: A. Poluektov, JINST 10 "
                  "(2015) P02011)",
        "file": FILE,
        "targets": targets,
        **f.info(min_weight, skipped, corr.n_bins, replica_seeds),
        "levels": {"n": int(L), "min": float(LEVELS[0]), "max": float(LEVELS[-1])},
        "model_draws_per_row": int(repeats), "seed": int(seed),
    }
    if logit_offsets:
        info["logit_offsets"] = {
            "pairs": logit_offsets,
            "method": "the target mapped as target + logit(condition) (condition clipped to [2^-24, 1 - 2^-24]), "
                      "then minus the offset: the residual ProbNN step's logit(ProbNNx) = logit(SurProbNNx) + "
                      "dProbNNx gets the data's distribution in every bin"}
    if given:
        info["conditional"] = {
            "given": given, "classes": nc, "sums": list(sums),
            "method": "in each bin, the target's quantile map in each of the classes of equal sWeighted data population "
                      "of its given target (data rows by their value, model rows by their mapped value)",
            "unmapped_classes": thin_classes}
    if skipped:
        log.warning("marginal correction of %s: %d of the %d bins with rows have less than %.0f sWeighted signal "
                    "and are not corrected (%.2f%% of the signal)", model.name, len(skipped),
                    info["bins"]["n_bins_with_rows"], min_weight, 100 * info["bins"]["not_corrected_weight_fraction"])
    return corr, info


def fit_flag_calibration(model, data: pd.DataFrame, *, weight: str | None = "sWeight",
                         selection: str | None = "card", targets: list[str] | None = None,
                         p_bins: int = 24, eta_bins: int = 2, split: list[str] | str | None = "auto", seed: int = 0,
                         min_weight: float = MIN_BIN_WEIGHT, max_shift: float = MAX_LOGIT_SHIFT,
                         max_rel_error: float = MAX_REL_ERROR, where: str = "data", slice_rows: int = 1_000_000,
                         extra_p_edges=()):
    """The per-bin logit shifts of a flag classifier (a :class:`~mambah.nn.flags.FlagModel`, its
    members included) that make its sWeighted mean probability in each (P, ETA) bin equal to the
    data's sWeighted flag rate (:class:`~mambah.nn.marginals.FlagCalibration`).

    In bin b and for target t, ``shift`` solves ``sum_i w_i sigmoid(logit P_t(c_i) + shift) =
    sum_i w_i y_it`` over the bin's rows (bisection; the left side is the model's sWeighted rate on
    the signal's conditions, as the quantile maps weight the model's draws). Member k uses its own
    probabilities and a Poisson(1) bootstrap replica of the data (seed ``seed + 1000 k``), so the
    members' spread of a rate is the fit sample's statistical uncertainty.

    The arguments are those of :func:`fit_marginal_correction` (``slice_rows``: rows evaluated at a
    time; the logits are kept as float32, clipped to +-16); besides, a target is left uncorrected in
    a bin whose data give its rate r (or 1 - r, the rarer outcome) only to a relative error above
    ``max_rel_error`` (the error of signed sWeights, ``sqrt(sum w^2 (y - r)^2) / sum w``; listed in
    the card's ``bins.imprecise``: the model's rate stands there), and a bin whose data would need
    a shift beyond ``±max_shift`` (a rate the model cannot reach by reweighting its odds by
    ``e^max_shift``, e.g. a negative sWeighted rate) gets ``±max_shift`` and is listed in the card
    (``bins.clipped``, with a warning).

    Returns:
        ``(calibration, info)``: the :class:`~mambah.nn.marginals.FlagCalibration` and the card's
        ``"marginal_correction"`` section (without the command).
    """
    from scipy.special import expit, logit

    f = _FitInputs(model, data, weight, selection, targets, p_bins, eta_bins, split, where, extra_p_edges)
    del data
    k_members = model.n_members
    cols = [model.targets.index(t) for t in f.targets]
    corr0 = model.correction
    model.set_correction(None)
    try:  # the logits of every member, in slices of rows (the conditions as float64 only a slice at a time)
        lg = np.empty((k_members + 1, f.n, len(cols)), np.float32)
        for m in range(k_members + 1):
            mm = model if m == 0 else model.member(m)
            for a in range(0, f.n, slice_rows):
                pr = mm.probabilities(f.cond[a:a + slice_rows].astype(float), check_range=False)[:, cols]
                lg[m, a:a + slice_rows] = logit(np.clip(pr, 1e-7, 1 - 1e-7))
    finally:
        model.set_correction(corr0)
    w, y, n_bins = f.w, f.y_data.astype(float), f.n_bins
    replica_seeds, boot = f.replicas(seed, k_members)
    ok = f.sum_w >= min_weight
    shift = np.zeros((k_members + 1, n_bins, len(f.targets)))
    clipped, imprecise = [], []
    rates = {t: {"bin": [], "data": [], "data_error": [], "model": []} for t in f.targets}
    for k_bin in np.flatnonzero(ok):
        rows = f.rows(k_bin)
        precise = None  # the targets the nominal's data determine well enough (members follow the nominal)
        for m in range(k_members + 1):
            wm = w[rows] if m == 0 else w[rows] * boot[m - 1][rows]
            target = (wm[:, None] * y[rows]).sum(axis=0) / wm.sum()
            x = lg[m][rows].astype(float)
            lo, hi = np.full(len(cols), -max_shift), np.full(len(cols), max_shift)

            def rate(d):
                return (wm[:, None] * expit(x + d)).sum(axis=0) / wm.sum()

            r_lo, r_hi = rate(lo), rate(hi)
            for _ in range(40):  # bisection of the (weighted) rate, increasing in the shift
                mid = 0.5 * (lo + hi)
                below = rate(mid) < target
                lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
            d = 0.5 * (lo + hi)
            d = np.where(target <= r_lo, -max_shift, np.where(target >= r_hi, max_shift, d))
            if m == 0:
                raw = rate(np.zeros(len(cols)))
                # the data rate's error with signed weights: sqrt(sum w^2 (y - r)^2) / sum w
                err = np.sqrt((wm[:, None] ** 2 * (y[rows] - target) ** 2).sum(axis=0)) / wm.sum()
                rare = np.minimum(target, 1 - target)
                precise = (rare > 0) & (err <= max_rel_error * rare)
                for j, t in enumerate(f.targets):
                    rates[t]["bin"].append(int(k_bin))
                    rates[t]["data"].append(float(target[j]))
                    rates[t]["data_error"].append(float(err[j]))
                    rates[t]["model"].append(float(raw[j]))
                    if not precise[j]:
                        imprecise.append({"bin": int(k_bin), "target": t, "data_rate": float(target[j]),
                                          "data_error": float(err[j]), "model_rate": float(raw[j])})
                    elif abs(d[j]) >= max_shift:
                        clipped.append({"bin": int(k_bin), "target": t, "data_rate": float(target[j]),
                                        "shift": float(d[j])})
            shift[m, k_bin] = np.where(precise, d, 0.0)
    skipped = [int(k) for k in np.flatnonzero(~ok & (np.diff(f.starts) > 0))]
    cal = FlagCalibration(f.targets, f.p_edges, f.eta_edges, shift, f.split, f.states).compact()
    common = f.info(min_weight, skipped, cal.n_bins, replica_seeds)
    common["bins"].update(max_shift=float(max_shift), clipped=clipped, max_rel_error=float(max_rel_error),
                          imprecise=imprecise)
    diffs = {t: np.abs(np.subtract(r["data"], r["model"])) for t, r in rates.items()}
    pulls = {t: np.subtract(r["data"], r["model"]) / np.maximum(r["data_error"], 1e-12) for t, r in rates.items()}
    info = {
        "method": "logit shift P' = sigmoid(logit P + shift_b) per target in (P, ETA) bins of equal sWeighted "
                  "population (split by the state of the 0/1 conditions 'split'), solving sum w P' = sum w y over "
                  "the bin's rows: the sWeighted model rate on the signal's conditions equals the sWeighted data "
                  "rate (mambah.nn.marginals.FlagCalibration)",
        "kind": FlagCalibration.file_kind,
        "file": FILE,
        "targets": f.targets,
        **common,
        "before": {t: {"max_abs_rate_diff": float(d.max()) if len(d) else 0.0,
                       "mean_abs_rate_diff": float(d.mean()) if len(d) else 0.0,
                       "chi2": float(np.sum(pulls[t] ** 2)), "ndf": int(len(d)),
                       "note": "the uncalibrated model's sWeighted rate in each corrected bin against the fit data's "
                               "(pull = (data - model) / data_error): how far the classifier was from its data",
                       "bins": rates[t]} for t, d in diffs.items()},
        "seed": int(seed),
    }
    for n_, what in ((len(skipped), f"bins have less than {min_weight:.0f} sWeighted signal and are not corrected"),
                     (len(imprecise), f"(bin, target) rates are known to worse than {100 * max_rel_error:.0f}% in the "
                                      "data and are not corrected"),
                     (len(clipped), f"(bin, target) rates need a shift beyond +-{max_shift:g} (clipped)")):
        if n_:
            log.warning("flag calibration of %s: %d %s", model.name, n_, what)
    return cal, info


def _identity(x: np.ndarray) -> np.ndarray:
    """Knots of an identity map: the model's own (unweighted) quantiles, or the levels if no rows."""
    if not len(x):
        return np.asarray(LEVELS, float).copy()
    return np.quantile(x, LEVELS)


def write_marginal_correction(path, correction: MarginalCorrection, info: dict) -> Path:
    """Write ``correction`` into the model directory ``path`` (``marginals.npz``, card section
    ``"marginal_correction"``, hashes), atomically (:func:`mambah.modeldir.update_model_dir`)."""
    from mambah.modeldir import update_model_dir

    return update_model_dir(path, correction.save, {"marginal_correction": info})
