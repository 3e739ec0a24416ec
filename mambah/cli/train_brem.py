"""``mambah train brem``: the electron brem response (HASBREMADDED classifier and the momentum
response MDNs, see :mod:`mambah.nn.calo`; the fit: :mod:`mambah.training.calo`)."""

from __future__ import annotations

import argparse


def add_calo_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", "-o", required=True, help="model directory to write")
    p.add_argument("--name", default=None, help="model name (default: the directory name)")
    p.add_argument("--version", dest="model_version", default="1", help="model version (default 1)")
    p.add_argument("--description", default=None, help="training-data description for the card")
    p.add_argument("--hidden", default="64,64", help="hidden layer sizes (default 64,64)")
    p.add_argument("--epochs", type=int, default=20, help="training epochs per network (default 20)")
    p.add_argument("--batch-size", type=int, default=4096, help="minibatch size (default 4096)")
    p.add_argument("--learning-rate", type=float, default=3e-3, help="initial Adam learning rate (default 3e-3)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out fraction for validation (default 0.1)")
    p.add_argument("--max-rows", type=int, default=None, help="use only the first N rows of each table")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model directory")


def register(kinds) -> None:
    p = kinds.add_parser("brem", help="electron brem response: HASBREMADDED classifier + momentum-response MDNs",
                         description="Train the electron brem response on single electrons with their true momentum, "
                                     "origin z, HASBREMADDED flag and p_after_recovery/p_true (e.g. from `mambah "
                                     "detector brem-sample`).")
    p.add_argument("--data", required=True, help="training table (.parquet, .csv, file.root:tree)")
    add_calo_common(p)
    p.add_argument("--k", type=int, default=6, help="Gaussian components of each response MDN (default 6)")
    p.set_defaults(func=_run)


def read_tables(specs, max_rows):
    """``(table, {file, sha256, n_rows})`` per table spec."""
    import hashlib
    from pathlib import Path

    from mambah.io import read_table, split_spec

    out = []
    for spec in specs:
        path, _ = split_spec(spec)
        df = read_table(spec)
        if max_rows:
            df = df.iloc[:max_rows]
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        out.append((df, {"file": Path(path).name, "sha256": h.hexdigest(), "n_rows": int(len(df))}))
    return out


def write_model(args, kind, fit_out, conditions, targets, data_info, preprocessing, extra_card=None) -> None:
    import shlex
    import sys
    from pathlib import Path

    from mambah.modeldir import save_model_dir

    nets, arrays, info = fit_out
    out = Path(args.out)
    card = {
        "name": args.name or out.name, "version": str(args.model_version), "kind": kind, "species": [],
        "conditions": conditions, "targets": targets,
        "training_data": {"description": args.description or ", ".join(d["file"] for d in data_info),
                          "files": data_info},
        "hyperparameters": info["hyperparameters"], "metrics": info["metrics"],
        "units": {"momentum": "MeV", "energy": "MeV", "length": "mm"}, "preprocessing": preprocessing,
        **(extra_card or {}),
        "command": "mambah " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else "",
        "history": info["history"],
    }
    save_model_dir(out, card, networks=nets, arrays=arrays, overwrite=args.overwrite)


def parse_hidden(text: str):
    from mambah.errors import ConfigurationError

    try:
        hidden = [int(h) for h in text.split(",") if h.strip()]
    except ValueError:
        raise ConfigurationError(f"--hidden must be comma-separated integers, got {text!r}") from None
    if not hidden or min(hidden) <= 0:
        raise ConfigurationError(f"--hidden needs positive layer sizes, got {text!r}")
    return hidden


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mambah.cli import progress_enabled
    from mambah.errors import ConfigurationError
    from mambah.nn.calo import BREM_CONDITIONS, BREM_TARGETS
    from mambah.training.calo import fit_brem

    hidden = parse_hidden(args.hidden)
    if Path(args.out).exists() and not args.overwrite:
        raise ConfigurationError(f"{str(args.out)!r} already exists; choose another --out or pass --overwrite")
    [(df, info)] = read_tables([args.data], args.max_rows)
    res = fit_brem(df, name=args.name or Path(args.out).name, hidden=hidden, k_loss=args.k, k_recovered=args.k,
                   epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                   val_fraction=args.val_fraction, seed=args.seed,
                   progress=progress_enabled(args) and args.verbose > 0)
    write_model(args, "brem", res, BREM_CONDITIONS, BREM_TARGETS, [info], PREPROCESSING)
    m = res[2]["metrics"]
    print(f"wrote {args.out}: flag BCE {m['flag_val_bce_before']:.4f} -> {m['flag_val_bce']:.4f}; response NLL "
          f"(no brem added) {m['loss_val_nll_before']:.3f} -> {m['loss_val_nll']:.3f}, (brem added) "
          f"{m['recovered_val_nll_before']:.3f} -> {m['recovered_val_nll']:.3f}; fraction with brem added "
          f"{m['val_brem_added_fraction']['model']:.4f} (reference {m['val_brem_added_fraction']['reference']:.4f})")
    return 0


PREPROCESSING = (
    "features [ln(p/GeV), eta, origin_z/100mm] standardised with arrays mean/scale after clipping to [lo, hi]; "
    "network 'flag' outputs the logit of P(HASBREMADDED); 'loss' (no brem added) and 'recovered' (brem added) "
    "output k mixture logits, k means, k log-widths of v/loss_target_scale with v = ln(-ln s), resp. of "
    "ln(s)/recovered_target_scale, s = p_after_recovery/p_true (see mambah.nn.calo)"
)
