"""The interface every trained model of mambah implements.

A model is a directory on disk (:mod:`mambah.modeldir`: ``card.json``, networks, ``arrays.npz``)
loaded into an instance of one of the kinds below, all subclasses of :class:`Model`:

========================  ==============  ===============================================
card ``kind``             class           what it gives
========================  ==============  ===============================================
``"pid"``                 PidModel        conditional GAN: PID variables given conditions
``"pid-flags"``           FlagModel       Bernoulli flags (isMuon, hasRich...) classifier
``"efficiency"``          EfficiencyModel tracking efficiency (probability of a track)
``"resolution"``          ResolutionModel momentum resolution (mixture-density network)
``"occupancy"``           OccupancyModel  tracks per event (histogram)
========================  ==============  ===============================================

Every kind has: its directory (:attr:`Model.path`) and card (:attr:`Model.card`), a
:attr:`~Model.name`, :attr:`~Model.version` and content :attr:`~Model.hash` (what a production
records), the :attr:`~Model.conditions` and :attr:`~Model.targets` (column names in the network's
order), the condition preprocessing (:meth:`~Model.preprocess`), its training range
(:meth:`~Model.training_range`), :meth:`~Model.check_range` (rows outside the range, as data) and
:meth:`~Model.warn_out_of_range`, the one place that emits the structured
:class:`~mambah.errors.OutOfRangeWarning` (fields ``model``, ``count``, ``n``, ``detail``,
``action``). A model whose directory holds a data-support table (``support.npz``,
:mod:`mambah.nn.support`: its data's sWeighted signal in cells of (log10 P, ETA)) also counts the rows
in cells its data left empty (:attr:`RangeCounts.unsupported`, :meth:`~Model.support_count`) and
warns about them (:class:`~mambah.errors.OutOfSupportWarning`): inside the training range condition
by condition, outside the data. Load models through :func:`mambah.nn.registry.load_model`, which picks
the kind from the card and caches by path and content hash.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from mambah.errors import (ConfigurationError, DataError, ModelDirError, OutOfRangeWarning, OutOfSupportWarning,
                           UncalibratedWarning)

__all__ = ["Model", "QuantileConditionedModel", "RangeCounts"]

T = TypeVar("T")
#: the support of a model not read from its directory yet
_NOT_LOADED = object()


@dataclasses.dataclass(frozen=True)
class RangeCounts:
    """Rows of a model's input outside its training range (what :meth:`Model.check_range` returns).

    Attributes:
        model: the model's name.
        count: rows with at least one checked quantity outside the training range.
        n: rows checked.
        detail: ``{quantity: rows outside}`` for the quantities with rows outside.
        text: the same per quantity with its range, ``"P: 3 outside [2000, 1e+06], ..."`` ("" if none).
        uncalibrated: rows the model's quantile calibration left unmapped (a bin or flag state
            without a map, :class:`~mambah.errors.UncalibratedWarning`); None for a model without one.
        unsupported: rows in (P, ETA) cells where the model's training data had (almost) no signal
            (:mod:`mambah.nn.support`, :class:`~mambah.errors.OutOfSupportWarning`); None for a model
            without a support table.
    """

    model: str
    count: int
    n: int
    detail: dict[str, int] = dataclasses.field(default_factory=dict)
    text: str = ""
    uncalibrated: int | None = None
    unsupported: int | None = None

    @property
    def fraction(self) -> float:
        """``count / n`` (0 for no rows)."""
        return self.count / self.n if self.n else 0.0


class Model:
    """Base class of the trained models (see the module docstring for the kinds).

    Args:
        card: the model's card (``conditions`` and ``targets`` lists of ``{name, unit, quantity}``).
        path: its directory (``None`` for a model built in memory).

    Subclasses set :attr:`kind`, implement :meth:`load`, :meth:`preprocess` and
    :meth:`training_range`, and override :meth:`range_quantities` when the range is not checked on
    the raw conditions themselves.
    """

    #: the card's ``kind``
    kind: ClassVar[str] = ""
    #: what is done with rows outside the training range (the warning's ``action``)
    range_action: ClassVar[str] = "clamped to the range edges"

    def __init__(self, card: dict, path: str | os.PathLike | None = None):
        self.card = card
        self.path = Path(path) if path is not None else None
        self.conditions: list[str] = [c["name"] for c in card.get("conditions", [])]
        self.targets: list[str] = [t["name"] for t in card.get("targets", [])]
        #: sha256 of the directory's files as the registry read them (:func:`mambah.nn.registry.content_hash`;
        #: "" for a model loaded directly with ``load``)
        self.content_hash = ""
        self._hash: str | None = None
        self._memo: dict[str, Any] = {}
        self._memo_lock = threading.Lock()
        self._support: Any = _NOT_LOADED

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, species={self.card.get('species')!r}, "
                f"conditions={self.conditions}, targets={self.targets})")

    # ------------------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        """The card's ``name`` (else the directory's name)."""
        name = self.card.get("name")
        if name is None and self.path is not None:
            name = self.path.name
        return str(name) if name is not None else ""

    @property
    def version(self) -> str:
        """The card's ``version``."""
        return str(self.card.get("version", ""))

    @property
    def hash(self) -> str:
        """Content hash of the directory as loaded (:func:`mambah.modeldir.model_hash`; "" in memory)."""
        if self._hash is None:
            from mambah.modeldir import card_hash

            self._hash = card_hash(self.card) if self.path is not None and "files" in self.card else ""
        return self._hash

    @classmethod
    def load(cls, path: str | os.PathLike) -> Model:
        """Load a model directory of this kind (hashes checked, no pickle)."""
        raise NotImplementedError

    # ------------------------------------------------------------------- conditions
    def as_conditions(self, data, drop_nonfinite: bool = False) -> tuple[np.ndarray, Any]:
        """``(conditions (n, n_conditions) float64, index or None)`` from a DataFrame or an array.

        A DataFrame must hold the condition columns (refused otherwise, naming the missing ones);
        rows with NaN/inf are refused (:class:`~mambah.errors.DataError`) or, with
        ``drop_nonfinite``, dropped (the returned index says which rows remain).
        """
        import pandas as pd

        from mambah.io import check_finite, require_columns

        if isinstance(data, pd.DataFrame):
            require_columns(data, self.conditions, where="the conditions table")
            data = check_finite(data, self.conditions, drop=drop_nonfinite, where="the conditions")
            return data[self.conditions].to_numpy(dtype=float), data.index
        c = np.asarray(data, dtype=float)
        if c.ndim == 1 and len(self.conditions) == 1:
            c = c[:, None]
        if c.ndim != 2 or c.shape[1] != len(self.conditions):
            raise DataError(f"expected conditions of shape (n, {len(self.conditions)}) in the order "
                            f"{self.conditions}, got {c.shape}")
        bad = ~np.isfinite(c).all(axis=1)
        if bad.any():
            if not drop_nonfinite:
                raise DataError(f"{int(bad.sum())} of {len(c)} condition rows hold NaN or inf; clean them or "
                                "pass drop_nonfinite=True")
            c = c[~bad]
        return c, None

    def preprocess(self, conditions: np.ndarray) -> np.ndarray:
        """The network's input for raw conditions ``(n, n_conditions)`` (card units, card order)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ training range
    def training_range(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """``(quantities, lo, hi)``: the range-checked quantities and their training range."""
        raise NotImplementedError

    def range_quantities(self, conditions: np.ndarray) -> np.ndarray:
        """The range-checked quantities ``(n, len(quantities))`` of raw conditions (default: the
        conditions themselves)."""
        return np.asarray(conditions, dtype=float)

    def check_range(self, conditions: np.ndarray) -> RangeCounts:
        """Rows of ``conditions`` (raw, ``(n, n_conditions)``) outside the training range, as data.

        Nothing is emitted: pass the result to :meth:`warn_out_of_range` (or aggregate it).
        """
        names, lo, hi = self.training_range()
        q = self.range_quantities(conditions)
        unsupported = self.support_count(conditions)
        if not len(names) or not len(q):
            return RangeCounts(self.name, 0, len(q), unsupported=unsupported)
        if (q.min(axis=0) >= lo).all() and (q.max(axis=0) <= hi).all():  # the usual case: two passes
            return RangeCounts(self.name, 0, len(q), unsupported=unsupported)
        out = (q < lo) | (q > hi)
        return self.range_counts(out.sum(axis=0), int(out.any(axis=1).sum()), len(q), unsupported)

    def range_counts(self, per_quantity, rows: int, n: int, unsupported: int | None = None) -> RangeCounts:
        """The :class:`RangeCounts` of ``rows`` of ``n`` rows outside, ``per_quantity[j]`` of them in
        quantity j (for callers that count in their own passes, e.g. compiled inference), and
        ``unsupported`` rows outside the data's support (:meth:`support_count`)."""
        names, lo, hi = self.training_range()
        per = np.zeros(len(names), dtype=np.int64) + np.asarray(per_quantity)
        detail = {name: int(per[j]) for j, name in enumerate(names) if per[j]}
        text = ", ".join(f"{name}: {int(per[j])} outside [{lo[j]:.6g}, {hi[j]:.6g}]"
                         for j, name in enumerate(names) if per[j])
        return RangeCounts(self.name, int(rows), int(n), detail, text, unsupported=unsupported)

    # ------------------------------------------------------------------ data support
    @property
    def support(self):
        """The training data's :class:`~mambah.nn.support.Support` in (P, ETA) (``support.npz``, the
        card's ``"support"`` section), or None for a model without one."""
        if self._support is _NOT_LOADED:
            with self._memo_lock:
                if self._support is _NOT_LOADED:
                    self._support = self._load_support()
        return self._support

    def _load_support(self):
        if self.path is None or not isinstance(self.card.get("support"), dict):
            return None
        from mambah.nn.support import COLUMNS, Support

        lacking = [c for c in COLUMNS if c not in self.conditions]
        if lacking:
            raise ModelDirError(f"model {self.name!r} ({str(self.path)!r}): its card has a 'support' section, but "
                                f"{lacking} are not among its conditions {self.conditions}")
        return Support.load(self.path)

    def set_support(self, support) -> None:
        """Use ``support`` (a :class:`~mambah.nn.support.Support`, or None for none) from now on,
        instead of the directory's ``support.npz`` (e.g. for a model built in memory)."""
        if support is not None:
            from mambah.nn.support import COLUMNS

            lacking = [c for c in COLUMNS if c not in self.conditions]
            if lacking:
                raise ConfigurationError(f"model {self.name!r}: a support needs the conditions {list(COLUMNS)}; "
                                         f"{lacking} are not among {self.conditions}")
        self._support = support

    def support_count(self, conditions: np.ndarray) -> int | None:
        """Rows of raw ``conditions`` ``(n, n_conditions)`` inside the training range of P and ETA, in
        (P, ETA) cells where the data had less than the support's ``min_weight`` (:mod:`mambah.nn.support`;
        the rows outside the range are out of range, :meth:`check_range`); None without a support."""
        support = self.support
        if support is None:
            return None
        c = np.asarray(conditions, dtype=float)
        if not len(c):
            return 0
        ip, ie = self.conditions.index("P"), self.conditions.index("ETA")
        names, lo, hi = self.training_range()
        if names == self.conditions:
            within = (lo[ip], hi[ip], lo[ie], hi[ie])
        else:  # (a range on other quantities than the raw conditions: none imposed here)
            within = None
        return support.count(c[:, ip], c[:, ie], within)

    def support_warning(self, count: int, n: int, where: str = "") -> OutOfSupportWarning:
        """The structured :class:`~mambah.errors.OutOfSupportWarning` for ``count`` of ``n`` rows in
        unsupported cells (not emitted); ``where``: e.g. the batch, for the message."""
        action = "generated by extrapolation"
        s = self.support
        need = f"{s.min_weight:g}" if s is not None else "too little"
        msg = (f"model {self.name!r}: {count} of {n} rows ({100 * count / max(n, 1):.3g}%){where} lie in (P, ETA) cells "
               f"where the data it was fitted on held less than {need} sWeighted signal (inside the training range "
               f"condition by condition, outside the data's support); they are {action}: treat its outputs there "
               "with care (mambah.nn.support; the card's 'support' section)")
        return OutOfSupportWarning(msg, model=self.name, count=count, n=n, action=action)

    def out_of_range_warning(self, counts: RangeCounts) -> OutOfRangeWarning:
        """The structured :class:`~mambah.errors.OutOfRangeWarning` for ``counts`` (not emitted)."""
        msg = (f"{100 * counts.fraction:.3g}% of the rows ({counts.count} of {counts.n}) have conditions outside "
               f"the training range of model {self.card.get('name')!r} ({counts.text}); they are "
               f"{self.range_action}")
        return OutOfRangeWarning(msg, model=self.name, count=counts.count, n=counts.n, detail=counts.detail,
                                 action=self.range_action)

    def warn_out_of_range(self, counts: RangeCounts, stacklevel: int = 2) -> None:
        """Emit the :class:`~mambah.errors.OutOfRangeWarning` of ``counts`` when some row is outside,
        and the :class:`~mambah.errors.OutOfSupportWarning` when some row is outside the support."""
        if counts.count:
            warnings.warn(self.out_of_range_warning(counts), stacklevel=stacklevel + 1)
        if counts.unsupported:
            warnings.warn(self.support_warning(counts.unsupported, counts.n), stacklevel=stacklevel + 1)

    # ------------------------------------------------------------------ derived objects
    def memo(self, key: str, build: Callable[[], T]) -> T:
        """``build()`` once per model and ``key`` (thread-safe), e.g. compiled inference graphs."""
        value = self._memo.get(key)
        if value is None:
            with self._memo_lock:
                value = self._memo.get(key)
                if value is None:
                    value = self._memo[key] = build()
        return value

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_memo"] = {}
        state.pop("_memo_lock", None)
        if state.get("_support") is _NOT_LOADED:
            state.pop("_support")
        return state

    def __setstate__(self, state):
        state.setdefault("_support", _NOT_LOADED)
        self.__dict__.update(state)
        self._memo_lock = threading.Lock()


