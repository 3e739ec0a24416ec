"""Calibration samples from the reference detector: signal fraction, background species and
kinematics, mass model, sWeights recovering the signal, the calib-sample command."""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import pytest

from mambah.reference.calibration import (
    CHANNELS,
    CONDITIONS,
    LHCB_NAMES,
    TARGETS,
    calib_sample,
    channel,
    two_body_decay,
)
from mambah.reference.pid import SPECIES_NAMES
from mambah.errors import ConfigurationError

N = 3000


@pytest.fixture(scope="module")
def samples():
    return {sp: calib_sample(sp, N, seed=100 + i) for i, sp in enumerate(CHANNELS)}


@pytest.mark.parametrize("species", list(CHANNELS))
def test_signal_fraction_and_background_species(samples, species):
    df = samples[species]
    ch = CHANNELS[species]
    f = ch.signal_fraction
    assert 0.4 <= f <= 0.6
    assert df["is_signal"].mean() == pytest.approx(f, abs=5 * np.sqrt(f * (1 - f) / N))
    pdg = SPECIES_NAMES[species]
    sig, bkg = df[df["is_signal"]], df[~df["is_signal"]]
    assert (sig["TRUEID"].abs() == pdg).all()
    assert not (bkg["TRUEID"].abs() == pdg).any()  # background probes are of other species
    for name, frac in ch.background.items():
        got = (bkg["TRUEID"].abs() == SPECIES_NAMES[name]).mean()
        assert got == pytest.approx(frac, abs=5 * np.sqrt(frac * (1 - frac) / len(bkg)) + 1e-3)
    # TRUEID sign: particles with positive charge are +211/+321/+2212 but -11/-13
    lepton = df["TRUEID"].abs().isin([11, 13])
    sign = np.sign(df["TRUEID"]) * np.where(lepton, -1, 1)
    assert (sign == df["charge"]).all()
    # columns and acceptance
    assert {ch.mass_column, *CONDITIONS, *TARGETS, "PT", "hasRich", "InMuonAcc", "TRUEID", "is_signal"} <= set(df.columns)
    assert df["ETA"].between(2, 5).all() and df["P"].between(2e3, 150e3).all()
    assert df[ch.mass_column].between(*ch.window).all()


def test_background_kinematics_and_occupancy_differ(samples):
    df = samples["K"]
    s, b = df[df["is_signal"]], df[~df["is_signal"]]
    assert s["P"].median() > 1.2 * b["P"].median()
    se = np.hypot(s["nTracks"].std() / np.sqrt(len(s)), b["nTracks"].std() / np.sqrt(len(b)))
    assert b["nTracks"].mean() - s["nTracks"].mean() > 8 * se
    assert s["nTracks"].mean() == pytest.approx(95, abs=5 * s["nTracks"].std() / np.sqrt(len(s)))


def test_mass_model(samples):
    for sp in ("p", "mu"):
        ch = CHANNELS[sp]
        df = samples[sp]
        m_s = df.loc[df["is_signal"], ch.mass_column]
        assert m_s.mean() == pytest.approx(ch.mass, abs=5 * ch.sigma / np.sqrt(len(m_s)))
        assert m_s.std() == pytest.approx(ch.sigma, rel=0.1)
        # background: truncated exponential, analytic mean
        lo, hi = ch.window
        lam = ch.bkg_slope
        x = np.linspace(lo, hi, 20001)
        w = np.exp(lam * (x - lo))
        mean = np.sum(x * w) / np.sum(w)
        m_b = df.loc[~df["is_signal"], ch.mass_column]
        assert m_b.mean() == pytest.approx(mean, abs=5 * m_b.std() / np.sqrt(len(m_b)))


def test_kaon_sample_pid_truth(samples):
    """Signal kaons pass DLLK > 0 far more often than the (mostly pion) background."""
    df = samples["K"]
    s, b = df[df["is_signal"]], df[~df["is_signal"]]
    assert (s["PIDK"] > 0).mean() > 0.8
    assert (b["PIDK"] > 0).mean() < 0.4
    mu = samples["mu"]
    assert (mu.loc[mu["is_signal"], "isMuon"] > 0.5).mean() > 0.85
    assert (mu.loc[~mu["is_signal"], "isMuon"] > 0.5).mean() < 0.05


