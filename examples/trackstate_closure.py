"""Closure of the track-state network against the reference detector: IP pulls, vertex chi2, FD pulls.

    python examples/trackstate_closure.py out/tsclosure                       # ~1 minute
    python examples/trackstate_closure.py out/tsclosure --tracks 3000000 --vertices 400000
    python examples/trackstate_closure.py out/tsclosure --model path/to/trackstate-model

The network (``models/trackstate-ref-v1`` by default) gives every reconstructed track a covariance,
learned from the reference detector. What a selection computes from it (IPCHI2, ENDVERTEX_CHI2,
FDCHI2) is right only if that covariance describes the detector's true residuals. So the residuals
here are the **reference detector's own** (its measured states of tracks with a seed the training
never used) and the errors are the **network's** covariance at the same conditions:

1. **IP pulls**: each track's impact parameter to its true origin (x and y at the origin's plane),
   divided by its error propagated from the network's covariance, in bins of true pT and eta, per
   track type (long / upstream / downstream): mean and width (0 and 1 for a matching covariance),
   and the mean IP chi2 (2). This is :func:`mambah.training.trackstate.trackstate_closure`.
2. **Vertex chi2**: 2- and 3-track vertices at displaced true points (x, y ~ N(0, 1 mm), z uniform in
   0-100 mm, the daughters drawn by the reference detector's LHCb-like gun), fitted with
   :func:`mambah.reconstruction.vertexing.fit_vertex` from the reference's measured states and the
   network's covariances. Printed: the histogram of the chi2 p-values (flat for a right covariance:
   the chi2 of its 10 bins against flat and its p-value), the KS distance of the p-values to a
   uniform law, the vertex position pulls, and the **FD pulls** ``(FD_fit - FD_true) / sigma_FD``
   from a PV at the true origin of the collision (0, 0, 0), sigma_FD propagated from the vertex
   covariance along the flight direction. Beside each, the same with the reference detector's own
   covariance (the ideal the network is measured against).

Writes ``trackstate_closure.json`` and ``trackstate_closure.png`` (mplhep LHCb2 style: the p-value
histograms and the IP pulls of long tracks) in OUTDIR; the last line printed is the JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def ip_closure(model, n_tracks: int, seed: int) -> dict:
    from mambah.reference.trackstates import trackstate_sample
    from mambah.training.trackstate import trackstate_closure

    return trackstate_closure(model, trackstate_sample(n_tracks, seed=seed), min_count=3000, seed=seed + 1)


def vertex_sample(n: int, n_tracks: int, seed: int):
    """``n`` displaced vertices of ``n_tracks`` reconstructed tracks: truth, reference measurement, types."""
    from mambah.reference import TrackGun, TrackStateModel

    rng = np.random.default_rng(seed)
    ref = TrackStateModel()
    m = int(n * 1.3) + 1000  # vertices with a track outside the tracking are dropped
    g = TrackGun(prompt=1.0, eta_lo=2.0, eta_hi=4.8, p_lo=3000.0, p_hi=150_000.0)(m * n_tracks, seed=rng)
    v = np.stack([rng.normal(0, 1.0, m), rng.normal(0, 1.0, m), rng.uniform(0.0, 100.0, m)], -1)
    vr = np.repeat(v, n_tracks, axis=0)
    tt = ref.track_type(g["px"], g["py"], g["pz"], vr[:, 0], vr[:, 1], vr[:, 2])
    keep = (tt.reshape(m, n_tracks) > 0).all(axis=1)
    keep &= np.cumsum(keep) <= n
    k = np.repeat(keep, n_tracks)
    cols = {c: np.asarray(g[c])[k] for c in ("px", "py", "pz", "pid")}
    vr, tt = vr[k], tt[k]
    r = ref.measure(cols["px"], cols["py"], cols["pz"], vr[:, 0], vr[:, 1], vr[:, 2], cols["pid"], seed=rng,
                    track_type=tt)
    return v[keep], cols, vr, tt, r


def vertex_closure(model, n: int, n_tracks: int, seed: int) -> dict:
    from scipy import stats

    from mambah.reconstruction.vertexing import fit_vertex

    v_true, cols, vr, tt, r = vertex_sample(n, n_tracks, seed)
    nv = len(v_true)
    net = model.measure(cols["px"], cols["py"], cols["pz"], vr[:, 0], vr[:, 1], vr[:, 2], cols["pid"], seed=seed,
                        track_type=tt)
    if not np.allclose(net["z"], r["z"]):
        raise RuntimeError("the network's and the reference's states are not at the same planes")
    out = {"n_vertices": nv, "n_tracks": n_tracks,
           "track_types": {int(t): float(np.mean(tt == t)) for t in np.unique(tt)}}
    for name, cov in (("network", net["cov"]), ("reference", r["cov"])):
        fit = fit_vertex(r["state"].reshape(nv, n_tracks, 5), cov.reshape(nv, n_tracks, 5, 5),
                         r["z"].reshape(nv, n_tracks))
        pval = stats.chi2.sf(fit.chi2, fit.ndof)
        h, _ = np.histogram(pval, bins=10, range=(0, 1))
        flat_chi2 = float(((h - nv / 10) ** 2 / (nv / 10)).sum())
        sig = np.sqrt(np.einsum("nii->ni", fit.covariance))
        pulls = (fit.position - v_true) / sig
        d = fit.position  # the PV is the collision point (0, 0, 0), known exactly
        fd = np.linalg.norm(d, axis=1)
        u = d / fd[:, None]
        sfd = np.sqrt(np.einsum("ni,nij,nj->n", u, fit.covariance, u))
        fd_pull = (fd - np.linalg.norm(v_true, axis=1)) / sfd
        out[name] = {
            "ndof": int(fit.ndof), "chi2_mean": float(fit.chi2.mean()),
            "pvalue_hist": h.tolist(), "pvalue_flatness_chi2_9dof": flat_chi2,
            "pvalue_flatness_p": float(stats.chi2.sf(flat_chi2, 9)),
            "pvalue_ks_uniform": float(stats.kstest(pval, "uniform").statistic),
            "vertex_pull_mean": pulls.mean(axis=0).round(4).tolist(), "vertex_pull_std": pulls.std(axis=0).round(4).tolist(),
            "fd_pull_mean": float(fd_pull.mean()), "fd_pull_std": float(fd_pull.std()),
            "fd_pull_robust_width": float(0.5 * np.diff(np.percentile(fd_pull, [15.87, 84.13]))[0]),
        }
    return out


def plot(res: dict, ip: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep

    plt.style.use(mplhep.style.LHCb2)
    fig, axes = plt.subplots(1, 3, figsize=(24, 7))
    for ax, key in zip(axes[:2], ("2-body", "3-body")):
        for name, ls in (("network", "-"), ("reference", "--")):
            h = np.asarray(res[key][name]["pvalue_hist"])
            mplhep.histplot(h / h.sum() * 10, np.linspace(0, 1, 11), ax=ax, ls=ls, label=f"{name} covariance")
        ax.axhline(1.0, color="grey", lw=1)
        ax.set_xlabel(f"vertex $\\chi^2$ p-value ({key})")
        ax.set_ylabel("density")
        ax.set_ylim(0.8, 1.2)
        ax.legend()
    long_bins = [b for b in ip["bins"] if b["type"] == 3]
    x = np.arange(len(long_bins))
    for k, mk in (("ipx", "o"), ("ipy", "s")):
        axes[2].errorbar(x, [b[f"pull_{k}_std"] for b in long_bins], yerr=[1 / np.sqrt(2 * b["n"]) for b in long_bins],
                         fmt=mk, label=f"width of {k} pull")
        axes[2].errorbar(x, [1 + b[f"pull_{k}_mean"] for b in long_bins], yerr=[1 / np.sqrt(b["n"]) for b in long_bins],
                         fmt=mk, mfc="none", label=f"1 + mean of {k} pull")
    axes[2].axhspan(0.97, 1.03, color="grey", alpha=0.2)
    axes[2].set_xticks(x, [f"{b['pt'][0]:g}-{b['pt'][1]:g}\n{b['eta'][0]:g}-{b['eta'][1]:g}" for b in long_bins],
                       fontsize=10)
    axes[2].set_xlabel("long tracks: $p_T$ [GeV/c], $\\eta$ bin")
    axes[2].set_ylim(0.9, 1.1)
    axes[2].legend(fontsize=12)
    path = out / "trackstate_closure.png"
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="output directory")
    ap.add_argument("--model", default="trackstate-ref-v1", help="track-state model (name or directory)")
    ap.add_argument("--tracks", type=int, default=1_000_000, help="single tracks of the IP closure")
    ap.add_argument("--vertices", type=int, default=200_000, help="vertices of each multiplicity")
    ap.add_argument("--seed", type=int, default=20261206, help="a seed the training never used")
    args = ap.parse_args(argv)
    from mambah.nn.registry import load_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model, kind="trackstate")
    ip = ip_closure(model, args.tracks, args.seed)
    print(f"IP closure, {ip['n']} reconstructed tracks (reference residuals / network errors):")
    print(f"{'type':>4} {'pT GeV':>10} {'eta':>8} {'n':>7} {'ipx mean':>9} {'ipx std':>8} {'ipy mean':>9} "
          f"{'ipy std':>8} {'IPchi2':>7}")
    for b in ip["bins"]:
        print(f"{b['type']:>4} {b['pt'][0]:>4g}-{b['pt'][1]:<5g} {b['eta'][0]:>3g}-{b['eta'][1]:<4g} {b['n']:>7} "
              f"{b['pull_ipx_mean']:>9.3f} {b['pull_ipx_std']:>8.3f} {b['pull_ipy_mean']:>9.3f} {b['pull_ipy_std']:>8.3f} "
              f"{b['ipchi2_mean']:>7.3f}")
    print("largest |width - 1| of the IP pulls per type:", {k: round(v, 4) for k, v in ip["ip_pull_std_max_dev"].items()},
          "; largest |mean|:", {k: round(v, 4) for k, v in ip["ip_pull_mean_max_abs"].items()})
    res = {}
    for nt in (2, 3):
        key = f"{nt}-body"
        res[key] = vertex_closure(model, args.vertices, nt, args.seed + nt)
        print(f"\n{key} vertices: {res[key]['n_vertices']}, track types {res[key]['track_types']}")
        for name in ("network", "reference"):
            r = res[key][name]
            print(f"  {name:>9} covariance: chi2 mean {r['chi2_mean']:.3f} (ndof {r['ndof']}); p-value flatness "
                  f"chi2/9 = {r['pvalue_flatness_chi2_9dof']:.1f}/9 (p = {r['pvalue_flatness_p']:.3f}), KS to uniform "
                  f"{r['pvalue_ks_uniform']:.4f}; vertex pulls std {r['vertex_pull_std']}; FD pull mean "
                  f"{r['fd_pull_mean']:.3f}, std {r['fd_pull_std']:.3f}, robust width {r['fd_pull_robust_width']:.3f}")
    png = plot(res, ip, out)
    summary = {"model": args.model, "seed": args.seed, "ip": {k: v for k, v in ip.items() if k != "bins"},
               "ip_bins": ip["bins"], "vertices": res, "plot": str(png)}
    (out / "trackstate_closure.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({"ip_pull_std_max_dev": ip["ip_pull_std_max_dev"], "ip_pull_mean_max_abs": ip["ip_pull_mean_max_abs"],
                      **{k: {n: {m: v[n][m] for m in ("pvalue_flatness_p", "pvalue_ks_uniform", "fd_pull_mean", "fd_pull_std")}
                             for n in ("network", "reference")} for k, v in res.items()}}))
    return summary


if __name__ == "__main__":
    main()
