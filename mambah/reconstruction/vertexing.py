"""Vertexing: a vectorised least-squares vertex fit and the variables selections cut on.

Pure functions on arrays (no batch, no randomness): the Vertexing stage
(:mod:`mambah.reconstruction.vertexstage`) and the reference detector's closure tests call them.
Everything is vectorised over a leading batch axis: ``n`` vertices of ``N`` tracks each are
arrays of shape ``(n, N, ...)``; any number ``N >= 2`` of tracks works, and vertices with different
numbers of tracks go in one call padded to the largest with a ``mask`` (the padded tracks get
weight 0: they add nothing to the chi2, the normal matrix or the mother; ``ndof`` is then per
vertex) — the primary vertices of :mod:`mambah.reconstruction.vertexstage`. Units: mm, MeV/c, ns.

**Track states.** A track is a straight line near the beam (the VELO has no magnetic field),
given by its state at a reference plane ``z``: ``(x, y, tx, ty)`` or ``(x, y, tx, ty, q/p)``
with ``tx = px/pz``, ``ty = py/pz`` and ``q/p`` in 1/(MeV/c) (unit charges), and the state's
4x4 or 5x5 covariance — LHCb's "state closest to the beam".

**The fit** (:func:`fit_vertex`) is the Billoir–Frühwirth–Regler least-squares fit (P. Billoir,
R. Frühwirth, M. Regler, "Track element merging strategy and vertex fitting in complex
modular detectors", NIM A 241 (1985) 115; R. Frühwirth, "Application of Kalman filtering to
track and vertex fitting", NIM A 262 (1987) 444, whose global least-squares solution the
Kalman filter reproduces). Parameters: the vertex ``v = (vx, vy, vz)`` and, per track, its
momentum parameters ``q_i = (tx, ty[, q/p])`` at the vertex. Measurement model of track ``i``,
state at ``z_i``::

    h_i(v, q_i) = (vx + tx (z_i - vz), vy + ty (z_i - vz), tx, ty[, q/p])

    chi2 = sum_i (m_i - h_i)^T G_i (m_i - h_i),   G_i = V_i^-1,   ndf = 2 N - 3

(4 or 5 measurements per track, 2 or 3 track parameters each, 3 vertex coordinates). Billoir's
solution of the linearised model, ``h ~ c + A v + B q``, eliminates the track parameters (with
``D_i = A^T G_i A``, ``E_i = A^T G_i B``, ``W_i = (B^T G_i B)^-1``, ``r_i = m_i - c_i``)::

    C_v^-1 = sum_i (D_i - E_i W_i E_i^T),   v = C_v sum_i (A^T - E_i W_i B^T) G_i r_i
    cov(v, q_i) = -C_v E_i W_i,             cov(q_i, q_j) = delta_ij W_i + W_i E_i^T C_v E_j W_j

For straight lines this takes a closed 2D form, which is what the code evaluates (no k x k
algebra per track): written at the plane ``z = vz`` (a linear change of the measurement, which
changes nothing in the fit), the track parameters enter only the slope rows, and eliminating a
Gaussian's free components leaves the marginal of the others, so::

    chi2(v) = sum_i r_i^T P_i(vz)^-1 r_i,   r_i = (x_i + tx_i (vz - z_i) - vx, y_i + ty_i (vz - z_i) - vy)

with ``P_i(vz)`` the 2x2 position covariance of the measured state transported to ``vz``
(``P = V_pp + dz (V_pt + V_tp) + dz^2 V_tt``), ``D - E W E^T = A^T P^-1 A`` with ``A = [[1, 0,
-tx_i], [0, 1, -ty_i]]`` at the fitted slopes, and the fitted track parameters are the measured
ones conditioned on passing through ``v``: ``q_i = q_meas - cov(q, x') P^-1 r_i``. The model is
bilinear (``tx * vz``), so the Gauss-Newton step is repeated from the point closest to all lines
until every coordinate moves by less than ``tol`` of its error (2-4 passes; a step that raises the
chi2 is halved), per vertex: converged vertices leave the iteration. The result equals scipy's
``least_squares`` on the full (vertex + track parameters) chi2 (``tests/test_vertexing.py``); the
covariance is the inverse normal matrix of the last linearisation (less than ``tol`` of an error
from the solution).

With ``q/p`` in the states, the mother's momentum ``P = sum_i p_i(q_i)`` and its covariance
(with its correlation to the vertex position) follow by linear propagation: with ``J_i =
dp_i/dq_i`` and ``M_i = cov(q_i, x') P_i^-1 A_i`` (so that ``cov(q_i, v) = M_i C_v``, which is
Billoir's ``-W_i E_i^T C_v``) and ``K = sum_i J_i M_i``: ``cov(P) = sum_i J_i W_i J_i^T + K C_v K^T``
and ``cov(v, P) = C_v K^T``, ``W_i`` being the track parameters' covariance given the vertex.

**Particles** for the derived variables are ``(position (..., 3), momentum (..., 3), 6x6
covariance of (x, y, z, px, py, pz))``: a fitted composite (:meth:`VertexFit.particle`) or a track
(:func:`particle_from_state`).

**Derived variables** (LHCb names in the stage's output):

* ``IP`` (:func:`impact_parameter`): 3D distance of the particle's line from a vertex;
  ``IPCHI2`` (:func:`ip_chi2`): the 2D residual of the line at the vertex's z plane, with the
  particle's and the vertex's covariances, ``r^T (J_p C_p J_p^T + J_v C_v J_v^T)^-1 r``
  (chi2 with 2 degrees of freedom; the residual is taken in a z plane, which gives the same chi2
  as the plane perpendicular to the track since the covariance is propagated along the line);
  ``MINIPCHI2`` (:func:`min_ip_chi2`) over several PVs (NaN PV rows are skipped);
* ``FD`` and ``FDCHI2`` (:func:`flight_distance`, :func:`fd_chi2`): ``|sv - pv|`` and
  ``d^T (C_sv + C_pv)^-1 d`` (the two vertices are taken as independent);
* ``DIRA`` (:func:`dira`): cosine of the angle between the momentum and ``sv - pv``;
* decay time (:func:`decay_time`): ``t = m (d . p) / (|p|^2 c)``, the projection used by
  LHCb's lifetime fits, and its error by linear propagation of both vertices and the momentum;
* ``DOCA`` (:func:`doca`): distance of closest approach of two lines;
* ``MCORR`` (:func:`corrected_mass`): ``sqrt(M^2 + pT_miss^2) + pT_miss`` with ``pT_miss`` the
  momentum transverse to the flight direction (SLD; LHCb, e.g. Nature Phys. 11 (2015) 743).

Example:
    >>> import numpy as np
    >>> from mambah.reconstruction.vertexing import fit_vertex
    >>> states = np.array([[[0.1, 0.0, 0.01, 0.0], [-0.1, 0.0, -0.01, 0.0]]])   # two tracks at z = 0
    >>> cov = np.broadcast_to(np.diag([1e-4, 1e-4, 1e-6, 1e-6]), (1, 2, 4, 4))
    >>> fit = fit_vertex(states, cov, z=0.0)
    >>> np.round(fit.position, 6).tolist(), fit.ndof
    ([[0.0, 0.0, -10.0]], 1)
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from hepunits.constants import c_light  # mm/ns in hepunits' base units (mm, ns)

from mambah.errors import DataError, MambahWarning
from mambah.nn.dense import n_threads, run_row_chunks

__all__ = [
    "VertexFit", "VertexFitWarning", "fit_vertex", "particle_from_state", "state_momentum", "impact_parameter", "ip_residual",
    "ip_chi2", "min_ip_chi2", "flight_distance", "fd_chi2", "dira", "decay_time", "doca", "corrected_mass",
    "C_MM_PER_NS",
]

#: speed of light, mm/ns (hepunits, CODATA)
C_MM_PER_NS = float(c_light)


# ----------------------------------------------------------------------------- small linear algebra
def _inv2(m: np.ndarray) -> np.ndarray:
    """Inverse of (..., 2, 2) matrices, closed form."""
    a, b, c, d = m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1]
    det = a * d - b * c
    out = np.empty_like(m)
    out[..., 0, 0] = d / det
    out[..., 0, 1] = -b / det
    out[..., 1, 0] = -c / det
    out[..., 1, 1] = a / det
    return out


def _inv3(m: np.ndarray) -> np.ndarray:
    """Inverse of (..., 3, 3) matrices, closed form (adjugate / determinant)."""
    a = m
    c00 = a[..., 1, 1] * a[..., 2, 2] - a[..., 1, 2] * a[..., 2, 1]
    c01 = a[..., 1, 2] * a[..., 2, 0] - a[..., 1, 0] * a[..., 2, 2]
    c02 = a[..., 1, 0] * a[..., 2, 1] - a[..., 1, 1] * a[..., 2, 0]
    det = a[..., 0, 0] * c00 + a[..., 0, 1] * c01 + a[..., 0, 2] * c02
    out = np.empty_like(m)
    out[..., 0, 0] = c00
    out[..., 1, 0] = c01
    out[..., 2, 0] = c02
    out[..., 0, 1] = a[..., 0, 2] * a[..., 2, 1] - a[..., 0, 1] * a[..., 2, 2]
    out[..., 1, 1] = a[..., 0, 0] * a[..., 2, 2] - a[..., 0, 2] * a[..., 2, 0]
    out[..., 2, 1] = a[..., 0, 1] * a[..., 2, 0] - a[..., 0, 0] * a[..., 2, 1]
    out[..., 0, 2] = a[..., 0, 1] * a[..., 1, 2] - a[..., 0, 2] * a[..., 1, 1]
    out[..., 1, 2] = a[..., 0, 2] * a[..., 1, 0] - a[..., 0, 0] * a[..., 1, 2]
    out[..., 2, 2] = a[..., 0, 0] * a[..., 1, 1] - a[..., 0, 1] * a[..., 1, 0]
    return out / det[..., None, None]


def _sym(m: np.ndarray) -> np.ndarray:
    return 0.5 * (m + np.swapaxes(m, -1, -2))


def _tr(m: np.ndarray) -> np.ndarray:
    return np.swapaxes(m, -1, -2)


# ----------------------------------------------------------------------------- the vertex fit
@dataclasses.dataclass(frozen=True)
class VertexFit:
    """Result of :func:`fit_vertex` for ``n`` vertices of ``N`` tracks.

    Attributes:
        position: fitted vertex (n, 3), mm.
        covariance: its covariance (n, 3, 3), mm^2.
        chi2: (n,) chi2 of the fit.
        ndof: degrees of freedom, ``2 N - 3`` (an int); with a ``mask``, (n,) ints ``2 N_i - 3``.
        track_params: fitted momentum parameters per track at the vertex, (n, N, 2 or 3):
            ``(tx, ty[, q/p])``.
        momentum: the mother's momentum (n, 3), MeV/c, when the states carry ``q/p``; else None.
        momentum_covariance: its covariance (n, 3, 3); None without ``q/p``.
        position_momentum_covariance: ``cov(v, P)`` (n, 3, 3); None without ``q/p``.
        iterations: linearisation passes made.
    """

    position: np.ndarray
    covariance: np.ndarray
    chi2: np.ndarray
    ndof: int | np.ndarray
    track_params: np.ndarray
    momentum: np.ndarray | None = None
    momentum_covariance: np.ndarray | None = None
    position_momentum_covariance: np.ndarray | None = None
    iterations: int = 0

    def particle(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The fitted mother as ``(position, momentum, 6x6 covariance)`` (needs ``q/p``)."""
        if self.momentum is None:
            raise DataError("the vertex fit had no q/p in its track states, so it has no momentum; "
                            "fit 5-parameter states (x, y, tx, ty, q/p) to get the mother particle")
        n = len(self.position)
        cov = np.empty((n, 6, 6))
        cov[:, :3, :3] = self.covariance
        cov[:, :3, 3:] = self.position_momentum_covariance
        cov[:, 3:, :3] = _tr(self.position_momentum_covariance)
        cov[:, 3:, 3:] = self.momentum_covariance
        return self.position, self.momentum, cov


