"""The conditional Cramér GAN with sWeighted expectations (Keras 3, TensorFlow backend).

Algorithm 1 of Bellemare et al., *The Cramer Distance as a Solution to Biased Wasserstein
Gradients*, arXiv:1705.10743, made conditional: every real row ``x_r = (c, y)`` is paired with
two generated rows ``x_g = (c, G(c, z))`` and ``x_g' = (c, G(c, z'))`` at the *same* conditions
``c`` (independent noise ``z, z'``). With the critic network ``h`` and
``f(x) = ||h(x) - h(x_g')|| - ||h(x)||``:

* generator loss  ``L_g = E[ ||h(x_r) - h(x_g)|| + ||h(x_r) - h(x_g')|| - ||h(x_g) - h(x_g')|| ]``
  (the energy distance in the space of ``h``, Eq. (4) of the paper, without the real-real term
  that does not depend on ``G``);
* critic loss  ``L_c = -E[ f(x_r) - f(x_g) ] + lambda E[(||grad f(x_hat)|| - 1)^2]`` with
  ``x_hat = eps x_r + (1 - eps) x_g``, ``eps ~ U(0, 1)`` (the gradient penalty of Gulrajani et al.,
  arXiv:1704.00028).

**sWeighted expectations.** ``E[.]`` is over the *signal* joint density of ``(c, y)``. With sWeights
``w_i`` (negative ones included) the sPlot estimator of a signal expectation is
``E_s[phi] = sum_i w_i phi_i / sum_i w_i`` (Pivk & Le Diberder, arXiv:physics/0402083, Eq. 18).
Each row's term above (real, generated, generated') is one function of that row's conditions and
of the real target, so it enters once with the row's sWeight: the generated pair carries the sWeight
of the row whose conditions produced it (the product of the weights involved in a term, with the
generated weight equal to the conditions' weight counted once, as the conditions are shared).
The gradient penalty is a regulariser of ``f`` along the real-generated segments, not an
expectation over the signal, so it is averaged without weights (a signed weight would let the
critic *reward* steep gradients where weights are negative).

**Normalisation.** The trainer passes weights already divided by the *global* mean weight of the
training set, and the losses are plain means ``mean_i(w_i l_i)`` over the batch. This is an
unbiased estimate of the sWeighted expectation for every batch. Dividing by the batch's own weight
sum instead (a ratio estimator) is biased at ``O(1/B)`` and, with 43% negative sWeights, a small
batch sum would inflate the step; with the global normalisation the step size is the same for
every batch and the weight noise averages out over steps. Use large batches (default 2048).

Optional BCE term: ``L = L_cramer + xi L_bce`` where ``sigmoid(f(x))`` is read as the critic's
probability that ``x`` is real (weighted binary cross-entropy); off by default (``xi = 0``).
"""

from __future__ import annotations

import keras
from keras import ops

__all__ = ["CramerGAN"]


def _norm(x):
    # Euclidean norm over the last axis, with a floor that keeps the gradient finite at 0
    return ops.sqrt(ops.sum(ops.square(x), axis=-1) + 1e-12)


