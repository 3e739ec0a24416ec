"""``mambah train pid``: a conditional Cramér GAN for PID variables from (sWeighted) calibration data.

Example (the shipped real-data proton model)::

    mambah train pid --data lc_protons_run3.parquet --species p \\
        --conditions P,ETA,nLongTracks --targets DLLp --weight sWeight --out models/pid-p-dllp

With ``--ensemble K`` the same command trains the nominal model exactly as without it, then K
members on bootstrap replicas of the training rows (sWeight x Poisson(1) counts), from scratch
(each with the nominal's budget) or, with ``--warm-start``, from the nominal's weights with
``--warm-fraction`` (0.25) of its budget; one directory holds them all, with one card
(:mod:`mambah.training.ensemble`).
"""

from __future__ import annotations


DEFAULT_CONDITIONS = "P,ETA,nLongTracks"
#: the card's held-out score pools FINAL_DRAWS generated samples x FINAL_REPEATS classifier fits: one
#: generated sample of a few thousand rows scatters the score by ~0.01 however many fits are averaged
FINAL_DRAWS, FINAL_REPEATS = 3, 2


def register(kinds) -> None:
    p = kinds.add_parser(
        "pid", help="train a PID model (conditional Cramér GAN) on sWeighted calibration data",
        description="Train a conditional Cramér GAN targets|conditions on a calibration table whose rows "
                    "carry sWeights (negative ones allowed), keep the best checkpoint on a held-out fraction (by the "
                    "BDT-KS score and the efficiency pulls of the targets' typical cuts), and write the model "
                    "directory with its card.",
)
    p.add_argument("--data", required=True, help="training table: .parquet, .csv or file.root:tree")
    p.add_argument("--species", required=True, help="particle species the model describes (e.g. p, K, pi, mu, e)")
    p.add_argument("--conditions", default=DEFAULT_CONDITIONS, help=f"comma-separated condition columns (default {DEFAULT_CONDITIONS})")
    p.add_argument("--targets", required=True, help="comma-separated target columns (e.g. DLLp)")
    p.add_argument("--weight", default=None, help="sWeight column (default: every row weight 1)")
    p.add_argument("--out", "-o", required=True, help="model directory to write")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, default=None, help="stop after N epochs (default: the time budget)")
    budget.add_argument("--max-time", type=float, default=None,
                        help="training budget in minutes (default 12; early stopping may end sooner)")
    p.add_argument("--batch-size", type=int, default=None, help="minibatch size (default 2048)")
    p.add_argument("--seed", type=int, default=0, help="random seed: split, initialisation, noise (default 0)")
    p.add_argument("--valid-fraction", type=float, default=0.2,
                   help="held-out fraction for the validation score (best checkpoint, early stopping, card; default 0.2)")
    p.add_argument("--selection", default=None, help="pandas query applied first, e.g. 'P > 3000 and ETA < 5'")
    p.add_argument("--name", default=None, help="model name (default: the directory name)")
    p.add_argument("--version", dest="model_version", default="1", help="model version (default 1)")
    p.add_argument("--description", default=None, help="training-data description for the card")
    p.add_argument("--drop-nonfinite", action="store_true", help="drop rows with NaN/inf instead of failing")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model directory")
    p.add_argument("--resume", action="store_true", help="continue an interrupted training of the same --out (its checkpoint is kept beside OUT as "
                        ".OUT.checkpoint until the model directory is written)")
    p.add_argument("--keep-checkpoint", action="store_true",
                   help="keep .OUT.checkpoint after success (the last weights, optimiser and random states), e.g. to "
                        "continue later with --resume --overwrite and a larger budget")
    e = p.add_argument_group("ensemble (the model's own uncertainty: mambah generate --variations)")
    e.add_argument("--ensemble", type=int, default=0, metavar="K",
                   help="also train K members on bootstrap replicas of the training rows (sWeight x Poisson(1) "
                        "counts, member k seeded SEED + 1000 k), with the nominal's preprocessing; written to "
                        "OUT/members/ with one card (default 0: no ensemble). From scratch each member costs about "
                        "one nominal training")
    e.add_argument("--warm-start", action="store_true",
                   help="start every member from the nominal's weights, with --warm-fraction of its budget "
                        "(cheaper; the card records it: warm starts may shrink the spread)")
    e.add_argument("--warm-fraction", type=float, default=None, metavar="F",
                   help="a warm-started member's budget (epochs and time) as a fraction of the nominal's (default 0.25)")
    e.add_argument("--nominal-from", metavar="DIR", default=None,
                   help="do not train the nominal: take it from the PID model directory DIR (its preprocessing, "
                        "generator, hyperparameters and split seed; --conditions/--targets must be its own) and train "
                        "only the --ensemble K members on --data, writing DIR's nominal and card plus the members to "
                        "--out (may be DIR itself, with --overwrite). --epochs/--max-time then give each member's "
                        "budget; warm starts begin with a new critic (a model directory keeps none)")
    g = p.add_argument_group("network and training (the defaults are good settings)")
    g.add_argument("--gen-width", type=int, default=None, help="generator layer width (128)")
    g.add_argument("--gen-depth", type=int, default=None, help="generator hidden layers (4)")
    g.add_argument("--critic-width", type=int, default=None, help="critic layer width (128)")
    g.add_argument("--critic-depth", type=int, default=None, help="critic hidden layers (4)")
    g.add_argument("--critic-outputs", type=int, default=None, help="dimension of the critic's h(x) (32)")
    g.add_argument("--noise", dest="n_noise", type=int, default=None, help="noise dimension (16)")
    g.add_argument("--activation", default=None, help="activation (leaky_relu)")
    g.add_argument("--residual", action="store_true", default=None, help="residual blocks")
    g.add_argument("--learning-rate", dest="lr", type=float, default=None, help="initial Adam learning rate (1e-3)")
    g.add_argument("--critic-steps", type=int, default=None, help="critic updates per generator update, each on its own batch (1)")
    g.add_argument("--gp-lambda", type=float, default=None, help="gradient-penalty weight (10)")
    g.add_argument("--bce-xi", type=float, default=None, help="weight of the optional BCE term (0 = off)")
    g.add_argument("--ema-decay", type=float, default=None, help="generator weight averaging (0.995)")
    g.add_argument("--validate-every", type=float, default=None, help="seconds between validations (30)")
    g.add_argument("--validate-every-steps", type=int, default=None, metavar="N",
                   help="validate every N steps instead of every --validate-every seconds (reproducible on a "
                        "loaded machine)")
    g.add_argument("--patience", type=int, default=None, help="validations without improvement before stopping (12)")
    g.add_argument("--valid-repeats", type=int, default=None,
                   help="classifier repeats of each validation score (2; more = less noisy checkpoint selection)")
    g.add_argument("--reselect", type=int, default=None, metavar="N",
                   help="keep the N best validations' weights and choose among them at the end by fresh scores "
                        "of 4 classifier fits each (1 = the best single validation; default 1); --patience then "
                        "counts validations that enter none of the N")
    g.add_argument("--checkpoint-score", dest="checkpoint_score", choices=("ks_pulls", "ks"), default=None,
                   help="what ranks the validations: 'ks_pulls' (default) the BDT-KS x max(1, RMS of the efficiency "
                        "pulls of the targets' typical cuts in bins of the conditions), 'ks' the BDT-KS alone")
    g.add_argument("--clipped-targets", dest="signed_targets", action="store_false", default=None,
                   help="fit the targets' quantile map on the sWeights clipped at 0 (before issue 22) instead of the "
                        "signed sWeights: gives the subtracted background room in the latent space")
    g.add_argument("--condition-transform", choices=("quantile", "affine"), default=None,
                   help="how the conditions enter the networks: 'quantile' (default; Gaussianised through their "
                        "weighted quantiles) or 'affine' ((f(x) - mean) / std, f = log for P and PT, logit for the "
                        "Sur*/ProbNN* probabilities, --scale for others): 2-3 operations per column at generation "
                        "instead of ~20, for steps with many conditions (a ProbNN step's 17)")
    g.add_argument("--scale", default=None, metavar="COL=FN,...",
                   help="with --condition-transform affine: the function of each named condition (log, logit, "
                        "identity), beside the defaults above")
    p.set_defaults(func=run)


