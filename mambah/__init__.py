"""mambah: ultra-fast simulation of an LHCb-like detector with trained networks.

``import mambah`` is light: the public names below are imported on first use, so TensorFlow is
loaded only by the code that runs a network.
"""

from __future__ import annotations

from mambah._lazy import lazy_attributes

from mambah import log as _log  # noqa: F401  (installs the NullHandler)
from mambah._version import __version__

#: public name -> module that defines it (imported lazily on first attribute access)
_LAZY = {
    # the batch, pipelines and productions
    "Batch": "mambah.batch",
    "Pipeline": "mambah.pipeline",
    "standard_pipeline": "mambah.simulation",
    "cocktail_pipeline": "mambah.simulation",
    "run_production": "mambah.production",
    "get_rng": "mambah.random",
    # the event store
    "Store": "mambah.store",
    # generation
    "ParticleGun": "mambah.generation.gun",
    "PhaseSpaceDecay": "mambah.generation.decay",
    "EtaAcceptance": "mambah.generation.decay",
    "generator_stages": "mambah.generation.decay",
    "parse_descriptor": "mambah.generation.descriptor",
    # reconstruction stages
    "Occupancy": "mambah.reconstruction",
    "Efficiency": "mambah.reconstruction",
    "Resolution": "mambah.reconstruction",
    "Composites": "mambah.reconstruction",
    "PID": "mambah.pid.stage",
    # models
    "PidModel": "mambah.nn.pidmodel",
    "load_chain": "mambah.pid.chain",
    "fit_sweights": "mambah.training.splot",
    # validation
    "bdt_ks_score": "mambah.validation",
    "validate": "mambah.validation",
    # data
    "read_table": "mambah.io",
    "write_table": "mambah.io",
    "MambahError": "mambah.errors",
}

__all__ = ["__version__", *sorted(_LAZY)]


__getattr__, __dir__ = lazy_attributes('mambah', _LAZY, globals(), __all__)
