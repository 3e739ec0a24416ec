"""Network builders: multilayer perceptrons with optional residual blocks (Keras 3 functional API).

Only standard Keras layers are used, so a saved generator reloads with ``safe_mode=True`` and no
custom objects, and exports to ONNX as it is.
"""

from __future__ import annotations

__all__ = ["mlp", "build_generator", "build_critic"]


def mlp(x, *, width: int, depth: int, activation: str = "leaky_relu", residual: bool = False, name: str = "mlp"):
    """``depth`` dense layers of ``width`` units on the Keras tensor ``x``.

    With ``residual=True`` layers after the first are residual blocks ``x + act(Dense(x))``
    (He et al., arXiv:1512.03385), which keeps deep critics trainable.
    """
    import keras

    for i in range(depth):
        y = keras.layers.Dense(width, activation=activation, name=f"{name}_dense{i}")(x)
        if residual and i > 0:
            y = keras.layers.Add(name=f"{name}_res{i}")([x, y])
        x = y
    return x


def build_generator(n_conditions: int, n_noise: int, n_targets: int, *, width: int, depth: int,
                    activation: str = "leaky_relu", residual: bool = False, name: str = "generator"):
    """Generator ``G(conditions, noise) -> targets`` (all in the preprocessed, Gaussianised space)."""
    import keras

    c = keras.Input((n_conditions,), name="conditions")
    z = keras.Input((n_noise,), name="noise")
    x = keras.layers.Concatenate(name="inputs")([c, z])
    x = mlp(x, width=width, depth=depth, activation=activation, residual=residual, name="gen")
    y = keras.layers.Dense(n_targets, name="targets")(x)
    return keras.Model([c, z], y, name=name)


def build_critic(n_inputs: int, n_outputs: int, *, width: int, depth: int, activation: str = "leaky_relu",
                 residual: bool = False, name: str = "critic"):
    """Critic network ``h(conditions ⊕ targets) -> R^n_outputs`` of the Cramér GAN."""
    import keras

    x_in = keras.Input((n_inputs,), name="x")
    x = mlp(x_in, width=width, depth=depth, activation=activation, residual=residual, name="crit")
    h = keras.layers.Dense(n_outputs, name="h")(x)
    return keras.Model(x_in, h, name=name)