def scale_functions(conditions: list[str], spec: str | None) -> tuple:
    """The ``(column, function)`` pairs of an affine condition transform: ``log`` for P and PT,
    ``logit`` for the probabilities (``Sur*``, ``ProbNN*``), then ``spec`` (``COL=FN,...``) on top."""
    from mambah.errors import ConfigurationError
    from mambah.nn.preprocessing import SCALE_FUNCTIONS

    out = {c: "log" for c in conditions if c in ("P", "PT")}
    out.update({c: "logit" for c in conditions if c.startswith(("Sur", "ProbNN"))})
    for item in (spec or "").split(","):
        if not item.strip():
            continue
        col, eq, fn = item.partition("=")
        if not eq or col.strip() not in conditions or fn.strip() not in SCALE_FUNCTIONS:
            raise ConfigurationError(f"--scale {item!r}: expected COL=FN with COL a condition ({conditions}) and FN "
                                     f"one of {SCALE_FUNCTIONS}")
        out[col.strip()] = fn.strip()
    return tuple((c, f) for c, f in out.items() if f != "identity")


def _names(text: str, what: str) -> list[str]:
    from mambah.errors import ConfigurationError

    out = [s.strip() for s in text.split(",") if s.strip()]
    if not out:
        raise ConfigurationError(f"--{what} needs at least one column name, got {text!r}")
    if len(set(out)) != len(out):
        raise ConfigurationError(f"--{what} lists a column twice: {text!r}")
    return out


