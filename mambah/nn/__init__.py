"""Networks and fast inference of mambah: the trained models a simulation loads.

* :mod:`mambah.nn.model` — :class:`Model`, the interface every trained model implements (card,
  name, version, hash, conditions, targets, preprocessing, training range, range check and the
  structured out-of-range warning);
* :mod:`mambah.nn.registry` — :func:`load_model`: any model by name or path, its kind from the
  card, cached by path and content hash;
* the kinds: :class:`PidModel` (:mod:`mambah.nn.pidmodel`, the conditional Cramér GAN; ONNX
  export), :class:`FlagModel` (:mod:`mambah.nn.flags`, the sWeighted Bernoulli classifier of PID
  flags), :class:`EfficiencyModel` and :class:`ResolutionModel` (:mod:`mambah.nn.tracking`),
  :class:`OccupancyModel` (:mod:`mambah.nn.occupancy`), :class:`TrackStateNet` (:mod:`mambah.nn.trackstate`:
  the track states' covariance, chi2 and ghost probability);
* building blocks: :mod:`mambah.nn.cramer` (:class:`CramerGAN`, the Keras 3 model),
  :mod:`mambah.nn.layers` (generator and critic builders), :mod:`mambah.nn.dense` (plain MLPs and
  their numpy evaluation), :mod:`mambah.nn.preprocessing` (:class:`QuantileGaussianizer`),
  :mod:`mambah.nn.inference` (compiled GAN and classifier inference).

Every fit (GANs, classifiers, tracking networks, occupancy) is in :mod:`mambah.training`. Names
are imported lazily so that ``import mambah.nn`` does not load TensorFlow.
"""

from __future__ import annotations

from mambah._lazy import lazy_attributes

_LAZY = {
    "Model": "mambah.nn.model",
    "RangeCounts": "mambah.nn.model",
    "load_model": "mambah.nn.registry",
    "CramerGAN": "mambah.nn.cramer",
    "QuantileGaussianizer": "mambah.nn.preprocessing",
    "PidModel": "mambah.nn.pidmodel",
    "OutOfRangeWarning": "mambah.errors",
    "FlagModel": "mambah.nn.flags",
    "EfficiencyModel": "mambah.nn.tracking",
    "ResolutionModel": "mambah.nn.tracking",
    "TrackStateNet": "mambah.nn.trackstate",
    "OccupancyModel": "mambah.nn.occupancy",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_attributes('mambah.nn', _LAZY, globals(), __all__)
