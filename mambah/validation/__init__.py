"""Validation of generative models: the classifier two-sample score ("BDT KS"), 1D comparisons in
bins of p and η, PID efficiency curves, efficiencies of PID cuts in bins with their pulls,
PIDCalib-style efficiency tables of a model, plots and reports (``mambah validate``,
``mambah pid-efficiency``).

Quick use::

    from mambah.validation import bdt_ks_score, efficiency_pulls, pull_score, pid_efficiency
    res = bdt_ks_score(data, generated, ["P", "ETA", "nLongTracks", "DLLp"],
                       ref_weight="sWeight", gen_weight="sWeight", seed=0)
    res.bdt_ks, res.bdt_ks_std, res.auc
    pulls = efficiency_pulls(data, generated, ["DLLp"], weight="sWeight")   # DLLp > 0, 5, 10, 15
    pull_score(pulls)                                                      # RMS of the bins' pulls
    table = pid_efficiency("pid-p-dllp-lhcb-run3", data, ["DLLp > 5"], weight="sWeight")
"""

from __future__ import annotations

from mambah._lazy import lazy_attributes

_LAZY = {
    "bdt_ks_score": "mambah.validation.bdt",
    "bdt_ks_null": "mambah.validation.bdt",
    "BDTKSResult": "mambah.validation.bdt",
    "CLASSIFIER_DEFAULTS": "mambah.validation.bdt",
    "validate": "mambah.validation.report",
    "write_report": "mambah.validation.report",
    "validate_production": "mambah.validation.production",
    "sanity_table": "mambah.validation.sanity",
    "sanity_cases": "mambah.validation.sanity",
    "weighted_ks": "mambah.validation.stats",
    "weighted_auc": "mambah.validation.stats",
    "weighted_ecdf": "mambah.validation.stats",
    "weighted_quantiles": "mambah.validation.stats",
    "effective_size": "mambah.validation.stats",
    "Cut": "mambah.validation.cuts",
    "parse_cut": "mambah.validation.cuts",
    "efficiency_in_bins": "mambah.validation.efficiency",
    "pull_summary": "mambah.validation.efficiency",
    "efficiency_pulls": "mambah.validation.pideff",
    "pull_score": "mambah.validation.pideff",
    "pid_efficiency": "mambah.validation.pideff",
    "default_bins": "mambah.validation.pideff",
    "chain_closure": "mambah.validation.closure",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_attributes('mambah.validation', _LAZY, globals(), __all__)
