"""The reference detector's PID response: thresholds, efficiencies, mis-ID, occupancy, conventions.

Statistical checks are seeded; tolerances are a few binomial standard errors of the sample sizes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from mambah.batch import Batch
from mambah.reference.pid import (
    FLAG_COLUMNS,
    MASSES,
    RICH1,
    RICH2,
    ReferencePID,
    ReferencePIDStage,
    lhcb_sentinels,
    muon_isMuon_efficiency,
    reference_pid,
)
from mambah.errors import ConfigurationError, DataError
from mambah.store.schema import COLUMNS, PID_COLUMNS


def _tracks(species, p, eta, n_tracks=100, n=4000, seed=0, detector=None):
    rng = np.random.default_rng(seed)
    shape = (n,)
    return reference_pid(np.broadcast_to(p, shape).astype(float), np.broadcast_to(eta, shape).astype(float),
                         np.full(n, species), np.ones(n), np.broadcast_to(n_tracks, shape).astype(float), rng,
                         detector=detector)


def _sigma(eff, n):
    return np.sqrt(max(eff * (1 - eff), 1.0 / n) / n)


# ------------------------------------------------------------------ Cherenkov physics, analytic


@pytest.mark.parametrize(
    "rad, species, expected_gev",
    [(RICH1, 211, 2.64), (RICH1, 321, 9.33), (RICH1, 2212, 17.7), (RICH2, 321, 15.6), (RICH2, 211, 4.41)],
)
def test_thresholds_follow_m_over_sqrt_n2_minus_1(rad, species, expected_gev):
    assert rad.threshold(MASSES[species]) / 1e3 == pytest.approx(expected_gev, rel=0.01)


def test_cherenkov_angle_and_yield():
    m = MASSES[321]
    pth = RICH1.threshold(m)
    below = RICH1.cherenkov_angle([0.999 * pth, 0.5 * pth], m)
    assert np.all(below == 0) and np.all(RICH1.expected_photons(below) == 0)
    above = RICH1.cherenkov_angle(1.01 * pth, m)
    assert 0 < above < RICH1.theta_saturated
    # saturation: cos(theta) = 1/n at beta -> 1; RICH1 ~53 mrad, RICH2 ~32 mrad
    assert RICH1.theta_saturated == pytest.approx(np.arccos(1 / 1.0014))
    assert RICH1.theta_saturated * 1e3 == pytest.approx(52.9, abs=0.2)
    assert RICH2.theta_saturated * 1e3 == pytest.approx(31.6, abs=0.2)
    # the angle rises monotonically with p towards saturation; yield follows sin^2(theta)
    p = np.linspace(1.01 * pth, 200e3, 50)
    th = RICH1.cherenkov_angle(p, m)
    assert np.all(np.diff(th) > 0) and th[-1] < RICH1.theta_saturated
    assert RICH1.expected_photons(RICH1.theta_saturated) == pytest.approx(RICH1.n_photons_saturated)
    # independent formula: cos(theta) = sqrt(p^2 + m^2) / (n p)
    assert np.cos(th) == pytest.approx(np.sqrt(p**2 + m**2) / (1.0014 * p), rel=1e-12)


def test_no_cherenkov_light_below_threshold():
    """Below the K threshold (RICH1 only at eta 2.3), the K and p hypotheses expect no photons:
    their likelihoods are then identical (any K photon would break the equality). Above it, the
    kaon's ring separates K from p."""
    below = _tracks(321, 8.0e3, 2.3, n=3000, seed=1)
    assert below["has_rich"].all()
    np.testing.assert_array_equal(below["rich_dll_k"].to_numpy(), below["rich_dll_p"].to_numpy())
    above = _tracks(321, 13.0e3, 2.3, n=3000, seed=2)
    diff = (above["rich_dll_k"] - above["rich_dll_p"]).to_numpy()
    assert (diff > 0).mean() > 0.9


def test_dllk_separation_grows_above_the_kaon_threshold():
    """Kaon DLLK is moderate in threshold mode (only the pion radiates) and grows once the kaon
    radiates its own ring (RICH1, eta 2.3 outside RICH2)."""
    mean = {p: _tracks(321, p, 2.3, n=3000, seed=int(p))["rich_dll_k"].mean() for p in (7e3, 8.5e3, 12e3, 15e3)}
    assert mean[8.5e3] == pytest.approx(mean[7e3], abs=3.0)
    assert mean[12e3] > mean[8.5e3] + 8.0
    assert mean[15e3] > mean[12e3] + 8.0


