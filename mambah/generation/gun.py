"""ParticleGun: one heavy-flavour hadron per event, from a smeared primary vertex.

For each event the gun draws

- the hadron's transverse momentum pT (MeV) and pseudorapidity eta from the production spectra
  (LHCb-like defaults of :mod:`mambah.generation.spectra`, or the user's), and a uniform azimuth;
- the primary vertex (mm, ns) from independent Gaussians around the luminous region;
- the hadron's proper decay time (ns) from an exponential with its PDG mean lifetime.

It writes ``batch.arrays["gun"]`` (float64 arrays, used by :class:`PhaseSpaceDecay`) and the
``events`` table, plus a one-particle ``mc_particles``/``mc_vertices`` (the head and the PV) so
that the gun alone already gives a complete, if undecayed, generator level.

Default luminous region (approximate LHCb Run 2/3 values, configurable): sigma_x = sigma_y =
0.040 mm (beam-spot size measured with the VELO, 30-50 um), sigma_z = 45 mm and sigma_t = 0.18 ns
(an r.m.s. bunch length of 7.5 cm, LHC Design Report Vol. 1 Table 2.1, gives sigma_z = 7.5 cm /
sqrt(2) = 53 mm and sigma_t = sigma_z / c = 0.18 ns for head-on collisions; the crossing angle
shortens sigma_z).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from mambah.errors import ConfigurationError, DescriptorError
from mambah.generation.particles import C_MM_PER_NS, ParticleInfo, resolve
from mambah.generation.spectra import Uniform, as_sampler, default_eta, default_pt

__all__ = ["ParticleGun", "DEFAULT_PV_SIGMA", "DEFAULT_PV_T_SIGMA"]

#: sigma_x, sigma_y, sigma_z of the luminous region (mm).
DEFAULT_PV_SIGMA: tuple[float, float, float] = (0.040, 0.040, 45.0)
#: sigma_t of the collision time (ns).
DEFAULT_PV_T_SIGMA: float = 0.18


def _head_name(particle: str) -> str:
    """The particle itself, or the head of a descriptor (``"[B+ -> ...]CC"`` -> ``"B+"``)."""
    if not isinstance(particle, str) or not particle.strip():
        raise ConfigurationError(f"ParticleGun needs a particle name or a decay descriptor, got {particle!r}")
    if "->" in particle:
        from mambah.generation.descriptor import parse_descriptor

        return parse_descriptor(particle).head.particle.name
    return particle.strip()


@dataclasses.dataclass(frozen=True)
class ParticleGun:
    """One hadron per event with LHCb-like (or user) kinematics and a displaced decay time.

    Args:
        particle: a particle name (``"Lambda_b0"``, ``"B+"``) or a decay descriptor (its head).
        pt: transverse-momentum spectrum (MeV): None for the default of the hadron's flavour, or
            anything :func:`~mambah.generation.spectra.as_sampler` accepts (number, sampler,
            ``(edges, counts)`` histogram, scipy distribution, ``f(n, rng)``).
        eta: pseudorapidity spectrum, the same forms.
        phi: azimuth spectrum (rad); default uniform in [-pi, pi).
        pv_mean: mean primary vertex (x, y, z) in mm.
        pv_sigma: Gaussian widths of the primary vertex (x, y, z) in mm.
        pv_t_sigma: Gaussian width of the collision time (ns) around 0.
        name: stage name (seeds its random stream).

    Example:
        >>> gun = ParticleGun("B+", pt=5000.0)        # fixed pT of 5 GeV, default eta
        >>> gun.config()["particle"]
        'B+'
    """

    particle: str
    pt: Any = None
    eta: Any = None
    phi: Any = None
    pv_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    pv_sigma: tuple[float, float, float] = DEFAULT_PV_SIGMA
    pv_t_sigma: float = DEFAULT_PV_T_SIGMA
    name: str = "gun"

    def __post_init__(self):
        head = _head_name(self.particle)
        try:
            info = resolve(head)
        except DescriptorError as exc:
            raise type(exc)(f"ParticleGun: {exc}") from None
        if info.mass <= 0:
            raise ConfigurationError(f"ParticleGun: {head!r} has no mass; give a massive hadron")
        pv_mean = tuple(float(v) for v in self.pv_mean)
        pv_sigma = tuple(float(v) for v in self.pv_sigma)
        if len(pv_mean) != 3 or len(pv_sigma) != 3 or min(pv_sigma) < 0 or float(self.pv_t_sigma) < 0:
            raise ConfigurationError(
                f"ParticleGun: pv_mean and pv_sigma must be 3 numbers (mm), sigmas >= 0, got {self.pv_mean!r}, "
                f"{self.pv_sigma!r}, pv_t_sigma={self.pv_t_sigma!r}"
            )
        object.__setattr__(self, "pv_mean", pv_mean)
        object.__setattr__(self, "pv_sigma", pv_sigma)
        object.__setattr__(self, "pv_t_sigma", float(self.pv_t_sigma))
        object.__setattr__(self, "pt", as_sampler(self.pt, "pt") if self.pt is not None else default_pt(info.pid))
        object.__setattr__(self, "eta", as_sampler(self.eta, "eta") if self.eta is not None else default_eta(info.pid))
        object.__setattr__(self, "phi", as_sampler(self.phi, "phi") if self.phi is not None else Uniform(-np.pi, np.pi))

    @property
    def info(self) -> ParticleInfo:
        return resolve(_head_name(self.particle))

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Draw ``n`` hadrons: ``p4`` (4, n) px, py, pz, E in MeV; ``pv`` (4, n) x, y, z (mm), t (ns);
        ``tau`` (n,) proper decay time (ns); ``pid`` (n,). All float64 except ``pid``."""
        info = self.info
        pt = self.pt.sample(n, rng)
        eta = self.eta.sample(n, rng)
        phi = self.phi.sample(n, rng)
        if np.any(pt < 0):
            raise ConfigurationError(f"ParticleGun: the pt spectrum {self.pt.config()} gave negative values")
        p4 = np.empty((4, n))
        p4[0] = pt * np.cos(phi)
        p4[1] = pt * np.sin(phi)
        p4[2] = pt * np.sinh(eta)
        p4[3] = np.sqrt(p4[0] ** 2 + p4[1] ** 2 + p4[2] ** 2 + info.mass**2)
        pv = np.empty((4, n))
        for i in range(3):
            pv[i] = rng.normal(self.pv_mean[i], self.pv_sigma[i], n) if self.pv_sigma[i] > 0 else self.pv_mean[i]
        pv[3] = rng.normal(0.0, self.pv_t_sigma, n) if self.pv_t_sigma > 0 else 0.0
        tau = rng.exponential(info.lifetime, n) if np.isfinite(info.lifetime) else np.full(n, np.inf)
        return {"p4": p4, "pv": pv, "tau": tau, "pid": np.full(n, info.pid, dtype=np.int64)}

    def __call__(self, batch):
        from mambah.generation._tables import fill_tables

        n = batch.n_events
        s = self.sample(n, batch.rng(self.name))
        batch.arrays["gun"] = {"stage": self, **s}
        info = self.info
        tree = [{"name": info.name, "pid": info.pid, "mother": -1, "children": [], "stable": True,
                 "charge": info.charge}]
        batch.info["decay_tree"] = tree
        batch.arrays["mc_p4"] = s["p4"].reshape(4, 1, n)
        batch.arrays["mc_vertices_xyzt"] = s["pv"].reshape(4, 1, n)
        fill_tables(batch, tree, s["pid"].reshape(1, n), s["p4"].reshape(4, 1, n), s["pv"].reshape(4, 1, n), None)
        return batch

    def config(self) -> dict[str, Any]:
        info = self.info
        return {
            "particle": info.name,
            "pid": info.pid,
            "mass_MeV": info.mass,
            "lifetime_ns": info.lifetime if np.isfinite(info.lifetime) else None,
            "pt": self.pt.config(),
            "eta": self.eta.config(),
            "phi": self.phi.config(),
            "pv_mean_mm": list(self.pv_mean),
            "pv_sigma_mm": list(self.pv_sigma),
            "pv_t_sigma_ns": self.pv_t_sigma,
            "c_mm_per_ns": C_MM_PER_NS,
        }
