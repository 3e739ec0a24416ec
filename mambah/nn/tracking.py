"""Reconstruction networks: the tracking-efficiency classifier and the momentum-resolution MDN.

Both are small multilayer perceptrons saved in Keras' native format (the source of truth) with
their preprocessing as plain arrays. For speed the stages evaluate them with numpy matrix
products built from the saved Keras weights (:class:`~mambah.nn.dense.DenseStack`); a test
checks that the two agree. They are trained by :mod:`mambah.training.tracking`; loaded, they are
:class:`~mambah.nn.model.Model` kinds (:class:`EfficiencyModel`, :class:`ResolutionModel`).

**Efficiency** (``kind: "efficiency"``). Inputs: true momentum (px, py, pz) [MeV/c], origin
vertex (x, y, z) [mm] and the PDG id. Preprocessing (derived in numpy, recorded in the card)::

    features = [ln(p / GeV), eta, z / 100 mm, rho / 10 mm, one-hot(species e, mu, pi, K, p)]

standardised with the training means and widths, and clipped to the training range (inputs
outside it are counted and logged). Output: the logit of the probability to be reconstructed,
trained with binary cross-entropy on reconstructed/not labels, which makes the sigmoid of the
output a calibrated probability (the minimiser of the expected BCE is the true conditional
probability).

A **4-class** efficiency model (card ``targets`` ``track_type``, ``classes`` none / long /
upstream / downstream, ``class_codes`` 0 / 3 / 4 / 5) has the same inputs and four outputs: the
logits of the classes, whose softmax (:meth:`EfficiencyModel.type_probabilities`) is trained with
categorical cross-entropy (its minimiser is the true conditional class probability). Its recorded
training range is the geometric acceptance's box (``mambah train efficiency --classes track-type``;
:mod:`mambah.reconstruction.acceptance`), so that the Efficiency stage can check that the model
covers the acceptance and never evaluates it outside.

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

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mambah.errors import ConfigurationError, DataError, ModelDirError, OutOfRangeWarning
from mambah.nn.dense import PARALLEL_CHUNK, DenseStack, map_row_chunks
from mambah.nn.model import Model
from mambah.physics import SPECIES, p_eta32, rebuild_momentum, species_index

__all__ = [
    "EFFICIENCY_CONDITIONS",
    "EFFICIENCY_TARGETS",
    "TRACK_TYPE_TARGETS",
    "TRACK_TYPE_CLASSES",
    "TRACK_TYPE_CODES",
    "EFFICIENCY_FEATURES",
    "RESOLUTION_CONDITIONS",
    "RESOLUTION_TARGETS",
    "RESOLUTION_FEATURES",
    "RangeScaler",
    "efficiency_features",
    "resolution_features",
    "resolution_targets",
    "EfficiencyModel",
    "ResolutionModel",
    "split_mdn",
    "sample_mixture",
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
#: targets of a 4-class efficiency model (card ``classes``: none, long, upstream, downstream)
TRACK_TYPE_TARGETS: list[dict[str, str]] = [
    {"name": "track_type", "unit": "class", "quantity": "track_type"},
]
#: the 4-class model's classes and their ``TRACK_Type`` codes, in the network's output order
TRACK_TYPE_CLASSES = ("none", "long", "upstream", "downstream")
TRACK_TYPE_CODES = (0, 3, 4, 5)
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
    """ln(p / GeV) and eta in float32 (p, eta from :func:`mambah.physics.p_eta32`; p floored at 1 keV/c)."""
    p, eta = p_eta32(px, py, pz)
    lnp = np.log(np.maximum(p, np.float32(1e-3)) * np.float32(1e-3))
    return lnp, eta


def _efficiency_continuous(px, py, pz, x, y, z) -> np.ndarray:
    """The continuous efficiency features (ln p/GeV, eta, z / 100 mm, rho / 10 mm), float32 (n, 4)."""
    lnp, eta = _p_eta32(px, py, pz)
    cont = np.empty((len(lnp), 4), dtype=np.float32)
    cont[:, 0] = lnp
    cont[:, 1] = eta
    cont[:, 2] = np.asarray(z, dtype=np.float32) / np.float32(100.0)
    cont[:, 3] = np.hypot(np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.float32)) / np.float32(10.0)
    return cont


def efficiency_features(px, py, pz, x, y, z, pid) -> np.ndarray:
    """Raw (unstandardised) efficiency features, float32 (n, 9); see the module docstring."""
    return np.concatenate([_efficiency_continuous(px, py, pz, x, y, z), _one_hot(pid)], axis=1)


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
# standardisation with a validity range
class RangeScaler:
    """Standardise the first ``n_cont`` feature columns and clip them to the training range.

    Inputs outside the range are evaluated at its nearest edge; that is said by a structured
    :class:`~mambah.errors.OutOfRangeWarning` the first time per feature and scaler (then logged
    at DEBUG); the stages also record the counts of every batch in its provenance. Arrays ``mean``, ``scale``, ``lo``, ``hi``
    (float32, one per continuous feature) are what the model directory stores.

    Args:
        mean, scale, lo, hi: the training means, widths and range of the continuous features.
        names: the features' names; model: the model's name (for messages).
    """

    def __init__(self, mean, scale, lo, hi, names, model: str):
        self.mean = np.asarray(mean, np.float32)
        self.scale = np.asarray(scale, np.float32)
        self.lo = np.asarray(lo, np.float32)
        self.hi = np.asarray(hi, np.float32)
        self.names = list(names)
        self.model = model
        self._warned: set[str] = set()

    @classmethod
    def fit(cls, feats: np.ndarray, n_cont: int, names, model: str = "") -> RangeScaler:
        """The scaler of the first ``n_cont`` columns of the training features ``feats``."""
        c = feats[:, :n_cont].astype(np.float64)
        sd = c.std(axis=0)
        return cls(c.mean(axis=0), np.where(sd > 0, sd, 1.0), c.min(axis=0), c.max(axis=0), names[:n_cont], model)

    def arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        """The arrays to store in the model directory."""
        return {f"{prefix}mean": self.mean, f"{prefix}scale": self.scale, f"{prefix}lo": self.lo, f"{prefix}hi": self.hi}

    def transform(self, feats: np.ndarray, source: Mapping[str, str] | None = None,
                  tally: list | None = None) -> np.ndarray:
        """Standardised and clipped features (float32; the one-hot block unchanged).

        ``tally``, when given, gets ``(outside per feature, rows outside any)`` appended (the
        range check costs no second pass over the features; a list is thread-safe to append to).
        """
        n = len(self.mean)
        c = feats[:, :n]
        out = np.empty_like(feats)
        per = np.zeros(n, dtype=np.int64)
        any_out = np.zeros(len(c), dtype=bool) if tally is not None else None
        for j in range(n):
            col = c[:, j]
            mask = (col < self.lo[j]) | (col > self.hi[j])
            bad = int(np.count_nonzero(mask))
            per[j] = bad
            if bad and any_out is not None:
                any_out |= mask
            if bad:
                name = self.names[j]
                msg = ("model %r: %d of %d inputs have %s (from %s) outside the training range [%.4g, %.4g]; "
                       "they are evaluated at the nearest edge of the range")
                args = (self.model, bad, len(col), name, (source or _SOURCES).get(name, name), self.lo[j], self.hi[j])
                if name not in self._warned:
                    self._warned.add(name)
                    warnings.warn(OutOfRangeWarning(msg % args, model=self.model, count=bad, n=len(col),
                                                    detail={name: bad}, action=_ACTION), stacklevel=2)
                else:
                    log.debug(msg, *args)
            out[:, j] = (np.clip(col, self.lo[j], self.hi[j]) - self.mean[j]) / self.scale[j]
        out[:, n:] = feats[:, n:]
        if tally is not None:
            tally.append((per, int(np.count_nonzero(any_out))))
        return out


_ACTION = "evaluated at the nearest edge of the range"
_SOURCES = {"ln_p_gev": "px, py, pz", "eta": "px, py, pz", "origin_z_100mm": "origin z", "origin_rho_10mm": "origin x, y"}


# --------------------------------------------------------------------------------------------
# loaded models
def _check_card(card: dict, path: Path, kind: str, conditions: list[dict], targets: list[dict]) -> None:
    name = card.get("name", path.name)
    if card.get("kind") != kind:
        raise ModelDirError(f"model {name!r} ({str(path)!r}) is a {card.get('kind')!r} model, not {kind!r}")
    if targets and isinstance(targets[0], list):  # alternatives (the binary or the 4-class efficiency)
        got_q = [c.get("quantity", c.get("name")) for c in card.get("targets") or [] if isinstance(c, dict)]
        targets = next((t for t in targets if [c["quantity"] for c in t] == got_q), targets[0])
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


class _TrackingModel(Model):
    """A tracking network (efficiency or resolution): a :class:`~mambah.nn.model.Model` whose
    conditions (true momentum, origin, PDG id) become features standardised by :attr:`scaler`;
    the training range is that of the continuous features (``ln_p_gev``, ``eta``, ...)."""

    range_action = _ACTION
    #: the features of this kind and how many of them are continuous (standardised and range-checked)
    features: tuple[str, ...] = ()
    n_cont = 0
    #: (card conditions, card targets) this kind expects, and the features of raw conditions
    card_columns: tuple = ((), ())
    feature_fn = None

    def __init__(self, path: Path, card: dict, arrays: dict, net: DenseStack, scaler: RangeScaler):
        super().__init__(card, path)
        self.species = list(card.get("species") or SPECIES)
        self.net = net
        self.scaler = scaler
        self.arrays = arrays

    def training_range(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        return list(self.features[:self.n_cont]), self.scaler.lo, self.scaler.hi

    @classmethod
    def load(cls, path: str | os.PathLike):
        """Load a model directory of this kind (or a name under ``models/``), checked against the
        card columns this kind expects."""
        conditions, targets = cls.card_columns
        return cls(*_load(path, cls.kind, conditions, targets, len(cls.features), cls.n_cont))

    def preprocess(self, conditions) -> np.ndarray:
        """The network's input (standardised features, float32) for raw conditions (n, n_conditions)."""
        return self.scaler.transform(self.feature_fn(*self._columns(conditions)), _SOURCES)

    def _columns(self, conditions) -> list[np.ndarray]:
        c = np.asarray(conditions)
        if c.ndim != 2 or c.shape[1] != len(self.conditions):
            raise DataError(f"model {self.name!r}: expected conditions of shape (n, {len(self.conditions)}) in the "
                            f"order {self.conditions}, got {c.shape}")
        return [c[:, j] for j in range(c.shape[1])]

    def _tally_counts(self, tally: list, n: int):
        """The :class:`~mambah.nn.model.RangeCounts` of the per-chunk ``(per feature, rows)`` tallies."""
        per = np.sum([t[0] for t in tally], axis=0) if tally else np.zeros(self.n_cont, dtype=np.int64)
        return self.range_counts(per, sum(t[1] for t in tally), n)

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
    """``(path, card, arrays, network, scaler)`` of a tracking model directory (or name), checked."""
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
    scaler = RangeScaler(arrays["mean"], arrays["scale"], arrays["lo"], arrays["hi"],
                     (EFFICIENCY_FEATURES if kind == "efficiency" else RESOLUTION_FEATURES)[:n_cont], name)
    return p, card, arrays, net, scaler


