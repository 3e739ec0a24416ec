"""The occupancy model: a histogram of the number of tracks per event (card kind ``"occupancy"``).

A model directory holds the arrays ``edges`` (integer bin edges, a bin is ``[lo, hi)``) and
``counts`` (the bin contents, e.g. summed sWeights); :meth:`OccupancyModel.sample` draws a bin
with probability proportional to its count and a uniform integer inside it. The model has no
conditions (so nothing is ever outside its training range) and one target, ``n_tracks``. It is
built by :func:`mambah.training.occupancy.build_occupancy_model` and used by the
:class:`~mambah.reconstruction.occupancy.Occupancy` stage.
"""

from __future__ import annotations

import os

import numpy as np

from mambah.errors import ModelDirError
from mambah.nn.model import Model

__all__ = ["OccupancyModel", "OCCUPANCY_TARGETS"]

#: the targets of an occupancy model's card
OCCUPANCY_TARGETS = [{"name": "n_tracks", "unit": "", "quantity": "n_tracks"}]


class OccupancyModel(Model):
    """A loaded occupancy histogram (a :class:`~mambah.nn.model.Model` without conditions).

    Args:
        card: the model's card (``name``; ``targets`` ``n_tracks``).
        edges: integer bin edges (tracks per event), increasing, one more than ``counts``.
        counts: non-negative bin contents with a positive sum.
        path: the model directory (``None`` for a histogram built in memory).
    """

    kind = "occupancy"

    def __init__(self, card: dict, edges: np.ndarray, counts: np.ndarray, path: str | os.PathLike | None = None):
        super().__init__(card, path)
        self.edges = np.asarray(edges, dtype=np.int64)
        self.counts = np.asarray(counts, dtype=np.float64)

    @classmethod
    def load(cls, path: str | os.PathLike) -> OccupancyModel:
        """Load an occupancy model directory (or a name under ``models/``; hashes checked)."""
        from mambah.modeldir import load_arrays, resolve_model, verify_model_dir

        p = resolve_model(path)
        card = verify_model_dir(p)
        name = card.get("name", p.name)
        if card.get("kind") != cls.kind:
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
        return cls(card, edges, counts, p)

    def preprocess(self, conditions) -> np.ndarray:
        """No conditions: an empty ``(n, 0)`` array."""
        return np.empty((len(np.asarray(conditions)), 0))

    def training_range(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        return [], np.empty(0), np.empty(0)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` integer occupancies (int32)."""
        cdf = np.cumsum(self.counts)
        cdf /= cdf[-1]
        b = np.searchsorted(cdf, rng.random(n), side="right")
        b = np.minimum(b, len(self.counts) - 1)
        lo, hi = self.edges[b], self.edges[b + 1]
        return (lo + np.floor(rng.random(n) * (hi - lo))).astype(np.int32)

    def mean(self) -> float:
        """Mean number of tracks per event of the histogram (bin centres)."""
        centre = 0.5 * (self.edges[:-1] + self.edges[1:] - 1)
        return float(np.sum(centre * self.counts) / self.counts.sum())
