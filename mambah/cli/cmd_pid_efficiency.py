"""``mambah pid-efficiency``: the PIDCalib-style answer — a cut's efficiency in bins, from a PID model.

``mambah pid-efficiency --model DIR --data FILE --cut "DLLp > 5" [--cut ...] [--bins P,ETA]
[--edges P=3000,9300,...] [--weight sWeight] [--draws N] [--out table.csv|.json|.parquet]
[--plot eff.png]``: the model generates its targets for the conditions of every row of FILE
(each row keeping its weight), and the table gives per cut and bin the model's efficiency, its
statistical error, the model uncertainty from the ensemble members (when the model has them),
and — when FILE holds the real target column (a calibration sample) — the data efficiency, the
pull and z = (data − model) / sqrt(σ_ens² + σ_stat²). See :func:`mambah.validation.pideff.pid_efficiency`.
"""

from __future__ import annotations

import argparse


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


#: --chain's default cuts: the typical cuts of the species' own combined DLL(s)
CHAIN_DEFAULT_CUTS = {"K": ["PIDK"], "p": ["PIDp"], "pi": ["PIDK"], "mu": ["isMuon", "PIDmu"], "e": ["PIDe"]}


def register(sub) -> None:
    p = sub.add_parser(
        "pid-efficiency",
        help="efficiency of PID cuts in bins of p, eta (...) from a PID model, with its statistical and ensemble errors",
        description=(
            "Apply a PID model to the conditions of every row of --data and give the efficiency of each --cut in bins "
            "(default: p x eta, weighted-quantile edges of the data), with its statistical error (signed weights: "
            "sqrt(sum w^2 (pass - eff)^2) / sum w) and, for a model with an ensemble, the model uncertainty (standard "
            "deviation of the members' efficiencies). When --data holds the cut's column (a calibration sample), the "
            "data efficiency, the pull (data - model)/sigma_stat and z = (data - model)/sqrt(sigma_ens^2 + "
            "sigma_stat^2) are given too, with their summary."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="PID model directory, or the name of a shipped model")
    which.add_argument("--chain", metavar="SPECIES",
                       help="the PID chain of a species (models pid-SPECIES-*), e.g. K: cuts on its outputs (PIDK, "
                            "PIDp, isMuon ...); the ensemble is the chain's (member k of every step with members); "
                            "default cuts: the species' own DLL (K: PIDK, p: PIDp, mu: isMuon and PIDmu, e: PIDe, "
                            "pi: PIDK)")
    p.add_argument("--data", required=True, help="table of conditions: .parquet, .csv or file.root:tree")
    p.add_argument("--cut", action="append", dest="cuts", metavar="REQ",
                   help="requirement on a target of the model, e.g. 'DLLp > 5' (repeatable; default: the typical "
                        "cuts of the model's targets)")
    p.add_argument("--bins", type=_csv, metavar="C1,C2,...", default=None,
                   help="binning columns (default: the model's momentum and pseudorapidity conditions, e.g. P,ETA)")
    p.add_argument("--edges", action="append", metavar="COL=e0,e1,...",
                   help="edges of a binning column in its unit (repeatable), e.g. P=3000,9300,15600,30000,60000,100000; "
                        "rows outside are left out of the bins (counted); other columns: weighted quantiles of the data")
    p.add_argument("--weight", metavar="COL", default=None, help="per-row weight column (e.g. sWeight; signed allowed)")
    p.add_argument("--seed", type=int, default=0, help="seed of the model's noise")
    p.add_argument("--draws", type=int, default=1,
                   help="noise draws per row (the pass fractions are averaged: the model's own noise shrinks as 1/draws)")
    p.add_argument("--min-neff", type=float, default=100.0,
                   help="Kish effective size (sum w)^2/sum w^2 a bin needs to enter the summary")
    p.add_argument("--models", default=None, help="directory of shipped models (for a model given by name)")
    p.add_argument("--out", metavar="FILE", help="write the table: .csv, .parquet or .json (with the summary)")
    p.add_argument("--plot", metavar="FILE.png", help="plot: efficiency vs p per eta bin, data points and the model band")
    p.set_defaults(func=run)


def run(args) -> int:
    import logging
    import warnings
    from pathlib import Path

    from mambah.cli.cmd_validate import parse_edges
    from mambah.errors import ConfigurationError, ModelDirError, OutOfRangeWarning
    from mambah.io import read_table, require_columns
    from mambah.modeldir import load_card, resolve_model
    from mambah.validation.cuts import typical_cuts
    from mambah.validation.pideff import check_cuts, format_pid_efficiency, load_pid_model, pid_efficiency

    log = logging.getLogger("mambah.pid_efficiency")
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() not in (".csv", ".json", ".parquet"):
        raise ConfigurationError(f"--out {str(out)!r}: the table is written as .csv, .json or .parquet")
    if args.plot and Path(args.plot).suffix.lower() not in (".png", ".pdf", ".svg"):
        raise ConfigurationError(f"--plot {args.plot!r}: write a .png (or .pdf, .svg)")
    edges = parse_edges(args.edges)
    # the cheap checks first (the card, the cuts, the data), then the network
    if args.chain is not None:
        from mambah.pid.chain import CHAIN_INPUTS, CHAIN_OUTPUTS, available_chains

        known = available_chains(args.models)
        if args.chain not in known:
            raise ConfigurationError(f"--chain {args.chain!r}: no PID chain of that species among the models "
                                     f"(chains: {', '.join(known) or 'none'})")
        name, conds, targets = f"PID chain of {args.chain!r}", list(CHAIN_INPUTS), list(CHAIN_OUTPUTS)
        what = name
        own = CHAIN_DEFAULT_CUTS.get(args.chain)
        cuts = args.cuts or ([c.label for c in typical_cuts(own)] if own else [])
    else:
        card = load_card(resolve_model(args.model, args.models))
        if card.get("kind") != "pid":
            raise ModelDirError(f"{args.model!r} holds a {card.get('kind')!r} model, not a PID model (card kind 'pid')")
        name = str(card.get("name", args.model))
        what = f"model {name!r}"
        targets = [t["name"] for t in card.get("targets", [])]
        conds = [c["name"] for c in card.get("conditions", [])]
        cuts = args.cuts or [c.label for c in typical_cuts(targets)]
    if not cuts:
        raise ConfigurationError(f"{what} has no typical cut on its targets ({', '.join(targets)}); give --cut")
    check_cuts(cuts, targets, name)
    log.info("reading %s", args.data)
    df = read_table(args.data)
    require_columns(df, conds, where=f"the data {args.data!r} (conditions of {what})")
    if args.weight:
        require_columns(df, [args.weight], where=f"the data {args.data!r} (--weight)")
    if args.chain is not None:
        from mambah.validation.pideff import ChainModel

        model = ChainModel.load(args.chain, args.models)
    else:
        model = load_pid_model(args.model, args.models)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", OutOfRangeWarning)
        table = pid_efficiency(model, df, cuts, bins=args.bins, edges=edges or None, weight=args.weight,
                               seed=args.seed, draws=args.draws, min_n_eff=args.min_neff)
    seen = set()
    for w in caught:  # one draw after another: each range warning once
        if issubclass(w.category, OutOfRangeWarning):
            if str(w.message) not in seen:
                seen.add(str(w.message))
                log.warning("%s%s", w.message, f" (each of the {args.draws} draws)" if args.draws > 1 else "")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    print(format_pid_efficiency(table))
    if out is not None:
        _write(table, out)
        print(f"table: {out}")
    if args.plot:
        plot(table, args.plot)
        print(f"plot: {args.plot}")
    return 0


def _write(table, out) -> None:
    """The table as JSON (with its summary), Parquet or CSV (by the suffix), written atomically."""
    from mambah.io import write_table
    from mambah.validation.reportdir import write_json

    if out.suffix.lower() == ".json":
        from mambah.validation.pideff import pid_efficiency_to_dict

        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, pid_efficiency_to_dict(table))
        return
    plain = table.copy()
    plain.attrs = {}
    write_table(plain, out)


