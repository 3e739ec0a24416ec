"""Generator-level speed: mambah's ParticleGun + PhaseSpaceDecay against bare phasespace.

For each channel, 10^6 events (in batches) are generated, both weighted (``unweight=False``:
every generated event kept with its weight) and unweighted (the default: accept-reject on the
phase-space x decay-model weight, so more events are generated than kept; the accept-reject
efficiency is printed beside the rates),

- by mambah: ParticleGun + PhaseSpaceDecay, i.e. head kinematics, PV smearing, decay times,
  phasespace, Breit-Wigner masses if any, boost to the lab, vertex propagation and the three
  pandas tables (events, mc_particles, mc_vertices) -- everything except writing to a store;
- by bare phasespace: the same chain of ``GenParticle`` (PDG masses) generated in the head's rest
  frame with ``generate(n, seed=gen)``, reusing one ``tf.random.Generator`` reset per batch (the
  fast way; a new int seed per call makes phasespace retrace its tf.functions, shown as "naive"),
  and the outputs converted to numpy.

Runs are interleaved and repeated; the median wall-clock rate is reported (and, as a check that
does not depend on what else the machine runs, events per CPU-second of this process). Prints a table, then one JSON
line with, per channel, ``events_per_s`` (weighted), ``unweighted_events_per_s``,
``unweighting_efficiency``, ``phasespace_events_per_s`` and ``ratio_to_phasespace`` (weighted).
The ratio compares like with like: bare phasespace gives weighted events.

Usage::

    nice -n 10 python benchmarks/generation.py [--events 1000000] [--batch-size 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CHANNELS = {
    "lambda_b": "Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu",
    "lambda_b_lqcd": "Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu Lb2LclnuLQCD",
    "b_plus": "B+ -> (J/psi(1S) -> mu+ mu-) K+",
    "b_plus_svs": "B+ -> (J/psi(1S) -> mu+ mu- VLL) K+ SVS",
}


def bare_chain(descriptor: str):
    import phasespace

    from mambah.generation import parse_descriptor

    desc = parse_descriptor(descriptor)  # (the decay models do not change the phase-space chain)
    names = iter(range(10_000))

    def build(node):
        part = phasespace.GenParticle(f"p{next(names)}", node.particle.mass)
        if node.children:
            part.set_children(*[build(c) for c in node.children])
        return part

    return build(desc.head)


def time_bare(top, n_events: int, batch_size: int, mode: str = "eager") -> float:
    """``mode``: "eager" (``generate`` as documented, one reused generator), "graph" (the same call
    wrapped in one ``tf.function``), "naive" (a new int seed per call)."""
    import tensorflow as tf

    gen = tf.random.Generator.from_seed(0)
    graph = tf.function(lambda n: top.generate(n, seed=gen), autograph=False,
                        input_signature=[tf.TensorSpec([], tf.int64)])
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n_events // batch_size):
        if mode == "naive":
            w, parts = top.generate(batch_size, seed=i)
        elif mode == "graph":
            gen.reset_from_seed(i)
            w, parts = graph(tf.constant(batch_size, tf.int64))
        else:
            gen.reset_from_seed(i)
            w, parts = top.generate(batch_size, seed=gen)
        _ = w.numpy(), {k: v.numpy() for k, v in parts.items()}
    return n_events / (time.perf_counter() - t0), n_events / (time.process_time() - c0)


def time_mambah(pipe, n_events: int, batch_size: int, seed: int, record: list | None = None) -> float:
    """Rates (wall, CPU) of ``pipe``; ``record`` collects each batch's ``generator_acceptance``."""
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n_events // batch_size):
        batch = pipe.process(pipe.make_batch(i, seed, batch_size))
        _ = batch.tables["mc_particles"]
        if record is not None and "generator_acceptance" in batch.info:
            record.append(batch.info["generator_acceptance"])
    return n_events / (time.perf_counter() - t0), n_events / (time.process_time() - c0)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--batch-size", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--naive-events", type=int, default=200_000, help="events for the naive phasespace timing")
    ap.add_argument("--channels", default=",".join(CHANNELS), help=f"comma-separated subset of {', '.join(CHANNELS)}")
    args = ap.parse_args(argv)

    import tensorflow as tf

    from mambah.generation import generator_stages
    from mambah.generation.decay import merge_acceptance
    from mambah.pipeline import Pipeline

    result: dict = {"n_events": args.events, "batch_size": args.batch_size, "repeats": args.repeats,
                    "cpu_count": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2),
                    "tensorflow": tf.__version__}
    rows = []
    for key in args.channels.split(","):
        descriptor = CHANNELS[key]
        pipe = Pipeline(generator_stages(descriptor, unweight=False))
        pipe_u = Pipeline(generator_stages(descriptor))  # the default: unweighted
        top = bare_chain(descriptor)
        # warm up all (tracing, XLA compilation) outside the timings
        time_mambah(pipe, args.batch_size, args.batch_size, seed=99)
        time_mambah(pipe_u, args.batch_size, args.batch_size, seed=99)
        time_bare(top, args.batch_size, args.batch_size)
        time_bare(top, args.batch_size, args.batch_size, mode="graph")
        ours, unw, eager, graph, acc = [], [], [], [], []
        for r in range(args.repeats):
            ours.append(time_mambah(pipe, args.events, args.batch_size, seed=r))
            unw.append(time_mambah(pipe_u, args.events, args.batch_size, seed=r, record=acc))
            eager.append(time_bare(top, args.events, args.batch_size))
            graph.append(time_bare(top, args.events, args.batch_size, mode="graph"))
        naive = time_bare(top, args.naive_events, args.batch_size, mode="naive")[0]
        unw_eff = merge_acceptance(acc)["efficiency"]
        unw_rate = statistics.median(x[0] for x in unw)
        cpu_rate = statistics.median(x[1] for x in ours)
        cpu_bare = max(statistics.median(x[1] for x in eager), statistics.median(x[1] for x in graph))
        ours, eager, graph = ([x[0] for x in v] for v in (ours, eager, graph))
        rate = statistics.median(ours)
        eager_rate, graph_rate = statistics.median(eager), statistics.median(graph)
        bare_rate = max(eager_rate, graph_rate)  # compare with the faster way of using phasespace
        result[key] = {
            "descriptor": descriptor,
            "events_per_s": round(rate),
            "phasespace_events_per_s": round(bare_rate),
            "ratio_to_phasespace": round(rate / bare_rate, 3),
            "unweighted_events_per_s": round(unw_rate),
            "unweighting_efficiency": round(unw_eff, 4),
            "unweighted_events_per_cpu_s": round(statistics.median(x[1] for x in unw)),
            "all_unweighted_events_per_s": [round(x[0]) for x in unw],
            "phasespace_eager_events_per_s": round(eager_rate),
            "phasespace_tf_function_events_per_s": round(graph_rate),
            "phasespace_naive_seed_per_call_events_per_s": round(naive),
            "events_per_cpu_s": round(cpu_rate),
            "phasespace_events_per_cpu_s": round(cpu_bare),
            "cpu_ratio_to_phasespace": round(cpu_rate / cpu_bare, 3),
            "all_events_per_s": [round(x) for x in ours],
            "all_phasespace_eager_events_per_s": [round(x) for x in eager],
            "all_phasespace_tf_function_events_per_s": [round(x) for x in graph],
        }
        rows.append((key, rate, unw_rate, unw_eff, eager_rate, graph_rate, rate / bare_rate, naive))

    print(f"{'channel':<14} {'weighted ev/s':>13} {'unweighted ev/s':>15} {'acc.-rej. eff':>13} {'ps eager':>12} "
          f"{'ps tf.fn':>12} {'ratio':>6} {'ps naive':>10}")
    for k, a, u, e, b, g, r, nv in rows:
        print(f"{k:<14} {a:>13,.0f} {u:>15,.0f} {e:>13.3f} {b:>12,.0f} {g:>12,.0f} {r:>6.2f} {nv:>10,.0f}")
    print("(weighted: unweight=False; unweighted: the default, accept-reject on phase space x decay models, events "
          "per second KEPT; ratio = weighted mambah / the faster of phasespace eager and phasespace in a tf.function; "
          f"medians of {args.repeats} interleaved runs of {args.events:,} events in batches of {args.batch_size:,})")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
