"""Decay descriptors: ``"Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu"``.

Grammar (LHCb decay-descriptor style, plus EvtGen-style decay models)::

    descriptor := decay | "[" decay "]CC"
    decay      := particle "->" daughter daughter+ [model number*]
    daughter   := particle | "(" decay ")"

A decay model (:mod:`mambah.generation.models`: ``PHSP``, ``VLL``, ``VSS``, ``SVS``,
``SVV_HELAMP``, ``Lb2LclnuLQCD``, ``HQET2``) and its numeric parameters may follow the daughters
of any decay, as in an EvtGen ``.dec`` file::

    B0 -> (J/psi(1S) -> mu+ mu- VLL) (K*(892)0 -> K+ pi- VSS) SVV_HELAMP 0.159 1.563 0.775 0.0 0.612 2.712

A decay without one is phase space (``PHSP``). :meth:`Descriptor.models` returns them by node
index, ``str()`` writes them back, and :func:`parse_descriptor` checks them
(:func:`mambah.generation.models.check_models`: parameter count, spins, daughters).

Particle names are those of :func:`mambah.generation.particles.resolve` (PDG names of the
``particle`` package, EvtGen names, LHCb aliases). Parentheses that belong to a name
(``J/psi(1S)``, ``K*(892)0``, ``K(S)0``) are part of it: a name's ``(`` follows a name character
without a space, a sub-decay's ``(`` starts a word. ``[...]CC`` means the decay and its charge
conjugate (each event is one or the other with probability 1/2 in :class:`PhaseSpaceDecay`).

Every problem raises :class:`~mambah.errors.DescriptorError` (or its subclass
:class:`~mambah.errors.UnknownParticleError`) that names the offending piece and shows where it
is, before anything is generated:

- empty descriptor, unbalanced parentheses or brackets, missing ``->``, fewer than two daughters;
- unknown particle (with the closest known names);
- a stable particle (infinite lifetime: p, e, gamma, neutrinos) given children;
- electric charge not conserved at a vertex;
- a kinematically forbidden decay: the smallest possible masses of the daughters add up to more
  than the largest possible mass of the mother (both are named, with the numbers);
- an unknown decay model (an all-capitals word that is no particle; the known models are listed),
  a model that is not after all the daughters, a number without a model, or a model that does not
  fit its decay (wrong number of parameters, wrong spins).

A *marked* descriptor (:func:`parse_marked_descriptor`) picks particles of a decay by a ``^``
written just before them, as LHCb's DaVinci descriptors do (``"B0 -> ^K+ pi-"``,
``"B0 -> ^(K*(892)0 -> K+ pi-) gamma"``); :mod:`mambah.reconstruction.hypotheses` uses it to name
the particle whose mass hypothesis is swapped.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator

from mambah.errors import DescriptorError, UnknownParticleError
from mambah.generation.particles import ParticleInfo, resolve

__all__ = ["DecayNode", "Descriptor", "parse_descriptor", "parse_marked_descriptor", "known_models",
           "BREIT_WIGNER_MIN_RELATIVE_WIDTH"]

#: the model names accepted while :mod:`mambah.generation.models` cannot be imported
_FALLBACK_MODELS: tuple[str, ...] = ("PHSP", "VLL", "VSS", "SVS", "SVV_HELAMP", "HQET2", "LB2LCLNU_LQCD")
_MODEL_LIKE = re.compile(r"[A-Z][A-Z0-9_]+")  # an all-capitals word: EvtGen's model-name style
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def known_models() -> tuple[str, ...]:
    """The decay-model names a descriptor accepts (:data:`mambah.generation.models.KNOWN_MODELS`)."""
    try:
        from mambah.generation.models import KNOWN_MODELS
    except ModuleNotFoundError as exc:
        if exc.name != "mambah.generation.models":
            raise
        return _FALLBACK_MODELS
    return tuple(KNOWN_MODELS)


def _format_param(x: float) -> str:
    return repr(float(x))


#: A node with children is given a Breit-Wigner mass when Gamma/m exceeds this (rho, K*, phi get
#: one; J/psi (3e-5), psi(2S), D*+ and every weakly decaying hadron keep their PDG mass).
BREIT_WIGNER_MIN_RELATIVE_WIDTH = 1e-4


@dataclasses.dataclass(frozen=True)
class DecayNode:
    """One particle of a decay tree and its (possibly empty) list of daughters."""

    particle: ParticleInfo
    children: tuple["DecayNode", ...] = ()
    position: int = 0  # character offset of the name in the descriptor
    model: str | None = None  # EvtGen-style decay model written after the daughters (None: PHSP)
    params: tuple[float, ...] = ()  # the model's numeric parameters
    model_position: int = -1  # character offset of the model name in the descriptor

    @property
    def name(self) -> str:
        return self.particle.name

    @property
    def has_breit_wigner(self) -> bool:
        """A decaying resonance whose width is not negligible gets a Breit-Wigner mass."""
        p = self.particle
        return bool(self.children) and p.mass > 0 and p.width / p.mass > BREIT_WIGNER_MIN_RELATIVE_WIDTH

    def min_mass(self) -> float:
        """Smallest mass this node can take (MeV): its PDG mass, or for a Breit-Wigner the sum of
        its daughters' smallest masses."""
        if self.has_breit_wigner:
            return sum(c.min_mass() for c in self.children)
        return self.particle.mass

    def walk(self) -> Iterator["DecayNode"]:
        """Depth-first, mother before daughters (the node order of mambah's tables)."""
        yield self
        for c in self.children:
            yield from c.walk()

    def conjugate(self) -> "DecayNode":
        return dataclasses.replace(self, particle=self.particle.conjugate(),
                                   children=tuple(c.conjugate() for c in self.children))

    def to_string(self, top: bool = True, models: bool = True) -> str:
        """The descriptor of this subtree (with the decay models unless ``models=False``)."""
        if not self.children:
            return self.particle.name
        inner = f"{self.particle.name} -> " + " ".join(c.to_string(False, models) for c in self.children)
        if models and self.model is not None:
            inner += " " + " ".join([self.model, *map(_format_param, self.params)])
        return inner if top else f"({inner})"


