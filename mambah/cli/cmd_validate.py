"""``mambah validate``: compare a generated sample with a reference, or QA a simulated production.

Two modes:

* ``mambah validate --ref FILE --gen FILE --conditions C1,C2 --targets T1 [--ref-weight COL]
  [--gen-weight COL] [--report DIR] [--seed S]``: the classifier score (BDT KS, AUC, and the
  reference-against-itself floor), 1D KS distances in bins of p and η, efficiency curves of PID
  requirements, the efficiencies of the typical cuts (and ``--cut``) in bins of p × η × occupancy
  with their pulls (``summary["efficiency_pulls"]``), plots and a report folder (``index.html``,
  ``summary.json``, PNGs).
* ``mambah validate --db URL [--report DIR]``: the QA of a production in the event store
  (kinematics and PID per species, reconstructed masses of composites, efficiencies).
"""

from __future__ import annotations

import argparse


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def parse_edges(specs) -> dict[str, list[float]]:
    """``["P=3000,9300,15600", "ETA=2,3,4,5"]`` -> ``{"P": [...], "ETA": [...]}`` (a ConfigurationError
    names the bad one)."""
    from mambah.errors import ConfigurationError

    out = {}
    for spec in specs or []:
        col, sep, vals = spec.partition("=")
        try:
            if not sep or not col.strip():
                raise ValueError
            out[col.strip()] = [float(v) for v in _csv(vals)]
        except ValueError:
            raise ConfigurationError(f"cannot read the edges {spec!r}: write COLUMN=e0,e1,... (e.g. "
                                     "P=3000,9300,15600,100000, in the column's unit)") from None
    return out


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, but not the empty ones (None, False)."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def register(sub) -> None:
    p = sub.add_parser(
        "validate",
        help="score a generated sample against a reference (BDT KS, 1D KS, efficiencies, report), or QA a production",
        description=(
            "Compare a generated sample with a reference sample: a gradient-boosted classifier is trained to tell them "
            "apart on the conditions and targets; the KS distance between its held-out outputs (0 = indistinguishable, "
            "1 = separable) and the ROC AUC are the scores, beside the score of the reference against a disjoint half of "
            "itself (the statistical floor). Also: weighted 1D KS distances per target in bins of p and eta, efficiency "
            "curves of PID requirements and a report folder. With --db, the QA of a simulated production instead. "
            "Give the generated sample the sWeight of the reference row whose conditions produced it (--gen-weight). "
            "Negative sWeights are used as they are, in the classifier training (L2-regularised histogram gradient "
            "boosting; --train-weights clipped sets them to 0 for training only) and always in the evaluation."
        ),
        formatter_class=_Formatter,
    )
    g = p.add_argument_group("sample comparison")
    g.add_argument("--ref", metavar="FILE", help="reference sample: file.root:tree, .parquet or .csv")
    g.add_argument("--gen", metavar="FILE", action="append",
                   help="generated sample (same formats); repeat it for several samples of the same conditions (e.g. "
                        "noise seeds): the BDT KS is then pooled over all of them (one generated sample of a few "
                        "thousand rows scatters the score by ~0.01 however many --repeats)")
    g.add_argument("--conditions", type=_csv, metavar="C1,C2,...", help="condition columns, e.g. P,ETA,nLongTracks")
    g.add_argument("--targets", type=_csv, metavar="T1,T2,...", help="target columns, e.g. DLLp")
    g.add_argument("--ref-weight", metavar="COL", help="weight column of the reference (e.g. sWeight; signed allowed)")
    g.add_argument("--gen-weight", metavar="COL",
                   help="weight column of the generated sample (the sWeight of the data row that gave its conditions)")
    g.add_argument("--p", dest="p_col", metavar="COL", help="momentum column for binning (default: guessed, e.g. P)")
    g.add_argument("--eta", dest="eta_col", metavar="COL", help="pseudorapidity column for binning (default: guessed, e.g. ETA)")
    g.add_argument("--cut", action="append", metavar="REQ", dest="cuts",
                   help="PID requirement for the efficiency curves, e.g. 'DLLK > 5' or 'isMuon' (repeatable; default: "
                        "the typical ones among the targets)")
    g.add_argument("--bins", type=int, default=4, help="quantile bins per axis (p, eta) for the binned comparisons")
    g.add_argument("--eff-bins", type=_csv, metavar="C1,C2,...",
                   help="binning columns of the efficiency pulls (default: p, eta and the occupancy among the "
                        "conditions, e.g. P,ETA,nLongTracks; edges: weighted quantiles of the reference)")
    g.add_argument("--eff-edges", action="append", metavar="COL=e0,e1,...",
                   help="edges of one binning column of the efficiency pulls, in its unit (repeatable), e.g. "
                        "P=3000,9300,15600,30000,60000,100000; rows outside are left out (counted)")
    g.add_argument("--min-neff", type=float, default=100.0,
                   help="Kish effective size (sum w)^2/sum w^2 of the reference a bin needs to enter the pull summaries")
    g.add_argument("--pull-gen-error", action="store_true",
                   help="divide the pulls by sqrt(sigma_ref^2 + sigma_gen^2) instead of sigma_ref (for a generated "
                        "sample not much larger than the reference)")
    g.add_argument("--repeats", type=int, default=3, help="classifier fits on independent splits (mean and spread)")
    g.add_argument("--train-weights", choices=["signed", "clipped"], default="signed",
                   help="classifier training weights: signed sWeights, or negative ones set to 0 (evaluation is always signed)")
    g.add_argument("--paired", action="store_true",
                   help="row i of --gen was generated from the conditions of row i of --ref (twins): split both "
                        "samples with one permutation, so the classifier cannot learn condition points")
    g.add_argument("--cross-check", action="store_true", help="also score with the other --train-weights choice")
    g.add_argument("--max-train-rows", type=int, default=500_000, help="at most this many training rows per fit")
    g.add_argument("--drop-nonfinite", action="store_true", help="drop rows with NaN/inf instead of refusing them")
    g.add_argument("--max-ks", type=float, metavar="X", help="exit with code 1 if the BDT KS exceeds X (for CI)")
    d = p.add_argument_group("production QA")
    d.add_argument("--db", metavar="URL", help="QA of a production in this store (duckdb:///file, sqlite:///file, postgresql+psycopg://...)")
    d.add_argument("--batches", type=_csv, metavar="B1,B2,...", help="only these batches (default: all)")
    c = p.add_argument_group("common")
    c.add_argument("--report", metavar="DIR", help="write the report folder (index.html, summary.json, PNGs) here")
    c.add_argument("--seed", type=int, default=0, help="seed of every split and fit")
    c.add_argument("--threads", type=int, default=1,
                   help="classifier threads (0 = all cores); 1 is bitwise reproducible and fastest on a shared machine")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mambah.errors import ConfigurationError
    from mambah.cli import progress_enabled

    if args.db:
        if args.ref or args.gen:
            raise ConfigurationError("give either --db URL (production QA) or --ref/--gen (sample comparison), not both")
        return _run_db(args, progress_enabled(args))
    missing = [o for o, v in (("--ref", args.ref), ("--gen", args.gen), ("--targets", args.targets)) if not v]
    if args.conditions is None:
        missing.append("--conditions")
    if missing:
        raise ConfigurationError(f"mambah validate needs {', '.join(missing)} (or --db URL for a production QA)")
    return _run_samples(args, progress_enabled(args))


