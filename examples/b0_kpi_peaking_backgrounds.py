"""Peaking backgrounds of B0 -> K+ pi-: the two-body b-hadron decays reconstructed as K+ pi-, and how
many of them survive the PID requirements, from the PID chain and from the reference detector.

    python examples/b0_kpi_peaking_backgrounds.py out/b0_kpi                 # 10k events per channel
    python examples/b0_kpi_peaking_backgrounds.py out/b0_kpi --events 100000
    python examples/b0_kpi_peaking_backgrounds.py out/b0_kpi --probnn 0.5,0.5   # ProbNN requirements instead

``--probnn A,B`` replaces the PIDK requirements by ``ProbNNk > A`` on the kaon candidate and
``ProbNNpi > B`` on the pion candidate (issue 24): the chain's ProbNN step (``pid-<s>-probnn``; every
species needs one, else the script stops and says which) against the reference detector's own ProbNN
(:mod:`mambah.reference.probnn`) for the same tracks.

Five productions into one store (``<out>/b0_kpi.duckdb``), each a channel reconstructed as B0 -> K+ pi-
with mass-hypothesis swaps (``reconstruct_as``, as LHCb's SubstitutePID):

==========================  ==========================  ===========================================
channel                     kaon candidate / pion cand.  swaps
==========================  ==========================  ===========================================
B0 -> K+ pi- (signal)       K+ / pi-                    none
B0 -> pi+ pi-               pi+ / pi-                   ``B0 -> ^pi+ pi- : K+``
B_s0 -> K+ K-               K+ / K-                     ``B_s0 -> K+ ^K- : pi-``
Lambda_b0 -> p K-           p+ / K-                     ``p+=K+``, ``K-=pi-``
Lambda_b0 -> p pi-          p+ / pi-                    ``p+=K+``
==========================  ==========================  ===========================================

(The decays as written, no charge conjugates; equal numbers of generated events per channel, so the
surviving fractions are per reconstructed candidate, not yields: multiply by production cross-section,
branching fraction and these fractions for a yield.)

The PID variables of every track are those of its *true* species, drawn by that species' chain;
the requirements ``PIDK > 5`` on the kaon candidate and ``PIDK < 0`` on the pion candidate then give
each channel's surviving fraction (the candidates with both tracks reconstructed that pass). The
same fraction from the reference detector's own response, drawn for the same tracks (p, eta,
nTracks, charge, true species: :func:`mambah.validation.misid.reference_response`), stands beside
it. The K+ pi- mass shapes after the requirements (chain: solid, reference: dashed; unit area) are
overlaid in ``<out>/b0_kpi_peaking_backgrounds.png`` (mplhep's LHCb style when mplhep is installed,
plain matplotlib otherwise; the script says which). The last line is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from mambah.errors import OutOfRangeWarning
from mambah.physics import pdg_charge
from mambah.pid.stage import out_of_range_totals
from mambah.production import run_production
from mambah.simulation import standard_pipeline
from mambah.store import Store
from mambah.validation.misid import reference_response

#: name -> (descriptor, swaps): the kaon candidate is the first track, the pion candidate the second
CHANNELS = {
    "B0 -> K+ pi-": ("B0 -> K+ pi-", []),
    "B0 -> pi+ pi-": ("B0 -> pi+ pi-", ["B0 -> ^pi+ pi- : K+"]),
    "B_s0 -> K+ K-": ("B_s0 -> K+ K-", ["B_s0 -> K+ ^K- : pi-"]),
    "Lambda_b0 -> p K-": ("Lambda_b0 -> p+ K-", ["p+=K+", "K-=pi-"]),
    "Lambda_b0 -> p pi-": ("Lambda_b0 -> p+ pi-", ["p+=K+"]),
}
LABELS = {
    "B0 -> K+ pi-": r"$B^0\to K^+\pi^-$ (signal)",
    "B0 -> pi+ pi-": r"$B^0\to\pi^+\pi^-$",
    "B_s0 -> K+ K-": r"$B^0_s\to K^+K^-$",
    "Lambda_b0 -> p K-": r"$\Lambda^0_b\to pK^-$",
    "Lambda_b0 -> p pi-": r"$\Lambda^0_b\to p\pi^-$",
}
#: the ntuple's prefixes: head, kaon candidate, pion candidate (the same for every channel)
PREFIXES = {0: "B", 1: "Kcand", 2: "picand"}
KAON_CUT, PION_CUT = 5.0, 0.0
MASS_RANGE = (4800.0, 5900.0)
COLORS = ("black", "tab:orange", "tab:green", "tab:red", "tab:purple")


def _frac(k: int, n: int) -> tuple[float, float]:
    f = k / n if n else float("nan")
    return f, (float(np.sqrt(f * (1 - f) / n)) if n else float("nan"))


def channel_result(nt: pd.DataFrame, seed: int, probnn: tuple[float, float] | None = None) -> dict:
    """Surviving fractions of one channel's candidates with the chain's and the reference's PID
    (``probnn``: ProbNNk > A on the kaon candidate and ProbNNpi > B on the pion candidate instead of
    the PIDK requirements)."""
    cand = nt[np.isfinite(nt["B_M"].to_numpy())].reset_index(drop=True)
    resp = {}
    for pre in ("Kcand", "picand"):
        trueid = cand[f"{pre}_TRUEID"].to_numpy(np.int64)
        tracks = pd.DataFrame({"P": cand[f"{pre}_P"].to_numpy(float), "ETA": cand[f"{pre}_ETA"].to_numpy(float),
                               "nTracks": cand["nTracks"].to_numpy(float),
                               "charge": pdg_charge(trueid).astype(float), "TRUEID": trueid})
        resp[pre] = reference_response(tracks, seed=np.random.default_rng([seed, len(pre)]))
    if probnn is None:
        chain_pass = (cand["Kcand_PIDK"].to_numpy() > KAON_CUT) & (cand["picand_PIDK"].to_numpy() < PION_CUT)
        ref_pass = (resp["Kcand"]["PIDK"].to_numpy() > KAON_CUT) & (resp["picand"]["PIDK"].to_numpy() < PION_CUT)
    else:
        missing = [b for b in ("Kcand_ProbNNk", "picand_ProbNNpi") if b not in cand]
        if missing:
            raise SystemExit(f"--probnn: the ntuple has no {missing}: the PID chains have no ProbNN step "
                             "(models pid-<s>-probnn; see examples/train_pid_chain.py --roles probnn)")
        a, b = probnn
        chain_pass = (cand["Kcand_ProbNNk"].to_numpy() > a) & (cand["picand_ProbNNpi"].to_numpy() > b)
        ref_pass = (resp["Kcand"]["ProbNNk"].to_numpy() > a) & (resp["picand"]["ProbNNpi"].to_numpy() > b)
    n = len(cand)
    fc, ec = _frac(int(chain_pass.sum()), n)
    fr, er = _frac(int(ref_pass.sum()), n)
    return {"events": int(len(nt)), "candidates": n, "chain": fc, "chain_err": ec, "reference": fr,
            "reference_err": er, "_mass": cand["B_M"].to_numpy(), "_chain_pass": chain_pass, "_ref_pass": ref_pass}


def plot(results: dict, out: Path, title: str = r"PIDK$(K)>5$, PIDK$(\pi)<0$: survival") -> tuple[Path, str]:
    from mambah.validation.plots import new_figure, save_figure, style

    try:
        import mplhep  # noqa: F401

        which = "mplhep LHCb2 style"
    except ImportError:
        which = "plain matplotlib (mplhep is not installed)"
    edges = np.linspace(*MASS_RANGE, 56)
    with style():
        fig = new_figure(10, 7.5)
        ax = fig.add_subplot(1, 1, 1)
        top = 0.0
        for i, (name, r) in enumerate(results.items()):
            color = COLORS[i % len(COLORS)]
            for sel, ls, tag in ((r["_chain_pass"], "-", "chain"), (r["_ref_pass"], "--", "reference")):
                m = r["_mass"][sel]
                if not len(m):
                    continue
                h, _ = np.histogram(m, edges)
                if h.sum():
                    top = max(top, float(h.max() / h.sum()))
                    ax.stairs(h / h.sum(), edges, color=color, ls=ls,
                              label=f"{LABELS[name]}, {100 * r[tag]:.2g}%" if tag == "chain" else None)
        ax.plot([], [], color="gray", ls="-", label="PID chain")
        ax.plot([], [], color="gray", ls="--", label="reference detector")
        ax.set_xlabel(r"$m(K^+\pi^-)$ [MeV/$c^2$]")
        ax.set_ylabel("fraction of candidates / 20 MeV/$c^2$")
        ax.set_xlim(*MASS_RANGE)
        ax.set_ylim(0.0, 1.15 * top if top > 0 else 1.0)
        ax.legend(fontsize="x-small", title=title, title_fontsize="x-small",
                  loc="upper left")
        path = save_figure(fig, out / "b0_kpi_peaking_backgrounds.png")
    return path, which


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="output directory (store and plot)")
    ap.add_argument("--events", type=int, default=10_000, help="generated events per channel (default 10k)")
    ap.add_argument("--batch-size", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--probnn", default=None, metavar="A,B",
                    help="require ProbNNk > A on the kaon candidate and ProbNNpi > B on the pion candidate instead of "
                         "the PIDK requirements")
    ap.add_argument("--models", default=None, help="models directory (default: the shipped models)")
    args = ap.parse_args(argv)
    probnn = None
    if args.probnn is not None:
        try:
            probnn = tuple(float(x) for x in args.probnn.split(","))
            assert len(probnn) == 2
        except (ValueError, AssertionError):
            ap.error(f"--probnn takes two numbers A,B (ProbNNk > A, ProbNNpi > B), not {args.probnn!r}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    db = out / "b0_kpi.duckdb"
    db.unlink(missing_ok=True)

    results = {}
    with Store(str(db)) as store:
        for k, (name, (descriptor, swaps)) in enumerate(CHANNELS.items()):
            prod = f"ch{k}"
            with warnings.catch_warnings():
                # tracks beyond the PID models' training range are clamped; counted below instead
                warnings.simplefilter("ignore", OutOfRangeWarning)
                run_production(standard_pipeline(descriptor, reconstruct_as=swaps or None, models_dir=args.models,
                                                  probnn=probnn is not None),
                               n_events=args.events,
                               batch_size=min(args.batch_size, args.events), seed=args.seed + k, store=store,
                               production=prod)
            nt = store.candidates(production=prod, prefixes=PREFIXES)
            results[name] = channel_result(nt, args.seed + k, probnn)
            oor = out_of_range_totals(prod)
            # the flags classifier is every chain's first step: it sees every track of its species
            results[name]["pid_out_of_range"] = max((c / n for m, (c, n) in oor.items() if n and m.endswith("-flags")),
                                                    default=0.0)

    req = ("PIDK > 5 on the kaon candidate and PIDK < 0 on the pion candidate" if probnn is None else
           f"ProbNNk > {probnn[0]:g} on the kaon candidate and ProbNNpi > {probnn[1]:g} on the pion candidate")
    print(f"B0 -> K+ pi- peaking backgrounds, {args.events} generated events per channel; after {req}, "
          "the surviving fraction of the reconstructed candidates:")
    print(f"  {'channel':<22} {'candidates':>10} {'PID chain [%]':>16} {'reference [%]':>16} {'(chain-ref)/err':>16}")
    for name, r in results.items():
        z = (r["chain"] - r["reference"]) / np.hypot(r["chain_err"], r["reference_err"]) \
            if np.hypot(r["chain_err"], r["reference_err"]) > 0 else float("nan")
        print(f"  {name:<22} {r['candidates']:>10} {100 * r['chain']:>8.3f} ± {100 * r['chain_err']:<5.3f} "
              f"{100 * r['reference']:>8.3f} ± {100 * r['reference_err']:<5.3f} {z:>+16.1f}")
    worst = max(r["pid_out_of_range"] for r in results.values())
    print(f"  (up to {100 * worst:.1f}% of a species' tracks in a channel lie outside its PID chain's training range, "
          "mostly p > 150 GeV/c, and are evaluated at the range's edge; the reference detector has no such range)")
    path, which = plot(results, out) if probnn is None else \
        plot(results, out, r"ProbNNk$(K)>%g$, ProbNN$\pi(\pi)>%g$: survival" % probnn)
    print(f"plot: {path} ({which})")
    summary = {name: {k: v for k, v in r.items() if not k.startswith("_")} for name, r in results.items()}
    print(json.dumps({"events": args.events, "channels": summary, "plot": str(path), "style": which,
                      "requirement": req}))
    return summary


if __name__ == "__main__":
    main()
