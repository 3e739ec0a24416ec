"""Decay descriptors and particle names: parsing, aliases, every documented error, fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mambah.errors import DescriptorError, UnknownParticleError
from mambah.generation import ALIASES, parse_descriptor, resolve

LB = "Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu"
BU = "B+ -> (J/psi(1S) -> mu+ mu-) K+"


def test_lambda_b_tree_follows_the_layout_contract():
    d = parse_descriptor(LB)
    tree = d.tree()
    assert [n["name"] for n in tree] == ["Lambda_b0", "Lambda_c+", "p+", "K-", "pi+", "mu-", "anti-nu_mu"]
    assert [n["pid"] for n in tree] == [5122, 4122, 2212, -321, 211, 13, -14]
    assert [n["mother"] for n in tree] == [-1, 0, 1, 1, 1, 0, 0]
    assert tree[0]["children"] == [1, 5, 6] and tree[1]["children"] == [2, 3, 4]
    assert [n["stable"] for n in tree] == [False, False, True, True, True, True, True]
    assert [n["charge"] for n in tree] == [0, 1, 1, -1, 1, -1, 0]
    assert not d.cc


def test_b_plus_and_names_with_parentheses():
    d = parse_descriptor(BU)
    assert [n["pid"] for n in d.tree()] == [521, 443, -13, 13, 321]
    # names with their own parentheses, no spaces around sub-decays
    d = parse_descriptor("B(s)0->(phi(1020)->K+ K-)(J/psi(1S)->mu+ mu-)")
    assert [n["pid"] for n in d.tree()] == [531, 333, 321, -321, 443, -13, 13]
    d = parse_descriptor("B0 -> (K*(892)0 -> K+ pi-) (K(S)0 -> pi+ pi-)")
    assert [n["name"] for n in d.tree()] == ["B0", "K*(892)0", "K+", "pi-", "K(S)0", "pi+", "pi-"]


def test_charge_conjugation_brackets():
    d = parse_descriptor("[" + BU + "]CC")
    assert d.cc and str(d) == "[" + BU + "]CC"
    conj = d.head.conjugate()
    assert [n.particle.pid for n in conj.walk()] == [-521, 443, 13, -13, -321]


@pytest.mark.parametrize(
    "alias, pid",
    [("Lambda_c+", 4122), ("Lambda(c)+", 4122), ("J/psi", 443), ("K0S", 310), ("K_S0", 310), ("KS0", 310),
     ("Lambda0", 3122), ("anti-nu_mu", -14), ("nu(mu)~", -14), ("p+", 2212), ("p", 2212), ("B_s0", 531),
     ("D_s+", 431), ("Jpsi", 443), ("Lb", 5122), ("phi", 333)],
)
def test_aliases(alias, pid):
    assert resolve(alias).pid == pid


def test_every_alias_target_exists():
    for alias in ALIASES:
        assert resolve(alias).pid != 0


def test_particle_properties_come_from_particle():
    from particle import Particle

    lc = resolve("Lambda_c+")
    ref = Particle.from_pdgid(4122)
    assert lc.mass == ref.mass and lc.lifetime == ref.lifetime and lc.charge == 1
    assert lc.ctau == pytest.approx(299.792458 * ref.lifetime)
    assert resolve("p+").stable and resolve("anti-nu_mu").mass == 0.0
    assert not resolve("mu-").stable


# ------------------------------------------------------------------------------- bad input
def _err(text: str, cls=DescriptorError) -> str:
    with pytest.raises(cls) as info:
        parse_descriptor(text)
    return str(info.value)


def test_unknown_particle_suggests_close_names():
    msg = _err("Lambda_b0 -> (Lambda_cc+ -> p+ K- pi+) mu- anti-nu_mu", UnknownParticleError)
    assert "'Lambda_cc+'" in msg and "'Lambda_c+'" in msg and "did you mean" in msg
    msg = _err("B+ -> (Jpsii -> mu+ mu-) K+", UnknownParticleError)
    assert "'Jpsii'" in msg and "J/psi" in msg
    assert isinstance(UnknownParticleError("x"), DescriptorError)


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty(text):
    assert "empty" in _err(text)


@pytest.mark.parametrize(
    "text, piece",
    [
        ("B+ -> (J/psi -> mu+ mu- K+", "never closed"),
        ("B+ -> J/psi -> mu+ mu-) K+", "'->'"),
        ("B+ -> K+ pi0 )", "')' without a matching '('"),
        ("[B+ -> K+ pi0", "']CC'"),
        ("B+ -> K+ pi0]CC", "without a matching '['"),
        ("B+ -> ((J/psi -> mu+ mu-) K+", "expected a particle name"),
        ("B+ -> K+ pi0 ] ", "CC"),
    ],
)
def test_unbalanced(text, piece):
    msg = _err(text)
    assert piece in msg
    assert "^" in msg  # shows where


def test_charge_not_conserved_names_the_vertex():
    msg = _err("Lambda_b0 -> (Lambda_c+ -> p+ K+ pi+) mu- anti-nu_mu")
    assert "charge is not conserved" in msg and "Lambda_c+ -> p+ K+ pi+" in msg and "+1 -> +3" in msg


def test_kinematically_forbidden_names_mother_and_daughters():
    msg = _err("B+ -> (J/psi -> mu+ mu-) (psi(2S) -> mu+ mu-) K+")
    assert "kinematically forbidden" in msg and "'B+'" in msg and "psi(2S)" in msg and "J/psi" in msg
    msg = _err("D0 -> K- pi+ pi+ pi- pi+ pi- pi+ pi- pi+ pi- pi+ pi- pi0 pi0")
    assert "kinematically forbidden" in msg and "'D0'" in msg
    # a Breit-Wigner resonance may sit below its nominal mass, down to its daughters' masses
    parse_descriptor("D0 -> (phi(1020) -> K+ K-) (rho(770)0 -> pi+ pi-)")


def test_stable_particle_given_children():
    msg = _err("B+ -> (p+ -> pi+ pi0) pi0")
    assert "'p+' is stable" in msg
    msg = _err("B0 -> (e- -> mu- gamma) e+")
    assert "'e-' is stable" in msg


def test_too_few_daughters_and_missing_arrow():
    assert "at least two daughters" in _err("B+ -> K+")
    assert "expected '->'" in _err("B+")
    assert "expected '->'" in _err("B+ K+ pi0")


def test_not_a_string():
    with pytest.raises(DescriptorError, match="must be a string"):
        parse_descriptor(42)


# ---------------------------------------------------------------------------------- fuzzing
_PIECES = ["B+", "B-", "B0", "K+", "K-", "pi+", "pi-", "pi0", "mu+", "mu-", "p+", "anti-p-", "J/psi(1S)",
           "J/psi", "Lambda_c+", "Lambda_b0", "anti-nu_mu", "K0S", "D0", "e-", "gamma", "phi", "Xyz",
           "K*(892)0", "(", ")", "[", "]CC", "]", "->", "-", ">", " ", "  ", "(1S)", "CC", "~", "*"]


def _check_parses_or_documented_error(text: str) -> None:
    try:
        d = parse_descriptor(text)
    except DescriptorError:
        return
    # a successful parse is a consistent tree
    tree = d.tree()
    assert tree[0]["mother"] == -1
    for i, n in enumerate(tree):
        for c in n["children"]:
            assert tree[c]["mother"] == i
        if n["children"]:
            assert sum(tree[c]["charge"] for c in n["children"]) == n["charge"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_PIECES), min_size=0, max_size=14).map(" ".join))
def test_fuzz_token_soup(text):
    _check_parses_or_documented_error(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_PIECES), min_size=0, max_size=14).map("".join))
def test_fuzz_token_soup_without_spaces(text):
    _check_parses_or_documented_error(text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40))
def test_fuzz_arbitrary_text(text):
    _check_parses_or_documented_error(text)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["B+", "B0", "D0", "Lambda_b0", "B_s0"]),
       st.lists(st.sampled_from(["K+", "K-", "pi+", "pi-", "pi0", "mu+", "mu-", "p+", "anti-p-", "gamma",
                                 "(J/psi -> mu+ mu-)", "(K0S -> pi+ pi-)", "(D0 -> K- pi+)"]), min_size=0,
                max_size=6))
def test_fuzz_well_formed_decays(head, daughters):
    text = f"{head} -> {' '.join(daughters)}"
    _check_parses_or_documented_error(text)
