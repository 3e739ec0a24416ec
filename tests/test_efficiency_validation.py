"""Efficiency pulls (mambah.validation.pideff.efficiency_pulls): known answers on seeded toys.

The statistical error of a signed-sWeighted efficiency is checked against the spread of
independent toy experiments (the truth) and against a bootstrap of one toy; a planted efficiency
shift in one bin must come out as that bin, with the pull computed by hand.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from mambah.errors import ConfigurationError, DataError, MissingColumnError
from mambah.validation.efficiency import binned_efficiency, efficiency_in_bins
from mambah.validation.pideff import (MIN_N_EFF, TARGET_N_EFF, default_bins, efficiency_pulls, pull_score,
                                      pulls_frame)

P_EDGES = [3e3, 15e3, 30e3, 60e3, 100e3]
ETA_EDGES = [2.0, 3.5, 5.0]


def toy(n: int, seed: int, occupancy: bool = True) -> pd.DataFrame:
    """P [MeV/c], ETA, nLongTracks, and a DLLp that rises with p and eta."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"P": rng.uniform(3e3, 1e5, n), "ETA": rng.uniform(2, 5, n)})
    if occupancy:
        df["nLongTracks"] = rng.poisson(90, n).astype(float)
    df["DLLp"] = 8 + 4 * np.log(df["P"] / 2e4) + 3 * (df["ETA"] - 3.5) + rng.normal(0, 6, n)
    return df


# ---------------------------------------------------------------- known answers


def test_identical_samples_give_zero_pulls():
    ref = toy(20_000, 1)
    ref["w"] = np.random.default_rng(2).normal(0.5, 0.6, len(ref))  # signed, like sWeights
    res = efficiency_pulls(ref, ref, ["DLLp"], weight="w")
    assert list(res["cuts"]) == ["DLLp > 0", "DLLp > 5", "DLLp > 10", "DLLp > 15"]
    for label, c in res["cuts"].items():
        used = [b for b in c["bins"] if b["used"]]
        assert len(used) >= 12, label
        assert all(b["pull"] == 0.0 and b["diff"] == 0.0 for b in used)
        assert c["overall"]["pull"] == 0.0 and c["summary"]["pull_width"] == 0.0
    assert pull_score(res) == 0.0 == res["score"]
    json.dumps(res, allow_nan=False)  # JSON-able as it is


def test_planted_shift_is_the_worst_bin_with_the_expected_pull():
    """2% of one cell's tracks moved below every cut: that cell is the worst of every cut, its pull
    is -0.02 / sqrt(eps (1 - eps) / n) with eps counted by hand, and every other cell pulls 0."""
    ref = toy(40_000, 3, occupancy=False)
    gen = ref.copy()
    cell = (ref["P"] >= 30e3) & (ref["P"] < 60e3) & (ref["ETA"] >= 3.5)
    n_cell = int(cell.sum())
    k = round(0.02 * n_cell)
    movers = np.flatnonzero(cell.to_numpy() & (ref["DLLp"] > 15).to_numpy())[:k]
    assert len(movers) == k
    gen.loc[movers, "DLLp"] = -100.0
    res = efficiency_pulls(ref, gen, ["DLLp"], bins={"P": P_EDGES, "ETA": ETA_EDGES})
    assert res["n_ref_outside"] == 0
    for thr in (0, 5, 10, 15):
        label = f"DLLp > {thr}"
        eps = float(np.mean(ref.loc[cell, "DLLp"] > thr))
        expected = (-k / n_cell) / np.sqrt(eps * (1 - eps) / n_cell)
        s = res["cuts"][label]["summary"]
        wb = s["worst_bin"]
        assert (wb["P_lo"], wb["P_hi"], wb["ETA_lo"], wb["ETA_hi"]) == (30e3, 60e3, 3.5, 5.0), label
        assert wb["pull"] == pytest.approx(expected, rel=1e-9)
        assert wb["diff"] == pytest.approx(-k / n_cell, rel=1e-12)
        others = [b for b in res["cuts"][label]["bins"] if not (b["P_lo"] == 30e3 and b["ETA_lo"] == 3.5)]
        assert len(others) == 7 and all(b["pull"] in (0.0, None) and b["diff"] == 0.0 for b in others)
        assert s["n_bins"] >= 6 and s["pull_mean"] == pytest.approx(expected / s["n_bins"])
        o = res["cuts"][label]["overall"]
        assert o["gen_eff"] - o["ref_eff"] == pytest.approx(-k / len(ref), rel=1e-9)