def _momentum_and_jacobian(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(px, py, pz) from (tx, ty, q/p) (forward tracks, unit charge) and d(p)/d(q), (..., 3, 3)."""
    tx, ty, qop = q[..., 0], q[..., 1], q[..., 2]
    p = 1.0 / np.abs(qop)
    n = np.sqrt(1.0 + tx * tx + ty * ty)
    pz = p / n
    mom = np.stack([tx * pz, ty * pz, pz], axis=-1)
    dpz = np.stack([-pz * tx / (n * n), -pz * ty / (n * n), -pz / qop], axis=-1)  # d pz / d(tx, ty, qop)
    jac = np.empty(q.shape[:-1] + (3, 3))
    jac[..., 2, :] = dpz
    jac[..., 0, :] = tx[..., None] * dpz
    jac[..., 1, :] = ty[..., None] * dpz
    jac[..., 0, 0] += pz
    jac[..., 1, 1] += pz
    return mom, jac


def state_momentum(states: np.ndarray) -> np.ndarray:
    """Momentum (..., 3) [MeV/c] of 5-parameter states ``(x, y, tx, ty, q/p)`` (forward, unit charge)."""
    return _momentum_and_jacobian(np.asarray(states, dtype=np.float64)[..., 2:5])[0]


_MAX_HALVINGS = 8


class _Tracks:
    """The state components of ``n x N`` tracks as contiguous track-major (N, n) arrays."""

    _FIELDS = ("x", "y", "tx", "ty", "z", "Vxx", "Vxy", "Vyy", "Vxtx", "Vxty", "Vytx", "Vyty", "Vtxtx", "Vtxty", "Vtyty",
               "w")
    _INDEX = {"Vxx": (0, 0), "Vxy": (0, 1), "Vyy": (1, 1), "Vxtx": (0, 2), "Vxty": (0, 3), "Vytx": (1, 2),
              "Vyty": (1, 3), "Vtxtx": (2, 2), "Vtxty": (2, 3), "Vtyty": (3, 3)}

    def __init__(self, mt: np.ndarray | None = None, Vt: np.ndarray | None = None, zt: np.ndarray | None = None,
                 w: np.ndarray | None = None):
        """``mt[i]``, ``Vt[i, j]`` (i <= j) and ``zt``: (N, n) components; ``w``: (N, n) weights 1.0 / 0.0
        of the tracks present / masked out (None: every track present)."""
        if mt is None:
            return
        self.x, self.y, self.tx, self.ty = mt[0], mt[1], mt[2], mt[3]
        self.z = zt
        self.w = w
        for name, (i, j) in self._INDEX.items():
            setattr(self, name, Vt[i, j])

    def subset(self, cols: np.ndarray) -> _Tracks:
        out = _Tracks()
        for f in self._FIELDS:
            x = getattr(self, f)
            setattr(out, f, None if x is None else x[:, cols])
        return out


@dataclasses.dataclass
class _Eval:
    """The fit's quantities at trial vertices ``v`` (track quantities are (N, n))."""

    v: np.ndarray  # (3, n)
    chi2: np.ndarray  # (n,)
    dz: np.ndarray
    rx: np.ndarray  # residual of the measured line at the plane vz: x' - vx
    ry: np.ndarray
    I: tuple  # inverse of the 2x2 position covariance at the plane vz: (Ixx, Ixy, Iyy)
    Ctp: tuple  # cov(slopes, position) at the plane vz: (Ctx_x, Ctx_y, Cty_x, Cty_y)
    a: np.ndarray  # I r
    b: np.ndarray

    TRACK_FIELDS = ("dz", "rx", "ry", "a", "b", "Ixx", "Ixy", "Iyy", "Cxx", "Cxy", "Cyx", "Cyy")

    def field(self, f: str) -> np.ndarray:
        """One of :attr:`TRACK_FIELDS` ((N, n) per-track quantities)."""
        if f in ("Ixx", "Ixy", "Iyy"):
            return self.I[("Ixx", "Ixy", "Iyy").index(f)]
        if f in ("Cxx", "Cxy", "Cyx", "Cyy"):
            return self.Ctp[("Cxx", "Cxy", "Cyx", "Cyy").index(f)]
        return getattr(self, f)

    def take(self, cols: np.ndarray) -> _Eval:
        return _Eval(self.v[:, cols], self.chi2[cols], self.dz[:, cols], self.rx[:, cols], self.ry[:, cols],
                     tuple(x[:, cols] for x in self.I), tuple(x[:, cols] for x in self.Ctp), self.a[:, cols],
                     self.b[:, cols])


def _evaluate(t: _Tracks, v: np.ndarray) -> _Eval:
    """Transport the measured lines to the planes ``z = vz``: residuals, weights and the chi2.

    Profiling the track parameters out of the Billoir chi2 leaves, per track, the 2D residual of
    the measured line at the vertex plane weighted with the inverse of its transported 2x2
    position covariance (a Gaussian minimised over free components leaves the marginal of the
    others), so ``chi2(v) = sum_i r_i^T P_i(vz)^-1 r_i`` exactly."""
    dz = v[2] - t.z
    rx = t.x + t.tx * dz - v[0]
    ry = t.y + t.ty * dz - v[1]
    Pxx = t.Vxx + dz * (2.0 * t.Vxtx + dz * t.Vtxtx)
    Pxy = t.Vxy + dz * (t.Vxty + t.Vytx + dz * t.Vtxty)
    Pyy = t.Vyy + dz * (2.0 * t.Vyty + dz * t.Vtyty)
    det = Pxx * Pyy - Pxy * Pxy
    if t.w is None:
        Ixx, Ixy, Iyy = Pyy / det, -Pxy / det, Pxx / det
    else:  # a masked track has weight 0: it adds nothing to the chi2 or the normal matrix
        idet = t.w / det
        Ixx, Ixy, Iyy = Pyy * idet, -Pxy * idet, Pxx * idet
    a = Ixx * rx + Ixy * ry
    b = Ixy * rx + Iyy * ry
    chi2 = (rx * a + ry * b).sum(axis=0)
    Ctp = (t.Vxtx + dz * t.Vtxtx, t.Vytx + dz * t.Vtxty, t.Vxty + dz * t.Vtxty, t.Vyty + dz * t.Vtyty)
    return _Eval(v, chi2, dz, rx, ry, (Ixx, Ixy, Iyy), Ctp, a, b)


def _fitted_slopes(t: _Tracks, e: _Eval) -> tuple[np.ndarray, np.ndarray]:
    """Slopes of the tracks fitted at the vertex: the measured ones, constrained through it."""
    cxx, cxy, cyx, cyy = e.Ctp
    return t.tx - (cxx * e.a + cxy * e.b), t.ty - (cyx * e.a + cyy * e.b)


def _inv3_sym(a00, a01, a02, a11, a12, a22):
    """Inverse of symmetric 3x3 matrices given by their 6 component arrays: the 6 components."""
    c00 = a11 * a22 - a12 * a12
    c01 = a02 * a12 - a01 * a22
    c02 = a01 * a12 - a02 * a11
    det = a00 * c00 + a01 * c01 + a02 * c02
    c11 = a00 * a22 - a02 * a02
    c12 = a01 * a02 - a00 * a12
    c22 = a00 * a11 - a01 * a01
    return c00 / det, c01 / det, c02 / det, c11 / det, c12 / det, c22 / det


def _solve(t: _Tracks, e: _Eval):
    """The Gauss-Newton step from ``e.v`` (linearised at the slopes fitted there): the new vertex
    (3, n) and the 6 components of the inverse normal matrix (the vertex covariance)."""
    Ixx, Ixy, Iyy = e.I
    tx0, ty0 = _fitted_slopes(t, e)
    vz0 = e.v[2]
    # linearised residual rho(v) = b - A v with A = [[1, 0, -tx0], [0, 1, -ty0]], b = x' - tx0 vz0
    bx = e.rx + e.v[0] - tx0 * vz0
    by = e.ry + e.v[1] - ty0 * vz0
    Ia_x = Ixx * tx0 + Ixy * ty0
    Ia_y = Ixy * tx0 + Iyy * ty0
    C = _inv3_sym(Ixx.sum(axis=0), Ixy.sum(axis=0), -Ia_x.sum(axis=0), Iyy.sum(axis=0), -Ia_y.sum(axis=0),
                  (tx0 * Ia_x + ty0 * Ia_y).sum(axis=0))
    gx = Ixx * bx + Ixy * by
    gy = Ixy * bx + Iyy * by
    r0, r1, r2 = gx.sum(axis=0), gy.sum(axis=0), -(tx0 * gx + ty0 * gy).sum(axis=0)
    c00, c01, c02, c11, c12, c22 = C
    v = np.stack([c00 * r0 + c01 * r1 + c02 * r2, c01 * r0 + c11 * r1 + c12 * r2, c02 * r0 + c12 * r1 + c22 * r2])
    return v, C


def _start_point(t: _Tracks) -> np.ndarray:
    """The point closest to all the measured lines (unweighted least squares): the fit's start, (3, n)."""
    inv = 1.0 / (1.0 + t.tx * t.tx + t.ty * t.ty)
    u = (t.tx, t.ty, np.ones_like(t.tx))
    pos = (t.x, t.y, t.z)
    w = 1.0 if t.w is None else t.w  # masked tracks: weight 0
    # M = sum (1 - u u^T), b = sum (1 - u u^T) a, with u u^T = d d^T / |d|^2
    M = {}
    for i, j in ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)):
        M[i, j] = (w * ((1.0 if i == j else 0.0) - u[i] * u[j] * inv)).sum(axis=0)
    ua = (t.tx * t.x + t.ty * t.y + t.z) * inv
    b = [(w * (pos[i] - u[i] * ua)).sum(axis=0) for i in range(3)]
    c00, c01, c02, c11, c12, c22 = _inv3_sym(M[0, 0], M[0, 1], M[0, 2], M[1, 1], M[1, 2], M[2, 2])
    return np.stack([c00 * b[0] + c01 * b[1] + c02 * b[2], c01 * b[0] + c11 * b[1] + c12 * b[2],
                     c02 * b[0] + c12 * b[1] + c22 * b[2]])


