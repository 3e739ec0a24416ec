"""Train the default chained PID models (``models/pid-<species>-{flags,muon,rich,global}``) through the CLI.

For each species of ``--species``:

1. ``mambah detector calib-sample`` — a contaminated calibration sample (signal + background
   under the mass peak) from the reference detector;
2. ``mambah sweights`` — sPlot of the mass column in the channel's window (signal sWeights);
3. :func:`mambah.pid.chain.prepare_training_table` — the chain's intermediate columns
   (``hasRich`` and ``hasCalo`` as 0/1, ``CaloDLLe``, ``RichDLLpK``, ``RichPKTie``, the RICH
   threshold codes; see :mod:`mambah.pid.chain`);
4. ``mambah train flags`` (isMuon, hasRich, hasCalo classifier; optionally the RichPKTie
   classifier, role ``tie``) and ``mambah train pid`` (muon, RICH and calorimeter GANs), with ``--weight sWeight`` (or without weights with ``--unweighted``, for the
   comparison), small networks so that the whole chain runs at > 500k tracks/s.

Budgets are epochs (``--epochs``, an amount of work that other jobs on the machine cannot
shorten) or minutes (``--max-time``). The shipped models (work directory /work/pidc, a 2-core
machine; the mu sample has 250k candidates, ``prepare(..., events=250000)``) were made with::

    # 2026-11-23, session 3: the mu muon-likelihood model
    python examples/train_pid_chain.py --work W --out new --roles muon --species mu --epochs muon=400
    # 2026-11-23, session 4: hasCalo in the flags, the calorimeter GAN inside the acceptance only
    python examples/train_pid_chain.py --work W --out new --roles flags,global --epochs flags=60,global=60 --parallel 2
    # the RICH GANs with the threshold codes (EXTRA_CONDITIONS); no tie models (the chain makes the
    # ties from the codes)
    python examples/train_pid_chain.py --work W --out new2 --roles rich --species K,p,pi,e,mu --epochs rich=400 --parallel 2
    python examples/train_pid_chain.py --work W --out models --closure 100000 --write-cards
    # 2026-12-03, session 6: RICH GANs of e, K (600 epochs) and pi (400) on tables without the
    # RichDLLpK spike (prepare(): prepare_training_table(fill_ties=seed)); kept for e, K, pi; the
    # new p model (400 epochs) closed worse (0.116) and was not shipped; mu not retrained
    python examples/train_pid_chain.py --work W --out new --roles rich --species e,K --epochs rich=600 --parallel 2
    python examples/train_pid_chain.py --work W --out new --roles rich --species pi,p --epochs rich=400 --parallel 2
    python examples/train_pid_chain.py --work W --out models --species e,K,pi --closure 100000 --write-cards
    # 2026-12-03, session 7: RICH GANs of mu, pi and p (600 epochs) on the fill_ties tables; the flags
    # classifiers of pi, K and p conditioned on the threshold codes too (EXTRA_CONDITIONS["flags"],
    # --patience 20; hasRich exact instead of 8.5% wrong at 2-3 GeV/c); those of mu and e kept (with
    # the codes their isMuon efficiency moved by 1.7-2.9% at 2-5 GeV/c); the chain sets hasRich = 0
    # outside both radiators' acceptance
    python examples/train_pid_chain.py --work W --out new --roles rich --species mu --epochs rich=600 --parallel 1
    python examples/train_pid_chain.py --work W --out new --roles rich --species pi --epochs rich=600 --parallel 1
    python examples/train_pid_chain.py --work W --out new --roles rich --species p --epochs rich=600 --parallel 1
    python examples/train_pid_chain.py --work W --out flags2 --roles flags --species mu,e,pi,K,p --epochs flags=150
    python examples/train_pid_chain.py --work W --out models --closure 100000 --write-cards
    # the RICH GANs of e and pi on 500k-candidate calibration samples (prepare(s, W5, seed, 500000) with
    # the seeds above, 8 and 9): pi 0.077 -> 0.063 (every cut within 1.4%), e 0.108 -> 0.102
    python examples/train_pid_chain.py --work W5 --out new --roles rich --species e,pi --epochs rich=300 --parallel 2
    python examples/train_pid_chain.py --work W --out models --species e,pi --closure 100000 --write-cards
    # 2026-12-03, session 8: the RICH GAN of mu on 500k candidates, 500 epochs (prepare(mu, W5, 7, 500000)):
    # 0.087 -> 0.068; of e on 1M candidates, 250 epochs (prepare(e, W10, 8, 1000000)): 0.102 -> 0.096
    python examples/train_pid_chain.py --work W5 --out new --roles rich --species mu --epochs rich=500 --parallel 1
    python examples/train_pid_chain.py --work W10 --out new --roles rich --species e --epochs rich=250 --parallel 1
    python examples/train_pid_chain.py --work W --out models --species mu,e --closure 100000 --write-cards
    # the RICH GAN of pi on the 500k-candidate sample, 500 epochs instead of 300: 0.063 -> 0.055
    python examples/train_pid_chain.py --work W5 --out new --roles rich --species pi --epochs rich=500 --parallel 1
    # and with the p > 40 GeV/c tail weighted up (shipped): DLLK > 0 above 100 GeV/c -2.1 +- 0.5% -> within
    # 1.1% on all three held-out samples, BDT-KS 0.059 (was 0.055 without the weights)
    python examples/train_pid_chain.py --work W5 --out new --roles rich --species pi --epochs rich=500 --parallel 1 \
        --p-weight 40000,1.5
    python examples/train_pid_chain.py --work W --out models --species pi --closure 100000 --write-cards
    # 2026-12-03, session 9: the RICH GAN of mu with the same weights, 500 epochs (3407 s): 0.068 -> 0.063,
    # DLLK > 0 above 100 GeV/c -2.3% -> within 0.8% on the three held-out samples
    python examples/train_pid_chain.py --work W5 --out new --roles rich --species mu --epochs rich=500 --parallel 1 \
        --p-weight 40000,1.5
    python examples/train_pid_chain.py --work W --out models --species mu --closure 100000 --write-cards
    # 2026-12-04, session 10: the RICH GAN of e with a milder weighting of the tail (factor 1 up to 60 GeV/c,
    # 1.7 at 100, 4 from 240; 3775 s beside a second run): BDT-KS 0.096 -> 0.093, DLLK > 0 above 100 GeV/c
    # -2.4 / -1.9% -> within 0.9% on every held-out sample, the four cuts within 1.1% on all of them
    # (--p-weight 100000,1.5: BDT-KS 0.086-0.094, cuts within 1.8%; not kept)
    python examples/train_pid_chain.py --work W10 --out new --roles rich --species e --epochs rich=250 --parallel 1 \
        --p-weight 60000,1 --valid-repeats 4
    python examples/train_pid_chain.py --work W --out models --species e --closure 100000 --write-cards
    # the other held-out samples
    python examples/train_pid_chain.py --work W --out models --closure 100000 --closure-seed 57000
    python examples/train_pid_chain.py --work W --out models --closure 100000 --closure-seed 91000

    # 2026-12-06: the muon-likelihood steps of K, pi, p and e on their own 6M-candidate samples
    # (MUON_SAMPLES, MUON_OPTIONS: 60 epochs, 5 members from scratch); their closure against the truth
    python examples/train_pid_chain.py --work W --out new --roles muon --species K,pi,p,e --parallel 1
    python examples/muon_step_closure.py models/pid-K-muon K --write-card    # likewise pi, p, e
    # 2026-12-07: the flags classifiers of pi and mu on 6M-candidate samples (FLAGS_SAMPLES: pi's is the
    # muon step's, mu's seed 27), 60 epochs of batches of 4096 (on pi: held-out isMuon rate at 2-5 GeV/c
    # 2.18% against the data's 2.14%; 20 epochs of 2048 gave 1.58%); then their isMuon calibrated on 5
    # more samples each (examples/fit_pid_marginals.py --steps flags); K, p and e keep their 200k ones
    python examples/train_pid_chain.py --work W --out new --roles flags --species pi,mu --parallel 1
    python examples/fit_pid_marginals.py --work W2 --species pi,mu --steps flags --out models
    # the proton flags classifier on its 6M-candidate sample with a 6M low-momentum one appended
    # (LOW_P_FLAGS_SAMPLES; 619 s), isMuon calibrated on the standard and low-momentum samples: p -> mu
    # at 2-5 GeV/c 0.007% -> 1.71% against the reference's 1.62% (examples/misid_table.py --source decays)
    python examples/train_pid_chain.py --work W --out new --roles flags --species p --seed 11 --parallel 1
    python examples/fit_pid_marginals.py --work W2 --species p --steps flags --out models

(the muon-likelihood models of e, pi, K, p were until 2026-12-06 those of the first chain, 2026-11-22,
``--max-time 2.5`` on the 200k-candidate samples; they hardly move the chain's BDT-KS (K's muon
outputs alone score 0.002) but were off by 5-33% in MuonMuLL and MuonBkgLL cuts: see MUON_SAMPLES.)

Closure (100k pure-signal tracks per species, twins split together): BDT-KS pi 0.059, mu 0.063, K
0.087, p 0.089, e 0.093 (first chain: 0.26-0.32; session 3: 0.14-0.16; session 4: 0.084-0.119;
session 6: 0.083-0.109; session 7: 0.063-0.102; session 8: 0.059-0.096; session 10: 0.059-0.093).
The worst p-bin difference of the DLLK>0 / DLLK>5 / DLLp>5 / isMuon efficiencies, over the bins
whose binomial error is <= 1%: mu 1.9%, pi 1.0%, K 1.6%, p 1.4%, e 1.0%; DLLp - DLLK > 0 is within
0.5% (K) to 2.8% (p, 5-10 GeV/c). The sWeighted calibration samples themselves agree with the truth
within their errors in every bin: the differences are the models', and a larger calibration sample
with enough epochs is what moved pi, e and mu (200k -> 500k or 1M candidates). On two more held-out
samples (``--closure-seed 57000`` and ``91000``) BDT-KS is 0.055-0.092 for every species (e
0.088/0.090) and the four cuts are within 1.5%. The last bin to close was DLLK > 0 above 100 GeV/c,
the sparse high-p tail, where the GANs put the DLLK around 0 ~0.1 lower than the detector: -2.1
+- 0.5% for pi, -2.3% for mu, -2.4 / -1.9% (+-0.8%) for e. Weighting the tail's rows up fixed it:
``--p-weight 40000,1.5`` for pi and mu, the milder ``--p-weight 60000,1`` for e (session 10). The
pi/mu recipe for e (1M candidates, 250 epochs, seeds 7 and 8) closed at BDT-KS 0.102-0.107 with
DLLK > 5 up to 2.7% low at 2-10 GeV/c (a reading: it moves the GAN's capacity away from e's
fast-changing RICH response at low p). Weighting the rows below 10 GeV/c up instead (``--p-weight
10000,-1.5``) closed worse for mu (0.100) and was not kept. The same K chain trained without
sWeights (``--unweighted --species K --roles flags,rich,global --epochs
flags=150,rich=200,global=60``, with the weighted muon model; 2026-12-03): BDT-KS 0.357 against
0.087 for the shipped weighted chain, and the DLLK > 0, DLLK > 5 and DLLp > 5 efficiencies off by
0.41 in the worst p bin (it learns the pion background; 2026-11-23 with rich=100: 0.402).

Usage::

    python examples/train_pid_chain.py --work /tmp/pidchain --out models --parallel 2
    python examples/train_pid_chain.py --work /tmp/pidchain --out /tmp/pidchain/unweighted \\
        --species K --unweighted
    python examples/train_pid_chain.py --work /tmp/pidchain --out models --closure 200000

``--closure N`` skips the training and compares each chain in ``--out`` with N held-out rows of
the pure signal (``calib_sample(species, N, seed=10_000 + i, pure=True)``, i the species' position in
e, mu, pi, K, p; training used seeds ``--seed + j`` (7-11) of the contaminated sample) with
:func:`mambah.validation.closure.chain_closure`, writing ``closure.json`` in ``--work``.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from mambah.pid.chain import CHAIN_INPUTS, PROBNN_CONDITIONS, PROBNN_DELTAS, THRESHOLD_CODES, prepare_training_table
from mambah.reference.calibration import CHANNELS

MAMBAH = [sys.executable, "-m", "mambah"]
COND = ",".join(CHAIN_INPUTS)
NET = ["--gen-width", "64", "--gen-depth", "3", "--critic-width", "64", "--critic-depth", "3", "--noise", "8"]
STEPS = {  # role -> (train subcommand, targets, selection, batch size, network options)
    "flags": ("flags", "isMuon,hasRich,hasCalo", None, 4096, ["--patience", "20"]),  # (6M-candidate samples: FLAGS_SAMPLES)
    "muon": ("pid", "MuonMuLL,MuonBkgLL", "isMuon == 1", 512, NET),
    "rich": ("pid", "RichDLLe,RichDLLmu,RichDLLk,RichDLLpK", "hasRich == 1", 1024, NET),  # RichDLLp = RichDLLk + RichDLLpK
    "global": ("pid", "CaloDLLe", "hasCalo == 1", 1024, NET),  # 0 outside the acceptance: a flag, not a GAN spike
    # P(RichDLLp == RichDLLk | RICH information): the chain sets each RICH row's tie status to a draw of it
    "tie": ("flags", "RichPKTie", "hasRich == 1", 2048, ["--width", "16", "--depth", "2"]),
    # the reference ProbNN (mambah.reference.probnn) given the kinematics and the PID already drawn
    # (optional step: the chain runs it where models/pid-<s>-probnn exists; issue 24)
    # residual targets dProbNNx = logit(ProbNNx) - logit(SurProbNNx) (mambah.pid.chain.PROBNN_DELTAS)
    "probnn": ("pid", ",".join(PROBNN_DELTAS), "hasCalo == 1", 1024, NET),  # d = 0 outside the calorimeter
}
#: conditions besides the chain inputs: the RICH GAN and the flags classifier also see the RICH
#: acceptance and threshold codes (mambah.pid.chain.rich_threshold_codes, computed by the chain from P
#: and ETA): hasRich is a step at the radiators' pion thresholds, which a classifier of P and ETA alone
#: smooths (8.5% of the tracks at 2-3 GeV/c got the wrong hasRich)
EXTRA_CONDITIONS = {"rich": list(THRESHOLD_CODES), "flags": list(THRESHOLD_CODES),
                    # (hasCalo: 1 on every row of the step's selection)
                    "probnn": [c for c in PROBNN_CONDITIONS if c != "hasCalo"]}
#: steps whose sWeighted training set is empty: electrons practically never pass isMuon, and the
#: sWeights of the isMuon == 1 rows of the e sample sum to < 0 (the CLI refuses them), so the
#: e muon-likelihood step is trained on the isMuon == 1 rows without weights (background
#: dominated; it affects the ~0.1-0.5% of electrons that pass isMuon). Documented in the card.
#: (until 2026-12-06; the e muon step is now trained with sWeights on its own large sample, MUON_SAMPLES)
UNWEIGHTED: set[str] = set()
EVENTS = {"mu": 250_000, "e": 200_000, "pi": 200_000, "K": 200_000, "p": 200_000}
#: The muon-likelihood steps of e, pi, K and p train on calibration samples of their own, of
#: MUON_EVENTS candidates with these seeds (the shipped models', 2026-12-06). Only 0.1-2% of these
#: species pass isMuon and 65-85% of the isMuon rows are background (true muons), so a
#: 200k-candidate sample holds 0.3-1k sWeighted signal tracks: the first muon steps, trained on
#: them, put 12.7% (K), 35% (pi), 13.7% (p) and 40.7% (e, trained without sWeights) of the isMuon
#: tracks above MuonMuLL > -2, against 6.6%, 23%, 8.2% and 7.4% in the truth, while their BDT-KS
#: sat at the floor of their small held-out samples. examples/muon_step_closure.py measures it.
#: (mu keeps its 250k-candidate sample: 116k sWeighted isMuon muons.)
MUON_EVENTS = 6_000_000
MUON_SAMPLES = {"K": 23, "pi": 25, "p": 26, "e": 28}
#: The flags classifiers (isMuon, hasRich, hasCalo) train on samples of MUON_EVENTS candidates too
#: (since 2026-12-07; the same samples, and one of 6M muons with seed 27). On 200k candidates a
#: pion sample holds ~900 sWeighted isMuon pions: the first classifiers smoothed the isMuon fake
#: rate's p dependence (pi -> mu 0.44-0.48% against 0.56-0.63% above 30 GeV/c, 0.89% against
#: 0.77% at 15-20; mu -> pi 1.87% against 2.25% at 10-15 GeV/c; examples/misid_table.py
#: --source calib --tracks 1000000 --seed 26: chi2/ndf 113/10 and 81/10).
FLAGS_SAMPLES = {**MUON_SAMPLES, "mu": 27}
#: the steps that train on the large samples
LARGE_SAMPLE_ROLES = {"muon": MUON_SAMPLES, "flags": FLAGS_SAMPLES}
#: The proton flags classifier also trains on a low-momentum sample of the same size (seed; ``mambah detector
#: calib-sample --low-p``: Lambda0 without the mother pT cut, 2-10 GeV/c probes), concatenated to its large
#: sample: the standard sample has 0.14% of its protons below 5 GeV/c, and the classifier trained on it gave
#: isMuon ~1e-4 there against the reference detector's 1.6% (2026-12-07).
LOW_P_FLAGS_SAMPLES = {"p": 78}


#: The proton RICH GAN trains on its standard sample with a low-momentum and a high-pseudorapidity sample of
#: the same size appended (variant -> seed; since 2026-12-08): the standard Lambda0 sample's mother pT cut leaves
#: 0.14% of its protons below 5 GeV/c and none of 5-20 GeV/c at 4 < eta < 5, and the GAN trained on it alone
#: extrapolated there (32% of the README's main job's protons outside its data's support, mambah.nn.support; at
#: 2.6-3.5 GeV/c and nTracks > 140 PIDK > 5 for 17% of low-momentum calibration protons against 35%: a far too
#: steep occupancy dependence, which the map, binned in P and ETA only, cannot see). Budget: 200 epochs of the
#: three samples (the same 90800 steps as 600 epochs of one), validations every 1500 steps, patience 20.
RICH_CHANNEL_SAMPLES = {"p": (("low-p", 111), ("high-eta", 112))}


def with_channels(species: str, table: Path, work: Path, events: int) -> Path:
    """``table`` with the species' RICH_CHANNEL_SAMPLES appended, as one training table (``<stem>_3ch``), each
    row's sample in the column ``calib_channel`` (0 standard, then the variants in order)."""
    extra = RICH_CHANNEL_SAMPLES[species]
    out = table.with_name(f"{table.stem}_{len(extra) + 1}ch.parquet")
    if not out.exists():
        parts = [pd.read_parquet(table).assign(calib_channel=0)]
        for i, (variant, seed) in enumerate(extra, 1):
            t = prepare(species, work / f"{variant.replace('-', '')}{seed}", seed, events, variant=variant)
            parts.append(pd.read_parquet(t).assign(calib_channel=i))
        pd.concat(parts, ignore_index=True).to_parquet(out, index=False)
    return out