def _run_samples(args, show: bool) -> int:
    import logging

    from mambah.io import read_table
    from mambah.validation.compare import parse_cut
    from mambah.validation.report import validate

    log = logging.getLogger("mambah.validate")
    cuts = [parse_cut(c) for c in (args.cuts or [])]
    features = [*args.conditions, *args.targets]
    edges = parse_edges(args.eff_edges)
    extra = [col for c in cuts for col in c.columns if col not in features]
    extra += [c for c in [*(args.eff_bins or []), *edges] if c not in features]
    ref_cols = list(dict.fromkeys([*features, *extra, *([args.ref_weight] if args.ref_weight else [])]))
    gen_cols = list(dict.fromkeys([*features, *extra, *([args.gen_weight] if args.gen_weight else [])]))
    log.info("reading %s", args.ref)
    ref = read_table(args.ref, ref_cols)
    gen = []
    for path in args.gen:
        log.info("reading %s", path)
        gen.append(read_table(path, gen_cols))
    summary = validate(
        ref, gen, args.conditions, args.targets, args.ref_weight, args.gen_weight, args.report, args.seed,
        p=args.p_col, eta=args.eta_col, cuts=cuts or None, n_bins=args.bins, n_repeats=args.repeats,
        train_weights=args.train_weights, cross_check=args.cross_check, max_train_rows=args.max_train_rows,
        drop_nonfinite=args.drop_nonfinite, show_progress=show, n_threads=args.threads or None,
        sources={"ref": str(args.ref), "gen": args.gen[0] if len(args.gen) == 1 else list(args.gen)},
        paired=args.paired, eff_bins=args.eff_bins, eff_edges=edges or None, min_n_eff=args.min_neff, pull_gen_error=args.pull_gen_error,
    )
    print(headline(summary))
    if args.report:
        print(f"report: {args.report}/index.html")
    if args.max_ks is not None and summary["bdt_ks"] > args.max_ks:
        print(f"BDT KS {summary['bdt_ks']:.4f} exceeds --max-ks {args.max_ks:g}")
        return 1
    return 0


