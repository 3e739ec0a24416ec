"""The relational schema of the event store (SQLAlchemy 2, one schema for every backend).

Every data table is keyed by ``(batch, index)`` (``(batch, event)`` for events), with indices
local to a batch so that workers never coordinate. Cross-references inside a batch (``mother``,
``prod_vertex``, ``mc_particle`` ...) are batch-local indices; ``-1`` means "none".

Units: MeV (energies, momenta, masses), mm (positions), ns (times) — the LHCb convention.

:data:`COLUMNS` is the single source of truth for the in-memory batch tables: the name and numpy
dtype of every column the stages produce and the store writes. The ORM classes below are built to
match it (a test checks that they agree).

Constraints and indices (chosen for write speed, measured with ``benchmarks/store.py``):

* every data table has its primary key ``(batch, index)`` / ``(batch, event)`` and one index on
  ``(batch, event)``; navigation (mother, daughters, descendants, the MC truth of a track) always
  knows the event, so these two indices serve every navigation query;
* there are **no foreign keys** from the data tables to ``batches`` and no indices on ``mother`` or
  ``mc_particle``: on PostgreSQL the per-row foreign-key triggers and the randomly ordered
  ``mother`` indices cut the ``COPY`` rate five-fold (0.1 vs 0.54 M rows/s measured). Integrity is
  guaranteed by the store instead:
  a batch (its ``batches`` row and all its rows) is written and deleted in one transaction, and
  the tests check that no orphan row can exist. A ``-1`` ("none") reference could not be a
  foreign key anyway;
* on DuckDB the data tables carry no primary key or index at all (see
  :class:`mambah.store.backends.DuckDBBackend`): its zone maps serve the same queries.
"""

from __future__ import annotations

import datetime as _dt

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    REAL,
    Double,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: Floating-point data columns are nullable, 4-byte ``REAL`` (float32 in memory) or, for
#: four-momenta and masses, 8-byte ``Double`` (float64): SQLite stores NaN as NULL, which reads back as NaN.


def _f32():
    return mapped_column(REAL, nullable=True)


def _f64():
    """8-byte floats for four-momenta and masses: m^2 = E^2 - p^2 cancels catastrophically at
    high momentum, so float32 momenta lose up to ~4% of a b-hadron mass and ~180 MeV of a
    J/psi mass (measured on 50k generated events); positions and times keep float32."""
    return mapped_column(Double, nullable=True)

__all__ = ["SCHEMA_VERSION", "UPGRADABLE", "UPGRADE_COLUMNS", "COLUMNS", "DATA_TABLES", "Base", "Meta", "BatchRow", "Event",
           "MCParticle", "MCVertex", "Particle", "Vertex", "PidVariation", "ModelRow", "PID_COLUMNS"]

#: Bumped whenever a table or column changes; stored in ``mambah_meta``.
#: 3: ``vertices.m_truehyp`` (the composite's mass under the true mass hypotheses).
#: 4: ``vertices.n_invisible`` (the composite's stable neutral descendants: its mass is partial when > 0),
#: the ``pid_variations`` table (PID variables per ensemble member) and the Vertexing stage's columns
#: (``physics.columns.VERTEXING_COLUMNS``: own PV, IP, FD, DIRA, decay time, MCORR, track type and
#: quality, vertex chi2, ndof and covariance; issue 23). A version-3 store is upgraded in place when
#: opened (:meth:`Store._init_schema`): the table is added, and the columns, with the value -1
#: ("unknown": written before version 4) for ``n_invisible`` and the "not computed" value of the
#: Vertexing columns in the rows already there; nothing else changes. Also in version 4 (not released
#: before it was added): ``particles.has_brem_added`` (the opt-in Bremsstrahlung stage's
#: ``HASBREMADDED``, ``physics.columns.BREM_COLUMNS``), -1 ("not computed") in the rows of a
#: version-3 store and wherever the stage did not run.
#: Version 5 (issues 23 and 24): ``events.n_pvs`` and ``events.ownpv_ntracks`` (the Vertexing stage's
#: fitted PVs with pile-up: PV count and own-PV track count), -1 ("not computed"), and
#: ``particles.probnn_e ... probnn_ghost`` (``physics.columns.PROBNN_COLUMNS``, the PID chain's
#: optional ProbNN step), NaN, in the rows of an older store and wherever they were not computed; a
#: version-3 or -4 store is upgraded in place.
#: Version 6 (issue 24): ``pid_variations.probnn_e ... probnn_ghost``, the ProbNN of every ensemble
#: member (``mambah simulate --probnn --pid-variations``), NULL (NaN) in the rows of an older store
#: and for the tracks of chains without a ProbNN step; a version-3, -4 or -5 store is upgraded in place.
SCHEMA_VERSION = 6