class QuantileConditionedModel(Model):
    """A model whose conditions are Gaussianised by a quantile transform (:attr:`cond_pre`,
    ``mode="mid"``) and range-checked on their raw values: the GANs and the flag classifiers.

    Args:
        cond_pre: the conditions' :class:`~mambah.nn.preprocessing.QuantileGaussianizer`.
    """

    def __init__(self, cond_pre, card: dict, path: str | os.PathLike | None = None):
        super().__init__(card, path)
        self.cond_pre = cond_pre
        #: the binned calibration (:mod:`mambah.nn.marginals`) applied to every output, or None
        self.correction = None

    def set_correction(self, correction) -> None:
        """Apply ``correction`` (a :class:`~mambah.nn.marginals.MarginalCorrection` for a GAN, a
        :class:`~mambah.nn.marginals.FlagCalibration` for a flag classifier, or None) to every output
        from now on. It must name targets of this model, need ``P`` and ``ETA`` among the conditions
        and hold a map for the nominal and each ensemble member."""
        if correction is not None:
            from mambah.nn.marginals import FlagCalibration, MarginalCorrection

            want = FlagCalibration if self.kind == "pid-flags" else MarginalCorrection
            where = f"model {self.name!r}" + (f" ({str(self.path)!r})" if self.path is not None else "")
            bad = [t for t in correction.targets if t not in self.targets]
            lacking = [c for c in correction.needs() if c not in self.conditions]
            if bad or lacking:
                raise ModelDirError(f"{where}: its marginal correction names targets {bad} it does not have"
                                    if bad else f"{where}: its marginal correction bins in {lacking}, which are not "
                                                "conditions of the model")
            if not isinstance(correction, want):
                raise ModelDirError(f"{where}: its calibration is a {type(correction).__name__}; a {self.kind!r} "
                                    f"model takes a {want.__name__}")
            if correction.n_members != self.n_members:
                raise ModelDirError(f"{where}: its marginal correction holds {correction.n_members} member maps, "
                                    f"the model has {self.n_members} ensemble members; refit it "
                                    "(mambah train marginals)")
        self.correction = correction

    def uncalibrated_warning(self, count: int, n: int, where: str = "") -> UncalibratedWarning:
        """The structured :class:`~mambah.errors.UncalibratedWarning` for ``count`` of ``n`` rows left
        unmapped by the calibration (not emitted); ``where``: e.g. the batch, for the message."""
        action = "kept the network's uncalibrated output"
        corr = self.card.get("marginal_correction") or {}
        need = (corr.get("bins") or {}).get("min_weight") if isinstance(corr, dict) else None
        why = f"less than {need:g} sWeighted signal" if isinstance(need, (int, float)) else "too little signal"
        msg = (f"model {self.name!r}: {count} of {n} rows ({100 * count / max(n, 1):.3g}%){where} lie in (P, ETA) "
               f"bins or flag states where its calibration sample had {why}, so its quantile calibration has no "
               f"map there; they {action} (the card's marginal_correction lists the bins)")
        return UncalibratedWarning(msg, model=self.name, count=count, n=n, action=action)

    def report_uncalibrated(self, tally: list, n: int, counts: list | None, warn: bool = True,
                            stacklevel: int = 2) -> None:
        """After a calibrated evaluation of ``n`` rows: the calibration's ``tally`` (rows left unmapped,
        :meth:`MarginalCorrection.apply <mambah.nn.marginals.MarginalCorrection.apply>`) goes into the
        last :class:`RangeCounts` of ``counts`` (its ``uncalibrated``) when the caller takes the counts,
        else into an :class:`~mambah.errors.UncalibratedWarning` when some row was left (and ``warn``)."""
        if self.correction is None or not tally:
            return
        total = int(sum(tally))
        if counts is not None:
            if counts:
                counts[-1] = dataclasses.replace(counts[-1], uncalibrated=total)
        elif total and warn:
            warnings.warn(self.uncalibrated_warning(total, n), stacklevel=stacklevel + 1)

    def preprocess(self, conditions: np.ndarray) -> np.ndarray:
        """Gaussianised conditions (``mode="mid"``), float64."""
        return self.cond_pre.transform(np.asarray(conditions, dtype=float), mode="mid")

    def training_range(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        lo, hi = self.cond_pre.range_()
        return list(self.conditions), lo, hi
