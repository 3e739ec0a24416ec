"""The classifier score (BDT KS) and its statistics: known answers on seeded toy samples.

Tolerances: under the null hypothesis the held-out classifier outputs of the two samples are
independent draws from one distribution (the classifier was fitted on other rows), so their KS
distance follows the two-sample Kolmogorov distribution: P(D > c(a) sqrt((n+m)/(n m))) <= a,
with c(0.001) = 1.949 (ties from the trees' discrete outputs only make D smaller). For weighted
samples n and m are Kish's effective sizes.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from mambah.errors import DataError, MissingColumnError
from mambah.validation import bdt_ks_null, bdt_ks_score, effective_size, weighted_auc, weighted_ks
from mambah.validation.stats import weighted_ecdf, weighted_quantiles

C_001 = 1.949  # Kolmogorov critical value at 0.1 %
COLS = ["p", "eta", "ntr", "dll"]
FAST = {"max_iter": 40}


def ks_critical(n: float, m: float, c: float = C_001) -> float:
    return c * np.sqrt((n + m) / (n * m))


def toy(n: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    """A conditional toy: dll depends on p, eta and ntr."""
    rng = np.random.default_rng(seed)
    p = rng.lognormal(10, 0.6, n)
    eta = rng.uniform(2, 5, n)
    ntr = rng.poisson(80, n).astype(float)
    dll = 0.3 * np.log(p) + 2 * (eta - 3.5) - 0.02 * ntr + rng.normal(0, 1, n) + shift
    return pd.DataFrame({"p": p, "eta": eta, "ntr": ntr, "dll": dll})


# ---------------------------------------------------------------- weighted statistics


def test_weighted_ks_matches_scipy_unweighted():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1, 700), rng.normal(0.2, 1.1, 500)
    assert weighted_ks(a, b) == pytest.approx(sps.ks_2samp(a, b).statistic, abs=1e-12)
    # ties
    a, b = rng.integers(0, 5, 300).astype(float), rng.integers(0, 6, 400).astype(float)
    assert weighted_ks(a, b) == pytest.approx(sps.ks_2samp(a, b).statistic, abs=1e-12)


def test_weighted_ks_integer_weights_equal_repetition():
    rng = np.random.default_rng(4)
    a, b = rng.normal(0, 1, 200), rng.normal(0.3, 1, 150)
    wa, wb = rng.integers(1, 4, 200), rng.integers(1, 4, 150)
    ref = sps.ks_2samp(np.repeat(a, wa), np.repeat(b, wb)).statistic
    assert weighted_ks(a, b, wa, wb) == pytest.approx(ref, abs=1e-12)


def test_weighted_auc_matches_sklearn_for_positive_weights():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(5)
    s0, s1 = rng.normal(0, 1, 400), rng.normal(0.5, 1, 300)
    s0[:50] = np.round(s0[:50], 1)  # some ties
    s1[:50] = np.round(s1[:50], 1)
    w0, w1 = rng.uniform(0.1, 2, 400), rng.uniform(0.1, 2, 300)
    y = np.r_[np.zeros(400), np.ones(300)]
    ref = roc_auc_score(y, np.r_[s0, s1], sample_weight=np.r_[w0, w1])
    assert weighted_auc(s0, s1, w0, w1) == pytest.approx(ref, abs=1e-12)


def test_signed_weights_cancel_background_in_ks():
    """Background + (background with weight -1) adds nothing: KS of signal vs itself is 0."""
    rng = np.random.default_rng(6)
    sig = rng.normal(0, 1, 300)
    bkg = rng.uniform(-5, 5, 200)
    x = np.r_[sig, bkg, bkg]
    w = np.r_[np.ones(300), np.ones(200), -np.ones(200)]
    assert weighted_ks(x, sig, w, None) == pytest.approx(0.0, abs=1e-12)
    assert weighted_auc(x, sig, w, None) == pytest.approx(0.5, abs=1e-12)


def test_ecdf_quantiles_and_effective_size():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    w = np.array([1.0, 1.0, 1.0, 1.0])
    assert weighted_ecdf(x, w, [0.5, 2.0, 4.0]).tolist() == [0.0, 0.5, 1.0]
    assert weighted_quantiles(x, [0.25, 0.5, 1.0], w).tolist() == [1.0, 2.0, 4.0]
    assert effective_size(np.ones(10)) == pytest.approx(10)
    assert effective_size(np.r_[np.ones(5), np.zeros(5)]) == pytest.approx(5)


def test_weighted_stats_refuse_nonpositive_sum():
    with pytest.raises(DataError, match="sum"):
        weighted_ks([1.0, 2.0], [1.0, 2.0], [1.0, -1.0], None)


# ---------------------------------------------------------------- the classifier score


@pytest.fixture(scope="module")
def ref_df() -> pd.DataFrame:
    return toy(3000, seed=1)


def test_null_within_statistical_fluctuation(ref_df):
    gen = toy(3000, seed=2)
    res = bdt_ks_score(ref_df, gen, COLS, seed=0, n_repeats=2, classifier_options=FAST, n_threads=1)
    crit = ks_critical(1500, 1500)
    assert all(v < crit for v in res.bdt_ks_repeats), (res, crit)
    assert abs(res.auc - 0.5) < 0.05
    assert len(res.bdt_ks_repeats) == 2 and res.bdt_ks_std >= 0


def test_shifted_target_scores_clearly_worse(ref_df):
    gen = toy(3000, seed=2, shift=0.4)
    res = bdt_ks_score(ref_df, gen, COLS, seed=0, n_repeats=2, classifier_options=FAST, n_threads=1)
    assert res.bdt_ks > 2 * ks_critical(1500, 1500), res
    assert res.auc > 0.55


def test_shuffled_targets_score_clearly_worse(ref_df):
    """Targets permuted across rows keep every marginal but destroy the conditioning."""
    gen = toy(3000, seed=2)
    gen["dll"] = np.random.default_rng(9).permutation(gen["dll"].to_numpy())
    # marginals are identical up to noise ...
    assert weighted_ks(gen["dll"], ref_df["dll"]) < ks_critical(3000, 3000)
    # ... but the classifier sees the broken correlations
    res = bdt_ks_score(ref_df, gen, COLS, seed=0, n_repeats=2, classifier_options=FAST, n_threads=1)
    assert res.bdt_ks > 2 * ks_critical(1500, 1500), res


def test_deterministic_for_a_seed(ref_df):
    gen = toy(1000, seed=2, shift=0.2)
    a = bdt_ks_score(ref_df, gen, COLS, seed=11, n_repeats=2, classifier_options=FAST, n_threads=1)
    b = bdt_ks_score(ref_df, gen, COLS, seed=11, n_repeats=2, classifier_options=FAST, n_threads=1)
    c = bdt_ks_score(ref_df, gen, COLS, seed=12, n_repeats=2, classifier_options=FAST, n_threads=1)
    assert a.bdt_ks_repeats == b.bdt_ks_repeats and a.auc_repeats == b.auc_repeats
    assert a.bdt_ks_repeats != c.bdt_ks_repeats


def test_pooled_averages_the_fits_of_several_generated_draws(ref_df):
    """Pooling several draws' results is the mean and spread over all their fits (not the mean of means)."""
    from mambah.validation import BDTKSResult

    draws = [bdt_ks_score(ref_df, toy(1000, seed=2 + d, shift=0.2), COLS, seed=d, n_repeats=r,
                          classifier_options=FAST, n_threads=1) for d, r in enumerate((1, 3))]
    p = BDTKSResult.pooled(draws)
    fits = draws[0].bdt_ks_repeats + draws[1].bdt_ks_repeats
    assert p.n_repeats == 4 and p.bdt_ks_repeats == fits
    assert p.bdt_ks == pytest.approx(np.mean(fits)) and p.bdt_ks_std == pytest.approx(np.std(fits, ddof=1))
    assert p.bdt_ks != pytest.approx(np.mean([d.bdt_ks for d in draws]))  # 1 + 3 fits: weights differ
    assert p.auc == pytest.approx(np.mean(draws[0].auc_repeats + draws[1].auc_repeats))
    assert BDTKSResult.pooled(draws[:1]).bdt_ks == draws[0].bdt_ks
    with pytest.raises(ValueError, match="at least one"):
        BDTKSResult.pooled([])


