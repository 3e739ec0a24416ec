"""The track-state network: covariance, state residuals, track chi2 and ghost probability.

A loaded ``kind: "trackstate"`` model (:class:`TrackStateNet`) gives every reconstructed track
what :meth:`mambah.reference.trackstates.TrackStateModel.measure` gives from the reference
detector, so the :class:`~mambah.reconstruction.vertexstage.Vertexing` stage takes either: the
state closest to the beam ``(x, y, tx, ty, q/p)``, its 5x5 covariance, the track chi2, ndof and
ghost probability. It is trained by :mod:`mambah.training.trackstate` (``mambah train trackstate``)
on reference-detector tracks (``mambah detector trackstate-sample``).

Conditions: the true momentum (px, py, pz) [MeV/c], the origin (x, y, z) [mm], the PDG id and the
track type (3 long, 4 upstream, 5 downstream, LHCb's ``TRACK_Type``). Features::

    [ln(p / GeV), eta, asinh(z_s / 100 mm), charge, one-hot(species e, mu, pi, K, p), one-hot(type long, up, down)]

with ``z_s`` the plane where the true track passes closest to the beam (the state's plane; the
lever arm of a downstream track's extrapolation from the UT; asinh, because a track born far from
the beam at a small angle has its closest approach tens of metres away, and a linear feature would
squash the usual +-20 cm into nothing after standardisation); the first three are standardised and
range-checked as the other tracking networks' (:class:`~mambah.nn.tracking.RangeScaler`: inputs
outside the training range are evaluated at its edge, counted and said, never silently).

**Covariance** (network ``cov``, 15 outputs): the 5 log standard deviations and the 10 canonical
partial correlations of the state (Lewandowski, Kurowicka, Joe, "Generating random correlation
matrices based on vines and extended onion method", J. Multivariate Anal. 100 (2009) 1989), each
partial correlation as ``atanh``. Any 15 finite numbers give a positive-definite covariance (the
Cholesky factor is built from them directly, :func:`cholesky_from_params`), which is why this
parameterisation and not Lamarr's log-variances + plain correlations (whose 10 free correlations
need not form a valid matrix). The reference detector's covariance is a deterministic function of
the conditions, so the network is a regression (mean squared error on the standardised
parameters); atanh keeps the precision near |rho| = 1, where the downstream tracks' position-slope
correlation sits (-0.997: an error of 0.01 in atanh(rho) changes 1 - rho^2 by 1 %).

**State residuals**: ``state = true state + L z`` with ``L`` the model covariance's Cholesky
factor and ``z ~ N(0, 1)^5``: the residuals are drawn Gaussian from the learned covariance (the
reference detector's are Gaussian by construction; the training closure checks the pulls of
the reference's residuals against the learned covariance, which tests both at once).

**Track quality** (network ``quality``, a mixture-density network as the resolution model's,
:func:`mambah.nn.tracking.split_mdn`): ``ln(chi2 / ndof)`` and ``logit(ghost probability)``, each a
1D Gaussian mixture given the features; ``ndof`` is the most frequent ndof of the training tracks
of the same type (array ``ndof_by_type``; the reference detector's ndof is a function of the type).

A covariance whose Cholesky factor is not finite and positive (non-finite network outputs, or a
partial correlation rounded to +-1) is an error naming the model and the rows, never a silent fix.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mambah.errors import DataError, ModelDirError
from mambah.nn.dense import DenseStack, map_row_chunks
from mambah.nn.model import Model
from mambah.nn.tracking import RangeScaler, sample_mixture, split_mdn
from mambah.physics import SPECIES, pdg_charge, species_index, state_at_beam

__all__ = ["TRACKSTATE_CONDITIONS", "TRACKSTATE_TARGETS", "TRACKSTATE_FEATURES", "TRACK_TYPE_ORDER",
           "PAIRS", "trackstate_features", "params_from_covariance", "cholesky_from_params", "TrackStateNet",
           "load_trackstate"]

TRACKSTATE_CONDITIONS: list[dict[str, str]] = [
    {"name": "px", "unit": "MeV", "quantity": "px"},
    {"name": "py", "unit": "MeV", "quantity": "py"},
    {"name": "pz", "unit": "MeV", "quantity": "pz"},
    {"name": "origin_x", "unit": "mm", "quantity": "origin_x"},
    {"name": "origin_y", "unit": "mm", "quantity": "origin_y"},
    {"name": "origin_z", "unit": "mm", "quantity": "origin_z"},
    {"name": "pid", "unit": "", "quantity": "pid"},
    {"name": "track_type", "unit": "class", "quantity": "track_type"},
]
#: the 15 independent covariance elements (``cov_ij``, i <= j, state order x, y, tx, ty, q/p), chi2, ndof, ghost
TRACKSTATE_TARGETS: list[dict[str, str]] = [
    *({"name": f"cov_{i}{j}", "unit": "state units", "quantity": f"cov_{i}{j}"} for i in range(5) for j in range(i, 5)),
    {"name": "track_chi2", "unit": "", "quantity": "track_chi2"},
    {"name": "track_ndof", "unit": "", "quantity": "track_ndof"},
    {"name": "ghost_prob", "unit": "probability", "quantity": "ghost_prob"},
]
#: the track types in the one-hot order (LHCb codes: long, upstream, downstream)
TRACK_TYPE_ORDER = (3, 4, 5)
TRACKSTATE_FEATURES = ["ln_p_gev", "eta", "asinh_z_state_100mm", "charge", *[f"is_{s}" for s in SPECIES],
                       "is_long", "is_upstream", "is_downstream"]
N_CONT = 3
#: (i, j), i > j, of the 10 partial correlations, in the network's output order (after the 5 log sigmas)
PAIRS = tuple((i, j) for i in range(1, 5) for j in range(i))
_SOURCES = {"ln_p_gev": "px, py, pz", "eta": "px, py, pz",
            "asinh_z_state_100mm": "the origin and momentum (closest approach to the beam)"}
#: logit clip of the ghost probability's target
GHOST_CLIP = 1e-6


def trackstate_features(px, py, pz, x, y, z, pid, track_type) -> np.ndarray:
    """The features (float32, (n, 13)) of tracks: see the module docstring."""
    px, py, pz = (np.asarray(a, dtype=np.float64) for a in (px, py, pz))
    pid = np.asarray(pid)
    _, zs = state_at_beam(px, py, pz, x, y, z, np.ones(len(px)))
    p = np.sqrt(px * px + py * py + pz * pz)
    pt = np.hypot(px, py)
    out = np.zeros((len(px), len(TRACKSTATE_FEATURES)), dtype=np.float32)
    out[:, 0] = np.log(p * 1e-3)
    out[:, 1] = np.arcsinh(pz / np.maximum(pt, 1e-3))
    out[:, 2] = np.arcsinh(zs * 1e-2)
    out[:, 3] = np.sign(pdg_charge(pid))
    sp = species_index(pid)
    ok = sp >= 0
    out[np.nonzero(ok)[0], 4 + sp[ok]] = 1.0
    tt = np.asarray(track_type)
    for k, code in enumerate(TRACK_TYPE_ORDER):
        out[:, 4 + len(SPECIES) + k] = tt == code
    return out


def params_from_covariance(cov: np.ndarray) -> np.ndarray:
    """The 15 parameters (n, 15) of positive-definite covariances (n, 5, 5): ln sigma_i, then
    atanh of the canonical partial correlations in :data:`PAIRS` order (float64). Raises
    :class:`~mambah.errors.DataError` for a covariance that is not positive definite."""
    cov = np.asarray(cov, dtype=np.float64)
    d = np.einsum("nii->ni", cov)
    if not (np.isfinite(cov).all() and (d > 0).all()):
        raise DataError(f"{int((~np.isfinite(cov).all(axis=(1, 2)) | (d <= 0).any(axis=1)).sum())} covariances "
                        "have non-finite elements or non-positive variances")
    sig = np.sqrt(d)
    corr = cov / (sig[:, :, None] * sig[:, None, :])
    try:
        L = np.linalg.cholesky(corr)
    except np.linalg.LinAlgError:
        raise DataError("a covariance of the training data is not positive definite") from None
    out = np.empty((len(cov), 15))
    out[:, :5] = np.log(sig)
    for k, (i, j) in enumerate(PAIRS):
        rem = 1.0 - (L[:, i, :j] ** 2).sum(axis=1)
        w = L[:, i, j] / np.sqrt(np.maximum(rem, 1e-300))
        out[:, 5 + k] = np.arctanh(np.clip(w, -1 + 1e-15, 1 - 1e-15))
    return out


def cholesky_from_params(params: np.ndarray, model: str = "the model") -> np.ndarray:
    """The lower Cholesky factors (n, 5, 5) of the covariances of parameters (n, 15) (float64).

    Raises:
        DataError: rows whose factor is not finite with a positive diagonal (non-finite
            parameters, or a partial correlation of +-1 in float64), naming ``model``.
    """
    params = np.asarray(params, dtype=np.float64)
    n = len(params)
    sig = np.exp(params[:, :5])
    w = np.tanh(params[:, 5:])
    L = np.zeros((n, 5, 5))
    rem = np.ones((n, 5))
    for k, (i, j) in enumerate(PAIRS):
        L[:, i, j] = w[:, k] * np.sqrt(rem[:, i])
        rem[:, i] -= L[:, i, j] ** 2
    for i in range(5):
        L[:, i, i] = np.sqrt(np.maximum(rem[:, i], 0.0))
    bad = ~(np.isfinite(params).all(axis=1) & (rem > 0).all(axis=1) & np.isfinite(sig).all(axis=1) & (sig > 0).all(axis=1))
    if bad.any():
        rows = np.nonzero(bad)[0]
        raise DataError(f"model {model!r} produced {len(rows)} covariance(s) that are not positive definite "
                        f"(rows {rows[:5].tolist()}{'...' if len(rows) > 5 else ''}: non-finite outputs or a partial "
                        "correlation of +-1); the model directory is damaged or the inputs are far outside its range")
    return L * sig[:, :, None]


class TrackStateNet(Model):
    """A loaded track-state model (card kind ``"trackstate"``; see the module docstring).

    :meth:`measure` has the signature and outputs of the reference detector's
    :meth:`~mambah.reference.trackstates.TrackStateModel.measure`.
    """

    kind = "trackstate"
    range_action = "evaluated at the nearest edge of the range"

    def __init__(self, path: Path, card: dict, arrays: dict, cov_net: DenseStack, quality_net: DenseStack,
                 scaler: RangeScaler):
        super().__init__(card, path)
        self.species = list(card.get("species") or SPECIES)
        self.cov_net, self.quality_net, self.scaler, self.arrays = cov_net, quality_net, scaler, arrays
        hp = card.get("hyperparameters", {})
        self.k = [int(hp.get("k_chi2", 3)), int(hp.get("k_ghost", 3))]
        for key, shape in (("cov_mean", (15,)), ("cov_scale", (15,)), ("quality_scale", (2,)), ("ndof_by_type", (3,))):
            if key not in arrays or arrays[key].shape != shape:
                raise ModelDirError(f"model {self.name!r}: arrays.npz lacks a {key!r} array of shape {shape}")
        if cov_net.n_out != 15 or quality_net.n_out != 3 * sum(self.k):
            raise ModelDirError(f"model {self.name!r}: the networks have {cov_net.n_out} and {quality_net.n_out} "
                                f"outputs; a track-state model needs 15 and {3 * sum(self.k)} (mixtures {self.k})")
        self.cov_mean = arrays["cov_mean"].astype(np.float64)
        self.cov_scale = arrays["cov_scale"].astype(np.float64)
        self.quality_scale = arrays["quality_scale"].astype(np.float32)
        self.ndof_by_type = arrays["ndof_by_type"].astype(np.int16)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrackStateNet:
        from mambah.modeldir import load_arrays, load_network, resolve_model, verify_model_dir
        from mambah.nn.tracking import _check_card

        p = resolve_model(path)
        card = verify_model_dir(p)
        _check_card(card, p, cls.kind, TRACKSTATE_CONDITIONS, TRACKSTATE_TARGETS)
        arrays = load_arrays(p)
        name = card.get("name", p.name)
        for k in ("mean", "scale", "lo", "hi"):
            if k not in arrays or arrays[k].shape != (N_CONT,):
                raise ModelDirError(f"model {name!r}: arrays.npz lacks a {k!r} array of shape ({N_CONT},)")
        nets = [DenseStack.from_keras(load_network(p, k), where=f"model {name!r}") for k in ("cov", "quality")]
        for net in nets:
            if net.n_in != len(TRACKSTATE_FEATURES):
                raise ModelDirError(f"model {name!r}: a network takes {net.n_in} inputs, the preprocessing makes "
                                    f"{len(TRACKSTATE_FEATURES)}")
        scaler = RangeScaler(arrays["mean"], arrays["scale"], arrays["lo"], arrays["hi"], TRACKSTATE_FEATURES[:N_CONT],
                             name)
        return cls(p, card, arrays, *nets, scaler)

    def training_range(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        return TRACKSTATE_FEATURES[:N_CONT], self.scaler.lo, self.scaler.hi

    def range_quantities(self, conditions) -> np.ndarray:
        c = np.asarray(conditions)
        return trackstate_features(*(c[:, j] for j in range(8)))[:, :N_CONT]

    def preprocess(self, conditions) -> np.ndarray:
        c = np.asarray(conditions)
        return self.scaler.transform(trackstate_features(*(c[:, j] for j in range(8))), _SOURCES)

    def _check(self, pid, track_type) -> None:
        sp = species_index(pid)
        trained = [SPECIES.index(s) for s in self.species if s in SPECIES]
        bad = ~np.isin(sp, trained)
        if bad.any():
            raise DataError(f"model {self.name!r} was trained for species {', '.join(self.species)}; "
                            f"{int(bad.sum())} tracks have other PDG ids ({sorted(set(np.asarray(pid)[bad][:100].tolist()))[:5]})")
        tt = np.asarray(track_type)
        if not np.isin(tt, TRACK_TYPE_ORDER).all():
            raise DataError(f"model {self.name!r}: track types must be {TRACK_TYPE_ORDER} (long, upstream, downstream), "
                            f"got {sorted(set(np.unique(tt).tolist()) - set(TRACK_TYPE_ORDER))}")

    def outputs(self, px, py, pz, x, y, z, pid, track_type, counts: list | None = None):
        """``(params (n, 15) float64, quality network outputs (n, 3 sum(k)) float32)``; ``counts`` (a
        list) receives one :class:`~mambah.nn.model.RangeCounts` of the inputs outside the range."""
        arrays = [np.asarray(a) for a in (px, py, pz, x, y, z, pid, track_type)]
        self._check(arrays[6], arrays[7])
        tally: list = []

        def one(px, py, pz, x, y, z, pid, tt, i):
            f = self.scaler.transform(trackstate_features(px, py, pz, x, y, z, pid, tt), _SOURCES, tally)
            return self.cov_net(f), self.quality_net(f)

        raw, q = map_row_chunks(one, len(arrays[0]), *arrays)
        if counts is not None:
            per = np.sum([t[0] for t in tally], axis=0) if tally else np.zeros(N_CONT, dtype=np.int64)
            counts.append(self.range_counts(per, sum(t[1] for t in tally), len(arrays[0])))
        return raw.astype(np.float64) * self.cov_scale + self.cov_mean, q

    def covariance(self, px, py, pz, x, y, z, pid, track_type) -> np.ndarray:
        """The (n, 5, 5) covariances (float64) of the states closest to the beam."""
        params, _ = self.outputs(px, py, pz, x, y, z, pid, track_type)
        L = cholesky_from_params(params, self.name)
        return L @ np.swapaxes(L, 1, 2)

    def measure(self, px, py, pz, x, y, z, pid, seed=None, track_type=None, counts: list | None = None):
        """Measured states (see :meth:`mambah.reference.trackstates.TrackStateModel.measure`: the same
        keys ``state, true_state, z, cov, type, chi2, ndof, ghost_prob``); ``track_type`` is required."""
        from mambah.random import get_rng

        if track_type is None:
            raise DataError(f"model {self.name!r}: measure() needs the tracks' types (the Efficiency stage draws them)")
        rng = get_rng(seed)
        px, py, pz = (np.asarray(a, dtype=np.float64) for a in (px, py, pz))
        if (pz <= 0).any():
            raise DataError(f"track states need forward tracks (pz > 0); {int((pz <= 0).sum())} have pz <= 0")
        pid = np.asarray(pid)
        tt = np.asarray(track_type, dtype=np.int8)
        params, q = self.outputs(px, py, pz, x, y, z, pid, tt, counts)
        L = cholesky_from_params(params, self.name)
        truth, zs = state_at_beam(px, py, pz, x, y, z, pdg_charge(pid))
        n = len(px)
        state = truth + np.einsum("nij,nj->ni", L, rng.standard_normal((n, 5)))
        (wc, mc, sc), (wg, mg, sg) = split_mdn(q, self.k, self.quality_scale)
        ln_chi2ndof = sample_mixture(wc, mc, sc, rng)
        logit_ghost = sample_mixture(wg, mg, sg, rng)
        ndof = self.ndof_by_type[np.searchsorted(TRACK_TYPE_ORDER, tt)]
        return {"state": state, "true_state": truth, "z": zs, "cov": L @ np.swapaxes(L, 1, 2), "type": tt,
                "chi2": np.exp(ln_chi2ndof) * ndof, "ndof": ndof, "ghost_prob": 1.0 / (1.0 + np.exp(-logit_ghost))}


def load_trackstate(path: str | os.PathLike) -> TrackStateNet:
    """The track-state model at ``path`` (a directory or a name under ``models/``), through the registry."""
    from mambah.nn.registry import load_model

    return load_model(path, kind=TrackStateNet.kind)
