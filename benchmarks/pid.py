"""Benchmark of the PID GAN: inference rate, training rate, time to the final score.

* inference: ``PidModel.generate_array`` on 10^6 tracks whose conditions are the real calibration
  rows repeated (preprocessing, noise, network and inverse transform included): the compiled path
  (:func:`mambah.nn.inference.generate`) and, as a baseline in the same run, the former numpy path
  (:func:`mambah.nn.inference.generate_reference`: numpy transforms and noise around the network),
  timed alternately; best of ``--repeats``; wall time and CPU time (on a machine shared with other
  jobs the CPU time, divided by the cores used, is the fairer measure: we report both);
* training: ``--train-steps`` steps of the default Cramér GAN on the real sample (after one warm-up
  step that traces the graph), samples per second;
* time to score: from the model card's validation history, the training seconds at which the
  validation BDT-KS first reached its final (best) value, and first went below 0.05;
* chain: the whole chained PID stage of the shipped models (``--chain-models DIR``: of DIR's); where the
  chains have ``pid-<s>-probnn`` steps, with them (``PID(probnn=True)``, ``mambah simulate --probnn``,
  issue 24) and, timed alternately as the baselines, without them (``chain_no_probnn_tracks_per_s``), with
  the knot search of the transforms not XLA-compiled (``chain_no_xla_tracks_per_s``,
  :data:`mambah.nn.inference.XLA_MIN_ROWS`) and with 2 species' chains at once instead of 3
  (``chain_two_threads_tracks_per_s``, the stage's default before 2026-12-07);
* chain-variations: the PID stage on the kaon chain, nominal against ``variations=True`` with K
  members on its RICH and global steps (``mambah simulate --pid-variations``; stand-ins with
  perturbed weights unless the shipped chain has K members): tracks/s and the time ratio
  (:func:`bench_chain_variations`; ``--chain-tracks``, ``--variations K``);
* maps: the chains' quantile maps on the rows a chain gives them, all rows at once against one
  ``numpy.interp`` per bin and target (:func:`bench_maps`; ``maps_ns_per_row``,
  ``maps_reference_ns_per_row``);
* chain-steps: where each species' chain spends its time, per step model (:func:`bench_chain_steps`;
  ``chain_steps``);
* variations: ``PidModel.generate_variations_array`` with K ensemble members (``--variations K``,
  default 10) on the same tracks, against the nominal ``generate_array`` alone, timed alternately,
  best of ``--repeats``; the ratio of its time to K + 1 times the nominal's (1 = no saving from
  sharing the condition transform, the noise and the range check; below 1 = saving). A model without
  (enough) members gets K stand-ins: copies of the nominal generator with perturbed weights (the cost
  of a member does not depend on its weight values).

Prints a table, then ONE final JSON line with ``inference_tracks_per_s``, ``train_samples_per_s``,
``seconds_to_score``, ``chain_tracks_per_s`` (the whole chained PID stage, :func:`bench_chain`), and
``inference_reference_tracks_per_s`` (the numpy path), ``chain_numpy_flags_tracks_per_s`` (the chain with
numpy flags classifiers, the baseline of ``chain_tracks_per_s``), ``chain_no_marginals_tracks_per_s`` (the chain
without its RICH steps' marginal calibrations, timed alternately), ``variations_tracks_per_s`` (tracks/s with
the nominal and K members), ``variations_nominal_tracks_per_s`` and ``variations_cost_ratio`` (time with
variations / (K + 1) x the nominal's); parts left out with ``--only`` are ``null``.

Usage::

    python benchmarks/pid.py [--model models/pid-p-dllp-lhcb-run3] [--data ../shared/data/lc_protons_run3.parquet]
                             [--only inference,training,score,chain,variations,chain-variations,maps,chain-steps] [--variations 10]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "pid-p-dllp-lhcb-run3"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "lc_protons_run3.parquet"


def bench_inference(model_dir, data, n, repeats):
    """The compiled path (``generate_array``) and the numpy reference path, alternately, best of ``repeats``."""
    import warnings

    from mambah.nn.inference import generate_reference
    from mambah.nn.pidmodel import OutOfRangeWarning, PidModel

    m = PidModel.load(model_dir)
    df = pd.read_parquet(data, columns=m.conditions)
    c = np.tile(df.to_numpy(dtype=float), (n // len(df) + 1, 1))[:n]
    paths = {"fast": lambda seed: m.generate_array(c, seed), "reference": lambda seed: generate_reference(m, c, seed)}
    best = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)  # a few calibration rows lie outside the training range
        m.generate_array(c[:10000], seed=0)  # trace the compiled functions
        generate_reference(m, c[:10000], 0)
        for r in range(repeats):
            for name, run in paths.items():
                t, p = time.perf_counter(), time.process_time()
                y = run(r)
                dt, dp = time.perf_counter() - t, time.process_time() - p
                if name not in best or dt < best[name][0]:
                    best[name] = (dt, dp)
                assert y.shape == (n, len(m.targets))
    return {name: {"n": n, "wall_s": w, "cpu_s": p, "tracks_per_s": n / w, "tracks_per_cpu_s": n / p}
            for name, (w, p) in best.items()}


def with_members(model, k: int):
    """``model`` with K ensemble members: its own first K if it has that many, else K copies of the
    nominal generator with perturbed weights (same architecture, so the same cost)."""
    import keras

    from mambah.nn.pidmodel import PidModel

    if model.n_members >= k:
        members, real = model.members[:k], True
    else:
        rng = np.random.default_rng(0)
        members, real = [], False
        for _ in range(k):
            g = keras.models.clone_model(model.generator)
            g.set_weights([w * (1 + 0.01 * rng.standard_normal(w.shape)).astype(w.dtype)
                           for w in model.generator.get_weights()])
            members.append(g)
    m = PidModel(model.generator, model.cond_pre, model.targ_pre, model.card, members=members)
    return m, real


def bench_variations(model_dir, data, n, repeats, k):
    """The nominal alone and the nominal with ``k`` variations, alternately, best of ``repeats``."""
    import warnings

    from mambah.nn.pidmodel import OutOfRangeWarning, PidModel

    base = PidModel.load(model_dir)
    m, real = with_members(base, k)
    df = pd.read_parquet(data, columns=m.conditions)
    c = np.tile(df.to_numpy(dtype=float), (n // len(df) + 1, 1))[:n]
    paths = {"nominal": lambda seed: m.generate_array(c, seed),
             "variations": lambda seed: m.generate_variations_array(c, seed)}
    best = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)
        for run in paths.values():  # trace the compiled functions
            run(0)
        for r in range(repeats):
            for name, run in paths.items():
                t, p = time.perf_counter(), time.process_time()
                y = run(r + 1)
                dt, dp = time.perf_counter() - t, time.process_time() - p
                if name not in best or dt < best[name][0]:
                    best[name] = (dt, dp)
                assert y.shape[-2:] == (n, len(m.targets))
    (tn, pn), (tv, pv) = best["nominal"], best["variations"]
    return {"k": k, "n": n, "real_members": real, "nominal_tracks_per_s": n / tn, "nominal_tracks_per_cpu_s": n / pn,
            "tracks_per_s": n / tv, "tracks_per_cpu_s": n / pv, "cost_ratio": tv / ((k + 1) * tn),
            "cpu_cost_ratio": pv / ((k + 1) * pn)}


def bench_training(data, steps):
    import tensorflow as tf

    from mambah.training.gan import CramerGANTrainer, GANConfig

    df = pd.read_parquet(data)
    cfg = GANConfig()
    t = CramerGANTrainer(cfg)
    t.cond_pre_ = __import__("mambah.nn.preprocessing", fromlist=["x"]).QuantileGaussianizer().fit(
        df[["P", "ETA", "nLongTracks"]].to_numpy())
    t.targ_pre_ = __import__("mambah.nn.preprocessing", fromlist=["x"]).QuantileGaussianizer().fit(df[["DLLp"]].to_numpy())
    c = t.cond_pre_.transform(df[["P", "ETA", "nLongTracks"]].to_numpy())
    y = t.targ_pre_.transform(df[["DLLp"]].to_numpy(), mode="random")
    w = (df["sWeight"].to_numpy() / df["sWeight"].mean()).astype(np.float32)
    gan = t._build(3, 1)
    step = tf.function(gan.train_step, reduce_retracing=True)
    bs = cfg.batch_size
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(df), (steps + 1, bs))
    step((c[idx[0]], y[idx[0]], w[idx[0]]))
    t0, p0 = time.perf_counter(), time.process_time()
    for i in range(1, steps + 1):
        logs = step((c[idx[i]], y[idx[i]], w[idx[i]]))
    float(logs["g_loss"])
    dt, dp = time.perf_counter() - t0, time.process_time() - p0
    return {"steps": steps, "batch_size": bs, "wall_s": dt, "cpu_s": dp, "samples_per_s": steps * bs / dt,
            "samples_per_cpu_s": steps * bs / dp}


def time_to_score(model_dir):
    card = json.loads((Path(model_dir) / "card.json").read_text())
    hist = card.get("training", {}).get("history", [])
    if not hist:
        return {"seconds_to_score": float("nan")}
    scores = np.array([h["bdt_ks"] for h in hist])
    secs = np.array([h["seconds"] for h in hist])
    best = scores.min()
    below = np.nonzero(scores < 0.05)[0]
    return {"best_bdt_ks": float(best), "seconds_to_score": float(secs[np.argmin(scores)]),
            "seconds_to_0.05": float(secs[below[0]]) if len(below) else float("nan"),
            "train_seconds_total": card["training"]["seconds"]}


def bench_chain(n=1_000_000, repeats=2, models_dir=None, baseline=True):
    """The whole chained PID stage (:class:`mambah.pid.stage.PID`) on ``n`` tracks of mixed species.

    With the chains' ProbNN steps where the models directory has them (``PID(probnn=True)``); the stage
    without them is timed alternately in the same run (``no_probnn_tracks_per_s``).

    With ``baseline``, the same stage with the flags classifiers evaluated in numpy
    (``FlagModel.sample(compiled=False)``, the path before 2026-12-03) is timed alternately in the
    same run (``numpy_flags_tracks_per_s``).

    A synthetic batch: ``n`` track rows, species e/mu/pi/K/p in equal parts, p log-uniform in
    3-100 GeV/c, eta uniform in 2.2-4.6, n_tracks uniform in 20-300 (inside the training ranges),
    one event per 50 tracks. Times ``PID()(batch)`` (conditions, five chains of three networks,
    combination, columns written), best of ``repeats``, each after a warm-up on 10^4 tracks (and every
    stage once on 2 x 10^5 tracks first: loads the chains, compiles the XLA knot searches of full chunks).
    """
    import dataclasses
    import sys

    from mambah.errors import ConfigurationError
    from mambah.nn import inference
    from mambah.pid.stage import PID

    def batch(n):
        return _track_batch(n, (11, 13, 211, 321, 2212))

    from mambah.nn.flags import FlagModel

    md = None if models_dir is None else str(models_dir)
    stage = PID(models_dir=md)
    stages = {"no_probnn": stage}
    try:
        stage = stages["probnn"] = PID(models_dir=md, probnn=True)
        has_probnn = True
    except ConfigurationError:  # no chain has a ProbNN step
        has_probnn = False
    compiled_sample = FlagModel.sample

    def numpy_sample(self, data, rng, *, compiled=True, **kw):
        return compiled_sample(self, data, rng, compiled=False, **kw)

    stages["two_threads"] = dataclasses.replace(stage, threads=2)  # the stage's default before 2026-12-07
    best = {"compiled": [np.inf, np.inf], "numpy_flags": [np.inf, np.inf], "no_marginals": [np.inf, np.inf],
            "no_probnn": [np.inf, np.inf], "no_xla": [np.inf, np.inf], "two_threads": [np.inf, np.inf]}
    for st in stages.values():
        st(batch(200_000))  # loads the chains, compiles (a full chunk of every species)
    # the RICH steps' marginal calibrations (mambah.nn.marginals): timed with and without them
    corrected = {id(m): (m, m.correction) for c in stage.chains().values() for m in c.models
                 if getattr(m, "correction", None) is not None}
    modes = [h for h in best if baseline or h == "compiled"]
    if not corrected:
        modes = [h for h in modes if h != "no_marginals"]
    if not has_probnn:
        modes = [h for h in modes if h != "no_probnn"]
    xla_rows = inference.XLA_MIN_ROWS
    try:
        for _ in range(repeats):
            for how in modes:  # alternately, so that all see the same machine
                FlagModel.sample = numpy_sample if how == "numpy_flags" else compiled_sample
                for m, corr in corrected.values():
                    m.correction = None if how == "no_marginals" else corr
                inference.XLA_MIN_ROWS = sys.maxsize if how == "no_xla" else xla_rows
                run = stages[how] if how in ("no_probnn", "two_threads") else stage
                run(batch(10_000))  # warm-up (traces the graphs on the first pass)
                b = batch(n)
                t0, c0 = time.perf_counter(), time.process_time()
                run(b)
                best[how][0] = min(best[how][0], time.perf_counter() - t0)
                best[how][1] = min(best[how][1], time.process_time() - c0)
    finally:
        FlagModel.sample = compiled_sample
        inference.XLA_MIN_ROWS = xla_rows
        for m, corr in corrected.values():
            m.correction = corr
    steps = [s.role for c in stage.chains().values() for s in c.steps]
    out = {"tracks_per_s": n / best["compiled"][0], "tracks_per_cpu_s": n / best["compiled"][1], "n": n,
           "probnn": f", {steps.count('probnn')} with ProbNN" if "probnn" in steps else ""}
    if baseline:
        out["numpy_flags_tracks_per_s"] = n / best["numpy_flags"][0]
        out["numpy_flags_tracks_per_cpu_s"] = n / best["numpy_flags"][1]
    out["marginals"] = len(corrected)
    if "no_probnn" in modes:
        out["no_probnn_tracks_per_s"] = n / best["no_probnn"][0]
    if "no_marginals" in modes:
        out["no_marginals_tracks_per_s"] = n / best["no_marginals"][0]
        out["no_marginals_tracks_per_cpu_s"] = n / best["no_marginals"][1]
    for how in ("no_xla", "two_threads"):
        if how in modes:
            out[f"{how}_tracks_per_s"] = n / best[how][0]
            out[f"{how}_tracks_per_cpu_s"] = n / best[how][1]
    return out


def _track_batch(n, pdgs):
    """A synthetic batch of ``n`` track rows, species ``pdgs`` (PDG ids) in equal parts, p
    log-uniform in 3-100 GeV/c, eta uniform in 2.2-4.6, n_tracks uniform in 20-300 (inside the
    training ranges), one event per 50 tracks."""
    from mambah.batch import Batch

    rng = np.random.default_rng(5)
    pdg = np.array(pdgs)[np.arange(n) % len(pdgs)] * rng.choice([-1, 1], n)
    p = np.exp(rng.uniform(np.log(3e3), np.log(1e5), n))
    eta = rng.uniform(2.2, 4.6, n)
    phi = rng.uniform(-np.pi, np.pi, n)
    pt = p / np.cosh(eta)
    ev = np.arange(n) // 50
    ne = int(ev[-1]) + 1
    idx = np.arange(n, dtype=np.int32)
    parts = pd.DataFrame({"batch": 1, "index": idx, "event": ev.astype(np.int32), "mc_particle": idx,
                          "pid": pdg.astype(np.int32), "charge": np.sign(pdg).astype(np.int8),
                          "px": (pt * np.cos(phi)).astype(np.float32), "py": (pt * np.sin(phi)).astype(np.float32),
                          "pz": (pt * np.sinh(eta)).astype(np.float32), "vertex": np.int32(-1)})
    mc = pd.DataFrame({"batch": 1, "index": idx, "event": ev.astype(np.int32), "pid": pdg.astype(np.int32)})
    events = pd.DataFrame({"batch": 1, "event": np.arange(ne, dtype=np.int32),
                           "n_tracks": rng.integers(20, 300, ne).astype(np.int32)})
    return Batch(id=1, seed=3, n_events=ne, tables={"particles": parts, "mc_particles": mc, "events": events})


def bench_chain_variations(n=200_000, repeats=2, k=10, species="K"):
    """The PID stage on ``n`` tracks of one species: nominal (``PID(species=(s,))``) against
    ``PID(species=(s,), variations=True)`` (``mambah simulate --pid-variations``), alternately, best
    of ``repeats``, each after a warm-up on 10^4 tracks.

    The chain's members: the shipped models' when some step of the chain has K members; else K
    stand-ins for the ``rich`` and ``global`` steps (the steps the lead trains members for): copies
    of the step's generator with perturbed weights (tests/ensemble_helpers.py; a member's cost does
    not depend on its weights), in a temporary models directory. ``flags`` and ``muon`` stay
    nominal, so the expected cost is below K + 1 times the nominal's.
    """
    import sys
    import tempfile
    import warnings

    from mambah.errors import OutOfRangeWarning
    from mambah.physics import SPECIES_PDG
    from mambah.pid.chain import chain_members
    from mambah.pid.stage import PID

    real = set(chain_members(species).values()) == {k}
    tmp = tempfile.TemporaryDirectory(prefix="mambah-bench-var-")
    if real:
        models = None
    else:
        sys.path.insert(0, str(ROOT / "tests"))
        from ensemble_helpers import models_with_members

        models = str(models_with_members(Path(tmp.name), {f"pid-{species}-rich": k, f"pid-{species}-global": k},
                                         links=[f"pid-{species}-{r}" for r in ("flags", "muon", "rich", "global")]))
    stages = {"nominal": PID(models_dir=models, species=(species,)),
              "variations": PID(models_dir=models, species=(species,), variations=True)}
    best = {name: [np.inf, np.inf] for name in stages}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)
        for stage in stages.values():
            stage(_track_batch(10_000, (SPECIES_PDG[species],)))  # warm-up: traces the graphs
        for _ in range(repeats):
            for name, stage in stages.items():
                b = _track_batch(n, (SPECIES_PDG[species],))
                t0, c0 = time.perf_counter(), time.process_time()
                stage(b)
                best[name][0] = min(best[name][0], time.perf_counter() - t0)
                best[name][1] = min(best[name][1], time.process_time() - c0)
                if name == "variations":
                    assert len(b["pid_variations"]) == k * n
    tmp.cleanup()
    (tn, cn), (tv, cv) = best["nominal"], best["variations"]
    return {"k": k, "n": n, "species": species, "real_members": real, "nominal_tracks_per_s": n / tn,
            "tracks_per_s": n / tv, "nominal_tracks_per_cpu_s": n / cn, "tracks_per_cpu_s": n / cv,
            "time_ratio": tv / tn, "cpu_time_ratio": cv / cn}




def _chain_inputs(n: int) -> pd.DataFrame:
    """A chain's inputs for ``n`` tracks: p log-uniform in 3-100 GeV/c, eta uniform in 2.2-4.6, nTracks
    uniform in 20-300, charge +-1 (the parts that time one species' chain at a time)."""
    from mambah.pid.chain import CHAIN_INPUTS

    rng = np.random.default_rng(5)
    inputs = pd.DataFrame({"P": np.exp(rng.uniform(np.log(3e3), np.log(1e5), n)), "ETA": rng.uniform(2.2, 4.6, n),
                           "nTracks": rng.integers(20, 300, n).astype(float), "charge": rng.choice([-1.0, 1.0], n)})
    return inputs[list(CHAIN_INPUTS)]

def bench_maps(n=100_000, repeats=3, species=("pi", "K", "p")):
    """The chains' quantile maps (:class:`mambah.nn.marginals.MarginalCorrection`) on the rows a chain gives
    them: ``apply`` (all rows at once, :class:`mambah.nn.knots.KnotTables`) against
    :func:`~mambah.nn.marginals.apply_reference` (one ``numpy.interp`` per bin and target, the path before
    2026-12-07), alternately, best of ``repeats``; the outputs must be identical.

    Each species' chain (with its ProbNN step where the models have one) runs once on ``n`` tracks (p
    log-uniform in 3-100 GeV/c, eta uniform in 2.2-4.6, nTracks uniform in 20-300) while the arguments
    of every map's ``apply`` are recorded. Returns ``{"<species> <step model>": {"rows", "targets",
    "ns_per_row", "reference_ns_per_row"}}``.
    """
    import warnings

    import mambah.nn.marginals as marginals
    from mambah.pid.chain import load_chain

    inputs = _chain_inputs(n)
    out = {}
    apply = marginals.MarginalCorrection.apply
    for s in species:
        calls = []

        def record(self, *args, **kw):
            calls.append((self, args, kw))
            return apply(self, *args, **kw)

        chain = load_chain(s)
        names = {id(getattr(m, "correction", None)): m.card.get("name", st.role) for st, m in zip(chain.steps, chain.models)}
        marginals.MarginalCorrection.apply = record
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                chain.generate_columns(inputs, np.random.default_rng(1))
        finally:
            marginals.MarginalCorrection.apply = apply
        for corr, args, kw in calls:
            best = {"new": np.inf, "ref": np.inf}
            for _ in range(repeats):
                for how, f in (("ref", lambda: marginals.apply_reference(corr, *args, **kw)),
                               ("new", lambda: corr.apply(*args, **kw))):
                    t0 = time.perf_counter()
                    y = f()
                    best[how] = min(best[how], time.perf_counter() - t0)
                    if how == "ref":
                        want = y
                    elif not np.array_equal(y, want, equal_nan=True):
                        raise AssertionError(f"{s} {names.get(id(corr))}: apply differs from apply_reference")
            rows = len(args[0])
            out[f"{s} {names.get(id(corr), '?')}"] = {"rows": rows, "targets": len(corr.targets) + len(corr.given),
                                                      "ns_per_row": best["new"] / rows * 1e9,
                                                      "reference_ns_per_row": best["ref"] / rows * 1e9}
    return out


def bench_chain_steps(n=100_000, species=("e", "mu", "pi", "K", "p")):
    """Where a chain's time goes: each species' chain (with its ProbNN step where the models have one) on
    ``n`` tracks (as :func:`bench_maps`), one chain at a time, after two warm-up runs; the wall time of
    each step model's generation (``PidModel.generate_array``, calibration maps included; the flags
    classifiers' ``FlagModel.sample``), of the calibration maps alone, and of the surrogate ProbNN network,
    per row it is evaluated on. Returns ``{species: {"total_ns_per_track", "parts": {name: (ns_per_row,
    fraction of the tracks)}}}``.
    """
    import warnings

    import mambah.nn.flags as flags
    import mambah.nn.marginals as marginals
    import mambah.nn.pidmodel as pidmodel
    import mambah.pid.chain as chain_mod

    inputs = _chain_inputs(n)
    acc: dict[str, list[float]] = {}

    def timed(owner, attr, name_of):
        orig = getattr(owner, attr)

        def wrapper(*args, **kw):
            t0 = time.perf_counter()
            r = orig(*args, **kw)
            a = acc.setdefault(name_of(*args), [0.0, 0])
            a[0] += time.perf_counter() - t0
            a[1] += len(args[1]) if attr != "surrogate_probnn" else len(next(iter(args[0].values())))
            return r
        return orig, wrapper

    patches = [(pidmodel.PidModel, "generate_array", lambda m, *a: m.card.get("name", "?")),
               (flags.FlagModel, "sample", lambda m, *a: m.card.get("name", "?")),
               (marginals.MarginalCorrection, "apply", lambda c, *a: "calibration maps (per map and row)"),
               (chain_mod, "surrogate_probnn", lambda *a: "surrogate ProbNN network")]
    originals = []
    out = {}
    try:
        for owner, attr, name_of in patches:
            orig, wrapper = timed(owner, attr, name_of)
            originals.append((owner, attr, orig))
            setattr(owner, attr, wrapper)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for s in species:
                chain = chain_mod.load_chain(s)
                for _ in range(2):
                    chain.generate_columns(inputs, np.random.default_rng(1))
                acc.clear()
                t0 = time.perf_counter()
                chain.generate_columns(inputs, np.random.default_rng(1))
                total = time.perf_counter() - t0
                out[s] = {"total_ns_per_track": total / n * 1e9,
                          "parts": {k: (v[0] / v[1] * 1e9, v[1] / n) for k, v in acc.items() if v[1]}}
    finally:
        for owner, attr, orig in originals:
            setattr(owner, attr, orig)
    return out

PARTS = ("inference", "training", "score", "chain", "variations", "chain-variations", "maps", "chain-steps")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--tracks", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=200)
    ap.add_argument("--variations", type=int, default=10, metavar="K",
                    help="ensemble members of the variations part (default 10)")
    ap.add_argument("--chain-tracks", type=int, default=200_000,
                    help="tracks of the chain-variations part (default 200000)")
    ap.add_argument("--chain-models", type=Path, default=None, metavar="DIR",
                    help="models directory of the chain part (default: the shipped models); a directory whose "
                         "chains have pid-<s>-probnn steps measures the chain with the ProbNN step (issue 24)")
    ap.add_argument("--only", default=",".join(PARTS),
                    help=f"comma-separated parts to run, of {', '.join(PARTS)} (default: all)")
    a = ap.parse_args()
    only = [p.strip() for p in a.only.split(",") if p.strip()]
    unknown = sorted(set(only) - set(PARTS))
    if unknown:
        ap.error(f"unknown part(s) {unknown} in --only; choose from {list(PARTS)}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    inf = bench_inference(a.model, a.data, a.tracks, a.repeats) if "inference" in only else None
    tr = bench_training(a.data, a.train_steps) if "training" in only else None
    ts = time_to_score(a.model) if "score" in only else None
    ch = bench_chain(a.tracks, models_dir=a.chain_models) if "chain" in only else None
    var = bench_variations(a.model, a.data, a.tracks, a.repeats, a.variations) if "variations" in only else None
    cv = (bench_chain_variations(a.chain_tracks, a.repeats, a.variations)
          if "chain-variations" in only else None)
    maps = bench_maps(min(a.tracks, 200_000), a.repeats) if "maps" in only else None
    steps = bench_chain_steps(min(a.tracks, 200_000)) if "chain-steps" in only else None
    load = os.getloadavg()[0]
    print(f"{'measure':58s} {'value':>14s}")
    if inf:
        for name, label in (("reference", "numpy path (baseline)"), ("fast", "compiled path")):
            r = inf[name]
            print(f"{'inference, %s: tracks/s (wall, best of %d)' % (label, a.repeats):58s} {r['tracks_per_s']:14,.0f}")
            print(f"{'inference, %s: wall / CPU s per %d' % (label, r['n']):58s} "
                  f"{r['wall_s']:6.3f} / {r['cpu_s']:6.3f}")
            print(f"{'inference, %s: tracks per CPU-second' % label:58s} {r['tracks_per_cpu_s']:14,.0f}")
        print(f"{'inference: speed-up of the compiled path (wall)':58s} "
              f"{inf['fast']['tracks_per_s'] / inf['reference']['tracks_per_s']:14.2f}")
    if tr:
        print(f"{'training: samples/s (wall)':58s} {tr['samples_per_s']:14,.0f}")
        print(f"{'training: samples per CPU-second':58s} {tr['samples_per_cpu_s']:14,.0f}")
        print(f"{'training: steps/s (batch %d)' % tr['batch_size']:58s} {tr['steps'] / tr['wall_s']:14.1f}")
    for k, v in (ts or {}).items():
        print(f"{'time to score: ' + k:58s} {v:14.4g}")
    if ch:
        print(f"{'chained PID stage (5 species%s): tracks/s' % ch['probnn']:58s} {ch['tracks_per_s']:14,.0f}")
        print(f"{'chained PID stage: tracks per CPU-second':58s} {ch['tracks_per_cpu_s']:14,.0f}")
        print(f"{'chained PID stage, numpy flags (baseline): tracks/s':58s} {ch['numpy_flags_tracks_per_s']:14,.0f}")
        print(f"{'chained PID stage: speed-up of the compiled flags (wall)':58s} "
              f"{ch['tracks_per_s'] / ch['numpy_flags_tracks_per_s']:14.2f}")
        if "no_marginals_tracks_per_s" in ch:
            print(f"{'chained PID stage without the %d marginal calibrations: tracks/s' % ch['marginals']:58s} "
                  f"{ch['no_marginals_tracks_per_s']:14,.0f}")
            print(f"{'chained PID stage: cost of the marginal calibrations (wall)':58s} "
                  f"{ch['no_marginals_tracks_per_s'] / ch['tracks_per_s'] - 1:14.1%}")
        if "no_probnn_tracks_per_s" in ch:
            print(f"{'chained PID stage without the ProbNN steps: tracks/s':58s} {ch['no_probnn_tracks_per_s']:14,.0f}")
        if "no_xla_tracks_per_s" in ch:
            print(f"{'chained PID stage, knot search not XLA-compiled: tracks/s':58s} {ch['no_xla_tracks_per_s']:14,.0f}")
            print(f"{'  its tracks per CPU-second':58s} {ch['no_xla_tracks_per_cpu_s']:14,.0f}")
        if "two_threads_tracks_per_s" in ch:
            print(f"{'chained PID stage, 2 species at once (was the default): tracks/s':58s} "
                  f"{ch['two_threads_tracks_per_s']:14,.0f}")
    if var:
        k = var["k"]
        print(f"{'variations: nominal alone, tracks/s (wall, best of %d)' % a.repeats:58s} "
              f"{var['nominal_tracks_per_s']:14,.0f}")
        print(f"{'variations: nominal + %d %s, tracks/s' % (k, 'members' if var['real_members'] else 'stand-ins'):58s} "
              f"{var['tracks_per_s']:14,.0f}")
        print(f"{'variations: time / (K+1) x nominal time (wall)':58s} {var['cost_ratio']:14.3f}")
        print(f"{'variations: CPU time / (K+1) x nominal CPU time':58s} {var['cpu_cost_ratio']:14.3f}")
    if cv:
        k = cv["k"]
        print(f"{'PID stage, %s chain, nominal: tracks/s (wall, best of %d)' % (cv['species'], a.repeats):58s} "
              f"{cv['nominal_tracks_per_s']:14,.0f}")
        what = "members" if cv["real_members"] else "stand-ins"
        print(f"{'PID stage, %s chain + %d %s: tracks/s' % (cv['species'], k, what):58s} "
              f"{cv['tracks_per_s']:14,.0f}")
        print(f"{'PID stage with variations: time / nominal time (wall)':58s} {cv['time_ratio']:14.2f}")
        print(f"{'PID stage with variations: CPU time / nominal CPU time':58s} {cv['cpu_time_ratio']:14.2f}")
    for name, r in (maps or {}).items():
        print(f"{'quantile map %s (%d outputs): ns/row, per-bin interp' % (name, r['targets']):58s} "
              f"{r['reference_ns_per_row']:14.0f}")
        print(f"{'quantile map %s: ns/row, all rows at once' % name:58s} {r['ns_per_row']:14.0f}")
    for sp, r in (steps or {}).items():
        print(f"{'chain %s, one chain at a time: ns/track (wall)' % sp:58s} {r['total_ns_per_track']:14.0f}")
        for name, (ns, frac) in r["parts"].items():
            print(f"{'  %s: ns/row (on %.0f%% of the tracks)' % (name, 100 * frac):58s} {ns:14.0f}")
    print(f"{'load average (1 min) during the run':58s} {load:14.2f}")

    def get(d, *keys):
        for k in keys:
            if d is None:
                return None
            d = d[k]
        return d

    print(json.dumps({"inference_tracks_per_s": get(inf, "fast", "tracks_per_s"),
                      "train_samples_per_s": get(tr, "samples_per_s"),
                      "seconds_to_score": get(ts, "seconds_to_score"),
                      "inference_tracks_per_cpu_s": get(inf, "fast", "tracks_per_cpu_s"),
                      "inference_reference_tracks_per_s": get(inf, "reference", "tracks_per_s"),
                      "inference_reference_tracks_per_cpu_s": get(inf, "reference", "tracks_per_cpu_s"),
                      "train_samples_per_cpu_s": get(tr, "samples_per_cpu_s"), "load_average": load,
                      "chain_tracks_per_s": get(ch, "tracks_per_s"), "chain_tracks_per_cpu_s": get(ch, "tracks_per_cpu_s"),
                      "chain_numpy_flags_tracks_per_s": get(ch, "numpy_flags_tracks_per_s"),
                      "chain_no_marginals_tracks_per_s": get(ch, "no_marginals_tracks_per_s"),
                      "chain_no_probnn_tracks_per_s": get(ch, "no_probnn_tracks_per_s"),
                      "chain_no_xla_tracks_per_s": get(ch, "no_xla_tracks_per_s"),
                      "chain_two_threads_tracks_per_s": get(ch, "two_threads_tracks_per_s"),
                      "variations_k": get(var, "k"), "variations_tracks_per_s": get(var, "tracks_per_s"),
                      "variations_nominal_tracks_per_s": get(var, "nominal_tracks_per_s"),
                      "variations_cost_ratio": get(var, "cost_ratio"),
                      "chain_variations_tracks_per_s": get(cv, "tracks_per_s"),
                      "chain_variations_nominal_tracks_per_s": get(cv, "nominal_tracks_per_s"),
                      "chain_variations_time_ratio": get(cv, "time_ratio"),
                      "chain_steps": steps,
                      "maps_ns_per_row": None if maps is None else {k: v["ns_per_row"] for k, v in maps.items()},
                      "maps_reference_ns_per_row": None if maps is None else {k: v["reference_ns_per_row"]
                                                                              for k, v in maps.items()}}))


if __name__ == "__main__":
    main()
