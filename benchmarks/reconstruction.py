"""Throughput of the reconstruction: the tracking networks and the vertex fit.

Part 1 (skipped with ``--no-networks``): efficiency + resolution networks for 10^6 tracks.

Evaluates the shipped efficiency classifier on 10^6 single tracks (LHCb-like gun of the
reference detector), draws the Bernoulli decisions, and samples reconstructed momenta from the
resolution MDN for the survivors, as the Efficiency and Resolution stages do. Prints a table,
then one JSON line with ``tracks_per_s`` (input tracks per wall-clock second through both
networks, best of ``--repeat``), ``tracks_per_cpu_s`` (per CPU-second summed over threads: what
the code costs, independent of other processes competing for the cores) and ``peak_rss_mb``.
Threads: ``MAMBAH_THREADS`` (default: all cores).

Part 2: ``vertex_fits_per_s``, the vectorised vertex fit
(:func:`mambah.reconstruction.vertexing.fit_vertex`) of ``--vertices`` 2-body and 3-body
vertices (wall-clock, best of ``--repeat``, input checks included), with 5-parameter states
``(x, y, tx, ty, q/p)`` from the reference detector (:class:`mambah.reference.TrackStateModel`:
tracks of a b-hadron-like spectrum from a vertex displaced by a few mm), and with 4-parameter
states (no momentum). numpy only: it runs in one thread.

Part 2b: ``pv_fits_per_s`` and ``pv_events_per_s``, the primary-vertex fits of the Vertexing stage
with pile-up (:func:`mambah.reconstruction.vertexstage.fit_primary_vertices`) for ``--pv-events``
events at the LHCb Upgrade I pile-up (``--pileup``, default 5.5 extra visible collisions): every
event's collisions (the signal's, at least 5 tracks, and Poisson pile-up) with their reference
prompt VELO tracks (:class:`mambah.reference.pileup.PileUpModel`, mean 30 per collision) fitted by
the masked vectorised vertex fit; ``pv_fits_per_s`` (and ``_per_cpu_s``) counts fitted PVs per
wall-clock (CPU) second of the fit alone, ``pv_events_per_s`` events per second of drawing the collisions and tracks plus the fit
(what the stage adds per event on top of the decay vertices; best of ``--repeat``; numpy, one thread).

Part 3: ``brem_electrons_per_s``, the reference bremsstrahlung and brem recovery of ``--electrons``
electrons (:meth:`mambah.reference.brem.BremDetector.response`, what the opt-in Bremsstrahlung
stage runs on the electron tracks; wall-clock, best of ``--repeat``; numpy, one thread).

Part 3b (skipped with ``--no-networks``; issue 23): ``trackstate_tracks_per_s``, the track-state
network (``--trackstate-model``, default the shipped ``trackstate-ref-v1``): covariance, Gaussian
residuals, chi2/ndof and ghost probability of ``--vertices`` tracks of a b-hadron-like spectrum, what
``Vertexing(model="model")`` runs per track, beside ``trackstate_reference_tracks_per_s`` (the reference
detector's :meth:`~mambah.reference.trackstates.TrackStateModel.measure` on the same tracks; wall-clock,
best of ``--repeat``).

Part 4 (skipped with ``--no-networks``; issue 25): the electron and photon stages with their
networks and with the reference detector: ``brem_network_electrons_per_s`` (the shipped brem
model, :meth:`mambah.nn.calo.BremModel.sample`: flag + response, what ``--brem model`` runs),
``photon_network_per_s`` (the shipped photon model: acceptance, efficiency and cluster response
of ``--electrons`` single photons, what ``--neutrals model`` runs per photon) and
``photon_reference_per_s`` (:meth:`mambah.reference.calorimeter.Calorimeter.photon_response`);
wall-clock, best of ``--repeat``.

    nice -n 10 python benchmarks/reconstruction.py [--tracks 1000000] [--repeat 5] [--vertices 200000]
        [--electrons 1000000] [--pv-events 20000] [--pileup 5.5] [--no-networks]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracks", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--efficiency", default="efficiency-ref-v2")
    ap.add_argument("--resolution", default="resolution-ref-v1")
    ap.add_argument("--vertices", type=int, default=200_000)
    ap.add_argument("--electrons", type=int, default=1_000_000)
    ap.add_argument("--brem-model", default="brem-e-ref-v1")
    ap.add_argument("--photon-model", default="photon-ref-v1")
    ap.add_argument("--trackstate-model", default="trackstate-ref-v1")
    ap.add_argument("--pv-events", type=int, default=20_000)
    ap.add_argument("--pileup", type=float, default=None, help="mean pile-up (default: LHCb Upgrade I, 5.5)")
    ap.add_argument("--no-networks", action="store_true", help="only the vertex-fit, PV-fit and brem parts")
    args = ap.parse_args()
    vertex = vertex_fit_benchmark(args.vertices, args.repeat)
    vertex.update(pv_fit_benchmark(args.pv_events, args.repeat, args.pileup))
    vertex.update(brem_benchmark(args.electrons, args.repeat))
    if args.no_networks:
        print(json.dumps({"benchmark": "reconstruction", "vertices": args.vertices, **vertex,
                          "load_average": round(os.getloadavg()[0], 1)}))
        return

    vertex.update(trackstate_benchmark(args.vertices, args.repeat, args.trackstate_model))
    vertex.update(calo_network_benchmark(args.electrons, args.repeat, args.brem_model, args.photon_model))
    from mambah.nn import tracking as recnets
    from mambah.nn.dense import n_threads
    from mambah.reference.tracking import TrackGun

    gun = TrackGun()(args.tracks, seed=1)
    cols = [gun[c] for c in ("px", "py", "pz", "x", "y", "z", "pid")]
    t0 = time.perf_counter()
    eff = recnets.load_efficiency(args.efficiency)
    res = recnets.load_resolution(args.resolution)
    t_load = time.perf_counter() - t0
    import logging

    logging.getLogger("mambah").setLevel(logging.ERROR)  # out-of-range notes are not the point here
    rows = []
    for i in range(args.repeat):
        rng = np.random.default_rng(i)
        c0 = time.process_time()
        t0 = time.perf_counter()
        prob = eff.probability(*cols)
        keep = rng.random(len(prob)) < prob
        t1 = time.perf_counter()
        out = res.sample(*(c[keep] for c in cols[:3]), cols[6][keep], rng)
        t2 = time.perf_counter()
        rows.append((t1 - t0, t2 - t1, t2 - t0, int(keep.sum()), time.process_time() - c0))
        assert np.isfinite(out[0]).all()
    print(f"{'repeat':>6} {'efficiency s':>13} {'resolution s':>13} {'total s':>8} {'cpu s':>7} {'survivors':>10} "
          f"{'tracks/s':>10} {'tracks/cpu s':>13}")
    for i, (a, b, c, k, cpu) in enumerate(rows):
        print(f"{i:>6} {a:>13.3f} {b:>13.3f} {c:>8.3f} {cpu:>7.3f} {k:>10d} {args.tracks / c:>10.3g} {args.tracks / cpu:>13.3g}")
    best = min(rows, key=lambda r: r[2])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    best_cpu = min(r[4] for r in rows)
    print(f"model loading (TensorFlow import + Keras files): {t_load:.1f} s; cpus: {os.cpu_count()}, threads: "
          f"{n_threads()}, load average: {os.getloadavg()[0]:.1f}")
    print(json.dumps({"benchmark": "reconstruction", "tracks": args.tracks, "tracks_per_s": round(args.tracks / best[2]),
                      "tracks_per_cpu_s": round(args.tracks / best_cpu), "load_average": round(os.getloadavg()[0], 1),
                      "efficiency_s": round(best[0], 4), "resolution_s": round(best[1], 4),
                      "survivor_fraction": round(best[3] / args.tracks, 4), "peak_rss_mb": round(rss, 1),
                      "vertices": args.vertices, **vertex}))


def vertex_inputs(n: int, n_tracks: int, seed: int = 1):
    """``n`` vertices of ``n_tracks`` reference-detector tracks: (states, covariances, z)."""
    from mambah.reference import TrackGun, TrackStateModel

    rng = np.random.default_rng(seed)
    g = TrackGun(prompt=1.0, eta_lo=2.0, eta_hi=4.8, p_lo=3000.0, p_hi=150_000.0)(n * n_tracks, seed=rng)
    vx_ = np.repeat(rng.normal(0, 1.0, n), n_tracks)
    vy_ = np.repeat(rng.normal(0, 1.0, n), n_tracks)
    vz_ = np.repeat(rng.normal(10.0, 40.0, n), n_tracks)
    r = TrackStateModel().measure(g["px"], g["py"], g["pz"], vx_, vy_, vz_, g["pid"], seed=rng)
    return (r["state"].reshape(n, n_tracks, 5), r["cov"].reshape(n, n_tracks, 5, 5), r["z"].reshape(n, n_tracks))


def vertex_fit_benchmark(n: int, repeat: int) -> dict:
    """Vertex fits per second for 2- and 3-track vertices (5- and 4-parameter states); prints a table."""
    from mambah.reconstruction.vertexing import fit_vertex

    out = {}
    print(f"{'tracks':>6} {'params':>6} {'best s':>8} {'cpu s':>7} {'fits/s':>10} {'fits/cpu s':>11} {'chi2/ndf':>9}")
    for nt in (2, 3):
        s, c, z = vertex_inputs(n, nt)
        for k in (5, 4):
            times, cpus = [], []
            for _ in range(repeat):
                c0 = time.process_time()
                t0 = time.perf_counter()
                fit = fit_vertex(s[..., :k], c[..., :k, :k], z)
                times.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
            best, cpu = min(times), min(cpus)
            print(f"{nt:>6} {k:>6} {best:>8.3f} {cpu:>7.3f} {n / best:>10.3g} {n / cpu:>11.3g} {fit.chi2.mean() / fit.ndof:>9.3f}")
            key = "vertex_fits_per_s" if k == 5 else "vertex_fits_per_s_no_momentum"
            out.setdefault(key, {})[f"{nt}-body"] = round(n / best)
            out.setdefault(key.replace("_per_s", "_per_cpu_s"), {})[f"{nt}-body"] = round(n / cpu)
    return out


def pv_fit_benchmark(n_events: int, repeat: int, mu: float | None = None) -> dict:
    """Primary-vertex fits per second with pile-up, and events per second (draw + fit); prints a line."""
    from mambah.reconstruction.vertexstage import fit_primary_vertices
    from mambah.reference.pileup import DEFAULT_PILEUP_MU, PileUpModel

    pu = PileUpModel(mu=DEFAULT_PILEUP_MU if mu is None else mu)

    def draw(seed):
        rng = np.random.default_rng(seed)
        n_pu = pu.n_pileup(n_events, rng)
        P = n_events + int(n_pu.sum())
        true = pu.positions(P, rng)
        cnt = np.concatenate([pu.multiplicity(n_events, rng, minimum=5), pu.multiplicity(P - n_events, rng)])
        owner = np.repeat(np.arange(P), cnt)
        s, c, z = pu.tracks(true[owner], rng)
        return owner, s, c, z, P

    fit_t, all_t, fit_c, all_c = [], [], [], []
    for i in range(repeat):
        c0 = time.process_time()
        t0 = time.perf_counter()
        owner, s, c, z, P = draw(i)
        c1 = time.process_time()
        t1 = time.perf_counter()
        fit = fit_primary_vertices(owner, s, c, z, P, min_tracks=5)
        t2 = time.perf_counter()
        c2 = time.process_time()
        fit_t.append(t2 - t1)
        all_t.append(t2 - t0)
        fit_c.append(c2 - c1)
        all_c.append(c2 - c0)
    n_fit = int(fit["fitted"].sum())
    best_fit, best_all, cpu_fit, cpu_all = min(fit_t), min(all_t), min(fit_c), min(all_c)
    print(f"PV fits: {n_events} events, mu = {pu.mu}, {P} collisions, {n_fit} PVs with >= 5 tracks ({len(owner)} tracks): "
          f"fit {best_fit:.3f} s wall, {cpu_fit:.3f} s cpu ({n_fit / best_fit:.3g} PVs/s, {n_fit / cpu_fit:.3g} PVs/cpu s), "
          f"draw + fit {best_all:.3f} s wall, {cpu_all:.3f} s cpu ({n_events / best_all:.3g} events/s, "
          f"{n_events / cpu_all:.3g} events/cpu s)")
    return {"pv_events": n_events, "pileup_mu": pu.mu, "pvs_per_event": round(n_fit / n_events, 3),
            "pv_fits_per_s": round(n_fit / best_fit), "pv_fits_per_cpu_s": round(n_fit / cpu_fit),
            "pv_events_per_s": round(n_events / best_all), "pv_events_per_cpu_s": round(n_events / cpu_all),
            "pv_fit_events_per_s": round(n_events / best_fit)}


def brem_benchmark(n: int, repeat: int) -> dict:
    """Electrons per second through the reference brem and brem recovery; prints a line."""
    from mambah.reference import TrackGun
    from mambah.reference.brem import BremDetector

    g = TrackGun(prompt=1.0, eta_lo=2.0, eta_hi=4.8, p_lo=3000.0, p_hi=150_000.0)(n, seed=2)
    det = BremDetector()
    times = []
    for i in range(repeat):
        t0 = time.perf_counter()
        r = det.response(g["px"], g["py"], g["pz"], g["x"], g["y"], g["z"], seed=i)
        times.append(time.perf_counter() - t0)
    best = min(times)
    print(f"brem: {n} electrons, best {best:.3f} s, {n / best:.3g} electrons/s, brem added "
          f"{r['has_brem_added'].mean():.3f}, mean kept fraction {r['kept'].mean():.3f}")
    return {"electrons": n, "brem_electrons_per_s": round(n / best)}


def trackstate_benchmark(n: int, repeat: int, model: str) -> dict:
    """Tracks per second through the track-state network and through the reference detector."""
    import warnings

    from mambah.errors import OutOfRangeWarning
    from mambah.nn.registry import load_model
    from mambah.reference import TrackGun
    from mambah.reference.trackstates import LONG, TrackStateModel

    g = TrackGun(prompt=0.0, eta_lo=2.0, eta_hi=4.8, p_lo=2000.0, p_hi=150_000.0, flight_lo=1.0, flight_hi=20.0)(n, seed=5)
    cols = [g[c] for c in ("px", "py", "pz", "x", "y", "z", "pid")]
    tt = np.full(n, LONG, dtype=np.int8)
    net, ref = load_model(model, kind="trackstate"), TrackStateModel()
    rows = {"trackstate_tracks_per_s": [], "trackstate_reference_tracks_per_s": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)
        for i in range(repeat):
            t0 = time.perf_counter()
            m = net.measure(*cols, seed=i, track_type=tt)
            t1 = time.perf_counter()
            ref.measure(*cols, seed=i, track_type=tt)
            t2 = time.perf_counter()
            rows["trackstate_tracks_per_s"].append(n / (t1 - t0))
            rows["trackstate_reference_tracks_per_s"].append(n / (t2 - t1))
    assert np.isfinite(m["state"]).all()
    out = {k: round(max(v)) for k, v in rows.items()}
    print(f"track states, {n} long tracks: network {out['trackstate_tracks_per_s']:.3g} tracks/s, reference detector "
          f"{out['trackstate_reference_tracks_per_s']:.3g} tracks/s")
    return out


def calo_network_benchmark(n: int, repeat: int, brem_model: str, photon_model: str) -> dict:
    """Electrons and photons per second through the calorimeter networks and the reference ECAL."""
    import warnings

    from mambah.errors import OutOfRangeWarning
    from mambah.nn.registry import load_model
    from mambah.reference import TrackGun
    from mambah.reference.calorimeter import Calorimeter, photon_sample

    g = TrackGun(prompt=1.0, eta_lo=2.0, eta_hi=4.8, p_lo=3000.0, p_hi=150_000.0)(n, seed=3)
    ph = photon_sample(n, seed=4)
    pc = [ph[c].to_numpy() for c in ("px", "py", "pz", "x", "y", "z")]
    bm, pm, cal = load_model(brem_model, kind="brem"), load_model(photon_model, kind="photon"), Calorimeter()
    rows = {"brem_network_electrons_per_s": [], "photon_network_per_s": [], "photon_reference_per_s": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)
        for i in range(repeat):
            rng = np.random.default_rng(i)
            t0 = time.perf_counter()
            flag, _ = bm.sample(g["px"], g["py"], g["pz"], g["z"], seed=rng)
            t1 = time.perf_counter()
            _, prob = pm.efficiency(*pc)
            keep = rng.random(n) < prob
            pm.response(*(c[keep] for c in pc), rng)
            t2 = time.perf_counter()
            cal.photon_response(*pc, seed=rng)
            t3 = time.perf_counter()
            for k, dt in zip(rows, (t1 - t0, t2 - t1, t3 - t2)):
                rows[k].append(n / dt)
    out = {k: round(max(v)) for k, v in rows.items()}
    print(f"calorimeter stages, {n} electrons / photons: brem network {out['brem_network_electrons_per_s']:.3g} "
          f"electrons/s (brem added {flag.mean():.3f}); photon network {out['photon_network_per_s']:.3g} photons/s "
          f"(reconstructed {keep.mean():.3f}); reference ECAL {out['photon_reference_per_s']:.3g} photons/s")
    return out


if __name__ == "__main__":
    main()
