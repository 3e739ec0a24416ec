"""Exceptions raised by mambah.

Every error says what is wrong, where, and (when it can) what to do instead, in the manner of
uproot's ``KeyInFileError``: a missing column names the table and lists the available ones sorted
by similarity, an unknown particle suggests close PDG names.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "MambahError",
    "ConfigurationError",
    "DataError",
    "MissingColumnError",
    "MissingTableError",
    "DescriptorError",
    "UnknownParticleError",
    "StoreError",
    "BatchExistsError",
    "SchemaVersionError",
    "ModelDirError",
    "OptionalDependencyError",
    "MambahWarning",
    "OutOfRangeWarning",
    "OutOfSupportWarning",
    "UncalibratedWarning",
    "UnknownModelWarning",
    "closest",
]


def closest(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The ``n`` candidates most similar to ``name``, best first (difflib ratio).

    Falls back to a case-insensitive prefix match so that ``closest("lambda", ...)`` still finds
    ``Lambda0`` when the ratio is low.
    """
    candidates = list(candidates)
    found = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    if len(found) < n:
        low = name.lower()
        for c in sorted(candidates):
            if c not in found and c.lower().startswith(low[:3]):
                found.append(c)
            if len(found) >= n:
                break
    return found


class MambahError(Exception):
    """Base class of every error mambah raises on purpose."""


class ConfigurationError(MambahError, ValueError):
    """An argument or configuration value is invalid."""


class DataError(MambahError, ValueError):
    """Input data are unusable (NaN/inf, non-positive weight sum, too few rows, ...)."""


class MissingColumnError(DataError, KeyError):
    """A required column is absent. Lists the missing ones and the available ones."""

    def __init__(self, missing: Iterable[str], available: Iterable[str], where: str = "the data"):
        self.missing = list(missing)
        self.available = sorted(available)
        self.where = where
        hints = []
        for m in self.missing:
            near = closest(m, self.available, n=3)
            if near:
                hints.append(f"{m!r}: did you mean {', '.join(map(repr, near))}?")
        msg = (
            f"{where} has no column{'s' if len(self.missing) > 1 else ''} "
            f"{', '.join(map(repr, self.missing))}; available: {', '.join(self.available) or '(none)'}"
        )
        if hints:
            msg += "\n  " + "\n  ".join(hints)
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class MissingTableError(MambahError, KeyError):
    """A batch or the store has no table of that name; the message lists the tables there are."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class DescriptorError(MambahError, ValueError):
    """A decay descriptor is malformed or describes an impossible decay."""


class UnknownParticleError(DescriptorError, KeyError):
    """A particle name is not known to the ``particle`` package (nor an accepted alias)."""

    def __str__(self) -> str:
        return str(self.args[0])


class StoreError(MambahError):
    """The event store cannot do what was asked (bad URL, unreachable server, bad batch...)."""


class BatchExistsError(StoreError):
    """A batch with this id is already in the store."""


class SchemaVersionError(StoreError):
    """The database was written by another schema version."""


class ModelDirError(MambahError):
    """A model directory is missing a file, is corrupt, or was written by another version."""


class OptionalDependencyError(MambahError, ImportError):
    """An optional dependency is not installed; the message gives the pip line."""


class MambahWarning(UserWarning):
    """Base class of the warnings mambah emits on purpose."""


class UnknownModelWarning(MambahWarning):
    """A decay model mambah does not have was replaced by phase space, as the user asked
    (``parse_descriptor(..., unknown_models="phsp")``, ``mambah simulate --unknown-models phsp``),
    or a ``.dec`` file's model is not used for a picked mode."""


class UncalibratedWarning(MambahWarning):
    """Rows evaluated by a calibrated model fell where its calibration has no map.

    A model with a binned quantile calibration (:class:`~mambah.nn.marginals.MarginalCorrection`)
    maps its outputs in bins of (P, ETA) and, for some, of flag states; a bin or state whose
    calibration sample held too little signal has no map, and its rows keep the network's own,
    uncalibrated output. The fields let callers aggregate without parsing the message:

    Attributes:
        model: the model's name.
        count: rows left uncalibrated.
        n: rows the model was evaluated on.
        action: what was done with them (``"kept the network's uncalibrated output"``).
    """

    def __init__(self, message: str, *, model: str = "", count: int = 0, n: int = 0, action: str = ""):
        super().__init__(message)
        self.model = model
        self.count = int(count)
        self.n = int(n)
        self.action = action


class OutOfSupportWarning(MambahWarning):
    """Rows evaluated by a model lie where its training data had (almost) no signal.

    Inside the training range condition by condition, but in a (P, ETA) cell where the data the
    model was fitted on held less than the support's ``min_weight`` of sWeighted signal
    (:mod:`mambah.nn.support`): the network extrapolates there. The rows are generated all the same.

    Attributes:
        model: the model's name.
        count: rows in unsupported cells.
        n: rows the model was evaluated on.
        action: what was done with them (``"generated by extrapolation"``).
    """

    def __init__(self, message: str, *, model: str = "", count: int = 0, n: int = 0, action: str = ""):
        super().__init__(message)
        self.model = model
        self.count = int(count)
        self.n = int(n)
        self.action = action


class OutOfRangeWarning(MambahWarning):
    """Conditions given to a model lie outside the range it was trained on.

    The fields let callers aggregate without parsing the message:

    Attributes:
        model: the model's name (its card's ``name``, else its directory name).
        count: rows with at least one condition outside the training range.
        n: rows the model was evaluated on.
        detail: ``{condition: rows outside}`` per condition.
        action: what was done with those rows (e.g. ``"clamped to the range edges"``).
    """

    def __init__(self, message: str, *, model: str = "", count: int = 0, n: int = 0,
                 detail: dict | None = None, action: str = ""):
        super().__init__(message)
        self.model = model
        self.count = int(count)
        self.n = int(n)
        self.detail = dict(detail or {})
        self.action = action
