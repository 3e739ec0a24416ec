"""``mambah train flags``: an sWeighted Bernoulli classifier for PID flags (isMuon, hasRich ...).

Example::

    mambah train flags --data K_calib.parquet --species K --conditions P,ETA,nTracks,charge \\
        --targets isMuon,hasRich --weight sWeight --out models/pid-K-isMuon

The model (kind ``"pid-flags"``, :class:`mambah.nn.flags.FlagModel`) gives P(flag = 1 | conditions);
see :mod:`mambah.nn.flags`; the fit is :class:`mambah.training.flags.FlagTrainer`.
"""

from __future__ import annotations


def register(kinds) -> None:
    p = kinds.add_parser(
        "flags", help="train a PID flag classifier (isMuon, hasRich ...) on sWeighted calibration data",
        description="Train P(flag = 1 | conditions) for 0/1 target columns with an sWeighted binary "
                    "cross-entropy (negative sWeights allowed), keep the weights with the best sWeighted Brier "
                    "score on a held-out fraction, and write the model directory (kind 'pid-flags') with its "
                    "card: the held-out weighted BCE and Brier score and, per flag, the predicted vs observed "
                    "efficiency in bins of the first condition.",
    )
    p.add_argument("--data", required=True, help="training table: .parquet, .csv or file.root:tree")
    p.add_argument("--species", required=True, help="particle species the model describes (e.g. p, K, pi, mu, e)")
    p.add_argument("--conditions", required=True,
                   help="comma-separated condition columns, the first one (e.g. P) bins the efficiency check")
    p.add_argument("--targets", required=True, help="comma-separated 0/1 flag columns (e.g. isMuon,hasRich)")
    p.add_argument("--weight", default=None, help="sWeight column (default: every row weight 1)")
    p.add_argument("--out", "-o", required=True, help="model directory to write")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, default=None, help="stop after N epochs (default: the time budget)")
    budget.add_argument("--max-time", type=float, default=None,
                        help="training budget in minutes (default 10; early stopping usually ends sooner)")
    p.add_argument("--batch-size", type=int, default=None, help="minibatch size (default 2048)")
    p.add_argument("--seed", type=int, default=0, help="random seed: split, initialisation, batches (default 0)")
    p.add_argument("--valid-fraction", type=float, default=0.2,
                   help="held-out fraction: kept weights, early stopping and the card's metrics (default 0.2)")
    p.add_argument("--selection", default=None, help="pandas query applied first, e.g. 'P > 3000 and ETA < 5'")
    p.add_argument("--name", default=None, help="model name (default: the directory name)")
    p.add_argument("--version", dest="model_version", default="1", help="model version (default 1)")
    p.add_argument("--description", default=None, help="training-data description for the card")
    p.add_argument("--drop-nonfinite", action="store_true", help="drop rows with NaN/inf instead of failing")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model directory")
    e = p.add_argument_group("ensemble (the classifier's own uncertainty: mambah simulate --pid-variations)")
    e.add_argument("--ensemble", type=int, default=0, metavar="K",
                   help="also train K members on bootstrap replicas of the training rows (Poisson(1) counts x "
                        "sWeights, seeds seed + 1000 k), on the nominal's condition transform; they are stored in "
                        "the model directory and drawn with the nominal's uniforms (default 0: none)")
    e.add_argument("--nominal-from", metavar="DIR", default=None,
                   help="do not train the nominal: take it from the flag model directory DIR (its transform, "
                        "network, card and split seed; --conditions/--targets must be its own) and train only the "
                        "--ensemble K members on --data; --out gets DIR's model with the members")
    g = p.add_argument_group("network and training (the defaults are good settings)")
    g.add_argument("--width", type=int, default=None, help="hidden layer width (48)")
    g.add_argument("--depth", type=int, default=None, help="hidden layers (3)")
    g.add_argument("--activation", default=None, help="hidden activation (relu)")
    g.add_argument("--learning-rate", type=float, default=None, help="initial Adam learning rate (1e-2)")
    g.add_argument("--stop-on", choices=("brier", "bce"), default=None,
                   help="held-out score that chooses the kept weights and stops the training: sWeighted Brier "
                        "score or binary cross-entropy (brier)")
    g.add_argument("--patience", type=int, default=None,
                   help="epochs without a better held-out score before stopping (8)")
    p.set_defaults(func=run)


