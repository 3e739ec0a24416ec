"""Marginal calibration of a PID GAN's outputs in bins of (P, ETA): PIDCorr-style quantile mapping.

A conditional GAN learns the joint shape of its targets well (correlations, bulk) but can be off in
the *tails* of a single target by tens of percent in a momentum region: the pion RICH GAN of the
reference chain gave ``PIDK > 5`` (the pi -> K mis-ID rate) 1.2% at 5-10 GeV/c against 2.1% in the
reference detector, and 0.42% against 0.23% at 20-30 GeV/c — a BDT-KS of 0.03 cannot see a 1% tail.
A mis-ID rate *is* such a tail.

The correction maps each generated target through the conditional quantile functions of the
calibration data and of the model in the same bin, as LHCb's PIDCorr maps simulated PID variables
onto the calibration sample's (A. Poluektov, JINST 10 (2015) P02011)::

    y = Q_data,b( F_model,b(x) )      b = the (P, ETA) bin of the row

``F_model,b`` and ``Q_data,b`` are the sWeighted distribution function of the model's output and
the quantile function of the data on the fit sample's rows of bin ``b``, tabulated at levels
:data:`LEVELS` (dense in the tails: probit-spaced between 0.05% and 99.95%), linear in between,
and shifted by the outermost knots' difference beyond them. The map is monotone in ``x``, so the
model's ranks — its correlations between targets and its dependence on the other conditions
(occupancy, threshold codes) inside a bin — are kept, and every target's distribution in every bin
becomes the data's (up to the fit sample's statistics and the bin width). The sWeighted ECDFs are
made monotone by averaging their running maximum from the left and running minimum from the right.

**Conditional maps** (``given``). The maps of single targets keep the model's copula, so a cut on
two targets together carries the copula's error: the kaon RICH step's ``PIDp > 5`` (``RichDLLk +
RichDLLpK > 5``, both targets mapped) stayed 0.5-1% off the reference detector's at 3-20 GeV/c with
pulls up to 9 on 600k kaons. A target can instead be mapped in classes of another, ``given``, target
(mapped first): in each bin the data's quantiles of ``given`` at 1/C, ..., (C - 1)/C cut it into C
classes of equal sWeighted population, a data row belongs to the class of its value, a model row to
the class of its *mapped* value, and the target gets one map per class::

    y_b = Q_data,b,c( F_model,b,c(x_b) )     c = the class of the row's mapped given target in bin b

so the joint distribution of the two targets is the data's at the resolution of the classes. Inside a
class the two keep the model's copula; where the targets are strongly correlated (a kaon's
``RichDLLpK`` against its ``RichDLLk``) that still leaves a cut on their sum off, so a pair can map
the *sum* instead (``sums``): ``s = x + a`` (``a`` the mapped given target) is mapped in the classes
and the target becomes ``y = Q_data,b,c(F_model,b,c(s)) - a``: the sum's distribution in every bin
(``PIDp = RichDLLk + RichDLLpK``) is then the data's exactly, the difference's at the resolution of
the classes.

**Logit offsets** (``logit_offsets``). The residual ProbNN steps of the PID chains generate
``dProbNNx = logit(ProbNNx) - logit(SurProbNNx)``, the surrogate ``SurProbNNx`` being one of their
conditions; what an analysis cuts on is ``ProbNNx``. A target with a logit offset is mapped as
``s = x + logit(c)`` (``c`` the condition it names, clipped to [:data:`LOGIT_CLIP`, 1 - LOGIT_CLIP] as
the chain does) and becomes ``Q_data,b(F_model,b(s)) - logit(c)``: the distribution of
``logit(ProbNNx)`` in every bin is the data's, so every cut ``ProbNNx > t`` is. The kaon ProbNN step
alone, given the reference detector's own DLLs, put ``ProbNNk > 0.5`` at 21.8% against 18.8% at
5-10 GeV/c.

**Ensembles.** Member k of a model with members gets its own map: its own ``F`` (its generator on
the fit sample) and the data quantiles of a Poisson(1) bootstrap replica of the fit sample (seeds
recorded), so the members' spread in a tail is the fit sample's statistical uncertainty, not the
members' GAN tails (which the map would otherwise carry into the spread).

On disk: ``marginals.npz`` in the model directory (listed with its hash in the card's ``files``)
with ``p_edges``, ``eta_edges``, ``split``, ``states``, ``bin_ids``, ``levels``, ``targets`` and
``gen`` / ``data`` knots (float32) of shape ``(K + 1, len(bin_ids), n_targets, n_levels)`` (with
conditional maps also ``given``, the (target, given) pairs, ``class_edges`` ``(K + 1, len(bin_ids),
n_pairs, C - 1)``, ``cgen`` / ``cdata`` ``(K + 1, len(bin_ids), n_pairs, C, n_levels)`` and ``sums``, 1 where
a pair maps the sum), described by the card's ``"marginal_correction"`` section
(fit data, weight, selection, bins, seeds, command). :class:`~mambah.nn.pidmodel.PidModel` applies
it in every generation path (:meth:`~mambah.nn.pidmodel.PidModel.generate_array`, variations,
members); fit it with :func:`mambah.training.marginals.fit_marginal_correction` (CLI ``mambah train
marginals``).

**Flags.** A Bernoulli flag classifier (:class:`~mambah.nn.flags.FlagModel`) gets the analogue,
a :class:`FlagCalibration`: in each bin, a shift of the logit of its probability,
``P'(flag) = sigmoid(logit P(flag) + delta_b)``, with ``delta_b`` such that the sWeighted mean of
``P'`` over the fit sample's rows of the bin equals the data's sWeighted flag rate (a per-bin Platt
recalibration; the classifier's dependence on the other conditions inside a bin is kept). The
pion isMuon classifier trained on a 6M-candidate sample put the pi -> mu rate at 1.58% against
2.14% in its own held-out data at 2-5 GeV/c: a 1% rate in a steep turn-on is where a smooth
network is weakest. Same file and card section; the file's ``kind`` says which.

Limits: the map is constant inside a bin (the within-bin dependence on P and ETA is the model's);
rows outside the edges use the outermost bins; a bin of the fit sample with less than
:data:`MIN_BIN_WEIGHT` sWeighted signal is left uncorrected (identity knots; the card counts them).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy.special import expit, logit, ndtr

from mambah.errors import ModelDirError
from mambah.nn.knots import KnotTables
from mambah.nn.logit import LOGIT_CLIP, clipped_logit

__all__ = ["BinnedCalibration", "MarginalCorrection", "FlagCalibration", "load_calibration", "LEVELS", "LOGIT_CLIP",
           "MIN_BIN_WEIGHT", "FILE", "MAX_LOGIT_SHIFT", "MAX_REL_ERROR", "monotone_ecdf_quantiles", "map_values", "strict_knots",
           "apply_reference"]

#: the levels at which the quantile functions are tabulated: Phi(z) for 161 z in [-3.29, 3.29]
#: (0.05% ... 99.95%; 1.6% apart at the median, 0.01% in the outer tails)
LEVELS = ndtr(np.linspace(-3.29, 3.29, 161))
#: sWeighted signal (sum of weights) a bin needs to be corrected
MIN_BIN_WEIGHT = 2000.0
#: the file in the model directory
FILE = "marginals.npz"
#: the largest logit shift a :class:`FlagCalibration` applies (a factor e^5 = 150 in the odds); a bin
#: whose data would need more is shifted by this much and counted in the card
MAX_LOGIT_SHIFT = 5.0
#: a flag rate r is calibrated in a bin only if the fit data give it (or 1 - r, the rarer outcome) to this
#: relative precision: sparse bins of a calibration sample have sWeighted rates the background subtraction
#: makes up (a proton bin at 15-16 GeV/c gave 1.6 +- 0.4% isMuon where the truth is 0.27%)
MAX_REL_ERROR = 0.25


def monotone_ecdf_quantiles(x: np.ndarray, w: np.ndarray, levels: np.ndarray, *, order: np.ndarray | None = None) -> np.ndarray:
    """Quantiles at ``levels`` of ``x`` under signed weights ``w`` (sWeights).

    The signed ECDF ``F(x) = sum_{x_i <= x} w_i / sum w_i`` may decrease where the background
    subtraction over-subtracts; it is made monotone as the mean of its running maximum (from the
    left) and running minimum (from the right), both clipped to [0, 1]; the quantile at level q is
    the x where that function reaches q, linear between the sorted values. (On toy samples with a
    background-dominated 0.2% tail this is unbiased to 3%, as the isotonic regression of F is, at
    a fifth of its cost.) ``order``: ``argsort(x)``, if known (several weights for one ``x``).
    """
    order = np.argsort(x, kind="stable") if order is None else order
    xs, ws = x[order], w[order]
    c = np.cumsum(ws)
    tot = c[-1]
    if not tot > 0:
        raise ValueError("the weights sum to <= 0")
    f = c / tot
    up = np.clip(np.maximum.accumulate(f), 0.0, 1.0)
    down = np.clip(np.minimum.accumulate(f[::-1])[::-1], 0.0, 1.0)
    g = 0.5 * (up + down)
    # strictly increasing abscissae for np.interp: ties of g keep the first value's x
    g_u, first = np.unique(g, return_index=True)
    return np.interp(levels, g_u, xs[first])


class BinnedCalibration:
    """The bins of a calibration: (P, ETA) and the state of some 0/1 conditions.

    Attributes:
        targets: the corrected targets (names, a subset of the model's, in its order).
        p_edges, eta_edges: the bin edges (MeV/c; pseudorapidity).
        split: 0/1 conditions whose state also splits the bins (e.g. the RICH threshold codes: the
            response is a step at each threshold, and the tracks of a (P, ETA) bin on either side of
            a step need their own maps; the signal and the background of a calibration sample
            populate the two sides differently). ``[]``: none.
        states: the states seen in the fit sample, as sorted integer codes ``sum(bit_i << i)``
            over ``split``; a row in another state is not corrected.
        bin_ids: the bins that have a correction (sorted), of ``(n_p * n_eta * n_states)``: bin
            ``b = (ip * n_eta + ie) * n_states + i_state``; a row in another bin is not corrected.
    """

    #: the value of ``kind`` in the file
    file_kind = ""
    #: what it is called in errors
    what = "calibration"

    def __init__(self, targets, p_edges, eta_edges, split=(), states=(0,), bin_ids=None):
        self.targets = [str(t) for t in targets]
        self.p_edges = np.asarray(p_edges, float)
        self.eta_edges = np.asarray(eta_edges, float)
        self.split = [str(c) for c in split]
        self.states = np.asarray(states, np.int64)
        self.n_cells = (len(self.p_edges) - 1) * (len(self.eta_edges) - 1) * len(self.states)
        self.bin_ids = np.arange(self.n_cells) if bin_ids is None else np.asarray(bin_ids, np.int64)
        if np.any(np.diff(self.bin_ids) <= 0) or (len(self.bin_ids) and not 0 <= self.bin_ids[0] <= self.bin_ids[-1]
                                                  < self.n_cells):
            raise ModelDirError(f"{self.what}: bin_ids must be sorted distinct bins of 0..{self.n_cells - 1}")
        if np.any(np.diff(self.states) <= 0) or len(self.split) > 62:
            raise ModelDirError(f"{self.what}: the states must be sorted distinct codes of at most 62 flags")

    @property
    def n_members(self) -> int:
        raise NotImplementedError

    @property
    def n_bins(self) -> int:
        """The number of bins with a correction (``len(bin_ids)``)."""
        return len(self.bin_ids)

    def needs(self) -> list[str]:
        """The condition columns :meth:`bins` reads."""
        return ["P", "ETA", *self.split]

    @staticmethod
    def state_codes(flags: np.ndarray) -> np.ndarray:
        """Integer codes ``sum(bit_i << i)`` of rows of 0/1 values ``(n, n_split)`` (> 0.5 is 1)."""
        flags = np.asarray(flags)
        codes = np.zeros(len(flags), np.int64)
        if flags.ndim != 2 or not flags.shape[1]:
            return codes
        for i in range(flags.shape[1]):  # (column by column: no (n, n_split) integer temporaries)
            codes += (flags[:, i] > 0.5) * np.int64(1 << i)
        return codes

    @staticmethod
    def cells(p: np.ndarray, eta: np.ndarray, codes: np.ndarray | None, p_edges: np.ndarray, eta_edges: np.ndarray,
              states: np.ndarray) -> np.ndarray:
        """The cell ``(ip * n_eta + ie) * n_states + i_state`` of each row (outside the P, ETA edges:
        the outermost bin; -1 for a state code not in ``states``; ``codes`` None: the only state)."""
        ip = np.clip(np.searchsorted(p_edges, p, side="right") - 1, 0, len(p_edges) - 2)
        ie = np.clip(np.searchsorted(eta_edges, eta, side="right") - 1, 0, len(eta_edges) - 2)
        ns = len(states)
        b = (ip * (len(eta_edges) - 1) + ie) * ns
        if codes is None:
            return b
        i = np.clip(np.searchsorted(states, codes), 0, ns - 1)
        return np.where(states[i] == codes, b + i, -1)

    def bins(self, p: np.ndarray, eta: np.ndarray, flags: np.ndarray | None = None) -> np.ndarray:
        """The index (into :attr:`bin_ids`) of each row's bin: outside the P, ETA edges the outermost
        bin; -1 (not corrected) for a state of ``flags`` (the ``split`` columns, ``(n, len(split))``)
        not seen in the fit or a bin without a map."""
        if self.split and flags is None:
            raise ValueError(f"this correction is split by {self.split}: pass their values")
        if not hasattr(self, "_bin_of_cell"):  # cell -> index into bin_ids, -1 last (cell -1: no bin)
            lut = np.full(self.n_cells + 1, -1, np.int64)
            lut[self.bin_ids] = np.arange(self.n_bins)
            self._bin_of_cell = lut
        if not self.split or len(self.split) > 20:
            codes = self.state_codes(flags) if self.split else None
            return self._bin_of_cell[self.cells(p, eta, codes, self.p_edges, self.eta_edges, self.states)]
        if not hasattr(self, "_state_of_code"):  # code -> index into states, -1 for a state not seen
            lut = np.full(1 << len(self.split), -1, np.int64)
            ok = self.states[(self.states >= 0) & (self.states < len(lut))]
            lut[ok] = np.searchsorted(self.states, ok)
            self._state_of_code = lut
        i = self._state_of_code[self.state_codes(flags)]
        cell = self.cells(p, eta, None, self.p_edges, self.eta_edges, self.states) + i
        cell[i < 0] = -1
        return self._bin_of_cell[cell]

    def bins_of(self, conditions: np.ndarray, names: list[str]) -> np.ndarray:
        """:meth:`bins` of rows of raw ``conditions`` whose columns are ``names``."""
        c = np.asarray(conditions)
        col = {n: j for j, n in enumerate(names)}
        flags = c[:, [col[n] for n in self.split]] if self.split else None
        return self.bins(c[:, col["P"]].astype(float), c[:, col["ETA"]].astype(float), flags)

    # ------------------------------------------------------------------ disk
    def arrays(self) -> dict[str, np.ndarray]:
        return {"kind": np.array(self.file_kind), "p_edges": self.p_edges, "eta_edges": self.eta_edges,
                "targets": np.array(self.targets, dtype="U64"), "split": np.array(self.split, dtype="U64"),
                "states": self.states, "bin_ids": self.bin_ids}

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``marginals.npz`` into the directory ``path``; returns the file."""
        f = Path(path) / FILE
        np.savez(f, **self.arrays())
        return f

    @classmethod
    def load(cls, path: str | os.PathLike):
        """Read ``marginals.npz`` of a model directory (:func:`load_calibration`), which must hold
        this class's kind of calibration."""
        c = load_calibration(path)
        if not isinstance(c, cls):
            raise ModelDirError(f"{Path(path) / FILE} holds a {type(c).__name__} ({c.file_kind!r}), "
                                f"not a {cls.__name__}")
        return c


class MarginalCorrection(BinnedCalibration):
    """The quantile maps of one model (nominal and members) in bins of (P, ETA) and of the state of
    its 0/1 conditions (the bins: :class:`BinnedCalibration`).

    Attributes:
        levels: the tabulation levels.
        gen, data: knots ``(K + 1, len(bin_ids), n_targets, n_levels)``: the model's and the data's
            quantiles in each of those bins.
        given: the conditional maps' ``{target: given}`` (``{}``: none); such a target is not in
            :attr:`targets`, its given target is.
        class_edges: ``(K + 1, len(bin_ids), len(given), C - 1)``: the classes of each given target
            (its data quantiles at 1/C ... (C - 1)/C in the bin); ``None`` without conditional maps.
        cgen, cdata: ``(K + 1, len(bin_ids), len(given), C, n_levels)``: the conditional maps' knots.
        sums: the conditional targets whose map is of ``target + given`` (the target is the mapped sum
            minus the given target), the others' of the target itself.
        logit_offsets: ``{target: condition}``: unconditional targets mapped as ``target + logit(condition)``
            (the mapped value minus the offset; see the module docstring), ``{}``: none.
    """

    file_kind = "quantile_map"
    what = "marginal correction"

    def __init__(self, targets, p_edges, eta_edges, levels, gen, data, split=(), states=(0,), bin_ids=None, *,
                 given=None, class_edges=None, cgen=None, cdata=None, sums=(), logit_offsets=None):
        super().__init__(targets, p_edges, eta_edges, split, states, bin_ids)
        self.logit_offsets = {str(k): str(v) for k, v in (logit_offsets or {}).items()}
        bad = sorted(set(self.logit_offsets) - set(self.targets))
        if bad:
            raise ModelDirError(f"marginal correction: logit offsets of {bad}, which are not among its unconditionally "
                                f"mapped targets {self.targets}")
        self.levels = np.asarray(levels, float)
        self.gen = np.asarray(gen, float)
        self.data = np.asarray(data, float)
        nb = len(self.bin_ids)
        want = (nb, len(self.targets), len(self.levels))
        if self.gen.ndim != 4 or self.gen.shape[1:] != want or self.data.shape != self.gen.shape:
            raise ModelDirError(f"marginal correction: knots of shape {self.gen.shape} / {self.data.shape}, "
                                f"expected (K + 1, {nb}, {len(self.targets)}, {len(self.levels)})")
        _check_knots(self.gen, self.data)
        self._xp = strict_knots(self.gen, len(self.levels))
        # conditional maps: target -> the (unconditionally mapped) target whose class in the bin selects its map
        self.given = {str(k): str(v) for k, v in (given or {}).items()}
        bad = {k: v for k, v in self.given.items() if v not in self.targets or k in self.targets or v in self.given}
        if bad:
            raise ModelDirError(f"marginal correction: a conditional target must not be an unconditional one and "
                                f"must be given one of those ({self.targets}): {bad}")
        self.sums = tuple(str(t) for t in sums)
        if set(self.sums) - set(self.given):
            raise ModelDirError(f"marginal correction: sums {sorted(set(self.sums) - set(self.given))} are not "
                                f"conditional targets ({sorted(self.given)})")
        npair = len(self.given)
        if npair:
            self.class_edges = np.asarray(class_edges, float)
            self.cgen, self.cdata = np.asarray(cgen, float), np.asarray(cdata, float)
            k1 = self.gen.shape[0]
            nc = self.class_edges.shape[-1] + 1 if self.class_edges.ndim == 4 else 0
            if (self.class_edges.shape != (k1, nb, npair, nc - 1) or nc < 2
                    or self.cgen.shape != (k1, nb, npair, nc, len(self.levels)) or self.cdata.shape != self.cgen.shape):
                raise ModelDirError(f"marginal correction: conditional maps of shape {self.class_edges.shape} (class "
                                    f"edges), {self.cgen.shape} / {self.cdata.shape} (knots), expected ({k1}, {nb}, "
                                    f"{npair}, C - 1) and ({k1}, {nb}, {npair}, C, {len(self.levels)}), C >= 2")
            if np.any(np.diff(self.class_edges, axis=-1) < 0) or not np.all(np.isfinite(self.class_edges)):
                raise ModelDirError("marginal correction: class edges must be finite and non-decreasing")
            _check_knots(self.cgen, self.cdata)
            self._cxp = strict_knots(self.cgen, len(self.levels))
        else:
            self.class_edges = self.cgen = self.cdata = None
        self._knots: dict[int, tuple] = {}

    def _tables(self, member: int) -> tuple[KnotTables, KnotTables | None]:
        """Member ``member``'s maps as :class:`~mambah.nn.knots.KnotTables` (built on first use): the
        unconditional ones, table ``bin * n_targets + target``, and the conditional ones, table
        ``(bin * n_pairs + pair) * n_classes + class``."""
        if member not in self._knots:
            L = len(self.levels)
            maps = KnotTables(self._xp[member].reshape(-1, L), self.data[member].reshape(-1, L))
            cmaps = KnotTables(self._cxp[member].reshape(-1, L), self.cdata[member].reshape(-1, L)) \
                if self.given else None
            self._knots[member] = (maps, cmaps)
        return self._knots[member]

    def needs(self) -> list[str]:
        """The condition columns :meth:`apply` reads: the bins' and the logit offsets'."""
        base = super().needs()
        return base + [c for c in dict.fromkeys(self.logit_offsets.values()) if c not in base]

    @property
    def n_classes(self) -> int:
        """Classes of the conditional maps (0: none)."""
        return 0 if self.class_edges is None else self.class_edges.shape[-1] + 1

    def select_members(self, index) -> MarginalCorrection:
        """The same bins with the maps of members ``index`` (0: the nominal's), in that order: member
        ``i`` of the result is member ``index[i]`` of this one."""
        idx = np.asarray(index, int)
        cond = {} if not self.given else dict(given=self.given, class_edges=self.class_edges[idx],
                                              cgen=self.cgen[idx], cdata=self.cdata[idx], sums=self.sums)
        return MarginalCorrection(self.targets, self.p_edges, self.eta_edges, self.levels, self.gen[idx],
                                  self.data[idx], self.split, self.states, self.bin_ids, **cond,
                                  logit_offsets=self.logit_offsets)

    @property
    def n_members(self) -> int:
        return self.gen.shape[0] - 1

    def compact(self) -> MarginalCorrection:
        """The same correction without the bins whose maps are the identity (model knots equal to the
        data's for every member and target, conditional maps included): those rows are left alone either way."""
        keep = ~np.all(self.gen == self.data, axis=(0, 2, 3))
        cond = {}
        if self.given:
            keep |= ~np.all(self.cgen == self.cdata, axis=(0, 2, 3, 4))
            cond = dict(given=self.given, class_edges=self.class_edges[:, keep], cgen=self.cgen[:, keep],
                        cdata=self.cdata[:, keep], sums=self.sums)
        return MarginalCorrection(self.targets, self.p_edges, self.eta_edges, self.levels, self.gen[:, keep],
                                  self.data[:, keep], self.split, self.states, self.bin_ids[keep], **cond,
                                  logit_offsets=self.logit_offsets)

    def apply(self, y: np.ndarray, conditions: np.ndarray, names: list[str], columns: list[str],
              member: int = 0, tally: list | None = None) -> np.ndarray:
        """``y`` (n, len(columns)) with the corrected columns mapped (a new array; others unchanged).

        ``conditions``: the rows' raw conditions, columns ``names`` (P, ETA and the ``split``
        columns among them). NaN values stay NaN. ``member``: 0 the nominal's map, k member k's.
        ``tally``: a list that receives the number of rows left unmapped (their bin or state has no
        map: the fit's sample held less than its ``min_weight`` of signal there, or no row)."""
        out = np.array(y, dtype=float, copy=True)
        if not len(out) or not self.n_bins:
            if tally is not None:
                tally.append(len(out))
            return out
        b = self.bins_of(conditions, names)
        rows = np.flatnonzero(b >= 0)
        if tally is not None:
            tally.append(len(out) - len(rows))
        if not len(rows):
            return out
        b = b[rows]
        maps, cmaps = self._tables(member)
        nt = len(self.targets)
        for j, t in enumerate(self.targets):
            c = columns.index(t)
            v = out[rows, c]
            if t in self.logit_offsets:  # the map is of target + logit(condition)
                off = clipped_logit(np.asarray(conditions)[rows, names.index(self.logit_offsets[t])])
                out[rows, c] = maps(v + off, b * nt + j) - off
            else:
                out[rows, c] = maps(v, b * nt + j)
        for i, (t, a) in enumerate(self.given.items()):  # after the unconditional maps: classes of mapped values
            c = columns.index(t)
            v, given = out[rows, c], out[rows, columns.index(a)]
            edges = self.class_edges[member, :, i]  # (bins, C - 1): the class is the number of edges <= given
            cls = np.zeros(len(rows), np.intp)
            for e in range(edges.shape[1]):
                cls += given >= edges[b, e]
            cls[np.isnan(given)] = self.n_classes - 1  # (where np.searchsorted sorts NaN: last)
            tab = (b * len(self.given) + i) * self.n_classes + cls
            if t in self.sums:  # the sum is mapped; the target is the mapped sum minus the given target
                out[rows, c] = cmaps(v + given, tab) - given
            else:
                out[rows, c] = cmaps(v, tab)
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        a = {**super().arrays(), "levels": self.levels, "gen": self.gen.astype(np.float32),
             "data": self.data.astype(np.float32)}
        if self.given:
            a.update(given=np.array(list(self.given.items()), dtype="U64"),
                     class_edges=self.class_edges.astype(np.float32), cgen=self.cgen.astype(np.float32),
                     cdata=self.cdata.astype(np.float32),
                     sums=np.array([t in self.sums for t in self.given], dtype=np.int8))
        if self.logit_offsets:
            a["logit_offsets"] = np.array(list(self.logit_offsets.items()), dtype="U64")
        return a


def _check_knots(gen: np.ndarray, data: np.ndarray) -> None:
    if np.any(np.diff(gen, axis=-1) < 0) or np.any(np.diff(data, axis=-1) < 0) \
            or not np.all(np.isfinite(gen)) or not np.all(np.isfinite(data)):
        raise ModelDirError("marginal correction: knots must be finite and non-decreasing")


def strict_knots(gen: np.ndarray, n_levels: int) -> np.ndarray:
    """Strictly increasing model knots for np.interp (a flat stretch of the model's quantile function
    is a spike of its output: all of it maps to the start of the data's stretch)."""
    span = np.maximum(gen[..., -1:] - gen[..., :1], 1.0)
    return gen + np.arange(n_levels) * (1e-9 * span)


def map_values(x: np.ndarray, g: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``x`` through one quantile map: model knots ``g`` (strictly increasing) to data knots ``d``,
    linear in between, shifted by the outermost knots' difference beyond them (NaN stays NaN)."""
    v = np.interp(x, g, d)
    lo, hi = x < g[0], x > g[-1]
    v[lo] = x[lo] + (d[0] - g[0])
    v[hi] = x[hi] + (d[-1] - g[-1])
    return v



def apply_reference(correction: MarginalCorrection, y: np.ndarray, conditions: np.ndarray, names: list[str],
                    columns: list[str], member: int = 0) -> np.ndarray:
    """:meth:`MarginalCorrection.apply` by its definition: each bin's rows through :func:`map_values`, one
    bin, target and class at a time (numpy.interp). ``apply`` gives the same array bit for bit (the tests
    and ``benchmarks/pid.py --only maps`` compare them); this is its reference and the baseline of its
    speed."""
    c = correction
    out = np.array(y, dtype=float, copy=True)
    b = c.bins_of(conditions, names) if len(out) else np.empty(0, np.int64)
    cond = np.asarray(conditions)
    for k in np.unique(b[b >= 0]):
        r = np.flatnonzero(b == k)
        for j, t in enumerate(c.targets):
            col = columns.index(t)
            off = clipped_logit(cond[r, names.index(c.logit_offsets[t])]) if t in c.logit_offsets else 0.0
            out[r, col] = map_values(out[r, col] + off, c._xp[member, k, j], c.data[member, k, j]) - off
        for i, (t, a) in enumerate(c.given.items()):
            col, given = columns.index(t), out[r, columns.index(a)]
            cls = np.searchsorted(c.class_edges[member, k, i], given, side="right")
            for cl in np.unique(cls):
                rr, gg = r[cls == cl], given[cls == cl]
                add = gg if t in c.sums else 0.0
                out[rr, col] = map_values(out[rr, col] + add, c._cxp[member, k, i, cl], c.cdata[member, k, i, cl]) - add
    return out

class FlagCalibration(BinnedCalibration):
    """Logit shifts of a flag classifier's probabilities in bins (the bins: :class:`BinnedCalibration`):
    ``P' = sigmoid(logit P + shift[member, bin, target])``.

    Attributes:
        shift: ``(K + 1, len(bin_ids), n_targets)``, the nominal's and each member's shifts.
    """

    file_kind = "logit_shift"
    what = "flag calibration"

    def __init__(self, targets, p_edges, eta_edges, shift, split=(), states=(0,), bin_ids=None):
        super().__init__(targets, p_edges, eta_edges, split, states, bin_ids)
        self.shift = np.asarray(shift, float)
        want = (len(self.bin_ids), len(self.targets))
        if self.shift.ndim != 3 or self.shift.shape[1:] != want or not np.all(np.isfinite(self.shift)):
            raise ModelDirError(f"flag calibration: shifts of shape {self.shift.shape}, expected finite (K + 1, "
                                f"{want[0]}, {want[1]})")

    @property
    def n_members(self) -> int:
        return self.shift.shape[0] - 1

    def select_members(self, index) -> FlagCalibration:
        """The same bins with the shifts of members ``index`` (0: the nominal's), in that order."""
        return FlagCalibration(self.targets, self.p_edges, self.eta_edges, self.shift[np.asarray(index, int)],
                               self.split, self.states, self.bin_ids)

    def compact(self) -> FlagCalibration:
        """The same calibration without the bins whose shifts are all 0."""
        keep = np.any(self.shift != 0, axis=(0, 2))
        return FlagCalibration(self.targets, self.p_edges, self.eta_edges, self.shift[:, keep], self.split,
                               self.states, self.bin_ids[keep])

    def _shifted(self, x: np.ndarray, conditions: np.ndarray, names: list[str], columns: list[str], member: int,
                 sign: float) -> np.ndarray:
        out = np.array(x, dtype=float, copy=True)
        if not len(out) or not self.n_bins:
            return out
        b = self.bins_of(conditions, names)
        shift = np.concatenate([self.shift[member], np.zeros((1, len(self.targets)))])  # (b = -1, no bin: 0)
        with np.errstate(divide="ignore"):
            for j, t in enumerate(self.targets):
                c = columns.index(t)
                d = shift[b, j]
                rows = np.flatnonzero(d)  # (rows of a bin without a shift keep their value exactly)
                out[rows, c] = expit(logit(out[rows, c]) + sign * d[rows])  # 0 and 1 stay 0 and 1
        return out

    def apply(self, prob: np.ndarray, conditions: np.ndarray, names: list[str], columns: list[str],
              member: int = 0) -> np.ndarray:
        """Calibrated probabilities: ``prob`` (n, len(columns)) with the corrected columns shifted in
        logit (a new array). ``conditions``: the rows' raw conditions, columns ``names``."""
        return self._shifted(prob, conditions, names, columns, member, +1.0)

    def uniforms(self, u: np.ndarray, conditions: np.ndarray, names: list[str], columns: list[str],
                 member: int = 0) -> np.ndarray:
        """Uniforms ``u'`` with ``u' < P  <=>  u < P'`` (``u' = sigmoid(logit u - shift)``): a draw
        ``u' < P`` against the uncalibrated probability (a compiled graph) is the calibrated draw."""
        return self._shifted(u, conditions, names, columns, member, -1.0)

    def arrays(self) -> dict[str, np.ndarray]:
        return {**super().arrays(), "shift": self.shift}


_KINDS = {c.file_kind: c for c in (MarginalCorrection, FlagCalibration)}


def load_calibration(path: str | os.PathLike) -> MarginalCorrection | FlagCalibration:
    """Read ``marginals.npz`` of a model directory (no pickle): a :class:`MarginalCorrection` or a
    :class:`FlagCalibration` (files without ``kind``, before 2026-12-07, are quantile maps); clear
    errors for a missing or corrupt file."""
    f = Path(path) / FILE
    if not f.is_file():
        raise ModelDirError(f"model {str(path)!r}: its card has a 'marginal_correction' section but there is no {FILE}")
    try:
        with np.load(f, allow_pickle=False) as z:
            a = {k: z[k] for k in z.files}
    except (ValueError, OSError) as e:
        raise ModelDirError(f"cannot read {f} ({e})") from None
    kind = str(a.get("kind", MarginalCorrection.file_kind))
    if kind not in _KINDS:
        raise ModelDirError(f"{f}: unknown calibration kind {kind!r} (known: {', '.join(_KINDS)})")
    per_kind = ("levels", "gen", "data") if kind == MarginalCorrection.file_kind else ("shift",)
    missing = [k for k in ("p_edges", "eta_edges", "targets", *per_kind) if k not in a]
    if missing:
        raise ModelDirError(f"{f} lacks {', '.join(missing)}")
    common = dict(split=list(a.get("split", [])), states=a.get("states", np.zeros(1, np.int64)),
                  bin_ids=a.get("bin_ids"))
    if kind == MarginalCorrection.file_kind:
        cond = {}
        if "given" in a:
            lacking = [k for k in ("class_edges", "cgen", "cdata") if k not in a]
            if lacking or a["given"].ndim != 2 or a["given"].shape[1:] != (2,):
                raise ModelDirError(f"{f}: conditional maps without {', '.join(lacking) or 'their (target, given) pairs'}")
            pairs = a["given"].tolist()
            sums = a["sums"] if "sums" in a else np.zeros(len(pairs), np.int8)
            if sums.shape != (len(pairs),):
                raise ModelDirError(f"{f}: 'sums' of shape {sums.shape}, expected ({len(pairs)},)")
            cond = dict(given=dict(pairs), class_edges=a["class_edges"], cgen=a["cgen"], cdata=a["cdata"],
                        sums=[t for (t, _), on in zip(pairs, sums) if on])
        if "logit_offsets" in a:
            if a["logit_offsets"].ndim != 2 or a["logit_offsets"].shape[1:] != (2,):
                raise ModelDirError(f"{f}: 'logit_offsets' of shape {a['logit_offsets'].shape}, expected (n, 2) "
                                    "(target, condition) pairs")
            cond["logit_offsets"] = dict(a["logit_offsets"].tolist())
        return MarginalCorrection(list(a["targets"]), a["p_edges"], a["eta_edges"], a["levels"], a["gen"], a["data"],
                                  **common, **cond)
    return FlagCalibration(list(a["targets"]), a["p_edges"], a["eta_edges"], a["shift"], **common)
