"""B+ -> J/psi(-> mu+ mu-) K+: simulate, read the candidates back, look at masses and efficiencies.

    python examples/bplus_jpsi_k.py                      # 200k events, plots in out/bplus_jpsi_k/
    python examples/bplus_jpsi_k.py --events 20000       # quicker

What it shows: the Python API in a few lines (a standard pipeline, a production into a store),
the flat candidate ntuple with LHCb-style branches, the reconstructed J/psi and B+ mass peaks
(their widths come from the momentum-resolution network) and the fraction of events in which
all three tracks were reconstructed, as a function of the B+ transverse momentum.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mambah.production import run_production
from mambah.simulation import standard_pipeline
from mambah.store import Store

DESCRIPTOR = "B+ -> (J/psi(1S) -> mu+ mu- VLL) K+ SVS"  # EvtGen's models: helicity-0 J/psi, sin^2 of the muon angle


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--batch-size", type=int, default=50_000)
    ap.add_argument("--db", default="databases/bplus_jpsi_k.duckdb")
    ap.add_argument("--out", default="out/bplus_jpsi_k")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)

    Path(args.db).unlink(missing_ok=True)
    with Store(args.db) as store:
        res = run_production(standard_pipeline(DESCRIPTOR), n_events=args.events, batch_size=args.batch_size,
                             seed=args.seed, store=store, production="bplus", progress=True)
        nt = store.candidates()

    full = nt["B_M"].notna().to_numpy()
    jpsi_m, b_m = nt["Jpsi_M"].to_numpy(), nt["B_M"].to_numpy()
    in_peak = np.abs(jpsi_m - 3096.9) < 60
    summary = {
        "events": len(nt),
        "events_per_s": round(res.events_per_s),
        "all_three_tracks_reconstructed": float(full.mean()),
        "jpsi_mass_mean": float(np.nanmean(jpsi_m[in_peak])),
        "jpsi_mass_std": float(np.nanstd(jpsi_m[in_peak])),
        "b_mass_mean": float(np.nanmean(b_m[full])),
        "b_mass_std": float(np.nanstd(b_m[full])),
    }
    print(f"{res.n_events} events at {res.events_per_s:,.0f} events/s into {args.db}")
    for k, v in summary.items():
        print(f"  {k:<32} {v:.4g}" if isinstance(v, float) else f"  {k:<32} {v}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep

    plt.style.use(mplhep.style.LHCb2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(24, 7))
    axes[0].hist(jpsi_m[np.isfinite(jpsi_m)], bins=100, range=(2950, 3250), histtype="step")
    axes[0].set_xlabel(r"$m(\mu^+\mu^-)$ [MeV/$c^2$]")
    axes[1].hist(b_m[full], bins=100, range=(5150, 5400), histtype="step")
    axes[1].set_xlabel(r"$m(J/\psi K^+)$ [MeV/$c^2$]")
    pt = nt["B_TRUEPT"].to_numpy() / 1e3
    edges = np.quantile(pt, np.linspace(0, 1, 11))
    idx = np.clip(np.digitize(pt, edges) - 1, 0, 9)
    eff = np.bincount(idx, weights=full, minlength=10) / np.bincount(idx, minlength=10)
    axes[2].stairs(eff, edges)
    axes[2].set_xlabel(r"true $p_T(B^+)$ [GeV/$c$]")
    axes[2].set_ylabel("all three tracks reconstructed")
    fig.tight_layout()
    fig.savefig(out / "bplus_jpsi_k.png", dpi=80)
    print(f"plots in {out}/bplus_jpsi_k.png")
    return summary


if __name__ == "__main__":
    main()
