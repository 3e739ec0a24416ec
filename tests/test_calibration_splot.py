"""The project's own sPlot (mambah.training.splot, zfit + hepstats) on a reference calibration sample:
sWeights from the mass fit alone recover the truth-pure signal's PID efficiencies in bins of p."""

from __future__ import annotations

import numpy as np
import pytest

from mambah.reference.calibration import calib_sample, channel


def test_splot_sweights_recover_pure_signal_efficiencies_in_p_bins():
    splot = pytest.importorskip("mambah.training.splot")
    ch = channel("K")
    df = calib_sample("K", 12000, seed=21)
    res = splot.fit_sweights(df[ch.mass_column].to_numpy(), ch.window, signal="gauss", background="exponential")
    w = res.sweights
    n_sig = int(df["is_signal"].sum())
    assert w.sum() == pytest.approx(n_sig, abs=4 * np.sqrt(len(df)))
    sig = df["is_signal"].to_numpy()
    passed = (df["PIDK"] > 0).to_numpy().astype(float)
    worse = 0
    for lo, hi in ((2e3, 10e3), (10e3, 30e3), (30e3, 150e3)):
        b = df["P"].between(lo, hi).to_numpy()
        eff_w = np.sum(w[b] * passed[b]) / w[b].sum()
        err_w = np.sqrt(np.sum(w[b] ** 2 * (passed[b] - eff_w) ** 2)) / w[b].sum()
        eff_true = passed[b & sig].mean()
        eff_raw = passed[b].mean()
        assert eff_w == pytest.approx(eff_true, abs=4 * err_w + 0.01), (lo, hi)
        worse += abs(eff_raw - eff_true) > 5 * err_w
    assert worse == 3  # the unweighted sample is visibly wrong in every bin
