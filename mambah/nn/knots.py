"""Many piecewise-linear maps at once, exactly as :func:`numpy.interp` evaluates each one.

A calibration (:class:`~mambah.nn.marginals.MarginalCorrection`) holds one quantile map per bin and
target: model knots ``g`` (strictly increasing) to data knots ``d``, linear in between, shifted by the
outermost knots' difference beyond them (:func:`~mambah.nn.marginals.map_values`). Evaluating them one
table at a time costs a Python call per table and a branchy binary search per value (~80 ns per value
with the rows' gathering; ~1 us per kaon track for its two maps). :class:`KnotTables` evaluates every
row against its own table in one vectorised pass:

* **locate** on a grid of equal cells per table (``cells_per_knot * L`` cells over ``[g[0], g[-1]]``):
  each cell stores the first knot segment a value in it can lie in (computed with a margin of a few
  ulps beyond the cell, so that the rounding of ``(x - g[0]) * M / span`` can never put a value
  past its segment), then a branchless binary search over the few candidates the cell holds (as many
  halvings as the most crowded cell of any table needs; a point mass of the model's distribution puts
  ~100 knots in one cell: only the values of such crowded tables take the extra halvings);
* **interpolate** with the segment's slope as numpy does: ``slope * (x - g[j]) + d[j]``, ``slope =
  (d[j + 1] - d[j]) / (g[j + 1] - g[j])``, and ``d[-1]`` at the last knot.

The result is :func:`numpy.interp`'s bit for bit (tests compare both on random values, on every knot and
its float neighbours, and on far-outside values), NaN stays NaN.
"""

from __future__ import annotations

import numpy as np

__all__ = ["KnotTables"]


class KnotTables:
    """``m`` piecewise-linear maps: knots ``g`` (``(m, L)``, each row strictly increasing) to ``d``.

    Call with values ``x`` and the table ``t`` of each value (integer array, same shape): ``np.interp(x,
    g[t], d[t])`` inside a table's knots, ``x + (d[t, 0] - g[t, 0])`` below them and ``x + (d[t, -1] -
    g[t, -1])`` above (the extrapolation of :func:`mambah.nn.marginals.map_values`).
    """

    def __init__(self, g: np.ndarray, d: np.ndarray, cells_per_knot: int = 8):
        g = np.ascontiguousarray(g, dtype=np.float64)
        d = np.ascontiguousarray(d, dtype=np.float64)
        if g.ndim != 2 or g.shape != d.shape or g.shape[1] < 2:
            raise ValueError(f"knots must be two (m, L >= 2) arrays of one shape, got {g.shape} and {d.shape}")
        if not (np.all(np.isfinite(g)) and np.all(np.isfinite(d)) and np.all(np.diff(g, axis=1) > 0)):
            raise ValueError("model knots must be finite and strictly increasing, data knots finite")
        m, L = g.shape
        self.n_tables, self.n_knots = m, L
        self.n_cells = M = int(cells_per_knot) * L
        self.g0, self.g1 = g[:, 0].copy(), g[:, -1].copy()
        self.lo_shift, self.hi_shift = d[:, 0] - g[:, 0], d[:, -1] - g[:, -1]
        self.inv = M / (self.g1 - self.g0)
        # a value x of cell c = floor((x - g0) * inv) lies within [edge(c) - margin, edge(c + 1) + margin]
        margin = 8 * np.finfo(float).eps * (np.abs(self.g0) + np.abs(self.g1) + (self.g1 - self.g0))
        cells = np.arange(M + 1)
        edges = self.g0[:, None] + cells[None, :] / self.inv[:, None]
        first = np.empty((m, M), np.int64)
        last = np.empty((m, M), np.int64)
        for k in range(m):  # the segments (index of the last knot <= x) a value of each cell can lie in
            first[k] = np.searchsorted(g[k], edges[k, :-1] - margin[k], side="right") - 1
            last[k] = np.searchsorted(g[k], edges[k, 1:] + margin[k], side="right") - 1
        first = np.clip(first, 0, L - 1)
        last = np.clip(last, 0, L - 1)
        span = (last - first).max(axis=1) + 1  # candidates per cell, per table
        halvings = np.ceil(np.log2(span)).astype(int)
        self.n_halvings = int(halvings.max(initial=0))
        # the halvings every value takes; a table needing more is "crowded" and its values take the rest first
        self.common = int(min(self.n_halvings, max(2, int(np.quantile(halvings, 0.95)) if m else 0)))
        self.crowded = halvings > self.common
        pad = 1 << self.n_halvings
        self.row = L + pad  # each table's knots padded with +inf: a probe j + step never leaves its table
        gp = np.full((m, self.row), np.inf)
        gp[:, :L] = g
        self.gp = gp.ravel()
        slope = np.zeros((m, self.row))
        slope[:, :L - 1] = (d[:, 1:] - d[:, :-1]) / (g[:, 1:] - g[:, :-1])
        self.slope = slope.ravel()
        dp = np.zeros((m, self.row))
        dp[:, :L] = d
        self.dp = dp.ravel()
        # (int32 when it can: the lookup table is the largest array, cells_per_knot * L entries per table)
        itype = np.int32 if m * self.row < 2 ** 31 - 1 else np.int64
        self.first = (first + (np.arange(m) * self.row)[:, None]).ravel().astype(itype)

    def locate(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        """The flat index (into the padded tables) of the last knot of table ``t`` at or below ``x``
        (its first knot for ``x`` below it, NaN included)."""
        c = x - self.g0[t]
        c *= self.inv[t]
        np.fmax(c, 0.0, out=c)  # (NaN -> 0)
        np.fmin(c, self.n_cells - 1, out=c)
        j = self.first[t * self.n_cells + c.astype(np.intp)]
        if self.common < self.n_halvings:
            sub = np.flatnonzero(self.crowded[t])
            if len(sub):
                xs, js = x[sub], j[sub]
                for h in range(self.n_halvings - 1, self.common - 1, -1):
                    step = 1 << h
                    js += (xs >= self.gp[js + step]) * step
                j[sub] = js
        for h in range(self.common - 1, -1, -1):
            step = 1 << h
            j += (x >= self.gp[j + step]) * step
        return j

    def __call__(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        """The mapped values (a new float64 array)."""
        x = np.asarray(x, dtype=np.float64)
        t = np.asarray(t, dtype=np.intp)
        if not x.size:
            return x.copy()
        with np.errstate(invalid="ignore"):  # (x = +-inf: overwritten below)
            j = self.locate(x, t)
            v = x - self.gp[j]
            v *= self.slope[j]
            v += self.dp[j]
        lo = np.flatnonzero(x < self.g0[t])
        v[lo] = x[lo] + self.lo_shift[t[lo]]
        hi = np.flatnonzero(x > self.g1[t])
        v[hi] = x[hi] + self.hi_shift[t[hi]]
        return v
