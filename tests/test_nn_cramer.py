"""The conditional Cramér GAN: training helps, it is deterministic, it round-trips through Keras' config."""

import numpy as np
import pandas as pd
import pytest

from mambah.errors import ConfigurationError, DataError
from mambah.training.gan import CramerGANTrainer, GANConfig

TINY = dict(n_noise=4, gen_width=32, gen_depth=2, critic_width=32, critic_depth=2, critic_outputs=8,
            batch_size=500, ema_decay=0.9, g_lr=3e-3, c_lr=3e-3, lr_final=1e-3, max_time=1e9)


def toy(n, seed):
    """y | c ~ N(2c, 0.2 + 0.3|c|), c ~ U(-1, 1): the mean and the width depend on the condition."""
    rng = np.random.default_rng(seed)
    c = rng.uniform(-1, 1, n)
    y = 2 * c + (0.2 + 0.3 * np.abs(c)) * rng.standard_normal(n)
    return c[:, None], y[:, None]


def score(c, y, y_gen, seed=0):
    from mambah.validation import bdt_ks_score

    ref = pd.DataFrame({"c": c[:, 0], "y": y[:, 0]})
    gen = pd.DataFrame({"c": c[:, 0], "y": y_gen[:, 0]})
    return bdt_ks_score(ref, gen, ["c", "y"], seed=seed, n_repeats=2).bdt_ks


def test_training_improves_the_score():
    c, y = toy(4000, 1)
    ct, yt = toy(3000, 2)
    before = CramerGANTrainer(GANConfig(**TINY, epochs=1, seed=3)).fit(c, y)  # 8 steps: barely trained
    after = CramerGANTrainer(GANConfig(**TINY, epochs=40, seed=3)).fit(c, y)  # 320 steps
    s_before = score(ct, yt, before.generate(ct, seed=5))
    s_after = score(ct, yt, after.generate(ct, seed=5))
    # a barely trained generator is far off (BDT-KS ~ 0.3-0.6); a trained one is close to the
    # floor of 3000 vs 3000 rows (~0.05)
    assert s_after < 0.5 * s_before, (s_before, s_after)
    assert s_after < 0.15, s_after
    assert after.steps_ == 40 * 8 and after.samples_seen_ == 40 * 8 * 500


def test_same_seed_same_model_other_seed_other_model():
    c, y = toy(2000, 4)
    a = CramerGANTrainer(GANConfig(**TINY, epochs=3, seed=11)).fit(c, y).generate(c[:100], seed=1)
    b = CramerGANTrainer(GANConfig(**TINY, epochs=3, seed=11)).fit(c, y).generate(c[:100], seed=1)
    d = CramerGANTrainer(GANConfig(**TINY, epochs=3, seed=12)).fit(c, y).generate(c[:100], seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, d)


def test_validation_keeps_the_best_checkpoint_and_resumes(tmp_path):
    c, y = toy(3000, 5)
    cv, yv = toy(1000, 6)
    cfg = GANConfig(**(TINY | {"validate_every_steps": 4, "patience": 1000, "valid_repeats": 1}), epochs=2, seed=1)
    t = CramerGANTrainer(cfg, condition_names=["c"], target_names=["y"], checkpoint_dir=tmp_path / "ck")
    t.fit(c, y, np.ones(len(c)), valid=(cv, yv, np.ones(len(cv))))
    scores = [h["score"] for h in t.history_]
    assert [h["step"] for h in t.history_] == [4, 8, 12]
    # the default selection: BDT-KS x max(1, RMS of the efficiency pulls in bins of the condition)
    for h in t.history_:
        assert np.isfinite(h["pull_rms"]) and h["pull_rms"] > 0
        assert h["score"] == pytest.approx(h["bdt_ks"] * max(1.0, h["pull_rms"]))
    assert t.best_score_ == pytest.approx(min(scores))
    best = t.history_[int(np.argmin(scores))]
    assert t.best_step_ == best["step"]
    assert (t.best_ks_, t.best_pull_rms_) == (best["bdt_ks"], best["pull_rms"])
    assert (tmp_path / "ck" / "checkpoint.npz").is_file()
    # resume: continues from the saved step instead of starting over
    cfg2 = GANConfig(**(TINY | {"validate_every_steps": 4, "patience": 1000, "valid_repeats": 1}), epochs=3, seed=1)
    t2 = CramerGANTrainer(cfg2, condition_names=["c"], target_names=["y"], checkpoint_dir=tmp_path / "ck", resume=True)
    t2.fit(c, y, np.ones(len(c)), valid=(cv, yv, np.ones(len(cv))))
    assert t2.history_[0]["step"] == t.history_[0]["step"]  # history carried over
    assert [h["step"] for h in t2.history_][-2:] == [16, 18]
    assert t2.steps_ == 3 * 6