def _splot_toy(rng, n: int):
    """Mass in [0, 1]: Gaussian signal (0.5, 0.04), flat background; sWeights from the true shapes and
    the expected yields (the sPlot of arXiv:physics/0402083 Eq. 14 with V from its Eq. 15 in the
    large-sample limit, computed once so every row's weight is a fixed function of its mass)."""
    ns, nb = 0.35 * n, 0.65 * n
    sig = rng.random(n) < ns / n
    m = np.where(sig, rng.normal(0.5, 0.04, n), rng.random(n))
    inside = (m > 0) & (m < 1)
    m, sig = m[inside], sig[inside]

    def fs(x):
        return sps.norm.pdf(x, 0.5, 0.04) / (sps.norm.cdf(1, 0.5, 0.04) - sps.norm.cdf(0, 0.5, 0.04))

    grid = np.linspace(0, 1, 20_001)
    f = np.stack([fs(grid), np.ones_like(grid)])
    den = ns * f[0] + nb * f[1]
    inv_v = np.trapezoid(f[:, None, :] * f[None, :, :] / den, grid, axis=-1) * n
    v = np.linalg.inv(inv_v)
    w = (v[0, 0] * fs(m) + v[0, 1] * 1.0) / (ns * fs(m) + nb * 1.0) * n
    passed = np.where(sig, rng.random(len(m)) < 0.9, rng.random(len(m)) < 0.3)
    return passed, w


def test_signed_sweight_error_against_toys_and_bootstrap():
    """σ² = Σ w² (pass − ε)² / (Σ w)² against the spread of 400 independent toy experiments and a
    bootstrap of one toy (precision of a 400-sample standard deviation: 3.5%; tolerance 12%). The
    naive binomial error with Kish's size, or with the sum of weights, would fail the toys."""
    rng = np.random.default_rng(11)
    effs, errs, naive = [], [], []
    for _ in range(400):
        passed, w = _splot_toy(rng, 4000)
        r = binned_efficiency(np.zeros(len(w), dtype=np.int64), passed, w, 1)
        effs.append(r["eff"][0])
        errs.append(r["err"][0])
        e = r["eff"][0]
        naive.append(np.sqrt(e * (1 - e) / w.sum()))
    assert np.mean(w < 0) > 0.3  # the sWeights are signed
    spread, formula = np.std(effs, ddof=1), np.mean(errs)
    assert np.mean(effs) == pytest.approx(0.9, abs=3 * spread / np.sqrt(400) + 0.002)  # the signal efficiency
    assert formula == pytest.approx(spread, rel=0.12)
    assert abs(np.mean(naive) / spread - 1) > 0.3
    # bootstrap of one toy: resample rows (each keeps its weight)
    passed, w = _splot_toy(np.random.default_rng(12), 4000)
    r = binned_efficiency(np.zeros(len(w), dtype=np.int64), passed, w, 1)
    idx = np.random.default_rng(13).integers(0, len(w), (400, len(w)))
    boot = (w[idx] * passed[idx]).sum(axis=1) / w[idx].sum(axis=1)
    assert r["err"][0] == pytest.approx(np.std(boot, ddof=1), rel=0.12)


def test_pulls_use_the_efficiency_module_per_bin():
    """The bins of efficiency_pulls are efficiency_in_bins' (one implementation of the formulas)."""
    ref, gen = toy(6000, 4), toy(6000, 5)
    w = np.random.default_rng(6).normal(0.6, 0.5, len(ref))
    bins = {"P": P_EDGES, "ETA": ETA_EDGES}
    res = efficiency_pulls(ref, gen, cuts=["DLLp > 5"], weight=w, gen_weight=None, bins=bins)
    tab = efficiency_in_bins(ref, gen, "DLLp > 5", bins, ref_weight=w)
    mine = pulls_frame(res, "DLLp > 5")
    for col in ("ref_eff", "ref_error", "gen_eff", "gen_error", "pull", "n_eff_ref"):
        np.testing.assert_allclose(mine[col], tab[col], rtol=1e-12, err_msg=col)
    assert res["pull_error"] == "reference"


def test_a_biased_model_scores_worse_than_an_unbiased_draw():
    ref = toy(20_000, 7)
    good = toy(20_000, 8)  # same model, other noise
    biased = good.copy()
    biased["DLLp"] = biased["DLLp"] - 1.0  # every efficiency lower
    tail = biased.index[biased["P"] > 80e3][::20]  # and 5% of the high-p tracks in a low tail
    biased.loc[tail, "DLLp"] = -20.0
    bins = default_bins(ref)
    s_good = pull_score(efficiency_pulls(ref, good, ["DLLp"], bins=bins, gen_error_in_pull=True))
    s_bad = pull_score(efficiency_pulls(ref, biased, ["DLLp"], bins=bins, gen_error_in_pull=True))
    # a perfect model's pulls (generated noise in the denominator) have RMS ~ 1
    assert 0.7 < s_good < 1.3 and s_bad > 2 * s_good


