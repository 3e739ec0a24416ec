"""Reconstruction networks: the tracking-efficiency classifier and the momentum-resolution MDN.

Both are small multilayer perceptrons saved in Keras' native format (the source of truth) with
their preprocessing as plain arrays. For speed the stages evaluate them with numpy matrix
products built from the saved Keras weights (:class:`DenseStack`); a test checks that the two
agree.

**Efficiency** (``kind: "efficiency"``). Inputs: true momentum (px, py, pz) [MeV/c], origin
vertex (x, y, z) [mm] and the PDG id. Preprocessing (derived in numpy, recorded in the card)::

    features = [ln(p / GeV), eta, z / 100 mm, rho / 10 mm, one-hot(species e, mu, pi, K, p)]

standardised with the training means and widths, and clipped to the training range (inputs
outside it are counted and logged). Output: the logit of the probability to be reconstructed,
trained with binary cross-entropy on reconstructed/not labels, which makes the sigmoid of the
output a calibrated probability (the minimiser of the expected BCE is the true conditional
probability).

**Resolution** (``kind: "resolution"``): a mixture-density network (Bishop, "Mixture Density
Networks", NCRG/94/004, 1994). Conditions: [ln(p / GeV), eta, one-hot(species)]. Targets,
modelled as independent given the conditions::

    r   = 100 (p_reco - p_true) / p_true          # per cent
    dtx = 1000 (px_reco/pz_reco - px/pz)          # mrad
    dty = 1000 (py_reco/pz_reco - py/pz)          # mrad

each by a one-dimensional Gaussian mixture whose weights, means and widths the network outputs
(``k_p`` components for r, ``k_slope`` for each slope). Why an MDN and not a GAN: the
resolution of a tracker is, to a very good approximation, a scale mixture of Gaussians (core
from hit resolution and multiple scattering, wider components from wrong hits and hard
scatters), which a Gaussian mixture represents exactly; the MDN is trained by maximum likelihood
(stable, no adversary, no mode collapse), its likelihood is a validation score, and sampling is
a few vectorised numpy operations (> 10^6 tracks/s). Neglected: correlations between the
momentum and slope residuals (absent in the reference detector, small in full simulation).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mambah.reference.tracking import SPECIES, TRACKABLE_PIDS, momentum_features, rebuild_momentum, species_index
from mambah.errors import ConfigurationError, DataError, ModelDirError

__all__ = [
    "EFFICIENCY_CONDITIONS",
    "RESOLUTION_CONDITIONS",
    "RESOLUTION_TARGETS",
    "DenseStack",
    "efficiency_features",
    "resolution_features",
    "resolution_targets",
    "EfficiencyModel",
    "ResolutionModel",
    "build_mlp",
    "fit_efficiency",
    "fit_resolution",
    "load_efficiency",
    "load_resolution",
]

log = logging.getLogger(__name__)

#: Conditions of an efficiency model, in order (``quantity`` = store column / physical quantity).
EFFICIENCY_CONDITIONS: list[dict[str, str]] = [
    {"name": "px", "unit": "MeV", "quantity": "px"},
    {"name": "py", "unit": "MeV", "quantity": "py"},
    {"name": "pz", "unit": "MeV", "quantity": "pz"},
    {"name": "origin_x", "unit": "mm", "quantity": "origin_x"},
    {"name": "origin_y", "unit": "mm", "quantity": "origin_y"},
    {"name": "origin_z", "unit": "mm", "quantity": "origin_z"},
    {"name": "pid", "unit": "", "quantity": "pid"},
]
EFFICIENCY_TARGETS: list[dict[str, str]] = [
    {"name": "reconstructed", "unit": "probability", "quantity": "reconstructed"},
]
RESOLUTION_CONDITIONS: list[dict[str, str]] = [
    {"name": "px", "unit": "MeV", "quantity": "px"},
    {"name": "py", "unit": "MeV", "quantity": "py"},
    {"name": "pz", "unit": "MeV", "quantity": "pz"},
    {"name": "pid", "unit": "", "quantity": "pid"},
]
RESOLUTION_TARGETS: list[dict[str, str]] = [
    {"name": "px_reco", "unit": "MeV", "quantity": "px"},
    {"name": "py_reco", "unit": "MeV", "quantity": "py"},
    {"name": "pz_reco", "unit": "MeV", "quantity": "pz"},
]

EFFICIENCY_FEATURES = ["ln_p_gev", "eta", "origin_z_100mm", "origin_rho_10mm", *[f"is_{s}" for s in SPECIES]]
RESOLUTION_FEATURES = ["ln_p_gev", "eta", *[f"is_{s}" for s in SPECIES]]
#: number of continuous (standardised and clipped) features before the one-hot species block
_N_CONT = {"efficiency": 4, "resolution": 2}


# --------------------------------------------------------------------------------------------
# preprocessing
def _one_hot(pid) -> np.ndarray:
    sp = species_index(pid)
    out = np.zeros((len(sp), len(SPECIES)), dtype=np.float32)
    ok = sp >= 0
    out[np.nonzero(ok)[0], sp[ok]] = 1.0
    return out


def _p_eta32(px, py, pz) -> tuple[np.ndarray, np.ndarray]:
    """ln(p / GeV) and eta in float32 (fast path of :func:`momentum_features`)."""
    px = np.asarray(px, dtype=np.float32)
    py = np.asarray(py, dtype=np.float32)
    pz = np.asarray(pz, dtype=np.float32)
    pt = np.hypot(px, py)
    lnp = np.log(np.maximum(np.sqrt(pt * pt + pz * pz), np.float32(1e-3)) * np.float32(1e-3))
    eta = np.arcsinh(pz / np.maximum(pt, np.float32(1e-6)))
    return lnp, eta


def efficiency_features(px, py, pz, x, y, z, pid) -> np.ndarray:
    """Raw (unstandardised) efficiency features, float32 (n, 9); see the module docstring."""
    lnp, eta = _p_eta32(px, py, pz)
    cont = np.empty((len(lnp), 4), dtype=np.float32)
    cont[:, 0] = lnp
    cont[:, 1] = eta
    cont[:, 2] = np.asarray(z, dtype=np.float32) / np.float32(100.0)
    cont[:, 3] = np.hypot(np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.float32)) / np.float32(10.0)
    return np.concatenate([cont, _one_hot(pid)], axis=1)


def resolution_features(px, py, pz, pid) -> np.ndarray:
    """Raw resolution conditions, float32 (n, 7): ln(p/GeV), eta, one-hot species."""
    lnp, eta = _p_eta32(px, py, pz)
    cont = np.empty((len(lnp), 2), dtype=np.float32)
    cont[:, 0] = lnp
    cont[:, 1] = eta
    return np.concatenate([cont, _one_hot(pid)], axis=1)


def resolution_targets(px, py, pz, px_reco, py_reco, pz_reco) -> np.ndarray:
    """(r [%], dtx [mrad], dty [mrad]) from true and reconstructed momenta, float64 (n, 3)."""
    px, py, pz = (np.asarray(a, dtype=np.float64) for a in (px, py, pz))
    rx, ry, rz = (np.asarray(a, dtype=np.float64) for a in (px_reco, py_reco, pz_reco))
    p = np.sqrt(px * px + py * py + pz * pz)
    pr = np.sqrt(rx * rx + ry * ry + rz * rz)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.stack([100.0 * (pr / p - 1.0), 1e3 * (rx / rz - px / pz), 1e3 * (ry / rz - py / pz)], axis=1)


# --------------------------------------------------------------------------------------------
# networks
def build_mlp(n_in: int, n_out: int, hidden: Sequence[int] = (64, 64), activation: str = "relu", seed: int = 0):
    """A Keras Sequential MLP of Dense layers (the only layer type :class:`DenseStack` reads)."""
    import keras

    keras.utils.set_random_seed(int(seed))
    layers = [keras.Input((n_in,))]
    for h in hidden:
        layers.append(keras.layers.Dense(int(h), activation=activation))
    layers.append(keras.layers.Dense(int(n_out), activation="linear"))
    return keras.Sequential(layers)


_ACTIVATIONS = {
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
    """

    def __init__(self, layers: Sequence[tuple[np.ndarray, np.ndarray, str]]):
        self.layers = [(np.ascontiguousarray(w, np.float32), np.asarray(b, np.float32), a) for w, b, a in layers]

    @classmethod
    def from_keras(cls, model, where: str = "the model") -> DenseStack:
        layers = []
        for layer in model.layers:
            kind = type(layer).__name__
            if kind == "InputLayer":
                continue
            if kind != "Dense":
                raise ModelDirError(f"{where}: layer {layer.name!r} is a {kind}; only Dense layers are supported")
            act = layer.get_config().get("activation", "linear")
            if not isinstance(act, str) or act not in _ACTIVATIONS:
                raise ModelDirError(f"{where}: activation {act!r} of layer {layer.name!r} is not supported "
                                    f"(supported: {', '.join(_ACTIVATIONS)})")
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
        x = np.asarray(x, dtype=np.float32)
        out = np.empty((len(x), self.n_out), dtype=np.float32)
        for i in range(0, len(x), chunk):
            a = x[i : i + chunk]
            for w, b, act in self.layers:
                a = a @ w
                a += b
                a = _ACTIVATIONS[act](a)
            out[i : i + chunk] = a
        return out


