"""Plots of a validation report (matplotlib, mplhep's LHCb style), written as PNG files.

Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas directly, never through
``pyplot``: no global backend switch, no open-figure bookkeeping, safe in threads and on machines
without a display. All histograms are weighted (signed sWeights allowed) and normalised to unit
area, so they compare shapes; error bars are ``sqrt(Σ w²)`` per bin. Ratio panels show
generated / reference with both errors added in quadrature.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from mambah.errors import ConfigurationError
from mambah.validation.compare import P_NAMES, guess_column
from mambah.validation.inputs import Sample
from mambah.validation.stats import weighted_quantiles

__all__ = ["plot_target", "plot_target_bins", "plot_classifier_output", "plot_efficiency", "plot_efficiency_slices",
           "style", "new_figure", "save_figure"]

REF_COLOR, GEN_COLOR = "black", "tab:red"
DPI = 90


@contextlib.contextmanager
def style():
    """mplhep's LHCb2 style (falls back to matplotlib defaults if mplhep is missing)."""
    import matplotlib

    try:
        import mplhep

        sty = mplhep.style.LHCb2
    except (ImportError, AttributeError):  # pragma: no cover - mplhep is a dependency
        sty = {}
    with matplotlib.rc_context():
        matplotlib.style.use(sty)
        matplotlib.rcParams.update({"figure.dpi": DPI, "savefig.dpi": DPI, "axes.titlesize": "small",
                                    "xtick.labelsize": "small", "ytick.labelsize": "small",
                                    "axes.labelsize": "medium", "axes.formatter.limits": (-3, 4)})
        yield


def new_figure(w: float, h: float):
    """A matplotlib ``Figure`` of ``w`` × ``h`` inches on the Agg canvas (no pyplot, no global state:
    safe in threads and on machines without a display); draw inside :func:`style`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: Path, *, tight: bool = True) -> Path:
    """Write ``fig`` to ``path`` (format from the suffix) and return the path.

    ``tight=False``: the whole figure as laid out (no tight bounding box: one draw instead of two,
    for figures of many panels whose margins are set by hand).
    """
    path = Path(path)
    if tight:
        fig.savefig(path)
    else:
        from matplotlib.transforms import Bbox

        fig.savefig(path, bbox_inches=Bbox.from_bounds(0, 0, *fig.get_size_inches()))
    return path


def _edges(x: np.ndarray, w: np.ndarray, n: int = 40) -> np.ndarray:
    lo, hi = weighted_quantiles(x, [0.005, 0.995], w)
    if not hi > lo:
        lo, hi = float(np.min(x)), float(np.max(x))
        if not hi > lo:
            lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, n + 1)


def _hist(x: np.ndarray, w: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit-area weighted histogram and its errors (rows outside ``edges`` are left out)."""
    nb = len(edges) - 1
    inside = (x >= edges[0]) & (x <= edges[-1])
    b = np.clip(np.searchsorted(edges, x[inside], side="right") - 1, 0, nb - 1)
    wi = w[inside]
    h = np.bincount(b, weights=wi, minlength=nb)
    e2 = np.bincount(b, weights=wi * wi, minlength=nb)
    total = np.sum(w)
    width = np.diff(edges)
    if total <= 0:
        return np.full(nb, np.nan), np.full(nb, np.nan)
    return h / total / width, np.sqrt(e2) / total / width


