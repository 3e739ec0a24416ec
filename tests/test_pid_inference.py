"""Fast PID inference (mambah.nn.inference) against the numpy reference: transforms, generator, noise, spikes."""

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from mambah.errors import DataError, OutOfRangeWarning
from mambah.nn import inference
from mambah.nn.pidmodel import PidModel
from mambah.nn.preprocessing import QuantileGaussianizer
from mambah.physics import describe_column

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "models" / "pid-p-dllp-lhcb-run3"
CONDS, TARGS = ["P", "ETA", "nTracks"], ["DLLp", "DLLK"]
SPIKE, TOP = 5.0, 10.0  # a default value inside the target distribution; a saturated maximum


def _training_sample(n=20000, seed=7):
    rng = np.random.default_rng(seed)
    c = np.column_stack([
        rng.exponential(30000.0, n) + 3000.0,                       # momentum-like, continuous
        rng.uniform(2.0, 5.0, n),                                   # pseudorapidity
        rng.poisson(80, n).astype(float),                           # integer occupancy: ties
    ])
    y = np.column_stack([
        np.where(rng.random(n) < 0.4, SPIKE, rng.normal(SPIKE, 20.0, n)),  # a spike in the middle
        np.minimum(rng.normal(0.0, 6.0, n), TOP),                          # saturated at the top
    ])
    return c, y


@pytest.fixture(scope="module")
def model():
    from mambah.nn.layers import build_generator

    c, y = _training_sample()
    cond_pre = QuantileGaussianizer(n_knots=501).fit(c)
    targ_pre = QuantileGaussianizer(n_knots=501).fit(y)
    gen = build_generator(3, 5, 2, width=8, depth=2)  # odd noise dimension on purpose
    card = {"name": "tiny", "kind": "pid", "conditions": [describe_column(x) for x in CONDS],
            "targets": [describe_column(x) for x in TARGS], "hyperparameters": {"n_noise": 5}}
    return PidModel(gen, cond_pre, targ_pre, card)


def _probe_conditions(model, n=4000, seed=3):
    """Training-like rows plus every distinct knot, values between knots and outside the range."""
    c, _ = _training_sample(n, seed)
    q = model.cond_pre
    lo, hi = q.range_()
    extra = [np.column_stack([q.knots_[j] for j in range(3)]),                       # on the knots (ties)
             np.column_stack([0.5 * (q.knots_[j, 1:] + q.knots_[j, :-1]) for j in range(3)]),
             np.vstack([lo - 1.0, hi + 1.0, lo - 1e6, hi + 1e6, lo, hi])]             # outside, edges
    return np.vstack([c] + extra)


def test_condition_transform_matches_the_reference(model):
    import tensorflow as tf

    x = _probe_conditions(model)
    ref = model.cond_pre.transform(x, mode="mid")
    got = inference._compiled(model).pre(tf.constant(x)).numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=2e-6, rtol=0)
    # a tie (an integer occupancy) gets the middle of its CDF jump, like the reference: one value per integer
    on80 = x[:, 2] == 80
    assert np.ptp(got[on80, 2]) == 0 and abs(got[on80, 2][0] - ref[on80, 2][0]) < 2e-6
    # outside the range: clipped to Phi^-1(EPS) ... Phi^-1(1 - EPS), as in the reference
    assert got[:, 0].min() == pytest.approx(ref[:, 0].min(), abs=2e-6) and got[:, 0].min() < -5


@pytest.mark.parametrize("close, max_cells, modes, steps", [
    (0, 1 << 16, ["uniform", "uniform", "uniform"], 1),
    (2, 2048, ["uniform", "uniform", "uniform"], 2),          # two entries in one cell: a second step
    (3, 2048, ["uniform", "uniform", "bits"], 2),             # three: the bit-pattern grid around them
])
def test_locator_is_searchsorted(close, max_cells, modes, steps):
    """The grid search equals searchsorted: one step, two steps, entries too close for equal cells."""
    rng = np.random.default_rng(5)
    near = 0.505 + 1e-9 * np.arange(close)  # `close` entries closer than a grid cell
    rows = [-np.log1p(-np.linspace(0.0, 0.99, 300)), np.arange(0.0, 50.0),      # quantile-like tables
            np.unique(np.concatenate([np.linspace(0.0, 1.0, 101) + rng.uniform(0, 1e-3, 101), near]))]
    loc = inference._Locator(rows, max_cells=max_cells)
    assert loc.modes == modes and loc.steps == steps
    _check_locator(loc, rows, near, rng)