# ------------------------------------------------------------------ efficiencies and mis-ID


def test_dllk_efficiency_kaons_high_pions_low_10_to_60_gev():
    rng = np.random.default_rng(3)
    n = 8000
    p = rng.uniform(10e3, 60e3, n)
    eta = rng.uniform(2.0, 4.5, n)
    nt = rng.gamma(4.0, 25.0, n)
    k = reference_pid(p, eta, np.full(n, 321), np.ones(n), nt, rng)
    pi = reference_pid(p, eta, np.full(n, 211), np.ones(n), nt, rng)
    eff_k = (k["pid_k"] > 0).mean()
    mis_pi = (pi["pid_k"] > 0).mean()
    assert eff_k > 0.9
    assert mis_pi < 0.1
    # realistic, not trivial: some kaons fail and some pions pass
    assert eff_k < 0.995 and mis_pi > 0.003


def test_high_momentum_separation_fades():
    """K/pi separation worsens at very high momentum, as the Cherenkov angles converge."""
    mid = _tracks(321, 25e3, 3.5, n=3000, seed=4)
    high = _tracks(321, 90e3, 3.5, n=3000, seed=5)
    e_mid, e_high = (mid["rich_dll_k"] > 5).mean(), (high["rich_dll_k"] > 5).mean()
    assert e_mid - e_high > 5 * (_sigma(e_mid, 3000) + _sigma(e_high, 3000))


def test_ismuon_efficiency_for_muons_above_6_gev_and_penetration_threshold():
    rng = np.random.default_rng(6)
    n = 6000
    p = rng.uniform(6e3, 100e3, n)
    eta = rng.uniform(2.0, 4.5, n)
    mu = reference_pid(p, eta, np.full(n, 13), -np.ones(n), np.full(n, 100.0), rng)
    eff = (mu["is_muon"] > 0.5).mean()
    assert eff >= 0.9
    assert eff < 0.999  # station inefficiency: never perfect
    assert eff == pytest.approx(muon_isMuon_efficiency(p).mean(), abs=5 * _sigma(eff, n) + 0.005)
    low = _tracks(13, 2.8e3, 3.0, n=2000, seed=7)
    assert (low["is_muon"] == 0).all()  # below 3 GeV/c: never IsMuon


def test_pion_misid_is_few_percent_and_falls_with_p():
    n = 12000
    lo = _tracks(211, 4.0e3, 3.0, n=n, seed=8)
    hi = _tracks(211, 40.0e3, 3.0, n=n, seed=9)
    m_lo, m_hi = (lo["is_muon"] > 0.5).mean(), (hi["is_muon"] > 0.5).mean()
    assert 0.003 < m_lo < 0.05
    assert m_hi < 0.03
    assert m_lo - m_hi > 4 * (_sigma(m_lo, n) + _sigma(m_hi, n))


def test_muon_likelihoods_only_for_ismuon_and_separate_muons():
    n = 20000
    mu = _tracks(13, 20e3, 3.0, n=n, seed=10)
    pi = _tracks(211, 5e3, 3.0, n=n, seed=11, n_tracks=250)
    for df in (mu, pi):
        is_mu = df["is_muon"].to_numpy() > 0.5
        assert np.isnan(df["muon_mu_ll"].to_numpy()[~is_mu]).all()
        assert np.isfinite(df["muon_mu_ll"].to_numpy()[is_mu]).all()
        assert np.isfinite(df["muon_bkg_ll"].to_numpy()[is_mu]).all()
        assert np.nanmax(df["muon_mu_ll"].to_numpy()) <= 0.0
    dll_mu = (mu["muon_mu_ll"] - mu["muon_bkg_ll"]).dropna()
    dll_pi = (pi["muon_mu_ll"] - pi["muon_bkg_ll"]).dropna()
    assert len(dll_pi) > 100
    assert (dll_mu > 0).mean() > 0.85
    assert (dll_pi > 0).mean() < 0.6
    assert np.median(dll_mu) > np.median(dll_pi) + 3.0
    # combined: muons have large PIDmu, pions do not; a non-IsMuon track gets no muon-system term
    assert (mu["pid_mu"] > 0).mean() > 0.9 and (pi["pid_mu"] > 2).mean() < 0.05
    for df in (mu, pi):
        no = df["is_muon"].to_numpy() < 0.5
        rich_mu = np.nan_to_num(df["rich_dll_mu"].to_numpy(dtype=float), nan=0.0)
        np.testing.assert_allclose(df["pid_mu"].to_numpy()[no], rich_mu[no], atol=1e-5)


