"""``mambah detector brem-sample`` and ``mambah detector photon-sample``: training samples of the
calorimeter networks from the reference detector (:func:`mambah.reference.brem.brem_sample`,
:func:`mambah.reference.calorimeter.photon_sample`, :func:`~mambah.reference.calorimeter.pi0_sample`)."""

from __future__ import annotations

import argparse


def register(cmds) -> None:
    b = cmds.add_parser("brem-sample", help="single electrons: brem before the magnet, brem recovery, HASBREMADDED",
                        description="Single electrons (log-flat p, flat eta, prompt and displaced) through the reference "
                                    "bremsstrahlung and brem recovery. Columns: pid, px, py, pz [MeV], x, y, z [mm], "
                                    "has_brem_added, brem_scale (p after recovery / p true), kept, brem_e_added [MeV].")
    b.add_argument("--events", "-n", type=int, required=True, help="number of electrons")
    b.add_argument("--out", "-o", required=True, help="output file (.parquet, .csv, or file.root:tree)")
    b.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    b.set_defaults(func=_brem)
    p = cmds.add_parser("photon-sample", help="single photons (or pi0 -> gamma gamma with --pi0) through the ECAL",
                        description="Single photons through the reference ECAL (columns px, py, pz, x, y, z, x_true, "
                                    "y_true, in_acceptance, reconstructed, e_reco, x_reco, y_reco), or with --pi0 "
                                    "pi0 -> gamma gamma (g1_px .. g2_pz, x, y, z, kind, merged, pi0_class).")
    p.add_argument("--events", "-n", type=int, required=True, help="number of photons (or pi0)")
    p.add_argument("--out", "-o", required=True, help="output file (.parquet, .csv, or file.root:tree)")
    p.add_argument("--pi0", action="store_true", help="pi0 -> gamma gamma instead of single photons")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=_photon)


def _write(args, make) -> int:
    import logging
    from pathlib import Path

    from mambah.errors import ConfigurationError
    from mambah.io import split_spec, write_table

    if args.events <= 0:
        raise ConfigurationError(f"--events must be positive, got {args.events}")
    path, _ = split_spec(args.out)
    if Path(path).exists() and not args.overwrite:
        raise ConfigurationError(f"{str(path)!r} exists; pass --overwrite to replace it")
    df = make(args.events, seed=args.seed)
    write_table(df, args.out)
    logging.getLogger("mambah").info("wrote %d rows to %s", len(df), args.out)
    return 0


def _brem(args: argparse.Namespace) -> int:
    from mambah.reference.brem import brem_sample

    return _write(args, brem_sample)


def _photon(args: argparse.Namespace) -> int:
    from mambah.reference.calorimeter import photon_sample, pi0_sample

    return _write(args, pi0_sample if args.pi0 else photon_sample)
