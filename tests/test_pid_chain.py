"""The chained default PID models (mambah.pid.chain): combination rule, build-time checks, closure."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from mambah.reference.calibration import calib_sample
from mambah.errors import ConfigurationError, ModelDirError
from mambah.modeldir import default_models_dir
from mambah.pid.chain import (CHAIN_OUTPUTS, DEFAULT_SPECIES, ROLES, ChainStep, available_chains, build_chain,
                             combine, default_chain_steps, load_chain, prepare_training_table,
                             rich_threshold_codes)
from mambah.validation.closure import chain_closure as closure

MODELS = default_models_dir()


def test_combination_rule_inverts_the_training_columns():
    """combine(prepare_training_table(x)) gives back the reference detector's combined DLLs exactly."""
    for s in ("mu", "K", "e"):
        df = prepare_training_table(calib_sample(s, 3000, seed=3))
        cols = {c: df[c].to_numpy(dtype=float) for c in df.columns if c in CHAIN_OUTPUTS or c in
                ("CaloDLLe", "hasRich")}
        out = combine(cols)
        for c in ("PIDe", "PIDmu", "PIDK", "PIDp"):
            np.testing.assert_allclose(out[c], df[c].to_numpy(dtype=float), atol=2e-4, err_msg=f"{s} {c}")
        assert set(np.unique(df["hasRich"])) <= {0.0, 1.0}
        assert np.isfinite(df["CaloDLLe"].to_numpy()).all()
        # the reference detector adds no muon-system term to PIDmu of a non-IsMuon track
        np.testing.assert_allclose(df["MuonVetoDLL"].to_numpy(), 0.0, atol=1e-5)  # float32 rounding of PIDmu
        # RichDLLpK carries the exact K/p ties below threshold; RichDLLk + RichDLLpK == RichDLLp
        rich = df["hasRich"].to_numpy() > 0.5
        np.testing.assert_allclose((df["RichDLLk"] + df["RichDLLpK"]).to_numpy()[rich], df["RichDLLp"].to_numpy()[rich],
                                   atol=1e-4)
        tie = rich & (df["RichDLLk"] == df["RichDLLp"]).to_numpy()
        assert tie.mean() > 0.02 and (df["RichDLLpK"].to_numpy()[tie] == 0).all()
        assert np.isnan(df["RichDLLpK"].to_numpy()[~rich]).all()
        # hasCalo: the calorimeter acceptance; outside it CaloDLLe is 0 and the chain leaves it NaN
        has_calo = df["hasCalo"].to_numpy()
        assert set(np.unique(has_calo)) == {0.0, 1.0}
        assert (df["CaloDLLe"].to_numpy()[has_calo == 0] == 0).all()
        cols["CaloDLLe"] = np.where(has_calo > 0.5, cols["CaloDLLe"], np.nan)
        np.testing.assert_allclose(combine(cols)["PIDe"], df["PIDe"].to_numpy(dtype=float), atol=2e-4)


def test_rich_threshold_codes_mark_the_radiators_and_thresholds():
    """RichAcc / RichAbove<h>: bit j for radiator j (acceptance; and p above h's Cherenkov threshold there).
    Physics check on a calibration sample: RichDLLp == RichDLLk exactly where no radiator the track
    crosses is above the kaon threshold, and only there."""
    from mambah.reference.pid import MASSES, RICH1, RICH2
    from mambah.pid.chain import rich_threshold_codes

    k1, k2 = RICH1.threshold(MASSES[321]), RICH2.threshold(MASSES[321])
    assert 9e3 < k1 < 9.6e3 and 15e3 < k2 < 16e3  # 9.3 and 15.6 GeV/c
    p = np.array([5e3, 12e3, 12e3, 20e3, 20e3, 20e3])
    eta = np.array([3.0, 2.5, 3.0, 3.0, 4.6, 5.2])
    c = rich_threshold_codes(p, eta)
    two = lambda k: c[f"Rich{k}1"] + 2 * c[f"Rich{k}2"]  # noqa: E731
    np.testing.assert_array_equal(two("Acc"), [3, 1, 3, 3, 2, 0])
    np.testing.assert_array_equal(two("AboveK"), [0, 1, 1, 3, 2, 0])
    np.testing.assert_array_equal(two("AbovePi"), [3, 1, 3, 3, 2, 0])
    df = prepare_training_table(calib_sample("K", 5000, seed=4))
    rich = df["hasRich"].to_numpy() > 0.5
    below_k = (df["RichAboveK1"] + df["RichAboveK2"]).to_numpy()[rich] == 0
    np.testing.assert_array_equal(df["RichPKTie"].to_numpy()[rich] > 0.5, below_k)


