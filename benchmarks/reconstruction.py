"""Throughput of the reconstruction networks: efficiency + resolution for 10^6 tracks.

Evaluates the shipped efficiency classifier on 10^6 single tracks (LHCb-like gun of the
reference detector), draws the Bernoulli decisions, and samples reconstructed momenta from the
resolution MDN for the survivors, as the Efficiency and Resolution stages do. Prints a table,
then one JSON line with ``tracks_per_s`` (input tracks per wall-clock second through both
networks, best of ``--repeat``), ``tracks_per_cpu_s`` (per CPU-second summed over threads: what
the code costs, independent of other processes competing for the cores) and ``peak_rss_mb``.
Threads: ``MAMBAH_THREADS`` (default: all cores).

    nice -n 10 python benchmarks/reconstruction.py [--tracks 1000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracks", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--efficiency", default="efficiency-ref-v1")
    ap.add_argument("--resolution", default="resolution-ref-v1")
    args = ap.parse_args()

    from mambah.nn import tracking as recnets
    from mambah.nn.dense import n_threads
    from mambah.reference.tracking import TrackGun

    gun = TrackGun()(args.tracks, seed=1)
    cols = [gun[c] for c in ("px", "py", "pz", "x", "y", "z", "pid")]
    t0 = time.perf_counter()
    eff = recnets.load_efficiency(args.efficiency)
    res = recnets.load_resolution(args.resolution)
    t_load = time.perf_counter() - t0
    import logging

    logging.getLogger("mambah").setLevel(logging.ERROR)  # out-of-range notes are not the point here
    rows = []
    for i in range(args.repeat):
        rng = np.random.default_rng(i)
        c0 = time.process_time()
        t0 = time.perf_counter()
        prob = eff.probability(*cols)
        keep = rng.random(len(prob)) < prob
        t1 = time.perf_counter()
        out = res.sample(*(c[keep] for c in cols[:3]), cols[6][keep], rng)
        t2 = time.perf_counter()
        rows.append((t1 - t0, t2 - t1, t2 - t0, int(keep.sum()), time.process_time() - c0))
        assert np.isfinite(out[0]).all()
    print(f"{'repeat':>6} {'efficiency s':>13} {'resolution s':>13} {'total s':>8} {'cpu s':>7} {'survivors':>10} "
          f"{'tracks/s':>10} {'tracks/cpu s':>13}")
    for i, (a, b, c, k, cpu) in enumerate(rows):
        print(f"{i:>6} {a:>13.3f} {b:>13.3f} {c:>8.3f} {cpu:>7.3f} {k:>10d} {args.tracks / c:>10.3g} {args.tracks / cpu:>13.3g}")
    best = min(rows, key=lambda r: r[2])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    best_cpu = min(r[4] for r in rows)
    print(f"model loading (TensorFlow import + Keras files): {t_load:.1f} s; cpus: {os.cpu_count()}, threads: "
          f"{n_threads()}, load average: {os.getloadavg()[0]:.1f}")
    print(json.dumps({"benchmark": "reconstruction", "tracks": args.tracks, "tracks_per_s": round(args.tracks / best[2]),
                      "tracks_per_cpu_s": round(args.tracks / best_cpu), "load_average": round(os.getloadavg()[0], 1),
                      "efficiency_s": round(best[0], 4), "resolution_s": round(best[1], 4),
                      "survivor_fraction": round(best[3] / args.tracks, 4), "peak_rss_mb": round(rss, 1)}))


if __name__ == "__main__":
    main()
