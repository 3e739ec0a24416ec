"""End-to-end production speed: the reference channel into the default (DuckDB) store.

Runs, each in a fresh subprocess (so that peak memory is per run):

1. 10^6 events in-process: events/s including the store, share of time per stage, peak RSS;
2. 10^7 events in-process: peak RSS (should stay within 10% of 1.: memory is set by the batch
   size, not by the production size);
3. 10^6 events on a 2-worker Dask LocalCluster: speed-up over 1.

Prints a table, then one JSON line with ``events_per_s``, ``stage_share``, ``peak_rss_mb_1e6``,
``peak_rss_mb_1e7``, ``dask_2_workers_speedup``.

    python benchmarks/simulate.py                      # the full measurement (~10-20 minutes)
    python benchmarks/simulate.py --events 200000 --large-events 1000000   # a quicker look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

DESCRIPTOR = "Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu"

CHILD = r"""
import json, sys, time
from mambah.production import run_production
from mambah.simulation import standard_pipeline
from mambah.store import Store
events, batch_size, db, workers = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
pipe = standard_pipeline(sys.argv[5])
with Store(db) as st:
    # warm-up batch in its own production: loads TensorFlow, traces the graphs, opens the models
    run_production(pipe, n_events=batch_size, batch_size=batch_size, seed=99, store=st, production="warmup")
    res = run_production(pipe, n_events=events, batch_size=batch_size, seed=1, store=st, production="bench",
                         workers=None if workers == "0" else int(workers))
print(json.dumps({"events_per_s": res.events_per_s, "seconds": res.seconds, "stage_seconds": res.stage_seconds}))
"""


def run_child(events: int, batch_size: int, workers: int) -> dict:
    """Run one production in a fresh process; its result plus its own peak RSS (MB)."""
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "bench.duckdb")
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(events), str(batch_size), db, str(workers), DESCRIPTOR],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        out = proc.stdout.read()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (ru_maxrss in KiB)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"benchmark child failed with exit code {proc.returncode}")
    res = json.loads(out.strip().splitlines()[-1])
    res["peak_rss_mb"] = usage.ru_maxrss / 1024
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--large-events", type=int, default=10_000_000)
    ap.add_argument("--batch-size", type=int, default=50_000)
    ap.add_argument("--skip-dask", action="store_true")
    args = ap.parse_args()

    r1 = run_child(args.events, args.batch_size, 0)
    r2 = run_child(args.large_events, args.batch_size, 0)
    rss1, rss2 = r1["peak_rss_mb"], r2["peak_rss_mb"]
    speedup = None
    if not args.skip_dask:
        r3 = run_child(args.events, args.batch_size, 2)
        speedup = r3["events_per_s"] / r1["events_per_s"]
    total = sum(r1["stage_seconds"].values())
    share = {k: round(v / total, 4) for k, v in sorted(r1["stage_seconds"].items(), key=lambda kv: -kv[1])}

    print(f"{'run':<28}{'events':>12}{'events/s':>12}{'peak RSS MB':>14}")
    print(f"{'in-process':<28}{args.events:>12}{r1['events_per_s']:>12,.0f}{rss1:>14.0f}")
    print(f"{'in-process (large)':<28}{args.large_events:>12}{r2['events_per_s']:>12,.0f}{rss2:>14.0f}")
    if speedup is not None:
        print(f"{'dask LocalCluster, 2 workers':<28}{args.events:>12}{r3['events_per_s']:>12,.0f}{'':>14}")
    print("share of time per stage (1st run): " + ", ".join(f"{k} {v:.1%}" for k, v in share.items()))
    print(json.dumps({
        "events_per_s": round(r1["events_per_s"], 1),
        "stage_share": share,
        "peak_rss_mb_1e6": round(rss1, 1),
        "peak_rss_mb_1e7": round(rss2, 1),
        "dask_2_workers_speedup": None if speedup is None else round(speedup, 3),
    }))


if __name__ == "__main__":
    main()
