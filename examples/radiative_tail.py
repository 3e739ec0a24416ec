"""Electrons radiate: the B+ mass of B+ -> K+ e+ e- beside B+ -> K+ mu+ mu- (reference brem).

    python examples/radiative_tail.py out/radiative_tail                 # 20k events per mode
    python examples/radiative_tail.py out/radiative_tail --events 4000   # quicker

Four productions of the same seed, with the opt-in Bremsstrahlung stage of the reference detector
(``standard_pipeline(..., brem="reference")``, ``mambah simulate --brem reference``):

* ``B+ -> K+ e+ e-`` with brem recovery (what an analysis sees),
* ``B+ -> K+ e+ e-`` without recovery (the bare loss: ``Bremsstrahlung(recovery=False)``),
* ``B+ -> K+ mu+ mu-`` (muons do not radiate: the stage leaves them untouched),
* ``B+ -> (J/psi(1S) -> e+ e-) K+`` with recovery.

It plots the reconstructed B+ mass shapes overlaid (mplhep, LHCb style) and prints, per mode, the
fraction of reconstructed electrons with brem added (``X_HASBREMADDED``), the fraction of B+
candidates below 5.1 GeV/c^2 (the radiative tail), and the median B+ mass. The material, the
Bethe-Heitler law and the recovery efficiencies are those of :mod:`mambah.reference.brem`: a
documented stand-in for the LHCb detector, not LHCb truth. The shipped efficiency and resolution
networks and no PID (``pid=False``) keep it quick.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

from mambah import Pipeline
from mambah.errors import OutOfRangeWarning
from mambah.generation.particles import resolve
from mambah.simulation import standard_pipeline
from mambah.store import Store

MODES = {  # label -> (descriptor, brem recovery: True / False / None = no electrons)
    "Kee": ("B+ -> K+ e+ e-", True),
    "Kee_no_recovery": ("B+ -> K+ e+ e-", False),
    "Kmumu": ("B+ -> K+ mu+ mu-", None),
    "JpsiK_ee": ("B+ -> (J/psi(1S) -> e+ e-) K+", True),
}
TAIL_CUT = 5100.0  # MeV/c^2


def pipeline(descriptor: str, recovery: bool | None) -> Pipeline:
    """The standard chain with the reference brem; ``recovery=False`` swaps in the bare loss."""
    pipe = standard_pipeline(descriptor, brem="reference", pid=False)
    if recovery is False:
        from mambah.reconstruction import Bremsstrahlung

        pipe = Pipeline([Bremsstrahlung(recovery=False) if isinstance(s, Bremsstrahlung) else s for s in pipe.stages])
    return pipe


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir", help="where the plot, the numbers (radiative_tail.json) and the store go")
    ap.add_argument("--events", type=int, default=20_000, help="events per mode (default 20000)")
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args(argv)

    from mambah.production import run_production

    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "radiative_tail.duckdb").unlink(missing_ok=True)
    m_b = float(resolve("B+").mass)
    masses, summary = {}, {"b_mass_pdg": m_b, "tail_cut": TAIL_CUT, "modes": {}}
    with Store(f"duckdb:///{out / 'radiative_tail.duckdb'}") as store:
        for label, (descriptor, recovery) in MODES.items():
            with warnings.catch_warnings():  # tracks at the networks' range edges: counted in the provenance
                warnings.simplefilter("ignore", OutOfRangeWarning)
                run_production(pipeline(descriptor, recovery), n_events=args.events, batch_size=args.events,
                               seed=args.seed, store=store, production=label)
            nt = store.candidates(production=label)
            m = nt["B_M"].to_numpy()
            m = m[np.isfinite(m)]
            masses[label] = m
            flags = [nt[c].to_numpy() for c in nt.columns if c.endswith("_HASBREMADDED")]
            flags = np.concatenate([f[f >= 0] for f in flags]) if flags else np.zeros(0)
            summary["modes"][label] = {
                "descriptor": descriptor, "recovery": recovery, "candidates": int(len(m)),
                "electrons": int(len(flags)),
                "brem_added_fraction": float(flags.mean()) if len(flags) else None,
                "tail_fraction": float(np.mean(m < TAIL_CUT)),
                "median_mass": float(np.median(m)),
            }
    print(f"B+ mass {m_b:.2f} MeV/c^2; tail: candidates below {TAIL_CUT:.0f} MeV/c^2")
    for label, s in summary["modes"].items():
        frac = "-" if s["brem_added_fraction"] is None else f"{s['brem_added_fraction']:.3f}"
        print(f"  {label:<16} candidates {s['candidates']:>6}  brem added {frac:>5}  tail {s['tail_fraction']:.3f}  "
              f"median M {s['median_mass']:.1f}")
    (out / "radiative_tail.json").write_text(json.dumps(summary, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep

    plt.style.use(mplhep.style.LHCb2)
    fig, ax = plt.subplots(figsize=(12, 8))
    names = {"Kee": r"$K^+e^+e^-$ (brem recovery)", "Kee_no_recovery": r"$K^+e^+e^-$ (no recovery)",
             "Kmumu": r"$K^+\mu^+\mu^-$", "JpsiK_ee": r"$J/\psi(\to e^+e^-)K^+$ (brem recovery)"}
    top = 0.0
    for label, m in masses.items():
        h, _, _ = ax.hist(m, bins=80, range=(4300, 5600), histtype="step", density=True, label=names[label])
        top = max(top, float(h.max()))
    ax.axvline(m_b, color="grey", ls=":")
    ax.set_xlabel(r"$m(B^+)$ [MeV/$c^2$]")
    ax.set_ylabel("candidates (normalised)")
    ax.set_yscale("log")
    ax.set_ylim(top=3 * top)
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(out / "radiative_tail.png", dpi=80)
    print(f"plot in {out / 'radiative_tail.png'}, numbers in {out / 'radiative_tail.json'}")
    return summary


if __name__ == "__main__":
    main()