def with_low_p(species: str, table: Path, work: Path, events: int) -> Path:
    """``table`` with the species' low-momentum sample (LOW_P_FLAGS_SAMPLES) appended, as one training table."""
    out = table.with_name(f"{table.stem}_lowp{LOW_P_FLAGS_SAMPLES[species]}.parquet")
    if not out.exists():
        low = prepare(species, work / f"lowp{LOW_P_FLAGS_SAMPLES[species]}", LOW_P_FLAGS_SAMPLES[species], events,
                      low_p=True)
        pd.concat([pd.read_parquet(table), pd.read_parquet(low)], ignore_index=True).to_parquet(out, index=False)
    return out
#: the muon steps' training options besides the budget: validation every 1000 steps (not every 30 s:
#: a 1-2 minute training), and 5 ensemble members trained from scratch: a step limited by its
#: calibration sample has that sample's uncertainty, which warm-started members (starting from the
#: nominal, a quarter of its budget) do not explore. The first kaon step's warm-started members
#: spread by 0.9% and did not cover its 6% bias; the 6M-sample step's from-scratch members spread
#: by 1.4% (MuonMuLL > -2) and the truth is within |z| < 1.5 in every p bin.
MUON_OPTIONS = ("--validate-every-steps", "1000", "--patience", "8", "--ensemble", "5")
#: ``--p-weight P0,POWER``: the GAN steps train on the weight ``sWeight * clip((p / P0)^POWER, 1, P_WEIGHT_CAP)``
#: (column ``wP``). A factor of the conditions alone leaves the conditional distribution a GAN learns
#: unchanged; it makes the rows of a sparse momentum range count more. ``40000,1.5`` (the p > 40 GeV/c
#: tail, factor 4 at 100 GeV/c) fixed the pion DLLK > 0 efficiency above 100 GeV/c (-2.1 +- 0.5% ->
#: within 1.1%) and mu; for e the milder ``60000,1`` (``40000,1.5`` cost e's bulk at 2-10 GeV/c);
#: ``10000,-1.5`` (below 10 GeV/c) closed worse for mu
P_WEIGHT_CAP = 4.0