def test_rich_yields_are_the_relative_photon_yield_of_each_hypothesis_ring():
    """RichYield<h><j> = sin^2(theta_h) / sin^2(theta_max) from the radiator's own Cherenkov angle, 0 exactly
    where the code RichAbove<h><j> is 0 (below threshold or outside the radiator), rising towards 1."""
    from mambah.reference.pid import MASSES, RICH1, RICH2
    from mambah.pid.chain import RICH_YIELDS, rich_yields

    rng = np.random.default_rng(5)
    p, eta = rng.uniform(1.5e3, 2e5, 4000), rng.uniform(1.5, 5.5, 4000)
    y, c = rich_yields(p, eta), rich_threshold_codes(p, eta)
    assert tuple(y) == RICH_YIELDS
    for j, rad in ((1, RICH1), (2, RICH2)):
        smax = np.sin(np.arccos(1.0 / (1.0 + rad.n_minus_1))) ** 2
        for h, pdg in (("Mu", 13), ("Pi", 211), ("K", 321), ("P", 2212)):
            yy, code = y[f"RichYield{h}{j}"], c[f"RichAbove{h}{j}"]
            np.testing.assert_array_equal(yy > 0, code > 0)
            expected = np.sin(rad.cherenkov_angle(p, MASSES[pdg])) ** 2 / smax
            np.testing.assert_allclose(yy[code > 0], expected[code > 0], rtol=1e-6, atol=1e-9)
            assert yy.max() < 1.0 and yy.max() > 0.9
    # the heavier the hypothesis, the weaker its ring at the same momentum
    inside = c["RichAcc1"] > 0
    assert (y["RichYieldPi1"][inside] >= y["RichYieldK1"][inside]).all()
    assert (y["RichYieldK1"][inside] >= y["RichYieldP1"][inside]).all()


def test_fill_ties_removes_the_spike_only_where_the_chain_makes_the_ties():
    """prepare_training_table(fill_ties=seed): below every kaon threshold RichDLLpK takes values of RICH rows
    above one (no exact 0 left among the RICH rows); every other row and column is as measured."""
    raw = calib_sample("p", 6000, seed=5)
    a, b = prepare_training_table(raw), prepare_training_table(raw, fill_ties=3)
    rich = a["hasRich"].to_numpy() > 0.5
    below = rich & ((a["RichAboveK1"] + a["RichAboveK2"]).to_numpy() == 0)
    assert below.sum() > 100 and (a["RichDLLpK"].to_numpy()[below] == 0).all()
    pk = b["RichDLLpK"].to_numpy()
    assert (pk[rich] != 0).all()
    assert np.isin(pk[below], a["RichDLLpK"].to_numpy()[rich & ~below]).all()
    np.testing.assert_array_equal(pk[~below], a["RichDLLpK"].to_numpy()[~below])  # NaN without RICH too
    pd.testing.assert_frame_equal(a.drop(columns="RichDLLpK"), b.drop(columns="RichDLLpK"))
    assert (b["RichPKTie"].to_numpy()[below] == 1).all()  # the true ties are kept for a tie classifier
    np.testing.assert_array_equal(prepare_training_table(raw, fill_ties=3)["RichDLLpK"], pk)  # seeded


def test_all_default_chains_are_shipped():
    assert available_chains() == list(DEFAULT_SPECIES) or sorted(available_chains()) == sorted(DEFAULT_SPECIES)


def test_unknown_species_names_the_known_ones():
    with pytest.raises(ConfigurationError, match="known: e, mu, pi, K, p"):
        load_chain("kaon")


def test_missing_model_names_available_chains(tmp_path):
    shutil.copytree(MODELS / "pid-K-flags", tmp_path / "pid-K-flags")
    with pytest.raises(ConfigurationError, match=r"no PID model .*pid-K-muon.*species with a complete default chain: none"):
        build_chain("K", None, tmp_path)


