"""The opt-in Bremsstrahlung stage in reference mode: other tracks untouched bit for bit, the
electrons' mean momentum loss equal to the Bethe-Heitler expectation of the documented material,
HASBREMADDED where (and only where) recovery added energy, determinism, refusals, the store column
and the ntuple branch."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pandas as pd
import pytest

from mambah import Composites, Efficiency, Occupancy, Pipeline, Resolution, generator_stages
from mambah.errors import ConfigurationError, OutOfRangeWarning
from mambah.physics.columns import BREM_NOT_COMPUTED
from mambah.reconstruction import Bremsstrahlung
from mambah.reference.brem import BremDetector

DESCRIPTOR = "B+ -> (J/psi(1S) -> e+ e-) K+"


def up_to_resolution(n: int = 4000, seed: int = 1, descriptor: str = DESCRIPTOR):
    pipe = Pipeline([*generator_stages(descriptor), Occupancy(), Efficiency(model="reference"),
                     Resolution(model="reference")])
    return pipe.process(pipe.make_batch(0, production_seed=seed, n_events=n))


@pytest.fixture(scope="module")
def before():
    return up_to_resolution()


def brem(batch, **kw):
    return Bremsstrahlung(**kw)(copy.deepcopy(batch))


@pytest.fixture(scope="module")
def with_recovery(before):
    return brem(before)


@pytest.fixture(scope="module")
def without_recovery(before):
    return brem(before, recovery=False)


def electrons(batch):
    p, mc = batch["particles"], batch["mc_particles"].set_index("index")
    true_pid = mc.loc[p["mc_particle"].to_numpy(), "pid"].to_numpy()
    return (np.abs(true_pid) == 11) & (p["vertex"].to_numpy() < 0)


def pmag(df):
    return np.sqrt(sum(df[c].to_numpy(np.float64) ** 2 for c in ("px", "py", "pz")))


def test_other_tracks_and_columns_untouched(before, with_recovery):
    a, b = before["particles"], with_recovery["particles"]
    ele = electrons(before)
    assert ele.sum() > 1000 and (~ele).sum() > 500
    assert (a["has_brem_added"] == BREM_NOT_COMPUTED).all()
    # every column of the non-electron rows bit for bit, but the flag: "not computed" -> 0
    pd.testing.assert_frame_equal(a[~ele].drop(columns="has_brem_added"), b[~ele].drop(columns="has_brem_added"),
                                  check_exact=True)
    assert (b.loc[~ele, "has_brem_added"] == 0).all()
    # the electrons: only their momentum, energy and flag change, and their direction does not
    moved = ["px", "py", "pz", "e", "has_brem_added"]
    pd.testing.assert_frame_equal(a[ele].drop(columns=moved), b[ele].drop(columns=moved), check_exact=True)
    for c in ("px", "py"):
        np.testing.assert_allclose(b.loc[ele, c] / b.loc[ele, "pz"], a.loc[ele, c] / a.loc[ele, "pz"], rtol=1e-12)
    m = b.loc[ele, "m"].to_numpy()
    np.testing.assert_allclose(b.loc[ele, "e"], np.sqrt(pmag(b[ele]) ** 2 + m * m), rtol=1e-12)
    for t in ("mc_particles", "mc_vertices", "events"):
        pd.testing.assert_frame_equal(before[t], with_recovery[t], check_exact=True)
    info = with_recovery.info["reconstruction"]["brem"]
    assert info["electrons"] == ele.sum() and info["with_brem_added"] == int((b["has_brem_added"] == 1).sum())


def test_mean_loss_is_the_bethe_heitler_expectation(before, without_recovery):
    """Without recovery each electron keeps the fraction z of its measured momentum, with
    <z> = exp(-t) and <z^2> = 3^(-t/ln 2) for its material t [Bethe-Heitler]: compare the sample
    means with the expectations computed track by track from the documented profile."""
    ele = electrons(before)
    z = pmag(without_recovery["particles"][ele]) / pmag(before["particles"][ele])
    mc = before["mc_particles"].set_index("index").loc[before["particles"]["mc_particle"].to_numpy()[ele]]
    vz = before["mc_vertices"].set_index("index").loc[mc["prod_vertex"].to_numpy(), "z"].to_numpy(np.float64)
    t = BremDetector().thickness(mc["px"].to_numpy(), mc["py"].to_numpy(), mc["pz"].to_numpy(), vz).sum(axis=1)
    assert 0.25 < t.mean() < 0.45  # about 0.3 X0 before the magnet [DP], longer paths off axis
    n = len(z)
    for got, want in ((z, np.exp(-t)), (z * z, 3.0 ** (-t / np.log(2.0)))):
        err = got.std() / np.sqrt(n)
        assert abs(got.mean() - want.mean()) < 4 * err, (got.mean(), want.mean(), err)
    assert 0.6 < z.mean() < 0.85 and (z < 1).all() and (z > 0).all()
    assert (without_recovery["particles"].loc[ele, "has_brem_added"] == 0).all()


def test_flag_marks_exactly_the_tracks_with_energy_added(before, with_recovery, without_recovery):
    """Same seed, same draws: with recovery a track's momentum exceeds the one without exactly
    where HASBREMADDED is 1 (the added energy), and the flag is the reference functions' own."""
    ele = electrons(before)
    flag = with_recovery["particles"]["has_brem_added"].to_numpy()[ele]
    gain = pmag(with_recovery["particles"][ele]) - pmag(without_recovery["particles"][ele])
    assert set(np.unique(flag)) == {0, 1} and 0.1 < flag.mean() < 0.9
    np.testing.assert_array_equal(gain > 0, flag == 1)
    assert (gain[flag == 0] == 0).all()
    # the reference detector's response on the same tracks and random stream gives the same flags
    mc = before["mc_particles"].set_index("index").loc[before["particles"]["mc_particle"].to_numpy()[ele]]
    vt = before["mc_vertices"].set_index("index").loc[mc["prod_vertex"].to_numpy()]
    r = BremDetector().response(*(mc[c].to_numpy() for c in ("px", "py", "pz")),
                                *(vt[c].to_numpy(np.float64) for c in ("x", "y", "z")), seed=before.rng("brem"))
    np.testing.assert_array_equal(r["has_brem_added"], flag == 1)
    np.testing.assert_allclose(gain, r["brem_e_added"], rtol=1e-9, atol=1e-6)
    # recovery brings the electrons back towards their measured momentum, on average not beyond it
    p0 = pmag(before["particles"][ele])
    assert np.mean(pmag(without_recovery["particles"][ele]) / p0) < np.mean(pmag(with_recovery["particles"][ele]) / p0) < 1.0