def test_zero_reference_error_bin_still_pulls():
    """A bin where every reference row passes has σ_ref = 0: the pull uses the binomial error of the
    generated efficiency instead of vanishing (a model losing 2% there is seen)."""
    ref = pd.DataFrame({"P": np.r_[np.full(500, 1e4), np.full(500, 5e4)], "DLLp": np.r_[np.full(500, 20.0),
                                                                                      np.linspace(-5, 25, 500)]})
    gen = ref.copy()
    gen.loc[:9, "DLLp"] = -1.0  # 10 of the 500 all-passing rows fail
    res = efficiency_pulls(ref, gen, cuts=["DLLp > 0"], bins={"P": [0, 3e4, 1e5]}, min_n_eff=0)
    b0 = res["cuts"]["DLLp > 0"]["bins"][0]
    assert b0["ref_error"] == 0.0 and b0["gen_eff"] == pytest.approx(0.98)
    assert b0["pull"] == pytest.approx(-0.02 / np.sqrt(0.98 * 0.02 / 500))


# ---------------------------------------------------------------- bins


def test_default_bins_hold_enough_signal_and_every_row():
    ref = toy(30_000, 9)
    w = np.random.default_rng(10).normal(0.45, 0.6, len(ref))  # Kish size ~ 11k
    bins = default_bins(ref, w)
    assert list(bins) == ["P", "ETA", "nLongTracks"]
    assert len(bins["ETA"]) == 4 and len(bins["nLongTracks"]) == 3
    n_eff = (w.sum() ** 2) / (w * w).sum()
    assert len(bins["P"]) - 1 == int(np.clip(n_eff // (TARGET_N_EFF * 6), 3, 8))
    res = efficiency_pulls(ref, ref, ["DLLp"], weight=w, bins=bins)
    assert res["n_ref_outside"] == 0
    tab = pulls_frame(res, "DLLp > 5")
    assert tab["n_ref"].sum() == len(ref)
    assert (tab["n_eff_ref"] > MIN_N_EFF).all()
    # without an occupancy column: p x eta
    assert list(default_bins(toy(5000, 1, occupancy=False))) == ["P", "ETA"]


def test_given_edges_leave_rows_out_and_say_so():
    ref = toy(5000, 12)
    res = efficiency_pulls(ref, ref, cuts=["DLLp > 5"], bins={"P": [1e4, 5e4], "ETA": None})
    outside = int(((ref["P"] < 1e4) | (ref["P"] >= 5e4)).sum())
    assert res["n_ref_outside"] == outside == res["n_gen_outside"] > 0
    assert res["bins_source"].startswith("given for P")
    # the whole-sample efficiency still counts every row
    assert res["cuts"]["DLLp > 5"]["overall"]["ref_eff"] == pytest.approx(np.mean(ref["DLLp"] > 5))


# ---------------------------------------------------------------- errors


def test_errors_name_what_and_where():
    ref = toy(2000, 13)
    gen = toy(2000, 14)
    with pytest.raises(MissingColumnError, match="generated sample.*'ETA'"):
        efficiency_pulls(ref, gen.drop(columns="ETA"), ["DLLp"])
    with pytest.raises(MissingColumnError, match="'PIDK'"):
        efficiency_pulls(ref, gen, cuts=["PIDK > 0"])
    bad = ref.assign(w=1.0)
    bad.loc[[3, 4], "w"] = np.nan
    with pytest.raises(DataError, match="2 of 2000 weights \\(column 'w'\\) are NaN"):
        efficiency_pulls(bad, gen, ["DLLp"], weight="w")
    with pytest.raises(ConfigurationError, match="targets .* or cuts"):
        efficiency_pulls(ref, gen)
    with pytest.raises(DataError, match="has no weight column 'w'.*1000 rows"):
        efficiency_pulls(ref.assign(w=1.0), gen.iloc[:1000], ["DLLp"], weight="w")
    nan_gen = gen.copy()
    nan_gen.loc[5, "DLLp"] = np.nan
    with pytest.raises(DataError, match="DLLp: 1 rows"):
        efficiency_pulls(ref, nan_gen, ["DLLp"])
    with pytest.raises(ConfigurationError, match="increasing edges"):
        efficiency_pulls(ref, gen, ["DLLp"], bins={"P": [5e4, 1e4]})