@dataclasses.dataclass(frozen=True)
class Descriptor:
    """A parsed decay descriptor.

    Attributes:
        text: the string as given.
        head: the decay tree.
        cc: ``[...]CC`` was given (generate the decay and its charge conjugate).
    """

    text: str
    head: DecayNode
    cc: bool = False

    def nodes(self) -> list[DecayNode]:
        """The tree's nodes depth-first (head = 0)."""
        return list(self.head.walk())

    def tree(self) -> list[dict]:
        """The node list of ``batch.info["decay_tree"]``: ``{"name", "pid", "mother", "children",
        "stable", "charge"}`` per node (``stable`` = has no daughters in this tree)."""
        nodes = self.nodes()
        ids = {id(n): i for i, n in enumerate(nodes)}
        mother = {ids[id(c)]: ids[id(n)] for n in nodes for c in n.children}
        return [
            {
                "name": n.particle.name,
                "pid": n.particle.pid,
                "mother": mother.get(i, -1),
                "children": [ids[id(c)] for c in n.children],
                "stable": not n.children,
                "charge": n.particle.charge,
            }
            for i, n in enumerate(nodes)
        ]

    def models(self) -> dict[int, tuple[str, tuple[float, ...]]]:
        """The decay models written in the descriptor: ``{node index: (name, parameters)}``
        (node indices of :meth:`tree`; a decay without a model, absent here, is phase space)."""
        return {i: (n.model, n.params) for i, n in enumerate(self.nodes()) if n.model is not None}

    def __str__(self) -> str:
        s = self.head.to_string()
        return f"[{s}]CC" if self.cc else s


