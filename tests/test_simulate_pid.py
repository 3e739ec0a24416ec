"""The default chain with PID: ``standard_pipeline`` / ``mambah simulate``, refusal of descriptors
the models cannot simulate, warnings once per production, and the exported LHCb-style ntuple."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from mambah.errors import ConfigurationError
from mambah.pid.chain import ROLES
from mambah.simulation import check_track_coverage, standard_pipeline

REF = "Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu"
MODELS = Path(__file__).resolve().parent.parent / "models"


def _mambah(*args: str, cwd=None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mambah", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def _models_dir(tmp_path: Path, names, edit_card=None) -> Path:
    """A models directory with links to some shipped models (and optionally one edited card)."""
    d = tmp_path / "models"
    d.mkdir()
    for n in names:
        if edit_card and n == edit_card[0]:
            import json
            import shutil

            shutil.copytree(MODELS / n, d / n)
            card = json.loads((d / n / "card.json").read_text())
            edit_card[1](card)
            (d / n / "card.json").write_text(json.dumps(card))
        else:
            os.symlink(MODELS / n, d / n)
    return d


RECO = ["efficiency-ref-v2", "resolution-ref-v1", "occupancy-lc-run3-v1"]


# ----------------------------------------------------------------------------- the default chain
def test_pid_is_in_the_default_reco_chain():
    pl = standard_pipeline(REF)
    assert [s.name for s in pl.stages] == ["gun", "decay", "occupancy", "efficiency", "resolution", "composites",
                                           "pid"]
    # the species of the descriptor's tracks, in the e, mu, pi, K, p order
    assert pl.stages[-1].species == ("mu", "pi", "K", "p")
    assert standard_pipeline("[B+ -> (J/psi(1S) -> e+ e-) K+]CC").stages[-1].species == ("e", "K")
    assert "pid" not in [s.name for s in standard_pipeline(REF, pid=False).stages]
    assert [s.name for s in standard_pipeline(REF, level="truth").stages] == ["gun", "decay"]


def test_cli_pid_flags():
    from mambah.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["simulate", REF, "-n", "10"]).pid is True
    assert parse(["simulate", REF, "-n", "10", "--no-pid"]).pid is False
    assert parse(["simulate", REF, "-n", "10", "--pid"]).pid is True  # kept for compatibility
    with pytest.raises(SystemExit):
        parse(["simulate", REF, "-n", "10", "--pid", "--no-pid"])


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("descriptor, written, pdg", [
    ("Lambda_b0 -> deuteron pi-", "deuteron", "1000010020"),
    ("Lambda_b0 -> Sigma+ pi- pi+ pi-", "Sigma+", "3222"),
    ("Xi_b- -> Xi- (J/psi(1S) -> mu+ mu-)", "Xi-", "3312"),
    ("B0 -> D- pi+", "D-", "-411"),  # a leaf is not decayed by the generator: a charged D- would be a track
])
def test_uncovered_charged_final_state_particle_is_refused_at_build(descriptor, written, pdg):
    for pid in (True, False):
        with pytest.raises(ConfigurationError) as e:
            standard_pipeline(descriptor, pid=pid)
        msg = str(e.value)
        assert f"final-state particle {written!r}" in msg and f"PDG id {pdg}" in msg
        assert "efficiency model 'efficiency-ref-v2' (species e, mu, pi, K, p)" in msg
        assert "resolution model 'resolution-ref-v1' (species e, mu, pi, K, p)" in msg
        assert ("PID models" in msg) is pid
        # the caret points at the particle as written
        lines = msg.splitlines()
        i = lines.index(f"  {descriptor}")
        assert lines[i + 1].strip() == "^" * len(written)
        assert lines[i + 1].index("^") == lines[i].index(written)
    standard_pipeline(descriptor, level="truth")  # the generator level needs no detector model


def test_neutral_final_state_particles_are_not_tracks():
    pl = standard_pipeline("B0 -> K_L0 gamma", invisible=("K_L0", "gamma"))
    assert pl.stages[-1].species == ()
    b = pl.process(pl.make_batch(0, 1, 50))
    assert len(b["particles"]) == 0  # the efficiency stage does not reconstruct neutral particles either
    assert standard_pipeline("B0 -> (K_S0 -> pi+ pi-) (J/psi(1S) -> mu+ mu-)").stages[-1].species == ("mu", "pi")


def test_every_uncovered_particle_is_named_once():
    with pytest.raises(ConfigurationError) as e:
        standard_pipeline("Xi_b- -> Sigma- Sigma+ Sigma- pi+ pi-", level="reco")
    msg = str(e.value)
    for name in ("'Sigma+'", "'Sigma-'"):
        assert msg.count(f"final-state particle {name}") == 1
    assert "'pi-'" not in msg and "'pi+'" not in msg


def test_pid_models_missing_for_a_species(tmp_path):
    d = _models_dir(tmp_path, RECO + [f"pid-p-{r}" for r in ROLES])
    pl = standard_pipeline("Lambda_b0 -> (J/psi(1S) -> p+ anti-p-) p+ anti-p-", models_dir=d)  # only protons
    assert pl.stages[-1].species == ("p",)
    with pytest.raises(ConfigurationError) as e:
        standard_pipeline("Lambda_c+ -> p+ K- pi+", models_dir=d)
    msg = str(e.value)
    assert "'K-'" in msg and "'pi+'" in msg and "'p+'" not in msg
    assert f"the PID models pid-<species>-{{flags,muon,rich,global}} in {d} (species p)" in msg
    assert "efficiency model" not in msg and "--no-pid" in msg
    assert "pid" not in [s.name for s in standard_pipeline("Lambda_c+ -> p+ K- pi+", models_dir=d, pid=False).stages]


def test_efficiency_card_species_are_checked(tmp_path):
    def no_protons(card):
        card["species"] = ["e", "mu", "pi", "K"]

    d = _models_dir(tmp_path, RECO, edit_card=("efficiency-ref-v2", no_protons))
    with pytest.raises(ConfigurationError, match=r"'p\+' \(PDG id 2212\) is charged.* the efficiency model "
                                                 r"'efficiency-ref-v2' \(species e, mu, pi, K\) does not cover it"):
        standard_pipeline("Lambda_c+ -> p+ K- pi+", models_dir=d, pid=False)
    assert check_track_coverage("B+ -> (J/psi(1S) -> mu+ mu-) K+", efficiency=str(d / "efficiency-ref-v2"),
                                resolution="reference", pid=False) == ("mu", "K")


def test_cli_refuses_before_writing_anything(tmp_path):
    db = tmp_path / "bad.sqlite"
    r = _mambah("simulate", "Lambda_b0 -> deuteron pi-", "--events", "100", "--db", f"sqlite:///{db}")
    assert r.returncode == 2
    assert "mambah simulate: error: cannot reconstruct" in r.stderr and "'deuteron'" in r.stderr
    assert "species e, mu, pi, K, p" in r.stderr and "Traceback" not in r.stderr
    assert not db.exists()
    d = _models_dir(tmp_path, RECO)
    r = _mambah("simulate", "Lambda_c+ -> p+ K- pi+", "--events", "100", "--db", f"sqlite:///{db}", "--models", str(d))
    assert r.returncode == 2 and "(species none)" in r.stderr and "--no-pid" in r.stderr
    assert not db.exists()


# ----------------------------------------------------------------------------- warnings
@pytest.mark.filterwarnings("ignore::mambah.errors.OutOfRangeWarning")  # counted below
def test_out_of_range_warned_once_per_production_and_model(tmp_path):
    from mambah import Store, run_production
    from mambah.errors import OutOfRangeWarning
    from mambah.reconstruction import efficiency
    from mambah.pid import stage as pid

    pl = standard_pipeline("B+ -> (J/psi(1S) -> mu+ mu-) K+")
    with Store(f"sqlite:///{tmp_path / 'w.sqlite'}") as st:
        for prod in ("w1", "w2"):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", OutOfRangeWarning)
                run_production(pl, n_events=3000, batch_size=1000, seed=5, store=st, production=prod)
            pid_warnings = [w.message for w in caught if issubclass(w.category, OutOfRangeWarning)
                            and str(w.message.model).startswith("pid-")]
            msgs = [str(m) for m in pid_warnings]
            models = [m.model for m in pid_warnings]
            assert all(0 < m.count <= m.n for m in pid_warnings)
            assert models and len(models) == len(set(models)), msgs  # once per model in each production
            assert set(models) <= {f"pid-{s}-{r}" for s in ("mu", "K") for r in (*ROLES, "tie", "probnn")}
            assert all(f"production {prod!r}" in m for m in msgs)
        infos = [st.batch_info(b)["config"]["reconstruction"] for b in st.batch_ids()]
    # every batch records its counts; the process totals are their sums
    for mod, stage in ((pid, "pid"), (efficiency, "efficiency")):
        tot = mod.out_of_range_totals("w1")
        assert tot
        for model, (bad, n) in tot.items():
            per_batch = [i[stage]["out_of_range"][model] for i in infos[:3]]
            assert [bad, n] == list(np.sum(per_batch, axis=0)) and 0 <= bad <= n
    tracks = sum(i["pid"]["tracks"]["K"] for i in infos[:3])
    assert pid.out_of_range_totals("w1")["pid-K-flags"][1] == tracks  # the flags step sees every K track


def _regenerated_warnings(pl, st, category) -> dict:
    """``{model: [count, n]}`` of the ``category`` warnings that regenerating the store's first batch emits
    (a regenerated batch repeats its counts, every call)."""
    from mambah.production import regenerate_batch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", category)
        regenerate_batch(pl, st, st.batch_ids()[0])
    return {w.message.model: [w.message.count, w.message.n] for w in caught if issubclass(w.category, category)}


@pytest.mark.filterwarnings("ignore::mambah.errors.OutOfRangeWarning")
def test_uncalibrated_rows_reported_once_per_production_and_recorded_per_batch(tmp_path):
    """The calibrated RICH steps leave the tracks of bins and threshold states without a map as the
    network gave them: one UncalibratedWarning per model and production, every batch's counts in its
    provenance (for every calibrated model, also at 0), the totals their sums, the simulate summary's rows."""
    from mambah import Store, run_production
    from mambah.cli.cmd_simulate import uncalibrated_rows
    from mambah.errors import UncalibratedWarning
    from mambah.pid import stage as pid

    pl = standard_pipeline(REF)
    calibrated = {f"pid-{s}-rich" for s in ("pi", "K", "p")}
    with Store(f"sqlite:///{tmp_path / 'u.sqlite'}") as st:
        for prod in ("u1", "u2"):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UncalibratedWarning)
                run_production(pl, n_events=3000, batch_size=1000, seed=5, store=st, production=prod)
            got = [w.message for w in caught if issubclass(w.category, UncalibratedWarning)]
            models = [m.model for m in got]
            assert models and len(models) == len(set(models)) and set(models) <= calibrated, [str(m) for m in got]
            assert all(0 < m.count < m.n and f"production {prod!r}" in str(m) for m in got)
        infos = [st.batch_info(b)["config"]["reconstruction"]["pid"] for b in st.batch_ids()]
        rows = uncalibrated_rows(st, "u1")
        tot = pid.uncalibrated_totals("u1")
        # a regenerated batch repeats its counts, every call
        again = _regenerated_warnings(pl, st, UncalibratedWarning)
        assert again == {m: c for m, c in infos[0]["uncalibrated"].items() if c[0]}
    assert all(set(i["uncalibrated"]) == calibrated for i in infos)
    assert set(tot) == calibrated
    for model, (bad, n) in tot.items():
        per_batch = [i["uncalibrated"][model] for i in infos[:3]]
        assert [bad, n] == list(np.sum(per_batch, axis=0)) and 0 <= bad < n
        assert n == sum(i["out_of_range"][model][1] for i in infos[:3])  # the rows the step evaluated
    assert sorted(rows) == sorted((m, b, n) for m, (b, n) in tot.items() if b)
    # the b-decay pions below 3 GeV/c reach threshold states the calibration sample did not populate
    assert tot["pid-pi-rich"][0] > 0