def test_pure_sample_and_reproducibility():
    pure = calib_sample("p", 500, seed=5, pure=True)
    assert len(pure) == 500 and pure["is_signal"].all() and (pure["TRUEID"].abs() == 2212).all()
    a = calib_sample("pi", 400, seed=6)
    b = calib_sample("pi", 400, seed=6)
    pd.testing.assert_frame_equal(a, b)
    c = calib_sample("pi", 400, seed=7)
    assert not a["P"].equals(c["P"])
    assert calib_sample("e", 400, seed=8, signal_fraction=0.0)["is_signal"].sum() == 0


def test_bad_arguments():
    with pytest.raises(ConfigurationError, match="did you mean 'pi'"):
        calib_sample("pion+", 10)
    assert channel("kaon") is CHANNELS["K"] and channel(2212) is CHANNELS["p"]
    with pytest.raises(ConfigurationError, match="positive integer"):
        calib_sample("K", 0)
    with pytest.raises(ConfigurationError, match="positive integer"):
        calib_sample("K", 2.5)
    with pytest.raises(ConfigurationError, match="signal_fraction"):
        calib_sample("K", 10, signal_fraction=1.5)


def test_two_body_decay_conserves_four_momentum_and_masses():
    rng = np.random.default_rng(9)
    n = 2000
    M = 1864.84
    p3 = rng.normal(0, 20e3, (n, 3))
    parent = np.column_stack([np.sqrt(np.sum(p3**2, 1) + M**2), p3])
    a, b = two_body_decay(parent, M, 493.677, 139.57039, rng)
    np.testing.assert_allclose(a + b, parent, rtol=1e-9, atol=1e-6)
    for d, m in ((a, 493.677), (b, 139.57039)):
        mass = np.sqrt(d[:, 0] ** 2 - np.sum(d[:, 1:] ** 2, 1))
        np.testing.assert_allclose(mass, m, rtol=1e-6)


def _splot(m, ch):
    """Minimal independent sPlot with the *true* shapes (Pivk & Le Diberder, NIM A 555 (2005) 356,
    Eqs. 13-14): yields by an extended ML fit (EM iterations), sWeights from the inverse covariance."""
    from scipy.special import ndtr

    lo, hi = ch.window
    fs = np.exp(-0.5 * ((m - ch.mass) / ch.sigma) ** 2) / (np.sqrt(2 * np.pi) * ch.sigma)
    fs /= ndtr((hi - ch.mass) / ch.sigma) - ndtr((lo - ch.mass) / ch.sigma)
    lam = ch.bkg_slope
    fb = lam * np.exp(lam * (m - lo)) / np.expm1(lam * (hi - lo))
    ns, nb = len(m) / 2, len(m) / 2
    for _ in range(500):
        den = ns * fs + nb * fb
        ns, nb = np.sum(ns * fs / den), np.sum(nb * fb / den)
    den = ns * fs + nb * fb
    F = np.stack([fs, fb])
    vinv = (F[:, None, :] * F[None, :, :] / den**2).sum(axis=2)
    v = np.linalg.inv(vinv)
    return (v[0, 0] * fs + v[0, 1] * fb) / den, ns


