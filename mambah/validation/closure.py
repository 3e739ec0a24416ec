"""Closure of a PID chain: the chain against the truth for the same conditions.

:func:`chain_closure` (was ``mambah.pid.chain.closure``) generates every chain output for the
conditions of a truth sample (e.g. a pure calibration sample) and compares: the BDT-KS score over
conditions and outputs, and the efficiency of the typical cuts :data:`CUTS` in the momentum bins
:data:`P_BINS` (:func:`mambah.validation.efficiency.efficiency_in_bins`). Its numbers go into the
cards' ``metrics.chain_closure`` (``examples/train_pid_chain.py --closure N --write-cards``).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from mambah.pid.chain import CHAIN_INPUTS, CHAIN_OUTPUTS, PROBNN_TARGETS
from mambah.validation.bdt import bdt_ks_score
from mambah.validation.cuts import CHAIN_CUTS, Cut, parse_cut
from mambah.validation.efficiency import efficiency_in_bins

__all__ = ["chain_closure", "closure", "CUTS", "P_BINS", "PRECISE_ERROR", "MIN_ROWS", "probnn_closure", "PROBNN_CUTS"]

#: Typical requirements checked by :func:`chain_closure` (label -> cut on the chain's outputs).
CUTS: dict[str, Cut] = CHAIN_CUTS
#: Bins whose efficiency difference has a binomial standard error at most this large enter
#: ``max_abs_diff_precise`` (a 2% difference is then a 2-sigma effect; e.g. the 122 protons of
#: 2-5 GeV/c in 100k have an error of 4%).
PRECISE_ERROR = 0.01
#: Momentum bins of the closure [MeV/c].
P_BINS = (2_000.0, 5_000.0, 10_000.0, 20_000.0, 40_000.0, 100_000.0, 1e6)
#: Bins with fewer truth rows are left out of the efficiency comparison.
MIN_ROWS = 50


def chain_closure(chain, truth: pd.DataFrame, seed: int = 0, n_repeats: int = 3) -> dict[str, Any]:
    """Compare the chain with the truth for the same conditions (e.g. a pure calibration sample).

    The chain generates every output for the truth rows' P, ETA, nTracks, charge. Scores:

    * ``bdt_ks``: :func:`mambah.validation.bdt_ks_score` over the conditions and all eleven
      outputs (NaN replaced by LHCb's -1000 sentinel on both sides); the generated rows are twins
      of the truth rows (same conditions), so they are split together (``paired=True``);
    * ``efficiency``: per cut of :data:`CUTS` and bin of :data:`P_BINS` with at least
      :data:`MIN_ROWS` rows, the truth and generated efficiencies, their difference and its
      binomial standard error ``sqrt(ε_t (1 − ε_t) / n + ε_g (1 − ε_g) / n)`` (both samples have
      the n rows of the bin); per cut ``max_abs_diff``, ``max_abs_diff_precise`` (bins with a
      standard error <= :data:`PRECISE_ERROR`) and ``max_pull`` (largest |difference| / standard
      error).

    Args:
        chain: a :class:`mambah.pid.chain.PidChain`.
        truth: the truth sample (chain inputs and outputs, LHCb names).
        seed: seed of the chain's noise and of the classifier.
        n_repeats: classifier fits averaged in the BDT-KS score.
    """
    rng = np.random.default_rng([seed, 7321])
    gen = chain.generate(truth, rng)
    cols = list(CHAIN_INPUTS) + list(CHAIN_OUTPUTS)
    ref = truth[list(CHAIN_INPUTS)].astype(float).reset_index(drop=True)
    g = ref.copy()
    for c in CHAIN_OUTPUTS:
        ref[c] = truth[c].to_numpy(dtype=float)
        g[c] = gen[c].to_numpy(dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        score = bdt_ks_score(ref.fillna(-1000.0), g.fillna(-1000.0), cols, seed=seed, n_repeats=n_repeats,
                             paired=True)
    return {"species": chain.species, "n": int(len(truth)), "bdt_ks": float(score.bdt_ks),
            "bdt_ks_std": float(score.bdt_ks_std), "auc": float(score.auc), "efficiency": _efficiencies(ref, g, CUTS)}


def _efficiencies(ref: pd.DataFrame, g: pd.DataFrame, cuts: dict[str, Cut]) -> dict[str, Any]:
    """Per cut: the efficiencies in :data:`P_BINS` (bins with >= :data:`MIN_ROWS` truth rows) and the summaries."""
    eff: dict[str, Any] = {}
    for name, cut in cuts.items():
        tab = efficiency_in_bins(ref, g, cut, bins={"P": P_BINS})
        rows = []
        for i, r in enumerate(tab.itertuples(index=False)):
            n = int(r.n_ref)
            if n < MIN_ROWS:
                continue
            et, eg = float(r.ref_eff), float(r.gen_eff)
            err = float(np.sqrt(et * (1 - et) / n + eg * (1 - eg) / n))
            rows.append({"p_lo": P_BINS[i], "p_hi": P_BINS[i + 1], "n": n, "truth": et, "generated": eg,
                         "diff": eg - et, "stat_error": err})
        precise = [abs(r["diff"]) for r in rows if r["stat_error"] <= PRECISE_ERROR]
        eff[name] = {"bins": rows, "max_abs_diff": max((abs(r["diff"]) for r in rows), default=float("nan")),
                     "max_abs_diff_precise": max(precise, default=float("nan")),
                     "max_pull": max((abs(r["diff"]) / r["stat_error"] for r in rows if r["stat_error"] > 0),
                                     default=float("nan"))}
    return eff


#: The ProbNN requirements of :func:`probnn_closure` (issue 24: ProbNNk > 0.5 and ProbNNp > 0.5 within 2%
#: in every p bin; the other species' for information).
PROBNN_CUTS: dict[str, Cut] = {c: parse_cut(c) for c in ("ProbNNk > 0.5", "ProbNNp > 0.5", "ProbNNpi > 0.5",
                                                          "ProbNNe > 0.5", "ProbNNmu > 0.5", "ProbNNghost > 0.5")}


def _probnn_given_truth(chain, truth: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """The chain's last (probnn) step alone, on the truth's own flags and DLLs (its conditions from
    :func:`mambah.pid.chain.prepare_training_table` of the truth): the step's own closure, without the
    earlier steps' differences."""
    from mambah.pid.chain import PROBNN_DELTAS, prepare_training_table, probnn_from_deltas

    m, step = chain.models[-1], chain.steps[-1]
    t = prepare_training_table(truth)
    cols = {c: t[c].to_numpy(dtype=float) for c in t.columns if t[c].dtype.kind in "fiub"}
    sel = np.ones(len(t), bool) if step.applies is None else cols[step.applies] > 0.5
    cs = np.column_stack([np.nan_to_num(cols[c][sel], nan=0.0) if c == "CaloDLLe" else cols[c][sel] for c in m.conditions])
    out = np.full((len(t), len(m.targets)), np.nan)
    out[sel] = m.generate_array(cs, rng)
    gen = {tname: out[:, j] for j, tname in enumerate(m.targets)}
    if PROBNN_DELTAS[0] in m.targets:
        keep = sel & (cols["hasCalo"] > 0.5)
        for d in PROBNN_DELTAS:
            cols[d] = np.where(keep, gen[d], 0.0)
        gen = probnn_from_deltas(cols)
    return pd.DataFrame({c: np.clip(gen[c], 0.0, 1.0) for c in PROBNN_TARGETS})


def probnn_closure(chain, truth: pd.DataFrame, seed: int = 0, n_repeats: int = 3,
                   given_truth: bool = False) -> dict[str, Any]:
    """The closure of a chain's ``probnn`` step against the reference detector's ProbNN (issue 24).

    The chain generates every output for the truth rows' P, ETA, nTracks, charge (its ProbNN from the
    DLLs *it* drew, as in a production). Scores:

    * ``bdt_ks``: :func:`mambah.validation.bdt_ks_score` over the conditions and the six ProbNN
      outputs (paired twins, as :func:`chain_closure`);
    * ``bdt_ks_all``: the same over the conditions, the eleven PID outputs and the six ProbNN
      (the whole chain; NaN -> -1000 on both sides);
    * ``efficiency``: per cut of :data:`PROBNN_CUTS`, as in :func:`chain_closure`.

    ``given_truth``: the probnn step alone on the truth's own flags and DLLs (the step's closure
    without the earlier steps' differences; ``bdt_ks_all`` then compares the truth's DLLs with
    themselves beside the ProbNN).

    Raises:
        ValueError: the chain has no ProbNN step or the truth lacks the ProbNN columns.
    """
    missing = [c for c in PROBNN_TARGETS if c not in truth]
    if missing:
        raise ValueError(f"the truth sample lacks the ProbNN column(s) {missing}")
    rng = np.random.default_rng([seed, 7321])
    if chain.steps[-1].role != "probnn":
        raise ValueError(f"the PID chain of {chain.species!r} has no probnn step")
    if given_truth:
        gen = truth[list(CHAIN_OUTPUTS)].reset_index(drop=True).join(_probnn_given_truth(chain, truth, rng))
    else:
        gen = chain.generate(truth, rng)
    ref = truth[list(CHAIN_INPUTS)].astype(float).reset_index(drop=True)
    g = ref.copy()
    for c in (*CHAIN_OUTPUTS, *PROBNN_TARGETS):
        ref[c] = truth[c].to_numpy(dtype=float)
        g[c] = gen[c].to_numpy(dtype=float)
    out: dict[str, Any] = {"species": chain.species, "n": int(len(truth))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key, cols in (("", list(CHAIN_INPUTS) + list(PROBNN_TARGETS)),
                          ("_all", list(CHAIN_INPUTS) + list(CHAIN_OUTPUTS) + list(PROBNN_TARGETS))):
            score = bdt_ks_score(ref[cols].fillna(-1000.0), g[cols].fillna(-1000.0), cols, seed=seed,
                                 n_repeats=n_repeats, paired=True)
            out[f"bdt_ks{key}"], out[f"bdt_ks{key}_std"] = float(score.bdt_ks), float(score.bdt_ks_std)
            out[f"auc{key}"] = float(score.auc)
    out["efficiency"] = _efficiencies(ref, g, PROBNN_CUTS)
    return out


#: The name under which ``mambah.pid.chain`` offered it.
closure = chain_closure
