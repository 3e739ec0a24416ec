"""``mambah sweights``: an sPlot of a calibration table (extended unbinned fit of a mass with zfit, sWeights with hepstats)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("sweights", help="sPlot: fit a mass distribution and add signal sWeights to a table",
                       description="Fit the --mass column inside --range with an extended signal + background "
                                   "model (zfit), compute signal sWeights (hepstats, Pivk & Le Diberder, "
                                   "arXiv:physics/0402083), print the yields, write the table (rows inside the "
                                   "range) with an sWeight column and a PNG of the fit.")
    p.add_argument("--data", required=True, help="input table: .parquet, .csv or file.root:tree")
    p.add_argument("--mass", required=True, help="discriminating variable (column name)")
    p.add_argument("--range", nargs=2, type=float, required=True, metavar=("LO", "HI"), help="fit range")
    p.add_argument("--signal", default="gauss", choices=["gauss", "crystalball", "doublecb"], help="signal shape")
    p.add_argument("--background", default="exponential", choices=["exponential", "chebyshev"],
                   help="background shape")
    p.add_argument("--chebyshev-order", type=int, default=2, help="coefficients of the Chebyshev background")
    p.add_argument("--mu", type=float, default=None, help="starting value of the peak position")
    p.add_argument("--sigma", type=float, default=None, help="starting value of the peak width")
    p.add_argument("--out", "-o", required=True, help="output table (.parquet, .csv, file.root:tree)")
    p.add_argument("--weight-column", default="sWeight", help="name of the signal sWeight column")
    p.add_argument("--background-column", default=None, help="also write the background sWeights in this column")
    p.add_argument("--plot", default=None, help="fit plot PNG (default: OUT with suffix _fit.png)")
    p.add_argument("--drop-nonfinite", action="store_true", help="drop rows whose mass is NaN/inf")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=run)


def run(args) -> int:
    import logging
    import warnings
    from pathlib import Path

    from mambah.errors import ConfigurationError
    from mambah.io import check_finite, read_table, require_columns, split_spec, write_table
    from mambah.training.splot import SumRuleWarning, fit_sweights, plot_fit

    log = logging.getLogger("mambah.sweights")
    out_path, _ = split_spec(args.out)
    plot = Path(args.plot) if args.plot else out_path.with_name(out_path.name.split(".")[0] + "_fit.png")
    for f in (out_path, plot):
        if f.exists() and not args.overwrite:
            raise ConfigurationError(f"{str(f)!r} already exists; choose another name or pass --overwrite")
    if Path(split_spec(args.data)[0]).resolve() == out_path.resolve():
        raise ConfigurationError("--out must differ from --data")
    df = read_table(args.data)
    require_columns(df, [args.mass], where=args.data)
    if args.weight_column in df.columns:
        raise ConfigurationError(f"{args.data} already has a column {args.weight_column!r}; "
                                 "choose another --weight-column")
    df = check_finite(df, [args.mass], drop=args.drop_nonfinite, where=args.data)
    lo, hi = args.range
    m = df[args.mass].to_numpy(dtype=float)
    inside = (m >= lo) & (m <= hi)
    if not inside.all():
        log.info("%d of %d rows lie outside [%g, %g] and are left out", int((~inside).sum()), len(df), lo, hi)
    df = df.loc[inside].reset_index(drop=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SumRuleWarning)
        res = fit_sweights(df[args.mass].to_numpy(dtype=float), (lo, hi), args.signal, args.background,
                           n_chebyshev=args.chebyshev_order, mu=args.mu, sigma=args.sigma)
    for w in caught:
        if issubclass(w.category, SumRuleWarning):
            log.warning("%s", w.message)
    df[args.weight_column] = res.sweights
    if args.background_column:
        df[args.background_column] = res.bkg_sweights
    plot.parent.mkdir(parents=True, exist_ok=True)
    plot_fit(res, plot, xlabel=args.mass)
    write_table(df, args.out)
    (ns, es), (nb, eb) = res.yields["signal"], res.yields["background"]
    print(f"signal yield     {ns:10.1f} ± {es:.1f}")
    print(f"background yield {nb:10.1f} ± {eb:.1f}")
    print(f"sum of sWeights  {res.sweights.sum():10.1f}  (sum rule {res.sum_rule['signal']:.5f}, "
          f"{res.sum_rule['background']:.5f}; {'converged' if res.converged else 'NOT converged'})")
    for k, v in res.params.items():
        print(f"  {k:12s} {v:.6g}")
    print(f"wrote {args.out} ({len(df)} rows, column {args.weight_column!r}) and {plot}")
    return 0
