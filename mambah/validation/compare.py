"""1D comparisons in bins of p and η, and efficiency curves of PID requirements.

All comparisons use the per-row weights (signed sWeights allowed). Bins of p and η are quantile
bins of the *reference* (weighted quantiles, negative weights clipped for the edges only), so each
bin holds a similar share of the reference signal.

Statistical yardstick of a KS distance: under the null hypothesis the two-sample KS distance
exceeds ``c(α) sqrt((n + m) / (n m))`` with probability α (Kolmogorov's limit distribution;
Smirnov 1948; c(0.05) = 1.358), with ``n``, ``m`` Kish's effective sample sizes for weighted
samples. ``ks_crit95`` is that value and ``ks_ratio = ks / ks_crit95``: ratios well above 1 are
significant. The worst bin is the one with the largest ratio (a raw KS in a sparse bin is mostly
noise).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mambah.errors import MissingColumnError
from mambah.validation.cuts import Cut, parse_cut, typical_cut_specs, typical_cuts
from mambah.validation.efficiency import bin_index, binned_efficiency
from mambah.validation.inputs import Sample
from mambah.validation.stats import effective_size, weighted_ks, weighted_quantiles

__all__ = [
    "C_ALPHA_95", "ks_critical", "quantile_edges", "ks1d_table", "Cut", "parse_cut", "default_cuts",
    "efficiency_curve", "efficiency_table", "guess_column", "P_NAMES", "ETA_NAMES", "OCCUPANCY_NAMES",
]

#: column names recognised as momentum / pseudorapidity / occupancy when not given explicitly
P_NAMES = ("P", "p", "p_total", "momentum", "TRACK_P")
ETA_NAMES = ("ETA", "eta", "pseudorapidity", "TRACK_ETA")
OCCUPANCY_NAMES = ("nLongTracks", "nTracks", "n_tracks", "nPVs")

C_ALPHA_95 = 1.358  # Kolmogorov critical value at 5 %


def ks_critical(n_eff_1: float, n_eff_2: float, c: float = C_ALPHA_95) -> float:
    """``c sqrt((n+m)/(n m))``: the KS distance exceeded with probability α under the null."""
    if n_eff_1 <= 0 or n_eff_2 <= 0:
        return float("inf")
    return float(c * np.sqrt((n_eff_1 + n_eff_2) / (n_eff_1 * n_eff_2)))


def guess_column(candidates: Sequence[str], names: Sequence[str]) -> str | None:
    """The first column of ``candidates`` named like one of ``names`` (case-insensitive; ``x_P`` too)."""
    low = {c.lower(): c for c in candidates}
    for n in names:
        if n.lower() in low:
            return low[n.lower()]
    for n in names:
        for c in candidates:
            if c.lower().endswith("_" + n.lower()):
                return c
    return None


def quantile_edges(x: np.ndarray, w: np.ndarray, n_bins: int) -> np.ndarray:
    """``n_bins`` weighted-quantile bins of ``x`` (outer edges = min and max; duplicates merged)."""
    inner = weighted_quantiles(x, np.linspace(0, 1, n_bins + 1)[1:-1], w)
    return np.unique(np.r_[np.min(x), inner, np.max(x)])


def _bin_index(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value; values outside the edges go to the first/last bin (the range is the ref's)."""
    return bin_index(x, edges, clip=True)


def _ks_entry(xr, wr, xg, wg) -> dict:
    n_r, n_g = effective_size(wr), effective_size(wg)
    out = {"n_ref": int(len(xr)), "n_gen": int(len(xg)), "n_eff_ref": n_r, "n_eff_gen": n_g}
    if len(xr) == 0 or len(xg) == 0 or wr.sum() <= 0 or wg.sum() <= 0:
        out.update(ks=None, ks_crit95=None, ks_ratio=None)
        return out
    ks = weighted_ks(xr, xg, wr, wg)
    crit = ks_critical(n_r, n_g)
    out.update(ks=ks, ks_crit95=crit, ks_ratio=ks / crit if np.isfinite(crit) else None)
    return out


def ks1d_table(
    ref: Sample, gen: Sample, targets: Sequence[str], p: str | None, eta: str | None, n_bins: int = 4,
) -> tuple[dict, dict]:
    """Weighted 1D KS distance per target, overall and in (p, η) quantile bins of the reference.

    Returns:
        ``(ks1d, binning)``: ``ks1d[target] = {"ks", "ks_crit95", "ks_ratio", ..., "bins": [...],
        "worst_bin": {...}}``; ``binning = {"p": edges, "eta": edges}`` (lists; a missing axis is
        absent).
    """
    binning = {}
    idx_r = np.zeros(len(ref), dtype=np.int64)
    idx_g = np.zeros(len(gen), dtype=np.int64)
    axes = [(k, c) for k, c in (("p", p), ("eta", eta)) if c is not None]
    for key, col in axes:
        edges = quantile_edges(ref.data[col].to_numpy(), ref.weights, n_bins)
        binning[key] = edges.tolist()
        nb = len(edges) - 1
        idx_r = idx_r * nb + _bin_index(ref.data[col].to_numpy(), edges)
        idx_g = idx_g * nb + _bin_index(gen.data[col].to_numpy(), edges)
    shape = [len(binning[k]) - 1 for k, _ in axes]
    out = {}
    for t in targets:
        xr, xg = ref.data[t].to_numpy(), gen.data[t].to_numpy()
        entry = _ks_entry(xr, ref.weights, xg, gen.weights)
        bins = []
        if axes:
            # sort once by bin so every bin is a contiguous slice
            orr, org = np.argsort(idx_r, kind="stable"), np.argsort(idx_g, kind="stable")
            n_cells = int(np.prod(shape))
            br = np.searchsorted(idx_r[orr], np.arange(n_cells + 1))
            bg = np.searchsorted(idx_g[org], np.arange(n_cells + 1))
            for cell in range(n_cells):
                sr, sg = orr[br[cell]:br[cell + 1]], org[bg[cell]:bg[cell + 1]]
                b = _ks_entry(xr[sr], ref.weights[sr], xg[sg], gen.weights[sg])
                pos = np.unravel_index(cell, shape)
                for (key, _), i in zip(axes, pos):
                    b[f"{key}_bin"] = int(i)
                    b[f"{key}_range"] = [binning[key][i], binning[key][i + 1]]
                bins.append(b)
        entry["bins"] = bins
        valid = [b for b in bins if b["ks_ratio"] is not None]
        entry["worst_bin"] = max(valid, key=lambda b: b["ks_ratio"]) if valid else None
        out[t] = entry
    return out, binning


