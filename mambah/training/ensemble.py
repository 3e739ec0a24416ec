"""Ensembles of PID GANs: the nominal model plus K members trained on bootstrap replicas.

An analyst needs the uncertainty of the model itself beside the statistical one of the data. The
ensemble estimates it by the bootstrap (Efron 1979): each member is the same conditional Cramér GAN
fitted to a replica of the calibration sample in which every training row enters ``m_i`` times,
``m_i ~ Poisson(1)`` independently (the "Poisson bootstrap", Hanley & MacGibbon 2006, which needs no
fixed sample size), so that the member's weights are ``sWeight_i * m_i``. The spread of the members'
predictions (e.g. of a cut's efficiency) then estimates the spread of the nominal model over
repeated calibration samples, training noise included.

**What a member shares with the nominal.** The quantile transforms of conditions and targets (one
``arrays.npz``, so that all members are evaluated on the same preprocessed inputs and the same
noise: :meth:`PidModel.generate_variations <mambah.nn.pidmodel.PidModel.generate_variations>`), the
architecture and hyperparameters, and the held-out rows that select its checkpoint (not
bootstrapped). Member k (k = 1..K) has its own seed ``seeds[k-1] = seed + 1000 k``
(:func:`member_seed`): it seeds the initialisation, the batch order and the training noise
(``GANConfig.seed``), and the Poisson counts are ``numpy.random.default_rng([seeds[k-1], 22])
.poisson(1.0, n_train)`` (:func:`bootstrap_counts`).

**From scratch or warm-started.** From scratch (the default) each member starts from its own random
initialisation with the nominal's full budget, so it costs about one nominal training. Warm-started
(``warm_start=True``, CLI ``--warm-start``) it starts from the nominal's kept generator (its EMA
weights) and the nominal's last critic, with ``warm_fraction`` (default 0.25) of the nominal's budget
(``epochs`` and ``max_time`` both scaled) and the same learning-rate schedule compressed into it (from
the initial rate down to ``lr_final``: a warm restart, Loshchilov & Hutter arXiv:1608.03983). Warm
starts are cheaper but their members stay closer to the nominal than independent fits would, so their
spread may be artificially small: the card records which was used, and the cost per member.

On disk (:meth:`PidEnsemble.save`)::

    DIR/card.json                 # one card; its "ensemble" section describes the members
    DIR/generator.keras           # the nominal, as in a model without an ensemble
    DIR/arrays.npz                # the shared preprocessing
    DIR/members/member-01.keras   # member 1 ... member K (hashes in the card's "files")

Example:
    >>> from mambah.training.ensemble import train_ensemble      # doctest: +SKIP
    >>> ens = train_ensemble(c, y, w, valid=(vc, vy, vw), members=5, config=GANConfig(seed=1))  # doctest: +SKIP
    >>> ens.save("models/pid-p-dllp", card)                        # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mambah.errors import ConfigurationError
from mambah.training.gan import CramerGANTrainer, GANConfig, GANInit

log = logging.getLogger(__name__)

__all__ = ["PidEnsemble", "train_ensemble", "member_seed", "bootstrap_counts", "member_config", "member_file",
           "BOOTSTRAP", "MEMBERS_DIR", "WARM_FRACTION"]

#: how a member's training weights are made (the card's ``ensemble.bootstrap``)
BOOTSTRAP = "poisson(1) x sWeight"
#: the subdirectory of the model directory that holds the members
MEMBERS_DIR = "members"
#: a warm-started member's budget as a fraction of the nominal's (epochs and max_time)
WARM_FRACTION = 0.25


def member_seed(seed: int, k: int) -> int:
    """The seed of member ``k`` (1..K) of an ensemble whose nominal model has seed ``seed``: ``seed + 1000 k``."""
    return int(seed) + 1000 * int(k)


def bootstrap_counts(n: int, seed: int) -> np.ndarray:
    """The Poisson(1) counts (float64, shape ``(n,)``) multiplying the sWeights of a member seeded
    ``seed``: ``numpy.random.default_rng([seed, 22]).poisson(1.0, n)``."""
    return np.random.default_rng([int(seed), 22]).poisson(1.0, int(n)).astype(float)


def member_config(config: GANConfig, k: int, *, warm_start: bool = False,
                  warm_fraction: float = WARM_FRACTION) -> GANConfig:
    """The :class:`GANConfig` of member ``k``: the nominal's, with the member's seed and, warm-started,
    ``warm_fraction`` of the budget (``epochs`` rounded up, ``max_time``)."""
    cfg = copy.deepcopy(config)
    cfg.seed = member_seed(config.seed, k)
    if warm_start:
        if not 0 < warm_fraction <= 1:
            raise ConfigurationError(f"warm_fraction must be in (0, 1], not {warm_fraction!r}")
        cfg.epochs = max(1, math.ceil(config.epochs * warm_fraction))
        cfg.max_time = config.max_time * warm_fraction
    return cfg


def member_file(k: int, n_members: int) -> str:
    """The file of member ``k`` of ``n_members`` in the model directory: ``members/member-01.keras`` ..."""
    return f"{MEMBERS_DIR}/member-{k:0{max(2, len(str(n_members)))}d}.keras"


@dataclass
class PidEnsemble:
    """A fitted nominal model and its ensemble members (what :func:`train_ensemble` returns).

    Attributes:
        nominal: the fitted :class:`~mambah.training.gan.CramerGANTrainer` of the nominal model.
        members: the members' fitted trainers (they share the nominal's ``cond_pre_``/``targ_pre_``).
        seeds: member k's seed at ``seeds[k-1]`` (:func:`member_seed`).
        warm_start: whether the members started from the nominal's weights.
        warm_fraction: their budget as a fraction of the nominal's (warm starts), else ``None``.
        n_train: training rows (the length of each member's Poisson counts).
    """

    nominal: CramerGANTrainer
    members: list[CramerGANTrainer] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    warm_start: bool = False
    warm_fraction: float | None = None
    n_train: int = 0

    def card_entry(self, extra: dict | None = None) -> dict:
        """The card's ``"ensemble"`` section (``extra``: more per-member entries, e.g. held-out scores)."""
        k = len(self.members)
        entry = {
            "members": k,
            "files": [member_file(i, k) for i in range(1, k + 1)],
            "bootstrap": BOOTSTRAP,
            "seeds": list(self.seeds),
            "warm_start": bool(self.warm_start),
            "warm_fraction": self.warm_fraction,
            "steps_per_member": [int(m.steps_) for m in self.members],
            "seconds_per_member": [round(float(m.train_seconds_), 1) for m in self.members],
            "selection_bdt_ks": [None if math.isnan(m.best_ks_) else float(m.best_ks_) for m in self.members],
            "best_step": [int(m.best_step_) for m in self.members],
            **(extra or {}),
            "note": ("member k (file k) is the nominal's GAN refitted with seed seeds[k-1] (initialisation, batch "
                     "order, noise) on the training rows weighted by sWeight x Poisson(1) counts "
                     "(numpy default_rng([seeds[k-1], 22]).poisson(1, n_train)), with the nominal's preprocessing "
                     "(arrays.npz) and checkpoint selection on the same held-out rows; "
                     + ("warm-started from the nominal's kept generator and last critic, with warm_fraction of its "
                        "budget and the same learning-rate schedule compressed into it"
                        if self.warm_start else "from scratch (own random initialisation), the nominal's budget")
                     + " (mambah.training.ensemble)"),
        }
        return entry

    def save(self, out: str | os.PathLike, card: dict, *, overwrite: bool = False) -> Path:
        """Write ONE model directory (kind ``"pid"``): the nominal as
        :func:`~mambah.training.gan.save_pid_model` writes it, plus ``members/member-kk.keras`` and the
        card's ``"ensemble"`` section (from :meth:`card_entry` unless ``card`` has one)."""
        import keras

        from mambah.modeldir import save_model_dir

        full = dict(card)
        if full.pop("marginal_correction", None) is not None:  # (a card copied from a calibrated model)
            log.warning("the card of %s had a marginal correction: it is not carried over (its maps belong to other "
                        "generators); refit it with mambah train marginals", out)
        full.setdefault("kind", "pid")
        hp = dict(full.get("hyperparameters", {}))
        hp.setdefault("n_noise", self.nominal.config.n_noise)
        full["hyperparameters"] = hp
        full.setdefault("ensemble", self.card_entry())
        arrays = {}
        arrays.update(self.nominal.cond_pre_.to_arrays("cond"))
        arrays.update(self.nominal.targ_pre_.to_arrays("targ"))

        def clean(gen):  # a copy of the kept generator without training state
            g = keras.models.clone_model(gen)
            g.set_weights(gen.get_weights())
            return g

        networks = {"generator": clean(self.nominal.generator_)}
        k = len(self.members)
        for i, m in enumerate(self.members, start=1):
            networks[member_file(i, k)[:-len(".keras")]] = clean(m.generator_)
        return save_model_dir(out, full, networks=networks, arrays=arrays, overwrite=overwrite)


def train_ensemble(conditions, targets, weights=None, valid=None, *, members: int, config: GANConfig | None = None,
                   nominal: CramerGANTrainer | None = None, warm_start: bool = False,
                   warm_fraction: float = WARM_FRACTION, condition_names=None, target_names=None,
                   checkpoint_dir: str | os.PathLike | None = None, resume: bool = False,
                   show_progress: bool = False) -> PidEnsemble:
    """Fit the nominal PID GAN (unless given) and ``members`` bootstrap replicas of it.

    Args:
        conditions, targets, weights, valid: the training rows and held-out rows, as for
            :meth:`CramerGANTrainer.fit <mambah.training.gan.CramerGANTrainer.fit>` (the same
            held-out rows select every member's checkpoint).
        members: K >= 1.
        config: the nominal's :class:`~mambah.training.gan.GANConfig` (ignored when ``nominal``
            is given: its config is used).
        nominal: an already fitted trainer of the nominal model on these rows; ``None``: fitted here,
            exactly as ``CramerGANTrainer(config).fit(conditions, targets, weights, valid)``.
        warm_start: start each member from the nominal's weights with ``warm_fraction`` of its
            budget (see the module docstring), instead of from scratch with the full budget.
        checkpoint_dir: the nominal's checkpoints there, member k's in ``checkpoint_dir/member-kk``;
            ``resume``: continue each fit from its checkpoint if there is one.

    Returns:
        a :class:`PidEnsemble`; ``.save(out, card)`` writes the model directory.
    """
    k_members = int(members) if int(members) == members else -1
    if k_members < 1:
        raise ConfigurationError(f"an ensemble needs members >= 1 (an integer), not {members!r}")
    if nominal is None:
        nominal = CramerGANTrainer(config, condition_names=condition_names, target_names=target_names,
                                   checkpoint_dir=checkpoint_dir, resume=resume, show_progress=show_progress)
        nominal.fit(conditions, targets, weights, valid)
    elif not hasattr(nominal, "generator_"):
        raise ConfigurationError("the nominal trainer is not fitted: call fit() first, or pass nominal=None")
    n = len(np.asarray(conditions))
    ens = PidEnsemble(nominal, warm_start=bool(warm_start), warm_fraction=float(warm_fraction) if warm_start else None,
                      n_train=n)
    init = GANInit.from_trainer(nominal, weights=bool(warm_start))
    for k in range(1, k_members + 1):
        cfg = member_config(nominal.config, k, warm_start=warm_start, warm_fraction=warm_fraction)
        counts = bootstrap_counts(n, cfg.seed)
        ckpt = None if checkpoint_dir is None else Path(checkpoint_dir) / Path(member_file(k, k_members)).stem
        log.info("ensemble member %d of %d: seed %d, %s, budget %s", k, k_members, cfg.seed,
                 "warm start from the nominal" if warm_start else "from scratch",
                 f"{cfg.epochs} epochs / {cfg.max_time:.0f} s")
        t = CramerGANTrainer(cfg, condition_names=nominal.condition_names, target_names=nominal.target_names,
                             checkpoint_dir=ckpt, resume=resume, show_progress=show_progress)
        t.fit(conditions, targets, weights, valid, row_weights=counts, init=init)
        ens.members.append(t)
        ens.seeds.append(cfg.seed)
        log.info("ensemble member %d: %d steps in %.0f s, selection BDT-KS %.4f", k, t.steps_, t.train_seconds_,
                 t.best_score_)
    return ens
