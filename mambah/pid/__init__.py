"""Particle identification: the per-species chain of trained models and the PID stage.

* :mod:`mambah.pid.chain` — :class:`PidChain`: per true species, flags -> muon -> RICH -> global
  steps, each a trained model, evaluated in large vectorised chunks;
* :mod:`mambah.pid.stage` — :class:`PID`, the pipeline stage that runs the chains on a batch's
  tracks.

Names are imported lazily so that ``import mambah.pid`` does not load TensorFlow.
"""

from __future__ import annotations

from mambah._lazy import lazy_attributes

_LAZY = {
    "PID": "mambah.pid.stage",
    "PidChain": "mambah.pid.chain",
    "load_chain": "mambah.pid.chain",
    "available_chains": "mambah.pid.chain",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_attributes("mambah.pid", _LAZY, globals(), __all__)