@pytest.mark.filterwarnings("ignore::mambah.errors.OutOfRangeWarning")
@pytest.mark.filterwarnings("ignore::mambah.errors.UncalibratedWarning")
def test_unsupported_rows_reported_once_per_production_and_recorded_per_batch(tmp_path):
    """A step whose support table lacks the (P, ETA) cells of some tracks: one OutOfSupportWarning per
    model and production, every batch's counts in its provenance, the totals their sums, the simulate
    summary's rows, regenerate_batch's warnings; the PID columns are those of the same models without
    the table."""
    import shutil

    from mambah import Store, run_production
    from mambah.cli.cmd_simulate import unsupported_rows
    from mambah.errors import OutOfSupportWarning
    from mambah.nn.support import Support, source_entry, write_support
    from mambah.pid import stage as pid

    d = tmp_path / "models"
    d.mkdir()
    for m in MODELS.iterdir():
        if m.name == "pid-p-rich":
            shutil.copytree(m, d / m.name)
            rng = np.random.default_rng(1)  # a sample of protons at eta < 3 only
            s = Support.from_data(10 ** rng.uniform(3.3, 5.2, 20000), rng.uniform(2.0, 3.0, 20000))
            write_support(d / m.name, s, [source_entry("training data", [], 20000, np.ones(20000), None, None)])
        elif m.is_dir():
            os.symlink(m, d / m.name)
    pl = standard_pipeline(REF, models_dir=d)
    with Store(f"sqlite:///{tmp_path / 's.sqlite'}") as st:
        for prod in ("s1", "s2"):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", OutOfSupportWarning)
                run_production(pl, n_events=2000, batch_size=1000, seed=5, store=st, production=prod)
            got = [w.message for w in caught if issubclass(w.category, OutOfSupportWarning)]
            assert "pid-p-rich" in [m.model for m in got] and len(got) == len({m.model for m in got})
            assert all(0 < m.count <= m.n and f"production {prod!r}" in str(m) for m in got)
        infos = [st.batch_info(b)["config"]["reconstruction"]["pid"] for b in st.batch_ids()]
        rows = unsupported_rows(st, "s1")
        tot = pid.unsupported_totals("s1")
        again = _regenerated_warnings(pl, st, OutOfSupportWarning)
        assert again == {m: c for m, c in infos[0]["unsupported"].items() if c[0]}
    bad, n = tot["pid-p-rich"]
    per_batch = [i["unsupported"]["pid-p-rich"] for i in infos[:2]]
    assert [bad, n] == list(np.sum(per_batch, axis=0)) and 0 < bad < n
    assert n == sum(i["out_of_range"]["pid-p-rich"][1] for i in infos[:2])  # the rows the step evaluated
    assert ("pid-p-rich", bad, n) in rows
    # the outputs are those of the shipped models (the table only reports)
    from mambah.pipeline import production_batch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = (x.process(production_batch(0, 5, 1000))["particles"] for x in (pl, standard_pipeline(REF)))
    for col in ("rich_dll_k", "rich_dll_p", "pid_k", "pid_p", "is_muon"):
        np.testing.assert_array_equal(a[col].to_numpy(), b[col].to_numpy())