def test_selection_by_bdt_ks_alone_and_legacy_checkpoints(tmp_path):
    """``selection="ks"`` ranks by the BDT-KS alone; a checkpoint written before the selection and
    the signed targets existed (clipped targets, BDT-KS) is not resumed by a fit with the new defaults."""
    import json

    c, y = toy(3000, 5)
    cv, yv = toy(1000, 6)
    cfg = GANConfig(**(TINY | {"validate_every_steps": 4, "patience": 1000, "valid_repeats": 1}), epochs=1,
                    seed=1, selection="ks")
    t = CramerGANTrainer(cfg, condition_names=["c"], target_names=["y"], checkpoint_dir=tmp_path / "ck")
    t.fit(c, y, np.ones(len(c)), valid=(cv, yv, np.ones(len(cv))))
    assert all(h["score"] == h["bdt_ks"] for h in t.history_)
    assert t.best_score_ == min(h["bdt_ks"] for h in t.history_)
    meta = json.loads((tmp_path / "ck" / "checkpoint.json").read_text())
    for key in ("selection", "signed_targets"):
        del meta["config"][key]
    (tmp_path / "ck" / "checkpoint.json").write_text(json.dumps(meta))
    cfg2 = GANConfig(**(TINY | {"validate_every_steps": 4, "patience": 1000, "valid_repeats": 1}), epochs=2, seed=1)
    t2 = CramerGANTrainer(cfg2, condition_names=["c"], target_names=["y"], checkpoint_dir=tmp_path / "ck", resume=True)
    with pytest.raises(ConfigurationError, match="other hyperparameters"):
        t2.fit(c, y, np.ones(len(c)), valid=(cv, yv, np.ones(len(cv))))
    with pytest.raises(ConfigurationError, match="selection"):
        GANConfig(selection="auc").validate()


def test_signed_targets_give_the_background_no_room():
    """The targets' quantile map follows the sWeighted signal: with a background peak that the
    sWeights subtract, the clipped map puts a share of the Gaussian space on the background's
    values, the signed map (default) almost none."""
    from mambah.nn.preprocessing import QuantileGaussianizer

    rng = np.random.default_rng(3)
    n = 40000
    sig = rng.normal(20.0, 5.0, n)                     # the signal's target
    bkg = rng.normal(-10.0, 3.0, n)                    # the background's, subtracted by the weights
    x = np.concatenate([sig, bkg, bkg + rng.normal(0, 0.01, n)])
    # signal weight 1, the background twice: once with +1 and once with -1 (a perfect subtraction)
    w = np.concatenate([np.ones(n), np.ones(n), -np.ones(n)])
    share = {}
    for signed in (False, True):
        q = QuantileGaussianizer(201).fit(x[:, None], w, signed=signed)
        share[signed] = float(np.mean(q.inverse_transform(rng.standard_normal((20000, 1)))[:, 0] < 0))
    assert share[False] > 0.3 and share[True] < 0.01, share
    with pytest.raises(DataError, match="sum to"):
        QuantileGaussianizer(11).fit(x[:, None], -np.abs(w), signed=True)


def test_bad_settings_and_data():
    c, y = toy(1000, 1)
    with pytest.raises(DataError, match="fewer than one batch"):
        CramerGANTrainer(GANConfig(**TINY | {"batch_size": 2000})).fit(c, y)
    with pytest.raises(DataError, match="sum to"):
        CramerGANTrainer(GANConfig(**TINY)).fit(c, y, -np.ones(len(c)))
    with pytest.raises(ConfigurationError, match="batch_size"):
        CramerGANTrainer(GANConfig(**TINY | {"batch_size": 0})).fit(c, y)
    with pytest.raises(DataError, match="constant"):
        CramerGANTrainer(GANConfig(**TINY), target_names=["DLLp"]).fit(c, np.ones_like(y))


def test_cramer_gan_config_round_trip():
    import keras

    from mambah.nn.cramer import CramerGAN
    from mambah.nn.layers import build_critic, build_generator

    g = build_generator(2, 3, 1, width=8, depth=2)
    gan = CramerGAN(g, build_critic(3, 4, width=8, depth=2), None, n_noise=3, gp_lambda=5.0, bce_xi=0.1, seed=4)
    again = CramerGAN.from_config(gan.get_config())
    assert (again.n_noise, again.gp_lambda, again.bce_xi, again.seed) == (3, 5.0, 0.1, 4)
    assert keras.saving.get_registered_name(CramerGAN) == "mambah>CramerGAN"


def test_bce_term_trains():
    c, y = toy(2000, 8)
    t = CramerGANTrainer(GANConfig(**TINY | {"bce_xi": 0.5}, epochs=2, seed=2)).fit(c, y)
    assert np.isfinite(t.generate(c[:50], seed=0)).all()


