"""Physics facts every part of mambah shares: species, kinematics, columns and units.

* :mod:`mambah.physics.species` — the trackable species (name, PDG id, mass, charge), filled from
  the ``particle`` package; masses of any PDG id;
* :mod:`mambah.physics.kinematics` — |p|, pT, η (one guard), the momentum-measurement
  parameterisation;
* :mod:`mambah.physics.columns` — the batch tables' columns and dtypes.

This package imports nothing of mambah but :mod:`mambah.errors`; everything else imports it.
"""

from __future__ import annotations

from mambah.physics.columns import COLUMNS, DATA_TABLES, PID_COLUMNS
from mambah.physics.kinematics import ETA_LIMIT, eta, p_eta, p_mag, pt, rebuild_momentum
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
    "ETA_LIMIT", "eta", "p_eta", "p_mag", "pt", "rebuild_momentum",
    "SPECIES", "SPECIES_PDG", "TRACKABLE_PIDS", "Species", "particle_mass", "pdg_charge", "pdg_mass",
    "species", "species_index", "species_mass", "species_of_pdg",
]
