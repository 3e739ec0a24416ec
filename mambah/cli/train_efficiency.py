"""``mambah train efficiency``: the tracking-efficiency classifier (see :mod:`mambah.nn.tracking`;
the fit: :mod:`mambah.training.tracking`).

Also holds the options and driver shared with ``mambah train resolution``.
"""

from __future__ import annotations

import argparse
import shlex
import sys


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="training table (.parquet, .csv, file.root:tree)")
    p.add_argument("--out", "-o", required=True, help="model directory to write")
    p.add_argument("--name", default=None, help="model name (default: the directory name)")
    p.add_argument("--version", dest="model_version", default="1", help="model version (default 1)")
    p.add_argument("--description", default=None, help="training-data description for the card")
    p.add_argument("--species", default="e,mu,pi,K,p", help="species to train for (default e,mu,pi,K,p)")
    p.add_argument("--hidden", default="64,64", help="hidden layer sizes (default 64,64)")
    p.add_argument("--epochs", type=int, default=20, help="training epochs (default 20)")
    p.add_argument("--batch-size", type=int, default=4096, help="minibatch size (default 4096)")
    p.add_argument("--learning-rate", type=float, default=3e-3, help="initial Adam learning rate (default 3e-3)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out fraction for validation (default 0.1)")
    p.add_argument("--max-rows", type=int, default=None, help="use only the first N rows")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--drop-nonfinite", action="store_true", help="drop rows with NaN/inf inputs instead of failing")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model directory")


def column_options(p: argparse.ArgumentParser, columns, helps) -> None:
    g = p.add_argument_group("column names in the input table")
    for c in columns:
        g.add_argument(f"--{c.replace('_', '-')}-column", dest=f"col_{c}", default=c,
                       help=f"{helps.get(c, c)} column (default {c})")


def _parse_species(text: str):
    from mambah.physics import SPECIES
    from mambah.errors import ConfigurationError, closest

    out = [s.strip() for s in text.split(",") if s.strip()]
    for s in out:
        if s not in SPECIES:
            near = closest(s, SPECIES)
            raise ConfigurationError(f"unknown species {s!r} in --species; known: {', '.join(SPECIES)}"
                                     + (f" (did you mean {', '.join(near)}?)" if near else ""))
    return out


def run_training(args, kind, fit, conditions, targets, columns, optional=None, extra=None) -> int:
    import hashlib
    import logging
    from pathlib import Path

    from mambah.errors import ConfigurationError
    from mambah.io import check_finite, read_table, require_columns, split_spec
    from mambah.modeldir import save_model_dir
    from mambah.cli import progress_enabled

    log = logging.getLogger("mambah")
    species = _parse_species(args.species)
    try:
        hidden = [int(h) for h in args.hidden.split(",") if h.strip()]
    except ValueError:
        raise ConfigurationError(f"--hidden must be comma-separated integers, got {args.hidden!r}") from None
    if not hidden or min(hidden) <= 0:
        raise ConfigurationError(f"--hidden needs positive layer sizes, got {args.hidden!r}")
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ConfigurationError(f"{str(out)!r} already exists; choose another --out or pass --overwrite")
    mapping = {c: getattr(args, f"col_{c}") for c in columns}
    path, _ = split_spec(args.data)
    df = read_table(args.data)
    require_columns(df, list(mapping.values()), where=str(args.data))
    sel = {v: k for k, v in mapping.items()}
    for std, col in (optional or {}).items():
        if col and col in df.columns and col not in sel:
            sel[col] = std
    df = df[list(sel)].rename(columns=sel)
    if args.max_rows:
        df = df.iloc[: args.max_rows]
    finite_cols = [c for c in columns if not c.endswith("_reco")]
    df = check_finite(df, finite_cols, drop=args.drop_nonfinite, where=str(args.data))
    name = args.name or out.name
    log.info("training %s model %r on %d rows of %s", kind, name, len(df), args.data)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    model, arrays, info = fit(df, name=name, species=species, hidden=hidden, epochs=args.epochs,
                              batch_size=args.batch_size, learning_rate=args.learning_rate,
                              val_fraction=args.val_fraction, seed=args.seed, progress=progress_enabled(args)
                              and args.verbose > 0, **(extra or {}))
    card = {
        "name": name,
        "version": str(args.model_version),
        "kind": kind,
        "species": species,
        "conditions": conditions,
        "targets": targets,
        "training_data": {
            "description": args.description or f"{Path(path).name}",
            "file": Path(path).name,
            "sha256": h.hexdigest(),
            "n_rows": int(len(df)),
            "columns": mapping,
        },
        "hyperparameters": info["hyperparameters"],
        "metrics": info["metrics"],
        "units": {"momentum": "MeV", "length": "mm"},
        "preprocessing": _PREPROCESSING[kind],
        "command": "mambah " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else "",
        "history": info["history"],
        **info.get("card", {}),
    }
    networks = model if isinstance(model, dict) else {"network": model}
    save_model_dir(out, card, networks=networks, arrays=arrays, overwrite=args.overwrite)
    m = info["metrics"]
    if kind == "efficiency" and "val_cce" in m:
        print(f"wrote {out}: validation cross-entropy {m['val_cce_before']:.4f} -> {m['val_cce']:.4f}"
              + (f" (truth {m['val_cce_truth']:.4f}); max |eff - truth| per (p, eta) bin and class "
                 f"{m['closure_vs_truth_max_abs_diff']:.4f}" if "val_cce_truth" in m else ""))
    elif kind == "efficiency":
        print(f"wrote {out}: validation BCE {m['val_bce_before']:.4f} -> {m['val_bce']:.4f}"
              + (f" (truth {m['val_bce_truth']:.4f}); max |eff - truth| per (p, eta) bin "
                 f"{m['closure_vs_truth']['max_abs_diff']:.4f}" if "val_bce_truth" in m else ""))
    elif kind == "trackstate":
        print(f"wrote {out}: validation covariance KL {m['val_cov_kl_before']:.4g} -> {m['val_cov_kl']:.4g}, "
              f"track-quality NLL {m['val_quality_nll_before']:.4f} -> {m['val_quality_nll']:.4f}"
              + (f"; closure on {m['closure']['n']} held-out tracks: IP-coordinate pull widths within "
                 f"{m['closure']['pull_std_max_dev']:.3f} of 1, residual chi2 mean {m['closure']['chi2_mean']:.3f} "
                 "(5 expected)" if "closure" in m else ""))
    else:
        print(f"wrote {out}: validation NLL {m['val_nll_before']:.4f} -> {m['val_nll']:.4f}")
    return 0


