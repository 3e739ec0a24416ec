"""Merged pi0 candidates (issue 25): a pi0 whose photons merge into one ECAL cluster gets one row.

``D0 -> K- pi+ (pi0 -> gamma gamma)`` at high pT: most pi0 merge. The Neutrals stage gives a
reconstructed merged pi0 one ``particles`` row (pid 111, the PDG pi0 mass, |p| from the cluster
energy, direction from the pi0's origin to the cluster), Composites takes the pi0 from that row or
from its two resolved photons, and the candidates with resolved pi0 are those of a production
without merged rows, bit for bit. Expected masses come from the ``particle`` package directly.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
from particle import Particle

from mambah.errors import OutOfRangeWarning

D0PI0 = "D0 -> K- pi+ (pi0 -> gamma gamma)"
M_PI0 = float(Particle.from_pdgid(111).mass)
M_D0 = float(Particle.from_pdgid(421).mass)


@pytest.fixture(scope="module")
def tracked():
    """Generated and tracked D0 -> K- pi+ pi0 events with pT in [15, 30] GeV (merged pi0 common)."""
    from mambah.generation import Uniform, generator_stages
    from mambah.pipeline import Pipeline
    from mambah.reconstruction import Efficiency, Occupancy, Resolution

    pipe = Pipeline([*generator_stages(D0PI0, pt=Uniform(15000, 30000)), Occupancy(), Efficiency(model="reference"),
                     Resolution(model="reference")])
    return pipe.process(pipe.make_batch(0, production_seed=3, n_events=1500))


def _neutrals(batch, model="reference"):
    from mambah.reconstruction import Neutrals

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)
        return Neutrals(model=model)(copy.deepcopy(batch))


def _composites(batch):
    from mambah.reconstruction import Composites

    return Composites(neutrals=(22,))(copy.deepcopy(batch))


@pytest.fixture(scope="module")
def neutral(tracked):
    return _neutrals(tracked)


@pytest.fixture(scope="module")
def built(neutral):
    return _composites(neutral)


def test_merged_pi0_rows(neutral):
    parts, mc = neutral["particles"], neutral["mc_particles"].set_index("index")
    pi0 = parts[parts["pid"] == 111]
    info = neutral.info["reconstruction"]["neutrals"]
    assert len(pi0) > 200 and info["merged_pi0_candidates"] == len(pi0)
    assert info["merged_pi0_candidates"] <= info["merged_pi0"] and info["pi0"] == neutral.n_events
    assert (pi0["charge"] == 0).all() and (pi0["vertex"] == -1).all()
    np.testing.assert_allclose(pi0["m"], M_PI0, rtol=1e-6)
    p2 = pi0["px"] ** 2 + pi0["py"] ** 2 + pi0["pz"] ** 2
    np.testing.assert_allclose(pi0["e"] ** 2 - p2, M_PI0**2, rtol=1e-6)
    truth = mc.loc[pi0["mc_particle"]]
    assert (truth["pid"].to_numpy() == 111).all() and truth["reconstructed"].all()
    assert (truth["event"].to_numpy() == pi0["event"].to_numpy()).all()
    # the cluster measures the pi0: energy within the ECAL resolution, direction within a few mrad
    e_ratio = pi0["e"].to_numpy() / truth["e"].to_numpy()
    assert abs(np.median(e_ratio) - 1) < 0.01 and 0.003 < np.std(e_ratio) < 0.05
    cos = (pi0[["px", "py", "pz"]].to_numpy() * truth[["px", "py", "pz"]].to_numpy()).sum(axis=1)
    cos /= np.sqrt(p2.to_numpy() * (truth[["px", "py", "pz"]].to_numpy() ** 2).sum(axis=1))
    assert np.median(np.arccos(np.minimum(cos, 1.0))) < 0.002
    # a merged pi0 has no photon row; the photons of the other pi0 keep theirs
    gam = parts[parts["pid"] == 22]
    assert not set(gam["event"]) & set(pi0["event"]) and info["reconstructed"] == len(gam)
    both = gam.groupby("event").size()
    assert info["resolved_pi0_candidates"] == int((both == 2).sum()) > 0


def test_d0_from_merged_and_resolved_pi0(built):
    parts, vert = built["particles"], built["vertices"]
    d0 = parts[np.abs(parts["pid"]) == 421].set_index("index")
    fs = parts[parts["vertex"] < 0]
    assert set(fs.loc[fs["pid"] == 111, "mother"]) <= set(d0.index) | {-1}  # -1: its K- or pi+ not found
    fs = fs[fs["mother"] >= 0]
    sums = fs.groupby("mother")[["px", "py", "pz", "e"]].sum().loc[d0.index]
    np.testing.assert_allclose(d0[["px", "py", "pz", "e"]].to_numpy(), sums.to_numpy(), rtol=1e-12)
    kinds = fs.groupby("mother")["pid"].apply(lambda s: tuple(sorted(np.abs(s)))).loc[d0.index]
    merged = kinds == (111, 211, 321)
    assert set(kinds) == {(111, 211, 321), (22, 22, 211, 321)} and merged.sum() > 200 and (~merged).sum() > 20
    nd = vert.set_index("particle").loc[d0.index, "n_daughters"]
    assert (nd[merged] == 3).all() and (nd[~merged] == 4).all()
    # both D0 mass peaks sit at the D0 mass, with widths of the same order (the ECAL's resolution)
    for sel in (merged, ~merged):
        m = d0.loc[sel, "m"].to_numpy()
        assert abs(np.median(m) - M_D0) < 10 and 5 < np.std(m) < 60


def test_resolved_candidates_are_unchanged_bit_for_bit(neutral, built):
    """Without the merged rows (a production that does not build them) the other candidates are the same."""
    parts = neutral["particles"]
    old = copy.deepcopy(neutral)
    old["particles"] = parts[parts["pid"] != 111].reset_index(drop=True)
    old = _composites(old)
    cols = ["event", "mc_particle", "pid", "charge", "px", "py", "pz", "e", "m"]
    po, pn = old["particles"], built["particles"]
    d_old = po[np.abs(po["pid"]) == 421]
    d_new = pn[np.abs(pn["pid"]) == 421]
    assert 0 < len(d_old) < len(d_new)
    same = d_new[d_new["event"].isin(d_old["event"])]
    assert same[cols].reset_index(drop=True).equals(d_old[cols].reset_index(drop=True))
    vo, vn = old["vertices"], built["vertices"]
    vcols = ["event", "x", "y", "z", "m", "m_truehyp", "n_daughters", "n_invisible"]
    assert vn[vn["event"].isin(vo["event"])][vcols].reset_index(drop=True).equals(vo[vcols].reset_index(drop=True))
    fo, fn = po[po["vertex"] < 0], pn[(pn["vertex"] < 0) & (pn["pid"] != 111)]
    assert fn[cols].reset_index(drop=True).equals(fo[cols].reset_index(drop=True))


def test_ntuple_pi0_branches(built):
    from mambah import Store

    with Store("duckdb:///:memory:") as st:
        st.write_batch(copy.deepcopy(built))
        nt = st.candidates()
    t = nt["pi0_Type"].to_numpy()
    assert nt["pi0_Type"].dtype == np.int8 and set(np.unique(t)) == {0, 1, 2}
    merged, resolved = t == 1, t == 2
    np.testing.assert_allclose(nt.loc[merged, "pi0_M"], M_PI0, rtol=1e-6)
    assert np.isnan(nt.loc[merged, "gamma1_PT"]).all() and np.isfinite(nt.loc[resolved, "gamma1_PT"]).all()
    m_res = nt.loc[resolved, "pi0_M"].to_numpy()
    assert np.isfinite(m_res).all() and np.std(m_res) > 1 and abs(np.median(m_res) - M_PI0) < 10
    assert np.isnan(nt.loc[t == 0, "pi0_M"]).all()
    d0_ok = np.isfinite(nt["D0_M"].to_numpy())
    assert (d0_ok <= (t > 0)).all() and d0_ok[merged].mean() > 0.8
    assert (nt.loc[merged, "pi0_Reconstructed"] == 1).all()
    assert abs(np.median(nt.loc[merged & d0_ok, "D0_M"]) - M_D0) < 10


def test_model_mode_with_the_shipped_photon_model(tracked, neutral):
    out = _composites(_neutrals(tracked, model="model"))
    parts = out["particles"]
    info = out.info["reconstruction"]["neutrals"]
    pi0 = parts[parts["pid"] == 111]
    n_ref = neutral.info["reconstruction"]["neutrals"]["merged_pi0_candidates"]
    # the pi0 network's merged class against the reference detector, on the same events
    assert info["merged_pi0_candidates"] == len(pi0) and abs(len(pi0) - n_ref) < 0.1 * n_ref
    np.testing.assert_allclose(pi0["m"], M_PI0, rtol=1e-6)
    d0 = parts[np.abs(parts["pid"]) == 421]
    with_merged = d0["index"].isin(pi0["mother"])
    assert with_merged.sum() > 200
    assert abs(np.median(d0.loc[with_merged, "m"]) - M_D0) < 10
