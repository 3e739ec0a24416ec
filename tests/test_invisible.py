"""No silently dropped photon (issue 25): neutral final-state particles are refused or declared.

``B0 -> (K*(892)0 -> K+ pi-) gamma`` used to run without a word, its "B0" having the K*0's mass.
A neutral final-state particle that no stage reconstructs (anything but a neutrino) is now refused
before anything runs, named and marked in the descriptor, unless it is left invisible on purpose;
``vertices.n_invisible`` (ntuple ``X_NINVISIBLE``) counts a composite's invisible descendants,
neutrinos included. The expected counts are read off the descriptor with the ``particle`` package
directly (charge 0, leaf of the tree), not through mambah.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from particle import Particle

from mambah.errors import ConfigurationError, OutOfRangeWarning, UnknownParticleError

KSTG = "B0 -> (K*(892)0 -> K+ pi-) gamma"
LB = "Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu"


def _caret_under(msg: str, text: str, word: str) -> list[int]:
    """Columns (in the descriptor) of the carets printed under ``text`` in ``msg``."""
    lines = msg.splitlines()
    i = lines.index(f"  {text}")
    marks = lines[i + 1][2:]
    return [j for j, ch in enumerate(marks) if ch == "^"]


def test_a_photon_is_refused_before_anything_runs_with_the_particle_marked():
    from mambah import standard_pipeline

    with pytest.raises(ConfigurationError) as e:
        standard_pipeline(KSTG, pid=False)
    msg = str(e.value)
    assert "'gamma' (PDG id 22) is neutral" in msg and "--invisible gamma" in msg
    start = KSTG.index("gamma")
    assert _caret_under(msg, KSTG, "gamma") == list(range(start, start + len("gamma")))


def test_every_occurrence_is_marked_and_each_particle_named_once():
    from mambah.simulation import check_neutral_coverage

    desc = "B0 -> K+ pi- pi0 pi0 gamma"
    with pytest.raises(ConfigurationError) as e:
        check_neutral_coverage(desc)
    msg = str(e.value)
    assert msg.count("final-state particle 'pi0'") == 1 and msg.count("final-state particle 'gamma'") == 1
    first, second = desc.index("pi0"), desc.rindex("pi0")
    blocks = msg.split("the final-state particle")
    pi0_block = next(b for b in blocks if b.startswith(" 'pi0'"))
    assert _caret_under(pi0_block, desc, "pi0") == [*range(first, first + 3), *range(second, second + 3)]
    assert "--invisible pi0,gamma" in msg
    # leaving only one of them invisible still refuses the other
    with pytest.raises(ConfigurationError, match="'gamma'") as e:
        check_neutral_coverage(desc, invisible="pi0")
    assert "'pi0'" not in str(e.value)
    assert check_neutral_coverage(desc, invisible="gamma,pi0") == (22, 111)


@pytest.mark.parametrize("desc", [LB, "B+ -> K+ e+ e-", "B0 -> (K_S0 -> pi+ pi-) (J/psi(1S) -> mu+ mu-)",
                                  "B+ -> (anti-D0 -> K+ pi- pi0) pi+"])
def test_neutrinos_and_decayed_neutrals_pass_others_need_a_word(desc):
    from mambah.simulation import check_neutral_coverage

    from mambah.generation import parse_descriptor

    leaves = [n.particle.pid for n in parse_descriptor(desc).nodes() if not n.children]
    neutral = [p for p in leaves if Particle.from_pdgid(p).charge == 0]
    non_nu = sorted({abs(p) for p in neutral if abs(p) not in (12, 14, 16)})
    if non_nu:
        with pytest.raises(ConfigurationError):
            check_neutral_coverage(desc)
        assert check_neutral_coverage(desc, invisible=non_nu) == tuple(non_nu)
    else:
        assert check_neutral_coverage(desc) == ()


def test_bad_invisible_entries_are_refused():
    from mambah.reconstruction.visibility import invisible_pids

    with pytest.raises(ConfigurationError, match="'K\\+' is charged"):
        invisible_pids(["gamma", "K+"])
    with pytest.raises(UnknownParticleError, match="gama"):
        invisible_pids("gama")
    with pytest.raises(ConfigurationError, match="expected particle names"):
        invisible_pids([1.5])
    assert invisible_pids(["anti-n0", "n0"]) == (2112,)  # a particle and its antiparticle alike
    assert invisible_pids([22, "pi0, K_L0"]) == (22, 111, 130)


@pytest.fixture(scope="module")
def kstg_batch():
    from mambah import standard_pipeline

    pipe = standard_pipeline(KSTG, pid=False, invisible=("gamma",))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)
        return pipe, pipe.process(pipe.make_batch(0, production_seed=3, n_events=3000))


def test_invisible_photon_runs_and_the_partial_mass_is_marked(kstg_batch):
    from mambah.generation import parse_descriptor

    _, b = kstg_batch
    tree = parse_descriptor(KSTG).tree()
    parts, verts = b["particles"], b["vertices"]
    comp = parts[parts["vertex"] >= 0]
    by_pid = {int(p): verts.loc[comp.loc[comp["pid"] == p, "vertex"].to_numpy()] for p in np.unique(np.abs(comp["pid"]))}
    assert set(by_pid) == {511, 313} and len(by_pid[511]) > 100
    # expected: the B0 has the photon below it, the K*0 nothing neutral
    expected = {abs(tree[k]["pid"]): sum(1 for j in range(len(tree)) if tree[j]["stable"] and tree[j]["charge"] == 0
                                         and _below(tree, j, k)) for k in (0, 1)}
    assert expected == {511: 1, 313: 0}
    for pid, v in by_pid.items():
        assert (v["n_invisible"].to_numpy() == expected[pid]).all(), pid
    # and the reason for the mark: without the photon the "B0" is the K*0
    np.testing.assert_array_equal(np.sort(by_pid[511]["m"].to_numpy()), np.sort(by_pid[313]["m"].to_numpy()))
    assert b.info["pipeline"]["composites"]["invisible"] == [22]


def _below(tree, j, k) -> bool:
    m = tree[j]["mother"]
    while m >= 0:
        if m == k:
            return True
        m = tree[m]["mother"]
    return False


def test_the_composites_stage_refuses_an_undeclared_photon_itself(kstg_batch):
    """A hand-built pipeline gets no silent drop either: the stage refuses the batch."""
    from mambah.reconstruction import Composites

    from mambah.batch import Batch

    _, done = kstg_batch
    b = Batch(id=done.id, seed=done.seed, n_events=done.n_events, info=dict(done.info),
              tables={k: v for k, v in done.tables.items() if k != "vertices"})
    b["particles"] = done["particles"][done["particles"]["vertex"] < 0].reset_index(drop=True)
    with pytest.raises(ConfigurationError, match=r"gamma \(PDG id 22\) are neutral"):
        Composites()(b)
    assert "vertices" not in b
    assert "invisible" not in Composites().config()  # a production without it is configured as before


def test_neutrinos_are_counted_without_being_asked():
    from mambah.reconstruction.composites import plan_composites
    from mambah.generation import parse_descriptor

    tree = parse_descriptor(LB).tree()
    plan = plan_composites(tree)
    assert plan["n_invisible"] == {0: 1, 1: 0}  # Lambda_b0: the neutrino; Lambda_c+: none


def test_cli_refuses_then_runs_with_invisible(tmp_path):
    db = f"duckdb:///{tmp_path}/k.duckdb"
    r = subprocess.run([sys.executable, "-m", "mambah", "-q", "simulate", KSTG, "--events", "300", "--db", db,
                        "--no-pid"], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "'gamma' (PDG id 22) is neutral" in r.stderr and "--invisible gamma" in r.stderr
    assert not (tmp_path / "k.duckdb").exists() or "batches: 1 written" not in r.stdout
    r = subprocess.run([sys.executable, "-m", "mambah", "-q", "simulate", KSTG, "--events", "300", "--db", db,
                        "--no-pid", "--invisible", "gamma"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "left invisible (--invisible): gamma" in r.stdout
    from mambah import Store

    with Store(db) as st:
        nt = st.candidates()
    built = np.isfinite(nt["B0_M"])
    assert built.sum() > 20
    assert (nt.loc[built, "B0_NINVISIBLE"] == 1).all() and (nt.loc[built, "Kst_NINVISIBLE"] == 0).all()
