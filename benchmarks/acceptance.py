"""Issue 23: the geometric acceptance and the 4-class efficiency, measured.

1. **Range edges**: of the README main job's tracking candidates (charged final-state particles of
   ``Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu Lb2LclnuLQCD``), the share the former
   stage evaluated at the efficiency network's range edges (efficiency-ref-v1 on every candidate,
   clamped), against the share the stage evaluates there now (the acceptance first, then
   efficiency-ref-v2: 0 by construction), and the share outside the acceptance (not reconstructed).
2. **What changes in the default production**: per species, the mean long-track efficiency of the
   candidates (the expected reconstructed fraction, no random draw) of the former default
   (efficiency-ref-v1 without acceptance), of the new default (acceptance + efficiency-ref-v2) and
   of the reference detector (truth), and the expected fraction of events with all four tracks.
3. **Closure** of the shipped 4-class model: |model - reference truth| per (p, eta) bin and class
   on a fresh reference sample over the acceptance (bins with >= 2000 tracks).

    python benchmarks/acceptance.py                     # 200k events, 1M closure tracks
    python benchmarks/acceptance.py --events 50000 --closure-tracks 300000

Prints tables and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np

DESCRIPTOR = "Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu Lb2LclnuLQCD"


def candidates(events: int, batch_size: int, seed: int):
    """The tracking candidates of the main job (generator level), as arrays, and the per-event layout."""
    from mambah import Pipeline, generator_stages
    from mambah.physics import species_index

    pipe = Pipeline(generator_stages(DESCRIPTOR))
    out = {k: [] for k in ("px", "py", "pz", "x", "y", "z", "pid", "event")}
    off = 0
    for i in range(-(-events // batch_size)):
        n = min(batch_size, events - i * batch_size)
        b = pipe.process(pipe.make_batch(i, production_seed=seed, n_events=n))
        mc, vt = b["mc_particles"], b["mc_vertices"].set_index("index")
        c = mc[(species_index(mc["pid"].to_numpy()) >= 0) & (mc["decay_vertex"].to_numpy() < 0)]
        o = vt.loc[c["prod_vertex"].to_numpy()]
        for k in ("px", "py", "pz", "pid"):
            out[k].append(c[k].to_numpy())
        for k in ("x", "y", "z"):
            out[k].append(o[k].to_numpy())
        out["event"].append(c["event"].to_numpy().astype(np.int64) + off)
        off += n
    return {k: np.concatenate(v) for k, v in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--batch-size", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--closure-tracks", type=int, default=1_000_000)
    ap.add_argument("--old", default="efficiency-ref-v1")
    ap.add_argument("--new", default="efficiency-ref-v2")
    args = ap.parse_args()
    warnings.simplefilter("ignore")

    from mambah.nn.registry import load_model
    from mambah.physics import SPECIES, p_eta, species_index
    from mambah.reconstruction.acceptance import TrackAcceptance
    from mambah.reference.tracking import TrackGun, TrackingDetector
    from mambah.training.tracking import TYPE_P_EDGES, efficiency_closure

    t0 = time.perf_counter()
    c = candidates(args.events, args.batch_size, args.seed)
    kin = [c[k] for k in ("px", "py", "pz", "x", "y", "z")]
    n = len(c["px"])
    acc = TrackAcceptance()
    old, new = load_model(args.old, kind="efficiency"), load_model(args.new, kind="efficiency")
    acc.check_model(new)

    # 1. range edges
    cnt_old: list = []
    p_old = old.probability(*kin, c["pid"], counts=cnt_old)
    allowed = acc.types(*kin)
    inside = allowed.any(axis=1)
    cnt_new: list = []
    pr = new.type_probabilities(*(a[inside] for a in kin), c["pid"][inside], counts=cnt_new)
    per_old = dict(cnt_old[0].detail)
    edges = {"candidates": n, "before_at_edges": cnt_old[0].count / n, "before_at_edges_per_feature":
             {k: v / n for k, v in per_old.items()}, "after_at_edges": cnt_new[0].count / max(cnt_new[0].n, 1),
             "after_outside_acceptance": float(1 - inside.mean())}
    print(f"main job: {args.events} events, {n} tracking candidates")
    print(f"  before ({args.old}, no acceptance): {edges['before_at_edges']:.2%} evaluated at the range edges "
          f"({', '.join(f'{k} {v:.2%}' for k, v in edges['before_at_edges_per_feature'].items())})")
    print(f"  after (acceptance + {args.new}): {edges['after_at_edges']:.2%} at the range edges; "
          f"{edges['after_outside_acceptance']:.2%} outside the acceptance (not reconstructed, never evaluated)")

    # 2. the default production: expected long-track efficiency per species
    p_new = np.zeros(n)
    p_new[inside] = pr[:, 1] * allowed[inside, 0]
    ref = TrackingDetector().type_probabilities(*kin, c["pid"])[:, 1]
    sp = species_index(c["pid"])
    per_species = {}
    print(f"\n  expected long-track efficiency per species: former default | new default | reference truth")
    for s in SPECIES:
        m = sp == SPECIES.index(s)
        if m.any():
            per_species[s] = {"n": int(m.sum()), "old": float(p_old[m].mean()), "new": float(p_new[m].mean()),
                              "reference": float(ref[m].mean())}
            v = per_species[s]
            print(f"    {s:>3} ({v['n']:>7} candidates): {v['old']:.4f} | {v['new']:.4f} | {v['reference']:.4f}")
    tot = {"old": float(p_old.sum()), "new": float(p_new.sum()), "reference": float(ref.sum())}

    def all_four(p):  # expected fraction of events with every track reconstructed
        lp = np.bincount(c["event"], weights=np.log(np.maximum(p, 1e-300)), minlength=args.events)
        return float(np.exp(lp).mean())

    ev = {"old": all_four(p_old), "new": all_four(p_new), "reference": all_four(ref)}
    print(f"    tracks: new / former default = {tot['new'] / tot['old']:.4f} ({tot['new'] / tot['old'] - 1:+.2%}); "
          f"new / reference = {tot['new'] / tot['reference']:.4f}")
    print(f"    events with all four tracks: former {ev['old']:.4f}, new {ev['new']:.4f}, reference {ev['reference']:.4f}")

    # 3. closure of the shipped 4-class model
    gun = TrackGun(p_lo=acc.p_min, p_hi=acc.p_max, eta_lo=acc.eta_min, eta_hi=acc.eta_max, box=0.2,
                   box_z=(acc.z_min, acc.z_max), box_rho=acc.rho_max)
    t = gun(args.closure_tracks, seed=12345)
    ins = acc.inside(t["px"], t["py"], t["pz"], t["x"], t["y"], t["z"])
    args7 = [t[k][ins] for k in ("px", "py", "pz", "x", "y", "z", "pid")]
    prob = new.type_probabilities(*args7)
    truth = TrackingDetector().type_probabilities(*args7)
    p, eta = p_eta(args7[0], args7[1], args7[2])
    closure = {}
    print(f"\n  closure of {args.new} on {int(ins.sum())} fresh reference tracks in the acceptance, "
          "max |model - truth| over (p, eta) bins with >= 2000 tracks:")
    for k, name in enumerate(["none", "long", "upstream", "downstream"]):
        cl = efficiency_closure(prob[:, k], truth[:, k], p, eta, p_edges=TYPE_P_EDGES, min_count=2000)
        closure[name] = {"max_abs_diff": cl["max_abs_diff"], "n_bins": cl["n_bins"]}
        print(f"    {name:>10}: {cl['max_abs_diff']:.4f} over {cl['n_bins']} bins")
    print(json.dumps({"edges": edges, "per_species": per_species, "tracks": tot, "events_all_tracks": ev,
                      "closure": closure, "seconds": round(time.perf_counter() - t0, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
