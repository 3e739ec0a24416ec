"""``mambah models list|show|export-onnx``: the trained models shipped with mambah (or under --models)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("models", help="list, show or export trained models",
                       description="List the model directories under the models directory, show a model's "
                                   "card, or export a PID generator to ONNX.")
    p.add_argument("--models", default=None, help="models directory (default: $MAMBAH_MODELS or the shipped models/)")
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = acts.add_parser("list", help="one line per model")
    a.set_defaults(func=run_list)
    a = acts.add_parser("show", help="print a model's card (JSON)")
    a.add_argument("model", help="model directory or name")
    a.add_argument("--history", action="store_true", help="include the training history")
    a.set_defaults(func=run_show)
    a = acts.add_parser("export-onnx", help="write the generator as ONNX (inputs: conditions, noise)")
    a.add_argument("model", help="model directory or name")
    a.add_argument("--out", "-o", default=None, help="ONNX file (default: DIR/generator.onnx beside the model)")
    a.set_defaults(func=run_export)
    a = acts.add_parser(
        "support", help="write (or extend) a model's data-support table (support.npz)",
        description="Fill the model's support table (mambah.nn.support): the sWeighted signal of DATA in cells of "
                    "(log10 P, ETA). Rows a model evaluates in cells with less than --min-weight are reported at run "
                    "time (OutOfSupportWarning). Without --add the data must be the model's training data: when its "
                    "card records the training sample's selected rows and summed weight, the data given (after the "
                    "selection) must have the same, or the command refuses (--other-data overrides, recorded). "
                    "--add merges further data the model was fitted on (e.g. the calibration samples of its "
                    "quantile map).")
    a.add_argument("model", help="model directory")
    a.add_argument("--data", required=True, nargs="+", metavar="FILE",
                   help="table(s) with P (MeV/c), ETA and the weight: .parquet, .csv or .root[:tree]")
    a.add_argument("--weight", default="card", metavar="COLUMN",
                   help="weight column ('none': 1 per row; default: the card's training weight)")
    a.add_argument("--selection", default="card", metavar="EXPR",
                   help="pandas query applied first (default: the card's training selection; 'none': every row)")
    a.add_argument("--add", action="store_true", help="merge into the model's existing support table")
    a.add_argument("--other-data", action="store_true",
                   help="without --add: the data is not the training sample (no check against the card; recorded)")
    a.add_argument("--what", default=None,
                   help="what the data is to the model, for the card (default: 'training data', with --add "
                        "'further data the model was fitted on')")
    a.add_argument("--description", default=None, help="how the data was made, for the card")
    a.add_argument("--min-weight", type=float, default=None, metavar="W",
                   help="least sWeighted signal of a supported cell (default mambah.nn.support.MIN_WEIGHT = 10, or "
                        "the existing table's with --add)")
    a.set_defaults(func=run_support)


def run_list(args) -> int:
    from mambah.modeldir import default_models_dir, list_models

    root = args.models or default_models_dir()
    cards = list_models(root)
    if not cards:
        print(f"no models under {root}")
        return 0
    for c in cards:
        m = c.get("metrics", {})
        score = f"BDT-KS {m['valid_bdt_ks']:.3f}" if isinstance(m.get("valid_bdt_ks"), (int, float)) else ""
        if "marginal_correction" in c:  # the GAN's outputs are calibrated (mambah.nn.marginals)
            score += " +marginals"
        conds = ",".join(str(x.get("name", x)) if isinstance(x, dict) else str(x) for x in c.get("conditions", []))
        targs = ",".join(str(x.get("name", x)) if isinstance(x, dict) else str(x) for x in c.get("targets", []))
        species = c.get("species") or ""
        species = ",".join(map(str, species)) if isinstance(species, (list, tuple)) else str(species)
        print(f"{str(c.get('name', '?')):32s} v{str(c.get('version', '?')):4s} {str(c.get('kind', '?')):10s} "
              f"{species:12s} {targs} | {conds}  {score}")
    return 0


def run_show(args) -> int:
    import json

    from mambah.modeldir import resolve_model, verify_model_dir

    card = verify_model_dir(resolve_model(args.model, args.models))
    if not args.history and isinstance(card.get("training"), dict):
        card["training"] = {k: v for k, v in card["training"].items() if k != "history"}
    print(json.dumps(card, indent=2))
    return 0


def run_export(args) -> int:
    from pathlib import Path

    from mambah.modeldir import resolve_model
    from mambah.nn.pidmodel import PidModel

    path = resolve_model(args.model, args.models)
    m = PidModel.load(path)
    out = Path(args.out) if args.out else path.parent / f"{path.name}.onnx"
    m.export_onnx(out)
    print(f"wrote {out} (inputs: conditions {m.conditions} after the quantile transform of arrays.npz, "
          f"noise [{m.n_noise}] ~ N(0,1); output: {m.targets} in the transformed space)")
    return 0


def run_support(args) -> int:
    import shlex
    import sys
    from pathlib import Path

    from mambah.cli.train_pid import file_sha256
    from mambah.errors import ConfigurationError, DataError
    from mambah.io import parquet_columns, read_table, split_spec
    from mambah.modeldir import verify_model_dir
    from mambah.nn.support import MIN_WEIGHT, Support, source_entry, table_support, write_support

    path = Path(args.model)
    card = verify_model_dir(path)
    if not {"P", "ETA"} <= {c.get("name") for c in card.get("conditions", []) if isinstance(c, dict)}:
        raise ConfigurationError(f"model {str(path)!r} has no P and ETA conditions: a support table is in (P, ETA)")
    td = card.get("training_data") or {}
    weight = td.get("weight") if args.weight == "card" else None if args.weight.lower() == "none" else args.weight
    selection = td.get("selection") if args.selection == "card" else None if args.selection.lower() == "none" \
        else args.selection
    old = None
    if args.add:
        if not isinstance(card.get("support"), dict):
            raise ConfigurationError(f"--add: model {str(path)!r} has no support table yet; write the training data's "
                                     "first (without --add)")
        old = Support.load(path)
    min_weight = args.min_weight if args.min_weight is not None else old.min_weight if old is not None else MIN_WEIGHT
    if not min_weight > 0:
        raise ConfigurationError(f"--min-weight {min_weight}: must be > 0")
    support, rows, sums, files = None, 0, 0.0, []
    for spec in args.data:
        file, _ = split_spec(spec)
        df = read_table(spec, columns=parquet_columns(spec, ["P", "ETA", *([weight] if weight else [])], selection))
        s, n, w = table_support(df, weight, selection, spec, min_weight)
        del df
        support = s if support is None else support.merged(s)
        rows, sums = rows + n, sums + float(w.sum())
        files.append({"file": file.name, "sha256": file_sha256(file)})
    what = args.what or ("further data the model was fitted on" if args.add else "training data")
    if not args.add and not args.other_data and "n_selected" in td:
        # the rows always; the summed weight when it is of the card's weight column (a support may be taken
        # with the sWeights of a model trained on sWeight x a momentum factor, e.g. --weight sWeight)
        same_weight = weight == td.get("weight") and "sum_weights" in td
        if rows != td["n_selected"] or (same_weight and abs(sums - td["sum_weights"]) > 1e-9 * max(1.0, abs(td["sum_weights"]))):
            raise DataError(f"{', '.join(args.data)}: {rows} rows with summed weight {sums:.10g} after the selection "
                            f"{selection!r}, but the card of {str(path)!r} records the training sample's "
                            f"{td['n_selected']} rows" + (f" and {td['sum_weights']:.10g}" if same_weight else "")
                            + ": this is not the model's training data (pass --other-data to use it anyway, recorded "
                            "in the card)")
    if args.other_data and not args.add:
        what = args.what or "other data (not checked against the card's training sample)"
    entry = source_entry(what, files, rows, [sums], selection, weight, args.description)
    entry["command"] = "mambah " + " ".join(shlex.quote(a) for a in getattr(args, "cli_argv", sys.argv[1:]))
    sources = [*(card["support"].get("sources", []) if old is not None else []), entry]
    if old is not None:
        support = old.with_min_weight(min_weight).merged(support)
    write_support(path, support, sources)
    d = support.describe()
    print(f"{path}: support of {len(sources)} sample(s) in {d['cells_with_rows']} (P, ETA) cells, {d['cells_supported']} "
          f"with >= {min_weight:g} sWeighted signal ({100 * d['rows_fraction_supported']:.2f}% of the rows); added: "
          f"{rows} rows, summed weight {sums:.6g} ({what})")
    return 0
