"""Calibrate the tails of the shipped RICH steps (pi, K, p) and the isMuon rates of the flags
classifiers (pi, K, p, mu) on large sWeighted calibration samples.

    python examples/fit_pid_marginals.py --work W                      # 5 x 6M candidates per species
    python examples/fit_pid_marginals.py --work W --species pi --chunks 1 --out /tmp/models   # a quick look
    python examples/fit_pid_marginals.py --work W --species mu --steps flags

For each species it makes ``--chunks`` calibration samples of the reference detector of 6M
candidates each (``examples/train_pid_chain.prepare``: ``mambah detector calib-sample``, then
``mambah sweights`` on the D0/Lambda_c mass, then the chain's training table; seeds
``SEEDS[species] + i``; a sample already in W is reused), and runs::

    mambah train marginals --model OUT/pid-<s>-rich --data W/<s><seed>/<s>_train.parquet ... --seed SEED

which maps each RICH DLL of the step, in (P, ETA) bins, onto the sWeighted distribution of these
samples (:mod:`mambah.nn.marginals`). Why: the RICH GANs reproduce their data's bulk (BDT-KS 0.03)
but not the tails a mis-ID rate is: for pions ``PIDK > 5`` came out at 1.2% against 2.1% in the
reference detector at 5-10 GeV/c, 0.42% against 0.23% at 20-30 GeV/c (``examples/misid_table.py
--source calib``). The tails of a 1M-candidate sample are too noisy for this (an sWeighted 0.3%
tail in a p bin is known to +-0.15% there: the background under the peak has tails of its own), so
the samples are large; the GANs themselves are not retrained.

With ``--steps flags`` (default: both steps where the species has them; mu and e have no RICH
map), the same samples calibrate the flags classifier's ``isMuon``::

    mambah train marginals --model OUT/pid-<s>-flags --targets isMuon --split none ...

a logit shift of P(isMuon) per (P, ETA) bin onto the samples' sWeighted isMuon rate
(:class:`mambah.nn.marginals.FlagCalibration`). The pi -> mu rate is 0.5-2% and the mu -> pi rate
1-30%; a classifier smooths their p dependence (the pion classifier trained on 6M candidates gave
1.58% against 2.14% at 2-5 GeV/c in its own held-out data).

With ``--steps probnn`` (kaons; ``--chunks 2`` for the shipped map), the residual ProbNN step's outputs::

    mambah train marginals --model OUT/pid-K-probnn --logit-offset probnn ...

each ``dProbNNx`` mapped as ``logit(ProbNNx) = dProbNNx + logit(SurProbNNx)``, so that every cut on
ProbNNx gets the samples' efficiency in each bin: the kaon step alone put ``ProbNNk > 0.5`` 3% too high
at 2-10 GeV/c given the reference detector's own DLLs (0.2% after the map; held-out closure in the card).
The map costs the step about 0.27 us per kaon (58 bins x 6 outputs, mambah.nn.knots.KnotTables), so the other
species, whose ProbNN cuts close within 1.9%, are left without.

A model with ensemble members gets one map per member, on Poisson(1) bootstrap replicas of the
samples, so that the members' spread in the tails is the samples' statistical uncertainty.

Takes about 3 min per 6M-candidate sample and 1-3 min per fit on 2 cores; the samples need about
1 GB of disk each.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_pid_chain  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
#: seeds of each species' calibration samples (chunk i: SEEDS[s][i]; a sixth chunk would need a sixth seed)
SEEDS = {"pi": (41, 51, 52, 53, 54), "K": (42, 61, 62, 63, 64), "p": (71, 72, 73, 74, 75),
         "e": (81, 82, 83, 84, 85), "mu": (91, 92, 93, 94, 95)}
CHUNK_EVENTS = 6_000_000
#: seeds of the low-momentum samples a species' maps also use (``--low-p-chunks``; the proton channel's
#: Lambda0 without the mother pT requirement, 2-10 GeV/c probes: mambah.reference.calibration.LOW_P_CHANNELS)
LOW_P_SEEDS = {"p": (76, 77)}
#: the steps whose maps use them (the flags: since the proton classifier is retrained with a low-momentum sample,
#: examples/train_pid_chain.LOW_P_FLAGS_SAMPLES; the 200k-trained one gave isMuon ~1e-4 below 5 GeV/c, where the
#: reference detector has 1.6%, and a logit shift capped at 5 or 8 reached only 0.03-0.2%)
LOW_P_STEPS = ("rich", "flags")
#: seeds of the high-pseudorapidity samples a species' RICH map also uses (``--high-eta-chunks``; the proton
#: channel's Lambda0 without the mother pT requirement, 5-40 GeV/c probes at 3.5 < eta < 5:
#: mambah.reference.calibration.HIGH_ETA_CHANNELS)
HIGH_ETA_SEEDS = {"p": (79, 80)}
#: the steps whose maps use the high-eta samples
HIGH_ETA_STEPS = ("rich",)
#: the samples of the channel variants beside the standard ones, in the order of the maps' data: variant ->
#: (seeds per species, the steps that use them, what the card's description calls them)
VARIANT_SAMPLES = {
    "low-p": (LOW_P_SEEDS, LOW_P_STEPS, "low-momentum channel (2-10 GeV/c probes, no mother pT requirement)"),
    "high-eta": (HIGH_ETA_SEEDS, HIGH_ETA_STEPS,
                 "high-pseudorapidity channel (5-40 GeV/c probes at 3.5 < eta < 5, no mother pT requirement)"),
}
#: the species whose step of each kind is calibrated
STEP_SPECIES = {"rich": ("pi", "K", "p"), "flags": ("pi", "K", "p", "mu"), "probnn": ("K",)}
#: ``mambah train marginals`` options per step: the flags' isMuon only (hasRich and hasCalo follow the
#: acceptance and the threshold codes the classifier sees; their card closures are within 0.01%), not
#: split by the RICH codes (isMuon does not depend on them; the split would only thin the bins)
STEP_OPTIONS = {"rich": (), "flags": ("--targets", "isMuon", "--split", "none"),
                # the residual ProbNN step: each dProbNNx mapped as logit(ProbNNx) = dProbNNx + logit(SurProbNNx)
                "probnn": ("--logit-offset", "probnn")}
#: the P edges a map gets beside its equal-population bins: just above each Cherenkov threshold of
#: the reference detector's radiators (pi, K, p in RICH1 and RICH2), at 1.05-1.35 times the
#: threshold, where the photon yield (1 - (p_th / p)^2) and with it the DLLs change fast: a kaon's
#: PIDK > 5 rate rises from 36% to 63% across 2.6-3.4 GeV/c (the pion threshold in RICH1), and one
#: map for that bin put 3-6 GeV/c kaons at 83.5% against 84.4% in the truth
THRESHOLD_FACTORS = (1.05, 1.1, 1.2, 1.35)


def threshold_p_edges() -> str:
    """``--extra-p-edges`` of the RICH maps (MeV/c): :data:`THRESHOLD_FACTORS` times each threshold."""
    from mambah.physics.species import species_mass
    from mambah.reference.pid import RICH1, RICH2

    return ",".join(str(round(rad.threshold(species_mass(s)) * f)) for rad in (RICH1, RICH2)
                    for s in ("pi", "K", "p") for f in THRESHOLD_FACTORS)


#: further options of the RICH step per species (with ``--joint``): the kaon and proton RICH steps map
#: RichDLLpK in 5 classes of RichDLLk (conditional maps, mambah.nn.marginals) so that cuts on both get the data's joint
#: distribution; the kaon's maps the sum RichDLLk + RichDLLpK = PIDp (its PIDp > 5 cut: pulls against
#: the truth +1.13 / robust width 2.59 with RichDLLpK mapped, +0.26 / 1.37 with the sum), the proton's
#: RichDLLpK itself (its PIDp - PIDK < 0 veto against kaons). With ``--joint`` only: with the threshold
#: edges, the kaon's maps gave on 600k pure kaons (10 p x 3 eta bins) pulls +0.31 / robust width 1.39
#: over PIDK > 0, PIDK > 5 and PIDp > 5 against +0.56 / 2.01 with the shipped maps, but its
#: PIDp - PIDK > 0 (3% of kaons) 2.27 against 1.24 (the difference is right only at the 5 classes'
#: resolution), and its marginals.npz is 12 MB against 3.4 MB: not shipped yet (2026-12-07). The proton's
#: is shipped (pid-p-rich, 2026-12-07): p -> K with PIDK > 5 and PIDp - PIDK < 0, chi2/ndf against the
#: reference 80.5 -> 27.8 on calibration kinematics, 404 -> 205 on b-hadron decays (examples/misid_table.py)
#: The proton map also fits on the two low-momentum samples (LOW_P_SEEDS) and has 32 P bins (7 of them below
#: 10 GeV/c) instead of 24 (2026-12-07): on b-decay protons (examples/misid_table.py --source decays --seed 27)
#: p -> K chi2/ndf 5375/10 -> 274/10 (2-5 GeV/c: 41.8% -> 67.8% against the reference's 72.6%; 5-10: 87.3 ->
#: 93.1 against 93.3%), the PIDp - PIDK < 0 veto 252/9 -> 69/9; on calibration kinematics 16.8 -> 19.5 and
#: 58.3 -> 44.7 (with 24 bins: 27.5, the higher momenta's bins too wide)
#: Since the proton RICH GAN trains on three Lambda0 channels (2026-12-08, examples/train_pid_chain.py
#: RICH_CHANNEL_SAMPLES), its map also maps RichDLLmu in 5 classes of RichDLLe: that GAN's joint of the two
#: on 100k held-out standard protons (BDT-KS over P, ETA, nTracks and the two) 0.153 -> 0.118 (0.061 with
#: the GAN of the standard sample alone); the chain's closure 0.080 -> 0.076 (0.077 with the retrained calorimeter step; examples/train_pid_chain.py
#: --closure 100000)
SPECIES_OPTIONS = {"K": ("--given", "RichDLLpK+RichDLLk"),
                   "p": ("--given", "RichDLLpK=RichDLLk", "--given", "RichDLLmu=RichDLLe")}
#: P bins of a species' ``--joint`` RICH map when ``--p-bins`` is not given (others: 24)
JOINT_P_BINS = {"p": "32"}
#: ETA bins of a species' ``--joint`` RICH map when ``--eta-bins`` is not given (others: 2). The proton map
#: also fits on the high-eta samples (HIGH_ETA_SEEDS) and has 3 ETA bins (2026-12-07): the standard Lambda0
#: sample has no proton below 20 GeV/c at 4 < eta < 5, where the chain gave PIDK > 5 to 64% of the
#: 10-15 GeV/c protons of Lambda_b0 -> p K- against the reference detector's 94%
JOINT_ETA_BINS = {"p": "3"}
#: the species whose ``--joint`` maps also get the threshold edges (measured on kaons only)
THRESHOLD_EDGE_SPECIES = ("K",)


def joint_options(species: str) -> tuple[str, ...]:
    """The ``--joint`` options of a species' RICH map."""
    edges = ("--extra-p-edges", threshold_p_edges()) if species in THRESHOLD_EDGE_SPECIES else ()
    return (*edges, *SPECIES_OPTIONS.get(species, ()))


