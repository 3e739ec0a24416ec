"""``mambah train marginals``: fit the binned calibration of a trained PID model (:mod:`mambah.nn.marginals`).

Example::

    mambah train marginals --model models/pid-pi-rich --data pi_calib.parquet --weight sWeight
    mambah train marginals --model models/pid-pi-flags --data pi_calib.parquet --targets isMuon --split none

For a GAN (kind ``pid``) every target is mapped, in (P, ETA) bins, onto the sWeighted distribution of
the data (PIDCorr-style quantile mapping that keeps the model's correlations); for a flag classifier
(kind ``pid-flags``) the logit of each flag's probability is shifted, per bin, so that its sWeighted
rate is the data's. The model directory gets ``marginals.npz`` and a ``marginal_correction`` section
in its card, and every generation from it (``mambah generate``, the PID chain, variations) is
corrected from then on.
"""

from __future__ import annotations


def register(kinds) -> None:
    p = kinds.add_parser(
        "marginals", help="calibrate a trained PID GAN's output tails, or a flag classifier's rates, on an sWeighted "
                          "sample in (P, ETA) bins",
        description="Map each target of a trained PID GAN onto the sWeighted distribution of a calibration sample "
                    "in (P, ETA) bins (y = Q_data(F_model(x)), per bin and target), or shift the logit of a flag "
                    "classifier's probability per bin onto the sample's sWeighted flag rate; ensemble members get "
                    "their own maps on bootstrap replicas of the sample. Stored in the model directory.")
    p.add_argument("--model", required=True,
                   help="the model directory to calibrate, in place: a PID GAN (kind 'pid') or a flag classifier "
                        "(kind 'pid-flags')")
    p.add_argument("--data", required=True, action="append",
                   help="calibration table: .parquet, .csv or file.root:tree; repeat it to fit on several tables "
                        "together (e.g. calibration samples of several runs)")
    p.add_argument("--weight", default="sWeight", help="sWeight column (default sWeight; 'none': weight 1)")
    p.add_argument("--selection", default="card",
                   help="pandas query for the rows the model describes (default: the model's training selection)")
    p.add_argument("--targets", default=None, help="comma-separated targets to correct (default: all)")
    p.add_argument("--p-bins", type=int, default=24, help="P bins of equal sWeighted population (default 24)")
    p.add_argument("--extra-p-edges", default="", metavar="P1,P2,...",
                   help="further P edges in MeV/c among those bins, where the response changes fast inside a bin "
                        "(just above a Cherenkov threshold), e.g. 2800,3000,3200")
    p.add_argument("--eta-bins", type=int, default=2, help="ETA bins of equal sWeighted population (default 2)")
    p.add_argument("--split", default="auto",
                   help="comma-separated 0/1 conditions whose state splits the bins too; 'auto' (default): every "
                        "condition holding only 0 and 1 except charge (the RICH acceptance and threshold codes); "
                        "'none': no split")
    p.add_argument("--repeats", type=int, default=2, help="GAN: model draws per row (default 2)")
    p.add_argument("--given", action="append", default=[], metavar="TARGET=GIVEN|TARGET+GIVEN",
                   help="GAN: map TARGET in classes of GIVEN (another corrected target, mapped first) in each bin, so "
                        "that the two targets' joint distribution becomes the data's at the classes' resolution; "
                        "TARGET+GIVEN maps their sum in the classes instead (TARGET = mapped sum - GIVEN: cuts on the "
                        "sum exactly right), e.g. RichDLLpK+RichDLLk for PIDp = RichDLLk + RichDLLpK (repeatable)")
    p.add_argument("--classes", type=int, default=5, help="GAN: classes of a --given map (default 5)")
    p.add_argument("--logit-offset", action="append", default=[], metavar="TARGET=CONDITION|probnn",
                   help="GAN: map TARGET + logit(CONDITION) instead of TARGET (then subtract the offset): for a residual "
                        "ProbNN step, dProbNNk=SurProbNNk maps logit(ProbNNk), so every cut on ProbNNk gets the data's "
                        "efficiency in each bin; 'probnn': every dProbNNx target with its SurProbNNx (repeatable)")
    p.add_argument("--max-rel-error", type=float, default=None,
                   help="flag classifier: calibrate a bin's rate only if the data give it (or 1 - rate) to this relative "
                        "error (default 0.25)")
    p.add_argument("--min-weight", type=float, default=None, metavar="W",
                   help="a bin (P, ETA, state) with less sWeighted signal than W keeps the model's own output, reported "
                        "at run time (UncalibratedWarning); default mambah.nn.marginals.MIN_BIN_WEIGHT = 2000")
    p.add_argument("--seed", type=int, default=0, help="noise and bootstrap seed (default 0)")
    p.add_argument("--description", default=None, help="what the data is, for the card")
    p.set_defaults(func=run)