def file_sha256(path) -> str:
    """sha256 (hex) of a file's bytes (the training data's hash on a model card)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_training_data(args, log):
    """The common part of ``mambah train pid|flags``: parse ``--conditions``/``--targets``, read
    ``--data``, apply ``--selection``, check columns, NaN/inf and weights, and split off the seeded
    ``--valid-fraction`` (``numpy.random.default_rng([seed, 20260])``), all before anything is
    trained or written.

    Returns:
        ``(conditions, targets, df, w, n_read, iv, it)``: the column names, the selected rows, their
        weights, the number of rows read, and the sorted validation and training row indices.
    """
    import numpy as np

    from mambah.errors import ConfigurationError, DataError
    from mambah.io import check_finite, check_weights, read_table, require_columns

    conditions = _names(args.conditions, "conditions")
    targets = _names(args.targets, "targets")
    both = set(conditions) & set(targets)
    if both:
        raise ConfigurationError(f"{sorted(both)} cannot be both a condition and a target")
    if not 0.02 <= args.valid_fraction <= 0.5:
        raise ConfigurationError(f"--valid-fraction must be in [0.02, 0.5], not {args.valid_fraction}")
    if args.epochs is not None and args.epochs < 1:
        raise ConfigurationError(f"--epochs must be >= 1, not {args.epochs}")

    needed = conditions + targets + ([args.weight] if args.weight else [])
    df = read_table(args.data)
    where = args.data
    require_columns(df, needed, where=where)
    n_read = len(df)
    if args.selection:
        try:
            df = df.query(args.selection)
        except Exception as e:
            raise ConfigurationError(f"--selection {args.selection!r} failed on {where}: {type(e).__name__}: {e}") from None
        log.info("selection %r keeps %d of %d rows", args.selection, len(df), n_read)
        if len(df) == 0:
            raise DataError(f"--selection {args.selection!r} keeps none of the {n_read} rows of {where}")
    df = check_finite(df, needed, drop=args.drop_nonfinite, where=where)
    if args.weight:
        w = check_weights(df[args.weight].to_numpy(dtype=float), where=f"{where} column {args.weight!r}")
    else:
        if "sWeight" in df.columns:
            log.warning("%s has an 'sWeight' column but no --weight was given: training with weight 1 "
                        "(signal plus background)", where)
        w = np.ones(len(df))
    perm = np.random.default_rng([args.seed, 20260]).permutation(len(df))
    n_valid = int(round(args.valid_fraction * len(df)))
    iv, it = np.sort(perm[:n_valid]), np.sort(perm[n_valid:])
    return conditions, targets, df, w, n_read, iv, it


def check_split_weights(w, iv, it, log=None) -> dict:
    """Refuse a training or validation part whose weights sum to <= 0; warn when the held-out part's
    signal yield is not significant.

    The held-out sWeights estimate the signal yield ``sum(w) ± sqrt(sum(w²))``. Below 3 standard
    errors the validation scores (and so the checkpoint selection) measure mostly the statistical
    noise of the background subtraction, not the model; the card records the yield and this flag.

    Returns:
        ``{"valid_sum_weights", "valid_sum_weights_error", "valid_significance"}`` for the card.
    """
    import logging

    import numpy as np

    from mambah.errors import DataError

    if w[iv].sum() <= 0 or w[it].sum() <= 0:
        raise DataError(f"the sWeights of the training or validation part sum to <= 0 (training {w[it].sum():.6g}, "
                        f"validation {w[iv].sum():.6g}); give more data")
    total, err = float(w[iv].sum()), float(np.sqrt(np.sum(w[iv] ** 2)))
    info = {"valid_sum_weights": total, "valid_sum_weights_error": err, "valid_significance": total / err}
    if total < 3 * err:
        msg = (f"the held-out rows' sWeights sum to {total:.4g} ± {err:.2g} (a signal yield of only {total / err:.1f} "
               "standard errors): the validation scores and the checkpoint selection will mostly measure the noise of "
               "the background subtraction; give more data or a larger --valid-fraction")
        (log or logging.getLogger("mambah.train")).warning(msg)
    return info


def training_data_entry(args, n_read: int, n_selected: int, w, it, iv) -> dict:
    """The card's ``training_data``: the file (name, sha256, rows read and selected), the selection,
    the weights (sum, negative fraction) and the split (training and held-out rows ``it``, ``iv``)."""
    import numpy as np

    from mambah.io import split_spec

    path, tree = split_spec(args.data)
    return {
        "description": args.description or f"{path.name}" + (f":{tree}" if tree else ""),
        "file": path.name, "sha256": file_sha256(path), "n_rows": int(n_read), "n_selected": int(n_selected),
        "selection": args.selection, "weight": args.weight,
        "sum_weights": float(w.sum()), "negative_weight_fraction": float(np.mean(w < 0)),
        "n_train": int(len(it)), "n_valid": int(len(iv)),
        "split": f"seeded random permutation (numpy default_rng([{args.seed}, 20260])), first "
                 f"{args.valid_fraction:g} held out",
    }


def write_training_support(out, card: dict, conditions: list[str], df, w) -> None:
    """Add the training data's support table (:mod:`mambah.nn.support`: its sWeighted signal in cells
    of (log10 P, ETA)) to the model directory ``out`` just written, when P and ETA are conditions;
    the card's ``training_data`` names the sample."""
    if not {"P", "ETA"} <= set(conditions):
        return
    from mambah.nn.support import Support, source_entry, write_support

    td = card["training_data"]
    support = Support.from_data(df["P"].to_numpy(dtype=float), df["ETA"].to_numpy(dtype=float), w,
                                where=td["file"])
    entry = source_entry("training data", [{"file": td["file"], "sha256": td["sha256"]}], len(df), w, td["selection"],
                         td["weight"])
    entry["command"] = card.get("command")
    write_support(out, support, [entry])


