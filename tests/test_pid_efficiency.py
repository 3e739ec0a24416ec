"""pid_efficiency and ``mambah pid-efficiency``: a model's cut efficiencies in bins, with the ensemble's
model uncertainty, checked by hand on small fake models; the command line on the shipped proton
model (synthetic conditions, and 2000 rows of the real calibration file when it is there)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mambah.errors import ConfigurationError, DataError, MissingColumnError, ModelDirError
from mambah.validation.pideff import format_pid_efficiency, pid_efficiency, pid_efficiency_summary

ROOT = Path(__file__).resolve().parent.parent
PROTON_MODEL = ROOT / "models" / "pid-p-dllp-lhcb-run3"
P_EDGES = [3e3, 20e3, 50e3, 100e3]
ETA_EDGES = [2.0, 3.5, 5.0]


class FakeModel:
    """conditions P [MeV/c], ETA; target DLLp = 2 ln(P / GeV) + 3 (ETA - 3) + N(0, 4), seeded."""

    conditions = ["P", "ETA"]
    targets = ["DLLp"]
    name = "fake"

    def __init__(self):
        self.calls = []

    def _core(self, df, seed):
        mean = 2 * np.log(df["P"].to_numpy() / 1e3) + 3 * (df["ETA"].to_numpy() - 3)
        return mean, np.random.default_rng(seed).normal(0, 4, len(df))

    def generate(self, df, seed=None):
        m, z = self._core(df, seed)
        out = pd.DataFrame({"DLLp": m + z}, index=df.index)
        self.calls.append((seed, out))
        return out


class FakeEnsemble(FakeModel):
    """The E2 ensemble interface: K members, each the nominal shifted by its own offset, with the
    nominal's noise (so the members differ by the model, not by the sampler)."""

    name = "fake-ensemble"

    def __init__(self, n_members=5, spread=0.8, seed=3):
        super().__init__()
        self.n_members = n_members
        self.shifts = np.random.default_rng(seed).normal(0, spread, n_members)

    def generate_variations(self, df, seed=None):
        m, z = self._core(df, seed)
        out = {"DLLp": m + z, **{f"DLLp_var{k}": m + z + s for k, s in enumerate(self.shifts, 1)}}
        res = pd.DataFrame(out, index=df.index)
        self.calls.append((seed, res))
        return res


def data(n=6000, seed=0, target=True):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"P": rng.uniform(3e3, 1e5, n), "ETA": rng.uniform(2, 5, n), "w": rng.normal(0.6, 0.5, n)})
    if target:
        df["DLLp"] = FakeModel().generate(df, seed=99)["DLLp"] + 0.5  # the "data": a slightly different model
    return df


def by_hand(df, frac, w, cell_mask):
    return float(np.sum(w[cell_mask] * frac[cell_mask]) / np.sum(w[cell_mask]))


