"""``mambah train photon``: the photon efficiency, pi0 classes and cluster response (see
:mod:`mambah.nn.calo`; the fit: :mod:`mambah.training.calo`)."""

from __future__ import annotations

import argparse

from mambah.cli.train_brem import add_calo_common


def register(kinds) -> None:
    p = kinds.add_parser("photon", help="photon efficiency, pi0 resolved/merged classes, energy and position response",
                         description="Train the photon networks on single photons (`mambah detector photon-sample`) "
                                     "and pi0 -> gamma gamma (`mambah detector photon-sample --pi0`). The ECAL face "
                                     "(the reference detector's) is recorded in the card and applied explicitly.")
    p.add_argument("--data", required=True, help="single-photon table (.parquet, .csv, file.root:tree)")
    p.add_argument("--pi0-data", required=True, help="pi0 -> gamma gamma table")
    add_calo_common(p)
    p.add_argument("--k", type=int, default=2, help="Gaussian components per response target (default 2)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mambah.cli import progress_enabled
    from mambah.cli.train_brem import parse_hidden, read_tables, write_model
    from mambah.errors import ConfigurationError
    from mambah.nn.calo import PHOTON_CONDITIONS, PHOTON_TARGETS
    from mambah.training.calo import fit_photon, photon_geometry

    hidden = parse_hidden(args.hidden)
    if Path(args.out).exists() and not args.overwrite:
        raise ConfigurationError(f"{str(args.out)!r} already exists; choose another --out or pass --overwrite")
    (ph, i1), (p0, i2) = read_tables([args.data, args.pi0_data], args.max_rows)
    geo = photon_geometry()
    res = fit_photon(ph, p0, name=args.name or Path(args.out).name, geometry=geo, hidden=hidden, k_response=args.k,
                     epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                     val_fraction=args.val_fraction, seed=args.seed,
                     progress=progress_enabled(args) and args.verbose > 0)
    write_model(args, "photon", res, PHOTON_CONDITIONS, PHOTON_TARGETS, [i1, i2], PREPROCESSING,
                {"geometry": geo})
    m = res[2]["metrics"]
    print(f"wrote {args.out}: efficiency BCE {m['efficiency_val_bce_before']:.4f} -> {m['efficiency_val_bce']:.4f} "
          f"(max |model - reference| per (E, eta) bin {m['efficiency_closure_val']['max_abs_diff']:.4f}); pi0 CCE "
          f"{m['pi0_val_cce_before']:.4f} -> {m['pi0_val_cce']:.4f}; response NLL {m['response_val_nll_before']:.3f} "
          f"-> {m['response_val_nll']:.3f}")
    return 0


PREPROCESSING = (
    "the ECAL face of card 'geometry' applied explicitly (impact point of a straight line from the origin); "
    "photon features [ln(E/GeV), eta, |x|/m, |y|/m, ln(E_T/GeV)] standardised with arrays mean/scale after clipping to [lo, hi]; "
    "pi0 features [ln(E/GeV), eta, |xc|/m, |yc|/m, ln(E_T/GeV), ln(separation/mm), |E1-E2|/(E1+E2)] with arrays pi0_*; "
    "'efficiency' outputs the logit of P(reconstructed | on the face); 'pi0' 3 logits (resolved, merged, merged "
    "and lost); 'response' k logits, k means, k log-widths per target (100 dE/E, dx, dy) / response_target_scale"
)