def copy_support(source, out) -> None:
    """Give the model directory ``out`` the support table of the model directory ``source`` (if it has
    one): a model written from another's card (the ensemble members of ``--nominal-from``)."""
    from mambah.modeldir import load_card
    from mambah.nn.support import Support, write_support

    section = load_card(source).get("support")
    if isinstance(section, dict):
        write_support(out, Support.load(source), list(section.get("sources", [])))


def held_out_pulls(valid, gen_draws, targets, w) -> dict:
    """The card's efficiency pulls: the held-out rows against their generated twins (all draws
    pooled, each twin with its row's weight), the targets' typical cuts in the bins of
    :func:`~mambah.training.gan.selection_bins` (those of the checkpoint selection); per
    cut the overall efficiencies and the summary, without the per-bin rows (``mambah validate``
    gives those)."""
    import numpy as np
    import pandas as pd

    from mambah.training.gan import selection_bins
    from mambah.validation import efficiency_pulls

    bins = selection_bins(valid.drop(columns=list(targets)), w)
    if bins is None:
        return {"error": f"the {len(valid)} held-out rows are too few for efficiency bins"}
    gen = pd.concat(gen_draws, ignore_index=True)
    res = efficiency_pulls(valid, gen, targets, weight=w, gen_weight=np.tile(w, len(gen_draws)), bins=bins,
                           gen_error_in_pull=True)
    return {"draws": len(gen_draws), "pull_rms": res.get("score"),
            "cuts": {label: {"overall": c["overall"], "summary": c["summary"]} for label, c in res["cuts"].items()}}