@keras.saving.register_keras_serializable("mambah")
class CramerGAN(keras.Model):
    """Conditional Cramér GAN: a generator, a critic network ``h`` and an EMA copy of the generator.

    Args:
        generator: ``G([conditions, noise]) -> targets`` (Keras model).
        critic: ``h(concat(conditions, targets)) -> R^k`` (Keras model).
        generator_ema: a model with the generator's architecture, holding the exponential moving
            average of the generator's weights (what inference uses; Polyak averaging, cf.
            Yazici et al., arXiv:1806.04498). ``None``: no averaging.
        n_noise: dimension of the generator's noise input.
        gp_lambda: weight of the gradient penalty.
        critic_steps: critic updates per generator update. ``train_step`` given batches stacked on
            a leading axis (``(critic_steps, B, ...)``, what the trainer passes) makes each critic
            update on its own batch and the generator update on the last one (as LHCb's RICH
            Cramér GAN, 15 critic updates per generator update, Maevskiy et al.,
            arXiv:1905.11825); given one batch ``(B, ...)``, every update uses it (fresh noise).
        ema_decay: ``m`` in ``ema <- m ema + (1 - m) w`` after each generator update.
        bce_xi: weight ``xi`` of the optional BCE term (0 = off).
        seed: seed of the noise and of the interpolation factors.

    ``train_step`` takes ``(conditions, targets, weights)`` (weights normalised by the trainer, see
    the module doc) and returns the loss terms, tracked by ``metrics``.
    """

    def __init__(self, generator, critic, generator_ema=None, *, n_noise: int, gp_lambda: float = 10.0,
                 critic_steps: int = 1, ema_decay: float = 0.995, bce_xi: float = 0.0, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.generator = generator
        self.critic = critic
        self.generator_ema = generator_ema
        self.n_noise = int(n_noise)
        self.gp_lambda = float(gp_lambda)
        self.critic_steps = int(critic_steps)
        self.ema_decay = float(ema_decay)
        self.bce_xi = float(bce_xi)
        self.seed = int(seed)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")
        self.c_loss_tracker = keras.metrics.Mean(name="c_loss")
        self.gp_tracker = keras.metrics.Mean(name="gp")
        self.dist_tracker = keras.metrics.Mean(name="energy")

    def compile(self, g_optimizer, c_optimizer, **kwargs):
        super().compile(**kwargs)
        self.g_optimizer = g_optimizer
        self.c_optimizer = c_optimizer
        self.g_optimizer.build(self.generator.trainable_variables)
        self.c_optimizer.build(self.critic.trainable_variables)

    @property
    def metrics(self):
        return [self.g_loss_tracker, self.c_loss_tracker, self.gp_tracker, self.dist_tracker]

    def get_config(self):
        config = super().get_config()
        config.update(
            generator=keras.saving.serialize_keras_object(self.generator),
            critic=keras.saving.serialize_keras_object(self.critic),
            generator_ema=(keras.saving.serialize_keras_object(self.generator_ema)
                           if self.generator_ema is not None else None),
            n_noise=self.n_noise, gp_lambda=self.gp_lambda, critic_steps=self.critic_steps,
            ema_decay=self.ema_decay, bce_xi=self.bce_xi, seed=self.seed,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("generator", "critic", "generator_ema"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)

    def call(self, inputs, training=False):
        """``inputs = [conditions, noise]`` -> generated targets (preprocessed space), EMA weights if any."""
        g = self.generator_ema if self.generator_ema is not None else self.generator
        return g(inputs, training=training)

    # ------------------------------------------------------------------ losses
    def _noise(self, n):
        return keras.random.normal((n, self.n_noise), seed=self.seed_generator)

    def _f(self, x, h_ref):
        """Critic ``f(x) = ||h(x) - h(x_g')|| - ||h(x)||``; ``h_ref = h(x_g')``."""
        hx = self.critic(x, training=True)
        return _norm(hx - h_ref) - _norm(hx), hx

    def critic_loss(self, c, y, w):
        """Critic loss (``-L_surrogate + lambda GP [+ xi BCE]``), the GP term, the surrogate."""
        import tensorflow as tf

        n = ops.shape(c)[0]
        g1 = self.generator([c, self._noise(n)], training=True)
        g2 = self.generator([c, self._noise(n)], training=True)
        xr = ops.concatenate([c, y], axis=-1)
        xg = ops.concatenate([c, g1], axis=-1)
        xg2 = ops.concatenate([c, g2], axis=-1)
        h2 = self.critic(xg2, training=True)
        fr, _ = self._f(xr, h2)
        fg, _ = self._f(xg, h2)
        surrogate = ops.mean(w * (fr - fg))
        eps = keras.random.uniform((n, 1), seed=self.seed_generator)
        xhat = eps * xr + (1.0 - eps) * xg
        with tf.GradientTape() as tape:
            tape.watch(xhat)
            fh, _ = self._f(xhat, h2)
        grad = tape.gradient(fh, xhat)
        gp = ops.mean(ops.square(_norm(grad) - 1.0))
        loss = -surrogate + self.gp_lambda * gp
        if self.bce_xi > 0:
            # weighted BCE with f as the logit of "real": -w [log s(f_r) + log(1 - s(f_g))]
            bce = ops.mean(w * (ops.softplus(-fr) + ops.softplus(fg)))
            loss = loss + self.bce_xi * bce
        return loss, gp, surrogate

    def generator_loss(self, c, y, w):
        """Generator loss ``E_w[||h_r - h_g|| + ||h_r - h_g'|| - ||h_g - h_g'||] [+ xi BCE]``."""
        n = ops.shape(c)[0]
        g1 = self.generator([c, self._noise(n)], training=True)
        g2 = self.generator([c, self._noise(n)], training=True)
        hr = self.critic(ops.concatenate([c, y], axis=-1), training=True)
        h1 = self.critic(ops.concatenate([c, g1], axis=-1), training=True)
        h2 = self.critic(ops.concatenate([c, g2], axis=-1), training=True)
        loss = ops.mean(w * (_norm(hr - h1) + _norm(hr - h2) - _norm(h1 - h2)))
        if self.bce_xi > 0:
            fg = _norm(h1 - h2) - _norm(h1)
            loss = loss + self.bce_xi * ops.mean(w * ops.softplus(-fg))
        return loss

    # ------------------------------------------------------------ training
    def train_step(self, data):
        import tensorflow as tf

        c, y, w = data
        c = ops.cast(c, "float32")
        y = ops.cast(y, "float32")
        w = ops.cast(w, "float32")
        stacked = len(c.shape) == 3
        if not stacked:
            w = ops.reshape(w, (-1,))
        for k in range(self.critic_steps):
            cb, yb, wb = (c[k], y[k], ops.reshape(w[k], (-1,))) if stacked else (c, y, w)
            with tf.GradientTape() as tape:
                c_loss, gp, surrogate = self.critic_loss(cb, yb, wb)
            grads = tape.gradient(c_loss, self.critic.trainable_variables)
            self.c_optimizer.apply_gradients(zip(grads, self.critic.trainable_variables))
        if stacked:
            c, y, w = c[-1], y[-1], ops.reshape(w[-1], (-1,))
        with tf.GradientTape() as tape:
            g_loss = self.generator_loss(c, y, w)
        grads = tape.gradient(g_loss, self.generator.trainable_variables)
        self.g_optimizer.apply_gradients(zip(grads, self.generator.trainable_variables))
        if self.generator_ema is not None:
            m = self.ema_decay
            for ve, v in zip(self.generator_ema.weights, self.generator.weights):
                ve.assign(m * ve + (1.0 - m) * v)
        self.g_loss_tracker.update_state(g_loss)
        self.c_loss_tracker.update_state(c_loss)
        self.gp_tracker.update_state(gp)
        self.dist_tracker.update_state(surrogate)
        return {m.name: m.result() for m in self.metrics}
