"""The selection every b-hadron analysis starts with, on a semileptonic b-baryon decay and on prompt charm.

    python examples/b_hadron_selection.py out/bsel                    # 20k events per sample, ~40 s
    python examples/b_hadron_selection.py out/bsel --events 200000
    python examples/b_hadron_selection.py out/bsel --pileup 0          # the signal collision only
    python examples/b_hadron_selection.py out/bsel --events 100000 --compare-reference
    python examples/b_hadron_selection.py out/bprompt --samples prompt --events 600000 --compare-reference

Two samples through the standard chain (gun, decay, occupancy, tracking efficiency and momentum
resolution networks, composites) with the opt-in **Vertexing stage** (the track-state network
``trackstate-ref-v1``: every track's state closest to the beam, its covariance, chi2/ndof and ghost
probability, learned from the reference detector; a least-squares fit of every decay vertex, and
the primary vertices fitted from tracks: the signal collision and, by default,
Poisson pile-up of mean 5.5 extra visible collisions (LHCb Upgrade I), the own PV being the
candidate's best PV by IPCHI2; ``standard_pipeline(..., vertexing=True, pileup=MU)``,
``mambah simulate ... --vertexing --pileup MU``), without PID (no cut here uses it):

* ``Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu`` (phase space), the b-hadron signal;
* ``Lambda_c+ -> p+ K- pi+`` produced at the PV (prompt charm), the background the cuts below are
  made to remove.

**The selection**, as LHCb's semileptonic Lb -> Lc mu X selections apply it (the stripping's
``b2LcMuX`` pattern: track cuts on the Lc daughters and the muon, a Lc vertex, a Lb vertex of Lc + mu,
flight and pointing of the b hadron; thresholds those of issue 23):

==============================  =============================================  ==============================
cut                             semileptonic sample                            prompt sample
==============================  =============================================  ==============================
daughters' IPCHI2_OWNPV > 9     p, K, pi (the Lc's) and mu, each               p, K, pi, each
ENDVERTEX_CHI2/NDOF < 10        Lc vertex and Lb vertex (Lc + mu)              Lc vertex
FDCHI2_OWNPV > 100              Lb                                             Lc (it is the head)
DIRA_OWNPV > 0.999              Lb (visible momentum: Lc + mu)                 Lc
==============================  =============================================  ==============================

The cuts on flight and pointing go on the *head* (the b hadron; for prompt charm the Lc itself, which
is where a prompt Lc would sit in a b-hadron candidate): a prompt Lc (c tau = 60 um) flies about a
millimetre at these momenta (median 0.9 mm), of the order of its FD resolution (median 0.5 mm), so its
FD chi2 is small and the FD cut is what rejects prompt charm; a Lambda_b0 (c tau = 0.44 mm) flies
several millimetres. The daughters' IP chi2 removes tracks from the PV.

**Efficiencies** are per *candidate*: an event whose head was built and vertex-fitted (every track
of it reconstructed with a state, every vertex with ``ENDVERTEX_NDOF >= 1``), with binomial errors
``sqrt(eff (1 - eff) / N)`` and the 68% Clopper-Pearson interval (which stays sensible at 0 or 1).
Printed: the cut flow (each cut alone and cumulative) for both samples, the whole selection's
efficiency, and the prompt sample's rejection by the FD cut alone (``1 - eff(FD cut)``).

**Plots** (mplhep's LHCb2 style), in OUTDIR: ``mcorr.png`` the corrected mass
``MCORR = sqrt(M^2 + pT'^2) + pT'`` (pT' the visible momentum transverse to the flight direction) of
the semileptonic Lb candidates beside their visible mass ``M(Lc mu)``, before and after the
selection, with the Lb mass; ``ipchi2.png`` the smallest IPCHI2_OWNPV of the Lc daughters in both
samples and of the muon; ``fdchi2.png`` FDCHI2_OWNPV of the Lb, of the Lc from the Lb and of the
prompt Lc. ``candidates_lb.parquet`` / ``candidates_lc.parquet`` hold the selection's branches of
every candidate (to re-apply it independently), ``b_hadron_selection.json`` the numbers; the last
line printed is the same JSON.

**Networks against the reference detector** (``--compare-reference``, issue 23's test): the same
generated events (the same seed; the generator's random streams do not depend on the
reconstruction) are also reconstructed by the reference detector itself (its tracking efficiency,
momentum resolution and track states instead of the three networks); printed per sample: the whole
selection's efficiency of both, their relative difference with its statistical error (the two
reconstructions' binomial errors in quadrature: conservative, the events are shared; and the paired
error, a bootstrap over the shared generated events) and the prompt
sample's FD rejection of both; the JSON gets ``"reference"`` per sample. With pile-up, a
candidate is measured against its own PV (the PV of smallest IPCHI2 of the head), which for the
semileptonic Lb (its visible momentum does not point back to its PV) is a pile-up PV in about 10%
of the events; printed: the PVs per event and the fraction of candidates whose own PV is their
signal collision's. The selection's daughters cut is on IPCHI2_OWNPV as issue 23 states it (LHCb's
stripping cuts the daughters' MINIPCHI2 over all PVs, which is also in the candidates file).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from mambah.errors import OutOfRangeWarning
from mambah.physics import pdg_mass
from mambah.simulation import standard_pipeline
from mambah.store import Store

SAMPLES = {
    "Lb -> Lc mu nu": "Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu",
    "prompt Lc": "Lambda_c+ -> p+ K- pi+",
}
IPCHI2_MIN, VTXCHI2NDOF_MAX, FDCHI2_MIN, DIRA_MIN = 9.0, 10.0, 100.0, 0.999


def selection(nt: pd.DataFrame, semileptonic: bool) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The candidates of a sample's ntuple and the pass/fail of each cut (see the module docstring)."""
    head = "Lb" if semileptonic else "Lc"
    vertices = ("Lc", "Lb") if semileptonic else ("Lc",)
    tracks = ("p", "K", "pi", "mu") if semileptonic else ("p", "K", "pi")
    fitted = np.ones(len(nt), dtype=bool)
    for v in vertices:
        fitted &= nt[f"{v}_ENDVERTEX_NDOF"].to_numpy(np.float64) >= 1  # NaN (not built) fails
    for t in tracks:
        fitted &= np.isfinite(nt[f"{t}_IPCHI2_OWNPV"].to_numpy(np.float64))
    cand = nt[fitted].reset_index(drop=True)
    cuts = {"daughters IPCHI2_OWNPV > 9": np.logical_and.reduce(
        [cand[f"{t}_IPCHI2_OWNPV"].to_numpy() > IPCHI2_MIN for t in tracks])}
    cuts["ENDVERTEX_CHI2/NDOF < 10"] = np.logical_and.reduce(
        [cand[f"{v}_ENDVERTEX_CHI2"].to_numpy() / cand[f"{v}_ENDVERTEX_NDOF"].to_numpy() < VTXCHI2NDOF_MAX
         for v in vertices])
    cuts[f"{head} FDCHI2_OWNPV > 100"] = cand[f"{head}_FDCHI2_OWNPV"].to_numpy() > FDCHI2_MIN
    cuts[f"{head} DIRA_OWNPV > 0.999"] = cand[f"{head}_DIRA_OWNPV"].to_numpy() > DIRA_MIN
    return cand, cuts