def test_native_log_filter_drops_tensorflow_retracing_only():
    import logging

    from mambah.cli._native_log import _NATIVE, _DropRetracing

    line = ("WARNING tensorflow: 5 out of the last 5 calls to <function _predict.<locals>.<lambda> at 0x7f34fc0ffa60> "
            "triggered tf.function retracing. Tracing is expensive and the excessive number of tracings could be due")
    assert _NATIVE.match(line.encode()) and _NATIVE.match(line.replace("WARNING tensorflow: ", "WARNING:tensorflow:").encode())
    f = _DropRetracing()
    rec = logging.LogRecord("tensorflow", logging.WARNING, __file__, 1, line.split(": ", 1)[1], None, None)
    assert not f.filter(rec)
    other = logging.LogRecord("tensorflow", logging.WARNING, __file__, 1, "5 calls to f failed", None, None)
    assert f.filter(other)
    assert not _NATIVE.match(b"WARNING mambah.simulate: PID model 'pid-p-flags': 3 of 10 tracks")


# ----------------------------------------------------------------------------- CLI run and export
@pytest.fixture(scope="module")
def cli_production(tmp_path_factory):
    d = tmp_path_factory.mktemp("simulate_pid")
    url = f"sqlite:///{d / 'ref.sqlite'}"
    r = _mambah("simulate", REF, "--events", "6000", "--batch-size", "2000", "--seed", "3", "--db", url,
                "--production", "ref")
    assert r.returncode == 0, r.stderr[-3000:]
    return d, url, r