# ----------------------------------------------------------------------------------------- lexer
_ARROW = "->"


def _caret(text: str, pos: int, length: int = 1) -> str:
    return f"\n  {text}\n  {' ' * pos}{'^' * max(1, length)}"


def _error(text: str, pos: int, msg: str, length: int = 1) -> DescriptorError:
    return DescriptorError(f"decay descriptor: {msg}{_caret(text, pos, length)}")


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    """Tokens ``(kind, value, position)``; kinds: ``(``, ``)``, ``[``, ``]CC``, ``->``, ``name``."""
    tokens: list[tuple[str, str, int]] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif text.startswith(_ARROW, i):
            tokens.append(("->", _ARROW, i))
            i += 2
        elif ch == "(":
            tokens.append(("(", ch, i))
            i += 1
        elif ch == ")":
            tokens.append((")", ch, i))
            i += 1
        elif ch == "[":
            tokens.append(("[", ch, i))
            i += 1
        elif ch == "]":
            if text.startswith("]CC", i) or text.startswith("]cc", i):
                tokens.append(("]CC", "]CC", i))
                i += 3
            else:
                raise _error(text, i, "']' must be followed by 'CC' (write '[ ... ]CC' for the charge conjugate)")
        else:
            start, depth = i, 0
            while i < n:
                c = text[i]
                if c.isspace() or c in "[]" or (depth == 0 and text.startswith(_ARROW, i)):
                    break
                if c == "(":
                    depth += 1
                elif c == ")":
                    if depth == 0:
                        break
                    depth -= 1
                i += 1
            if depth:
                raise _error(text, start, f"unbalanced parenthesis in the particle name {text[start:i]!r}", i - start)
            tokens.append(("name", text[start:i], start))
    return tokens