def efficiency(k: int, n: int) -> dict[str, float]:
    """``k`` of ``n``: the fraction, its binomial error and the 68% Clopper-Pearson interval."""
    from scipy.stats import beta

    f = k / n if n else float("nan")
    lo = float(beta.ppf(0.16, k, n - k + 1)) if k > 0 else 0.0
    hi = float(beta.ppf(0.84, k + 1, n - k)) if k < n else 1.0
    return {"pass": int(k), "of": int(n), "eff": f, "err": float(np.sqrt(f * (1 - f) / n)) if n else float("nan"),
            "cp68": [lo, hi]}


#: events per batch (the pile-up tracks of a batch are in memory while it is processed)
BATCH_EVENTS = 50_000


def simulate(descriptor: str, n_events: int, seed: int, pileup: float | None = None,
             reference: bool = False) -> tuple[pd.DataFrame, dict, dict]:
    """The sample's candidate ntuple (batches of :data:`BATCH_EVENTS` written one by one into an
    in-memory store), its vertexing record and, per model, ``[inputs outside the training range,
    inputs]`` (from the batches' provenance). ``reference``: the same generated events reconstructed
    by the reference detector (efficiency, resolution and track states) instead of the networks."""
    import dataclasses

    from mambah.pipeline import Pipeline, batch_sizes, production_batch
    from mambah.production import out_of_range_counts
    from mambah.reconstruction import Efficiency, Resolution, Vertexing

    pipe = standard_pipeline(descriptor, pid=False, vertexing=True, pileup=pileup)
    if reference:
        pipe = Pipeline([dataclasses.replace(st, model="reference") if isinstance(st, (Efficiency, Resolution, Vertexing))
                         else st for st in pipe.stages])
    rec: dict[str, int] = {}
    oor: dict[str, list[int]] = {}
    with Store("duckdb:///:memory:") as store:
        for i, size in enumerate(batch_sizes(n_events, BATCH_EVENTS)):
            b = pipe.process(production_batch(i, seed, size))  # the batches of pipe.run(...)
            store.write_batch(b)
            for k, v in b.info["reconstruction"]["vertexing"].items():
                if isinstance(v, int):
                    rec[k] = rec.get(k, 0) + v
            for models in out_of_range_counts(b.info).values():
                for model, (bad, n) in models.items():
                    t = oor.setdefault(model, [0, 0])
                    t[0], t[1] = t[0] + bad, t[1] + n
            del b
        nt = store.candidates()
    return nt, rec, oor