def _check_locator(loc, rows, near, rng):
    """``loc`` on the entries, their float neighbours, ``near``, far outside values and random ones
    gives ``np.searchsorted(side="right")`` exactly (denormal values left out: TensorFlow's CPU kernels
    flush them to 0, so -5e-324 <= -0.0 there)."""
    def probes(r):
        p = np.concatenate([r, np.nextafter(r, np.inf), np.nextafter(r, -np.inf), r + 1e-13, r - 1e-13, near,
                            [-1e300, 1e300, r[0] - 1e6, r[-1] + 1e6, 0.0, -0.0],
                            rng.uniform(r[0] - 1, r[-1] + 1, 2000)])
        return p[(p == 0) | (np.abs(p) >= np.finfo(float).tiny)]
    n = min(len(probes(r)) for r in rows)
    v = np.column_stack([rng.permutation(probes(r))[:n] for r in rows])
    v = np.vstack([v, np.column_stack([probes(r)[:n] for r in rows])])  # every entry and its neighbours
    for jit in (False, True):  # the plain graph and the XLA-compiled one (full chunks, XLA_MIN_ROWS)
        got = loc(v, jit=jit).numpy()
        for j, r in enumerate(rows):
            np.testing.assert_array_equal(got[:, j] - j * loc.width, np.searchsorted(r, v[:, j], side="right"))


def test_locator_grids_crowded_and_mixed_tables():
    """Tables that crowd at one point (a classifier probability's quantiles: half of them below 1e-5;
    a DLL's with a cluster inside its range) get the bit-pattern grid; one with two far clusters of
    entries 1e-12 apart fits no grid and is searched; the others keep equal cells; every column exact."""
    rng = np.random.default_rng(8)
    prob = np.unique(np.concatenate([np.geomspace(1e-9, 1e-5, 500), np.linspace(1e-5, 0.95, 501)]))
    cluster = np.unique(np.concatenate([np.linspace(-15.0, 15.0, 400), -14.2358 + 1e-7 * np.arange(200)]))
    two = np.unique(np.concatenate([np.linspace(0.0, 1.0, 50), 0.2 + 1e-12 * np.arange(4), 0.8 + 1e-12 * np.arange(4)]))
    plain = np.linspace(3000.0, 150000.0, 1001)
    rows = [plain, prob, two, cluster, np.arange(0.0, 50.0)]
    # (as the equal-cell grid alone did, every column would have been searched)
    loc = inference._Locator(rows)
    assert loc.modes == ["uniform", "bits", "search", "bits", "uniform"] and loc.steps <= 2
    _check_locator(loc, rows, np.concatenate([prob[:5], cluster[200:205], two[20:30]]), rng)
    # the columns in any order, and the bit grid alone
    _check_locator(inference._Locator(rows[::-1]), rows[::-1], prob[:5], rng)
    assert inference._Locator([prob]).modes == ["bits"]
    _check_locator(inference._Locator([prob]), [prob], prob[:3], rng)


def test_inverse_transform_matches_the_reference_and_keeps_spikes(model):
    import tensorflow as tf

    q = model.targ_pre
    y = np.column_stack([np.linspace(-8, 8, 20001), np.linspace(8, -8, 20001)]).astype(np.float32)
    y = np.vstack([y, [[-30, 30], [30, -30]]]).astype(np.float32)
    ref = q.inverse_transform(y)
    got = inference._compiled(model).post(tf.constant(y)).numpy()
    assert got.dtype == np.float64
    scale = q.knots_[:, -1] - q.knots_[:, 0]
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9 * scale.max())
    # clamped to the training range
    np.testing.assert_array_equal(got.min(axis=0), q.knots_[:, 0])
    np.testing.assert_array_equal(got.max(axis=0), q.knots_[:, -1])
    # a spike comes out as exactly the value, wherever the reference has it
    spike, top = ref[:, 0] == SPIKE, ref[:, 1] == TOP
    assert spike.mean() > 0.03 and top.mean() > 0.03
    assert np.all(got[spike, 0] == SPIKE) and np.all(got[top, 1] == TOP)
    assert np.array_equal(got[:, 0] == SPIKE, spike) and np.array_equal(got[:, 1] == TOP, top)