def _summary_rows(stdout: str) -> dict[str, list[str]]:
    """``{model: [stage, outside, of, share, conditions]}`` of the out-of-range table of ``mambah simulate``."""
    lines = stdout.splitlines()
    head = next(i for i, ln in enumerate(lines) if re.match(r"\s+stage\s+model\s+outside\s+of\s+share", ln))
    rows = {}
    for ln in lines[head + 1:]:
        cells = ln.split(None, 5)
        if len(cells) < 5 or not cells[2].isdigit():
            break
        rows[cells[1]] = [cells[0], *cells[2:]]
    return rows


def test_cli_simulate_runs_pid_and_summarises_the_out_of_range_inputs(cli_production):
    _, url, r = cli_production
    assert "3 written" in r.stdout and "pid" in r.stdout
    assert "retracing" not in r.stderr and "tf.function" not in r.stderr
    assert "Traceback" not in r.stderr
    # the models' out-of-range facts: once, in the summary table, not as warnings on stderr
    assert "OutOfRangeWarning" not in r.stderr and "outside" not in r.stderr, r.stderr
    rows = _summary_rows(r.stdout)
    assert rows["pid-p-flags"][0] == "pid"
    assert "efficiency-ref-v2" not in rows  # the acceptance first: never evaluated outside its range
    assert all(0 < int(v[1]) <= int(v[2]) for v in rows.values())
    assert "P" in rows["pid-p-flags"][4] or "ETA" in rows["pid-p-flags"][4]  # the warning's fields


