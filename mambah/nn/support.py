"""Where a model's training data lie in (P, ETA): the support check.

The range check (:meth:`Model.check_range <mambah.nn.model.Model.check_range>`) compares each
condition with its training range on its own. A proton of 15 GeV/c at eta 4.5 passes it when the
training sample held protons of 15 GeV/c (at eta 2-3) and protons at eta 4.5 (of 3 GeV/c), though it
held none of 15 GeV/c at eta 4.5: the network then extrapolates, and its output looks as plausible
as anywhere else. (The shipped proton RICH GAN's Lambda0 sample, whose mother pT > 1.5 GeV/c leaves
no proton of 5-20 GeV/c at 4 < eta < 5, gave 64-69% PIDK > 5 there against the detector's 91-94%.)

A :class:`Support` is the training data's sWeighted signal in cells of (log10 P, ETA) on a fixed
lattice (``P_STEP`` = 0.1 in log10 P, a factor 1.26; ``ETA_STEP`` = 0.25): a row whose cell holds
less than ``min_weight`` (default :data:`MIN_WEIGHT`) is **unsupported**. Such rows are generated
all the same (the network's extrapolation) and reported: an
:class:`~mambah.errors.OutOfSupportWarning`, the ``unsupported`` field of the
:class:`~mambah.nn.model.RangeCounts` a caller collects, and the PID stage's provenance
(``reconstruction.pid.unsupported``).

A model directory holds it as ``support.npz`` with the card's ``"support"`` section (the lattice,
``min_weight`` and the ``sources``: each sample the cells were filled from, with its rows, summed
weight and how it was made). ``mambah train pid`` and ``mambah train flags`` write it from their
training data; ``mambah train marginals`` adds its calibration data (a quantile map fitted on a
sample is fitted on that sample's kinematics); ``mambah models support`` builds or extends it for a
model trained before (or on other data), checking, where the card records them, that the data
given has the training sample's rows and summed weight.

Example:
    >>> s = Support.from_data(P, ETA, weights)                            # doctest: +SKIP
    >>> s.unsupported(P_new, ETA_new).sum()                               # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from mambah.errors import DataError, ModelDirError

__all__ = ["Support", "P_STEP", "ETA_STEP", "MIN_WEIGHT", "FILE"]

#: cell width in log10(P / (MeV/c)) (a factor 10^0.1 = 1.26 in momentum)
P_STEP = 0.1
#: cell width in pseudorapidity
ETA_STEP = 0.25
#: a cell with less sWeighted signal than this is unsupported: with fewer tracks a cell says little
#: about a multi-dimensional output distribution (and an sWeighted sum this small is mostly noise)
MIN_WEIGHT = 10.0
#: the file in a model directory
FILE = "support.npz"
#: rows per block of the lookup
_BLOCK = 1 << 15
#: the columns of the lattice (conditions of the model, card units: P in MeV/c)
COLUMNS = ("P", "ETA")


@dataclasses.dataclass(frozen=True)
class Support:
    """The training data's signal in cells of (log10 P, ETA).

    Attributes:
        origin: ``(i0, j0)``: the lattice index of the first cell (cell ``i`` of P spans
            ``[(i0 + i) P_STEP, (i0 + i + 1) P_STEP)`` in log10 P, likewise in ETA).
        weight: ``(n_p, n_eta)`` summed weights (sWeighted signal) per cell.
        rows: ``(n_p, n_eta)`` rows per cell.
        min_weight: the least weight of a supported cell.
    """

    origin: tuple[int, int]
    weight: np.ndarray
    rows: np.ndarray
    min_weight: float = MIN_WEIGHT

    def __post_init__(self):
        if self.weight.shape != self.rows.shape or self.weight.ndim != 2:
            raise DataError(f"support tables of shapes {self.weight.shape} and {self.rows.shape}; expected two equal "
                            "(n_p, n_eta) tables")
        if not np.isfinite(self.weight).all():
            raise DataError("the support's weight table holds NaN or inf")
        if not self.min_weight > 0:
            raise DataError(f"min_weight must be > 0, not {self.min_weight}")
        # the lookup table: True where supported, with a False border for rows outside the lattice
        ok = np.zeros((self.weight.shape[0] + 2, self.weight.shape[1] + 2), dtype=bool)
        ok[1:-1, 1:-1] = self.weight >= self.min_weight
        object.__setattr__(self, "_ok", ok)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_data(cls, p, eta, weights=None, min_weight: float = MIN_WEIGHT, where: str = "the data") -> Support:
        """The support of rows with momenta ``p`` (MeV/c), pseudorapidities ``eta`` and ``weights``
        (None: 1 per row). Rows with non-finite values or ``p <= 0`` are refused (``where`` names the
        data in the error)."""
        p, eta = np.asarray(p, dtype=float), np.asarray(eta, dtype=float)
        w = np.ones(len(p)) if weights is None else np.asarray(weights, dtype=float)
        if not (len(p) == len(eta) == len(w)):
            raise DataError(f"{where}: P, ETA and the weights have {len(p)}, {len(eta)} and {len(w)} rows")
        if not len(p):
            raise DataError(f"{where}: no rows to take a support from")
        bad = ~(np.isfinite(p) & np.isfinite(eta) & np.isfinite(w)) | (p <= 0)
        if bad.any():
            raise DataError(f"{where}: {int(bad.sum())} of {len(p)} rows have non-finite P, ETA or weight, or P <= 0 "
                            f"(first: row {int(np.argmax(bad))})")
        i, j = _lattice(p, eta)
        i0, j0 = int(i.min()), int(j.min())
        shape = (int(i.max()) - i0 + 1, int(j.max()) - j0 + 1)
        flat = (i - i0) * shape[1] + (j - j0)
        weight = np.bincount(flat, weights=w, minlength=shape[0] * shape[1]).reshape(shape)
        rows = np.bincount(flat, minlength=shape[0] * shape[1]).reshape(shape).astype(np.int64)
        return cls((i0, j0), weight, rows, float(min_weight))

    def merged(self, other: Support) -> Support:
        """The support of both samples together (weights and rows added cell by cell; this one's
        ``min_weight``)."""
        i0, j0 = min(self.origin[0], other.origin[0]), min(self.origin[1], other.origin[1])
        i1 = max(self.origin[0] + self.weight.shape[0], other.origin[0] + other.weight.shape[0])
        j1 = max(self.origin[1] + self.weight.shape[1], other.origin[1] + other.weight.shape[1])
        weight, rows = np.zeros((i1 - i0, j1 - j0)), np.zeros((i1 - i0, j1 - j0), dtype=np.int64)
        for s in (self, other):
            a, b = s.origin[0] - i0, s.origin[1] - j0
            weight[a:a + s.weight.shape[0], b:b + s.weight.shape[1]] += s.weight
            rows[a:a + s.rows.shape[0], b:b + s.rows.shape[1]] += s.rows
        return Support((i0, j0), weight, rows, self.min_weight)

    def with_min_weight(self, min_weight: float) -> Support:
        return Support(self.origin, self.weight, self.rows, float(min_weight))

    # ------------------------------------------------------------------ queries
    def unsupported(self, p, eta) -> np.ndarray:
        """Boolean per row: its cell holds less than ``min_weight`` of the training data (or lies
        outside the lattice the data filled; P <= 0 and NaN too)."""
        p, eta = np.asarray(p, dtype=float).ravel(), np.asarray(eta, dtype=float).ravel()
        out = np.empty(len(p), dtype=bool)
        for s in range(0, len(p), _BLOCK):  # in blocks that stay in the cache
            np.logical_not(self._supported(p[s:s + _BLOCK], eta[s:s + _BLOCK]), out=out[s:s + _BLOCK])
        return out

    def count(self, p, eta, within=None) -> int:
        """The number of unsupported rows (:meth:`unsupported`; ~15 ns per row). ``within``: ``(p_lo, p_hi,
        eta_lo, eta_hi)``: count only the rows inside these bounds (a model's training range: the rows
        outside it are reported as out of range already)."""
        p, eta = np.asarray(p, dtype=float).ravel(), np.asarray(eta, dtype=float).ravel()
        bad = 0
        for s in range(0, len(p), _BLOCK):
            pb, eb = p[s:s + _BLOCK], eta[s:s + _BLOCK]
            miss = ~self._supported(pb, eb)
            if within is not None:
                plo, phi, elo, ehi = within
                miss &= (pb >= plo) & (pb <= phi) & (eb >= elo) & (eb <= ehi)
            bad += int(np.count_nonzero(miss))
        return bad

    def _supported(self, p: np.ndarray, eta: np.ndarray) -> np.ndarray:
        """The lookup of a block: the cell's place in the bordered table ``_ok`` by the arithmetic of
        :func:`_lattice` (floor of log10 P / P_STEP and ETA / ETA_STEP, less the origin, plus the
        border), clamped into the border (fmax/fmin also send NaN there: log10 of P <= 0)."""
        n_p, n_eta = self.weight.shape
        with np.errstate(divide="ignore", invalid="ignore"):
            x = np.log10(p)
            x /= P_STEP
            np.floor(x, out=x)
            x -= self.origin[0] - 1
            np.fmax(x, 0.0, out=x)
            np.fmin(x, n_p + 1, out=x)
            y = eta / ETA_STEP
            np.floor(y, out=y)
            y -= self.origin[1] - 1
            np.fmax(y, 0.0, out=y)
            np.fmin(y, n_eta + 1, out=y)
            x *= n_eta + 2
            x += y
        return self._ok.ravel()[x.astype(np.intp)]

    @property
    def supported_rows_fraction(self) -> float:
        """The fraction of the data's rows in supported cells."""
        total = self.rows.sum()
        return float(self.rows[self.weight >= self.min_weight].sum() / total) if total > 0 else 0.0

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """The cells' edges: (P in MeV/c, ETA)."""
        n_p, n_eta = self.weight.shape
        return (10 ** (P_STEP * np.arange(self.origin[0], self.origin[0] + n_p + 1)),
                ETA_STEP * np.arange(self.origin[1], self.origin[1] + n_eta + 1))

    def describe(self) -> dict:
        """The card's summary of the table (besides its sources)."""
        return {"columns": list(COLUMNS), "p_step_log10": P_STEP, "eta_step": ETA_STEP,
                "origin": list(self.origin), "shape": list(self.weight.shape), "min_weight": self.min_weight,
                "cells_supported": int((self.weight >= self.min_weight).sum()),
                "cells_with_rows": int((self.rows > 0).sum()),
                "rows_fraction_supported": round(self.supported_rows_fraction, 6)}

    # ------------------------------------------------------------------ files
    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / FILE
        np.savez(path, origin=np.asarray(self.origin, dtype=np.int64), weight=self.weight, rows=self.rows,
                 min_weight=np.float64(self.min_weight), steps=np.asarray([P_STEP, ETA_STEP]))
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Support:
        """The support of a model directory (refused with the reason if the file is missing or malformed)."""
        path = Path(directory) / FILE
        try:
            with np.load(path, allow_pickle=False) as z:
                steps = z["steps"]
                if steps.shape != (2,) or not np.allclose(steps, [P_STEP, ETA_STEP]):
                    raise ModelDirError(f"{str(path)!r}: its lattice steps {steps.tolist()} are not this version's "
                                        f"({P_STEP}, {ETA_STEP}); rebuild it (mambah models support)")
                origin = tuple(int(v) for v in z["origin"])
                return cls((origin[0], origin[1]), np.asarray(z["weight"], dtype=float),
                           np.asarray(z["rows"], dtype=np.int64), float(z["min_weight"]))
        except ModelDirError:
            raise
        except FileNotFoundError:
            raise ModelDirError(f"{str(path)!r} is missing, though the card has a 'support' section") from None
        except (KeyError, ValueError, OSError, DataError) as e:
            raise ModelDirError(f"{str(path)!r} is not a valid support table ({e})") from None


