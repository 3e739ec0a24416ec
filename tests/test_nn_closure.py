"""Closure of the sWeighted loss with a known truth.

A seeded toy calibration sample: signal and background differ in their target distribution and
are separated only by a mass variable (the condition is independent of the mass in both). sWeights
come from :func:`mambah.training.splot.fit_sweights` (the function behind ``mambah sweights``). A tiny
Cramér GAN trained with the sWeights reproduces the signal's conditional target distribution;
the same GAN trained without them learns signal plus background. The test fails if the weights are
ignored anywhere in the loss.
"""

import numpy as np
import pytest

from mambah.training.gan import CramerGANTrainer, GANConfig
from mambah.training.splot import fit_sweights

N_SIG, N_BKG = 5000, 10000


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(2026)
    m_sig = rng.normal(2286.0, 6.0, N_SIG)
    m_bkg = 2240.0 + rng.exponential(70.0, 3 * N_BKG)
    m_bkg = m_bkg[m_bkg < 2330.0][:N_BKG]
    m_sig = np.clip(m_sig, 2240.0, 2330.0)
    c = rng.uniform(0.0, 1.0, N_SIG + N_BKG)
    # signal: y ~ N(1 + 0.5 c, 0.5); background: y ~ N(-1, 0.8), no dependence on c
    y = np.concatenate([1.0 + 0.5 * c[:N_SIG] + 0.5 * rng.standard_normal(N_SIG),
                        -1.0 + 0.8 * rng.standard_normal(N_BKG)])
    m = np.concatenate([m_sig, m_bkg])
    res = fit_sweights(m, (2240.0, 2330.0), "gauss", "exponential")
    return c[:, None], y[:, None], res.sweights


CFG = dict(n_noise=4, gen_width=32, gen_depth=2, critic_width=64, critic_depth=2, critic_outputs=16,
           batch_size=1000, ema_decay=0.95, g_lr=3e-3, c_lr=3e-3, lr_final=3e-4, max_time=1e9, epochs=25, seed=5)


def _weighted_moments(y, w):
    mu = np.sum(w * y) / np.sum(w)
    return mu, np.sqrt(np.sum(w * (y - mu) ** 2) / np.sum(w))


def test_sweighted_gan_reproduces_the_signal_unweighted_does_not(toy):
    c, y, w = toy
    true_mean = 1.0 + 0.5 * 0.5  # signal: E[1 + 0.5 c] with c ~ U(0, 1)
    true_std = np.sqrt(0.5 ** 2 + 0.5 ** 2 / 12)
    # the sWeights themselves recover the signal (sanity of the toy): statistical error of the
    # sWeighted mean, sqrt(sum w^2 (y - mu)^2) / sum w
    mu_data, _ = _weighted_moments(y[:, 0], w)
    err = np.sqrt(np.sum(w ** 2 * (y[:, 0] - mu_data) ** 2)) / np.sum(w)
    assert abs(mu_data - true_mean) < 4 * err

    weighted = CramerGANTrainer(GANConfig(**CFG)).fit(c, y, w)
    unweighted = CramerGANTrainer(GANConfig(**CFG)).fit(c, y, None)
    # generate for every row's conditions; each generated row carries its row's sWeight
    gw = weighted.generate(c, seed=1)[:, 0]
    gu = unweighted.generate(c, seed=1)[:, 0]
    mw, sw = _weighted_moments(gw, w)
    mu_u, _ = _weighted_moments(gu, w)
    # tolerance: 4 statistical errors of the data plus 0.1 for a GAN trained for a few seconds
    assert abs(mw - true_mean) < 4 * err + 0.1, (mw, true_mean, err)
    assert abs(sw - true_std) < 0.1, (sw, true_std)
    # the unweighted GAN learns the mixture, mean (5000 * 1.25 - 10000) / 15000 = -0.25
    assert mu_u < true_mean - 0.8, mu_u
    # the dependence on the condition (slope 0.5 for the signal, ~1/6 for the mixture)
    slope = np.polyfit(c[:, 0], gw, 1, w=np.clip(w, 0, None))[0]
    assert 0.3 < slope < 0.7, slope