def test_cli_simulate_reads_like_a_tool(tmp_path):
    """stderr is not a terminal here: no warnings before the summary, plain progress lines, no ``\\r``."""
    r = _mambah("simulate", REF, "--events", "2000", "--batch-size", "1000", "--db", f"duckdb:///{tmp_path / 's.duckdb'}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "\r" not in r.stderr
    assert not [ln for ln in r.stderr.splitlines() if "WARNING" in ln or "Warning" in ln], r.stderr
    assert re.search(r"^simulate \S+: 2\.00k/2\.00k ev \(100%\), .* done$", r.stderr, re.M), r.stderr
    assert r.stdout.index("production ") < r.stdout.index("inputs outside the models' training ranges")
    rows = _summary_rows(r.stdout)
    assert {"pid-mu-flags", "pid-p-rich"} <= set(rows) and "efficiency-ref-v2" not in rows


def test_bad_descriptor_writes_no_batch_to_an_existing_store(cli_production):
    from mambah import Store

    _, url, _ = cli_production
    with Store(url, create=False) as st:
        before = st.batch_ids()
    r = _mambah("simulate", "Lambda_b0 -> Sigma+ pi- pi+ pi-", "--events", "100", "--db", url, "--production", "bad")
    assert r.returncode == 2 and "'Sigma+'" in r.stderr
    with Store(url, create=False) as st:
        assert st.batch_ids() == before


def test_store_models_table_holds_every_model_the_batches_used(cli_production):
    from mambah import Store

    _, url, _ = cli_production
    with Store(url, create=False) as st:
        table = st.read("models").set_index("name")
        used = st.summary()["model_versions"]
        hashes = {k: v["hash"] for b in st.batch_ids() for k, v in st.batch_info(b)["models"].items()}
    assert set(table.index) == set(used) == set(hashes)
    assert all(table.loc[k, "hash"] == h for k, h in hashes.items())
    assert (table.loc["pid-K-rich", "kind"], table.loc["pid-K-rich", "species"]) == ("pid", "K")
    assert Path(table.loc["pid-K-rich", "path"]).resolve() == (MODELS / "pid-K-rich").resolve()


def test_export_root_and_parquet_lhcb_branches(cli_production):
    import pandas as pd
    import uproot

    d, url, _ = cli_production
    for ext in ("root", "parquet"):
        r = _mambah("export", "--db", url, "--out", str(d / f"ref.{ext}"))
        assert r.returncode == 0, r.stderr[-3000:]
    with uproot.open(d / "ref.root") as f:
        t = f["DecayTree"]
        wanted = ["Lb_M", "Lc_M", "p_P", "p_PT", "p_ETA", "p_PIDp", "p_PIDK", "p_TRUEID", "mu_isMuon", "nTracks",
                  "K_P", "K_PIDp", "K_PIDK", "K_TRUEID", "mu_TRUEID", "mu_P", "p_isMuon", "p_Reconstructed",
                  "Lc_TRUEID", "Lb_TRUEID"]
        missing = sorted(set(wanted) - set(t.keys()))
        assert not missing, missing
        nt = t.arrays(wanted, library="pd")
    pq = pd.read_parquet(d / "ref.parquet")
    assert len(nt) == len(pq) == 6000
    np.testing.assert_array_equal(pq["p_PIDp"].to_numpy(np.float32), nt["p_PIDp"].to_numpy(np.float32))

    # truth ids of the reference channel
    assert (nt["Lb_TRUEID"] == 5122).all() and (nt["Lc_TRUEID"] == 4122).all()
    assert (nt["p_TRUEID"] == 2212).all() and (nt["K_TRUEID"] == -321).all() and (nt["mu_TRUEID"] == 13).all()
    assert (nt["nTracks"] > 0).all()

    reco = nt[np.isfinite(nt["p_P"])]
    assert 0.3 * len(nt) < len(reco) < len(nt)
    assert (reco["p_PT"] <= reco["p_P"]).all() and (reco["p_P"] > 0).all()
    assert reco["p_ETA"].between(1.0, 7.0).mean() > 0.99
    # every reconstructed track has its combined DLLs (RICH parts are 0 where the RICH did not see it)
    assert np.isfinite(reco["p_PIDp"]).all() and np.isfinite(reco["p_PIDK"]).all()
    k = nt[np.isfinite(nt["K_P"])]
    assert reco["p_PIDp"].mean() > k["K_PIDp"].mean() + 5
    assert reco["p_PIDK"].mean() < k["K_PIDK"].mean()
    mu = nt[nt["mu_P"] > 10_000]
    assert len(mu) > 500 and mu["mu_isMuon"].mean() > 0.8
    assert reco["p_isMuon"].mean() < 0.1
    # masses: Lc from its three tracks near the PDG mass; Lb_M is the visible (Lc mu) mass
    both = np.isfinite(nt["Lc_M"])
    assert abs(np.median(nt.loc[both, "Lc_M"]) - 2286.46) < 5
    lb = nt["Lb_M"][np.isfinite(nt["Lb_M"])]
    assert len(lb) > 100 and (lb > 2286.46 + 105.0 - 50).all() and (lb < 5619.6 + 50).all()


def test_efficiency_model_for_fewer_species_runs(tmp_path):
    def no_electrons(card):
        card["species"] = ["mu", "pi", "K", "p"]

    d = _models_dir(tmp_path, RECO, edit_card=("efficiency-ref-v2", no_electrons))
    pl = standard_pipeline("B+ -> (J/psi(1S) -> mu+ mu-) K+", models_dir=d, pid=False)
    assert pl.stages[3].species == ("mu", "pi", "K", "p")
    b = pl.process(pl.make_batch(0, 1, 200))
    assert len(b["particles"]) > 0
    assert standard_pipeline("B+ -> (J/psi(1S) -> mu+ mu-) K+", pid=False).stages[3].species == ("e", "mu", "pi", "K", "p")