def test_ensemble_uncertainty_and_z_by_hand():
    df = data()
    model = FakeEnsemble()
    t = pid_efficiency(model, df, ["DLLp > 5"], bins={"P": P_EDGES, "ETA": ETA_EDGES}, weight="w", draws=2, seed=4)
    assert len(model.calls) == 2 and model.calls[0][0] == 4  # the first draw uses the seed itself
    outs = [o for _, o in model.calls]
    w = df["w"].to_numpy()
    frac = {c: np.mean([o[c].to_numpy() > 5 for o in outs], axis=0) for c in outs[0].columns}
    d_pass = (df["DLLp"] > 5).to_numpy().astype(float)
    bins = t[t["cell"] >= 0]
    assert len(bins) == 6 and (bins["n_members"] == 5).all()
    for _, r in bins.iterrows():
        m = ((df["P"] >= r["P_lo"]) & (df["P"] < r["P_hi"]) & (df["ETA"] >= r["ETA_lo"]) & (df["ETA"] < r["ETA_hi"])).to_numpy()
        assert r["n"] == m.sum()
        nominal = by_hand(df, frac["DLLp"], w, m)
        members = [by_hand(df, frac[f"DLLp_var{k}"], w, m) for k in range(1, 6)]
        assert r["model_eff"] == pytest.approx(nominal, rel=1e-12)
        assert r["model_ens_error"] == pytest.approx(np.std(members, ddof=1), rel=1e-10)
        e_data = by_hand(df, d_pass, w, m)
        s_data = np.sqrt(np.sum(w[m] ** 2 * (d_pass[m] - e_data) ** 2)) / np.sum(w[m])
        assert r["data_eff"] == pytest.approx(e_data, rel=1e-12)
        assert r["data_stat_error"] == pytest.approx(s_data, rel=1e-10)
        assert r["pull"] == pytest.approx((e_data - nominal) / s_data, rel=1e-9)
        assert r["z"] == pytest.approx((e_data - nominal) / np.hypot(np.std(members, ddof=1), s_data), rel=1e-9)
    whole = t[t["cell"] == -1].iloc[0]
    assert whole["n"] == len(df) and whole["model_eff"] == pytest.approx(by_hand(df, frac["DLLp"], w, np.ones(len(df), bool)))
    s = t.attrs["summary"]["DLLp > 5"]
    zs = bins["z"].to_numpy()
    assert s["z_within_1"] == pytest.approx(np.mean(np.abs(zs) < 1))
    assert s["median_ens_over_stat"] == pytest.approx(np.median(bins["model_ens_error"] / bins["data_stat_error"]))
    text = format_pid_efficiency(t)
    assert "ensemble of 5 members" in text and "P [GeV/c]" in text and "±ens" in text and "z: mean" in text


def test_without_ensemble_no_model_uncertainty():
    df = data(target=False)
    model = FakeModel()
    t = pid_efficiency(model, df, ["PIDp > 5"], weight="w")  # LHCb's other spelling of the target
    assert t["model_ens_error"].isna().all() and (t["n_members"] == 0).all()
    assert "data_eff" not in t.columns and "z" not in t.columns
    # one draw is the model's generate() with the seed itself
    passed = model.generate(df, seed=0)["DLLp"].to_numpy() > 5
    w = df["w"].to_numpy()
    assert t[t["cell"] == -1]["model_eff"].iloc[0] == pytest.approx(np.sum(w * passed) / np.sum(w), rel=1e-12)
    assert "no ensemble" in format_pid_efficiency(t)
    assert t.attrs["summary"]["PIDp > 5"]["median_ens_over_stat"] is None
    # default bins: the model's p and eta conditions, every row inside
    assert [c for c in t.columns if c.endswith("_lo")] == ["P_lo", "ETA_lo"]
    assert t[t["cell"] >= 0]["n"].sum() == len(df) and t.attrs["info"]["n_outside"] == 0
    # with the target in the data but no ensemble: z is the plain pull
    t2 = pid_efficiency(model, data(), ["DLLp > 5"], weight="w")
    np.testing.assert_array_equal(t2["z"].to_numpy(), t2["pull"].to_numpy())


def test_no_pull_or_z_from_rounding_errors():
    """A bin whose data all pass (sigma_stat = 0) and whose members agree but for a row of weight 1e-10
    (sigma_ens ~ 1e-14): pull and z ~ 0 there (the data's error is the binomial one of the model's
    efficiency, itself 1 - 1e-12), not diff / 1e-14 (a 3e12 z seen on the p chain)."""
    df = data(400, seed=5)
    df["w"] = 1.0
    df["DLLp"] = 100.0  # every data row passes: the data's error is 0 in every bin
    model = FakeEnsemble(n_members=3, spread=0.0)
    model.shifts = np.array([0.0, 0.0, 1e-6])  # member 3 differs on the row sitting on the cut
    edge = df.index[0]
    df.loc[edge, "w"] = 1e-10
    # the nominal passes every row but the edge one, which it misses by 5e-7 (member 3 passes it)
    model._core = lambda d, seed: (np.where(d.index == edge, 5 - 5e-7, 100.0), np.zeros(len(d)))
    t = pid_efficiency(model, df, ["DLLp > 5"], bins={"P": [3e3, 1e5], "ETA": [2.0, 5.0]}, weight="w")
    b = t[t["cell"] == 0].iloc[0]
    assert b["data_stat_error"] == 0 and 0 < b["model_ens_error"] < 1e-9 and 0 < b["diff"] < 1e-11
    assert abs(b["pull"]) < 1e-3 and abs(b["z"]) < 1e-3
    # members agreeing to the last bits where the data have an error of their own: z is the pull
    df["DLLp"] = np.where(np.arange(len(df)) % 2 == 0, 100.0, -100.0)
    t = pid_efficiency(model, df, ["DLLp > 5"], bins={"P": [3e3, 1e5], "ETA": [2.0, 5.0]}, weight="w")
    b = t[t["cell"] == 0].iloc[0]
    assert b["data_stat_error"] > 0.01 and b["z"] == pytest.approx(b["pull"], rel=1e-9)


