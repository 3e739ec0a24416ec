"""The batch: a fixed number of events generated together from one seed.

A :class:`Batch` is at once the unit of computation (every stage transforms a whole batch with
vectorised code), of storage (written in one transaction), of parallelism (batches are
independent tasks) and of provenance (its seed regenerates it bit for bit).

In memory a batch is a set of pandas DataFrames, one per table of the event store
(:data:`mambah.physics.columns.COLUMNS`), plus the provenance that goes into the ``batches`` table.
Stages add columns or rows; they never do I/O.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from mambah.errors import MissingTableError
from mambah.random import stage_rng

__all__ = ["Batch", "empty_table"]


def empty_table(table: str, n: int = 0) -> pd.DataFrame:
    """A DataFrame with the columns and dtypes of ``table`` and ``n`` zero rows."""
    from mambah.physics.columns import COLUMNS

    try:
        cols = COLUMNS[table]
    except KeyError:
        raise MissingTableError(f"no table {table!r}; tables: {', '.join(COLUMNS)}") from None
    return pd.DataFrame({c: np.zeros(n, dtype=d) for c, d in cols.items()})


@dataclasses.dataclass
class Batch:
    """One batch of events.

    Attributes:
        id: the batch id (unique in a store; the key of every row of the batch).
        seed: the seed all of the batch's random numbers derive from (see :meth:`rng`).
        n_events: number of generated events.
        tables: table name -> DataFrame (columns of :data:`mambah.physics.columns.COLUMNS`).
        info: provenance and bookkeeping (config, model versions, timings, stage notes); goes
            into the ``batches`` table.
        arrays: transient per-batch data passed between stages and not stored (e.g. the
            generator's per-particle arrays before they become tables).
    """

    id: int
    seed: int
    n_events: int
    tables: dict[str, pd.DataFrame] = dataclasses.field(default_factory=dict)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    arrays: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    def rng(self, stage: str) -> np.random.Generator:
        """The random generator of ``stage`` for this batch (independent of stage order)."""
        return stage_rng(self.seed, stage)

    def __getitem__(self, table: str) -> pd.DataFrame:
        try:
            return self.tables[table]
        except KeyError:
            raise MissingTableError(
                f"batch {self.id} has no table {table!r} yet; it has: {', '.join(self.tables) or '(none)'}"
            ) from None

    def __setitem__(self, table: str, df: pd.DataFrame) -> None:
        self.tables[table] = df

    def __contains__(self, table: str) -> bool:
        return table in self.tables

    def n_rows(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.tables.items()}
