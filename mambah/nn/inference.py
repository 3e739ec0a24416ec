"""Fast PID-GAN inference: transforms, noise and generator in one compiled TensorFlow graph per chunk.

:func:`generate` (behind :meth:`PidModel.generate_array <mambah.nn.pidmodel.PidModel.generate_array>`)
runs, per chunk of rows and inside ONE compiled graph, so that TensorFlow spreads every step over the
cores and no single-threaded numpy step is left between the network calls,

1. the quantile-to-Gaussian transform of the raw conditions, ``z = Phi^-1(F(x))`` in ``"mid"`` mode:
   the same piecewise-linear ``F`` as :meth:`QuantileGaussianizer.transform
   <mambah.nn.preprocessing.QuantileGaussianizer.transform>` (a value equal to a repeated knot goes
   to the middle of its CDF jump; values below the range are extrapolated and clipped as there),
   in float64 with a grid-accelerated exact ``searchsorted`` (:class:`_Locator`; in the full chunks of a
   large call an XLA-compiled function, see :data:`XLA_MIN_ROWS`); ``Phi^-1`` in float32 on the smaller
   tail probability (about 1e-6 absolute from the float64 reference);
2. Gaussian noise by the Box-Muller transform of float32 uniforms drawn from the caller's numpy
   Generator (the draw is the only numpy work, done by the calling thread while the graphs run);
3. the Keras generator (float32);
4. the inverse transform of the targets, ``x = F^-1(Phi(y))`` in float64: ``np.interp`` through the
   knots, clamped to the knots of the interval, so the output stays in the training range and a
   repeated knot (a spike in the target distribution, e.g. a default value) comes out as exactly
   that knot value;

**Ensemble variations.** :func:`generate_variations` runs a model's nominal generator and its K
ensemble members (:attr:`PidModel.members <mambah.nn.pidmodel.PidModel.members>`, which share its
preprocessing) in one graph per chunk: steps 1 and 2 once, then steps 3 and 4 for each generator,
so every member sees the nominal's transformed conditions and noise; the nominal's part is the same
ops on the same inputs as :func:`generate`'s graph, hence bit for bit its result.

The flags classifiers of the PID chains (:class:`~mambah.nn.flags.FlagModel`) get the same
treatment in :func:`sample_flags`: step 1, their Dense layers, and the Bernoulli draw ``u < P(flag)``
against float64 uniforms drawn in row order, in one graph (for the 14 conditions of the classifiers
that see the RICH threshold codes the numpy transform alone took longer than a RICH GAN's graph).

Both return each column's minimum and maximum, for the training-range check (the
:class:`~mambah.errors.OutOfRangeWarning` is raised once per call, with the same counts as
:meth:`Model.check_range <mambah.nn.model.Model.check_range>`). Two chunks are in flight
at once, so one chunk's small elementwise steps fill the gaps of the other's matrix products.

The numpy :class:`~mambah.nn.preprocessing.QuantileGaussianizer` stays the reference implementation;
:func:`generate_reference` is the former numpy path (numpy transforms and noise, network through
:func:`predict_generator`), kept for tests and the benchmark.

**Reproducibility.** For a given seed (Generator state) the result is the same whatever ``chunk``
and ``workers``: the uniforms are drawn in row order, ``2 * ceil(n_noise / 2)`` float32 per row
(:func:`draw_uniforms`; :func:`draw_noise` gives the noise itself). Only the float32 round-off of the
network may differ between chunk sizes (oneDNN may block a matrix product differently; seen: a few
1e-6 on one row in 10^5). The noise is not the one :func:`generate_reference` draws (numpy's
ziggurat), so the two paths give different, equally distributed, samples for one seed.

Example:
    >>> m = PidModel.load("models/pid-p-dllp-lhcb-run3")            # doctest: +SKIP
    >>> y = generate(m, conditions, np.random.default_rng(1))         # doctest: +SKIP
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import numpy as np

from mambah.errors import DataError
from mambah.nn.preprocessing import EPS

if TYPE_CHECKING:  # pragma: no cover
    # the models call this module (PidModel.generate_array, FlagModel.sample), so it names only their base
    from mambah.nn.model import Model
    from mambah.nn.preprocessing import QuantileGaussianizer

__all__ = ["generate", "generate_variations", "generate_member", "sample_flags", "generate_reference",
           "predict_generator", "draw_noise",
           "draw_uniforms", "DEFAULT_CHUNK", "DEFAULT_WORKERS"]

#: rows per compiled call: small enough that the activations stay in the caches, large enough that the
#: per-call overhead (~0.1 ms) is negligible
DEFAULT_CHUNK = 32768
#: full chunks (all of one size, ``chunk`` rows) of at least this many rows run the exact parts of the
#: transforms in XLA-compiled functions (:func:`_jit_twin`): the knot search (:class:`_Locator`: the
#: integer cell arithmetic, gathers and compares) and the interpolation's gathers, differences and
#: products; compiled once per model and chunk size (0.1-0.2 s), one fused loop instead of ~30
#: TensorFlow kernels over the chunk, 2-3x faster, the same results bit for bit (tests; a 500k-track PID
#: stage compared column by column). The last, smaller chunk of a call uses the plain graph, so varying
#: sizes never recompile. Not the rest: XLA evaluates floating-point expressions differently (the CDF
#: with its product and sum in one function came out 1 ulp off, a fused multiply-add; with its own
#: ``ndtri`` a transformed condition moved by up to 0.02), which would change the samples. Measured
#: 2026-12-07 (2 cores, CPU-ns per row, one model at a time): the ProbNN step's GAN 1114 -> 770, a RICH
#: GAN 506 -> 420, a global GAN 361 -> 290.
#: ``MAMBAH_XLA=0`` in the environment turns it off.
XLA_MIN_ROWS = 16384 if os.environ.get("MAMBAH_XLA", "1") != "0" else sys.maxsize
#: compiled calls in flight at once, so that one chunk's single-threaded steps overlap another's network
DEFAULT_WORKERS = 2


def draw_uniforms(rng: np.random.Generator, n: int, n_noise: int) -> np.ndarray:
    """The uniforms behind the noise of ``n`` rows: float32 ``(n, 2 * ceil(n_noise / 2))`` in [0, 1)."""
    return rng.random((n, 2 * ((n_noise + 1) // 2)), dtype=np.float32)


def draw_noise(rng, n: int, n_noise: int) -> np.ndarray:
    """The float32 Gaussian noise ``(n, n_noise)`` that :func:`generate` uses for the same ``rng`` state."""
    from mambah.random import get_rng

    return _box_muller(draw_uniforms(get_rng(rng), n, n_noise), n_noise).numpy()


# ------------------------------------------------------------------------------------- the graph
class _Locator:
    """Exact ``searchsorted(x_j, v, side="right")`` for the columns ``j`` of ``v``, as gather positions.

    ``tf.searchsorted`` (a branchy binary search on one thread) would be the slowest step of the
    transforms, so each column's value is first put into one of that column's grid cells;
    ``first[cell]`` counts the column's table entries lying in earlier cells, and ``steps``
    compare-and-advance rounds (the most entries any one cell holds) finish the count. The cells of the
    entries and of the values come from the same exact or correctly rounded operations, all monotone,
    so the count is exactly ``searchsorted``'s, also outside the range (the cell index is clipped).
    Each column gets the first grid that holds at most one entry per cell (with up to ``max_cells``
    cells), else at most ``max_steps``:

    * ``"uniform"``: equal cells over the column's range, ``(v - lo) * inv`` (a quantile table of a
      smooth density);
    * ``"bits"``: equal cells of the IEEE-754 bit pattern of ``d = v - o``, ``o`` the entry where the
      table is densest; the bit pattern of a float64 is an order-preserving integer and roughly
      ``log2 |d|``, so the cells are narrow next to ``o`` and wide far from it (a table whose entries
      crowd at one point: the quantiles of a classifier's probability, where 20% of the tracks lie
      within 1e-5 of 0 and a uniform grid of 65536 cells puts 200 entries into one cell); the
      magnitudes below the smallest ``|entry - o|`` are folded onto it, so no cell is spent on them;
    * otherwise ``tf.searchsorted`` on that column alone.

    The result is the position ``j * width + q`` (``q`` the count, ``width`` = longest table + 1) in a
    flat table from :meth:`table`, which maps it to row ``clip(q - 1, 0, top_j)`` of column j's pieces
    (the clamping is in the table: broadcast integer operations cost more than a gather in TensorFlow).

    Args:
        rows: the tables, each strictly increasing or non-decreasing, and finite (lengths may differ).
    """

    _SIGN = np.int64(0x7FFFFFFFFFFFFFFF)

    def __init__(self, rows: list[np.ndarray], *, max_cells: int = 1 << 16, max_steps: int = 2):
        import tensorflow as tf

        k = len(rows)
        self.lengths = [len(r) for r in rows]
        self.width = width = max(self.lengths) + 1
        xs = np.full((k, width), np.inf)  # +inf pads: never <= a finite value
        for j, r in enumerate(rows):
            xs[j, :len(r)] = r
        self.xs = tf.constant(xs)                                        # (k, width), for searchsorted
        self.xs_flat = tf.constant(xs.reshape(-1))
        self.plans = [self._plan(np.asarray(r, dtype=float), max_cells, max_steps) for r in rows]
        self.modes = [p["mode"] for p in self.plans]
        groups = {m: [j for j, p in enumerate(self.plans) if p["mode"] == m] for m in ("uniform", "bits", "search")}
        grid = groups["uniform"] + groups["bits"]
        self.steps = max((self.plans[j]["steps"] for j in grid), default=0)
        order = grid + groups["search"]
        self.identity = order == list(range(k))
        self.back = tf.constant(np.argsort(order).astype(np.int32))      # positions back to the column order
        self.groups = {m: (c, tf.constant(c, dtype=tf.int32)) for m, c in groups.items() if c}
        # per grid column: its cells' first positions, one flat table (each column's cells at an offset)
        first, off = [], 0
        for j in grid:
            p = self.plans[j]
            first.append(np.searchsorted(p["idx"], np.arange(p["cells"]), side="left") + j * width)
            p["offset"], off = off, off + p["cells"]
        self.first = tf.constant(np.concatenate(first).astype(np.int32)) if grid else None
        # (the constants of each grid kind, one entry per column of the kind, as row vectors)
        u = [self.plans[j] for j in groups["uniform"]]
        if u:
            self.u_lo, self.u_inv = (tf.constant(np.array([[p[a] for p in u]])) for a in ("lo", "inv"))
            self.u_top = tf.constant(np.array([[p["cells"] - 1.0 for p in u]]))
            self.u_off = tf.constant(np.array([[p["offset"] for p in u]], dtype=np.int32))
        b = [self.plans[j] for j in groups["bits"]]
        if b:
            self.b_o, self.b_abs, self.b_lo, self.b_hi = (tf.constant(np.array([[p[a] for p in b]]))
                                                          for a in ("o", "delta", "lo", "hi"))
            self.b_k, self.b_k0, self.b_top = (tf.constant(np.array([[p[a] for p in b]], dtype=np.int64))
                                               for a in ("key_delta", "k0", "top"))
            self.b_shift = tf.constant(np.array([[p["shift"] for p in b]], dtype=np.int64))
            self.b_off = tf.constant(np.array([[p["offset"] for p in b]], dtype=np.int32))
        s = groups["search"]
        if s:
            self.s_xs = tf.constant(xs[s])
            self.s_base = tf.constant((np.array(s) * width).astype(np.int32)[None, :])
        self.cells = sum(self.plans[j]["cells"] for j in grid) or None
        self._jit = None

    # ---------------------------------------------------------------- the cell functions (numpy)
    @staticmethod
    def _uniform_cells(x, lo, inv, cells):
        # the same float64 operations as in the graph: subtract, multiply, clip, truncate
        return np.clip((x - lo) * inv, 0.0, cells - 1.0).astype(np.int64)

    @classmethod
    def _keys(cls, d):
        """Order-preserving int64 keys of float64 ``d``: the bit pattern, negatives mirrored."""
        b = np.asarray(d, dtype=np.float64).view(np.int64)
        return b ^ ((b >> np.int64(63)) & cls._SIGN)

    @classmethod
    def _bit_cells(cls, x, lo, hi, o, delta, key_delta, shift, k0, top):
        # x clipped to the table's range (so no integer below can overflow), d = x - o (correctly
        # rounded), |d| < delta folded onto +-delta (exact), the keys with the gap between -delta and
        # +delta removed (integer), shifted, offset and clipped (integer)
        d = np.clip(x, lo, hi) - o
        d = np.sign(d) * np.maximum(np.abs(d), delta)
        key = cls._keys(d)
        k = np.maximum(key - key_delta, 0) + np.minimum(key + key_delta + 1, 0)
        return np.clip((k >> shift) - k0, 0, top)

    def _plan(self, r, max_cells, max_steps):
        """The grid of one table: the first kind and number of cells (powers of 2 from 256) with one
        entry per cell, else the one with at most ``max_steps``, else ``tf.searchsorted``."""
        lo, span = float(r[0]), float(r[-1] - r[0])
        fallback = None
        cands = []
        for cells in (1 << e for e in range(8, max(8, int(max_cells).bit_length() - 1) + 1)):
            inv = cells / span if span > 0 else 0.0
            idx = self._uniform_cells(r, lo, inv, cells)
            cands.append(({"mode": "uniform", "cells": cells, "lo": lo, "inv": inv}, idx))
        dist = np.unique(r)
        if len(dist) > 2:
            i = int(np.argmin(np.diff(dist)))
            o = float(dist[i])
            gaps = np.abs(dist - o)
            delta = float(gaps[gaps > 0].min())
            key_delta = int(self._keys(delta))
            kmax = np.maximum(self._keys(r - o) - key_delta, 0) + np.minimum(self._keys(r - o) + key_delta + 1, 0)
            for cells in (1 << e for e in range(8, max(8, int(max_cells).bit_length() - 1) + 1)):
                shift = 0
                while (int(kmax.max()) >> shift) - (int(kmax.min()) >> shift) >= cells:
                    shift += 1
                k0 = int(kmax.min()) >> shift
                plan = {"mode": "bits", "cells": cells, "lo": lo, "hi": float(r[-1]), "o": o, "delta": delta,
                        "key_delta": key_delta, "shift": shift, "k0": k0, "top": cells - 1}
                cands.append((plan, self._bit_cells(r, lo, float(r[-1]), o, delta, key_delta, shift, k0, cells - 1)))
        for plan, idx in sorted(cands, key=lambda c: (c[0]["cells"], c[0]["mode"] != "uniform")):
            steps = int(np.bincount(idx, minlength=plan["cells"]).max())
            if steps <= 1:
                return {**plan, "idx": idx, "steps": steps}
            if steps <= max_steps and plan["cells"] == max_cells and fallback is None:
                fallback = {**plan, "idx": idx, "steps": steps}
        return fallback or {"mode": "search", "cells": 0, "steps": 0}

    # ---------------------------------------------------------------- the graph
    def __call__(self, v, jit: bool = False):
        """Positions (int32, shape of ``v``) for float64 values ``v`` (m, k), column j in table j.

        ``jit``: as one XLA-compiled function (see :data:`XLA_MIN_ROWS`; not for a locator with a
        ``tf.searchsorted`` column), the same positions."""
        if jit:
            if self._jit is None:
                self._jit = _jit_twin(self._locate, self)
            return self._jit(v)
        return self._locate(v)

    def _locate(self, v):
        import tensorflow as tf

        def cols(mode):
            c, idx = self.groups[mode]
            return v if len(c) == len(self.plans) else tf.gather(v, idx, axis=1)

        vals, cells, out = [], [], []
        if "uniform" in self.groups:
            vu = cols("uniform")
            vals.append(vu)
            g = tf.cast(tf.clip_by_value((vu - self.u_lo) * self.u_inv, 0.0, self.u_top), tf.int32)
            cells.append(g + self.u_off)
        if "bits" in self.groups:
            vb = cols("bits")
            vals.append(vb)
            d = tf.clip_by_value(vb, self.b_lo, self.b_hi) - self.b_o
            d = tf.sign(d) * tf.maximum(tf.abs(d), self.b_abs)
            b = tf.bitcast(d, tf.int64)
            key = tf.bitwise.bitwise_xor(b, tf.bitwise.bitwise_and(tf.bitwise.right_shift(b, np.int64(63)), self._SIGN))
            k = tf.maximum(key - self.b_k, 0) + tf.minimum(key + self.b_k + 1, 0)
            g = tf.clip_by_value(tf.bitwise.right_shift(k, self.b_shift) - self.b_k0, 0, self.b_top)
            cells.append(tf.cast(g, tf.int32) + self.b_off)
        if cells:
            vg = vals[0] if len(vals) == 1 else tf.concat(vals, axis=1)
            p = tf.gather(self.first, cells[0] if len(cells) == 1 else tf.concat(cells, axis=1))
            for _ in range(self.steps):
                p += tf.cast(tf.gather(self.xs_flat, p) <= vg, tf.int32)
            out.append(p)
        if "search" in self.groups:
            vs = cols("search")
            out.append(tf.transpose(tf.searchsorted(self.s_xs, tf.transpose(vs), side="right", out_type=tf.int32))
                       + self.s_base)
        p = out[0] if len(out) == 1 else tf.concat(out, axis=1)
        return p if self.identity else tf.gather(p, self.back, axis=1)

    def table(self, pieces: list[np.ndarray], top) -> object:
        """Flat gather table: position ``j * width + q`` -> ``pieces[j][clip(q - 1, 0, top[j])]`` (a constant)."""
        import tensorflow as tf

        rows = []
        for j, pc in enumerate(pieces):
            q = np.arange(self.width)
            rows.append(np.asarray(pc)[np.clip(q - 1, 0, top[j])])
        return tf.constant(np.concatenate(rows))


class _Traced:
    """A ``tf.function``'s concrete function, traced on its first call (graphs only some calls need:
    the XLA twins of full chunks, the given-noise graph of tests and comparisons)."""

    def __init__(self, fn):
        self.fn, self.concrete = fn, None

    def __call__(self, *args):
        if self.concrete is None:
            self.concrete = self.fn.get_concrete_function()
        return self.concrete(*args)


def _jit_twin(fn, loc: _Locator):
    """``fn`` XLA-compiled (:data:`XLA_MIN_ROWS`), or ``fn`` itself where ``loc`` has a
    ``tf.searchsorted`` column. ``fn`` must be exact in XLA: knot search, gathers, and single
    subtractions or products, no product followed by a sum (XLA fuses it into one rounding)."""
    import tensorflow as tf

    if "search" in loc.groups:
        return fn
    return tf.function(fn, jit_compile=True, autograph=False)


def _forward_pieces(q: QuantileGaussianizer) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Distinct knots of each column and, per distinct knot, the pieces of the forward ("mid") transform.

    Per distinct knot: the knot, the CDF just above it (``p_hi``), the slope of the CDF up to the
    next knot, and ``p_mid - p_hi`` where ``p_mid`` is the middle of the CDF jump at the knot (the
    value of a tie; ``p_lo = p_hi`` for a single knot).
    """
    pieces = [q.pieces(j) for j in range(q.knots_.shape[0])]
    return ([x for x, *_ in pieces],
            [np.column_stack([x, p_hi, slope, 0.5 * (p_lo + p_hi) - p_hi]) for x, p_lo, p_hi, slope in pieces])


