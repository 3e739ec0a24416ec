"""``mambah simulate "DESCRIPTOR" --events N ...``: a production into the event store."""

from __future__ import annotations

import argparse
import sys


def register(sub) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate events of a decay into the event store",
        description=(
            "Simulate a decay batch by batch (gun -> decay -> occupancy -> efficiency -> resolution -> "
            "composites -> PID) into the event store. Every batch is written in one transaction and is "
            "reproducible from (seed, batch index). Every charged final-state particle of the descriptor "
            "becomes a track: its species must be one the models cover (e, mu, pi, K, p for the shipped "
            "ones), which is checked before anything is simulated."
        ),
        epilog='example: mambah simulate "Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu" --events 100000',
    )
    p.add_argument("descriptor", help='decay descriptor, e.g. "B+ -> (J/psi(1S) -> mu+ mu-) K+"; [...]CC for both charges')
    p.add_argument("--events", "-n", type=int, required=True, help="number of events")
    p.add_argument("--batch-size", type=int, default=50_000, help="events per batch (sets memory use; default 50000)")
    p.add_argument("--seed", type=int, default=1, help="production seed (default 1)")
    p.add_argument("--db", default=None, help="store URL (default: DuckDB file databases/mambah.duckdb)")
    p.add_argument("--models", default=None, metavar="DIR", help="directory of trained models (default: the shipped models/)")
    p.add_argument("--production", default=None, help="production name in the store (default: derived from the descriptor and seed)")
    p.add_argument("--resume", action="store_true", help="continue a production already in the store (same configuration)")
    p.add_argument("--level", choices=["reco", "truth"], default="reco", help="'truth' stops after the generator (default: reco)")
    p.add_argument("--acceptance", action="store_true", help="require all charged final-state particles in 2 < eta < 5")
    pid = p.add_mutually_exclusive_group()
    pid.add_argument("--no-pid", dest="pid", action="store_false",
                     help="leave out the PID stage (the PID columns stay NaN); by default the chained PID models "
                          "pid-<species>-{flags,muon,rich,global} from --models simulate the PID of every track (see "
                          "their cards for their closure scores)")
    pid.add_argument("--pid", dest="pid", action="store_true",
                     help="simulate the PID (the default; kept for compatibility)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--workers", type=int, default=None, help="run on a local Dask cluster with this many worker processes")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS", help="run on an existing Dask cluster (tcp://host:port)")
    p.set_defaults(func=run, pid=True)


def default_production_name(descriptor: str, seed: int) -> str:
    import hashlib

    return f"{hashlib.sha256(' '.join(descriptor.split()).encode()).hexdigest()[:8]}-seed{seed}"


def _log_warnings(log):
    """A ``warnings.showwarning`` that logs the models' out-of-range warnings as one line each
    (the PID stage emits them once per production and model) and shows any other warning as usual."""
    import warnings

    from mambah.nn.pidmodel import OutOfRangeWarning

    show = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, OutOfRangeWarning):
            log.warning("%s", message)
        else:
            show(message, category, filename, lineno, file, line)

    return showwarning


def out_of_range_summary(store, production: str) -> list[str]:
    """Per model, the share of its inputs outside its training range over the whole production,
    from the counts every batch records in its provenance (``reconstruction.<stage>.out_of_range``)."""
    import json

    bt = store.read("batches", columns=["config"], where={"production": production}, ordered=False)
    totals: dict[str, dict[str, list[int]]] = {}
    for blob in bt["config"]:
        try:
            reco = (json.loads(blob) if blob else {}).get("reconstruction", {})
        except (json.JSONDecodeError, AttributeError):
            continue
        for stage, info in reco.items():
            for model, (bad, n) in (info.get("out_of_range") or {}).items() if isinstance(info, dict) else ():
                t = totals.setdefault(stage, {}).setdefault(model, [0, 0])
                t[0] += int(bad)
                t[1] += int(n)
    lines = []
    for stage, models in totals.items():
        parts = [f"{m} {100 * b / n:.2g}%" for m, (b, n) in models.items() if n and b]
        if parts:
            lines.append(f"{stage}: " + ", ".join(parts))
    return lines


def run(args: argparse.Namespace) -> int:
    import logging
    import warnings

    from mambah.production import run_production
    from mambah.simulation import standard_pipeline
    from mambah.store import Store
    from mambah.cli import progress_enabled

    log = logging.getLogger("mambah.simulate")
    pipeline = standard_pipeline(args.descriptor, models_dir=args.models, level=args.level, acceptance=args.acceptance,
                                 pid=args.pid)
    name = args.production or default_production_name(args.descriptor, args.seed)
    with Store(args.db) as store:
        with warnings.catch_warnings():
            warnings.showwarning = _log_warnings(log)
            res = run_production(
                pipeline, n_events=args.events, batch_size=args.batch_size, seed=args.seed, store=store,
                production=name, resume=args.resume, workers=args.workers, scheduler=args.scheduler,
                progress=progress_enabled(args),
            )
        url = store.url
        summary = out_of_range_summary(store, name) if args.level == "reco" and res.written else []
    print(f"production {res.production!r} in {url}")
    print(f"  batches: {res.written} written, {res.skipped} already present, {res.n_batches} in all")
    if res.written:
        print(f"  events:  {res.n_events} in {res.seconds:.1f} s ({res.events_per_s:,.0f} events/s)")
        share = ", ".join(f"{k} {v:.0%}" for k, v in sorted(res.stage_share().items(), key=lambda kv: -kv[1]))
        print(f"  time per stage: {share}")
    if summary:
        print("  inputs outside the models' training ranges (evaluated at the range edges), whole production:")
        for line in summary:
            print(f"    {line}")
    if res.interrupted:
        print(f"interrupted: {res.written + res.skipped} of {res.n_batches} batches are in the store; "
              "run the same command with --resume to finish", file=sys.stderr)
        return 130
    return 0
