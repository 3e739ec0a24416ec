"""PID efficiencies you can trust: efficiency pulls of a generated sample, and PIDCalib-style tables.

What analysts take from a PID model is the efficiency of a cut (``DLLp > 5``) in bins of momentum,
pseudorapidity and occupancy (``../shared/DESIGN.md``, "Validation"). A model that moves 1% of its
mass into a tail scores a BDT-KS near its floor and still biases a loose cut by 1%; this module
measures the efficiencies directly.

* :func:`efficiency_pulls` — reference against generated: for every cut (the typical ones of the
  targets, :func:`~mambah.validation.cuts.typical_cuts`, plus any given), the sWeighted efficiency
  of both samples per bin, their difference, the pull, and a summary (pull mean, robust width,
  RMS, worst bin, bins used), and the overall efficiency of each cut. JSON-able. Fast (one
  ``bincount`` pass per cut and sample: a few ms for 20k rows and four cuts), so a trainer can call
  it at every validation step; :func:`pull_score` condenses it into one number to rank checkpoints.
* :func:`pid_efficiency` — a model applied to a table of conditions (a calibration sample, or the
  signal tracks of an analysis): the efficiency of each cut per bin with its statistical error, the
  model uncertainty from the ensemble members beside it (``model.n_members``,
  ``model.generate_variations``), and, when the table carries the real target (a calibration
  file), the data efficiency, the pull and ``z = (data − nominal) / sqrt(σ_ens² + σ_stat²)``
  (``mambah pid-efficiency``).

Formulas (w the per-row weights, signed sWeights allowed; see :mod:`mambah.validation.efficiency`):

* efficiency ``ε = Σ w pass / Σ w``; statistical error ``σ² = Σ w² (pass − ε)² / (Σ w)²``
  (error propagation of ``W_pass / (W_pass + W_fail)`` with independent weighted sums, Paterno,
  FERMILAB-TM-2286-CD, 2004; valid for signed sWeights: the sPlot weights of independent events are
  independent, Pivk & Le Diberder, arXiv:physics/0402083);
* pull ``(ε_gen − ε_ref) / σ_ref`` (``gen_error_in_pull``: ``/ sqrt(σ_ref² + σ_gen²)``);
* ensemble: ``σ_ens`` = standard deviation (``ddof=1``) over the K members of the member
  efficiencies; ``z = (ε_data − ε_nominal) / sqrt(σ_ens² + σ_stat,data²)``;
* robust width ``1.4826 · median |x − median x|`` (the MAD of a normal distribution times 1.4826
  is its standard deviation).

**Bins with enough signal.** A bin enters the summaries when its reference (data) has Kish's
effective size ``n_eff = (Σ w)² / Σ w² ≥ min_n_eff`` (default :data:`MIN_N_EFF` = 100) and a
finite pull. With ``n_eff = 100`` the error of an efficiency is known to ~7% (``1/sqrt(2 n_eff)``)
and a 10% efficiency difference is a 2σ effect at ε = 0.5; fewer effective events make pulls of
noise. For sWeighted data ``n_eff`` counts the signal *after* the background subtraction's own
noise (46k real calibration rows with 43% negative sWeights have ``n_eff`` ≈ 13.8k). Near ε = 1
a bin holds few failing rows and its pull is skewed even above the threshold: the robust width
is the sturdier summary there.

**Default bins** (:func:`default_bins`). Weighted quantiles of the reference (negative weights
clipped at zero for the edges only), so every bin along an axis holds a similar share of the
signal: 3 bins of η, 2 of the occupancy (below/above its median) when an occupancy column is
present, and ``n_p = clip(n_eff / (300 · n_η · n_occ), 3, 8)`` bins of p — every cell aims at an
effective size of about :data:`TARGET_N_EFF` = 300, three times the threshold. The outer edges
are the reference's minimum and maximum, and values outside go to the outer bins, so no row is
dropped. Edges depend only on the reference, so every checkpoint of a training is judged in the
same bins. PIDCalib's fixed momentum edges (3, 9.3, 15.6, 19, 24.4, ... 100 GeV/c: the RICH
thresholds, then 5.4 GeV/c steps) suit its large samples; pass them with ``bins=`` when wanted.
Given edges are used as they are: rows outside them are left out, and the result says how many.

Example:
    >>> import numpy as np, pandas as pd
    >>> rng = np.random.default_rng(1)
    >>> ref = pd.DataFrame({"P": rng.uniform(3e3, 1e5, 20000), "ETA": rng.uniform(2, 5, 20000)})
    >>> ref["DLLp"] = rng.normal(10, 8, 20000)
    >>> res = efficiency_pulls(ref, ref, ["DLLp"])
    >>> list(res["cuts"]), pull_score(res)
    (['DLLp > 0', 'DLLp > 5', 'DLLp > 10', 'DLLp > 15'], 0.0)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from mambah.errors import ConfigurationError, DataError, MissingColumnError, ModelDirError
from mambah.validation.compare import (ETA_NAMES, OCCUPANCY_NAMES, P_NAMES, default_cuts, guess_column,
                                       quantile_edges)
from mambah.validation.cuts import Cut, parse_cut, resolve_column
from mambah.validation.efficiency import (MAD_TO_SIGMA, bin_index, binned_efficiency, check_edges,
                                          compare_in_bins, comparison_columns, merge_comparison,
                                          pull_summary)
from mambah.validation.stats import effective_size

log = logging.getLogger(__name__)

__all__ = ["MIN_N_EFF", "TARGET_N_EFF", "default_bins", "efficiency_pulls", "pull_score", "pulls_frame",
           "pid_efficiency", "pid_efficiency_summary", "pid_efficiency_to_dict", "format_pid_efficiency", "load_pid_model",
           "check_cuts", "ChainModel"]

#: Kish effective size a bin needs to enter the summaries (see the module docstring).
MIN_N_EFF = 100.0
#: an efficiency error below this is rounding, not an uncertainty (members agreeing to the last bits, a bin
#: whose data all pass or all fail): such a bin gets no pull and no z (NaN) rather than diff / 1e-16
ERROR_FLOOR = 1e-9
#: effective size per cell the default bins aim at.
TARGET_N_EFF = 300.0
#: bins per axis of the default binning (p: adaptive between the two numbers).
N_ETA_BINS, N_OCCUPANCY_BINS, N_P_BINS = 3, 2, (3, 8)

#: the pull's denominator, as results name it
_PULL_ERROR = {False: "reference", True: "reference+generated"}


# ------------------------------------------------------------------------------------ binning


def _guess_axes(columns: Sequence[str]) -> list[str]:
    axes = [guess_column(columns, names) for names in (P_NAMES, ETA_NAMES, OCCUPANCY_NAMES)]
    return [a for a in axes if a is not None]


def default_bins(data, weight=None, columns: Sequence[str] | None = None, *,
                 target_n_eff: float = TARGET_N_EFF, where: str = "the reference") -> dict[str, np.ndarray]:
    """Weighted-quantile edges of ``data`` for the efficiency tables (see the module docstring).

    Args:
        data: the reference (DataFrame or mapping of columns).
        weight: per-row weights (array), a weight column's name, or None (1).
        columns: the binning columns; default: the momentum, pseudorapidity and occupancy columns
            found in ``data`` (``P``, ``ETA``, ``nLongTracks``/``nTracks``, also with a prefix ``x_``).
        target_n_eff: effective size per cell the momentum binning aims at.
        where: how messages name ``data``.

    Returns:
        ``{column: edges}`` (float arrays; outer edges = the data's min and max).

    Raises:
        ConfigurationError: no binning column found or given.
        MissingColumnError: a given column is not in ``data``.
    """
    cols = [str(c) for c in (data.columns if hasattr(data, "columns") else data)]
    axes = list(columns) if columns is not None else _guess_axes(cols)
    if not axes:
        raise ConfigurationError(f"no binning column: none of {', '.join(cols)} is a momentum, pseudorapidity or "
                                 "occupancy column; give the bins (e.g. bins={'P': edges})")
    missing = [a for a in axes if a not in cols]
    if missing:
        raise MissingColumnError(missing, cols, where=f"{where} (binning variables)")
    w = _weight_array(data, weight, where)
    n_eff = effective_size(w) if w is not None else float(len(data))
    per = {}
    for a in axes:
        if guess_column([a], ETA_NAMES):
            per[a] = N_ETA_BINS
        elif guess_column([a], OCCUPANCY_NAMES):
            per[a] = N_OCCUPANCY_BINS
        elif guess_column([a], P_NAMES):
            per[a] = 0  # adaptive, below
        else:
            per[a] = N_ETA_BINS
    fixed = int(np.prod([n for n in per.values() if n > 0])) or 1
    n_p = int(np.clip(n_eff // (target_n_eff * fixed), *N_P_BINS))
    out = {}
    for a in axes:
        x = np.asarray(data[a], dtype=float)
        e = quantile_edges(x, w if w is not None else np.ones(len(x)), per[a] or n_p)
        if len(e) < 2:  # a constant column: one bin around it
            e = np.array([e[0] - 0.5, e[0] + 0.5])
        e[-1] = np.nextafter(e[-1], np.inf)  # bins are [lo, hi): the maximum is inside the last one
        out[a] = e
    return out


def _weight_array(df, weight, where: str) -> np.ndarray | None:
    if weight is None:
        return None
    if isinstance(weight, str):
        cols = list(df.columns) if hasattr(df, "columns") else list(df)
        if weight not in cols:
            raise MissingColumnError([weight], [str(c) for c in cols], where=f"{where} (its weight column)")
        w = np.asarray(df[weight], dtype=float)
    else:
        w = np.asarray(weight, dtype=float).ravel()
        if w.shape != (len(df),):
            raise DataError(f"{where} has {len(df)} rows but {w.size} weights were given")
    bad = ~np.isfinite(w)
    if bad.any():
        name = f" (column {weight!r})" if isinstance(weight, str) else ""
        raise DataError(f"{where}: {int(bad.sum())} of {len(w)} weights{name} are NaN or inf")
    return w


def _resolve_bins(bins, edges, data, w, default_axes: Sequence[str], where: str) -> tuple[dict[str, np.ndarray], set]:
    """``(edges, given)``: the edges of every binning column, and the columns whose edges were given.

    ``bins``: None (``default_axes``), a list of columns, or ``{column: edges or None}``; ``edges``:
    ``{column: edges}`` for some of them. Columns without given edges get :func:`default_bins`.
    """
    if bins is None:
        axes = list(default_axes)
    elif isinstance(bins, Mapping):
        axes = list(bins)
        edges = {**{k: v for k, v in bins.items() if v is not None}, **(edges or {})}
    elif not isinstance(bins, str) and all(isinstance(b, str) for b in bins):
        axes = list(bins)
    else:
        raise ConfigurationError(f"bins must be None, a list of column names or {{column: edges}}, got {bins!r}")
    if not axes:
        raise ConfigurationError(f"no binning column for {where}: give bins (e.g. bins=['P', 'ETA'])")
    edges = dict(edges or {})
    unknown = [c for c in edges if c not in axes]
    if unknown:
        raise ConfigurationError(f"edges given for {', '.join(unknown)}, which is not a binning column "
                                 f"({', '.join(axes)})")
    cols = [str(c) for c in (data.columns if hasattr(data, "columns") else data)]
    miss = [a for a in axes if a not in cols]
    if miss:
        raise MissingColumnError(miss, cols, where=f"{where} (binning variables)")
    _check_finite(data, axes, where)
    rest = [a for a in axes if a not in edges]
    defaults = default_bins(data, w, rest, where=where) if rest else {}
    return check_edges({a: edges[a] if a in edges else defaults[a] for a in axes}), set(edges)


def _check_finite(df, columns, where: str) -> None:
    bad = {c: int((~np.isfinite(np.asarray(df[c], dtype=float))).sum()) for c in columns}
    bad = {c: n for c, n in bad.items() if n}
    if bad:
        raise DataError(f"{where} has NaN or inf values ({', '.join(f'{c}: {n} rows' for c, n in bad.items())}); "
                        "clean them before computing efficiencies")


# ------------------------------------------------------------------------- efficiency pulls

class _Same:
    """The default of ``gen_weight``: the generated sample's weights are the reference's (see efficiency_pulls)."""

    def __repr__(self) -> str:
        return "same as weight"


_SAME = _Same()


def _cuts_for(targets, cuts, reference, w_ref) -> list[Cut]:
    out: list[Cut] = []
    if targets:
        out += default_cuts(list(targets), reference, w_ref)
    out += [parse_cut(c) for c in (cuts or [])]
    if not out:
        raise ConfigurationError("efficiency_pulls needs targets (their typical cuts are used) or cuts")
    seen, unique = set(), []
    for c in out:
        if c.label not in seen:
            seen.add(c.label)
            unique.append(c)
    return unique


def _records(cols: dict[str, np.ndarray]) -> list[dict]:
    """Rows of a dict of equal-length arrays as JSON-able dicts (NaN/inf -> None)."""
    lists = {k: [None if isinstance(x, float) and not math.isfinite(x) else x for x in np.asarray(v).tolist()]
             for k, v in cols.items()}
    keys = list(lists)
    return [dict(zip(keys, row)) for row in zip(*lists.values())]


def _clean(d: dict) -> dict:
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in d.items()}


def efficiency_pulls(
    reference: pd.DataFrame,
    generated: pd.DataFrame,
    targets: Sequence[str] | None = None,
    *,
    weight=None,
    gen_weight=_SAME,
    cuts: Sequence[str | Cut] | None = None,
    bins=None,
    min_n_eff: float = MIN_N_EFF,
    gen_error_in_pull: bool = False,
) -> dict:
    """Efficiencies of PID cuts in bins, reference against generated, their pulls and a summary.

    Args:
        reference: the reference sample (data: calibration rows), one row per track, with the
            targets and the binning columns.
        generated: the generated sample (usually the model applied to the reference's conditions:
            the twins of its rows; several draws may be concatenated).
        targets: target columns whose typical cuts are used (``DLLp`` → ``DLLp > 0, 5, 10, 15``;
            :func:`~mambah.validation.cuts.typical_cuts`; a target without any: its reference median).
        weight: the reference's weights: a column name, an array, or None (1). Signed sWeights allowed.
        gen_weight: the generated sample's weights (column name, array, None). Default: the same as
            ``weight`` — the column of that name in the generated sample if it has one, else (an
            array, or a column the generated sample lacks) the reference's weights row by row,
            which requires as many rows (twins: row i generated from the conditions of row i).
        cuts: more cuts (``"DLLp > 5"`` or :class:`~mambah.validation.cuts.Cut`), after the typical ones.
        bins: None (default bins of the reference: :func:`default_bins`), a list of binning
            columns (default edges for them), or ``{column: edges}`` (used as given: rows outside
            are left out and counted; an edges value None means default edges for that column).
            A trainer calling this at every step can compute ``default_bins(reference, weight)``
            once and pass the result (it saves the quantiles' sort).
        min_n_eff: Kish effective size of the reference a bin needs to enter the summaries.
        gen_error_in_pull: divide by ``sqrt(σ_ref² + σ_gen²)`` instead of ``σ_ref`` (for a generated
            sample not much larger than the reference: one draw per twin adds its own noise, and
            the pulls of a perfect model then have a width of ``sqrt(1 + (σ_gen/σ_ref)²)``).

    Returns:
        A JSON-able dict::

            {"cuts": {label: {"column", "op", "value",
                              "overall": {"ref_eff", "ref_error", "gen_eff", "gen_error", "diff", "pull"},
                              "summary": {"n_bins" (used), "n_bins_total", "pull_mean", "pull_width",
                                          "pull_rms", "worst_bin" (its row), "gen_to_ref_error"},
                              "bins": [one dict per cell: <col>_lo, <col>_hi, n_ref, n_gen, n_eff_ref,
                                       ref_eff, ref_error, gen_eff, gen_error, diff, pull, used]}},
             "bins": {col: edges}, "min_n_eff", "pull_error", "n_ref", "n_gen",
             "n_ref_outside", "n_gen_outside", "score" (:func:`pull_score`)}

        Non-finite numbers are None. A bin where every reference row passes (or none does) has
        reference error 0; its pull uses the binomial error of the generated efficiency instead
        (``zero_error="binomial"`` of :func:`~mambah.validation.efficiency.compare_in_bins`).

    Raises:
        MissingColumnError: a sample lacks a cut's, a bin's or the weight's column (named).
        DataError: NaN/inf in a used column or weight; twins' weights for samples of unequal size.
        ConfigurationError: no targets nor cuts; unreadable cut; bad edges.
    """
    w_ref = _weight_array(reference, weight, "the reference")
    if gen_weight is _SAME:
        gcols = list(generated.columns) if hasattr(generated, "columns") else list(generated)
        if weight is None:
            w_gen = None
        elif isinstance(weight, str) and weight in gcols:
            w_gen = _weight_array(generated, weight, "the generated sample")
        elif len(generated) == len(reference):
            w_gen = w_ref  # twins: row i of the generated sample carries the weight of reference row i
        else:
            what = f"has no weight column {weight!r} and" if isinstance(weight, str) else ""
            raise DataError(f"the generated sample {what} cannot carry the reference's weights row by row: it has "
                            f"{len(generated)} rows, the reference {len(reference)}; give gen_weight")
    else:
        w_gen = _weight_array(generated, gen_weight, "the generated sample")
    parsed = _cuts_for(targets, cuts, reference, w_ref)
    ref_cols = [str(c) for c in (reference.columns if hasattr(reference, "columns") else reference)]
    edges, given = _resolve_bins(bins, None, reference, w_ref, _guess_axes(ref_cols), "the reference")
    for df, where in ((reference, "the reference"), (generated, "the generated sample")):
        cols = ref_cols if df is reference else [str(c) for c in (df.columns if hasattr(df, "columns") else df)]
        need = list(edges) + [resolve_column(c, cols) or c for cut in parsed for c in cut.columns]
        missing = [c for c in dict.fromkeys(need) if c not in set(cols)]
        if missing:
            raise MissingColumnError(missing, cols, where=f"{where} (cut and binning columns)")
        _check_finite(df, list(dict.fromkeys(need)), where)
    cb_ref = _cells_mixed(reference, edges, given, "the reference")
    cb_gen = _cells_mixed(generated, edges, given, "the generated sample")
    n_cells = int(np.prod([len(e) - 1 for e in edges.values()]))
    all_inside = bool(np.all(cb_ref >= 0) and np.all(cb_gen >= 0))
    out_cuts = {}
    all_pulls = []
    for cut in parsed:
        pr, pg = cut.apply(reference), cut.apply(generated)
        c = compare_in_bins(cb_ref, pr, cb_gen, pg, n_cells, w_ref, w_gen, gen_error_in_pull=gen_error_in_pull,
                            zero_error="binomial")
        table = comparison_columns(edges, c)
        pulls = table["pull"]
        used = np.isfinite(pulls) & (table["n_eff_ref"] >= min_n_eff)
        table["used"] = used
        summ = pull_summary(table, min_n_eff)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = table["gen_error"][used] / table["ref_error"][used]
        ratio = ratio[np.isfinite(ratio)]
        summ["gen_to_ref_error"] = float(np.median(ratio)) if len(ratio) else float("nan")
        if summ["worst_bin"] is not None:
            summ["worst_bin"] = _clean(summ["worst_bin"])
        if all_inside:
            o = merge_comparison(c, gen_error_in_pull=gen_error_in_pull, zero_error="binomial")
        else:
            o = compare_in_bins(np.zeros(len(reference), dtype=np.int64), pr, np.zeros(len(generated), dtype=np.int64),
                                pg, 1, w_ref, w_gen, gen_error_in_pull=gen_error_in_pull, zero_error="binomial")
        overall = {"ref_eff": o["ref"]["eff"][0], "ref_error": o["ref"]["err"][0], "gen_eff": o["gen"]["eff"][0],
                   "gen_error": o["gen"]["err"][0], "diff": o["diff"][0], "pull": o["pull"][0],
                   "n_eff_ref": o["ref"]["n_eff"][0]}
        all_pulls.append(pulls[used])
        out_cuts[cut.label] = {
            "column": cut.column if cut.minus is None else f"{cut.column} - {cut.minus}", "op": cut.op,
            "value": float(cut.value), "overall": _clean({k: float(v) for k, v in overall.items()}),
            "summary": _clean(summ), "bins": _records(table),
        }
    res = {
        "cuts": out_cuts,
        "bins": {k: v.tolist() for k, v in edges.items()},
        "bins_source": ("default: weighted quantiles of the reference" if not given else
                        f"given for {', '.join(sorted(given))}" + (", default for the others" if set(edges) - given else "")),
        "min_n_eff": float(min_n_eff),
        "pull_error": _PULL_ERROR[bool(gen_error_in_pull)],
        "n_ref": int(len(reference)), "n_gen": int(len(generated)),
        "n_ref_outside": int(np.sum(cb_ref < 0)), "n_gen_outside": int(np.sum(cb_gen < 0)),
    }
    if res["n_ref_outside"] or res["n_gen_outside"]:
        log.info("efficiency pulls: %d reference and %d generated rows lie outside the given bins and are left out",
                 res["n_ref_outside"], res["n_gen_outside"])
    res["score"] = _score(all_pulls)
    return res


def _score(pulls: list[np.ndarray]) -> float | None:
    p = np.concatenate(pulls) if pulls else np.zeros(0)
    return float(np.sqrt(np.mean(p * p))) if len(p) else None


def pull_score(result: dict) -> float:
    """One number to rank checkpoints: the RMS of the pulls of every used bin of every cut.

    ``sqrt(mean(pull²))`` over the bins with enough signal of all cuts of an
    :func:`efficiency_pulls` result — the square root of χ²/n of the efficiency comparison.

    Why this one: it is 0 for identical samples, ≈ the pulls' natural width for a perfect model
    (≈ 1 when the generated sample's own noise is small or in the denominator), and it grows with
    *both* a global shift (the pulls' mean) and a local displacement (a tail in a few high-p bins):
    one bin at 5σ among 48 raises it from 1 to 1.23. The robust width and the median would ignore
    exactly that bin, and a maximum is dominated by the luckiest fluctuation and jumps between
    checkpoints. Compare it only between results on the same reference and bins (the bins of
    :func:`default_bins` depend on the reference alone, so every checkpoint of a training is
    judged in the same bins). Lower is better.

    Returns:
        The score (NaN when no bin has enough signal).
    """
    if "cuts" not in result:
        raise ConfigurationError("pull_score takes the dict returned by efficiency_pulls")
    pulls = [np.array([b["pull"] for b in c["bins"] if b["used"]], dtype=float) for c in result["cuts"].values()]
    s = _score(pulls)
    return float("nan") if s is None else s


def pulls_frame(result: dict, cut: str | None = None) -> pd.DataFrame:
    """The bins of one cut of an :func:`efficiency_pulls` result as a DataFrame (all cuts, with a
    ``cut`` column, when ``cut`` is None)."""
    if cut is not None:
        if cut not in result["cuts"]:
            raise ConfigurationError(f"no cut {cut!r} in the result; it has {', '.join(map(repr, result['cuts']))}")
        t = pd.DataFrame(result["cuts"][cut]["bins"])
        for col in t.columns:
            t[col] = t[col].astype(bool) if col == "used" else pd.to_numeric(t[col]).astype(float)
        return t
    frames = [pulls_frame(result, c).assign(cut=c) for c in result["cuts"]]
    return pd.concat(frames, ignore_index=True)


# ------------------------------------------------------------------------ the model applied


def load_pid_model(model, models_dir=None):
    """A PID model from a directory or a shipped model's name (registry, cached); objects pass through.

    Raises:
        ModelDirError: no such model, or a model directory that is not a PID model (``kind`` is not
            ``"pid"``): the message names the directory and what it holds.
    """
    if not isinstance(model, (str, bytes)) and not hasattr(model, "__fspath__"):
        for attr in ("conditions", "targets", "generate"):
            if not hasattr(model, attr):
                raise ModelDirError(f"{type(model).__name__} is not a PID model: it has no {attr!r} (give a PID "
                                    "model directory or a loaded PidModel)")
        return model
    from mambah.modeldir import load_card, resolve_model
    from mambah.nn.registry import load_model

    path = resolve_model(model, models_dir)
    kind = load_card(path).get("kind")  # before loading any network
    if kind != "pid":
        raise ModelDirError(f"{str(model)!r} holds a {kind!r} model, not a PID model (card kind 'pid': a generator of "
                            "PID variables such as models/pid-p-dllp-lhcb-run3)")
    return load_model(path, kind="pid")


class ChainModel:
    """A species' PID chain seen as one PID model, for :func:`pid_efficiency` (``mambah pid-efficiency
    --chain K``).

    Conditions are the chain's inputs (``P``, ``ETA``, ``nTracks``, ``charge``), targets its outputs
    (``PIDK``, ``RichDLLk``, ``isMuon`` ...: :data:`~mambah.pid.chain.CHAIN_OUTPUTS`). ``generate``
    draws the nominal chain with a ``numpy.random.default_rng(seed)``; ``generate_variations`` the
    nominal and every ensemble member of the chain with the same random numbers
    (:meth:`~mambah.pid.chain.PidChain.generate_variations_columns`: member k is member k of every
    step that has members), as ``f"{target}_var{k}"`` columns. ``n_members`` is the chain's K
    (0 when no step has members).
    """

    def __init__(self, chain):
        from mambah.pid.chain import CHAIN_INPUTS, CHAIN_OUTPUTS

        self.chain = chain
        self.conditions = list(CHAIN_INPUTS)
        self.targets = list(CHAIN_OUTPUTS)
        self.name = f"PID chain of {chain.species!r}"
        self.path = ", ".join(str(p) for p in chain.model_dirs().values())
        self.n_members = int(chain.n_members())

    @classmethod
    def load(cls, species: str, models_dir=None) -> ChainModel:
        from mambah.pid.chain import load_chain

        return cls(load_chain(species, models_dir))

    def generate(self, data, seed=0) -> pd.DataFrame:
        cols = self.chain.generate_columns(data[self.conditions], np.random.default_rng(seed))
        return pd.DataFrame({t: cols[t] for t in self.targets})

    def generate_variations(self, data, seed=0) -> pd.DataFrame:
        lanes = self.chain.generate_variations_columns(data[self.conditions], np.random.default_rng(seed))
        out = {t: lanes[0][t] for t in self.targets}
        for k, lane in enumerate(lanes[1:], start=1):
            out.update({f"{t}_var{k}": lane[t] for t in self.targets})
        return pd.DataFrame(out)


def check_cuts(cuts: Sequence[str | Cut], targets: Sequence[str], model_name: str = "the model") -> list[Cut]:
    """The parsed cuts, each on columns among ``targets`` (any LHCb spelling: ``PIDp`` finds ``DLLp``).

    Raises:
        ConfigurationError: no cut, an unreadable one, or one on a column the model does not generate.
    """
    parsed = [parse_cut(c) for c in cuts]
    if not parsed:
        raise ConfigurationError("give at least one cut, e.g. 'DLLp > 5'")
    for c in parsed:
        for col in c.columns:
            if resolve_column(col, targets) is None:
                raise ConfigurationError(f"the cut {c.label!r} reads {col!r}, which model {model_name!r} does not "
                                         f"generate (its targets: {', '.join(targets)}); cut on a target of the model")
    return parsed


def _draw_seeds(seed: int, draws: int) -> list[int]:
    """``seed`` itself for the first draw (so one draw is ``mambah generate --seed S``), then seeds
    derived from ``(seed, d)``."""
    extra = np.random.SeedSequence([int(seed), 202622]).generate_state(max(draws - 1, 0), dtype=np.uint32)
    return [int(seed), *(int(s) for s in extra)]


def pid_efficiency(
    model,
    data: pd.DataFrame,
    cuts: Sequence[str | Cut],
    *,
    bins=None,
    edges: Mapping[str, Sequence[float]] | None = None,
    weight=None,
    seed: int = 0,
    draws: int = 1,
    min_n_eff: float = MIN_N_EFF,
    models_dir=None,
) -> pd.DataFrame:
    """PIDCalib-style efficiency table of ``cuts`` predicted by ``model`` on ``data``'s conditions.

    The model generates its targets for every row (``model.generate(data[model.conditions],
    seed)``; with an ensemble ``model.generate_variations``, the members drawing with the nominal's
    noise) ``draws`` times (independent noise, the pass fractions averaged: the nominal's own noise
    shrinks as ``1/draws``); every row keeps its weight.

    Args:
        model: a loaded PID model, or a model directory / shipped model's name. An ensemble model has
            ``n_members`` = K ≥ 1 and ``generate_variations(data, seed=...)`` returning the nominal's
            target columns and ``f"{target}_var{k}"`` for k = 1..K.
        data: table with the model's conditions (+ the weight column; + the real target columns
            for a calibration sample: then the data efficiency is compared).
        cuts: requirements on the model's targets (``"DLLp > 5"``; any LHCb spelling: ``PIDp > 5``).
        bins: binning columns (default: the momentum and pseudorapidity conditions) or
            ``{column: edges}``.
        edges: edges for some binning columns (the others get :func:`default_bins` edges of ``data``).
        weight: per-row weights: column name, array or None (1). Signed sWeights allowed.
        seed: seed of the model's noise (the first draw uses ``seed`` itself, as ``mambah generate
            --seed``; draw ``d`` > 0 a seed derived from ``(seed, d)``).
        draws: noise draws per row.
        min_n_eff: effective size a bin needs to enter the summary (``used``).
        models_dir: where model names are looked up.

    Returns:
        DataFrame, one row per (cut, cell) plus one row per cut with ``cell = -1`` (the whole
        sample): ``cut``, ``cell``, ``<col>_lo``, ``<col>_hi`` per binning column, ``n`` (rows),
        ``n_eff`` (Kish), ``sum_w``, ``model_eff`` (the nominal), ``model_stat_error``,
        ``model_ens_error`` (σ_ens, NaN without ensemble), ``n_members``, and when ``data`` holds
        the cut's columns: ``data_eff``, ``data_stat_error``, ``diff`` (data − model), ``pull``
        (diff / data_stat_error), ``z`` (diff / sqrt(σ_ens² + data_stat_error²); without ensemble
        = pull; in a bin whose data all pass or all fail, where data_stat_error is 0, both use
        ``sqrt(ε_model (1 − ε_model) / n_eff)`` instead, :func:`_pull_error`); ``used``. ``table.attrs["summary"]`` is :func:`pid_efficiency_summary`'s result,
        ``table.attrs["info"]`` the inputs (model, draws, seed, bins, members, rows outside).

    Raises:
        ConfigurationError: a cut on a column the model does not generate; draws < 1; bad edges.
        MissingColumnError: ``data`` lacks a condition, binning or weight column.
        DataError: NaN/inf in a condition, a binning column or the weights.
        ModelDirError: ``model`` is not a PID model.
    """
    model = load_pid_model(model, models_dir)
    if int(draws) < 1:
        raise ConfigurationError(f"draws must be >= 1, got {draws!r}")
    if not isinstance(data, pd.DataFrame):
        raise ConfigurationError(f"data must be a pandas DataFrame, not {type(data).__name__}")
    name = getattr(model, "name", type(model).__name__)
    conds, targets = list(model.conditions), list(model.targets)
    missing = [c for c in conds if c not in data.columns]
    if missing:
        raise MissingColumnError(missing, list(map(str, data.columns)),
                                 where=f"the data (conditions of model {name!r})")
    parsed = check_cuts(cuts, targets, name)
    w = _weight_array(data, weight, "the data")
    if w is not None:
        from mambah.io import check_weights

        check_weights(w, where=f"the data's weights{f' (column {weight!r})' if isinstance(weight, str) else ''}")
    # binning: given edges are used as they are (rows outside are counted and left out of the bins);
    # the other axes get default edges (outer edges = the data's min and max, nothing left out)
    default_axes = [a for a in (guess_column(conds, P_NAMES), guess_column(conds, ETA_NAMES)) if a is not None] \
        or conds[:2]
    edg, given = _resolve_bins(bins, edges, data, w, default_axes, "the data")
    cells = _cells_mixed(data, edg, given)
    n_outside = int(np.sum(cells < 0))
    if n_outside:
        log.warning("%d of %d rows lie outside the given edges and are left out of the bins (kept in the "
                    "'whole sample' row)", n_outside, len(data))
    n_cells = int(np.prod([len(e) - 1 for e in edg.values()]))

    # the model, draws times
    k = int(getattr(model, "n_members", 0) or 0)
    cond = data[conds]
    npass = {c.label: np.zeros((len(data), k + 1)) for c in parsed}
    for s in _draw_seeds(seed, int(draws)):
        if k > 0:
            out = model.generate_variations(cond, seed=s)
            need = [f"{t}_var{j}" for t in targets for j in range(1, k + 1)] + targets
            lack = [c for c in need if c not in out.columns]
            if lack:
                raise ModelDirError(f"model {name!r} has n_members = {k} but generate_variations returned no "
                                    f"{', '.join(lack[:5])}{' ...' if len(lack) > 5 else ''}")
        else:
            out = model.generate(cond, seed=s)
        if len(out) != len(data):
            raise DataError(f"model {name!r} returned {len(out)} rows for {len(data)} rows of conditions")
        frames = [{t: np.asarray(out[t]) for t in targets}]
        frames += [{t: np.asarray(out[f"{t}_var{j}"]) for t in targets} for j in range(1, k + 1)]
        for c in parsed:
            for j, f in enumerate(frames):
                npass[c.label][:, j] += c.apply(f)
    info = {"model": name, "path": str(getattr(model, "path", "") or ""), "n_members": k, "draws": int(draws),
            "seed": int(seed), "bins": {a: e.tolist() for a, e in edg.items()}, "n_rows": int(len(data)),
            "n_outside": n_outside, "weight": weight if isinstance(weight, str) or weight is None else "array",
            "min_n_eff": float(min_n_eff), "conditions": conds, "targets": targets}
    rows = []
    zeros = np.zeros(len(data), dtype=np.int64)
    for c in parsed:
        frac = npass[c.label] / int(draws)
        dcols = [resolve_column(col, list(data.columns)) for col in c.columns]
        has_data = all(d is not None for d in dcols)
        if has_data:
            _check_finite(data, dcols, "the data")
            dpass = c.apply(data)
        for cb, nb, is_all in ((cells, n_cells, False), (zeros, 1, True)):
            nom = binned_efficiency(cb, frac[:, 0], w, nb)
            t = {"cut": [c.label] * nb, "cell": np.full(nb, -1) if is_all else np.arange(nb)}
            shape = [len(e) - 1 for e in edg.values()]
            idx = np.unravel_index(np.arange(nb), shape) if not is_all else None
            for j, (a, e) in enumerate(edg.items()):
                t[f"{a}_lo"] = np.full(nb, e[0]) if is_all else e[idx[j]]
                t[f"{a}_hi"] = np.full(nb, e[-1]) if is_all else e[idx[j] + 1]
            t.update(n=nom["n"], n_eff=nom["n_eff"], sum_w=nom["sum_w"], model_eff=nom["eff"],
                     model_stat_error=nom["err"])
            if k >= 2:
                mem = np.stack([binned_efficiency(cb, frac[:, j], w, nb)["eff"] for j in range(1, k + 1)])
                with np.errstate(invalid="ignore"):
                    ens = np.std(mem, axis=0, ddof=1)
            else:
                ens = np.full(nb, np.nan)
            t["model_ens_error"] = ens
            t["n_members"] = np.full(nb, k)
            if has_data:
                d = binned_efficiency(cb, dpass, w, nb)
                diff = d["eff"] - nom["eff"]
                err = _pull_error(d, nom["eff"])
                with np.errstate(divide="ignore", invalid="ignore"):
                    # errors below ERROR_FLOOR are rounding (members that agree to the last bits): no pull or
                    # z there, not diff / 1e-16
                    pull = np.where(err > ERROR_FLOOR, diff / err, np.nan)
                    den = np.sqrt(np.where(np.isfinite(ens), ens ** 2, 0.0) + err ** 2)
                    z = np.where(den > ERROR_FLOOR, diff / den, np.nan)
                t.update(data_eff=d["eff"], data_stat_error=d["err"], diff=diff, pull=pull, z=z)
            t["used"] = (nom["n_eff"] >= min_n_eff) & np.isfinite(nom["eff"])
            rows.append(pd.DataFrame(t))
    table = pd.concat(rows, ignore_index=True)
    order = ["cut", "cell", *[f"{a}_{s}" for a in edg for s in ("lo", "hi")], "n", "n_eff", "sum_w", "model_eff",
             "model_stat_error", "model_ens_error", "n_members", "data_eff", "data_stat_error", "diff", "pull", "z",
             "used"]
    table = table[[c for c in order if c in table.columns]]
    table.attrs["info"] = info
    table.attrs["summary"] = pid_efficiency_summary(table, min_n_eff)
    return table


def _pull_error(d: dict, model_eff: np.ndarray) -> np.ndarray:
    """The data's error in the pull and z: its statistical error, or where that is 0 because every data
    row of the bin passes (or none does) the error the data would have if the model's efficiency were
    true, ``sqrt(ε_model (1 − ε_model) / n_eff)`` (as :func:`efficiency_pulls`, ``zero_error="binomial"``).
    Without it such a bin had no pull: a model losing 2% of a bin where all 300 data rows pass
    vanished from the summary instead of pulling by +2.5."""
    with np.errstate(divide="ignore", invalid="ignore"):
        em = np.clip(model_eff, 0.0, 1.0)
        floor = np.sqrt(em * (1.0 - em) / d["n_eff"])
    return np.where((d["err"] <= ERROR_FLOOR) & (d["n_eff"] > 0), floor, d["err"])


def _cells_mixed(data, edg: dict, user_cols: set, where: str = "the data") -> np.ndarray:
    """Flat cell index (first column slowest, -1: outside) with clipping on the default-edged axes
    only: values beyond their outer edges go to the outer bins, while given edges leave rows out."""
    cols = set(map(str, data.columns if hasattr(data, "columns") else data))
    missing = [c for c in edg if c not in cols]
    if missing:
        raise MissingColumnError(missing, sorted(cols), where=f"{where} (binning variables)")
    flat = np.zeros(len(data), dtype=np.int64)
    inside = np.ones(len(data), dtype=bool)
    for col, e in edg.items():
        nb = len(e) - 1
        b = bin_index(np.asarray(data[col], dtype=float), e, clip=col not in user_cols)
        inside &= (b >= 0) & (b < nb)
        flat = flat * nb + np.clip(b, 0, nb - 1)
    return np.where(inside, flat, -1)


def _robust_width(x: np.ndarray) -> float:
    return float(MAD_TO_SIGMA * np.median(np.abs(x - np.median(x)))) if len(x) else float("nan")


def pid_efficiency_summary(table: pd.DataFrame, min_n_eff: float | None = None) -> dict:
    """Per cut (and ``"all"`` cuts pooled): the whole-sample efficiencies and the bins' calibration.

    Over the bins with ``used`` (effective size ≥ ``min_n_eff``) and a finite value: ``n_bins``;
    with data: ``pull_mean``, ``pull_width`` (robust) of (data − model)/σ_stat, ``z_mean``,
    ``z_width`` (robust), ``z_within_1`` (fraction of bins with |z| < 1; 0.68 when calibrated),
    ``median_ens_over_stat`` (median σ_ens / σ_stat, σ_stat the data's error — else the model's).
    ``overall``: the ``cell = -1`` row (model, its errors, data, pull, z).
    """
    if min_n_eff is not None:
        used = (table["n_eff"] >= min_n_eff) & np.isfinite(table["model_eff"])
    else:
        used = table["used"].astype(bool)
    has_data = "data_eff" in table.columns
    out = {}

    def block(t: pd.DataFrame) -> dict:
        b = t[(t["cell"] >= 0) & used.loc[t.index]]
        s: dict = {"n_bins": int(len(b)), "n_bins_total": int((t["cell"] >= 0).sum())}
        stat = b["data_stat_error"] if has_data else b["model_stat_error"]
        with np.errstate(divide="ignore", invalid="ignore"):
            r = (b["model_ens_error"] / stat).to_numpy(dtype=float)
        r = r[np.isfinite(r)]
        s["median_ens_over_stat"] = float(np.median(r)) if len(r) else None
        if has_data:
            p = b["pull"].to_numpy(dtype=float)
            p = p[np.isfinite(p)]
            z = b["z"].to_numpy(dtype=float)
            z = z[np.isfinite(z)]
            s.update(pull_mean=float(p.mean()) if len(p) else None, pull_width=_robust_width(p) if len(p) else None,
                     z_mean=float(z.mean()) if len(z) else None, z_width=_robust_width(z) if len(z) else None,
                     z_within_1=float(np.mean(np.abs(z) < 1)) if len(z) else None, n_z=int(len(z)))
        return s

    for label, t in table.groupby("cut", sort=False):
        s = block(t)
        o = t[t["cell"] < 0].iloc[0]
        keys = ["model_eff", "model_stat_error", "model_ens_error", "data_eff", "data_stat_error", "pull", "z",
                "n_eff"]
        s["overall"] = {k: (None if not np.isfinite(float(o[k])) else float(o[k])) for k in keys if k in o.index}
        out[str(label)] = s
    if table["cut"].nunique() > 1:
        out["all"] = block(table)
    return out


def pid_efficiency_to_dict(table: pd.DataFrame) -> dict:
    """JSON-able ``{"info", "summary", "table": [one dict per row]}`` of a :func:`pid_efficiency` table."""
    return {"info": table.attrs.get("info", {}), "summary": table.attrs.get("summary") or pid_efficiency_summary(table),
            "table": _records({c: table[c].to_numpy() for c in table.columns})}


# ----------------------------------------------------------------------------- printing


def _is_p(col: str) -> bool:
    return guess_column([col], P_NAMES) is not None


def format_pid_efficiency(table: pd.DataFrame) -> str:
    """The table as aligned text (efficiencies in %, momenta in GeV/c) with the summary lines."""
    info = table.attrs.get("info", {})
    summ = table.attrs.get("summary") or pid_efficiency_summary(table)
    axes = [c[:-3] for c in table.columns if c.endswith("_lo")]
    k = int(info.get("n_members", 0))
    has_data = "data_eff" in table.columns
    lines = []
    ens_txt = f"ensemble of {k} members" if k >= 2 else ("1 member: no spread" if k == 1 else
                                                          "no ensemble: model uncertainty not available")
    lines.append(f"model {info.get('model', '?')}: {ens_txt}; {info.get('draws', 1)} noise draw(s), seed "
                 f"{info.get('seed', 0)}; {info.get('n_rows', '?')} rows, weights {info.get('weight') or '1'}"
                 + (f"; {info['n_outside']} rows outside the bins" if info.get("n_outside") else ""))
    hdr = []
    for a in axes:
        hdr.append(f"{a} [GeV/c]" if _is_p(a) else a)
    hdr += ["n_eff", "model [%]", "±stat", "±ens"]
    if has_data:
        hdr += ["data [%]", "±stat", "pull", "z"]
    hdr.append("")
    for label, t in table.groupby("cut", sort=False):
        s = summ.get(str(label), {})
        o = s.get("overall", {})
        lines.append("")
        head = f"{label}: whole sample model {_pc(o.get('model_eff'))} ± {_pc(o.get('model_stat_error'))} (stat)"
        if k >= 2:
            head += f" ± {_pc(o.get('model_ens_error'))} (ens)"
        head += " %"
        if has_data:
            head += (f"; data {_pc(o.get('data_eff'))} ± {_pc(o.get('data_stat_error'))} %; pull "
                     f"{_num(o.get('pull'))}, z {_num(o.get('z'))}")
        lines.append(head)
        body = []
        for _, r in t[t["cell"] >= 0].iterrows():
            row = []
            for a in axes:
                f = 1e-3 if _is_p(a) else 1.0
                row.append(f"{r[f'{a}_lo'] * f:.4g}–{r[f'{a}_hi'] * f:.4g}")
            row += [f"{r['n_eff']:.0f}", _pc(r["model_eff"]), _pc(r["model_stat_error"]), _pc(r["model_ens_error"])]
            if has_data:
                row += [_pc(r["data_eff"]), _pc(r["data_stat_error"]), _num(r["pull"]), _num(r["z"])]
            row.append("" if r["used"] else "(few)")
            body.append(row)
        widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(hdr)]
        lines.append("  ".join(h.rjust(wd) for h, wd in zip(hdr, widths)).rstrip())
        lines += ["  ".join(v.rjust(wd) for v, wd in zip(b, widths)).rstrip() for b in body]
        lines.append(_summary_line(s, has_data, k))
    if "all" in summ:
        lines += ["", "all cuts: " + _summary_line(summ["all"], has_data, k).strip()]
    lines.append(f"(bins with n_eff >= {info.get('min_n_eff', MIN_N_EFF):g} enter the summaries; '(few)' marks the "
                 "others; stat errors from the signed weights: sqrt(Σ w² (pass − ε)²) / Σ w)")
    return "\n".join(lines)


def _summary_line(s: dict, has_data: bool, k: int) -> str:
    parts = [f"  {s.get('n_bins', 0)}/{s.get('n_bins_total', 0)} bins used"]
    if has_data and s.get("n_z"):
        parts.append(f"pull (data − model)/σ_stat: mean {_num(s.get('pull_mean'))}, robust width "
                     f"{_num(s.get('pull_width'), signed=False)}")
        if k >= 2:
            parts.append(f"z: mean {_num(s.get('z_mean'))}, robust width {_num(s.get('z_width'), signed=False)}, "
                         f"|z| < 1 in {_pc(s.get('z_within_1'), 0)}% of bins")
    if k >= 2 and s.get("median_ens_over_stat") is not None:
        parts.append(f"median σ_ens/σ_stat {_num(s.get('median_ens_over_stat'), signed=False)}")
    return "; ".join(parts)


def _pc(v, digits: int = 2) -> str:
    if v is None or not np.isfinite(float(v)):
        return "–"
    return f"{100 * float(v):.{digits}f}"


def _num(v, digits: int = 2, signed: bool = True) -> str:
    if v is None or not np.isfinite(float(v)):
        return "–"
    return f"{float(v):{'+' if signed else ''}.{digits}f}"