def _inverse_pieces(q: QuantileGaussianizer) -> list[np.ndarray]:
    """Per interval ``i`` of each column: (p_i, x_i, slope, x_i+1), the ``np.interp`` pieces of ``F^-1``.

    A repeated knot (``x_i == x_i+1``) has slope 0, so it comes out exactly.
    """
    p, x = q.probs_, q.knots_
    dp = np.diff(p, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = np.where(dp > 0, np.diff(x, axis=1) / np.where(dp > 0, dp, 1.0), 0.0)
    return list(np.stack([p[:, :-1], x[:, :-1], slope, x[:, 1:]], axis=-1))


def _box_muller(u, n_noise: int):
    """Standard normals (m, n_noise) float32 from uniforms ``u`` (m, 2 * ceil(n_noise / 2)) in [0, 1)."""
    import tensorflow as tf

    h = (n_noise + 1) // 2
    r = tf.sqrt(-2.0 * tf.math.log(1.0 - u[:, :h]))  # 1 - u in (0, 1]: |z| <= 5.8 for 24-bit uniforms
    a = np.float32(2 * np.pi) * u[:, h:]
    return tf.concat([r * tf.cos(a), r * tf.sin(a)], axis=1)[:, :n_noise]


def _affine_graph(scaler):
    """``pre(c)`` of an :class:`~mambah.nn.preprocessing.AffineScaler`: ``(f(c) - mean) / std`` in float64
    (``f``: identity, log or logit per column, as its ``transform``), cast to float32."""
    import tensorflow as tf

    from mambah.nn.logit import LOGIT_CLIP

    codes = np.asarray(scaler.functions, int)
    groups = [np.flatnonzero(codes == k) for k in range(3)]
    order = np.argsort(np.concatenate(groups))
    mean, std = tf.constant(scaler.mean_[None, :]), tf.constant(scaler.std_[None, :])
    idx = [tf.constant(g, dtype=tf.int32) for g in groups]
    tiny = np.finfo(float).tiny

    def pre(c, jit=False):
        if len(groups[0]) == len(codes):
            f = c
        else:
            parts = []
            if len(groups[0]):
                parts.append(tf.gather(c, idx[0], axis=1))
            if len(groups[1]):
                parts.append(tf.math.log(tf.maximum(tf.gather(c, idx[1], axis=1), tiny)))
            if len(groups[2]):
                p = tf.clip_by_value(tf.gather(c, idx[2], axis=1), LOGIT_CLIP, 1.0 - LOGIT_CLIP)
                parts.append(tf.math.log(p) - tf.math.log1p(-p))
            f = tf.gather(tf.concat(parts, axis=1), order, axis=1)
        return tf.cast((f - mean) / std, tf.float32)

    return pre


def _condition_graph(cond_pre: QuantileGaussianizer):
    """``pre(c)``: raw conditions (m, k) float64 -> Gaussianised (m, k) float32, as TensorFlow ops ("mid" mode).

    The transform of :meth:`QuantileGaussianizer.transform <mambah.nn.preprocessing.QuantileGaussianizer.transform>`
    (see the module docstring); shared by the GAN graphs and the flags classifiers' graphs. An
    :class:`~mambah.nn.preprocessing.AffineScaler` (``mambah train pid --condition-transform affine``)
    gets its own, cheaper graph (:func:`_affine_graph`).
    """
    import tensorflow as tf

    if getattr(cond_pre, "kind", "quantile") == "affine":
        return _affine_graph(cond_pre)

    xs, pieces = _forward_pieces(cond_pre)
    # two-valued conditions (0/1 flags such as the RICH threshold codes): their transform at the
    # two values is an affine map, far cheaper than the knot search (values between the two are
    # mapped linearly; a flag has none)
    two = [j for j, x in enumerate(xs) if len(x) == 2]
    cont = [j for j in range(len(xs)) if j not in two]
    order = np.argsort(np.array(cont + two))  # back to the column order after concatenation
    if two:
        x2 = np.array([xs[j] for j in two])  # (k, 2): low and high value
        full = np.zeros((2, len(xs)))  # the other columns' values do not matter here
        full[:, two] = x2.T
        z = cond_pre.transform(full, mode="mid")[:, two].astype(np.float32)
        a2 = tf.constant(z[0])
        b2 = tf.constant((z[1] - z[0]) / (x2[:, 1] - x2[:, 0]), dtype=tf.float32)
        lo2 = tf.constant(x2[:, 0])
        hi2 = tf.constant(x2[:, 1])
    xs, pieces = [xs[j] for j in cont], [pieces[j] for j in cont]
    c_loc = _Locator(xs)
    c_tab = c_loc.table(pieces, [len(x) - 1 for x in xs])
    two_idx, cont_idx = tf.constant(two, dtype=tf.int32), tf.constant(cont, dtype=tf.int32)
    def pre(c, jit=False):
        """Raw conditions (m, k) float64 -> Gaussianised (m, k) float32 ("mid" mode); ``jit``: the knot
        search XLA-compiled (the same result)."""
        if not two:
            return pre_cont(c, jit)
        flags = tf.clip_by_value(tf.gather(c, two_idx, axis=1), lo2, hi2) - lo2
        z = tf.concat([pre_cont(tf.gather(c, cont_idx, axis=1), jit), a2 + b2 * tf.cast(flags, tf.float32)], axis=1)
        return tf.gather(z, order, axis=1)

    def terms(c):
        # the CDF's terms: the knot's CDF, the rise (c - x0) * slope, and a tie's (c == x0) move to the
        # middle of the jump (arithmetic rather than tf.where, which costs as much as four elementwise ops)
        x0, p_hi, slope, half = tf.unstack(tf.gather(c_tab, c_loc(c)), axis=-1)
        return p_hi, (c - x0) * slope, tf.cast(tf.equal(c, x0), tf.float64) * half

    terms_jit = _jit_twin(terms, c_loc)

    def pre_cont(c, jit):
        # the CDF in float64 as the reference (its sum outside XLA: see XLA_MIN_ROWS)
        p_hi, rise, tie = (terms_jit if jit else terms)(c)
        u = p_hi + rise + tie
        # Phi^-1(clip(u, EPS, 1 - EPS)) in float32 on the smaller tail min(u, 1 - u) = 0.5 - |0.5 - u|
        # (taken in float64, so the upper tail keeps its precision): ~1e-6 absolute
        d = 0.5 - u
        r = tf.math.ndtri(tf.cast(tf.maximum(0.5 - tf.abs(d), EPS), tf.float32))
        return r * tf.cast(tf.sign(d), tf.float32)

    return pre


class _Compiled:
    """The compiled graphs of one GAN (built once, kept by the model: :meth:`~mambah.nn.model.Model.memo`).

    With ``generators`` (the nominal generator and its ensemble members, sharing the model's
    preprocessing), the graphs transform the conditions and make the noise once per chunk, run every
    generator on them and return the stacked targets ``(len(generators), m, n_targets)``; each
    generator's part is computed by the same ops, on the same inputs, as the single-generator graph.
    """

    def __init__(self, model: Model, generators: list | None = None):
        import tensorflow as tf

        self.n_cond, self.n_targ, self.n_noise = len(model.conditions), len(model.targets), int(model.n_noise)
        self.n_uniform = 2 * ((self.n_noise + 1) // 2)
        probs, knots = model.targ_pre.probs_, model.targ_pre.knots_
        if probs.shape[1] < 2 or np.any(np.diff(probs, axis=1) < 0) or np.any(np.diff(knots, axis=1) < 0):
            raise DataError("the target quantile transform needs at least 2 knots with non-decreasing "
                            "probabilities and knot values")
        pre = _condition_graph(model.cond_pre)
        lo, hi = model.cond_pre.range_()
        t_loc = _Locator(list(probs))
        t_tab = t_loc.table(_inverse_pieces(model.targ_pre), [probs.shape[1] - 2] * len(probs))
        gen, n_noise = model.generator, self.n_noise

        def inv_terms(w):
            p0, x0, slope, x1 = tf.unstack(tf.gather(t_tab, t_loc(w)), axis=-1)
            return x0, (w - p0) * slope, x1

        inv_terms_jit = _jit_twin(inv_terms, t_loc)

        def post(y, jit=False):
            """Generated (m, t) float32 -> raw units float64: F^-1(Phi(y)), clamped to the knots' interval."""
            w = 0.5 * tf.math.erfc(tf.cast(y, tf.float64) * -np.sqrt(0.5))  # Phi(y), float64
            x0, rise, x1 = (inv_terms_jit if jit else inv_terms)(w)
            return tf.minimum(tf.maximum(x0 + rise, x0), x1)

        def body(c, noise, jit=False):
            # with each column's minimum and maximum, for the range check
            if generators is None:
                y = post(gen([pre(c, jit), noise], training=False), jit)
            else:  # one condition transform and one noise for all the generators
                z = pre(c, jit)
                y = tf.stack([post(g([z, noise], training=False), jit) for g in generators])
            return y, tf.reduce_min(c, axis=0), tf.reduce_max(c, axis=0)

        spec_c = tf.TensorSpec([None, self.n_cond], tf.float64)

        @tf.function(autograph=False, input_signature=[spec_c, tf.TensorSpec([None, self.n_uniform], tf.float32)])
        def with_uniforms(c, u):
            return body(c, _box_muller(u, n_noise))

        @tf.function(autograph=False, input_signature=[spec_c, tf.TensorSpec([None, self.n_uniform], tf.float32)])
        def with_uniforms_jit(c, u):
            return body(c, _box_muller(u, n_noise), True)

        @tf.function(autograph=False, input_signature=[spec_c, tf.TensorSpec([None, n_noise], tf.float32)])
        def with_noise(c, noise):
            return body(c, noise)

        # concrete functions: traced once here, called without the dispatch of a tf.function (and without
        # TensorFlow's "frequent retracing" warning, which counts the traces of all models' graphs together)
        self.with_uniforms = with_uniforms.get_concrete_function()
        self.with_uniforms_jit = _Traced(with_uniforms_jit)  # (a full chunk)
        self.with_noise = _Traced(with_noise)  # (tests, comparisons)
        self.pre, self.post = pre, post  # for tests and profiling
        self.c_lo, self.c_hi = lo, hi


def _compiled(model, build=None):
    """The compiled graphs of ``model``, built once (thread-safe) and kept by the model
    (:meth:`~mambah.nn.model.Model.memo`): :class:`_Compiled` for a GAN, ``build`` (e.g.
    :class:`_CompiledFlags`) otherwise."""
    build = build or _Compiled
    return model.memo(f"mambah.nn.inference.{build.__name__}", lambda: build(model))


#: the DenseStack activations (:data:`mambah.nn.dense.ACTIVATIONS`) as TensorFlow ops
_TF_ACTIVATIONS = {"linear": lambda a: a, "relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid", "elu": "elu",
                   "softplus": "softplus", "silu": "silu"}


class _CompiledFlags:
    """The compiled graph of one flags classifier (:class:`~mambah.nn.flags.FlagModel`): condition
    transform, the network's Dense layers (float32, the weights of its ``DenseStack``), and the
    Bernoulli draw ``u < P(flag)`` against float64 uniforms; built once, cached on the model."""

    def __init__(self, model: Model):
        import tensorflow as tf

        self.n_cond, self.n_targ = len(model.conditions), len(model.targets)
        pre = _condition_graph(model.cond_pre)
        self.c_lo, self.c_hi = model.cond_pre.range_()
        acts = {k: (v if callable(v) else getattr(tf.nn, v) if hasattr(tf.nn, v) else getattr(tf.math, v))
                for k, v in _TF_ACTIVATIONS.items()}
        layers = [(tf.constant(w), tf.constant(b), acts[a]) for w, b, a in model.net.layers]

        def prob(c, jit=False):
            a = pre(c, jit)
            for w, b, act in layers:
                a = act(tf.matmul(a, w) + b)
            return tf.cast(a, tf.float64)

        spec = [tf.TensorSpec([None, self.n_cond], tf.float64), tf.TensorSpec([None, self.n_targ], tf.float64)]

        def body(c, u, jit=False):
            return tf.cast(u < prob(c, jit), tf.float64), tf.reduce_min(c, axis=0), tf.reduce_max(c, axis=0)

        self.draw = tf.function(lambda c, u: body(c, u), autograph=False, input_signature=spec).get_concrete_function()
        self.draw_jit = _Traced(tf.function(lambda c, u: body(c, u, True), autograph=False, input_signature=spec))
        self.prob = prob  # for tests


def _graph_for(rows: int, chunk: int, plain, jitted):
    """The graph for a chunk of ``rows`` rows: ``jitted`` (through :func:`_call_jit`) for a full chunk of at
    least :data:`XLA_MIN_ROWS` rows, else ``plain``."""
    if rows == chunk >= XLA_MIN_ROWS:
        return lambda *args: _call_jit(jitted, plain, *args)
    return plain


def _call_jit(jitted, plain, *args):
    """``jitted(*args)``, the graph with the XLA-compiled parts (:data:`XLA_MIN_ROWS`); if it fails and
    the ``plain`` graph does not (a TensorFlow build or platform without a working XLA CPU compiler),
    XLA is turned off for the process, with one logged warning, and the plain graph's result returned
    (the same values). An error of the plain graph too is raised as it is."""
    global XLA_MIN_ROWS
    import tensorflow as tf

    try:
        return jitted(*args)
    except (tf.errors.OpError, RuntimeError, ValueError) as e:
        out = plain(*args)  # raises if the inputs themselves are at fault
        if XLA_MIN_ROWS != sys.maxsize:
            XLA_MIN_ROWS = sys.maxsize
            import logging

            logging.getLogger(__name__).warning(
                "XLA compilation of the knot search failed (%s: %s); using the plain TensorFlow graphs from now on "
                "(the same results, slower; MAMBAH_XLA=0 turns XLA off from the start)", type(e).__name__,
                str(e).splitlines()[0][:200] if str(e) else "")
        return out


def _map_chunks(run, jobs, n: int, chunk: int, workers: int) -> list:
    """``run(*job)`` for the chunk jobs in order, ``workers`` of them in flight at once (the jobs'
    generator, which draws the random numbers, runs in the calling thread, in row order)."""
    if workers > 1 and n > chunk:
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        results = []
        with ThreadPoolExecutor(workers) as ex:
            pending = deque()
            for job in jobs:
                pending.append(ex.submit(run, *job))
                while len(pending) > workers:
                    results.append(pending.popleft().result())
            results.extend(f.result() for f in pending)
        return results
    return [run(*job) for job in jobs]


def _report_range(model, results: list, n_cond: int, c: np.ndarray, check_range, counts: list | None) -> None:
    """The chunks' :func:`_range_counts` and the rows of the conditions ``c`` outside the model's data
    support (:meth:`~mambah.nn.model.Model.support_count`) as one :class:`~mambah.nn.model.RangeCounts`:
    appended to ``counts`` when given (no warning; the caller reports them), else warned about
    (:meth:`~mambah.nn.model.Model.warn_out_of_range`) when ``check_range``."""
    if counts is None and not check_range:
        return
    rows_out = sum(r[1] for r in results)
    n_out = sum(r[0] for r in results) + np.zeros(n_cond, dtype=np.int64)
    rc = model.range_counts(n_out, rows_out, len(c), model.support_count(c))
    if counts is not None:
        counts.append(rc)
    else:
        model.warn_out_of_range(rc, stacklevel=3)


def _range_counts(c, lo, hi, c_lo, c_hi):
    """(outside counts per column, rows outside) of the chunk ``c`` whose column minima and maxima
    the graph returned as ``lo``, ``hi`` (rare: counted in numpy only when some value is outside)."""
    if (lo.numpy() < c_lo).any() or (hi.numpy() > c_hi).any():
        outside = (c < c_lo) | (c > c_hi)
        return outside.sum(axis=0), int(outside.any(axis=1).sum())
    return 0, 0


def _compiled_variations(model):
    """The compiled graphs of ``model``'s nominal generator and ensemble members
    (``model.members``), built once and kept by the model."""
    members = model.members  # (loaded first: the model's memo lock is not re-entrant)
    return model.memo("mambah.nn.inference._Compiled.variations",
                      lambda: _Compiled(model, [model.generator, *members]))


# ------------------------------------------------------------------------------------ public API
def generate(model: Model, conditions: np.ndarray, rng=None, *, chunk: int = DEFAULT_CHUNK,
             noise: np.ndarray | None = None, check_range: bool = True, workers: int = DEFAULT_WORKERS,
             counts: list | None = None) -> np.ndarray:
    """Targets of ``model`` for raw conditions, in raw units (float64, shape ``(n, n_targets)``).

    Args:
        model: a loaded :class:`~mambah.nn.pidmodel.PidModel`.
        conditions: raw conditions, shape ``(n, n_conditions)`` in the model's column order (units of
            the card: MeV/c for momenta), finite.
        rng: numpy Generator, int seed or None (fresh entropy); the noise uniforms are drawn from it,
            ``n * 2 * ceil(n_noise / 2)`` float32 in row order (:func:`draw_uniforms`).
        chunk: rows per compiled call; the result does not depend on it (nor on ``workers``).
        noise: optional float32 Gaussian noise ``(n, n_noise)`` to use instead (tests, comparisons);
            then nothing is drawn from ``rng``.
        check_range: warn (:class:`~mambah.errors.OutOfRangeWarning`) when conditions lie outside
            the training range; they are clamped to the range edges by the transform.
        workers: compiled calls in flight at once.
    Returns:
        float64 array ``(n, n_targets)``: each target interpolated through its training knots, so
        inside the training range, and exactly a knot value where the knots repeat (a spike).
    """
    fast = _compiled(model)
    out, results = _run(model, fast, conditions, rng, chunk=chunk, noise=noise, workers=workers)
    if results:  # (nothing to report for no rows)
        _report_range(model, results, fast.n_cond, conditions, check_range, counts)
    return out


def generate_variations(model: Model, conditions: np.ndarray, rng=None, *, chunk: int = DEFAULT_CHUNK,
                        noise: np.ndarray | None = None, check_range: bool = True, workers: int = DEFAULT_WORKERS,
                        counts: list | None = None) -> np.ndarray:
    """Targets of ``model``'s nominal generator and of each ensemble member, with the same noise.

    The arguments are those of :func:`generate`; ``model`` is a
    :class:`~mambah.nn.pidmodel.PidModel` with ``n_members`` = K ensemble members (which share its
    preprocessing). Per chunk, one compiled graph transforms the conditions and makes the noise once
    and runs the K + 1 generators on them, so the members differ from the nominal only by their
    weights (the spread is the model's, not the sampler's), and the range check is done (and
    warned about) once.

    Returns:
        float64 array ``(K + 1, n, n_targets)``: ``[0]`` the nominal, bit for bit what
        :func:`generate` returns for the same ``rng`` state, ``chunk`` and ``noise``; ``[k]`` member k.
    """
    fast = _compiled_variations(model)
    out, results = _run(model, fast, conditions, rng, chunk=chunk, noise=noise, workers=workers,
                        n_out=1 + len(model.members))
    if results:  # (nothing to report for no rows)
        _report_range(model, results, fast.n_cond, conditions, check_range, counts)
    return out


def _compiled_member(model, k: int):
    """The compiled graph of ``model``'s ensemble member ``k`` (1..K) alone, kept by the model."""
    members = model.members  # (loaded first: the model's memo lock is not re-entrant)
    if not 1 <= k <= len(members):
        raise DataError(f"model {model.card.get('name')!r} has {len(members)} ensemble members, not a member {k}")
    return model.memo(f"mambah.nn.inference._Compiled.member{k}", lambda: _Compiled(model, [members[k - 1]]))


def generate_member(model: Model, k: int, conditions: np.ndarray, rng=None, *, chunk: int = DEFAULT_CHUNK,
                    noise: np.ndarray | None = None, check_range: bool = True, workers: int = DEFAULT_WORKERS,
                    counts: list | None = None) -> np.ndarray:
    """Targets of ``model``'s ensemble member ``k`` (1..K) alone, float64 ``(n, n_targets)``.

    The arguments are those of :func:`generate`: for the same ``rng`` state, ``chunk`` and
    ``conditions`` the noise is the one :func:`generate` and :func:`generate_variations` use, and
    the result is ``generate_variations(...)[k]``. For a member evaluated on conditions of its own
    (a PID chain step conditioned on the outputs of an earlier step that has members,
    :meth:`mambah.pid.chain.PidChain.generate_variations_columns`).
    """
    fast = _compiled_member(model, int(k))
    out, results = _run(model, fast, conditions, rng, chunk=chunk, noise=noise, workers=workers, n_out=1)
    if results:
        _report_range(model, results, fast.n_cond, conditions, check_range, counts)
    return out[0]


def _run(model, fast: _Compiled, conditions, rng, *, chunk, noise, workers, n_out: int | None = None):
    """The chunks of :func:`generate` (``n_out`` None: output ``(n, t)``) or of
    :func:`generate_variations` (``n_out`` generators stacked: ``(n_out, n, t)``) through the compiled
    graphs ``fast``: ``(output, the chunks' range counts)``."""
    from mambah.random import get_rng

    c = np.ascontiguousarray(conditions, dtype=np.float64)
    lead = () if n_out is None else (n_out,)
    if c.ndim != 2 or c.shape[1] != fast.n_cond:
        raise DataError(f"expected conditions of shape (n, {fast.n_cond}) in the order {model.conditions}, "
                        f"got {c.shape}")
    n = len(c)
    if noise is not None:
        noise = np.ascontiguousarray(noise, dtype=np.float32)
        if noise.shape != (n, fast.n_noise):
            raise DataError(f"noise must have shape ({n}, {fast.n_noise}), got {noise.shape}")
    else:
        rng = get_rng(rng)
    if n == 0:
        return np.empty((*lead, 0, fast.n_targ)), []
    bad = ~np.isfinite(c).all(axis=1)
    if bad.any():
        raise DataError(f"{int(bad.sum())} of {n} condition rows hold NaN or inf (first: row {int(np.argmax(bad))}) "
                        f"for model {model.card.get('name')!r}")
    chunk = max(1, int(chunk))
    out = np.empty((*lead, n, fast.n_targ))

    def run(s, e, noise_or_u):
        f = fast.with_noise if noise is not None else \
            _graph_for(e - s, chunk, fast.with_uniforms, fast.with_uniforms_jit)
        y, lo, hi = f(c[s:e], noise_or_u)
        out[..., s:e, :] = y.numpy()
        return _range_counts(c[s:e], lo, hi, fast.c_lo, fast.c_hi)

    def jobs():
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            # the uniforms are drawn here, in row order, whatever the chunking and threading
            yield s, e, noise[s:e] if noise is not None else draw_uniforms(rng, e - s, fast.n_noise)

    return out, _map_chunks(run, jobs(), n, chunk, workers)


def sample_flags(model: Model, conditions: np.ndarray, rng, *, chunk: int = DEFAULT_CHUNK,
                 check_range: bool = True, workers: int = DEFAULT_WORKERS, counts: list | None = None) -> np.ndarray:
    """Flags of a :class:`~mambah.nn.flags.FlagModel` drawn for raw conditions: float64 0/1 ``(n, n_targets)``.

    One compiled graph per chunk does the condition transform, the classifier and the draw
    ``u < P(flag)``; the uniforms ``u`` are float64, one per row and flag, drawn from ``rng`` row-major
    (``rng.random((n, n_targets))`` in row order), as :meth:`FlagModel.sample
    <mambah.nn.flags.FlagModel.sample>` documents. The probabilities are those of the numpy
    reference :meth:`FlagModel.probabilities <mambah.nn.flags.FlagModel.probabilities>` up to float32
    round-off (~1e-6), so a draw differs from the reference only where ``u`` lies that close to the
    probability. The result does not depend on ``chunk`` or ``workers``. A model with a
    :class:`~mambah.nn.marginals.FlagCalibration` is drawn with its calibrated probability (the
    uniforms are transformed, :meth:`~mambah.nn.marginals.FlagCalibration.uniforms`).

    Args:
        conditions: finite raw conditions ``(n, n_conditions)`` in the model's order.
        rng: numpy Generator.
        check_range: warn (:class:`~mambah.errors.OutOfRangeWarning`) for conditions outside the
            training range (evaluated at the range edges).
        counts: a list that receives the :class:`~mambah.nn.model.RangeCounts` of those rows,
            counted in the same compiled pass, instead of the warning.
    """
    c = np.ascontiguousarray(conditions, dtype=np.float64)
    fast = _compiled(model, _CompiledFlags)
    if c.ndim != 2 or c.shape[1] != fast.n_cond:
        raise DataError(f"expected conditions of shape (n, {fast.n_cond}) in the order {model.conditions}, "
                        f"got {c.shape}")
    n = len(c)
    out = np.empty((n, fast.n_targ))
    if n == 0:
        return out
    chunk = max(1, int(chunk))

    cal = getattr(model, "correction", None)

    def run(s, e, u):
        if cal is not None:  # u' < P  <=>  u < P', P' the calibrated probability
            u = cal.uniforms(u, c[s:e], model.conditions, model.targets, model.member_index)
        y, lo, hi = _graph_for(e - s, chunk, fast.draw, fast.draw_jit)(c[s:e], u)
        out[s:e] = y.numpy()
        return _range_counts(c[s:e], lo, hi, fast.c_lo, fast.c_hi)

    jobs = ((s, min(s + chunk, n), rng.random((min(s + chunk, n) - s, fast.n_targ))) for s in range(0, n, chunk))
    results = _map_chunks(run, jobs, n, chunk, workers)
    _report_range(model, results, fast.n_cond, c, check_range, counts)
    return out


def generate_reference(model: Model, conditions: np.ndarray, rng=None, *, chunk: int = 262144,
                       noise: np.ndarray | None = None) -> np.ndarray:
    """The numpy path: range check, numpy noise, numpy transforms, network via :func:`predict_generator`
    (float64)."""
    from mambah.random import get_rng

    c = np.asarray(conditions, dtype=float)
    model.warn_out_of_range(model.check_range(c))
    if noise is None:
        noise = get_rng(rng).standard_normal((len(c), model.n_noise), dtype=np.float32)
    z = predict_generator(model.generator, model.preprocess(c), noise, chunk=chunk)
    return model.targ_pre.inverse_transform(z)


def predict_generator(generator, c_pre: np.ndarray, noise: np.ndarray, chunk: int = 262144) -> np.ndarray:
    """Outputs of a Keras generator ``G([c_pre, noise])`` for large inputs, one compiled call per chunk.

    Args:
        generator: the Keras generator (preprocessed conditions and noise -> preprocessed targets).
        c_pre: preprocessed conditions ``(n, n_conditions)``; noise: ``(n, n_noise)``.
        chunk: rows per compiled call.
    Returns:
        float32 ``(n, n_targets)``.
    """
    import tensorflow as tf

    fn = getattr(generator, "_mambah_predict_fn", None)
    if fn is None:
        # a concrete function: traced once, no tf.function dispatch per call, and no "frequent retracing"
        # warning from TensorFlow (which counts the traces of this lambda over all generators together)
        fn = tf.function(lambda a, b: generator([a, b], training=False),
                         input_signature=[tf.TensorSpec([None, c_pre.shape[1]], tf.float32),
                                          tf.TensorSpec([None, noise.shape[1]], tf.float32)]).get_concrete_function()
        generator._mambah_predict_fn = fn
    out = [fn(c_pre[i:i + chunk], noise[i:i + chunk]).numpy() for i in range(0, len(c_pre), chunk)]
    return np.concatenate(out) if out else np.empty((0, generator.outputs[0].shape[-1]), np.float32)