# ---------------------------------------------------------------------------------------- parser
class _Parser:
    def __init__(self, text: str, lenient: bool = False):
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0
        self._models: tuple[str, ...] | None = None
        #: accept an unknown model-like word after the daughters (see ``unknown_models="phsp"``)
        self.lenient = lenient
        #: the unknown models accepted leniently: (mother, name, start, end) in ``text``
        self.unknown: list[tuple[str, str, int, int]] = []

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def next(self) -> tuple[str, str, int]:
        tok = self.peek()
        if tok is None:
            raise _error(self.text, len(self.text), "unexpected end of the descriptor")
        self.i += 1
        return tok

    def particle(self) -> tuple[ParticleInfo, int]:
        kind, value, pos = self.next()
        if kind != "name":
            raise _error(self.text, pos, f"expected a particle name, found {value!r}")
        if value in self.models:
            raise _error(self.text, pos, f"expected a particle name, found the decay model {value!r}: a model "
                         "goes after the daughters of its decay, '(X -> a b MODEL)'", len(value))
        try:
            return resolve(value), pos
        except UnknownParticleError as exc:
            if self._model_like(value):
                raise self._unknown_model(value, pos) from None
            raise UnknownParticleError(f"decay descriptor: {exc}{_caret(self.text, pos, len(value))}") from None

    @property
    def models(self) -> tuple[str, ...]:
        if self._models is None:
            self._models = known_models()
        return self._models

    def _lenient_model(self, value: str) -> bool:
        """In lenient mode, an all-capitals word that is no particle: an unknown decay model."""
        if not (self.lenient and _MODEL_LIKE.fullmatch(value)):
            return False
        try:
            resolve(value)
        except UnknownParticleError:
            return True
        return False

    def _model_like(self, value: str) -> bool:
        """An unknown word that looks like a model name (all capitals, or a known one mis-cased)."""
        return bool(_MODEL_LIKE.fullmatch(value)) or value.lower() in {m.lower() for m in self.models}

    def _unknown_model(self, value: str, pos: int) -> DescriptorError:
        from mambah.errors import closest

        near = closest(value, self.models, n=3)
        near += [m for m in self.models if m.lower() == value.lower() and m not in near]
        hint = f" (did you mean {', '.join(map(repr, near))}?)" if near else ""
        return _error(self.text, pos, f"{value!r} is neither a particle nor a known decay model{hint}; "
                      f"known decay models: {', '.join(self.models)}", len(value))

    def model(self, mother: DecayNode) -> tuple[str, tuple[float, ...], int]:
        """The model name at the current token and its numeric parameters."""
        _, name, pos = self.next()
        params = []
        end = pos + len(name)
        while (tok := self.peek()) is not None and tok[0] == "name" and _NUMBER.fullmatch(tok[1]):
            params.append(float(tok[1]))
            end = tok[2] + len(tok[1])
            self.i += 1
        if name not in self.models:  # accepted by the lenient mode only
            self.unknown.append((mother.name, name, pos, end))
        tok = self.peek()
        if tok is not None and tok[0] not in (")", "]CC"):
            raise _error(self.text, tok[2], f"unexpected {tok[1]!r} after the decay model {name!r} of "
                         f"{mother.name!r}: the model (and its numbers) must come after all the daughters",
                         len(tok[1]))
        return name, tuple(params), pos

    def decay(self, closing: str | None) -> DecayNode:
        mother, mpos = self.particle()
        tok = self.next() if self.peek() is not None else None
        if tok is None or tok[0] != "->":
            where = tok[2] if tok else len(self.text)
            found = f"found {tok[1]!r}" if tok else "found the end"
            raise _error(self.text, where, f"expected '->' after {mother.name!r}, {found}")
        children: list[DecayNode] = []
        model: tuple[str, tuple[float, ...], int] | None = None
        while True:
            tok = self.peek()
            if tok is None or tok[0] in (")", "]CC"):
                break
            kind, value, pos = tok
            if kind == "name" and (value in self.models or self._lenient_model(value)):
                if len(children) < 2:
                    raise _error(self.text, pos, f"the decay model {value!r} must follow at least two daughters "
                                 f"of {mother.name!r}", len(value))
                model = self.model(DecayNode(mother))
                break
            if kind == "name" and _NUMBER.fullmatch(value):
                raise _error(self.text, pos, f"unexpected number {value!r}: parameters follow a decay model name "
                             f"(known models: {', '.join(self.models)})", len(value))
            if kind == "(":
                self.i += 1
                child = self.decay(closing=")")
                kind2, value2, pos2 = self.next() if self.peek() else ("end", "", len(self.text))
                if kind2 != ")":
                    raise _error(self.text, pos, f"unbalanced parentheses: the '(' of {child.name!r} is never closed")
                children.append(child)
            elif kind == "name":
                info, p = self.particle()
                children.append(DecayNode(info, (), p))
            elif kind == "->":
                raise _error(self.text, pos, "unexpected '->': a daughter that decays must be written in parentheses, "
                             "'(X -> a b)'")
            else:
                raise _error(self.text, pos, f"unexpected {value!r}")
        if len(children) < 2:
            raise _error(self.text, mpos, f"{mother.name!r} needs at least two daughters, found "
                         f"{len(children)}", len(mother.name))
        if closing is None and self.peek() is not None and self.peek()[0] == ")":
            raise _error(self.text, self.peek()[2], "unbalanced parentheses: ')' without a matching '('")
        if model is None:
            return DecayNode(mother, tuple(children), mpos)
        return DecayNode(mother, tuple(children), mpos, model[0], model[1], model[2])

    def parse(self) -> Descriptor:
        if not self.tokens:
            raise DescriptorError("decay descriptor is empty: write e.g. \"B+ -> (J/psi(1S) -> mu+ mu-) K+\"")
        cc = False
        if self.tokens[0][0] == "[":
            cc = True
            self.i = 1
            head = self.decay(closing="]CC")
            tok = self.peek()
            if tok is None or tok[0] != "]CC":
                where = tok[2] if tok else len(self.text)
                raise _error(self.text, where, "'[' is never closed by ']CC'")
            self.i += 1
        else:
            head = self.decay(closing=None)
        tok = self.peek()
        if tok is not None:
            kind, value, pos = tok
            if kind == ")":
                raise _error(self.text, pos, "unbalanced parentheses: ')' without a matching '('")
            if kind == "]CC":
                raise _error(self.text, pos, "']CC' without a matching '['")
            raise _error(self.text, pos, f"unexpected {value!r} after the end of the decay")
        return Descriptor(self.text, head, cc)


