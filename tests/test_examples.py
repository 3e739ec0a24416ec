"""Every example runs, shortened, as a user would run it (python examples/NAME.py ...)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=cwd, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"{name} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def test_bplus_jpsi_k(tmp_path):
    r = run_example("bplus_jpsi_k.py", "--events", "20000", "--batch-size", "10000", "--db", "b.duckdb",
                    "--out", "plots", cwd=tmp_path)
    assert (tmp_path / "plots" / "bplus_jpsi_k.png").stat().st_size > 10_000
    vals = dict(line.split()[:2] for line in r.stdout.splitlines() if line.startswith("  "))
    # the J/psi peak sits at its PDG mass with a resolution-driven width of O(10 MeV)
    assert abs(float(vals["jpsi_mass_mean"]) - 3096.9) < 3
    assert 5 < float(vals["jpsi_mass_std"]) < 30


@pytest.mark.postgres
def test_dask_postgres_production(tmp_path, postgres_url):
    r = run_example("dask_postgres_production.py", "--events", "4000", "--batch-size", "1000", "--workers", "2",
                    "--db", postgres_url, cwd=tmp_path)
    assert "4 batches written (0 already there)" in r.stdout
    assert "store: 4 batches, 4000 events" in r.stdout


def _readme_python_blocks() -> list[str]:
    text = (EXAMPLES.parent / "README.md").read_text()
    return [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]


def test_readme_python_examples_run(tmp_path):
    """The README's Python snippets run as written (with fewer events)."""
    blocks = _readme_python_blocks()
    assert len(blocks) >= 2
    code = "\n".join(blocks).replace("1_000_000", "4_000").replace("batch_size=50_000", "batch_size=2_000")
    code = code.replace("n_events=10_000", "n_events=2_000")
    code += "\nassert len(ntuple) == 4000 and {'B_M', 'Jpsi_M', 'K_TRUEID', 'nTracks'} <= set(ntuple.columns)\n"
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


def _last_json(stdout: str) -> dict:
    import json

    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def test_reference_detector_pid(tmp_path):
    """The reference detector separates the species, and sPlot recovers each calibration
    sample's true cut efficiency where the unweighted one is pulled by the background."""
    r = run_example("reference_detector_pid.py", "--tracks", "3000", "--calib", "3000", "--seed", "2", cwd=tmp_path)
    res = _last_json(r.stdout)
    eff = res["efficiencies"]
    assert eff["K"]["10-20"]["DLLK>0"] > 0.9 > 0.1 > eff["pi"]["10-20"]["DLLK>0"]
    assert eff["mu"]["10-20"]["isMuon"] > 0.9 > 0.1 > eff["pi"]["10-20"]["isMuon"]
    assert eff["e"]["10-20"]["DLLe>2"] > 0.9 > 0.1 > eff["K"]["10-20"]["DLLe>2"]
    for sp, c in res["calibration"].items():
        assert abs(c["sweighted"] - c["truth"]) < 3 * c["sweighted_error"], (sp, c)
        assert abs(c["unweighted"] - c["truth"]) > 5 * c["sweighted_error"], (sp, c)


def test_validation_sanity_real_data(tmp_path, real_data_path):
    import pandas as pd

    # a 12k-row slice keeps it short; the ordering must already show
    pd.read_parquet(real_data_path).sample(12_000, random_state=1).to_parquet(tmp_path / "slice.parquet")
    r = run_example("validation_sanity_real_data.py", str(tmp_path / "slice.parquet"), cwd=tmp_path)
    ks = _last_json(r.stdout)
    # the scorer's power on real data (DESIGN.md, "Validation"): the null case at the floor of
    # 6k rows, every broken sample clearly above it, a broken correlation worst of all
    assert ks["ks_null"] < 0.08
    assert ks["ks_null"] + 0.03 < ks["ks_shifted"] < ks["ks_unconditional"] < ks["ks_shuffled"]
    assert ks["ks_binned_p_eta"] > ks["ks_null"] + 0.08 and ks["ks_copy_weight1"] > 0.3