def test_a_bin_whose_data_all_pass_still_pulls():
    """Every data row of the bin passes (its binomial error is 0): a model that loses 2% there pulls by
    0.02 / sqrt(0.98 * 0.02 / n_eff) instead of dropping out of the summary (before: NaN)."""
    df = data(400, seed=5)
    df["w"] = 1.0
    df["DLLp"] = 100.0
    model = FakeModel()
    lose = np.arange(len(df)) % 50 == 0  # 2% of the rows fail in the model
    model._core = lambda d, seed: (np.where(lose[: len(d)], -100.0, 100.0), np.zeros(len(d)))
    t = pid_efficiency(model, df, ["DLLp > 5"], bins={"P": [3e3, 1e5], "ETA": [2.0, 5.0]}, weight="w")
    b = t[t["cell"] == 0].iloc[0]
    eps = 1 - lose.mean()
    assert b["data_stat_error"] == 0 and b["model_eff"] == pytest.approx(eps)
    assert b["pull"] == pytest.approx((1 - eps) / np.sqrt(eps * (1 - eps) / 400)) and b["pull"] > 2.5
    assert b["z"] == pytest.approx(b["pull"])
    assert t.attrs["summary"]["DLLp > 5"]["n_z"] == 1 and t.attrs["summary"]["DLLp > 5"]["pull_mean"] == pytest.approx(b["pull"])


def test_given_edges_count_the_rows_left_out():
    df = data(target=False)
    t = pid_efficiency(FakeModel(), df, ["DLLp > 5"], bins=["P", "ETA"], edges={"P": [1e4, 5e4]})
    outside = int(((df["P"] < 1e4) | (df["P"] >= 5e4)).sum())
    assert t.attrs["info"]["n_outside"] == outside > 0
    assert t[t["cell"] >= 0]["n"].sum() == len(df) - outside
    assert t[t["cell"] == -1]["n"].iloc[0] == len(df)
    # the summary can be recomputed from the table alone
    assert pid_efficiency_summary(t, 100.0) == t.attrs["summary"]


def test_errors_name_what_and_where():
    df = data()
    with pytest.raises(ConfigurationError, match="'PIDK > 0' reads 'PIDK', which model 'fake' does not generate.*DLLp"):
        pid_efficiency(FakeModel(), df, ["PIDK > 0"])
    with pytest.raises(MissingColumnError, match="conditions of model 'fake'.*'ETA'"):
        pid_efficiency(FakeModel(), df.drop(columns="ETA"), ["DLLp > 5"])
    bad = df.copy()
    bad.loc[[1, 2, 3], "w"] = np.nan
    with pytest.raises(DataError, match="3 of 6000 weights \\(column 'w'\\) are NaN"):
        pid_efficiency(FakeModel(), bad, ["DLLp > 5"], weight="w")
    with pytest.raises(MissingColumnError, match="weight column.*'sWeight'"):
        pid_efficiency(FakeModel(), df, ["DLLp > 5"], weight="sWeight")
    with pytest.raises(ConfigurationError, match="draws must be >= 1"):
        pid_efficiency(FakeModel(), df, ["DLLp > 5"], draws=0)
    with pytest.raises(ConfigurationError, match="edges given for nTracks"):
        pid_efficiency(FakeModel(), df, ["DLLp > 5"], edges={"nTracks": [0, 100]})
    broken = FakeEnsemble()
    broken.n_members = 7  # claims more members than it returns
    with pytest.raises(ModelDirError, match="n_members = 7.*DLLp_var6"):
        pid_efficiency(broken, df, ["DLLp > 5"])
    with pytest.raises(ModelDirError, match="'efficiency' model, not a PID model"):
        pid_efficiency(str(ROOT / "models" / "efficiency-ref-v1"), df, ["DLLp > 5"])
    with pytest.raises(ModelDirError, match="no card.json"):
        pid_efficiency(str(ROOT / "tests"), df, ["DLLp > 5"])


