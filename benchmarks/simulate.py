"""End-to-end production speed: the reference channel into the default (DuckDB) store.

The channel is the README's main job (``--descriptor``): unweighted events (accept-reject on the
phase-space and decay-model weights) unless ``--weighted``, which then also times run 1.
unweighted in the same run (``unweighted_events_per_s``).

Runs, each in a fresh subprocess (so that peak memory is per run):

1. 10^6 events in-process: events/s including the store, share of time per stage, peak RSS (the
   store writes batch i while batch i + 1 is simulated in a helper thread, so the stages' seconds
   add up to more than the wall time; the shares are of their sum);
2. 10^7 events in-process: peak RSS (should stay within 10% of 1.: memory is set by the batch
   size, not by the production size);
3. 10^6 events on a 2-worker Dask LocalCluster (workers warmed up by one batch each, as the
   in-process run is): speed-up over 1.; with ``--dask-cold`` also from scratch (cluster start and
   cold workers included) against 1. from scratch (imports and its warm-up batch included).

Prints a table (wall and CPU seconds of each child, its Dask workers included), the seconds per
stage, then one JSON line with ``events_per_s``, ``stage_share``, ``peak_rss_mb_1e6``,
``peak_rss_mb_1e7``, ``dask_2_workers_speedup`` (and ``_cold``), ``cpu_s``. On a shared machine
compare the CPU seconds: the wall time depends on the other load.

    python benchmarks/simulate.py                      # the full measurement (~10-20 minutes)
    python benchmarks/simulate.py --events 200000 --large-events 1000000   # a quicker look
    python benchmarks/simulate.py --events 200000 --skip-large --skip-dask --weighted   # weighted vs unweighted
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

#: the README's main job: unweighted events with the lattice form factors of the semileptonic decay
DESCRIPTOR = "Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu Lb2LclnuLQCD"

CHILD = r"""
import time
t_start = time.perf_counter()
import json, resource, sys
from mambah.pipeline import production_batch
from mambah.production import run_production
from mambah.simulation import standard_pipeline
from mambah.store import Store
events, batch_size, db, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
pipe = standard_pipeline(sys.argv[5], unweight=sys.argv[6] == 'unweighted')


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


workers_cpu = {}
with Store(db) as st:
    if mode == "0":
        # warm-up batch in its own production: loads TensorFlow, traces the graphs, opens the models
        run_production(pipe, n_events=batch_size, batch_size=batch_size, seed=99, store=st, production="warmup")
        c0 = cpu()
        res = run_production(pipe, n_events=events, batch_size=batch_size, seed=1, store=st, production="bench")
        c1 = cpu()
    elif mode.startswith("cold"):  # from scratch: the production starts its LocalCluster, cold workers
        c0 = cpu()
        res = run_production(pipe, n_events=events, batch_size=batch_size, seed=1, store=st, production="bench",
                             workers=int(mode[4:]))
        c1 = cpu()
    else:  # warm workers, as the in-process run is warm: one warm-up batch on every worker first
        from dask.distributed import Client

        try:
            from mambah.production import local_cluster  # the cluster of run_production(workers=N)
        except ImportError:  # a mambah from before local_cluster (comparisons)
            from dask.distributed import LocalCluster

            def local_cluster(n):
                env = {"OMP_NUM_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
                       "TF_CPP_MIN_LOG_LEVEL": "2"}
                return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None, env=env)
        with local_cluster(int(mode)) as cluster, Client(cluster) as client:
            client.run(lambda: pipe.process(production_batch(0, 99, batch_size, production="warmup")) and None)
            # the client reads the model versions for the production record (the PID stage loads its
            # networks for that, TensorFlow included): done by the in-process warm-up too
            pipe.provenance()
            w0 = client.run(cpu)
            c0 = cpu()
            res = run_production(pipe, n_events=events, batch_size=batch_size, seed=1, store=st, production="bench",
                                 scheduler=cluster.scheduler_address)
            c1 = cpu()
            workers_cpu = {k: v - w0.get(k, 0.0) for k, v in client.run(cpu).items()}
print(json.dumps({"events_per_s": res.events_per_s, "seconds": res.seconds, "stage_seconds": res.stage_seconds,
                  "total_s": time.perf_counter() - t_start, "client_cpu_s": c1 - c0,
                  "workers_cpu_s": sorted(workers_cpu.values())}))
