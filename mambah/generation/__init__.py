"""Generator level: decay descriptors (with EvtGen-style decay models), the ParticleGun and the
PhaseSpaceDecay stage, which writes unweighted events by default (``unweight=False``: weighted).

>>> from mambah.generation import generator_stages
>>> gun, decay = generator_stages("B+ -> (J/psi(1S) -> mu+ mu- VLL) K+ SVS")

Importing this package does not import TensorFlow; ``phasespace`` is loaded on the first decay.
"""

from mambah.generation.decay import EtaAcceptance, PhaseSpaceDecay, boost_to_lab, generator_stages
from mambah.generation.descriptor import DecayNode, Descriptor, known_models, parse_descriptor
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
    "known_models",
    "parse_descriptor",
    "resolve",
]
