"""validate(), the report folder and the ``mambah validate`` command, as users call them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mambah.errors import ConfigurationError, DataError
from mambah.validation import validate
from mambah.validation.compare import parse_cut

FAST = dict(n_repeats=1, classifier_options={"max_iter": 30}, n_threads=1)


def toy(n: int, seed: int, bump: float = 0.0) -> pd.DataFrame:
    """P [MeV], ETA, nTracks and a DLLK that depends on them; ``bump`` shifts DLLK at high P, high ETA only."""
    rng = np.random.default_rng(seed)
    P = rng.lognormal(10, 0.5, n)
    ETA = rng.uniform(2, 5, n)
    ntr = rng.poisson(80, n).astype(float)
    dll = 5 * (ETA - 3) + 2e-5 * P - 0.05 * ntr + rng.normal(0, 3, n)
    hot = (P > np.quantile(P, 0.75)) & (ETA > 4.25)
    dll = dll + bump * hot
    return pd.DataFrame({"P": P, "ETA": ETA, "nTracks": ntr, "DLLK": dll, "isMuon": (rng.random(n) < 0.1).astype(float)})


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("rep") / "report"
    ref, gen = toy(4000, 1), toy(4000, 2, bump=4.0)
    summary = validate(ref, gen, ["P", "ETA", "nTracks"], ["DLLK"], report_dir=out, seed=0,
                       cuts=["DLLK > 0", "DLLK > 5", "isMuon"], **FAST)
    return out, summary, ref, gen


def test_summary_keys_and_json(report):
    out, summary, *_ = report
    on_disk = json.loads((out / "summary.json").read_text())
    for key in ("bdt_ks", "auc", "bdt_ks_null", "ks1d", "bdt_ks_std", "efficiencies", "inputs", "settings"):
        assert key in on_disk
    assert on_disk["bdt_ks"] == summary["bdt_ks"]
    assert 0 <= on_disk["bdt_ks"] <= 1 and 0 <= on_disk["bdt_ks_null"] <= 1
    assert on_disk["inputs"]["p"] == "P" and on_disk["inputs"]["eta"] == "ETA"  # guessed
    assert not list(out.parent.glob(".report.tmp*"))


def test_html_references_existing_pngs(report):
    out, summary, *_ = report
    page = (out / "index.html").read_text()
    srcs = re.findall(r"<img src='([^']+)'", page)
    assert len(srcs) >= 5  # classifier, target, target in bins, 3 efficiencies
    for s in srcs:
        f = out / s
        assert f.is_file() and f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", s
    assert f"{summary['bdt_ks']:.4f}" in page
    assert set(srcs) == {p.name for p in out.glob("*.png")}


def test_worst_bin_is_the_bumped_one(report):
    _, summary, ref, _ = report
    k = summary["ks1d"]["DLLK"]
    wb = k["worst_bin"]
    # the bump sits at P above its 75% quantile and ETA > 4.25: the last p bin, the last eta bin
    assert wb["p_bin"] == 3 and wb["eta_bin"] == 3, wb
    assert wb["ks_ratio"] > 3
    assert len(k["bins"]) == 16


def test_efficiencies_known_answer(report):
    _, summary, ref, gen = report
    e = summary["efficiencies"]
    assert set(e) == {"DLLK > 0", "DLLK > 5", "isMuon"}
    assert e["DLLK > 5"]["eff_ref"] == pytest.approx(np.mean(ref["DLLK"] > 5))
    assert e["isMuon"]["eff_gen"] == pytest.approx(np.mean(gen["isMuon"] > 0.5))
    vs = e["DLLK > 5"]["vs"]["eta"]
    # per-bin efficiency recomputed by hand in the bins of the summary
    edges = np.asarray(vs["edges"])
    b = np.clip(np.searchsorted(edges, ref["ETA"], side="right") - 1, 0, len(edges) - 2)
    by_hand = [np.mean(ref["DLLK"][b == i] > 5) for i in range(len(edges) - 1)]
    assert vs["ref"] == pytest.approx(by_hand)
    # the efficiency rises with eta (dll grows with eta)
    assert vs["ref"][-1] > vs["ref"][0] + 0.3


def test_efficiency_pulls_find_the_bumped_bin(report):
    """summary["efficiency_pulls"]: the typical cuts of DLLK plus the given ones, in bins of P x ETA x
    nTracks; the bump (DLLK + 4 at high P and ETA) is the worst bin of DLLK > 5 by many sigma."""
    out, summary, ref, _ = report
    ep = summary["efficiency_pulls"]
    assert list(ep["bins"]) == ["P", "ETA", "nTracks"] and ep["pull_error"] == "reference"
    assert list(ep["cuts"]) == ["DLLK > 0", "DLLK > 5", "DLLK > 10", "isMuon"]
    s = ep["cuts"]["DLLK > 5"]["summary"]
    wb = s["worst_bin"]
    assert wb["P_hi"] == ep["bins"]["P"][-1] and wb["ETA_hi"] == ep["bins"]["ETA"][-1] and wb["pull"] > 4, wb
    assert s["n_bins_total"] == 18 and s["n_bins"] >= 12  # 3 p x 3 eta x 2 occupancy bins; all-fail bins have no pull
    # isMuon is drawn the same way in both samples: pulls of noise (wider than 1: the generated sample
    # is as small as the reference, and ~20 passing rows per bin skew them), well below the bump's
    assert wb["pull"] > 1.5 * abs(ep["cuts"]["isMuon"]["summary"]["worst_bin"]["pull"])
    o = ep["cuts"]["DLLK > 5"]["overall"]
    assert o["ref_eff"] == pytest.approx(np.mean(ref["DLLK"] > 5))
    for label in ep["cuts"]:
        assert (out / f"effpull_{label.replace(' ', '_').replace('>', '_')}.png").is_file()
    assert "Efficiencies in bins: pulls" in (out / "index.html").read_text()


def test_without_p_and_eta_no_bins():
    ref, gen = toy(600, 1), toy(600, 2)
    s = validate(ref, gen, ["nTracks"], ["DLLK"], **FAST)
    assert s["inputs"]["p"] is None and s["ks1d"]["DLLK"]["bins"] == [] and s["ks1d"]["DLLK"]["worst_bin"] is None
    assert s["efficiencies"]["DLLK > 0"]["vs"] == {}
    assert list(s["efficiency_pulls"]["bins"]) == ["nTracks"]  # the occupancy alone


def test_parse_cut():
    assert parse_cut("DLLK > 5").passes(np.array([4.0, 6.0])).tolist() == [False, True]
    assert parse_cut("isMuon").passes(np.array([0.0, 1.0])).tolist() == [False, True]
    assert parse_cut("PIDp<=-1.5").value == -1.5
    with pytest.raises(ConfigurationError, match="COLUMN OP VALUE"):
        parse_cut("DLLK >> 5")


def test_existing_foreign_folder_is_not_replaced(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(ConfigurationError, match="not a mambah report"):
        validate(toy(500, 1), toy(500, 2), ["P", "ETA", "nTracks"], ["DLLK"], report_dir=foreign, **FAST)
    assert (foreign / "thesis.tex").read_text() == "precious"


def test_bad_input_writes_nothing(tmp_path):
    gen = toy(500, 2)
    gen.loc[:4, "DLLK"] = np.nan
    with pytest.raises(DataError, match="5 of 500 rows"):
        validate(toy(500, 1), gen, ["P", "ETA", "nTracks"], ["DLLK"], report_dir=tmp_path / "r", **FAST)
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------- the command line


def mambah(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "mambah", "-q", "validate", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    ref, gen = toy(1500, 1), toy(1500, 2)
    ref["w"] = 1.0
    ref.to_parquet(d / "ref.parquet")
    from mambah.io import write_table

    write_table(ref, d / "ref.root:DecayTree")
    gen.to_csv(d / "gen.csv", index=False)
    bad = gen.copy()
    bad.loc[[1, 2, 3], "nTracks"] = np.inf
    bad.to_csv(d / "gen_inf.csv", index=False)
    gen.drop(columns=["DLLK"]).to_csv(d / "gen_nodll.csv", index=False)
    zero = ref.copy()
    zero["w"] = 0.0
    zero.to_parquet(d / "ref_zero.parquet")
    ref.iloc[:60].to_parquet(d / "ref_small.parquet")
    return d


def test_cli_report(files, tmp_path):
    r = mambah("--ref", f"{files / 'ref.root'}:DecayTree", "--gen", str(files / "gen.csv"), "--conditions", "P,ETA,nTracks",
               "--targets", "DLLK", "--ref-weight", "w", "--report", str(tmp_path / "rep"), "--repeats", "1",
               "--threads", "1", "--seed", "3", "--eff-edges", "P=0,20000,1e9")
    assert r.returncode == 0, r.stderr
    assert "BDT KS" in r.stdout and "null" in r.stdout and "KS 1D DLLK" in r.stdout
    s = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert f"{s['bdt_ks']:.4f}" in r.stdout
    assert s["settings"]["seed"] == 3
    # the efficiency pulls: --eff-edges replaces the default P edges, ETA and nTracks keep theirs
    ep = s["efficiency_pulls"]
    assert ep["bins"]["P"] == [0.0, 20000.0, 1e9] and list(ep["bins"]) == ["P", "ETA", "nTracks"]
    assert "efficiency pulls in bins of P x ETA x nTracks" in r.stdout
    line = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("DLLK > 5 "))
    assert f"{100 * ep['cuts']['DLLK > 5']['overall']['gen_eff']:.2f}" in line


@pytest.mark.parametrize("gen, extra, message", [
    ("gen_nodll.csv", [], "no column 'DLLK'"),
    ("gen_inf.csv", [], "NaN or inf values in 3 of 1500 rows (nTracks: 3)"),
])
def test_cli_bad_generated(files, gen, extra, message):
    r = mambah("--ref", str(files / "ref.parquet"), "--gen", str(files / gen), "--conditions", "P,ETA,nTracks",
               "--targets", "DLLK", *extra)
    assert r.returncode == 2
    assert message in r.stderr, r.stderr


def test_cli_bad_reference(files):
    common = ["--gen", str(files / "gen.csv"), "--conditions", "P,ETA,nTracks", "--targets", "DLLK"]
    r = mambah("--ref", str(files / "ref_zero.parquet"), "--ref-weight", "w", *common)
    assert r.returncode == 2 and "all 1500 weights are zero" in r.stderr, r.stderr
    r = mambah("--ref", str(files / "ref_small.parquet"), *common)
    assert r.returncode == 2 and "needs at least" in r.stderr, r.stderr
    r = mambah("--gen", str(files / "gen.csv"))
    assert r.returncode == 2 and "--ref" in r.stderr


def test_cli_drop_nonfinite(files):
    r = mambah("--ref", str(files / "ref.parquet"), "--gen", str(files / "gen_inf.csv"), "--conditions", "P,ETA,nTracks",
               "--targets", "DLLK", "--drop-nonfinite", "--repeats", "1", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "generated 1497" in r.stdout


def test_cli_paired_flag(tmp_path):
    """--paired keeps twins together; unequal lengths are refused with a clear message."""
    import subprocess
    import sys

    rng = np.random.default_rng(5)
    n = 4000
    ref = pd.DataFrame({"P": rng.uniform(3e3, 1e5, n), "ETA": rng.uniform(2, 5, n)})
    ref["DLLp"] = np.log(ref.P) + rng.normal(size=n)
    gen = ref.copy()
    gen["DLLp"] = np.log(ref.P) + rng.normal(size=n)
    ref.to_parquet(tmp_path / "ref.parquet")
    gen.to_parquet(tmp_path / "gen.parquet")
    gen.iloc[:-5].to_parquet(tmp_path / "short.parquet")
    base = [sys.executable, "-m", "mambah", "-q", "validate", "--ref", str(tmp_path / "ref.parquet"),
            "--conditions", "P,ETA", "--targets", "DLLp", "--paired", "--report", str(tmp_path / "rep")]
    r = subprocess.run([*base, "--gen", str(tmp_path / "gen.parquet")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    import json

    s = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert s["bdt"]["paired"] is True and abs(s["auc"] - 0.5) < 0.03
    r = subprocess.run([*base[:-1], str(tmp_path / "rep2"), "--gen", str(tmp_path / "short.parquet")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "equal length" in r.stderr


def test_several_generated_samples_are_pooled(files, tmp_path):
    """--gen repeated: the BDT KS pools the fits of every generated sample; the 1D comparisons use them all."""
    gen2 = toy(1500, 3)
    gen2.to_csv(tmp_path / "gen2.csv", index=False)
    common = ["--ref", str(files / "ref.parquet"), "--conditions", "P,ETA,nTracks", "--targets", "DLLK",
              "--repeats", "2", "--threads", "1", "--seed", "4"]
    r = mambah(*common, "--gen", str(files / "gen.csv"), "--gen", str(tmp_path / "gen2.csv"),
               "--report", str(tmp_path / "both"))
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "both" / "summary.json").read_text())
    assert s["bdt"]["n_generated_samples"] == 2 and s["bdt"]["n_repeats"] == 4
    assert s["inputs"]["n_gen"] == 3000
    per = s["bdt"]["bdt_ks_per_sample"]
    assert s["bdt_ks"] == pytest.approx(np.mean(s["bdt"]["bdt_ks_repeats"])) and len(per) == 2
    assert "pooled over 2 generated samples" in r.stdout
    # the first sample alone, with the same seed, is the first half of the pooled fits
    r1 = mambah(*common, "--gen", str(files / "gen.csv"), "--report", str(tmp_path / "one"))
    assert r1.returncode == 0, r1.stderr
    s1 = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert s1["bdt"]["bdt_ks_repeats"] == s["bdt"]["bdt_ks_repeats"][:2] and s1["bdt_ks"] == pytest.approx(per[0])