"""



def run_child(events: int, batch_size: int, workers: int | str, descriptor: str = DESCRIPTOR,
              weighting: str = "unweighted") -> dict:
    """Run one production in a fresh process; its result plus its own peak RSS (MB)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "bench.duckdb")
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        # cwd: not the checkout, so that the child imports the mambah of its environment (PYTHONPATH)
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(events), str(batch_size), db, str(workers), descriptor, weighting],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=tmp)
        out = proc.stdout.read()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (ru_maxrss in KiB)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"benchmark child failed with exit code {proc.returncode}")
    res = json.loads(out.strip().splitlines()[-1])
    res["peak_rss_mb"] = usage.ru_maxrss / 1024
    # CPU seconds of the child and of the processes it reaped (the Dask workers): on a shared
    # machine the wall time depends on the other load, the CPU time much less
    res["cpu_s"] = usage.ru_utime + usage.ru_stime
    res["wall_s"] = time.perf_counter() - t0
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--large-events", type=int, default=10_000_000)
    ap.add_argument("--batch-size", type=int, default=50_000)
    ap.add_argument("--skip-dask", action="store_true")
    ap.add_argument("--descriptor", default=DESCRIPTOR, help=f"the channel (default: {DESCRIPTOR!r})")
    ap.add_argument("--weighted", action="store_true",
                    help="weighted events (no accept-reject); also runs 1. unweighted in the same run, for comparison")
    ap.add_argument("--skip-large", action="store_true", help="skip run 2 (the memory check)")
    ap.add_argument("--workers", type=int, default=2, help="Dask workers of run 3")
    ap.add_argument("--dask-cold", action="store_true",
                    help="also run 3 from scratch (cluster start and cold workers included) against 1. from scratch")
    args = ap.parse_args()

    kw = {"descriptor": args.descriptor, "weighting": "weighted" if args.weighted else "unweighted"}
    r1 = run_child(args.events, args.batch_size, 0, **kw)
    r1u = run_child(args.events, args.batch_size, 0, descriptor=args.descriptor) if args.weighted else None
    r2 = None if args.skip_large else run_child(args.large_events, args.batch_size, 0, **kw)
    rss1, rss2 = r1["peak_rss_mb"], (None if r2 is None else r2["peak_rss_mb"])
    speedup = r4 = None
    if not args.skip_dask:
        r3 = run_child(args.events, args.batch_size, args.workers, **kw)
        speedup = r3["events_per_s"] / r1["events_per_s"]
        r4 = run_child(args.events, args.batch_size, f"cold{args.workers}", **kw) if args.dask_cold else None
    total = sum(r1["stage_seconds"].values())
    share = {k: round(v / total, 4) for k, v in sorted(r1["stage_seconds"].items(), key=lambda kv: -kv[1])}

    print(f"{'run':<30}{'events':>10}{'events/s':>11}{'wall s':>8}{'CPU s':>8}{'peak RSS MB':>13}")
    runs = [("in-process" + (", weighted" if args.weighted else ""), args.events, r1),
            ("in-process, unweighted", args.events, r1u), ("in-process (large)", args.large_events, r2)]
    if speedup is not None:
        runs.append((f"dask LocalCluster, {args.workers} workers", args.events, r3))
        if r4 is not None:
            runs.append((f"dask, {args.workers} workers, cold", args.events, r4))
    for label, n, r in runs:
        if r is not None:  # wall and CPU of the whole child (warm-up and start-up included)
            print(f"{label:<30}{n:>10}{r['events_per_s']:>11,.0f}{r['wall_s']:>8.1f}{r['cpu_s']:>8.1f}"
                  + (f"{r['peak_rss_mb']:>13.0f}" if "workers" not in label else ""))
    for label, _, r in runs:
        if r is not None:
            print(f"seconds per stage, {label}: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["stage_seconds"].items(), key=lambda kv: -kv[1])))
    print("share of the stages' summed seconds (1st run; the store's overlap the simulation): " + ", ".join(f"{k} {v:.1%}" for k, v in share.items()))
    if speedup is not None:
        wk = r3["workers_cpu_s"]
        k_ev = args.events / 1000
        print(f"CPU seconds of the timed production (start-up and warm-up excluded): in-process "
              f"{r1['client_cpu_s']:.1f} ({r1['client_cpu_s'] / k_ev * 1000:.1f} ms per 1000 events); dask client "
              f"{r3['client_cpu_s']:.1f} + workers {' + '.join(f'{w:.1f}' for w in wk)} = "
              f"{r3['client_cpu_s'] + sum(wk):.1f} ({(r3['client_cpu_s'] + sum(wk)) / k_ev * 1000:.1f} ms per 1000 events)")
    if speedup is not None and r4 is not None:
        print(f"from scratch (imports, warm-up or cluster start, production): in-process {r1['total_s']:.1f} s, "
              f"dask cold {r4['total_s']:.1f} s")
    print(json.dumps({
        "events_per_s": round(r1["events_per_s"], 1),
        "descriptor": args.descriptor,
        "weighted": bool(args.weighted),
        "unweighted_events_per_s": None if r1u is None else round(r1u["events_per_s"], 1),
        "stage_share": share,
        "peak_rss_mb_1e6": round(rss1, 1),
        "peak_rss_mb_1e7": None if rss2 is None else round(rss2, 1),
        "dask_2_workers_speedup": None if speedup is None else round(speedup, 3),
        "dask_2_workers_speedup_cold": None if speedup is None or r4 is None else round(r1["total_s"] / r4["total_s"], 3),
        "cpu_s": {"in_process": round(r1["cpu_s"], 1), "dask": None if speedup is None else round(r3["cpu_s"], 1)},
        "production_cpu_s": {"in_process": round(r1["client_cpu_s"], 2),
                             "dask_client": None if speedup is None else round(r3["client_cpu_s"], 2),
                             "dask_workers": None if speedup is None else [round(w, 2) for w in r3["workers_cpu_s"]]},
    }))


if __name__ == "__main__":
    main()