@pytest.mark.parametrize("species, cut", [("K", ("PIDK", 0.0)), ("p", ("PIDp", 5.0))])
def test_sweights_recover_the_signal(species, cut):
    """sWeights from the mass alone recover the pure signal's PID efficiency and occupancy; the
    unweighted sample is visibly wrong. (Independent minimal sPlot; mambah.training.splot is tested by its
    owner.)"""
    ch = CHANNELS[species]
    df = calib_sample(species, 20000, seed=11)
    w, ns = _splot(df[ch.mass_column].to_numpy(), ch)
    assert ns == pytest.approx(df["is_signal"].sum(), abs=4 * np.sqrt(len(df)))
    assert w.sum() == pytest.approx(ns, rel=1e-6)
    col, thr = cut
    passed = (df[col] > thr).to_numpy().astype(float)
    eff_w = np.sum(w * passed) / w.sum()
    err_w = np.sqrt(np.sum(w**2 * (passed - eff_w) ** 2)) / w.sum()
    eff_true = passed[df["is_signal"].to_numpy()].mean()
    eff_raw = passed.mean()
    assert eff_w == pytest.approx(eff_true, abs=4 * err_w + 0.005)
    assert abs(eff_raw - eff_true) > 10 * err_w
    nt = df["nTracks"].to_numpy()
    nt_w = np.sum(w * nt) / w.sum()
    nt_true = nt[df["is_signal"].to_numpy()].mean()
    assert nt_w == pytest.approx(nt_true, abs=4 * np.sqrt(np.sum(w**2 * (nt - nt_w) ** 2)) / w.sum())
    assert abs(nt.mean() - nt_true) > 10.0


def test_lhcb_names_cover_the_store_pid_columns():
    from mambah.store.schema import PID_COLUMNS

    assert set(PID_COLUMNS) <= set(LHCB_NAMES)
    assert set(TARGETS.values()) == set(PID_COLUMNS)


# ------------------------------------------------------------------ command line


def _parser():
    from mambah.cli import detector_calib

    ap = argparse.ArgumentParser(prog="mambah detector")
    detector_calib.register(ap.add_subparsers(dest="detector_command"))
    return ap


def test_calib_sample_command_writes_and_refuses_to_overwrite(tmp_path, capsys):
    from mambah.io import read_table

    out = tmp_path / "kaons.parquet"
    args = _parser().parse_args(["calib-sample", "--species", "K", "--events", "500", "--out", str(out), "--seed", "3"])
    assert args.func(args) == 0
    assert "wrote 500 K candidates" in capsys.readouterr().out
    df = read_table(out)
    pd.testing.assert_frame_equal(df, calib_sample("K", 500, seed=3))
    before = out.read_bytes()
    with pytest.raises(ConfigurationError, match="--overwrite"):
        args.func(args)
    assert out.read_bytes() == before
    args = _parser().parse_args(["calib-sample", "--species", "mu", "--events", "200", "--out",
                                 str(tmp_path / "mu.root:T"), "--pure"])
    assert args.func(args) == 0
    assert read_table(tmp_path / "mu.root:T")["is_signal"].all()


def test_low_momentum_proton_sample_covers_what_the_standard_one_lacks(tmp_path, capsys):
    """The low-p proton channel: every probe (signal and background) in 2-10 GeV/c and 2 < eta < 5, about
    30% of the signal below 5 GeV/c where the standard sample has ~0.1%; species without one are refused
    (function and CLI); the CLI names the channel."""
    from mambah.io import read_table
    from mambah.reference.calibration import LOW_P_CHANNELS

    low = calib_sample("p", 20_000, seed=4, low_p=True)
    std = calib_sample("p", 20_000, seed=4)
    assert low["P"].between(2000, 10000).all() and low["ETA"].between(2, 5).all()
    sig = low[low["is_signal"] == 1]
    assert 0.2 < (sig["P"] < 5000).mean() < 0.4 and (std.loc[std["is_signal"] == 1, "P"] < 5000).mean() < 0.01
    assert 0.35 < low["is_signal"].mean() < 0.5 and set(low.columns) == set(std.columns)
    with pytest.raises(ConfigurationError, match="no low-momentum calibration sample for species 'K'"):
        calib_sample("K", 100, low_p=True)
    out = tmp_path / "plow.parquet"
    args = _parser().parse_args(["calib-sample", "--species", "p", "--events", "400", "--out", str(out), "--seed", "2",
                                 "--low-p"])
    assert args.func(args) == 0
    assert LOW_P_CHANNELS["p"].decay in capsys.readouterr().out
    pd.testing.assert_frame_equal(read_table(out), calib_sample("p", 400, seed=2, low_p=True))
    args = _parser().parse_args(["calib-sample", "--species", "K", "--events", "4", "--out", str(tmp_path / "k.csv"),
                                 "--low-p"])
    with pytest.raises(ConfigurationError, match="--low-p"):
        args.func(args)
    assert not (tmp_path / "k.csv").exists()