class EfficiencyModel(_TrackingModel):
    """A loaded efficiency model (card kind ``"efficiency"``): :meth:`probability` of reconstruction
    for each particle. Conditions: px, py, pz [MeV/c], origin x, y, z [mm], PDG id."""

    kind = "efficiency"
    features = tuple(EFFICIENCY_FEATURES)
    n_cont = _N_CONT["efficiency"]
    card_columns = (EFFICIENCY_CONDITIONS, [EFFICIENCY_TARGETS, TRACK_TYPE_TARGETS])
    feature_fn = staticmethod(efficiency_features)

    def __init__(self, path, card, arrays, net, scaler):
        super().__init__(path, card, arrays, net, scaler)
        tq = [t.get("quantity") for t in card.get("targets", [])]
        #: True for a 4-class (none / long / upstream / downstream) model
        self.track_types = tq == ["track_type"]
        want = 4 if self.track_types else 1
        if self.track_types and tuple(card.get("classes") or ()) != TRACK_TYPE_CLASSES:
            raise ModelDirError(f"model {self.name!r}: a track-type efficiency model's card needs classes "
                                f"{list(TRACK_TYPE_CLASSES)}, got {card.get('classes')!r}")
        if net.n_out != want:
            raise ModelDirError(f"model {self.name!r}: a{' 4-class' if self.track_types else 'n'} efficiency network "
                                f"has {want} output{'s' if want > 1 else ''}, this one {net.n_out}")

    def range_quantities(self, conditions) -> np.ndarray:
        """The continuous features (ln p/GeV, eta, z / 100 mm, rho / 10 mm; float32) of conditions (n, 7)."""
        return _efficiency_continuous(*self._columns(conditions)[:6])

    def type_probabilities(self, px, py, pz, x, y, z, pid, *, check_species: bool = True,
                           counts: list | None = None) -> np.ndarray:
        """(n, 4) probabilities (float64) of (not reconstructed, long, upstream, downstream) of a
        4-class model; a binary model gives (1 - p, p, 0, 0). ``counts`` as :meth:`probability`."""
        if check_species:
            self.check_species(pid)
        arrays = [np.asarray(a) for a in (px, py, pz, x, y, z, pid)]
        tally: list | None = [] if counts is not None else None

        def one(px, py, pz, x, y, z, pid, i):
            f = self.scaler.transform(efficiency_features(px, py, pz, x, y, z, pid), _SOURCES, tally)
            out = self.net(f).astype(np.float64)
            if not self.track_types:
                prob = 0.5 * (1.0 + np.tanh(0.5 * out[:, 0]))
                return np.stack([1.0 - prob, prob, np.zeros_like(prob), np.zeros_like(prob)], axis=1)
            out -= out.max(axis=1, keepdims=True)
            np.exp(out, out=out)
            out /= out.sum(axis=1, keepdims=True)
            return out

        out = map_row_chunks(one, len(arrays[0]), *arrays)
        if counts is not None:
            counts.append(self._tally_counts(tally, len(arrays[0])))
        return out

    def probability(self, px, py, pz, x, y, z, pid, *, check_species: bool = True,
                    counts: list | None = None) -> np.ndarray:
        """Probability (float64) to be reconstructed (a 4-class model: as any type); momenta in
        MeV/c, origin in mm.

        ``counts``, when given (an empty list), receives one :class:`~mambah.nn.model.RangeCounts`:
        the inputs outside the training range, counted in the same pass (the stages record it)."""
        if self.track_types:
            return 1.0 - self.type_probabilities(px, py, pz, x, y, z, pid, check_species=check_species,
                                                 counts=counts)[:, 0]
        if check_species:
            self.check_species(pid)
        arrays = [np.asarray(a) for a in (px, py, pz, x, y, z, pid)]
        tally: list | None = [] if counts is not None else None

        def one(px, py, pz, x, y, z, pid, i):
            f = self.scaler.transform(efficiency_features(px, py, pz, x, y, z, pid), _SOURCES, tally)
            logit = self.net(f)[:, 0].astype(np.float64)
            return 0.5 * (1.0 + np.tanh(0.5 * logit))

        out = map_row_chunks(one, len(arrays[0]), *arrays)
        if counts is not None:
            counts.append(self._tally_counts(tally, len(arrays[0])))
        return out