from mambah.physics.columns import BREM_COLUMNS, PROBNN_COLUMNS, VERTEXING_COLUMNS  # noqa: E402

#: Versions a store can be upgraded from by adding the tables that are new since then.
UPGRADABLE = {3: ("pid_variations",), 4: (), 5: ()}
#: Columns added by the upgrade from a version: (table, column, value of the existing rows; None: NULL,
#: read as NaN).
UPGRADE_COLUMNS = {3: (("vertices", "n_invisible", -1),
                       *((t, c, None if fill != fill else int(fill))
                         for t, cols in (*VERTEXING_COLUMNS.items(), *BREM_COLUMNS.items())
                         for c, (_, fill) in cols.items()))}

#: From version 4: the Vertexing stage's PV count and own-PV track count (issue 23), -1 in old rows, and
#: the ProbNN columns (issue 24), NULL (NaN). An upgrade from version v adds the tables and columns of
#: every version from v on.
UPGRADE_COLUMNS[4] = (("events", "n_pvs", -1), ("events", "ownpv_ntracks", -1),
                      *((t, c, None if fill != fill else int(fill))
                        for t, cols in PROBNN_COLUMNS.items() for c, (_, fill) in cols.items()))
#: From version 5: the ProbNN columns of ``pid_variations`` (issue 24), NULL (NaN) in old rows.
UPGRADE_COLUMNS[5] = tuple(("pid_variations", c, None) for cols in PROBNN_COLUMNS.values() for c in cols)

from mambah.physics.columns import COLUMNS, DATA_TABLES, PID_COLUMNS  # noqa: E402  (the batch's column contract)


class Base(DeclarativeBase):
    pass


class Meta(Base):
    """Key/value facts about the database itself (``schema_version``, ``created_by``...)."""

    __tablename__ = "mambah_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class BatchRow(Base):
    """One row per batch: its provenance. A batch is written in one transaction with its data."""

    __tablename__ = "batches"
    batch: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    production: Mapped[str] = mapped_column(String(64), default="", index=True)
    seed: Mapped[int] = mapped_column(BigInteger)
    n_events: Mapped[int] = mapped_column(Integer)
    config: Mapped[str] = mapped_column(Text, default="{}")  # JSON
    models: Mapped[str] = mapped_column(Text, default="{}")  # JSON: name -> {version, hash}
    code_version: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[str] = mapped_column(String(16), default="complete")
    timings: Mapped[str] = mapped_column(Text, default="{}")  # JSON: stage -> seconds
    created: Mapped[_dt.datetime] = mapped_column(DateTime, default=lambda: _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None))


class Event(Base):
    __tablename__ = "events"
    batch: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    event: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    pv_x: Mapped[float] = _f32()
    pv_y: Mapped[float] = _f32()
    pv_z: Mapped[float] = _f32()
    pv_t: Mapped[float] = _f32()
    n_tracks: Mapped[int] = mapped_column(Integer)
    weight: Mapped[float] = _f32()
    # the Vertexing stage's reconstructed own PV (VERTEXING_COLUMNS; NaN without the stage)
    ownpv_x: Mapped[float] = _f32()
    ownpv_y: Mapped[float] = _f32()
    ownpv_z: Mapped[float] = _f32()
    # the Vertexing stage's reconstructed PVs per event and the own PV's tracks (-1 without the stage)
    n_pvs: Mapped[int] = mapped_column(SmallInteger)
    ownpv_ntracks: Mapped[int] = mapped_column(SmallInteger)


class MCVertex(Base):
    __tablename__ = "mc_vertices"
    __table_args__ = (Index("ix_mc_vertices_event", "batch", "event"),)
    batch: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    event: Mapped[int] = mapped_column(Integer)
    x: Mapped[float] = _f32()
    y: Mapped[float] = _f32()
    z: Mapped[float] = _f32()
    t: Mapped[float] = _f32()
    mother: Mapped[int] = mapped_column(Integer)


class MCParticle(Base):
    __tablename__ = "mc_particles"
    __table_args__ = (
        Index("ix_mc_particles_event", "batch", "event"),
    )
    batch: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    event: Mapped[int] = mapped_column(Integer)
    pid: Mapped[int] = mapped_column(Integer)
    px: Mapped[float] = _f64()
    py: Mapped[float] = _f64()
    pz: Mapped[float] = _f64()
    e: Mapped[float] = _f64()
    prod_vertex: Mapped[int] = mapped_column(Integer)
    decay_vertex: Mapped[int] = mapped_column(Integer)
    mother: Mapped[int] = mapped_column(Integer)
    reconstructed: Mapped[bool] = mapped_column(Boolean)


