"""Mis-ID rates (mambah.validation.misid): the table against an independent computation, the
RapidSim-style baseline's marginals and missing correlations, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from mambah.errors import ConfigurationError, DataError, MissingColumnError
from mambah.validation.misid import (
    MISID,
    BaselineWarning,
    IndependentPID,
    MisID,
    misid_table,
    reference_response,
    tolerance,
)

PDG = {"pi": 211, "K": 321, "p": 2212, "mu": 13}


def _tracks(n, rng):
    sp = rng.choice([211, 321, 2212, 13], n)
    return pd.DataFrame({"P": np.exp(rng.uniform(np.log(1.5e3), np.log(200e3), n)), "ETA": rng.uniform(1.8, 5.2, n),
                         "nTracks": rng.integers(5, 300, n).astype(float), "charge": rng.choice([-1.0, 1.0], n),
                         "TRUEID": sp * rng.choice([-1, 1], n)})


def _response(n, rng, shift=0.0):
    pidk = rng.normal(shift, 6.0, n)
    pidk[rng.random(n) < 0.05] = np.nan  # absent RICH information fails every cut
    return pd.DataFrame({"PIDK": pidk, "PIDp": pidk + rng.normal(0, 4, n),
                         "isMuon": (rng.random(n) < 0.2).astype(np.float32)})


def test_misid_table_matches_an_independent_computation():
    rng = np.random.default_rng(3)
    n = 6000
    tracks = _tracks(n, rng)
    resp = {"reference": _response(n, rng), "chain": _response(n, rng, 0.5), "baseline": _response(n, rng, -1.0)}
    p_edges, eta_edges = [2e3, 10e3, 40e3, 150e3], [2.0, 3.5, 5.0]
    tab = misid_table(tracks, resp, p_edges=p_edges, eta_edges=eta_edges)
    assert list(tab["misid"].unique()) == list(MISID)
    assert len(tab) == len(MISID) * 3 * 2

    # the same numbers, bin by bin, with plain numpy and the requirements written out by hand
    with np.errstate(invalid="ignore"):
        passes = {
            "K->pi": lambda r: r["PIDK"].to_numpy() < 0,
            "pi->K": lambda r: r["PIDK"].to_numpy() > 5,
            "p->K": lambda r: r["PIDK"].to_numpy() > 5,
            "p->K(PIDp-PIDK)": lambda r: (r["PIDK"].to_numpy() > 5) & (r["PIDp"].to_numpy() - r["PIDK"].to_numpy() < 0),
            "pi->mu": lambda r: r["isMuon"].to_numpy() == 1,
            "mu->pi": lambda r: r["isMuon"].to_numpy() == 0,
            "K->mu": lambda r: r["isMuon"].to_numpy() == 1,
            "p->mu": lambda r: r["isMuon"].to_numpy() == 1,
        }
        assert set(passes) == set(MISID)
        species = {"K->pi": "K", "pi->K": "pi", "p->K": "p", "p->K(PIDp-PIDK)": "p", "pi->mu": "pi", "mu->pi": "mu",
                   "K->mu": "K", "p->mu": "p"}
        p, eta = tracks["P"].to_numpy(), tracks["ETA"].to_numpy()
        for name, f in passes.items():
            rows = tab[tab["misid"] == name]
            assert (rows["species"] == species[name]).all()
            for i in range(3):
                for j in range(2):
                    cell = ((np.abs(tracks["TRUEID"].to_numpy()) == PDG[species[name]])
                            & (p >= p_edges[i]) & (p < p_edges[i + 1])
                            & (eta >= eta_edges[j]) & (eta < eta_edges[j + 1]))
                    row = rows[(rows["p_lo"] == p_edges[i]) & (rows["eta_lo"] == eta_edges[j])].iloc[0]
                    m = cell.sum()
                    assert row["n"] == m
                    rate = {k: f(r)[cell].sum() / m for k, r in resp.items()}
                    err = {k: np.sqrt(v * (1 - v) / m) for k, v in rate.items()}
                    tol = 0.1 * rate["reference"] if rate["reference"] < 0.1 else 0.01
                    assert row["tolerance"] == pytest.approx(tol)
                    for k in resp:
                        assert row[k] == pytest.approx(rate[k], abs=1e-12)
                        assert row[f"{k}_err"] == pytest.approx(err[k], abs=1e-12)
                    for k in ("chain", "baseline"):
                        d = rate[k] - rate["reference"]
                        assert row[f"{k}_diff"] == pytest.approx(d, abs=1e-12)
                        assert row[f"{k}_diff_err"] == pytest.approx(np.hypot(err[k], err["reference"]), abs=1e-12)
                        assert bool(row[f"{k}_pass"]) == (abs(d) < tol)


def test_tolerance_is_absolute_above_and_relative_below_ten_percent():
    assert tolerance([0.5, 0.1, 0.05, 0.0]).tolist() == pytest.approx([0.01, 0.01, 0.005, 0.0])


def _calib(n, rng):
    """Two species whose PIDK depends strongly on the (p, eta) cell, PIDp ~ PIDK (correlation ~1),
    isMuon tied to PIDK, and absent PIDK (NaN) in one cell only."""
    p = rng.uniform(2e3, 100e3, n)
    eta = rng.uniform(2.0, 5.0, n)
    sp = rng.choice([321, 211], n)
    base = np.where(p < 20e3, 20.0, -10.0) + np.where(eta < 3.5, 5.0, 0.0) + np.where(sp == 321, 3.0, -3.0)
    pidk = base + rng.normal(0, 2.0, n)
    pidp = pidk + rng.normal(0, 0.2, n)
    is_mu = (pidk > base).astype(float)
    nan = (p >= 20e3) & (eta >= 3.5) & (rng.random(n) < 0.3)
    pidk[nan] = np.nan
    return pd.DataFrame({"P": p, "ETA": eta, "TRUEID": sp, "PIDK": pidk, "PIDp": pidp, "isMuon": is_mu})


def test_baseline_keeps_the_cell_marginals_and_breaks_the_correlations():
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(11)
    calib = _calib(40_000, rng)
    p_edges, eta_edges = (2e3, 20e3, 100e3), (2.0, 3.5, 5.0)
    base = IndependentPID(p_edges, eta_edges, variables=("PIDK", "PIDp", "isMuon")).fit(calib)
    assert base.species == [211, 321]
    tracks = calib.sample(frac=1.0, random_state=2)[["P", "ETA", "TRUEID"]].reset_index(drop=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BaselineWarning)  # every track has a filled cell of its own
        gen = base.sample(tracks, np.random.default_rng(5))
    assert len(gen) == len(tracks)
    for sp in (211, 321):
        for pl, ph in zip(p_edges[:-1], p_edges[1:]):
            for el, eh in zip(eta_edges[:-1], eta_edges[1:]):
                c_cell = ((calib["TRUEID"] == sp) & calib["P"].between(pl, ph, inclusive="left")
                          & calib["ETA"].between(el, eh, inclusive="left")).to_numpy()
                g_cell = ((tracks["TRUEID"] == sp) & tracks["P"].between(pl, ph, inclusive="left")
                          & tracks["ETA"].between(el, eh, inclusive="left")).to_numpy()
                ref, out = calib[c_cell], gen[g_cell]
                # the cell's marginals: the same distribution (KS), the same share of absent values
                for v in ("PIDK", "PIDp"):
                    a, b = ref[v].dropna().to_numpy(), out[v].dropna().to_numpy()
                    assert ks_2samp(a, b).statistic < 0.05, (sp, pl, el, v)
                assert out["PIDK"].isna().mean() == pytest.approx(ref["PIDK"].isna().mean(), abs=0.03)
                assert out["isMuon"].mean() == pytest.approx(ref["isMuon"].mean(), abs=0.03)
                # ... and no correlation left between the variables of one track
                ok = ref["PIDK"].notna()
                assert np.corrcoef(ref.loc[ok, "PIDK"], ref.loc[ok, "PIDp"])[0, 1] > 0.95
                ok = out["PIDK"].notna().to_numpy()
                assert abs(np.corrcoef(out["PIDK"][ok], out["PIDp"][ok])[0, 1]) < 0.1
                assert abs(np.corrcoef(out["PIDK"][ok], out["isMuon"][ok])[0, 1]) < 0.1
                ok = ref["PIDK"].notna()
                assert np.corrcoef(ref.loc[ok, "PIDK"], ref.loc[ok, "isMuon"])[0, 1] > 0.5


def test_baseline_says_when_it_borrows_a_cell():
    rng = np.random.default_rng(1)
    calib = _calib(5000, rng)
    calib = calib[~((calib["P"] >= 20e3) & (calib["ETA"] < 3.5))]  # an empty cell
    base = IndependentPID((2e3, 20e3, 100e3), (2.0, 3.5, 5.0), variables=("PIDK",)).fit(calib)
    tracks = pd.DataFrame({"P": [50e3, 50e3, 300e3], "ETA": [3.0, 4.0, 4.0], "TRUEID": [321, 321, 321]})
    with pytest.warns(BaselineWarning, match=r"1 of 3 tracks lie outside.*1 were drawn from the nearest filled cell"):
        out = base.sample(tracks, 0)
    # the empty cell (p >= 20 GeV, eta < 3.5) borrows its neighbour in the same p bin (eta >= 3.5)
    donor = calib[(calib["P"] >= 20e3) & (calib["ETA"] >= 3.5) & (calib["TRUEID"] == 321)]["PIDK"]
    assert out["PIDK"].iloc[0] in set(donor.dropna().astype(np.float32)) or np.isnan(out["PIDK"].iloc[0])
    with pytest.raises(ConfigurationError, match=r"no calibration histograms for the true \|PDG id\| \[2212\]"):
        base.sample(pd.DataFrame({"P": [5e3], "ETA": [3.0], "TRUEID": [2212]}))


def test_reference_response_is_the_reference_detector_on_the_same_tracks():
    from mambah.reference.pid import reference_pid

    rng = np.random.default_rng(4)
    tracks = _tracks(500, rng)
    tracks = tracks[tracks["P"] > 2e3].reset_index(drop=True)
    got = reference_response(tracks, seed=9)
    want = reference_pid(tracks["P"], tracks["ETA"], tracks["TRUEID"], tracks["charge"], tracks["nTracks"], rng=9)
    np.testing.assert_array_equal(got["PIDK"].to_numpy(), want["pid_k"].to_numpy())
    np.testing.assert_array_equal(got["isMuon"].to_numpy(), want["is_muon"].to_numpy())


def test_bad_input_is_refused():
    tracks = pd.DataFrame({"P": [3e3], "ETA": [3.0], "TRUEID": [321]})
    r = pd.DataFrame({"PIDK": [1.0]})
    with pytest.raises(ConfigurationError, match="no 'reference' among the responses"):
        misid_table(tracks, {"chain": r})
    with pytest.raises(DataError, match="response 'chain' has 2 rows"):
        misid_table(tracks, {"reference": r, "chain": pd.DataFrame({"PIDK": [1.0, 2.0]})})
    with pytest.raises(ConfigurationError, match="unknown mis-ID 'K->e'"):
        misid_table(tracks, {"reference": r}, misids=["K->e"])
    with pytest.raises(MissingColumnError, match="isMuon"):
        misid_table(tracks, {"reference": r}, misids=["pi->mu"])
    with pytest.raises(ConfigurationError, match="unknown species 'kaon'"):
        MisID("x", "kaon", ("PIDK > 0",))
    with pytest.raises(ConfigurationError, match="p_edges"):
        misid_table(tracks, {"reference": r}, misids=["K->pi"], p_edges=[5e3, 2e3])


def test_batch_tracks_follow_the_truth_links():
    from mambah.store.testing import synthetic_batch
    from mambah.validation.misid import batch_tracks

    b = synthetic_batch(3, 200, seed=2)
    parts = b["particles"]
    got = batch_tracks(b)
    # independently: a pandas merge of the tracks with their MC particles and events
    trk = parts[(parts["vertex"] < 0) & (parts["mc_particle"] >= 0) & (parts["charge"] != 0)]
    want = (trk.merge(b["mc_particles"][["index", "pid"]].rename(columns={"index": "mc_particle", "pid": "true"}),
                      on="mc_particle", how="left")
            .merge(b["events"][["event", "n_tracks"]], on="event", how="left"))
    assert len(got) == len(want) > 0 and got["batch"].eq(3).all()
    np.testing.assert_array_equal(got["index"].to_numpy(), want["index"].to_numpy())
    np.testing.assert_array_equal(got["TRUEID"].to_numpy(), want["true"].to_numpy())
    np.testing.assert_array_equal(got["nTracks"].to_numpy(), want["n_tracks"].to_numpy(float))
    p = np.sqrt(want["px"] ** 2 + want["py"] ** 2 + want["pz"] ** 2).to_numpy()
    np.testing.assert_allclose(got["P"].to_numpy(), p, rtol=1e-12)
    np.testing.assert_allclose(got["ETA"].to_numpy(), np.arctanh(want["pz"].to_numpy() / p), rtol=1e-9)
    np.testing.assert_array_equal(got["PIDK"].to_numpy(), want["pid_k"].to_numpy())
