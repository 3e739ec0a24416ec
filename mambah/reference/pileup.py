"""The reference detector's pp collisions per bunch crossing: pile-up and the prompt tracks of each PV.

What the Vertexing stage (:mod:`mambah.reconstruction.vertexstage`) needs to fit primary vertices
from tracks: how many extra pp collisions an event has, where they are, and the reconstructed
prompt (VELO) tracks each one leaves, with their states closest to the beam and covariances
(:class:`mambah.reference.trackstates.TrackStateModel`). No ``mc_particles`` rows are made for
these tracks: they only enter the PV fits. Not LHCb truth: documented numbers of the published
order, with their sources.

**Pile-up.** Each event is the signal's pp collision plus ``N_pu ~ Poisson(mu)`` extra visible
collisions. ``mu`` = :data:`DEFAULT_PILEUP_MU` = 5.5 visible interactions per crossing, the LHCb
Upgrade I (Run 3) design conditions at L = 2 x 10^33 cm^-2 s^-1 with 25 ns bunch spacing
([UPGRADE-I] LHCb collaboration, "The LHCb Upgrade I", JINST 19 (2024) P05065, arXiv:2305.10515;
the design was set in the framework TDR, LHCb-TDR-012 (2012), CERN-LHCC-2012-007: five times the
Run 2 luminosity of 4 x 10^32, where mu ~ 1.1). "Visible": at least two reconstructible tracks.
Their positions are drawn from the luminous region, the gun's
:data:`~mambah.generation.gun.DEFAULT_PV_SIGMA` (40 um transverse, 45 mm along z, Run 3) around
the origin, independently of the signal's PV.

**Tracks per collision** (reconstructed prompt VELO tracks that enter a PV fit): a negative
binomial distribution of mean ``mult_mean`` = 30 and shape ``mult_k`` = 1.5, restricted to at least
``mult_min`` = 2 (a visible collision). The mean is the charged multiplicity LHCb measured in its
acceptance, about 5-6 charged particles per unit of pseudorapidity in 2 < eta < 4.8 for pp
collisions with at least one track at 7 TeV ([LHCb-MULT] LHCb collaboration, "Measurement of
charged particle multiplicities and densities in pp collisions at sqrt(s) = 7 TeV in the forward
region", Eur. Phys. J. C 74 (2014) 2888, arXiv:1402.4430), about 20% more at 13.6 TeV, over the
three forward units of pseudorapidity: ~20 tracks, and ~30 with the backward VELO tracks, which
LHCb also uses in its PV fits and which are drawn here too (``backward_eta``, mirrored in z through
the collision). The negative binomial is the usual
description of charged multiplicities in a limited pseudorapidity window; k ~ 1.5 is a
reference-detector choice of the order of such fits at LHC energies (a wide distribution: a
quarter of the collisions have fewer than 8 tracks).

**Their kinematics**: charged pions (charge random), pseudorapidity uniform in
``[eta_lo, eta_hi]`` = [2, 5] (the VELO's forward acceptance), azimuth uniform, transverse
momentum from ``pT exp(-pT/T)`` (a Gamma(2, T) distribution) with ``T`` = 0.28 GeV/c, mean pT =
2T = 0.56 GeV/c, the mean pT of charged hadrons at the LHC (reference-detector choice of that
order), truncated below p = ``p_min`` = 0.5 GeV/c (the tracking acceptance's bound). They start
exactly at their collision's position; their states are the reference
detector's (:class:`~mambah.reference.trackstates.TrackStateModel`: the VELO segment's covariance,
so that low-pT tracks, with their large multiple scattering, weigh little in the fit).

Example:
    >>> import numpy as np
    >>> from mambah.reference.pileup import PileUpModel
    >>> m = PileUpModel()
    >>> rng = np.random.default_rng(1)
    >>> n = m.n_pileup(100_000, rng)
    >>> round(float(n.mean()), 1)
    5.5
    >>> k = m.multiplicity(100_000, rng)
    >>> int(k.min()) >= 2
    True
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from mambah.errors import ConfigurationError, DataError
from mambah.generation.gun import DEFAULT_PV_SIGMA
from mambah.random import SeedLike, get_rng
from mambah.reference.trackstates import TrackStateModel

__all__ = ["PileUpModel", "DEFAULT_PILEUP_MU"]

#: visible pp interactions per bunch crossing besides the signal's, LHCb Upgrade I (see the module docstring)
DEFAULT_PILEUP_MU: float = 5.5


@dataclasses.dataclass(frozen=True)
class PileUpModel:
    """Pile-up collisions and the prompt tracks of each collision (see the module docstring).

    Attributes:
        mu: mean number of extra visible collisions per event (Poisson).
        mult_mean, mult_k, mult_min: the tracks-per-collision negative binomial (mean, shape) and
            its lower bound (a visible collision).
        pt_temperature: ``T`` of the ``pT exp(-pT/T)`` spectrum, MeV/c.
        p_min: the spectrum is truncated below this momentum, MeV/c (the reference tracking
            acceptance's bound, :class:`mambah.reconstruction.acceptance.TrackAcceptance`: softer
            tracks are not reconstructed; without a bound, a track of vanishing momentum gets an
            unbounded multiple-scattering error, a covariance that is not positive definite in
            floating point: one in ~10^8 tracks stopped a 3M-event production with pile-up).
        eta_lo, eta_hi: pseudorapidity range of the forward tracks.
        backward_eta: ``|eta|`` range of the backward tracks (eta in ``[-4, -1.6]``).
        pv_sigma: luminous region (x, y, z) Gaussian widths, mm, around the origin.
        pid: the tracks' species (charge sign random).
    """

    mu: float = DEFAULT_PILEUP_MU
    mult_mean: float = 30.0
    mult_k: float = 1.5
    mult_min: int = 2
    pt_temperature: float = 280.0
    p_min: float = 500.0
    eta_lo: float = 1.6
    eta_hi: float = 5.0
    backward_eta: tuple[float, float] = (1.6, 4.0)
    pv_sigma: tuple[float, float, float] = DEFAULT_PV_SIGMA
    pid: int = 211

    def __post_init__(self):
        if not (np.isfinite(self.mu) and self.mu >= 0):
            raise ConfigurationError(f"PileUpModel.mu (mean extra collisions per event) must be >= 0, got {self.mu!r}")
        if not (self.mult_mean > 0 and self.mult_k > 0 and self.mult_min >= 2 and self.pt_temperature > 0
                and self.p_min > 0):
            raise ConfigurationError(f"PileUpModel: mult_mean, mult_k, pt_temperature, p_min must be > 0 and mult_min >= 2, "
                                     f"got {self.config()}")
        if not (0 < self.eta_lo < self.eta_hi) or not (0 < self.backward_eta[0] <= self.backward_eta[1]):
            raise ConfigurationError(f"PileUpModel: need 0 < eta_lo < eta_hi and 0 < backward_eta[0] <= "
                                     f"backward_eta[1], got {self.eta_lo}, {self.eta_hi}, {self.backward_eta}")
        if len(self.pv_sigma) != 3 or min(self.pv_sigma) < 0:
            raise ConfigurationError(f"PileUpModel.pv_sigma must be 3 widths >= 0 (mm), got {self.pv_sigma!r}")

    def config(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def n_pileup(self, n: int, seed: SeedLike = None) -> np.ndarray:
        """Extra visible collisions of ``n`` events, Poisson(``mu``), int64."""
        return get_rng(seed).poisson(self.mu, int(n)).astype(np.int64)

    def positions(self, n: int, seed: SeedLike = None) -> np.ndarray:
        """``n`` collision positions (n, 3), mm, from the luminous region."""
        rng = get_rng(seed)
        return rng.standard_normal((int(n), 3)) * np.asarray(self.pv_sigma, dtype=np.float64)

    def multiplicity(self, n: int, seed: SeedLike = None, minimum: int | np.ndarray | None = None) -> np.ndarray:
        """Tracks of ``n`` collisions: the negative binomial restricted to ``>= max(mult_min, minimum)``
        (values below are drawn again, vectorised, until none is left), int64."""
        rng = get_rng(seed)
        n = int(n)
        lo = np.broadcast_to(np.maximum(self.mult_min, self.mult_min if minimum is None else
                                        np.asarray(minimum, dtype=np.int64)), (n,))
        prob = self.mult_k / (self.mult_k + self.mult_mean)  # numpy's (n=k, p): mean k (1 - p) / p
        out = rng.negative_binomial(self.mult_k, prob, n).astype(np.int64)
        redo = np.nonzero(out < lo)[0]
        for _ in range(1000):
            if not len(redo):
                break
            out[redo] = rng.negative_binomial(self.mult_k, prob, len(redo))
            redo = redo[out[redo] < lo[redo]]
        else:  # pragma: no cover - needs a minimum far in the tail
            raise ConfigurationError(f"PileUpModel.multiplicity: a minimum of {int(lo.max())} tracks is too far in the "
                                     f"tail of the negative binomial (mean {self.mult_mean}, k {self.mult_k})")
        return out

    def tracks(self, origins: np.ndarray, seed: SeedLike = None, states: TrackStateModel | None = None):
        """Measured 4-parameter states of prompt tracks starting at ``origins`` (m, 3), mm.

        Returns:
            ``(state (m, 4) (x, y, tx, ty), cov (m, 4, 4), z (m,))`` at the plane closest to the beam
            (the reference detector's VELO states, see :class:`TrackStateModel`).
        """
        rng = get_rng(seed)
        o = np.asarray(origins, dtype=np.float64)
        if o.ndim != 2 or o.shape[1] != 3 or not np.isfinite(o).all():
            raise DataError(f"PileUpModel.tracks: origins must be finite (m, 3) positions, got shape {o.shape}")
        m = len(o)
        model = TrackStateModel() if states is None else states
        pt = rng.gamma(2.0, self.pt_temperature, m)
        fwd = self.eta_hi - self.eta_lo
        bwd = self.backward_eta[1] - self.backward_eta[0]
        u = rng.uniform(0.0, fwd + bwd, m)  # flat in eta over both ranges
        backward = u >= fwd
        eta = np.where(backward, self.backward_eta[0] + (u - fwd), self.eta_lo + u)  # |eta| for backward
        phi = rng.uniform(-np.pi, np.pi, m)
        charge = np.where(rng.random(m) < 0.5, 1.0, -1.0)
        # the spectrum truncated at p_min: the tracks below draw their pT again (direction kept)
        ch = np.cosh(eta)
        low = np.flatnonzero(pt * ch < self.p_min)
        while len(low):
            pt[low] = rng.gamma(2.0, self.pt_temperature, len(low))
            low = low[pt[low] * ch[low] < self.p_min]
        px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
        truth, zs = model.true_state(px, py, pz, o[:, 0], o[:, 1], o[:, 2], charge)
        cov = model.velo_covariance(px, py, pz, abs(int(self.pid)))  # prompt tracks: a VELO segment
        # (x, tx) and (y, ty) are independent blocks: draw each
        noise = np.empty((m, 4))
        for a, b in ((0, 2), (1, 3)):
            l11 = np.sqrt(cov[:, a, a])
            l21 = cov[:, a, b] / l11
            l22 = np.sqrt(cov[:, b, b] - l21 * l21)
            u, w = rng.standard_normal(m), rng.standard_normal(m)
            noise[:, a] = l11 * u
            noise[:, b] = l21 * u + l22 * w
        st = truth[:, :4] + noise
        # a backward track is the mirror image in z of a forward one through its origin: same
        # geometry and errors, slopes (and the x-tx, y-ty correlations) of the opposite sign
        zs = np.where(backward, 2.0 * o[:, 2] - zs, zs)
        st[backward, 2:] *= -1.0
        flip = np.array([1.0, 1.0, -1.0, -1.0])
        cov[backward] *= flip[:, None] * flip[None, :]
        return st, cov, zs
