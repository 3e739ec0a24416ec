"""Mass-hypothesis swaps (issue 24): B0 -> K+ pi- reconstructed with other hypotheses.

Three small productions of the full chain (``standard_pipeline``: trained tracking models and,
for the B0 ones, the PID chains) are written into one DuckDB store and read back:

* ``plain``: ``[B0 -> K+ pi-]CC``, no swap;
* ``swapped``: the same seed with the pion reconstructed as a kaon;
* ``two``: the same seed with both swapped at once (K+ as pi+, pi- as K-: the double
  mis-identification), one short form and one marked form.

Two swaps in nested composites (``Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu``) are
checked the same way by a test marked slow (a new decay tree costs seconds of graph building).

The masses are recomputed from the stored four-momenta with masses taken from the ``particle``
package directly (not through mambah). Four-momenta and masses are stored as float64
(``mambah.store.schema``: ``_f64``), so the store returns the bits the stage computed; the
recomputation repeats the stage's arithmetic order and is exact (``assert_array_equal``).
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest
from particle import Particle

from mambah.errors import ConfigurationError, DescriptorError, OutOfRangeWarning, StoreError, UnknownParticleError
from mambah.reconstruction import Composites
from mambah.reconstruction.hypotheses import MassHypothesis, marked_descriptor, mass_hypotheses

B0KPI = "[B0 -> K+ pi-]CC"
TWO = ["K+=pi+", "[B0 -> K+ ^pi-]CC : K-"]
LB = "[Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu]CC"
LB_SWAPS = ["p+=K+", "[Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) ^mu- anti-nu_mu]CC : pi-"]
PI_AS_K = "[B0 -> K+ ^pi-]CC : K-"
N_B0, N_LB = 2400, 1500


def _mass(pdg: int) -> float:
    return float(Particle.from_pdgid(int(pdg)).mass)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mambah import Store, run_production, standard_pipeline

    st = Store(f"duckdb:///{tmp_path_factory.mktemp('hyp')}/hyp.duckdb")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)  # the models' range report is not under test here
        for name, swaps in (("plain", None), ("swapped", PI_AS_K), ("two", TWO)):
            pipe = standard_pipeline(B0KPI, reconstruct_as=swaps)
            run_production(pipe, n_events=N_B0, batch_size=N_B0 // 2, seed=17, store=st, production=name)
    yield st
    st.close()


def _batches(store, production: str) -> dict[int, int]:
    bt = store.read("batches", columns=["batch", "n_events"], where={"production": production})
    return dict(zip(bt["batch"].astype(int), bt["n_events"].astype(int)))


def _tree(store, production: str) -> list[dict]:
    b = min(_batches(store, production))
    return store.batch_info(b)["config"]["decay_tree"]


def _recompute(store, production: str, hyp_pdg: dict[int, int]):
    """Composite masses recomputed from the stored track four-momenta, with every track's energy
    from its 3-momentum and the ``particle`` mass of its hypothesis (``hyp_pdg``: node -> PDG id;
    other tracks: their true species). Returns (stored m, recomputed m, stored m_truehyp,
    recomputed true-hypothesis m, stored track e, recomputed track e), composites in store order."""
    tree = _tree(store, production)
    nb = _batches(store, production)
    parts = store.read("particles", batches=list(nb))
    verts = store.read("vertices", batches=list(nb))
    tracks = parts[parts["vertex"] < 0]
    comps = parts[parts["vertex"] >= 0]
    n_of = tracks["batch"].map(nb).to_numpy()
    t_node = tracks["mc_particle"].to_numpy() // n_of
    t_event = tracks["mc_particle"].to_numpy() % n_of
    p3 = {c: tracks[c].to_numpy() for c in ("px", "py", "pz")}
    m_true = np.array([_mass(abs(p)) for p in tracks["pid"]])
    m_hyp = np.array([_mass(hyp_pdg[k]) if k in hyp_pdg else m for k, m in zip(t_node, m_true)])
    e_hyp = np.sqrt(p3["px"] * p3["px"] + p3["py"] * p3["py"] + p3["pz"] * p3["pz"] + m_hyp * m_hyp)
    e_true = np.sqrt(p3["px"] * p3["px"] + p3["py"] * p3["py"] + p3["pz"] * p3["pz"] + m_true * m_true)
    key = {(int(b), int(k), int(e)): i for i, (b, k, e) in enumerate(zip(tracks["batch"], t_node, t_event))}

    def below(k):  # the node's charged final-state particles, depth first (the stage's order)
        out = []
        for c in tree[k]["children"]:
            out += [c] if tree[c]["stable"] and tree[c]["charge"] != 0 else ([] if tree[c]["stable"] else below(c))
        return out

    got, want, got_true, want_true = [], [], [], []
    cn = comps["mc_particle"].to_numpy() // comps["batch"].map(nb).to_numpy()
    for (b, e, k, m, v) in zip(comps["batch"], comps["event"], cn, comps["m"], comps["vertex"]):
        rows = [key[(int(b), j, int(e))] for j in below(int(k))]
        s = {c: p3[c][rows[0]] for c in p3}
        se, st = e_hyp[rows[0]], e_true[rows[0]]
        for r in rows[1:]:  # sequential sums, in node order
            for c in p3:
                s[c] = s[c] + p3[c][r]
            se, st = se + e_hyp[r], st + e_true[r]
        p2 = s["px"] * s["px"] + s["py"] * s["py"] + s["pz"] * s["pz"]
        got.append(m)
        want.append(np.sqrt(max(se * se - p2, 0.0)))
        vrow = verts[(verts["batch"] == b) & (verts["index"] == v)]
        got_true.append(float(vrow["m_truehyp"].iloc[0]))
        want_true.append(np.sqrt(max(st * st - p2, 0.0)))
        assert float(vrow["m"].iloc[0]) == m  # the vertex row carries the composite's mass
    return (np.array(got), np.array(want), np.array(got_true), np.array(want_true),
            tracks["e"].to_numpy(), e_hyp, tracks["m"].to_numpy(), m_hyp)


# ------------------------------------------------------------------------------------ the masses
def test_swapped_masses_equal_a_recomputation_from_the_stored_four_momenta(store):
    got, want, got_true, want_true, e, e_want, m, m_want = _recompute(store, "swapped", {2: 321})
    assert len(got) > 500
    np.testing.assert_array_equal(got, want)  # exact: float64 in the store, same arithmetic order
    np.testing.assert_array_equal(got_true, want_true)
    np.testing.assert_array_equal(e, e_want)  # the swapped tracks' energies, and the others'
    np.testing.assert_array_equal(m, m_want)
    assert np.all(got > got_true)  # a heavier hypothesis always raises the mass


def test_two_swaps_at_once(store):
    got, want, got_true, want_true, e, e_want, m, m_want = _recompute(store, "two", {1: 211, 2: 321})
    assert len(got) > 500
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_true, want_true)
    np.testing.assert_array_equal(e, e_want)
    np.testing.assert_array_equal(m, m_want)
    # the same candidates as without swaps, under the true hypotheses
    plain = store.read("vertices", batches=list(_batches(store, "plain")))
    np.testing.assert_array_equal(got_true, plain["m"].to_numpy())
    assert not np.all(got > got_true) and not np.all(got < got_true)  # K+ lighter, pi- heavier: either way


@pytest.mark.slow
def test_two_swaps_in_nested_composites(tmp_path):
    from mambah import Store, run_production, standard_pipeline

    hyps = mass_hypotheses(LB, LB_SWAPS)
    assert [(h.node, h.particle, h.hypothesis) for h in hyps] == [(2, "p+", "K+"), (5, "mu-", "pi-")]
    with Store(f"duckdb:///{tmp_path}/lb.duckdb") as store, warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)
        run_production(standard_pipeline(LB, reconstruct_as=LB_SWAPS, pid=False), n_events=N_LB,
                       batch_size=N_LB // 2, seed=17, store=store, production="two")
        got, want, got_true, want_true, e, e_want, m, m_want = _recompute(store, "two", {2: 321, 5: 211})
        parts = store.read("particles", batches=list(_batches(store, "two")))
        verts = store.read("vertices", batches=list(_batches(store, "two")))
        nt = store.candidates(production="two")
    assert len(got) > 200
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_true, want_true)
    np.testing.assert_array_equal(e, e_want)
    np.testing.assert_array_equal(m, m_want)
    assert {"Lb_M_TRUEHYP", "Lc_M_TRUEHYP", "p_M_TRUEHYP", "mu_M_TRUEHYP"} <= set(nt.columns)
    assert "K_M_TRUEHYP" not in nt.columns and "pi_M_TRUEHYP" not in nt.columns
    # Lambda_c+ under the true hypotheses peaks at its mass; as K+ K- pi+ it is lighter
    lc = np.abs(parts.loc[parts["vertex"] >= 0, "pid"].to_numpy()) == 4122
    assert np.median(verts["m_truehyp"].to_numpy()[lc]) == pytest.approx(_mass(4122), abs=5)
    assert np.all(verts["m"].to_numpy()[lc] < verts["m_truehyp"].to_numpy()[lc])


def test_unswapped_production_is_unchanged(store):
    """Same seed with and without the swap: the same tracks, vertices and PID; the no-swap masses
    are the swapped production's true-hypothesis masses, and equal their recomputation."""
    got, want, got_true, want_true, *_ = _recompute(store, "plain", {})
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, got_true)  # m_truehyp == m without swaps
    a = store.read("particles", batches=list(_batches(store, "plain")))
    b = store.read("particles", batches=list(_batches(store, "swapped")))
    va = store.read("vertices", batches=list(_batches(store, "plain")))
    vb = store.read("vertices", batches=list(_batches(store, "swapped")))
    assert len(a) == len(b) > 0
    same = [c for c in a.columns if c not in ("batch", "e", "m")]
    for c in same:  # includes every PID column: drawn from the true species, untouched by the swap
        np.testing.assert_array_equal(a[c].to_numpy(), b[c].to_numpy(), err_msg=c)
    pion = (np.abs(a["pid"]) == 211).to_numpy()
    kaon = (np.abs(a["pid"]) == 321).to_numpy()
    np.testing.assert_array_equal(a["e"].to_numpy()[kaon], b["e"].to_numpy()[kaon])
    assert np.all(b["e"].to_numpy()[pion] > a["e"].to_numpy()[pion])
    np.testing.assert_array_equal(va["m"].to_numpy(), vb["m_truehyp"].to_numpy())
    np.testing.assert_array_equal(va[["x", "y", "z"]].to_numpy(), vb[["x", "y", "z"]].to_numpy())


