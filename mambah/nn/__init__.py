"""Neural networks of mambah: the conditional Cramér GAN for PID variables.

* :mod:`mambah.nn.cramer` — :class:`CramerGAN`, the Keras 3 model (sWeighted energy-distance losses);
* :mod:`mambah.nn.layers` — generator and critic builders (MLPs, optional residual blocks);
* :mod:`mambah.nn.preprocessing` — :class:`QuantileGaussianizer`, the weighted quantile transform
  stored as arrays;
* :mod:`mambah.nn.train` — :class:`GANConfig` and :class:`CramerGANTrainer` (the fit loop: EMA,
  learning-rate decay, best checkpoint by BDT-KS, early stopping, resume);
* :mod:`mambah.nn.pidmodel` — :class:`PidModel` (load a model directory, ``generate``, ONNX export).

Names are imported lazily so that ``import mambah.nn`` does not load TensorFlow.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "CramerGAN": "mambah.nn.cramer",
    "QuantileGaussianizer": "mambah.nn.preprocessing",
    "GANConfig": "mambah.nn.train",
    "CramerGANTrainer": "mambah.nn.train",
    "PidModel": "mambah.nn.pidmodel",
    "OutOfRangeWarning": "mambah.nn.pidmodel",
    "save_pid_model": "mambah.nn.pidmodel",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'mambah.nn' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(__all__) | set(globals()))