def contaminated(n_sig: int, n_bkg: int, seed: int) -> pd.DataFrame:
    """Signal toy + a background added once with weight +1 and once with weight -1.

    The signed weights cancel the background exactly in every weighted sum (the limiting case of
    sWeights), so the weighted sample describes the signal alone.
    """
    sig = toy(n_sig, seed)
    rng = np.random.default_rng(seed + 100)
    bkg = pd.DataFrame({
        "p": rng.lognormal(9.5, 0.8, n_bkg), "eta": rng.uniform(2, 5, n_bkg),
        "ntr": rng.poisson(120, n_bkg).astype(float), "dll": rng.normal(-3, 2, n_bkg),
    })
    out = pd.concat([sig, bkg, bkg], ignore_index=True)
    out["w"] = np.r_[np.ones(n_sig), np.ones(n_bkg), -np.ones(n_bkg)]
    return out


@pytest.mark.parametrize("train_weights", ["signed", "clipped"])
def test_weights_are_honoured(train_weights):
    ref = contaminated(3000, 1000, seed=1)
    clean_gen = toy(3000, seed=2)
    res = bdt_ks_score(ref, clean_gen, COLS, ref_weight="w", seed=0, n_repeats=2,
                       classifier_options=FAST, n_threads=1, train_weights=train_weights)
    # held-out halves: Kish effective size of the signed weights (+-1 background rows count fully in sum w^2)
    crit = ks_critical(effective_size(ref["w"]) / 2, 1500)
    assert res.bdt_ks < crit, res
    # without the weights the background shows up
    ref_unw = ref.drop(columns="w")
    bad = bdt_ks_score(ref_unw, clean_gen, COLS, seed=0, n_repeats=2, classifier_options=FAST, n_threads=1)
    assert bad.bdt_ks > 2 * crit, bad