# --------------------------------------------------------------------------------------------
# standardisation with a validity range
class _Scaler:
    """Standardise the first ``n_cont`` columns and clip them to the training range."""

    def __init__(self, mean, scale, lo, hi, names, model: str):
        self.mean = np.asarray(mean, np.float32)
        self.scale = np.asarray(scale, np.float32)
        self.lo = np.asarray(lo, np.float32)
        self.hi = np.asarray(hi, np.float32)
        self.names = list(names)
        self.model = model
        self._warned: set[str] = set()

    @classmethod
    def fit(cls, feats: np.ndarray, n_cont: int, names, model: str = "") -> _Scaler:
        c = feats[:, :n_cont].astype(np.float64)
        sd = c.std(axis=0)
        return cls(c.mean(axis=0), np.where(sd > 0, sd, 1.0), c.min(axis=0), c.max(axis=0), names[:n_cont], model)

    def arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        return {f"{prefix}mean": self.mean, f"{prefix}scale": self.scale, f"{prefix}lo": self.lo, f"{prefix}hi": self.hi}

    def transform(self, feats: np.ndarray, source: Mapping[str, str] | None = None) -> np.ndarray:
        n = len(self.mean)
        c = feats[:, :n]
        out = np.empty_like(feats)
        for j in range(n):
            col = c[:, j]
            bad = int(np.count_nonzero((col < self.lo[j]) | (col > self.hi[j])))
            if bad:
                name = self.names[j]
                msg = ("model %r: %d of %d inputs have %s (from %s) outside the training range [%.4g, %.4g]; "
                       "they are evaluated at the nearest edge of the range")
                args = (self.model, bad, len(col), name, (source or _SOURCES).get(name, name), self.lo[j], self.hi[j])
                if name not in self._warned:
                    self._warned.add(name)
                    log.warning(msg, *args)
                else:
                    log.debug(msg, *args)
            out[:, j] = (np.clip(col, self.lo[j], self.hi[j]) - self.mean[j]) / self.scale[j]
        out[:, n:] = feats[:, n:]
        return out