@pytest.mark.slow  # trains for ~35 s; the cross-fit test below runs the same example (and its scorer) in the default run
def test_train_pid_real_protons(tmp_path, real_data_path):
    r = run_example("train_pid_real_protons.py", "--data", str(real_data_path), "--work", str(tmp_path / "w"),
                    "--seeds", "1", "--draws", "2", "--", "--epochs", "1", cwd=tmp_path, timeout=1800)
    import json

    import pandas as pd

    res = json.loads((tmp_path / "w" / "results.json").read_text())
    assert res["n_train_file"] + res["n_test"] == len(pd.read_parquet(real_data_path))
    rows = res["rows"]
    floor = rows["floor: real vs real (disjoint rows)"]["paired"]["bdt_ks"]
    hist = rows["histogram resampling P x ETA x nLongTracks (PIDGen-style)"]["paired"]["bdt_ks"]
    gan = {k: v for k, v in rows.items() if k.startswith("Cramér GAN")}
    assert any("sweighted" in k for k in gan), sorted(rows)
    assert all(0 <= v["paired"]["bdt_ks"] <= 1 and v["train_steps"] > 0 for v in gan.values())
    assert floor < hist  # the baseline's missing correlations are seen
    assert "| histogram resampling" in r.stdout


def test_train_pid_real_protons_crossfit(tmp_path, real_data_path):
    """--folds: every row of the file is generated by the one model that did not train on it."""
    import json

    import pandas as pd

    r = run_example("train_pid_real_protons.py", "--data", str(real_data_path), "--work", str(tmp_path / "w"),
                    "--folds", "2", "--draws", "1", "--", "--epochs", "1", cwd=tmp_path, timeout=1800)
    full = pd.read_parquet(real_data_path)
    key = ["P", "ETA", "nLongTracks", "DLLp", "sWeight"]
    tests = [pd.read_parquet(tmp_path / "w" / f"fold{k}" / "test.parquet") for k in range(2)]
    for k in range(2):  # a fold's model trains on exactly the rows outside the fold
        train = pd.read_parquet(tmp_path / "w" / f"fold{k}" / "train.parquet")
        assert len(train) + len(tests[k]) == len(full)
        assert pd.concat([train, tests[k]])[key].sort_values(key).reset_index(drop=True).equals(
            full[key].sort_values(key).reset_index(drop=True))
    assert abs(len(tests[0]) - len(tests[1])) <= 1
    res = json.loads((tmp_path / "w" / "results_crossfit.json").read_text())
    assert res["n_rows"] == len(full) and res["folds"] == 2
    rows = res["rows"]
    floor = rows["floor: real half A vs real half B (whole file)"]["unpaired"]["bdt_ks"]
    hist = rows["histogram resampling P x ETA x nLongTracks (PIDGen-style)"]["unpaired"]["bdt_ks"]
    assert floor < 0.04 < hist  # ~0.02 against ~0.09: the scorer sees the baseline's missing correlations
    assert "| floor: real half A vs real half B" in r.stdout
    # the efficiency pulls, fold by fold (each fold's rows against its own model)
    eff = json.loads((tmp_path / "w" / "results_efficiency.json").read_text())
    assert list(eff["cuts"]) == ["DLLp > 0", "DLLp > 5", "DLLp > 10", "DLLp > 15"] and eff["folds"] == 2
    for c in eff["cuts"].values():
        assert len(c["overall_pulls"]) == 2 and c["n_bins_used"] > 0
        assert {b["fold"] for b in c["bins"]} == {0, 1} and np.isfinite(c["pull_mean"])
        assert "z_mean" not in c  # no ensemble members: no z
    assert "| DLLp > 5 |" in r.stdout


def test_lb_to_lc_mu_nu(tmp_path):
    r = run_example("lb_to_lc_mu_nu.py", "--events", "20000", "--batch-size", "10000", "--db", "lb.duckdb",
                    "--out", "plots", cwd=tmp_path)
    assert (tmp_path / "plots" / "lb_to_lc_mu_nu.png").stat().st_size > 10_000
    vals = dict(line.split()[:2] for line in r.stdout.splitlines() if line.startswith("  ") and "eff" not in line)
    assert abs(float(vals["lc_mass_median"]) - 2286.46) < 2  # the PDG Λc+ mass
    assert 2 < float(vals["lc_mass_width_68"]) < 10
    assert "eff PIDp > 5" in r.stdout


