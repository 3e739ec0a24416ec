"""The weighted quantile-to-Gaussian transform: Gaussianity, inverse, ties, weights, storage."""

import numpy as np
import pytest
from scipy import stats

from mambah.errors import DataError, ModelDirError
from mambah.nn.preprocessing import QuantileGaussianizer


@pytest.fixture(scope="module")
def sample():
    rng = np.random.default_rng(7)
    n = 20000
    return np.column_stack([
        rng.exponential(30000.0, n),                                    # a momentum-like column
        rng.poisson(80, n).astype(float),                               # an integer occupancy
        np.where(rng.random(n) < 0.15, -999.0, rng.normal(10, 40, n)),  # a saturated/default value
    ])


def test_transformed_columns_are_standard_normal(sample):
    q = QuantileGaussianizer().fit(sample)
    z = q.transform(sample, mode="random", rng=np.random.default_rng(1))
    for j in range(3):
        # with 20000 rows a KS distance above ~0.012 would be a 99% fluctuation; the knots add < 1e-3
        assert stats.kstest(z[:, j], "norm").statistic < 0.015, j


def test_inverse_restores_values_and_spikes(sample):
    q = QuantileGaussianizer().fit(sample)
    z = q.transform(sample, mode="random", rng=np.random.default_rng(2))
    back = q.inverse_transform(z)
    np.testing.assert_allclose(back[:, 1], sample[:, 1], atol=2e-3)  # float32 z: integers come back
    assert np.mean(np.isclose(back[:, 2], -999.0)) == pytest.approx(np.mean(sample[:, 2] == -999.0), abs=1e-3)
    cont = sample[:, 0]
    assert np.max(np.abs(back[:, 0] - cont)) < 1e-3 * cont.std()  # float32 round-off of z


def test_mid_mode_is_deterministic_and_monotone(sample):
    q = QuantileGaussianizer().fit(sample)
    a, b = q.transform(sample), q.transform(sample)
    np.testing.assert_array_equal(a, b)
    order = np.argsort(sample[:, 1], kind="stable")
    assert np.all(np.diff(a[order, 1]) >= 0)
    # every row with the same integer value gets the same transformed value
    v = sample[:, 1] == 80
    assert np.ptp(a[v, 1]) == 0


def test_generated_values_outside_the_knots_are_clamped(sample):
    q = QuantileGaussianizer().fit(sample)
    x = q.inverse_transform(np.array([[-30.0, -30.0, -30.0], [30.0, 30.0, 30.0]]))
    np.testing.assert_allclose(x[0], sample.min(axis=0))
    np.testing.assert_allclose(x[1], sample.max(axis=0))


def test_weights_move_the_knots_negative_weights_clipped():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(-2, 1, 5000), rng.normal(2, 1, 5000)])[:, None]
    w = np.concatenate([np.full(5000, -0.3), np.ones(5000)])
    q = QuantileGaussianizer(n_knots=201).fit(x, w)
    # with the negative weights clipped, only the second component defines the median
    assert q.inverse_transform(np.zeros((1, 1)))[0, 0] == pytest.approx(2.0, abs=0.1)


def test_constant_column_is_refused():
    x = np.column_stack([np.arange(100.0), np.full(100, 3.0)])
    with pytest.raises(DataError, match="DLLp is constant"):
        QuantileGaussianizer().fit(x, names=["P", "DLLp"])


def test_arrays_round_trip(sample):
    q = QuantileGaussianizer(n_knots=101).fit(sample)
    arrays = q.to_arrays("cond")
    q2 = QuantileGaussianizer.from_arrays(arrays, "cond")
    np.testing.assert_array_equal(q.transform(sample), q2.transform(sample))
    with pytest.raises(ModelDirError, match="targ_knots"):
        QuantileGaussianizer.from_arrays(arrays, "targ")
