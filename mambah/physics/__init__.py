"""Physics facts every part of mambah shares: species, kinematics, columns and units.

* :mod:`mambah.physics.species` — the trackable species (name, PDG id, mass, charge), filled from
  the ``particle`` package; masses of any PDG id;
* :mod:`mambah.physics.kinematics` — |p|, pT, η (one guard; a float32 fast path for the tracking
  networks' features), the momentum-measurement parameterisation;
* :mod:`mambah.physics.columns` — the batch tables' columns and dtypes, and the column map
  (store name ↔ LHCb name ↔ unit ↔ quantity).

This package imports nothing of mambah but :mod:`mambah.errors`; everything else imports it.
"""

from __future__ import annotations

from mambah.physics.columns import (
    COLUMN_MAP,
    COLUMNS,
    CONDITION_NAMES,
    DATA_TABLES,
    PID_COLUMNS,
    Column,
    column,
    describe_column,
    lhcb_name,
    lhcb_names,
    store_name,
)
from mambah.physics.kinematics import (
    ETA_LIMIT,
    PT_FLOOR32,
    boost_to_lab,
    boost_to_rest,
    eta,
    p_eta,
    p_eta32,
    p_mag,
    pt,
    rebuild_momentum,
    state_at_beam,
)
from mambah.physics.species import (
    SPECIES,
    SPECIES_PDG,
    TRACKABLE_PIDS,
    Species,
    particle_mass,
    pdg_charge,
    pdg_mass,
    species,
    species_index,
    species_mass,
    species_of_pdg,
)

__all__ = [
    "COLUMNS", "DATA_TABLES", "PID_COLUMNS",
    "Column", "COLUMN_MAP", "CONDITION_NAMES", "column", "describe_column", "lhcb_name", "lhcb_names", "store_name",
    "boost_to_lab", "boost_to_rest", "ETA_LIMIT", "PT_FLOOR32", "eta", "p_eta", "p_eta32", "p_mag", "pt", "rebuild_momentum", "state_at_beam",
    "SPECIES", "SPECIES_PDG", "TRACKABLE_PIDS", "Species", "particle_mass", "pdg_charge", "pdg_mass",
    "species", "species_index", "species_mass", "species_of_pdg",
]