def test_generate_equals_keras_on_numpy_inputs(model):
    x = _probe_conditions(model)
    noise = np.random.default_rng(11).standard_normal((len(x), model.n_noise), dtype=np.float32)
    z = model.generator([model.cond_pre.transform(x, mode="mid"), noise], training=False).numpy()
    want = model.targ_pre.inverse_transform(z)
    with pytest.warns(OutOfRangeWarning):
        got = inference.generate(model, x, noise=noise, chunk=1000)
    scale = model.targ_pre.knots_[:, -1] - model.targ_pre.knots_[:, 0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * scale.max())
    with pytest.warns(OutOfRangeWarning):
        np.testing.assert_allclose(inference.generate_reference(model, x, noise=noise), want, rtol=0, atol=1e-12)


def test_reproducible_and_independent_of_chunking(model):
    x = np.clip(_training_sample(5000, seed=4)[0], *model.cond_pre.range_())
    a = inference.generate(model, x, 123)
    b = inference.generate(model, x, np.random.default_rng(123), chunk=1024, workers=3)
    c = inference.generate(model, x, 123, chunk=777, workers=1)
    np.testing.assert_array_equal(a, inference.generate(model, x, 123))
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5)
    np.testing.assert_allclose(c, a, rtol=0, atol=1e-5)
    assert not np.allclose(a, inference.generate(model, x, 124))
    # the noise of a seed is draw_noise's
    np.testing.assert_array_equal(inference.generate(model, x, noise=inference.draw_noise(123, len(x), 5)), a)
    # a Generator is advanced: two calls in a row differ
    rng = np.random.default_rng(9)
    assert not np.allclose(model.generate_array(x, rng), model.generate_array(x, rng))


def test_xla_compiled_knot_search_gives_the_same_samples(model, monkeypatch):
    """Full chunks of at least XLA_MIN_ROWS rows search the knot tables in an XLA-compiled function:
    the GAN's targets and the flags classifier's draws are bit for bit those of the plain graph (same
    chunks, same noise), and the last, smaller chunk is not compiled."""
    from mambah.nn.flags import FlagModel

    x = np.clip(_training_sample(5000, seed=4)[0], *model.cond_pre.range_())
    monkeypatch.setattr(inference, "XLA_MIN_ROWS", 10**12)
    plain = inference.generate(model, x, 123, chunk=1024)
    monkeypatch.setattr(inference, "XLA_MIN_ROWS", 1000)
    calls = []
    fast = inference._compiled(model)
    jit = fast.with_uniforms_jit
    monkeypatch.setattr(fast, "with_uniforms_jit", lambda *args: calls.append(1) or jit(*args))
    np.testing.assert_array_equal(inference.generate(model, x, 123, chunk=1024), plain)
    assert len(calls) == 4  # 4 full chunks of 1024 rows, the last (904 rows) plain
    # a shipped flags classifier (14 conditions: grid columns and the two-valued threshold codes)
    flags = FlagModel.load(ROOT / "models" / "pid-K-flags")
    rng = np.random.default_rng(6)
    knots = flags.cond_pre.knots_
    c = np.column_stack([rng.choice(knots[j], 5000) for j in range(len(knots))])
    monkeypatch.setattr(inference, "XLA_MIN_ROWS", 10**12)
    a = inference.sample_flags(flags, c, np.random.default_rng(5), chunk=1024)
    monkeypatch.setattr(inference, "XLA_MIN_ROWS", 1000)
    np.testing.assert_array_equal(inference.sample_flags(flags, c, np.random.default_rng(5), chunk=1024), a)
    assert 0 < a.mean() < 1