def paired_rel_diff_error(cand: pd.DataFrame, passed: np.ndarray, rcand: pd.DataFrame, rpassed: np.ndarray,
                          replicas: int = 400, seed: int = 0) -> float:
    """Error of ``eff_networks / eff_reference - 1`` from a bootstrap over the *generated events*
    (Poisson(1) weight per event, shared by both reconstructions): the two efficiencies are measured
    on the same events, so their fluctuations are correlated and the error is smaller than the two
    binomial errors in quadrature."""
    keys = pd.concat([cand[["batch", "event"]], rcand[["batch", "event"]]]).drop_duplicates().reset_index(drop=True)
    code = pd.MultiIndex.from_frame(keys)
    i_n = code.get_indexer(pd.MultiIndex.from_frame(cand[["batch", "event"]]))
    i_r = code.get_indexer(pd.MultiIndex.from_frame(rcand[["batch", "event"]]))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(replicas):
        w = rng.poisson(1.0, len(keys)).astype(float)
        wn, wr = w[i_n], w[i_r]
        en = (wn * passed).sum() / wn.sum()
        er = (wr * rpassed).sum() / wr.sum()
        out.append(en / er - 1 if er > 0 else np.nan)
    return float(np.nanstd(out))


def plot(results: dict, out: Path) -> list[Path]:
    from mambah.validation.plots import new_figure, save_figure, style

    lb, lc = results["Lb -> Lc mu nu"], results["prompt Lc"]
    paths = []
    m_lb = float(pdg_mass(5122))
    with style():
        fig = new_figure(10, 7.5)
        ax = fig.add_subplot(1, 1, 1)
        edges = np.linspace(2000, 8000, 61)
        top = 0.0
        c, sel = lb["_cand"], lb["_selected"]
        for x, color, label in ((c["Lb_MCORR"], "tab:blue", r"$m_{\rm corr}$"), (c["Lb_M"], "tab:orange",
                                                                                 r"$m(\Lambda_c^+\mu^-)$ visible")):
            h, _, _ = ax.hist(x.to_numpy(), edges, histtype="step", color=color, label=f"{label}, all candidates")
            ax.hist(x.to_numpy()[sel], edges, histtype="step", color=color, ls="--", label=f"{label}, selected")
            top = max(top, float(h.max()))
        ax.axvline(m_lb, color="gray", ls=":", label=r"$m(\Lambda_b^0)$")
        ax.set_xlabel(r"mass [MeV/$c^2$]")
        ax.set_ylabel("candidates / 100 MeV/$c^2$")
        ax.set_ylim(0, 1.3 * top)
        ax.set_title(r"$\Lambda_b^0\to(\Lambda_c^+\to pK^-\pi^+)\mu^-\bar\nu_\mu$: corrected and visible mass")
        ax.legend(fontsize="x-small", loc="upper right")
        paths.append(save_figure(fig, out / "mcorr.png"))

        fig = new_figure(10, 7.5)
        ax = fig.add_subplot(1, 1, 1)
        edges = np.logspace(-2, 5, 57)
        top = 0.0
        for x, color, label in (
                (lb["_cand"][["p_IPCHI2_OWNPV", "K_IPCHI2_OWNPV", "pi_IPCHI2_OWNPV"]].min(axis=1), "tab:blue",
                 r"min over $\Lambda_c^+$ daughters, from $\Lambda_b^0$"),
                (lb["_cand"]["mu_IPCHI2_OWNPV"], "tab:green", r"$\mu^-$ from $\Lambda_b^0$"),
                (lc["_cand"][["p_IPCHI2_OWNPV", "K_IPCHI2_OWNPV", "pi_IPCHI2_OWNPV"]].min(axis=1), "tab:red",
                 r"min over $\Lambda_c^+$ daughters, prompt $\Lambda_c^+$")):
            x = np.clip(x.to_numpy(), edges[0], edges[-1])
            h, _, _ = ax.hist(x, edges, histtype="step", color=color, label=label,
                              weights=np.full(len(x), 1 / max(len(x), 1)))
            top = max(top, float(h.max()))
        ax.axvline(IPCHI2_MIN, color="gray", ls=":", label=r"cut: $\chi^2_{\rm IP} > 9$")
        ax.set_xscale("log")
        ax.set_xlabel(r"$\chi^2_{\rm IP}$ (own PV)")
        ax.set_ylabel("fraction of candidates")
        ax.set_ylim(0, 1.3 * top)
        ax.legend(fontsize="x-small", loc="upper left")
        paths.append(save_figure(fig, out / "ipchi2.png"))

        fig = new_figure(10, 7.5)
        ax = fig.add_subplot(1, 1, 1)
        edges = np.logspace(-2, 6, 65)
        top = 0.0
        for x, color, label in ((lb["_cand"]["Lb_FDCHI2_OWNPV"], "tab:blue", r"$\Lambda_b^0$"),
                                (lb["_cand"]["Lc_FDCHI2_OWNPV"], "tab:cyan", r"$\Lambda_c^+$ from $\Lambda_b^0$"),
                                (lc["_cand"]["Lc_FDCHI2_OWNPV"], "tab:red", r"prompt $\Lambda_c^+$")):
            x = np.clip(x.to_numpy(), edges[0], edges[-1])
            h, _, _ = ax.hist(x, edges, histtype="step", color=color, label=label,
                              weights=np.full(len(x), 1 / max(len(x), 1)))
            top = max(top, float(h.max()))
        ax.axvline(FDCHI2_MIN, color="gray", ls=":", label=r"cut: $\chi^2_{\rm FD} > 100$")
        ax.set_xscale("log")
        ax.set_xlabel(r"$\chi^2_{\rm FD}$ (own PV)")
        ax.set_ylabel("fraction of candidates")
        ax.set_ylim(0, 1.3 * top)
        ax.legend(fontsize="x-small", loc="upper left")
        paths.append(save_figure(fig, out / "fdchi2.png"))
    return paths


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="output directory (plots, candidates, numbers)")
    ap.add_argument("--events", type=int, default=20_000, help="generated events per sample (default 20k)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--pileup", type=float, default=None, metavar="MU",
                    help="mean extra visible pp collisions per event (default 5.5, LHCb Upgrade I; 0: none)")
    ap.add_argument("--samples", choices=("both", "lb", "prompt"), default="both",
                    help="the semileptonic Lb sample, the prompt Lc sample or both (default)")
    ap.add_argument("--compare-reference", action="store_true",
                    help="also reconstruct the same events with the reference detector and compare the efficiencies")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    results = {}
    for k, (name, descriptor) in enumerate(SAMPLES.items()):
        semileptonic = name.startswith("Lb")
        if args.samples != "both" and semileptonic != (args.samples == "lb"):
            continue  # the seed stays args.seed + k: a sample alone is the same sample as in a run of both
        with warnings.catch_warnings():
            # tracks beyond the networks' training range are evaluated at its edge; counted below instead
            warnings.simplefilter("ignore", OutOfRangeWarning)
            nt, vtx, oor = simulate(descriptor, args.events, args.seed + k, args.pileup)
        cand, cuts = selection(nt, semileptonic)
        n = len(cand)
        flow, alone, cum = {}, {}, np.ones(n, dtype=bool)
        for cut, passed in cuts.items():
            cum = cum & passed
            alone[cut] = efficiency(int(passed.sum()), n)
            flow[cut] = efficiency(int(cum.sum()), n)
        head = "Lb" if semileptonic else "Lc"
        fd = f"{head} FDCHI2_OWNPV > 100"
        results[name] = {
            "descriptor": descriptor, "events": int(len(nt)), "candidates": n,
            "pvs_per_event": vtx.get("pvs", 0) / max(len(nt), 1),
            "head_ownpv_is_signal": vtx.get("head_ownpv_is_signal", 0) / max(vtx.get("events_with_head", 0), 1),
            "vertexing": vtx, "out_of_range": oor, "each_cut": alone, "cumulative": flow, "selection": flow[list(cuts)[-1]],
            "fd_cut": alone[fd], "fd_rejection": 1 - alone[fd]["eff"],
            "mcorr_minus_m_min": float((cand[f"{head}_MCORR"] - cand[f"{head}_M"]).min()) if n else float("nan"),
            "_cand": cand, "_selected": cum,
        }
        if args.compare_reference:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OutOfRangeWarning)
                rnt, _, _ = simulate(descriptor, args.events, args.seed + k, args.pileup, reference=True)
            rcand, rcuts = selection(rnt, semileptonic)
            rcum = np.logical_and.reduce(list(rcuts.values())) if len(rcand) else np.zeros(0, dtype=bool)
            rsel = efficiency(int(rcum.sum()), len(rcand))
            nsel = results[name]["selection"]
            rel = nsel["eff"] / rsel["eff"] - 1 if rsel["eff"] > 0 else float("nan")
            rel_err = (np.hypot(nsel["err"], rsel["err"]) / rsel["eff"]) if rsel["eff"] > 0 else float("nan")
            paired = paired_rel_diff_error(cand, cum, rcand, rcum) if rsel["eff"] > 0 else float("nan")
            results[name]["reference"] = {"candidates": len(rcand), "selection": rsel,
                                          "fd_cut": efficiency(int(rcuts[fd].sum()), len(rcand)),
                                          "selection_rel_diff": rel, "selection_rel_diff_err": rel_err,
                                          "selection_rel_diff_err_paired": paired}
        cols = ["batch", "event"] + [c for c in cand.columns if c.endswith(
            ("_IPCHI2_OWNPV", "_MINIPCHI2", "_ENDVERTEX_CHI2", "_ENDVERTEX_NDOF", "_FDCHI2_OWNPV", "_DIRA_OWNPV", "_MCORR", "_M"))]
        cand[cols].to_parquet(out / f"candidates_{head.lower()}.parquet")
    seconds = time.perf_counter() - t0
    paths = plot(results, out) if len(results) == len(SAMPLES) else []  # the plots compare the two samples

    print(f"b-hadron selection, {args.events} generated events per sample ({seconds:.1f} s); efficiencies per "
          "candidate (head built and vertex-fitted), binomial errors:")
    for name, r in results.items():
        edge = "; ".join(f"{m} {100 * b / n:.2g}%" for m, (b, n) in r["out_of_range"].items() if n and b)
        print(f"  {name}: {r['candidates']} candidates of {r['events']} events"
              + (f" (inputs evaluated at the networks' range edges: {edge})" if edge else ""))
        print(f"    {r['pvs_per_event']:.2f} PVs per event fitted from tracks; own PV (head's best IPCHI2) = the signal "
              f"collision's in {100 * r['head_ownpv_is_signal']:.2f}% of the events with a head")
        print(f"    {'cut':<30} {'alone [%]':>18} {'cumulative [%]':>18}")
        for cut in r["each_cut"]:
            a, c = r["each_cut"][cut], r["cumulative"][cut]
            print(f"    {cut:<30} {100 * a['eff']:>9.2f} ± {100 * a['err']:<6.2f} {100 * c['eff']:>9.2f} ± "
                  f"{100 * c['err']:<6.2f}")
        s = r["selection"]
        print(f"    whole selection: {100 * s['eff']:.2f} ± {100 * s['err']:.2f} % (68% CL [{100 * s['cp68'][0]:.2f}, "
              f"{100 * s['cp68'][1]:.2f}] %)")
        if "reference" in r:
            ref = r["reference"]
            print(f"    reference detector on the same events: {ref['candidates']} candidates, whole selection "
                  f"{100 * ref['selection']['eff']:.2f} ± {100 * ref['selection']['err']:.2f} %; networks / reference - 1 "
                  f"= {100 * ref['selection_rel_diff']:+.2f} ± {100 * ref['selection_rel_diff_err']:.2f} % (binomial "
                  f"errors in quadrature), ± {100 * ref['selection_rel_diff_err_paired']:.2f} % (paired: bootstrap "
                  "over the shared events)")
    p = results.get("prompt Lc")
    if p is not None:
        print(f"  prompt Lc rejected by the FD cut alone: {100 * p['fd_rejection']:.2f} ± {100 * p['fd_cut']['err']:.2f} % "
              f"({p['fd_cut']['pass']} of {p['fd_cut']['of']} survive)"
              + (f"; reference detector {100 * (1 - p['reference']['fd_cut']['eff']):.2f} ± "
                 f"{100 * p['reference']['fd_cut']['err']:.2f} %" if "reference" in p else ""))
    if "Lb -> Lc mu nu" in results:
        print(f"  MCORR - M(Lc mu) >= {results['Lb -> Lc mu nu']['mcorr_minus_m_min']:.3g} MeV/c^2 for every Lb candidate")
    print("plots: " + ", ".join(str(x) for x in paths))
    summary = {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in results.items()}
    summary["seconds"] = seconds
    (out / "b_hadron_selection.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