def _edit_card(path, **changes):
    card = json.loads((path / "card.json").read_text())
    card.update(changes)
    (path / "card.json").write_text(json.dumps(card))


def test_chain_whose_later_model_needs_an_unproduced_column_fails_at_build(tmp_path):
    for r in ROLES:
        shutil.copytree(MODELS / f"pid-pi-{r}", tmp_path / f"pid-pi-{r}")
    card = json.loads((tmp_path / "pid-pi-rich" / "card.json").read_text())
    conds = [dict(c) for c in card["conditions"]]
    # (nTracks: not a column the step's marginal calibration bins in)
    conds[[c["name"] for c in conds].index("nTracks")] = {"name": "EcalEoverP", "unit": "", "quantity": "calo_e_over_p"}
    _edit_card(tmp_path / "pid-pi-rich", conditions=conds, name="pid-pi-rich-edited")
    with pytest.raises(ConfigurationError, match=r"'pid-pi-rich-edited'.*\['EcalEoverP'\]"):
        build_chain("pi", None, tmp_path)
    # a card edited so that a column its marginal calibration bins in is gone: refused at load, named
    conds = [dict(c) for c in card["conditions"]]
    conds[-1] = {"name": "EcalEoverP", "unit": "", "quantity": "calo_e_over_p"}
    _edit_card(tmp_path / "pid-pi-rich", conditions=conds)
    with pytest.raises(ModelDirError, match=r"marginal correction bins in \['RichAboveP2'\]"):
        build_chain("pi", None, tmp_path)
    # the muon step applies to isMuon tracks: without the flags step nobody produces isMuon
    steps = default_chain_steps("pi", tmp_path)[1:2]
    with pytest.raises(ConfigurationError, match="isMuon"):
        build_chain("pi", steps, tmp_path)


@pytest.mark.filterwarnings("ignore::mambah.nn.pidmodel.OutOfRangeWarning")  # sub-steps see a few edge tracks
def test_calorimeter_dll_is_generated_inside_its_acceptance_only(tmp_path):
    """The global step runs where the flags step's hasCalo is 1 (its training selection); outside,
    the calorimeter adds nothing to PIDe, as in the detector. A global model trained on every
    track (no selection; chains before 2026-11-23) still runs on every track."""
    steps = default_chain_steps("K")
    assert dict((s.role, s.applies) for s in steps)["global"] == "hasCalo"  # (a probnn step may follow it)
    truth = calib_sample("K", 20_000, seed=59_003, pure=True)
    out = load_chain("K").generate(truth, np.random.default_rng(2))
    eta = truth["ETA"].to_numpy()
    pide_minus_rich = (out["PIDe"] - np.nan_to_num(out["RichDLLe"])).to_numpy()
    outside, inside = (eta < 1.8) | (eta > 4.6), (eta > 2.0) & (eta < 4.4)
    assert outside.sum() > 300
    np.testing.assert_allclose(pide_minus_rich[outside], 0.0, atol=1e-5)
    assert (pide_minus_rich[inside] != 0).mean() > 0.999  # the old chain: 4% exact zeros inside
    for r in ROLES:
        shutil.copytree(MODELS / f"pid-K-{r}", tmp_path / f"pid-K-{r}")
    card = json.loads((tmp_path / "pid-K-global" / "card.json").read_text())
    card["training_data"]["selection"] = None
    _edit_card(tmp_path / "pid-K-global", training_data=card["training_data"])
    assert default_chain_steps("K", tmp_path)[-1].applies is None


def test_out_of_range_conditions_warn_with_the_fraction():
    from mambah.nn.pidmodel import OutOfRangeWarning

    chain = load_chain("p")
    lo, hi = chain.training_ranges()["P"]
    n = 1000
    x = pd.DataFrame({"P": np.r_[np.full(100, 3 * hi), np.full(n - 100, 0.5 * (lo + hi))],
                      "ETA": 3.0, "nTracks": 100.0, "charge": 1.0})
    import warnings

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        chain.generate(x, np.random.default_rng(1))
    msgs = [str(m.message) for m in w if issubclass(m.category, OutOfRangeWarning)]
    # the first step sees every track; later steps warn about their own selected rows
    assert any("10% of the rows (100 of 1000)" in m and "pid-p-flags" in m for m in msgs), msgs
    # generate_columns counts them per step (what the PID stage reports per production)
    counts = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = chain.generate_columns(x, np.random.default_rng(1), counts=counts)
    assert set(counts) == {str(m.card["name"]) for m in chain.models}
    flags = counts["pid-p-flags"]
    assert (flags.count, flags.n) == (100, n) and flags.text.startswith("P: 100 outside")
    assert flags.detail["P"] == 100
    rich = out["RichDLLk"] == out["RichDLLk"]  # the rows the RICH step evaluated
    lo_r, hi_r = chain.models[[s.role for s in chain.steps].index("rich")].cond_pre.range_()
    assert (counts["pid-p-rich"].count, counts["pid-p-rich"].n) == (int((rich & (x["P"].to_numpy() > hi_r[0])).sum()),
                                                                     int(rich.sum()))


