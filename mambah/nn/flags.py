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

A model may carry a **calibration** (``marginals.npz``, card section ``marginal_correction``; fitted by
``mambah train marginals``): per-bin logit shifts of its probabilities onto a calibration sample's
sWeighted flag rates in (P, ETA) bins (:class:`~mambah.nn.marginals.FlagCalibration`), applied in
:meth:`FlagModel.probabilities` and in every draw.

A model directory (see :mod:`mambah.modeldir`) of kind ``"pid-flags"`` holds

* ``classifier.keras`` — the network with sigmoid outputs, standard ``Dense`` layers only (loads
  with ``safe_mode=True``; input: the Gaussianised conditions);
* ``arrays.npz`` — the quantile knots of the conditions (``cond_knots``, ``cond_probs``) and the
  same network's weights as plain arrays (``net_w0``, ``net_b0``, ...), so that using the model
  needs numpy only (no TensorFlow);
* ``card.json`` — conditions, targets, the network's layers, training data, hyperparameters and
  validation metrics (weighted BCE, efficiency closure in bins of the first condition);
* optionally an **ensemble** (``mambah train flags --ensemble K``): members k = 1..K, classifiers of
  the same architecture on the same condition transform, fitted to bootstrap replicas of the
  training rows (Poisson(1) counts times the sWeights), as arrays ``m<kk>_net_w<i>``,
  ``m<kk>_net_b<i>`` in ``arrays.npz`` and the card's ``"ensemble"`` section (``members``, ``seeds``,
  ``bootstrap``). :meth:`FlagModel.sample_variations` draws the flags of the nominal and of every
  member with the same uniforms, so a member's flag differs from the nominal's only where its
  probability does.

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

__all__ = ["KIND", "NETWORK", "FlagModel", "member_prefix"]

#: ``kind`` of the card of a flag model directory.
KIND = "pid-flags"
#: name of the network file in the model directory (``classifier.keras``).
NETWORK = "classifier"


def member_prefix(k: int) -> str:
    """The prefix of ensemble member ``k``'s arrays in ``arrays.npz`` (``m01_`` for k = 1)."""
    return f"m{int(k):02d}_"


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

    def __init__(self, net, cond_pre: QuantileGaussianizer, card: dict, path: str | os.PathLike | None = None,
                 member_nets: list | None = None, member_index: int = 0):
        super().__init__(cond_pre, card, path)
        self.net = net
        self.member_nets = list(member_nets or [])
        #: 0 for the nominal, k for ensemble member k (:meth:`member`): which calibration shifts apply
        self.member_index = int(member_index)
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

        def network(prefix: str, what: str):
            stack = []
            for i, layer in enumerate(layers):
                try:
                    wt, b, act = arrays[f"{prefix}net_w{i}"], arrays[f"{prefix}net_b{i}"], layer["activation"]
                except (KeyError, TypeError) as e:
                    raise ModelDirError(f"{str(path)!r}: {what} layer {i} is incomplete (missing {e})") from None
                if act not in ACTIVATIONS:
                    raise ModelDirError(f"{str(path)!r}: layer {i} has the unsupported activation {act!r}")
                if wt.ndim != 2 or b.shape != (wt.shape[1],) or (stack and stack[-1][0].shape[1] != wt.shape[0]):
                    raise ModelDirError(f"{str(path)!r}: the weights of {what} layer {i} have inconsistent shapes "
                                        f"{wt.shape}, {b.shape}")
                stack.append((wt, b, act))
            n_i = len(prefix) + 5
            if any(k.startswith(f"{prefix}net_w") and k[n_i:].isdigit() and int(k[n_i:]) >= len(layers) for k in arrays):
                raise ModelDirError(f"{str(path)!r}: arrays.npz holds more {what} layers than the card lists")
            return DenseStack(stack)

        net = network("", "network")
        ens = card.get("ensemble")
        k = ens.get("members", 0) if isinstance(ens, dict) else 0
        if not isinstance(k, int) or k < 0:
            raise ModelDirError(f"{str(path)!r}: the card's ensemble.members is {k!r}, not a count")
        members = [network(member_prefix(j), f"ensemble member {j}") for j in range(1, k + 1)]
        if any(key.startswith("m") and key[1:3].isdigit() and int(key[1:3]) > k for key in arrays):
            raise ModelDirError(f"{str(path)!r}: arrays.npz holds ensemble members the card does not list ({k})")
        m = cls(net, cond_pre, card, path, member_nets=members)
        for n_ in [net, *members]:
            if cond_pre.knots_.shape[0] != len(m.conditions) or n_.n_in != len(m.conditions) \
                    or n_.n_out != len(m.targets):
                raise ModelDirError(f"{str(path)!r}: the preprocessing or the networks do not match the card's "
                                    f"{len(m.conditions)} conditions and {len(m.targets)} targets")
        if "marginal_correction" in card:
            from mambah.nn.marginals import load_calibration

            m.set_correction(load_calibration(path))
        return m

    # -------------------------------------------------------------------------- ensemble
    @property
    def n_members(self) -> int:
        """The number K of ensemble members (0 without an ensemble)."""
        return len(self.member_nets)

    def member(self, k: int) -> FlagModel:
        """Member ``k`` (1..K) as a :class:`FlagModel` of its own (the same conditions, transform and
        card; cached), whose :meth:`sample` is the member's draw."""
        if not 1 <= int(k) <= self.n_members:
            raise ConfigurationError(f"flag model {self.card.get('name', self.path)!r} has {self.n_members} "
                                     f"ensemble members, not a member {k}")
        k = int(k)

        def make():
            m = FlagModel(self.member_nets[k - 1], self.cond_pre, self.card, self.path, member_index=k)
            m.correction = self.correction  # (member k's shifts: member_index)
            return m
        return self.memo(f"mambah.nn.flags.member{k}{'c' if self.correction is not None else ''}", make)

    def sample_member(self, k: int, data, rng: np.random.Generator, *, counts: list | None = None) -> np.ndarray:
        """Member ``k``'s flags (n, n_targets), drawing the uniforms from ``rng`` as :meth:`sample`
        does: with the same ``rng`` state as the nominal's, the same uniforms."""
        return self.member(k).sample(data, rng, check_range=False, counts=counts)

    def sample_variations(self, data, rng: np.random.Generator, *, counts: list | None = None) -> np.ndarray:
        """The flags of the nominal and of every member, with the same uniforms: (K + 1, n, n_targets),
        ``[0]`` the nominal's (exactly :meth:`sample`'s from the same ``rng`` state), ``[k]`` member
        k's. ``rng`` advances as for one :meth:`sample`."""
        if not self.n_members:
            raise ConfigurationError(f"flag model {self.card.get('name', self.path)!r} has no ensemble members")
        state = rng.bit_generator.state
        out = [self.sample(data, rng, counts=counts)]
        for k in range(1, self.n_members + 1):
            replay = np.random.Generator(type(rng.bit_generator)())
            replay.bit_generator.state = state
            out.append(self.sample_member(k, data, replay))
        return np.stack(out)

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
        prob = map_row_chunks(lambda cc, i: self.net(self.preprocess(cc)), len(c), c).astype(float)
        if self.correction is not None:
            prob = self.correction.apply(prob, c, self.conditions, self.targets, self.member_index)
        return prob

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
