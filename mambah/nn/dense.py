"""Plain multilayer perceptrons: the Keras builder and a numpy evaluator, and threaded row chunks.

The reconstruction networks (:mod:`mambah.nn.tracking`) and the flag classifiers
(:mod:`mambah.nn.flags`) are stacks of ``Dense`` layers. They are saved in Keras' native format
(the source of truth) and evaluated with float32 numpy matrix products (:class:`DenseStack`),
spread over the cores in fixed-size chunks of rows (:func:`map_row_chunks`), so that using them
needs no TensorFlow.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from mambah.errors import ModelDirError

__all__ = ["ACTIVATIONS", "DenseStack", "build_mlp", "map_row_chunks", "n_threads", "PARALLEL_CHUNK", "run_row_chunks"]


def build_mlp(n_in: int, n_out: int, hidden: Sequence[int] = (64, 64), activation: str = "relu", seed: int = 0):
    """A Keras Sequential MLP of Dense layers (the only layer type :class:`DenseStack` reads)."""
    import keras

    keras.utils.set_random_seed(int(seed))
    layers = [keras.Input((n_in,))]
    for h in hidden:
        layers.append(keras.layers.Dense(int(h), activation=activation))
    layers.append(keras.layers.Dense(int(n_out), activation="linear"))
    return keras.Sequential(layers)


#: the activations :class:`DenseStack` evaluates in numpy (name -> in-place function of a float32 array)
ACTIVATIONS = {
    "linear": lambda a: a,
    "relu": lambda a: np.maximum(a, 0.0, out=a),
    "tanh": lambda a: np.tanh(a, out=a),
    "sigmoid": lambda a: 0.5 * (1.0 + np.tanh(0.5 * a)),
    "elu": lambda a: np.where(a > 0, a, np.expm1(np.minimum(a, 0.0))),
    "softplus": lambda a: np.logaddexp(a, 0.0),
    "silu": lambda a: a * 0.5 * (1.0 + np.tanh(0.5 * a)),
}


class DenseStack:
    """A stack of Dense layers evaluated with float32 numpy matrix products.

    Built from a Keras Sequential model of ``Dense`` layers (:func:`build_mlp`); the weights are
    copied, so the evaluation needs no TensorFlow and runs on large chunks at numpy speed.

    Args:
        layers: ``(weights (n_in, n_out), biases (n_out,), activation name)`` per layer.
    """

    def __init__(self, layers: Sequence[tuple[np.ndarray, np.ndarray, str]]):
        self.layers = [(np.ascontiguousarray(w, np.float32), np.asarray(b, np.float32), a) for w, b, a in layers]

    @classmethod
    def from_keras(cls, model, where: str = "the model") -> DenseStack:
        """The Dense layers of a Keras model (refuses other layer types and unknown activations)."""
        layers = []
        for layer in model.layers:
            kind = type(layer).__name__
            if kind == "InputLayer":
                continue
            if kind != "Dense":
                raise ModelDirError(f"{where}: layer {layer.name!r} is a {kind}; only Dense layers are supported")
            act = layer.get_config().get("activation", "linear")
            if not isinstance(act, str) or act not in ACTIVATIONS:
                raise ModelDirError(f"{where}: activation {act!r} of layer {layer.name!r} is not supported "
                                    f"(supported: {', '.join(ACTIVATIONS)})")
            w, b = layer.get_weights()
            layers.append((w, b, act))
        if not layers:
            raise ModelDirError(f"{where}: the network has no Dense layer")
        return cls(layers)

    @property
    def n_in(self) -> int:
        return self.layers[0][0].shape[0]

    @property
    def n_out(self) -> int:
        return self.layers[-1][0].shape[1]

    def __call__(self, x: np.ndarray, chunk: int = 8192) -> np.ndarray:
        """The network's float32 outputs ``(n, n_out)`` for inputs ``x`` ``(n, n_in)``."""
        x = np.asarray(x, dtype=np.float32)
        out = np.empty((len(x), self.n_out), dtype=np.float32)
        for i in range(0, len(x), chunk):
            a = x[i : i + chunk]
            for w, b, act in self.layers:
                a = a @ w
                a += b
                a = ACTIVATIONS[act](a)
            out[i : i + chunk] = a
        return out


#: rows per work unit of the threaded evaluation (fixed, so results do not depend on the thread count)
PARALLEL_CHUNK = 1 << 17


def n_threads() -> int:
    """Threads of :func:`map_row_chunks`: ``$MAMBAH_THREADS``, else the number of cores (at most 8)."""
    env = os.environ.get("MAMBAH_THREADS")
    if env:
        return max(1, int(env))
    return max(1, min(os.cpu_count() or 1, 8))


_BLAS_CONTROLLER = None


def _single_threaded_blas():
    """A context in which BLAS uses one thread (threadpoolctl, a scikit-learn dependency).

    The networks' matrix products are small (8192 x 64 x 64): a multithreaded BLAS spends more
    CPU spinning than computing on them (measured: 6 CPU-s instead of 0.45 CPU-s per 10^6 tracks
    on 2 cores), so mambah parallelises over chunks of rows instead.
    """
    global _BLAS_CONTROLLER
    try:
        if _BLAS_CONTROLLER is None:
            from threadpoolctl import ThreadpoolController

            _BLAS_CONTROLLER = ThreadpoolController()
        return _BLAS_CONTROLLER.limit(limits=1, user_api="blas")
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        import contextlib

        return contextlib.nullcontext()


def run_row_chunks(fn, n: int, *arrays, chunk: int = PARALLEL_CHUNK, threads: int | None = None) -> list:
    """``[fn(*chunk_arrays, i) for each chunk i]``: fixed-size row chunks in a thread pool, in order.

    numpy releases the GIL in ufuncs and matrix products, so chunks run concurrently on several
    cores (``threads``, default :func:`n_threads`) with a single-threaded BLAS each. ``i`` is the
    chunk number (chunk ``i`` holds rows ``i * chunk`` onwards; used e.g. to pick a per-chunk
    random stream); chunks are ``chunk`` rows, whatever the threads, so results do not depend on
    the thread count.
    """
    starts = list(range(0, n, chunk)) or [0]
    parts = [[a[s : s + chunk] for a in arrays] for s in starts]
    workers = min(n_threads() if threads is None else max(1, int(threads)), len(starts))
    with _single_threaded_blas():
        if workers <= 1:
            return [fn(*p, i) for i, p in enumerate(parts)]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as ex:
            return list(ex.map(lambda ip: fn(*ip[1], ip[0]), enumerate(parts)))


def map_row_chunks(fn, n: int, *arrays):
    """:func:`run_row_chunks` in chunks of :data:`PARALLEL_CHUNK` rows, its results concatenated
    (``fn`` returns an array or a tuple of arrays)."""
    outs = run_row_chunks(fn, n, *arrays)
    if isinstance(outs[0], tuple):
        return tuple(np.concatenate([o[j] for o in outs]) for j in range(len(outs[0])))
    return np.concatenate(outs)