def plot(table, path) -> None:
    """Efficiency vs p per eta bin (one row of panels per cut): data points with their statistical
    errors, the model as a band (± σ_ens with an ensemble, else ± its statistical error), z below."""
    from mambah.validation.compare import P_NAMES, guess_column
    from mambah.validation.plots import plot_efficiency_slices

    info = table.attrs.get("info", {})
    axes = [c[:-3] for c in table.columns if c.endswith("_lo")]
    x = guess_column(axes, P_NAMES) or axes[0]
    t = table[table["cell"] >= 0].copy()
    k = int(info.get("n_members", 0))
    ens = k >= 2
    t["model_band"] = t["model_ens_error"] if ens else t["model_stat_error"]
    series = [{"eff": "model_eff", "err": "model_band", "kind": "band", "color": "tab:red",
               "label": f"model ± σ_ens ({k} members)" if ens else "model ± stat (no ensemble)"}]
    has_data = "data_eff" in t.columns
    if has_data:
        series.insert(0, {"eff": "data_eff", "err": "data_stat_error", "label": "data ± stat", "color": "black"})
    rows = [(label, g) for label, g in t.groupby("cut", sort=False)]
    title = f"model {info.get('model', '?')}" + (f", {info.get('draws')} draws" if info.get("draws", 1) > 1 else "")
    plot_efficiency_slices(rows, x, series, path, pull=("z" if has_data else None),
                           pull_label="z" if ens else "pull", title=title)