def test_misid_table(tmp_path):
    """The mis-ID table of the chain, the reference detector and the baseline on the same decay tracks."""
    import pandas as pd

    r = run_example("misid_table.py", "--tracks", "400", "--calib", "3000", "--batch-size", "1000",
                    "--misid", "K->pi", "--misid", "pi->mu", "--out", "out", cwd=tmp_path)
    res = _last_json(r.stdout)
    assert list(res["misid"]) == ["K->pi", "pi->mu"]
    tab = pd.read_csv(tmp_path / "out" / "misid_table.csv")
    assert len(tab) == 2 * 10 and set(tab["species"]) == {"K", "pi"}
    for m, g in tab.groupby("misid"):
        assert g["n"].sum() == 400  # every track of the species is in one p bin
        for resp in ("chain", "baseline"):
            assert res["misid"][m][resp]["bins_pass"] == int(g[f"{resp}_pass"].sum())
    assert "K->pi: true K, PIDK < 0" in r.stdout and "pi->mu: true pi, isMuon > 0.5" in r.stdout


def test_fit_pid_marginals(tmp_path):
    """The marginal calibration of a RICH step and of a flags classifier's isMuon, shortened: one small
    calibration sample, copies of the models."""
    import json
    import shutil

    models = tmp_path / "models"
    models.mkdir()
    for step in ("rich", "flags"):
        shutil.copytree(EXAMPLES.parent / "models" / f"pid-p-{step}", models / f"pid-p-{step}")
    run_example("fit_pid_marginals.py", "--work", "w", "--out", str(models), "--species", "p", "--chunks", "1",
                "--low-p-chunks", "1", "--high-eta-chunks", "1", "--chunk-events", "150000", "--p-bins", "3",
                "--eta-bins", "1", "--joint", cwd=tmp_path)
    mc = json.loads((models / "pid-p-rich" / "card.json").read_text())["marginal_correction"]
    assert mc["conditional"]["given"] == {"RichDLLpK": "RichDLLk", "RichDLLmu": "RichDLLe"}
    assert "--given RichDLLpK=RichDLLk --given RichDLLmu=RichDLLe" in mc["command"]
    assert mc["fit_data"]["files"][0]["file"] == "p_train.parquet" and "150000 candidates" in mc["fit_data"]["description"]
    # the low-momentum and high-eta samples beside the standard one (the flags' isMuon map: not the high-eta one)
    assert len(mc["fit_data"]["files"]) == 3 and "low-momentum channel" in mc["fit_data"]["description"]
    assert "high-pseudorapidity channel" in mc["fit_data"]["description"]
    assert mc["bins"]["p_edges"][0] < mc["bins"]["p_edges"][-1] and len(mc["bins"]["p_edges"]) == 4
    from mambah.nn.pidmodel import PidModel

    assert PidModel.load(models / "pid-p-rich").correction is not None
    fc = json.loads((models / "pid-p-flags" / "card.json").read_text())["marginal_correction"]
    assert fc["kind"] == "logit_shift" and fc["targets"] == ["isMuon"] and fc["bins"]["split"] == []
    assert len(fc["fit_data"]["files"]) == 2 and "high-pseudorapidity" not in fc["fit_data"]["description"]
    from mambah.nn.flags import FlagModel

    assert FlagModel.load(models / "pid-p-flags").correction.targets == ["isMuon"]


def test_b0_kpi_peaking_backgrounds(tmp_path):
    r = run_example("b0_kpi_peaking_backgrounds.py", "plots", "--events", "400", cwd=tmp_path)
    res = _last_json(r.stdout)
    assert (tmp_path / "plots" / "b0_kpi_peaking_backgrounds.png").stat().st_size > 10_000
    ch = res["channels"]
    assert list(ch) == ["B0 -> K+ pi-", "B0 -> pi+ pi-", "B_s0 -> K+ K-", "Lambda_b0 -> p K-", "Lambda_b0 -> p pi-"]
    for c in ch.values():
        assert 0 < c["candidates"] <= c["events"] == 400
    # the PID requirements keep the signal and reject a double mis-ID, with either response
    for resp in ("chain", "reference"):
        assert ch["B0 -> K+ pi-"][resp] > 0.3 > 0.1 > ch["B0 -> pi+ pi-"][resp]


