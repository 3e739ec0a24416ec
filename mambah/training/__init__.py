"""Every fit of mambah: GANs, flag classifiers, tracking networks, occupancy, sPlot.

* :mod:`mambah.training.gan` — :class:`GANConfig`, :class:`CramerGANTrainer` (the Cramér GAN fit
  loop: EMA, learning-rate decay, checkpoint selection by BDT-KS, early stopping, resume);
* :mod:`mambah.training.splot` — sWeights from an extended fit (zfit + hepstats).

The trained models themselves (what a simulation loads) are in :mod:`mambah.nn`. Names are
imported lazily so that ``import mambah.training`` does not load TensorFlow.
"""

from __future__ import annotations

from mambah._lazy import lazy_attributes

_LAZY = {
    "GANConfig": "mambah.training.gan",
    "CramerGANTrainer": "mambah.training.gan",
    "fit_sweights": "mambah.training.splot",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_attributes("mambah.training", _LAZY, globals(), __all__)
