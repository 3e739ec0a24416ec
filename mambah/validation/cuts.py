"""PID cuts: one parsed requirement type and the typical requirements of every PID target.

A :class:`Cut` is a requirement ``COLUMN OP VALUE`` (``"DLLp > 5"``, ``"PIDK < 0"``,
``"isMuon == 1"``), a difference of two columns (``"DLLp - DLLK > 0"``) or a bare flag
(``"isMuon"``, meaning ``isMuon > 0.5``). It is parsed without ``eval``. Applied to a table it
finds its column under any name of the column map (:data:`mambah.physics.COLUMN_MAP`): a cut on
``DLLK`` applies to a table holding ``PIDK`` (LHCb's two names of the combined kaon DLL), and a
missing column raises :class:`~mambah.errors.MissingColumnError` naming it and listing the
available ones.

The typical requirements:

* :data:`TYPICAL` — per PID target (store quantity, or an LHCb-only column such as ``ProbNNp``):
  the operator and thresholds analysts use; :func:`typical_cut_specs` spells them under every LHCb
  name, and :func:`typical_cuts` gives the ones that apply to a list of targets (what
  :func:`mambah.validation.compare.default_cuts` and the efficiency pulls of
  :mod:`mambah.validation.pideff` use);
* :data:`CHAIN_CUTS` — the requirements of the PID chain's closure
  (:func:`mambah.validation.closure.chain_closure`);
* :data:`PRODUCTION_CUTS` — the requirements of a production's QA report (store columns).

Example:
    >>> import pandas as pd
    >>> cut = parse_cut("DLLp > 5")
    >>> cut.apply(pd.DataFrame({"PIDp": [1.0, 7.0]})).tolist()
    [False, True]
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from mambah.errors import ConfigurationError, MissingColumnError
from mambah.physics.columns import COLUMN_MAP

__all__ = ["Cut", "parse_cut", "TYPICAL", "typical_cut_specs", "typical_cuts", "resolve_column", "CHAIN_CUTS",
           "PRODUCTION_CUTS"]

_OPS = {
    ">": np.greater, ">=": np.greater_equal, "<": np.less, "<=": np.less_equal,
    "==": np.equal, "!=": np.not_equal,
}
_NAME = r"[A-Za-z_][A-Za-z0-9_.]*"
_CUT_RE = re.compile(rf"^\s*({_NAME})\s*(?:-\s*({_NAME})\s*)?(>=|<=|==|!=|>|<)\s*([-+0-9.eE]+)\s*$")


@dataclass(frozen=True)
class Cut:
    """A PID requirement ``column [- minus] op value``.

    Attributes:
        column: the column compared (any name of the column map finds the same column).
        op: one of ``>``, ``>=``, ``<``, ``<=``, ``==``, ``!=``.
        value: the threshold (in the column's unit; DLLs are dimensionless).
        label: how reports name it (default ``"column op value"``).
        minus: a column subtracted from ``column`` before the comparison (``DLLp - DLLK > 0``).
    """

    column: str
    op: str
    value: float
    label: str = ""
    minus: str | None = None

    def __post_init__(self):
        if self.op not in _OPS:
            raise ConfigurationError(f"cut on {self.column!r}: operator {self.op!r} is not one of {' '.join(_OPS)}")
        if not self.label:
            lhs = self.column if self.minus is None else f"{self.column} - {self.minus}"
            object.__setattr__(self, "label", f"{lhs} {self.op} {float(self.value):g}")

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns the cut reads."""
        return (self.column,) if self.minus is None else (self.column, self.minus)

    def passes(self, x: np.ndarray) -> np.ndarray:
        """Boolean array: ``x op value`` (``x`` the column's values, or the difference)."""
        return _OPS[self.op](x, self.value)

    def apply(self, df) -> np.ndarray:
        """Boolean array, one per row of ``df`` (a DataFrame or a mapping of arrays).

        Raises:
            MissingColumnError: a column of the cut is in ``df`` under none of its names.
        """
        x = _values(df, self.column, self)
        if self.minus is not None:
            x = x - _values(df, self.minus, self)
        return np.asarray(self.passes(x), dtype=bool)

    @property
    def slug(self) -> str:
        """A file-name-safe name (``DLLK_gt_5``)."""
        names = {">": "gt", ">=": "ge", "<": "lt", "<=": "le", "==": "eq", "!=": "ne"}
        v = f"{self.value:g}".replace("-", "m").replace(".", "p")
        col = self.column if self.minus is None else f"{self.column}_minus_{self.minus}"
        return f"{col}_{names[self.op]}_{v}"


def _names_of(column: str) -> tuple[str, ...]:
    """``column`` first, then its other names in the column map."""
    for c in COLUMN_MAP:
        if column in c.names:
            return (column, *(n for n in c.names if n != column))
    return (column,)


def resolve_column(column: str, available) -> str | None:
    """The name under which ``column`` is in ``available`` (itself first, then its other names in
    the column map: ``DLLK`` finds ``PIDK``), or ``None``."""
    available = set(available)
    for name in _names_of(column):
        if name in available:
            return name
    return None


def _values(df, column: str, cut: Cut):
    cols = list(df.columns) if hasattr(df, "columns") else list(df)
    name = resolve_column(column, cols)
    if name is not None:
        v = df[name]
        return v.to_numpy() if hasattr(v, "to_numpy") else np.asarray(v)
    raise MissingColumnError([column], [str(c) for c in cols], where=f"the table given to the cut {cut.label!r}")


def parse_cut(spec: str | Cut) -> Cut:
    """Parse ``"DLLK > 5"``, ``"PIDp>=0"``, ``"DLLp - DLLK > 0"`` or a bare flag ``"isMuon"``.

    Raises:
        ConfigurationError: the text is not of one of these forms (the forms are shown).
    """
    if isinstance(spec, Cut):
        return spec
    if not isinstance(spec, str):
        raise ConfigurationError(f"a cut is a string such as 'DLLK > 5' or a Cut, got {spec!r}")
    s = spec.strip()
    if re.fullmatch(_NAME, s):
        return Cut(s, ">", 0.5, s)
    m = _CUT_RE.match(s)
    if not m:
        raise ConfigurationError(
            f"cannot read the requirement {spec!r}: write COLUMN OP VALUE or COLUMN - COLUMN OP VALUE with OP one "
            "of > >= < <= == != (e.g. 'DLLK > 5', 'DLLp - DLLK > 0'), or a boolean column name (e.g. 'isMuon')"
        )
    col, minus, op, val = m.groups()
    try:
        value = float(val)
    except ValueError:
        raise ConfigurationError(f"cannot read the requirement {spec!r}: {val!r} is not a number") from None
    return Cut(col, op, value, minus=minus)


#: Typical requirements per PID target: quantity -> (operator, thresholds). A quantity is a store
#: name of the column map (every LHCb spelling of it is meant) or an LHCb-only column (ProbNN).
#: The DLL thresholds are those of analyses' proton and kaon selections (loose 0, 5; tight 10, 15:
#: a model's displaced tail or its core width shows at different thresholds).
TYPICAL: Mapping[str, tuple[str, tuple[float, ...]]] = {
    "pid_k": (">", (0.0, 5.0, 10.0)),
    "pid_p": (">", (0.0, 5.0, 10.0, 15.0)),
    "pid_mu": (">", (0.0,)),
    "pid_e": (">", (0.0,)),
    "is_muon": (">", (0.5,)),
    "ProbNNp": (">", (0.5,)),
    "ProbNNk": (">", (0.5,)),
    "ProbNNpi": (">", (0.5,)),
    "ProbNNmu": (">", (0.5,)),
}


def _lhcb_spellings(quantity: str) -> tuple[str, ...]:
    """LHCb names of a quantity: the ``DLL`` alias first, then LHCb's name (``DLLK``, ``PIDK``)."""
    for c in COLUMN_MAP:
        if c.store == quantity:
            return (*c.aliases, c.lhcb)
    return (quantity,)


def typical_cut_specs() -> list[tuple[str, str, float]]:
    """``(column, op, value)`` of every typical requirement under each LHCb spelling of its column,
    in the order of :data:`TYPICAL` (``DLLK > 0``, ``DLLK > 5``, ``PIDK > 0``, ``PIDK > 5``, ...)."""
    return [(name, op, v) for q, (op, values) in TYPICAL.items() for name in _lhcb_spellings(q) for v in values]


def _matches(target: str, name: str) -> bool:
    """``target`` is the column ``name`` (case-insensitive, or with a particle prefix ``x_name``)."""
    t, n = target.lower(), name.lower()
    return t == n or t.endswith("_" + n)


def typical_cuts(targets) -> list[Cut]:
    """The typical requirements (:data:`TYPICAL`) on the columns ``targets``, in :data:`TYPICAL`'s order.

    A target matches a spelling of a quantity case-insensitively, also with a particle prefix
    (``p_DLLp``, ``K_PIDK``); a boolean flag's cut is labelled by the column alone (``isMuon``).
    Targets without a typical requirement give none (an empty list when none has one).

    Example:
        >>> [c.label for c in typical_cuts(["DLLp"])]
        ['DLLp > 0', 'DLLp > 5', 'DLLp > 10', 'DLLp > 15']
    """
    targets = [str(t) for t in targets]
    out: list[Cut] = []
    seen = set()
    for name, op, val in typical_cut_specs():
        for t in targets:
            if _matches(t, name) and (t, op, val) not in seen:
                seen.add((t, op, val))
                label = t if name == "isMuon" else f"{t} {op} {val:g}"
                out.append(Cut(t, op, val, label))
    return out


#: Requirements of the PID chain's closure, on the chain's outputs (label -> cut).
CHAIN_CUTS: dict[str, Cut] = {s: parse_cut(s) for s in ("DLLK > 0", "DLLK > 5", "DLLp > 5", "isMuon", "DLLp - DLLK > 0")}
#: Requirements of a production's QA report, on the store's PID columns.
PRODUCTION_CUTS: tuple[Cut, ...] = tuple(parse_cut(s) for s in
                                         ("pid_k > 0", "pid_k > 5", "pid_p > 5", "pid_mu > 0", "pid_e > 0", "is_muon"))