def test_null_reference_against_itself(ref_df):
    res = bdt_ks_null(ref_df, COLS, seed=0, n_repeats=2, classifier_options=FAST, n_threads=1)
    assert res.n_ref + res.n_gen == len(ref_df)
    assert all(v < ks_critical(750, 750) for v in res.bdt_ks_repeats), res


def test_warns_when_reference_signed_and_generated_unweighted(caplog):
    ref = contaminated(600, 100, seed=1)
    with caplog.at_level(logging.WARNING, logger="mambah"):
        res = bdt_ks_score(ref, toy(600, 2), COLS, ref_weight="w", seed=0, n_repeats=1, classifier_options=FAST, n_threads=1)
    assert any("unweighted" in r.getMessage() for r in caplog.records)
    assert res.warnings and "gen_weight" in res.warnings[0]


# ---------------------------------------------------------------- bad input


def test_missing_columns_named():
    ref, gen = toy(500, 1), toy(500, 2).drop(columns=["dll", "eta"])
    with pytest.raises(MissingColumnError) as e:
        bdt_ks_score(ref, gen, COLS)
    msg = str(e.value)
    assert "generated sample lacks 'eta', 'dll'" in msg


def test_nan_refused_or_dropped():
    ref, gen = toy(500, 1), toy(500, 2)
    gen.loc[[3, 7, 9], "dll"] = np.nan
    gen.loc[11, "p"] = np.inf
    with pytest.raises(DataError, match=r"4 of 500 rows.*dll: 3.*p: 1|4 of 500 rows.*p: 1.*dll: 3"):
        bdt_ks_score(ref, gen, COLS)
    res = bdt_ks_score(ref, gen, COLS, drop_nonfinite=True, n_repeats=1, classifier_options=FAST, n_threads=1)
    assert res.n_gen == 496


@pytest.mark.parametrize("w, match", [(np.zeros(500), "all 500 weights are zero"),
                                      (np.r_[np.ones(250), -2 * np.ones(250)], "sum to")])
def test_bad_weights(w, match):
    ref, gen = toy(500, 1), toy(500, 2)
    with pytest.raises(DataError, match=match):
        bdt_ks_score(ref, gen, COLS, ref_weight=w)


def test_too_few_rows():
    with pytest.raises(DataError, match="needs at least 100"):
        bdt_ks_score(toy(50, 1), toy(500, 2), COLS)


def test_public_api_resolves():
    import mambah.validation as v

    for name in v.__all__:
        assert getattr(v, name) is not None, name
    assert {"bdt_ks_score", "bdt_ks_null", "validate", "validate_production", "weighted_ks"} <= set(dir(v))


def test_paired_split_removes_the_twin_bias():
    """A perfect conditional model whose rows are twins of the reference rows (same conditions).

    With independent splits the classifier learns which condition points sit in which class's
    training half, so twins of training rows look like the other class in the test half: a
    biased score with AUC < 0.5. The paired split keeps twins together and gives the floor,
    while a 10%-too-wide model still scores clearly worse.
    """
    rng = np.random.default_rng(11)
    n = 20_000
    c = rng.normal(size=(n, 3))
    ref = pd.DataFrame(c, columns=["a", "b", "c"])
    ref["y"] = c.sum(1) + rng.normal(size=n)
    perfect, wide = ref.copy(), ref.copy()
    perfect["y"] = c.sum(1) + rng.normal(size=n)
    wide["y"] = c.sum(1) + 1.15 * rng.normal(size=n)
    cols = ["a", "b", "c", "y"]
    unpaired = bdt_ks_score(ref, perfect, cols, seed=0)
    paired = bdt_ks_score(ref, perfect, cols, seed=0, paired=True)
    paired_wide = bdt_ks_score(ref, wide, cols, seed=0, paired=True)
    assert unpaired.auc < 0.485 and unpaired.bdt_ks > 0.035  # the bias the paired split removes
    # floor for 10k vs 10k test rows: sqrt(2/10k) ~ 0.014 is the KS scale of pure noise
    assert paired.bdt_ks < 0.025 and abs(paired.auc - 0.5) < 0.01
    assert paired_wide.bdt_ks > paired.bdt_ks + 3 * max(paired.bdt_ks_std, 0.005)
    with pytest.raises(DataError, match="equal length"):
        bdt_ks_score(ref, perfect.iloc[:-1], cols, paired=True)