def sample(species: str, work: Path, seed: int, events: int = CHUNK_EVENTS, low_p: bool = False,
           variant: str | None = None) -> Path:
    """One sWeighted training table of ``events`` candidates (made once; its raw and sWeight files removed);
    ``low_p``: of the low-momentum channel (:data:`mambah.reference.calibration.LOW_P_CHANNELS`); ``variant``
    ``"high-eta"``: of the high-pseudorapidity one."""
    variant = "low-p" if low_p else variant
    tag = {None: "", "low-p": "lowp", "high-eta": "higheta"}[variant]
    d = work / (f"{species}{seed}{tag}" if events == CHUNK_EVENTS else f"{species}{seed}{tag}_{events}")
    t = train_pid_chain.prepare(species, d, seed, events=events, variant=variant)
    for f in (d / f"{species}_raw.parquet", d / f"{species}_sw.parquet"):
        f.unlink(missing_ok=True)
    return t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="where the calibration samples go")
    ap.add_argument("--out", type=Path, default=ROOT / "models", help="the models directory (default: the shipped one)")
    ap.add_argument("--species", default="pi,K,p,mu")
    ap.add_argument("--chunks", type=int, default=5, choices=range(1, 6), metavar="N",
                    help="6M-candidate samples per species, 1-5 (default 5)")
    ap.add_argument("--chunk-events", type=int, default=CHUNK_EVENTS,
                    help=f"candidates per calibration sample (default {CHUNK_EVENTS:,}; fewer for a quick test)")
    ap.add_argument("--steps", default="rich,flags",
                    help="which steps to calibrate: rich (pi, K, p), flags (isMuon; pi, K, p, mu), probnn (K: the "
                         "ProbNN outputs' logits); default rich,flags")
    ap.add_argument("--low-p-chunks", type=int, default=2, choices=range(0, 3), metavar="N",
                    help="low-momentum samples (6M candidates each) added where the species has them (LOW_P_SEEDS: "
                         "protons), 0-2 (default 2)")
    ap.add_argument("--p-bins", default=None, help="P bins of the maps (default 24; the --joint proton map: JOINT_P_BINS)")
    ap.add_argument("--eta-bins", default=None, help="ETA bins of the maps (default 2; the --joint proton map: JOINT_ETA_BINS)")
    ap.add_argument("--high-eta-chunks", type=int, default=2, choices=range(0, 3), metavar="N",
                    help="high-pseudorapidity samples (6M candidates each) added to the RICH map where the species has "
                         "them (HIGH_ETA_SEEDS: protons; default 2)")
    ap.add_argument("--joint", action="store_true",
                    help="RICH maps with the extra P edges above the Cherenkov thresholds (THRESHOLD_FACTORS) and the "
                         "conditional maps of SPECIES_OPTIONS (not yet the shipped models': see SPECIES_OPTIONS)")
    a = ap.parse_args(argv)
    steps = a.steps.split(",")
    for s in a.species.split(","):
        todo = [st for st in steps if s in STEP_SPECIES[st]]
        if not todo:
            continue
        seeds = list(SEEDS[s][:a.chunks])
        tables = [sample(s, a.work, sd, a.chunk_events) for sd in seeds]
        chunks = {"low-p": a.low_p_chunks, "high-eta": a.high_eta_chunks}
        extra = {}  # variant -> (seeds, tables)
        for v, (by_species, v_steps, _) in VARIANT_SAMPLES.items():
            v_seeds = list(by_species.get(s, ())[:chunks[v]])
            if v_seeds and any(st in v_steps for st in todo):
                extra[v] = (v_seeds, [sample(s, a.work, sd, a.chunk_events, variant=v) for sd in v_seeds])
        for st in todo:
            used = {v: e for v, e in extra.items() if st in VARIANT_SAMPLES[v][1]}
            p_bins = a.p_bins or (JOINT_P_BINS.get(s, "24") if st == "rich" and a.joint else "24")
            eta_bins = a.eta_bins or (JOINT_ETA_BINS.get(s, "2") if st == "rich" and a.joint else "2")
            cmd = [sys.executable, "-m", "mambah", "train", "marginals", "--model", str(a.out / f"pid-{s}-{st}"),
                   "--p-bins", p_bins, "--eta-bins", eta_bins, "--seed", str(seeds[0]), *STEP_OPTIONS[st],
                   *(joint_options(s) if st == "rich" and a.joint else ()),
                   "--description", f"{a.chunks} reference-detector calibration samples of {a.chunk_events} "
                                    f"candidates ({train_pid_chain.CHANNELS[s].decay}), seeds {seeds}"
                                    + "".join(f", and {len(t)} of its {VARIANT_SAMPLES[v][2]}, seeds {sd}"
                                              for v, (sd, t) in used.items())
                                    + f", sPlot of {train_pid_chain.CHANNELS[s].mass_column} per sample; made by "
                                      f"examples/fit_pid_marginals.py"]
            for t in tables + [t for _, ts in used.values() for t in ts]:
                cmd += ["--data", str(t)]
            print("$", " ".join(shlex.quote(c) for c in cmd), flush=True)
            t0 = time.time()
            subprocess.run(cmd, check=True)
            print(f"{s} {st}: {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
