"""A trained PID model on disk: load it, generate targets for conditions, export it to ONNX.

A PID model directory (see :mod:`mambah.modeldir`) holds

* ``generator.keras`` — ``G([conditions, noise]) -> targets`` in the preprocessed (Gaussianised)
  space, standard Keras layers only (loaded with ``safe_mode=True``);
* ``arrays.npz`` — the quantile-transform knots of conditions (``cond_knots``, ``cond_probs``) and
  targets (``targ_knots``, ``targ_probs``), one row per column;
* ``card.json`` — kind ``"pid"``, species, conditions and targets (name, unit, quantity), the
  noise dimension, training data, hyperparameters and validation metrics.

Conditions may include outputs of other PID models and there may be several targets, so models
can be chained (e.g. isMuon -> muon likelihoods -> combined DLLs).

Example:
    >>> m = PidModel.load("models/pid-p-dllp-lhcb-run3")          # doctest: +SKIP
    >>> out = m.generate(df[m.conditions], seed=1)                 # doctest: +SKIP
    >>> out["DLLp"]                                                # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from mambah.errors import ModelDirError
from mambah.errors import OutOfRangeWarning  # noqa: F401  (re-exported: mambah.nn.pidmodel.OutOfRangeWarning)
from mambah.modeldir import load_arrays, load_network, verify_model_dir
from mambah.nn.model import QuantileConditionedModel
from mambah.nn.preprocessing import QuantileGaussianizer

log = logging.getLogger(__name__)

__all__ = ["PidModel", "OutOfRangeWarning"]


class PidModel(QuantileConditionedModel):
    """A loaded PID model (card kind ``"pid"``): ``generate(conditions) -> targets``.

    A :class:`~mambah.nn.model.Model`: conditions Gaussianised by :attr:`cond_pre`, range checked
    on their raw values, the structured :class:`~mambah.errors.OutOfRangeWarning` when outside.

    Attributes:
        path: the model directory.
        card: its card (dict).
        conditions, targets: column names, in the network's order.
        cond_pre, targ_pre: the quantile transforms of the conditions and of the targets.
        generator: the Keras generator ``G([conditions, noise])`` (preprocessed space).
        n_noise: noise dimension of the generator.
    """

    kind = "pid"

    def __init__(self, generator, cond_pre: QuantileGaussianizer, targ_pre: QuantileGaussianizer, card: dict,
                 path: str | os.PathLike | None = None):
        super().__init__(cond_pre, card, path)
        self.generator = generator
        self.targ_pre = targ_pre
        self.n_noise = int(card["hyperparameters"]["n_noise"])

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | os.PathLike) -> PidModel:
        """Load a model directory (hashes checked, Keras safe mode, no pickle)."""
        path = Path(path)
        card = verify_model_dir(path)
        if card.get("kind") != "pid":
            raise ModelDirError(f"{str(path)!r} holds a {card.get('kind')!r} model, not a 'pid' model")
        for key in ("conditions", "targets", "hyperparameters"):
            if key not in card:
                raise ModelDirError(f"the card of {str(path)!r} lacks {key!r}")
        if "n_noise" not in card["hyperparameters"]:
            raise ModelDirError(f"the card of {str(path)!r} lacks hyperparameters.n_noise")
        arrays = load_arrays(path)
        cond_pre = QuantileGaussianizer.from_arrays(arrays, "cond")
        targ_pre = QuantileGaussianizer.from_arrays(arrays, "targ")
        gen = load_network(path, "generator")
        m = cls(gen, cond_pre, targ_pre, card, path)
        if cond_pre.knots_.shape[0] != len(m.conditions) or targ_pre.knots_.shape[0] != len(m.targets):
            raise ModelDirError(f"{str(path)!r}: the preprocessing arrays do not match the card's conditions/targets")
        return m

    # ------------------------------------------------------------- inference
    def generate_array(self, conditions: np.ndarray, seed=None, chunk: int | None = None, *,
                       check_range: bool = True, counts: list | None = None) -> np.ndarray:
        """Targets (n, n_targets), float64 in raw units, for raw conditions (n, n_conditions).

        One compiled TensorFlow graph per chunk does the condition transform, the noise, the network
        and the inverse transform (:func:`mambah.nn.inference.generate`). ``seed`` is an int, a numpy
        Generator (advanced: the noise uniforms are drawn from it in row order) or None; the result
        does not depend on ``chunk``. A spike in a target (repeated knots) comes out as exactly its
        value. Warns (:class:`OutOfRangeWarning`) for conditions outside the training range; refuses
        NaN/inf conditions (:class:`~mambah.errors.DataError`). ``check_range=False``: no warning
        (for a caller that counts the rows outside itself, with :meth:`check_range`). ``counts``: a
        list that receives the :class:`~mambah.nn.model.RangeCounts`, counted in the same compiled
        pass, instead of the warning.
        """
        from mambah.nn.inference import DEFAULT_CHUNK, generate

        return generate(self, conditions, seed, chunk=DEFAULT_CHUNK if chunk is None else chunk,
                        check_range=check_range, counts=counts)

    def generate(self, data, seed=None, *, drop_nonfinite: bool = False) -> pd.DataFrame:
        """Generate the targets for every row of ``data`` (DataFrame with the condition columns, or an array).

        Returns a DataFrame with one column per target (the card's names), indexed like ``data``.
        Rows with NaN/inf conditions are refused (or dropped with ``drop_nonfinite=True``).
        """
        c, index = self.as_conditions(data, drop_nonfinite)
        y = self.generate_array(c, seed)
        return pd.DataFrame({t: y[:, j] for j, t in enumerate(self.targets)}, index=index)

    # ----------------------------------------------------------------- export
    def export_onnx(self, path: str | os.PathLike) -> Path:
        """Write the generator (inputs ``conditions`` and ``noise``, preprocessed space) as ONNX.

        The preprocessing (``arrays.npz``) stays outside: apply the quantile transforms around it.
        """
        from mambah import extras

        extras.onnx()
        tf2onnx = extras.tf2onnx()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        import tensorflow as tf

        spec = [tf.TensorSpec([None, len(self.conditions)], tf.float32, name="conditions"),
                tf.TensorSpec([None, self.n_noise], tf.float32, name="noise")]
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            fn = tf.function(lambda c, z: self.generator([c, z], training=False), input_signature=spec)
            tf2onnx.convert.from_function(fn, input_signature=spec, opset=17, output_path=str(tmp))
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path
