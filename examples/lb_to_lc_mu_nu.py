"""The validation channel of the original work: Λb0 → Λc+ μ− ν̄μ with Λc+ → p K− π+.

    python examples/lb_to_lc_mu_nu.py                   # 200k events, plots in out/lb_to_lc_mu_nu/
    python examples/lb_to_lc_mu_nu.py --events 20000    # quicker

Simulates the channel through the whole chain (gun, decay, occupancy, tracking efficiency,
momentum resolution, composites and, with the shipped PID models, the PID variables), reads the
flat candidate ntuple back and shows what an analyst looks at first: the proton's kinematics,
the reconstructed Λc+ mass peak, the visible Λb0 mass, and the efficiency of typical proton PID
requirements (PIDp > 5, PIDp − PIDK > 0) in bins of the proton momentum.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mambah.production import run_production
from mambah.simulation import standard_pipeline
from mambah.store import Store

DESCRIPTOR = "Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu Lb2LclnuLQCD"  # lattice-QCD form factors


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--batch-size", type=int, default=50_000)
    ap.add_argument("--db", default="databases/lb_to_lc_mu_nu.duckdb")
    ap.add_argument("--out", default="out/lb_to_lc_mu_nu")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--no-pid", action="store_true", help="stop before the PID stage")
    args = ap.parse_args(argv)

    Path(args.db).unlink(missing_ok=True)
    pipe = standard_pipeline(DESCRIPTOR, pid=not args.no_pid)
    with Store(args.db) as store:
        res = run_production(pipe, n_events=args.events, batch_size=args.batch_size, seed=args.seed, store=store,
                             production="lb", progress=True)
        nt = store.candidates()

    p_ok = nt["p_P"].notna().to_numpy()
    lc_ok = nt["Lc_M"].notna().to_numpy()
    summary = {
        "events": len(nt),
        "events_per_s": round(res.events_per_s),
        "proton_reconstructed": float(p_ok.mean()),
        "lc_candidates": int(lc_ok.sum()),
        "lc_mass_median": float(np.nanmedian(nt["Lc_M"])),
        "lc_mass_width_68": float(np.subtract(*np.nanpercentile(nt["Lc_M"], [84, 16])) / 2),
        "lb_visible_mass_median": float(np.nanmedian(nt["Lb_M"])),
    }
    p_gev = nt["p_P"].to_numpy() / 1e3
    edges = np.array([2, 5, 10, 20, 40, 70, 100, 200.0])
    cuts = {}
    if not args.no_pid:
        pidp, pidk = nt["p_PIDp"].to_numpy(), nt["p_PIDK"].to_numpy()
        cuts = {"PIDp > 5": pidp > 5, "PIDp - PIDK > 0": (pidp - pidk) > 0}
        for name, passed in cuts.items():
            sel = p_ok & np.isfinite(pidp)
            summary[f"eff {name}"] = float(passed[sel].mean())
    print(f"{res.n_events} events at {res.events_per_s:,.0f} events/s into {args.db}")
    for k, v in summary.items():
        print(f"  {k:<28} {v:.4g}" if isinstance(v, float) else f"  {k:<28} {v}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep

    plt.style.use(mplhep.style.LHCb2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 2, figsize=(16, 13))
    axes[0, 0].hist(p_gev[p_ok], bins=80, range=(0, 200), histtype="step")
    axes[0, 0].set_xlabel(r"proton $p$ [GeV/$c$]")
    axes[0, 1].hist(nt["p_ETA"].to_numpy()[p_ok], bins=60, range=(1.5, 5.5), histtype="step")
    axes[0, 1].set_xlabel(r"proton $\eta$")
    axes[1, 0].hist(nt["Lc_M"].to_numpy()[lc_ok], bins=80, range=(2250, 2325), histtype="step")
    axes[1, 0].set_xlabel(r"$m(pK^-\pi^+)$ [MeV/$c^2$]")
    idx = np.digitize(p_gev, edges) - 1
    inside = p_ok & (idx >= 0) & (idx < len(edges) - 1)
    for name, passed in cuts.items():
        num = np.bincount(idx[inside], weights=passed[inside], minlength=len(edges) - 1)
        den = np.bincount(idx[inside], minlength=len(edges) - 1)
        axes[1, 1].stairs(num / np.maximum(den, 1), edges, label=name)
    axes[1, 1].set_xscale("log")
    axes[1, 1].set_xlabel(r"proton $p$ [GeV/$c$]")
    axes[1, 1].set_ylabel("efficiency")
    if cuts:
        axes[1, 1].legend()
    fig.tight_layout()
    fig.savefig(out / "lb_to_lc_mu_nu.png", dpi=70)
    print(f"plots in {out}/lb_to_lc_mu_nu.png")
    return summary


if __name__ == "__main__":
    main()