def test_high_eta_proton_sample_covers_the_forward_protons(tmp_path, capsys):
    """The high-eta proton channel: every probe in 5-40 GeV/c and 3.5 < eta < 5, with signal at 4 < eta < 5
    below 20 GeV/c, where the standard sample (mother pT > 1.5 GeV/c) has none; refused for other species,
    for an unknown variant, with low_p too, and --low-p --high-eta together on the command line."""
    from mambah.io import read_table
    from mambah.reference.calibration import HIGH_ETA_CHANNELS, channel

    he = calib_sample("p", 20_000, seed=4, variant="high-eta")
    std = calib_sample("p", 20_000, seed=4)
    assert he["P"].between(5000, 40000).all() and he["ETA"].between(3.5, 5).all()
    sig = he[he["is_signal"] == 1]
    fwd = lambda d: ((d["ETA"] > 4) & (d["P"] < 20000)).mean()  # noqa: E731
    assert fwd(sig) > 0.05 and fwd(std[std["is_signal"] == 1]) < 0.002
    assert 0.3 < he["is_signal"].mean() < 0.55 and set(he.columns) == set(std.columns)
    assert channel("p", variant="low-p") is channel("p", low_p=True)
    with pytest.raises(ConfigurationError, match="no high-pseudorapidity calibration sample for species 'K'"):
        calib_sample("K", 100, variant="high-eta")
    with pytest.raises(ConfigurationError, match="unknown calibration channel variant 'mid-eta'"):
        channel("p", variant="mid-eta")
    with pytest.raises(ConfigurationError, match="exclude each other"):
        channel("p", low_p=True, variant="high-eta")
    out = tmp_path / "phe.parquet"
    args = _parser().parse_args(["calib-sample", "--species", "p", "--events", "400", "--out", str(out), "--seed", "2",
                                 "--high-eta"])
    assert args.func(args) == 0
    assert HIGH_ETA_CHANNELS["p"].decay in capsys.readouterr().out
    pd.testing.assert_frame_equal(read_table(out), calib_sample("p", 400, seed=2, variant="high-eta"))
    with pytest.raises(SystemExit):
        _parser().parse_args(["calib-sample", "--species", "p", "--events", "4", "--out", str(out), "--low-p",
                              "--high-eta"])
    capsys.readouterr()


def test_calib_sample_command_rejects_bad_arguments(tmp_path):
    p = _parser()
    with pytest.raises(SystemExit):
        p.parse_args(["calib-sample", "--species", "kaon", "--events", "5", "--out", "x.csv"])
    args = p.parse_args(["calib-sample", "--species", "K", "--events", "0", "--out", str(tmp_path / "x.csv")])
    with pytest.raises(ConfigurationError, match="positive"):
        args.func(args)
    assert not (tmp_path / "x.csv").exists()


def test_cli_as_users_call_it(tmp_path):
    """``mambah detector calib-sample`` end to end, as registered by mambah/cli/cmd_detector.py."""
    import subprocess
    import sys

    help_ = subprocess.run([sys.executable, "-m", "mambah", "detector", "--help"], capture_output=True, text=True)
    assert help_.returncode == 0 and "calib-sample" in help_.stdout
    out = tmp_path / "p.csv"
    r = subprocess.run([sys.executable, "-m", "mambah", "detector", "calib-sample", "--species", "p", "--events", "300",
                        "--out", str(out), "--seed", "2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(pd.read_csv(out)) == 300
    r = subprocess.run([sys.executable, "-m", "mambah", "detector", "calib-sample", "--species", "p", "--events", "300",
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 2 and "--overwrite" in r.stderr
    r = subprocess.run([sys.executable, "-m", "mambah", "detector", "calib-sample", "--species", "p", "--events", "-1",
                        "--out", str(tmp_path / "q.csv")], capture_output=True, text=True)
    assert r.returncode == 2 and "positive" in r.stderr and not (tmp_path / "q.csv").exists()