def build_config(args):
    """The :class:`~mambah.training.gan.GANConfig` from the CLI options (unset options keep the defaults)."""
    from mambah.training.gan import GANConfig

    cfg = GANConfig(seed=args.seed)
    for opt, field in (("gen_width", "gen_width"), ("gen_depth", "gen_depth"), ("critic_width", "critic_width"),
                       ("critic_depth", "critic_depth"), ("critic_outputs", "critic_outputs"), ("n_noise", "n_noise"),
                       ("activation", "activation"), ("residual", "residual"), ("critic_steps", "critic_steps"),
                       ("gp_lambda", "gp_lambda"), ("bce_xi", "bce_xi"), ("ema_decay", "ema_decay"),
                       ("validate_every", "validate_every"), ("validate_every_steps", "validate_every_steps"),
                       ("patience", "patience"), ("batch_size", "batch_size"),
                       ("epochs", "epochs"), ("valid_repeats", "valid_repeats"), ("reselect", "reselect"),
                       ("checkpoint_score", "selection"), ("signed_targets", "signed_targets")):
        v = getattr(args, opt, None)
        if v is not None:
            setattr(cfg, field, v)
    if getattr(args, "lr", None) is not None:
        cfg.g_lr = cfg.c_lr = args.lr
    if getattr(args, "condition_transform", None) == "affine":
        cfg.condition_transform = "affine"
        cfg.scale_functions = scale_functions(_names(args.conditions, "conditions"), getattr(args, "scale", None))
    elif getattr(args, "scale", None):
        from mambah.errors import ConfigurationError
        raise ConfigurationError("--scale is for --condition-transform affine")
    set_budget(cfg, args)
    cfg.validate()
    return cfg


def set_budget(cfg, args) -> None:
    """The training budget of ``cfg`` (a config with ``max_time`` [s]) from ``--max-time`` [minutes]
    or ``--epochs`` (then the epochs are the budget: a week of wall time)."""
    if args.max_time is not None:
        cfg.max_time = 60.0 * args.max_time
    elif args.epochs is not None:
        cfg.max_time = 7 * 24 * 3600.0  # the epochs are the budget


