"""Mass hypotheses: reconstruct final-state tracks of a decay as other particles.

A background study asks how a decay looks when some of its tracks are reconstructed under the
wrong mass hypothesis: B0 -> pi+ pi- or B_s0 -> K+ K- reconstructed as B0 -> K+ pi-. A swap names
one final-state track of the production's descriptor and the particle it is reconstructed as
(LHCb's DaVinci does the same with ``SubstitutePID``). Any number of swaps may be given, one per
string:

marked form: ``"B0 -> ^K+ pi- : pi+"``
    a copy of the production's descriptor (decay models may be left out) with the track marked
    by ``^`` (:func:`mambah.generation.descriptor.parse_marked_descriptor`), then ``:`` and the
    hypothesis. It picks any particle unambiguously (``"B0 -> K+ ^K- K+ : pi-"``).
short form: ``"K+=pi+"``
    the particle's name, ``=``, the hypothesis; allowed only when the name occurs once among the
    final-state particles of the descriptor (otherwise the error lists the marked forms to write).

A mapping ``{"K+": "pi+"}`` is a list of short forms. Names are those of descriptors (PDG names of
the ``particle`` package, EvtGen names, LHCb aliases). A swap is written for the decay as the
descriptor writes it; in the charge-conjugate events of a ``[...]CC`` production the conjugate
track is reconstructed as the conjugate hypothesis.

What a swap changes (:class:`~mambah.reconstruction.Composites` applies it): the swapped track
keeps its reconstructed three-momentum, and its energy becomes ``E = sqrt(p^2 + m_hyp^2)`` with
the hypothesis' PDG mass (:func:`mambah.physics.particle_mass`, from the ``particle`` package);
its ``m`` and ``e`` in ``particles`` are those of the hypothesis, its ``pid`` stays the true PDG
id. Every composite is the four-momentum sum of its tracks, so its ``m`` is the mass as
reconstructed under the chosen hypotheses; its vertex row keeps ``m_truehyp``, the mass with
every track under its true species' hypothesis. The PID variables are untouched: the PID stage
draws them from the chain of the true species (:mod:`mambah.pid.stage` keys on the MC particle's
PDG id), so a PID requirement applied to the sample measures the mis-identification rate.

Bad swaps are refused by :func:`mass_hypotheses` before anything runs, with a
:class:`~mambah.errors.DescriptorError` that marks the offending piece of the swap with carets:
a particle that is not in the descriptor, a name that occurs several times (short form), a
hypothesis that is not a known particle (:class:`~mambah.errors.UnknownParticleError`, with the
closest names), a swap that changes the charge, a particle that is not a final-state track
(a decaying particle, a neutral one, a charged one that is not trackable), a swap to the same
particle, and two swaps of one particle.

Example:
    >>> hyps = mass_hypotheses("B0 -> K+ pi-", ["pi-=K-"])
    >>> [(h.node, h.particle, h.hypothesis) for h in hyps]
    [(2, 'pi-', 'K-')]
    >>> [(h.node, h.hypothesis) for h in mass_hypotheses("B0 -> K+ pi-", ["B0 -> ^K+ pi- : pi+"])]
    [(1, 'pi+')]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from mambah.errors import ConfigurationError, DescriptorError, UnknownParticleError
from mambah.physics import TRACKABLE_PIDS, particle_mass

__all__ = ["MassHypothesis", "mass_hypotheses", "marked_descriptor", "as_hypotheses"]


@dataclasses.dataclass(frozen=True)
class MassHypothesis:
    """One swap: decay-tree node ``node`` (a final-state track) is reconstructed as ``hypothesis``.

    Attributes:
        node: index of the track's node in the decay tree (depth first, head = 0; the node order
            of ``batch.info["decay_tree"]`` and of :meth:`mambah.generation.Descriptor.tree`).
        particle: the true particle's name as the descriptor writes it (``"K+"``).
        pid: its PDG id, as written (the conjugate events carry ``-pid``).
        hypothesis: the name of the particle it is reconstructed as (``"pi+"``).
        hypothesis_pid: that particle's PDG id, for the decay as written.
    """

    node: int
    particle: str
    pid: int
    hypothesis: str
    hypothesis_pid: int

    def __post_init__(self):
        for f in ("node", "pid", "hypothesis_pid"):
            object.__setattr__(self, f, int(getattr(self, f)))
        for f in ("particle", "hypothesis"):
            object.__setattr__(self, f, str(getattr(self, f)))

    @property
    def mass(self) -> float:
        """The hypothesis' PDG mass, MeV/c^2 (:func:`mambah.physics.particle_mass`)."""
        return particle_mass(self.hypothesis_pid)

    def config(self) -> dict[str, Any]:
        """The swap as a JSON-able dict (what the production records)."""
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return f"{self.particle} (node {self.node}) as {self.hypothesis}"