def p_weight_table(train: Path, p0: float, power: float) -> Path:
    """The training table with the ``wP`` weight column (``<species>_train_pw<P0>_<POWER>.parquet``)."""
    import numpy as np

    out = train.with_name(f"{train.stem}_pw{p0:g}_{power:g}.parquet")
    if not out.exists():
        t = pd.read_parquet(train)
        t["wP"] = t["sWeight"] * np.clip((t["P"].to_numpy() / p0) ** power, 1.0, P_WEIGHT_CAP)
        t.to_parquet(out, index=False)
    return out


def run(cmd: list[str], nice: bool = False) -> None:
    full = (["nice", "-n", "10"] if nice else []) + cmd
    print("$", " ".join(shlex.quote(c) for c in cmd), flush=True)
    subprocess.run(full, check=True)


def prepare(species: str, work: Path, seed: int, events: int | None = None, low_p: bool = False,
            variant: str | None = None) -> Path:
    """``work/<species>_train.parquet``: the sWeighted training table of a calibration sample (made once);
    ``low_p``: of the species' low-momentum channel (``mambah detector calib-sample --low-p``); ``variant``
    ``"high-eta"``: of its high-pseudorapidity channel (``--high-eta``)."""
    variant = "low-p" if low_p else variant
    ch = CHANNELS[species]
    work.mkdir(parents=True, exist_ok=True)
    raw, sw, train = work / f"{species}_raw.parquet", work / f"{species}_sw.parquet", work / f"{species}_train.parquet"
    if not train.exists():
        run(MAMBAH + ["detector", "calib-sample", "--species", species, "--events", str(events or EVENTS[species]),
                      "--seed", str(seed), "--out", str(raw), "--overwrite", *([f"--{variant}"] if variant else [])])
        run(MAMBAH + ["sweights", "--data", str(raw), "--mass", ch.mass_column, "--range", str(ch.window[0]),
                      str(ch.window[1]), "--out", str(sw), "--overwrite"])
        # fill_ties: the RICH GAN is trained without the RichDLLpK spike at 0 (the chain makes those ties)
        prepare_training_table(pd.read_parquet(sw), fill_ties=seed).to_parquet(train, index=False)
    return train