_PREPROCESSING = {
    "efficiency": (
        "features [ln(p/GeV), eta, origin_z/100mm, origin_rho/10mm] standardised with arrays mean/scale after "
        "clipping to the training range [lo, hi], then one-hot species (e, mu, pi, K, p); the network outputs "
        "the logit of the reconstruction probability (a 4-class model, card 'classes': the four logits of "
        "none / long / upstream / downstream, softmax)"
    ),
    "resolution": (
        "conditions [ln(p/GeV), eta] standardised with arrays mean/scale after clipping to [lo, hi], then "
        "one-hot species; the network outputs, for each target (100 dp/p, 1000 dtx, 1000 dty) divided by "
        "arrays target_scale, k mixture logits, k means and k log-widths (see mambah.nn.tracking)"
    ),
    "trackstate": (
        "features [ln(p/GeV), eta, asinh(z_state/100mm)] standardised with arrays mean/scale after clipping to [lo, hi], then "
        "charge, one-hot species and one-hot track type (long, upstream, downstream); network 'cov' outputs the 15 "
        "covariance parameters (ln sigma of x, y, tx, ty, q/p, then atanh of the canonical partial correlations) "
        "times arrays cov_scale plus cov_mean; network 'quality' outputs the mixtures of ln(chi2/ndof) and "
        "logit(ghost probability) (targets divided by arrays quality_scale); ndof = arrays ndof_by_type "
        "(see mambah.nn.trackstate)"
    ),
}


def register(kinds) -> None:
    p = kinds.add_parser(
        "efficiency", help="tracking-efficiency classifier (probability to be reconstructed)",
        description="Train the tracking-efficiency classifier on a table of particles with truth momentum, "
                    "origin vertex, PDG id and a reconstructed flag (e.g. from `mambah detector tracking-sample`).",
    )
    add_common(p)
    column_options(p, ["px", "py", "pz", "x", "y", "z", "pid", "reconstructed", "track_type"],
                   {"x": "origin x", "y": "origin y", "z": "origin z", "reconstructed": "0/1 reconstructed flag",
                    "track_type": "track type (0 none, 3 long, 4 upstream, 5 downstream; --classes track-type)"})
    p.add_argument("--truth-column", default="eff_true",
                   help="optional true-efficiency column used only for validation metrics (default eff_true; "
                        "ignored if absent; with --classes track-type the columns eff_long, eff_upstream, "
                        "eff_downstream are used when present)")
    p.add_argument("--classes", choices=("reconstructed", "track-type"), default="reconstructed",
                   help="reconstructed (default): binary, a long track or not; track-type: the 4-class efficiency "
                        "(not reconstructed / long / upstream / downstream) from the track_type column")
    p.add_argument("--domain", choices=("data", "acceptance"), default=None,
                   help="the model's recorded training range: data (the rows' min/max; default for --classes "
                        "reconstructed) or acceptance (the geometric acceptance's box, mambah.reconstruction."
                        "acceptance; every row must be inside; default for --classes track-type), so that the "
                        "Efficiency stage can check that the model covers the acceptance")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from mambah.nn.tracking import EFFICIENCY_CONDITIONS, EFFICIENCY_TARGETS
    from mambah.training.tracking import fit_efficiency

    domain = args.domain or ("acceptance" if args.classes == "track-type" else "data")
    extra = {"classes": args.classes}
    if domain == "acceptance":
        from mambah.reconstruction.acceptance import TrackAcceptance

        extra["domain"] = TrackAcceptance().feature_bounds()
    if args.classes == "track-type":
        from mambah.nn.tracking import TRACK_TYPE_TARGETS

        return run_training(args, "efficiency", fit_efficiency, EFFICIENCY_CONDITIONS, TRACK_TYPE_TARGETS,
                            ["px", "py", "pz", "x", "y", "z", "pid", "track_type"],
                            optional={c: c for c in ("eff_long", "eff_upstream", "eff_downstream")}, extra=extra)
    return run_training(args, "efficiency", fit_efficiency, EFFICIENCY_CONDITIONS, EFFICIENCY_TARGETS,
                        ["px", "py", "pz", "x", "y", "z", "pid", "reconstructed"],
                        optional={"eff_true": args.truth_column}, extra=extra)
