"""``mambah train resolution``: the momentum-resolution mixture-density network (see :mod:`mambah.nn.tracking`)."""

from __future__ import annotations

import argparse

from mambah.cli.train_efficiency import add_common, column_options, run_training


def register(kinds) -> None:
    p = kinds.add_parser(
        "resolution", help="momentum-resolution mixture-density network (true -> reconstructed momentum)",
        description="Train the momentum-resolution MDN on reconstructed tracks with true and reconstructed "
                    "momentum components and PDG id (e.g. from `mambah detector tracking-sample`). Rows with NaN "
                    "reconstructed momentum are dropped.",
    )
    add_common(p)
    column_options(p, ["px", "py", "pz", "pid", "px_reco", "py_reco", "pz_reco"], {})
    p.add_argument("--k-p", type=int, default=3, help="Gaussian components for the momentum residual (default 3)")
    p.add_argument("--k-slope", type=int, default=2, help="Gaussian components per slope residual (default 2)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from mambah.nn.tracking import RESOLUTION_CONDITIONS, RESOLUTION_TARGETS
    from mambah.training.tracking import fit_resolution

    return run_training(args, "resolution", fit_resolution, RESOLUTION_CONDITIONS, RESOLUTION_TARGETS,
                        ["px", "py", "pz", "pid", "px_reco", "py_reco", "pz_reco"],
                        optional={"reconstructed": "reconstructed"},
                        extra={"k_p": args.k_p, "k_slope": args.k_slope})
