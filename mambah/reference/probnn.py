"""The reference detector's ProbNN: a fixed global PID classifier, as LHCb's ANNPID.

LHCb's ProbNN variables (ANNPID, "ProbNNx") are neural networks trained once on simulated
tracks of all species: they read the track's kinematics and every sub-detector's PID
information and output, for each hypothesis x, a number in [0, 1] that behaves like the
probability that the track is an x. The reference detector gets the same thing: **one fixed
network, trained once** on the reference detector's full PID response (:mod:`mambah.reference.pid`)
of all species, shipped with the package (``mambah/reference/probnn_weights/``: ``weights.npz``
plain arrays and ``card.json`` with the provenance; no pickle). Its outputs join the reference
response (:func:`mambah.reference.pid.reference_pid`, the calibration samples, ``ReferencePIDStage``).

Definition
----------
* **Outputs**: ``ProbNNe, ProbNNmu, ProbNNpi, ProbNNk, ProbNNp, ProbNNghost`` (store names
  ``probnn_e ... probnn_ghost``), **one-vs-rest sigmoids** as ANNPID (each output is trained with
  a binary cross-entropy against "the track is an x"; the six do not sum to 1), from one network
  with shared hidden layers: ``15 -> 32 tanh -> 32 tanh -> 6 sigmoid``.
* **Inputs** (:data:`FEATURES`): ``log(P / GeV)``, ``ETA``, ``nTracks / 100``; the RICH flag and
  the four RICH DLLs (``asinh(DLL / 5)``, 0 without RICH information); ``isMuon``, the muon
  acceptance flag, ``MuonMuLL`` and ``MuonBkgLL`` (0 unless isMuon); the calorimeter acceptance
  flag, **E/p** (``EcalEoverP``, clipped to [0, 3], 0 outside) and ``EcalPIDe`` (0 outside). E/p
  is a reference-internal quantity that the PID chain does not generate (it generates the
  calorimeter DLL, which is a many-to-one function of E/p and p), so ProbNN is *not* a
  deterministic function of the chain's outputs: the chain learns it as a further generative
  step (:mod:`mambah.pid.chain`, role ``probnn``), as Lamarr's global PID step does.
  ``charge`` is not an input (the response is charge-symmetric).
* **Ghosts**: the reference detector reconstructs no ghost tracks (every track is matched to a
  true particle), so ``ProbNNghost`` is defined by a documented ghost model used only to train
  the classifier (:func:`mambah.reference.probnn_training.ghost_response`): a ghost is a wrong combination of segments of
  different particles, so its RICH ring, its muon hits and its calorimeter cluster belong to
  three independent particles (species drawn from the track mix pi 0.70, K 0.15, p 0.08, e 0.04,
  mu 0.03) whose momenta differ from the measured one by a factor ``exp(0.6 N(0, 1))`` each. On
  the reference detector's (true) tracks ``ProbNNghost`` is therefore the classifier's
  false-ghost output, small for most tracks: a variable with the shape and meaning of LHCb's, but
  no ghost rate is implied.
* **Training sample** (:func:`mambah.reference.probnn_training.training_sample`): equal numbers of e, mu, pi, K, p and ghosts,
  ``P`` log-uniform in 2-200 GeV/c, ``ETA`` uniform in 1.9-5, ``nTracks`` ~ Gamma(4, mean 110)
  (at least 5), charge +-1; the class priors are thus equal and the outputs are not posterior
  probabilities of any particular sample (as ANNPID's, whose priors are those of its training
  simulation).

The weights were made once with ``examples/train_reference_probnn.py`` (command, seeds and the
held-out scores in ``card.json``). Evaluating the network is numpy only (no TensorFlow):
``import mambah`` stays light and the reference response stays fast.

Example:
    >>> import numpy as np
    >>> from mambah.reference.pid import reference_pid
    >>> df = reference_pid(p=np.full(500, 20e3), eta=np.full(500, 3.0), species=np.full(500, 321),
    ...                    charge=np.ones(500), n_tracks=np.full(500, 100), rng=1)
    >>> bool(df["probnn_k"].median() > 0.5)
    True
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd

from mambah.errors import DataError, ModelDirError

__all__ = ["PROBNN_NAMES", "FEATURES", "WEIGHTS_DIR", "ReferenceProbNN", "load_probnn", "probnn_features",
           "GHOST_MIX", "CLASSES", "INPUT_COLUMNS"]

#: output store name -> LHCb name, in the network's output order
PROBNN_NAMES: dict[str, str] = {"probnn_e": "ProbNNe", "probnn_mu": "ProbNNmu", "probnn_pi": "ProbNNpi",
                                "probnn_k": "ProbNNk", "probnn_p": "ProbNNp", "probnn_ghost": "ProbNNghost"}
#: the classes of the outputs: absolute PDG ids, 0 for a ghost
CLASSES: tuple[int, ...] = (11, 13, 211, 321, 2212, 0)
#: the network's input features, in order (computed from a response table by :func:`probnn_features`)
FEATURES: tuple[str, ...] = ("log_p_gev", "eta", "n_tracks_100", "has_rich", "asinh_rich_dll_e_5",
                             "asinh_rich_dll_mu_5", "asinh_rich_dll_k_5", "asinh_rich_dll_p_5", "is_muon",
                             "in_muon_acceptance", "muon_mu_ll", "muon_bkg_ll", "in_calo_acceptance",
                             "calo_e_over_p", "calo_dll_e")
#: the response columns (store names) the features are computed from
INPUT_COLUMNS: tuple[str, ...] = ("rich_dll_e", "rich_dll_mu", "rich_dll_k", "rich_dll_p", "is_muon", "muon_mu_ll",
                                  "muon_bkg_ll", "has_rich", "in_muon_acceptance", "in_calo_acceptance",
                                  "calo_e_over_p", "calo_dll_e")
#: the species mix of the segments a ghost is made of (absolute PDG id -> fraction)
GHOST_MIX: dict[int, float] = {211: 0.70, 321: 0.15, 2212: 0.08, 11: 0.04, 13: 0.03}
#: spread of log(p_segment / p_measured) of a ghost's segments
GHOST_LOG_P_SPREAD = 0.6
#: the shipped weights
WEIGHTS_DIR = Path(__file__).resolve().parent / "probnn_weights"


def probnn_features(p, eta, n_tracks, resp: pd.DataFrame | dict) -> np.ndarray:
    """The ``(n, 15)`` input features (:data:`FEATURES`) of tracks of momentum ``p`` [MeV/c],
    pseudorapidity ``eta`` and occupancy ``n_tracks`` with the PID response ``resp`` (store
    names, :data:`INPUT_COLUMNS`; NaN where the information does not exist).

    Raises:
        DataError: a column of :data:`INPUT_COLUMNS` is missing from ``resp`` (named).
    """
    missing = [c for c in INPUT_COLUMNS if c not in resp]
    if missing:
        raise DataError(f"reference ProbNN: the PID response lacks the column(s) {missing} "
                        f"(needs {list(INPUT_COLUMNS)})")
    p, eta, n_tracks = (np.asarray(a, dtype=float) for a in (p, eta, n_tracks))

    def col(c):
        return np.asarray(resp[c], dtype=float)

    def z(c):
        return np.nan_to_num(col(c), nan=0.0)

    feats = [np.log(np.maximum(p, 1.0) / 1000.0), eta, n_tracks / 100.0, col("has_rich")]
    feats += [np.arcsinh(z(c) / 5.0) for c in ("rich_dll_e", "rich_dll_mu", "rich_dll_k", "rich_dll_p")]
    feats += [col("is_muon"), col("in_muon_acceptance"), z("muon_mu_ll"), z("muon_bkg_ll"), col("in_calo_acceptance"),
              np.clip(z("calo_e_over_p"), 0.0, 3.0), z("calo_dll_e")]
    return np.column_stack(feats)


class ReferenceProbNN:
    """The ProbNN network as plain arrays: ``mean``/``scale`` of the inputs, and ``(W, b)`` of each
    dense layer (tanh hidden layers, sigmoid outputs). Call it with a response table."""

    def __init__(self, arrays: dict[str, np.ndarray], card: dict):
        self.card = card
        self.mean = np.asarray(arrays["mean"], dtype=np.float64)
        self.scale = np.asarray(arrays["scale"], dtype=np.float64)
        n = len([k for k in arrays if k.startswith("W")])
        self.layers = [(np.asarray(arrays[f"W{i}"], np.float64), np.asarray(arrays[f"b{i}"], np.float64))
                       for i in range(n)]
        if self.mean.shape != (len(FEATURES),) or self.layers[0][0].shape[0] != len(FEATURES) \
                or self.layers[-1][0].shape[1] != len(PROBNN_NAMES):
            raise ModelDirError(f"reference ProbNN weights do not match {len(FEATURES)} features -> "
                                f"{len(PROBNN_NAMES)} outputs")

    def logits(self, x: np.ndarray) -> np.ndarray:
        """The outputs' pre-activations for features ``x`` ``(n, 15)``."""
        h = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale
        for i, (w, b) in enumerate(self.layers):
            h = h @ w + b
            if i < len(self.layers) - 1:
                h = np.tanh(h)
        return h

    def probabilities32(self, x: np.ndarray, chunk: int = 100_000) -> np.ndarray:
        """The ``(n, 6)`` outputs for features ``x`` in float32 arithmetic (the PID chain's fast path,
        :func:`mambah.pid.chain.surrogate_probnn`; agrees with :meth:`__call__` to ~1e-6)."""
        if not hasattr(self, "_f32"):
            self._f32 = ((self.mean.astype(np.float32), (1.0 / self.scale).astype(np.float32)),
                         [(w.astype(np.float32), b.astype(np.float32)) for w, b in self.layers])
        (mean, inv), layers = self._f32
        out = np.empty((len(x), len(PROBNN_NAMES)), np.float32)
        for s in range(0, len(x), chunk):
            h = (np.asarray(x[s:s + chunk], dtype=np.float32) - mean) * inv
            for i, (w, b) in enumerate(layers):
                h = h @ w
                h += b
                if i < len(layers) - 1:
                    np.tanh(h, out=h)
            np.negative(h, out=h)
            np.exp(h, out=h)
            h += 1.0
            out[s:s + chunk] = 1.0 / h
        return out

    def __call__(self, p, eta, n_tracks, resp, chunk: int = 200_000) -> pd.DataFrame:
        """``probnn_e ... probnn_ghost`` (float32 in [0, 1]) of the tracks (see :func:`probnn_features`)."""
        x = probnn_features(p, eta, n_tracks, resp)
        out = np.empty((len(x), len(PROBNN_NAMES)), np.float32)
        for s in range(0, len(x), chunk):
            out[s:s + chunk] = 1.0 / (1.0 + np.exp(-self.logits(x[s:s + chunk])))
        return pd.DataFrame({c: out[:, j] for j, c in enumerate(PROBNN_NAMES)})


@functools.lru_cache(maxsize=4)
def load_probnn(path: str | None = None) -> ReferenceProbNN:
    """The shipped reference ProbNN (or the one in directory ``path``), loaded once per process."""
    d = WEIGHTS_DIR if path is None else Path(path)
    try:
        card = json.loads((d / "card.json").read_text())
        with np.load(d / "weights.npz", allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise ModelDirError(f"cannot read the reference ProbNN in {str(d)!r}: {e}") from None
    return ReferenceProbNN(arrays, card)
