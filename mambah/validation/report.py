"""``validate``: the full comparison of a generated sample with a reference, and its report folder.

The report folder holds the PNG plots, ``index.html`` (a summary table and every plot; open it in
a browser) and ``summary.json`` (every number; top-level keys ``bdt_ks``, ``bdt_ks_std``, ``auc``,
``auc_std``, ``bdt_ks_null``, ``bdt_ks_null_std``, ``auc_null``, ``ks1d``, ``efficiencies``,
``efficiency_pulls`` (:func:`mambah.validation.pideff.efficiency_pulls`: the efficiencies of the
typical and the given cuts in bins of p, η and occupancy, their pulls and summaries), ...).
The folder is written to a temporary name and renamed when complete, so a failure never leaves a
half-written report, and an existing report is replaced only once the new one is complete.
"""

from __future__ import annotations

import datetime as _dt
import html
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mambah._version import __version__
from mambah.errors import ConfigurationError, DataError
from mambah.progress import progress
from mambah.validation.bdt import BDTKSResult, check_settings, score_samples
from mambah.validation.compare import (ETA_NAMES, OCCUPANCY_NAMES, P_NAMES, default_cuts, efficiency_table,
                                       guess_column, ks1d_table)
from mambah.validation.cuts import Cut, parse_cut
from mambah.validation.inputs import Sample, pair_warnings, prepare_pair
from mambah.validation.pideff import MIN_N_EFF, efficiency_pulls
from mambah.validation.reportdir import check_dir, clean_json, finalize, prepare_dir, slug, write_json

log = logging.getLogger(__name__)

__all__ = ["validate", "write_report", "P_NAMES", "ETA_NAMES"]

# P_NAMES, ETA_NAMES (re-exported here): column names recognised as momentum / pseudorapidity
# when p= / eta= are not given (mambah.validation.compare)


#: how the numbers were made (copied into summary.json)
METHOD = (
    "BDT KS: scikit-learn HistGradientBoostingClassifier (max_depth 5, max_leaf_nodes 14) trained on a random half "
    "of each sample to separate reference (0) from generated (1) on conditions + targets, class-balanced by weight "
    "sums; features binned into 255 unweighted quantile bins. Training weights 'signed': the sWeights as given "
    "(negative ones included: each row's gradient and hessian are multiplied by its weight, so background rows "
    "cancel in every histogram bin); 'clipped': negative weights set to 0 for training only. On the held-out half: "
    "weighted two-sample KS distance of the classifier outputs (max difference of the signed-weight ECDFs) and the "
    "weighted Mann-Whitney ROC AUC, always with the signed weights; mean and standard deviation over repeats with "
    "independent splits. Null: two disjoint random halves of the reference scored against each other the same way. "
    "ks1d: weighted KS per target, overall and in weighted-quantile bins of p and eta of the reference; ks_crit95 = "
    "1.358 sqrt((n+m)/(n m)) with Kish effective sizes; worst bin = largest ks/ks_crit95."
)


