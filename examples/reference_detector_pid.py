"""The reference detector's PID response: cut efficiencies per species in bins of p, and its
calibration samples with the sWeights that separate their signal.

Part 1 sends each species (e, mu, pi, K, p) through :func:`mambah.reference.pid.reference_pid`
with LHCb-like kinematics (log-flat p in 2-100 GeV/c, 2 < eta < 4.5, nTracks ~ Gamma(mean 96))
and prints the efficiencies of typical cuts (DLLK > 0, DLLK > 5, DLLp > 5, isMuon, DLLe > 2,
DLLmu > 0 on the combined DLLs PIDx) in bins of p.

Part 2 makes a calibration sample per species (:func:`mambah.reference.calibration.calib_sample`),
fits its mass with :func:`mambah.training.splot.fit_sweights` and compares the sWeighted efficiency of
the species' typical cut with the truth (pure signal) and with the unweighted sample.

With ``--plots DIR`` it draws the DLLs versus p (matplotlib).

This is a documented stand-in, **not LHCb truth**.

Run::

    python examples/reference_detector_pid.py [--tracks 40000] [--calib 20000] [--seed 1] [--plots DIR]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from mambah.reference.calibration import CHANNELS, calib_sample
from mambah.reference.pid import SPECIES_NAMES, reference_pid

P_BINS = [2e3, 5e3, 10e3, 20e3, 40e3, 60e3, 100e3]
CUTS = {
    "DLLK>0": lambda d: d["pid_k"] > 0,
    "DLLK>5": lambda d: d["pid_k"] > 5,
    "DLLp>5": lambda d: d["pid_p"] > 5,
    "isMuon": lambda d: d["is_muon"] > 0.5,
    "DLLe>2": lambda d: d["pid_e"] > 2,
    "DLLmu>0": lambda d: d["pid_mu"] > 0,
}
CALIB_CUT = {"K": ("PIDK", 0.0), "pi": ("PIDK", 0.0), "p": ("PIDp", 5.0), "mu": ("isMuon", 0.5), "e": ("PIDe", 2.0)}


def efficiency_table(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    table = {}
    print(f"cut efficiencies (%) of the reference detector, {n} tracks per species, seed {seed}")
    print(f"{'species':8s} {'p [GeV/c]':>10s} " + " ".join(f"{c:>8s}" for c in CUTS))
    for name, pdg in SPECIES_NAMES.items():
        p = np.exp(rng.uniform(np.log(2e3), np.log(100e3), n))
        eta = rng.uniform(2.0, 4.5, n)
        nt = rng.gamma(4.0, 24.0, n)
        d = reference_pid(p, eta, np.full(n, pdg), rng.choice([-1, 1], n), nt, rng)
        table[name] = {}
        for lo, hi in zip(P_BINS[:-1], P_BINS[1:]):
            b = (p >= lo) & (p < hi)
            effs = {c: float(f(d[b]).mean()) for c, f in CUTS.items()}
            table[name][f"{lo / 1e3:g}-{hi / 1e3:g}"] = effs
            print(f"{name:8s} {f'{lo / 1e3:g}-{hi / 1e3:g}':>10s} " + " ".join(f"{100 * e:8.2f}" for e in effs.values()))
    return table


def calibration_check(n: int, seed: int) -> dict:
    from mambah.training.splot import fit_sweights

    out = {}
    print(f"\ncalibration samples ({n} candidates each): efficiency of the typical cut")
    print(f"{'species':8s} {'cut':>12s} {'f_signal':>9s} {'truth':>8s} {'sWeighted':>14s} {'unweighted':>11s}")
    for i, (sp, ch) in enumerate(CHANNELS.items()):
        df = calib_sample(sp, n, seed=seed + i)
        res = fit_sweights(df[ch.mass_column].to_numpy(), ch.window, signal="gauss", background="exponential")
        w = res.sweights
        col, thr = CALIB_CUT[sp]
        passed = (df[col] > thr).to_numpy().astype(float)
        eff_w = float(np.sum(w * passed) / w.sum())
        err_w = float(np.sqrt(np.sum(w**2 * (passed - eff_w) ** 2)) / w.sum())
        eff_true = float(passed[df["is_signal"].to_numpy()].mean())
        eff_raw = float(passed.mean())
        out[sp] = {"cut": f"{col}>{thr:g}", "signal_fraction": float(df["is_signal"].mean()),
                   "truth": eff_true, "sweighted": eff_w, "sweighted_error": err_w, "unweighted": eff_raw}
        print(f"{sp:8s} {col + '>' + format(thr, 'g'):>12s} {df['is_signal'].mean():9.3f} {eff_true:8.4f} "
              f"{eff_w:8.4f}±{err_w:.4f} {eff_raw:11.4f}")
    return out


def plots(directory: str, n: int, seed: int) -> None:
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for name in ("pi", "K", "p"):
        p = np.exp(rng.uniform(np.log(2e3), np.log(100e3), n))
        d = reference_pid(p, rng.uniform(2, 4.5, n), np.full(n, SPECIES_NAMES[name]), np.ones(n),
                          rng.gamma(4.0, 24.0, n), rng)
        for ax, col in zip(axes, ("pid_k", "pid_p")):
            ax.scatter(p / 1e3, d[col], s=1, alpha=0.3, label=name)
    for ax, col in zip(axes, ("DLLK", "DLLp")):
        ax.set_xscale("log")
        ax.set_xlabel("p [GeV/c]")
        ax.set_ylabel(col)
        ax.set_ylim(-150, 150)
        ax.legend(markerscale=8)
    fig.suptitle("mambah reference detector (not LHCb truth)")
    fig.tight_layout()
    fig.savefig(os.path.join(directory, "reference_dll_vs_p.png"), dpi=120)
    print(f"wrote {directory}/reference_dll_vs_p.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracks", type=int, default=40000)
    ap.add_argument("--calib", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--plots", default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    table = efficiency_table(args.tracks, args.seed)
    calib = calibration_check(args.calib, args.seed)
    if args.plots:
        plots(args.plots, 4000, args.seed)
    print(json.dumps({"efficiencies": table, "calibration": calib, "seconds": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