def test_deterministic_given_the_batch_seed(before, with_recovery):
    again = brem(before)
    pd.testing.assert_frame_equal(again["particles"], with_recovery["particles"], check_exact=True)
    other = copy.deepcopy(before)
    other.seed = before.seed + 1
    moved = Bremsstrahlung()(other)["particles"]
    ele = electrons(before)
    assert not np.array_equal(moved["px"].to_numpy()[ele], with_recovery["particles"]["px"].to_numpy()[ele])


def test_refusals(before, with_recovery):
    with pytest.raises(ConfigurationError, match="radiate twice"):
        Bremsstrahlung()(copy.deepcopy(with_recovery))
    with pytest.raises(ConfigurationError, match="unknown model 'network'"):
        Bremsstrahlung(model="network")
    done = Composites()(copy.deepcopy(before))
    with pytest.raises(ConfigurationError, match="before Composites"):
        Bremsstrahlung()(done)


def test_store_column_and_ntuple_branch(tmp_path):
    from mambah.production import run_production
    from mambah.simulation import standard_pipeline
    from mambah.store import Store

    with Store(f"duckdb:///{tmp_path / 's.duckdb'}") as st:
        for prod, b in (("plain", None), ("brem", "reference")):
            pipe = standard_pipeline("B+ -> K+ e+ e-", brem=b, pid=False)
            with warnings.catch_warnings():  # the shipped networks' range edges, as in any production
                warnings.simplefilter("ignore", OutOfRangeWarning)
                run_production(pipe, n_events=400, batch_size=400, seed=3, store=st, production=prod)
        plain, radiating = st.candidates(production="plain"), st.candidates(production="brem")
        parts = st.read("particles")
    assert not any(c.endswith("HASBREMADDED") for c in plain.columns)
    for x in ("e1", "e2"):
        flag = radiating[f"{x}_HASBREMADDED"].to_numpy()
        seen = np.isfinite(radiating[f"{x}_P"].to_numpy())
        assert flag.dtype == np.int8 and set(np.unique(flag[seen])) <= {0, 1} and (flag[~seen] == -1).all()
    assert "K_HASBREMADDED" not in radiating.columns and "B_HASBREMADDED" not in radiating.columns
    # the electrons lose momentum, the kaon (same seed, same draws before the stage) does not
    assert np.nanmean(radiating["e1_P"]) < np.nanmean(plain["e1_P"])
    np.testing.assert_array_equal(radiating["K_P"].to_numpy(), plain["K_P"].to_numpy())
    assert (parts["has_brem_added"].isin([-1, 0, 1])).all()


