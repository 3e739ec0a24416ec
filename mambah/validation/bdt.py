"""The classifier two-sample score ("BDT KS"): how well can a boosted tree tell generated from real?

Method (the "independent player" of the LHCb Lamarr/PIDGAN validations, Maevskiy et al.,
J. Phys. Conf. Ser. 1525 (2020) 012097, arXiv:1905.11719, Sect. 4): train a gradient-boosted
decision-tree classifier (max_depth 5, max_leaf_nodes 14) to separate the reference sample (label 0)
from the generated sample (label 1) on the conditions and targets; on held-out rows, compare the
distributions of the classifier output for the two samples with the two-sample
Kolmogorov-Smirnov distance. 0 = the classifier cannot tell them apart, 1 = fully separable.
The weighted ROC AUC of the same held-out outputs is reported beside it (0.5 = indistinguishable).

Weights, and what the classifier does with negative ones
--------------------------------------------------------
Each repeat splits both samples at random into a training part and a test part
(``test_fraction``). The classifier is scikit-learn's ``HistGradientBoostingClassifier``. Its
training weights are the per-row weights of each sample, rescaled per class so that both classes
have the same total weight (class balance by weight *sums*, not row counts). The features are
binned into at most 255 unweighted quantile bins of the training rows before the fit (the same
binning scikit-learn does, but without weighted percentiles, which signed weights make
ill-defined), and with signed weights at most 200,000 training rows are used per fit
(:data:`SIGNED_MAX_TRAIN_ROWS`; scikit-learn cannot subsample larger sets with negative weights).

* ``train_weights="signed"`` (default): the signed sWeights are passed as they are. Histogram
  gradient boosting multiplies each row's gradient and hessian by its weight and sums them per
  histogram bin, so a background row with a negative weight cancels, bin by bin, the background
  rows with positive weights: the trees are grown on the sWeighted (signal-only) estimate of the
  log-loss gradient. Where signal and background nearly cancel, the weighted hessian sum of a
  leaf is small (even negative) and its value ``-G / (H + λ)`` would explode; the L2 penalty
  ``λ = l2_regularization = 100`` (in units of rows, since the weights are normalised to the row
  count) keeps every leaf finite. Measured on the real calibration protons (5 repeats, two seeds):
  with λ = 1 the score of a DLLp drawn without conditioning scattered between 0.07 and 0.21 over
  repeats; with λ = 100 it is 0.25 ± 0.01, while the null stays at 0.02. Averaging over
  ``n_repeats`` independent splits and seeds tames the remaining noise. On the real Λc→pKπ calibration protons (43% negative sWeights) this
  keeps the classifier's power (see ``examples/validation_sanity_real_data.py``), while
  ``sklearn.ensemble.GradientBoostingClassifier`` with the same signed weights loses it.
* ``train_weights="clipped"``: negative weights are set to zero for *training only* (a legal,
  positive-weight problem whose optimum is biased towards signal-plus-background), and the test
  part is still *evaluated* with the signed weights. The score stays an honest sWeighted
  comparison; only the classifier's power may be lower. Use it as a cross-check.

The evaluation (KS distance, AUC) always uses the signed weights of the test rows, with the
weighted ECDFs and the weighted Mann-Whitney AUC of :mod:`mambah.validation.stats`.

A generated sample must carry the sWeight of the reference row whose conditions produced it
(``gen_weight``). Unweighted, its conditions follow signal *plus* background, and on the real
calibration sample even an exact copy of the data then scores about 0.4.

Statistical floor: :func:`bdt_ks_null` scores two disjoint halves of the reference against each
other with the same procedure; a generated sample scoring within that floor is as good as the
reference statistics can tell.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mambah.errors import ConfigurationError, DataError
from mambah.progress import progress
from mambah.validation.inputs import Sample, pair_warnings, prepare_pair, prepare_sample
from mambah.validation.stats import effective_size, weighted_auc, weighted_ks

log = logging.getLogger(__name__)

__all__ = ["BDTKSResult", "bdt_ks_score", "bdt_ks_null", "score_samples", "check_settings", "CLASSIFIER_DEFAULTS"]

#: hyperparameters of the classifier (max_depth / max_leaf_nodes as in the original method)
CLASSIFIER_DEFAULTS = {
    "max_depth": 5,
    "max_leaf_nodes": 14,
    "learning_rate": 0.1,
    "max_iter": 100,
    "l2_regularization": 100.0,
    "min_samples_leaf": 20,
}

#: At most this many training rows per fit with signed weights: above 200,000 rows scikit-learn's
#: histogram binning subsamples rows with the weights as probabilities, which negative weights
#: cannot be (``HistGradientBoostingClassifier`` raises). 200k rows train a 14-leaf BDT amply; the
#: evaluation still uses every held-out row.
SIGNED_MAX_TRAIN_ROWS = 200_000

#: bins per feature of the classifier's input (scikit-learn's maximum, 255)
N_FEATURE_BINS = 255

#: fewest rows per sample (half of them train, half test; a leaf needs >= 20 rows)
MIN_ROWS = 100


@dataclass
class BDTKSResult:
    """Outcome of :func:`bdt_ks_score`.

    Attributes:
        bdt_ks: mean over repeats of the weighted KS distance between the held-out classifier
            outputs of reference and generated (0 = indistinguishable, 1 = separable).
        bdt_ks_std: standard deviation over repeats (0 with one repeat).
        auc: mean weighted ROC AUC (0.5 = indistinguishable; generated is the positive class).
        auc_std: its standard deviation over repeats.
        bdt_ks_repeats, auc_repeats: the per-repeat values.
        columns: the features the classifier saw.
        n_ref, n_gen: rows used; n_eff_ref, n_eff_gen: Kish effective sizes of the weights.
        train_weights: "signed" or "clipped".
        seed, n_repeats, test_fraction, classifier: the settings.
        warnings: legal but suspicious inputs (e.g. weighted reference, unweighted generated).
        scores: held-out outputs of the first repeat for plots: dict with ``ref``, ``ref_w``,
            ``gen``, ``gen_w`` arrays (not part of :meth:`to_dict`).
    """

    bdt_ks: float
    bdt_ks_std: float
    auc: float
    auc_std: float
    bdt_ks_repeats: list[float]
    auc_repeats: list[float]
    columns: list[str]
    n_ref: int
    n_gen: int
    n_eff_ref: float
    n_eff_gen: float
    train_weights: str
    seed: int
    n_repeats: int
    test_fraction: float
    classifier: dict
    warnings: list[str] = field(default_factory=list)
    scores: dict = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        """All numbers and settings as plain JSON-able Python types (no per-row arrays)."""
        return {
            "bdt_ks": self.bdt_ks, "bdt_ks_std": self.bdt_ks_std,
            "auc": self.auc, "auc_std": self.auc_std,
            "bdt_ks_repeats": list(self.bdt_ks_repeats), "auc_repeats": list(self.auc_repeats),
            "columns": list(self.columns),
            "n_ref": self.n_ref, "n_gen": self.n_gen,
            "n_eff_ref": self.n_eff_ref, "n_eff_gen": self.n_eff_gen,
            "train_weights": self.train_weights, "seed": self.seed, "n_repeats": self.n_repeats,
            "test_fraction": self.test_fraction, "classifier": dict(self.classifier),
            "warnings": list(self.warnings),
        }

    @classmethod
    def pooled(cls, results: Sequence[BDTKSResult]) -> BDTKSResult:
        """One result from the fits of several, e.g. one per generated sample (noise seed) of a model.

        One generated sample is itself a random draw: on ~9k rows of the real proton calibration
        sample, the shipped model's BDT-KS scattered by ~0.01 from one noise seed to the next however
        many classifier fits were averaged. Pooling the fits of several draws averages that noise
        too. The mean and spread are over all pooled fits; ``seed`` and the settings are the first
        result's, ``n_repeats`` the number of fits, ``warnings`` the union.
        """
        results = list(results)
        if not results:
            raise ValueError("pooled() needs at least one result")
        ks = np.concatenate([np.asarray(r.bdt_ks_repeats, dtype=float) for r in results])
        auc = np.concatenate([np.asarray(r.auc_repeats, dtype=float) for r in results])
        first = results[0]
        warns = list(dict.fromkeys(w for r in results for w in r.warnings))
        return dataclasses.replace(first, **_summary(ks, auc), n_repeats=len(ks), warnings=warns)

    def __str__(self) -> str:
        return (f"BDT KS = {self.bdt_ks:.4f} ± {self.bdt_ks_std:.4f}, AUC = {self.auc:.4f} ± {self.auc_std:.4f} "
                f"({self.n_repeats} repeats, {self.n_ref} ref / {self.n_gen} gen rows)")


def _summary(ks: np.ndarray, auc: np.ndarray) -> dict:
    """Means, spreads (0 for one value) and the per-fit values of the KS and AUC of several fits."""
    def sd(x):
        return float(x.std(ddof=1)) if len(x) > 1 else 0.0

    return {"bdt_ks": float(ks.mean()), "bdt_ks_std": sd(ks), "auc": float(auc.mean()), "auc_std": sd(auc),
            "bdt_ks_repeats": [float(v) for v in ks], "auc_repeats": [float(v) for v in auc]}


def _split(n: int, test_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    perm = rng.permutation(n)
    n_test = int(round(n * test_fraction))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _bin_edges(X: np.ndarray, n_bins: int = N_FEATURE_BINS) -> list[np.ndarray]:
    """Unweighted quantile bin edges of every column of the training rows.

    The classifier sees each feature as its bin number. This is exactly the binning that
    ``HistGradientBoostingClassifier`` does itself (quantiles into at most 255 bins), but done
    *without* the sample weights: scikit-learn would otherwise take weighted percentiles, which
    are ill-defined for signed sWeights. With at most 255 distinct values per feature its own
    binning is then the identity.
    """
    q = np.linspace(0, 1, n_bins + 1)[1:-1]
    return [np.unique(np.quantile(X[:, j], q)) for j in range(X.shape[1])]


def _apply_bins(X: np.ndarray, edges: list[np.ndarray]) -> np.ndarray:
    out = np.empty(X.shape, dtype=np.float64)
    for j, e in enumerate(edges):
        out[:, j] = np.searchsorted(e, X[:, j], side="right")
    return out


def _balanced(w: np.ndarray, total: float, what: str) -> np.ndarray:
    s = float(w.sum())
    if not np.isfinite(s) or s <= 0:
        raise DataError(
            f"the training part of the {what} sample has a weight sum of {s:.4g} <= 0 after a random split: "
            "the sample is too small or its weights too noisy for the classifier; give more rows"
        )
    return w * (total / s)


def score_samples(
    ref: Sample,
    gen: Sample,
    columns: list[str],
    *,
    seed: int,
    n_repeats: int,
    test_fraction: float,
    train_weights: str,
    classifier: dict,
    max_train_rows: int | None,
    show_progress: bool,
    desc: str,
    n_threads: int | None = None,
    paired: bool = False,
) -> BDTKSResult:
    """The BDT-KS score of two prepared samples (the procedure of the module docstring).

    :func:`bdt_ks_score` and :func:`bdt_ks_null` check and prepare their inputs, then call this;
    call it directly to score samples already prepared (:func:`mambah.validation.inputs.prepare_pair`)
    with settings already checked (:func:`check_settings`), as :func:`mambah.validation.report.validate`
    does for each generated draw, the null and the cross-check.

    Args:
        ref, gen: the reference and generated :class:`~mambah.validation.inputs.Sample` (data and
            per-row weights).
        columns: the features the classifier sees.
        seed: seed of the splits and of the classifier (repeat r uses ``[seed, 7919, r]``).
        n_repeats: independent splits and fits; the score is their mean, ``bdt_ks_std`` their spread.
        test_fraction: fraction of each sample held out for the KS distance and the AUC.
        train_weights: ``"signed"`` or ``"clipped"`` (negative weights set to 0 for training only).
        classifier: ``HistGradientBoostingClassifier`` options (the output of :func:`check_settings`).
        max_train_rows: at most this many training rows per fit (half per sample); ``None``: all
            (with signed weights at most :data:`SIGNED_MAX_TRAIN_ROWS`).
        show_progress: a tqdm bar over the repeats, labelled ``desc``.
        n_threads: OpenMP threads of the classifier (``None``: the library's default).
        paired: row i of ``gen`` is the twin of row i of ``ref`` (same conditions): both are split
            alike, so no twin is in the training part while the other is tested.

    Returns:
        A :class:`BDTKSResult`.

    Raises:
        DataError: a training or test part with a weight sum <= 0 after a split.
    """
    import contextlib

    from sklearn.ensemble import HistGradientBoostingClassifier

    if n_threads is not None:
        from threadpoolctl import threadpool_limits

        limit = threadpool_limits(limits=int(n_threads), user_api="openmp")
    else:
        limit = contextlib.nullcontext()
    with limit:
        return _score_loop(HistGradientBoostingClassifier, ref, gen, columns, seed=seed, n_repeats=n_repeats,
                           test_fraction=test_fraction, train_weights=train_weights, classifier=classifier,
                           max_train_rows=max_train_rows, show_progress=show_progress, desc=desc, paired=paired)


def _score_loop(HistGradientBoostingClassifier, ref, gen, columns, *, seed, n_repeats, test_fraction, train_weights,
                classifier, max_train_rows, show_progress, desc, paired=False) -> BDTKSResult:

    Xr, Xg = ref.values(columns), gen.values(columns)
    ks_list, auc_list, scores = [], [], {}
    for r in progress(range(n_repeats), enabled=show_progress, desc=desc, unit="fit"):
        rng = np.random.default_rng([int(seed), 7919, r])
        tr_r, te_r = _split(len(Xr), test_fraction, rng)
        tr_g, te_g = (tr_r, te_r) if paired else _split(len(Xg), test_fraction, rng)
        cap = max_train_rows
        if train_weights == "signed" and (np.any(ref.weights < 0) or np.any(gen.weights < 0)):
            cap = SIGNED_MAX_TRAIN_ROWS if cap is None else min(cap, SIGNED_MAX_TRAIN_ROWS)
        if cap is not None:
            # subsample the training rows of each class to at most cap / 2
            half = max(1, cap // 2)
            if len(tr_r) > half:
                tr_r = np.sort(rng.choice(tr_r, half, replace=False))
            if paired:
                tr_g = tr_r
            elif len(tr_g) > half:
                tr_g = np.sort(rng.choice(tr_g, half, replace=False))
        wr, wg = ref.weights[tr_r], gen.weights[tr_g]
        if train_weights == "clipped":
            wr, wg = np.clip(wr, 0, None), np.clip(wg, 0, None)
        n_tr = len(tr_r) + len(tr_g)
        w = np.concatenate([_balanced(wr, n_tr / 2, "reference"), _balanced(wg, n_tr / 2, "generated")])
        X = np.concatenate([Xr[tr_r], Xg[tr_g]])
        y = np.concatenate([np.zeros(len(tr_r)), np.ones(len(tr_g))])
        edges = _bin_edges(X)
        clf = HistGradientBoostingClassifier(
            **classifier, early_stopping=False, random_state=int(rng.integers(2**31 - 1))
        )
        clf.fit(_apply_bins(X, edges), y, sample_weight=w)
        sr = clf.predict_proba(_apply_bins(Xr[te_r], edges))[:, 1]
        sg = clf.predict_proba(_apply_bins(Xg[te_g], edges))[:, 1]
        wr_te, wg_te = ref.weights[te_r], gen.weights[te_g]
        for what, ww in (("reference", wr_te), ("generated", wg_te)):
            if ww.sum() <= 0:
                raise DataError(
                    f"the test part of the {what} sample has a weight sum of {ww.sum():.4g} <= 0 after a random "
                    "split: the sample is too small or its weights too noisy; give more rows"
                )
        ks_list.append(weighted_ks(sr, sg, wr_te, wg_te))
        auc_list.append(weighted_auc(sr, sg, wr_te, wg_te))
        if r == 0:
            scores = {"ref": sr, "ref_w": wr_te, "gen": sg, "gen_w": wg_te}
        log.debug("repeat %d: KS %.4f AUC %.4f", r, ks_list[-1], auc_list[-1])
    return BDTKSResult(
        **_summary(np.asarray(ks_list), np.asarray(auc_list)),
        columns=list(columns), n_ref=len(ref), n_gen=len(gen),
        n_eff_ref=effective_size(ref.weights), n_eff_gen=effective_size(gen.weights),
        train_weights=train_weights, seed=int(seed), n_repeats=int(n_repeats),
        test_fraction=float(test_fraction), classifier=dict(classifier), scores=scores,
    )


def check_settings(n_repeats, test_fraction, train_weights, classifier_options) -> dict:
    """Check the BDT-KS settings and return the classifier's options (:data:`CLASSIFIER_DEFAULTS`
    updated with ``classifier_options``), for :func:`score_samples`.

    Raises:
        ConfigurationError: ``n_repeats < 1``, ``test_fraction`` outside [0.05, 0.95],
            ``train_weights`` not ``"signed"``/``"clipped"``, or an unknown classifier option.
    """
    if int(n_repeats) < 1:
        raise ConfigurationError(f"n_repeats must be >= 1, not {n_repeats!r}")
    if not 0.05 <= float(test_fraction) <= 0.95:
        raise ConfigurationError(f"test_fraction must be in [0.05, 0.95], not {test_fraction!r}")
    if train_weights not in ("signed", "clipped"):
        raise ConfigurationError(f"train_weights must be 'signed' or 'clipped', not {train_weights!r}")
    clf = dict(CLASSIFIER_DEFAULTS)
    unknown = set(classifier_options or {}) - {
        "max_depth", "max_leaf_nodes", "learning_rate", "max_iter", "l2_regularization", "min_samples_leaf",
        "max_bins",
    }
    if unknown:
        raise ConfigurationError(f"unknown classifier options {sorted(unknown)}; known: {sorted(CLASSIFIER_DEFAULTS)}")
    clf.update(classifier_options or {})
    return clf


def bdt_ks_score(
    ref: pd.DataFrame,
    gen: pd.DataFrame,
    columns: Sequence[str],
    ref_weight=None,
    gen_weight=None,
    seed: int = 0,
    *,
    n_repeats: int = 3,
    test_fraction: float = 0.5,
    train_weights: str = "signed",
    classifier_options: dict | None = None,
    max_train_rows: int | None = None,
    drop_nonfinite: bool = False,
    min_rows: int = MIN_ROWS,
    show_progress: bool = False,
    n_threads: int | None = 1,
    paired: bool = False,
) -> BDTKSResult:
    """Classifier two-sample score of ``gen`` against ``ref`` (the "BDT KS"; see the module doc).

    Args:
        ref: the reference sample (e.g. sWeighted calibration data).
        gen: the generated sample.
        columns: the features the classifier sees: conditions and targets.
        ref_weight, gen_weight: a column name, an array of per-row weights, or None (weight 1).
            Signed sWeights are allowed; each sample's total must be positive. The generated
            sample should carry the sWeight of the reference row that gave its conditions.
        seed: fixes the splits and the classifier; the same seed gives the same numbers.
        n_repeats: independent random splits/fits; the result is their mean and spread.
        test_fraction: fraction of each sample held out for the evaluation.
        train_weights: "signed" (default) or "clipped" (negative weights set to zero in training
            only; the evaluation always uses the signed weights).
        classifier_options: overrides of :data:`CLASSIFIER_DEFAULTS`.
        max_train_rows: at most this many training rows (half per class) for very large samples.
        drop_nonfinite: drop rows with NaN/inf instead of refusing them.
        min_rows: refuse samples with fewer rows.
        show_progress: a tqdm bar over the repeats.
        n_threads: OpenMP threads of the classifier (default 1; None = all cores). One thread
            makes the numbers bitwise reproducible on any machine, and on a machine shared with
            other jobs it is much faster than OpenMP threads spinning for busy cores (measured:
            a 10^6-row report took 84 s with 1 thread and 300 s with 2 at load 13 on 2 cores).
        paired: row ``i`` of ``gen`` was generated from the conditions of row ``i`` of ``ref``
            (the usual way to validate a conditional model: each generated row carries its data
            row's conditions and sWeight). Both samples are then split with ONE permutation, so
            a row and its twin are always on the same side. With independent splits the
            classifier learns which *condition values* happen to sit in which class's training
            half; a twin of a training row then looks like the other class in the test half,
            which biases the score upwards (AUC below 0.5) for every model alike.

    Returns:
        :class:`BDTKSResult` with ``.bdt_ks``, ``.auc`` and their spreads over repeats.

    Raises:
        MissingColumnError: a column is absent from one sample (the message names which).
        DataError: NaN/inf (unless dropped), weight sum <= 0, all weights zero, too few rows.

    Example:
        >>> res = bdt_ks_score(data, generated, ["P", "ETA", "nLongTracks", "DLLp"],
        ...                    ref_weight="sWeight", gen_weight="sWeight")  # doctest: +SKIP
        >>> print(res.bdt_ks, res.auc)  # doctest: +SKIP
    """
    clf = check_settings(n_repeats, test_fraction, train_weights, classifier_options)
    columns = list(columns)
    r, g = prepare_pair(ref, gen, columns, ref_weight, gen_weight, drop_nonfinite=drop_nonfinite, min_rows=min_rows)
    warns = pair_warnings(r, g)
    for w in warns:
        log.warning(w)
    if paired and drop_nonfinite:
        raise ConfigurationError("paired=True cannot drop non-finite rows (it would misalign the twins): clean both samples first")
    if paired and len(r.weights) != len(g.weights):
        raise DataError(
            f"paired=True needs samples of equal length (row i of gen generated from row i of ref); "
            f"got {len(r.weights)} reference and {len(g.weights)} generated rows"
            + (" after dropping non-finite rows" if drop_nonfinite else "")
        )
    res = score_samples(r, g, columns, seed=seed, n_repeats=n_repeats, test_fraction=test_fraction,
                         train_weights=train_weights, classifier=clf, max_train_rows=max_train_rows,
                         show_progress=show_progress, desc="BDT KS", n_threads=n_threads, paired=paired)
    res.warnings = warns
    return res


def bdt_ks_null(
    ref: pd.DataFrame,
    columns: Sequence[str],
    ref_weight=None,
    seed: int = 0,
    *,
    n_repeats: int = 3,
    test_fraction: float = 0.5,
    train_weights: str = "signed",
    classifier_options: dict | None = None,
    max_train_rows: int | None = None,
    drop_nonfinite: bool = False,
    min_rows: int = MIN_ROWS,
    show_progress: bool = False,
    n_threads: int | None = 1,
) -> BDTKSResult:
    """The statistical floor: the reference scored against a disjoint part of itself.

    The reference is split at random into two halves (seeded), which are scored against each
    other with exactly the procedure of :func:`bdt_ks_score`. Each half has half the rows of the
    reference, so for a generated sample as large as the reference this floor is conservative
    (a KS fluctuation scales like ``1/sqrt(n_eff)``).
    """
    clf = check_settings(n_repeats, test_fraction, train_weights, classifier_options)
    columns = list(columns)
    r = prepare_sample(ref, columns, ref_weight, name="reference", drop_nonfinite=drop_nonfinite,
                       min_rows=2 * min_rows)
    rng = np.random.default_rng([int(seed), 104729])
    perm = rng.permutation(len(r))
    a, b = np.sort(perm[: len(r) // 2]), np.sort(perm[len(r) // 2:])
    halves = []
    for idx, name in ((a, "reference half A"), (b, "reference half B")):
        w = r.weights[idx]
        if w.sum() <= 0:
            raise DataError(f"{name} has a weight sum of {w.sum():.4g} <= 0: the reference is too small for a null test")
        halves.append(Sample(data=r.data.iloc[idx].reset_index(drop=True), weights=w, weighted=r.weighted, name=name))
    return score_samples(halves[0], halves[1], columns, seed=seed, n_repeats=n_repeats,
                          test_fraction=test_fraction, train_weights=train_weights, classifier=clf,
                          max_train_rows=max_train_rows, show_progress=show_progress, desc="BDT KS null",
                          n_threads=n_threads)