def as_hypotheses(values) -> tuple[MassHypothesis, ...]:
    """``values`` (:class:`MassHypothesis` objects or their :meth:`~MassHypothesis.config` dicts)
    as a tuple sorted by node.

    Raises:
        ConfigurationError: an entry of another kind (a swap written as a string must first be
            resolved against its descriptor by :func:`mass_hypotheses`), or two entries of one node.
    """
    if values is None:
        return ()
    if isinstance(values, (str, Mapping)) or not isinstance(values, Sequence):
        raise ConfigurationError(
            f"reconstruct_as must be a sequence of MassHypothesis, not {type(values).__name__} {values!r}; swaps "
            "written as text ('K+=pi+', 'B0 -> ^K+ pi- : pi+') are resolved against the descriptor by "
            "mambah.reconstruction.hypotheses.mass_hypotheses(descriptor, swaps) (or give them to "
            "standard_pipeline(..., reconstruct_as=...))")
    out = []
    fields = {f.name for f in dataclasses.fields(MassHypothesis)}
    for v in values:
        if isinstance(v, MassHypothesis):
            out.append(v)
        elif isinstance(v, Mapping) and set(v) == fields:
            out.append(MassHypothesis(**v))
        else:
            raise ConfigurationError(
                f"reconstruct_as entry {v!r} is not a MassHypothesis (nor a dict of its fields {sorted(fields)}); "
                "resolve swaps written as text with mambah.reconstruction.hypotheses.mass_hypotheses(descriptor, swaps)")
    out.sort(key=lambda h: h.node)
    nodes = [h.node for h in out]
    if len(set(nodes)) != len(nodes):
        dup = sorted({n for n in nodes if nodes.count(n) > 1})
        raise ConfigurationError(f"reconstruct_as swaps node(s) {dup} more than once: one hypothesis per track")
    return tuple(out)


# ------------------------------------------------------------------------------------ messages
def _error(spec: str, pos: int, msg: str, length: int = 1, cls: type = DescriptorError) -> DescriptorError:
    return cls(f"reconstruct-as: {msg}\n  {spec}\n  {' ' * max(0, pos)}{'^' * max(1, length)}")


def _name_length(text: str, pos: int) -> int:
    """Length of the particle name written at ``pos`` (names may hold balanced parentheses)."""
    depth, end = 0, pos
    while end < len(text):
        ch = text[end]
        if ch.isspace() or ch in "]^:=" or (ch == ")" and depth == 0):
            break
        depth += ch == "("
        depth -= ch == ")"
        end += 1
    return max(1, end - pos)


def marked_descriptor(descriptor, node: int) -> str:
    """The descriptor with node ``node`` marked by ``^`` (decay models left out), as the marked
    form of a swap writes it.

    Example:
        >>> marked_descriptor("B0 -> K+ K- K+ K-", 3)
        'B0 -> K+ K- ^K+ K-'
    """
    from mambah.generation.descriptor import parse_descriptor

    d = parse_descriptor(descriptor)
    nodes = d.nodes()
    target = nodes[node]

    def write(n, top: bool) -> str:
        mark = "^" if n is target else ""
        if not n.children:
            return mark + n.particle.name
        inner = f"{n.particle.name} -> " + " ".join(write(c, False) for c in n.children)
        return inner if top and not mark else f"{mark}({inner})"

    s = write(d.head, True)
    return f"[{s}]CC" if d.cc else s


def _describe_node(tree: list[dict], k: int) -> str:
    nd = tree[k]
    if not nd["stable"]:
        return (f"{nd['name']!r} is not a final-state track: it decays in this descriptor (swap the hypotheses of "
                "its tracks instead)")
    if int(nd.get("charge", 0)) == 0:
        return f"{nd['name']!r} is not a final-state track: it is neutral, so it leaves no track"
    return (f"{nd['name']!r} is not a final-state track: it is charged but not a species the tracker reconstructs "
            f"(PDG ids {', '.join(map(str, TRACKABLE_PIDS))}, either sign)")


def _is_track(nd: dict) -> bool:
    return bool(nd["stable"]) and int(nd.get("charge", 0)) != 0 and abs(int(nd["pid"])) in TRACKABLE_PIDS