def _positive_definite(Vt: dict, k: int) -> np.ndarray:
    """Where the covariances, given by their upper-triangle components ``Vt[i, j]`` (i <= j),
    are finite and positive definite: an elementwise Cholesky decomposition."""
    L: dict = {}
    ok = np.ones(Vt[0, 0].shape, dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        for j in range(k):
            d = Vt[j, j] - sum((L[j, p] * L[j, p] for p in range(j)), np.zeros(()))
            ok &= d > 0
            ljj = np.sqrt(np.where(d > 0, d, 1.0))
            for i in range(j + 1, k):
                L[i, j] = (Vt[j, i] - sum((L[i, p] * L[j, p] for p in range(j)), np.zeros(()))) / ljj
            L[j, j] = ljj
    for x in Vt.values():
        ok &= np.isfinite(x)
    return ok


class VertexFitWarning(MambahWarning):
    """Some vertex fits did not converge within ``max_iterations``.

    Attributes:
        count: fits not converged; n: fits made; rows: their row numbers (at most 20).
    """

    def __init__(self, message: str, *, count: int = 0, n: int = 0, rows=()):
        super().__init__(message)
        self.count = int(count)
        self.n = int(n)
        self.rows = [int(r) for r in rows]


def fit_vertex(states, covariances, z=0.0, *, mask=None, start=None, max_iterations: int = 30,
               tol: float = 1e-2, check: bool = True, threads: int | None = None) -> VertexFit:
    """Least-squares fit of a common vertex of ``N`` straight tracks, for ``n`` vertices at once.

    Args:
        states: (n, N, 4) ``(x, y, tx, ty)`` or (n, N, 5) ``(x, y, tx, ty, q/p)`` at the planes ``z``;
            mm, rad-slopes, 1/(MeV/c).
        covariances: (n, N, k, k) covariance of each state (positive definite).
        z: the states' reference planes, mm: broadcastable to (n, N) (scalar, (N,), (n, 1), (n, N)).
        mask: optional (n, N) booleans, True for the tracks of each vertex: vertices with different
            numbers of tracks in one call (pad to the largest; the padded entries' states,
            covariances and z are ignored and may be NaN). Each vertex needs at least 2 tracks; its
            ``ndof`` is then ``2 N_i - 3`` per vertex (an (n,) array), and the masked tracks'
            ``track_params`` are NaN.
        start: optional (n, 3) starting points of the iteration; by default the point closest to
            all the measured lines (unweighted), which is poor when nearly parallel lines with
            large position errors dominate it (primary vertices: seed them near the beam line,
            see :func:`mambah.reconstruction.vertexstage.fit_primary_vertices`).
        max_iterations: linearisation passes at most.
        tol: a fit has converged when its last step moved the vertex by less than ``tol`` times
            its error in each coordinate; fits that have converged are not iterated further.
        check: check the inputs (shapes, finite values, positive-definite covariances) first.
        threads: threads over which chunks of 32768 vertices are spread (``None``:
            :func:`mambah.nn.dense.n_threads`, i.e. ``$MAMBAH_THREADS`` or the cores). Each vertex's
            fit is independent of the others (a converged fit keeps the iterate it converged at), so
            the result does not depend on the chunks or the threads, bit for bit.

    Returns:
        :class:`VertexFit` (see the module docstring for the formulas).

    Raises:
        DataError: bad shapes, fewer than 2 tracks, non-finite states, covariances that are not
            positive definite (the first offending (vertex, track) is named).
    """
    m = np.asarray(states)
    n = len(m) if m.ndim == 3 else 0
    threads = n_threads() if threads is None else max(1, int(threads))
    kw = dict(max_iterations=max_iterations, tol=tol, check=check)
    if n <= _CHUNK_ROWS:
        fit, active = _fit_vertex(states, covariances, z, mask, start, **kw)
    else:
        fit, active = _fit_vertex_chunks(m, covariances, z, mask, start, threads, kw)
    if len(active):
        warnings.warn(VertexFitWarning(
            f"fit_vertex: {len(active)} of {n} vertex fits did not converge in {max_iterations} iterations "
            f"(last step above {tol} of the vertex error); they keep their last iterate (rows {active[:20].tolist()})",
            count=len(active), n=n, rows=active[:20]), stacklevel=2)
    return fit


#: vertices per work unit of :func:`fit_vertex`: the temporaries of a chunk stay in the caches
#: (measured on 2 cores, 2 x 10^5 vertices: chunks of 16-32k fit 1.5-1.9x faster than the whole on 2
#: threads, and 4-8k chunks lose to the per-call overhead)
_CHUNK_ROWS = 32768


def _fit_vertex_chunks(m, covariances, z, mask, start, threads: int, kw: dict):
    """:func:`_fit_vertex` over row chunks of :data:`_CHUNK_ROWS` on ``threads`` threads
    (:func:`mambah.nn.dense.run_row_chunks`); on bad input, the fit of everything at once raises the
    error naming the first offending row."""
    n, N = m.shape[:2]
    V = np.asarray(covariances)
    try:
        zz = np.broadcast_to(np.asarray(z, dtype=np.float64), (n, N))
    except ValueError:
        zz = None
    if zz is None or V.shape[:2] != (n, N) or (mask is not None and np.shape(mask) != (n, N)) or (
            start is not None and np.shape(start) != (n, 3)):
        return _fit_vertex(m, covariances, z, mask, start, **kw)  # raises the DataError
    mask_, start_ = (None if x is None else np.asarray(x) for x in (mask, start))

    def one(mc, Vc, zc, rows, _i):
        sl = slice(rows[0], rows[-1] + 1)
        fit, active = _fit_vertex(mc, Vc, zc, None if mask_ is None else mask_[sl],
                                  None if start_ is None else start_[sl], **kw)
        return fit, active + rows[0]

    try:
        outs = run_row_chunks(one, n, m, V, zz, np.arange(n), chunk=_CHUNK_ROWS, threads=threads)
    except DataError:
        return _fit_vertex(m, covariances, z, mask, start, **kw)  # names the first offending row overall
    fits = [o[0] for o in outs]
    active = np.concatenate([o[1] for o in outs])

    def cat(name):
        xs = [getattr(f, name) for f in fits]
        return None if xs[0] is None else np.concatenate(xs)

    ndof = fits[0].ndof if mask is None else cat("ndof")
    fit = VertexFit(position=cat("position"), covariance=cat("covariance"), chi2=cat("chi2"), ndof=ndof,
                    track_params=cat("track_params"), momentum=cat("momentum"),
                    momentum_covariance=cat("momentum_covariance"),
                    position_momentum_covariance=cat("position_momentum_covariance"),
                    iterations=max(f.iterations for f in fits))
    return fit, active


def _fit_vertex(states, covariances, z, mask, start, *, max_iterations: int, tol: float, check: bool):
    """The fit of :func:`fit_vertex` in one thread: ``(VertexFit, rows not converged)``."""
    m = np.asarray(states, dtype=np.float64)
    V = np.asarray(covariances, dtype=np.float64)
    if m.ndim != 3 or m.shape[-1] not in (4, 5):
        raise DataError(f"fit_vertex: states must have shape (n_vertices, n_tracks, 4 or 5), got {m.shape}")
    n, N, k = m.shape
    if V.shape != (n, N, k, k):
        raise DataError(f"fit_vertex: covariances must have shape {(n, N, k, k)}, got {V.shape}")
    if N < 2:
        raise DataError(f"fit_vertex: a vertex needs at least 2 tracks, got {N}")
    try:
        zz = np.broadcast_to(np.asarray(z, dtype=np.float64), (n, N))
    except ValueError:
        raise DataError(f"fit_vertex: z of shape {np.shape(z)} does not broadcast to (n_vertices, n_tracks) = {(n, N)}; "
                        "give a scalar, (n_tracks,) or (n_vertices, n_tracks) (or (n_vertices, 1))") from None
    w = None
    if mask is not None:
        present = np.asarray(mask)
        if present.shape != (n, N) or present.dtype != bool:
            raise DataError(f"fit_vertex: mask must be booleans of shape (n_vertices, n_tracks) = {(n, N)}, got "
                            f"{present.dtype} {present.shape}")
        few = present.sum(axis=1) < 2
        if few.any():
            raise DataError(f"fit_vertex: {int(few.sum())} vertices have fewer than 2 tracks in the mask, e.g. vertex "
                            f"{int(np.argmax(few))}; a vertex needs at least 2 tracks")
        if not present.all():  # the masked entries become a harmless unit state (weight 0 in the fit)
            gone = ~present
            m = m.copy()
            m[gone] = 0.0
            if k == 5:
                m[gone, 4] = 1.0
            V = V.copy()
            V[gone] = np.eye(k)
            zz = zz.copy()
            zz[gone] = 0.0
        w = np.ascontiguousarray(present.T, dtype=np.float64)
    mt = [np.ascontiguousarray(m[..., i].T) for i in range(k)]  # track-major (N, n) components
    Vt = {(i, j): np.ascontiguousarray(V[..., i, j].T) for i in range(k) for j in range(i, k)}
    zt = np.ascontiguousarray(zz.T)
    if check:
        good = np.isfinite(zt)
        for x in mt:
            good &= np.isfinite(x)
        if not good.all():
            bad = tuple(int(i) for i in np.argwhere(~good.T)[0])
            raise DataError(f"fit_vertex: non-finite track state at (vertex, track) = {bad}: "
                            f"{m[bad].tolist()!r} at z = {zz[bad]}")
        good = _positive_definite(Vt, k)
        if not (V == np.swapaxes(V, -1, -2)).all():  # exactly symmetric (the usual case), else within 1e-9
            for i in range(k):
                for j in range(i + 1, k):
                    good &= np.isclose(V[..., i, j], V[..., j, i], rtol=1e-9, atol=0.0).T
        if not good.all():
            bad = tuple(int(i) for i in np.argwhere(~good.T)[0])
            raise DataError(f"fit_vertex: {int((~good).sum())} track covariances are not symmetric positive definite, "
                            f"e.g. at (vertex, track) = {bad}: {V[bad].tolist()!r}")
        if k == 5 and (mt[4] == 0).any():
            raise DataError("fit_vertex: q/p = 0 in a track state (infinite momentum)")
    t = _Tracks(mt, Vt, zt, w)
    if start is None:
        v0 = _start_point(t)
    else:
        v0 = np.asarray(start, dtype=np.float64)
        if v0.shape != (n, 3) or not np.isfinite(v0).all():
            raise DataError(f"fit_vertex: start must be finite points of shape {(n, 3)}, got {v0.shape}")
        v0 = np.ascontiguousarray(v0.T)
    e = _evaluate(t, v0)
    v = e.v.copy()
    chi2 = e.chi2.copy()
    rows = np.arange(n)  # the working set: vertices still iterated (shrunk when half have converged)
    pending = np.ones(n, dtype=bool)  # in the working set: not converged yet
    ta = t
    # what the result needs, kept when a vertex leaves the working set: its transported quantities
    # at the solution and its covariance (from the last linearisation, less than tol of an error away)
    fin = {f: np.empty((N, n)) for f in _Eval.TRACK_FIELDS}
    fin_C = np.empty((6, n))

    def keep(sel_rows, ev: _Eval, C):
        for f in _Eval.TRACK_FIELDS:
            fin[f][:, sel_rows] = ev.field(f)
        fin_C[:, sel_rows] = np.stack(C)

    it = 0
    for it in range(1, max_iterations + 1):
        v_new, C_a = _solve(ta, e)
        e_new = _evaluate(ta, v_new)
        # step halving where the chi2 went up (the model is bilinear: a full Gauss-Newton step can
        # overshoot when a state's position and slope are strongly correlated)
        for _ in range(_MAX_HALVINGS):
            worse = ~(e_new.chi2 <= e.chi2 * (1 + 1e-12) + 1e-12)
            if not worse.any():
                break
            v_new = np.where(worse, 0.5 * (v_new + e.v), v_new)
            e_new = _evaluate(ta, v_new)
        step = np.abs(v_new - e.v)
        err = np.sqrt(np.maximum(np.stack([C_a[0], C_a[3], C_a[5]]), 0.0))
        conv = (step <= tol * err + 1e-9).all(axis=0)
        # a vertex's result is its iterate when it converged: converged vertices that stay in the
        # working set until it shrinks are not updated, so each fit is independent of its batch
        if pending.all():
            v[:, rows] = v_new
            chi2[rows] = e_new.chi2
        else:
            v[:, rows[pending]] = v_new[:, pending]
            chi2[rows[pending]] = e_new.chi2[pending]
        newly = pending & conv
        if newly.any():
            keep(rows[newly], e_new.take(newly), [c[newly] for c in C_a])
        pending &= ~conv
        if not pending.any():
            break
        if pending.mean() < 0.5 or it == max_iterations:  # copying the working set pays off when it halves
            rows = rows[pending]
            ta = ta.subset(pending)
            e = e_new.take(pending)
            C_a = [c[pending] for c in C_a]
            e_new = e
            pending = np.ones(len(rows), dtype=bool)
        else:
            e = e_new
    if pending.any():  # not converged in max_iterations: their last iterate
        keep(rows[pending], e_new.take(pending), [c[pending] for c in C_a])
    active = rows[pending] if pending.any() else rows[:0]
    # covariance and fitted track parameters at the solution (track-major (N, n) components)
    e = _Eval(v, chi2, fin["dz"], fin["rx"], fin["ry"], (fin["Ixx"], fin["Ixy"], fin["Iyy"]),
              (fin["Cxx"], fin["Cxy"], fin["Cyx"], fin["Cyy"]), fin["a"], fin["b"])
    C = _sym3(fin_C)
    tx, ty = _fitted_slopes(t, e)
    ndof = 2 * N - 3 if w is None else (2 * w.sum(axis=0) - 3).astype(np.int64)
    out = dict(position=np.ascontiguousarray(v.T), covariance=C, chi2=chi2, ndof=ndof, iterations=it)
    if w is not None:
        tx, ty = np.where(w > 0, tx, np.nan), np.where(w > 0, ty, np.nan)
    if k != 5:
        out["track_params"] = np.stack([tx.T, ty.T], axis=-1)
        return VertexFit(**out), active
    Ixx, Ixy, Iyy = e.I
    dz = e.dz
    # cov(q_r, (x', y')) at the vertex plane for q = (tx, ty, q/p)
    Cq = [e.Ctp[0:2], e.Ctp[2:4], (Vt[0, 4] + dz * Vt[2, 4], Vt[1, 4] + dz * Vt[3, 4])]
    qop = mt[4] - (Cq[2][0] * e.a + Cq[2][1] * e.b)
    U = [(cx * Ixx + cy * Ixy, cx * Ixy + cy * Iyy) for cx, cy in Cq]  # cov(q, x') P^-1
    # W = cov(q | vertex) = V_qq - U cov(x', q) (the Schur complement), symmetric 3x3
    Vq = {(r, c): Vt[2 + r, 2 + c] for r in range(3) for c in range(r, 3)}
    W = {(r, c): Vq[r, c] - (U[r][0] * Cq[c][0] + U[r][1] * Cq[c][1]) for r in range(3) for c in range(r, 3)}
    for r in range(3):
        for c in range(r):
            W[r, c] = W[c, r]
    if w is not None:  # the masked tracks add nothing to the mother (U, hence M, is 0 there already)
        W = {rc: x * w for rc, x in W.items()}
        qop = np.where(w > 0, qop, np.nan)
        tx, ty = np.where(w > 0, tx, 0.0), np.where(w > 0, ty, 0.0)
    M = [(ux, uy, -(ux * tx + uy * ty)) for ux, uy in U]  # cov(q_i, v) = M_i C_v (Billoir's -W E^T C)
    # momentum and its Jacobian d(px, py, pz)/d(tx, ty, q/p), per track
    p = 1.0 / np.abs(qop) if w is None else np.where(w > 0, 1.0 / np.abs(np.where(w > 0, qop, 1.0)), 0.0)
    n2 = 1.0 + tx * tx + ty * ty
    pz = p / np.sqrt(n2)
    d = (-pz * tx / n2, -pz * ty / n2, -pz / (qop if w is None else np.where(w > 0, qop, 1.0)))
    J = [[tx * d[0] + pz, tx * d[1], tx * d[2]], [ty * d[0], ty * d[1] + pz, ty * d[2]], list(d)]
    mom = np.stack([(tx * pz).sum(axis=0), (ty * pz).sum(axis=0), pz.sum(axis=0)], axis=-1)
    JW = [[sum(J[i][r] * W[r, c] for r in range(3)) for c in range(3)] for i in range(3)]
    cov_p = np.empty((n, 3, 3))
    K = np.empty((n, 3, 3))
    for i in range(3):
        for j in range(3):
            K[:, i, j] = sum(J[i][r] * M[r][j] for r in range(3)).sum(axis=0)
            if j >= i:
                cov_p[:, i, j] = sum(JW[i][c] * J[j][c] for c in range(3)).sum(axis=0)
    cov_p = np.triu(cov_p) + np.swapaxes(np.triu(cov_p, 1), 1, 2) + K @ C @ _tr(K)
    if w is not None:
        tx, ty = np.where(w > 0, tx, np.nan), np.where(w > 0, ty, np.nan)
    out.update(momentum=mom, momentum_covariance=_sym(cov_p), position_momentum_covariance=C @ _tr(K),
               track_params=np.stack([tx.T, ty.T, qop.T], axis=-1))
    return VertexFit(**out), active


def _sym3(c) -> np.ndarray:
    """(n, 3, 3) matrices from the 6 components ``(c00, c01, c02, c11, c12, c22)``."""
    c00, c01, c02, c11, c12, c22 = c
    out = np.empty((len(c00), 3, 3))
    out[:, 0, 0], out[:, 1, 1], out[:, 2, 2] = c00, c11, c22
    out[:, 0, 1] = out[:, 1, 0] = c01
    out[:, 0, 2] = out[:, 2, 0] = c02
    out[:, 1, 2] = out[:, 2, 1] = c12
    return out


# ----------------------------------------------------------------------------- particles
def particle_from_state(states, covariances, z=0.0, p=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A track as ``(position, momentum, 6x6 covariance)`` from its state at the plane ``z``.

    Args:
        states: (..., 5) ``(x, y, tx, ty, q/p)``, or (..., 4) ``(x, y, tx, ty)`` with ``p`` given.
        covariances: (..., k, k).
        z: the plane of the states, mm (exact: its row and column of the covariance are 0).
        p: momentum magnitude (MeV/c) for 4-parameter states, taken as exact.
    """
    s = np.asarray(states, dtype=np.float64)
    V = np.asarray(covariances, dtype=np.float64)
    k = s.shape[-1]
    if k == 4:
        if p is None:
            raise DataError("particle_from_state: 4-parameter states (x, y, tx, ty) need the momentum p")
        qop = 1.0 / np.asarray(p, dtype=np.float64)
        s = np.concatenate([s, np.broadcast_to(qop, s.shape[:-1])[..., None]], axis=-1)
        V5 = np.zeros(V.shape[:-2] + (5, 5))
        V5[..., :4, :4] = V
        V = V5
    elif k != 5:
        raise DataError(f"particle_from_state: states need 4 or 5 parameters, got shape {s.shape}")
    mom, J = _momentum_and_jacobian(s[..., 2:5])
    pos = np.stack([s[..., 0], s[..., 1], np.broadcast_to(np.asarray(z, dtype=np.float64), s.shape[:-1])], axis=-1)
    # Jacobian of (x, y, z, px, py, pz) with respect to (x, y, tx, ty, q/p)
    F = np.zeros(s.shape[:-1] + (6, 5))
    F[..., 0, 0] = 1.0
    F[..., 1, 1] = 1.0
    F[..., 3:, 2:] = J
    return pos, mom, F @ V @ _tr(F)


# ----------------------------------------------------------------------------- derived variables
def _f(a):
    return np.asarray(a, dtype=np.float64)


def impact_parameter(position, momentum, vertex) -> np.ndarray:
    """3D distance (mm) of the line ``position + s * momentum`` from ``vertex`` (``IP``)."""
    x, p, pv = _f(position), _f(momentum), _f(vertex)
    u = p / np.linalg.norm(p, axis=-1, keepdims=True)
    return np.linalg.norm(np.cross(pv - x, u), axis=-1)


def ip_residual(position, momentum, covariance, vertex, vertex_covariance) -> tuple[np.ndarray, np.ndarray]:
    """The line's (x, y) residual at the vertex's z plane and its 2x2 covariance.

    ``r = (x0 + tx (vz - z0) - vx, y0 + ty (vz - z0) - vy)`` with ``tx = px/pz``; the covariance
    propagates the particle's 6x6 covariance and the vertex's 3x3 (see the module docstring).
    Returns ``(r (..., 2), cov (..., 2, 2))``.
    """
    x, p, C6, pv, Cv = _f(position), _f(momentum), _f(covariance), _f(vertex), _f(vertex_covariance)
    dz = pv[..., 2] - x[..., 2]
    tx, ty = p[..., 0] / p[..., 2], p[..., 1] / p[..., 2]
    r = np.stack([x[..., 0] + tx * dz - pv[..., 0], x[..., 1] + ty * dz - pv[..., 1]], axis=-1)
    shape = r.shape[:-1]
    Jp = np.zeros(shape + (2, 6))
    Jp[..., 0, 0] = 1.0
    Jp[..., 1, 1] = 1.0
    Jp[..., 0, 2] = -tx
    Jp[..., 1, 2] = -ty
    Jp[..., 0, 3] = dz / p[..., 2]
    Jp[..., 1, 4] = dz / p[..., 2]
    Jp[..., 0, 5] = -tx * dz / p[..., 2]
    Jp[..., 1, 5] = -ty * dz / p[..., 2]
    Jv = np.zeros(shape + (2, 3))
    Jv[..., 0, 0] = -1.0
    Jv[..., 1, 1] = -1.0
    Jv[..., 0, 2] = tx
    Jv[..., 1, 2] = ty
    cov = Jp @ C6 @ _tr(Jp) + Jv @ Cv @ _tr(Jv)
    return r, _sym(cov)


def ip_chi2(position, momentum, covariance, vertex, vertex_covariance) -> np.ndarray:
    """``IPCHI2``: chi2 (2 dof) of the particle's line passing through the vertex."""
    r, cov = ip_residual(position, momentum, covariance, vertex, vertex_covariance)
    return np.einsum("...i,...ij,...j->...", r, _inv2(cov), r)


def min_ip_chi2(position, momentum, covariance, vertices, vertex_covariances) -> np.ndarray:
    """``MINIPCHI2``: the smallest :func:`ip_chi2` over ``K`` vertices.

    Args:
        position, momentum, covariance: (n, 3), (n, 3), (n, 6, 6).
        vertices: (n, K, 3); rows of NaN are absent vertices (skipped).
        vertex_covariances: (n, K, 3, 3).

    Returns:
        (n,); NaN where no vertex is present.
    """
    pv = _f(vertices)
    c = ip_chi2(_f(position)[:, None], _f(momentum)[:, None], _f(covariance)[:, None], pv, _f(vertex_covariances))
    return np.fmin.reduce(c, axis=1) if c.shape[1] else np.full(len(c), np.nan)


def flight_distance(vertex, end_vertex) -> np.ndarray:
    """``FD``: |end_vertex - vertex| (mm)."""
    return np.linalg.norm(_f(end_vertex) - _f(vertex), axis=-1)


def fd_chi2(vertex, vertex_covariance, end_vertex, end_vertex_covariance) -> np.ndarray:
    """``FDCHI2``: ``d^T (C_pv + C_sv)^-1 d`` with ``d = sv - pv`` (vertices independent)."""
    d = _f(end_vertex) - _f(vertex)
    return np.einsum("...i,...ij,...j->...", d, _inv3(_f(vertex_covariance) + _f(end_vertex_covariance)), d)


def dira(vertex, end_vertex, momentum) -> np.ndarray:
    """``DIRA``: cosine of the angle between the momentum and the flight direction ``sv - pv``."""
    d = _f(end_vertex) - _f(vertex)
    p = _f(momentum)
    return np.einsum("...i,...i->...", d, p) / (np.linalg.norm(d, axis=-1) * np.linalg.norm(p, axis=-1))


def decay_time(vertex, vertex_covariance, end_vertex, end_vertex_covariance, momentum, momentum_covariance,
               mass, end_vertex_momentum_covariance=None) -> tuple[np.ndarray, np.ndarray]:
    """Proper decay time (ns) and its error: ``t = m (d . p) / (|p|^2 c)``, ``d = sv - pv``.

    The error propagates both vertices' covariances, the momentum's and, when given, the
    end vertex–momentum correlation (from :func:`fit_vertex`); the mass is taken as exact.
    """
    d = _f(end_vertex) - _f(vertex)
    p = _f(momentum)
    m = _f(mass)
    p2 = np.einsum("...i,...i->...", p, p)
    dp = np.einsum("...i,...i->...", d, p)
    k = m / C_MM_PER_NS
    t = k * dp / p2
    g_d = (k / p2)[..., None] * p  # dt/dsv = -dt/dpv
    g_p = (k / p2)[..., None] * d - (2.0 * k * dp / (p2 * p2))[..., None] * p
    var = (np.einsum("...i,...ij,...j->...", g_d, _f(vertex_covariance) + _f(end_vertex_covariance), g_d)
           + np.einsum("...i,...ij,...j->...", g_p, _f(momentum_covariance), g_p))
    if end_vertex_momentum_covariance is not None:
        var = var + 2.0 * np.einsum("...i,...ij,...j->...", g_d, _f(end_vertex_momentum_covariance), g_p)
    return t, np.sqrt(var)


def doca(position1, momentum1, position2, momentum2) -> np.ndarray:
    """``DOCA``: distance of closest approach (mm) of two lines (parallel lines: their distance)."""
    x1, x2 = _f(position1), _f(position2)
    u1 = _f(momentum1)
    u2 = _f(momentum2)
    u1 = u1 / np.linalg.norm(u1, axis=-1, keepdims=True)
    u2 = u2 / np.linalg.norm(u2, axis=-1, keepdims=True)
    nrm = np.cross(u1, u2)
    nn = np.linalg.norm(nrm, axis=-1)
    d = x2 - x1
    par = nn < 1e-12
    skew = np.abs(np.einsum("...i,...i->...", d, nrm)) / np.where(par, 1.0, nn)
    parallel = np.linalg.norm(np.cross(d, u1), axis=-1)
    return np.where(par, parallel, skew)


def corrected_mass(mass, momentum, vertex, end_vertex) -> np.ndarray:
    """``MCORR`` (MeV/c^2): ``sqrt(M^2 + pT_miss^2) + pT_miss``, ``pT_miss`` = |p x d̂|, the
    visible momentum transverse to the flight direction ``d = sv - pv``."""
    d = _f(end_vertex) - _f(vertex)
    u = d / np.linalg.norm(d, axis=-1, keepdims=True)
    ptm = np.linalg.norm(np.cross(_f(momentum), u), axis=-1)
    m = _f(mass)
    return np.sqrt(m * m + ptm * ptm) + ptm