def _compare(ax, rax, xr, wr, xg, wg, edges, xlabel: str, ref_label="reference", gen_label="generated",
             legend=True) -> None:
    hr, er = _hist(xr, wr, edges)
    hg, eg = _hist(xg, wg, edges)
    centres = 0.5 * (edges[1:] + edges[:-1])
    ax.errorbar(centres, hr, yerr=er, fmt="o", ms=2.5, color=REF_COLOR, label=ref_label, lw=0.8)
    ax.stairs(hg, edges, color=GEN_COLOR, label=gen_label, lw=1.2)
    ax.fill_between(edges, np.r_[hg - eg, hg[-1] - eg[-1]], np.r_[hg + eg, hg[-1] + eg[-1]], step="post",
                    color=GEN_COLOR, alpha=0.25, lw=0)
    ax.set_xlim(edges[0], edges[-1])
    ymax = np.nanmax(np.r_[hr + er, hg + eg, 0.0])
    ax.set_ylim(min(0.0, np.nanmin(np.r_[hr, hg, 0.0])), 1.25 * ymax if ymax > 0 else 1.0)
    if legend:
        ax.legend(fontsize="x-small", loc="best")
    ax.tick_params(labelbottom=False, labelsize="x-small")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = hg / hr
        rerr = np.abs(ratio) * np.sqrt((eg / hg) ** 2 + (er / hr) ** 2)
    ok = np.isfinite(ratio) & np.isfinite(rerr)
    rax.errorbar(centres[ok], ratio[ok], yerr=rerr[ok], fmt="o", ms=2, color=GEN_COLOR, lw=0.8)
    rax.axhline(1.0, color="grey", lw=0.8, ls="--")
    rax.set_ylim(0.5, 1.5)
    rax.set_xlim(edges[0], edges[-1])
    rax.set_xlabel(xlabel, fontsize="small")
    rax.set_ylabel("gen/ref", fontsize="x-small")
    rax.tick_params(labelsize="x-small")


def plot_target(ref: Sample, gen: Sample, target: str, path: Path, ks: float | None = None) -> Path:
    """Distribution of one target in the whole sample, reference vs generated, with a ratio panel."""
    with style():
        fig = new_figure(6, 5.5)
        gs = fig.add_gridspec(2, 1, height_ratios=[3, 1], hspace=0.05)
        ax, rax = fig.add_subplot(gs[0]), fig.add_subplot(gs[1])
        xr, xg = ref.data[target].to_numpy(), gen.data[target].to_numpy()
        _compare(ax, rax, xr, ref.weights, xg, gen.weights, _edges(xr, ref.weights, 60), target)
        ax.set_ylabel("normalised", fontsize="small")
        if ks is not None:
            ax.set_title(f"{target}: KS = {ks:.4f}", fontsize="small")
        return save_figure(fig, path)


def plot_target_bins(ref: Sample, gen: Sample, target: str, binning: dict, p: str | None, eta: str | None,
                     path: Path, ks_bins: list | None = None) -> Path:
    """Distributions of one target in every (p, η) quantile bin (columns: p bins, rows: η bins)."""
    p_edges = np.asarray(binning.get("p", [-np.inf, np.inf]), dtype=float)
    e_edges = np.asarray(binning.get("eta", [-np.inf, np.inf]), dtype=float)
    n_p, n_e = len(p_edges) - 1, len(e_edges) - 1
    xr, xg = ref.data[target].to_numpy(), gen.data[target].to_numpy()

    def _idx(s: Sample, col, edges):
        if col is None:
            return np.zeros(len(s), dtype=np.int64)
        return np.clip(np.searchsorted(edges, s.data[col].to_numpy(), side="right") - 1, 0, len(edges) - 2)

    ip_r, ie_r = _idx(ref, p, p_edges), _idx(ref, eta, e_edges)
    ip_g, ie_g = _idx(gen, p, p_edges), _idx(gen, eta, e_edges)
    ks_lookup = {}
    for b in ks_bins or []:
        ks_lookup[(b.get("p_bin", 0), b.get("eta_bin", 0))] = b.get("ks")
    with style():
        fig = new_figure(3.2 * n_p + 0.8, 3.0 * n_e + 0.8)
        outer = fig.add_gridspec(n_e, n_p, hspace=0.45, wspace=0.3)
        for je in range(n_e):
            for jp in range(n_p):
                inner = outer[n_e - 1 - je, jp].subgridspec(2, 1, height_ratios=[3, 1], hspace=0.05)
                ax, rax = fig.add_subplot(inner[0]), fig.add_subplot(inner[1])
                mr = (ip_r == jp) & (ie_r == je)
                mg = (ip_g == jp) & (ie_g == je)
                if not mr.any() or not mg.any() or ref.weights[mr].sum() <= 0:
                    ax.text(0.5, 0.5, "empty", ha="center", transform=ax.transAxes)
                    continue
                _compare(ax, rax, xr[mr], ref.weights[mr], xg[mg], gen.weights[mg],
                         _edges(xr[mr], ref.weights[mr], 30), target, legend=(je == n_e - 1 and jp == 0))
                title = []
                if p is not None:
                    title.append(f"{p} [{p_edges[jp]:.4g}, {p_edges[jp + 1]:.4g}]")
                if eta is not None:
                    title.append(f"{eta} [{e_edges[je]:.3g}, {e_edges[je + 1]:.3g}]")
                ks = ks_lookup.get((jp, je))
                if ks is not None:
                    title.append(f"KS {ks:.3f}")
                ax.set_title("\n".join([", ".join(title[:2]), *title[2:]]), fontsize="x-small")
        return save_figure(fig, path)