_SOURCES = {"ln_p_gev": "px, py, pz", "eta": "px, py, pz", "origin_z_100mm": "origin z", "origin_rho_10mm": "origin x, y"}


# --------------------------------------------------------------------------------------------
# loaded models
def _check_card(card: dict, path: Path, kind: str, conditions: list[dict], targets: list[dict]) -> None:
    name = card.get("name", path.name)
    if card.get("kind") != kind:
        raise ModelDirError(f"model {name!r} ({str(path)!r}) is a {card.get('kind')!r} model, not {kind!r}")
    for what, want in (("conditions", conditions), ("targets", targets)):
        got = card.get(what)
        if not isinstance(got, list) or not all(isinstance(c, dict) for c in got):
            raise ModelDirError(f"model {name!r}: card {what} must be a list of {{name, unit, quantity}} objects")
        gq = [c.get("quantity", c.get("name")) for c in got]
        wq = [c["quantity"] for c in want]
        if gq != wq:
            extra = [q for q in gq if q not in wq]
            missing = [q for q in wq if q not in gq]
            detail = []
            if missing:
                detail.append(f"missing {', '.join(map(repr, missing))}")
            if extra:
                detail.append(f"unexpected {', '.join(map(repr, extra))}")
            if not detail:
                detail.append("wrong order")
            raise ModelDirError(
                f"model {name!r}: card {what} {gq} do not match the columns this stage provides {wq} "
                f"({'; '.join(detail)})"
            )


class _Loaded:
    kind = ""

    def __init__(self, path: Path, card: dict, arrays: dict, net: DenseStack):
        self.path = path
        self.card = card
        self.name = card.get("name", path.name)
        self.species = list(card.get("species") or SPECIES)
        self.net = net
        self._arrays = arrays

    def check_species(self, pid: np.ndarray) -> None:
        """Refuse PDG ids of species the model was not trained for (names the model and column)."""
        sp = species_index(pid)
        trained = {SPECIES.index(s) for s in self.species if s in SPECIES}
        bad = (sp < 0) | ~np.isin(sp, list(trained))
        if bad.any():
            ids = sorted({int(v) for v in np.asarray(pid)[bad][:1000]})
            raise ConfigurationError(
                f"model {self.name!r} was trained for species {', '.join(self.species)}; column 'pid' holds "
                f"{int(bad.sum())} rows of other species (PDG ids {ids[:10]}); select them out or use a model "
                "trained for them"
            )


