"""Production spectra of the ParticleGun: transverse momentum and pseudorapidity samplers.

Every sampler is a small frozen dataclass with ``sample(n, rng) -> float64 array``, ``cdf(x)``
(used by the tests) and ``config() -> dict`` (recorded in the batch provenance). Users may pass
instead a number (fixed value), a ``(edges, counts)`` histogram, a scipy frozen distribution
(anything with ``rvs(size=, random_state=)``) or a function ``f(n, rng) -> array``: see
:func:`as_sampler`.

Default kinematics (:func:`default_pt`, :func:`default_eta`) are *LHCb-like approximations*, not
a tuned event generator:

- pT: ``dN/dpT ∝ pT (1 + (pT/p0)^2)^(-n)``, the functional form LHCb uses to describe measured
  pT spectra of heavy-flavour hadrons and quarkonia (e.g. LHCb, Eur. Phys. J. C 71 (2011) 1645,
  Eq. 3). With n = 3.5 the mean is 2/3 p0. b hadrons: p0 = 8.0 GeV (mean pT 5.3 GeV, close to the
  B+ spectrum measured at 13 TeV, JHEP 12 (2017) 026); c hadrons: p0 = 4.0 GeV (mean 2.7 GeV).
- eta: a Gaussian centred at 0 (heavy-quark production is central and broad in rapidity, r.m.s.
  about 3 units at 13 TeV in Pythia 8), truncated to 1.5 < eta < 6.0 so that every generated hadron
  is forward. Its fall across 2 < eta < 5 (a factor 2.5 for b) mimics the measured dsigma/deta of
  B mesons in the LHCb acceptance (JHEP 12 (2017) 026); the bulk of decays whose daughters are all
  in 2 < eta < 5 comes from 2 < eta < 5.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mambah.errors import ConfigurationError

__all__ = [
    "Sampler",
    "PowerLawPt",
    "TruncatedGaussian",
    "Uniform",
    "Fixed",
    "Histogram",
    "FunctionSampler",
    "as_sampler",
    "default_pt",
    "default_eta",
]


@runtime_checkable
class Sampler(Protocol):
    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray: ...

    def config(self) -> dict[str, Any]: ...


@dataclasses.dataclass(frozen=True)
class PowerLawPt:
    """``dN/dpT ∝ pT (1 + (pT/p0)^2)^(-n)`` for pT in MeV, sampled by inverting its CDF
    ``F(pT) = 1 - (1 + (pT/p0)^2)^(1-n)`` (n > 1), optionally truncated to ``[low, high]``."""

    p0: float
    n: float = 3.5
    low: float = 0.0
    high: float = math.inf

    def __post_init__(self):
        if not (self.p0 > 0 and self.n > 1 and 0 <= self.low < self.high):
            raise ConfigurationError(f"PowerLawPt needs p0 > 0, n > 1 and 0 <= low < high, got {self!r}")

    def _F(self, x):
        x = np.asarray(x, dtype=np.float64)
        return 1.0 - (1.0 + (x / self.p0) ** 2) ** (1.0 - self.n)

    def cdf(self, x) -> np.ndarray:
        lo, hi = self._F(self.low), self._F(self.high)
        return np.clip((self._F(np.clip(x, self.low, self.high)) - lo) / (hi - lo), 0.0, 1.0)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        lo, hi = self._F(self.low), self._F(self.high)
        u = lo + (hi - lo) * rng.random(n)
        return self.p0 * np.sqrt((1.0 - u) ** (1.0 / (1.0 - self.n)) - 1.0)

    def mean(self) -> float:
        """Mean pT (MeV) without truncation: p0 sqrt(pi)/2 Gamma(n-3/2)/Gamma(n-1) (n > 3/2)."""
        return self.p0 * math.sqrt(math.pi) / 2 * math.gamma(self.n - 1.5) / math.gamma(self.n - 1.0)

    def config(self) -> dict[str, Any]:
        return {"kind": "power_law_pt", "p0": self.p0, "n": self.n, "low": self.low,
                "high": self.high if math.isfinite(self.high) else None}


def _ndtr(x):
    from scipy.special import ndtr

    return ndtr(x)


@dataclasses.dataclass(frozen=True)
class TruncatedGaussian:
    """A Gaussian (mean ``mu``, width ``sigma``) truncated to ``[low, high]``, by inverse CDF."""

    mu: float
    sigma: float
    low: float
    high: float

    def __post_init__(self):
        if not (self.sigma > 0 and self.low < self.high):
            raise ConfigurationError(f"TruncatedGaussian needs sigma > 0 and low < high, got {self!r}")

    def cdf(self, x) -> np.ndarray:
        a, b = _ndtr((self.low - self.mu) / self.sigma), _ndtr((self.high - self.mu) / self.sigma)
        z = (np.clip(x, self.low, self.high) - self.mu) / self.sigma
        return (_ndtr(z) - a) / (b - a)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        from scipy.special import ndtri

        a, b = _ndtr((self.low - self.mu) / self.sigma), _ndtr((self.high - self.mu) / self.sigma)
        return self.mu + self.sigma * ndtri(a + (b - a) * rng.random(n))

    def config(self) -> dict[str, Any]:
        return {"kind": "truncated_gaussian", "mu": self.mu, "sigma": self.sigma, "low": self.low, "high": self.high}


@dataclasses.dataclass(frozen=True)
class Uniform:
    """Uniform in ``[low, high]``."""

    low: float
    high: float

    def __post_init__(self):
        if not self.low < self.high:
            raise ConfigurationError(f"Uniform needs low < high, got {self!r}")

    def cdf(self, x) -> np.ndarray:
        return np.clip((np.asarray(x, dtype=np.float64) - self.low) / (self.high - self.low), 0.0, 1.0)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(self.low, self.high, n)

    def config(self) -> dict[str, Any]:
        return {"kind": "uniform", "low": self.low, "high": self.high}


@dataclasses.dataclass(frozen=True)
class Fixed:
    """Always ``value``."""

    value: float

    def cdf(self, x) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) >= self.value).astype(np.float64)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.full(n, float(self.value))

    def config(self) -> dict[str, Any]:
        return {"kind": "fixed", "value": self.value}


@dataclasses.dataclass(frozen=True)
class Histogram:
    """Piecewise-uniform density of a histogram (``edges``: n+1 increasing values, ``counts``: n
    non-negative numbers, not all zero)."""

    edges: tuple[float, ...]
    counts: tuple[float, ...]

    def __post_init__(self):
        e = np.asarray(self.edges, dtype=np.float64)
        c = np.asarray(self.counts, dtype=np.float64)
        if e.ndim != 1 or c.ndim != 1 or len(e) != len(c) + 1 or len(c) == 0:
            raise ConfigurationError(f"Histogram needs len(edges) == len(counts) + 1 >= 2, got {len(e)} edges "
                                     f"and {len(c)} counts")
        if not (np.all(np.isfinite(e)) and np.all(np.diff(e) > 0)):
            raise ConfigurationError("Histogram edges must be finite and strictly increasing")
        if not (np.all(np.isfinite(c)) and np.all(c >= 0) and c.sum() > 0):
            raise ConfigurationError("Histogram counts must be finite, non-negative and not all zero")
        object.__setattr__(self, "edges", tuple(map(float, e)))
        object.__setattr__(self, "counts", tuple(map(float, c)))

    def _cum(self) -> np.ndarray:
        c = np.asarray(self.counts)
        return np.concatenate([[0.0], np.cumsum(c) / c.sum()])

    def cdf(self, x) -> np.ndarray:
        return np.interp(x, np.asarray(self.edges), self._cum())

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        # inverse of the piecewise-linear CDF; side="right" skips the flat pieces of empty bins
        cum = self._cum()
        edges = np.asarray(self.edges)
        u = rng.random(n)
        i = np.clip(np.searchsorted(cum, u, side="right") - 1, 0, len(edges) - 2)
        frac = (u - cum[i]) / (cum[i + 1] - cum[i])
        return edges[i] + frac * (edges[i + 1] - edges[i])

    def config(self) -> dict[str, Any]:
        return {"kind": "histogram", "edges": list(self.edges), "counts": list(self.counts)}


@dataclasses.dataclass(frozen=True)
class FunctionSampler:
    """A user function ``f(n, rng) -> array of n values`` (or a scipy frozen distribution)."""

    function: Callable[..., Any]

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        f = self.function
        out = f.rvs(size=n, random_state=rng) if hasattr(f, "rvs") else f(n, rng)
        out = np.asarray(out, dtype=np.float64)
        if out.shape != (n,):
            raise ConfigurationError(f"the sampler {self._name()} returned shape {out.shape}, expected ({n},)")
        if not np.all(np.isfinite(out)):
            raise ConfigurationError(f"the sampler {self._name()} returned non-finite values")
        return out

    def _name(self) -> str:
        f = self.function
        return getattr(f, "__qualname__", None) or repr(f)

    def config(self) -> dict[str, Any]:
        f = self.function
        return {"kind": "function", "function": f"{getattr(f, '__module__', '?')}.{self._name()}"}


def as_sampler(value: Any, what: str) -> Sampler:
    """Turn a user's spectrum into a sampler.

    Args:
        value: a sampler (``sample``/``config``), a number (fixed), a ``(edges, counts)`` pair
            (histogram; numpy's ``np.histogram`` output in the other order ``(counts, edges)`` is
            recognised by the lengths), a scipy frozen distribution or a function ``f(n, rng)``.
        what: the quantity, for error messages (e.g. ``"pt"``).
    """
    if isinstance(value, Sampler) and not isinstance(value, type):
        return value
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return Fixed(float(value))
    if isinstance(value, tuple) and len(value) == 2:
        a, b = (np.asarray(v, dtype=np.float64) for v in value)
        if a.ndim == b.ndim == 1:
            if len(a) == len(b) + 1:
                return Histogram(tuple(a), tuple(b))
            if len(b) == len(a) + 1:  # np.histogram order: (counts, edges)
                return Histogram(tuple(b), tuple(a))
    if callable(value) or hasattr(value, "rvs"):
        return FunctionSampler(value)
    raise ConfigurationError(
        f"{what}: expected a sampler, a number, an (edges, counts) histogram, a scipy distribution or a "
        f"function f(n, rng) -> array, got {value!r}"
    )


def _flavour(pid: int) -> str:
    from particle import PDGID

    p = PDGID(pid)
    if p.has_bottom:
        return "b"
    if p.has_charm:
        return "c"
    return "light"


def default_pt(pid: int) -> PowerLawPt:
    """LHCb-like pT spectrum (MeV) of a hadron with PDG id ``pid`` (see the module docstring)."""
    return PowerLawPt(p0=8000.0, n=3.5) if _flavour(pid) == "b" else PowerLawPt(p0=4000.0, n=3.5)


def default_eta(pid: int) -> TruncatedGaussian:
    """LHCb-like pseudorapidity spectrum of a hadron with PDG id ``pid`` (module docstring)."""
    return TruncatedGaussian(mu=0.0, sigma=3.0 if _flavour(pid) == "b" else 3.3, low=1.5, high=6.0)
