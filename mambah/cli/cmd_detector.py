"""``mambah detector ...``: samples from the reference detector (a documented stand-in, not LHCb truth).

Sub-commands:

* ``tracking-sample`` — single tracks with truth and reconstructed quantities for training and
  validating the efficiency and resolution networks;
* ``occupancy`` — build an occupancy model directory (histogram of tracks per event) from a
  measured sample, e.g. ``nLongTracks`` of a calibration sample.

Further sub-commands (``calib-sample`` of the PID part) live in ``mambah/cli/detector_<name>.py``, each
with ``register(subparsers)``, and are added here.
"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("detector", help="reference-detector samples (tracking, occupancy, ...)",
                       description="Samples from the reference detector: a documented, physics-motivated stand-in "
                                   "for full simulation with a known truth (never LHCb truth).")
    cmds = p.add_subparsers(dest="detector_command", metavar="SUBCOMMAND", required=True)

    t = cmds.add_parser("tracking-sample", help="single tracks: truth, efficiency, reconstructed momentum",
                        description="Single tracks from an LHCb-like particle gun (species e, mu, pi, K, p; "
                                    "log-flat p, flat eta, prompt and displaced origins) passed through the "
                                    "reference tracker. Columns: pid, charge, px, py, pz [MeV], x, y, z [mm], "
                                    "eff_true, reconstructed, px_reco, py_reco, pz_reco [MeV] (NaN if not "
                                    "reconstructed).")
    _sample_options(t)
    t.set_defaults(func=_tracking_sample)

    s = cmds.add_parser("trackstate-sample", help="reconstructed single tracks with their states, covariance, "
                        "chi2 and ghost probability (the track-state network's training table)",
                        description="The tracking-sample gun and 4-class efficiency; the reconstructed tracks "
                                    "(long, upstream, downstream) with the reference detector's state closest to "
                                    "the beam (mambah.reference.trackstates). Columns: pid, px, py, pz [MeV], x, "
                                    "y, z [mm], track_type, z_state [mm], true_x ... true_qop, state_x ... "
                                    "state_qop, cov_ij (i <= j, order x, y, tx, ty, q/p), track_chi2, track_ndof, "
                                    "ghost_prob. The displaced origins lie along a parent's flight, the track tilted from it by up to "
                                    "0.3 rad (a decay's opening angle), so that the states of K0S and Lambda daughters "
                                    "are covered. With --domain acceptance: the acceptance's momenta and eta with those "
                                    "origins (no box origins: a particle born off-axis in a random direction has its "
                                    "closest approach to the beam metres away). Train with `mambah train trackstate`.")
    _sample_options(s)
    s.set_defaults(func=_trackstate_sample)

    o = cmds.add_parser("occupancy", help="build an occupancy model (histogram of tracks per event)",
                        description="Histogram a tracks-per-event column (e.g. nLongTracks of a calibration sample), "
                                    "optionally sWeighted, into an occupancy model directory.")
    o.add_argument("--data", required=True, help="input table (.parquet, .csv, file.root:tree)")
    o.add_argument("--out", "-o", required=True, help="model directory to write")
    o.add_argument("--column", default="nLongTracks", help="tracks-per-event column (default nLongTracks)")
    o.add_argument("--weight", default=None, help="weight column, e.g. sWeight (default: unweighted)")
    o.add_argument("--bin-width", type=int, default=4, help="bin width in tracks (default 4)")
    o.add_argument("--name", default=None, help="model name (default: the directory name)")
    o.add_argument("--description", default=None, help="training-data description for the card")
    o.add_argument("--data-license", default=None, help="licence note of the data for the card")
    o.add_argument("--overwrite", action="store_true", help="replace an existing model directory")
    o.set_defaults(func=_occupancy)

    # further sub-commands live in mambah/cli/detector_<name>.py with register(subparsers)
    import importlib
    import pkgutil

    from mambah.cli import __path__ as cli_path

    for m in sorted(pkgutil.iter_modules(cli_path), key=lambda m: m.name):
        if m.name.startswith("detector_"):
            importlib.import_module(f"mambah.cli.{m.name}").register(cmds)


def _sample_options(t) -> None:
    """The options of the single-track samples (tracking-sample, trackstate-sample)."""
    t.add_argument("--events", "-n", type=int, required=True, help="number of tracks")
    t.add_argument("--out", "-o", required=True, help="output file (.parquet, .csv, or file.root:tree)")
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t.add_argument("--prompt-fraction", type=float, default=0.5, help="fraction of tracks from the PV (default 0.5)")
    t.add_argument("--p-min", type=float, default=500.0, help="lowest momentum, MeV (default 500)")
    t.add_argument("--p-max", type=float, default=400_000.0, help="highest momentum, MeV (default 400000)")
    t.add_argument("--domain", choices=("gun", "acceptance"), default="gun",
                   help="gun (default): the gun's LHCb-like spread above; acceptance: momenta log-flat and eta flat "
                        "over the geometric acceptance (mambah.reconstruction.acceptance) and 20%% of the origins "
                        "uniform over its origin box, rows outside the acceptance dropped: the training sample of "
                        "a 4-class efficiency model that covers the acceptance (overrides --p-min/--p-max)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def _sample_in_domain(args, sample, box: float = 0.2, kink: float = 0.0):
    """``(table, rows dropped)`` of ``sample(n, seed=, gun=)`` with the gun of ``--domain`` (and the
    acceptance's cut for ``--domain acceptance``, with a fraction ``box`` of the origins uniform over
    the acceptance's origin box)."""
    from mambah.reference.tracking import TrackGun

    if args.domain != "acceptance":
        gun = TrackGun(prompt=args.prompt_fraction, p_lo=args.p_min, p_hi=args.p_max, kink=kink)
        return sample(args.events, seed=args.seed, gun=gun), 0
    from mambah.reconstruction.acceptance import TrackAcceptance

    acc = TrackAcceptance()
    gun = TrackGun(prompt=args.prompt_fraction, p_lo=acc.p_min, p_hi=acc.p_max, eta_lo=acc.eta_min,
                   eta_hi=acc.eta_max, box=box, kink=kink, box_z=(acc.z_min, acc.z_max), box_rho=acc.rho_max)
    df = sample(args.events, seed=args.seed, gun=gun)
    keep = acc.inside(*(df[c].to_numpy() for c in ("px", "py", "pz", "x", "y", "z")))
    return df.loc[keep].reset_index(drop=True), int((~keep).sum())


def _check_sample_args(args) -> None:
    from pathlib import Path

    from mambah.errors import ConfigurationError
    from mambah.io import split_spec

    if args.events <= 0:
        raise ConfigurationError(f"--events must be positive, got {args.events}")
    if not 0 <= args.prompt_fraction <= 1:
        raise ConfigurationError(f"--prompt-fraction must be in [0, 1], got {args.prompt_fraction}")
    path, _ = split_spec(args.out)
    if Path(path).exists() and not args.overwrite:
        raise ConfigurationError(f"{str(path)!r} exists; pass --overwrite to replace it")
    if not 0 < args.p_min < args.p_max:
        raise ConfigurationError(f"need 0 < --p-min < --p-max, got {args.p_min} and {args.p_max}")


#: the trackstate sample's displaced origins lie along a parent's flight, the track tilted by up to this
#: angle (rad; mambah.reference.TrackGun.kink): K0S and Lambda daughters' states closest to the beam
#: spread over +-2 m, which a training sample of tracks pointing back to the PV would not cover
TRACKSTATE_KINK = 0.3


def _trackstate_sample(args: argparse.Namespace) -> int:
    import logging

    from mambah.io import write_table
    from mambah.reference.trackstates import trackstate_sample

    _check_sample_args(args)
    # no box origins: a particle born off-axis in a random direction has its closest approach to the
    # beam metres away, a state no reconstructed track of a decay has (the gun's displaced origins lie
    # on the track's line through the PV)
    df, dropped = _sample_in_domain(args, trackstate_sample, box=0.0, kink=TRACKSTATE_KINK)
    write_table(df, args.out)
    counts = df["track_type"].value_counts().to_dict()
    logging.getLogger("mambah").info("wrote %d reconstructed tracks (long %d, upstream %d, downstream %d%s) to %s",
                                     len(df), counts.get(3, 0), counts.get(4, 0), counts.get(5, 0),
                                     f"; {dropped} outside the acceptance dropped" if dropped else "", args.out)
    return 0


def _tracking_sample(args: argparse.Namespace) -> int:
    import logging

    from mambah.io import write_table
    from mambah.reference.tracking import tracking_sample

    _check_sample_args(args)
    df, dropped = _sample_in_domain(args, tracking_sample)
    write_table(df, args.out)
    logging.getLogger("mambah").info("wrote %d tracks (%d reconstructed as long tracks%s) to %s", len(df),
                                     int(df["reconstructed"].sum()),
                                     f"; {dropped} outside the acceptance dropped" if dropped else "", args.out)
    return 0


def _occupancy(args: argparse.Namespace) -> int:
    import logging
    import shlex
    import sys

    from mambah.training.occupancy import build_occupancy_model

    out = build_occupancy_model(args.data, args.out, column=args.column, weight=args.weight,
                                bin_width=args.bin_width, name=args.name, description=args.description,
                                data_license=args.data_license, overwrite=args.overwrite,
                                command="mambah " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    logging.getLogger("mambah").info("wrote occupancy model %s", out)
    return 0