def _load(path: str | os.PathLike, kind: str, conditions, targets, n_feat: int, n_cont: int):
    from mambah.modeldir import load_arrays, load_network, resolve_model, verify_model_dir

    p = resolve_model(path)
    card = verify_model_dir(p)
    _check_card(card, p, kind, conditions, targets)
    arrays = load_arrays(p)
    name = card.get("name", p.name)
    for k in ("mean", "scale", "lo", "hi"):
        if k not in arrays or arrays[k].shape != (n_cont,):
            raise ModelDirError(f"model {name!r}: arrays.npz lacks a {k!r} array of shape ({n_cont},)")
    net = DenseStack.from_keras(load_network(p, "network"), where=f"model {name!r}")
    if net.n_in != n_feat:
        raise ModelDirError(f"model {name!r}: the network takes {net.n_in} inputs, the preprocessing makes {n_feat}")
    scaler = _Scaler(arrays["mean"], arrays["scale"], arrays["lo"], arrays["hi"],
                     (EFFICIENCY_FEATURES if kind == "efficiency" else RESOLUTION_FEATURES)[:n_cont], name)
    return p, card, arrays, net, scaler


class EfficiencyModel(_Loaded):
    """A loaded efficiency model: :meth:`probability` of reconstruction for each particle."""

    kind = "efficiency"

    def __init__(self, path, card, arrays, net, scaler):
        super().__init__(path, card, arrays, net)
        self.scaler = scaler
        if net.n_out != 1:
            raise ModelDirError(f"model {self.name!r}: an efficiency network has 1 output, this one {net.n_out}")

    @classmethod
    def load(cls, path: str | os.PathLike) -> EfficiencyModel:
        return cls(*_load(path, "efficiency", EFFICIENCY_CONDITIONS, EFFICIENCY_TARGETS, len(EFFICIENCY_FEATURES), 4))

    def probability(self, px, py, pz, x, y, z, pid, *, check_species: bool = True) -> np.ndarray:
        """Probability (float64) to be reconstructed; momenta in MeV/c, origin in mm."""
        if check_species:
            self.check_species(pid)
        arrays = [np.asarray(a) for a in (px, py, pz, x, y, z, pid)]

        def one(px, py, pz, x, y, z, pid, i):
            f = self.scaler.transform(efficiency_features(px, py, pz, x, y, z, pid), _SOURCES)
            logit = self.net(f)[:, 0].astype(np.float64)
            return 0.5 * (1.0 + np.tanh(0.5 * logit))

        return _parallel(one, len(arrays[0]), *arrays)


class ResolutionModel(_Loaded):
    """A loaded resolution MDN: :meth:`sample` reconstructed momenta from true ones."""

    kind = "resolution"

    def __init__(self, path, card, arrays, net, scaler):
        super().__init__(path, card, arrays, net)
        self.scaler = scaler
        hp = card.get("hyperparameters", {})
        self.k = [int(hp.get("k_p", 3)), int(hp.get("k_slope", 2)), int(hp.get("k_slope", 2))]
        if net.n_out != 3 * sum(self.k):
            raise ModelDirError(f"model {self.name!r}: the network has {net.n_out} outputs, the card's "
                                f"mixture sizes {self.k} need {3 * sum(self.k)}")
        tscale = arrays.get("target_scale")
        self.target_scale = np.ones(3, np.float32) if tscale is None else np.asarray(tscale, np.float32)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ResolutionModel:
        return cls(*_load(path, "resolution", RESOLUTION_CONDITIONS, RESOLUTION_TARGETS, len(RESOLUTION_FEATURES), 2))

    def mixtures(self, px, py, pz, pid) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per target (r [%], dtx [mrad], dty [mrad]): component-major (k, n) weights, means, sigmas."""
        f = self.scaler.transform(resolution_features(px, py, pz, pid), _SOURCES)
        return split_mdn(self.net(f), self.k, self.target_scale)

    def sample(self, px, py, pz, pid, seed=None, *, check_species: bool = True):
        """Reconstructed (px, py, pz) in MeV/c (float64) drawn from the network."""
        from mambah.random import get_rng

        if check_species:
            self.check_species(pid)
        arrays = [np.asarray(a) for a in (px, py, pz, pid)]
        n = len(arrays[0])
        # one independent stream per fixed-size chunk, drawn from ``seed``: reproducible for any thread count
        seeds = get_rng(seed).integers(0, 2**63, max(1, -(-n // PARALLEL_CHUNK)))

        def one(px, py, pz, pid, i):
            rng = np.random.default_rng(int(seeds[i]))
            y = [sample_mixture(w, m, s, rng) for w, m, s in self.mixtures(px, py, pz, pid)]
            return rebuild_momentum(px, py, pz, y[0] * 1e-2, y[1] * 1e-3, y[2] * 1e-3)

        return _parallel(one, n, *arrays)


def split_mdn(out: np.ndarray, k: Sequence[int], target_scale=None):
    """Split raw MDN outputs (n, 3 sum(k)) into per-target (weights, means, sigmas) in target units.

    The arrays are component-major, shape (k, n), float32 (fast reductions over few components).
    """
    res = []
    i = 0
    ts = np.ones(len(k), np.float32) if target_scale is None else np.asarray(target_scale, np.float32)
    o = np.ascontiguousarray(out.T)
    for j, kk in enumerate(k):
        logits = o[i : i + kk]
        mu = o[i + kk : i + 2 * kk] * ts[j]
        sig = np.exp(np.clip(o[i + 2 * kk : i + 3 * kk], -15.0, 10.0)) * ts[j]
        top = logits[0].copy()
        for c in range(1, kk):
            np.maximum(top, logits[c], out=top)
        w = np.exp(logits - top)
        w /= w.sum(axis=0)
        res.append((w, mu, sig))
        i += 3 * kk
    return res


def sample_mixture(w: np.ndarray, mu: np.ndarray, sig: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw per column from a 1D Gaussian mixture given component-major (k, n) arrays."""
    n = w.shape[1]
    u = rng.random(n, dtype=np.float32)
    z = rng.standard_normal(n, dtype=np.float32)
    m = mu[0].copy()
    s = sig[0].copy()
    cum = w[0].copy()
    for c in range(1, w.shape[0]):
        take = u >= cum
        m[take] = mu[c][take]
        s[take] = sig[c][take]
        cum += w[c]
    return (m + s * z).astype(np.float64)