def _columns(spec, selection, model, weight, targets) -> list[str] | None:
    """The columns to read from a Parquet file (a big calibration table is read in part); None: all."""
    from mambah.io import parquet_columns

    sel = selection
    if sel == "card":
        sel = (model.card.get("training_data") or {}).get("selection") or ""
    return parquet_columns(spec, [*model.conditions, *(targets or model.targets), *([weight] if weight else [])], sel)


def run(args) -> int:
    import shlex
    import sys

    from mambah.cli.train_pid import file_sha256
    from mambah.errors import ConfigurationError
    from mambah.io import read_table, split_spec
    from mambah.nn.registry import load_model
    from mambah.training.marginals import fit_flag_calibration, fit_marginal_correction, write_marginal_correction

    if args.p_bins < 1 or args.eta_bins < 1 or args.repeats < 1:
        raise ConfigurationError("--p-bins, --eta-bins and --repeats must be >= 1")
    if args.max_rel_error is not None and not args.max_rel_error > 0:
        raise ConfigurationError(f"--max-rel-error must be > 0, not {args.max_rel_error}")
    given, sums = {}, []
    for g in args.given:
        op = "=" if "=" in g else "+"
        t, eq, a = g.partition(op)
        if not eq or not t.strip() or not a.strip():
            raise ConfigurationError(f"--given {g!r}: expected TARGET=GIVEN or TARGET+GIVEN, e.g. RichDLLpK+RichDLLk")
        given[t.strip()] = a.strip()
        if op == "+":
            sums.append(t.strip())
    model = load_model(args.model)
    if (given or args.logit_offset) and model.kind != "pid":
        raise ConfigurationError("--given and --logit-offset are for a PID GAN's quantile maps, not for a flag classifier")
    offsets = {}
    for g in args.logit_offset:
        if g.strip().lower() == "probnn":
            pairs = {t: f"Sur{t[1:]}" for t in model.targets if t.startswith("dProbNN") and f"Sur{t[1:]}" in model.conditions}
            if not pairs:
                raise ConfigurationError(f"--logit-offset probnn: model {model.name!r} has no residual ProbNN targets "
                                         f"dProbNNx with their SurProbNNx conditions (targets {model.targets})")
            offsets.update(pairs)
            continue
        t, eq, c = g.partition("=")
        if not eq or not t.strip() or not c.strip():
            raise ConfigurationError(f"--logit-offset {g!r}: expected TARGET=CONDITION (e.g. dProbNNk=SurProbNNk) or probnn")
        offsets[t.strip()] = c.strip()
    if model.kind not in ("pid", "pid-flags"):
        raise ConfigurationError(f"{args.model!r} holds a {model.kind!r} model; a marginal calibration is for 'pid' "
                                 "GANs and 'pid-flags' classifiers")
    weight = None if str(args.weight).lower() == "none" else args.weight
    targets = None if args.targets is None else [t.strip() for t in args.targets.split(",") if t.strip()]
    import numpy as np
    import pandas as pd

    parts = []
    for spec in args.data:  # only the needed columns, floats as float32 (the weight as read)
        t = read_table(spec, columns=_columns(spec, args.selection, model, weight, targets))
        parts.append(t.astype({c: np.float32 for c in t.columns if c != weight and t[c].dtype == np.float64}))
    df = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)
    del parts
    split = args.split if args.split == "auto" else ([] if args.split.lower() == "none" else
                                                     [c.strip() for c in args.split.split(",") if c.strip()])
    try:
        extra_edges = [float(v) for v in args.extra_p_edges.split(",") if v.strip()]
    except ValueError:
        raise ConfigurationError(f"--extra-p-edges {args.extra_p_edges!r}: expected numbers in MeV/c, e.g. 2800,3000") from None
    common = dict(weight=weight, selection=args.selection, targets=targets, split=split, p_bins=args.p_bins,
                  extra_p_edges=extra_edges,
                  eta_bins=args.eta_bins, seed=args.seed, where=", ".join(args.data))
    if args.min_weight is not None:
        if not args.min_weight > 0:
            raise ConfigurationError(f"--min-weight {args.min_weight}: must be a positive sWeighted signal")
        common["min_weight"] = args.min_weight
    if model.kind == "pid-flags":
        extra = {} if args.max_rel_error is None else {"max_rel_error": args.max_rel_error}
        corr, info = fit_flag_calibration(model, df, **common, **extra)
    else:
        corr, info = fit_marginal_correction(model, df, repeats=args.repeats, given=given, classes=args.classes,
                                             sums=sums, logit_offsets=offsets, **common)
    paths = [split_spec(spec)[0] for spec in args.data]
    files = [{"file": f.name, "sha256": file_sha256(f)} for f in paths]
    info["fit_data"].update(files=files, description=args.description)
    info["command"] = "mambah " + " ".join(shlex.quote(a) for a in getattr(args, "cli_argv", sys.argv[1:]))
    write_marginal_correction(args.model, corr, info)
    extended = _extend_support(args, model, df, weight, files, info["command"])
    nb = info["bins"]
    what = "logit-shift calibration" if model.kind == "pid-flags" else "marginal correction"
    mapped = [*(f"{t} + logit({offsets[t]})" if t in offsets else t for t in corr.targets),
              *(f"{t}{' + ' + a + ' (the sum)' if t in sums else ''} (in {corr.n_classes} classes of {a})"
                for t, a in given.items())]
    print(f"{args.model}: {what} of {', '.join(mapped)} in {nb['n_bins_with_rows']} bins "
          f"(P, ETA{', ' + str(nb['n_states']) + ' states of ' + ','.join(corr.split) if corr.split else ''}), "
          f"{corr.n_members} member maps; {len(nb['not_corrected'])} bins below {nb['min_weight']:.0f} sWeighted "
          f"signal left uncorrected ({100 * nb['not_corrected_weight_fraction']:.2f}% of the signal)"
          + (f"; its data added to the model's support table ({extended})" if extended else ""))
    return 0