def _closure(species, n, seed):
    chain = load_chain(species)
    truth = calib_sample(species, n, seed=seed + DEFAULT_SPECIES.index(species), pure=True)
    return chain, truth, closure(chain, truth, seed=1, n_repeats=1)


@pytest.mark.filterwarnings("ignore::mambah.nn.pidmodel.OutOfRangeWarning")  # sub-steps see a few edge tracks
@pytest.mark.parametrize("species", DEFAULT_SPECIES)
def test_shipped_chain_closure(species):
    """Each shipped chain against the reference detector's pure signal (held-out seed), 20k tracks.

    A regression guard at the level the shipped models reach (recorded in their cards'
    ``metrics.chain_closure``, 100k tracks: BDT-KS 0.059-0.093; worst p-bin efficiency difference
    1.0-1.9% in bins with a standard error <= 1%, up to 2.8% for DLLp - DLLK > 0): BDT-KS <= 0.20 and
    every p-bin efficiency within 0.05 + 3 sigma (0.10 + 3 sigma for DLLp - DLLK > 0). The issue's
    bar (BDT-KS <= 0.10, 2%) on another sample: test_closure_bar.
    """
    chain, truth, r = _closure(species, 20_000, 55_000)
    out = chain.generate(truth, np.random.default_rng(2))
    # the detector's NaN conventions
    assert np.isnan(out["MuonMuLL"][out["isMuon"] == 0]).all() and np.isfinite(out["MuonMuLL"][out["isMuon"] == 1]).all()
    assert np.isfinite(out[["PIDe", "PIDmu", "PIDK", "PIDp"]].to_numpy()).all()
    nan_rich = np.isnan(out["RichDLLk"]).mean()
    assert abs(nan_rich - np.isnan(truth["RichDLLk"]).mean()) < 0.02
    # outside both radiators' acceptance: no RICH information, as in the detector
    codes = rich_threshold_codes(truth["P"].to_numpy(), truth["ETA"].to_numpy())
    outside = (codes["RichAcc1"] + codes["RichAcc2"]) == 0
    assert outside.sum() > 50 and np.isnan(truth["RichDLLk"].to_numpy()[outside]).all()
    assert np.isnan(out[["RichDLLe", "RichDLLmu", "RichDLLk", "RichDLLp"]].to_numpy()[outside]).all()
    np.testing.assert_array_equal(out["PIDK"][np.isnan(out["RichDLLk"])], 0.0)
    assert r["bdt_ks"] <= 0.20, r["bdt_ks"]
    for cut, e in r["efficiency"].items():
        tol = 0.10 if cut == "DLLp - DLLK > 0" else 0.05
        for b in e["bins"]:
            assert abs(b["diff"]) <= tol + 3 * b["stat_error"], (cut, b)


