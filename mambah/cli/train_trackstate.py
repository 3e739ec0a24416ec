"""``mambah train trackstate``: the track-state network -- state covariance, residuals, track chi2
and ghost probability (see :mod:`mambah.nn.trackstate`; the fit: :mod:`mambah.training.trackstate`)."""

from __future__ import annotations

import argparse

from mambah.cli.train_efficiency import add_common, column_options, run_training

_COLUMNS = ["px", "py", "pz", "x", "y", "z", "pid", "track_type",
            *(f"cov_{i}{j}" for i in range(5) for j in range(i, 5)), "track_chi2", "track_ndof", "ghost_prob"]


def register(kinds) -> None:
    p = kinds.add_parser(
        "trackstate", help="track-state network: covariance of the state closest to the beam, chi2, ghost probability",
        description="Train the track-state network on reconstructed tracks with their true momentum, origin, PDG id, "
                    "track type, state covariance (cov_ij), track chi2, ndof and ghost probability (e.g. from "
                    "`mambah detector trackstate-sample --domain acceptance`). With --closure-data, the card gets the "
                    "closure on those held-out tracks (they need the measured states state_x ... state_qop).",
    )
    add_common(p)
    p.set_defaults(hidden="64,64,64")
    column_options(p, ["px", "py", "pz", "x", "y", "z", "pid", "track_type"],
                   {"x": "origin x", "y": "origin y", "z": "origin z", "track_type": "track type (3, 4, 5)"})
    p.add_argument("--k-chi2", type=int, default=3, help="Gaussian components for ln(chi2/ndof) (default 3)")
    p.add_argument("--k-ghost", type=int, default=3, help="Gaussian components for logit(ghost prob) (default 3)")
    p.add_argument("--kl-epochs", type=int, default=10,
                   help="epochs of the second phase, squared error + KL divergence of the covariances (default 10)")
    p.add_argument("--kl-weight", type=float, default=0.02, help="weight of the KL term in that phase (default 0.02)")
    p.add_argument("--closure-data", default=None,
                   help="held-out table of the same kind (another seed): the closure written into the card")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from mambah.nn.trackstate import TRACKSTATE_CONDITIONS, TRACKSTATE_TARGETS
    from mambah.training.trackstate import fit_trackstate

    fit = fit_trackstate
    if args.closure_data:
        def fit(df, **kw):
            return _fit_with_closure(df, args.closure_data, **kw)
    mapping = {c: c for c in _COLUMNS[8:]}
    return run_training(args, "trackstate", fit, TRACKSTATE_CONDITIONS, TRACKSTATE_TARGETS, _COLUMNS[:8],
                        optional=mapping,
                        extra={"k_chi2": args.k_chi2, "k_ghost": args.k_ghost, "kl_epochs": args.kl_epochs,
                               "kl_weight": args.kl_weight})


def _fit_with_closure(df, closure_data: str, **kw):
    """fit_trackstate, then the closure of the fitted networks on ``closure_data`` in the metrics."""
    import tempfile

    from mambah.io import read_table
    from mambah.modeldir import save_model_dir
    from mambah.nn.trackstate import TRACKSTATE_CONDITIONS, TRACKSTATE_TARGETS, TrackStateNet
    from mambah.training.trackstate import fit_trackstate, trackstate_closure

    nets, arrays, info = fit_trackstate(df, **kw)
    card = {"name": kw.get("name", "trackstate"), "version": "0", "kind": "trackstate",
            "species": list(kw.get("species")), "conditions": TRACKSTATE_CONDITIONS, "targets": TRACKSTATE_TARGETS,
            "hyperparameters": info["hyperparameters"]}
    with tempfile.TemporaryDirectory() as tmp:
        save_model_dir(f"{tmp}/m", card, networks=nets, arrays=arrays)
        held = read_table(closure_data)
        info["metrics"]["closure"] = trackstate_closure(TrackStateNet.load(f"{tmp}/m"), held)
        info["metrics"]["closure"]["data"] = str(closure_data)
    return nets, arrays, info
