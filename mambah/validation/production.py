"""QA of a simulated production in the event store (``mambah validate --db URL``).

What a user looks at before using a sample:

* **events**: number of batches and events, the occupancy (``n_tracks``) distribution;
* **kinematics per species** of the reconstructed tracks (p, pT, η; species = ``|pid|``);
* **PID per species**: every PID column that was produced (mean, spread, quantiles, fraction of
  NaN = not produced), and the efficiency of typical requirements (``pid_k > 0``, ``pid_k > 5``,
  ``pid_p > 5``, ``pid_mu > 0``, ``pid_e > 0``, ``is_muon``) versus p for every species — the
  identification and mis-identification curves;
* **reconstruction efficiency** of the charged stable MC particles (e, μ, π, K, p) versus the true
  p and η;
* **reconstructed masses of composites**: from the ``vertices`` table where the production wrote
  composites, and always from the truth-matched reconstructed tracks: for every decaying MC
  particle whose charged stable descendants were all reconstructed, the invariant mass of the sum
  of their reconstructed four-momenta (each track with its mass hypothesis), beside the PDG mass.
  For a decay with neutral or undetected daughters (a neutrino, a photon) this is the *visible*
  mass and lies below the PDG mass.

Reads only through :class:`mambah.store.Store` (``read("events")``, ``read("mc_particles")``,
``read("particles")``, ``read("vertices")``).
"""

from __future__ import annotations

import datetime as _dt
import html
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mambah._version import __version__
from mambah.errors import ConfigurationError, DataError
from mambah.physics import TRACKABLE_PIDS, particle_mass, species_of_pdg
from mambah.physics import kinematics as kin
from mambah.progress import progress
from mambah.validation.cuts import PRODUCTION_CUTS

log = logging.getLogger(__name__)

__all__ = ["validate_production", "production_headline", "CHARGED_STABLE", "PID_REQUIREMENTS"]

#: |PDG id| of the long-lived charged particles that become tracks (:data:`mambah.physics.TRACKABLE_PIDS`)
CHARGED_STABLE = TRACKABLE_PIDS

#: typical PID requirements: (label, column, op, value), from :data:`mambah.validation.cuts.PRODUCTION_CUTS`
PID_REQUIREMENTS = [(c.label, c.column, c.op, c.value) for c in PRODUCTION_CUTS]

_MAX_DEPTH = 32


def _name(pid: int) -> str:
    try:
        from particle import Particle

        return Particle.from_pdgid(int(pid)).name
    except Exception:  # unknown id: keep the number (the particle package raises several types)
        return str(int(pid))


def _species(apid: int) -> str:
    """Name of a charged stable species by |PDG id| (both charges together)."""
    return species_of_pdg(int(apid)) or _name(int(apid))


def _pdg_mass(pid: int) -> float | None:
    try:
        m = particle_mass(int(pid))
    except ConfigurationError:  # an id the particle package does not know
        return None
    return m if np.isfinite(m) else None


def _kin(px, py, pz):
    return kin.p_mag(px, py, pz), kin.pt(px, py), kin.eta(px, py, pz)


def _stats(x: np.ndarray) -> dict:
    x = np.asarray(x, dtype=float)
    ok = np.isfinite(x)
    out = {"n": int(len(x)), "nan_fraction": float(1 - ok.mean()) if len(x) else None}
    if ok.any():
        q = np.quantile(x[ok], [0.05, 0.25, 0.5, 0.75, 0.95])
        out.update(mean=float(x[ok].mean()), std=float(x[ok].std()), q05=float(q[0]), q25=float(q[1]),
                   median=float(q[2]), q75=float(q[3]), q95=float(q[4]))
    return out


def _eff_vs(x: np.ndarray, passed: np.ndarray, edges: np.ndarray) -> dict:
    """Binomial efficiency per bin; values beyond the edges count in the first/last bin (the p edges
    stop at the 98% quantile so that the momentum tail does not squeeze the plot)."""
    nb = len(edges) - 1
    b = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, nb - 1)
    n = np.bincount(b, minlength=nb).astype(float)
    k = np.bincount(b, weights=passed.astype(float), minlength=nb)
    with np.errstate(divide="ignore", invalid="ignore"):
        eff = k / n
        err = np.sqrt(eff * (1 - eff) / n)  # binomial
    return {"edges": edges.tolist(), "n": n.astype(int).tolist(),
            "eff": [None if not np.isfinite(v) else float(v) for v in eff],
            "err": [None if not np.isfinite(v) else float(v) for v in err]}


