"""Particle names -> PDG properties, through the ``particle`` package.

A name is resolved, in this order, as

1. a PDG name of ``particle`` (``Particle.from_name``: ``"J/psi(1S)"``, ``"K(S)0"``, ``"Lambda(c)+"``);
2. an EvtGen name, the names LHCb decay files use (``Particle.from_evtgen_name``: ``"Lambda_b0"``,
   ``"Lambda_c+"``, ``"J/psi"``, ``"K_S0"``, ``"D_s+"``, ``"p+"``, ``"anti-nu_mu"``, ``"K*0"``);
3. one of the common LHCb aliases of :data:`ALIASES` (``"K0S"``, ``"KS0"``, ``"Lambda_b"``...).

Anything else raises :class:`~mambah.errors.UnknownParticleError` listing the closest known names.
Masses and widths are in MeV, lifetimes in ns and ``ctau`` in mm (the ``particle`` package's
units, which are the LHCb ones).
"""

from __future__ import annotations

import dataclasses
import functools
import math

from mambah.errors import UnknownParticleError, closest

__all__ = ["ParticleInfo", "resolve", "known_names", "ALIASES", "C_MM_PER_NS"]

#: Speed of light in mm/ns (exact, SI definition of the metre).
C_MM_PER_NS = 299.792458

#: Common LHCb spellings that are neither PDG nor EvtGen names -> the PDG name they stand for.
#: (EvtGen names such as ``Lambda_b0``, ``Lambda_c+``, ``J/psi``, ``K_S0``, ``D_s+``, ``p+``,
#: ``anti-nu_mu`` are accepted directly through ``Particle.from_evtgen_name``.)
ALIASES: dict[str, str] = {
    "K0S": "K(S)0",
    "KS0": "K(S)0",
    "KS": "K(S)0",
    "K0L": "K(L)0",
    "KL0": "K(L)0",
    "Jpsi": "J/psi(1S)",
    "psi(1S)": "J/psi(1S)",
    "psi2S": "psi(2S)",
    "Lambda_b": "Lambda(b)0",
    "Lb": "Lambda(b)0",
    "Lb0": "Lambda(b)0",
    "Lambda_bbar0": "Lambda(b)~0",
    "Lambda_c": "Lambda(c)+",
    "Lc+": "Lambda(c)+",
    "Lc": "Lambda(c)+",
    "Lambda": "Lambda",
    "Lambda~0": "Lambda~",
    "Lambdabar0": "Lambda~",
    "Bs0": "B(s)0",
    "B_s": "B(s)0",
    "Bsbar0": "B(s)~0",
    "Bc+": "B(c)+",
    "Ds+": "D(s)+",
    "Ds-": "D(s)-",
    "p~-": "p~",
    "pbar-": "p~",
    "pbar": "p~",
    "nu_mu~": "nu(mu)~",
    "nu_e~": "nu(e)~",
    "nu_tau~": "nu(tau)~",
    "anti-nu_mu~": "nu(mu)~",
    "phi": "phi(1020)",
    "Kst0": "K*(892)0",
    "Kst~0": "K*(892)~0",
    "Kstbar0": "K*(892)~0",
    "rho0": "rho(770)0",
    "Dst+": "D*(2010)+",
    "Dst-": "D*(2010)-",
}


@dataclasses.dataclass(frozen=True)
class ParticleInfo:
    """What the generator needs to know about one particle species.

    Attributes:
        name: the name as written by the user.
        pdg_name: the PDG name in the ``particle`` package.
        pid: PDG Monte Carlo id.
        mass: nominal mass (MeV); 0 for neutrinos and the photon.
        width: total width (MeV); 0 when unknown or for stable particles.
        lifetime: mean proper lifetime (ns); ``inf`` for stable particles.
        charge: electric charge in units of e.
        self_conjugate: the particle is its own antiparticle.
        anti_pid: PDG id of the antiparticle (``pid`` when self-conjugate).
    """

    name: str
    pdg_name: str
    pid: int
    mass: float
    width: float
    lifetime: float
    charge: int
    self_conjugate: bool
    anti_pid: int

    @property
    def stable(self) -> bool:
        """True for particles that never decay (p, e, gamma, neutrinos: infinite lifetime)."""
        return math.isinf(self.lifetime)

    @property
    def ctau(self) -> float:
        """Mean proper decay length c*tau (mm)."""
        return C_MM_PER_NS * self.lifetime

    def conjugate(self) -> "ParticleInfo":
        """The antiparticle (itself when self-conjugate)."""
        if self.self_conjugate:
            return self
        return _info_from_pid(self.anti_pid, None)


def _from_particle(p, written: str | None) -> ParticleInfo:
    mass = float(p.mass) if p.mass is not None else 0.0
    width = float(p.width) if p.width is not None else 0.0
    lifetime = p.lifetime
    if lifetime is None:
        lifetime = math.inf if width == 0.0 else 6.582119569e-13 / width  # hbar [MeV ns] / Gamma
    return ParticleInfo(
        name=written if written is not None else p.name,
        pdg_name=p.name,
        pid=int(p.pdgid),
        mass=mass,
        width=width,
        lifetime=float(lifetime),
        charge=int(round(float(p.charge))),
        self_conjugate=bool(p.is_self_conjugate),
        anti_pid=int(p.pdgid) if p.is_self_conjugate else -int(p.pdgid),
    )


@functools.lru_cache(maxsize=None)
def _info_from_pid(pid: int, written: str | None) -> ParticleInfo:
    from particle import Particle

    return _from_particle(Particle.from_pdgid(pid), written)


@functools.lru_cache(maxsize=None)
def _tables() -> tuple[dict[str, int], dict[str, int]]:
    """PDG name -> PDG id and EvtGen name -> PDG id for every particle of ``particle`` (built once;
    ``Particle.from_name`` scans the whole table for each unknown name, which is slow)."""
    from particle import Particle

    pdg: dict[str, int] = {}
    evtgen: dict[str, int] = {}
    for p in Particle.all():
        pdg.setdefault(p.name, int(p.pdgid))
        try:
            ev = p.evtgen_name
        except Exception:  # noqa: BLE001 - particle raises various errors for names it lacks
            ev = None
        if ev:
            evtgen.setdefault(ev, int(p.pdgid))
    return pdg, evtgen


@functools.lru_cache(maxsize=None)
def known_names() -> tuple[str, ...]:
    """Every accepted name: PDG names, EvtGen names and :data:`ALIASES` (for suggestions)."""
    pdg, evtgen = _tables()
    return tuple(sorted(set(pdg) | set(evtgen) | set(ALIASES)))


@functools.lru_cache(maxsize=4096)
def resolve(name: str) -> ParticleInfo:
    """The :class:`ParticleInfo` of ``name`` (PDG name, EvtGen name or LHCb alias).

    Raises:
        UnknownParticleError: the name is none of those; the message lists close known names.
    """
    if not isinstance(name, str) or not name.strip():
        raise UnknownParticleError(f"a particle name must be a non-empty string, not {name!r}")
    pdg, evtgen = _tables()
    pid = pdg.get(name)
    if pid is None:
        pid = evtgen.get(name)
    if pid is None and name in ALIASES:
        pid = pdg.get(ALIASES[name])
    if pid is not None:
        return _info_from_pid(pid, name)
    near = closest(name, known_names(), n=6)
    hint = f"; did you mean {', '.join(map(repr, near))}?" if near else ""
    raise UnknownParticleError(
        f"unknown particle {name!r}: not a PDG name of the 'particle' package, an EvtGen name or an "
        f"alias of mambah.generation.particles.ALIASES{hint}"
    )
