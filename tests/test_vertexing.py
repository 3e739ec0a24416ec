"""The vertex fit and the derived variables (mambah.reconstruction.vertexing) against independent
computations: scipy's least_squares on the full (vertex + track parameters) chi2, the chi2
distribution of fits to simulated Gaussian measurements, finite-difference error propagation and
brute-force geometry."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize, stats

from mambah.errors import DataError
from mambah.reconstruction import vertexing as vx


def simulate(n, N, k=5, seed=1, zsv=(0.0, 50.0)):
    """True vertices, measured states (truth + Gaussian noise from the covariance), covariances,
    the states' planes and the true states. Covariances: position 10-50 um, slopes 0.2-2 mrad,
    x-tx correlation in [-0.9, 0.5], q/p 0.5 %."""
    rng = np.random.default_rng(seed)
    v = np.stack([rng.normal(0, 0.5, n), rng.normal(0, 0.5, n), rng.uniform(*zsv, n)], -1)
    tx, ty = rng.normal(0, 0.15, (n, N)), rng.normal(0, 0.15, (n, N))
    p = np.exp(rng.uniform(np.log(2e3), np.log(1e5), (n, N)))
    qop = rng.choice([-1, 1], (n, N)) / p
    z = v[:, None, 2] + rng.normal(-10, 10, (n, N))
    truth = np.stack([v[:, None, 0] + tx * (z - v[:, None, 2]), v[:, None, 1] + ty * (z - v[:, None, 2]), tx, ty, qop],
                     -1)[..., :k]
    sx, st, rho = rng.uniform(0.01, 0.05, (n, N)), rng.uniform(2e-4, 2e-3, (n, N)), rng.uniform(-0.9, 0.5, (n, N))
    cov = np.zeros((n, N, k, k))
    for a, b in ((0, 2), (1, 3)):
        cov[..., a, a], cov[..., b, b] = sx**2, st**2
        cov[..., a, b] = cov[..., b, a] = rho * sx * st
    cov[..., 0, 1] = cov[..., 1, 0] = 0.02 * sx * sx
    if k == 5:
        sq = 0.005 * np.abs(qop)
        cov[..., 4, 4] = sq**2
        cov[..., 2, 4] = cov[..., 4, 2] = 0.1 * st * sq
    meas = truth + np.einsum("ntij,ntj->nti", np.linalg.cholesky(cov), rng.standard_normal((n, N, k)))
    return v, meas, cov, z, truth


def scipy_fit(m, V, z):
    """One vertex: minimise the full chi2 over (v, q_1..q_N) with scipy; (v, chi2, cov(v))."""
    N, k = m.shape
    L = np.linalg.cholesky(np.linalg.inv(V))  # G = L L^T: whitened residual L^T r

    def resid(par):
        v, q = par[:3], par[3:].reshape(N, k - 2)
        h = np.concatenate([np.stack([v[0] + q[:, 0] * (z - v[2]), v[1] + q[:, 1] * (z - v[2])], -1), q], -1)
        return np.einsum("tki,tk->ti", L, m - h).ravel()

    x0 = np.r_[m[:, 0].mean(), m[:, 1].mean(), z.mean(), m[:, 2:].ravel()]
    s = optimize.least_squares(resid, x0, xtol=1e-15, ftol=1e-15, gtol=1e-15, x_scale="jac")
    cov = np.linalg.inv(s.jac.T @ s.jac)
    return s.x[:3], 2 * s.cost, cov[:3, :3]


@pytest.mark.parametrize("N,k", [(2, 4), (3, 5), (4, 4)])
def test_fit_equals_scipy_least_squares(N, k):
    v, m, V, z, _ = simulate(150, N, k, seed=N + k)
    fit = vx.fit_vertex(m, V, z, tol=1e-6)
    assert fit.ndof == 2 * N - 3
    for i in range(len(m)):
        pos, chi2, cov = scipy_fit(m[i], V[i], z[i])
        err = np.sqrt(np.diag(cov))
        np.testing.assert_allclose(fit.position[i], pos, atol=1e-3 * err.min())
        np.testing.assert_allclose(fit.chi2[i], chi2, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(fit.covariance[i], cov, rtol=1e-3, atol=1e-3 * err.min() ** 2)


@pytest.mark.parametrize("N", [2, 3, 5])
def test_chi2_is_chi2_distributed_and_pulls_are_normal(N):
    n = 20_000
    v, m, V, z, truth = simulate(n, N, 5, seed=10 + N)
    fit = vx.fit_vertex(m, V, z)
    ndf = 2 * N - 3
    # mean of chi2(ndf) has standard error sqrt(2 ndf / n)
    assert abs(fit.chi2.mean() - ndf) < 4 * np.sqrt(2 * ndf / n)
    assert stats.kstest(stats.chi2.sf(fit.chi2, ndf), "uniform").pvalue > 1e-3
    pulls = (fit.position - v) / np.sqrt(np.diagonal(fit.covariance, axis1=1, axis2=2))
    np.testing.assert_allclose(pulls.mean(axis=0), 0.0, atol=0.03)
    np.testing.assert_allclose(pulls.std(axis=0), 1.0, atol=0.02)
    p_true = vx.state_momentum(truth).sum(axis=1)
    mp = (fit.momentum - p_true) / np.sqrt(np.diagonal(fit.momentum_covariance, axis1=1, axis2=2))
    np.testing.assert_allclose(mp.mean(axis=0), 0.0, atol=0.03)
    np.testing.assert_allclose(mp.std(axis=0), 1.0, atol=0.03)


def test_the_chi2_test_can_fail():
    """Covariances that understate the noise by 20 % fail the same checks."""
    v, m, V, z, _ = simulate(20_000, 3, 4, seed=3)
    fit = vx.fit_vertex(m, V / 1.44, z)
    assert abs(fit.chi2.mean() - 3) > 4 * np.sqrt(6 / 20_000)
    assert stats.kstest(stats.chi2.sf(fit.chi2, 3), "uniform").pvalue < 1e-3


def test_mother_covariance_equals_finite_difference_propagation_of_the_fit():
    """cov(P) and cov(v, P) from the fit equal the covariance of the fitted (v, P) over
    many noise draws of the same vertex (a Monte Carlo propagation, independent of the algebra)."""
    rng = np.random.default_rng(4)
    _, m, V, z, truth = simulate(1, 3, 5, seed=5)
    reps = 20_000
    Lc = np.linalg.cholesky(V[0])
    noisy = truth[0] + np.einsum("tij,rtj->rti", Lc, rng.standard_normal((reps, 3, 5)))
    fit = vx.fit_vertex(noisy, np.broadcast_to(V[0], (reps, 3, 5, 5)), np.broadcast_to(z[0], (reps, 3)))
    vp = np.concatenate([fit.position, fit.momentum], axis=1)
    emp = np.cov(vp.T)
    _, _, cov6 = vx.VertexFit.particle(fit)
    pred = cov6.mean(axis=0)
    sig = np.sqrt(np.diag(pred))
    corr_err = np.abs(emp - pred) / np.outer(sig, sig)
    assert corr_err.max() < 0.05  # ~ 5 / sqrt(reps) on each normalised element


def test_bad_input_is_refused():
    _, m, V, z, _ = simulate(10, 2, 4)
    with pytest.raises(DataError, match="at least 2 tracks"):
        vx.fit_vertex(m[:, :1], V[:, :1], z[:, :1])
    bad = V.copy()
    bad[3, 1, 0, 0] = -1e-4
    with pytest.raises(DataError, match=r"not symmetric positive definite.*\(3, 1\)"):
        vx.fit_vertex(m, bad, z)
    nan = m.copy()
    nan[7, 0, 2] = np.nan
    with pytest.raises(DataError, match=r"non-finite track state at \(vertex, track\) = \(7, 0\)"):
        vx.fit_vertex(nan, V, z)
    with pytest.raises(DataError, match="shape"):
        vx.fit_vertex(m, V[..., :3, :3], z)


def test_ip_chi2_equals_the_chi2_of_a_track_forced_through_the_vertex():
    """IPCHI2 = min over the track parameters and the PV position of the track's chi2 plus the PV's,
    with the line through the PV (scipy), for PVs on the true line (smeared by their covariance):
    the linearised IPCHI2 is exact to the bilinear term, well below 1 % for compatible vertices."""
    rng = np.random.default_rng(6)
    _, m, V, z, truth = simulate(40, 2, 5, seed=7)
    s, Vs, zs = m[:, 0], V[:, 0], z[:, 0]
    A = rng.normal(0, 1, (40, 3, 3))
    S = np.diag([0.01, 0.01, 0.05])
    Cpv = S @ A @ np.swapaxes(A, 1, 2) @ S + np.diag([1e-4, 1e-4, 1e-3])
    dzp = rng.normal(-5, 3, 40)
    on_line = np.stack([truth[:, 0, 0] + truth[:, 0, 2] * dzp, truth[:, 0, 1] + truth[:, 0, 3] * dzp, zs + dzp], -1)
    pv = on_line + np.einsum("nij,nj->ni", np.linalg.cholesky(Cpv), rng.standard_normal((40, 3)))
    pos, mom, cov6 = vx.particle_from_state(s, Vs, zs)
    got = vx.ip_chi2(pos, mom, cov6, pv, Cpv)
    for i in range(40):
        Lt = np.linalg.cholesky(np.linalg.inv(Vs[i]))
        Lp = np.linalg.cholesky(np.linalg.inv(Cpv[i]))

        def resid(par):
            v, q = par[:3], par[3:]
            h = np.r_[v[0] + q[0] * (zs[i] - v[2]), v[1] + q[1] * (zs[i] - v[2]), q]
            return np.r_[Lt.T @ (s[i] - h), Lp.T @ (pv[i] - v)]

        r = optimize.least_squares(resid, np.r_[pv[i], s[i, 2:]], xtol=1e-15, ftol=1e-15, gtol=1e-15, x_scale="jac")
        np.testing.assert_allclose(got[i], 2 * r.cost, rtol=1e-2, atol=1e-4)
    # the impact parameter: brute-force distance of the line from the PV
    ip = vx.impact_parameter(pos, mom, pv)
    for i in range(5):
        d = optimize.minimize_scalar(lambda t: np.linalg.norm(pos[i] + t * mom[i] - pv[i])).fun
        np.testing.assert_allclose(ip[i], d, rtol=1e-6)


def test_min_ip_chi2_skips_absent_vertices():
    _, m, V, z, _ = simulate(4, 2, 5)
    pos, mom, cov6 = vx.particle_from_state(m[:, 0], V[:, 0], z[:, 0])
    pvs = np.stack([pos + [0.1, 0, 0], pos + [0, 0.02, 5.0], np.full_like(pos, np.nan)], axis=1)
    covs = np.broadcast_to(np.eye(3) * 1e-4, (4, 3, 3, 3)).copy()
    each = np.stack([vx.ip_chi2(pos, mom, cov6, pvs[:, j], covs[:, j]) for j in range(2)], 1)
    np.testing.assert_allclose(vx.min_ip_chi2(pos, mom, cov6, pvs, covs), each.min(axis=1))
    pvs[:] = np.nan
    assert np.isnan(vx.min_ip_chi2(pos, mom, cov6, pvs, covs)).all()


def test_flight_dira_time_doca_mcorr_against_direct_computations():
    rng = np.random.default_rng(8)
    n = 50
    pv = rng.normal(0, 0.05, (n, 3))
    sv = pv + rng.normal(0, 1, (n, 3)) + [0, 0, 10]
    p = rng.normal(0, 2000, (n, 3)) + [0, 0, 50_000]
    A, B, K = (rng.normal(0, 1, (n, 3, 3)) for _ in range(3))
    Cpv, Csv, Cp = A @ A.transpose(0, 2, 1) * 1e-4, B @ B.transpose(0, 2, 1) * 1e-3, K @ K.transpose(0, 2, 1) * 1e3
    Csp = rng.normal(0, 1e-2, (n, 3, 3))
    d = sv - pv
    np.testing.assert_allclose(vx.flight_distance(pv, sv), np.sqrt((d * d).sum(1)))
    np.testing.assert_allclose(vx.fd_chi2(pv, Cpv, sv, Csv), [d[i] @ np.linalg.solve(Cpv[i] + Csv[i], d[i]) for i in range(n)])
    ang = np.arccos(np.clip(vx.dira(pv, sv, p), -1, 1))
    np.testing.assert_allclose(ang, [np.arctan2(np.linalg.norm(np.cross(d[i], p[i])), d[i] @ p[i]) for i in range(n)], atol=1e-7)
    mass = 5619.6
    t, et = vx.decay_time(pv, Cpv, sv, Csv, p, Cp, mass, Csp)

    def tfun(x):  # x = (pv, sv, p) flattened, one row
        return mass * ((x[3:6] - x[:3]) @ x[6:]) / (x[6:] @ x[6:]) / vx.C_MM_PER_NS

    for i in range(10):
        x0 = np.r_[pv[i], sv[i], p[i]]
        assert tfun(x0) == pytest.approx(t[i], rel=1e-12)
        g = optimize.approx_fprime(x0, tfun, np.r_[np.full(6, 1e-6), np.full(3, 1e-2)])
        C = np.zeros((9, 9))
        C[:3, :3], C[3:6, 3:6], C[6:, 6:], C[3:6, 6:], C[6:, 3:6] = Cpv[i], Csv[i], Cp[i], Csp[i], Csp[i].T
        assert np.sqrt(g @ C @ g) == pytest.approx(et[i], rel=1e-4)
    # DOCA: brute-force minimum distance between the two lines
    x1, x2 = rng.normal(0, 1, (n, 3)), rng.normal(0, 1, (n, 3))
    u1, u2 = rng.normal(0, 0.1, (n, 3)) + [0, 0, 1], rng.normal(0, 0.1, (n, 3)) + [0, 0, 1]
    got = vx.doca(x1, u1, x2, u2)
    for i in range(10):
        r = optimize.minimize(lambda s: np.linalg.norm(x1[i] + s[0] * u1[i] - x2[i] - s[1] * u2[i]), [0, 0],
                              method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-12})
        assert got[i] == pytest.approx(r.fun, abs=1e-7)
    assert vx.doca(x1[:1], u1[:1], x1[:1] + [1.0, 0, 0], u1[:1])[0] == pytest.approx(
        np.linalg.norm(np.cross([1.0, 0, 0], u1[0] / np.linalg.norm(u1[0]))))
    # MCORR: a parent of mass M decaying to a visible system + one massless particle with momentum
    # transverse to the flight direction and none along it, in the lab, gives back... the visible
    # pT_miss = |p_nu|; sqrt(M_vis^2 + pT^2) + pT is then checked against its definition
    mvis = rng.uniform(2000, 5000, n)
    ptm = np.sqrt(np.maximum((p * p).sum(1) - ((p * d).sum(1) / np.linalg.norm(d, axis=1)) ** 2, 0))
    np.testing.assert_allclose(vx.corrected_mass(mvis, p, pv, sv), np.sqrt(mvis**2 + ptm**2) + ptm)


def test_corrected_mass_recovers_the_parent_mass_for_one_missing_massless_particle_at_rest_frame_edge():
    """A parent of mass M at rest-frame decay angle 90 deg to its flight: visible (mass m) and a
    massless neutrino back to back transverse to the flight direction in the parent frame, boosted
    along the flight direction: MCORR = M exactly (the neutrino has no longitudinal momentum)."""
    M, m = 5619.6, 2286.5
    pstar = (M * M - m * m) / (2 * M)
    gamma_beta = np.array([3.0, 10.0, 30.0])
    flight = np.array([0.1, -0.2, 1.0])
    u = flight / np.linalg.norm(flight)
    perp = np.cross(u, [1.0, 0, 0])
    perp /= np.linalg.norm(perp)
    e_vis_star = np.sqrt(pstar**2 + m * m)
    p_vis = pstar * perp[None, :] + (gamma_beta * e_vis_star)[:, None] * u[None, :]
    pv = np.zeros((3, 3))
    sv = np.broadcast_to(flight * 7.0, (3, 3))
    np.testing.assert_allclose(vx.corrected_mass(np.full(3, m), p_vis, pv, sv), M, rtol=1e-12)


def test_fits_stopped_before_convergence_are_reported():
    _, m, V, z, _ = simulate(500, 2, 5, seed=12)
    with pytest.warns(vx.VertexFitWarning, match=r"of 500 vertex fits did not converge in 1 iterations") as rec:
        early = vx.fit_vertex(m, V, z, max_iterations=1)
    w = rec[0].message
    assert w.n == 500 and 0 < w.count <= 500 and len(w.rows) == min(w.count, 20)
    full = vx.fit_vertex(m, V, z)
    assert np.isfinite(early.position).all() and np.isfinite(early.momentum_covariance).all()
    assert (full.chi2 <= early.chi2 + 1e-9).all()  # iterating further never raised the chi2


def test_chunked_and_threaded_fits_equal_the_fit_of_the_whole_bit_for_bit(monkeypatch):
    """Each vertex's fit is independent of its batch: chunks and threads change nothing; errors and
    warnings name the rows of the whole input."""
    _, m, V, z, _ = simulate(700, 3, 5, seed=21)
    mask = np.ones((700, 3), dtype=bool)
    mask[::4, 2] = False  # a quarter of the vertices have 2 tracks
    tol = 1e-6  # tight: the fits converge at different iterations (where a batch-dependent fit would differ)
    whole = vx.fit_vertex(m, V, z, mask=mask, threads=1, tol=tol)
    monkeypatch.setattr(vx, "_CHUNK_ROWS", 64)
    for threads in (1, 2, 3):
        part = vx.fit_vertex(m, V, z, mask=mask, threads=threads, tol=tol)
        for f in ("position", "covariance", "chi2", "ndof", "track_params", "momentum", "momentum_covariance",
                  "position_momentum_covariance"):
            np.testing.assert_array_equal(getattr(part, f), getattr(whole, f), err_msg=f)
    # fits of a subset equal the same vertices' fits in the whole batch
    sub = vx.fit_vertex(m[300:364], V[300:364], z[300:364], mask=mask[300:364], tol=tol)
    np.testing.assert_array_equal(sub.position, whole.position[300:364])
    bad = V.copy()
    bad[650, 1, 0, 0] = -1e-4
    with pytest.raises(DataError, match=r"\(vertex, track\) = \(650, 1\)"):
        vx.fit_vertex(m, bad, z, threads=2)
    with pytest.warns(vx.VertexFitWarning, match="of 700 vertex fits") as rec:
        vx.fit_vertex(m, V, z, max_iterations=1, threads=2)
    with pytest.warns(vx.VertexFitWarning) as rec1:
        vx.fit_vertex(m, V, z, max_iterations=1, threads=1)
    assert rec[0].message.count == rec1[0].message.count and rec[0].message.rows == rec1[0].message.rows