def plot_classifier_output(scores: dict, path: Path, bdt_ks: float | None = None, auc: float | None = None) -> Path:
    """Held-out classifier output for reference and generated (first repeat)."""
    with style():
        fig = new_figure(6, 5.5)
        gs = fig.add_gridspec(2, 1, height_ratios=[3, 1], hspace=0.05)
        ax, rax = fig.add_subplot(gs[0]), fig.add_subplot(gs[1])
        pooled = np.concatenate([scores["ref"], scores["gen"]])
        edges = _edges(pooled, np.ones_like(pooled), 40)
        _compare(ax, rax, scores["ref"], scores["ref_w"], scores["gen"], scores["gen_w"], edges,
                 "classifier output P(generated)")
        ax.set_ylabel("normalised", fontsize="small")
        if bdt_ks is not None:
            ax.set_title(f"BDT KS = {bdt_ks:.4f}" + (f", AUC = {auc:.4f}" if auc is not None else ""), fontsize="small")
        return save_figure(fig, path)


def plot_efficiency(label: str, entry: dict, path: Path) -> Path:
    """Efficiency of one requirement versus p and η, both samples, with the gen/ref ratio."""
    keys = [k for k in ("p", "eta") if k in entry["vs"]]
    with style():
        fig = new_figure(5.5 * max(1, len(keys)), 5.5)
        gs = fig.add_gridspec(2, max(1, len(keys)), height_ratios=[3, 1], hspace=0.05, wspace=0.3)
        for j, key in enumerate(keys):
            v = entry["vs"][key]
            edges = np.asarray(v["edges"], dtype=float)
            c = 0.5 * (edges[1:] + edges[:-1])
            xerr = 0.5 * np.diff(edges)
            ax, rax = fig.add_subplot(gs[0, j]), fig.add_subplot(gs[1, j])

            def arr(name):
                return np.array([np.nan if a is None else a for a in v[name]], dtype=float)

            ax.errorbar(c, arr("ref"), xerr=xerr, yerr=arr("ref_err"), fmt="o", ms=3, color=REF_COLOR, label="reference", lw=0.8)
            ax.errorbar(c, arr("gen"), xerr=xerr, yerr=arr("gen_err"), fmt="s", ms=3, color=GEN_COLOR, label="generated", lw=0.8)
            ax.set_ylim(-0.05, 1.15)
            ax.set_xlim(edges[0], edges[-1])
            ax.set_ylabel(f"eff({label})", fontsize="small")
            ax.tick_params(labelbottom=False, labelsize="x-small")
            ax.legend(fontsize="x-small", loc="best")
            ratio, rerr = arr("ratio"), arr("ratio_err")
            ok = np.isfinite(ratio) & np.isfinite(rerr)
            rax.errorbar(c[ok], ratio[ok], xerr=xerr[ok], yerr=rerr[ok], fmt="o", ms=2, color=GEN_COLOR, lw=0.8)
            rax.axhline(1.0, color="grey", ls="--", lw=0.8)
            rax.set_ylim(0.7, 1.3)
            rax.set_xlim(edges[0], edges[-1])
            rax.set_xlabel(v["column"], fontsize="small")
            rax.set_ylabel("gen/ref", fontsize="x-small")
            rax.tick_params(labelsize="x-small")
        return save_figure(fig, path)


def _slice_key(row, axes) -> tuple:
    return tuple((row[f"{a}_lo"], row[f"{a}_hi"]) for a in axes)


def _is_momentum(col: str) -> bool:
    return guess_column([col], P_NAMES) is not None


