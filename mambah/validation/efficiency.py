"""Efficiency of a cut in bins: reference against generated, with the pull of every bin.

What analysts take from a PID model is the efficiency of a cut in bins of its conditions
(``../shared/DESIGN.md``, "Validation"). :func:`efficiency_in_bins` gives, per bin, the
(s)Weighted efficiencies of the reference and of the generated sample, their difference, the
statistical errors, the pull and the reference's effective size; :func:`pull_summary` condenses
the pulls (mean, robust width, RMS, worst bin). :func:`compare_in_bins` is the same comparison on
bin indices already computed (the training closures of :mod:`mambah.training` use it; the cells of
several binning columns from :func:`cell_index`), :func:`comparison_table` its table,
:func:`merge_comparison` the whole-sample comparison from the bins' sums (no second pass), and
:func:`binned_efficiency` the efficiency of one sample. :mod:`mambah.validation.pideff` builds the
efficiency pulls of ``mambah validate`` and the trainers from these.

Formulas (w the per-row weights, signed sWeights allowed; "pass" 1 or 0, or a probability):

* efficiency ``ε = Σ w pass / Σ w``;
* its variance ``σ² = Σ w² (pass − ε)² / (Σ w)²`` — the error propagation of
  ``ε = W_pass / (W_pass + W_fail)`` with independent weighted sums of variance ``Σ w²``
  (Paterno, FERMILAB-TM-2286-CD, 2004; valid for signed sWeights), computed from additive sums
  as ``[Σ w² pass² − 2 ε Σ w² pass + ε² Σ w²] / (Σ w)²`` (for a 0/1 pass
  ``[(1 − ε)² Σ_pass w² + ε² Σ_fail w²] / (Σ w)²``); with unit weights it is the binomial
  ``ε (1 − ε) / n``;
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

__all__ = ["efficiency_in_bins", "compare_in_bins", "binned_efficiency", "bin_index", "cell_index", "check_edges",
           "comparison_columns", "comparison_table", "merge_comparison", "pull_summary",
           "MAD_TO_SIGMA"]

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
        dict of arrays of length ``n_bins`` (NaN where a bin has no positive weight sum), and the
        additive sums they come from (``sum_w2``, ``sum_wp``, ``sum_w2p``, ``sum_w2pp``: Σ w², Σ w p,
        Σ w² p, Σ w² p²), from which :func:`merge_comparison` gets the efficiency of a union of bins.
    """
    b = np.asarray(b)
    passed = np.asarray(passed)
    ok = (b >= 0) & (b < n_bins)
    w = np.ones(len(b)) if w is None else np.asarray(w, dtype=float)
    if not ok.all():
        b, passed, w = b[ok], passed[ok], w[ok]
    is_bool = passed.dtype == bool
    p = passed.astype(float)
    w2 = w * w
    sums = {
        "n": np.bincount(b, minlength=n_bins),
        "sum_w": np.bincount(b, weights=w, minlength=n_bins),
        "sum_w2": np.bincount(b, weights=w2, minlength=n_bins),
        "sum_wp": np.bincount(b, weights=w * p, minlength=n_bins),
        "sum_w2p": np.bincount(b, weights=w2 * p, minlength=n_bins),
    }
    sums["sum_w2pp"] = sums["sum_w2p"] if is_bool else np.bincount(b, weights=w2 * p * p, minlength=n_bins)
    return _from_sums(sums)


def _from_sums(s: dict) -> dict[str, np.ndarray]:
    """Efficiency, error and effective size from the additive sums of :func:`binned_efficiency`.

    ``σ² (Σ w)² = Σ w² (p − ε)² = Σ w² p² − 2 ε Σ w² p + ε² Σ w²`` (for 0/1 ``p``:
    ``(1 − ε)² Σ_pass w² + ε² Σ_fail w²``).
    """
    wa = s["sum_w"]
    with np.errstate(divide="ignore", invalid="ignore"):
        eff = np.where(wa > 0, s["sum_wp"] / wa, np.nan)
        dev = np.maximum(s["sum_w2pp"] - 2 * eff * s["sum_w2p"] + eff * eff * s["sum_w2"], 0.0)
        err = np.where(wa > 0, np.sqrt(dev) / np.abs(wa), np.nan)
        n_eff = np.where(s["sum_w2"] > 0, wa * wa / s["sum_w2"], 0.0)
    return {**s, "eff": eff, "err": err, "n_eff": n_eff}


