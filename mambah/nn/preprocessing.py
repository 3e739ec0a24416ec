"""Weighted quantile transform to a standard normal, stored as plain arrays.

Each column ``x`` is mapped to ``z = Phi^-1(F(x))`` where ``F`` is a piecewise-linear
interpolation of the (weighted) empirical distribution function through ``n_knots`` quantiles,
and ``Phi`` the standard normal CDF. This is scikit-learn's ``QuantileTransformer(output_distribution
="normal")`` with two differences that matter for calibration data:

* **weights**: the knots are quantiles of the sample weighted with the sWeights *clipped at zero*
  (a quantile of a signed measure is not defined where its CDF decreases; the clipped measure
  covers signal plus part of the background, which only makes the map a little wider than the
  signal needs — the map must be monotone and cover the data, not be exactly the signal CDF);
* **ties** (discrete or saturated values, e.g. an integer occupancy or a DLL stuck at a default
  value): a value ``x`` that occupies the CDF interval ``[F(x-), F(x)]`` is mapped to the middle of
  that interval (``mode="mid"``, deterministic: conditions) or to a uniform random point inside it
  (``mode="random"``: targets, so that the transformed training targets are exactly Gaussian
  and the generator learns a continuous density; the inverse map sends the whole interval back to
  ``x``, restoring the spike).

The inverse is ``x = F^-1(Phi(z))``, the linear interpolation of the knots, clamped to the
training range. Everything is stored as arrays (``knots``, ``probs`` per column) — no pickle.

Reference: the quantile transform is the probability integral transform (e.g. Devroye,
*Non-Uniform Random Variate Generation*, 1986, Sect. II.2).
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr, ndtri

from mambah.errors import DataError, ModelDirError
from mambah.nn.logit import clipped_logit

__all__ = ["QuantileGaussianizer", "AffineScaler", "SCALE_FUNCTIONS", "condition_transform_from_arrays"]

#: the transformed values are clipped to Phi^-1(EPS) ... Phi^-1(1 - EPS)  (about +-5.3 sigma)
EPS = 1e-7


class QuantileGaussianizer:
    """Map each column to a standard normal through its (weighted) quantiles.

    Args:
        n_knots: number of quantiles per column (including the minimum and maximum).

    Fitted attributes: ``knots_`` and ``probs_``, arrays of shape ``(n_columns, n_knots)``, the
    distinct knot values of each column and their CDF values; where a column has ties, knots
    repeat and ``probs_`` jumps (a flat stretch of the inverse).

    Example:
        >>> q = QuantileGaussianizer(n_knots=101).fit(np.random.default_rng(0).exponential(size=(1000, 1)))
        >>> z = q.transform(np.array([[0.5]]))
    """

    kind = "quantile"

    def __init__(self, n_knots: int = 1001):
        self.n_knots = n_knots

    @property
    def n_columns(self) -> int:
        return self.knots_.shape[0]

    # ------------------------------------------------------------------ fit
    def fit(self, x: np.ndarray, weights: np.ndarray | None = None, names=None, *,
            signed: bool = False) -> QuantileGaussianizer:
        """Fit the knots of each column of ``x`` (shape ``(n, k)``) under ``weights``.

        ``signed=False``: the weights clipped at 0 (the map covers every row: conditions).
        ``signed=True``: the CDF of the signed weights (sWeights: the signal's CDF), made monotone
        by averaging its running maximum from the left and running minimum from the right and
        clipped to [0, 1]: targets, so that values where the background-subtracted density is zero
        or negative get no room in the Gaussian space. With the clipped weights a real calibration
        sample's background gets it (13% of the real protons' DLLp map lies below DLLp = -5, where
        the sWeighted signal has 0.07%), and the generator's unavoidable leakage into that room
        comes out as a tail of background-like values (issue 22).
        """
        x = np.asarray(x, dtype=float)
        if x.ndim != 2:
            raise DataError(f"expected a 2D array (rows, columns), got shape {x.shape}")
        n, k = x.shape
        names = list(names) if names is not None else [f"column {i}" for i in range(k)]
        w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
        if not signed:
            w = np.clip(w, 0, None)
        if w.sum() <= 0:
            if signed and weights is not None:
                raise DataError(f"the weights sum to {w.sum():.6g} <= 0: no signal to fit the targets' quantiles on")
            w = np.ones(n)
        probs = np.linspace(0.0, 1.0, int(self.n_knots))
        knots = np.empty((k, len(probs)))
        for j in range(k):
            col = x[:, j]
            lo, hi = col.min(), col.max()
            if not hi > lo:
                raise DataError(f"{names[j]} is constant ({lo:.6g}) in the training data: nothing to learn or condition on")
            order = np.argsort(col, kind="stable")
            xs, cw = col[order], np.cumsum(w[order])
            # weighted ECDF through the sorted values; knots at the requested probabilities
            cdf = cw / cw[-1]
            if signed:  # a monotone envelope of the signed CDF (decreases where weights are negative)
                cdf = np.clip(0.5 * (np.maximum.accumulate(cdf) + np.minimum.accumulate(cdf[::-1])[::-1]), 0.0, 1.0)
            idx = np.searchsorted(cdf, probs, side="left")
            kn = xs[np.clip(idx, 0, n - 1)]
            kn[0], kn[-1] = lo, hi
            knots[j] = np.maximum.accumulate(kn)
        self.knots_ = knots
        self.probs_ = np.tile(probs, (k, 1))
        return self

    # ------------------------------------------------------------- transform
    def pieces(self, j: int):
        """Distinct knots of column ``j`` with the CDF just below/above each (a jump where knots repeat)."""
        cache = self.__dict__.setdefault("_cache", {})
        if j not in cache:
            kn, pr = self.knots_[j], self.probs_[j]
            xs, first, counts = np.unique(kn, return_index=True, return_counts=True)
            p_lo, p_hi = pr[first], pr[first + counts - 1]
            dx = np.diff(xs)
            slope = np.append((p_lo[1:] - p_hi[:-1]) / np.where(dx > 0, dx, 1.0), 0.0)
            cache[j] = (xs, p_lo, p_hi, slope)
        return cache[j]

    def transform(self, x: np.ndarray, mode: str = "mid", rng: np.random.Generator | None = None) -> np.ndarray:
        """``z = Phi^-1(F(x))`` per column, float32; ties mapped to the middle ("mid") or at random ("random").

        ``F`` is linear between distinct knots; a value equal to a repeated knot (a tie) gets the
        middle of (or a uniform point in) its CDF jump. One ``searchsorted`` per column: fast enough
        for millions of rows.
        """
        x = np.asarray(x, dtype=float)
        if mode not in ("mid", "random"):
            raise ValueError(f"mode must be 'mid' or 'random', not {mode!r}")
        out = np.empty(x.shape, dtype=np.float32)
        for j in range(x.shape[1]):
            xs, p_lo, p_hi, slope = self.pieces(j)
            v = x[:, j]
            k = np.clip(np.searchsorted(xs, v, side="right") - 1, 0, len(xs) - 1)
            x0 = xs[k]
            u = p_hi[k] + (v - x0) * slope[k]
            at = v == x0
            if mode == "random":
                r = (rng or np.random.default_rng(0)).random(int(at.sum()))
            else:
                r = 0.5
            u[at] = p_lo[k[at]] + r * (p_hi[k[at]] - p_lo[k[at]])
            out[:, j] = ndtri(np.clip(u, EPS, 1 - EPS))
        return out

    def inverse_transform(self, z: np.ndarray) -> np.ndarray:
        """``x = F^-1(Phi(z))`` per column (clamped to the training range), float64."""
        z = np.asarray(z, dtype=float)
        out = np.empty(z.shape, dtype=float)
        for j in range(z.shape[1]):
            out[:, j] = np.interp(ndtr(z[:, j]), self.probs_[j], self.knots_[j])
        return out

    def range_(self) -> tuple[np.ndarray, np.ndarray]:
        """Training minimum and maximum of each column."""
        return self.knots_[:, 0], self.knots_[:, -1]

    # ------------------------------------------------------------ storage
    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}_knots": self.knots_, f"{prefix}_probs": self.probs_}

    @classmethod
    def from_arrays(cls, arrays: dict, prefix: str) -> QuantileGaussianizer:
        try:
            knots, probs = np.asarray(arrays[f"{prefix}_knots"], float), np.asarray(arrays[f"{prefix}_probs"], float)
        except KeyError as e:
            raise ModelDirError(f"the preprocessing arrays lack {e.args[0]!r}; available: {sorted(arrays)}") from None
        if knots.shape != probs.shape or knots.ndim != 2:
            raise ModelDirError(f"preprocessing arrays {prefix}_knots/{prefix}_probs have shapes {knots.shape}/{probs.shape}")
        q = cls(n_knots=knots.shape[1])
        q.knots_, q.probs_ = knots, probs
        return q


#: the per-column functions of an :class:`AffineScaler`, by code
SCALE_FUNCTIONS = ("identity", "log", "logit")


class AffineScaler:
    """Conditions scaled as ``z = (f(x) - mean) / std`` per column, ``f`` one of :data:`SCALE_FUNCTIONS`
    (``log`` of a momentum, ``logit`` of a probability clipped to [2^-24, 1 - 2^-24]); ``mean`` and
    ``std`` the (clipped-)weighted moments of ``f(x)`` in the training sample.

    The cheap alternative to :class:`QuantileGaussianizer` for the conditions of a GAN (``mambah
    train pid --condition-transform affine``): its compiled graph is two or three elementwise operations
    per column instead of a knot search, an interpolation and ``Phi^-1`` (about 20 operations), which
    made the 17 conditions of a ProbNN step 0.6 of its 0.86 us per track. A network copes with
    conditions that are standardised rather than Gaussianised when their tails are tamed by ``f``
    (the surrogate probabilities through their logits). Not for targets (the inverse of a quantile
    map restores spikes; this does not).

    Measured on the ProbNN steps (2026-12-07; not shipped): with the shipped steps' epochs the
    affine-conditioned kaon and pion steps validated at BDT-KS 0.34 and 0.28 against 0.26 and 0.21
    (their ProbNN closure: kaon 0.081 against 0.075 before its calibration map, pion ProbNNmu > 0.5
    off by 3.4% against 1.9%), and the PID stage spent 5% less CPU with two of the five species
    converted (all five: about 12%, not the 20% of an affine transform without the log/logit). A
    network learns faster from Gaussianised inputs; longer trainings are the open question.

    Fitted attributes: ``mean_``, ``std_`` (of ``f(x)``), ``lo_``, ``hi_`` (the raw training range, for
    the range check), ``functions`` (codes into :data:`SCALE_FUNCTIONS`).
    """

    kind = "affine"

    def __init__(self, functions: dict[str, str] | None = None):
        self.functions_by_name = dict(functions or {})

    @property
    def n_columns(self) -> int:
        return len(self.mean_)

    @staticmethod
    def _f(x: np.ndarray, code: int) -> np.ndarray:
        if code == 1:
            return np.log(np.maximum(x, np.finfo(float).tiny))
        if code == 2:
            return clipped_logit(x)
        return x

    def fit(self, x: np.ndarray, weights: np.ndarray | None = None, names=None) -> AffineScaler:
        x = np.asarray(x, dtype=float)
        if x.ndim != 2:
            raise DataError(f"expected a 2D array (rows, columns), got shape {x.shape}")
        n, k = x.shape
        names = list(names) if names is not None else [f"column {i}" for i in range(k)]
        unknown = {c: f for c, f in self.functions_by_name.items() if f not in SCALE_FUNCTIONS or c not in names}
        if unknown:
            raise DataError(f"affine scaling: {unknown} — functions must be one of {SCALE_FUNCTIONS} of the columns {names}")
        self.functions = np.array([SCALE_FUNCTIONS.index(self.functions_by_name.get(c, "identity")) for c in names], np.int8)
        w = np.ones(n) if weights is None else np.clip(np.asarray(weights, dtype=float), 0, None)
        if not w.sum() > 0:
            w = np.ones(n)
        self.mean_, self.std_ = np.empty(k), np.empty(k)
        for j in range(k):
            f = self._f(x[:, j], int(self.functions[j]))
            m = np.average(f, weights=w)
            s = np.sqrt(np.average((f - m) ** 2, weights=w))
            if not s > 0:
                raise DataError(f"{names[j]} is constant in the training data: nothing to condition on")
            self.mean_[j], self.std_[j] = m, s
        self.lo_, self.hi_ = x.min(axis=0), x.max(axis=0)
        return self

    def transform(self, x: np.ndarray, mode: str = "mid", rng=None) -> np.ndarray:
        """``(f(x) - mean) / std`` per column, float32 (``mode`` and ``rng``: accepted for the interface)."""
        x = np.asarray(x, dtype=float)
        out = np.empty(x.shape, dtype=np.float32)
        for j in range(x.shape[1]):
            out[:, j] = (self._f(x[:, j], int(self.functions[j])) - self.mean_[j]) / self.std_[j]
        return out

    def range_(self) -> tuple[np.ndarray, np.ndarray]:
        """Training minimum and maximum of each column (raw)."""
        return self.lo_, self.hi_

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}_scale_mean": self.mean_, f"{prefix}_scale_std": self.std_, f"{prefix}_scale_lo": self.lo_,
                f"{prefix}_scale_hi": self.hi_, f"{prefix}_scale_functions": self.functions}

    @classmethod
    def from_arrays(cls, arrays: dict, prefix: str) -> AffineScaler:
        keys = [f"{prefix}_scale_{k}" for k in ("mean", "std", "lo", "hi", "functions")]
        missing = [k for k in keys if k not in arrays]
        if missing:
            raise ModelDirError(f"the preprocessing arrays lack {missing}; available: {sorted(arrays)}")
        s = cls()
        s.mean_, s.std_, s.lo_, s.hi_ = (np.asarray(arrays[k], float) for k in keys[:4])
        s.functions = np.asarray(arrays[keys[4]], np.int8)
        k = len(s.mean_)
        if any(a.shape != (k,) for a in (s.std_, s.lo_, s.hi_, s.functions)) or not np.all(s.std_ > 0) \
                or not np.all(np.isfinite(s.mean_)) or np.any((s.functions < 0) | (s.functions >= len(SCALE_FUNCTIONS))):
            raise ModelDirError(f"affine scaling arrays of {prefix!r}: shapes {[arrays[x].shape for x in keys]}, "
                                "expected equal 1-D shapes, std > 0, known functions")
        return s


def condition_transform_from_arrays(arrays: dict, prefix: str = "cond"):
    """The conditions' transform stored in a model's arrays: an :class:`AffineScaler` where its arrays are
    present, else the :class:`QuantileGaussianizer`."""
    if f"{prefix}_scale_mean" in arrays:
        return AffineScaler.from_arrays(arrays, prefix)
    return QuantileGaussianizer.from_arrays(arrays, prefix)
