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
            "composites) into the event store. Every batch is written in one transaction and is "
            "reproducible from (seed, batch index)."
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
    p.add_argument("--pid", action="store_true",
                   help="add the PID stage (chained PID models of e, mu, pi, K, p from --models; see their cards "
                        "for their closure scores)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--workers", type=int, default=None, help="run on a local Dask cluster with this many worker processes")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS", help="run on an existing Dask cluster (tcp://host:port)")
    p.set_defaults(func=run)


def default_production_name(descriptor: str, seed: int) -> str:
    import hashlib

    return f"{hashlib.sha256(' '.join(descriptor.split()).encode()).hexdigest()[:8]}-seed{seed}"


def run(args: argparse.Namespace) -> int:
    from ..production import run_production
    from ..simulation import standard_pipeline
    from ..store import Store
    from . import progress_enabled

    pipeline = standard_pipeline(args.descriptor, models_dir=args.models, level=args.level, acceptance=args.acceptance,
                                 pid=args.pid)
    name = args.production or default_production_name(args.descriptor, args.seed)
    with Store(args.db) as store:
        res = run_production(
            pipeline, n_events=args.events, batch_size=args.batch_size, seed=args.seed, store=store,
            production=name, resume=args.resume, workers=args.workers, scheduler=args.scheduler,
            progress=progress_enabled(args),
        )
        url = store.url
    print(f"production {res.production!r} in {url}")
    print(f"  batches: {res.written} written, {res.skipped} already present, {res.n_batches} in all")
    if res.written:
        print(f"  events:  {res.n_events} in {res.seconds:.1f} s ({res.events_per_s:,.0f} events/s)")
        share = ", ".join(f"{k} {v:.0%}" for k, v in sorted(res.stage_share().items(), key=lambda kv: -kv[1]))
        print(f"  time per stage: {share}")
    if res.interrupted:
        print(f"interrupted: {res.written + res.skipped} of {res.n_batches} batches are in the store; "
              "run the same command with --resume to finish", file=sys.stderr)
        return 130
    return 0