def run(args) -> int:
    import logging
    import shlex
    import shutil
    import sys
    from pathlib import Path

    import numpy as np

    from mambah.cli import progress_enabled
    from mambah.errors import ConfigurationError, DataError

    log = logging.getLogger("mambah.train.pid")
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ConfigurationError(f"{str(out)!r} already exists; choose another --out or pass --overwrite")
    if args.nominal_from is not None:
        return run_members_of(args, log)
    cfg = build_config(args)
    if args.ensemble < 0:
        raise ConfigurationError(f"--ensemble must be >= 0 (the number of members), not {args.ensemble}")
    if (args.warm_start or args.warm_fraction is not None) and not args.ensemble:
        raise ConfigurationError("--warm-start and --warm-fraction need --ensemble K (K >= 1 members)")
    if args.warm_fraction is not None and not args.warm_start:
        raise ConfigurationError("--warm-fraction applies to warm-started members: add --warm-start")
    if args.warm_fraction is not None and not 0 < args.warm_fraction <= 1:
        raise ConfigurationError(f"--warm-fraction must be in (0, 1], not {args.warm_fraction}")
    # ---- the data: read, select, check, split (all before anything is trained or written)
    conditions, targets, df, w, n_read, iv, it = read_training_data(args, log)
    where = args.data
    for t in targets:
        v = df[t].to_numpy(dtype=float)
        if len(v) and v.min() == v.max():
            raise DataError(f"target {t!r} is constant ({v[0]:.6g}) in {where}: there is nothing to learn")
    if len(it) < cfg.batch_size:
        raise DataError(f"{len(it)} training rows (after selection and the {args.valid_fraction:.0%} validation split) "
                        f"are fewer than one batch ({cfg.batch_size}); give more data or pass a smaller --batch-size")
    yield_info = check_split_weights(w, iv, it, log)
    C = df[conditions].to_numpy(dtype=float)
    Y = df[targets].to_numpy(dtype=float)

    # ---- train
    from mambah.physics import describe_column
    from mambah.training.gan import CramerGANTrainer, save_pid_model

    ckpt = out.with_name(f".{out.name}.checkpoint")
    if not args.resume and ckpt.exists():
        shutil.rmtree(ckpt)
    trainer = CramerGANTrainer(cfg, condition_names=conditions, target_names=targets, checkpoint_dir=ckpt,
                               resume=args.resume, show_progress=progress_enabled(args))
    log.info("training %s | %s on %d rows (%d held out), weights %s, budget %s", ",".join(targets),
             ",".join(conditions), len(it), len(iv), args.weight or "1",
             f"{args.epochs} epochs" if args.epochs else f"{cfg.max_time / 60:.1f} min")
    trainer.fit(C[it], Y[it], w[it], valid=(C[iv], Y[iv], w[iv]))
    ensemble = None
    if args.ensemble:
        from mambah.training.ensemble import WARM_FRACTION, train_ensemble

        ensemble = train_ensemble(C[it], Y[it], w[it], valid=(C[iv], Y[iv], w[iv]), members=args.ensemble,
                                  nominal=trainer, warm_start=args.warm_start,
                                  warm_fraction=args.warm_fraction or WARM_FRACTION, checkpoint_dir=ckpt,
                                  resume=args.resume, show_progress=progress_enabled(args))

    # ---- final validation on the held-out fraction (fresh seeds, more repeats) and the floor

    from mambah.validation import bdt_ks_null, bdt_ks_score

    from mambah.validation import BDTKSResult

    valid = df.iloc[iv][conditions + targets].reset_index(drop=True)
    draws, gen_draws = [], []
    for d in range(FINAL_DRAWS):  # one generated sample is itself a random draw: pool several
        gen = valid.copy()
        gen[targets] = trainer.generate(C[iv], seed=args.seed + 1001 + d)
        gen_draws.append(gen)
        draws.append(bdt_ks_score(valid, gen, conditions + targets, ref_weight=w[iv], gen_weight=w[iv],
                                  seed=args.seed + 2002 + d, n_repeats=FINAL_REPEATS, paired=True))
    score = BDTKSResult.pooled(draws)
    pulls = held_out_pulls(valid, gen_draws, targets, w[iv])
    floor = bdt_ks_null(valid, conditions + targets, ref_weight=w[iv], seed=args.seed + 3003, n_repeats=5)
    log.info("held-out validation: BDT-KS %.4f ± %.4f, AUC %.4f (floor from halves of the held-out rows: %.4f)",
             score.bdt_ks, score.bdt_ks_std, score.auc, floor.bdt_ks)

    name = args.name or out.name
    card = {
        "name": name,
        "version": str(args.model_version),
        "kind": "pid",
        "species": args.species,
        "conditions": [describe_column(c) for c in conditions],
        "targets": [describe_column(t) for t in targets],
        "units": "MeV, mm, ns (LHCb convention); momenta in MeV/c; DLLs are dimensionless log-likelihood differences",
        "training_data": training_data_entry(args, n_read, len(df), w, it, iv),
        "hyperparameters": {"model": "conditional Cramér GAN (arXiv:1705.10743), sWeighted expectations",
                            **{k: v for k, v in vars(cfg).items()}},
        "metrics": {
            "valid_bdt_ks": score.bdt_ks, "valid_bdt_ks_std": score.bdt_ks_std,
            "valid_bdt_ks_draws": [d.bdt_ks for d in draws],
            "valid_auc": score.auc, "valid_auc_std": score.auc_std,
            "valid_floor_bdt_ks": floor.bdt_ks, "valid_floor_auc": floor.auc,
            "selection_bdt_ks": trainer.best_ks_, "selection_auc": trainer.best_auc_,
            "selection_pull_rms": None if np.isnan(trainer.best_pull_rms_) else trainer.best_pull_rms_,
            "selection_score": trainer.best_score_,
            "selection": cfg.selection,
            "best_step": trainer.best_step_, **({"reselection": trainer.reselection_} if trainer.reselection_ else {}),
            "valid_efficiency_pulls": pulls,
            **yield_info,
            "note": ("BDT-KS (mambah.validation.bdt_ks_score, HistGradientBoosting on signed sWeights) of "
                     f"{FINAL_DRAWS} generated samples (noise seeds) x {FINAL_REPEATS} classifier fits, pooled "
                     "(valid_bdt_ks_draws: each sample's score), "
                     "of generated targets for the held-out rows' conditions, each carrying its row's sWeight, "
                     "twins split together (paired=True); "
                     "the floor scores two halves of the held-out rows against each other (smaller samples, so "
                     "conservative). selection_* is the score that picked the checkpoint (optimistic); "
                     "reselection (--reselect N): the N candidates' validation and fresh scores, the kept one first. "
                     "valid_efficiency_pulls: the targets' typical cuts in default bins of the held-out rows "
                     "(mambah.validation.efficiency_pulls), all generated samples pooled against the held-out data, "
                     "pull = (generated - data) / sqrt(sigma_data^2 + sigma_generated^2); per cut the overall "
                     "efficiencies and the summary (pull mean, robust width, RMS, worst bin)."),
        },
        "training": {"seconds": round(trainer.train_seconds_, 1), "steps": trainer.steps_,
                     "samples_seen": trainer.samples_seen_,
                     "history": trainer.history_},
        "command": "mambah " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv and "mambah" in sys.argv[0]
                   else None,
    }
    if ensemble is None:
        save_pid_model(out, trainer, card, overwrite=args.overwrite)
    else:
        # each member's held-out score: one generated sample (noise seed SEED + 1001, as the nominal's first
        # draw) x FINAL_REPEATS classifier fits, the same rows and seeds for every member
        member_scores = []
        for m in ensemble.members:
            gen = valid.copy()
            gen[targets] = m.generate(C[iv], seed=args.seed + 1001)
            member_scores.append(bdt_ks_score(valid, gen, conditions + targets, ref_weight=w[iv], gen_weight=w[iv],
                                              seed=args.seed + 2002, n_repeats=FINAL_REPEATS, paired=True).bdt_ks)
        card["ensemble"] = ensemble.card_entry({"valid_bdt_ks": member_scores})
        ensemble.save(out, card, overwrite=args.overwrite)
    write_training_support(out, card, conditions, df, w)
    if not args.keep_checkpoint:
        shutil.rmtree(ckpt, ignore_errors=True)
    print(f"wrote {out}: validation BDT-KS {score.bdt_ks:.4f} ± {score.bdt_ks_std:.4f}, AUC {score.auc:.4f} "
          f"(floor {floor.bdt_ks:.4f}); trained {trainer.train_seconds_:.0f} s, {trainer.steps_} steps")
    if ensemble is not None:
        e = card["ensemble"]
        print(f"  + {e['members']} ensemble members ({'warm-started' if e['warm_start'] else 'from scratch'}), "
              f"seeds {e['seeds']}: {np.mean(e['seconds_per_member']):.0f} s and {np.mean(e['steps_per_member']):.0f} "
              f"steps per member; held-out BDT-KS " + ", ".join(f"{x:.4f}" for x in e["valid_bdt_ks"]))
    return 0


