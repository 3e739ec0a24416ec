"""The occupancy fit: a histogram of tracks per event from a table, written as a model directory.

:func:`build_occupancy_model` histograms a column (``nLongTracks`` of a calibration sample),
optionally weighted (sWeights: the occupancy of the signal, not of the background that comes
preferentially from busier events), into a model directory of kind ``"occupancy"``, which loads as
:class:`~mambah.nn.occupancy.OccupancyModel` and feeds the
:class:`~mambah.reconstruction.occupancy.Occupancy` stage (how the shipped
``occupancy-lc-run3-v1`` was made: :mod:`mambah.reconstruction.occupancy`).

Example:
    >>> build_occupancy_model("calib.parquet", "models/occ", weight="sWeight")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from mambah.errors import ConfigurationError, DataError
from mambah.nn.occupancy import OCCUPANCY_TARGETS, OccupancyModel

__all__ = ["build_occupancy_model"]

log = logging.getLogger(__name__)


def build_occupancy_model(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    column: str = "nLongTracks",
    weight: str | None = None,
    bin_width: int = 4,
    name: str | None = None,
    description: str | None = None,
    data_license: str | None = None,
    command: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Histogram ``column`` of a table (optionally weighted, e.g. by sWeights) into a model directory.

    Bins are ``bin_width`` tracks wide from 0 to past the largest value; negative weighted bins
    are set to zero (counted in the card's metrics).
    """
    from mambah.io import check_finite, check_weights, read_table, split_spec
    from mambah.modeldir import save_model_dir

    if bin_width < 1:
        raise ConfigurationError(f"bin_width must be a positive number of tracks, got {bin_width}")
    cols = [column] + ([weight] if weight else [])
    df = read_table(data, columns=cols)
    df = check_finite(df, cols, where=str(data))
    x = df[column].to_numpy(np.float64)
    if len(x) == 0:
        raise DataError(f"{data}: no rows")
    if np.any(x < 0) or np.any(x != np.round(x)):
        raise DataError(f"{data}: column {column!r} must hold non-negative integers (tracks per event)")
    w = check_weights(df[weight].to_numpy(), where=f"{data}: column {weight!r}") if weight else np.ones(len(x))
    top = int(x.max()) + 1
    edges = np.arange(0, top + bin_width, bin_width, dtype=np.int64)
    counts, _ = np.histogram(x, bins=edges, weights=w)
    n_neg = int((counts < 0).sum())
    neg_sum = float(-counts[counts < 0].sum())
    counts = np.clip(counts, 0.0, None)
    path, _ = split_spec(data)
    h = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    out = Path(out)
    card = {
        "name": name or out.name,
        "version": "1",
        "kind": "occupancy",
        "species": [],
        "conditions": [],
        "targets": OCCUPANCY_TARGETS,
        "training_data": {
            "description": description or Path(path).name,
            "file": Path(path).name,
            "sha256": h,
            "n_rows": int(len(x)),
            "column": column,
            "weight": weight,
            "license": data_license,
        },
        "hyperparameters": {"bin_width": int(bin_width), "weighted": bool(weight),
                            "negative_bins": "set to zero"},
        "metrics": {
            "data_mean": float(np.sum(w * x) / np.sum(w)),
            "model_mean": OccupancyModel({"name": name or out.name}, edges, counts).mean(),
            "sum_of_weights": float(np.sum(w)),
            "n_negative_bins_zeroed": n_neg,
            "negative_weight_zeroed": neg_sum,
        },
        "units": {"n_tracks": "tracks per event"},
        "command": command or "",
    }
    return save_model_dir(out, card, arrays={"edges": edges, "counts": counts}, overwrite=overwrite)
