"""Efficiency of a cut in bins: reference against generated, with the pull of every bin.

What analysts take from a PID model is the efficiency of a cut in bins of its conditions
(``../shared/DESIGN.md``, "Validation"). :func:`efficiency_in_bins` gives, per bin, the
(s)Weighted efficiencies of the reference and of the generated sample, their difference, the
statistical errors, the pull and the reference's effective size; :func:`pull_summary` condenses
the pulls (mean, robust width, worst bin). :func:`compare_in_bins` is the same comparison on
bin indices already computed (the training closures of :mod:`mambah.training` use it), and
:func:`binned_efficiency` the efficiency of one sample.

Formulas (w the per-row weights, signed sWeights allowed; "pass" 1 or 0, or a probability):

* efficiency ``ε = Σ w pass / Σ w``;
* its variance ``σ² = Σ w² (pass − ε)² / (Σ w)²`` — the error propagation of
  ``ε = W_pass / (W_pass + W_fail)`` with independent weighted sums of variance ``Σ w²``
  (Paterno, FERMILAB-TM-2286-CD, 2004; valid for signed sWeights), computed as
  ``[(1 − ε)² Σ_pass w² + ε² Σ_fail w²] / (Σ w)²`` for a 0/1 pass; with unit weights it is the
  binomial ``ε (1 − ε) / n``;
* pull ``(ε_gen − ε_ref) / σ_ref`` (with ``gen_error_in_pull``, ``σ² = σ_ref² + σ_gen²``);
* effective size (Kish) ``(Σ w)² / Σ w²`` of the reference in the bin.

Example:
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(1)
    >>> ref = pd.DataFrame({"P": rng.uniform(2e3, 1e5, 4000), "PIDK": rng.normal(2, 5, 4000)})
    >>> tab = efficiency_in_bins(ref, ref, "PIDK > 0", bins={"P": [2e3, 1e4, 1e5]})
    >>> tab["diff"].tolist()
    [0.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from mambah.errors import ConfigurationError, MissingColumnError
from mambah.validation.cuts import Cut, parse_cut

__all__ = ["efficiency_in_bins", "compare_in_bins", "binned_efficiency", "bin_index", "pull_summary", "MAD_TO_SIGMA"]

#: 1 / Φ⁻¹(3/4): the MAD of a normal distribution times this is its standard deviation.
MAD_TO_SIGMA = 1.4826


def bin_index(x, edges, clip: bool = False) -> np.ndarray:
    """Bin of each value: ``i`` with ``edges[i] <= x < edges[i + 1]``.

    Values outside the edges (and NaN) get -1 or ``len(edges) - 1`` (no bin), or, with ``clip``,
    the first/last bin (NaN: the last).
    """
    edges = np.asarray(edges, dtype=float)
    b = np.searchsorted(edges, np.asarray(x, dtype=float), side="right") - 1
    return np.clip(b, 0, len(edges) - 2) if clip else b


def binned_efficiency(b: np.ndarray, passed: np.ndarray, w: np.ndarray | None, n_bins: int) -> dict[str, np.ndarray]:
    """Per bin: rows ``n``, ``sum_w``, efficiency ``eff``, its error ``err`` and effective size ``n_eff``.

    Args:
        b: bin of each row (rows outside ``0 .. n_bins - 1`` are ignored).
        passed: 0/1 (bool) or probabilities, one per row.
        w: weights (``None``: 1).
        n_bins: number of bins.
    Returns:
        dict of arrays of length ``n_bins`` (NaN where a bin has no positive weight sum).
    """
    b = np.asarray(b)
    ok = (b >= 0) & (b < n_bins)
    b = b[ok]
    passed = np.asarray(passed)[ok]
    w = np.ones(len(b)) if w is None else np.asarray(w, dtype=float)[ok]
    n = np.bincount(b, minlength=n_bins)
    wa = np.bincount(b, weights=w, minlength=n_bins)
    w2 = np.bincount(b, weights=w * w, minlength=n_bins)
    if passed.dtype == bool:
        wp = np.bincount(b, weights=w * passed, minlength=n_bins)
        w2p = np.bincount(b, weights=w * w * passed, minlength=n_bins)
        w2f = np.bincount(b, weights=w * w * (~passed), minlength=n_bins)
        with np.errstate(divide="ignore", invalid="ignore"):
            eff = np.where(wa > 0, wp / wa, np.nan)
            err = np.where(wa > 0, np.sqrt((1 - eff) ** 2 * w2p + eff ** 2 * w2f) / np.abs(wa), np.nan)
    else:
        passed = passed.astype(float)
        wp = np.bincount(b, weights=w * passed, minlength=n_bins)
        with np.errstate(divide="ignore", invalid="ignore"):
            eff = np.where(wa > 0, wp / wa, np.nan)
            e_row = eff[b] if len(b) else np.zeros(0)
            dev = np.bincount(b, weights=w * w * (passed - e_row) ** 2, minlength=n_bins)
            err = np.where(wa > 0, np.sqrt(dev) / np.abs(wa), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        n_eff = np.where(w2 > 0, wa * wa / w2, 0.0)
    return {"n": n, "sum_w": wa, "eff": eff, "err": err, "n_eff": n_eff}


def compare_in_bins(ref_bins: np.ndarray, ref_pass: np.ndarray, gen_bins: np.ndarray, gen_pass: np.ndarray,
                    n_bins: int, ref_weight: np.ndarray | None = None, gen_weight: np.ndarray | None = None, *,
                    gen_error_in_pull: bool = False) -> dict:
    """Efficiency per bin of a reference and a generated sample, their difference and the pull.

    The core of :func:`efficiency_in_bins`, on bin indices already computed (e.g. with
    :func:`bin_index`); the two samples may be the same rows (a model's probability against the
    observed flag: ``gen_pass`` the probabilities, ``ref_pass`` the 0/1 outcomes).

    Args:
        ref_bins, gen_bins: bin of each row of the two samples (rows outside ``0 .. n_bins - 1``
            are ignored).
        ref_pass, gen_pass: per row 0/1 (bool) or a probability.
        n_bins: number of bins.
        ref_weight, gen_weight: per-row weights (signed sWeights allowed); ``None``: 1.
        gen_error_in_pull: include the generated sample's error in the pull's denominator.

    Returns:
        ``{"ref": ..., "gen": ...}`` (each the :func:`binned_efficiency` of the sample), ``"diff"``
        (gen − ref) and ``"pull"`` (diff / σ_ref, or / sqrt(σ_ref² + σ_gen²)); arrays of length
        ``n_bins``, NaN where a bin has no weight.
    """
    r = binned_efficiency(ref_bins, ref_pass, ref_weight, n_bins)
    g = binned_efficiency(gen_bins, gen_pass, gen_weight, n_bins)
    diff = g["eff"] - r["eff"]
    den = np.sqrt(r["err"] ** 2 + g["err"] ** 2) if gen_error_in_pull else r["err"]
    with np.errstate(divide="ignore", invalid="ignore"):
        pull = np.where(den > 0, diff / den, np.nan)
    return {"ref": r, "gen": g, "diff": diff, "pull": pull}


def _weights(df: pd.DataFrame, w, name: str) -> np.ndarray | None:
    if w is None:
        return None
    if isinstance(w, str):
        if w not in df.columns:
            raise MissingColumnError([w], list(map(str, df.columns)), where=f"the {name} sample (its weight column)")
        return df[w].to_numpy(dtype=float)
    w = np.asarray(w, dtype=float)
    if w.shape != (len(df),):
        raise ConfigurationError(f"{name}_weight has shape {w.shape}; the {name} sample has {len(df)} rows")
    return w


def _cells(df: pd.DataFrame, bins: Mapping[str, np.ndarray], clip: bool, name: str) -> np.ndarray:
    """Flat cell index of every row (-1: outside the bins)."""
    shape = [len(e) - 1 for e in bins.values()]
    flat = np.zeros(len(df), dtype=np.int64)
    inside = np.ones(len(df), dtype=bool)
    for (col, edges), nb in zip(bins.items(), shape):
        if col not in df.columns:
            raise MissingColumnError([col], list(map(str, df.columns)), where=f"the {name} sample (binning variable)")
        b = bin_index(df[col].to_numpy(dtype=float), edges, clip)
        inside &= (b >= 0) & (b < nb)
        flat = flat * nb + np.clip(b, 0, nb - 1)
    return np.where(inside, flat, -1)


def efficiency_in_bins(
    ref: pd.DataFrame,
    gen: pd.DataFrame,
    cut: str | Cut | Callable[[pd.DataFrame], np.ndarray],
    bins: Mapping[str, Sequence[float]],
    ref_weight: str | np.ndarray | None = None,
    gen_weight: str | np.ndarray | None = None,
    *,
    clip: bool = False,
    gen_error_in_pull: bool = False,
) -> pd.DataFrame:
    """Efficiency of ``cut`` per bin in the reference and the generated sample, and the pulls.

    Args:
        ref, gen: the two samples (one row per track); each holds the cut's and the bins' columns.
        cut: a :class:`~mambah.validation.cuts.Cut`, its text (``"DLLp > 5"``), or a function of
            a sample returning per row 0/1 (bool) or a probability (a classifier's prediction).
        bins: ``{column: edges}`` (e.g. ``{"P": [2e3, 5e3, ...] MeV/c, "ETA": [2, 3, 4, 5]}``); the
            cells are their product, the first column varying slowest. A bin is ``[lo, hi)``.
        ref_weight, gen_weight: per-row weights (signed sWeights allowed) or the name of a weight
            column; ``None``: 1.
        clip: put values outside the edges into the first/last bin (default: drop them).
        gen_error_in_pull: include the generated sample's error in the pull's denominator (for a
            generated sample as small as the reference; by default the reference's error alone).

    Returns:
        DataFrame, one row per cell: ``<col>_lo``, ``<col>_hi`` for each binning column, ``n_ref``,
        ``n_gen`` (rows), ``n_eff_ref`` (Kish's effective size of the reference), ``ref_eff``,
        ``ref_error``, ``gen_eff``, ``gen_error``, ``diff`` (= gen − ref), ``pull``. NaN where a
        cell has no weight.

    Raises:
        MissingColumnError: a sample lacks a column of the cut or of the bins.
        ConfigurationError: unreadable cut, bins with fewer than two increasing edges.
    """
    if not bins:
        raise ConfigurationError("efficiency_in_bins needs at least one binning column, e.g. bins={'P': edges}")
    edges = {}
    for col, e in bins.items():
        e = np.asarray(e, dtype=float)
        if e.ndim != 1 or len(e) < 2 or not np.all(np.diff(e) > 0):
            raise ConfigurationError(f"bins[{col!r}] must be at least two increasing edges, got {e.tolist()!r}")
        edges[col] = e
    fn = cut.apply if isinstance(cut, Cut) else (cut if callable(cut) else parse_cut(cut).apply)
    shape = [len(e) - 1 for e in edges.values()]
    n_cells = int(np.prod(shape))
    res = {}
    for key, df, w in (("ref", ref, ref_weight), ("gen", gen, gen_weight)):
        passed = np.asarray(fn(df))
        res[key] = (_cells(df, edges, clip, key), passed, _weights(df, w, key))
    (rb, rp, rw), (gb, gp, gw) = res["ref"], res["gen"]
    c = compare_in_bins(rb, rp, gb, gp, n_cells, rw, gw, gen_error_in_pull=gen_error_in_pull)
    out = {}
    idx = np.unravel_index(np.arange(n_cells), shape)
    for (col, e), i in zip(edges.items(), idx):
        out[f"{col}_lo"] = e[i]
        out[f"{col}_hi"] = e[i + 1]
    r, g = c["ref"], c["gen"]
    out.update(n_ref=r["n"], n_gen=g["n"], n_eff_ref=r["n_eff"], ref_eff=r["eff"], ref_error=r["err"],
               gen_eff=g["eff"], gen_error=g["err"], diff=c["diff"], pull=c["pull"])
    return pd.DataFrame(out)


def pull_summary(table: pd.DataFrame, min_eff_size: float = 0.0) -> dict:
    """Mean and robust width of the pulls of an :func:`efficiency_in_bins` table, and its worst bin.

    Args:
        table: the output of :func:`efficiency_in_bins`.
        min_eff_size: bins whose reference effective size is below this are left out.
    Returns:
        ``{"n_bins", "pull_mean", "pull_width" (1.4826 · median |pull − median pull|), "worst_bin"
        (the row with the largest |pull|, as a dict; None without finite pulls)}``.
    """
    t = table[np.isfinite(table["pull"].to_numpy(dtype=float)) & (table["n_eff_ref"] >= min_eff_size)]
    if t.empty:
        return {"n_bins": 0, "pull_mean": float("nan"), "pull_width": float("nan"), "worst_bin": None}
    pulls = t["pull"].to_numpy(dtype=float)
    med = np.median(pulls)
    worst = t.iloc[int(np.argmax(np.abs(pulls)))]
    return {
        "n_bins": int(len(t)),
        "pull_mean": float(pulls.mean()),
        "pull_width": float(MAD_TO_SIGMA * np.median(np.abs(pulls - med))),
        "worst_bin": {k: (v.item() if hasattr(v, "item") else v) for k, v in worst.items()},
    }