#: options of the network's architecture: with --nominal-from they are the nominal's and cannot be given
ARCHITECTURE_OPTIONS = ("gen_width", "gen_depth", "critic_width", "critic_depth", "critic_outputs", "n_noise",
                        "activation", "residual", "signed_targets")
#: training-loop options that, given with --nominal-from, replace the nominal's for the members
LOOP_OPTIONS = (("validate_every", "validate_every"), ("validate_every_steps", "validate_every_steps"),
                ("patience", "patience"), ("valid_repeats", "valid_repeats"), ("reselect", "reselect"),
                ("batch_size", "batch_size"), ("checkpoint_score", "selection"))


def run_members_of(args, log) -> int:
    """``--nominal-from DIR``: K ensemble members for an existing nominal model, trained on ``--data``.

    The nominal (generator, preprocessing, card, held-out scores) is DIR's, unchanged; the members are
    fitted exactly as :func:`~mambah.training.ensemble.train_ensemble` fits those of a new nominal
    (its config from DIR's card, the split seeded by its ``hyperparameters.seed``), on the rows of
    ``--data`` — which need not be the nominal's file: the card's ``ensemble.training_data`` records
    the members' file and hash beside the nominal's ``training_data``.
    """
    import shlex
    import sys
    from pathlib import Path

    import numpy as np

    from mambah.cli import progress_enabled
    from mambah.errors import ConfigurationError
    from mambah.training.ensemble import WARM_FRACTION, train_ensemble
    from mambah.training.gan import CramerGANTrainer
    from mambah.validation import bdt_ks_score

    if args.ensemble < 1:
        raise ConfigurationError("--nominal-from trains ensemble members only: give --ensemble K (K >= 1)")
    if args.resume:
        raise ConfigurationError("--resume is not supported with --nominal-from (the members are retrained)")
    given = [o for o in ARCHITECTURE_OPTIONS if getattr(args, o, None) is not None] + (
        ["lr"] if getattr(args, "lr", None) is not None else [])
    if given:
        raise ConfigurationError(f"with --nominal-from the network and its preprocessing are the nominal's: do not give "
                                 f"{', '.join('--' + o.replace('_', '-') for o in given)}")
    if args.warm_fraction is not None and (args.epochs is not None or args.max_time is not None):
        raise ConfigurationError("with --nominal-from, --epochs/--max-time give each member's budget: "
                                 "drop --warm-fraction")
    nominal = CramerGANTrainer.from_model_dir(args.nominal_from)
    cfg = nominal.config
    want_c, want_t = ",".join(nominal.condition_names), ",".join(nominal.target_names)
    if args.conditions != want_c or args.targets != want_t:
        raise ConfigurationError(f"--conditions/--targets must be those of {args.nominal_from!r}: "
                                 f"--conditions {want_c} --targets {want_t} (given {args.conditions} / {args.targets})")
    if args.seed not in (0, cfg.seed):
        raise ConfigurationError(f"--seed {args.seed} differs from the nominal's {cfg.seed}: with --nominal-from the "
                                 "split and the members' seeds follow the nominal's (omit --seed)")
    args.seed = cfg.seed
    for opt, field in LOOP_OPTIONS:
        v = getattr(args, opt, None)
        if v is not None:
            setattr(cfg, field, v)
    fraction = args.warm_fraction or WARM_FRACTION
    if args.epochs is not None or args.max_time is not None:
        cfg.epochs = args.epochs if args.epochs is not None else 100000
        set_budget(cfg, args)
        fraction = 1.0
    cfg.validate()

    conditions, targets, df, w, n_read, iv, it = read_training_data(args, log)
    check_split_weights(w, iv, it, log)
    C = df[conditions].to_numpy(dtype=float)
    Y = df[targets].to_numpy(dtype=float)
    ckpt = Path(args.out).with_name(f".{Path(args.out).name}.checkpoint")
    log.info("training %d members of %s on %d rows of %s (%d held out)", args.ensemble, args.nominal_from, len(it),
             args.data, len(iv))
    ens = train_ensemble(C[it], Y[it], w[it], valid=(C[iv], Y[iv], w[iv]), members=args.ensemble, nominal=nominal,
                         warm_start=args.warm_start, warm_fraction=fraction, checkpoint_dir=ckpt,
                         show_progress=progress_enabled(args))
    valid = df.iloc[iv][conditions + targets].reset_index(drop=True)
    scores = {}
    for label, gen_of in [("nominal", nominal)] + [(f"member {k}", m) for k, m in enumerate(ens.members, 1)]:
        gen = valid.copy()
        gen[targets] = gen_of.generate(C[iv], seed=args.seed + 1001)
        scores[label] = bdt_ks_score(valid, gen, conditions + targets, ref_weight=w[iv], gen_weight=w[iv],
                                     seed=args.seed + 2002, n_repeats=FINAL_REPEATS, paired=True).bdt_ks
    card = {k: v for k, v in nominal.card_.items() if k not in ("ensemble", "files", "support")}
    card["ensemble"] = ens.card_entry({
        "valid_bdt_ks": [scores[f"member {k}"] for k in range(1, len(ens.members) + 1)],
        "nominal_valid_bdt_ks_same_rows": scores["nominal"],
        "nominal": f"not retrained: the model directory {Path(args.nominal_from).name!r} as it was (mambah train pid "
                   "--nominal-from); its training_data, metrics and command are the nominal's",
        "training_data": training_data_entry(args, n_read, len(df), w, it, iv),
        "warm_start_critic": "new (random): a model directory keeps no critic" if args.warm_start else None,
        "member_budget": {"epochs": cfg.epochs, "max_time": cfg.max_time, "fraction_of_card_budget": fraction},
        "command": "mambah " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv and "mambah" in sys.argv[0]
                   else None,
    })
    ens.save(args.out, card, overwrite=args.overwrite)
    copy_support(args.nominal_from, args.out)
    import shutil

    shutil.rmtree(ckpt, ignore_errors=True)
    e = card["ensemble"]
    print(f"wrote {args.out}: the nominal of {args.nominal_from} + {e['members']} members "
          f"({'warm-started' if e['warm_start'] else 'from scratch'}), seeds {e['seeds']}: "
          f"{np.mean(e['seconds_per_member']):.0f} s and {np.mean(e['steps_per_member']):.0f} steps per member; "
          f"held-out BDT-KS nominal {scores['nominal']:.4f}, members " + ", ".join(f"{x:.4f}" for x in e["valid_bdt_ks"]))
    return 0