# ---------------------------------------------------------------- the command line (shipped model)


def mambah(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "mambah", "-q", "pid-efficiency", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def test_cli_on_the_shipped_proton_model(tmp_path):
    rng = np.random.default_rng(5)
    n = 3000
    df = pd.DataFrame({"P": rng.uniform(6e3, 9e4, n), "ETA": rng.uniform(2, 4.8, n),
                       "nLongTracks": rng.integers(20, 200, n).astype(float)})
    df["DLLp"] = rng.normal(40, 20, n)  # a "calibration" column: the data efficiency is compared
    df["sWeight"] = 1.0
    df.to_parquet(tmp_path / "calib.parquet")
    r = mambah("--model", str(PROTON_MODEL), "--data", str(tmp_path / "calib.parquet"), "--cut", "DLLp > 5",
               "--cut", "PIDp > 15", "--weight", "sWeight", "--edges", "P=6000,20000,40000,90000",
               "--out", str(tmp_path / "t.csv"), "--plot", str(tmp_path / "e.png"))
    assert r.returncode == 0, r.stderr
    # the shipped model carries its ensemble (issue 22): the model uncertainty beside the statistical one
    assert "ensemble of 4 members" in r.stdout, r.stdout
    assert "DLLp > 5: whole sample model" in r.stdout and "P [GeV/c]" in r.stdout and "6–20" in r.stdout
    t = pd.read_csv(tmp_path / "t.csv")
    assert set(t["cut"]) == {"DLLp > 5", "PIDp > 15"} and len(t) == 2 * (3 * 3 + 1)
    whole = t[(t["cut"] == "DLLp > 5") & (t["cell"] == -1)].iloc[0]
    assert whole["data_eff"] == pytest.approx(np.mean(df["DLLp"] > 5))
    assert 0.8 < whole["model_eff"] <= 1.0  # protons pass DLLp > 5
    assert 0 < whole["model_ens_error"] < 0.05 and whole["n_members"] == 4
    assert (tmp_path / "e.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bad_input(tmp_path):
    pd.DataFrame({"P": [1e4], "ETA": [3.0]}).to_parquet(tmp_path / "d.parquet")
    r = mambah("--model", str(PROTON_MODEL), "--data", str(tmp_path / "d.parquet"), "--cut", "DLLK > 0")
    assert r.returncode == 2 and "'DLLK > 0' reads 'DLLK'" in r.stderr and "targets: DLLp" in r.stderr, r.stderr
    r = mambah("--model", str(ROOT / "models" / "efficiency-ref-v1"), "--data", str(tmp_path / "d.parquet"),
               "--cut", "DLLp > 5")
    assert r.returncode == 2 and "not a PID model" in r.stderr, r.stderr
    r = mambah("--model", str(PROTON_MODEL), "--data", str(tmp_path / "d.parquet"), "--out", str(tmp_path / "x.txt"))
    assert r.returncode == 2 and ".csv, .json or .parquet" in r.stderr
    r = mambah("--model", str(PROTON_MODEL), "--data", str(tmp_path / "d.parquet"), "--cut", "DLLp > 5")
    assert r.returncode == 2 and "conditions of model 'pid-p-dllp-lhcb-run3'" in r.stderr, r.stderr
    assert "'nLongTracks'" in r.stderr
    r = mambah("--model", str(PROTON_MODEL), "--data", str(tmp_path / "d.parquet"), "--edges", "P=1,x")
    assert r.returncode == 2 and "COLUMN=e0,e1" in r.stderr


def test_cli_on_real_calibration_rows(tmp_path, real_data_path):
    pd.read_parquet(real_data_path).sample(2000, random_state=3).to_parquet(tmp_path / "real.parquet")
    r = mambah("--model", str(PROTON_MODEL), "--data", str(tmp_path / "real.parquet"), "--weight", "sWeight",
               "--out", str(tmp_path / "t.json"))
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "t.json").read_text())
    assert list(out["summary"])[:4] == ["DLLp > 0", "DLLp > 5", "DLLp > 10", "DLLp > 15"]  # the typical cuts
    o = out["summary"]["DLLp > 5"]["overall"]
    assert 0.9 < o["model_eff"] < 1.0 and 0.9 < o["data_eff"] < 1.1 and o["data_stat_error"] > 0
    assert out["info"]["n_members"] == 4 and out["info"]["weight"] == "sWeight"  # the shipped ensemble


