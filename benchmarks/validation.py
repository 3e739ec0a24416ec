"""Benchmark: a full validation report (BDT score, null, 1D KS, efficiencies, plots) of 10^6 rows.

Reference and generated samples of N rows each (default 10^6), 3 conditions + 2 targets, the
reference with signed sWeight-like weights (30 % negative), default settings of
``mambah.validation.validate`` (3 repeats, at most 500k training rows per fit). Prints a table of
the step timings, then ONE final JSON line with ``seconds_1e6_rows``.

Run:  nice -n 10 python benchmarks/validation.py [N] [--threads K]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import pandas as pd


def sample(n: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    P = rng.lognormal(10.3, 0.6, n)
    ETA = rng.uniform(2, 5, n)
    ntr = rng.poisson(90, n).astype(float)
    dllk = 5 * (ETA - 3) + 2e-5 * P - 0.05 * ntr + rng.normal(0, 3, n) + shift
    dllp = 0.5 * dllk + rng.normal(0, 4, n)
    w = np.where(rng.random(n) < 0.3, -rng.uniform(0, 0.5, n), rng.uniform(0.5, 1.2, n))
    return pd.DataFrame({"P": P, "ETA": ETA, "nTracks": ntr, "DLLK": dllk, "DLLp": dllp, "sWeight": w})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int, nargs="?", default=1_000_000)
    ap.add_argument("--threads", type=int, default=1, help="classifier threads (0 = all cores)")
    args = ap.parse_args()
    from mambah.validation import validate

    ref, gen = sample(args.n, 1), sample(args.n, 2, shift=0.1)
    with tempfile.TemporaryDirectory() as d:
        t0, c0 = time.perf_counter(), time.process_time()
        s = validate(ref, gen, ["P", "ETA", "nTracks"], ["DLLK", "DLLp"], "sWeight", "sWeight",
                     report_dir=os.path.join(d, "report"), seed=0, n_threads=args.threads or None)
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - c0
        n_png = len([f for f in os.listdir(os.path.join(d, "report")) if f.endswith(".png")])
    print(f"{'step':32s} {'seconds':>8s}")
    for k, v in s["timings_s"].items():
        print(f"{k:32s} {v:8.2f}")
    print(f"rows: {args.n} reference + {args.n} generated; {n_png} plots; BDT KS {s['bdt_ks']:.4f}, "
          f"null {s['bdt_ks_null']:.4f}")
    print(f"wall {seconds:.1f} s, CPU {cpu:.1f} s (all threads); load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores (a shared machine inflates the wall time)")
    print(json.dumps({"benchmark": "validation", "n_rows": args.n, "threads": args.threads,
                      "seconds_1e6_rows": round(seconds * 1e6 / args.n, 1), "seconds": round(seconds, 1),
                      "cpu_seconds": round(cpu, 1), "load_average": round(os.getloadavg()[0], 1),
                      "bdt_ks": round(s["bdt_ks"], 4), "bdt_ks_null": round(s["bdt_ks_null"], 4)}))


if __name__ == "__main__":
    main()
