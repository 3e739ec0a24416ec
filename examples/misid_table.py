"""Mis-identification rates in bins of p: the PID chain, the reference detector and a RapidSim-style
baseline on the same tracks (issue 24).

    python examples/misid_table.py                        # 200k tracks per species (a few minutes)
    python examples/misid_table.py --tracks 20000 --calib 20000    # quicker
    python examples/misid_table.py --out out/misid        # also misid_table.csv and misid_table.json

The tracks are the reconstructed final-state tracks of two-body b-hadron decays with the
generator's LHCb-like spectra, simulated with the standard chain (particle gun, phase space,
occupancy, tracking efficiency and resolution, PID chain): pions from B0 -> pi+ pi-, kaons from
B_s0 -> K+ K-, protons from Lambda_b0 -> p+ K-, muons from B_s0 -> mu+ mu-, in 2 < eta < 5 and
2 < p < 150 GeV/c (the PID models' training range). With ``--source calib`` the tracks are instead
pure reference-detector calibration probes (the kinematics and occupancy the chain was trained on,
a fresh seed): the chain's closure for these rates, which separates its own error from that of
evaluating it on other kinematics. For every track:

* chain      the PID variables the production's PID stage drew (the trained chain of its true species;
             with --source calib the same chains, mambah.validation.misid.chain_response);
* reference  the reference detector's own response for the same p, eta, nTracks, charge and species;
* baseline   each variable drawn on its own from per-species (p, eta) histograms filled from a pure
             reference-detector calibration sample (RapidSim-style: no correlations, no occupancy).

It prints, per mis-ID (mambah.validation.misid.MISID) and p bin, the three rates with binomial
errors and whether the chain and the baseline meet the criterion of issue 24 against the reference
(|difference| < 1% absolute, 10% relative where the reference rate is below 10%), with
z = difference / its error; "?" marks a bin whose statistics cannot resolve the criterion. The last
line is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from mambah.errors import OutOfRangeWarning
from mambah.physics import SPECIES_PDG
from mambah.pipeline import production_batch
from mambah.reference.calibration import calib_sample
from mambah.simulation import standard_pipeline
from mambah.validation.misid import (
    MISID,
    P_EDGES,
    PID_VARIABLES,
    TRACK_COLUMNS,
    baseline_from_calibration,
    batch_tracks,
    chain_response,
    format_table,
    in_acceptance,
    misid_table,
    reference_response,
)

#: the decay whose tracks of each species enter the table
SOURCES = {"pi": "B0 -> pi+ pi-", "K": "B_s0 -> K+ K-", "p": "Lambda_b0 -> p+ K-", "mu": "B_s0 -> mu+ mu-"}


def species_tracks(species: str, n_tracks: int, batch_size: int, seed: int,
                   p_edges=P_EDGES) -> tuple[pd.DataFrame, int]:
    """Reconstructed tracks of ``species`` in the table's acceptance, from batches of its decay until
    there are ``n_tracks`` (the last batch's surplus is cut); returns the tracks and the events used."""
    pipe = standard_pipeline(SOURCES[species])
    pdg = SPECIES_PDG[species]
    got, have, events, i = [], 0, 0, 0
    while have < n_tracks:
        b = pipe.process(production_batch(i, seed, batch_size))
        t = batch_tracks(b)
        t = t[(np.abs(t["TRUEID"].to_numpy()) == pdg) & in_acceptance(t, p_edges)]
        got.append(t)
        have += len(t)
        events += batch_size
        i += 1
    return pd.concat(got, ignore_index=True).iloc[:n_tracks], events


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracks", type=int, default=200_000, help="tracks per species in the table (default 200k)")
    ap.add_argument("--calib", type=int, default=200_000,
                    help="calibration tracks per species filling the baseline's histograms (default 200k)")
    ap.add_argument("--batch-size", type=int, default=50_000, help="events per simulated batch")
    ap.add_argument("--seed", type=int, default=24)
    ap.add_argument("--p-edges", default=",".join(f"{e / 1e3:g}" for e in P_EDGES),
                    help="momentum bin edges in GeV/c (default %(default)s)")
    ap.add_argument("--eta-edges", help="also bin in eta with these edges (e.g. 2,3,4,5; default: one bin, 2-5)")
    ap.add_argument("--misid", action="append", choices=list(MISID),
                    help="a mis-ID to tabulate (repeatable; default all)")
    ap.add_argument("--source", choices=("decays", "calib"), default="decays",
                    help="the tracks: b-hadron decays through the standard chain (default), or pure calibration "
                         "probes (the chain's training kinematics)")
    ap.add_argument("--out", help="directory for misid_table.csv and misid_table.json")
    args = ap.parse_args(argv)
    p_edges = [float(x) * 1e3 for x in args.p_edges.split(",")]
    misids = args.misid or list(MISID)
    species = [s for s in SOURCES if any(MISID[m].species == s for m in misids)]

    t0 = time.perf_counter()
    frames, events = [], {}
    with warnings.catch_warnings():
        # tracks beyond the PID models' training range are clamped (and reported by the stage);
        # the table keeps only tracks inside it
        warnings.simplefilter("ignore", OutOfRangeWarning)
        for k, s in enumerate(species):
            if args.source == "calib":
                t = calib_sample(s, args.tracks, seed=np.random.default_rng([args.seed, 10 + k]), pure=True)
                t, events[s] = t[in_acceptance(t, p_edges)].reset_index(drop=True), 0
            else:
                t, events[s] = species_tracks(s, args.tracks, args.batch_size, args.seed + k, p_edges)
            frames.append(t[list(TRACK_COLUMNS) + ([] if args.source == "calib" else list(PID_VARIABLES))])
        tracks = pd.concat(frames, ignore_index=True)
        t_sim = time.perf_counter() - t0
        # decays: the production's PID stage filled the chain's columns
        chain = chain_response(tracks, np.random.default_rng([args.seed, 4])) if args.source == "calib" else tracks
    reference = reference_response(tracks, seed=np.random.default_rng([args.seed, 1]))
    base = baseline_from_calibration(species, args.calib, seed=np.random.default_rng([args.seed, 2]))
    baseline = base.sample(tracks, np.random.default_rng([args.seed, 3]))
    eta_edges = [float(x) for x in args.eta_edges.split(",")] if args.eta_edges else None
    table = misid_table(tracks, {"reference": reference, "chain": chain, "baseline": baseline}, misids=misids,
                        p_edges=p_edges, eta_edges=eta_edges)
    elapsed = time.perf_counter() - t0

    print("command: python examples/misid_table.py " + " ".join(sys.argv[1:] if argv is None else argv))
    counts = {s: int((np.abs(tracks["TRUEID"]) == SPECIES_PDG[s]).sum()) for s in species}
    if args.source == "calib":
        print("tracks per species (2 < eta < 5, p in [%g, %g) GeV/c): %s; pure reference calibration probes" % (
            p_edges[0] / 1e3, p_edges[-1] / 1e3, ", ".join(f"{s} {counts[s]}" for s in species)))
    else:
        print("tracks per species (2 < eta < 5, p in [%g, %g) GeV/c): %s; decays: %s" % (
            p_edges[0] / 1e3, p_edges[-1] / 1e3, ", ".join(f"{s} {counts[s]} ({events[s]} events)" for s in species),
            "; ".join(f"{s}: {SOURCES[s]}" for s in species)))
    print(f"baseline: histograms in p x eta filled from {args.calib} pure calibration tracks per species\n")
    print(format_table(table))
    summary = {
        "source": args.source, "tracks_per_species": args.tracks, "calib_per_species": args.calib,
        "seconds": round(elapsed, 1),
        "seconds_simulation": round(t_sim, 1),
        "misid": {m: {r: {"bins_pass": int(g[f"{r}_pass"].sum()), "bins": int(len(g)),
                          "bins_pass_resolved": int((g[f"{r}_pass"] & g[f"{r}_resolved"]).sum()),
                          "max_abs_diff": float(np.nanmax(np.abs(g[f"{r}_diff"]))),
                          "chi2": float(np.nansum((g[f"{r}_diff"] / g[f"{r}_diff_err"].where(g[f"{r}_diff_err"] > 0))
                                                  ** 2))}
                      for r in ("chain", "baseline")}
                  for m, g in table.groupby("misid", sort=False)},
    }
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "misid_table.csv", index=False)
        (out / "misid_table.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