def _pid_columns(cls_dict):
    for name in PID_COLUMNS:
        cls_dict[name] = _f32()
    return cls_dict


def _probnn_columns(cls_dict):
    """The global PID classifier's outputs (``PROBNN_COLUMNS``, float32; NaN where not computed)."""
    for name in PROBNN_COLUMNS["particles"]:
        cls_dict[name] = _f32()
    return cls_dict


class Particle(Base):
    __tablename__ = "particles"
    __table_args__ = (
        Index("ix_particles_event", "batch", "event"),
    )
    batch: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    event: Mapped[int] = mapped_column(Integer)
    mc_particle: Mapped[int] = mapped_column(Integer)
    pid: Mapped[int] = mapped_column(Integer)
    charge: Mapped[int] = mapped_column(SmallInteger)
    px: Mapped[float] = _f64()
    py: Mapped[float] = _f64()
    pz: Mapped[float] = _f64()
    e: Mapped[float] = _f64()
    m: Mapped[float] = _f64()
    mother: Mapped[int] = mapped_column(Integer)
    vertex: Mapped[int] = mapped_column(Integer)
    _pid_columns(locals())
    # the Vertexing stage's columns (VERTEXING_COLUMNS; NaN, track_type 0, without the stage)
    track_type: Mapped[int] = mapped_column(SmallInteger)
    track_chi2ndof: Mapped[float] = _f32()
    track_ghost_prob: Mapped[float] = _f32()
    ip_ownpv: Mapped[float] = _f32()
    ipchi2_ownpv: Mapped[float] = _f32()
    minipchi2: Mapped[float] = _f32()
    fd_ownpv: Mapped[float] = _f32()
    fdchi2_ownpv: Mapped[float] = _f32()
    dira_ownpv: Mapped[float] = _f64()
    tau: Mapped[float] = _f32()
    tau_err: Mapped[float] = _f32()
    doca_max: Mapped[float] = _f32()
    mcorr: Mapped[float] = _f64()
    # the Bremsstrahlung stage's HASBREMADDED (BREM_COLUMNS; -1 without the stage)
    has_brem_added: Mapped[int] = mapped_column(SmallInteger)
    # the global PID classifier's outputs (PROBNN_COLUMNS; NaN where not computed)
    _probnn_columns(locals())


class Vertex(Base):
    __tablename__ = "vertices"
    __table_args__ = (Index("ix_vertices_event", "batch", "event"),)
    batch: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    event: Mapped[int] = mapped_column(Integer)
    particle: Mapped[int] = mapped_column(Integer)
    mc_vertex: Mapped[int] = mapped_column(Integer)
    x: Mapped[float] = _f32()
    y: Mapped[float] = _f32()
    z: Mapped[float] = _f32()
    m: Mapped[float] = _f64()  #: the composite's mass as reconstructed (under the chosen mass hypotheses)
    m_truehyp: Mapped[float] = _f64()  #: the same with every track under its true species' hypothesis
    n_daughters: Mapped[int] = mapped_column(SmallInteger)
    n_invisible: Mapped[int] = mapped_column(SmallInteger)  #: neutrinos and particles left invisible below it

    # the Vertexing stage's fit (VERTEXING_COLUMNS; NaN, ndof -1, without the stage)
    chi2: Mapped[float] = _f32()
    ndof: Mapped[int] = mapped_column(SmallInteger)
    cov_xx: Mapped[float] = _f32()
    cov_yy: Mapped[float] = _f32()
    cov_zz: Mapped[float] = _f32()
    cov_xy: Mapped[float] = _f32()
    cov_xz: Mapped[float] = _f32()
    cov_yz: Mapped[float] = _f32()


class PidVariation(Base):
    """The PID variables of a track (``particles`` row ``particle``) as ensemble member ``member``
    (1..K) of its PID chain draws them, with the nominal's noise (``mambah simulate --pid-variations``).
    Empty for a production without variations."""

    __tablename__ = "pid_variations"
    batch: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    particle: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    member: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    _pid_columns(locals())
    # the member's ProbNN (schema 6; NaN for a chain without a probnn step)
    _probnn_columns(locals())


class ModelRow(Base):
    """A conditions database for models: which trained model version produced what."""

    __tablename__ = "models"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    species: Mapped[str] = mapped_column(String(32), default="")
    conditions: Mapped[str] = mapped_column(Text, default="[]")  # JSON
    targets: Mapped[str] = mapped_column(Text, default="[]")  # JSON
    metrics: Mapped[str] = mapped_column(Text, default="{}")  # JSON
    path: Mapped[str] = mapped_column(Text, default="")
    hash: Mapped[str] = mapped_column(String(64), default="")
    created: Mapped[_dt.datetime] = mapped_column(DateTime, default=lambda: _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None))