def test_calorimeter_e_over_p_and_electron_id():
    e = _tracks(11, 10e3, 3.0, n=5000, seed=12)
    pi = _tracks(211, 10e3, 3.0, n=5000, seed=13)
    ep = e["calo_e_over_p"].to_numpy()
    # core resolution 10%/sqrt(10) (+) 1% = 3.3%: the upper half-width of the core (from 1 up)
    upper = ep[ep > 1.0] - 1.0
    sigma_core = np.sqrt(np.mean(upper**2))  # half-normal: rms = sigma
    assert sigma_core == pytest.approx(np.hypot(0.1 / np.sqrt(10.0), 0.01), rel=0.1)
    assert np.median(ep) == pytest.approx(0.98, abs=0.03)  # brem/leakage tail pulls it below 1
    assert np.median(pi["calo_e_over_p"]) < 0.4
    assert (e["pid_e"] > 2).mean() > 0.9
    assert (pi["pid_e"] > 2).mean() < 0.02


# ------------------------------------------------------------------ occupancy


def test_separation_worsens_with_occupancy():
    n = 6000
    quiet = _tracks(321, 5e3, 3.5, n_tracks=30, n=n, seed=14)
    busy = _tracks(321, 5e3, 3.5, n_tracks=400, n=n, seed=15)
    e_q, e_b = (quiet["rich_dll_k"] > 5).mean(), (busy["rich_dll_k"] > 5).mean()
    assert e_q - e_b > 5 * (_sigma(e_q, n) + _sigma(e_b, n))
    # the muon mis-ID from random hits grows with occupancy too
    pq = _tracks(211, 4e3, 3.0, n_tracks=30, n=20000, seed=16)
    pb = _tracks(211, 4e3, 3.0, n_tracks=400, n=20000, seed=17)
    m_q, m_b = (pq["is_muon"] > 0.5).mean(), (pb["is_muon"] > 0.5).mean()
    assert m_b - m_q > 4 * (_sigma(m_q, 20000) + _sigma(m_b, 20000))


# ------------------------------------------------------------------ conventions and API


def test_columns_acceptance_and_missing_information():
    rng = np.random.default_rng(18)
    p = np.array([2.2e3, 20e3, 20e3, 20e3, 20e3])
    eta = np.array([3.0, 3.0, 5.2, 2.3, 4.6])
    df = reference_pid(p, eta, [211, 211, 211, 211, 211], [1, -1, 1, 1, 1], [100] * 5, rng)
    probnn = ["probnn_e", "probnn_mu", "probnn_pi", "probnn_k", "probnn_p", "probnn_ghost"]  # mambah.reference.probnn
    assert list(df.columns) == list(PID_COLUMNS) + list(FLAG_COLUMNS) + probnn
    assert list(reference_pid(p, eta, [211] * 5, [1] * 5, [100] * 5, 1, with_probnn=False).columns) == \
        list(PID_COLUMNS) + list(FLAG_COLUMNS)
    for c, dt in PID_COLUMNS.items():
        assert df[c].dtype == np.dtype(dt)
    # below the pion threshold of both radiators, and outside both acceptances: no RICH
    assert df["has_rich"].tolist() == [False, True, False, True, True]
    no = ~df["has_rich"]
    assert df.loc[no, ["rich_dll_e", "rich_dll_mu", "rich_dll_k", "rich_dll_p"]].isna().all().all()
    assert (df.loc[no, ["pid_k", "pid_p"]] == 0).all().all()  # absent detectors contribute 0
    assert df.loc[~no, ["rich_dll_k", "rich_dll_p"]].notna().all().all()
    assert df["in_muon_acceptance"].tolist() == [True, True, False, True, True]
    lhcb = lhcb_sentinels(df)
    assert (lhcb.loc[no, "rich_dll_k"] == -1000).all() and lhcb["muon_mu_ll"].notna().all()


