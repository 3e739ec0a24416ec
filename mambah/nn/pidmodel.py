"""A trained PID model on disk: load it, generate targets for conditions, export it to ONNX.

A PID model directory (see :mod:`mambah.modeldir`) holds

* ``generator.keras`` — ``G([conditions, noise]) -> targets`` in the preprocessed (Gaussianised)
  space, standard Keras layers only (loaded with ``safe_mode=True``);
* ``arrays.npz`` — the quantile-transform knots of conditions (``cond_knots``, ``cond_probs``) and
  targets (``targ_knots``, ``targ_probs``), one row per column;
* ``card.json`` — kind ``"pid"``, species, conditions and targets (name, unit, quantity), the
  noise dimension, training data, hyperparameters and validation metrics;
* optionally an **ensemble** (``mambah train pid --ensemble K``): ``members/member-01.keras`` ...
  ``members/member-K.keras``, generators of the same architecture trained on bootstrap replicas of
  the calibration sample with the same preprocessing (``arrays.npz``), listed with their hashes in
  the card's ``files`` and described by its ``"ensemble"`` section (``members``, ``files``,
  ``seeds``, ``bootstrap``, ``warm_start``, cost per member; see
  :mod:`mambah.training.ensemble`). They are loaded on first use
  (:attr:`PidModel.members`); :meth:`PidModel.generate_variations` gives every target once per
  member, with the nominal's noise. A directory without members loads and generates as before.

Conditions may include outputs of other PID models and there may be several targets, so models
can be chained (e.g. isMuon -> muon likelihoods -> combined DLLs).

Example:
    >>> m = PidModel.load("models/pid-p-dllp-lhcb-run3")          # doctest: +SKIP
    >>> out = m.generate(df[m.conditions], seed=1)                 # doctest: +SKIP
    >>> out["DLLp"]                                                # doctest: +SKIP
    >>> v = m.generate_variations(df, seed=1)   # DLLp (== out["DLLp"]), DLLp_var1 ... DLLp_varK  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from mambah.errors import ConfigurationError, ModelDirError
from mambah.errors import OutOfRangeWarning  # noqa: F401  (re-exported: mambah.nn.pidmodel.OutOfRangeWarning)
from mambah.modeldir import load_arrays, load_network, verify_model_dir
from mambah.nn.model import QuantileConditionedModel
from mambah.nn.preprocessing import QuantileGaussianizer, condition_transform_from_arrays

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
        n_members: the number K of ensemble members (0 without an ensemble).

    Args:
        members: the members' Keras generators, for a model built in memory; ``None``: those the
            card's ``"ensemble"`` section lists, loaded from ``path`` on first use.
    """

    kind = "pid"

    def __init__(self, generator, cond_pre: QuantileGaussianizer, targ_pre: QuantileGaussianizer, card: dict,
                 path: str | os.PathLike | None = None, members: list | None = None):
        super().__init__(cond_pre, card, path)
        self.generator = generator
        self.targ_pre = targ_pre
        self.n_noise = int(card["hyperparameters"]["n_noise"])
        self._members = None if members is None else list(members)
        #: the marginal calibration (:mod:`mambah.nn.marginals`) applied to every output, or None
        self.correction = None
        if self._members is None and self.member_files and self.path is None:
            raise ModelDirError(f"model {self.name!r} lists {len(self.member_files)} ensemble members in its card "
                                "but has no directory to load them from; pass members=")

    # -------------------------------------------------------------- ensemble
    @property
    def member_files(self) -> list[str]:
        """The members' files as the card's ``ensemble.files`` lists them (``[]`` without an ensemble)."""
        return list(self.card.get("ensemble", {}).get("files", [])) if self._members is None else []

    @property
    def n_members(self) -> int:
        """The number K of ensemble members (0 for a model without an ensemble)."""
        return len(self._members) if self._members is not None else len(self.member_files)

    @property
    def members(self) -> list:
        """The ensemble members' Keras generators (loaded, hash-checked by :meth:`load`, on first use)."""
        if self._members is not None:
            return self._members

        def load_members():
            return [load_network(self.path, f[:-len(".keras")]) for f in self.member_files]

        return self.memo("mambah.nn.pidmodel.members", load_members)

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
        cond_pre = condition_transform_from_arrays(arrays, "cond")  # quantile, or affine (cheap conditions)
        targ_pre = QuantileGaussianizer.from_arrays(arrays, "targ")
        _check_ensemble(card, path)
        gen = load_network(path, "generator")
        m = cls(gen, cond_pre, targ_pre, card, path)
        if cond_pre.n_columns != len(m.conditions) or targ_pre.knots_.shape[0] != len(m.targets):
            raise ModelDirError(f"{str(path)!r}: the preprocessing arrays do not match the card's conditions/targets")
        if "marginal_correction" in card:
            from mambah.nn.marginals import MarginalCorrection

            m.set_correction(MarginalCorrection.load(path))
        return m

    def _corrected(self, y: np.ndarray, conditions: np.ndarray, member: int = 0, tally: list | None = None) -> np.ndarray:
        if self.correction is None:
            return y
        return self.correction.apply(y, conditions, self.conditions, self.targets, member, tally)

    def _calibrated(self, y: np.ndarray, conditions: np.ndarray, counts: list | None, warn: bool,
                    member: int | None = 0) -> np.ndarray:
        """``y`` through member ``member``'s map (``None``: a stacked ``(K + 1, n, t)`` output, each lane
        its own map), and its rows left unmapped reported (:meth:`report_uncalibrated`; the members'
        maps have the nominal's bins, so the nominal's count stands for every lane)."""
        if self.correction is None:
            return y
        tally: list = []
        if member is None:
            y = np.stack([self._corrected(y[k], conditions, k, None if k else tally) for k in range(len(y))])
        else:
            y = self._corrected(y, conditions, member, tally)
        self.report_uncalibrated(tally, y.shape[-2], counts, warn, stacklevel=3)
        return y

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
        pass, instead of the warning. A model with a quantile calibration (``marginals.npz``) maps the
        outputs of each (P, ETA) bin and flag state it has a map for; the rows of the others keep the
        network's output and are reported: an :class:`~mambah.errors.UncalibratedWarning` (unless
        ``check_range=False``), or with ``counts`` the ``uncalibrated`` field of its entry.
        """
        from mambah.nn.inference import DEFAULT_CHUNK, generate

        y = generate(self, conditions, seed, chunk=DEFAULT_CHUNK if chunk is None else chunk,
                     check_range=check_range, counts=counts)
        return self._calibrated(y, conditions, counts, check_range)

    def generate(self, data, seed=None, *, drop_nonfinite: bool = False) -> pd.DataFrame:
        """Generate the targets for every row of ``data`` (DataFrame with the condition columns, or an array).

        Returns a DataFrame with one column per target (the card's names), indexed like ``data``.
        Rows with NaN/inf conditions are refused (or dropped with ``drop_nonfinite=True``).
        """
        c, index = self.as_conditions(data, drop_nonfinite)
        y = self.generate_array(c, seed)
        return pd.DataFrame({t: y[:, j] for j, t in enumerate(self.targets)}, index=index)

    def generate_variations_array(self, conditions: np.ndarray, seed=None, chunk: int | None = None, *,
                                  check_range: bool = True, counts: list | None = None) -> np.ndarray:
        """Targets of the nominal model and of each ensemble member, with the same noise.

        The arguments are those of :meth:`generate_array`. Per chunk, the condition transform, the
        noise and the range check are done once and shared by the K + 1 generators
        (:func:`mambah.nn.inference.generate_variations`), so the members differ from the nominal
        only through their weights.

        Returns:
            float64 ``(K + 1, n, n_targets)``: ``[0]`` is bit for bit ``generate_array(conditions,
            seed, chunk)``, ``[k]`` member k (k = 1..K).

        Raises:
            ConfigurationError: the model has no ensemble members.
        """
        from mambah.nn.inference import DEFAULT_CHUNK, generate_variations

        self._require_members()
        y = generate_variations(self, conditions, seed, chunk=DEFAULT_CHUNK if chunk is None else chunk,
                                check_range=check_range, counts=counts)
        return self._calibrated(y, conditions, counts, check_range, member=None)

    def generate_member_array(self, k: int, conditions: np.ndarray, seed=None, chunk: int | None = None, *,
                              check_range: bool = True, counts: list | None = None) -> np.ndarray:
        """Targets ``(n, n_targets)`` of ensemble member ``k`` (1..K) alone, with the noise that
        :meth:`generate_array` draws for the same ``seed``: ``generate_variations_array(...)[k]``
        at the cost of one generator (:func:`mambah.nn.inference.generate_member`).

        Raises:
            ConfigurationError: the model has no ensemble members.
        """
        from mambah.nn.inference import DEFAULT_CHUNK, generate_member

        self._require_members()
        y = generate_member(self, k, conditions, seed, chunk=DEFAULT_CHUNK if chunk is None else chunk,
                            check_range=check_range, counts=counts)
        return self._calibrated(y, conditions, counts, check_range, member=k)

    def generate_variations(self, data, seed=None, *, drop_nonfinite: bool = False) -> pd.DataFrame:
        """The targets of :meth:`generate` plus, for each ensemble member k = 1..K, ``f"{target}_var{k}"``.

        All the columns come from the same noise: the nominal ones are exactly :meth:`generate`'s
        for the same ``seed``, and the difference between a ``_var{k}`` column and its nominal is
        the model's variation (member k's weights), not the sampler's. Columns: the targets in the
        card's order, then ``{t}_var1`` for every target, ``{t}_var2``, ...; indexed like ``data``.

        Raises:
            ConfigurationError: the model has no ensemble members (train them with
                ``mambah train pid ... --ensemble K``).
        """
        self._require_members()
        c, index = self.as_conditions(data, drop_nonfinite)
        y = self.generate_variations_array(c, seed)
        cols = {t: y[0, :, j] for j, t in enumerate(self.targets)}
        for k in range(1, len(y)):
            cols.update({f"{t}_var{k}": y[k, :, j] for j, t in enumerate(self.targets)})
        return pd.DataFrame(cols, index=index)

    def _require_members(self) -> None:
        if not self.n_members:
            raise ConfigurationError(
                f"model {self.name!r}" + (f" ({str(self.path)!r})" if self.path is not None else "")
                + " has no ensemble members, so it has no variations; train it with its members: "
                "mambah train pid ... --ensemble K (see mambah.training.ensemble)")

    # ----------------------------------------------------------------- export
    def export_onnx(self, path: str | os.PathLike) -> Path:
        """Write the generator (inputs ``conditions`` and ``noise``, preprocessed space) as ONNX.

        The preprocessing (``arrays.npz``) stays outside: apply the quantile transforms around it, and
        the marginal correction (``marginals.npz``, :mod:`mambah.nn.marginals`) after them if the card has one.
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


def _check_ensemble(card: dict, path: Path) -> None:
    """The card's ``"ensemble"`` section, if any, is consistent: ``members`` = K >= 1 and K files,
    each listed (with its hash, checked by :func:`~mambah.modeldir.verify_model_dir`) in ``files``."""
    ens = card.get("ensemble")
    if ens is None:
        return
    where = f"the card of {str(path)!r}"
    files = ens.get("files") if isinstance(ens, dict) else None
    k = ens.get("members") if isinstance(ens, dict) else None
    if not isinstance(files, list) or not isinstance(k, int) or k < 1 or len(files) != k:
        raise ModelDirError(f"{where}: its 'ensemble' section must give 'members' (K >= 1) and K 'files', "
                            f"got members={k!r}, files={files!r}")
    for f in files:
        if not isinstance(f, str) or not f.endswith(".keras") or f not in card["files"]:
            raise ModelDirError(f"{where}: ensemble member {f!r} is not a .keras file listed (with its hash) "
                                "in 'files'")
