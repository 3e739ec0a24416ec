"""mambah.physics against independent references, the column map, the cuts and the efficiency pulls."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mambah.errors import ConfigurationError, MissingColumnError
from mambah.physics import (
    COLUMN_MAP,
    SPECIES,
    eta,
    lhcb_name,
    p_eta,
    p_eta32,
    pdg_charge,
    pdg_mass,
    species,
    store_name,
)
from mambah.validation.cuts import parse_cut
from mambah.validation.efficiency import efficiency_in_bins, pull_summary


@pytest.mark.parametrize("name,pdg_name", [("e", "e-"), ("mu", "mu-"), ("pi", "pi+"), ("K", "K+"), ("p", "p")])
def test_species_facts_are_particles(name, pdg_name):
    from particle import Particle

    want = Particle.from_name(pdg_name)  # looked up by name, not by the PDG id mambah uses
    s = species(name)
    assert s.pdg == int(want.pdgid)
    assert s.mass == float(want.mass) and s.charge == int(want.charge)
    assert pdg_mass([s.pdg, -s.pdg]).tolist() == [float(want.mass)] * 2
    assert pdg_charge([s.pdg, -s.pdg]).tolist() == [want.charge, -want.charge]
    assert name in SPECIES


def test_eta_against_minus_ln_tan_half_theta():
    rng = np.random.default_rng(3)
    px, py, pz = rng.normal(0, 1e3, (3, 1000))
    theta = np.arctan2(np.hypot(px, py), pz)
    np.testing.assert_allclose(eta(px, py, pz), -np.log(np.tan(theta / 2)), rtol=1e-9, atol=1e-9)
    p, e = p_eta(px, py, pz)
    np.testing.assert_allclose(p, np.sqrt(px**2 + py**2 + pz**2), rtol=1e-15)
    np.testing.assert_array_equal(e, eta(px, py, pz))


def test_eta_along_the_beam_is_finite():
    e = eta([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [5.0, -5.0, 0.0])
    assert np.all(np.isfinite(e))
    assert e[0] > 7 and e[1] == -e[0] and e[2] == 0.0  # asinh(±1e3) ≈ ±7.6: beyond any detector
    # just off the beam the formula holds: θ = 1e-6 rad
    assert math.isclose(float(eta(1e-6, 0.0, 1.0)), -math.log(math.tan(0.5e-6)), rel_tol=1e-9)


def test_float32_fast_path_agrees_with_p_eta():
    rng = np.random.default_rng(4)
    px, py = rng.normal(0, 1e3, (2, 1000))
    pz = rng.uniform(1e3, 1e5, 1000)
    p32, e32 = p_eta32(px, py, pz)
    assert p32.dtype == e32.dtype == np.float32
    p, e = p_eta(px, py, pz)
    np.testing.assert_allclose(p32, p, rtol=1e-6)
    np.testing.assert_allclose(e32, e, rtol=1e-5, atol=1e-5)
    # along the beam pT is floored at 1e-6: finite, signed
    _, e0 = p_eta32([0.0, 0.0], [0.0, 0.0], [5.0, -5.0])
    assert np.all(np.isfinite(e0)) and e0[0] > 15 and e0[1] == -e0[0]


def test_column_map_round_trips():
    for c in COLUMN_MAP:
        if c.store is not None:
            assert store_name(lhcb_name(c.store)) == c.store
            assert lhcb_name(store_name(c.lhcb)) == c.lhcb
        for alias in c.aliases:
            assert store_name(alias) == c.store
    assert store_name("DLLp") == "pid_p" and lhcb_name("n_tracks") == "nTracks"
    with pytest.raises(ConfigurationError, match="DLLp"):
        store_name("DLLq")


def _brute_force_error(w, passed):
    w, passed = np.asarray(w, float), np.asarray(passed, float)
    e = sum(wi * pi for wi, pi in zip(w, passed)) / sum(w)
    return e, math.sqrt(sum(wi * wi * (pi - e) ** 2 for wi, pi in zip(w, passed))) / abs(sum(w))


def test_pull_against_brute_force_with_signed_weights():
    rng = np.random.default_rng(5)
    n = 400
    ref = pd.DataFrame({"P": rng.uniform(0, 2, n), "DLLp": rng.normal(1, 3, n)})
    gen = pd.DataFrame({"P": rng.uniform(0, 2, n), "DLLp": rng.normal(1.5, 3, n)})
    w = rng.normal(0.6, 1.0, n)  # about 30% negative, as sWeights
    assert (w < 0).mean() > 0.2
    tab = efficiency_in_bins(ref, gen, "DLLp > 0", bins={"P": [0, 1, 2]}, ref_weight=w)
    for i, (lo, hi) in enumerate(((0, 1), (1, 2))):
        m = (ref["P"] >= lo) & (ref["P"] < hi)
        e, s = _brute_force_error(w[m], ref["DLLp"][m] > 0)
        g = (gen["P"] >= lo) & (gen["P"] < hi)
        eg = float((gen["DLLp"][g] > 0).mean())
        row = tab.iloc[i]
        assert row["ref_eff"] == pytest.approx(e, rel=1e-12)
        assert row["ref_error"] == pytest.approx(s, rel=1e-12)
        assert row["gen_eff"] == pytest.approx(eg, rel=1e-12)
        assert row["pull"] == pytest.approx((eg - e) / s, rel=1e-12)
        assert row["n_eff_ref"] == pytest.approx(w[m].sum() ** 2 / (w[m] ** 2).sum(), rel=1e-12)


def test_cut_parse_and_missing_column_errors_name_the_column():
    with pytest.raises(ConfigurationError, match="DLLp >> 5"):
        parse_cut("DLLp >> 5")
    cut = parse_cut("isMuon == 1")
    assert (cut.column, cut.op, cut.value) == ("isMuon", "==", 1.0)
    with pytest.raises(MissingColumnError, match="RichDLLq") as err:
        parse_cut("RichDLLq > 0").apply(pd.DataFrame({"RichDLLk": [1.0], "P": [2.0]}))
    assert "RichDLLk" in str(err.value) and "P" in str(err.value)
    # one name of the column map finds the column under another (DLLK is LHCb's PIDK)
    assert parse_cut("DLLK > 0").apply(pd.DataFrame({"PIDK": [-1.0, 1.0]})).tolist() == [False, True]
    assert parse_cut("DLLp - DLLK > 0").apply({"PIDp": np.array([3.0, 1.0]), "PIDK": np.array([1.0, 2.0])}).tolist() \
        == [True, False]


def test_a_planted_one_bin_bias_is_the_worst_pull():
    rng = np.random.default_rng(11)
    n = 200_000
    edges = np.linspace(2e3, 1e5, 11)
    ref = pd.DataFrame({"P": rng.uniform(2e3, 1e5, n), "PIDK": rng.normal(0.5, 4, n)})
    gen = pd.DataFrame({"P": rng.uniform(2e3, 1e5, n), "PIDK": rng.normal(0.5, 4, n)})
    planted = (gen["P"] >= edges[6]) & (gen["P"] < edges[7])
    gen.loc[planted, "PIDK"] += 0.5  # ~5% more pass PIDK > 0 in bin 6 only
    tab = efficiency_in_bins(ref, gen, "PIDK > 0", bins={"P": edges})
    s = pull_summary(tab)
    assert s["worst_bin"]["P_lo"] == edges[6] and s["worst_bin"]["pull"] > 5
    assert abs(s["pull_mean"]) < 2 and 0.3 < s["pull_width"] < 2.5