def train(species: str, role: str, data: Path, out: Path, budget: list[str], weighted: bool, seed: int,
          width: int | None = None, p_weight: tuple[float, float] | None = None, patience: int = 40,
          gan_options: tuple[str, ...] = ()) -> str:
    sub, targets, sel, bs, net = STEPS[role]
    if not (weighted and sub == "pid" and f"{species}:{role}" not in UNWEIGHTED):
        p_weight = None
    if p_weight:
        data = p_weight_table(data, *p_weight)
    if width and net is NET:  # a wider generator and critic for the GAN steps
        net = [str(width) if net[i - 1] in ("--gen-width", "--critic-width") else a for i, a in enumerate(net)]
    dest = out / f"pid-{species}-{role}"
    cond = ",".join([COND] + EXTRA_CONDITIONS.get(role, []))
    cmd = MAMBAH + ["train", sub, "--data", str(data), "--species", species, "--conditions", cond,
                    "--targets", targets, "--out", str(dest), *budget, "--batch-size", str(bs),
                    "--seed", str(seed), "--overwrite",
                    "--description", f"reference-detector calibration sample ({CHANNELS[species].decay}), "
                                     f"sPlot of {CHANNELS[species].mass_column}"
                                     + (f"; weights sWeight * clip((P / {p_weight[0]:g} MeV/c)^{p_weight[1]:g}, 1, "
                                        f"{P_WEIGHT_CAP:g}) (--p-weight)" if p_weight else "")
                                     + ("; trained WITHOUT sWeights (see UNWEIGHTED in examples/train_pid_chain.py)"
                                        if f"{species}:{role}" in UNWEIGHTED else ""), *net]
    if role == "muon":
        cmd += list(MUON_OPTIONS)
    elif sub == "pid" and role == "rich" and species in RICH_CHANNEL_SAMPLES:  # validations in steps (a budget of work)
        cmd += ["--validate-every-steps", "1500", "--patience", "20"]
    elif sub == "pid":
        cmd += ["--validate-every", "30", "--patience", str(patience)]
        cmd += list(gan_options)  # --valid-repeats, --reselect
    if weighted and f"{species}:{role}" not in UNWEIGHTED:
        cmd += ["--weight", "wP" if p_weight else "sWeight"]
    if sel:
        cmd += ["--selection", sel]
    t0 = time.time()
    run(cmd)
    return f"{dest}: {time.time() - t0:.0f} s"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "models")
    ap.add_argument("--species", default="mu,e,pi,K,p")
    ap.add_argument("--roles", default="flags,muon,rich,global",
                    help="steps to train (default: all but the optional tie classifier, which a RICH GAN "
                         "conditioned on the threshold codes does not need)")
    budget = ap.add_mutually_exclusive_group()
    budget.add_argument("--max-time", type=float, default=None, help="minutes per model (wall clock)")
    budget.add_argument("--epochs", type=str, default=None,
                        help="epochs per model: N, or role=N,role=N (an amount of work, unlike --max-time not "
                             "shortened by other jobs on the machine); default: flags=60,muon=60,rich=400,global=150")
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--width", type=int, default=None,
                    help="width of the GAN steps' generator and critic (default 64; wider is slower to generate)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--events", type=int, default=None, help="calibration candidates per species (default: EVENTS)")
    ap.add_argument("--large-events", type=int, default=MUON_EVENTS, metavar="N",
                    help="candidates of the flags' and muon steps' own samples (LARGE_SAMPLE_ROLES; default "
                         f"{MUON_EVENTS:,}: a shortened run sets it small)")
    ap.add_argument("--skip-existing", action="store_true", help="do not retrain models that exist in --out")
    ap.add_argument("--unweighted", action="store_true", help="train without sWeights (comparison)")
    ap.add_argument("--p-weight", type=lambda v: tuple(float(x) for x in v.split(",")), default=None,
                    metavar="P0,POWER", help="GAN steps: weights sWeight * clip((P / P0)^POWER, 1, 4), P0 in MeV/c "
                                             "(see P_WEIGHT_CAP)")
    ap.add_argument("--patience", type=int, default=40,
                    help="GAN steps: stop after this many validations (every 30 s) without a better score (40)")
    ap.add_argument("--valid-repeats", type=int, default=None, metavar="N",
                    help="GAN steps: classifier repeats of each validation score (default: the CLI's, 2; more = "
                         "a less noisy choice of the kept checkpoint, slower validations)")
    ap.add_argument("--reselect", type=int, default=None, metavar="N",
                    help="GAN steps: keep the N best validations and choose among them at the end by fresh scores "
                         "(default: the CLI's, 1 = the best single validation)")
    ap.add_argument("--closure", type=int, default=0, metavar="N", help="only the closure test with N pure rows")
    ap.add_argument("--closure-seed", type=int, default=10_000, metavar="S",
                    help="with --closure: held-out seeds S + i (default 10000, the cards' sample; the slow "
                         "test_closure_bar uses 57000)")
    ap.add_argument("--write-cards", action="store_true", help="with --closure: add the scores to the models' cards")
    a = ap.parse_args(argv)
    if a.closure and a.roles == "probnn":
        return probnn_closure_main(a)
    if a.closure:
        return closure_main(a)
    a.work.mkdir(parents=True, exist_ok=True)
    a.out.mkdir(parents=True, exist_ok=True)
    species = a.species.split(",")
    data = {s: prepare(s, a.work, a.seed + i, a.events) for i, s in enumerate(species)}
    roles = a.roles.split(",")
    # the muon step's and the flags' large samples (one per species; a.work / "muon")
    large = {(s, r): prepare(s, a.work / "muon", seeds[s], a.large_events)
             for r, seeds in LARGE_SAMPLE_ROLES.items() if r in roles for s in species if s in seeds}
    for s in species:  # the flags of protons: with a low-momentum sample too
        if (s, "flags") in large and s in LOW_P_FLAGS_SAMPLES:
            large[(s, "flags")] = with_low_p(s, large[(s, "flags")], a.work, a.large_events)
    for s in species:  # the RICH GAN of protons: with its other channels' samples too
        if "rich" in roles and s in RICH_CHANNEL_SAMPLES:
            large[(s, "rich")] = with_channels(s, data[s], a.work, a.events or EVENTS[s])
    gan_options = tuple(x for opt in ("valid_repeats", "reselect") if getattr(a, opt)
                        for x in (f"--{opt.replace('_', '-')}", str(getattr(a, opt))))
    jobs = [(s, r) for r in roles for s in species if not (a.skip_existing and (a.out / f"pid-{s}-{r}").exists())]
    with ThreadPoolExecutor(a.parallel) as ex:
        for msg in ex.map(lambda j: train(j[0], j[1], large.get(j, data[j[0]]),
                                          a.out, budget_args(a, j[1]), not a.unweighted, a.seed,
                                          a.width, a.p_weight, a.patience, gan_options), jobs):
            print(msg, flush=True)
    return 0


