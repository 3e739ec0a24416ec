"""Bernoulli PID flags (``isMuon``, ``hasRich`` ...): the loaded sWeighted classifier.

A flag model gives ``P(flag_k = 1 | conditions)`` for one or more 0/1 target columns: a multilayer
perceptron on the Gaussianised conditions (:class:`~mambah.nn.preprocessing.QuantileGaussianizer`,
``mode="mid"``) with one sigmoid output per flag, trained on sWeighted data by
:class:`mambah.training.flags.FlagTrainer` (the loss, and why its minimiser is the signal's flag
probability, are documented there). This is how LHCb's flash simulation (Lamarr) models
``isMuon``: a classifier, not a thresholded GAN output, so that the efficiency of the flag
requirement is the model's probability.

The flags are sampled independently given the conditions (correlations between flags only through
the conditions).

A model directory (see :mod:`mambah.modeldir`) of kind ``"pid-flags"`` holds

* ``classifier.keras`` — the network with sigmoid outputs, standard ``Dense`` layers only (loads
  with ``safe_mode=True``; input: the Gaussianised conditions);
* ``arrays.npz`` — the quantile knots of the conditions (``cond_knots``, ``cond_probs``) and the
  same network's weights as plain arrays (``net_w0``, ``net_b0``, ...), so that using the model
  needs numpy only (no TensorFlow);
* ``card.json`` — conditions, targets, the network's layers, training data, hyperparameters and
  validation metrics (weighted BCE, efficiency closure in bins of the first condition).

Example:
    >>> m = FlagModel.load("models/pid-mu-flags")                     # doctest: +SKIP
    >>> prob = m.probabilities(df[m.conditions])                      # doctest: +SKIP
    >>> flags = m.sample(df[m.conditions], np.random.default_rng(1))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from mambah.errors import ConfigurationError, ModelDirError
from mambah.modeldir import load_arrays, load_network, verify_model_dir
from mambah.nn.model import QuantileConditionedModel
from mambah.nn.preprocessing import QuantileGaussianizer

log = logging.getLogger(__name__)

__all__ = ["KIND", "NETWORK", "FlagModel"]

#: ``kind`` of the card of a flag model directory.
KIND = "pid-flags"
#: name of the network file in the model directory (``classifier.keras``).
NETWORK = "classifier"


# ------------------------------------------------------------------------------------ the model
class FlagModel(QuantileConditionedModel):
    """A loaded flag model (card kind ``"pid-flags"``): ``probabilities(conditions)`` and
    ``sample(conditions, rng)``.

    A :class:`~mambah.nn.model.Model` like the GANs (:class:`~mambah.nn.pidmodel.PidModel`): the
    same condition preprocessing, range check and :class:`~mambah.errors.OutOfRangeWarning`.
    Evaluation is numpy only (float32 matrix products on chunks of rows, in threads; see
    :func:`mambah.nn.dense.map_row_chunks`), no TensorFlow.

    Attributes:
        path: the model directory.
        card: its card (dict).
        conditions, targets: column names, in the network's order.
        cond_pre: the conditions' :class:`~mambah.nn.preprocessing.QuantileGaussianizer`.
        net: the :class:`~mambah.nn.dense.DenseStack` (Gaussianised conditions -> probabilities).
    """

    kind = KIND

    def __init__(self, net, cond_pre: QuantileGaussianizer, card: dict, path: str | os.PathLike | None = None):
        super().__init__(cond_pre, card, path)
        self.net = net
        # fill the transform's per-column cache now, so that threads only read it
        self.cond_pre.transform(np.asarray(cond_pre.range_()[0])[None, :], mode="mid")

    @classmethod
    def load(cls, path: str | os.PathLike) -> FlagModel:
        """Load a ``"pid-flags"`` model directory (hashes checked; numpy only, no pickle)."""
        from mambah.nn.dense import ACTIVATIONS, DenseStack

        path = Path(path)
        card = verify_model_dir(path)
        if card.get("kind") != KIND:
            raise ModelDirError(f"{str(path)!r} holds a {card.get('kind')!r} model, not a {KIND!r} model")
        layers = (card.get("network") or {}).get("layers")
        if not isinstance(layers, list) or not layers:
            raise ModelDirError(f"the card of {str(path)!r} lacks network.layers")
        arrays = load_arrays(path)
        cond_pre = QuantileGaussianizer.from_arrays(arrays, "cond")
        stack = []
        for i, layer in enumerate(layers):
            try:
                wt, b, act = arrays[f"net_w{i}"], arrays[f"net_b{i}"], layer["activation"]
            except (KeyError, TypeError) as e:
                raise ModelDirError(f"{str(path)!r}: network layer {i} is incomplete (missing {e})") from None
            if act not in ACTIVATIONS:
                raise ModelDirError(f"{str(path)!r}: layer {i} has the unsupported activation {act!r}")
            if wt.ndim != 2 or b.shape != (wt.shape[1],) or (stack and stack[-1][0].shape[1] != wt.shape[0]):
                raise ModelDirError(f"{str(path)!r}: the weights of network layer {i} have inconsistent shapes "
                                    f"{wt.shape}, {b.shape}")
            stack.append((wt, b, act))
        if any(k.startswith("net_w") and k[5:].isdigit() and int(k[5:]) >= len(layers) for k in arrays):
            raise ModelDirError(f"{str(path)!r}: arrays.npz holds more network layers than the card lists")
        net = DenseStack(stack)
        m = cls(net, cond_pre, card, path)
        if cond_pre.knots_.shape[0] != len(m.conditions) or net.n_in != len(m.conditions) \
                or net.n_out != len(m.targets):
            raise ModelDirError(f"{str(path)!r}: the preprocessing or the network do not match the card's "
                                f"{len(m.conditions)} conditions and {len(m.targets)} targets")
        return m

    def keras_network(self):
        """The saved Keras network (``classifier.keras``, safe mode; imports TensorFlow)."""
        if self.path is None:
            raise ModelDirError("this FlagModel was not loaded from a directory")
        return load_network(self.path, NETWORK)

    # -------------------------------------------------------------------------- inference
    def probabilities(self, data, *, drop_nonfinite: bool = False, check_range: bool = True) -> np.ndarray:
        """``P(flag_k = 1)`` for each row: float64 array (n, n_targets), targets in the card's order.

        Args:
            data: raw conditions (units of the card, e.g. P in MeV/c): an array (n, n_conditions)
                in the card's order, or a DataFrame holding the condition columns.
            drop_nonfinite: drop rows with NaN/inf conditions instead of refusing them.

        Conditions outside the training range give an :class:`~mambah.errors.OutOfRangeWarning`
        (unless ``check_range=False``) and are evaluated at the range's edges.
        """
        from mambah.nn.dense import map_row_chunks

        c, _ = self.as_conditions(data, drop_nonfinite)
        if check_range:
            self.warn_out_of_range(self.check_range(c))
        if len(c) == 0:
            return np.empty((0, len(self.targets)))
        return map_row_chunks(lambda cc, i: self.net(self.preprocess(cc)), len(c), c).astype(float)

    def sample(self, data, rng: np.random.Generator, *, compiled: bool = True, check_range: bool = True,
               counts: list | None = None) -> np.ndarray:
        """Flags drawn from :meth:`probabilities`: float array (n, n_targets) of 0.0/1.0.

        The flags of a row are drawn independently (one uniform number per row and flag from ``rng``,
        row-major), so the result depends only on ``rng``'s state, not on the number of threads.

        Args:
            compiled: evaluate transform, network and draw in one compiled TensorFlow graph per chunk
                (:func:`mambah.nn.inference.sample_flags`; 3-5x faster than numpy for the 14 inputs of
                the RICH-threshold-conditioned classifiers); False: the numpy :meth:`probabilities`
                (needs no TensorFlow). The two draw the same uniforms and differ only where a uniform
                lies within float32 round-off (~1e-6) of the probability.
            check_range: warn (:class:`~mambah.errors.OutOfRangeWarning`) for conditions outside the
                training range (False: for a caller that counts them itself, :meth:`check_range`).
            counts: a list that receives the :class:`~mambah.nn.model.RangeCounts` of the conditions
                outside the training range instead of the warning (counted in the same compiled pass).
        """
        if not isinstance(rng, np.random.Generator):
            raise ConfigurationError(f"rng must be a numpy.random.Generator, not {type(rng).__name__}")
        if not compiled:
            if counts is not None:
                c, _ = self.as_conditions(data, False)
                counts.append(self.check_range(c))
                check_range = False
            prob = self.probabilities(data, check_range=check_range)
            return (rng.random(prob.shape) < prob).astype(float)
        from mambah.nn.inference import sample_flags

        c, _ = self.as_conditions(data, False)
        return sample_flags(self, c, rng, check_range=check_range, counts=counts)

    def generate(self, data, rng: np.random.Generator) -> pd.DataFrame:
        """Sampled flags as a DataFrame (one 0.0/1.0 column per target), indexed like ``data``."""
        y = self.sample(data, rng)
        index = data.index if isinstance(data, pd.DataFrame) else None
        return pd.DataFrame({t: y[:, j] for j, t in enumerate(self.targets)}, index=index)
