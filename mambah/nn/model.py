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
``action``). Load models through :func:`mambah.nn.registry.load_model`, which picks the kind from
the card and caches by path and content hash.
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

from mambah.errors import DataError, ModelDirError, OutOfRangeWarning, UncalibratedWarning

__all__ = ["Model", "QuantileConditionedModel", "RangeCounts"]

T = TypeVar("T")


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
    """

    model: str
    count: int
    n: int
    detail: dict[str, int] = dataclasses.field(default_factory=dict)
    text: str = ""
    uncalibrated: int | None = None

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
        if not len(names) or not len(q):
            return RangeCounts(self.name, 0, len(q))
        if (q.min(axis=0) >= lo).all() and (q.max(axis=0) <= hi).all():  # the usual case: two passes
            return RangeCounts(self.name, 0, len(q))
        out = (q < lo) | (q > hi)
        return self.range_counts(out.sum(axis=0), int(out.any(axis=1).sum()), len(q))

    def range_counts(self, per_quantity, rows: int, n: int) -> RangeCounts:
        """The :class:`RangeCounts` of ``rows`` of ``n`` rows outside, ``per_quantity[j]`` of them in
        quantity j (for callers that count in their own passes, e.g. compiled inference)."""
        names, lo, hi = self.training_range()
        per = np.zeros(len(names), dtype=np.int64) + np.asarray(per_quantity)
        detail = {name: int(per[j]) for j, name in enumerate(names) if per[j]}
        text = ", ".join(f"{name}: {int(per[j])} outside [{lo[j]:.6g}, {hi[j]:.6g}]"
                         for j, name in enumerate(names) if per[j])
        return RangeCounts(self.name, int(rows), int(n), detail, text)

    def out_of_range_warning(self, counts: RangeCounts) -> OutOfRangeWarning:
        """The structured :class:`~mambah.errors.OutOfRangeWarning` for ``counts`` (not emitted)."""
        msg = (f"{100 * counts.fraction:.3g}% of the rows ({counts.count} of {counts.n}) have conditions outside "
               f"the training range of model {self.card.get('name')!r} ({counts.text}); they are "
               f"{self.range_action}")
        return OutOfRangeWarning(msg, model=self.name, count=counts.count, n=counts.n, detail=counts.detail,
                                 action=self.range_action)

    def warn_out_of_range(self, counts: RangeCounts, stacklevel: int = 2) -> None:
        """Emit the :class:`~mambah.errors.OutOfRangeWarning` of ``counts`` when some row is outside."""
        if counts.count:
            warnings.warn(self.out_of_range_warning(counts), stacklevel=stacklevel + 1)

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
        return state

    def __setstate__(self, state):
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
