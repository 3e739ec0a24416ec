"""The ``mambah`` command line: one entry point, one module per command.

Each ``mambah/cli/cmd_<name>.py`` defines ``register(subparsers)`` which adds its sub-command and
sets ``func`` (a callable taking the parsed arguments and returning an exit code). Command
modules import only argparse-level things at module level: TensorFlow and the other heavy
libraries are imported inside ``func``, so that ``mambah --help`` stays fast.

Errors: a :class:`~mambah.errors.MambahError` (or a missing file) ends the command with its
message on stderr and exit code 2; Ctrl-C with exit code 130.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from mambah._version import __version__

__all__ = ["main", "build_parser"]

#: Preferred order of commands in ``mambah --help``; modules found but not listed come after.
ORDER = ["simulate", "generate_truth", "store", "export", "train", "generate", "sweights", "validate",
         "pid_efficiency", "models", "detector"]


def _command_modules() -> list[str]:
    found = {m.name[4:] for m in pkgutil.iter_modules(__path__) if m.name.startswith("cmd_")}
    return [n for n in ORDER if n in found] + sorted(found - set(ORDER))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mambah",
        description="Ultra-fast simulation of an LHCb-like detector with trained networks.",
    )
    parser.add_argument("--version", action="version", version=f"mambah {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors, no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _command_modules():
        importlib.import_module(f"{__name__}.cmd_{name}").register(sub)
    return parser


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.INFO if verbose <= 1 else logging.DEBUG)
    if verbose == 0 and not quiet:
        level = logging.INFO
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mambah").setLevel(level)
    # TensorFlow's C++ logging: only errors unless asked for more
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if verbose < 2 else "0")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import sys

    #: the command line as given (what cards record as their command)
    args.cli_argv = list(sys.argv[1:] if argv is None else argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    _configure_logging(args.verbose, args.quiet)
    if args.verbose < 2:
        from mambah.cli._native_log import install

        install()
    from mambah.errors import MambahError

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"mambah {args.command}: interrupted", file=sys.stderr)
        return 130
    except (MambahError, FileNotFoundError) as e:
        print(f"mambah {args.command}: error: {e}", file=sys.stderr)
        return 2


def progress_enabled(args: argparse.Namespace) -> bool:
    """Progress bars for interactive use: on unless ``--quiet``."""
    return not getattr(args, "quiet", False)