def _ancestors(mother: np.ndarray, key_batch: np.ndarray, start: np.ndarray, table_index: pd.Index):
    """For rows ``start`` (positions), yield ``(row position, ancestor position)`` for all ancestors.

    ``mother`` holds batch-local indices; ``table_index`` maps ``(batch, index)`` to positions.
    One vectorised step per generation.
    """
    pairs_child, pairs_anc = [], []
    cur = start.copy()
    child = start.copy()
    for _ in range(_MAX_DEPTH):
        m = mother[cur]
        has = m >= 0
        if not has.any():
            break
        cur, child = cur[has], child[has]
        pos = table_index.get_indexer(pd.MultiIndex.from_arrays([key_batch[cur], m[has]]))
        ok = pos >= 0
        cur, child = pos[ok], child[ok]
        pairs_child.append(child)
        pairs_anc.append(cur)
    if not pairs_child:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(pairs_child), np.concatenate(pairs_anc)


def _composite_masses(mc: pd.DataFrame, parts: pd.DataFrame) -> dict[str, dict]:
    """Masses of decaying MC particles built from their truth-matched reconstructed tracks."""
    if mc.empty or parts.empty:
        return {}
    mc_index = pd.MultiIndex.from_arrays([mc["batch"].to_numpy(), mc["index"].to_numpy()])
    mother = mc["mother"].to_numpy()
    batch = mc["batch"].to_numpy()
    stable_charged = np.isin(np.abs(mc["pid"].to_numpy()), CHARGED_STABLE) & (mc["decay_vertex"].to_numpy() < 0)
    # how many charged stable descendants each MC particle has
    sc_pos = np.flatnonzero(stable_charged)
    _, anc = _ancestors(mother, batch, sc_pos, mc_index)
    n_needed = np.bincount(anc, minlength=len(mc))
    # reconstructed tracks with a truth link, and the four-momentum sums per ancestor
    linked = parts[parts["mc_particle"].to_numpy() >= 0]
    tpos = mc_index.get_indexer(pd.MultiIndex.from_arrays([linked["batch"].to_numpy(), linked["mc_particle"].to_numpy()]))
    ok = tpos >= 0
    linked, tpos = linked[ok], tpos[ok]
    # one reconstructed track per MC particle (the first) so clones do not double count
    tpos_u, first = np.unique(tpos, return_index=True)
    linked = linked.iloc[first]
    child, anc = _ancestors(mother, batch, tpos_u, mc_index)
    if len(anc) == 0:
        return {}
    row_of = np.searchsorted(tpos_u, child)
    sums = {}
    for c in ("px", "py", "pz", "e"):
        sums[c] = np.bincount(anc, weights=linked[c].to_numpy(float)[row_of], minlength=len(mc))
    n_have = np.bincount(anc, minlength=len(mc))
    full = (n_have > 0) & (n_have == n_needed)
    m2 = sums["e"] ** 2 - sums["px"] ** 2 - sums["py"] ** 2 - sums["pz"] ** 2
    mass = np.sqrt(np.clip(m2, 0, None))
    apid = np.abs(mc["pid"].to_numpy())
    out = {}
    decaying = mc["decay_vertex"].to_numpy() >= 0
    for pid in np.unique(apid[decaying]):
        sel = decaying & (apid == pid)
        f = sel & full
        entry = {"pid": int(pid), "n": int(sel.sum()), "n_fully_reconstructed": int(f.sum()),
                 "pdg_mass": _pdg_mass(int(pid)), "source": "truth-matched reconstructed tracks",
                 "values": mass[f]}
        entry.update({f"mass_{k}": v for k, v in _stats(mass[f]).items() if k not in ("n", "nan_fraction")})
        out[_name(int(pid))] = entry
    return out