# ----------------------------------------------------------------------------------- resolution
def _as_specs(reconstruct_as) -> list[str]:
    if reconstruct_as is None:
        return []
    if isinstance(reconstruct_as, str):
        return [reconstruct_as]
    if isinstance(reconstruct_as, Mapping):
        items = list(reconstruct_as.items())
        for k, v in items:
            if not isinstance(k, str) or not isinstance(v, str):
                raise ConfigurationError(f"reconstruct_as mapping entries must be particle names (str: str), got "
                                         f"{k!r}: {v!r}")
        return [f"{k}={v}" for k, v in items]
    if isinstance(reconstruct_as, Sequence):
        out = []
        for s in reconstruct_as:
            if not isinstance(s, str):
                raise ConfigurationError(f"a mass-hypothesis swap is a string ('K+=pi+' or 'B0 -> ^K+ pi- : pi+'), "
                                         f"not {type(s).__name__} {s!r}")
            out.append(s)
        return out
    raise ConfigurationError(f"reconstruct_as must be a string, a list of strings or a mapping of names, not "
                             f"{type(reconstruct_as).__name__} {reconstruct_as!r}")


def _resolve_hypothesis(spec: str, pos: int, text: str):
    from mambah.generation.particles import resolve

    if not text:
        raise _error(spec, pos, "no hypothesis: write the particle the track is reconstructed as after "
                     + ("':'" if ":" in spec else "'='"), 1)
    try:
        return resolve(text)
    except UnknownParticleError as exc:
        raise _error(spec, pos, f"the hypothesis is not a known particle: {exc}", len(text),
                     cls=UnknownParticleError) from None


def _split(spec: str, sep: str) -> tuple[str, str, int, int]:
    """(left text stripped, right text stripped, position of each) of ``spec`` split at ``sep``."""
    i = spec.index(sep)
    left, right = spec[:i], spec[i + 1:]
    if sep in right:
        j = i + 1 + right.index(sep)
        raise _error(spec, j, f"a swap holds one {sep!r}; give several swaps as several strings (or options)")
    lpos = len(left) - len(left.lstrip())
    rpos = i + 1 + len(right) - len(right.lstrip())
    return left.strip(), right.strip(), lpos, rpos


def _marked(spec: str, d, tree: list[dict]) -> tuple[int, int, int, str, int]:
    """Marked form: (node, name position, name length, hypothesis text, its position)."""
    from mambah.generation.descriptor import parse_marked_descriptor

    i = spec.index(":")
    left = spec[:i]
    _, hyp, _, hpos = _split(spec, ":")
    if "->" not in left:
        start = len(left) - len(left.lstrip())
        raise _error(spec, start, "before ':' goes the descriptor with the track marked by '^' (e.g. "
                     f"'{marked_descriptor(d, _first_track(tree))} : ...'); the short form is 'PARTICLE=HYPOTHESIS'",
                     max(1, len(left.strip())))
    try:
        md, marks = parse_marked_descriptor(left)
    except DescriptorError as exc:
        raise type(exc)(f"reconstruct-as: the marked descriptor before ':': {exc}") from None
    carets = [k for k, ch in enumerate(left) if ch == "^"]
    if not marks:
        start = len(left) - len(left.lstrip())
        raise _error(spec, start, "mark the track to reconstruct under another hypothesis with '^' (e.g. "
                     f"'{marked_descriptor(d, _first_track(tree))} : ...')", len(left.strip()))
    if len(marks) > 1:
        raise _error(spec, carets[1], "one '^' per swap: give each swap as its own string (or option)")
    mine = [(int(n["pid"]), int(n["mother"])) for n in tree]
    theirs = [(int(n["pid"]), int(n["mother"])) for n in md.tree()]
    if mine != theirs:
        nodes = md.nodes()
        k = next((j for j, (a, b) in enumerate(zip(mine, theirs)) if a != b), min(len(mine), len(theirs)))
        if k < len(nodes):
            pos, length = nodes[k].position, len(nodes[k].particle.name)
        else:
            pos, length = len(left.rstrip()), 1
        raise _error(spec, pos, f"the marked descriptor {str(md)!r} is not the decay being simulated, {str(d)!r}: "
                     "write that descriptor with the track marked (e.g. "
                     f"{marked_descriptor(d, _first_track(tree))!r}); a swap is written for the decay as its "
                     "descriptor writes it, the charge-conjugate events follow", length)
    k = marks[0]
    pos = md.nodes()[k].position
    return k, pos, _name_length(spec, pos), hyp, hpos


def _first_track(tree: list[dict]) -> int:
    return next((k for k, nd in enumerate(tree) if _is_track(nd)), len(tree) - 1)