def test_reproducible_with_seed():
    a = _tracks(321, 20e3, 3.0, n=500, seed=19)
    b = _tracks(321, 20e3, 3.0, n=500, seed=19)
    c = _tracks(321, 20e3, 3.0, n=500, seed=20)
    pd.testing.assert_frame_equal(a, b)
    assert not a["rich_dll_k"].equals(c["rich_dll_k"])


def test_species_names_and_signed_ids_are_accepted():
    a = reference_pid([20e3, 20e3], [3, 3], ["K", "pi"], [1, 1], [50, 50], np.random.default_rng(1))
    b = reference_pid([20e3, 20e3], [3, 3], [-321, 211], [1, 1], [50, 50], np.random.default_rng(1))
    pd.testing.assert_frame_equal(a, b)


def test_bad_input_is_refused_with_clear_errors():
    with pytest.raises(ConfigurationError, match="not 999"):
        reference_pid([1e4], [3.0], [999], [1], [10], 0)
    with pytest.raises(ConfigurationError, match="unknown species 'kaon'"):
        reference_pid([1e4], [3.0], ["kaon"], [1], [10], 0)
    with pytest.raises(DataError, match="p must be positive"):
        reference_pid([-1.0], [3.0], [211], [1], [10], 0)
    with pytest.raises(DataError, match="eta has shape"):
        reference_pid([1e4, 2e4], [3.0], [211, 211], [1, 1], [10, 10], 0)
    with pytest.raises(DataError, match="non-finite"):
        reference_pid([np.nan], [3.0], [211], [1], [10], 0)


def test_config_is_json_serialisable_and_parameters_can_change():
    import json

    det = ReferencePID()
    json.dumps(det.config())
    dark = ReferencePID(radiators=(dataclasses.replace(RICH1, n_photons_saturated=5.0), RICH2))
    strong = _tracks(321, 5e3, 2.3, n=2000, seed=22)
    weak = _tracks(321, 5e3, 2.3, n=2000, seed=22, detector=dark)
    assert strong["rich_dll_k"].mean() > weak["rich_dll_k"].mean() + 5


def test_stage_fills_particles_of_a_batch():
    n_ev = 50
    rng = np.random.default_rng(23)
    events = pd.DataFrame({"batch": np.zeros(n_ev, np.int64), "event": np.arange(n_ev, dtype=np.int32),
                           "n_tracks": rng.integers(20, 200, n_ev).astype(np.int32)})
    n = 400
    pid = rng.choice([211, -321, 2212, 13, -11, 421], n)
    pz = rng.uniform(5e3, 60e3, n)
    parts = pd.DataFrame({
        "batch": np.zeros(n, np.int64), "index": np.arange(n, dtype=np.int32),
        "event": rng.integers(0, n_ev, n).astype(np.int32), "pid": pid.astype(np.int32),
        "charge": np.sign(pid).astype(np.int8), "px": rng.normal(0, 800, n).astype(np.float32),
        "py": rng.normal(0, 800, n).astype(np.float32), "pz": pz.astype(np.float32),
    })
    batch = Batch(id=0, seed=42, n_events=n_ev, tables={"events": events, "particles": parts})
    out = ReferencePIDStage()(batch)["particles"]
    for c, dt in PID_COLUMNS.items():
        assert c in COLUMNS["particles"] and out[c].dtype == np.dtype(dt)
    composite = np.abs(out["pid"]) == 421
    assert out.loc[composite, list(PID_COLUMNS)].isna().all().all()
    assert out.loc[~composite, "pid_k"].notna().all()
    kaons = np.abs(out["pid"]) == 321
    assert out.loc[kaons, "pid_k"].median() > out.loc[np.abs(out["pid"]) == 211, "pid_k"].median() + 10
    again = ReferencePIDStage()(Batch(id=0, seed=42, n_events=n_ev, tables={"events": events, "particles": parts}))
    pd.testing.assert_frame_equal(out, again["particles"])


def test_empty_input_gives_empty_table():
    df = reference_pid([], [], [], [], [], 0)
    assert len(df) == 0 and list(df.columns) == list(PID_COLUMNS) + list(FLAG_COLUMNS) + [
        "probnn_e", "probnn_mu", "probnn_pi", "probnn_k", "probnn_p", "probnn_ghost"]
