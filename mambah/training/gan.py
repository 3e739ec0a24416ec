"""Training a conditional Cramér GAN on (sWeighted) data: the estimator and its fit loop.

:class:`CramerGANTrainer` follows scikit-learn's estimator contract: ``__init__`` stores the
settings, :meth:`CramerGANTrainer.fit` does the work and returns ``self``; fitted attributes end in
``_``. The loop

1. fits the quantile-to-Gaussian preprocessing of conditions and targets on the training rows
   (the targets' map on the *signed* sWeights, ``signed_targets``: see below);
2. divides the sWeights by their global mean (see :mod:`mambah.nn.cramer` for why);
3. runs ``train_step`` on shuffled batches (seeded), with the learning rate decaying
   exponentially over the budget (``lr = lr0 * (lr_final/lr0) ** progress``, where ``progress``
   is the larger of the fraction of epochs done and the fraction of ``max_time`` used);
4. every ``validate_every`` seconds scores the EMA generator on the validation rows with the
   classifier two-sample test of :func:`mambah.validation.bdt_ks_score` — generated targets for the
   validation rows' conditions, each generated row carrying the sWeight of its data row — and with
   the efficiency pulls of the targets' typical cuts in bins of the conditions
   (:func:`mambah.validation.efficiency_pulls`, their RMS :func:`~mambah.validation.pull_score`),
   and keeps the best weights (and a checkpoint, to resume from). With ``selection="ks_pulls"``
   (default) the score to minimise is ``BDT-KS × max(1, pull RMS)``: a checkpoint whose cut
   efficiencies are off by 2σ (RMS) in the bins needs half the BDT-KS of one that is within its
   errors to be kept. The BDT-KS alone cannot see ~1% of the mass moved into a tail (issue 22:
   the shipped proton model passed it at 0.02 and biased ``DLLp > 5`` by 7% above 80 GeV/c);
   ``selection="ks"`` is the BDT-KS alone;
5. stops after ``patience`` validations without improvement, at the epoch or time budget, and
   restores the best generator;
6. with ``reselect = N > 1``: the best of N candidates. One validation score is noisy, and the
   minimum over a run's many validations is biased towards a lucky one (an early checkpoint can
   win by noise and early stopping then ends the run). The loop keeps the weights of the N best
   validations; at the end each candidate is scored again on the same rows with other seeds and
   ``reselect_repeats`` classifier fits (the same seeds for every candidate), and the best of these
   fresh scores is kept. Early stopping then waits for ``patience`` validations that enter no
   candidate.

**Signed targets** (``signed_targets=True``, default). The targets' quantile map is fitted on the
CDF of the signed sWeights, i.e. of the background-subtracted signal. Fitted on sWeights clipped at
zero (the map before issue 22, ``signed_targets=False``) it gives the background's values room in
the Gaussian space the generator works in: 12.8% of it lay below DLLp = −5 for the real
calibration protons, where the signal has 0.07%, and the generator's unavoidable leakage into that
room came out as a background-like tail (5% of the generated protons below −5 above 80 GeV/c). With
the signed map, measured on fold 0 of a 2-fold cross-fit of the real protons (150 epochs, seed 1):
fraction below −5 above 80 GeV/c 6.1% → 1.4%, pulls above 60 GeV/c +2.0..+2.5 → −0.5..+1.1.

Everything is deterministic on CPU for a given seed (``keras.utils.set_random_seed`` plus
TensorFlow's op determinism).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mambah.errors import ConfigurationError, DataError
from mambah.modeldir import json_default, save_model_dir
from mambah.nn.inference import predict_generator
from mambah.nn.preprocessing import AffineScaler, QuantileGaussianizer

log = logging.getLogger(__name__)

__all__ = ["GANConfig", "GANInit", "CramerGANTrainer", "save_pid_model", "selection_bins", "set_determinism"]


#: checkpoint selection scores: the BDT-KS times max(1, RMS of the efficiency pulls), or the BDT-KS alone
SELECTIONS = ("ks_pulls", "ks")


@dataclass
class GANConfig:
    """Hyperparameters of the conditional Cramér GAN and of its training (the CLI's defaults).

    Budget: training stops at ``epochs`` or after ``max_time`` seconds (wall clock), whichever
    comes first, or after ``patience`` validations without a better score. Validation runs every
    ``validate_every`` seconds, or every ``validate_every_steps`` steps when that is > 0.
    ``reselect`` > 1 keeps that many candidate checkpoints and chooses among them at the end with
    fresh scores of ``reselect_repeats`` classifier fits each (see the module's step 6), and
    ``patience`` then counts the validations that enter no candidate; 1 keeps the best single
    validation. ``selection`` is the score validations are ranked by (``"ks_pulls"``: BDT-KS ×
    max(1, RMS of the efficiency pulls); ``"ks"``: BDT-KS), and ``signed_targets`` fits the
    targets' quantile map on the signed sWeights (see the module docstring for both).

    The defaults were chosen on the real Λc→pKπ calibration protons (46k rows, 2 CPU cores): they
    reach a BDT-KS within about 3x of the statistical floor in under 15 minutes.
    """

    n_noise: int = 16
    gen_width: int = 128
    gen_depth: int = 4
    critic_width: int = 128
    critic_depth: int = 4
    critic_outputs: int = 32
    activation: str = "leaky_relu"
    residual: bool = False
    gp_lambda: float = 10.0
    critic_steps: int = 1
    bce_xi: float = 0.0
    g_lr: float = 1e-3
    c_lr: float = 1e-3
    lr_final: float = 3e-5
    beta_1: float = 0.5
    beta_2: float = 0.9
    ema_decay: float = 0.995
    batch_size: int = 2048
    epochs: int = 100000
    max_time: float = 12 * 60.0
    validate_every: float = 30.0
    validate_every_steps: int = 0
    patience: int = 12
    n_knots: int = 1001
    #: the conditions' transform: "quantile" (QuantileGaussianizer) or "affine" (AffineScaler: cheap to
    #: evaluate; with scale_functions, (column, "log" | "logit") pairs, the other columns as they are)
    condition_transform: str = "quantile"
    scale_functions: tuple = ()
    valid_repeats: int = 2
    reselect: int = 1
    reselect_repeats: int = 4
    signed_targets: bool = True
    selection: str = "ks_pulls"
    seed: int = 0

    @classmethod
    def from_hyperparameters(cls, hp: dict) -> GANConfig:
        """The config a card's ``hyperparameters`` record (unknown keys such as ``model`` ignored).

        Cards written before issue 22 lack ``selection`` and ``signed_targets``: their models were
        selected by the BDT-KS alone on targets mapped with sWeights clipped at zero, so those are
        the values filled in (``"ks"``, ``False``), not today's defaults.
        """
        known = {f for f in cls.__dataclass_fields__}
        cfg = cls(**{k: v for k, v in hp.items() if k in known})
        if "selection" not in hp:
            cfg.selection = "ks"
        if "signed_targets" not in hp:
            cfg.signed_targets = False
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for name in ("n_noise", "gen_width", "gen_depth", "critic_width", "critic_depth", "critic_outputs",
                     "critic_steps", "batch_size", "epochs", "n_knots", "valid_repeats", "reselect",
                     "reselect_repeats"):
            v = getattr(self, name)
            if int(v) != v or v < 1:
                raise ConfigurationError(f"{name} must be a positive integer, not {v!r}")
        for name in ("g_lr", "c_lr", "lr_final", "max_time", "validate_every"):
            if not getattr(self, name) > 0:
                raise ConfigurationError(f"{name} must be > 0, not {getattr(self, name)!r}")
        if self.condition_transform not in ("quantile", "affine"):
            raise ConfigurationError(f"condition_transform must be 'quantile' or 'affine', not {self.condition_transform!r}")
        if self.selection not in SELECTIONS:
            raise ConfigurationError(f"selection must be one of {', '.join(SELECTIONS)}, not {self.selection!r}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigurationError(f"ema_decay must be in [0, 1), not {self.ema_decay!r}")
        if self.bce_xi < 0 or self.gp_lambda < 0:
            raise ConfigurationError("bce_xi and gp_lambda must be >= 0")


@dataclass
class GANInit:
    """Where a fit starts from, instead of fitting the preprocessing and initialising at random.

    Used by :mod:`mambah.training.ensemble`: the members of an ensemble share the nominal model's
    quantile transforms (so that they are comparable and share ``arrays.npz``), and a warm-started
    member begins at the nominal's weights.

    Attributes:
        cond_pre, targ_pre: fitted :class:`~mambah.nn.preprocessing.QuantileGaussianizer` of the
            conditions and targets, used as they are (not refitted).
        generator_weights: ``get_weights()`` of a generator of the same architecture, set on the
            generator and on its EMA copy; ``None``: random initialisation (from the config's seed).
        critic_weights: the same for the critic; ``None``: random initialisation.
    """

    cond_pre: QuantileGaussianizer
    targ_pre: QuantileGaussianizer
    generator_weights: list | None = None
    critic_weights: list | None = None

    @classmethod
    def from_trainer(cls, trainer: CramerGANTrainer, *, weights: bool = False) -> GANInit:
        """The preprocessing of a fitted trainer and, with ``weights``, its kept generator (EMA)
        weights and its critic's last weights (a trainer loaded from a model directory,
        :meth:`CramerGANTrainer.from_model_dir`, has no critic: the critic then starts at random)."""
        if not hasattr(trainer, "generator_"):
            raise ConfigurationError("the trainer to start from is not fitted: call fit() first")
        critic = getattr(trainer, "gan_", None)
        return cls(trainer.cond_pre_, trainer.targ_pre_,
                   trainer.generator_.get_weights() if weights else None,
                   critic.critic.get_weights() if weights and critic is not None else None)


@dataclass
class _State:
    step: int = 0
    epoch: int = 0
    elapsed: float = 0.0
    best_score: float = float("inf")
    best_auc: float = float("nan")
    best_ks: float = float("nan")
    best_pulls: float = float("nan")
    best_step: int = -1
    since_best: int = 0
    history: list = field(default_factory=list)
    #: the ``reselect`` best validations so far, best first: dicts of step, score, bdt_ks, auc, pull_rms
    candidates: list = field(default_factory=list)
    since_candidate: int = 0
    #: after the fit, with ``reselect`` > 1: each candidate's step, selection score and fresh score
    reselection: list = field(default_factory=list)


def set_determinism(seed: int) -> None:
    """Seed Python, numpy, Keras and TensorFlow with ``seed`` and make TensorFlow's ops deterministic.

    Every fit of :mod:`mambah.training` (GANs, flag classifiers) calls it first, so that a training
    is reproducible from its seed on the same machine and library versions
    (``tf.config.experimental.enable_op_determinism``; ignored where TensorFlow lacks it).
    """
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(int(seed))
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception:  # pragma: no cover - older TF
        pass


def _min_n_eff() -> float:
    from mambah.validation.pideff import MIN_N_EFF

    return MIN_N_EFF


def selection_bins(conditions, weights=None) -> dict | None:
    """Efficiency bins of a validation sample, coarse enough for its size.

    :func:`mambah.validation.default_bins` of the momentum, pseudorapidity and occupancy
    conditions (else of every condition), dropping axes from the last (occupancy, then η) while the
    average cell would hold an effective size below twice
    :data:`~mambah.validation.pideff.MIN_N_EFF` (the bins then enter the pulls); then two halves
    of the first axis, then a single cell (the overall efficiency, which needs an effective size
    of ``MIN_N_EFF``). None below that.

    Args:
        conditions: DataFrame of the conditions (named columns).
        weights: per-row (s)weights, or None.
    """
    from mambah.errors import ConfigurationError as _CE
    from mambah.validation import default_bins
    from mambah.validation.pideff import _guess_axes
    from mambah.validation.stats import effective_size

    w = None if weights is None else np.asarray(weights, dtype=float)
    n_eff = effective_size(w) if w is not None else float(len(conditions))
    axes = _guess_axes(list(conditions.columns)) or list(conditions.columns)
    while axes:
        try:
            bins = default_bins(conditions, w, columns=axes, where="the validation rows")
        except _CE:
            return None
        cells = int(np.prod([len(e) - 1 for e in bins.values()]))
        if n_eff / cells >= 2 * _min_n_eff():
            return bins
        if len(axes) == 1:
            break
        axes = axes[:-1]
    if not axes:
        return None
    from mambah.validation.compare import quantile_edges

    x = conditions[axes[0]].to_numpy(dtype=float)
    for n in (2, 1):  # two halves of the first axis, then one cell: the overall efficiency
        if n_eff / n >= (2 if n > 1 else 1) * _min_n_eff():
            e = np.asarray(quantile_edges(x, np.ones(len(x)) if w is None else w, n), dtype=float)
            if len(e) < 2:
                e = np.array([x.min(), x.max()])
            e[-1] = np.nextafter(e[-1], np.inf)
            return {axes[0]: e}
    return None


class CramerGANTrainer:
    """Fit a conditional Cramér GAN ``targets | conditions`` on sWeighted data.

    Args:
        config: a :class:`GANConfig` (defaults are good settings).
        condition_names, target_names: names used in messages and validation tables.
        checkpoint_dir: where to write checkpoints (best and last), ``None`` = none.
        resume: continue from ``checkpoint_dir`` if it holds a checkpoint.
        show_progress: a tqdm bar with the loss terms and the validation score.

    Fitted attributes:
        cond_pre_, targ_pre_: :class:`~mambah.nn.preprocessing.QuantileGaussianizer`.
        generator_: the generator with the best (EMA) weights, Keras model.
        best_score_, best_step_: the selection score of the kept weights (``config.selection``),
            at which step; best_ks_, best_auc_, best_pull_rms_: its BDT-KS, AUC and RMS of the
            efficiency pulls (NaN when the conditions give no bins).
        reselection_: with ``reselect`` > 1, the candidates (step, ``bdt_ks`` of their validation,
            ``rescore``: the fresh score that chose among them), best fresh score first; else [].
        history_: list of dicts (step, epoch, seconds, losses, validation scores).
        train_seconds_, steps_, samples_seen_: cost of the fit.
        weight_mean_: the global mean weight used to normalise the sWeights.
    """

    def __init__(self, config: GANConfig | None = None, *, condition_names=None, target_names=None,
                 checkpoint_dir: str | os.PathLike | None = None, resume: bool = False,
                 show_progress: bool = False):
        self.config = config or GANConfig()
        self.condition_names = condition_names
        self.target_names = target_names
        self.checkpoint_dir = checkpoint_dir
        self.resume = resume
        self.show_progress = show_progress

    @classmethod
    def from_model_dir(cls, path: str | os.PathLike) -> CramerGANTrainer:
        """A fitted trainer from a PID model directory (the nominal of an ensemble trained later).

        It has what a fit leaves for inference and for :class:`GANInit`: ``config`` (from the
        card, :meth:`GANConfig.from_hyperparameters`), ``cond_pre_``, ``targ_pre_`` and
        ``generator_``, and ``model_dir_``/``card_``. The critic is not saved in a model directory,
        so a warm start from it begins with a new critic (:meth:`GANInit.from_trainer`). Scores of
        the fit (``best_*``, ``history_``) are those of the card's ``metrics`` and ``training``.
        """
        from mambah.nn.pidmodel import PidModel

        m = PidModel.load(path)
        t = cls(GANConfig.from_hyperparameters(m.card["hyperparameters"]),
                condition_names=list(m.conditions), target_names=list(m.targets))
        t.cond_pre_, t.targ_pre_, t.generator_ = m.cond_pre, m.targ_pre, m.generator
        t.model_dir_, t.card_ = Path(path), m.card
        metrics, training = m.card.get("metrics", {}), m.card.get("training", {})
        t.best_ks_ = float(metrics.get("selection_bdt_ks", float("nan")))
        t.best_step_ = int(metrics.get("best_step", -1))
        t.train_seconds_ = float(training.get("seconds", float("nan")))
        t.steps_ = int(training.get("steps", 0))
        return t

    # ------------------------------------------------------------------ helpers
    def _build(self, n_c: int, n_t: int):
        import keras

        from mambah.nn.cramer import CramerGAN
        from mambah.nn.layers import build_critic, build_generator

        cfg = self.config
        kw = dict(width=cfg.gen_width, depth=cfg.gen_depth, activation=cfg.activation, residual=cfg.residual)
        gen = build_generator(n_c, cfg.n_noise, n_t, **kw, name="generator")
        ema = build_generator(n_c, cfg.n_noise, n_t, **kw, name="generator_ema")
        ema.set_weights(gen.get_weights())
        critic = build_critic(n_c + n_t, cfg.critic_outputs, width=cfg.critic_width, depth=cfg.critic_depth,
                              activation=cfg.activation, residual=cfg.residual)
        gan = CramerGAN(gen, critic, ema, n_noise=cfg.n_noise, gp_lambda=cfg.gp_lambda,
                        critic_steps=cfg.critic_steps, ema_decay=cfg.ema_decay, bce_xi=cfg.bce_xi, seed=cfg.seed)
        gan.compile(
            g_optimizer=keras.optimizers.Adam(cfg.g_lr, beta_1=cfg.beta_1, beta_2=cfg.beta_2),
            c_optimizer=keras.optimizers.Adam(cfg.c_lr, beta_1=cfg.beta_1, beta_2=cfg.beta_2),
        )
        return gan

    def generate_preprocessed(self, generator, c_pre: np.ndarray, seed: int) -> np.ndarray:
        """Run ``generator`` on preprocessed conditions with seeded Gaussian noise (float32)."""
        rng = np.random.default_rng(seed)
        noise = rng.standard_normal((len(c_pre), self.config.n_noise), dtype=np.float32)
        return predict_generator(generator, c_pre, noise)

    def _score(self, generator, valid, seed: int, n_repeats: int | None = None) -> dict:
        """The validation scores of ``generator``: ``bdt_ks``, ``auc``, ``pull_rms`` (RMS of the
        efficiency pulls; NaN without bins) and ``score`` (the selection score, lower is better)."""
        from mambah.validation import bdt_ks_score, efficiency_pulls, pull_score
        import pandas as pd

        c_raw, y_raw, w, c_pre = valid
        y_gen = self.targ_pre_.inverse_transform(self.generate_preprocessed(generator, c_pre, seed))
        cols = list(self.condition_names) + list(self.target_names)
        ref = pd.DataFrame(np.column_stack([c_raw, y_raw]), columns=cols)
        gen = pd.DataFrame(np.column_stack([c_raw, y_gen]), columns=cols)
        # the generated rows are twins of the validation rows (same conditions, same sWeight):
        # split them together (paired), or the classifier learns condition points, not the model
        res = bdt_ks_score(ref, gen, cols, ref_weight=w, gen_weight=w, seed=seed,
                           n_repeats=n_repeats or self.config.valid_repeats, paired=True)
        rms = float("nan")
        if self._pull_bins is not None:
            # one generated twin per row: its own noise is as large as the data's, hence in the pull
            rms = pull_score(efficiency_pulls(ref, gen, list(self.target_names), weight=w, gen_weight=w,
                                              bins=self._pull_bins, gen_error_in_pull=True))
        score = res.bdt_ks
        if self.config.selection == "ks_pulls" and np.isfinite(rms):
            score = res.bdt_ks * max(1.0, rms)
        return {"score": float(score), "bdt_ks": float(res.bdt_ks), "auc": float(res.auc), "pull_rms": rms}

    def _efficiency_bins(self, c_raw, w):
        """The validation rows' efficiency bins (:func:`selection_bins`); None, with a warning, when
        the validation rows are too few for any bin."""
        import pandas as pd

        df = pd.DataFrame(np.asarray(c_raw, dtype=float), columns=list(self.condition_names))
        bins = selection_bins(df, w)
        if bins is None:
            log.warning("the %d validation rows are too few for efficiency bins with an effective size of %.0f: "
                        "checkpoints are selected by the BDT-KS alone", len(df), 2 * _min_n_eff())
        return bins

    # -------------------------------------------------------------- checkpoints
    def _save_checkpoint(self, gan, state: _State, best_weights, rng) -> None:
        if self.checkpoint_dir is None:
            return
        d = Path(self.checkpoint_dir)
        d.mkdir(parents=True, exist_ok=True)
        arrays = {}
        for prefix, ws in (("gen", gan.generator.get_weights()), ("critic", gan.critic.get_weights()),
                           ("ema", gan.generator_ema.get_weights()), ("best", best_weights),
                           ("gopt", [v.numpy() for v in gan.g_optimizer.variables]),
                           ("copt", [v.numpy() for v in gan.c_optimizer.variables]),
                           ("seedgen", [gan.seed_generator.state.numpy()]),
                           *((f"cand{j}", cw) for j, cw in enumerate(self._cand_weights))):
            for i, a in enumerate(ws):
                arrays[f"{prefix}_{i:04d}"] = np.asarray(a)
        arrays.update(self.cond_pre_.to_arrays("cond"))
        arrays.update(self.targ_pre_.to_arrays("targ"))
        tmp = d / ".checkpoint.npz.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        meta = {"state": asdict(state), "config": asdict(self.config), "rng": rng.bit_generator.state,
                "weight_mean": self.weight_mean_}
        tmpj = d / ".checkpoint.json.tmp"
        tmpj.write_text(json.dumps(meta, default=json_default))
        os.replace(tmp, d / "checkpoint.npz")
        os.replace(tmpj, d / "checkpoint.json")

    def _load_checkpoint(self, gan, rng):
        d = Path(self.checkpoint_dir)
        meta = json.loads((d / "checkpoint.json").read_text())
        # settings added since the checkpoint: their defaults, or the behaviour before them where they
        # change what a fit does (a checkpoint of clipped-target fits cannot go on with signed ones)
        legacy = {"signed_targets": False, "selection": "ks"}
        saved = asdict(GANConfig()) | legacy | meta["config"]
        free = ("epochs", "max_time", "patience", "reselect", "reselect_repeats")  # may change on resume
        # (compared as JSON stores them: tuples such as scale_functions come back as lists)
        now = json.loads(json.dumps(asdict(self.config) | {k: saved[k] for k in free}, default=json_default))
        if json.loads(json.dumps(saved, default=json_default)) != now:
            raise ConfigurationError(
                f"the checkpoint in {str(d)!r} was written with other hyperparameters; "
                "resume with the same settings or start afresh without --resume")
        with np.load(d / "checkpoint.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}

        def group(prefix):
            return [arrays[k] for k in sorted(arrays) if k.startswith(prefix + "_") and k[len(prefix) + 1:].isdigit()]

        gan.generator.set_weights(group("gen"))
        gan.critic.set_weights(group("critic"))
        gan.generator_ema.set_weights(group("ema"))
        for v, a in zip(gan.g_optimizer.variables, group("gopt")):
            v.assign(a)
        for v, a in zip(gan.c_optimizer.variables, group("copt")):
            v.assign(a)
        gan.seed_generator.state.assign(group("seedgen")[0])
        rng.bit_generator.state = meta["rng"]
        st = _State(**meta["state"])
        st.reselection = []  # made again at the end of this fit
        self._cand_weights = [group(f"cand{j}") for j in range(len(st.candidates))]
        return st, group("best")

    # ------------------------------------------------------------------- fit
    def fit(self, conditions, targets, weights=None, valid=None, *, row_weights=None,
            init: GANInit | None = None) -> CramerGANTrainer:
        """Train on ``conditions`` (n, k_c), ``targets`` (n, k_t) with sWeights ``weights`` (n,).

        Args:
            valid: ``(conditions, targets, weights)`` of held-out rows for the validation score
                (best checkpoint, early stopping). ``None``: no validation, the last EMA weights are kept.
            row_weights: optional per-row multipliers of the training weights (n,), finite and >= 0,
                e.g. the Poisson(1) counts of a bootstrap replica (:mod:`mambah.training.ensemble`);
                the fit then uses ``weights * row_weights`` everywhere (preprocessing, loss).
            init: a :class:`GANInit`: its preprocessing is used instead of fitting one, and its
                weights (if any) instead of the random initialisation (a warm start).
        """

        from mambah.progress import progress

        cfg = self.config
        cfg.validate()
        c = np.asarray(conditions, dtype=float)
        y = np.asarray(targets, dtype=float)
        if c.ndim == 1:
            c = c[:, None]
        if y.ndim == 1:
            y = y[:, None]
        n = len(c)
        w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
        if len(y) != n or len(w) != n:
            raise DataError(f"conditions, targets and weights have {n}, {len(y)} and {len(w)} rows")
        if row_weights is not None:
            m = np.asarray(row_weights, dtype=float)
            if m.shape != (n,) or not np.isfinite(m).all() or (m < 0).any():
                raise DataError(f"row_weights must be {n} finite values >= 0 (one per training row), "
                                f"got shape {m.shape}" + (f", minimum {m.min():.6g}" if m.size else ""))
            w = w * m
        if n < cfg.batch_size:
            raise DataError(
                f"{n} training rows are fewer than one batch ({cfg.batch_size}); give more data or a smaller batch size")
        if w.sum() <= 0:
            raise DataError(f"the training weights sum to {w.sum():.6g} <= 0")
        self.condition_names = list(self.condition_names or [f"c{i}" for i in range(c.shape[1])])
        self.target_names = list(self.target_names or [f"t{i}" for i in range(y.shape[1])])

        set_determinism(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        if init is None:
            if cfg.condition_transform == "quantile":
                self.cond_pre_ = QuantileGaussianizer(cfg.n_knots).fit(c, w, names=self.condition_names)
            else:  # "affine" (cheap to evaluate): log of the momenta, logit of probabilities (scale_functions)
                self.cond_pre_ = AffineScaler(dict(cfg.scale_functions)).fit(c, w, names=self.condition_names)
            self.targ_pre_ = QuantileGaussianizer(cfg.n_knots).fit(y, w, names=self.target_names,
                                                                    signed=cfg.signed_targets)
        else:
            if init.cond_pre.n_columns != c.shape[1] or init.targ_pre.knots_.shape[0] != y.shape[1]:
                raise ConfigurationError(
                    f"the initial preprocessing has {init.cond_pre.n_columns} condition and "
                    f"{init.targ_pre.knots_.shape[0]} target columns, the data {c.shape[1]} and {y.shape[1]}")
            self.cond_pre_, self.targ_pre_ = init.cond_pre, init.targ_pre
        c_pre = self.cond_pre_.transform(c, mode="mid")
        y_pre = self.targ_pre_.transform(y, mode="random", rng=np.random.default_rng([cfg.seed, 1]))
        self.weight_mean_ = float(w.mean())
        w_norm = (w / self.weight_mean_).astype(np.float32)

        vdata = None
        if valid is not None:
            vc, vy, vw = (np.asarray(a, dtype=float) for a in valid)
            vc = vc[:, None] if vc.ndim == 1 else vc
            vy = vy[:, None] if vy.ndim == 1 else vy
            vdata = (vc, vy, vw, self.cond_pre_.transform(vc, mode="mid"))
        # the efficiency bins of the checkpoint selection: from the validation rows alone, fixed for the fit
        self._pull_bins = self._efficiency_bins(vdata[0], vdata[2]) if vdata is not None else None

        gan = self._build(c.shape[1], y.shape[1])
        if init is not None and init.generator_weights is not None:
            gan.generator.set_weights(init.generator_weights)
            gan.generator_ema.set_weights(init.generator_weights)
        if init is not None and init.critic_weights is not None:
            gan.critic.set_weights(init.critic_weights)
        import tensorflow as tf

        step_fn = tf.function(gan.train_step, reduce_retracing=True)
        state = _State()
        self._cand_weights = []
        best_weights = gan.generator_ema.get_weights()
        if self.resume and self.checkpoint_dir is not None and (Path(self.checkpoint_dir) / "checkpoint.json").is_file():
            state, best_weights = self._load_checkpoint(gan, rng)
            log.info("resumed from %s at step %d (%.0f s, best BDT-KS %.4f)", self.checkpoint_dir,
                     state.step, state.elapsed, state.best_score)

        bs = int(cfg.batch_size)
        k = int(cfg.critic_steps)  # batches per step: one per critic update (the generator uses the last)
        steps_per_epoch = max(1, n // (bs * k))
        lr_ratio = cfg.lr_final / cfg.g_lr
        t0 = time.perf_counter() - state.elapsed
        last_valid = time.perf_counter()
        bar = progress(total=None, enabled=self.show_progress, desc="training", unit="step", initial=state.step,
                       mininterval=1.0)
        stop = False
        logs = {}
        try:
            while not stop and state.epoch < cfg.epochs:
                perm = rng.permutation(n)
                for b in range(steps_per_epoch):
                    elapsed = time.perf_counter() - t0
                    prog = max(state.epoch / cfg.epochs, elapsed / cfg.max_time)
                    if prog >= 1.0:
                        stop = True
                        break
                    if state.step % 20 == 0:
                        f = lr_ratio ** prog
                        gan.g_optimizer.learning_rate.assign(cfg.g_lr * f)
                        gan.c_optimizer.learning_rate.assign(cfg.c_lr * f)
                    idx = perm[b * bs * k:(b + 1) * bs * k]
                    if len(idx) < bs * k:  # fewer rows than critic_steps batches: draw the rest again
                        idx = np.concatenate([idx, rng.choice(n, bs * k - len(idx))])
                    if k == 1:
                        logs = step_fn((c_pre[idx], y_pre[idx], w_norm[idx]))
                    else:
                        logs = step_fn((c_pre[idx].reshape(k, bs, -1), y_pre[idx].reshape(k, bs, -1),
                                        w_norm[idx].reshape(k, bs)))
                    state.step += 1
                    bar.update(1)
                    if state.step % 50 == 0:
                        bar.set_postfix({k: f"{float(v):.4f}" for k, v in logs.items()}
                                        | {"best_ks": f"{state.best_score:.4f}"}, refresh=False)
                    due = (state.step % cfg.validate_every_steps == 0 if cfg.validate_every_steps > 0
                           else time.perf_counter() - last_valid >= cfg.validate_every)
                    if vdata is not None and due:
                        cand_steps = [c["step"] for c in state.candidates]
                        stop = self._validate(gan, vdata, state, logs, t0, rng, best_weights)
                        if state.since_best == 0:
                            best_weights = gan.generator_ema.get_weights()
                        if state.since_best == 0 or [c["step"] for c in state.candidates] != cand_steps:
                            self._save_checkpoint(gan, state, best_weights, rng)
                        last_valid = time.perf_counter()
                        if stop:
                            break
                    for m in gan.metrics:
                        if state.step % steps_per_epoch == 0:
                            m.reset_state()
                else:
                    state.epoch += 1
            if vdata is not None and (not state.history or state.history[-1]["step"] != state.step):
                # a last look at the final weights (the learning rate is lowest at the end)
                self._validate(gan, vdata, state, logs, t0, rng, best_weights)
                if state.since_best == 0:
                    best_weights = gan.generator_ema.get_weights()
            if vdata is not None and cfg.reselect > 1 and len(state.candidates) > 1:
                best_weights = self._reselect(gan, vdata, state)
        finally:
            bar.close()
        state.elapsed = time.perf_counter() - t0
        if vdata is None:  # nothing to choose by: keep the final averaged weights
            best_weights = gan.generator_ema.get_weights()
        self._save_checkpoint(gan, state, best_weights, rng)
        gan.generator_ema.set_weights(best_weights)
        self.gan_ = gan
        self.generator_ = gan.generator_ema
        self.best_score_ = state.best_score if vdata is not None else float("nan")
        self.best_auc_ = state.best_auc
        self.best_ks_ = state.best_ks
        self.best_pull_rms_ = state.best_pulls
        self.best_step_ = state.best_step
        self.reselection_ = state.reselection
        self.history_ = state.history
        self.train_seconds_ = state.elapsed
        self.steps_ = state.step
        self.samples_seen_ = state.step * bs * k
        return self

    def _validate(self, gan, vdata, state: _State, logs, t0, rng, best_weights) -> bool:
        sc = self._score(gan.generator_ema, vdata, seed=self.config.seed + 7)
        score = sc["score"]
        elapsed = time.perf_counter() - t0
        rec = {"step": state.step, "epoch": state.epoch, "seconds": round(elapsed, 1), **sc,
               "lr": float(gan.g_optimizer.learning_rate.numpy())}
        rec.update({k: float(v) for k, v in logs.items()})
        state.history.append(rec)
        if score < state.best_score:
            state.best_score, state.best_step, state.since_best = score, state.step, 0
            state.best_ks, state.best_auc, state.best_pulls = sc["bdt_ks"], sc["auc"], sc["pull_rms"]
        else:
            state.since_best += 1
        n = self.config.reselect
        if n > 1 and (len(state.candidates) < n or score < state.candidates[-1]["score"]):
            i = int(np.searchsorted([c["score"] for c in state.candidates], score, side="right"))
            state.candidates.insert(i, {"step": state.step, **sc})
            self._cand_weights.insert(i, gan.generator_ema.get_weights())
            del state.candidates[n:], self._cand_weights[n:]
            state.since_candidate = 0
        else:
            state.since_candidate += 1
        state.elapsed = elapsed
        log.info("step %d (%.0f s): validation BDT-KS %.4f AUC %.4f pull RMS %.2f, score %.4f (best %.4f at step %d)",
                 state.step, elapsed, sc["bdt_ks"], sc["auc"], sc["pull_rms"], score, state.best_score,
                 state.best_step)
        return (state.since_candidate if n > 1 else state.since_best) >= self.config.patience

    def _reselect(self, gan, vdata, state: _State):
        """Score every candidate again (other seeds, ``reselect_repeats`` fits, the same seeds for all)
        and keep the best: returns its weights, and updates the state's best_* to it."""
        cfg = self.config
        rows = []
        for cand, weights in zip(state.candidates[:cfg.reselect], self._cand_weights):
            gan.generator_ema.set_weights(weights)
            sc = self._score(gan.generator_ema, vdata, seed=cfg.seed + 1013, n_repeats=cfg.reselect_repeats)
            rows.append((sc["score"], cand, sc, weights))
        rows.sort(key=lambda r: r[0])
        state.reselection = [{"step": c["step"], "score": c["score"], "bdt_ks": c["bdt_ks"], "rescore": s,
                              "rescore_bdt_ks": sc["bdt_ks"], "rescore_auc": sc["auc"],
                              "rescore_pull_rms": sc["pull_rms"]} for s, c, sc, _ in rows]
        s, cand, sc, weights = rows[0]
        log.info("reselection of %d candidates (%d classifier fits each): kept step %d, score %.4f "
                 "(its validation %.4f; the best validation, step %d, rescored %.4f)", len(rows),
                 cfg.reselect_repeats, cand["step"], s, cand["score"], state.candidates[0]["step"],
                 next(r["rescore"] for r in state.reselection if r["step"] == state.candidates[0]["step"]))
        state.best_score, state.best_step = cand["score"], cand["step"]
        state.best_ks, state.best_auc, state.best_pulls = cand["bdt_ks"], cand["auc"], cand["pull_rms"]
        return weights

    # ------------------------------------------------------------- inference
    def generate(self, conditions, seed: int = 0) -> np.ndarray:
        """Targets (raw units) for raw ``conditions`` with the kept generator."""
        c = np.asarray(conditions, dtype=float)
        c = c[:, None] if c.ndim == 1 else c
        z = self.generate_preprocessed(self.generator_, self.cond_pre_.transform(c, mode="mid"), seed)
        return self.targ_pre_.inverse_transform(z)


def save_pid_model(out: str | os.PathLike, trainer: CramerGANTrainer, card: dict, *, overwrite: bool = False) -> Path:
    """Write a PID model directory (kind ``"pid"``) from a fitted :class:`CramerGANTrainer`.

    The directory holds a clean copy of the kept generator (``generator.keras``, no training
    state), the quantile transforms of conditions and targets (``arrays.npz``) and the card, with
    ``hyperparameters.n_noise`` filled in; it loads as :class:`~mambah.nn.pidmodel.PidModel`.
    """
    if not hasattr(trainer, "generator_"):
        raise ConfigurationError("the trainer is not fitted: call fit() first")
    full = dict(card)
    full.pop("marginal_correction", None)  # a new generator: a correction is fitted for it afterwards
    full.setdefault("kind", "pid")
    hp = dict(full.get("hyperparameters", {}))
    hp.setdefault("n_noise", trainer.config.n_noise)
    full["hyperparameters"] = hp
    arrays = {}
    arrays.update(trainer.cond_pre_.to_arrays("cond"))
    arrays.update(trainer.targ_pre_.to_arrays("targ"))
    import keras

    # a clean copy of the kept generator (no training state), named "generator"
    gen = keras.models.clone_model(trainer.generator_)
    gen.set_weights(trainer.generator_.get_weights())
    return save_model_dir(out, full, networks={"generator": gen}, arrays=arrays, overwrite=overwrite)

