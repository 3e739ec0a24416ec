"""``mambah generate``: fill a PID model's target columns for every row of a table of conditions."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("generate", help="apply a trained PID model to a table of conditions",
                       description="Generate the model's target columns for every row of FILE's condition "
                                   "columns; the other columns are kept (a target column already present is "
                                   "replaced).")
    p.add_argument("--model", required=True, help="model directory, or the name of a shipped model")
    p.add_argument("--data", required=True, help="input table: .parquet, .csv or file.root:tree")
    p.add_argument("--out", "-o", required=True, help="output table (.parquet, .csv, file.root:tree)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the generator's noise (default 0)")
    p.add_argument("--models", default=None, help="directory of shipped models (for a model given by name)")
    p.add_argument("--drop-nonfinite", action="store_true", help="drop rows whose conditions hold NaN/inf")
    p.add_argument("--variations", action="store_true",
                   help="also write every target once per ensemble member k = 1..K as TARGET_var{k}, drawn with the "
                        "nominal's noise (the model needs members: mambah train pid ... --ensemble K)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=run)


def run(args) -> int:
    import logging
    import time
    import warnings
    from pathlib import Path

    from mambah.errors import ConfigurationError
    from mambah.io import read_table, split_spec, write_table
    from mambah.modeldir import resolve_model
    from mambah.errors import OutOfRangeWarning
    from mambah.nn.pidmodel import PidModel

    log = logging.getLogger("mambah.generate")
    out_path, _ = split_spec(args.out)
    if out_path.exists() and not args.overwrite:
        raise ConfigurationError(f"{str(out_path)!r} already exists; choose another --out or pass --overwrite")
    if Path(split_spec(args.data)[0]).resolve() == out_path.resolve():
        raise ConfigurationError("--out must differ from --data (the input would be lost on failure)")
    model = PidModel.load(resolve_model(args.model, args.models))
    if args.variations and not model.n_members:
        raise ConfigurationError(
            f"--variations: model {model.name!r} ({str(model.path)!r}) has no ensemble members; train the model "
            "with its members (mambah train pid ... --ensemble K, e.g. K = 10), or leave out --variations")
    df = read_table(args.data)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", OutOfRangeWarning)
        if args.variations:
            gen = model.generate_variations(df, seed=args.seed, drop_nonfinite=args.drop_nonfinite)
        else:
            gen = model.generate(df, seed=args.seed, drop_nonfinite=args.drop_nonfinite)
    for w in caught:
        log.warning("%s", w.message)
    dt = time.perf_counter() - t0
    df = df.loc[gen.index].copy()
    for t in gen.columns:
        df[t] = gen[t].to_numpy()
    write_table(df.reset_index(drop=True), args.out)
    extra = f" and {model.n_members} variations of each ({', '.join(model.targets)}_var1...)" if args.variations else ""
    print(f"wrote {args.out}: {len(df)} rows, {', '.join(model.targets)}{extra} from model "
          f"{model.card.get('name')!r} ({len(df) / max(dt, 1e-9):,.0f} rows/s)")
    return 0