# ----------------------------------------------------------------------------------- validation
def _check(text: str, node: DecayNode, max_mass: float) -> None:
    """Physics checks, mother before daughters; ``max_mass`` is the largest mass the node can take."""
    if not node.children:
        return
    p = node.particle
    name_len = len(p.name)
    if p.stable:
        raise _error(text, node.position, f"{p.name!r} is stable (infinite lifetime) and cannot be given "
                     "daughters", name_len)
    q = sum(c.particle.charge for c in node.children)
    if q != p.charge:
        kids = " ".join(c.particle.name for c in node.children)
        raise _error(text, node.position, f"charge is not conserved in {p.name} -> {kids}: "
                     f"{p.charge:+d} -> {q:+d}", name_len)
    m_mother = min(max_mass, p.mass) if not node.has_breit_wigner else max_mass
    m_kids = sum(c.min_mass() for c in node.children)
    if m_kids > m_mother:
        kids = " + ".join(f"{c.particle.name} ({c.min_mass():.2f})" for c in node.children)
        raise _error(text, node.position, f"kinematically forbidden decay: {kids} = {m_kids:.2f} MeV exceeds "
                     f"the mass of {p.name!r}, {m_mother:.2f} MeV", name_len)
    for c in node.children:
        others = sum(o.min_mass() for o in node.children if o is not c)
        _check(text, c, m_mother - others)


def parse_descriptor(text: str, unknown_models: str = "error") -> Descriptor:
    """Parse and check a decay descriptor.

    Args:
        text: the descriptor (a :class:`Descriptor` is returned as it is).
        unknown_models: ``"error"`` (default): a decay model mambah does not have is an error
            listing the known ones. ``"phsp"``: an all-capitals word after the daughters that is
            neither a particle nor a known model (an EvtGen model mambah does not have, such as
            ``"BTOSLLBALL"``) is dropped with its numbers, that decay is phase space, and an
            :class:`~mambah.errors.UnknownModelWarning` names each one. The returned descriptor's
            ``text`` is the rewritten one (without those models), so it can be passed on as a
            string.

    Example:
        >>> d = parse_descriptor("B+ -> (J/psi(1S) -> mu+ mu-) K+")
        >>> [n["name"] for n in d.tree()]
        ['B+', 'J/psi(1S)', 'mu+', 'mu-', 'K+']

    Raises:
        DescriptorError: malformed or impossible decay (see the module docstring).
        UnknownParticleError: a name is not known (subclass of DescriptorError).
    """
    if isinstance(text, Descriptor):
        return text
    if not isinstance(text, str):
        raise DescriptorError(f"a decay descriptor must be a string, not {type(text).__name__} {text!r}")
    if unknown_models not in ("error", "phsp"):
        raise DescriptorError(f"unknown_models must be 'error' or 'phsp', got {unknown_models!r}")
    if unknown_models == "phsp":
        text = _drop_unknown_models(text)
    d = _Parser(text).parse()
    _check(text, d.head, d.head.particle.mass)  # the head always has its PDG mass
    _check_models(d)
    return d


