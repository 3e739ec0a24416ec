"""Training of the Bernoulli PID-flag classifiers (``isMuon``, ``hasRich`` ...) on sWeighted data.

The model (:class:`mambah.nn.flags.FlagModel`, card kind ``"pid-flags"``) gives
``P(flag_k = 1 | conditions)``: a multilayer perceptron on the Gaussianised conditions with one
sigmoid output per flag. :class:`FlagTrainer` fits it by minimising the sWeighted binary
cross-entropy

    L = sum_i w_i * mean_k BCE(y_ik, p_k(c_i)) / sum_i w_i

whose minimiser, for sWeights of the signal component, is the *signal's* flag probability: the
sWeighted sum of the per-row loss (a function of control variables only) estimates the signal's
sum (Pivk & Le Diberder, physics/0402083), so the background that the sWeights subtract does not
enter. This is how LHCb's flash simulation (Lamarr) models ``isMuon``: a classifier, not a
thresholded GAN output, so that the efficiency of the flag requirement is the model's probability.
The training averages the weights over the steps and keeps the epoch with the best sWeighted
*Brier* score on held-out rows (see :class:`FlagConfig` for why not the BCE);
:func:`save_flag_model` writes the model directory; :func:`weighted_bce`, :func:`weighted_brier`
and :func:`efficiency_closure` are the validation scores written on its card.

Example:
    >>> t = FlagTrainer(FlagConfig(), condition_names=["P", "ETA"], target_names=["isMuon"])  # doctest: +SKIP
    >>> t.fit(c, y, w, valid=(cv, yv, wv))                                                      # doctest: +SKIP
    >>> save_flag_model("models/pid-mu-flags", t, card)                                        # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mambah.errors import ConfigurationError, DataError
from mambah.modeldir import save_model_dir
from mambah.nn.flags import KIND, NETWORK
from mambah.nn.preprocessing import QuantileGaussianizer
from mambah.physics import describe_column
from mambah.validation.efficiency import bin_index, compare_in_bins

log = logging.getLogger(__name__)

__all__ = ["FlagConfig", "FlagTrainer", "save_flag_model", "check_flag_values", "weighted_bce", "weighted_brier",
           "efficiency_closure", "STOP_ON"]

#: validation scores that can choose the kept weights: the sWeighted binary cross-entropy or Brier score
STOP_ON = ("brier", "bce")


# ------------------------------------------------------------------------------------- settings
@dataclass
class FlagConfig:
    """Hyperparameters of the flag classifier and of its training.

    Training minimises the sWeighted BCE with Adam on batches of ``batch_size`` rows and keeps an
    exponential moving average of the weights (``ema_decay``; it averages the noise of the signed
    weights away). Each epoch the averaged network is scored on the validation rows; the
    ``stop_on`` score (weighted Brier score or BCE) chooses the kept weights. Training stops after
    ``epochs`` epochs or ``max_time`` seconds (wall clock), whichever comes first, or after
    ``patience`` epochs without a better score; the learning rate is multiplied by ``lr_factor``
    after ``lr_patience`` epochs without improvement.

    Why the Brier score chooses by default: with negative sWeights the BCE rewards probabilities
    pushed to the clip (1e-7 or 1 - 1e-7) wherever the weighted count of 0s (or 1s) is locally
    negative, by up to 16 per unit of weight, and a held-out BCE keeps "improving" while the network
    carves such pockets (measured on the reference detector's J/psi muons: held-out BCE 0.042 ->
    0.032 over 150 epochs while the isMuon efficiency drifted 1.7% from the truth). The Brier score,
    bounded by 1 per row, does not pay for that and stops such a run at the right time. (On losses
    with negative sWeights: Borisyak & Kazeev, JINST 14 (2019) P08020, arXiv:1905.11719.)

    Defaults chosen by measurement (reference-detector J/psi muons, 80k training rows, 2 seeds):
    48 x 3 ReLU matched 64 x 3 (isMuon efficiency within 0.5% of the pure-signal truth in every p
    bin) at the cost of 64 x 2 (about 3.5 x 10^6 tracks/s in numpy on 2 cores, 64 x 3 about
    2.9 x 10^6); 32 x 2, 32 x 3 and 64 x 2 were 1.2-1.5% off in the lowest p bin.
    """

    width: int = 48
    depth: int = 3
    activation: str = "relu"
    learning_rate: float = 1e-2
    lr_patience: int = 3
    lr_factor: float = 0.5
    batch_size: int = 2048
    epochs: int = 1000
    max_time: float = 10 * 60.0
    patience: int = 8
    stop_on: str = "brier"
    ema_decay: float = 0.999
    n_knots: int = 1001
    seed: int = 0

    def validate(self) -> None:
        from mambah.nn.dense import ACTIVATIONS as _ACTIVATIONS

        for name in ("width", "depth", "batch_size", "epochs", "patience", "lr_patience", "n_knots"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ConfigurationError(f"{name} must be a positive integer, not {v!r}")
        if self.n_knots < 2:
            raise ConfigurationError(f"n_knots must be >= 2, not {self.n_knots!r}")
        for name in ("learning_rate", "max_time"):
            if not getattr(self, name) > 0:
                raise ConfigurationError(f"{name} must be > 0, not {getattr(self, name)!r}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigurationError(f"ema_decay must be in [0, 1), not {self.ema_decay!r}")
        if self.stop_on not in STOP_ON:
            raise ConfigurationError(f"stop_on must be one of {', '.join(STOP_ON)}, not {self.stop_on!r}")
        if not 0 < self.lr_factor <= 1:
            raise ConfigurationError(f"lr_factor must be in (0, 1], not {self.lr_factor!r}")
        if self.activation not in _ACTIVATIONS or self.activation in ("linear", "sigmoid"):
            ok = [a for a in _ACTIVATIONS if a not in ("linear", "sigmoid")]
            raise ConfigurationError(f"activation {self.activation!r} is not supported by the numpy evaluation; "
                                     f"choose one of {', '.join(ok)}")


# ----------------------------------------------------------------------------- checks, metrics
def check_flag_values(y: np.ndarray, names, where: str = "the data") -> np.ndarray:
    """``y`` (n, k) as float 0.0/1.0; refuse a column holding anything else, or a constant one.

    Booleans are accepted. The message names the column and shows the values found.
    """
    y = np.asarray(y)
    if y.ndim == 1:
        y = y[:, None]
    names = list(names)
    out = np.empty(y.shape, dtype=float)
    for j, name in enumerate(names):
        v = np.asarray(y[:, j], dtype=float)
        bad = ~((v == 0) | (v == 1))
        if bad.any():
            found = np.unique(v[~np.isnan(v)] if not np.isnan(v).all() else v)
            shown = ", ".join(f"{x:.6g}" for x in found[:10]) + (", ..." if len(found) > 10 else "")
            nan = f", and {int(np.isnan(v).sum())} NaN" if np.isnan(v).any() else ""
            raise DataError(f"target {name!r} in {where} must be a 0/1 flag column; found {len(found)} distinct "
                            f"values ({shown}){nan} — {int(bad.sum())} of {len(v)} rows are neither 0 nor 1")
        if len(v) and v.min() == v.max():
            raise DataError(f"target {name!r} is always {int(v[0])} in {where}: there is nothing to learn")
        out[:, j] = v
    return out


def _bce_rows(prob: np.ndarray, y: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    p = np.clip(np.asarray(prob, dtype=float), eps, 1 - eps)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))


def weighted_bce(prob: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> tuple[float, list[float]]:
    """sWeighted binary cross-entropy ``sum_i w_i BCE_ik / sum_i w_i``: (mean over flags, per flag).

    Probabilities are clipped to [1e-7, 1 - 1e-7] (as Keras does). Weights may be negative;
    their sum must be > 0.
    """
    return _weighted_score(prob, y, w, _bce_rows, "cross-entropy")


def _weighted_score(prob, y, w, loss, what: str) -> tuple[float, list[float]]:
    """``sum_i w_i loss(p_ik, y_ik) / sum_i w_i``: (mean over flags, per flag)."""
    prob = np.asarray(prob, dtype=float)
    y = np.asarray(y, dtype=float)
    if prob.ndim == 1:
        prob, y = prob[:, None], y[:, None]
    w = np.ones(len(prob)) if w is None else np.asarray(w, dtype=float)
    s = float(w.sum())
    if not s > 0:
        raise DataError(f"the weights sum to {s:.6g} <= 0: the weighted {what} is not defined")
    per = (w[:, None] * loss(prob, y)).sum(axis=0) / s
    return float(per.mean()), [float(v) for v in per]


def weighted_brier(prob: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> tuple[float, list[float]]:
    """sWeighted Brier score ``sum_i w_i (y_ik - p_ik)^2 / sum_i w_i``: (mean over flags, per flag)."""
    return _weighted_score(prob, y, w, lambda p, t: (t - p) ** 2, "Brier score")


def _default_edges(x: np.ndarray, w: np.ndarray, column: str | None, n_bins: int = 10) -> np.ndarray:
    if column is not None and describe_column(column)["quantity"] == "p":
        from mambah.validation.closure import P_BINS  # the momentum bins of the PID chain closure [MeV/c]

        return np.asarray(P_BINS, dtype=float)
    # bins of equal (positive) weight
    wp = np.clip(w, 0, None)
    if wp.sum() <= 0:
        wp = np.ones(len(x))
    order = np.argsort(x, kind="stable")
    cdf = np.cumsum(wp[order]) / wp.sum()
    idx = np.searchsorted(cdf, np.linspace(0, 1, n_bins + 1)[1:-1])
    inner = x[order][np.clip(idx, 0, len(x) - 1)]
    return np.unique(np.concatenate([[x.min()], inner, [np.nextafter(x.max(), np.inf)]]))


def efficiency_closure(x: np.ndarray, prob: np.ndarray, y: np.ndarray, w: np.ndarray | None, names,
                       *, column: str | None = None, edges=None, min_rows: int = 50) -> dict:
    """Predicted mean probability vs the (s)Weighted observed rate of each flag in bins of ``x``.

    The efficiencies and their difference come from
    :func:`mambah.validation.efficiency.compare_in_bins` (the observed flags as the reference,
    the probabilities as the generated sample, same rows and weights). In each bin ``b`` with at
    least ``min_rows`` rows and a positive weight sum ``W_b``: ``observed = sum w y / W_b``,
    ``predicted = sum w p / W_b``, ``diff = predicted - observed``, ``observed_error`` the
    helper's error of the observed rate ``sqrt(sum w^2 (y - observed)^2) / W_b``, and, as an extra
    column, ``stat_error = sqrt(sum w^2 (y - p)^2) / W_b``: the error of ``diff`` with the
    predictions held fixed and the rows paired (each row's outcome against its own prediction),
    smaller than the observed rate's error where the model explains the variation within the bin.
    ``max_pull`` is ``max |diff| / stat_error``.

    Args:
        x: the binning variable (e.g. the momentum P [MeV/c]), shape (n,).
        prob, y: predicted probabilities and observed 0/1 flags, shape (n, k).
        w: sWeights (``None``: 1).
        names: the k flag names.
        column: name of ``x``; a momentum column ("P", "p") is binned in :data:`mambah.validation.closure.P_BINS`.
        edges: bin edges (default: from ``column``, else 10 bins of equal positive weight).

    Returns:
        ``{"column", "edges", "flags": {name: {"bins": [...], "max_abs_eff_diff", "max_pull"}},
        "max_abs_eff_diff": {name: value}}``; each bin ``{"lo", "hi", "n", "sum_weights",
        "observed", "observed_error", "predicted", "diff", "stat_error"}``.
    """
    x = np.asarray(x, dtype=float)
    prob = np.asarray(prob, dtype=float).reshape(len(x), -1)
    y = np.asarray(y, dtype=float).reshape(len(x), -1)
    w = np.ones(len(x)) if w is None else np.asarray(w, dtype=float)
    edges = np.asarray(edges if edges is not None else _default_edges(x, w, column), dtype=float)
    nb = len(edges) - 1
    b = bin_index(x, edges)
    inside = (b >= 0) & (b < nb)
    flags = {}
    for j, name in enumerate(names):
        c = compare_in_bins(b, y[:, j], b, prob[:, j], nb, w, w)
        obs, pred = c["ref"], c["gen"]
        # the paired error of diff (extra column): sqrt(sum w^2 (y - p)^2) / W
        paired = np.sqrt(np.bincount(b[inside], weights=(w * w * (y[:, j] - prob[:, j]) ** 2)[inside], minlength=nb))
        rows = []
        for i in range(nb):
            n, s = int(obs["n"][i]), float(obs["sum_w"][i])
            if n < min_rows or s <= 0:
                continue
            rows.append({"lo": float(edges[i]), "hi": float(edges[i + 1]), "n": n, "sum_weights": s,
                         "observed": float(obs["eff"][i]), "observed_error": float(obs["err"][i]),
                         "predicted": float(pred["eff"][i]), "diff": float(c["diff"][i]),
                         "stat_error": float(paired[i] / s)})
        flags[name] = {
            "bins": rows,
            "max_abs_eff_diff": max((abs(r["diff"]) for r in rows), default=float("nan")),
            "max_pull": max((abs(r["diff"]) / r["stat_error"] for r in rows if r["stat_error"] > 0),
                            default=float("nan")),
        }
    return {"column": column, "edges": [float(e) for e in edges], "flags": flags,
            "max_abs_eff_diff": {k: v["max_abs_eff_diff"] for k, v in flags.items()}}


# ------------------------------------------------------------------------------------- training
#: logits are clipped to +-LOGIT_MAX in the loss, i.e. probabilities to [1e-7, 1 - 1e-7] as in Keras'
#: binary cross-entropy: with negative sWeights the unclipped loss is unbounded below where the
#: weighted count of 0s or 1s is locally negative
LOGIT_MAX = float(np.log((1 - 1e-7) / 1e-7))


def _logit_brier_rows(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Brier score per row (mean over flags) from logits (float64)."""
    p = 0.5 * (1.0 + np.tanh(0.5 * np.asarray(logits, dtype=float)))
    return ((y - p) ** 2).mean(axis=1)


def _logit_bce_rows(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """BCE per row (mean over flags) from clipped logits, numerically stable (float64)."""
    z = np.clip(np.asarray(logits, dtype=float), -LOGIT_MAX, LOGIT_MAX)
    return (np.logaddexp(0.0, z) - y * z).mean(axis=1)


class FlagTrainer:
    """Fit ``P(flag_k = 1 | conditions)`` on (s)Weighted data.

    Args:
        config: a :class:`FlagConfig`.
        condition_names, target_names: names used in messages.
        show_progress: a tqdm bar (epochs, losses).

    Fitted attributes:
        cond_pre_: the :class:`~mambah.nn.preprocessing.QuantileGaussianizer` of the conditions.
        network_: Keras model, Gaussianised conditions -> probabilities (sigmoid outputs), best weights.
        best_valid_loss_, best_epoch_: the validation score chosen by ``config.stop_on`` of the kept
            weights and its epoch (``nan``/last epoch without validation rows).
        history_: one dict per epoch (epoch, steps, seconds, train_loss, valid_bce, valid_brier, lr).
        train_seconds_, steps_, epochs_: cost of the fit; weight_mean_: the weight normalisation.
    """

    def __init__(self, config: FlagConfig | None = None, *, condition_names=None, target_names=None,
                 show_progress: bool = False):
        self.config = config or FlagConfig()
        self.condition_names = condition_names
        self.target_names = target_names
        self.show_progress = show_progress

    @staticmethod
    def _arrays(c, y, w, cnames, tnames, where):
        c = np.asarray(c, dtype=float)
        c = c[:, None] if c.ndim == 1 else c
        y = check_flag_values(y, tnames, where)
        n = len(c)
        w = np.ones(n) if w is None else np.asarray(w, dtype=float).reshape(-1)
        if len(y) != n or len(w) != n:
            raise DataError(f"{where}: conditions, targets and weights have {n}, {len(y)} and {len(w)} rows")
        if c.shape[1] != len(cnames) or y.shape[1] != len(tnames):
            raise DataError(f"{where}: expected {len(cnames)} condition and {len(tnames)} target columns, "
                            f"got {c.shape[1]} and {y.shape[1]}")
        if not (np.isfinite(c).all() and np.isfinite(w).all()):
            raise DataError(f"{where}: the conditions or weights hold NaN or inf")
        s = float(w.sum())
        if not s > 0:
            raise DataError(f"{where}: the weights sum to {s:.6g} <= 0; a weighted sample needs a positive total "
                            "(too few rows, or sWeights of the wrong component?)")
        return c, y, w

    def fit(self, conditions, targets, weights=None, valid=None, *, cond_pre=None) -> FlagTrainer:
        """Train on ``conditions`` (n, k_c), 0/1 ``targets`` (n, k_t) with sWeights ``weights`` (n,).

        Args:
            valid: ``(conditions, targets, weights)`` of held-out rows: early stopping and the kept
                weights follow their weighted BCE. ``None``: the last weights are kept.
            cond_pre: a fitted condition transform to use instead of fitting one (the nominal's, for
                the ensemble members that share it: :func:`fit_flag_members`).
        """
        import keras
        import tensorflow as tf

        from mambah.nn.dense import build_mlp
        from mambah.progress import progress
        from mambah.training.gan import set_determinism

        cfg = self.config
        cfg.validate()
        c0 = np.asarray(conditions, dtype=float)
        y0 = np.asarray(targets)
        nc = 1 if c0.ndim == 1 else c0.shape[1]
        nt = 1 if y0.ndim == 1 else y0.shape[1]
        self.condition_names = list(self.condition_names or [f"c{i}" for i in range(nc)])
        self.target_names = list(self.target_names or [f"t{i}" for i in range(nt)])
        c, y, w = self._arrays(c0, y0, weights, self.condition_names, self.target_names, "the training rows")
        vdata = None
        if valid is not None:
            vc, vy, vw = self._arrays(*valid, self.condition_names, self.target_names, "the validation rows")
            vdata = (vc, vy, vw)

        set_determinism(cfg.seed)
        rng = np.random.default_rng([cfg.seed, 1])
        self.cond_pre_ = cond_pre if cond_pre is not None else \
            QuantileGaussianizer(cfg.n_knots).fit(c, w, names=self.condition_names)
        x = self.cond_pre_.transform(c, mode="mid")
        self.weight_mean_ = float(w.mean())
        wn = (w / self.weight_mean_).astype(np.float32)
        yf = y.astype(np.float32)
        if vdata is not None:
            vx = self.cond_pre_.transform(vdata[0], mode="mid")

        net = build_mlp(x.shape[1], y.shape[1], [cfg.width] * cfg.depth, cfg.activation, seed=cfg.seed)
        # the exponential moving average of the weights is what is validated and kept (the sWeighted
        # gradients are noisy, negative weights included: averaging the iterates removes most of that noise)
        ema = keras.models.clone_model(net)
        ema.set_weights(net.get_weights())
        decay = float(cfg.ema_decay)
        opt = keras.optimizers.Adam(learning_rate=cfg.learning_rate)
        opt.build(net.trainable_variables)
        spec = [tf.TensorSpec([None, x.shape[1]], tf.float32), tf.TensorSpec([None, y.shape[1]], tf.float32),
                tf.TensorSpec([None], tf.float32), tf.TensorSpec([], tf.float32)]

        @tf.function(input_signature=spec)
        def step(xb, yb, wb, d):
            with tf.GradientTape() as tape:
                z = tf.clip_by_value(net(xb, training=True), -LOGIT_MAX, LOGIT_MAX)
                per_row = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=yb, logits=z), axis=1)
                # the weights are normalised to mean 1 over the training rows: the batch mean is an
                # unbiased estimate of sum(w BCE) / sum(w)
                loss = tf.reduce_mean(wb * per_row)
            grads = tape.gradient(loss, net.trainable_variables)
            opt.apply_gradients(zip(grads, net.trainable_variables))
            for ve, v in zip(ema.weights, net.weights):
                ve.assign(d * ve + (1.0 - d) * v)
            return loss

        logits_fn = tf.function(lambda a: ema(a, training=False),
                                input_signature=[tf.TensorSpec([None, x.shape[1]], tf.float32)])

        def valid_scores() -> dict:
            vc, vy, vw = vdata
            z = np.concatenate([logits_fn(vx[i:i + 65536]).numpy() for i in range(0, len(vx), 65536)])
            return {"valid_bce": float((vw * _logit_bce_rows(z, vy)).sum() / vw.sum()),
                    "valid_brier": float((vw * _logit_brier_rows(z, vy)).sum() / vw.sum())}

        n, bs = len(x), int(cfg.batch_size)
        # full batches only (the permutation changes every epoch); fewer rows than a batch: one batch
        steps_per_epoch = max(1, n // bs)
        history, best, best_epoch, since_best, since_lr = [], float("inf"), -1, 0, 0
        best_weights = ema.get_weights()
        lr = float(cfg.learning_rate)
        steps = epoch = 0
        t0 = time.perf_counter()
        out_of_time = False
        bar = progress(total=cfg.epochs, enabled=self.show_progress, desc="training", unit="epoch", mininterval=1.0)
        try:
            while epoch < cfg.epochs and not out_of_time:
                perm = rng.permutation(n)
                total, done = 0.0, 0
                for b in range(steps_per_epoch):
                    if time.perf_counter() - t0 >= cfg.max_time:
                        out_of_time = True
                        break
                    idx = perm[b * bs:(b + 1) * bs]
                    # the average covers about the last half of the steps until it reaches 1 / (1 - ema_decay)
                    d = min(decay, steps / (steps + 2.0))
                    total += float(step(x[idx], yf[idx], wn[idx], np.float32(d))) * len(idx)
                    done += len(idx)
                    steps += 1
                if done == 0:
                    break
                if not math.isfinite(total):
                    raise DataError(f"the training diverged (loss {total:.6g}) in epoch {epoch + 1}; "
                                    f"try a smaller learning rate than {lr:g}")
                epoch += 1
                rec = {"epoch": epoch, "steps": steps, "seconds": round(time.perf_counter() - t0, 2),
                       "train_loss": total / done, "lr": lr}
                if vdata is not None:
                    rec.update(valid_scores())
                    vl = rec[f"valid_{cfg.stop_on}"]
                    if vl < (best - 1e-6 * abs(best) if math.isfinite(best) else best):
                        best, best_epoch, since_best, since_lr = vl, epoch, 0, 0
                        best_weights = ema.get_weights()
                    else:
                        since_best += 1
                        since_lr += 1
                history.append(rec)
                bar.update(1)
                bar.set_postfix({k: f"{v:.5f}" for k, v in rec.items() if k == "train_loss" or k.startswith("valid_")},
                                refresh=False)
                log.debug("epoch %d: %s", epoch, rec)
                if vdata is not None:
                    if since_best >= cfg.patience:
                        log.info("early stopping at epoch %d: no better held-out %s for %d epochs (best %.6f at "
                                 "epoch %d)", epoch, cfg.stop_on, since_best, best, best_epoch)
                        break
                    if since_lr >= cfg.lr_patience:
                        lr *= cfg.lr_factor
                        opt.learning_rate.assign(lr)
                        since_lr = 0
        finally:
            bar.close()
        if out_of_time:
            log.info("time budget of %.0f s reached at epoch %d", cfg.max_time, epoch)
        if vdata is not None:
            ema.set_weights(best_weights)
        self.network_ = _with_sigmoid(ema)
        self.best_valid_loss_ = best if vdata is not None else float("nan")
        self.best_epoch_ = best_epoch if vdata is not None else epoch
        self.history_ = history
        self.train_seconds_ = time.perf_counter() - t0
        self.steps_ = steps
        self.epochs_ = epoch
        return self

    def predict_proba(self, conditions) -> np.ndarray:
        """Probabilities (n, k) for raw ``conditions`` (n, k_c), evaluated in numpy."""
        from mambah.nn.dense import DenseStack

        c = np.asarray(conditions, dtype=float)
        c = c[:, None] if c.ndim == 1 else c
        return DenseStack.from_keras(self.network_)(self.cond_pre_.transform(c, mode="mid")).astype(float)


def _with_sigmoid(net):
    """A plain copy of the logit network ``net`` whose last layer has a sigmoid activation."""
    import keras

    cfg = net.get_config()
    cfg["layers"][-1]["config"]["activation"] = "sigmoid"
    out = keras.Sequential.from_config(cfg)
    out.set_weights(net.get_weights())
    return out


def fit_flag_members(conditions, targets, weights, valid, *, members: int, config: FlagConfig, cond_pre,
                     condition_names=None, target_names=None) -> tuple[list, dict]:
    """Fit ``members`` ensemble members of a flag model (``mambah train flags --ensemble K``).

    Member k (1..K) is a :class:`FlagTrainer` with the nominal's settings and seed
    ``member_seed(config.seed, k)`` (``seed + 1000 k``), on the nominal's condition transform
    ``cond_pre``, fitted to the training rows weighted by ``weights`` times Poisson(1) counts
    (:func:`mambah.training.ensemble.bootstrap_counts` of the member's seed), early-stopped on the
    same held-out rows ``valid``: the spread of the members' probabilities is the statistical
    uncertainty of the classifier (a bootstrap, as for the GANs' members).

    Returns:
        ``(stacks, entry)``: the members' :class:`~mambah.nn.dense.DenseStack` (sigmoid outputs) and
        the card's ``"ensemble"`` section (seeds, cost, held-out scores per member).
    """
    import copy

    from mambah.nn.dense import DenseStack
    from mambah.training.ensemble import BOOTSTRAP, bootstrap_counts, member_seed

    if int(members) < 1:
        raise ConfigurationError(f"members must be >= 1, not {members!r}")
    w = np.ones(len(conditions)) if weights is None else np.asarray(weights, dtype=float)
    stacks, seeds, seconds, epochs, scores = [], [], [], [], []
    for k in range(1, int(members) + 1):
        cfg = copy.deepcopy(config)
        cfg.seed = member_seed(config.seed, k)
        tr = FlagTrainer(cfg, condition_names=condition_names, target_names=target_names)
        tr.fit(conditions, targets, w * bootstrap_counts(len(w), cfg.seed), valid, cond_pre=cond_pre)
        stacks.append(DenseStack.from_keras(tr.network_, where=f"ensemble member {k}"))
        seeds.append(cfg.seed)
        seconds.append(round(tr.train_seconds_, 1))
        epochs.append(tr.epochs_)
        scores.append(tr.best_valid_loss_)
        log.info("flag ensemble member %d/%d (seed %d): %d epochs, %.0f s, held-out %s %.6f", k, members, cfg.seed,
                 tr.epochs_, tr.train_seconds_, cfg.stop_on, tr.best_valid_loss_)
    entry = {"members": int(members), "bootstrap": BOOTSTRAP, "seeds": seeds, "warm_start": False,
             "arrays": "m<kk>_net_w<i>, m<kk>_net_b<i> in arrays.npz (kk = 01..K): member k's Dense weights",
             "seconds_per_member": seconds, "epochs_per_member": epochs,
             f"valid_{config.stop_on}_per_member": scores,
             "note": "member k is the nominal's classifier refitted from scratch with seed seeds[k-1] on the training "
                     "rows weighted by sWeight x Poisson(1) counts (numpy default_rng([seeds[k-1], 22]).poisson), on "
                     "the nominal's condition transform, early-stopped on the nominal's held-out rows; the chain "
                     "draws every member's flags with the nominal's uniforms (FlagModel.sample_variations)"}
    return stacks, entry


def member_arrays(stacks) -> dict[str, np.ndarray]:
    """The ``arrays.npz`` entries of ensemble members' networks (``m01_net_w0`` ...)."""
    from mambah.nn.flags import member_prefix

    out = {}
    for k, st in enumerate(stacks, start=1):
        for i, (wt, b, _) in enumerate(st.layers):
            out[f"{member_prefix(k)}net_w{i}"] = wt
            out[f"{member_prefix(k)}net_b{i}"] = b
    return out


def save_flag_model(out: str | os.PathLike, trainer: FlagTrainer, card: dict, *, overwrite: bool = False,
                    members: list | None = None) -> Path:
    """Write a flag model directory (kind ``"pid-flags"``) from a fitted :class:`FlagTrainer`;
    ``members``: its ensemble members' networks (:func:`fit_flag_members`; the card's
    ``"ensemble"`` section is the caller's)."""
    from mambah.nn.dense import DenseStack

    if not hasattr(trainer, "network_"):
        raise ConfigurationError("the trainer is not fitted: call fit() first")
    full = dict(card)
    full.setdefault("kind", KIND)
    full.pop("marginal_correction", None)  # (a card copied from a calibrated model: a new network has none)
    stack = DenseStack.from_keras(trainer.network_, where="the flag classifier")
    full["network"] = {
        "file": f"{NETWORK}.keras",
        "input": "conditions Gaussianised by the quantile transform of arrays.npz (cond_knots, cond_probs), mode 'mid'",
        "layers": [{"units": int(wt.shape[1]), "activation": act} for wt, _, act in stack.layers],
        "output": "P(flag = 1), one sigmoid per target, in the card's target order",
        "arrays": "net_w<i>, net_b<i>: the same Dense weights for numpy evaluation",
    }
    hp = dict(full.get("hyperparameters", {}))
    hp.setdefault("model", "sWeighted Bernoulli classifier: MLP, sigmoid outputs, weighted binary cross-entropy")
    for k, v in asdict(trainer.config).items():
        hp.setdefault(k, v)
    full["hyperparameters"] = hp
    arrays = dict(trainer.cond_pre_.to_arrays("cond"))
    for i, (wt, b, _) in enumerate(stack.layers):
        arrays[f"net_w{i}"] = wt
        arrays[f"net_b{i}"] = b
    if members:
        if int((full.get("ensemble") or {}).get("members", -1)) != len(members):
            raise ConfigurationError(f"the card's ensemble section must list the {len(members)} members")
        arrays.update(member_arrays(members))
    return save_model_dir(out, full, networks={NETWORK: trainer.network_}, arrays=arrays, overwrite=overwrite)