def compare_in_bins(ref_bins: np.ndarray, ref_pass: np.ndarray, gen_bins: np.ndarray, gen_pass: np.ndarray,
                    n_bins: int, ref_weight: np.ndarray | None = None, gen_weight: np.ndarray | None = None, *,
                    gen_error_in_pull: bool = False, zero_error: str = "nan") -> dict:
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
        zero_error: what the pull does in a bin where the reference's error is 0 (every reference
            row passes, or none does: the error formula has nothing to measure): ``"nan"`` (no
            pull) or ``"binomial"`` (the error the reference would have if the generated
            efficiency were true, ``sqrt(ε_gen (1 − ε_gen) / n_eff_ref)`` with Kish's effective
            size; a model that loses 2% of a bin where all 300 reference rows pass then pulls by
            −2.5 instead of vanishing from the summary). The reported ``ref["err"]`` stays 0.

    Returns:
        ``{"ref": ..., "gen": ...}`` (each the :func:`binned_efficiency` of the sample), ``"diff"``
        (gen − ref) and ``"pull"`` (diff / σ_ref, or / sqrt(σ_ref² + σ_gen²)); arrays of length
        ``n_bins``, NaN where a bin has no weight.
    """
    r = binned_efficiency(ref_bins, ref_pass, ref_weight, n_bins)
    g = binned_efficiency(gen_bins, gen_pass, gen_weight, n_bins)
    return _compare(r, g, gen_error_in_pull, zero_error)


def _compare(r: dict, g: dict, gen_error_in_pull: bool, zero_error: str) -> dict:
    if zero_error not in ("nan", "binomial"):
        raise ConfigurationError(f"zero_error must be 'nan' or 'binomial', got {zero_error!r}")
    diff = g["eff"] - r["eff"]
    r_err = r["err"]
    if zero_error == "binomial":
        with np.errstate(divide="ignore", invalid="ignore"):
            eg = np.clip(g["eff"], 0.0, 1.0)
            floor = np.sqrt(eg * (1 - eg) / r["n_eff"])
        r_err = np.where((r_err == 0) & (r["n_eff"] > 0), floor, r_err)
    den = np.sqrt(r_err ** 2 + g["err"] ** 2) if gen_error_in_pull else r_err
    with np.errstate(divide="ignore", invalid="ignore"):
        pull = np.where(den > 0, diff / den, np.nan)
    return {"ref": r, "gen": g, "diff": diff, "pull": pull}


def merge_comparison(c: dict, *, gen_error_in_pull: bool = False, zero_error: str = "nan") -> dict:
    """A :func:`compare_in_bins` result for the union of all its bins (arrays of length 1): the
    whole-sample comparison without another pass over the rows (exact when no row was outside the bins)."""
    keys = ("n", "sum_w", "sum_w2", "sum_wp", "sum_w2p", "sum_w2pp")
    r, g = ({k: np.asarray([np.sum(x[k])]) for k in keys} for x in (c["ref"], c["gen"]))
    return _compare(_from_sums(r), _from_sums(g), gen_error_in_pull, zero_error)


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


def check_edges(bins: Mapping[str, Sequence[float]]) -> dict[str, np.ndarray]:
    """``{column: edges}`` as float arrays, checked: at least one column, each with >= 2 increasing edges.

    Raises:
        ConfigurationError: no column, or edges that are not increasing (the column is named).
    """
    if not bins:
        raise ConfigurationError("efficiency_in_bins needs at least one binning column, e.g. bins={'P': edges}")
    edges = {}
    for col, e in bins.items():
        e = np.asarray(e, dtype=float)
        if e.ndim != 1 or len(e) < 2 or not np.all(np.diff(e) > 0) or not np.all(np.isfinite(e)):
            raise ConfigurationError(f"bins[{col!r}] must be at least two finite increasing edges, got {e.tolist()!r}")
        edges[col] = e
    return edges


def cell_index(df, bins: Mapping[str, np.ndarray], clip: bool = False, where: str = "the sample") -> np.ndarray:
    """Flat cell index of every row of ``df`` in the product of ``bins`` (-1: outside the bins).

    The first column varies slowest (``np.ravel_multi_index`` order); a bin is ``[lo, hi)``.
    ``clip``: values outside a column's edges go to its first/last bin instead of outside.

    Raises:
        MissingColumnError: ``df`` lacks a binning column (``where`` names the table).
    """
    shape = [len(e) - 1 for e in bins.values()]
    flat = np.zeros(len(df), dtype=np.int64)
    inside = np.ones(len(df), dtype=bool)
    cols = list(df.columns) if hasattr(df, "columns") else list(df)
    for (col, edges), nb in zip(bins.items(), shape):
        if col not in cols:
            raise MissingColumnError([col], list(map(str, cols)), where=f"{where} (binning variable)")
        b = bin_index(np.asarray(df[col], dtype=float), edges, clip)
        inside &= (b >= 0) & (b < nb)
        flat = flat * nb + np.clip(b, 0, nb - 1)
    return np.where(inside, flat, -1)


def _cells(df, bins: Mapping[str, np.ndarray], clip: bool, name: str) -> np.ndarray:
    return cell_index(df, bins, clip, f"the {name} sample")


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
    edges = check_edges(bins)
    fn = cut.apply if isinstance(cut, Cut) else (cut if callable(cut) else parse_cut(cut).apply)
    shape = [len(e) - 1 for e in edges.values()]
    n_cells = int(np.prod(shape))
    res = {}
    for key, df, w in (("ref", ref, ref_weight), ("gen", gen, gen_weight)):
        passed = np.asarray(fn(df))
        res[key] = (_cells(df, edges, clip, key), passed, _weights(df, w, key))
    (rb, rp, rw), (gb, gp, gw) = res["ref"], res["gen"]
    c = compare_in_bins(rb, rp, gb, gp, n_cells, rw, gw, gen_error_in_pull=gen_error_in_pull)
    return comparison_table(edges, c)


def comparison_columns(edges: Mapping[str, np.ndarray], c: dict) -> dict[str, np.ndarray]:
    """The columns of :func:`comparison_table` as ``{name: array}`` (no DataFrame: for hot loops)."""
    shape = [len(e) - 1 for e in edges.values()]
    out = {}
    idx = np.unravel_index(np.arange(int(np.prod(shape))), shape)
    for (col, e), i in zip(edges.items(), idx):
        out[f"{col}_lo"] = e[i]
        out[f"{col}_hi"] = e[i + 1]
    r, g = c["ref"], c["gen"]
    out.update(n_ref=r["n"], n_gen=g["n"], n_eff_ref=r["n_eff"], ref_eff=r["eff"], ref_error=r["err"],
               gen_eff=g["eff"], gen_error=g["err"], diff=c["diff"], pull=c["pull"])
    return out


def comparison_table(edges: Mapping[str, np.ndarray], c: dict) -> pd.DataFrame:
    """The :func:`efficiency_in_bins` table of a :func:`compare_in_bins` result on the cells of ``edges``."""
    return pd.DataFrame(comparison_columns(edges, c))


def pull_summary(table, min_eff_size: float = 0.0) -> dict:
    """Mean and robust width of the pulls of an :func:`efficiency_in_bins` table, and its worst bin.

    Args:
        table: the output of :func:`efficiency_in_bins` (or its :func:`comparison_columns`).
        min_eff_size: bins whose reference effective size is below this are left out.
    Returns:
        ``{"n_bins" (bins used), "n_bins_total" (bins in the table), "pull_mean", "pull_width"
        (1.4826 · median |pull − median pull|: robust to a few bad bins), "pull_rms"
        (sqrt(mean pull²): not robust, it sees a few bad bins), "worst_bin" (the row with the
        largest |pull|, as a dict; None without finite pulls)}``.
    """
    cols = {k: np.asarray(table[k]) for k in table.keys()}
    pull = cols["pull"].astype(float)
    n_total = len(pull)
    sel = np.flatnonzero(np.isfinite(pull) & (cols["n_eff_ref"] >= min_eff_size))
    if not len(sel):
        return {"n_bins": 0, "n_bins_total": n_total, "pull_mean": float("nan"), "pull_width": float("nan"),
                "pull_rms": float("nan"), "worst_bin": None}
    pulls = pull[sel]
    med = np.median(pulls)
    worst = sel[int(np.argmax(np.abs(pulls)))]
    return {
        "n_bins": int(len(sel)),
        "n_bins_total": n_total,
        "pull_mean": float(pulls.mean()),
        "pull_width": float(MAD_TO_SIGMA * np.median(np.abs(pulls - med))),
        "pull_rms": float(np.sqrt(np.mean(pulls * pulls))),
        "worst_bin": {k: (v[worst].item() if hasattr(v[worst], "item") else v[worst]) for k, v in cols.items()},
    }