def build_config(args):
    """The :class:`~mambah.nn.flags.FlagConfig` from the CLI options (unset options keep the defaults)."""
    from mambah.cli.train_pid import set_budget
    from mambah.training.flags import FlagConfig

    cfg = FlagConfig(seed=args.seed)
    for opt in ("width", "depth", "activation", "learning_rate", "patience", "batch_size", "epochs", "stop_on"):
        v = getattr(args, opt, None)
        if v is not None:
            setattr(cfg, opt, v)
    set_budget(cfg, args)
    cfg.validate()
    return cfg


def run(args) -> int:
    import logging
    import shlex
    import sys
    from pathlib import Path

    import numpy as np

    from mambah.cli import progress_enabled
    from mambah.cli.train_pid import (check_split_weights, read_training_data, training_data_entry,
                                      write_training_support)
    from mambah.errors import ConfigurationError, DataError

    log = logging.getLogger("mambah.train.flags")
    if args.weight and args.weight in {c.strip() for c in f"{args.conditions},{args.targets}".split(",")}:
        raise ConfigurationError(f"the weight column {args.weight!r} is also a condition or a target")
    if args.max_time is not None and not args.max_time > 0:
        raise ConfigurationError(f"--max-time must be > 0 minutes, not {args.max_time}")
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ConfigurationError(f"{str(out)!r} already exists; choose another --out or pass --overwrite")
    if args.ensemble < 0:
        raise ConfigurationError(f"--ensemble must be >= 0, not {args.ensemble}")
    if args.nominal_from is not None:
        return run_members_of(args, log)
    cfg = build_config(args)

    # ---- the data: read, select, check, split — as `mambah train pid`
    conditions, targets, df, w, n_read, iv, it = read_training_data(args, log)
    where = args.data
    from mambah.training.flags import check_flag_values

    Y = check_flag_values(df[targets].to_numpy(), targets, where=where)
    C = df[conditions].to_numpy(dtype=float)
    if len(iv) < 10 or len(it) < 10:
        raise DataError(f"{len(df)} rows (after selection) are too few for a training and a validation part")
    yield_info = check_split_weights(w, iv, it, log)

    # ---- train
    from mambah.training.flags import FlagTrainer, efficiency_closure, save_flag_model, weighted_bce, weighted_brier
    from mambah.physics import describe_column

    trainer = FlagTrainer(cfg, condition_names=conditions, target_names=targets,
                          show_progress=progress_enabled(args))
    log.info("training %s | %s on %d rows (%d held out), weights %s, budget %s", ",".join(targets),
             ",".join(conditions), len(it), len(iv), args.weight or "1",
             f"{args.epochs} epochs" if args.epochs else f"{cfg.max_time / 60:.1f} min")
    trainer.fit(C[it], Y[it], w[it], valid=(C[iv], Y[iv], w[iv]))
    members, ensemble = [], None
    if args.ensemble:
        from mambah.training.flags import fit_flag_members

        members, ensemble = fit_flag_members(C[it], Y[it], w[it], (C[iv], Y[iv], w[iv]), members=args.ensemble,
                                             config=cfg, cond_pre=trainer.cond_pre_, condition_names=conditions,
                                             target_names=targets)

    # ---- held-out metrics
    prob = trainer.predict_proba(C[iv])
    bce, bce_per = weighted_bce(prob, Y[iv], w[iv])
    rate = (w[iv][:, None] * Y[iv]).sum(axis=0) / w[iv].sum()
    const = np.broadcast_to(np.clip(rate, 1e-7, 1 - 1e-7), Y[iv].shape)
    bce0, _ = weighted_bce(const, Y[iv], w[iv])
    brier, brier_per = weighted_brier(prob, Y[iv], w[iv])
    brier0, _ = weighted_brier(const, Y[iv], w[iv])
    eff = efficiency_closure(C[iv, 0], prob, Y[iv], w[iv], targets, column=conditions[0])
    log.info("held-out weighted BCE %.5f, Brier %.5f (constant-rate predictor %.5f, %.5f); max |eff diff| in %s bins: %s",
             bce, brier, bce0, brier0, conditions[0], ", ".join(f"{k} {v:.4f}" for k, v in eff["max_abs_eff_diff"].items()))

    card = {
        "name": args.name or out.name,
        "version": str(args.model_version),
        "kind": "pid-flags",
        "species": args.species,
        "conditions": [describe_column(c) for c in conditions],
        "targets": [describe_column(t) for t in targets],
        "units": "MeV, mm, ns (LHCb convention); momenta in MeV/c; targets are 0/1 flags, the model gives P(flag = 1)",
        "training_data": {**training_data_entry(args, n_read, len(df), w, it, iv),
                          "observed_rate": {t: float(r) for t, r in zip(targets, rate)}},
        "hyperparameters": {
            "model": "sWeighted Bernoulli classifier: MLP on quantile-Gaussianised conditions, one sigmoid per flag, "
                     "loss sum(w BCE)/sum(w), Adam, weight averaging (EMA), kept weights and early stopping by "
                     "the weighted held-out score stop_on",
            **vars(cfg)},
        "metrics": {
            "valid_bce": bce,
            "valid_bce_per_flag": dict(zip(targets, bce_per)),
            "valid_bce_constant": bce0,
            "valid_brier": brier,
            "valid_brier_per_flag": dict(zip(targets, brier_per)),
            "valid_brier_constant": brier0,
            "stopped_on": f"valid_{cfg.stop_on}",
            "max_abs_eff_diff": eff["max_abs_eff_diff"],
            **yield_info,
            "efficiency": eff,
            "best_epoch": trainer.best_epoch_,
            "note": (f"on the {len(iv)} held-out rows (also used for early stopping), weighted with {args.weight or '1'}: "
                     "valid_bce = sum(w BCE)/sum(w) and valid_brier = sum(w (y - p)^2)/sum(w), averaged over flags; "
                     "*_constant = the same for the constant observed rate; efficiency = per flag, in bins of "
                     f"{conditions[0]}, the predicted mean probability vs the weighted observed rate, diff = "
                     "predicted - observed (mambah.validation.efficiency.compare_in_bins), observed_error = "
                     "sqrt(sum w^2 (y - observed)^2)/sum w and stat_error = sqrt(sum w^2 (y - p)^2)/sum w (paired "
                     "rows, the error of diff used for max_pull; bins of >= 50 rows)."),
        },
        "training": {"seconds": round(trainer.train_seconds_, 1), "epochs": trainer.epochs_,
                     "steps": trainer.steps_, "history": trainer.history_},
        "command": "mambah " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv and "mambah" in sys.argv[0]
                   else None,
    }
    if ensemble is not None:
        card["ensemble"] = ensemble
    save_flag_model(out, trainer, card, overwrite=args.overwrite, members=members)
    write_training_support(out, card, conditions, df, w)
    print(f"wrote {out}: held-out weighted BCE {bce:.5f}, Brier {brier:.5f} (constant rate {bce0:.5f}, {brier0:.5f}); "
          f"max |eff diff| in {conditions[0]} "
          f"bins: " + ", ".join(f"{k} {v:.4f}" for k, v in eff["max_abs_eff_diff"].items())
          + f"; trained {trainer.train_seconds_:.0f} s, {trainer.epochs_} epochs")
    return 0