DEFAULT_EPOCHS = {"flags": 60, "muon": 60, "rich": 400, "tie": 60, "global": 150, "probnn": 150}


def budget_args(a, role: str) -> list[str]:
    """``--max-time M`` or ``--epochs N`` for one model (see ``--epochs``)."""
    if a.max_time is not None:
        return ["--max-time", str(a.max_time)]
    epochs = dict(DEFAULT_EPOCHS)
    if a.epochs:
        if "=" in a.epochs:
            epochs.update({k: int(v) for k, v in (kv.split("=") for kv in a.epochs.split(","))})
        else:
            epochs = {k: int(a.epochs) for k in epochs}
    return ["--epochs", str(epochs[role])]


def argv_ok() -> bool:
    return bool(sys.argv) and sys.argv[0].endswith("train_pid_chain.py")


def closure_main(a) -> int:
    import json

    from mambah.physics import SPECIES_PDG
    from mambah.pid.chain import build_chain
    from mambah.reference.calibration import calib_sample
    from mambah.validation.closure import chain_closure

    if a.write_cards and a.closure_seed != 10_000:
        raise SystemExit("--write-cards records the cards' held-out sample only (--closure-seed 10000)")
    results = {}
    for s in a.species.split(","):
        chain = build_chain(s, None, a.out)
        truth = calib_sample(s, a.closure, seed=a.closure_seed + list(SPECIES_PDG).index(s), pure=True)
        r = chain_closure(chain, truth, seed=a.seed)
        results[s] = r
        effs = ", ".join(f"{k}: {v['max_abs_diff']:.3f} ({v['max_abs_diff_precise']:.3f}, pull {v['max_pull']:.1f})"
                         for k, v in r["efficiency"].items())
        print(f"{s:3s} BDT-KS {r['bdt_ks']:.4f} ± {r['bdt_ks_std']:.4f}  AUC {r['auc']:.4f}  max |eff diff| "
              f"(bins with error <= 1%, max pull) {effs}",
              flush=True)
    a.work.mkdir(parents=True, exist_ok=True)
    name = a.work / f"closure_{a.out.name}{'' if a.closure_seed == 10_000 else f'_{a.closure_seed}'}.json"
    name.write_text(json.dumps(results, indent=1))
    if a.write_cards:
        cmd = "python examples/train_pid_chain.py " + " ".join(shlex.quote(x) for x in (sys.argv[1:] if argv_ok() else []))
        for s, r in results.items():
            summary = {"bdt_ks": r["bdt_ks"], "bdt_ks_std": r["bdt_ks_std"], "auc": r["auc"], "n": r["n"],
                       "max_abs_eff_diff": {k: v["max_abs_diff"] for k, v in r["efficiency"].items()},
                       "max_abs_eff_diff_precise": {k: v["max_abs_diff_precise"] for k, v in r["efficiency"].items()},
                       "max_eff_pull": {k: v["max_pull"] for k, v in r["efficiency"].items()},
                       "method": "whole chain vs the reference detector's pure signal (held-out seed 10000+i, i = position in e,mu,pi,K,p), "
                                 "mambah.validation.closure.chain_closure: BDT-KS over P, ETA, nTracks, charge and the 11 PID "
                                 "outputs (NaN -> -1000); cut efficiencies in p bins", "command": cmd}
            for role in STEPS:
                cf = a.out / f"pid-{s}-{role}" / "card.json"
                if not cf.exists():
                    continue
                card = json.loads(cf.read_text())
                card.setdefault("metrics", {})["chain_closure"] = summary
                cf.write_text(json.dumps(card, indent=1))
    print(json.dumps({s: {"bdt_ks": r["bdt_ks"], **{k: v["max_abs_diff"] for k, v in r["efficiency"].items()}}
                      for s, r in results.items()}))
    return 0