def plot_efficiency_slices(rows, x: str, series, path: Path, *, pull: str | None = None, pull_label: str = "pull",
                           used: str | None = "used", title: str | None = None) -> Path:
    """Efficiency versus one binning column (``x``), one panel per slice of the other binning columns.

    The panels' columns are the bins of the first other binning column (e.g. η), their rows the
    tables of ``rows`` times the bins of any further column (e.g. the occupancy). Bins without
    ``used`` (too little signal) are drawn with open markers and do not set the vertical range.

    Args:
        rows: ``[(label, table), ...]``: one block of panels per table (e.g. one per cut). A table
            has ``<col>_lo`` and ``<col>_hi`` for every binning column (as
            :func:`mambah.validation.efficiency.efficiency_in_bins` and
            :func:`mambah.validation.pideff.pid_efficiency` give) and the series' columns.
        x: the column along the horizontal axis (a momentum column is drawn in GeV/c).
        series: ``[{"eff": column, "err": column, "label": str, "color": str, "kind": "points" | "band"}, ...]``:
            points with error bars (slightly offset from each other), or a line with an error band.
        path: the PNG to write.
        pull: a column drawn under each panel (pulls; ±1 shaded), or None.
        used: a boolean column marking the bins with enough signal, or None (all).
        title: the figure's title.
    """
    tables = [(label, t) for label, t in rows]
    axes_all = [c[:-3] for c in tables[0][1].columns if c.endswith("_lo")]
    if x not in axes_all:
        raise ConfigurationError(f"{x!r} is not a binning column of the table ({', '.join(axes_all)})")
    others = [a for a in axes_all if a != x]
    t0 = tables[0][1]

    def bins_of(col):
        return list(dict.fromkeys(zip(t0[f"{col}_lo"], t0[f"{col}_hi"])))

    col_bins = bins_of(others[0]) if others else [None]
    handles, labels = [], []
    rest = others[1:]
    rest_keys = list(dict.fromkeys(_slice_key(r, rest) for _, r in t0.iterrows())) if rest else [()]
    scale, xlabel = (1e-3, f"{x} [GeV/c]") if _is_momentum(x) else (1.0, x)
    n_cols, n_rows = len(col_bins), len(tables) * len(rest_keys)
    with style():
        head = 1.15 if title else 0.8  # inches above the panels: title, legend, the panels' titles
        height = (4.2 if pull else 3.2) * n_rows + head
        fig = new_figure(3.6 * n_cols + 0.6, height)
        outer = fig.add_gridspec(n_rows, n_cols, hspace=0.5, wspace=0.28, top=1 - head / height,
                                 bottom=0.55 / height, left=0.9 / (3.6 * n_cols + 0.6), right=0.98)
        for ti, (label, t) in enumerate(tables):
            u_all = t[used].to_numpy(bool) if used and used in t.columns else np.ones(len(t), bool)
            for ri, rk in enumerate(rest_keys):
                i = ti * len(rest_keys) + ri
                for j, cb in enumerate(col_bins):
                    m = np.ones(len(t), bool)
                    if cb is not None:
                        m &= (t[f"{others[0]}_lo"].to_numpy() == cb[0]) & (t[f"{others[0]}_hi"].to_numpy() == cb[1])
                    for a, (lo_, hi_) in zip(rest, rk):
                        m &= (t[f"{a}_lo"].to_numpy() == lo_) & (t[f"{a}_hi"].to_numpy() == hi_)
                    order = np.argsort(t[f"{x}_lo"].to_numpy()[m], kind="stable")
                    sub = t[m].iloc[order]
                    u = u_all[m][order]
                    if pull:
                        inner = outer[i, j].subgridspec(2, 1, height_ratios=[3, 1], hspace=0.06)
                        ax, pax = fig.add_subplot(inner[0]), fig.add_subplot(inner[1])
                    else:
                        ax, pax = fig.add_subplot(outer[i, j]), None
                    _efficiency_panel(ax, pax, sub, u, x, scale, series, pull)
                    if j == 0:
                        ax.set_ylabel(f"ε({label})", fontsize="small")
                        if pax is not None:
                            pax.set_ylabel(pull_label, fontsize="x-small")
                    parts = [f"{lo_:.3g} ≤ {a} < {hi_:.3g}" for a, (lo_, hi_) in
                             zip(others, ([cb] if cb is not None else []) + list(rk))]
                    if parts:
                        ax.set_title(", ".join(parts), fontsize="x-small")
                    (pax if pax is not None else ax).set_xlabel(xlabel, fontsize="small")
                    if i == 0 and j == 0:
                        handles, labels = ax.get_legend_handles_labels()
        if title:
            fig.suptitle(title, fontsize="small", y=1 - 0.15 / height, va="top")
        if handles:
            fig.legend(handles, labels, loc="upper center", fontsize="x-small", ncol=len(handles), frameon=False,
                       bbox_to_anchor=(0.5, 1 - (0.45 if title else 0.1) / height))
        return save_figure(fig, path, tight=False)