#: rows per work unit of the threaded evaluation (fixed, so results do not depend on the thread count)
PARALLEL_CHUNK = 1 << 17


def _threads() -> int:
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


def _parallel(fn, n: int, *arrays):
    """``fn(*chunk_arrays, i)`` over fixed-size row chunks in a thread pool; results concatenated.

    numpy releases the GIL in ufuncs and matrix products, so chunks run concurrently on several
    cores (``MAMBAH_THREADS``, default: the number of cores, at most 8) with a single-threaded
    BLAS each. ``i`` is the chunk number (used to pick a per-chunk random stream).
    """
    starts = list(range(0, n, PARALLEL_CHUNK)) or [0]
    parts = [[a[s : s + PARALLEL_CHUNK] for a in arrays] for s in starts]
    workers = min(_threads(), len(starts))
    with _single_threaded_blas():
        if workers <= 1:
            outs = [fn(*p, i) for i, p in enumerate(parts)]
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(workers) as ex:
                outs = list(ex.map(lambda ip: fn(*ip[1], ip[0]), enumerate(parts)))
    if isinstance(outs[0], tuple):
        return tuple(np.concatenate([o[j] for o in outs]) for j in range(len(outs[0])))
    return np.concatenate(outs)


# process-wide cache of loaded models: (resolved path, content hash) -> model
_CACHE: dict[tuple[str, str], Any] = {}
_LOCK = threading.Lock()


def _cached(cls, path):
    from mambah.modeldir import model_hash, resolve_model

    p = resolve_model(path)
    key = (str(p.resolve()), model_hash(p), cls.__name__)
    with _LOCK:
        m = _CACHE.get(key)
        if m is None:
            m = _CACHE[key] = cls.load(p)
    return m


def load_efficiency(path: str | os.PathLike) -> EfficiencyModel:
    """The efficiency model at ``path`` (a directory or a name under ``models/``), cached per process."""
    return _cached(EfficiencyModel, path)


def load_resolution(path: str | os.PathLike) -> ResolutionModel:
    """The resolution model at ``path`` (a directory or a name under ``models/``), cached per process."""
    return _cached(ResolutionModel, path)


# --------------------------------------------------------------------------------------------
# training
def _check_pids(pid: np.ndarray, species: Sequence[str], where: str) -> None:
    sp = species_index(pid)
    allowed = [SPECIES.index(s) for s in species]
    bad = ~np.isin(sp, allowed)
    if bad.any():
        ids = sorted({int(v) for v in pid[bad][:1000]})[:10]
        raise DataError(f"{where}: column 'pid' has {int(bad.sum())} rows with PDG ids {ids} outside the "
                        f"species {', '.join(species)} (|pid| in {TRACKABLE_PIDS})")


def _split(n: int, val_fraction: float, seed: int):
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_val = max(1, int(round(n * val_fraction)))
    return perm[n_val:], perm[:n_val]


def _fit_keras(model, loss, x, y, xv, yv, epochs, batch_size, learning_rate, progress: bool):
    import keras

    steps = max(1, int(np.ceil(len(x) / batch_size))) * int(epochs)
    sched = keras.optimizers.schedules.CosineDecay(float(learning_rate), steps, alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(sched), loss=loss)
    # the learning rate decays over all epochs; keep the weights of the best validation epoch
    cb = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=int(epochs), restore_best_weights=True)]
    hist = model.fit(x, y, validation_data=(xv, yv), epochs=int(epochs), batch_size=int(batch_size),
                     verbose=2 if progress else 0, callbacks=cb, shuffle=True)
    return {k: [float(v) for v in vals] for k, vals in hist.history.items()}


