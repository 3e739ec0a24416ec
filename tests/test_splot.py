"""sPlot: an extended fit of a seeded toy with known yields, the sum rule, the CLI."""

import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

from mambah.errors import ConfigurationError, DataError
from mambah.training.splot import SPlotError, fit_sweights

N_SIG, N_BKG, LO, HI = 3000, 6000, 2240.0, 2330.0


def toy(seed=11):
    """Signal Gauss(2286, 6) + exponential background in [2240, 2330]; a control variable x that is
    N(2, 1) for signal and N(-1, 1) for background (independent of the mass in each)."""
    rng = np.random.default_rng(seed)
    m_sig = rng.normal(2286.0, 6.0, N_SIG)
    m_bkg = LO + rng.exponential(80.0, 3 * N_BKG)
    m_bkg = m_bkg[m_bkg < HI][:N_BKG]
    m = np.concatenate([np.clip(m_sig, LO, HI), m_bkg])
    x = np.concatenate([rng.normal(2.0, 1.0, N_SIG), rng.normal(-1.0, 1.0, N_BKG)])
    return m, x


@pytest.fixture(scope="module")
def fitted():
    m, x = toy()
    return fit_sweights(m, (LO, HI), "gauss", "exponential"), m, x


def test_yields_and_shape_match_the_truth(fitted):
    res, m, _ = fitted
    (ns, es), (nb, eb) = res.yields["signal"], res.yields["background"]
    assert ns + nb == pytest.approx(len(m), rel=1e-3)  # extended fit: total yield = N
    assert abs(ns - N_SIG) < 3 * es and abs(nb - N_BKG) < 3 * eb
    assert es == pytest.approx(np.sqrt(N_SIG), rel=0.6)  # error of the order of sqrt(N)
    assert res.params["mu"] == pytest.approx(2286.0, abs=0.5)
    assert res.params["sigma"] == pytest.approx(6.0, abs=0.5)
    assert res.converged


def test_sweights_sum_rule_and_signal_projection(fitted):
    res, _, x = fitted
    # Eq. 17 of arXiv:physics/0402083 at the maximum, and sum of sWeights = fitted yield
    assert res.sum_rule["signal"] == pytest.approx(1.0, abs=5e-3)
    assert res.sweights.sum() == pytest.approx(res.yields["signal"][0], rel=1e-3)
    np.testing.assert_allclose(res.sweights + res.bkg_sweights, 1.0, atol=1e-3)
    assert (res.sweights < 0).any()  # sWeights of background-like events are negative
    # the sWeighted mean of the control variable is the signal's, within its statistical error
    w = res.sweights
    mu = np.sum(w * x) / w.sum()
    err = np.sqrt(np.sum(w ** 2 * (x - mu) ** 2)) / w.sum()
    assert abs(mu - 2.0) < 4 * err


def test_other_shapes_fit():
    m, _ = toy(12)
    res = fit_sweights(m, (LO, HI), "crystalball", "chebyshev")
    assert abs(res.yields["signal"][0] - N_SIG) < 4 * res.yields["signal"][1]


def test_bad_arguments():
    m, _ = toy()
    with pytest.raises(ConfigurationError, match="unknown signal shape 'gaus'"):
        fit_sweights(m, (LO, HI), "gaus")
    with pytest.raises(ConfigurationError, match="LO < HI"):
        fit_sweights(m, (HI, LO))
    with pytest.raises(DataError, match="outside the fit range"):
        fit_sweights(m, (2250.0, HI))
    with pytest.raises(DataError, match="NaN"):
        fit_sweights(np.append(m, np.nan), (LO, HI))
    # a range wider than the data (the sample was selected in [2240, 2330]): refused before any fit, with
    # the data's range; a populated range is accepted (the toy's own range fits in the fixture)
    with pytest.raises(DataError, match=r"wider than the data's mass range \[2240.02, 2330\]: no row in its high 44%"):
        fit_sweights(m, (LO, 2400.0))
    with pytest.raises(DataError, match="low 40%"):
        fit_sweights(m, (2180.0, HI))


def test_sum_rule_check_warns_and_raises():
    """hepstats' thresholds: a deviation above 5e-3 warns, above 5e-2 raises."""
    from mambah.training import splot

    with pytest.raises(SPlotError, match="sum rule .* 1.20000 .* not at the likelihood maximum"):
        splot._check_sum_rule({"signal": 1.2, "background": 0.9})
    with pytest.warns(splot.SumRuleWarning, match="1.01000"):
        splot._check_sum_rule({"signal": 1.01, "background": 0.995})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        splot._check_sum_rule({"signal": 1.001, "background": 0.999})


def test_cli_writes_table_plot_and_prints_yields(tmp_path):
    m, x = toy()
    pd.DataFrame({"Lc_M": np.append(m, [2200.0, 2400.0]), "x": np.append(x, [0.0, 0.0])}).to_csv(
        tmp_path / "calib.csv", index=False)
    r = subprocess.run([sys.executable, "-m", "mambah", "sweights", "--data", tmp_path / "calib.csv", "--mass", "Lc_M",
                        "--range", str(LO), str(HI), "--out", tmp_path / "sw.parquet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "signal yield" in r.stdout and "background yield" in r.stdout
    out = pd.read_parquet(tmp_path / "sw.parquet")
    assert len(out) == len(m) and list(out.columns) == ["Lc_M", "x", "sWeight"]  # the 2 rows outside dropped
    ns = float(r.stdout.split("signal yield")[1].split()[0])
    assert out["sWeight"].sum() == pytest.approx(ns, rel=1e-3)
    assert (tmp_path / "sw_fit.png").stat().st_size > 10000
    r = subprocess.run([sys.executable, "-m", "mambah", "sweights", "--data", tmp_path / "calib.csv", "--mass", "M",
                        "--range", str(LO), str(HI), "--out", tmp_path / "sw2.parquet"], capture_output=True, text=True)
    assert r.returncode == 2 and "no column 'M'" in r.stderr and "Lc_M" in r.stderr
    assert not (tmp_path / "sw2.parquet").exists()
