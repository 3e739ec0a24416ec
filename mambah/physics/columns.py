"""Columns: the tables of a batch, their columns and numpy dtypes, and their units.

:data:`COLUMNS` is the single source of truth for the in-memory batch tables: the name and numpy
dtype of every column the stages produce and the store writes (the store's SQLAlchemy schema,
:mod:`mambah.store.schema`, is built to match it, and a test checks that they agree).

Units: MeV (energies, momenta, masses), mm (positions), ns (times) — the LHCb convention.

:data:`COLUMN_MAP` is the one map between the store's names and LHCb's (ntuple branches,
calibration samples, model cards): store name ↔ LHCb name ↔ unit ↔ quantity, with the aliases
LHCb uses (``DLLp`` = ``PIDp``, ``nLongTracks`` = ``nTracks``). :func:`describe_column` gives a
card's column entry, :func:`lhcb_name` / :func:`store_name` translate.

Example:
    >>> from mambah.physics import lhcb_name, store_name, describe_column
    >>> lhcb_name("pid_k"), store_name("DLLp")
    ('PIDK', 'pid_p')
    >>> describe_column("P")
    {'name': 'P', 'unit': 'MeV/c', 'quantity': 'p'}
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mambah.errors import ConfigurationError, closest

__all__ = [
    "COLUMNS", "DATA_TABLES", "PID_COLUMNS", "VERTEXING_COLUMNS", "vertexing_defaults", "BREM_COLUMNS",
    "BREM_NOT_COMPUTED", "brem_defaults", "PROBNN_COLUMNS", "probnn_defaults",
    "Column", "COLUMN_MAP", "CONDITION_NAMES", "column", "describe_column", "lhcb_name", "lhcb_names", "store_name",
]

#: PID variables of reconstructed tracks (NaN where not produced, e.g. outside the RICH acceptance).
PID_COLUMNS: dict[str, str] = {
    "rich_dll_e": "float32",
    "rich_dll_mu": "float32",
    "rich_dll_k": "float32",
    "rich_dll_p": "float32",
    "is_muon": "float32",
    "muon_mu_ll": "float32",
    "muon_bkg_ll": "float32",
    "pid_e": "float32",
    "pid_mu": "float32",
    "pid_k": "float32",
    "pid_p": "float32",
}

#: Columns of each data table as produced by the stages: name -> numpy dtype.
COLUMNS: dict[str, dict[str, str]] = {
    "events": {
        "batch": "int64",
        "event": "int32",
        "pv_x": "float32",
        "pv_y": "float32",
        "pv_z": "float32",
        "pv_t": "float32",
        "n_tracks": "int32",
        "weight": "float32",
    },
    "mc_particles": {
        "batch": "int64",
        "index": "int32",
        "event": "int32",
        "pid": "int32",
        "px": "float64",
        "py": "float64",
        "pz": "float64",
        "e": "float64",
        "prod_vertex": "int32",
        "decay_vertex": "int32",
        "mother": "int32",
        "reconstructed": "bool",
    },
    "mc_vertices": {
        "batch": "int64",
        "index": "int32",
        "event": "int32",
        "x": "float32",
        "y": "float32",
        "z": "float32",
        "t": "float32",
        "mother": "int32",
    },
    "particles": {
        "batch": "int64",
        "index": "int32",
        "event": "int32",
        "mc_particle": "int32",
        "pid": "int32",
        "charge": "int8",
        "px": "float64",
        "py": "float64",
        "pz": "float64",
        "e": "float64",
        "m": "float64",
        "mother": "int32",
        "vertex": "int32",
        **PID_COLUMNS,
    },
    "vertices": {
        "batch": "int64",
        "index": "int32",
        "event": "int32",
        "particle": "int32",
        "mc_vertex": "int32",
        "x": "float32",
        "y": "float32",
        "z": "float32",
        "m": "float64",
        "m_truehyp": "float64",
        "n_daughters": "int16",
        "n_invisible": "int16",
    },
    # the PID columns of a track as each ensemble member of its PID chain draws them
    # (``mambah simulate --pid-variations``; :class:`mambah.pid.stage.PID`): one row per (track, member)
    "pid_variations": {
        "batch": "int64",
        "particle": "int32",
        "member": "int16",
        **PID_COLUMNS,
    },
}

#: Columns filled by the Vertexing stage (:mod:`mambah.reconstruction.vertexstage`, issue 23):
#: ``{table: {column: (dtype, value when not computed)}}``. Every other stage writes them with the
#: "not computed" value (:func:`vertexing_defaults`): NaN, ``0`` for ``track_type`` (LHCb's
#: ``TrackType`` Unknown) and ``-1`` for ``ndof`` (no vertex fit). Units: mm, ns, MeV/c^2.
VERTEXING_COLUMNS: dict[str, dict[str, tuple[str, float]]] = {
    "events": {
        # the event's own reconstructed primary vertex
        "ownpv_x": ("float32", np.nan),
        "ownpv_y": ("float32", np.nan),
        "ownpv_z": ("float32", np.nan),
        # the reconstructed PVs (signal collision + pile-up) and the own PV's track count (schema 5)
        "n_pvs": ("int16", -1),
        "ownpv_ntracks": ("int16", -1),
    },
    "particles": {
        "track_type": ("int8", 0),
        "track_chi2ndof": ("float32", np.nan),
        "track_ghost_prob": ("float32", np.nan),
        "ip_ownpv": ("float32", np.nan),
        "ipchi2_ownpv": ("float32", np.nan),
        "minipchi2": ("float32", np.nan),
        "fd_ownpv": ("float32", np.nan),
        "fdchi2_ownpv": ("float32", np.nan),
        "dira_ownpv": ("float64", np.nan),
        "tau": ("float32", np.nan),
        "tau_err": ("float32", np.nan),
        "doca_max": ("float32", np.nan),
        "mcorr": ("float64", np.nan),
    },
    "vertices": {
        "chi2": ("float32", np.nan),
        "ndof": ("int16", -1),
        "cov_xx": ("float32", np.nan),
        "cov_yy": ("float32", np.nan),
        "cov_zz": ("float32", np.nan),
        "cov_xy": ("float32", np.nan),
        "cov_xz": ("float32", np.nan),
        "cov_yz": ("float32", np.nan),
    },
}
for _t, _cols in VERTEXING_COLUMNS.items():
    COLUMNS[_t].update({_c: _d for _c, (_d, _) in _cols.items()})
del _t, _cols


def vertexing_defaults(table: str, n: int) -> dict[str, np.ndarray]:
    """``{column: array of n "not computed" values}`` of :data:`VERTEXING_COLUMNS` for ``table``
    (empty for a table without such columns)."""
    return {c: np.full(n, fill, dtype=d) for c, (d, fill) in VERTEXING_COLUMNS.get(table, {}).items()}


#: ``particles.has_brem_added`` when the Bremsstrahlung stage did not run (or the row was made
#: without it: composites, photons, a store written before the column existed).
BREM_NOT_COMPUTED: int = -1

#: Columns filled by the opt-in Bremsstrahlung stage (:mod:`mambah.reconstruction.brem`, issue 25):
#: ``{table: {column: (dtype, value when not computed)}}``. ``has_brem_added`` (LHCb's
#: ``HASBREMADDED``): 1 for an electron track to which brem recovery added at least one photon, 0 for
#: an electron track without, and for every other track the stage saw; :data:`BREM_NOT_COMPUTED`
#: (-1) where the stage did not run, and for composites and neutral rows.
BREM_COLUMNS: dict[str, dict[str, tuple[str, int]]] = {
    "particles": {"has_brem_added": ("int8", BREM_NOT_COMPUTED)},
}
for _t, _cols in BREM_COLUMNS.items():
    COLUMNS[_t].update({_c: _d for _c, (_d, _) in _cols.items()})
del _t, _cols


def brem_defaults(table: str, n: int) -> dict[str, np.ndarray]:
    """``{column: array of n "not computed" values}`` of :data:`BREM_COLUMNS` for ``table``
    (empty for a table without such columns)."""
    return {c: np.full(n, fill, dtype=d) for c, (d, fill) in BREM_COLUMNS.get(table, {}).items()}


#: The ProbNN columns of ``particles`` (issue 24): the global PID classifier's outputs, drawn by the
#: PID chain's optional ``probnn`` step (:mod:`mambah.pid.chain`) or computed by the reference
#: detector's network (:mod:`mambah.reference.probnn`): ``{table: {column: (dtype, value when not
#: computed)}}``, NaN for tracks whose chain has no ProbNN step, composites, photons, and batches
#: made without them.
PROBNN_COLUMNS: dict[str, dict[str, tuple[str, float]]] = {
    "particles": {c: ("float32", np.nan) for c in ("probnn_e", "probnn_mu", "probnn_pi", "probnn_k", "probnn_p",
                                                   "probnn_ghost")},
}
for _t, _cols in PROBNN_COLUMNS.items():
    COLUMNS[_t].update({_c: _d for _c, (_d, _) in _cols.items()})
    # the ProbNN of a track as each ensemble member of its chain draws it (schema 6): NaN where the
    # chain has no probnn step
    COLUMNS["pid_variations"].update({_c: _d for _c, (_d, _) in _cols.items()})
del _t, _cols


def probnn_defaults(table: str, n: int) -> dict[str, np.ndarray]:
    """``{column: array of n NaN}`` of :data:`PROBNN_COLUMNS` for ``table`` (empty for other tables)."""
    return {c: np.full(n, fill, dtype=d) for c, (d, fill) in PROBNN_COLUMNS.get(table, {}).items()}


#: Data tables in write order (parents before children). ``pid_variations`` is empty (and absent
#: from the batch) unless the production asked for PID variations.
DATA_TABLES: tuple[str, ...] = ("events", "mc_vertices", "mc_particles", "particles", "vertices", "pid_variations")


# ----------------------------------------------------------------------------- the column map
@dataclasses.dataclass(frozen=True)
class Column:
    """One quantity under its two names: the store's and LHCb's.

    Attributes:
        store: the store/batch name of the quantity (snake case): a column of the ``particles`` or
            ``events`` table (``pid_p``, ``n_tracks``) or a quantity computed from one
            (``p``, ``pt``, ``eta`` from px, py, pz; see :mod:`mambah.physics.kinematics`);
            ``None`` for a column with no store counterpart (e.g. ``RichDLLpK``).
        lhcb: the LHCb ntuple / calibration-sample name (``PIDp``, ``nTracks``, ``P``).
        unit: unit in mambah's convention (MeV/c for momenta; ``""`` when dimensionless).
        quantity: what a model card records as the column's ``quantity`` (the store name, or an
            expression of store names for a derived column).
        aliases: other names that mean the same column (``DLLp`` for ``PIDp``, ``nLongTracks``
            for ``nTracks``, ``Q`` for ``charge``).
    """

    store: str | None
    lhcb: str
    unit: str
    quantity: str
    aliases: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """Every name of the column: LHCb's, the store's, then the aliases."""
        return tuple(dict.fromkeys(n for n in (self.lhcb, self.store, *self.aliases) if n))


def _c(store: str, lhcb: str, unit: str = "", aliases: tuple[str, ...] = ()) -> Column:
    return Column(store, lhcb, unit, store, aliases)


#: The column map: every quantity mambah reads or writes under an LHCb name, once.
#: Order: model conditions, combined DLLs, RICH DLLs, muon variables, flags and calorimeter, derived,
#: masses.
COLUMN_MAP: tuple[Column, ...] = (
    _c("p", "P", "MeV/c"),
    _c("pt", "PT", "MeV/c"),
    _c("eta", "ETA"),
    _c("n_tracks", "nTracks", aliases=("nLongTracks",)),
    _c("charge", "charge", "e", aliases=("Q",)),
    _c("pid_e", "PIDe", aliases=("DLLe",)),
    _c("pid_mu", "PIDmu", aliases=("DLLmu",)),
    _c("pid_k", "PIDK", aliases=("DLLK",)),
    _c("pid_p", "PIDp", aliases=("DLLp",)),
    _c("rich_dll_e", "RichDLLe"),
    _c("rich_dll_mu", "RichDLLmu"),
    _c("rich_dll_k", "RichDLLk"),
    _c("rich_dll_p", "RichDLLp"),
    _c("is_muon", "isMuon"),
    _c("muon_mu_ll", "MuonMuLL"),
    _c("muon_bkg_ll", "MuonBkgLL"),
    _c("has_rich", "hasRich"),
    _c("in_muon_acceptance", "InMuonAcc"),
    _c("calo_e_over_p", "EcalEoverP"),
    _c("calo_dll_e", "EcalPIDe"),
    Column(None, "RichDLLpK", "", "rich_dll_p - rich_dll_k"),
    # masses: ``m`` as reconstructed (under the mass hypotheses chosen with ``reconstruct_as``, see
    # :mod:`mambah.reconstruction.hypotheses`), ``m_truehyp`` with every track under its true
    # species' hypothesis (``vertices`` table; the ntuple's ``X_M`` and ``X_M_TRUEHYP``)
    _c("m", "M", "MeV/c^2"),
    _c("m_truehyp", "M_TRUEHYP", "MeV/c^2"),
    # stable neutral descendants of a composite that no stage reconstructs (neutrinos, particles
    # left invisible on purpose): its mass is partial when > 0 (``vertices`` table; ntuple ``X_NINVISIBLE``)
    _c("n_invisible", "NINVISIBLE"),
    # the Vertexing stage's columns (VERTEXING_COLUMNS), under LHCb's ntuple names
    _c("track_type", "TRACK_Type"),
    _c("track_chi2ndof", "TRACK_CHI2NDOF"),
    _c("track_ghost_prob", "TRACK_GhostProb"),
    _c("ip_ownpv", "IP_OWNPV", "mm"),
    _c("ipchi2_ownpv", "IPCHI2_OWNPV"),
    _c("minipchi2", "MINIPCHI2"),
    _c("fd_ownpv", "FD_OWNPV", "mm"),
    _c("fdchi2_ownpv", "FDCHI2_OWNPV"),
    _c("dira_ownpv", "DIRA_OWNPV"),
    _c("tau", "TAU", "ns"),
    _c("tau_err", "TAUERR", "ns"),
    _c("doca_max", "DOCAMAX", "mm"),
    _c("mcorr", "MCORR", "MeV/c^2"),
    _c("n_pvs", "nPVs"),
    _c("ownpv_ntracks", "OWNPV_NTRACKS"),
    _c("chi2", "ENDVERTEX_CHI2"),
    _c("ndof", "ENDVERTEX_NDOF"),
    # the Bremsstrahlung stage's flag (BREM_COLUMNS): brem recovery added a photon to the electron track
    _c("has_brem_added", "HASBREMADDED"),
    # the global PID classifier's outputs (PROBNN_COLUMNS; issue 24)
    _c("probnn_e", "ProbNNe"),
    _c("probnn_mu", "ProbNNmu"),
    _c("probnn_pi", "ProbNNpi"),
    _c("probnn_k", "ProbNNk", aliases=("ProbNNK",)),
    _c("probnn_p", "ProbNNp"),
    _c("probnn_ghost", "ProbNNghost"),
)

_BY_NAME: dict[str, Column] = {}
for _col in COLUMN_MAP:
    for _n in _col.names:
        if _BY_NAME.setdefault(_n, _col) is not _col:  # pragma: no cover - a map edit must keep names unique
            raise RuntimeError(f"column name {_n!r} appears twice in COLUMN_MAP")
del _col, _n

#: LHCb names of the conditions of every PID model and chain, in the networks' order.
CONDITION_NAMES: tuple[str, ...] = ("P", "ETA", "nTracks", "charge")


def column(name: str) -> Column:
    """The :class:`Column` known by ``name`` (LHCb name, store name or alias).

    Raises:
        ConfigurationError: ``name`` is in no entry of :data:`COLUMN_MAP` (close names listed).
    """
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        near = closest(str(name), _BY_NAME)
        raise ConfigurationError(f"unknown column {name!r}" + (f"; did you mean {', '.join(near)}?" if near else "")
                                 + f" (known: {', '.join(c.lhcb for c in COLUMN_MAP)})") from None


def lhcb_name(store: str) -> str:
    """LHCb name of the store quantity ``store`` (``pid_p -> PIDp``)."""
    col = column(store)
    if col.store != store:
        raise ConfigurationError(f"{store!r} is not a store column name; it is LHCb's {col.lhcb!r} "
                                 f"(store name {col.store!r})")
    return col.lhcb


def store_name(name: str) -> str:
    """Store name of the column called ``name`` (``PIDp``, ``DLLp`` or ``pid_p`` -> ``pid_p``).

    Raises:
        ConfigurationError: unknown name, or a column with no store counterpart.
    """
    col = column(name)
    if col.store is None:
        raise ConfigurationError(f"column {name!r} has no store counterpart (it is {col.quantity!r})")
    return col.store


def lhcb_names(stores) -> dict[str, str]:
    """``{store name: LHCb name}`` for the store names ``stores``, in their order."""
    return {s: lhcb_name(s) for s in stores}


def describe_column(name: str) -> dict[str, str]:
    """``{"name", "unit", "quantity"}`` of a column, as model cards record it.

    Names in :data:`COLUMN_MAP` (LHCb names, store names, aliases) get their unit and quantity;
    any other name is described as itself, dimensionless (a model may be trained on any column).

    Example:
        >>> describe_column("DLLp")
        {'name': 'DLLp', 'unit': '', 'quantity': 'pid_p'}
    """
    col = _BY_NAME.get(name)
    if col is None:
        return {"name": name, "unit": "", "quantity": name}
    return {"name": name, "unit": col.unit, "quantity": col.quantity}