@pytest.mark.filterwarnings("ignore::mambah.nn.pidmodel.OutOfRangeWarning")  # sub-steps see a few edge tracks
def test_chains_separate_the_species():
    """The K chain gives kaons DLLK > 0 far more often than the pi chain gives pions (as the truth)."""
    eff = {}
    for s in ("K", "pi"):
        chain, truth, _ = _closure(s, 10_000, 56_000)
        out = chain.generate(truth, np.random.default_rng(3))
        eff[s] = ((out["PIDK"] > 0).mean(), (truth["PIDK"] > 0).mean())
    assert eff["K"][0] > 0.7 and eff["pi"][0] < 0.3, eff
    assert abs(eff["K"][0] - eff["K"][1]) < 0.1 and abs(eff["pi"][0] - eff["pi"][1]) < 0.1, eff


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::mambah.nn.pidmodel.OutOfRangeWarning")  # sub-steps see a few edge tracks
@pytest.mark.parametrize("species", DEFAULT_SPECIES)
def test_closure_bar(species):
    """The issue's bar: BDT-KS <= 0.10 and the DLLK > 0, DLLK > 5, DLLp > 5 and isMuon efficiencies
    within 2% absolute in p bins whose standard error is <= 1% (a bin of 138 protons at 2-5 GeV/c
    cannot test 2%), on 100k tracks of another held-out seed than the cards'."""
    _, _, r = _closure(species, 100_000, 57_000)
    assert r["bdt_ks"] <= 0.10
    for cut in ("DLLK > 0", "DLLK > 5", "DLLp > 5", "isMuon"):
        assert r["efficiency"][cut]["max_abs_diff_precise"] <= 0.02, (cut, r["efficiency"][cut])


