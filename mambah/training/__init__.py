"""Every fit of mambah: GANs, flag classifiers, tracking networks, occupancy, sPlot.

* :mod:`mambah.training.gan` — :class:`GANConfig`, :class:`CramerGANTrainer` (the Cramér GAN fit
  loop: EMA, learning-rate decay, checkpoint selection by BDT-KS, early stopping, resume; optional
  per-row weight multipliers and a :class:`GANInit` start) and :func:`save_pid_model`;
* :mod:`mambah.training.ensemble` — :func:`train_ensemble` (the nominal GAN plus K members on
  Poisson(1) bootstrap replicas, from scratch or warm-started) and :class:`PidEnsemble` (one model
  directory with ``members/``, one card);
* :mod:`mambah.training.flags` — :class:`FlagConfig`, :class:`FlagTrainer` (the sWeighted
  Bernoulli classifier of PID flags), :func:`save_flag_model` and the scores on its card;
* :mod:`mambah.training.tracking` — :func:`fit_efficiency`, :func:`fit_resolution` (the tracking
  networks) and their closures;
* :mod:`mambah.training.occupancy` — :func:`build_occupancy_model` (the histogram of tracks per
  event);
* :mod:`mambah.training.splot` — sWeights from an extended fit (zfit + hepstats).

The trained models themselves (what a simulation loads) are in :mod:`mambah.nn`. Names are
imported lazily so that ``import mambah.training`` does not load TensorFlow.
"""

from __future__ import annotations

from mambah._lazy import lazy_attributes

_LAZY = {
    "GANConfig": "mambah.training.gan",
    "CramerGANTrainer": "mambah.training.gan",
    "save_pid_model": "mambah.training.gan",
    "set_determinism": "mambah.training.gan",
    "GANInit": "mambah.training.gan",
    "PidEnsemble": "mambah.training.ensemble",
    "train_ensemble": "mambah.training.ensemble",
    "FlagConfig": "mambah.training.flags",
    "FlagTrainer": "mambah.training.flags",
    "save_flag_model": "mambah.training.flags",
    "fit_efficiency": "mambah.training.tracking",
    "fit_resolution": "mambah.training.tracking",
    "fit_trackstate": "mambah.training.trackstate",
    "build_occupancy_model": "mambah.training.occupancy",
    "fit_sweights": "mambah.training.splot",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_attributes("mambah.training", _LAZY, globals(), __all__)
