"""Checks of the two samples a validation compares, shared by the score, the report and the CLI.

Every problem a user can make with the input (a column in one file and not in the other, NaN/inf,
weights that cannot normalise, too few rows) ends in a :class:`~mambah.errors.DataError` (or its
subclass :class:`~mambah.errors.MissingColumnError`) that names the sample, the column and the
count, before any work is done.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mambah.errors import ConfigurationError, DataError, MissingColumnError
from mambah.io import check_finite, check_weights

log = logging.getLogger(__name__)

__all__ = ["Sample", "prepare_sample", "prepare_pair", "pair_warnings"]

@dataclass(frozen=True)
class Sample:
    """One checked sample: the feature columns (float64) and the weights (float64, signed).

    Attributes:
        data: DataFrame with exactly the requested columns (float64), rows with NaN/inf removed
            if that was asked for.
        weights: one weight per row (1 when the sample is unweighted).
        weighted: whether weights were given.
        name: "reference" / "generated" (for messages).
    """

    data: pd.DataFrame
    weights: np.ndarray
    weighted: bool
    name: str

    def __len__(self) -> int:
        return len(self.data)

    def values(self, columns: Sequence[str] | None = None) -> np.ndarray:
        return self.data[list(columns) if columns is not None else list(self.data.columns)].to_numpy(float)


def _as_frame(df, name: str) -> pd.DataFrame:
    if isinstance(df, pd.DataFrame):
        return df
    if isinstance(df, dict):
        return pd.DataFrame(df)
    raise ConfigurationError(f"the {name} sample must be a pandas DataFrame (or a dict of columns), not {type(df).__name__}")


def prepare_sample(
    df,
    columns: Sequence[str],
    weight=None,
    *,
    name: str = "reference",
    drop_nonfinite: bool = False,
    min_rows: int = 0,
) -> Sample:
    """Check one sample and return its columns and weights.

    Args:
        df: the sample (DataFrame).
        columns: the feature columns needed.
        weight: column name, array of per-row weights, or None.
        name: how messages call the sample.
        drop_nonfinite: drop rows with NaN/inf in a column or the weight instead of refusing them.
        min_rows: refuse a sample with fewer rows (after dropping).
    """
    df = _as_frame(df, name)
    columns = list(columns)
    if not columns:
        raise ConfigurationError("no columns to compare: give at least one condition or target")
    if len(set(columns)) != len(columns):
        dup = sorted({c for c in columns if columns.count(c) > 1})
        raise ConfigurationError(f"columns listed twice: {', '.join(dup)}")
    needed = list(columns)
    wcol = None
    if isinstance(weight, str):
        wcol = weight
        if wcol in columns:
            raise ConfigurationError(f"the weight column {wcol!r} of the {name} sample is also a feature column")
        needed.append(wcol)
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise MissingColumnError(missing, [str(c) for c in df.columns], where=f"the {name} sample")
    data = pd.DataFrame({c: np.asarray(df[c].to_numpy(dtype=float)) for c in columns})
    if wcol is not None:
        w = df[wcol].to_numpy(dtype=float)
    elif weight is not None:
        w = np.asarray(weight, dtype=float).ravel()
        if w.shape != (len(df),):
            raise DataError(f"the {name} sample has {len(df)} rows but {w.size} weights were given")
    else:
        w = np.ones(len(df))
    data["__w__"] = w
    checked = [*columns, "__w__"]
    data = check_finite(data, checked, drop=drop_nonfinite, where=f"the {name} sample").reset_index(drop=True)
    w = data.pop("__w__").to_numpy()
    if len(data) < min_rows:
        raise DataError(
            f"the {name} sample has {len(data)} usable rows; the classifier needs at least {min_rows} "
            "(half to train, half to test)"
        )
    check_weights(w, where=f"the {name} sample's weights" + (f" (column {wcol!r})" if wcol else ""))
    return Sample(data=data, weights=w, weighted=weight is not None, name=name)


def prepare_pair(
    ref,
    gen,
    columns: Sequence[str],
    ref_weight=None,
    gen_weight=None,
    *,
    drop_nonfinite: bool = False,
    min_rows: int = 0,
) -> tuple[Sample, Sample]:
    """Check both samples; name the columns that one has and the other lacks."""
    ref_df, gen_df = _as_frame(ref, "reference"), _as_frame(gen, "generated")
    columns = list(columns)
    miss_ref = [c for c in columns if c not in ref_df.columns]
    miss_gen = [c for c in columns if c not in gen_df.columns]
    if miss_ref or miss_gen:
        parts = []
        if miss_ref:
            parts.append(f"the reference sample lacks {', '.join(map(repr, miss_ref))}")
        if miss_gen:
            parts.append(f"the generated sample lacks {', '.join(map(repr, miss_gen))}")
        which, df = (("reference", ref_df) if miss_ref else ("generated", gen_df))
        raise MissingColumnError(
            miss_ref or miss_gen, [str(c) for c in df.columns],
            where=f"both samples need the same columns: {'; '.join(parts)}. The {which} sample",
        )
    r = prepare_sample(ref_df, columns, ref_weight, name="reference", drop_nonfinite=drop_nonfinite, min_rows=min_rows)
    g = prepare_sample(gen_df, columns, gen_weight, name="generated", drop_nonfinite=drop_nonfinite, min_rows=min_rows)
    return r, g


def pair_warnings(ref: Sample, gen: Sample) -> list[str]:
    """Warnings about a pair of samples that is legal but probably not what the user meant."""
    out = []
    if np.any(ref.weights < 0) and not gen.weighted:
        out.append(
            "the reference sample has negative (sPlot) weights but the generated sample is unweighted: a "
            "generated sample must carry the sWeight of the reference row whose conditions produced it "
            "(gen_weight= / --gen-weight), otherwise its conditions follow signal plus background and even "
            "a perfect model scores badly"
        )
    return out