class ResolutionModel(_TrackingModel):
    """A loaded resolution MDN (card kind ``"resolution"``): :meth:`sample` reconstructed momenta
    from true ones. Conditions: px, py, pz [MeV/c], PDG id."""

    kind = "resolution"
    features = tuple(RESOLUTION_FEATURES)
    n_cont = _N_CONT["resolution"]
    card_columns = (RESOLUTION_CONDITIONS, RESOLUTION_TARGETS)
    feature_fn = staticmethod(resolution_features)

    def __init__(self, path, card, arrays, net, scaler):
        super().__init__(path, card, arrays, net, scaler)
        hp = card.get("hyperparameters", {})
        self.k = [int(hp.get("k_p", 3)), int(hp.get("k_slope", 2)), int(hp.get("k_slope", 2))]
        if net.n_out != 3 * sum(self.k):
            raise ModelDirError(f"model {self.name!r}: the network has {net.n_out} outputs, the card's "
                                f"mixture sizes {self.k} need {3 * sum(self.k)}")
        tscale = arrays.get("target_scale")
        self.target_scale = np.ones(3, np.float32) if tscale is None else np.asarray(tscale, np.float32)

    def range_quantities(self, conditions) -> np.ndarray:
        """The continuous features (ln p/GeV, eta; float32) of conditions (n, 4)."""
        lnp, eta = _p_eta32(*self._columns(conditions)[:3])
        return np.stack([lnp, eta], axis=1)

    def mixtures(self, px, py, pz, pid, tally: list | None = None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per target (r [%], dtx [mrad], dty [mrad]): component-major (k, n) weights, means, sigmas."""
        f = self.scaler.transform(resolution_features(px, py, pz, pid), _SOURCES, tally)
        return split_mdn(self.net(f), self.k, self.target_scale)

    def sample(self, px, py, pz, pid, seed=None, *, check_species: bool = True, counts: list | None = None):
        """Reconstructed (px, py, pz) in MeV/c (float64) drawn from the network.

        ``counts``, when given (an empty list), receives one :class:`~mambah.nn.model.RangeCounts`
        of the inputs outside the training range, counted in the same pass."""
        from mambah.random import get_rng

        if check_species:
            self.check_species(pid)
        arrays = [np.asarray(a) for a in (px, py, pz, pid)]
        n = len(arrays[0])
        # one independent stream per fixed-size chunk, drawn from ``seed``: reproducible for any thread count
        seeds = get_rng(seed).integers(0, 2**63, max(1, -(-n // PARALLEL_CHUNK)))

        def one(px, py, pz, pid, i):
            rng = np.random.default_rng(int(seeds[i]))
            y = [sample_mixture(w, m, s, rng) for w, m, s in self.mixtures(px, py, pz, pid, tally)]
            return rebuild_momentum(px, py, pz, y[0] * 1e-2, y[1] * 1e-3, y[2] * 1e-3)

        tally: list | None = [] if counts is not None else None
        out = map_row_chunks(one, n, *arrays)
        if counts is not None:
            counts.append(self._tally_counts(tally, n))
        return out


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


def load_efficiency(path: str | os.PathLike) -> EfficiencyModel:
    """The efficiency model at ``path`` (a directory or a name under ``models/``), through the
    registry (:func:`mambah.nn.registry.load_model`: cached by path and content hash)."""
    from mambah.nn.registry import load_model

    return load_model(path, kind=EfficiencyModel.kind)


def load_resolution(path: str | os.PathLike) -> ResolutionModel:
    """The resolution model at ``path`` (a directory or a name under ``models/``), through the
    registry (:func:`mambah.nn.registry.load_model`: cached by path and content hash)."""
    from mambah.nn.registry import load_model

    return load_model(path, kind=ResolutionModel.kind)