def test_b_hadron_selection(tmp_path):
    """The selection re-applied here to the example's saved branches gives its numbers; the FD cut
    keeps a b hadron and rejects prompt charm; MCORR is never below the visible mass and peaks near
    the Lambda_b0 mass, far above the visible mass."""
    import pandas as pd

    from mambah.physics import pdg_mass

    r = run_example("b_hadron_selection.py", "out", "--events", "8000", "--compare-reference", cwd=tmp_path)
    res = _last_json(r.stdout)
    out = tmp_path / "out"
    for name in ("mcorr.png", "ipchi2.png", "fdchi2.png"):
        assert (out / name).stat().st_size > 10_000, name
    lb, lc = pd.read_parquet(out / "candidates_lb.parquet"), pd.read_parquet(out / "candidates_lc.parquet")

    def passed(c, head, tracks, vertices):
        ok = np.ones(len(c), dtype=bool)
        for t in tracks:
            ok &= c[f"{t}_IPCHI2_OWNPV"].to_numpy() > 9
        for v in vertices:
            ok &= c[f"{v}_ENDVERTEX_CHI2"].to_numpy() / c[f"{v}_ENDVERTEX_NDOF"].to_numpy() < 10
        return ok & (c[f"{head}_FDCHI2_OWNPV"].to_numpy() > 100) & (c[f"{head}_DIRA_OWNPV"].to_numpy() > 0.999)

    for c, name, head, tracks, vertices in ((lb, "Lb -> Lc mu nu", "Lb", ("p", "K", "pi", "mu"), ("Lc", "Lb")),
                                            (lc, "prompt Lc", "Lc", ("p", "K", "pi"), ("Lc",))):
        rec = res[name]
        assert rec["events"] == 8000 and rec["candidates"] == len(c) > 500
        assert np.isfinite(c.drop(columns=["batch", "event"]).to_numpy(np.float64)).all()
        k = int(passed(c, head, tracks, vertices).sum())
        s = rec["selection"]
        assert (s["pass"], s["of"]) == (k, len(c))
        eff = k / len(c)
        assert s["eff"] == pytest.approx(eff) and s["err"] == pytest.approx(np.sqrt(eff * (1 - eff) / len(c)))
        assert s["cp68"][0] < eff < s["cp68"][1]
        fd = float((c[f"{head}_FDCHI2_OWNPV"] > 100).mean())
        assert rec["fd_cut"]["eff"] == pytest.approx(fd)
    # the flight distance separates them: prompt charm survives the FD cut at < 5%, the b hadron at > 30%
    assert res["prompt Lc"]["fd_cut"]["eff"] < 0.05 and res["prompt Lc"]["fd_rejection"] > 0.95
    assert res["Lb -> Lc mu nu"]["fd_cut"]["eff"] > 0.3
    assert res["Lb -> Lc mu nu"]["selection"]["eff"] > 10 * res["prompt Lc"]["selection"]["eff"]
    # MCORR = sqrt(M^2 + pT'^2) + pT' >= M for every candidate; it recovers the b-hadron mass
    assert (lb["Lb_MCORR"] >= lb["Lb_M"] * (1 - 1e-9)).all()
    m_lb = float(pdg_mass(5122))
    assert np.median(lb["Lb_M"]) < m_lb - 800 and abs(np.median(lb["Lb_MCORR"]) - m_lb) < 500
    # the networks (efficiency, resolution, track states) against the reference detector on the same
    # events: the selection's efficiency agrees within 2% relative plus 4 statistical errors
    for name in ("Lb -> Lc mu nu", "prompt Lc"):
        ref = res[name]["reference"]
        assert ref["candidates"] > 500
        assert abs(ref["selection_rel_diff"]) < 0.02 + 4 * ref["selection_rel_diff_err"], (name, ref)
        # the same events: the paired error is not larger than the quadrature of the binomial ones
        assert 0 < ref["selection_rel_diff_err_paired"] < 1.2 * ref["selection_rel_diff_err"], (name, ref)
    assert res["prompt Lc"]["reference"]["fd_cut"]["eff"] < 0.05