def probnn_closure_main(a) -> int:
    """``--closure N --roles probnn``: the ProbNN closure (:func:`mambah.validation.closure.probnn_closure`)
    of each chain of ``--species`` in ``--out`` on N held-out pure-signal rows (seeds as ``--closure``);
    ``closure_probnn_<out>.json`` in ``--work``; with ``--write-cards`` into ``metrics.probnn_closure`` of the
    probnn step's card."""
    import json

    from mambah.physics import SPECIES_PDG
    from mambah.pid.chain import build_chain
    from mambah.reference.calibration import calib_sample
    from mambah.validation.closure import probnn_closure

    results = {}
    for s in a.species.split(","):
        chain = build_chain(s, None, a.out)
        truth = calib_sample(s, a.closure, seed=a.closure_seed + list(SPECIES_PDG).index(s), pure=True)
        r = probnn_closure(chain, truth, seed=a.seed)
        alone = probnn_closure(chain, truth, seed=a.seed, given_truth=True)
        r["step_alone"] = {k: alone[k] for k in ("bdt_ks", "bdt_ks_std")}
        r["step_alone"]["max_abs_eff_diff"] = {k: v["max_abs_diff"] for k, v in alone["efficiency"].items()}
        r["step_alone"]["efficiency"] = alone["efficiency"]
        print(f"{s:3s} the probnn step alone on the truth's DLLs: BDT-KS {alone['bdt_ks']:.4f}; max |eff diff| "
              + ", ".join(f"{k}: {v['max_abs_diff']:.3f}" for k, v in alone["efficiency"].items()), flush=True)
        results[s] = r
        effs = ", ".join(f"{k}: {v['max_abs_diff']:.3f} ({v['max_abs_diff_precise']:.3f})" for k, v in r["efficiency"].items())
        print(f"{s:3s} ProbNN BDT-KS {r['bdt_ks']:.4f} ± {r['bdt_ks_std']:.4f} (whole chain {r['bdt_ks_all']:.4f}); "
              f"max |eff diff| (precise bins) {effs}", flush=True)
        if a.write_cards:
            cf = a.out / f"pid-{s}-probnn" / "card.json"
            card = json.loads(cf.read_text())
            cmd = "python examples/train_pid_chain.py " + " ".join(shlex.quote(x) for x in (sys.argv[1:] if argv_ok() else []))
            card.setdefault("metrics", {})["probnn_closure"] = {
                **{k: r[k] for k in ("n", "bdt_ks", "bdt_ks_std", "auc", "bdt_ks_all", "bdt_ks_all_std")},
                "step_alone_on_truth_dlls": {k: v for k, v in r["step_alone"].items() if k != "efficiency"},
                "max_abs_eff_diff": {k: v["max_abs_diff"] for k, v in r["efficiency"].items()},
                "max_abs_eff_diff_precise": {k: v["max_abs_diff_precise"] for k, v in r["efficiency"].items()},
                "method": f"whole chain vs the reference detector's pure signal (held-out seed {a.closure_seed}+i, i = position "
                          "in e,mu,pi,K,p), mambah.validation.closure.probnn_closure: BDT-KS over P, ETA, nTracks, charge "
                          "and the six ProbNN (bdt_ks_all: and the 11 PID outputs); cut efficiencies in p bins",
                "command": cmd}
            cf.write_text(json.dumps(card, indent=1))
    a.work.mkdir(parents=True, exist_ok=True)
    name = a.work / f"closure_probnn_{a.out.name}{'' if a.closure_seed == 10_000 else f'_{a.closure_seed}'}.json"
    name.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