# ----------------------------------------------------------------------------- the PID chain as one model
def test_chain_model_nominal_and_members_of_the_shipped_kaon_chain():
    """ChainModel: the nominal is the chain's own draw for the seed, the members are the chain's
    variations (member k of every step with members) with the same random numbers; its
    efficiency table carries the ensemble's spread."""
    from mambah.pid.chain import load_chain
    from mambah.reference.calibration import calib_sample
    from mambah.validation.pideff import ChainModel

    data = calib_sample("K", 3000, seed=12, pure=True)
    m = ChainModel.load("K")
    assert m.n_members == 5 and m.conditions == ["P", "ETA", "nTracks", "charge"] and "PIDK" in m.targets
    nominal = m.generate(data, seed=4)
    direct = load_chain("K").generate(data[m.conditions], np.random.default_rng(4))
    pd.testing.assert_frame_equal(nominal, direct[m.targets])
    var = m.generate_variations(data, seed=4)
    pd.testing.assert_frame_equal(var[m.targets], nominal)
    spread = np.nanmax(np.abs(var[[f"PIDK_var{k}" for k in range(1, 6)]].to_numpy() - var[["PIDK"]].to_numpy()),
                       axis=0)
    assert (spread > 0.1).all()  # every member of the RICH step moves PIDK
    # the kaons' isMuon comes from the flags step, whose members draw with the nominal's uniforms: a
    # member's flag differs from the nominal's only where its probability does, on a few tracks
    flips = var["isMuon_var3"].to_numpy() != nominal["isMuon"].to_numpy()
    assert flips.mean() < 0.02
    t = pid_efficiency(m, data, ["PIDK > 5"], edges={"P": [2e3, 1e4, 3e4, 1.5e5]}, seed=4)
    whole = t[t["cell"] == -1].iloc[0]
    assert whole["n_members"] == 5 and 0 < whole["model_ens_error"] < 0.05
    assert whole["data_eff"] == pytest.approx(np.mean(data["PIDK"].to_numpy() > 5))
    assert whole["model_eff"] == pytest.approx(np.mean(nominal["PIDK"].to_numpy() > 5))


def test_cli_chain(tmp_path):
    from mambah.reference.calibration import calib_sample

    calib_sample("K", 2000, seed=13, pure=True).to_parquet(tmp_path / "k.parquet")
    r = mambah("--chain", "K", "--data", str(tmp_path / "k.parquet"), "--out", str(tmp_path / "t.csv"))
    assert r.returncode == 0, r.stderr
    assert "PIDK > 5: whole sample model" in r.stdout and "ensemble of 5 members" in r.stdout, r.stdout
    assert set(pd.read_csv(tmp_path / "t.csv")["cut"]) == {"PIDK > 0", "PIDK > 5", "PIDK > 10"}
    r = mambah("--chain", "X", "--data", str(tmp_path / "k.parquet"))
    assert r.returncode == 2 and "no PID chain of that species" in r.stderr and "K" in r.stderr, r.stderr
    r = mambah("--chain", "K", "--model", str(PROTON_MODEL), "--data", str(tmp_path / "k.parquet"))
    assert r.returncode == 2 and "not allowed with argument" in r.stderr, r.stderr
    r = mambah("--chain", "K", "--data", str(tmp_path / "k.parquet"), "--cut", "DLLq > 1")
    assert r.returncode == 2 and "DLLq" in r.stderr, r.stderr