def test_a_failing_xla_compilation_falls_back_to_the_plain_graph(model, monkeypatch, caplog):
    """Where XLA does not work (a TensorFlow build without it), the plain graph gives the result, XLA is
    turned off for the process with one logged warning; an error of the inputs themselves still raises."""
    import logging

    import tensorflow as tf

    x = np.clip(_training_sample(3000, seed=4)[0], *model.cond_pre.range_())
    monkeypatch.setattr(inference, "XLA_MIN_ROWS", 10**12)
    plain = inference.generate(model, x, 123, chunk=1024)
    monkeypatch.setattr(inference, "XLA_MIN_ROWS", 1000)
    fast = inference._compiled(model)

    def broken(*args):
        raise tf.errors.UnimplementedError(None, None, "no XLA here")

    monkeypatch.setattr(fast, "with_uniforms_jit", broken)
    with caplog.at_level(logging.WARNING, logger="mambah.nn.inference"):
        np.testing.assert_array_equal(inference.generate(model, x, 123, chunk=1024), plain)
        np.testing.assert_array_equal(inference.generate(model, x, 123, chunk=1024), plain)
    assert inference.XLA_MIN_ROWS > 10**15
    assert len([r for r in caplog.records if "XLA compilation" in r.getMessage()]) == 1
    # the plain graph's own error is not swallowed
    with pytest.raises(ValueError):
        inference._call_jit(broken, lambda *a: (_ for _ in ()).throw(ValueError("bad input")), 1)


def test_noise_is_standard_normal():
    z = inference.draw_noise(np.random.default_rng(1), 100000, 3)
    assert z.shape == (100000, 3) and z.dtype == np.float32
    for j in range(3):
        assert stats.kstest(z[:, j], "norm").pvalue > 1e-3
    assert abs(np.corrcoef(z.T)[0, 1]) < 0.02  # cos and sin halves of one pair are uncorrelated
    assert np.isfinite(z).all() and np.abs(z).max() < 6.0


def test_empty_and_bad_input(model):
    out = inference.generate(model, np.empty((0, 3)), 1)
    assert out.shape == (0, 2) and out.dtype == np.float64
    assert model.generate_array(np.empty((0, 3)), 1).shape == (0, 2)
    assert inference.generate(model, np.empty((0, 3)), noise=np.empty((0, 5), np.float32)).shape == (0, 2)
    with pytest.raises(DataError, match=r"shape \(n, 3\)"):
        inference.generate(model, np.zeros((4, 2)), 1)
    with pytest.raises(DataError, match=r"noise must have shape \(4, 5\)"):
        inference.generate(model, np.full((4, 3), 50.0), noise=np.zeros((4, 4), np.float32))
    x = np.full((4, 3), 50.0)
    x[2, 1] = np.nan
    with pytest.raises(DataError, match="1 of 4 condition rows hold NaN or inf"):
        inference.generate(model, x, 1)


def test_range_warning_counts_over_chunks(model):
    x = np.clip(_training_sample(300, seed=8)[0], *model.cond_pre.range_())
    x[:40, 1] = 7.0        # eta above the range
    x[250:, 0] = 10.0      # p below the range (50 rows)
    x[:10, 0] = 10.0       # 10 more rows, outside in both columns: 90 rows in all
    with pytest.warns(OutOfRangeWarning, match=r"30% of the rows \(90 of 300\).*P: 60 outside.*ETA: 40 outside"):
        inference.generate(model, x, 1, chunk=64)


def test_shipped_model_fast_equals_reference():
    if not SHIPPED.is_dir():
        pytest.skip(f"the shipped model is not there: {SHIPPED}")
    m = PidModel.load(SHIPPED)
    lo, hi = m.cond_pre.range_()
    rng = np.random.default_rng(2)
    x = lo + (hi - lo) * rng.random((3000, 3)) ** 2
    x[:, 2] = np.round(x[:, 2])  # integer track multiplicities: ties on the knots
    noise = rng.standard_normal((len(x), m.n_noise), dtype=np.float32)
    got = inference.generate(m, x, noise=noise)
    want = inference.generate_reference(m, x, noise=noise)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)  # DLLp spans ~400 units
    a = m.generate_array(x, 5)
    np.testing.assert_array_equal(a, m.generate_array(x, np.random.default_rng(5)))
    tlo, thi = m.targ_pre.range_()
    assert a.min() >= tlo[0] and a.max() <= thi[0]
