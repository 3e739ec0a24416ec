"""Calorimeter networks: the electron brem response and the photon / pi0 response (issue 25).

Both are small multilayer perceptrons saved in Keras' native format with their preprocessing as
plain arrays, evaluated with numpy (:class:`~mambah.nn.dense.DenseStack`), trained by
:mod:`mambah.training.calo` (``mambah train brem``, ``mambah train photon``) on reference-detector
samples (``mambah detector brem-sample``, ``mambah detector photon-sample``).

**Brem** (card ``kind: "brem"``, :class:`BremModel`). Conditions: the electron's true momentum
(px, py, pz) [MeV/c] and origin z [mm]; features ``[ln(p/GeV), eta, z/100 mm]`` standardised and
clipped to the training range. Targets: LHCb's ``HASBREMADDED`` flag and the momentum response
``s = p_after_recovery / p_true`` (the brem loss before the magnet after partial recovery). Three
networks:

* ``flag``: logit of P(HASBREMADDED | p, eta, z), trained with binary cross-entropy (whose
  minimiser is the true conditional probability);
* ``loss``: for electrons *without* brem added, a mixture-density network (MDN; Bishop, NCRG/94/004)
  for ``v = ln(-ln s)``: ``s`` is the fraction kept, ``< 1``; for Bethe-Heitler emission
  ``-ln s ~ Gamma(t / ln 2)`` with shape < 1 (a density that diverges at s = 1), whose logarithm
  is a smooth, unimodal, Gumbel-like density that a few Gaussians represent well, and the inverse
  ``s = exp(-exp(v))`` keeps every draw below 1 (no electron gains momentum without a photon);
* ``recovered``: for electrons *with* brem added, an MDN for ``ln s`` (around 0: the recovered
  photon's ECAL resolution, with a low tail of the photons not found).

Why a classifier plus MDNs rather than a conditional GAN: the response is one-dimensional per
class and the flag is a Bernoulli variable, so the joint law factorises exactly as
P(flag | x) * p(s | flag, x); both factors are fitted by maximum likelihood (stable, no adversary,
a likelihood to validate on) and sampled with a few vectorised numpy operations, and the flag
fraction is calibrated by construction. A GAN would have to learn the discrete flag and the
singular density at s = 1 adversarially.

**Photon** (card ``kind: "photon"``, :class:`PhotonModel`). The ECAL geometry (front-face z,
outer size, beam hole, region sizes) is *applied explicitly* from the card (``geometry``), as
the tracking acceptance is, so the networks never see a photon outside the calorimeter. Three
networks:

* ``efficiency``: logit of P(reconstructed | in the ECAL acceptance) of a single photon;
  features ``[ln(E/GeV), eta, |x|/m, |y|/m, ln(E_T/GeV)]`` (x, y: the impact point on the ECAL
  face; E_T explicitly, as the reconstruction threshold is one in E_T: without it the network
  missed the sharp E_T turn-on by up to 0.012 in an (E, eta) bin);
* ``pi0``: a 3-class classifier (softmax logits) of a pi0 -> gamma gamma: ``0`` resolved (its
  photons then each go through the single-photon efficiency and response), ``1`` merged into one
  cluster and reconstructed, ``2`` merged and lost; features ``[ln(E/GeV), eta, |xc|/m, |yc|/m,
  ln(separation/mm), energy asymmetry]`` (centre of energy and separation of the two impact points);
* ``response``: an MDN for the cluster's energy and position response, targets
  ``100 (E_reco/E - 1)`` [%], ``x_reco - x``, ``y_reco - y`` [mm] (independent given the
  conditions), features as for ``efficiency``. The reconstructed momentum points from the
  photon's origin to the measured position, with |p| = E_reco.

The classes photon / from pi0 resolved / merged / lost of the issue are therefore: a single photon
reconstructed or lost; a pi0 resolved (both, one or none of its photons reconstructed) or merged
(reconstructed or lost).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mambah.errors import DataError, ModelDirError
from mambah.nn.dense import DenseStack
from mambah.nn.model import Model
from mambah.nn.tracking import RangeScaler, sample_mixture, split_mdn
from mambah.physics import p_eta

__all__ = [
    "BREM_CONDITIONS", "BREM_TARGETS", "BREM_FEATURES", "PHOTON_CONDITIONS", "PHOTON_TARGETS",
    "PHOTON_FEATURES", "PI0_FEATURES", "PI0_RESOLVED", "PI0_MERGED", "PI0_MERGED_LOST",
    "brem_features", "brem_targets", "photon_features", "pi0_features", "EcalGeometry",
    "BremModel", "PhotonModel",
]

BREM_CONDITIONS: list[dict[str, str]] = [
    {"name": "px", "unit": "MeV", "quantity": "px"},
    {"name": "py", "unit": "MeV", "quantity": "py"},
    {"name": "pz", "unit": "MeV", "quantity": "pz"},
    {"name": "origin_z", "unit": "mm", "quantity": "origin_z"},
]
BREM_TARGETS: list[dict[str, str]] = [
    {"name": "has_brem_added", "unit": "", "quantity": "has_brem_added"},
    {"name": "brem_scale", "unit": "", "quantity": "p_after_recovery / p_true"},
]
PHOTON_CONDITIONS: list[dict[str, str]] = [
    {"name": "px", "unit": "MeV", "quantity": "px"},
    {"name": "py", "unit": "MeV", "quantity": "py"},
    {"name": "pz", "unit": "MeV", "quantity": "pz"},
    {"name": "origin_x", "unit": "mm", "quantity": "origin_x"},
    {"name": "origin_y", "unit": "mm", "quantity": "origin_y"},
    {"name": "origin_z", "unit": "mm", "quantity": "origin_z"},
]
PHOTON_TARGETS: list[dict[str, str]] = [
    {"name": "reconstructed", "unit": "probability", "quantity": "reconstructed"},
    {"name": "e_reco", "unit": "MeV", "quantity": "e"},
    {"name": "x_reco", "unit": "mm", "quantity": "x at the ECAL face"},
    {"name": "y_reco", "unit": "mm", "quantity": "y at the ECAL face"},
    {"name": "pi0_class", "unit": "", "quantity": "0 resolved, 1 merged, 2 merged and lost"},
]
BREM_FEATURES = ["ln_p_gev", "eta", "origin_z_100mm"]
PHOTON_FEATURES = ["ln_e_gev", "eta", "abs_x_m", "abs_y_m", "ln_et_gev"]
PI0_FEATURES = [*PHOTON_FEATURES, "ln_separation_mm", "asymmetry"]
#: classes of the ``pi0`` network
PI0_RESOLVED, PI0_MERGED, PI0_MERGED_LOST = 0, 1, 2
#: floor of -ln s in the ``loss`` target (s = 1 to double precision below it)
_U_FLOOR = 1e-9
_ACTION = "evaluated at the nearest edge of the range"


def brem_features(px, py, pz, z) -> np.ndarray:
    """Raw brem features (n, 3): ln(p/GeV), eta, origin z / 100 mm."""
    p, eta = p_eta(px, py, pz)
    return np.stack([np.log(np.maximum(p, 1.0) * 1e-3), eta, np.asarray(z, dtype=np.float64) / 100.0],
                    axis=1).astype(np.float32)


def brem_targets(scale, flag) -> np.ndarray:
    """The MDN target of each electron: ``ln(-ln s)`` without brem added, ``ln s`` with (float64)."""
    s = np.asarray(scale, dtype=np.float64)
    f = np.asarray(flag).astype(bool)
    if (s <= 0).any() or not np.isfinite(s).all():
        raise DataError("brem_targets: the response p_after/p_true must be finite and > 0")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(f, np.log(s), np.log(np.maximum(-np.log(np.minimum(s, 1.0)), _U_FLOOR)))


def photon_features(e, eta, xe, ye) -> np.ndarray:
    """Raw photon features (n, 5): ln(E/GeV), eta, |x|/m, |y|/m at the ECAL face, ln(E_T/GeV)
    (E_T = E / cosh(eta): the quantity the ECAL's reconstruction threshold cuts on)."""
    lne = np.log(np.maximum(np.asarray(e, dtype=np.float64), 1.0) * 1e-3)
    eta = np.asarray(eta, dtype=np.float64)
    return np.stack([lne, eta, np.abs(xe) * 1e-3, np.abs(ye) * 1e-3, lne - np.log(np.cosh(np.minimum(eta, 20.0)))],
                    axis=1).astype(np.float32)


def pi0_features(e, eta, xc, yc, sep, asym) -> np.ndarray:
    """Raw pi0 features (n, 7): those of :func:`photon_features` for the pair's energy, direction and
    centre of energy, then ln(separation of the impact points / mm) and |E1 - E2| / (E1 + E2)."""
    return np.concatenate([photon_features(e, eta, xc, yc),
                           np.stack([np.log(np.maximum(sep, 1e-3)), asym], axis=1).astype(np.float32)], axis=1)


class EcalGeometry:
    """The ECAL front face as a photon model's card records it (``geometry``: ``z_ecal``,
    ``x_outer``, ``y_outer``, ``hole`` in mm): where a photon lands and whether it is on the face."""

    KEYS = ("z_ecal", "x_outer", "y_outer", "hole")

    def __init__(self, geometry: dict, where: str = "the photon model"):
        missing = [k for k in self.KEYS if k not in geometry]
        if missing:
            raise ModelDirError(f"{where}: card 'geometry' lacks {', '.join(missing)}")
        self.z_ecal, self.x_outer, self.y_outer, self.hole = (float(geometry[k]) for k in self.KEYS)

    def impact(self, px, py, pz, x, y, z) -> tuple[np.ndarray, np.ndarray]:
        """Impact point (mm) on the ECAL face of a straight line; NaN for pz <= 0 or beyond the face."""
        dz = self.z_ecal - np.asarray(z, dtype=np.float64)
        pz = np.asarray(pz, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.where((pz > 0) & (dz > 0), dz / pz, np.nan)
        return np.asarray(x, dtype=np.float64) + s * px, np.asarray(y, dtype=np.float64) + s * py

    def accept(self, xe, ye) -> np.ndarray:
        ax, ay = np.abs(xe), np.abs(ye)
        with np.errstate(invalid="ignore"):
            return (ax < self.x_outer) & (ay < self.y_outer) & ~((ax < self.hole) & (ay < self.hole))

    def pi0_features(self, g1, g2, x, y, z) -> np.ndarray:
        """The raw :func:`pi0_features` of pi0 -> gamma gamma from the photons' momenta and origin."""
        p1 = [np.asarray(a, dtype=np.float64) for a in g1]
        p2 = [np.asarray(a, dtype=np.float64) for a in g2]
        e1, e2 = (np.sqrt(sum(c * c for c in p)) for p in (p1, p2))
        x1, y1 = self.impact(*p1, x, y, z)
        x2, y2 = self.impact(*p2, x, y, z)
        e = e1 + e2
        xc, yc = (e1 * x1 + e2 * x2) / e, (e1 * y1 + e2 * y2) / e
        _, eta = p_eta(p1[0] + p2[0], p1[1] + p2[1], p1[2] + p2[2])
        sep = np.hypot(x1 - x2, y1 - y2)
        return pi0_features(e, eta, np.nan_to_num(xc), np.nan_to_num(yc), np.nan_to_num(sep, nan=1e3),
                            np.abs(e1 - e2) / e)


def _sigmoid(t):
    return 0.5 * (1.0 + np.tanh(0.5 * t))


def _net(path: Path, name: str, label: str, n_in: int, n_out: int | None = None) -> DenseStack:
    from mambah.modeldir import load_network

    net = DenseStack.from_keras(load_network(path, label), where=f"model {name!r} network {label!r}")
    if net.n_in != n_in or (n_out is not None and net.n_out != n_out):
        raise ModelDirError(f"model {name!r}: network {label!r} takes {net.n_in} inputs and gives {net.n_out} "
                            f"outputs; the preprocessing needs {n_in} -> {n_out if n_out is not None else 'any'}")
    return net


def _scaler(arrays: dict, prefix: str, n: int, names, name: str) -> RangeScaler:
    for k in ("mean", "scale", "lo", "hi"):
        a = arrays.get(prefix + k)
        if a is None or a.shape != (n,):
            raise ModelDirError(f"model {name!r}: arrays.npz lacks a {prefix + k!r} array of shape ({n},)")
    return RangeScaler(arrays[prefix + "mean"], arrays[prefix + "scale"], arrays[prefix + "lo"], arrays[prefix + "hi"],
                       names, name)


def _load_dir(path, kind: str) -> tuple[Path, dict, dict]:
    from mambah.modeldir import load_arrays, resolve_model, verify_model_dir

    p = resolve_model(path)
    card = verify_model_dir(p)
    if card.get("kind") != kind:
        raise ModelDirError(f"model {card.get('name', p.name)!r} ({str(p)!r}) is a {card.get('kind')!r} model, "
                            f"not {kind!r}")
    return p, card, load_arrays(p)


def _mdn_draw(out: np.ndarray, k, target_scale, rng) -> list[np.ndarray]:
    return [sample_mixture(w, m, s, rng) for w, m, s in split_mdn(out, k, target_scale)]


class _CaloModel(Model):
    range_action = _ACTION

    def tally_counts(self, tally: list, n: int):
        """The :class:`~mambah.nn.model.RangeCounts` of ``n`` rows from the per-call ``(outside per
        feature, rows outside)`` tallies the evaluation methods append to."""
        per = np.sum([t[0] for t in tally], axis=0) if tally else np.zeros(len(self.training_range()[0]), np.int64)
        return self.range_counts(per, sum(t[1] for t in tally), n)


class BremModel(_CaloModel):
    """A loaded brem model (card kind ``"brem"``): :meth:`sample` the HASBREMADDED flag and the
    momentum response of electrons. Conditions: px, py, pz [MeV/c], origin z [mm]."""

    kind = "brem"

    def __init__(self, path, card, arrays, nets, scaler):
        super().__init__(card, path)
        self.flag_net, self.loss_net, self.recovered_net = nets
        self.scaler = scaler
        hp = card.get("hyperparameters", {})
        self.k_loss, self.k_recovered = int(hp.get("k_loss", 6)), int(hp.get("k_recovered", 6))
        self.target_scale = {k: np.asarray(arrays[f"{k}_target_scale"], np.float32) for k in ("loss", "recovered")}
        for label, net, k in (("loss", self.loss_net, self.k_loss), ("recovered", self.recovered_net, self.k_recovered)):
            if net.n_out != 3 * k:
                raise ModelDirError(f"model {self.name!r}: network {label!r} has {net.n_out} outputs, k={k} needs {3 * k}")

    @classmethod
    def load(cls, path: str | os.PathLike) -> BremModel:
        p, card, arrays = _load_dir(path, cls.kind)
        name = card.get("name", p.name)
        n = len(BREM_FEATURES)
        nets = (_net(p, name, "flag", n, 1), _net(p, name, "loss", n), _net(p, name, "recovered", n))
        return cls(p, card, arrays, nets, _scaler(arrays, "", n, BREM_FEATURES, name))

    def training_range(self):
        return list(BREM_FEATURES), self.scaler.lo, self.scaler.hi

    def range_quantities(self, conditions) -> np.ndarray:
        c = np.asarray(conditions, dtype=float)
        return brem_features(c[:, 0], c[:, 1], c[:, 2], c[:, 3])

    def preprocess(self, conditions) -> np.ndarray:
        return self.scaler.transform(self.range_quantities(conditions))

    def probability(self, px, py, pz, z, tally: list | None = None) -> np.ndarray:
        """P(HASBREMADDED) per electron (float64)."""
        x = self.scaler.transform(brem_features(px, py, pz, z), tally=tally)
        return _sigmoid(self.flag_net(x)[:, 0].astype(np.float64))

    def sample(self, px, py, pz, z, seed=None, *, counts: list | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(has_brem_added (bool), s = p_after/p_true (float64))`` drawn per electron.

        ``counts``, when given (a list), receives the :class:`~mambah.nn.model.RangeCounts` of the
        inputs outside the training range (evaluated at the nearest edge)."""
        from mambah.random import get_rng

        rng = get_rng(seed)
        tally: list | None = [] if counts is not None else None
        x = self.scaler.transform(brem_features(px, py, pz, z), tally=tally)
        n = len(x)
        flag = rng.random(n) < _sigmoid(self.flag_net(x)[:, 0].astype(np.float64))
        s = np.empty(n)
        if (~flag).any():
            v = _mdn_draw(self.loss_net(x[~flag]), [self.k_loss], self.target_scale["loss"], rng)[0]
            s[~flag] = np.exp(-np.exp(np.minimum(v, 5.0)))
        if flag.any():
            y = _mdn_draw(self.recovered_net(x[flag]), [self.k_recovered], self.target_scale["recovered"], rng)[0]
            s[flag] = np.exp(np.clip(y, -20.0, 1.0))
        if counts is not None:
            counts.append(self.tally_counts(tally, n))
        return flag, s


class PhotonModel(_CaloModel):
    """A loaded photon model (card kind ``"photon"``): single-photon efficiency and response, and
    the pi0 merged/resolved classes. Conditions: px, py, pz [MeV/c], origin x, y, z [mm]."""

    kind = "photon"

    def __init__(self, path, card, arrays, nets, scalers):
        super().__init__(card, path)
        self.eff_net, self.pi0_net, self.response_net = nets
        self.scaler, self.pi0_scaler = scalers
        self.geometry = EcalGeometry(card.get("geometry", {}), where=f"model {self.name!r}")
        self.k = [int(card.get("hyperparameters", {}).get("k_response", 2))] * 3
        self.target_scale = np.asarray(arrays["response_target_scale"], np.float32)
        if self.response_net.n_out != 3 * sum(self.k) or self.pi0_net.n_out != 3:
            raise ModelDirError(f"model {self.name!r}: the response network needs {3 * sum(self.k)} outputs and the "
                                "pi0 network 3")

    @classmethod
    def load(cls, path: str | os.PathLike) -> PhotonModel:
        p, card, arrays = _load_dir(path, cls.kind)
        name = card.get("name", p.name)
        n, n0 = len(PHOTON_FEATURES), len(PI0_FEATURES)
        nets = (_net(p, name, "efficiency", n, 1), _net(p, name, "pi0", n0, 3), _net(p, name, "response", n))
        scalers = (_scaler(arrays, "", n, PHOTON_FEATURES, name), _scaler(arrays, "pi0_", n0, PI0_FEATURES, name))
        return cls(p, card, arrays, nets, scalers)

    def training_range(self):
        return list(PHOTON_FEATURES), self.scaler.lo, self.scaler.hi

    def _raw(self, px, py, pz, x, y, z):
        px, py, pz = (np.asarray(a, dtype=np.float64) for a in (px, py, pz))
        e, eta = p_eta(px, py, pz)
        xe, ye = self.geometry.impact(px, py, pz, x, y, z)
        return e, eta, xe, ye

    def range_quantities(self, conditions) -> np.ndarray:
        c = np.asarray(conditions, dtype=float)
        e, eta, xe, ye = self._raw(*(c[:, j] for j in range(6)))
        return photon_features(e, eta, np.nan_to_num(xe), np.nan_to_num(ye))

    def preprocess(self, conditions) -> np.ndarray:
        return self.scaler.transform(self.range_quantities(conditions))

    def efficiency(self, px, py, pz, x, y, z, tally: list | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(in ECAL acceptance, P(reconstructed))`` per photon (0 outside the acceptance)."""
        e, eta, xe, ye = self._raw(px, py, pz, x, y, z)
        acc = self.geometry.accept(xe, ye)
        prob = np.zeros(len(e))
        if acc.any():
            f = self.scaler.transform(photon_features(e[acc], eta[acc], xe[acc], ye[acc]), tally=tally)
            prob[acc] = _sigmoid(self.eff_net(f)[:, 0].astype(np.float64))
        return acc, prob

    def pi0_probabilities(self, g1, g2, x, y, z, tally: list | None = None) -> np.ndarray:
        """Class probabilities (n, 3) of pi0 -> gamma gamma (:data:`PI0_RESOLVED`, :data:`PI0_MERGED`,
        :data:`PI0_MERGED_LOST`) from the photons' momenta ``g1, g2 = (px, py, pz)`` and origin."""
        feats = self.geometry.pi0_features(g1, g2, x, y, z)
        o = self.pi0_net(self.pi0_scaler.transform(feats, tally=tally)).astype(np.float64)
        o -= o.max(axis=1, keepdims=True)
        w = np.exp(o)
        return w / w.sum(axis=1, keepdims=True)

    def response(self, px, py, pz, x, y, z, rng) -> tuple[np.ndarray, ...]:
        """``(e_reco, x_reco, y_reco, px, py, pz)`` of clusters drawn for photons (momenta in MeV/c,
        origins in mm): the energy and impact point smeared by the network, the momentum pointing
        from the origin to the measured point with |p| = E_reco."""
        e, eta, xe, ye = self._raw(px, py, pz, x, y, z)
        f = self.scaler.transform(photon_features(e, eta, np.nan_to_num(xe), np.nan_to_num(ye)))
        r, dx, dy = _mdn_draw(self.response_net(f), self.k, self.target_scale, rng)
        e_reco = np.maximum(e * (1.0 + 1e-2 * r), 0.0)
        xr, yr = xe + dx, ye + dy
        dxx, dyy = xr - np.asarray(x, dtype=np.float64), yr - np.asarray(y, dtype=np.float64)
        dzz = self.geometry.z_ecal - np.asarray(z, dtype=np.float64)
        norm = np.sqrt(dxx * dxx + dyy * dyy + dzz * dzz)
        return e_reco, xr, yr, e_reco * dxx / norm, e_reco * dyy / norm, e_reco * dzz / norm