def _short(spec: str, d, tree: list[dict]) -> tuple[int, int, int, str, int]:
    """Short form: (node, name position, name length, hypothesis text, its position)."""
    from mambah.generation.particles import resolve

    name, hyp, npos, hpos = _split(spec, "=")
    if not name:
        raise _error(spec, npos, "no particle before '=': write 'PARTICLE=HYPOTHESIS' (e.g. 'K+=pi+')")
    try:
        info = resolve(name)
    except UnknownParticleError as exc:
        raise _error(spec, npos, f"{exc}", len(name), cls=UnknownParticleError) from None
    finals = [nd["name"] for nd in tree if nd["stable"]]
    hits = [k for k, nd in enumerate(tree) if int(nd["pid"]) == info.pid]
    stable = [k for k in hits if tree[k]["stable"]]
    if not hits:
        raise _error(spec, npos, f"{name!r} is not in the decay {str(d)!r}; its final-state particles are "
                     f"{', '.join(finals)} (a swap is written for the decay as its descriptor writes it, the "
                     "charge-conjugate events follow)", len(name))
    if len(stable) > 1:
        forms = " or ".join(repr(f"{marked_descriptor(d, k)} : {hyp or '...'}") for k in stable)
        raise _error(spec, npos, f"{name!r} is ambiguous: it occurs {len(stable)} times among the final-state "
                     f"particles of {str(d)!r} (nodes {', '.join(map(str, stable))}); mark the one you mean with the "
                     f"marked form: {forms}", len(name))
    k = stable[0] if stable else hits[0]
    return k, npos, len(name), hyp, hpos


def mass_hypotheses(descriptor, reconstruct_as) -> tuple[MassHypothesis, ...]:
    """Resolve and check mass-hypothesis swaps against a decay descriptor.

    Args:
        descriptor: the production's decay descriptor (string or parsed
            :class:`~mambah.generation.Descriptor`).
        reconstruct_as: one swap (a string), several (a list of strings), or a mapping of short
            forms ``{"K+": "pi+"}``; the syntax is in the module docstring. ``None`` or empty: none.

    Returns:
        One :class:`MassHypothesis` per swap, sorted by node.

    Raises:
        DescriptorError: a bad swap (see the module docstring), with the offending piece of the
            swap marked; :class:`~mambah.errors.UnknownParticleError` (a subclass) for a name
            that is no known particle.
        ConfigurationError: ``reconstruct_as`` is not a string, a list of strings or a mapping.
    """
    from mambah.generation.descriptor import parse_descriptor

    specs = _as_specs(reconstruct_as)
    if not specs:
        return ()
    d = parse_descriptor(descriptor)
    tree = d.tree()
    out: list[MassHypothesis] = []
    by_node: dict[int, str] = {}
    for spec in specs:
        if ":" in spec:
            k, pos, length, hyp_text, hpos = _marked(spec, d, tree)
        elif "=" in spec:
            k, pos, length, hyp_text, hpos = _short(spec, d, tree)
        else:
            raise _error(spec, 0, "write a swap as 'PARTICLE=HYPOTHESIS' (e.g. 'K+=pi+') or as the descriptor with "
                         f"the track marked, ':' and the hypothesis (e.g. '{marked_descriptor(d, _first_track(tree))} : "
                         "...')", len(spec))
        nd = tree[k]
        if not _is_track(nd):
            raise _error(spec, pos, _describe_node(tree, k), length)
        hyp = _resolve_hypothesis(spec, hpos, hyp_text)
        charge = int(nd.get("charge", 0))
        if hyp.charge != charge:
            raise _error(spec, hpos, f"reconstructing {nd['name']} (charge {charge:+d}) as {hyp.name} (charge "
                         f"{hyp.charge:+d}) changes the charge: a mass hypothesis keeps the track's charge, its "
                         "curvature in the magnet", len(hyp_text))
        if hyp.pid == int(nd["pid"]):
            raise _error(spec, hpos, f"reconstructing {nd['name']} as {hyp.name} changes nothing", len(hyp_text))
        if not math.isfinite(particle_mass(hyp.pid)):
            raise _error(spec, hpos, f"{hyp.name} has no mass in the PDG tables of the 'particle' package: it cannot "
                         "be a mass hypothesis", len(hyp_text))
        if k in by_node:
            raise _error(spec, pos, f"{nd['name']!r} (node {k}) is already reconstructed as another particle by "
                         f"{by_node[k]!r}: one hypothesis per track", length)
        by_node[k] = spec
        out.append(MassHypothesis(k, nd["name"], int(nd["pid"]), hyp.name, hyp.pid))
    return as_hypotheses(out)