def _extend_support(args, model, df, weight, files, command) -> str:
    """Merge the calibration data (the rows the fit used: the same selection and weights) into the
    model's support table (:mod:`mambah.nn.support`): its outputs are now fitted on these rows'
    kinematics too. A model without a support table is left without one (``mambah models support``)."""
    if model.support is None:
        return ""
    import logging

    from mambah.nn.support import source_entry, table_support, write_support

    what = "calibration data of its quantile map"
    if any(src.get("what", "").startswith(what) for src in model.card["support"].get("sources", [])):
        # the table is a sum: an earlier map's rows cannot be taken out of it, and adding these would count
        # the same kinematics twice; the support stays as it was, and says so
        logging.getLogger("mambah.train").warning(
            "%s: its support table already holds the calibration data of an earlier quantile map, which cannot be "
            "taken out of it; the table is left as it was (rebuild it: mambah models support %s --data TRAINING "
            "then --add --data CALIBRATION, as examples/model_support.py does)", args.model, args.model)
        return ""

    selection = args.selection
    if selection == "card":
        selection = (model.card.get("training_data") or {}).get("selection") or None
    s, n, w = table_support(df, weight, selection, ", ".join(args.data), model.support.min_weight)
    sources = [*model.card["support"].get("sources", []),
               {**source_entry(what, files, n, w, selection, weight,
                               args.description), "command": command}]
    merged = model.support.merged(s)
    write_support(args.model, merged, sources)
    return f"{merged.describe()['cells_supported']} supported (P, ETA) cells"
