"""Generator level: decay descriptors, the ParticleGun and the PhaseSpaceDecay stage.

>>> from mambah.generation import generator_stages
>>> gun, decay = generator_stages("B+ -> (J/psi(1S) -> mu+ mu-) K+")

Importing this package does not import TensorFlow; ``phasespace`` is loaded on the first decay.
"""

from mambah.generation.decay import EtaAcceptance, PhaseSpaceDecay, boost_to_lab, generator_stages
from mambah.generation.descriptor import DecayNode, Descriptor, parse_descriptor
from mambah.generation.gun import ParticleGun
from mambah.generation.particles import ALIASES, ParticleInfo, resolve
from mambah.generation.spectra import Fixed, Histogram, PowerLawPt, TruncatedGaussian, Uniform, as_sampler, default_eta, default_pt

__all__ = [
    "ALIASES",
    "DecayNode",
    "Descriptor",
    "EtaAcceptance",
    "Fixed",
    "Histogram",
    "ParticleGun",
    "ParticleInfo",
    "PhaseSpaceDecay",
    "PowerLawPt",
    "TruncatedGaussian",
    "Uniform",
    "as_sampler",
    "boost_to_lab",
    "default_eta",
    "default_pt",
    "generator_stages",
    "parse_descriptor",
    "resolve",
]