def test_b_hadron_selection_paired_error():
    """The paired bootstrap error of the networks/reference efficiency ratio: 0 for identical
    reconstructions, the binomial errors in quadrature for independent ones."""
    import importlib.util

    import pandas as pd

    spec = importlib.util.spec_from_file_location("b_hadron_selection", EXAMPLES / "b_hadron_selection.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng(3)
    n = 20_000
    cand = pd.DataFrame({"batch": np.zeros(n, int), "event": np.arange(n)})
    passed = rng.random(n) < 0.3
    assert mod.paired_rel_diff_error(cand, passed, cand, passed) == 0.0
    other = rng.random(n) < 0.3
    quad = np.sqrt(2 * 0.3 * 0.7 / n) / 0.3
    assert mod.paired_rel_diff_error(cand, passed, cand, other) == pytest.approx(quad, rel=0.15)
    # 90% of the decisions shared: much smaller than the quadrature
    mixed = np.where(rng.random(n) < 0.9, passed, other)
    assert mod.paired_rel_diff_error(cand, passed, cand, mixed) < 0.5 * quad


def test_radiative_tail(tmp_path):
    """B+ -> K+ e+ e- has a radiative tail that B+ -> K+ mu+ mu- does not, and brem recovery moves
    the electron mode's peak back towards the B+ mass."""
    import json

    run_example("radiative_tail.py", "out", "--events", "2000", cwd=tmp_path)
    assert (tmp_path / "out" / "radiative_tail.png").stat().st_size > 10_000
    res = json.loads((tmp_path / "out" / "radiative_tail.json").read_text())
    modes, m_b = res["modes"], res["b_mass_pdg"]
    ee, mumu, bare, jpsi = modes["Kee"], modes["Kmumu"], modes["Kee_no_recovery"], modes["JpsiK_ee"]
    assert min(m["candidates"] for m in modes.values()) > 200
    for m in (ee, mumu, bare, jpsi):  # binomial errors of the tail fractions
        m["err"] = np.sqrt(max(m["tail_fraction"] * (1 - m["tail_fraction"]), 1 / m["candidates"]) / m["candidates"])
    assert ee["tail_fraction"] - mumu["tail_fraction"] > 5 * np.hypot(ee["err"], mumu["err"])
    assert ee["tail_fraction"] > 5 * mumu["tail_fraction"] and mumu["tail_fraction"] < 0.02
    assert jpsi["tail_fraction"] - mumu["tail_fraction"] > 5 * np.hypot(jpsi["err"], mumu["err"])
    for m in (ee, jpsi):
        assert 0 < m["brem_added_fraction"] < 1 and m["electrons"] > 200
    assert bare["brem_added_fraction"] == 0 and mumu["brem_added_fraction"] is None and mumu["electrons"] == 0
    # recovery: the peak (median) closer to the B+ mass, fewer candidates in the tail
    assert abs(ee["median_mass"] - m_b) < abs(bare["median_mass"] - m_b)
    assert bare["tail_fraction"] - ee["tail_fraction"] > 5 * np.hypot(ee["err"], bare["err"])
    assert abs(mumu["median_mass"] - m_b) < 10
    # the shipped brem and photon networks against the reference on the same events (loose: 2000 events)
    nw = res["networks"]
    for r in nw["brem"].values():
        assert r["bdt_ks"] < 0.15 and abs(r["brem_added_diff"]) < 0.05 and r["candidates"] > 200
    for label in ("Kstgamma", "Kpipi0"):
        assert abs(nw["photon"][label]["mass_width_ratio"] - 1) < 0.25
    assert abs(nw["photon"]["Kpipi0"]["pi0_width_ratio"] - 1) < 0.25
    assert nw["photon"]["efficiency_closure"]["max_abs_diff"] < 0.03


def test_trackstate_closure(tmp_path):
    """The network's covariance against the reference detector's own residuals (a seed the training
    never used): IP pulls of long tracks, flat vertex-chi2 p-values, FD pulls of unit width."""
    import json

    run_example("trackstate_closure.py", "out", "--tracks", "200000", "--vertices", "20000", cwd=tmp_path)
    res = json.loads((tmp_path / "out" / "trackstate_closure.json").read_text())
    assert (tmp_path / "out" / "trackstate_closure.png").stat().st_size > 10_000
    long_bins = [b for b in res["ip_bins"] if b["type"] == 3]
    assert len(long_bins) >= 10
    for b in long_bins:
        tol = 0.03 + 4 / np.sqrt(2 * b["n"])
        assert abs(b["pull_ipx_std"] - 1) < tol and abs(b["pull_ipy_std"] - 1) < tol, b
    for key in ("2-body", "3-body"):
        net = res["vertices"][key]["network"]
        assert net["pvalue_flatness_p"] > 1e-3 and net["pvalue_ks_uniform"] < 0.02, net
        assert abs(net["fd_pull_mean"]) < 0.05 and abs(net["fd_pull_robust_width"] - 1) < 0.05, net
