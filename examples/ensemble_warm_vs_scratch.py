"""Do warm-started ensemble members shrink the model uncertainty? One model, both ways (issue 22).

An ensemble's members are fitted to Poisson(1) bootstrap replicas of the calibration sample
(:mod:`mambah.training.ensemble`). From scratch each member costs a full training; warm-started from
the nominal it costs a quarter, but it may stay near the nominal and understate the spread. This
script compares two directories trained with the same command except ``--warm-start`` (so with the
same nominal: same data, seed and budget) on rows neither saw:

* per cut (``DLLp > 0, 5, 10, 15``) and bin of P x ETA: the ensemble's spread σ_ens of the cut
  efficiency (:func:`mambah.validation.pid_efficiency`, members drawing with the nominal's noise,
  ``--draws`` noise draws per row), its median over the bins and its ratio warm / scratch;
* z = (data − nominal) / sqrt(σ_ens² + σ_stat²): its robust width (1.4826 MAD) for each;
* the cost per member (seconds and steps, from the cards).

Usage (the fold-0 rows of ``examples/train_pid_real_protons.py --folds 5`` as the test rows)::

    python examples/ensemble_warm_vs_scratch.py --warm /work/pidwork/fold0/model \\
        --scratch /work/pidwork/fold0-scratch/model --data /work/pidwork/fold0/test.parquet
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

CUTS = ["DLLp > 0", "DLLp > 5", "DLLp > 10", "DLLp > 15"]


def robust_width(x) -> float:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    return float(1.4826 * np.median(np.abs(x - np.median(x)))) if len(x) else float("nan")


def compare(warm: Path, scratch: Path, data: Path, draws: int = 10, seed: int = 7) -> dict:
    from mambah.nn.pidmodel import PidModel
    from mambah.validation import default_bins, pid_efficiency

    df = pd.read_parquet(data)
    bins = default_bins(df, "sWeight", columns=["P", "ETA"])
    out = {"data": str(data), "rows": len(df), "draws": draws, "seed": seed, "bins": {k: v.tolist() for k, v in bins.items()}}
    tables = {}
    for name, path in (("warm", warm), ("scratch", scratch)):
        m = PidModel.load(path)
        t = pid_efficiency(m, df, CUTS, bins=bins, weight="sWeight", seed=seed, draws=draws, min_n_eff=50)
        t = t[(t["cell"] >= 0) & t["used"]]
        tables[name] = t
        e = m.card["ensemble"]
        out[name] = {"model": str(path), "members": e["members"], "warm_start": e["warm_start"],
                     "seconds_per_member": float(np.mean(e["seconds_per_member"])),
                     "steps_per_member": float(np.mean(e["steps_per_member"])),
                     "nominal_seconds": m.card["training"]["seconds"], "nominal_steps": m.card["training"]["steps"],
                     "cuts": {c: {"median_sigma_ens": float(np.median(g["model_ens_error"])),
                                  "median_sigma_stat": float(np.median(g["data_stat_error"])),
                                  "z_robust_width": robust_width(g["z"]), "pull_robust_width": robust_width(g["pull"]),
                                  "bins": int(len(g))}
                              for c, g in t.groupby("cut", sort=False)}}
    w, s = tables["warm"], tables["scratch"]
    same_nominal = bool(np.allclose(w["model_eff"].to_numpy(), s["model_eff"].to_numpy()))
    ratio = (w["model_ens_error"].to_numpy() / s["model_ens_error"].to_numpy())
    out["same_nominal"] = same_nominal
    out["sigma_ens_ratio_warm_over_scratch"] = {
        "median": float(np.nanmedian(ratio)),
        "per_cut": {c: float(np.nanmedian(ratio[(w["cut"] == c).to_numpy()])) for c in CUTS}}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warm", type=Path, required=True)
    ap.add_argument("--scratch", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--out", type=Path, default=None, help="write the result as JSON")
    a = ap.parse_args(argv)
    res = compare(a.warm, a.scratch, a.data, a.draws)
    text = json.dumps(res, indent=2)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