def test_pid_stays_that_of_the_true_species(store):
    """The pions reconstructed as kaons keep pion-like PID: PIDK mostly negative, unlike kaons'."""
    b = store.read("particles", batches=list(_batches(store, "swapped")))
    pion = (np.abs(b["pid"]) == 211).to_numpy()
    kaon = (np.abs(b["pid"]) == 321).to_numpy()
    pidk = b["pid_k"].to_numpy()
    assert np.isfinite(pidk[pion]).sum() > 500
    assert np.nanmedian(pidk[pion]) < 0 < np.nanmedian(pidk[kaon])
    np.testing.assert_array_equal(b["m"].to_numpy()[pion], _mass(321))  # the hypothesis' mass ...
    np.testing.assert_array_equal(b["m"].to_numpy()[kaon], _mass(321))  # ... and the kaons' own


def test_pion_as_kaon_shifts_the_b0_peak_up_by_the_computable_amount(store):
    """Per candidate, M - M_TRUEHYP > 0; for an isotropic two-body decay of a fast B0 the median
    of M^2 - M_TRUEHYP^2 is (mK^2 - mpi^2)(1 + E*_K / E*_pi) (E* in the B0 rest frame, the
    median decay angle cos(theta*) = 0 giving the lab energy ratio E*_K / E*_pi): with
    M = m_B0 the median shift is sqrt(m_B0^2 + that) - m_B0 = 42.6 MeV. The sample median is
    compared within its distribution-free 5-sigma interval (order statistics n/2 -+ 2.5 sqrt(n))."""
    verts = store.read("vertices", batches=list(_batches(store, "swapped")))
    d2 = np.sort(verts["m"].to_numpy() ** 2 - verts["m_truehyp"].to_numpy() ** 2)
    assert np.all(d2 > 0)
    mb, mk, mpi = _mass(511), _mass(321), _mass(211)
    ek = (mb * mb + mk * mk - mpi * mpi) / (2 * mb)
    want = (mk * mk - mpi * mpi) * (1 + ek / (mb - ek))
    n = len(d2)
    k = int(np.ceil(2.5 * np.sqrt(n)))
    assert d2[n // 2 - k] < want < d2[n // 2 + k]
    shift = np.sqrt(mb * mb + want) - mb
    assert 40 < shift < 45
    # the peak (median) of the swapped B0 mass sits above that of the true-hypothesis mass
    peak, peak_true = np.median(verts["m"]), np.median(verts["m_truehyp"])
    assert peak_true == pytest.approx(mb, abs=5)
    assert peak - peak_true > 0.5 * shift


# ------------------------------------------------------------------------------ bad input
BAD = [
    # (swap, exception, message, marked piece)
    ("pi+=K+", DescriptorError, r"'pi\+' is not in the decay 'B0 -> K\+ pi-'; its final-state particles are K\+, pi-",
     "pi+=K+\n  ^^^"),
    ("B0 -> K+ ^K- : pi-", DescriptorError, r"marked descriptor 'B0 -> K\+ K-' is not the decay being simulated",
     "B0 -> K+ ^K- : pi-\n            ^^"),
    ("K+=kaon+", UnknownParticleError, r"the hypothesis is not a known particle: unknown particle 'kaon\+'",
     "K+=kaon+\n     ^^^^^"),
    ("B0 -> ^K+ pi- : pi-", DescriptorError, r"reconstructing K\+ \(charge \+1\) as pi- \(charge -1\) changes the charge",
     "B0 -> ^K+ pi- : pi-\n                  ^^^"),
    ("K+=K+", DescriptorError, "changes nothing", "K+=K+\n     ^^"),
    ("^B0 -> K+ pi- : B_s0", DescriptorError, r"'B0' is not a final-state track: it decays",
     "^B0 -> K+ pi- : B_s0\n   ^^"),
    ("B0 -> ^K+ ^pi- : K-", DescriptorError, "one '\\^' per swap", "B0 -> ^K+ ^pi- : K-\n            ^"),
    ("K+ pi+", DescriptorError, "write a swap as 'PARTICLE=HYPOTHESIS'", "K+ pi+\n  ^^^^^^"),
]


@pytest.mark.parametrize("swap, exc, message, marked", BAD)
def test_bad_swaps_are_refused_with_the_piece_marked(swap, exc, message, marked):
    with pytest.raises(exc, match=message) as info:
        mass_hypotheses("B0 -> K+ pi-", swap)
    assert str(info.value).startswith("reconstruct-as: ")
    assert str(info.value).endswith("\n  " + marked)


def test_neutral_and_decaying_particles_are_not_tracks():
    desc = "B0 -> (K*(892)0 -> K+ pi-) gamma"
    with pytest.raises(DescriptorError, match="'gamma' is not a final-state track: it is neutral") as info:
        mass_hypotheses(desc, "gamma=pi0")
    assert str(info.value).endswith("\n  gamma=pi0\n  ^^^^^")
    with pytest.raises(DescriptorError, match=r"'K\*\(892\)0' is not a final-state track: it decays") as info:
        mass_hypotheses(desc, "B0 -> ^(K*(892)0 -> K+ pi-) gamma : rho(770)0")
    assert str(info.value).endswith("\n  B0 -> ^(K*(892)0 -> K+ pi-) gamma : rho(770)0\n          ^^^^^^^^")


def test_an_ambiguous_short_form_lists_the_marked_forms():
    with pytest.raises(DescriptorError, match="'K\\+' is ambiguous: it occurs 2 times") as info:
        mass_hypotheses("B_s0 -> K+ K- K+ K-", "K+=pi+")
    msg = str(info.value)
    assert "'B_s0 -> ^K+ K- K+ K- : pi+' or 'B_s0 -> K+ K- ^K+ K- : pi+'" in msg
    # each suggestion is accepted and picks its particle
    assert [h.node for h in mass_hypotheses("B_s0 -> K+ K- K+ K-", "B_s0 -> K+ K- ^K+ K- : pi+")] == [3]
    assert marked_descriptor("B_s0 -> K+ K- K+ K-", 1) == "B_s0 -> ^K+ K- K+ K-"


def test_two_swaps_of_one_track_are_refused():
    with pytest.raises(DescriptorError, match=r"'K\+' \(node 1\) is already reconstructed as another particle "
                                              r"by 'K\+=pi\+'"):
        mass_hypotheses("B0 -> K+ pi-", ["K+=pi+", "B0 -> ^K+ pi- : p+"])


def test_bad_swaps_are_refused_before_anything_runs(tmp_path):
    """The CLI refuses before the store is created or a model is loaded."""
    db = tmp_path / "never.duckdb"
    r = subprocess.run([sys.executable, "-m", "mambah", "simulate", "B0 -> K+ pi-", "--events", "10",
                        "--db", f"duckdb:///{db}", "--reconstruct-as", "K+=pi+", "--reconstruct-as", "pi-=K+"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "mambah simulate: error: reconstruct-as: reconstructing pi- (charge -1) as K+ (charge +1) changes the " \
           "charge" in r.stderr
    assert "\n  pi-=K+\n      ^^\n" in r.stderr
    assert not db.exists()


def test_api_forms_and_level():
    from mambah.simulation import standard_pipeline

    short = mass_hypotheses(B0KPI, {"pi-": "K-"})
    assert short == mass_hypotheses(B0KPI, PI_AS_K) == mass_hypotheses(B0KPI, ["pi-=K-"])
    assert short[0] == MassHypothesis(2, "pi-", -211, "K-", -321)
    assert short[0].mass == _mass(321)
    with pytest.raises(ConfigurationError, match="needs the reconstruction"):
        standard_pipeline(B0KPI, level="truth", reconstruct_as="pi-=K-")
    with pytest.raises(ConfigurationError, match="resolved against the descriptor"):
        Composites(reconstruct_as="pi-=K-")
    # a stage configured for another decay refuses the batch rather than swapping the wrong track
    stage = Composites(reconstruct_as=mass_hypotheses("B0 -> K+ pi-", "K+=pi+"))
    assert Composites(reconstruct_as=stage.config()["reconstruct_as"]) == stage
    assert pickle.loads(pickle.dumps(stage)) == stage  # for the Dask workers
    assert "reconstruct_as" not in Composites().config()  # no key without swaps: old records still resume
    with pytest.raises(ConfigurationError, match="does not fit the decay tree"):
        stage._swap_masses([{"name": "B+", "pid": 521, "mother": -1, "children": [1, 2], "stable": False},
                            {"name": "mu+", "pid": -13, "mother": 0, "children": [], "stable": True},
                            {"name": "pi+", "pid": 211, "mother": 0, "children": [], "stable": True}], 0)


# ----------------------------------------------------------------------- provenance and ntuple
def test_swaps_are_in_the_provenance_and_a_resume_with_other_swaps_is_refused(store):
    from mambah import run_production, standard_pipeline

    info = store.batch_info(min(_batches(store, "swapped")))["config"]
    rec = {"node": 2, "particle": "pi-", "pid": -211, "hypothesis": "K-", "hypothesis_pid": -321}
    assert info["pipeline"]["composites"]["reconstruct_as"] == [rec]
    assert info["mass_hypotheses"] == [{**rec, "hypothesis_mass": _mass(321)}]
    plain = store.batch_info(min(_batches(store, "plain")))["config"]
    assert "mass_hypotheses" not in plain and "reconstruct_as" not in plain["pipeline"]["composites"]
    for other in ("K+=pi+", None):
        pipe = standard_pipeline(B0KPI, reconstruct_as=other)
        with pytest.raises(ConfigurationError, match=r"cannot resume production 'swapped'(.|\n)*"
                                                     r"config\.composites\.reconstruct_as"):
            run_production(pipe, n_events=N_B0, batch_size=N_B0 // 2, seed=17, store=store, production="swapped",
                           resume=True)
    same = standard_pipeline(B0KPI, reconstruct_as="B0 -> K+ ^pi- : K-")  # the same swap, written otherwise
    res = run_production(same, n_events=N_B0, batch_size=N_B0 // 2, seed=17, store=store, production="swapped",
                         resume=True)
    assert res.written == 0 and res.skipped == 2


def test_ntuple_branches(store):
    nt = store.candidates(production="swapped")
    assert {"B0_M", "B0_M_TRUEHYP", "pi_M", "pi_M_TRUEHYP", "pi_ID", "pi_TRUEID"} <= set(nt.columns)
    assert "K_M_TRUEHYP" not in nt.columns  # only what a swap changes gets a true-hypothesis mass
    verts = store.read("vertices", batches=list(_batches(store, "swapped")))
    ok = nt["B0_M"].notna().to_numpy()
    assert ok.sum() == len(verts)
    np.testing.assert_array_equal(np.sort(nt["B0_M"].to_numpy()[ok]), np.sort(verts["m"].to_numpy()))
    np.testing.assert_array_equal(np.sort(nt["B0_M_TRUEHYP"].to_numpy()[ok]), np.sort(verts["m_truehyp"].to_numpy()))
    reco = nt["pi_Reconstructed"].to_numpy() == 1
    np.testing.assert_array_equal(nt["pi_ID"].to_numpy()[reco], 321 * np.sign(nt["pi_TRUEID"].to_numpy()[reco]))
    np.testing.assert_array_equal(nt["pi_M"].to_numpy()[reco], _mass(321))
    np.testing.assert_array_equal(nt["pi_M_TRUEHYP"].to_numpy()[reco], _mass(211))
    plain = store.candidates(production="plain")
    assert not [c for c in plain.columns if c.endswith("_M_TRUEHYP")]
    two = store.candidates(production="two")
    assert {"B0_M_TRUEHYP", "K_M_TRUEHYP", "pi_M_TRUEHYP"} <= set(two.columns)
    reco = two["K_Reconstructed"].to_numpy() == 1
    np.testing.assert_array_equal(two["K_ID"].to_numpy()[reco], 211 * np.sign(two["K_TRUEID"].to_numpy()[reco]))
    with pytest.raises(StoreError, match=r"reconstructed as: pi- -> K-"):
        store.candidates(batches=list(_batches(store, "plain")) + list(_batches(store, "swapped")))


def test_column_map_knows_the_masses():
    from mambah.physics import describe_column, lhcb_name, store_name

    assert describe_column("M_TRUEHYP") == {"name": "M_TRUEHYP", "unit": "MeV/c^2", "quantity": "m_truehyp"}
    assert lhcb_name("m") == "M" and store_name("M_TRUEHYP") == "m_truehyp"


@pytest.mark.slow
def test_cli_production_with_two_swaps(tmp_path):
    db = f"duckdb:///{tmp_path}/cli.duckdb"
    r = subprocess.run([sys.executable, "-m", "mambah", "-q", "simulate", B0KPI, "--events", "400", "--db", db,
                        "--no-pid", "--reconstruct-as", "K+=pi+", "--reconstruct-as", "[B0 -> K+ ^pi-]CC : K-"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "reconstructed as: K+ (node 1) as pi+; pi- (node 2) as K-" in r.stdout
    from mambah import Store

    with Store(db) as st:
        info = st.batch_info(0)["config"]
        nt = st.candidates()
    assert [(h["particle"], h["hypothesis"]) for h in info["mass_hypotheses"]] == [("K+", "pi+"), ("pi-", "K-")]
    assert json.dumps(info["pipeline"]["composites"]["reconstruct_as"])
    assert {"B0_M_TRUEHYP", "K_M_TRUEHYP", "pi_M_TRUEHYP"} <= set(nt.columns)