def _null_samples(ref: Sample, seed: int) -> tuple[Sample, Sample]:
    rng = np.random.default_rng([int(seed), 104729])
    perm = rng.permutation(len(ref))
    halves = []
    for idx, name in ((np.sort(perm[: len(ref) // 2]), "reference half A"), (np.sort(perm[len(ref) // 2:]), "reference half B")):
        halves.append(Sample(ref.data.iloc[idx].reset_index(drop=True), ref.weights[idx], ref.weighted, name))
    return halves[0], halves[1]




def validate(
    ref,
    gen,
    conditions: Sequence[str],
    targets: Sequence[str],
    ref_weight=None,
    gen_weight=None,
    report_dir: str | os.PathLike | None = None,
    seed: int = 0,
    *,
    p: str | None = None,
    eta: str | None = None,
    cuts: Sequence[str | Cut] | None = None,
    n_bins: int = 4,
    n_eff_bins: int = 10,
    n_repeats: int = 3,
    train_weights: str = "signed",
    cross_check: bool = False,
    classifier_options: dict | None = None,
    max_train_rows: int | None = 500_000,
    drop_nonfinite: bool = False,
    min_rows: int = 100,
    show_progress: bool = False,
    n_threads: int | None = 1,
    sources: dict | None = None,
    paired: bool = False,
    eff_bins=None,
    eff_edges: dict | None = None,
    min_n_eff: float = MIN_N_EFF,
    pull_gen_error: bool = False,
) -> dict:
    """Compare a generated sample with a reference: classifier score, 1D KS in (p, η) bins, efficiencies.

    Args:
        ref, gen: the reference and generated samples (DataFrames). ``gen`` may also be a list of
            generated samples of the same conditions (e.g. one per noise seed of a model): the
            classifier score is then pooled over the fits of all of them
            (:meth:`BDTKSResult.pooled`; one generated sample of a few thousand rows scatters the
            score by ~0.01 however many fits are averaged), and the 1D comparisons, efficiencies
            and plots use all of them together.
        conditions: condition columns (e.g. ``["P", "ETA", "nLongTracks"]``).
        targets: target columns (the generated quantities, e.g. ``["DLLp"]``).
        ref_weight, gen_weight: column name, per-row array or None. Give the generated sample the
            sWeight of the reference row whose conditions produced it (see :mod:`.bdt`).
        report_dir: write PNGs, ``index.html`` and ``summary.json`` there (None: numbers only).
        seed: fixes every random split and fit.
        p, eta: the momentum / pseudorapidity columns for the binned comparisons (default: guessed
            among the conditions: ``P``/``p``/``*_P``, ``ETA``/``eta``/``*_ETA``; absent = not binned).
        cuts: PID requirements for the efficiency curves (``"DLLK > 5"``, ``"isMuon"``); default:
            the typical ones that exist among the targets (DLLK > 0, > 5, DLLp > 0, > 5, isMuon,
            ...), else each target above the reference median.
        n_bins: quantile bins per axis (p and η) for the binned KS and the plots.
        n_eff_bins: quantile bins of the efficiency curves.
        n_repeats, train_weights, classifier_options: see :func:`~mambah.validation.bdt_ks_score`.
        cross_check: also score with training weights clipped at zero (``bdt_ks_clipped``).
        max_train_rows: at most this many training rows per fit (cost control for large samples;
            the evaluation always uses every held-out row). None = all.
        drop_nonfinite: drop NaN/inf rows instead of refusing them.
        min_rows: refuse samples with fewer rows.
        show_progress: tqdm bars.
        n_threads: OpenMP threads of the classifier (default 1 for bitwise reproducibility and
            speed on shared machines; None = all cores).
        sources: description of the inputs stored in the summary (e.g. file names).
        paired: row i of ``gen`` was generated from the conditions of row i of ``ref`` (see
            :func:`~mambah.validation.bdt_ks_score`).
        eff_bins: bins of the efficiency pulls (``summary["efficiency_pulls"]``): None (default
            bins of the reference in p, η and the occupancy, those found among the conditions or
            given as ``p``/``eta``; :func:`mambah.validation.pideff.default_bins`), a list of
            condition columns, or ``{column: edges}``. The cuts are the typical ones of the targets
            plus ``cuts``.
        eff_edges: ``{column: edges}`` replacing the default edges of some binning columns (a
            column not among them is added); rows outside given edges are left out (counted).
        min_n_eff: Kish effective size of the reference a bin needs to enter the pulls' summaries.
        pull_gen_error: the pulls' denominator adds the generated sample's error to the reference's.

    Returns:
        The summary (the content of ``summary.json``).
    """
    t0 = time.perf_counter()
    clf = check_settings(n_repeats, 0.5, train_weights, classifier_options)
    conditions, targets = list(conditions), list(targets)
    if not targets:
        raise ConfigurationError("no targets given: name the generated columns to compare (e.g. DLLp)")
    features = [*conditions, *targets]
    overlap = set(conditions) & set(targets)
    if overlap:
        raise ConfigurationError(f"columns both condition and target: {', '.join(sorted(overlap))}")
    p = p if p is not None else guess_column(conditions, P_NAMES)
    eta = eta if eta is not None else guess_column(conditions, ETA_NAMES)
    for name, col in (("p", p), ("eta", eta)):
        if col is not None and col not in features:
            raise ConfigurationError(f"the {name} column {col!r} must be one of the conditions ({', '.join(conditions)})")
    if report_dir is not None:
        check_dir(Path(report_dir))
    parsed = [c if isinstance(c, Cut) else parse_cut(c) for c in (cuts or [])]
    user_cuts = list(parsed)
    if eff_bins is None:
        axes = [c for c in (p, eta) if c is not None]
        occ = guess_column(conditions, OCCUPANCY_NAMES)
        axes += [occ] if occ is not None and occ not in axes else []
        eff_bins = axes or conditions[:2] or None
    if eff_edges:
        eff_bins = {**({b: None for b in eff_bins} if not isinstance(eff_bins, dict) else eff_bins),
                    **{k: list(v) for k, v in eff_edges.items()}}
    bin_cols = list(eff_bins) if eff_bins is not None else []
    extra = [col for c in parsed for col in c.columns if col not in features]
    extra = list(dict.fromkeys([*extra, *(b for b in bin_cols if b not in features)]))
    gens = [gen] if isinstance(gen, pd.DataFrame) or not isinstance(gen, (list, tuple)) else list(gen)
    if not gens:
        raise ConfigurationError("no generated sample given")
    pairs = [prepare_pair(ref, gi, [*features, *extra], ref_weight, gen_weight, drop_nonfinite=drop_nonfinite,
                          min_rows=max(min_rows, 2 * 100)) for gi in gens]
    r, draws = pairs[0][0], [gi for _, gi in pairs]
    g = draws[0] if len(draws) == 1 else Sample(
        data=pd.concat([gi.data for gi in draws], ignore_index=True),
        weights=np.concatenate([gi.weights for gi in draws]), weighted=draws[0].weighted, name="generated")
    warns = pair_warnings(r, draws[0])
    for w in warns:
        log.warning(w)
    if not parsed:
        parsed = default_cuts(targets, r)

    steps = ["BDT score", "null (reference vs itself)"] + (["clipped cross-check"] if cross_check else []) + \
        ["1D KS", "efficiencies", "efficiency pulls"] + (["plots"] if report_dir is not None else [])
    bar = progress(total=len(steps), enabled=show_progress, desc="validate", unit="step")
    timings = {}

    def step(name):
        bar.set_postfix_str(name)
        timings[name] = time.perf_counter()

    def done(name):
        timings[name] = round(time.perf_counter() - timings[name], 3)
        bar.update(1)

    common = dict(n_repeats=n_repeats, test_fraction=0.5, classifier=clf, max_train_rows=max_train_rows,
                  show_progress=False, n_threads=n_threads)
    try:
        step("BDT score")
        if paired and (drop_nonfinite or any(len(r.weights) != len(gi.weights) for gi in draws)):
            raise DataError("paired=True needs samples of equal length without dropped rows: row i of the generated "
                            "sample must be the twin of row i of the reference "
                            f"({len(r.weights)} vs {', '.join(str(len(gi.weights)) for gi in draws)} rows)")
        scores = [score_samples(r, gi, features, seed=seed + i, train_weights=train_weights, desc="BDT",
                                 paired=paired, **common) for i, gi in enumerate(draws)]
        res: BDTKSResult = BDTKSResult.pooled(scores)
        done("BDT score")
        step("null (reference vs itself)")
        a, b = _null_samples(r, seed)
        null: BDTKSResult = score_samples(a, b, features, seed=seed, train_weights=train_weights, desc="null", **common)
        done("null (reference vs itself)")
        clipped = None
        if cross_check:
            step("clipped cross-check")
            other = "clipped" if train_weights == "signed" else "signed"
            clipped = BDTKSResult.pooled([score_samples(r, gi, features, seed=seed + i, train_weights=other,
                                                         desc="cross-check", paired=paired, **common)
                                          for i, gi in enumerate(draws)])
            done("clipped cross-check")
        step("1D KS")
        ks1d, binning = ks1d_table(r, g, targets, p, eta, n_bins=n_bins)
        done("1D KS")
        step("efficiencies")
        effs = efficiency_table(r, g, parsed, p, eta, n_bins=n_eff_bins)
        done("efficiencies")
        step("efficiency pulls")
        pulls = None
        if eff_bins is not None:
            pulls = efficiency_pulls(r.data, g.data, targets, weight=r.weights, gen_weight=g.weights,
                                     cuts=user_cuts, bins=eff_bins, min_n_eff=min_n_eff,
                                     gen_error_in_pull=pull_gen_error)
        else:
            warns.append("no binning column for the efficiency pulls (no p, eta or occupancy among the conditions, "
                         "none given): efficiency_pulls is empty")
            log.warning(warns[-1])
        done("efficiency pulls")

        summary = {
            "bdt_ks": res.bdt_ks, "bdt_ks_std": res.bdt_ks_std, "auc": res.auc, "auc_std": res.auc_std,
            "bdt_ks_null": null.bdt_ks, "bdt_ks_null_std": null.bdt_ks_std, "auc_null": null.auc,
            "auc_null_std": null.auc_std,
            "ks1d": ks1d,
            "efficiencies": effs,
            "efficiency_pulls": pulls,
            "bdt": {**res.to_dict(), "paired": bool(paired), "n_generated_samples": len(draws),
                    "bdt_ks_per_sample": [x.bdt_ks for x in scores]},
            "null": {**null.to_dict(), "note": "two disjoint random halves of the reference scored against each other "
                     "with the same procedure; each half has half the rows"},
            "binning": binning,
            "inputs": {
                "conditions": conditions, "targets": targets, "p": p, "eta": eta,
                "ref_weight": ref_weight if isinstance(ref_weight, str) or ref_weight is None else "array",
                "gen_weight": gen_weight if isinstance(gen_weight, str) or gen_weight is None else "array",
                "n_ref": len(r), "n_gen": len(g), "n_eff_ref": res.n_eff_ref, "n_eff_gen": res.n_eff_gen,
                "sum_w_ref": float(r.weights.sum()), "sum_w_gen": float(g.weights.sum()),
                "negative_weight_fraction_ref": float(np.mean(r.weights < 0)),
                "negative_weight_fraction_gen": float(np.mean(g.weights < 0)),
                **({"sources": sources} if sources else {}),
            },
            "settings": {"seed": int(seed), "n_bins": n_bins, "n_eff_bins": n_eff_bins, "n_repeats": n_repeats,
                         "eff_bins": list(eff_bins) if eff_bins is not None else None,
                         "eff_edges": dict(eff_edges) if eff_edges else None, "min_n_eff": min_n_eff,
                         "pull_gen_error": bool(pull_gen_error),
                         "train_weights": train_weights, "classifier": clf, "max_train_rows": max_train_rows,
                         "drop_nonfinite": drop_nonfinite},
            "warnings": warns,
            "method": METHOD,
            "mambah_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        if clipped is not None:
            summary["bdt_ks_cross_check"] = clipped.to_dict()
        if report_dir is not None:
            step("plots")
            summary["plots"] = {}
            summary["timings_s"] = timings
            write_report(summary, report_dir, r, g, res, show_progress=show_progress)
            done("plots")
    finally:
        bar.close()
    summary["timings_s"] = {**timings, "total": round(time.perf_counter() - t0, 3)}
    summary = clean_json(summary)
    if report_dir is not None:
        # rewrite summary.json with the final timings (the folder is already in place)
        write_json(Path(report_dir) / "summary.json", summary)
    return summary


def write_report(summary: dict, report_dir, ref: Sample, gen: Sample, res: BDTKSResult | None = None,
                 *, show_progress: bool = False) -> Path:
    """Write the PNGs, ``index.html`` and ``summary.json`` of ``summary`` into ``report_dir``.

    ``summary["plots"]`` is filled with ``{section: [relative PNG paths]}``.
    """
    from mambah.validation.pideff import pulls_frame
    from mambah.validation.plots import (plot_classifier_output, plot_efficiency, plot_efficiency_slices, plot_target,
                                         plot_target_bins)

    report_dir = Path(report_dir)
    tmp = prepare_dir(report_dir)
    try:
        plots: dict[str, list[str]] = {"classifier": [], "targets": [], "targets_binned": [], "efficiencies": [],
                                       "efficiency_pulls": []}
        inp = summary["inputs"]
        jobs = []
        if res is not None and res.scores:
            jobs.append(("classifier", "classifier_output.png",
                         lambda path: plot_classifier_output(res.scores, path, res.bdt_ks, res.auc)))
        for t in inp["targets"]:
            k = summary["ks1d"][t]
            jobs.append(("targets", f"target_{slug(t)}.png", lambda path, t=t, k=k: plot_target(ref, gen, t, path, k["ks"])))
            if k["bins"]:
                jobs.append(("targets_binned", f"target_{slug(t)}_bins.png",
                             lambda path, t=t, k=k: plot_target_bins(ref, gen, t, summary["binning"], inp["p"], inp["eta"],
                                                                     path, k["bins"])))
        for label, entry in summary["efficiencies"].items():
            if entry["vs"]:
                jobs.append(("efficiencies", f"eff_{slug(label)}.png",
                             lambda path, label=label, entry=entry: plot_efficiency(label, entry, path)))
        ep = summary.get("efficiency_pulls")
        if ep:
            x = inp["p"] if inp["p"] in ep["bins"] else next(iter(ep["bins"]))
            series = [{"eff": "ref_eff", "err": "ref_error", "label": "reference", "color": "black"},
                      {"eff": "gen_eff", "err": "gen_error", "label": "generated", "color": "tab:red"}]
            for label, entry in ep["cuts"].items():
                sm = entry["summary"]
                title = (f"{label}: pulls mean {_f(sm.get('pull_mean'), 2)}, robust width {_f(sm.get('pull_width'), 2)}"
                         f", {sm['n_bins']}/{sm['n_bins_total']} bins with n_eff ≥ {ep['min_n_eff']:g} (open: fewer)")
                jobs.append(("efficiency_pulls", f"effpull_{slug(label)}.png",
                             lambda path, label=label, title=title: plot_efficiency_slices(
                                 [(label, pulls_frame(ep, label))], x, series, path, pull="pull",
                                 pull_label="(gen−ref)/σ", title=title)))
        for section, name, fn in progress(jobs, enabled=show_progress, desc="plots", unit="plot"):
            fn(tmp / name)
            plots[section].append(name)
        summary["plots"] = plots
        write_json(tmp / "summary.json", summary)
        (tmp / "index.html").write_text(render_html(summary))
        finalize(tmp, report_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("validation report written to %s", report_dir)
    return report_dir


def _f(v, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _range(r) -> str:
    return f"[{r[0]:.4g}, {r[1]:.4g}]"


def render_html(summary: dict) -> str:
    """A self-contained HTML page: the headline table, the per-target tables and every plot."""
    e = html.escape
    inp = summary["inputs"]
    rows = [
        ("BDT KS (generated vs reference)", f"{_f(summary['bdt_ks'])} ± {_f(summary['bdt_ks_std'])}"),
        ("BDT KS null (reference half vs half)", f"{_f(summary['bdt_ks_null'])} ± {_f(summary['bdt_ks_null_std'])}"),
        ("ROC AUC", f"{_f(summary['auc'])} ± {_f(summary['auc_std'])}"),
        ("ROC AUC null", f"{_f(summary['auc_null'])} ± {_f(summary.get('auc_null_std'))}"),
    ]
    if "bdt_ks_cross_check" in summary:
        cc = summary["bdt_ks_cross_check"]
        rows.append((f"BDT KS cross-check (train weights {cc['train_weights']})", f"{_f(cc['bdt_ks'])} ± {_f(cc['bdt_ks_std'])}"))
    rows += [
        ("conditions", ", ".join(inp["conditions"])), ("targets", ", ".join(inp["targets"])),
        ("rows (ref / gen)", f"{inp['n_ref']} / {inp['n_gen']}"),
        ("effective rows (ref / gen)", f"{inp['n_eff_ref']:.0f} / {inp['n_eff_gen']:.0f}"),
        ("weights (ref / gen)", f"{inp['ref_weight'] or '1'} / {inp['gen_weight'] or '1'}"),
        ("negative-weight fraction (ref / gen)", f"{inp['negative_weight_fraction_ref']:.3f} / {inp['negative_weight_fraction_gen']:.3f}"),
        ("seed, repeats", f"{summary['settings']['seed']}, {summary['settings']['n_repeats']}"),
    ]
    if inp.get("sources"):
        rows += [(f"source ({k})", str(v)) for k, v in inp["sources"].items()]
    head = "\n".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows)
    ks_rows = []
    for t, k in summary["ks1d"].items():
        wb = k.get("worst_bin")
        where = "–"
        if wb:
            parts = []
            if "p_range" in wb:
                parts.append(f"{inp['p']} {_range(wb['p_range'])}")
            if "eta_range" in wb:
                parts.append(f"{inp['eta']} {_range(wb['eta_range'])}")
            where = ", ".join(parts) + f": KS {_f(wb['ks'])} ({_f(wb['ks_ratio'], 2)}× the 95% null value)"
        ks_rows.append(f"<tr><td>{e(t)}</td><td>{_f(k['ks'])}</td><td>{_f(k['ks_crit95'])}</td><td>{e(where)}</td></tr>")
    eff_rows = "\n".join(
        f"<tr><td>{e(label)}</td><td>{_f(v['eff_ref'])}</td><td>{_f(v['eff_gen'])}</td></tr>"
        for label, v in summary["efficiencies"].items()
    )
    pull_html = ""
    ep = summary.get("efficiency_pulls")
    if ep:
        prow = []
        for label, v in ep["cuts"].items():
            o, sm = v["overall"], v["summary"]
            wb = sm.get("worst_bin")
            where = "–"
            if wb:
                where = ", ".join(f"{c} {_range([wb[c + '_lo'], wb[c + '_hi']])}" for c in ep["bins"]) + \
                    f": {_f(wb['ref_eff'])} → {_f(wb['gen_eff'])}, pull {_f(wb['pull'], 2)}"
            prow.append(f"<tr><td>{e(label)}</td><td>{_f(o.get('ref_eff'))} ± {_f(o.get('ref_error'))}</td>"
                        f"<td>{_f(o.get('gen_eff'))}</td><td>{_f(o.get('pull'), 2)}</td>"
                        f"<td>{_f(sm.get('pull_mean'), 2)}</td><td>{_f(sm.get('pull_width'), 2)}</td>"
                        f"<td>{_f(sm.get('pull_rms'), 2)}</td><td>{sm['n_bins']}/{sm['n_bins_total']}</td>"
                        f"<td>{e(where)}</td></tr>")
        pull_html = (
            "<h2>Efficiencies in bins: pulls</h2>"
            f"<p>Bins: {e(', '.join(ep['bins']))} ({e(ep.get('bins_source', ''))}); pull = (generated − reference) / "
            f"σ ({e(ep['pull_error'])} error, signed sWeights: σ² = Σ w² (pass − ε)² / (Σ w)²); the summaries use the "
            f"bins whose reference has a Kish effective size ≥ {ep['min_n_eff']:g}. Pull score (RMS of all used pulls): "
            f"{_f(ep.get('score'), 3)}.</p>"
            "<table><tr><th>requirement</th><th>reference (all)</th><th>generated (all)</th><th>pull (all)</th>"
            "<th>pull mean</th><th>robust width</th><th>RMS</th><th>bins used</th><th>worst bin</th></tr>"
            + "".join(prow) + "</table>")
    warn = "".join(f"<p class='warn'>⚠ {e(w)}</p>" for w in summary.get("warnings", []))
    sections = []
    titles = {"classifier": "Classifier output (held-out rows, first repeat)", "targets": "Target distributions",
              "targets_binned": "Target distributions in bins of p and η", "efficiencies": "Efficiencies of PID requirements",
              "efficiency_pulls": "Efficiencies in bins and their pulls"}
    for key, title in titles.items():
        imgs = summary.get("plots", {}).get(key, [])
        if imgs:
            sections.append(f"<h2>{e(title)}</h2>" + "".join(
                f"<figure><a href='{e(i)}'><img src='{e(i)}' alt='{e(i)}'></a><figcaption>{e(i)}</figcaption></figure>" for i in imgs))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>mambah validation report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1400px; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: left; }}
th {{ background: #f3f3f3; }}
img {{ max-width: 100%; border: 1px solid #eee; }}
figure {{ display: inline-block; margin: 0.5em; vertical-align: top; max-width: 100%; }}
.warn {{ color: #a30; }}
</style></head><body>
<h1>mambah validation report</h1>
<p>BDT KS: Kolmogorov-Smirnov distance between the held-out outputs of a gradient-boosted classifier trained
to separate generated from reference rows (0 = indistinguishable, 1 = fully separable); compare it with the
null value (reference against a disjoint part of itself). Created {e(summary.get('created', ''))} by mambah
{e(summary.get('mambah_version', ''))}; every number is in <a href="summary.json">summary.json</a>.</p>
{warn}
<table>{head}</table>
<h2>1D Kolmogorov-Smirnov distances</h2>
<table><tr><th>target</th><th>KS (all)</th><th>95% null value</th><th>worst (p, η) bin</th></tr>
{''.join(ks_rows)}</table>
<h2>Efficiencies (whole sample)</h2>
<table><tr><th>requirement</th><th>reference</th><th>generated</th></tr>
{eff_rows}</table>
{pull_html}
{''.join(sections)}
</body></html>
"""
