"""Background cocktail against one channel: the cost of splitting batches among channels.

The peaking backgrounds of B0 -> K+ pi- (``--level reco`` with PID by default): one channel
(``B0 -> K+ pi-``) against a cocktail of the four (``B0 -> K+ pi-``, ``B0 -> pi+ pi-``,
``B_s0 -> K+ K-``, ``Lambda_b0 -> p+ K-``, each reconstructed as K+ pi-), in memory (no store),
batch by batch after one warm-up batch each (model loading and the phasespace graphs'
compilation are not counted). Prints a table of the seconds per batch (wall and CPU) and per stage,
then one JSON line. On a shared machine compare the CPU seconds.

    python benchmarks/cocktail.py                      # 5 batches of 20000 events
    python benchmarks/cocktail.py --batches 3 --batch-size 50000 --level truth
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

CHANNELS = ["B0 -> K+ pi-", "B0 -> pi+ pi-", "B_s0 -> K+ K-", "Lambda_b0 -> p+ K-"]
SWAPS = ["1:pi+=K+", "2:K-=pi-", "3:p+=K+", "3:K-=pi-"]


def measure(pipe, batches: int, size: int) -> dict:
    pipe.process(pipe.make_batch(0, production_seed=1, n_events=size))  # warm-up
    wall = cpu = 0.0
    stages: dict[str, float] = {}
    for i in range(1, batches + 1):
        t, c = time.perf_counter(), time.process_time()
        b = pipe.process(pipe.make_batch(i, production_seed=1, n_events=size))
        wall += time.perf_counter() - t
        cpu += time.process_time() - c
        for k, v in b.info["timings"].items():
            stages[k] = stages.get(k, 0.0) + v
    n = batches * size
    return {"events_per_s": n / wall, "wall_s_per_batch": wall / batches, "cpu_s_per_batch": cpu / batches,
            "stage_s_per_batch": {k: v / batches for k, v in stages.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=20_000)
    ap.add_argument("--level", choices=("reco", "truth"), default="reco")
    ap.add_argument("--no-pid", dest="pid", action="store_false")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    from mambah.simulation import cocktail_pipeline, standard_pipeline

    opts = {"level": args.level} if args.level == "truth" else {"level": "reco", "pid": args.pid}
    single = standard_pipeline(CHANNELS[0], **opts)
    swaps = SWAPS if args.level == "reco" else None
    cocktail = cocktail_pipeline(CHANNELS, [1, 0.26, 0.35, 0.14], reconstruct_as=swaps, **opts)
    res = {"one channel": measure(single, args.batches, args.batch_size),
           "cocktail of 4": measure(cocktail, args.batches, args.batch_size)}
    print(f"{'':15s} {'events/s':>10s} {'wall s/batch':>13s} {'CPU s/batch':>12s}  stages (s/batch)")
    for name, r in res.items():
        st = ", ".join(f"{k} {v:.3f}" for k, v in sorted(r["stage_s_per_batch"].items(), key=lambda kv: -kv[1]))
        print(f"{name:15s} {r['events_per_s']:10.0f} {r['wall_s_per_batch']:13.3f} {r['cpu_s_per_batch']:12.3f}  {st}")
    print(json.dumps({"level": args.level, "pid": args.pid, "batch_size": args.batch_size, "batches": args.batches,
                      "one_channel_events_per_s": res["one channel"]["events_per_s"],
                      "cocktail_events_per_s": res["cocktail of 4"]["events_per_s"],
                      "cpu_ratio": res["cocktail of 4"]["cpu_s_per_batch"] / res["one channel"]["cpu_s_per_batch"]}))


if __name__ == "__main__":
    main()
