"""The shipped PID models' data-support tables (``support.npz``, :mod:`mambah.nn.support`), remade.

    python examples/model_support.py --work W                  # every model of SUPPORT (about an hour on 2 cores)
    python examples/model_support.py --work W --models pid-p-rich,pid-p-global
    python examples/model_support.py --work W --out models     # write into the shipped models (default: report only)

A model's support table is its data's sWeighted signal in cells of (log10 P, ETA); the rows a model
evaluates in cells with less than 10 (the table's ``min_weight``) are reported at run time
(:class:`~mambah.errors.OutOfSupportWarning`): the network extrapolates there, inside its training
range condition by condition. New trainings write it themselves (``mambah train pid|flags``, and
``mambah train marginals`` adds its calibration data); the models trained before it got theirs here:

1. each model's training sample is made again the way ``examples/train_pid_chain.py`` made it
   (:func:`train_pid_chain.prepare`: the reference detector's calibration channel, the card's seed
   and size, ``mambah sweights``) and given to ``mambah models support``, which checks it against the
   card's training sample (rows after the selection; the summed weight when it is the card's weight
   column). Where the reference detector has changed since the model was trained (its RICH and
   calorimeter acceptance flags, the electrons' sPlot fit), the regenerated sample does not pass that
   check; it is then used with ``--other-data`` (the same channel, seed and size: the same
   kinematics), and the card says so with both row counts;
2. the calibration samples of a model's quantile map (``examples/fit_pid_marginals.py``) are added
   with ``--add``: the first chunk of each channel the map used (the standard channel's first seed,
   and for the proton RICH map the first low-momentum and high-pseudorapidity samples); the map's
   other chunks, of the same channels, would only add weight to the cells these fill;
3. the GAN steps trained on a momentum-weighted sample (``--p-weight``: column ``wP`` or ``wHighP``)
   take the support with the sWeights (``--weight sWeight``): the momentum factor changes what a row
   counts for in training, not whether there is signal;
4. the real-data proton model (``pid-p-dllp-lhcb-run3``): its training file is remade from
   ``../shared/data/lc_protons_run3.parquet`` as its card says (the source minus fold 0 of
   ``numpy.random.default_rng(2026).permutation`` cut by ``numpy.array_split`` into 5).

Each model's card then lists its sources (the files with their hashes, rows, summed weights, the
command and what the data is). The last line printed is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_pid_chain  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MAMBAH = [sys.executable, "-m", "mambah"]
#: the columns a support needs (P, ETA, the selections' flags, the sWeight)
KEEP = ["P", "ETA", "sWeight", "hasRich", "hasCalo", "isMuon"]
M6 = 6_000_000

# A sample: (species, seed, candidates, channel variant or None), made by train_pid_chain.prepare.
# Per model: (its training samples, the samples of its quantile map, the weight column of the support
# when not the card's). Seeds: train_pid_chain's (--seed 7 + position in mu,e,pi,K,p; MUON_SAMPLES,
# FLAGS_SAMPLES, LOW_P_FLAGS_SAMPLES) and fit_pid_marginals' (SEEDS, LOW_P_SEEDS, HIGH_ETA_SEEDS).
SUPPORT = {
    "pid-p-rich": ([("p", 11, 200_000, None)], [("p", 71, M6, None), ("p", 76, M6, "low-p"), ("p", 79, M6, "high-eta")],
                   None),
    "pid-p-global": ([("p", 11, 200_000, None)], [], None),
    "pid-p-probnn": ([("p", 11, 200_000, None)], [], None),
    "pid-p-flags": ([("p", 26, M6, None), ("p", 78, M6, "low-p")], [("p", 71, M6, None), ("p", 76, M6, "low-p")], None),
    "pid-p-muon": ([("p", 26, M6, None)], [], None),
    "pid-K-rich": ([("K", 10, 200_000, None)], [("K", 42, M6, None)], None),
    "pid-K-global": ([("K", 10, 200_000, None)], [], None),
    "pid-K-probnn": ([("K", 10, 200_000, None)], [("K", 42, M6, None)], None),
    "pid-K-flags": ([("K", 10, 200_000, None)], [("K", 42, M6, None)], None),
    "pid-K-muon": ([("K", 23, M6, None)], [], None),
    "pid-pi-rich": ([("pi", 9, 500_000, None)], [("pi", 41, M6, None)], "sWeight"),
    "pid-pi-global": ([("pi", 9, 200_000, None)], [], None),
    "pid-pi-probnn": ([("pi", 9, 200_000, None)], [], None),
    "pid-pi-flags": ([("pi", 25, M6, None)], [("pi", 41, M6, None)], None),
    "pid-pi-muon": ([("pi", 25, M6, None)], [], None),
    "pid-mu-rich": ([("mu", 7, 500_000, None)], [], "sWeight"),
    "pid-mu-global": ([("mu", 7, 250_000, None)], [], None),
    "pid-mu-probnn": ([("mu", 7, 250_000, None)], [], None),
    "pid-mu-muon": ([("mu", 7, 250_000, None)], [], None),
    "pid-mu-flags": ([("mu", 27, M6, None)], [("mu", 91, M6, None)], None),
    "pid-e-rich": ([("e", 8, 1_000_000, None)], [], "sWeight"),
    "pid-e-global": ([("e", 8, 200_000, None)], [], None),
    "pid-e-probnn": ([("e", 8, 200_000, None)], [], None),
    "pid-e-flags": ([("e", 8, 200_000, None)], [], None),
    "pid-e-muon": ([("e", 28, M6, None)], [], None),
}
REAL = "pid-p-dllp-lhcb-run3"


def sample_name(s, seed, events, variant) -> str:
    return f"{s}_{seed}_{events}{'_' + variant if variant else ''}.parquet"


def sample(work: Path, s: str, seed: int, events: int, variant: str | None) -> Path:
    """The sWeighted calibration sample (the KEEP columns), made once."""
    out = work / sample_name(s, seed, events, variant)
    if not out.exists():
        tmp = work / "tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        t = pd.read_parquet(train_pid_chain.prepare(s, tmp, seed, events, variant=variant))
        t[[c for c in KEEP if c in t.columns]].to_parquet(out, index=False)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def describe(s, seed, events, variant) -> str:
    return (f"examples/train_pid_chain.prepare({s!r}, W, {seed}, {events}" + (f", variant={variant!r}" if variant else "")
            + f"): {events:,} candidates of the reference detector's {variant or 'standard'} calibration channel "
            f"({train_pid_chain.CHANNELS[s].decay}), sPlot of {train_pid_chain.CHANNELS[s].mass_column}")


def real_training_file(work: Path) -> Path:
    out = work / "lc_protons_run3_minus_fold0.parquet"
    if not out.exists():
        src = pd.read_parquet(ROOT.parent / "shared" / "data" / "lc_protons_run3.parquet")
        fold0 = np.array_split(np.random.default_rng(2026).permutation(len(src)), 5)[0]
        src.drop(index=src.index[fold0]).reset_index(drop=True).to_parquet(out, index=False)
    return out


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    print("$", " ".join(shlex.quote(str(c)) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True)


def support_model(model: Path, train: list[Path], train_desc: str, maps: list[Path], maps_desc: str,
                  weight: str | None) -> dict:
    """``mambah models support`` for one model: the training sample (checked; else --other-data), then
    its map's samples (--add). Returns what was done."""
    base = ["mambah", "models", "support", model, "--data", *train] + (["--weight", weight] if weight else [])
    r = run([*MAMBAH, *base[1:], "--description", train_desc])
    checked = r.returncode == 0
    if not checked:
        if "not the model's training data" not in r.stderr:
            raise SystemExit(r.stderr)
        why = r.stderr.strip().splitlines()[-1].split("error: ", 1)[-1]
        r = run([*MAMBAH, *base[1:], "--other-data", "--description", train_desc,
                 "--what", "the training sample's channel, seed and size regenerated with the current reference "
                           f"detector, which has changed since the training (the check said: {why})"])
        if r.returncode:
            raise SystemExit(r.stderr)
    print(r.stdout.strip(), flush=True)
    if maps:
        r = run([*MAMBAH, "models", "support", model, "--add", "--data", *maps, "--description", maps_desc,
                 "--what", "calibration data of its quantile map (the first chunk of each channel the map used)"]
                + (["--weight", weight] if weight else []))
        if r.returncode:
            raise SystemExit(r.stderr)
        print(r.stdout.strip(), flush=True)
    card = json.loads((model / "card.json").read_text())["support"]
    return {"training_sample_checked": checked, "cells_supported": card["cells_supported"],
            "sources": len(card["sources"])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="directory for the regenerated samples")
    ap.add_argument("--out", type=Path, default=None,
                    help="models directory to write into (default: a copy of the shipped models in WORK/models)")
    ap.add_argument("--models", default=",".join([*SUPPORT, REAL]))
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    out = a.out
    if out is None:
        out = a.work / "models"
        if not out.exists():
            shutil.copytree(ROOT / "models", out)
    summary = {}
    for name in a.models.split(","):
        model = out / name
        if name == REAL:
            f = real_training_file(a.work)
            summary[name] = support_model(model, [f], "../shared/data/lc_protons_run3.parquet minus fold 0 of "
                                          "default_rng(2026).permutation cut by np.array_split into 5 (the card's "
                                          "file_note)", [], "", None)
            continue
        train, maps, weight = SUPPORT[name]
        files = [sample(a.work, *t) for t in train]
        mfiles = [sample(a.work, *m) for m in maps]
        summary[name] = support_model(model, files, "; ".join(describe(*t) for t in train), mfiles,
                                      "; ".join(describe(*m) for m in maps), weight)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
