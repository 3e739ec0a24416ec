"""Kinematics: momentum, transverse momentum and pseudorapidity, with one guard each.

The only place mambah computes η. Inputs are arrays of momentum components (any unit; outputs
are in the same unit); the arithmetic is float64, except in :func:`p_eta32`, the float32 fast path
that computes the features of the tracking networks (:mod:`mambah.nn.tracking`).

Example:
    >>> from mambah.physics import eta, p_eta
    >>> float(eta(0.0, 1.0, 0.0))
    0.0
"""

from __future__ import annotations

import numpy as np

__all__ = ["boost_to_lab", "boost_to_rest", "p_mag", "pt", "eta", "p_eta", "p_eta32", "ETA_LIMIT", "PT_FLOOR32", "rebuild_momentum", "state_at_beam"]

#: |η| given to a momentum along the beam (pT = 0), where asinh(pz / pT) is infinite.
ETA_LIMIT = 1e3
#: Floor of pT in :func:`p_eta32` (same unit as the momentum; 1e-6 MeV/c in mambah's units).
PT_FLOOR32 = 1e-6


def _f64(*a):
    return [np.asarray(x, dtype=np.float64) for x in a]


def p_mag(px, py, pz) -> np.ndarray:
    """|p| = sqrt(px² + py² + pz²)."""
    px, py, pz = _f64(px, py, pz)
    return np.sqrt(px * px + py * py + pz * pz)


def pt(px, py) -> np.ndarray:
    """Transverse momentum sqrt(px² + py²)."""
    px, py = _f64(px, py)
    return np.hypot(px, py)


def _eta(pt_, pz) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.arcsinh(np.where(pt_ > 0, pz / np.maximum(pt_, 1e-300), np.sign(pz) * ETA_LIMIT))


def eta(px, py, pz) -> np.ndarray:
    """Pseudorapidity η = asinh(pz / pT); ±:data:`ETA_LIMIT` mapped through asinh for pT = 0
    (a momentum along the beam), so the result is always finite."""
    px, py, pz = _f64(px, py, pz)
    return _eta(np.hypot(px, py), pz)


def p_eta(px, py, pz) -> tuple[np.ndarray, np.ndarray]:
    """(|p|, η) in one pass (the conditions of every tracking and PID model)."""
    px, py, pz = _f64(px, py, pz)
    t = np.hypot(px, py)
    return np.sqrt(t * t + pz * pz), _eta(t, pz)


def p_eta32(px, py, pz) -> tuple[np.ndarray, np.ndarray]:
    """(|p|, η) in float32 arithmetic: the fast path for the tracking networks' features.

    The inputs are cast to float32 and every operation is float32 (half the memory traffic of
    :func:`p_eta` on millions of tracks; the networks take float32 anyway). η = asinh(pz / pT)
    with pT floored at :data:`PT_FLOOR32` instead of :func:`p_eta`'s ±:data:`ETA_LIMIT` for
    pT = 0, so a track along the beam gets |η| = asinh(|pz| / 1e-6), finite. The trained
    efficiency and resolution models (:mod:`mambah.nn.tracking`) were fitted on exactly these
    numbers: change this function and their outputs change.

    Returns:
        (p, eta): float32 arrays, p in the unit of the inputs.
    """
    px = np.asarray(px, dtype=np.float32)
    py = np.asarray(py, dtype=np.float32)
    pz = np.asarray(pz, dtype=np.float32)
    t = np.hypot(px, py)
    return np.sqrt(t * t + pz * pz), np.arcsinh(pz / np.maximum(t, np.float32(PT_FLOOR32)))


def rebuild_momentum(px, py, pz, r, dtx, dty) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Momentum with magnitude p (1 + r) and slopes (px/pz + dtx, py/pz + dty); float64 arrays.

    The parameterisation of a momentum measurement (relative magnitude residual and slope
    residuals). Tracks with pz == 0 (never reconstructed in a forward tracker) keep their direction.
    """
    px, py, pz = _f64(px, py, pz)
    p = np.sqrt(px * px + py * py + pz * pz)
    ok = pz != 0
    safe = np.where(ok, pz, 1.0)
    tx = np.where(ok, px / safe + dtx, 0.0)
    ty = np.where(ok, py / safe + dty, 0.0)
    p_reco = p * (1.0 + r)
    pz_new = np.sign(safe) * p_reco / np.sqrt(1.0 + tx * tx + ty * ty)
    scale = 1.0 + r
    return (
        np.where(ok, tx * pz_new, px * scale),
        np.where(ok, ty * pz_new, py * scale),
        np.where(ok, pz_new, pz * scale),
    )


def boost_to_lab(p4, mother, mass=None, xp=np):
    """Boost four-vectors from the rest frame of ``mother`` to the frame where it has ``mother``.

    ``p' = p + (gamma^2/(gamma+1) (beta.p) + gamma E) beta``, ``E' = gamma (E + beta.p)`` with
    ``beta = p_mother/E_mother``, ``gamma = E_mother/m`` (Jackson, Classical Electrodynamics,
    Eq. 11.19; gamma^2/(gamma+1) = (gamma-1)/beta^2 avoids 0/0 at rest).

    Args:
        p4: shape (4, ...) px, py, pz, E in the mother's rest frame.
        mother: shape (4, ...) the mother's four-momentum, broadcast against ``p4[i]``.
        mass: the mother's mass (default: from ``mother``).
        xp: the array module (numpy, or tensorflow inside a tf.function).
    """
    E = mother[3]
    if mass is None:
        m = xp.sqrt(xp.maximum(E**2 - mother[0] ** 2 - mother[1] ** 2 - mother[2] ** 2, 0.0))
    else:
        m = mass
    gamma = E / m
    bx, by, bz = mother[0] / E, mother[1] / E, mother[2] / E
    bp = bx * p4[0] + by * p4[1] + bz * p4[2]
    coef = gamma**2 / (gamma + 1.0) * bp + gamma * p4[3]
    return xp.stack([p4[0] + coef * bx, p4[1] + coef * by, p4[2] + coef * bz, gamma * (p4[3] + bp)])


def boost_to_rest(p4, frame, xp=np):
    """Four-vectors ``p4`` (4, ...) seen in the rest frame of ``frame`` (4, ...): the pure boost
    by ``-p_frame / E_frame`` (the inverse of :func:`boost_to_lab`)."""
    return boost_to_lab(p4, xp.stack([-frame[0], -frame[1], -frame[2], frame[3]]), xp=xp)


def state_at_beam(px, py, pz, x, y, z, charge) -> tuple[np.ndarray, np.ndarray]:
    """The straight-line track state ``(x, y, tx, ty, q/p)`` (n, 5) at the plane ``z_s`` (n,) where
    the line through the origin ``(x, y, z)`` [mm] along the momentum [MeV/c] passes closest to the
    beam axis (``q/p`` in 1/(MeV/c)); float64. Needs ``pz > 0`` (a forward track): ``pz <= 0`` gives
    non-finite slopes, which the callers refuse."""
    px, py, pz, x, y, z = _f64(px, py, pz, x, y, z)
    with np.errstate(divide="ignore", invalid="ignore"):
        tx, ty = px / pz, py / pz
    t2 = tx * tx + ty * ty
    dz = -np.where(t2 > 0, (x * tx + y * ty) / np.where(t2 > 0, t2, 1.0), 0.0)
    p = np.sqrt(px * px + py * py + pz * pz)
    state = np.stack([x + tx * dz, y + ty * dz, tx, ty, np.asarray(charge, np.float64) / p], axis=-1)
    return state, z + dz