# ---------------------------------------------------------------- efficiency of PID requirements

#: typical PID requirements (column names matched case-insensitively, also with a prefix ``x_``):
#: :data:`mambah.validation.cuts.TYPICAL` under every LHCb spelling of each column
TYPICAL_CUTS = typical_cut_specs()


def default_cuts(targets: Sequence[str], ref, weights=None) -> list[Cut]:
    """Typical requirements on the targets that have them (:func:`~mambah.validation.cuts.typical_cuts`);
    otherwise each target above the reference's weighted median.

    Args:
        targets: the target columns.
        ref: the reference, a :class:`~mambah.validation.inputs.Sample` or a DataFrame (for the medians).
        weights: the DataFrame's per-row weights (ignored for a Sample, which carries its own).
    """
    cuts = typical_cuts(targets)
    if cuts:
        return cuts
    data, w = (ref.data, ref.weights) if isinstance(ref, Sample) else (ref, weights)
    for t in targets:
        med = float(weighted_quantiles(np.asarray(data[t], dtype=float), [0.5], w)[0])
        cuts.append(Cut(t, ">", med, f"{t} > {med:.4g} (ref. median)"))
    return cuts


def efficiency_curve(x: np.ndarray, passed: np.ndarray, w: np.ndarray, edges: np.ndarray) -> dict:
    """Weighted efficiency ``sum(w pass) / sum(w)`` per bin of ``x`` with its normal-approximation error.

    ``var(ε) = [(1-ε)^2 Σ_pass w^2 + ε^2 Σ_fail w^2] / (Σ w)^2`` — the error propagation of
    ``ε = W_pass / (W_pass + W_fail)`` with independent weighted sums of variance ``Σ w^2``
    (e.g. Paterno, FERMILAB-TM-2286-CD, 2004; valid for signed sWeights as well).
    """
    r = binned_efficiency(_bin_index(x, edges), passed, w, len(edges) - 1)
    return {"eff": r["eff"], "err": r["err"]}


def _json_list(a: np.ndarray) -> list:
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, dtype=float)]


def efficiency_table(
    ref: Sample, gen: Sample, cuts: Sequence[Cut], p: str | None, eta: str | None, n_bins: int = 10,
) -> dict:
    """Efficiency of every cut versus p and η (quantile bins of the reference) in both samples.

    Returns ``{cut.label: {"column", "op", "value", "eff_ref", "eff_gen" (overall),
    "vs": {"p": {"edges", "ref", "ref_err", "gen", "gen_err", "ratio", "ratio_err"}, "eta": {...}}}}``.
    The ratio is generated / reference with errors added in quadrature (independent samples).
    """
    out = {}
    for cut in cuts:
        for s in (ref, gen):
            if cut.column not in s.data.columns:
                raise MissingColumnError([cut.column], list(s.data.columns), where=f"the {s.name} sample (requirement {cut.label!r})")
        pr, pg = cut.passes(ref.data[cut.column].to_numpy()), cut.passes(gen.data[cut.column].to_numpy())
        entry = {
            "column": cut.column, "op": cut.op, "value": cut.value,
            "eff_ref": float(np.sum(ref.weights * pr) / np.sum(ref.weights)),
            "eff_gen": float(np.sum(gen.weights * pg) / np.sum(gen.weights)),
            "vs": {},
        }
        for key, col in (("p", p), ("eta", eta)):
            if col is None:
                continue
            edges = quantile_edges(ref.data[col].to_numpy(), ref.weights, n_bins)
            er = efficiency_curve(ref.data[col].to_numpy(), pr, ref.weights, edges)
            eg = efficiency_curve(gen.data[col].to_numpy(), pg, gen.weights, edges)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = eg["eff"] / er["eff"]
                rerr = np.abs(ratio) * np.sqrt((eg["err"] / eg["eff"]) ** 2 + (er["err"] / er["eff"]) ** 2)
            entry["vs"][key] = {
                "column": col, "edges": edges.tolist(),
                "ref": _json_list(er["eff"]), "ref_err": _json_list(er["err"]),
                "gen": _json_list(eg["eff"]), "gen_err": _json_list(eg["err"]),
                "ratio": _json_list(ratio), "ratio_err": _json_list(rerr),
            }
        out[cut.label] = entry
    return out