def test_critic_steps_take_their_own_batches():
    """critic_steps = k: each critic update on its own batch, the generator on the last one; an epoch
    is one pass over the data (n // (k B) steps), and the model trains."""
    c, y = toy(4000, 1)
    ct, yt = toy(3000, 2)
    t = CramerGANTrainer(GANConfig(**TINY, critic_steps=2, epochs=40, seed=3)).fit(c, y)
    assert t.steps_ == 40 * 4 and t.samples_seen_ == 40 * 4 * 2 * 500
    assert score(ct, yt, t.generate(ct, seed=5)) < 0.15
    # the train step on stacked batches uses batch k for critic update k: batches that differ give
    # other weights than the same batch repeated
    import keras

    def one_step(stacked):
        keras.utils.set_random_seed(0)
        tr = CramerGANTrainer(GANConfig(**TINY, critic_steps=2, seed=1))
        gan = tr._build(1, 1)
        gan.train_step(stacked)
        return np.concatenate([w.ravel() for w in gan.critic.get_weights()])

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 500, 1)).astype("float32"), rng.standard_normal((2, 500, 1)).astype("float32")
    w = np.ones((2, 500), "float32")
    same = one_step((np.stack([a[0], a[0]]), np.stack([b[0], b[0]]), w))
    same2 = one_step((np.stack([a[0], a[0]]), np.stack([b[0], b[0]]), w))
    other = one_step((a, b, w))
    np.testing.assert_array_equal(same, same2)
    assert not np.allclose(same, other)


def test_reselect_keeps_the_best_fresh_score_of_the_best_candidates(tmp_path):
    """reselect=3: the 3 best validations are the candidates, each is scored again with other seeds and
    the kept weights are those of the best fresh score (scoring the kept generator again gives it);
    the candidates' weights survive a checkpoint and a resume."""
    c, y = toy(3000, 5)
    cv, yv = toy(1000, 6)
    kw = TINY | {"validate_every_steps": 2, "patience": 1000, "valid_repeats": 1, "reselect": 3,
                 "reselect_repeats": 2}
    t = CramerGANTrainer(GANConfig(**kw, epochs=2, seed=1), condition_names=["c"], target_names=["y"],
                         checkpoint_dir=tmp_path / "ck")
    t.fit(c, y, np.ones(len(c)), valid=(cv, yv, np.ones(len(cv))))
    scores = {h["step"]: h["score"] for h in t.history_}
    assert len(scores) == 6
    best3 = sorted(scores, key=scores.get)[:3]
    assert sorted(r["step"] for r in t.reselection_) == sorted(best3)
    rescores = [r["rescore"] for r in t.reselection_]
    assert rescores == sorted(rescores) and len(set(rescores)) == 3  # the candidates differ
    kept = t.reselection_[0]
    assert t.best_step_ == kept["step"] and t.best_score_ == pytest.approx(scores[kept["step"]])
    vdata = (cv, yv, np.ones(len(cv)), t.cond_pre_.transform(cv, mode="mid"))
    assert t._score(t.generator_, vdata, seed=1 + 1013, n_repeats=2)["score"] == pytest.approx(kept["rescore"])
    # resume with one more epoch: the candidates come back from the checkpoint with their weights
    t2 = CramerGANTrainer(GANConfig(**kw, epochs=3, seed=1), condition_names=["c"], target_names=["y"],
                          checkpoint_dir=tmp_path / "ck", resume=True)
    t2.fit(c, y, np.ones(len(c)), valid=(cv, yv, np.ones(len(cv))))
    scores2 = {h["step"]: h["score"] for h in t2.history_}
    assert len(scores2) == 9
    assert sorted(r["step"] for r in t2.reselection_) == sorted(sorted(scores2, key=scores2.get)[:3])
    for r in t2.reselection_:
        if r["step"] in scores:  # a candidate from before the resume: the same weights, the same fresh score
            assert r["rescore"] == pytest.approx(next(x["rescore"] for x in t.reselection_ if x["step"] == r["step"]))


def test_reselect_patience_counts_validations_that_enter_no_candidate():
    """With reselect, a validation that is not the best but enters the candidates does not count towards
    patience; with reselect=1 (the default) only a new best resets it."""
    c, y = toy(3000, 5)
    cv, yv = toy(1000, 6)
    kw = TINY | {"validate_every_steps": 1, "patience": 2, "valid_repeats": 1}
    runs = {}
    for n in (1, 4):
        t = CramerGANTrainer(GANConfig(**kw, reselect=n, epochs=6, seed=2), condition_names=["c"], target_names=["y"])
        t.fit(c, y, np.ones(len(c)), valid=(cv, yv, np.ones(len(cv))))
        runs[n] = [h["score"] for h in t.history_]
    for n, s in runs.items():  # replay the rule on the scores: the run stopped where the rule says
        stale, cands, best = 0, [], float("inf")
        for i, ks in enumerate(s):
            enters = ks < best if n == 1 else (len(cands) < n or ks < cands[-1])
            best = min(best, ks)
            cands = sorted(cands + [ks])[:n]
            stale = 0 if enters else stale + 1
            if stale >= 2:
                assert i == len(s) - 1, (n, i, s)  # stopped here
                break
        else:
            assert len(s) == 6 * 6, (n, s)  # never stale for 2 validations: the whole budget
    assert len(runs[1]) < len(runs[4]), {n: len(s) for n, s in runs.items()}
