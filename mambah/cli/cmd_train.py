"""``mambah train pid|efficiency|resolution ...``: each kind lives in ``mambah/cli/train_<kind>.py``."""

from __future__ import annotations

import importlib
import pkgutil

from mambah.cli import __path__ as _cli_path

ORDER = ["pid", "efficiency", "resolution", "trackstate"]


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model (pid, flags, efficiency, resolution) and write its model directory",
                       description="Train a model and write its model directory (networks, preprocessing, card.json).")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    found = {m.name[6:] for m in pkgutil.iter_modules(_cli_path) if m.name.startswith("train_")}
    for name in [n for n in ORDER if n in found] + sorted(found - set(ORDER)):
        importlib.import_module(f"mambah.cli.train_{name}").register(kinds)