def run_members_of(args, log) -> int:
    """``--nominal-from DIR``: K ensemble members for an existing flag model, trained on ``--data``.

    The nominal (transform, network, card, held-out scores) is DIR's, unchanged; the members are fitted
    as :func:`~mambah.training.flags.fit_flag_members` fits those of a new nominal (DIR's
    hyperparameters, the split seeded by its ``hyperparameters.seed``; ``--epochs``/``--max-time``
    and ``--patience`` may replace its budget), on the rows of ``--data``: the card's
    ``ensemble.training_data`` records the members' file and hash beside the nominal's.
    """
    import dataclasses
    import shlex
    import sys
    from pathlib import Path

    from mambah.cli.train_pid import (check_split_weights, copy_support, read_training_data, set_budget,
                                      training_data_entry)
    from mambah.errors import ConfigurationError
    from mambah.modeldir import load_arrays, load_network, save_model_dir
    from mambah.nn.flags import NETWORK, FlagModel
    from mambah.training.flags import FlagConfig, check_flag_values, fit_flag_members, member_arrays

    if args.ensemble < 1:
        raise ConfigurationError("--nominal-from trains ensemble members only: give --ensemble K (K >= 1)")
    given = [o for o in ("width", "depth", "activation", "learning_rate", "stop_on", "batch_size")
             if getattr(args, o, None) is not None]
    if given:
        raise ConfigurationError(f"with --nominal-from the network and its training are the nominal's: do not give "
                                 f"{', '.join('--' + o.replace('_', '-') for o in given)}")
    nominal = FlagModel.load(args.nominal_from)
    want_c, want_t = ",".join(nominal.conditions), ",".join(nominal.targets)
    if args.conditions != want_c or args.targets != want_t:
        raise ConfigurationError(f"--conditions/--targets must be those of {args.nominal_from!r}: "
                                 f"--conditions {want_c} --targets {want_t} (given {args.conditions} / {args.targets})")
    hp = nominal.card.get("hyperparameters", {})
    fields = {f.name for f in dataclasses.fields(FlagConfig)}
    cfg = FlagConfig(**{k: v for k, v in hp.items() if k in fields})
    if args.seed not in (0, cfg.seed):
        raise ConfigurationError(f"--seed {args.seed} differs from the nominal's {cfg.seed}: with --nominal-from the "
                                 "split and the members' seeds follow the nominal's (omit --seed)")
    args.seed = cfg.seed
    if args.patience is not None:
        cfg.patience = args.patience
    if args.epochs is not None or args.max_time is not None:
        cfg.epochs = args.epochs if args.epochs is not None else cfg.epochs
        set_budget(cfg, args)
    cfg.validate()

    conditions, targets, df, w, n_read, iv, it = read_training_data(args, log)
    check_split_weights(w, iv, it, log)
    C = df[conditions].to_numpy(dtype=float)
    Y = check_flag_values(df[targets].to_numpy(), targets, where=args.data)
    log.info("training %d members of %s on %d rows of %s (%d held out)", args.ensemble, args.nominal_from, len(it),
             args.data, len(iv))
    stacks, ensemble = fit_flag_members(C[it], Y[it], w[it], (C[iv], Y[iv], w[iv]), members=args.ensemble,
                                        config=cfg, cond_pre=nominal.cond_pre, condition_names=conditions,
                                        target_names=targets)
    card = {k: v for k, v in nominal.card.items() if k not in ("ensemble", "files", "format", "created",
                                                                 "mambah_version", "marginal_correction", "support")}
    if "marginal_correction" in nominal.card:
        log.warning("%s has a calibration (marginals.npz); the new members have none: the model written to %s is "
                    "uncalibrated; fit it again with mambah train marginals --model %s", args.nominal_from, args.out,
                    args.out)
    card["ensemble"] = {**ensemble,
                        "nominal": f"not retrained: the model directory {Path(args.nominal_from).name!r} as it was "
                                   "(mambah train flags --nominal-from); its training_data, metrics and command are "
                                   "the nominal's",
                        "training_data": training_data_entry(args, n_read, len(df), w, it, iv),
                        "member_budget": {"epochs": cfg.epochs, "max_time": cfg.max_time, "patience": cfg.patience},
                        "command": "mambah " + " ".join(shlex.quote(a) for a in sys.argv[1:])
                        if sys.argv and "mambah" in sys.argv[0] else None}
    arrays = {k: v for k, v in load_arrays(args.nominal_from).items() if not (k[:1] == "m" and k[1:3].isdigit())}
    arrays.update(member_arrays(stacks))
    save_model_dir(args.out, card, networks={NETWORK: load_network(args.nominal_from, NETWORK)}, arrays=arrays,
                   overwrite=args.overwrite)
    copy_support(args.nominal_from, args.out)
    print(f"wrote {args.out}: the nominal of {args.nominal_from} + {args.ensemble} members, seeds {ensemble['seeds']}: "
          f"{sum(ensemble['seconds_per_member']) / args.ensemble:.0f} s per member; held-out {cfg.stop_on} "
          + ", ".join(f"{x:.5f}" for x in ensemble[f"valid_{cfg.stop_on}_per_member"]))
    return 0
