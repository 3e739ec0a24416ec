"""Train the proton DLLp model on real LHCb calibration data through the CLI, and compare it.

Data: ``../shared/data/lc_protons_run3.parquet`` — LHCb Run 3 Λc→pKπ calibration protons (public
pidcalib2 test data subset; GPL-3.0, © CERN for the benefit of the LHCb Collaboration): P [MeV/c],
ETA, nLongTracks, DLLp and the signal sWeight (43% negative).

Steps (each can be skipped when its outputs exist):

1. a fixed, seeded 20% **test** holdout (``--split-seed``) — never seen by any training, nor by the
   checkpoint selection (the CLI holds out its own validation fraction of the remaining 80%);
2. ``mambah train pid`` with the CLI defaults for each seed of ``--seeds`` (sWeighted), and once
   without ``--weight`` (signal plus background);
3. on the test rows: BDT-KS and AUC, averaged over ``--draws`` generated samples (noise seeds) of
   ``REPEATS`` classifier fits each, ± the error of that mean (:func:`mambah.validation.bdt_ks_score`, signed sWeights,
   every generated row carrying its data row's sWeight) of each model and of two baselines —
   histogram resampling in P x ETA x nLongTracks bins (PIDGen-style: DLLp drawn from the weighted
   DLLp histogram of the training rows in the same bin) and a conditional Gaussian (weighted mean
   and width of DLLp per bin) — and the statistical floor (two disjoint random parts of the real
   data of the test set's size; and the two halves of the whole sample);
4. writes ``results.json`` and a Markdown table in ``--work``; with ``--ship DIR`` copies the
   first seed's model there and adds the comparison to its card.

Usage::

    python examples/train_pid_real_protons.py --work /tmp/pid-real --seeds 1,2,3 --parallel 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "lc_protons_run3.parquet"
C, T, W = ["P", "ETA", "nLongTracks"], ["DLLp"], "sWeight"
#: every test score averages DRAWS generated samples (one per noise seed; the baselines draw too) x REPEATS
#: classifier fits (random 50/50 splits of the ~9k test rows). Both matter: one fit scatters by ~0.015,
#: and one generated sample of 9k rows by ~0.01 whatever the number of fits (the shipped proton model
#: scored 0.038-0.066 over five noise seeds, 4 fits each; 2026-12-02)
DRAWS = 5
REPEATS = 4
DESCRIPTION = "LHCb Run 3 Λc→pKπ calibration protons (public pidcalib2 test data subset)"
LICENSE = ("GPL-3.0 data from the pidcalib2 package (v1.5.9, tests/test_data/cal_test_data_run3_lc.pkl), "
           "© CERN for the benefit of the LHCb Collaboration")


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def split(data: Path, work: Path, seed: int, test_fraction: float = 0.2):
    df = pd.read_parquet(data)
    perm = np.random.default_rng(seed).permutation(len(df))
    n_test = int(round(test_fraction * len(df)))
    test, train = df.iloc[np.sort(perm[:n_test])], df.iloc[np.sort(perm[n_test:])]
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "train.parquet").exists():
        train.reset_index(drop=True).to_parquet(work / "train.parquet", index=False)
        test.reset_index(drop=True).to_parquet(work / "test.parquet", index=False)
    return pd.read_parquet(work / "train.parquet"), pd.read_parquet(work / "test.parquet")


def kfold_split(data: Path, work: Path, folds: int, seed: int):
    """``folds`` disjoint folds of the whole file (a seeded permutation cut in equal parts).

    Fold ``k`` trains on every row outside it (``work/fold<k>/train.parquet``: with 5 folds 80% of
    the file, as the single split's training file) and is predicted by that model only
    (``work/fold<k>/test.parquet``), so every row of the file is generated once by a model that
    never saw it (cross-fitting). Returns the whole file and the fold of each row.
    """
    df = pd.read_parquet(data)
    fold = np.empty(len(df), dtype=int)
    for k, idx in enumerate(np.array_split(np.random.default_rng(seed).permutation(len(df)), folds)):
        fold[idx] = k
    for k in range(folds):
        d = work / f"fold{k}"
        if not (d / "train.parquet").exists():
            d.mkdir(parents=True, exist_ok=True)
            df[fold != k].reset_index(drop=True).to_parquet(d / "train.parquet", index=False)
            df[fold == k].reset_index(drop=True).to_parquet(d / "test.parquet", index=False)
    return df, fold


def fold_commands(work: Path, folds: int, extra):
    """``mambah train pid`` with the CLI defaults on each fold's training file (seed ``k + 1``)."""
    base = ["mambah", "train", "pid", "--species", "p", "--conditions", ",".join(C), "--targets", ",".join(T),
            "--weight", W, "--description", DESCRIPTION]
    return {f"fold{k}": base + ["--data", str(work / f"fold{k}" / "train.parquet"),
                                "--out", str(work / f"fold{k}" / "model"), "--seed", str(k + 1)] + extra
            for k in range(folds)}


def train_commands(work: Path, seeds, extra):
    cmds = {}
    base = ["mambah", "train", "pid", "--data", str(work / "train.parquet"), "--species", "p",
            "--conditions", ",".join(C), "--targets", ",".join(T)]
    for s in seeds:
        cmds[f"sweighted-seed{s}"] = base + ["--weight", W, "--out", str(work / f"model-seed{s}"),
                                             "--seed", str(s), "--description", DESCRIPTION] + extra
    cmds["unweighted-seed1"] = base + ["--out", str(work / "model-unweighted"), "--seed", "1",
                                       "--description", DESCRIPTION + ", trained WITHOUT sWeights"] + extra
    return cmds


def run_trainings(cmds: dict, work: Path, parallel: int):
    todo = {k: v for k, v in cmds.items() if not Path(v[v.index("--out") + 1]).exists()}
    running = []
    for name, cmd in todo.items():
        while len(running) >= parallel:
            running = [(n, p, f) for n, p, f in running if p.poll() is None]
            time.sleep(2)
        log = open(work / f"{name}.log", "w")
        exe = [sys.executable, "-m", "mambah"] + cmd[1:]
        print("running:", " ".join(cmd), flush=True)
        running.append((name, subprocess.Popen(exe, stdout=log, stderr=subprocess.STDOUT), log))
    for name, p, log in running:
        p.wait()
        log.close()
        if p.returncode:
            raise SystemExit(f"training {name} failed, see {work / (name + '.log')}")


# ------------------------------------------------------------------------------- baselines
def _bins(train: pd.DataFrame, n_p=8, n_eta=4, n_occ=4):
    edges = []
    for col, n in (("P", n_p), ("ETA", n_eta), ("nLongTracks", n_occ)):
        e = np.quantile(train[col], np.linspace(0, 1, n + 1))
        e[0], e[-1] = -np.inf, np.inf
        edges.append(e)
    return edges


def _bin_index(df, edges):
    idx = [np.clip(np.searchsorted(e, df[c].to_numpy(), side="right") - 1, 0, len(e) - 2)
           for c, e in zip(("P", "ETA", "nLongTracks"), edges)]
    shape = [len(e) - 1 for e in edges]
    return np.ravel_multi_index(idx, shape), int(np.prod(shape))


def histogram_baseline(train, test, seed, n_dll_bins=60):
    """PIDGen-style resampling: DLLp from the sWeighted DLLp histogram of the training rows in the same bin."""
    rng = np.random.default_rng(seed)
    edges = _bins(train)
    btr, nb = _bin_index(train, edges)
    bte, _ = _bin_index(test, edges)
    out = np.empty(len(test))
    y, w = train["DLLp"].to_numpy(), train[W].to_numpy()
    for b in range(nb):  # loop over ~128 bins, vectorised inside
        sel = bte == b
        if not sel.any():
            continue
        m = btr == b
        h, e = np.histogram(y[m], bins=np.quantile(y[m], np.linspace(0, 1, n_dll_bins + 1)), weights=w[m])
        p = np.clip(h, 0, None)
        if not p.sum() > 0:  # a bin without signal left after the clipping: the whole sample's histogram
            h, e = np.histogram(y, bins=np.quantile(y, np.linspace(0, 1, n_dll_bins + 1)), weights=w)
            p = np.clip(h, 0, None)
        p = p / p.sum()
        k = rng.choice(len(p), size=int(sel.sum()), p=p)
        out[sel] = e[k] + rng.random(int(sel.sum())) * (e[k + 1] - e[k])
    return out


def gaussian_baseline(train, test, seed):
    """Conditional Gaussian: weighted mean and width of DLLp in each P x ETA x nLongTracks bin."""
    rng = np.random.default_rng(seed)
    edges = _bins(train)
    btr, nb = _bin_index(train, edges)
    bte, _ = _bin_index(test, edges)
    y, w = train["DLLp"].to_numpy(), train[W].to_numpy()
    sw = np.bincount(btr, w, nb)
    ok = sw > 0  # bins with no (or a non-positive) weight take the global mean and width
    mu_all = np.sum(w * y) / w.sum()
    var_all = np.sum(w * (y - mu_all) ** 2) / w.sum()
    mu = np.where(ok, np.bincount(btr, w * y, nb) / np.where(ok, sw, 1.0), mu_all)
    var = np.where(ok, np.bincount(btr, w * y * y, nb) / np.where(ok, sw, 1.0) - mu ** 2, var_all)
    var = np.clip(var, 1e-6, None)
    return mu[bte] + np.sqrt(var[bte]) * rng.standard_normal(len(test))


def _res(results):
    """Mean, per-fit spread and error of the mean over the fits of several :class:`BDTKSResult` (one per
    generated draw), and each draw's own mean."""
    from mambah.validation import BDTKSResult

    p = BDTKSResult.pooled(results)
    n = p.n_repeats
    return {"bdt_ks": p.bdt_ks, "bdt_ks_std": p.bdt_ks_std, "bdt_ks_err": p.bdt_ks_std / np.sqrt(n), "auc": p.auc,
            "auc_std": p.auc_std, "auc_err": p.auc_std / np.sqrt(n), "bdt_ks_draws": [float(r.bdt_ks) for r in results],
            "n_fits": n}


def score(test, draw, halves, draws=DRAWS):
    """Two scores of generated DLLp for the test rows' conditions (each carrying its row's sWeight).

    ``draw(seed)`` returns one generated DLLp per test row; ``draws`` samples (seeds 0, 1, ...) are
    scored with ``REPEATS`` classifier fits each and averaged.

    * ``paired``: all test rows against their generated twins (the DESIGN protocol), split with one
      permutation for both samples (``bdt_ks_score(..., paired=True)``) so that a row and its twin
      are always on the same side of the classifier's train/test split; independent splits let
      the classifier learn condition points and bias every method's score upwards.
    * ``unpaired``: real half A against generated half B (disjoint rows, no shared conditions),
      directly comparable with the floor "real half A vs real half B".
    """
    from mambah.validation import bdt_ks_score

    a, b = halves
    paired, unpaired = [], []
    for d in range(draws):
        gen = test.copy()
        gen["DLLp"] = draw(d)
        paired.append(bdt_ks_score(test, gen, C + T, ref_weight=W, gen_weight=W, seed=d, n_repeats=REPEATS,
                                   paired=True))
        unpaired.append(bdt_ks_score(test.iloc[a], gen.iloc[b], C + T, ref_weight=W, gen_weight=W, seed=d,
                                     n_repeats=REPEATS))
    return {"paired": _res(paired), "unpaired": _res(unpaired)}


def evaluate(work: Path, train, test, cmds, data: Path, draws: int = DRAWS):
    from mambah.nn.pidmodel import PidModel
    from mambah.validation import bdt_ks_null, bdt_ks_score

    rows = {}
    perm = np.random.default_rng(7).permutation(len(test))
    halves = (np.sort(perm[: len(test) // 2]), np.sort(perm[len(test) // 2:]))
    full = pd.concat([train, test], ignore_index=True)
    other = train.iloc[np.random.default_rng(99).permutation(len(train))[:len(test)]].reset_index(drop=True)
    rows["floor: real vs real (disjoint rows)"] = {
        "paired": _res([bdt_ks_score(test, other, C + T, ref_weight=W, gen_weight=W, seed=d, n_repeats=REPEATS)
                        for d in range(draws)]),
        "unpaired": _res([bdt_ks_score(test.iloc[halves[0]], test.iloc[halves[1]], C + T, ref_weight=W,
                                       gen_weight=W, seed=d, n_repeats=REPEATS) for d in range(draws)]),
        "note": "paired column: the test rows vs as many disjoint training rows; unpaired: test half A vs half B",
    }
    rows["floor: two halves of the whole sample (23k vs 23k rows)"] = {
        "paired": _res([bdt_ks_null(full, C + T, ref_weight=W, seed=d, n_repeats=REPEATS) for d in range(draws)])}
    models = {}
    for name, cmd in cmds.items():
        out = Path(cmd[cmd.index("--out") + 1])
        m = PidModel.load(out)
        res = score(test, lambda d: m.generate(test[C], seed=12345 + d)["DLLp"].to_numpy(), halves, draws)
        res["train_seconds"] = m.card["training"]["seconds"]
        res["train_steps"] = m.card["training"]["steps"]
        res["valid_bdt_ks"] = m.card["metrics"]["valid_bdt_ks"]
        res["command"] = " ".join(cmd)
        rows[f"Cramér GAN, CLI defaults, {name}"] = res
        models[name] = out
    rows["histogram resampling P x ETA x nLongTracks (PIDGen-style)"] = score(
        test, lambda d: histogram_baseline(train, test, 1 + d), halves, draws)
    rows["conditional Gaussian per P x ETA x nLongTracks bin"] = score(
        test, lambda d: gaussian_baseline(train, test, 1 + d), halves, draws)
    summary = {}
    for kind in ("paired", "unpaired"):
        ks = [v[kind]["bdt_ks"] for k, v in rows.items() if "sweighted" in k]
        aucs = [v[kind]["auc"] for k, v in rows.items() if "sweighted" in k]
        summary[kind] = {"sweighted_seeds_bdt_ks_mean": float(np.mean(ks)), "min": float(np.min(ks)),
                         "max": float(np.max(ks)), "auc_mean": float(np.mean(aucs))}
    result = {"data": str(data), "data_sha256": sha256(data), "description": DESCRIPTION, "license": LICENSE,
              "n_train_file": len(train), "n_test": len(test),
              "test_split": "numpy default_rng(split_seed).permutation, first 20% = test",
              "scorer": "mambah.validation.bdt_ks_score(ref, gen, [P, ETA, nLongTracks, DLLp], ref_weight=sWeight, "
                        f"gen_weight=sWeight, seed=d, n_repeats={REPEATS}) for d < {draws} generated draws "
                        "(noise seeds 12345 + d), averaged over all fits",
              "rows": rows, "summary": summary}
    (work / "results.json").write_text(json.dumps(result, indent=2))
    lines = ["| sample | BDT-KS paired | AUC paired | BDT-KS unpaired (A vs B) | AUC unpaired |", "|---|---|---|---|---|"]
    for k, v in rows.items():
        cells = []
        for kind in ("paired", "unpaired"):
            r = v.get(kind)
            cells += ([f"{r['bdt_ks']:.4f} ± {r['bdt_ks_err']:.4f}", f"{r['auc']:.4f} ± {r['auc_err']:.4f}"]
                      if r else ["", ""])
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (work / "results.md").write_text(table + "\n")
    print(table)
    print(json.dumps(summary))
    return result, models


def evaluate_crossfit(work: Path, full: pd.DataFrame, fold: np.ndarray, cmds: dict, data: Path, draws: int = DRAWS):
    """Score the cross-fitted samples: every row of the file generated by the model of its fold.

    * ``unpaired`` — the issue's comparison with the statistical floor, like for like: real half A
      against generated half B (disjoint random halves of the whole file, about 23k rows each),
      next to real half A against real half B (the floor);
    * ``paired`` — all rows against their generated twins (the DESIGN protocol, at the file's size;
      there is no disjoint real sample of that size, so no floor in this column);
    * ``per_fold`` — each fold's rows against their twins (about 9k rows: the single split's test
      size, one score per training seed).

    The baselines (histogram resampling, conditional Gaussian) are cross-fitted the same way: each
    fold's rows drawn from the histograms of the other folds.
    """
    from mambah.nn.pidmodel import PidModel
    from mambah.validation import bdt_ks_score

    folds = int(fold.max()) + 1
    perm = np.random.default_rng(7).permutation(len(full))
    a, b = np.sort(perm[: len(full) // 2]), np.sort(perm[len(full) // 2:])
    models = {k: PidModel.load(Path(cmds[f"fold{k}"][cmds[f"fold{k}"].index("--out") + 1])) for k in range(folds)}
    parts = [(full[fold != k], full[fold == k]) for k in range(folds)]

    def crossfit(draw_fold):
        def draw(d):
            out = np.empty(len(full))
            for k, (tr, te) in enumerate(parts):
                out[fold == k] = draw_fold(k, tr, te, d)
            return out
        return draw

    methods = {
        "Cramér GAN, CLI defaults (one model per fold, seeds 1-%d)" % folds: crossfit(
            lambda k, tr, te, d: models[k].generate(te[C], seed=12345 + d)["DLLp"].to_numpy()),
        "histogram resampling P x ETA x nLongTracks (PIDGen-style)": crossfit(
            lambda k, tr, te, d: histogram_baseline(tr, te, 1 + d)),
        "conditional Gaussian per P x ETA x nLongTracks bin": crossfit(
            lambda k, tr, te, d: gaussian_baseline(tr, te, 1 + d)),
    }
    rows = {"floor: real half A vs real half B (whole file)": {"unpaired": _res(
        [bdt_ks_score(full.iloc[a], full.iloc[b], C + T, ref_weight=W, gen_weight=W, seed=d, n_repeats=REPEATS)
         for d in range(draws)])}}
    for name, draw in methods.items():
        paired, unpaired, per_fold = [], [], {k: [] for k in range(folds)}
        for d in range(draws):
            gen = full.copy()
            gen["DLLp"] = draw(d)
            paired.append(bdt_ks_score(full, gen, C + T, ref_weight=W, gen_weight=W, seed=d, n_repeats=REPEATS,
                                       paired=True))
            unpaired.append(bdt_ks_score(full.iloc[a], gen.iloc[b], C + T, ref_weight=W, gen_weight=W, seed=d,
                                         n_repeats=REPEATS))
            for k in range(folds):
                m = fold == k
                per_fold[k].append(bdt_ks_score(full[m], gen[m], C + T, ref_weight=W, gen_weight=W, seed=d,
                                                n_repeats=REPEATS, paired=True))
        rows[name] = {"paired": _res(paired), "unpaired": _res(unpaired),
                      "per_fold": {f"fold{k}": _res(v) for k, v in per_fold.items()}}
    gan = next(k for k in methods if k.startswith("Cramér"))
    rows[gan]["folds"] = {f"fold{k}": {"command": " ".join(cmds[f"fold{k}"]),
                                      "train_seconds": m.card["training"]["seconds"],
                                      "train_steps": m.card["training"]["steps"],
                                      "valid_bdt_ks": m.card["metrics"]["valid_bdt_ks"]}
                          for k, m in models.items()}
    floor = rows["floor: real half A vs real half B (whole file)"]["unpaired"]["bdt_ks"]
    summary = {"floor_unpaired": floor, "gan_unpaired": rows[gan]["unpaired"]["bdt_ks"],
               "gan_unpaired_auc": rows[gan]["unpaired"]["auc"],
               "gan_over_floor": rows[gan]["unpaired"]["bdt_ks"] / floor,
               "gan_paired": rows[gan]["paired"]["bdt_ks"], "gan_paired_auc": rows[gan]["paired"]["auc"],
               "gan_per_fold_paired": [v["bdt_ks"] for v in rows[gan]["per_fold"].values()]}
    result = {"data": str(data), "data_sha256": sha256(data), "description": DESCRIPTION, "license": LICENSE,
              "n_rows": len(full), "folds": folds,
              "split": "numpy default_rng(split_seed).permutation cut in `folds` equal parts (np.array_split)",
              "scorer": "mambah.validation.bdt_ks_score(ref, gen, [P, ETA, nLongTracks, DLLp], ref_weight=sWeight, "
                        f"gen_weight=sWeight, seed=d, n_repeats={REPEATS}) for d < {draws} generated draws "
                        "(noise seeds 12345 + d), averaged over all fits; halves: default_rng(7).permutation",
              "rows": rows, "summary": summary}
    (work / "results_crossfit.json").write_text(json.dumps(result, indent=2))
    lines = ["| sample | BDT-KS unpaired (A vs B, 23k rows each) | AUC unpaired | BDT-KS paired (all rows) "
             "| AUC paired | paired per fold (9k rows each) |", "|---|---|---|---|---|---|"]
    for k, v in rows.items():
        cells = []
        for kind in ("unpaired", "paired"):
            r = v.get(kind)
            cells += ([f"{r['bdt_ks']:.4f} ± {r['bdt_ks_err']:.4f}", f"{r['auc']:.4f} ± {r['auc_err']:.4f}"]
                      if r else ["", ""])
        cells.append(", ".join(f"{f['bdt_ks']:.3f}" for f in v.get("per_fold", {}).values()))
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (work / "results_crossfit.md").write_text(table + "\n")
    print(table)
    print(json.dumps(summary))
    return result


def ship(result, models, dest: Path, data: Path, split_seed: int):
    name = next(k for k in models if k.startswith("sweighted"))
    src = models[name]
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    card = json.loads((dest / "card.json").read_text())
    card["name"] = dest.name
    card["training_data"].update(
        description=DESCRIPTION, license=LICENSE, source_file=data.name, source_sha256=sha256(data),
        source_n_rows=result["n_train_file"] + result["n_test"],
        file_note=(f"train.parquet = the source file minus a seeded 20% test holdout "
                   f"(numpy default_rng({split_seed}).permutation; examples/train_pid_real_protons.py)"))
    card["command"] = result["rows"][f"Cramér GAN, CLI defaults, {name}"]["command"]
    card["test_comparison"] = {k: v for k, v in result.items() if k in ("rows", "summary", "scorer", "n_test")}
    (dest / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    print("shipped", dest)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--work", type=Path, default=Path("pid-real-work"))
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--split-seed", type=int, default=2026)
    ap.add_argument("--parallel", type=int, default=1, help="trainings at once")
    ap.add_argument("--train-only", action="store_true")
    ap.add_argument("--draws", type=int, default=DRAWS,
                    help=f"generated samples per test score, {REPEATS} classifier fits each (default {DRAWS})")
    ap.add_argument("--ship", type=Path, default=None, help="copy the first seed's model here, with the comparison")
    ap.add_argument("extra", nargs="*", help="extra options for mambah train pid (after --)")
    ap.add_argument("--folds", type=int, default=0,
                    help="cross-fitted evaluation instead of the single split: train one model per fold on the "
                         "other folds (CLI defaults) and score every row of the file (see kfold_split)")
    a = ap.parse_args(argv)
    if a.folds:
        if a.folds < 2:
            ap.error(f"--folds must be >= 2, not {a.folds}")
        full, fold = kfold_split(a.data, a.work, a.folds, a.split_seed)
        cmds = fold_commands(a.work, a.folds, a.extra)
        run_trainings(cmds, a.work, a.parallel)
        if not a.train_only:
            evaluate_crossfit(a.work, full, fold, cmds, a.data, a.draws)
        return
    train, test = split(a.data, a.work, a.split_seed)
    cmds = train_commands(a.work, [int(s) for s in a.seeds.split(",")], a.extra)
    run_trainings(cmds, a.work, a.parallel)
    if a.train_only:
        return
    result, models = evaluate(a.work, train, test, cmds, a.data, a.draws)
    if a.ship:
        ship(result, models, a.ship, a.data, a.split_seed)


if __name__ == "__main__":
    main()
