"""Occupancy: the number of tracks per event, ``events.n_tracks``.

The occupancy model is a histogram of tracks per event shipped as a model directory
(``kind: "occupancy"``; arrays ``edges`` (integer bin edges, a bin is ``[lo, hi)``) and
``counts``). The stage draws a bin with probability proportional to its count and a uniform
integer inside it.

The shipped default, ``occupancy-lc-run3-v1``, is the **sWeighted** histogram of
``nLongTracks`` of the real LHCb Run 3 Lambda_c+ -> p K- pi+ calibration protons (public
pidcalib2 test data subset, GPL-3.0). sWeighted, because mambah simulates signal decays: the
occupancy of events that contain a signal candidate is the signal's occupancy, whereas the
unweighted histogram mixes in the combinatorial background, which comes preferentially from
busier events. The calibration sample is also what the PID networks are trained on, so they see
the same occupancy. Bins whose summed sWeights are negative (statistical fluctuations of the
subtraction in the sparse high-occupancy tail) are set to zero; the card records how many.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from mambah.errors import ConfigurationError, DataError, ModelDirError
from mambah.reconstruction._common import as_config, model_dir_entry, model_version_entry

__all__ = ["Occupancy", "OccupancyModel", "build_occupancy_model", "DEFAULT_OCCUPANCY"]

log = logging.getLogger(__name__)

DEFAULT_OCCUPANCY = "occupancy-lc-run3-v1"

_TARGETS = [{"name": "n_tracks", "unit": "", "quantity": "n_tracks"}]


@dataclasses.dataclass(frozen=True)
class OccupancyModel:
    """A loaded occupancy histogram."""

    name: str
    edges: np.ndarray
    counts: np.ndarray

    @classmethod
    def load(cls, path: str | os.PathLike) -> OccupancyModel:
        from mambah.modeldir import load_arrays, resolve_model, verify_model_dir

        p = resolve_model(path)
        card = verify_model_dir(p)
        name = card.get("name", p.name)
        if card.get("kind") != "occupancy":
            raise ModelDirError(f"model {name!r} ({str(p)!r}) is a {card.get('kind')!r} model, not 'occupancy'")
        tq = [t.get("quantity") for t in card.get("targets", []) if isinstance(t, dict)]
        if tq != ["n_tracks"]:
            raise ModelDirError(f"model {name!r}: card targets {tq} do not match the column this stage fills "
                                "(['n_tracks'])")
        a = load_arrays(p)
        for k in ("edges", "counts"):
            if k not in a:
                raise ModelDirError(f"model {name!r}: arrays.npz lacks {k!r} (has {', '.join(a) or 'nothing'})")
        edges = np.asarray(a["edges"], dtype=np.int64)
        counts = np.asarray(a["counts"], dtype=np.float64)
        if edges.ndim != 1 or len(edges) != len(counts) + 1 or np.any(np.diff(edges) <= 0):
            raise ModelDirError(f"model {name!r}: edges must be increasing with one more entry than counts")
        if np.any(counts < 0) or not np.isfinite(counts).all() or counts.sum() <= 0:
            raise ModelDirError(f"model {name!r}: counts must be finite, non-negative, with a positive sum")
        return cls(name, edges, counts)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` integer occupancies (int32)."""
        cdf = np.cumsum(self.counts)
        cdf /= cdf[-1]
        b = np.searchsorted(cdf, rng.random(n), side="right")
        b = np.minimum(b, len(self.counts) - 1)
        lo, hi = self.edges[b], self.edges[b + 1]
        return (lo + np.floor(rng.random(n) * (hi - lo))).astype(np.int32)

    def mean(self) -> float:
        centre = 0.5 * (self.edges[:-1] + self.edges[1:] - 1)
        return float(np.sum(centre * self.counts) / self.counts.sum())


_CACHE: dict[tuple[str, str], OccupancyModel] = {}


def _load_cached(model: str) -> OccupancyModel:
    from mambah.modeldir import model_hash, resolve_model

    p = resolve_model(model)
    key = (str(p.resolve()), model_hash(p))
    if key not in _CACHE:
        _CACHE[key] = OccupancyModel.load(p)
    return _CACHE[key]


@dataclasses.dataclass(frozen=True)
class Occupancy:
    """Fill ``events.n_tracks`` from an occupancy histogram (seeded by ``batch.rng(name)``).

    Args:
        model: name of a model under ``models/`` or a model directory (default
            :data:`DEFAULT_OCCUPANCY`).
        name: stage name (also the name of its random stream).

    If the batch has no ``events`` table yet, one is created with the batch's events (PV at the
    origin, weight 1).
    """

    model: str = DEFAULT_OCCUPANCY
    name: str = "occupancy"

    def config(self) -> dict[str, Any]:
        return as_config(self)

    def model_versions(self) -> dict[str, Any]:
        return model_version_entry(self.model)

    def model_dirs(self) -> dict[str, Any]:
        return model_dir_entry(self.model)

    def __call__(self, batch):
        from mambah.batch import empty_table

        m = _load_cached(self.model)
        n = batch.n_events
        if "events" in batch:
            ev = batch["events"]
            if len(ev) != n:
                raise ConfigurationError(f"batch {batch.id}: the events table has {len(ev)} rows for {n} events")
            ev = ev.copy()
        else:
            ev = empty_table("events", n)
            ev["batch"] = np.int64(batch.id)
            ev["event"] = np.arange(n, dtype=np.int32)
            ev["weight"] = np.float32(1.0)
        ev["n_tracks"] = m.sample(n, batch.rng(self.name))
        batch["events"] = ev
        return batch


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
    model = OccupancyModel(name or out.name, edges, counts)
    card = {
        "name": name or out.name,
        "version": "1",
        "kind": "occupancy",
        "species": [],
        "conditions": [],
        "targets": _TARGETS,
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
            "model_mean": model.mean(),
            "sum_of_weights": float(np.sum(w)),
            "n_negative_bins_zeroed": n_neg,
            "negative_weight_zeroed": neg_sum,
        },
        "units": {"n_tracks": "tracks per event"},
        "command": command or "",
    }
    return save_model_dir(out, card, arrays={"edges": edges, "counts": counts}, overwrite=overwrite)