def headline(summary: dict) -> str:
    """The numbers the CLI prints."""
    inp = summary["inputs"]
    lines = [
        f"rows: reference {inp['n_ref']} (effective {inp['n_eff_ref']:.0f}), generated {inp['n_gen']} "
        f"(effective {inp['n_eff_gen']:.0f})",
        f"BDT KS   = {summary['bdt_ks']:.4f} ± {summary['bdt_ks_std']:.4f}"
        f"    (null, reference vs itself: {summary['bdt_ks_null']:.4f} ± {summary['bdt_ks_null_std']:.4f})",
        f"ROC AUC  = {summary['auc']:.4f} ± {summary['auc_std']:.4f}    (null: {summary['auc_null']:.4f})",
    ]
    per = summary.get("bdt", {}).get("bdt_ks_per_sample", [])
    if len(per) > 1:
        lines.append(f"           (pooled over {len(per)} generated samples: " + ", ".join(f"{v:.4f}" for v in per) + ")")
    if "bdt_ks_cross_check" in summary:
        cc = summary["bdt_ks_cross_check"]
        lines.append(f"BDT KS cross-check ({cc['train_weights']} training weights) = {cc['bdt_ks']:.4f} ± {cc['bdt_ks_std']:.4f}")
    for t, k in summary["ks1d"].items():
        s = f"KS 1D {t} = {k['ks']:.4f} (95% null {k['ks_crit95']:.4f})"
        wb = k.get("worst_bin")
        if wb:
            where = []
            if "p_range" in wb:
                where.append(f"{inp['p']} [{wb['p_range'][0]:.4g}, {wb['p_range'][1]:.4g}]")
            if "eta_range" in wb:
                where.append(f"{inp['eta']} [{wb['eta_range'][0]:.3g}, {wb['eta_range'][1]:.3g}]")
            s += f"; worst bin {', '.join(where)}: {wb['ks']:.4f} ({wb['ks_ratio']:.1f}x its 95% null)"
        lines.append(s)
    for label, e in summary["efficiencies"].items():
        lines.append(f"eff({label}): reference {e['eff_ref']:.4f}, generated {e['eff_gen']:.4f}")
    ep = summary.get("efficiency_pulls")
    if ep:
        lines.append("")
        lines += pulls_headline(ep)
    for w in summary.get("warnings", []):
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def _fmt(v, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def pulls_headline(ep: dict) -> list[str]:
    """The compact table of the efficiency pulls: per cut the whole-sample efficiencies (in %), the
    pull mean, robust width and RMS over the bins used, and the worst bin."""
    from mambah.validation.compare import P_NAMES, guess_column

    axes = list(ep["bins"])
    lines = [f"efficiency pulls in bins of {' x '.join(axes)}: pull = (gen - ref) / sigma ({ep['pull_error']} error, "
             f"signed weights); summaries over the bins with n_eff >= {ep['min_n_eff']:g}; pull score (RMS) "
             f"{_fmt(ep.get('score'), '.2f')}"]
    rows = [("cut", "ref [%]", "gen [%]", "pull", "mean", "width", "rms", "bins", "worst bin")]
    for label, v in ep["cuts"].items():
        o, sm = v["overall"], v["summary"]
        pc = (lambda x: "–" if x is None else f"{100 * x:.2f}")
        ref = pc(o.get("ref_eff")) + (f"±{100 * o['ref_error']:.2f}" if o.get("ref_error") is not None else "")
        wb = sm.get("worst_bin")
        where = "–"
        if wb:
            parts = []
            for a in axes:
                lo, hi = wb[f"{a}_lo"], wb[f"{a}_hi"]
                if guess_column([a], P_NAMES):
                    parts.append(f"{a} {lo / 1e3:.3g}-{hi / 1e3:.3g} GeV/c")
                else:
                    parts.append(f"{a} {lo:.3g}-{hi:.3g}")
            where = f"{', '.join(parts)}: {pc(wb['ref_eff'])} -> {pc(wb['gen_eff'])} % ({wb['pull']:+.1f})"
        rows.append((label, ref, pc(o.get("gen_eff")), _fmt(o.get("pull"), "+.2f"), _fmt(sm.get("pull_mean"), "+.2f"),
                     _fmt(sm.get("pull_width"), ".2f"), _fmt(sm.get("pull_rms"), ".2f"),
                     f"{sm['n_bins']}/{sm['n_bins_total']}", where))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        lines.append("  " + "  ".join(c.ljust(w) if i in (0, len(r) - 1) else c.rjust(w)
                                      for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    if ep.get("n_ref_outside") or ep.get("n_gen_outside"):
        lines.append(f"  ({ep['n_ref_outside']} reference and {ep['n_gen_outside']} generated rows outside the given "
                     "edges are left out)")
    return lines


def _run_db(args, show: bool) -> int:
    from mambah.validation.production import production_headline, validate_production

    batches = [int(b) for b in args.batches] if args.batches else None
    summary = validate_production(args.db, args.report, batches=batches, show_progress=show)
    print(production_headline(summary))
    if args.report:
        print(f"report: {args.report}/index.html")
    return 0
