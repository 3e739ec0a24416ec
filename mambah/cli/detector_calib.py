"""``mambah detector calib-sample``: PID calibration samples from the reference detector.

This module adds a sub-command to ``mambah detector`` (``mambah/cli/cmd_detector.py`` calls
:func:`register` with its sub-parsers). Heavy imports happen inside :func:`run`.
"""

from __future__ import annotations

import argparse

SPECIES = ("K", "pi", "p", "mu", "e")

_EPILOG = """\
samples (probe in brackets; mass column; default signal fraction):
  K   D*+ -> D0(-> [K-] pi+) pi+      D0_M       0.55
  pi  D*+ -> D0(-> K- [pi+]) pi+      D0_M       0.50
  p   Lambda0 -> [p] pi-              Lambda0_M  0.42
  mu  J/psi -> [mu+] mu-              Jpsi_M     0.50
  e   B+ -> J/psi(-> [e+] e-) K+      B_M        0.40
The background's probe tracks are of other species, softer and from busier events: only sWeights
from a fit to the mass column (mambah sweights) separate them. Columns: the mass, P, PT, ETA,
nTracks, charge, RichDLLe/mu/k/p, isMuon, MuonMuLL, MuonBkgLL, PIDe/mu/K/p, hasRich, InMuonAcc,
EcalEoverP, TRUEID, is_signal. NaN = information absent (no RICH; muon LLs of non-isMuon tracks).

example:
  mambah detector calib-sample --species K --events 100000 --out kaons.parquet --seed 1
"""


def register(detector_subparsers) -> None:
    """Add ``calib-sample`` to the sub-parsers of ``mambah detector``."""
    p = detector_subparsers.add_parser(
        "calib-sample",
        help="a PID calibration sample (signal peak + combinatorial background) from the reference detector",
        description="Write a PID calibration sample of probe tracks from the reference detector "
                    "(a documented stand-in, not LHCb truth).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--species", required=True, choices=SPECIES, help="probe species")
    p.add_argument("--events", required=True, type=int, metavar="N", help="number of candidates (rows)")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="output table: .parquet, .csv or .root[:tree] (default tree DecayTree)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--pure", action="store_true", help="signal only (the truth, for closure tests)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--signal-fraction", type=float, default=None, metavar="F",
                   help="expected signal fraction of the mixed sample (default: the channel's)")
    v = p.add_mutually_exclusive_group()
    v.add_argument("--low-p", action="store_true",
                   help="the low-momentum channel (protons: Lambda0 without the mother pT requirement, probes of "
                        "2-10 GeV/c; mambah.reference.calibration.LOW_P_CHANNELS)")
    v.add_argument("--high-eta", action="store_true",
                   help="the high-pseudorapidity channel (protons: Lambda0 without the mother pT requirement, probes "
                        "of 5-40 GeV/c at 3.5 < eta < 5; mambah.reference.calibration.HIGH_ETA_CHANNELS)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mambah.reference.calibration import channel, calib_sample
    from mambah.errors import ConfigurationError
    from mambah.io import split_spec, write_table

    if args.events < 1:
        raise ConfigurationError(f"--events must be a positive number of candidates, not {args.events}")
    if args.pure and args.signal_fraction is not None:
        raise ConfigurationError("--pure and --signal-fraction exclude each other: a pure sample is all signal")
    path, _ = split_spec(args.out)
    if path.exists() and not args.overwrite:
        raise ConfigurationError(f"{str(path)!r} exists; pass --overwrite to replace it")
    variant = "low-p" if args.low_p else "high-eta" if args.high_eta else None
    ch = channel(args.species, variant=variant)
    df = calib_sample(args.species, args.events, seed=args.seed, pure=args.pure,
                      signal_fraction=args.signal_fraction, variant=variant)
    path = write_table(df, args.out)
    n_sig = int(df["is_signal"].sum())
    lo, hi = ch.window
    print(f"wrote {len(df)} {args.species} candidates ({ch.decay}) to {path}: {n_sig} signal "
          f"({100.0 * n_sig / len(df):.1f}%), {ch.mass_column} in [{lo:g}, {hi:g}] MeV "
          f"(signal: Gauss mu={ch.mass:g} sigma={ch.sigma:g} MeV; background: exponential)")
    return 0
