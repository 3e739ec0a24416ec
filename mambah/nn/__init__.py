"""Neural networks of mambah: the conditional Cramér GAN for PID variables.

* :mod:`mambah.nn.cramer` — :class:`CramerGAN`, the Keras 3 model (sWeighted energy-distance losses);
* :mod:`mambah.nn.layers` — generator and critic builders (MLPs, optional residual blocks);
* :mod:`mambah.nn.preprocessing` — :class:`QuantileGaussianizer`, the weighted quantile transform
  stored as arrays;
* :mod:`mambah.training.gan` — :class:`GANConfig` and :class:`CramerGANTrainer` (the fit loop: EMA,
  learning-rate decay, best checkpoint by BDT-KS, early stopping, resume);
* :mod:`mambah.nn.pidmodel` — :class:`PidModel` (load a model directory, ``generate``, ONNX export);
* :mod:`mambah.nn.flags` — :class:`FlagModel`, :class:`FlagTrainer`: the sWeighted Bernoulli
  classifier of PID flags (isMuon, hasRich), evaluated in numpy.

Names are imported lazily so that ``import mambah.nn`` does not load TensorFlow.
"""

from __future__ import annotations

from mambah._lazy import lazy_attributes

_LAZY = {
    "CramerGAN": "mambah.nn.cramer",
    "QuantileGaussianizer": "mambah.nn.preprocessing",
    "PidModel": "mambah.nn.pidmodel",
    "OutOfRangeWarning": "mambah.nn.pidmodel",
    "save_pid_model": "mambah.nn.pidmodel",
    "FlagModel": "mambah.nn.flags",
    "FlagTrainer": "mambah.nn.flags",
    "FlagConfig": "mambah.nn.flags",
    "save_flag_model": "mambah.nn.flags",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_attributes('mambah.nn', _LAZY, globals(), __all__)
