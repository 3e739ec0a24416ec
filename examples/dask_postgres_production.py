"""A Dask production into PostgreSQL: batches are the tasks, workers write directly to the server.

    python examples/dask_postgres_production.py --workers 2 --events 400000
    python examples/dask_postgres_production.py --scheduler tcp://host:8786 --db postgresql+psycopg://user@host/db

Every batch is one transaction; a task that Dask re-runs after a worker died finds its batch
already present and skips it, so each batch lands exactly once. The same production can be
resumed from any machine with ``--resume``.

By default the example writes into its own PostgreSQL schema of the local test server and drops
it at the end (``--keep`` keeps it).
"""

from __future__ import annotations

import argparse

from mambah.production import run_production
from mambah.simulation import standard_pipeline
from mambah.store import Store

DESCRIPTOR = "Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu Lb2LclnuLQCD"  # lattice-QCD form factors


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=400_000)
    ap.add_argument("--batch-size", type=int, default=50_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--scheduler", default=None)
    ap.add_argument("--db", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    ap.add_argument("--keep", action="store_true", help="write into --db itself and keep the data")
    args = ap.parse_args(argv)

    def produce(url: str) -> dict:
        with Store(url) as store:
            res = run_production(standard_pipeline(DESCRIPTOR), n_events=args.events, batch_size=args.batch_size,
                                 seed=11, store=store, production="dask-example", resume=True,
                                 workers=None if args.scheduler else args.workers, scheduler=args.scheduler,
                                 progress=True)
            s = store.summary()
        print(f"{res.written} batches written ({res.skipped} already there) at {res.events_per_s:,.0f} events/s")
        print(f"store: {s['n_batches']} batches, {s['n_events']} events, rows: {s['rows']}")
        return {"written": res.written, "batches": s["n_batches"], "events": s["n_events"]}

    if args.keep:
        return produce(args.db)
    from mambah.store.testing import pg_schema

    with pg_schema(args.db, prefix="mambah_example") as url:
        return produce(url)


if __name__ == "__main__":
    main()