def test_training_example_runs_shortened(tmp_path):
    """examples/train_pid_chain.py as a user runs it, shortened (one species, one step, seconds of training)."""
    import subprocess
    import sys
    from pathlib import Path

    ex = Path(__file__).resolve().parent.parent / "examples" / "train_pid_chain.py"
    r = subprocess.run([sys.executable, str(ex), "--work", str(tmp_path / "w"), "--out", str(tmp_path / "m"),
                        "--species", "mu", "--roles", "flags,global", "--events", "6000", "--large-events", "6000", "--epochs", "2",
                        "--parallel", "1", "--p-weight", "40000,1.5", "--patience", "7", "--reselect", "2"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    card = json.loads((tmp_path / "m" / "pid-mu-flags" / "card.json").read_text())
    assert card["training_data"]["weight"] == "sWeight" and card["species"] == "mu"
    assert card["kind"] == "pid-flags" and [t["name"] for t in card["targets"]] == ["isMuon", "hasRich", "hasCalo"]
    assert "train flags" in (card.get("command") or "")
    card = json.loads((tmp_path / "m" / "pid-mu-global" / "card.json").read_text())
    assert [t["name"] for t in card["targets"]] == ["CaloDLLe"] and "train pid" in (card.get("command") or "")
    assert card["training_data"]["selection"].replace(" ", "") == "hasCalo==1"
    assert card["hyperparameters"]["patience"] == 7 and card["hyperparameters"]["reselect"] == 2  # the GAN steps'
    # --p-weight: the GAN step on sWeight * clip((P / 40 GeV/c)^1.5, 1, 4), the classifier on the sWeights
    assert card["training_data"]["weight"] == "wP" and "--p-weight" in card["training_data"]["description"]
    pw = pd.read_parquet(tmp_path / "w" / "mu_train_pw40000_1.5.parquet")
    f = pw["wP"] / pw["sWeight"]
    assert np.allclose(f[pw["P"] <= 40_000], 1.0) and np.allclose(f[pw["P"] >= 40_000 * 4 ** (1 / 1.5)], 4.0)
    mid = (pw["P"] > 45_000) & (pw["P"] < 95_000)
    assert mid.any() and np.allclose(f[mid], (pw["P"][mid] / 40_000) ** 1.5)


@pytest.mark.filterwarnings("ignore::mambah.nn.pidmodel.OutOfRangeWarning")  # sub-steps see a few edge tracks
@pytest.mark.parametrize("species", ["K", "p"])
def test_chain_reproduces_the_exact_dllk_dllp_ties_in_p_bins(species):
    """Below the kaon threshold of every radiator RichDLLp == RichDLLk exactly: a step in p. A RICH
    GAN alone smears it (K: 85% ties at 5-8 GeV/c instead of 100%); the shipped chains make the ties
    where the threshold codes say so (no tie model), so the share below threshold is exact. Above
    threshold a GAN trained on the spike made spurious ties (the p model of 2026-11-23: 12% at
    10-12 GeV/c instead of 0%; see PidChain._match_ties); the shipped K and p models, trained without
    it (prepare_training_table(fill_ties=)), make as many as the truth (K 2%, p 0%)."""
    truth = calib_sample(species, 20_000, seed=58_003, pure=True)
    chain = load_chain(species)
    assert [s.role for s in chain.steps] == ["flags", "muon", "rich", "global", "probnn"]
    out = chain.generate(truth, np.random.default_rng(4))
    rich_t, rich_g = truth["hasRich"].to_numpy() > 0.5, np.isfinite(out["RichDLLk"].to_numpy())
    tie_t = rich_t & (truth["RichDLLk"] == truth["RichDLLp"]).to_numpy()
    tie_g = rich_g & (out["RichDLLk"] == out["RichDLLp"]).to_numpy()
    assert tie_t.mean() > 0.05
    p = truth["P"].to_numpy()
    above = 0.02  # 10-12 GeV/c: above the kaon threshold
    for lo, hi, tol in ((2e3, 5e3, 0.02), (5e3, 8e3, 0.02), (10e3, 12e3, above), (20e3, 1e7, 0.1)):
        m = (p >= lo) & (p < hi)
        t, g = tie_t[m].mean(), tie_g[m].mean()
        assert abs(g - t) <= tol + 3 * np.sqrt(t * (1 - t) / m.sum() + 1e-6), (lo, m.sum(), t, g)


class _Flags:
    """A stand-in tie classifier: RichPKTie = 1 exactly where P < 10 GeV/c."""
    conditions, targets, card = ["P"], ["RichPKTie"], {"name": "stub-tie"}

    def sample(self, c, rng, counts=None):
        if counts is not None:
            from mambah.nn.model import RangeCounts

            counts.append(RangeCounts("stub-tie", 0, len(c)))
        return (c[:, :1] < 10_000).astype(float)


@pytest.mark.filterwarnings("ignore::mambah.nn.pidmodel.OutOfRangeWarning")  # a few edge tracks
def test_the_tie_flag_sets_the_tie_status_and_nothing_else():
    chain = load_chain("K")
    steps = [s for s in chain.steps if s.role != "tie"]
    models = [m for s, m in zip(chain.steps, chain.models) if s.role != "tie"]
    i = [s.role for s in steps].index("rich") + 1
    from mambah.pid.chain import PidChain

    stub = PidChain("K", steps[:i] + [ChainStep("tie", "stub", "hasRich")] + steps[i:],
                    models[:i] + [_Flags()] + models[i:], [None] * (len(steps) + 1))
    truth = calib_sample("K", 5000, seed=58_004, pure=True)
    out = stub.generate(truth, np.random.default_rng(5))
    rich = np.isfinite(out["RichDLLk"].to_numpy())
    tie = (out["RichDLLk"] == out["RichDLLp"]).to_numpy()
    below = truth["P"].to_numpy() < 10_000
    assert tie[rich & below].all()
    pd.testing.assert_frame_equal(out, stub.generate(truth, np.random.default_rng(5)))  # reproducible
    # the RICH GAN alone misses ties below 10 GeV/c; the flag adds them and changes nothing else
    plain = PidChain("K", steps, models, [None] * len(steps)).generate(truth, np.random.default_rng(5))
    tie_plain = (plain["RichDLLk"] == plain["RichDLLp"]).to_numpy()
    assert not tie_plain[rich & below].all()
    for c in ("RichDLLe", "RichDLLmu", "RichDLLk", "PIDK"):
        pd.testing.assert_series_equal(out[c], plain[c])
    np.testing.assert_array_equal(out["RichDLLp"].to_numpy()[~below], plain["RichDLLp"].to_numpy()[~below])


@pytest.mark.filterwarnings("ignore::mambah.nn.pidmodel.OutOfRangeWarning")  # a few edge tracks
def test_the_tie_step_is_optional(tmp_path):
    """The shipped chains have no tie model; a pid-<s>-tie model, where there is one, runs after rich."""
    for r in ROLES:
        shutil.copytree(MODELS / f"pid-K-{r}", tmp_path / f"pid-K-{r}")
    assert [s.role for s in default_chain_steps("K", tmp_path)] == list(ROLES)
    out = build_chain("K", None, tmp_path).generate(calib_sample("K", 500, seed=3, pure=True), np.random.default_rng(1))
    assert np.isfinite(out["PIDK"]).all()
    (tmp_path / "pid-K-tie").mkdir()
    (tmp_path / "pid-K-tie" / "card.json").write_text("{}")
    assert [(s.role, s.applies) for s in default_chain_steps("K", tmp_path)][3] == ("tie", "hasRich")
