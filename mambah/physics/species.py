"""Species: the particles mambah tracks and identifies, with their facts from ``particle``.

The five long-lived charged species that the tracker reconstructs and the PID chain identifies
(e, μ, π, K, p) have short names used throughout mambah (model names ``pid-K-rich``, one-hot
inputs ``is_K``). Every fact about a particle — PDG id, mass, charge — comes from the
``particle`` package (PDG data), read once here; nothing else in mambah writes a mass down.

Example:
    >>> from mambah.physics import SPECIES, species_mass, pdg_mass
    >>> SPECIES
    ('e', 'mu', 'pi', 'K', 'p')
    >>> from particle import Particle
    >>> species_mass("p") == Particle.from_pdgid(2212).mass
    True
    >>> pdg_mass([2212, -321]).tolist() == [species_mass("p"), species_mass("K")]
    True
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from mambah.errors import ConfigurationError

__all__ = [
    "Species",
    "SPECIES",
    "SPECIES_PDG",
    "TRACKABLE_PIDS",
    "species",
    "species_of_pdg",
    "species_index",
    "species_mass",
    "pdg_mass",
    "pdg_charge",
    "particle_mass",
]


@dataclasses.dataclass(frozen=True)
class Species:
    """A species mambah reconstructs: short name, PDG id (the positive particle's sign), mass
    (MeV/c²) and charge (units of e) of that particle, from the ``particle`` package."""

    name: str
    pdg: int
    mass: float
    charge: int


#: Short names of the trackable species, in mambah's canonical order (one-hot inputs, tables).
SPECIES: tuple[str, ...] = ("e", "mu", "pi", "K", "p")
#: Short name -> PDG id of the particle (e-, mu-, pi+, K+, p: LHCb's convention for the names).
SPECIES_PDG: dict[str, int] = {"e": 11, "mu": 13, "pi": 211, "K": 321, "p": 2212}
#: Absolute PDG ids of the trackable species, in the order of :data:`SPECIES`.
TRACKABLE_PIDS: tuple[int, ...] = tuple(SPECIES_PDG[s] for s in SPECIES)


@functools.lru_cache(maxsize=None)
def _particle(pdg: int):
    from particle import Particle

    try:
        return Particle.from_pdgid(int(pdg))
    except Exception:  # particle raises several types for ids it does not know
        raise ConfigurationError(f"unknown PDG id {int(pdg)}: the particle package does not know it") from None


@functools.lru_cache(maxsize=None)
def species(name: str) -> Species:
    """The :class:`Species` called ``name`` (one of :data:`SPECIES`).

    Raises:
        ConfigurationError: ``name`` is not a trackable species (the known ones are listed).
    """
    if name not in SPECIES_PDG:
        raise ConfigurationError(f"unknown species {name!r}; the trackable species are {', '.join(SPECIES)}")
    p = _particle(SPECIES_PDG[name])
    return Species(name, SPECIES_PDG[name], float(p.mass), int(p.charge))


def species_mass(name: str) -> float:
    """Mass (MeV/c²) of species ``name``."""
    return species(name).mass


def species_of_pdg(pdg: int) -> str | None:
    """Short name of the species of PDG id ``pdg`` (sign ignored), or None."""
    return _BY_PDG.get(abs(int(pdg)))


_BY_PDG = {v: k for k, v in SPECIES_PDG.items()}


def species_index(pid) -> np.ndarray:
    """Index into :data:`SPECIES` of each PDG id (sign ignored); -1 for anything else."""
    a = np.abs(np.asarray(pid, dtype=np.int64))
    out = np.full(a.shape, -1, dtype=np.int64)
    for i, p in enumerate(TRACKABLE_PIDS):
        out[a == p] = i
    return out


def particle_mass(pdg: int) -> float:
    """Mass (MeV/c²) of PDG id ``pdg`` (NaN when the PDG has none)."""
    m = _particle(int(pdg)).mass
    return float("nan") if m is None else float(m)


def _particle_charge(pdg: int) -> float:
    c = _particle(int(pdg)).charge
    return float("nan") if c is None else float(c)


def _lookup(pid, fn) -> np.ndarray:
    pid = np.asarray(pid, dtype=np.int64)
    uniq, inv = np.unique(pid, return_inverse=True)
    vals = np.array([fn(int(u)) for u in uniq], dtype=np.float64)
    return vals[inv].reshape(pid.shape)


def pdg_mass(pid) -> np.ndarray:
    """PDG mass (MeV/c²) of each PDG id (``particle`` is asked once per distinct id).

    Raises:
        ConfigurationError: an id the ``particle`` package does not know.
    """
    return _lookup(pid, particle_mass)


def pdg_charge(pid) -> np.ndarray:
    """Electric charge (units of e) of each PDG id.

    Raises:
        ConfigurationError: an id the ``particle`` package does not know.
    """
    return _lookup(pid, _particle_charge)