def validate_production(
    url: str | os.PathLike,
    report_dir: str | os.PathLike | None = None,
    *,
    batches: Sequence[int] | None = None,
    n_bins: int = 10,
    show_progress: bool = False,
) -> dict:
    """QA of the production stored at ``url`` (see the module doc); optionally a report folder.

    Args:
        url: store URL or path (as :class:`mambah.store.Store` accepts).
        report_dir: write ``index.html``, ``summary.json`` and PNGs there (atomic, as for
            :func:`~mambah.validation.validate`).
        batches: only these batch ids (default: all).
        n_bins: quantile bins of the efficiency curves.
        show_progress: tqdm bar over the steps.

    Returns:
        The summary (content of ``summary.json``).
    """
    from mambah.store import Store
    from mambah.validation.reportdir import check_dir, clean_json

    if report_dir is not None:
        check_dir(Path(report_dir))
    steps = progress(total=5, enabled=show_progress, desc="production QA", unit="step")
    try:
        with Store(url, create=False) as st:
            steps.set_postfix_str("read")
            events = st.read("events", batches=batches)
            mc = st.read("mc_particles", columns=["batch", "index", "pid", "px", "py", "pz", "decay_vertex", "mother",
                                                  "reconstructed"], batches=batches)
            parts = st.read("particles", batches=batches)
            vertices = st.read("vertices", batches=batches)
            store_url = st.url
            steps.update(1)
        if events.empty:
            raise DataError(f"the store {store_url} holds no events" + (f" in batches {list(batches)}" if batches else "")
                            + ": nothing to validate")
        summary: dict = {
            "mode": "production", "store": store_url,
            "n_batches": int(events["batch"].nunique()), "n_events": int(len(events)),
            "rows": {"mc_particles": int(len(mc)), "particles": int(len(parts)), "vertices": int(len(vertices))},
            "events": {"n_tracks": _stats(events["n_tracks"].to_numpy())},
            "mambah_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        # kinematics and PID per species of the reconstructed tracks
        steps.set_postfix_str("species")
        p, pt, eta = _kin(*(parts[c].to_numpy(float) for c in ("px", "py", "pz")))
        apid = np.abs(parts["pid"].to_numpy())
        track = np.isin(apid, CHARGED_STABLE)
        pid_cols = [c for c in parts.columns if c.startswith(("rich_", "pid_", "muon_", "is_muon", "probnn"))]
        species = {}
        arrays = {}
        p_edges = None
        if track.any():
            p_edges = np.unique(np.quantile(p[track], np.linspace(0, 0.98, n_bins + 1)))
        for s in sorted(np.unique(apid[track])):
            sel = apid == s
            name = _species(int(s))
            entry = {"pid": int(s), "n": int(sel.sum()), "p": _stats(p[sel]), "pt": _stats(pt[sel]),
                     "eta": _stats(eta[sel]), "pid_variables": {}, "pid_requirements": {}}
            arrays[name] = {"p": p[sel], "pt": pt[sel], "eta": eta[sel]}
            for c in pid_cols:
                x = parts[c].to_numpy(float)[sel]
                entry["pid_variables"][c] = _stats(x)
                arrays[name][c] = x
            for cut in PRODUCTION_CUTS:
                label, col = cut.label, cut.column
                if col not in parts.columns:
                    continue
                x = parts[col].to_numpy(float)[sel]
                passed = cut.passes(x)
                entry["pid_requirements"][label] = {"eff": float(np.mean(passed)) if len(x) else None,
                                                    "vs_p": _eff_vs(p[sel], passed, p_edges)}
            species[name] = entry
        summary["species"] = species
        steps.update(1)
        # reconstruction efficiency of charged stable MC particles
        steps.set_postfix_str("efficiency")
        mp, _, meta = _kin(*(mc[c].to_numpy(float) for c in ("px", "py", "pz")))
        mapid = np.abs(mc["pid"].to_numpy())
        reco = {}
        charged = np.isin(mapid, CHARGED_STABLE) & (mc["decay_vertex"].to_numpy() < 0)
        if charged.any():
            mp_edges = np.unique(np.quantile(mp[charged], np.linspace(0, 0.98, n_bins + 1)))
            eta_ok = np.isfinite(meta) & charged
            me_edges = np.unique(np.quantile(meta[eta_ok], np.linspace(0, 1, n_bins + 1))) if eta_ok.any() else None
            for s in sorted(np.unique(mapid[charged])):
                sel = charged & (mapid == s)
                r = mc["reconstructed"].to_numpy()[sel].astype(bool)
                entry = {"n": int(sel.sum()), "eff": float(r.mean()), "vs_p": _eff_vs(mp[sel], r, mp_edges)}
                if me_edges is not None:
                    fe = np.isfinite(meta[sel])
                    entry["vs_eta"] = _eff_vs(meta[sel][fe], r[fe], me_edges)
                reco[_species(int(s))] = entry
        summary["reco_efficiency"] = reco
        steps.update(1)
        # composites
        steps.set_postfix_str("composites")
        comps = _composite_masses(mc, parts)
        if not vertices.empty:
            vpos = pd.MultiIndex.from_arrays([parts["batch"].to_numpy(), parts["index"].to_numpy()]).get_indexer(
                pd.MultiIndex.from_arrays([vertices["batch"].to_numpy(), vertices["particle"].to_numpy()]))
            vp = np.where(vpos >= 0, np.abs(parts["pid"].to_numpy()[np.clip(vpos, 0, None)]), -1)
            for s in np.unique(vp[vp > 0]):
                m = vertices["m"].to_numpy(float)[vp == s]
                entry = {"pid": int(s), "n": int(len(m)), "pdg_mass": _pdg_mass(int(s)),
                         "source": "vertices table", "values": m}
                entry.update({f"mass_{k}": v for k, v in _stats(m).items() if k not in ("n", "nan_fraction")})
                comps[_name(int(s)) + " (vertices)"] = entry
        mass_values = {k: v.pop("values") for k, v in comps.items()}
        summary["composites"] = comps
        steps.update(1)
        steps.set_postfix_str("report")
        if report_dir is not None:
            _write_production_report(summary, Path(report_dir), arrays, mass_values, events)
        steps.update(1)
    finally:
        steps.close()
    return clean_json(summary)


def _write_production_report(summary: dict, report_dir: Path, arrays: dict, masses: dict, events: pd.DataFrame) -> None:
    from mambah.validation.plots import new_figure, save_figure, style
    from mambah.validation.reportdir import finalize, prepare_dir, slug, write_json

    tmp = prepare_dir(report_dir)
    plots: dict[str, list[str]] = {"events": [], "kinematics": [], "pid": [], "efficiency": [], "composites": []}
    try:
        with style():
            fig = new_figure(6, 4.5)
            ax = fig.add_subplot()
            ax.hist(events["n_tracks"].to_numpy(), bins=50, histtype="step", color="black")
            ax.set_xlabel("n_tracks")
            ax.set_ylabel("events")
            save_figure(fig, tmp / "events_n_tracks.png")
            plots["events"].append("events_n_tracks.png")
            if arrays:
                fig = new_figure(15, 4.5)
                fig.subplots_adjust(wspace=0.3)
                for j, (q, label, scale) in enumerate((("p", "p [GeV]", 1e-3), ("pt", "pT [GeV]", 1e-3), ("eta", "η", 1))):
                    ax = fig.add_subplot(1, 3, j + 1)
                    allx = np.concatenate([a[q][np.isfinite(a[q])] * scale for a in arrays.values()])
                    edges = np.linspace(*np.quantile(allx, [0.0, 0.99]), 51) if len(allx) else 10
                    for name, a in arrays.items():
                        x = a[q][np.isfinite(a[q])] * scale
                        if len(x):
                            ax.hist(x, bins=edges, histtype="step", density=True, label=name)
                    ax.set_xlabel(label)
                    ax.legend(fontsize="x-small")
                save_figure(fig, tmp / "kinematics.png")
                plots["kinematics"].append("kinematics.png")
            for name, a in arrays.items():
                cols = [c for c in a if c not in ("p", "pt", "eta") and np.isfinite(a[c]).any()]
                if not cols:
                    continue
                nc = 4
                nr = (len(cols) + nc - 1) // nc
                fig = new_figure(4 * nc, 3.2 * nr)
                for j, c in enumerate(cols):
                    ax = fig.add_subplot(nr, nc, j + 1)
                    x = a[c][np.isfinite(a[c])]
                    ax.hist(x, bins=50, histtype="step", color="black")
                    ax.set_xlabel(c, fontsize="small")
                    ax.tick_params(labelsize="x-small")
                fig.suptitle(f"PID variables of {name} tracks", fontsize="small")
                fn = f"pid_{slug(name)}.png"
                save_figure(fig, tmp / fn)
                plots["pid"].append(fn)
            for label, *_ in PID_REQUIREMENTS:
                curves = {n: s["pid_requirements"][label]["vs_p"] for n, s in summary["species"].items()
                          if label in s["pid_requirements"]}
                if not curves:
                    continue
                fig = new_figure(6, 4.5)
                ax = fig.add_subplot()
                for n, v in curves.items():
                    e = np.asarray(v["edges"]) * 1e-3
                    c = 0.5 * (e[1:] + e[:-1])
                    y = np.array([np.nan if t is None else t for t in v["eff"]], dtype=float)
                    err = np.array([np.nan if t is None else t for t in v["err"]], dtype=float)
                    ax.errorbar(c, y, yerr=err, xerr=0.5 * np.diff(e), fmt="o", ms=3, label=n)
                ax.set_ylim(-0.05, 1.1)
                ax.set_xlabel("p [GeV]")
                ax.set_ylabel(f"eff({label})")
                ax.legend(fontsize="x-small")
                fn = f"pid_eff_{slug(label)}.png"
                save_figure(fig, tmp / fn)
                plots["efficiency"].append(fn)
            if summary["reco_efficiency"]:
                fig = new_figure(11, 4.5)
                for j, key in enumerate(("vs_p", "vs_eta")):
                    ax = fig.add_subplot(1, 2, j + 1)
                    for n, s in summary["reco_efficiency"].items():
                        if key not in s:
                            continue
                        e = np.asarray(s[key]["edges"]) * (1e-3 if key == "vs_p" else 1)
                        y = np.array([np.nan if t is None else t for t in s[key]["eff"]], dtype=float)
                        ax.errorbar(0.5 * (e[1:] + e[:-1]), y, xerr=0.5 * np.diff(e), fmt="o", ms=3, label=n)
                    ax.set_ylim(-0.05, 1.1)
                    ax.set_xlabel("true p [GeV]" if key == "vs_p" else "true η")
                    ax.set_ylabel("reconstruction efficiency")
                    ax.legend(fontsize="x-small")
                save_figure(fig, tmp / "reco_efficiency.png")
                plots["efficiency"].append("reco_efficiency.png")
            for name, m in masses.items():
                m = m[np.isfinite(m)]
                if len(m) == 0:
                    continue
                fig = new_figure(6, 4.5)
                ax = fig.add_subplot()
                lo, hi = np.quantile(m, [0.005, 0.995])
                if not hi > lo:
                    lo, hi = lo - 1, hi + 1
                ax.hist(m, bins=60, range=(lo, hi), histtype="step", color="black", label=name)
                pdg = summary["composites"][name].get("pdg_mass")
                if pdg is not None and lo <= pdg <= hi:
                    ax.axvline(pdg, color="tab:red", ls="--", label=f"PDG {pdg:.2f} MeV")
                ax.set_xlabel("reconstructed mass [MeV]")
                ax.legend(fontsize="x-small")
                fn = f"mass_{slug(name)}.png"
                save_figure(fig, tmp / fn)
                plots["composites"].append(fn)
        summary["plots"] = plots
        from mambah.validation.reportdir import clean_json

        write_json(tmp / "summary.json", summary)
        (tmp / "index.html").write_text(_render_production(clean_json(summary)))
        finalize(tmp, report_dir)
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


def _f(v, fmt=".4g") -> str:
    return "–" if v is None else format(v, fmt)


def _requirements(v: dict) -> str:
    return ", ".join(f"{k}: {_f(r['eff'], '.3f')}" for k, r in v["pid_requirements"].items())


def _render_production(s: dict) -> str:
    e = html.escape
    head = [("store", s["store"]), ("batches", s["n_batches"]), ("events", s["n_events"]),
            ("MC particles", s["rows"]["mc_particles"]), ("reconstructed particles", s["rows"]["particles"]),
            ("vertices", s["rows"]["vertices"]), ("mean n_tracks", _f(s["events"]["n_tracks"].get("mean")))]
    sp_rows = "".join(
        f"<tr><td>{e(n)}</td><td>{v['n']}</td><td>{_f(v['p'].get('median'))}</td><td>{_f(v['pt'].get('median'))}</td>"
        f"<td>{_f(v['eta'].get('median'))}</td><td>{e(_requirements(v))}</td></tr>"
        for n, v in s["species"].items())
    re_rows = "".join(f"<tr><td>{e(n)}</td><td>{v['n']}</td><td>{_f(v['eff'], '.4f')}</td></tr>"
                      for n, v in s["reco_efficiency"].items())
    co_rows = "".join(
        f"<tr><td>{e(n)}</td><td>{e(v['source'])}</td><td>{v['n']}</td><td>{v.get('n_fully_reconstructed', v['n'])}</td>"
        f"<td>{_f(v.get('mass_median'), '.2f')}</td><td>{_f(v.get('mass_std'), '.2f')}</td><td>{_f(v.get('pdg_mass'), '.2f')}</td></tr>"
        for n, v in s["composites"].items())
    titles = {"events": "Events", "kinematics": "Kinematics of reconstructed tracks per species",
              "pid": "PID variables per species", "efficiency": "Efficiencies", "composites": "Reconstructed masses"}
    sections = "".join(
        f"<h2>{e(t)}</h2>" + "".join(f"<figure><a href='{e(i)}'><img src='{e(i)}' alt='{e(i)}'></a></figure>" for i in s["plots"][k])
        for k, t in titles.items() if s["plots"].get(k))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>mambah production QA</title>
<style>body {{ font-family: sans-serif; margin: 2em; max-width: 1400px; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }} th, td {{ border: 1px solid #ccc; padding: 4px 10px; }}
th {{ background: #f3f3f3; }} img {{ max-width: 100%; }} figure {{ display: inline-block; margin: 0.5em; }}</style></head><body>
<h1>mambah production QA</h1>
<p>Created {e(s['created'])} by mambah {e(s['mambah_version'])}; every number is in <a href="summary.json">summary.json</a>.</p>
<table>{''.join(f'<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>' for k, v in head)}</table>
<h2>Reconstructed tracks per species</h2>
<table><tr><th>species</th><th>tracks</th><th>median p [MeV]</th><th>median pT [MeV]</th><th>median η</th><th>PID requirements (efficiency)</th></tr>{sp_rows}</table>
<h2>Reconstruction efficiency (charged stable MC particles)</h2>
<table><tr><th>species</th><th>MC particles</th><th>efficiency</th></tr>{re_rows}</table>
<h2>Composites</h2>
<table><tr><th>particle</th><th>source</th><th>candidates</th><th>fully reconstructed</th><th>median mass [MeV]</th><th>std [MeV]</th><th>PDG mass [MeV]</th></tr>{co_rows}</table>
{sections}
</body></html>
"""


def production_headline(summary: dict) -> str:
    """What ``mambah validate --db`` prints."""
    lines = [f"{summary['store']}: {summary['n_batches']} batches, {summary['n_events']} events, "
             f"{summary['rows']['particles']} reconstructed particles"]
    for n, v in summary["species"].items():
        req = ", ".join(f"{k} {r['eff']:.3f}" for k, r in v["pid_requirements"].items() if r["eff"] is not None)
        lines.append(f"  {n:>8s}: {v['n']} tracks, median p {_f(v['p'].get('median'))} MeV, eta {_f(v['eta'].get('median'))}"
                     + (f"; {req}" if req else ""))
    for n, v in summary["reco_efficiency"].items():
        lines.append(f"  reconstruction efficiency {n}: {v['eff']:.4f} ({v['n']} MC particles)")
    for n, v in summary["composites"].items():
        lines.append(f"  mass {n}: median {_f(v.get('mass_median'), '.2f')} MeV, std {_f(v.get('mass_std'), '.2f')} MeV "
                     f"(PDG {_f(v.get('pdg_mass'), '.2f')}; {v.get('n_fully_reconstructed', v['n'])} of {v['n']} reconstructed)")
    return "\n".join(lines)
