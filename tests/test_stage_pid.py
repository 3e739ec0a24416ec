"""The PID stage: per-species chains on the tracks of a simulated batch."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest

from mambah.errors import ConfigurationError
from mambah.pid.stage import PID
from mambah.store.schema import PID_COLUMNS

# B-decay tracks reach momenta above the calibration samples' range (a few per mille): the stage
# warns with the fraction (tested in test_pid_chain.py); here that warning is expected, not an error.
pytestmark = pytest.mark.filterwarnings("ignore::mambah.nn.pidmodel.OutOfRangeWarning")


@pytest.fixture(scope="module")
def reco_batch():
    from mambah.simulation import standard_pipeline

    pl = standard_pipeline("B+ -> (J/psi -> mu+ mu-) K+")
    return pl.process(pl.make_batch(3, 11, 3000))


def _run(batch, **kw):
    import copy

    b = copy.deepcopy(batch)
    return PID(**kw)(b)


def test_pid_stage_fills_tracks_by_true_species(reco_batch):
    b = _run(reco_batch)
    parts, mc = b["particles"], b["mc_particles"]
    track = (parts["vertex"] < 0) & (parts["mc_particle"] >= 0)
    assert track.sum() > 1000
    t = parts[track]
    assert np.isfinite(t[["pid_e", "pid_mu", "pid_k", "pid_p", "is_muon"]].to_numpy()).all()
    assert parts.loc[~track, list(PID_COLUMNS)].isna().all().all()  # composites keep NaN
    for c, dt in PID_COLUMNS.items():
        assert str(parts[c].dtype) == dt
    true = np.abs(mc.set_index("index").loc[t["mc_particle"], "pid"].to_numpy())
    mu, k = t[true == 13], t[true == 321]
    # muons pass isMuon far more often than kaons; kaons have larger DLLK; NaN conventions
    assert mu["is_muon"].mean() > 0.5 > 0.1 > k["is_muon"].mean()
    assert k["pid_k"].median() > mu["pid_k"].median()
    assert t.loc[t["is_muon"] == 0, "muon_mu_ll"].isna().all()
    assert t.loc[t["is_muon"] == 1, "muon_mu_ll"].notna().all()
    assert b.info["reconstruction"]["pid"]["tracks"]["mu"] == int((true == 13).sum())


def test_pid_stage_is_reproducible_and_seeded(reco_batch):
    a, b = _run(reco_batch), _run(reco_batch)
    np.testing.assert_array_equal(a["particles"]["pid_k"].to_numpy(), b["particles"]["pid_k"].to_numpy())
    c = _run(reco_batch, name="pid2")
    tr = a["particles"]["vertex"] < 0
    assert not np.array_equal(a["particles"]["pid_k"][tr].to_numpy(), c["particles"]["pid_k"][tr].to_numpy())


def test_pid_stage_pickles_and_reports_models():
    s = PID()
    s2 = pickle.loads(pickle.dumps(s))
    assert s2 == s
    mv = s.model_versions()
    assert {f"pid-{sp}-{r}" for sp in ("e", "mu", "pi", "K", "p") for r in ("flags", "muon", "rich")} <= set(mv)
    assert all(set(v) == {"version", "hash"} for v in mv.values())
    assert s.config()["species"] == ["e", "mu", "pi", "K", "p"]


def test_pid_stage_species_without_model(tmp_path, reco_batch, caplog):
    with pytest.raises(ConfigurationError, match="no PID model chain for species \\['K'\\].*available: none"):
        PID(models_dir=str(tmp_path), species=("K",))
    with pytest.raises(ConfigurationError, match="unknown species \\['deuteron'\\]"):
        PID(species=("deuteron",))
    with caplog.at_level(logging.WARNING, logger="mambah.pid.stage"):
        b = _run(reco_batch, species=("mu",))
    t = b["particles"][b["particles"]["vertex"] < 0]
    assert t["pid_k"].isna().any() and t["pid_k"].notna().any()
    assert "have no PID chain" in caplog.text


def test_standard_pipeline_with_pid_records_the_model_versions():
    from mambah.simulation import standard_pipeline

    pl = standard_pipeline("B+ -> (J/psi -> mu+ mu-) K+", pid=True)
    assert type(pl.stages[-1]).__name__ == "PID"
    prov = pl.provenance()
    assert "pid-K-rich" in prov["models"] and "hash" in prov["models"]["pid-mu-muon"]
    b = pl.process(pl.make_batch(4, 2, 300))
    t = b["particles"][b["particles"]["vertex"] < 0]
    assert t["pid_k"].notna().all()