def _lattice(p: np.ndarray, eta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lattice indices of (log10 P, ETA); P <= 0 or non-finite values go far outside any table."""
    with np.errstate(divide="ignore", invalid="ignore"):
        lp = np.floor(np.log10(p) / P_STEP)
        le = np.floor(eta / ETA_STEP)
    lp = np.where(np.isfinite(lp), lp, -(1 << 30))
    le = np.where(np.isfinite(le), le, -(1 << 30))
    return np.clip(lp, -(1 << 30), 1 << 30).astype(np.int64), np.clip(le, -(1 << 30), 1 << 30).astype(np.int64)


def source_entry(what: str, files, rows: int, weights, selection: str | None, weight: str | None,
                 description: str | None = None) -> dict:
    """One entry of the card's ``support.sources``: what the sample was to the model (``"training
    data"``, ``"calibration data of its quantile map"`` ...), its files, rows, summed weight and
    selection."""
    w = np.asarray(weights, dtype=float)
    out = {"what": what, "files": list(files), "rows": int(rows), "sum_weights": float(w.sum()),
           "selection": selection, "weight": weight}
    if description:
        out["description"] = description
    return out


def write_support(path: str | os.PathLike, support: Support, sources: list[dict]) -> Path:
    """Write ``support`` into the model directory ``path`` (``support.npz``, the card's ``"support"``
    section with the ``sources`` it was filled from, each with the command that added it),
    atomically (:func:`mambah.modeldir.update_model_dir`)."""
    from mambah.modeldir import update_model_dir

    section = {**support.describe(), "sources": sources,
               "method": "sWeighted signal of the data in cells of (log10 P, ETA); a row whose cell holds less than "
                         "min_weight is outside the support (mambah.nn.support)"}
    return update_model_dir(path, support.save, {"support": section})


def table_support(df, weight: str | None, selection: str | None, where: str, min_weight: float = MIN_WEIGHT):
    """``(support, rows, weights)`` of a table's rows passing ``selection`` (a pandas query), with the
    weights of column ``weight`` (None: 1 per row)."""
    from mambah.errors import ConfigurationError
    from mambah.io import require_columns

    require_columns(df, [*COLUMNS, *([weight] if weight else [])], where=where)
    if selection:
        try:
            df = df.query(selection)
        except Exception as e:  # pandas raises many types for a bad query
            raise ConfigurationError(f"selection {selection!r} failed on {where}: {type(e).__name__}: {e}") from None
    w = np.ones(len(df)) if weight is None else df[weight].to_numpy(dtype=float)
    s = Support.from_data(df["P"].to_numpy(dtype=float), df["ETA"].to_numpy(dtype=float), w, min_weight, where=where)
    return s, len(df), w


def support_of(directory: str | os.PathLike) -> Support | None:
    """The support table of a model directory, or None when its card has no ``"support"`` section (for
    code that writes a model from another's card: :func:`mambah.modeldir.save_model_dir`'s ``support``)."""
    from mambah.modeldir import load_card

    return Support.load(directory) if isinstance(load_card(directory).get("support"), dict) else None