def test_cli_brem_option(tmp_path):
    """``mambah simulate ... --brem reference`` as users call it: its own production name (the
    name without the option is what it always was), the flag in the store; refused at truth level."""
    import subprocess
    import sys

    from mambah.cli.cmd_simulate import default_production_name
    from mambah.store import Store

    desc = "B+ -> K+ e+ e-"
    plain = default_production_name(desc, 2)
    assert plain == default_production_name(desc, 2, None, None, None) != default_production_name(desc, 2, brem="reference")
    db = f"duckdb:///{tmp_path / 'cli.duckdb'}"
    r = subprocess.run([sys.executable, "-m", "mambah", "simulate", desc, "--events", "300", "--seed", "2", "--no-pid",
                        "--brem", "reference", "--db", db], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    with Store(db) as st:
        assert st.read("batches", columns=["production"])["production"].tolist() == [
            default_production_name(desc, 2, brem="reference")]
        flags = st.read("particles")["has_brem_added"]
        assert (flags == 1).any() and (flags == 0).any()
    r = subprocess.run([sys.executable, "-m", "mambah", "simulate", desc, "--events", "10", "--level", "truth",
                        "--brem", "reference", "--db", db], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode != 0 and "needs the reconstruction" in r.stderr


def test_in_a_cocktail_the_muon_channel_has_no_brem():
    """B+ -> K+ e+ e- and B+ -> K+ mu+ mu- share one cocktail ntuple (same shape): every track gets
    HASBREMADDED there, and only the electron channel's leptons have brem added."""
    from mambah.production import run_production
    from mambah.simulation import cocktail_pipeline
    from mambah.store import Store

    pipe = cocktail_pipeline(["B+ -> K+ e+ e-", "B+ -> K+ mu+ mu-"], brem="reference", pid=False)
    with Store("duckdb:///:memory:") as st, warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)
        run_production(pipe, n_events=600, batch_size=600, seed=1, store=st, production="c")
        nt = st.candidates()
    ee, mumu = nt["channel"] == 0, nt["channel"] == 1
    assert ee.sum() > 100 and mumu.sum() > 100
    for x in ("e1", "e2"):
        assert (nt.loc[ee, f"{x}_HASBREMADDED"] == 1).any()
        assert nt.loc[mumu, f"{x}_HASBREMADDED"].isin([-1, 0]).all()
    assert nt["K_HASBREMADDED"].isin([-1, 0]).all()
