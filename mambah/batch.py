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

__all__ = ["Batch", "empty_table", "concat_batches", "event_channels", "INDEX_REFERENCES"]


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


#: Batch-local index columns of each table: column -> the table whose ``index`` (``event`` for
#: ``events``) it refers to. :func:`concat_batches` shifts them; ``-1`` ("none") stays.
INDEX_REFERENCES: dict[str, dict[str, str]] = {
    "events": {"event": "events"},
    "mc_particles": {"index": "mc_particles", "event": "events", "prod_vertex": "mc_vertices",
                     "decay_vertex": "mc_vertices", "mother": "mc_particles"},
    "mc_vertices": {"index": "mc_vertices", "event": "events", "mother": "mc_particles"},
    "particles": {"index": "particles", "event": "events", "mc_particle": "mc_particles", "mother": "particles",
                  "vertex": "vertices"},
    "vertices": {"index": "vertices", "event": "events", "particle": "particles", "mc_vertex": "mc_vertices"},
    "pid_variations": {"particle": "particles"},
}


def concat_batches(batch_id: int, parts: list[Batch]) -> tuple[dict[str, pd.DataFrame], list[dict[str, int]]]:
    """The tables of ``parts`` (batches of one batch's events, e.g. the channels of a cocktail)
    concatenated in order as the tables of batch ``batch_id``.

    The rows of part ``k`` follow those of parts ``0..k-1``; every batch-local index column
    (:data:`INDEX_REFERENCES`) of part ``k`` is shifted by the rows its table had before it
    (events: the events of the earlier parts), so that references stay inside the part; ``-1``
    stays ``-1``. The ``batch`` column becomes ``batch_id``.

    Returns:
        ``(tables, offsets)``: the tables, and per part ``{table: first row}`` (``events``: its
        first event number), which locates each part's rows in the whole batch.

    Raises:
        ConfigurationError: a part holds a table mambah does not know how to shift.
    """
    from mambah.errors import ConfigurationError
    from mambah.physics.columns import COLUMNS, DATA_TABLES

    names = [t for t in DATA_TABLES if any(t in p.tables for p in parts)]
    other = sorted({t for p in parts for t in p.tables} - set(DATA_TABLES))
    if other:
        raise ConfigurationError(f"cannot concatenate the table(s) {', '.join(other)} of a batch: only "
                                 f"{', '.join(DATA_TABLES)} have known index columns")
    size = {t: 0 for t in DATA_TABLES}
    offsets: list[dict[str, int]] = []
    pieces: dict[str, list[pd.DataFrame]] = {t: [] for t in names}
    for p in parts:
        offsets.append(dict(size))
        for t in names:
            df = p.tables.get(t)
            if df is None:
                df = empty_table(t)
            df = df.copy()
            for col, target in INDEX_REFERENCES[t].items():
                shift = size[target]
                if shift and col in df:
                    v = df[col].to_numpy()
                    df[col] = np.where(v >= 0, v + shift, v).astype(v.dtype)
            df["batch"] = np.full(len(df), batch_id, dtype=np.int64)
            pieces[t].append(df)
        size["events"] += int(p.n_events)
        for t in names:
            if "index" in INDEX_REFERENCES[t] and t != "events" and t in p.tables and len(p.tables[t]):
                size[t] += int(p.tables[t]["index"].max()) + 1
    tables = {}
    for t in names:
        df = pd.concat(pieces[t], ignore_index=True)
        tables[t] = df.astype({c: d for c, d in COLUMNS[t].items() if c in df})
    return tables, offsets


def event_channels(info: dict[str, Any], n_events: int) -> np.ndarray | None:
    """The channel index of each event of a batch, from its provenance (``batch.info`` or the
    decoded ``config`` of its ``batches`` row); ``None`` for a batch that is not a cocktail.

    Raises:
        ConfigurationError: the cocktail record does not cover the batch's events exactly.
    """
    from mambah.errors import ConfigurationError

    cocktail = info.get("cocktail") if isinstance(info, dict) else None
    if not cocktail:
        return None
    out = np.full(int(n_events), -1, dtype=np.int16)
    for rec in cocktail["channels"]:
        n, first = int(rec["n_events"]), int(rec["first_event"])
        if n:
            out[first:first + n] = int(rec["channel"])
    if (out < 0).any() or sum(int(r["n_events"]) for r in cocktail["channels"]) != int(n_events):
        raise ConfigurationError(f"the cocktail record of a batch of {n_events} events does not cover its events: "
                                 f"{[(r['channel'], r['first_event'], r['n_events']) for r in cocktail['channels']]}")
    return out