def _efficiency_panel(ax, pax, sub, u, x: str, scale: float, series, pull: str | None) -> None:
    lo = sub[f"{x}_lo"].to_numpy(float) * scale
    hi = sub[f"{x}_hi"].to_numpy(float) * scale
    c, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
    n_pts = sum(1 for s in series if s.get("kind", "points") == "points")
    k_pt = 0
    span = []
    for s in series:
        eff = sub[s["eff"]].to_numpy(float)
        err = sub[s["err"]].to_numpy(float) if s.get("err") in sub.columns else np.zeros(len(sub))
        e0 = np.where(np.isfinite(err), err, 0.0)
        color = s.get("color", REF_COLOR)
        span += [eff[u] - e0[u], eff[u] + e0[u]]
        if s.get("kind", "points") == "band":
            if len(lo):
                eff = np.where(u, eff, np.nan)  # a band through bins without signal would mislead
                edges = np.r_[lo, hi[-1]]
                ax.stairs(eff, edges, color=color, lw=1.2, label=s["label"])
                ax.fill_between(edges, np.r_[eff - e0, (eff - e0)[-1:]], np.r_[eff + e0, (eff + e0)[-1:]],
                                step="post", color=color, alpha=0.3, lw=0)
        else:
            off = (k_pt - (n_pts - 1) / 2) * 0.15 * half if n_pts > 1 else 0.0
            k_pt += 1
            ax.errorbar((c + off)[u], eff[u], xerr=half[u], yerr=err[u], fmt="o", ms=3, color=color, lw=0.8,
                        label=s["label"])
            if (~u).any():
                ax.errorbar((c + off)[~u], eff[~u], xerr=half[~u], yerr=err[~u], fmt="o", ms=3, mfc="none",
                            color=color, lw=0.5, alpha=0.5)
    if len(lo):
        ax.set_xlim(lo.min(), hi.max())
    # many small panels: no minor ticks, few major ones (LHCb style's ticks dominate the drawing time)
    from matplotlib.ticker import MaxNLocator

    ax.minorticks_off()
    ax.yaxis.set_major_locator(MaxNLocator(5))
    if pax is not None:
        pax.minorticks_off()
        pax.yaxis.set_major_locator(MaxNLocator(3, symmetric=True))
    vals = np.concatenate(span) if span else np.zeros(0)
    vals = vals[np.isfinite(vals)]
    if len(vals):
        y0, y1 = float(vals.min()), float(vals.max())
        pad = max(0.1 * (y1 - y0), 0.005)
        ax.set_ylim(y0 - pad, y1 + pad)
    ax.tick_params(labelsize="x-small", labelbottom=pax is None)
    if pax is not None:
        pv = sub[pull].to_numpy(float)
        ok = np.isfinite(pv)
        pax.axhspan(-1, 1, color="grey", alpha=0.2, lw=0)
        pax.axhline(0, color="grey", lw=0.8)
        pax.errorbar(c[ok & u], pv[ok & u], xerr=half[ok & u], fmt="o", ms=3, color="black", lw=0.8)
        pax.plot(c[ok & ~u], pv[ok & ~u], "o", ms=3, mfc="none", color="grey")
        lim = max(3.0, 1.15 * float(np.max(np.abs(pv[ok & u])))) if (ok & u).any() else 3.0
        pax.set_ylim(-min(lim, 12.0), min(lim, 12.0))
        pax.set_xlim(ax.get_xlim())
        pax.tick_params(labelsize="x-small")