def _drop_unknown_models(text: str) -> str:
    """``text`` without the decay models mambah does not have (each with its numbers), one
    :class:`~mambah.errors.UnknownModelWarning` per model dropped."""
    import warnings

    from mambah.errors import UnknownModelWarning

    parser = _Parser(text, lenient=True)
    parser.parse()
    if not parser.unknown:
        return text
    out = text
    for mother, name, start, end in sorted(parser.unknown, key=lambda u: -u[2]):
        warnings.warn(UnknownModelWarning(
            f"decay model {name!r} of {mother!r} is not one of mambah's (known: {', '.join(parser.models)}): "
            f"that decay is generated with phase space (PHSP){_caret(text, start, end - start)}"), stacklevel=3)
        out = out[:start].rstrip() + (" " if out[end:][:1] not in ("", ")", "]") else "") + out[end:].lstrip()
    return out


def _check_models(d: Descriptor) -> None:
    """:func:`mambah.generation.models.check_models`, one decay at a time so that the error marks
    the offending model (skipped while that module does not exist)."""
    models = d.models()
    if not models:
        return
    try:
        from mambah.generation.models import check_models
    except ModuleNotFoundError as exc:
        if exc.name != "mambah.generation.models":
            raise
        return
    from mambah.errors import ConfigurationError

    tree, nodes = d.tree(), d.nodes()
    for i in sorted(models):
        try:
            check_models(tree, {i: models[i]})
        except ConfigurationError as exc:
            node = nodes[i]
            raise _error(d.text, node.model_position, str(exc), len(node.model or "")) from None
    try:  # constraints between the models of different decays, if any
        check_models(tree, models)
    except ConfigurationError as exc:
        node = nodes[min(models)]
        raise _error(d.text, node.model_position, str(exc), len(node.model or "")) from None


# ------------------------------------------------------------------------------ marked descriptors
_MARK = "^"


def parse_marked_descriptor(text: str) -> tuple[Descriptor, tuple[int, ...]]:
    """Parse a descriptor in which ``^`` marks particles: ``"B0 -> ^K+ pi-"``.

    A ``^`` goes just before a particle name (``^K+``) or before the parenthesis of a sub-decay
    (``^(D0 -> K- pi+)``, which marks the D0). The descriptor is otherwise parsed and checked as
    :func:`parse_descriptor` does; errors show the text as written, marks included.

    Example:
        >>> d, marked = parse_marked_descriptor("B+ -> (J/psi(1S) -> ^mu+ mu-) K+")
        >>> [d.tree()[i]["name"] for i in marked]
        ['mu+']

    Returns:
        The parsed :class:`Descriptor` (its ``text`` is ``text``, marks included) and the node
        indices (of :meth:`Descriptor.tree`) of the marked particles, in the order of the marks.

    Raises:
        DescriptorError: as :func:`parse_descriptor`, or a ``^`` that is not just before a
            particle name or a sub-decay's ``(`` (marked with a caret).
    """
    if not isinstance(text, str):
        raise DescriptorError(f"a decay descriptor must be a string, not {type(text).__name__} {text!r}")
    marks = [i for i, ch in enumerate(text) if ch == _MARK]
    plain = text.replace(_MARK, " ")  # same length: every position of ``plain`` is that of ``text``
    targets = []
    for i in marks:
        j = i + 1
        if j < len(plain) and plain[j] == "(":
            j += 1
            while j < len(plain) and plain[j].isspace():
                j += 1
        targets.append(j)
    try:
        parser = _Parser(plain)
    except DescriptorError as exc:  # show the text as written
        raise type(exc)(str(exc).replace(f"\n  {plain}\n", f"\n  {text}\n", 1)) from None
    parser.text = text
    d = parser.parse()
    _check(text, d.head, d.head.particle.mass)
    _check_models(d)
    at = {n.position: k for k, n in enumerate(d.nodes())}
    found = []
    for i, j in zip(marks, targets):
        if j not in at:
            raise _error(text, i, "a '^' marks the particle written just after it ('^K+', or '^(D0 -> K- pi+)' for a "
                         "decaying one), but none follows this one")
        found.append(at[j])
    return d, tuple(found)