def _plain_copy(model):
    """An uncompiled copy of ``model`` (so the saved file holds no training-only objects)."""
    import keras

    clone = keras.Sequential.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    return clone


def _bce_numpy(prob: np.ndarray, label: np.ndarray) -> float:
    p = np.clip(prob, 1e-7, 1 - 1e-7)
    return float(-np.mean(label * np.log(p) + (1 - label) * np.log1p(-p)))


def efficiency_closure(prob: np.ndarray, ref: np.ndarray, p: np.ndarray, eta: np.ndarray, *,
                       p_edges=None, eta_edges=None, min_count: int = 2000) -> dict[str, Any]:
    """Mean model probability minus mean reference (truth probability or 0/1 label) per (p, eta) bin.

    Returns the bins' counts and differences and the largest |difference| over bins with at least
    ``min_count`` entries. Momentum in MeV/c.
    """
    p_edges = np.asarray(p_edges if p_edges is not None else [5e2, 1e3, 2e3, 3e3, 5e3, 1e4, 2e4, 5e4, 1e5, 4e5])
    eta_edges = np.asarray(eta_edges if eta_edges is not None else [1.6, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.4])
    ip = np.digitize(p, p_edges) - 1
    ie = np.digitize(eta, eta_edges) - 1
    ok = (ip >= 0) & (ip < len(p_edges) - 1) & (ie >= 0) & (ie < len(eta_edges) - 1)
    shape = (len(p_edges) - 1, len(eta_edges) - 1)
    flat = np.ravel_multi_index((ip[ok], ie[ok]), shape)
    nb = shape[0] * shape[1]
    cnt = np.bincount(flat, minlength=nb).reshape(shape)
    sm = np.bincount(flat, weights=prob[ok], minlength=nb).reshape(shape)
    sr = np.bincount(flat, weights=ref[ok], minlength=nb).reshape(shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = (sm - sr) / cnt
    enough = cnt >= min_count
    return {
        "p_edges": p_edges.tolist(),
        "eta_edges": eta_edges.tolist(),
        "counts": cnt.tolist(),
        "diff": np.where(enough, diff, np.nan).tolist(),
        "max_abs_diff": float(np.nanmax(np.abs(np.where(enough, diff, np.nan)))) if enough.any() else float("nan"),
        "n_bins": int(enough.sum()),
    }


def fit_efficiency(
    df,
    *,
    name: str = "efficiency",
    species: Sequence[str] = SPECIES,
    hidden: Sequence[int] = (64, 64),
    epochs: int = 20,
    batch_size: int = 4096,
    learning_rate: float = 3e-3,
    val_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = False,
) -> tuple[Any, dict[str, np.ndarray], dict[str, Any]]:
    """Train an efficiency classifier on a table of particles.

    Args:
        df: columns ``px, py, pz`` (MeV/c), ``x, y, z`` (origin, mm), ``pid`` and
            ``reconstructed`` (0/1); optionally ``eff_true`` (the reference detector's
            probability), used only for the validation metrics.

    Returns:
        (keras model, arrays for the model directory, card fields: metrics, hyperparameters,
        history).
    """
    import keras

    from mambah.io import check_finite, require_columns

    cols = ["px", "py", "pz", "x", "y", "z", "pid", "reconstructed"]
    require_columns(df, cols, where="the efficiency training data")
    check_finite(df, cols, where="the efficiency training data")
    pid = df["pid"].to_numpy(np.int64)
    _check_pids(pid, species, "the efficiency training data")
    label = df["reconstructed"].to_numpy(np.float32)
    if not np.isin(label, (0.0, 1.0)).all():
        raise DataError("the efficiency training data: column 'reconstructed' must hold 0/1 (or booleans)")
    if label.min() == label.max():
        raise DataError("the efficiency training data: column 'reconstructed' has a single class; need both")
    feats = efficiency_features(*(df[c].to_numpy() for c in ("px", "py", "pz", "x", "y", "z")), pid)
    tr, va = _split(len(df), val_fraction, seed)
    scaler = _Scaler.fit(feats[tr], 4, EFFICIENCY_FEATURES, name)
    x = scaler.transform(feats)
    model = build_mlp(x.shape[1], 1, hidden, seed=seed)
    loss = keras.losses.BinaryCrossentropy(from_logits=True)
    net0 = DenseStack.from_keras(model)
    bce_before = _bce_numpy(1 / (1 + np.exp(-net0(x[va])[:, 0])), label[va])
    history = _fit_keras(model, loss, x[tr], label[tr], x[va], label[va], epochs, batch_size, learning_rate, progress)
    model = _plain_copy(model)
    net = DenseStack.from_keras(model)
    prob_va = 1 / (1 + np.exp(-net(x[va])[:, 0].astype(np.float64)))
    p, eta = momentum_features(df["px"].to_numpy()[va], df["py"].to_numpy()[va], df["pz"].to_numpy()[va])
    metrics: dict[str, Any] = {
        "val_bce_before": bce_before,
        "val_bce": _bce_numpy(prob_va, label[va]),
        "n_val": int(len(va)),
        "closure_vs_labels": _strip(efficiency_closure(prob_va, label[va], p, eta)),
    }
    if "eff_true" in df.columns:
        truth = df["eff_true"].to_numpy(np.float64)[va]
        metrics["val_bce_truth"] = _bce_numpy(truth, label[va])
        metrics["closure_vs_truth"] = _strip(efficiency_closure(prob_va, truth, p, eta))
    arrays = scaler.arrays()
    hyper = {"hidden": list(map(int, hidden)), "activation": "relu", "epochs": int(epochs),
             "epochs_run": len(history.get("loss", [])), "batch_size": int(batch_size),
             "learning_rate": float(learning_rate), "schedule": "cosine decay to 5%", "optimizer": "Adam",
             "loss": "binary cross-entropy (from logits)", "val_fraction": float(val_fraction), "seed": int(seed),
             "features": EFFICIENCY_FEATURES, "n_train": int(len(tr))}
    return model, arrays, {"metrics": metrics, "hyperparameters": hyper, "history": history}


def _strip(c: dict) -> dict:
    """The compact part of a closure result for a card."""
    return {"max_abs_diff": c["max_abs_diff"], "n_bins": c["n_bins"], "min_count": 2000,
            "p_edges": c["p_edges"], "eta_edges": c["eta_edges"],
            "diff": [[None if not np.isfinite(v) else round(v, 5) for v in row] for row in c["diff"]]}


def mdn_loss(k: Sequence[int]):
    """Negative log-likelihood of independent 1D Gaussian mixtures (one per target column)."""
    import keras
    from keras import ops

    k = [int(v) for v in k]
    half_log_2pi = 0.5 * float(np.log(2 * np.pi))

    def loss(y_true, y_pred):
        total = 0.0
        i = 0
        for j, kk in enumerate(k):
            logits = y_pred[:, i : i + kk]
            mu = y_pred[:, i + kk : i + 2 * kk]
            logs = ops.clip(y_pred[:, i + 2 * kk : i + 3 * kk], -15.0, 10.0)
            y = y_true[:, j : j + 1]
            z = (y - mu) * ops.exp(-logs)
            logp = keras.ops.log_softmax(logits, axis=1) - logs - 0.5 * z * z - half_log_2pi
            total = total - ops.logsumexp(logp, axis=1)
            i += 3 * kk
        return total

    return loss


def _mdn_nll_numpy(out: np.ndarray, y: np.ndarray, k, target_scale) -> float:
    total = np.zeros(len(y))
    for j, (w, mu, sig) in enumerate(split_mdn(out, k, target_scale)):
        z = (y[:, j][None, :] - mu) / sig
        dens = (w / (sig * np.sqrt(2 * np.pi)) * np.exp(-0.5 * z * z)).sum(axis=0)
        total -= np.log(np.maximum(dens, 1e-300))
    return float(total.mean())


def fit_resolution(
    df,
    *,
    name: str = "resolution",
    species: Sequence[str] = SPECIES,
    hidden: Sequence[int] = (64, 64),
    k_p: int = 3,
    k_slope: int = 2,
    epochs: int = 20,
    batch_size: int = 4096,
    learning_rate: float = 3e-3,
    val_fraction: float = 0.1,
    seed: int = 0,
    progress: bool = False,
) -> tuple[Any, dict[str, np.ndarray], dict[str, Any]]:
    """Train the resolution MDN on reconstructed tracks.

    Args:
        df: columns ``px, py, pz`` (true, MeV/c), ``px_reco, py_reco, pz_reco`` (MeV/c) and
            ``pid``; rows with NaN reconstructed momenta (not reconstructed) are dropped.
    """
    from mambah.io import check_finite, require_columns

    cols = ["px", "py", "pz", "pid", "px_reco", "py_reco", "pz_reco"]
    require_columns(df, cols, where="the resolution training data")
    check_finite(df, ["px", "py", "pz", "pid"], where="the resolution training data")
    reco = df[["px_reco", "py_reco", "pz_reco"]].to_numpy(np.float64)
    keep = np.isfinite(reco).all(axis=1)
    if "reconstructed" in df.columns:
        keep &= df["reconstructed"].to_numpy() > 0
    df = df.loc[keep]
    if len(df) < 100:
        raise DataError(f"the resolution training data has {len(df)} reconstructed tracks; need at least 100")
    pid = df["pid"].to_numpy(np.int64)
    _check_pids(pid, species, "the resolution training data")
    true = [df[c].to_numpy(np.float64) for c in ("px", "py", "pz")]
    if (true[2] <= 0).any():
        raise DataError(f"the resolution training data has {int((true[2] <= 0).sum())} tracks with pz <= 0; "
                        "a forward tracker reconstructs only pz > 0")
    y = resolution_targets(*true, *(df[c].to_numpy(np.float64) for c in ("px_reco", "py_reco", "pz_reco")))
    feats = resolution_features(*true, pid)
    tr, va = _split(len(df), val_fraction, seed)
    scaler = _Scaler.fit(feats[tr], 2, RESOLUTION_FEATURES, name)
    x = scaler.transform(feats)
    # targets in units of their robust width, so that the network's outputs are O(1)
    q = np.percentile(y[tr], [15.87, 84.13], axis=0)
    target_scale = (0.5 * (q[1] - q[0])).astype(np.float32)
    ys = (y / target_scale).astype(np.float32)
    k = [int(k_p), int(k_slope), int(k_slope)]
    model = build_mlp(x.shape[1], 3 * sum(k), hidden, seed=seed)
    nll_before = _mdn_nll_numpy(DenseStack.from_keras(model)(x[va]), y[va], k, target_scale)
    history = _fit_keras(model, mdn_loss(k), x[tr], ys[tr], x[va], ys[va], epochs, batch_size, learning_rate, progress)
    model = _plain_copy(model)
    out_va = DenseStack.from_keras(model)(x[va])
    metrics: dict[str, Any] = {
        "val_nll_before": nll_before,
        "val_nll": _mdn_nll_numpy(out_va, y[va], k, target_scale),
        "n_val": int(len(va)),
    }
    arrays = {**scaler.arrays(), "target_scale": target_scale}
    hyper = {"hidden": list(map(int, hidden)), "activation": "relu", "k_p": int(k_p), "k_slope": int(k_slope),
             "epochs": int(epochs), "epochs_run": len(history.get("loss", [])), "batch_size": int(batch_size),
             "learning_rate": float(learning_rate), "schedule": "cosine decay to 5%", "optimizer": "Adam",
             "loss": "mixture-density negative log-likelihood", "val_fraction": float(val_fraction),
             "seed": int(seed), "features": RESOLUTION_FEATURES,
             "targets_internal": ["100 (p_reco/p_true - 1) [%]", "1000 d(px/pz) [mrad]", "1000 d(py/pz) [mrad]"],
             "n_train": int(len(tr))}
    return model, arrays, {"metrics": metrics, "hyperparameters": hyper, "history": history}


def resolution_closure(model: ResolutionModel, df, detector=None, seed: int = 0, p_edges=None) -> dict[str, Any]:
    """Compare (p_reco - p_true)/p_true of the model and of the reference truth in bins of p.

    Both are drawn for the same true momenta. Per bin: the widths (half the 15.87-84.13 %
    interquantile range), their ratio, the standard deviations, and a two-sample KS test.
    """
    from scipy.stats import ks_2samp

    from mambah.reference.tracking import TrackingDetector

    det = detector or TrackingDetector()
    px, py, pz = (df[c].to_numpy(np.float64) for c in ("px", "py", "pz"))
    pid = df["pid"].to_numpy(np.int64)
    rng = np.random.default_rng(seed)
    mx, my, mz = model.sample(px, py, pz, pid, rng)
    tx, ty, tz = det.smear(px, py, pz, pid, rng)
    p = np.sqrt(px * px + py * py + pz * pz)
    r_model = np.sqrt(mx * mx + my * my + mz * mz) / p - 1
    r_true = np.sqrt(tx * tx + ty * ty + tz * tz) / p - 1
    edges = np.asarray(p_edges if p_edges is not None else [2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 4e5])
    bins = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (p >= lo) & (p < hi)
        if sel.sum() < 50:
            continue
        a, b = r_model[sel], r_true[sel]
        wa = 0.5 * np.subtract(*np.percentile(a, [84.13, 15.87]))
        wb = 0.5 * np.subtract(*np.percentile(b, [84.13, 15.87]))
        ks = ks_2samp(a, b)
        bins.append({"p_lo": float(lo), "p_hi": float(hi), "n": int(sel.sum()), "width_model": float(wa),
                     "width_truth": float(wb), "width_ratio": float(wa / wb), "std_model": float(a.std()),
                     "std_truth": float(b.std()), "ks_stat": float(ks.statistic), "ks_pvalue": float(ks.pvalue)})
    return {"bins": bins, "max_width_dev": max(abs(b["width_ratio"] - 1) for b in bins) if bins else float("nan"),
            "min_ks_pvalue": min(b["ks_pvalue"] for b in bins) if bins else float("nan")}


def card_json(card: Mapping[str, Any]) -> str:
    return json.dumps(card, indent=2)
