"""A muon-likelihood step (``models/pid-<s>-muon``) against the reference detector's truth.

The muon step of a PID chain draws ``MuonMuLL`` and ``MuonBkgLL`` for the tracks that pass isMuon.
Its calibration rows are few (about 1% of the kaons and 2% of the pions of a D*-tagged sample pass
isMuon, and 85% of the isMuon rows are background that the sWeights subtract), so a model can pass
its BDT-KS and still move a cut's efficiency by several per cent: the muon steps of K and pi
trained on 200k-candidate samples put 12.7% of kaons above ``MuonMuLL > -2`` against 6.6% in the
truth. This script measures that on tracks the training never saw: ``calib_sample(species, N,
seed, pure=True)``, the reference detector's pure signal (the truth), its isMuon rows, the model
evaluated on their conditions (3 noise draws averaged), in p bins:

* the truth efficiency of ``MuonMuLL > -2`` and ``MuonBkgLL > -5`` with its binomial error,
* the nominal's efficiency and the standard deviation of the ensemble members' (the model
  uncertainty, when the model has members),
* ``z = (truth - nominal) / sqrt(sigma_truth^2 + sigma_ens^2)`` and the fraction of bins with
  ``|z| < 1``.

Usage::

    python examples/muon_step_closure.py models/pid-K-muon K [--tracks 600000] [--seed 20261207] [--json OUT]

``--write-card`` stores the result in the model's ``card.json`` (``metrics.truth_closure``).
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

#: the cuts checked: (target, threshold): efficiency of ``target > threshold``
CUTS = (("MuonMuLL", -2.0), ("MuonBkgLL", -5.0))
#: p bin edges [MeV/c]
EDGES = (3000.0, 10000.0, 20000.0, 40000.0, 200000.0)


def muon_step_closure(model_dir, species: str, tracks: int = 600_000, seed: int = 20261207, draws: int = 3) -> dict:
    """The table and summary described in the module docstring, as a dict: the PIDCalib-style
    comparison of :func:`mambah.validation.pideff.pid_efficiency` with the truth as the data (every
    row weight 1, so its statistical error is the binomial one)."""
    from mambah.errors import OutOfRangeWarning
    from mambah.reference.calibration import calib_sample
    from mambah.validation.pideff import pid_efficiency

    t = calib_sample(species, tracks, seed=seed, pure=True)
    t = t[t["isMuon"] == 1].reset_index(drop=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)  # the few tracks outside the range: clamped
        table = pid_efficiency(model_dir, t, [f"{c} > {thr:g}" for c, thr in CUTS], bins={"P": list(EDGES)},
                               draws=draws, min_n_eff=100.0)
    info = table.attrs["info"]
    rows = [{"cut": r.cut, "p_bin": "all" if r.cell < 0 else [float(r.P_lo), float(r.P_hi)], "n": int(r.n),
             "truth": float(r.data_eff), "truth_err": float(r.data_stat_error), "model": float(r.model_eff),
             "model_ens": float(np.nan_to_num(r.model_ens_error)), "z": float(r.z)}
            for r in table.itertuples() if r.used or r.cell < 0]
    zs = np.array([r["z"] for r in rows if r["p_bin"] != "all"])
    return {"model": str(Path(model_dir).name), "species": species, "tracks": tracks, "seed": seed,
            "n_ismuon": int(len(t)), "members": int(info.get("n_members", 0)), "draws": draws, "bins": rows,
            "frac_abs_z_below_1": float(np.mean(np.abs(zs) < 1)), "max_abs_z": float(np.max(np.abs(zs))),
            "method": "reference detector's pure signal (calib_sample(species, tracks, seed, pure=True)), isMuon rows, "
                      "as the data of mambah.validation.pideff.pid_efficiency (weights 1) in p bins with >= 100 rows: "
                      "z = (truth - nominal) / sqrt(sigma_truth^2 + sigma_ens^2) (examples/muon_step_closure.py)"}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("species")
    ap.add_argument("--tracks", type=int, default=600_000)
    ap.add_argument("--seed", type=int, default=20261207)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--write-card", action="store_true")
    a = ap.parse_args(argv)
    r = muon_step_closure(a.model, a.species, a.tracks, a.seed)
    for row in r["bins"]:
        p = row["p_bin"] if row["p_bin"] == "all" else f"{row['p_bin'][0] / 1e3:g}-{row['p_bin'][1] / 1e3:g} GeV/c"
        print(f"{row['cut']:16s} {p:>16s}  n {row['n']:6d}  truth {100 * row['truth']:5.1f} ± {100 * row['truth_err']:.1f}%"
              f"  model {100 * row['model']:5.1f} ± {100 * row['model_ens']:.1f}% (ens)  z {row['z']:+.2f}")
    print(f"{r['n_ismuon']} isMuon tracks; p bins with |z| < 1: {100 * r['frac_abs_z_below_1']:.0f}%, "
          f"max |z| {r['max_abs_z']:.2f}")
    if a.json:
        a.json.write_text(json.dumps(r, indent=1))
    if a.write_card:
        card_path = a.model / "card.json"
        card = json.loads(card_path.read_text())
        card.setdefault("metrics", {})["truth_closure"] = r
        card_path.write_text(json.dumps(card, indent=1) + "\n")


if __name__ == "__main__":
    main()
