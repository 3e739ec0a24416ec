"""PhaseSpaceDecay: decay the ParticleGun's hadron through a descriptor with ``phasespace``.

For a batch of N events the stage

1. generates N decays of the whole chain in the head's rest frame in ONE ``phasespace`` call
   (Raubold-Lynch n-body phase space, F. James, CERN 68-15); the ``phasespace`` tree is built once
   per descriptor and process and cached at module level (the stage itself holds only strings,
   so it pickles for Dask);
2. gives every decaying resonance with Gamma/m > :data:`BREIT_WIGNER_MIN_RELATIVE_WIDTH` a
   relativistic Breit-Wigner mass, ``dN/ds ∝ 1 / ((s - m0^2)^2 + m0^2 Gamma^2)`` in s = m^2
   (constant width; PDG Review "Resonances", Eq. 50.4), truncated to its kinematic limits and
   sampled exactly by inverting its CDF (an arctan);
3. boosts every particle to the laboratory with the head's four-momentum (Jackson, Classical
   Electrodynamics, Eq. 11.19, vectorised);
4. propagates the vertices: each decaying particle flies ``beta*gamma*c*tau = (p/m) c tau`` from
   its production vertex, ``tau`` drawn from an exponential with its PDG lifetime (the head's
   from the gun), and its decay happens at lab time ``t_prod + gamma tau``;
5. fills ``mc_particles``, ``mc_vertices`` and ``events`` (layout in :mod:`._tables`) and keeps
   the float64 arrays in ``batch.arrays`` (``mc_p4`` (4, nodes, N), ``mc_vertices_xyzt``
   (4, 1 + decaying nodes, N), ``decay_weight`` (N,)).

Weights: the phase-space weight of an event is the product over its decaying nodes of the
Raubold-Lynch weights ``prod_i pdk(M_{i+1}, M_i, m_{i+1})`` (CERN 68-15 Eq. 9.17), divided by the
product of their maxima at the largest mother and smallest daughter masses (exact for two- and
three-body decays, GENBOD's bound for more; :func:`_w_bound`), so that it lies in (0, 1]. It is
exactly 1 when every decay is two-body with fixed masses. Decay models written in the descriptor
(``"B+ -> (J/psi(1S) -> mu+ mu- VLL) K+ SVS"``, :mod:`mambah.generation.models`) multiply it by their weight ``|A|^2 / max|A|^2`` in [0, 1], evaluated on the generated
four-momenta (:class:`mambah.generation.models.DecayModelWeight`).

Unweighted events (the default, ``unweight=True``): each generated event is kept with probability
equal to its weight (accept-reject, F. James, CERN 68-15 Sec. 4), vectorised over the batch, in as
many rounds as needed, all drawn from the batch's seed; the events carry unit weights and their
distributions are the physical ones. The accept-reject is *staged*: the chain is cut into decay
groups at every fixed-mass decaying particle whose decay no model correlates with its mother's
(not below an SVS/SVV_HELAMP decay; a Breit-Wigner resonance stays with its mother, whose decay
sets its mass), each group's decays are generated and accept-rejected on their own weight in the
group's rest frame, and boosted with the accepted four-momentum of their mother. With fixed masses
the weight of a chain is the product of its groups' weights and the groups' decays are
independent, so this is the same distribution as accept-rejecting whole chains, at a fraction of
the cost: for Λb0 → (Λc+ → p K− π+) μ− ν̄ with the lattice model the Λc+ is decayed about 1.3
times per event instead of 5.5. (A model outside :data:`~mambah.generation.models.LOCAL_MODELS`
falls back to whole chains.) The accept-reject efficiency goes to
``batch.info["generator_acceptance"]`` (per group under ``groups``) and the models to
``batch.info["generator"]["models"]``.
A chain of two-body decays with fixed masses and no model already has unit weights: nothing is
rejected. With ``unweight=False`` (``mambah simulate --weighted``) every generated event is kept
with its weight in ``events.weight`` (and the ntuple's ``weight`` branch): faster, but every
histogram must then be filled with ``weight``.

Acceptance (off by default): ``acceptance=EtaAcceptance(2, 5)`` regenerates, vectorised, until
the batch has N events whose charged final-state particles all have 2 < eta < 5; the efficiency
goes to ``batch.info["generator_acceptance"]``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from typing import Any

import numpy as np

from mambah.errors import ConfigurationError
from mambah.generation.descriptor import DecayNode, Descriptor, parse_descriptor
from mambah.generation.particles import C_MM_PER_NS
from mambah.physics import boost_to_lab
from mambah.physics import eta as pseudorapidity

__all__ = ["PhaseSpaceDecay", "EtaAcceptance", "generator_stages", "merge_acceptance", "boost_to_lab"]

log = logging.getLogger(__name__)

_CACHE: dict[str, "_Chain"] = {}
_WEIGHTS: dict[str, Any] = {}
_LOCK = threading.Lock()


# ------------------------------------------------------------------------------------ kinematics
def _pdk(a: float, b: float, c: float) -> float:
    """Two-body momentum of a -> b c (CERN 68-15 Eq. 9.17); 0 at threshold."""
    x = (a - b - c) * (a + b + c) * (a - b + c) * (a + b - c)
    return math.sqrt(max(x, 0.0)) / (2.0 * a)


def _w_max(mother_mass: float, masses: list[float]) -> float:
    """GENBOD's bound on the Raubold-Lynch weight of mother -> masses (as phasespace._get_w_max)."""
    t = mother_mass - sum(masses)
    emmax, emmin, w = t + masses[0], 0.0, 1.0
    for i in range(1, len(masses)):
        emmin += masses[i - 1]
        emmax += masses[i]
        w *= _pdk(emmax, emmin, masses[i])
    return w


def _w_bound(mother_mass: float, masses: list[float]) -> float:
    """The largest Raubold-Lynch weight of mother -> masses (daughters in phasespace's order).

    Two bodies: the weight is ``pdk(M, m1, m2)``. Three bodies: ``pdk(m12, m1, m2) pdk(M, m12, m3)``
    (CERN 68-15 Eq. 9.17) is maximised over ``m12`` in ``[m1 + m2, M - m3]`` (a dense grid, then a
    bounded Brent search around its best point, times ``1 + 1e-9``): for Lambda_c+ -> p K pi this is
    0.41 of GENBOD's bound :func:`_w_max`, which more bodies keep (a closed bound; a numerical
    maximum in more dimensions could come out low). The accept-reject efficiency is
    ``<w> / bound``, so a tight bound is speed. For a Breit-Wigner mother (or daughters) the
    bound is taken at its largest (their smallest) masses, where every ``pdk`` factor is largest.
    """
    if len(masses) == 2:
        return _pdk(mother_mass, masses[0], masses[1])
    if len(masses) != 3:
        return _w_max(mother_mass, masses)
    from scipy.optimize import minimize_scalar

    m1, m2, m3 = masses
    lo, hi = m1 + m2, mother_mass - m3

    def f(m12):
        return _pdk(m12, m1, m2) * _pdk(mother_mass, m12, m3)

    grid = np.linspace(lo, hi, 2001)
    vals = np.array([f(x) for x in grid])
    k = int(np.argmax(vals))
    a, b = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    res = minimize_scalar(lambda x: -f(x), bounds=(a, b), method="bounded", options={"xatol": 1e-9 * hi})
    best = max(float(vals[k]), -float(res.fun)) if res.success else float(vals[k])
    return min(best * (1 + 1e-9), _w_max(mother_mass, masses))


# ----------------------------------------------------------------------------------- the chain
class _Chain:
    """The phasespace tree of one descriptor plus what is needed to use it (per process)."""

    def __init__(self, desc: Descriptor, rest: bool = False):
        import phasespace
        import tensorflow as tf

        self.nodes: list[DecayNode] = desc.nodes()
        self.names = [f"n{i}" for i in range(len(self.nodes))]
        ids = {id(n): i for i, n in enumerate(self.nodes)}
        self.max_mass = self._max_masses(desc.head)
        self.w_ref = 1.0
        self.unit_weight = True
        for n in self.nodes:
            if n.children:
                self.w_ref *= _w_bound(self.max_mass[id(n)], [c.min_mass() for c in n.children])
                if len(n.children) > 2 or any(c.has_breit_wigner for c in n.children):
                    self.unit_weight = False

        # the chain's own generator, reset from each batch's seed; the Breit-Wigner mass functions
        # draw from it too (phasespace calls mass functions without the generator it was given,
        # i.e. with TensorFlow's *global* generator: not seeded by the batch, and an error once
        # op determinism is enabled, e.g. after a model training in the same process)
        self.tf_rng = tf.random.Generator.from_seed(0)

        def build(node: DecayNode, reserve: float, top: bool) -> "phasespace.GenParticle":
            i = ids[id(node)]
            if node.has_breit_wigner and not top:
                mass = _breit_wigner(node.particle.mass, node.particle.width, reserve, self.tf_rng)
            else:
                mass = node.particle.mass
            part = phasespace.GenParticle(self.names[i], mass)
            if node.children:
                kids = []
                for j, c in enumerate(node.children):
                    # BW siblings generated later still need at least their minimum masses
                    later = sum(o.min_mass() for o in node.children[j + 1:] if o.has_breit_wigner)
                    kids.append(build(c, later, False))
                part.set_children(*kids)
            return part

        self.top = build(desc.head, 0.0, True)
        self.has_breit_wigner = any(n.has_breit_wigner for n in self.nodes[1:])
        self.rest = rest
        self.fn = tf.function(self._graph, input_signature=[tf.TensorSpec([4, None], tf.float64)],
                              autograph=False, reduce_retracing=True)

    def _max_masses(self, head: DecayNode) -> dict[int, float]:
        out: dict[int, float] = {}

        def rec(node: DecayNode, m_max: float):
            m = m_max if node.has_breit_wigner else min(m_max, node.particle.mass)
            out[id(node)] = m
            for c in node.children:
                rec(c, m - sum(o.min_mass() for o in node.children if o is not c))

        rec(head, head.particle.mass)
        out[id(head)] = head.particle.mass
        return out

    def _graph(self, head):
        """Inside one tf.function: phasespace in the head's rest frame, then the boost to the lab,
        so that the whole chain runs as one TensorFlow graph (multi-threaded, no retracing)."""
        import tensorflow as tf

        n = tf.shape(head, out_type=tf.int64)[1]
        weights, _, parts = self.top.generate(n, normalize_weights=False, seed=self.tf_rng)
        rest = tf.stack([tf.transpose(parts[name]) for name in self.names[1:]], axis=1)  # (4, nodes-1, n)
        if self.rest:  # the head's rest frame (``head`` is then the head at rest)
            return weights, tf.concat([head[:, None, :], rest], axis=1)
        lab = boost_to_lab(rest, head[:, None, :], self.nodes[0].particle.mass, xp=tf)
        return weights, tf.concat([head[:, None, :], lab], axis=1)

    def generate(self, head_p4: np.ndarray, seed: int, fixed_shapes: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Lab-frame four-momenta (4, nodes, n) of every node (the head first) for heads ``head_p4``
        (4, n), and the phase-space weights (n,) divided by :attr:`w_ref`. ``fixed_shapes``: call
        phasespace with sizes from :func:`_calls` (the last call padded with copies of the last head)."""
        head_p4 = np.ascontiguousarray(head_p4, dtype=np.float64)
        with _LOCK:  # one tf.random.Generator per chain: reset it (reusing it avoids retracing)
            if self.has_breit_wigner:
                _ensure_global_generator()
            self.tf_rng.reset_from_seed(int(seed))
            if not fixed_shapes:
                weights, lab = self.fn(head_p4)
                lab, weights = lab.numpy(), weights.numpy()
            else:
                n = head_p4.shape[1]
                labs, ws, start = [], [], 0
                for size in _calls(n):
                    take = min(size, n - start)
                    idx = np.minimum(start + np.arange(size), n - 1)
                    wt, lb = self.fn(np.ascontiguousarray(head_p4[:, idx]))
                    labs.append(lb.numpy()[..., :take])
                    ws.append(wt.numpy()[:take])
                    start += take
                lab, weights = np.concatenate(labs, axis=-1), np.concatenate(ws)
            w = np.ones(lab.shape[-1]) if self.unit_weight else weights / self.w_ref
        return lab, w


def _ensure_global_generator() -> None:
    """phasespace asks for TensorFlow's global generator before it calls a mass function (whose
    draws come from the chain's own generator, see :func:`_breit_wigner`); once op determinism is
    enabled (``tf.config.experimental.enable_op_determinism``, as a model training does) that raises
    unless a global generator was set: set a fixed one then (its draws are not used)."""
    import tensorflow as tf

    try:
        tf.random.get_global_generator()
    except RuntimeError:
        tf.random.set_global_generator(tf.random.Generator.from_seed(0))


def _breit_wigner(m0: float, gamma: float, reserve: float, rng):
    """A phasespace mass function: relativistic Breit-Wigner in s, truncated, exact inverse CDF.

    ``min_mass``/``max_mass`` come from phasespace (sum of the stable descendants' masses; the
    mother's mass minus the siblings already known); ``reserve`` (MeV) is the smallest mass of
    the Breit-Wigner siblings generated after this one.
    """
    import tensorflow as tf

    m0sq, mg = m0 * m0, m0 * gamma

    def mass(min_mass, max_mass, n_events, seed):
        lo = tf.square(min_mass)
        hi = tf.square(tf.maximum(max_mass - reserve, min_mass))
        a = tf.atan((lo - m0sq) / mg)
        b = tf.atan((hi - m0sq) / mg)
        u = rng.uniform(tf.reshape(tf.cast(n_events, tf.int64), (1,)), dtype=tf.float64)
        s = m0sq + mg * tf.tan(a + (b - a) * u)
        return tf.sqrt(tf.clip_by_value(s, lo, hi))

    return mass


def _chain(desc: Descriptor, rest: bool = False) -> _Chain:
    # the models do not change the phase-space chain
    key = ("rest " if rest else "") + desc.head.to_string(models=False)
    chain = _CACHE.get(key)
    if chain is None:
        with _LOCK:
            chain = _CACHE.get(key)
            if chain is None:
                chain = _CACHE[key] = _Chain(desc, rest)
    return chain


def _physics_models(desc: Descriptor) -> dict[int, tuple[str, tuple[float, ...]]]:
    """The descriptor's models that are not phase space."""
    return {i: m for i, m in desc.models().items() if m[0] != "PHSP"}


def _model_weight(desc: Descriptor):
    """The :class:`~mambah.generation.models.DecayModelWeight` of a descriptor's models, built once
    per process (None when every decay is phase space)."""
    models = _physics_models(desc)
    if not models:
        return None
    key = str(desc.head.to_string())
    weight = _WEIGHTS.get(key)
    if weight is None:
        from mambah.generation.models import DecayModelWeight  # numpy only; imported on first use

        with _LOCK:
            weight = _WEIGHTS.get(key)
            if weight is None:
                weight = _WEIGHTS[key] = DecayModelWeight(desc.tree(), models)
    return weight


# -------------------------------------------------------------------------- staged accept-reject
#: sizes of the staged generator's phasespace calls: powers of two between these (the chain's graph
#: is compiled by XLA once per shape, so the calls take their sizes from a small fixed set)
_MIN_CALL, _MAX_CALL = 1 << 10, 1 << 18
#: decays of the fixed-seed pilot that estimates a group's accept-reject efficiency (to size calls)
_PILOT = 1 << 14
_BLOCKS: dict[str, Any] = {}
_BLOCK_LOCK = threading.Lock()


def _calls(n: int) -> list[int]:
    """``n`` split into powers of two in [_MIN_CALL, _MAX_CALL], largest first (sum >= n)."""
    out = []
    while n > 0:
        s = min(_MAX_CALL, max(_MIN_CALL, 1 << (int(n).bit_length() - 1)))
        out.append(s)
        n -= s
    return out


class _Group:
    """One decay group of a chain generated on its own: a fixed-mass node and its descendants, down
    to (as stable leaves) the fixed-mass decaying descendants that start groups of their own.

    Its decays are generated in the group root's rest frame, accept-rejected on their phase-space
    weight times the group's decay-model weight, and later boosted with the root's laboratory
    four-momentum. Valid because, with fixed masses, the phase-space weight of a chain is the product
    of its decays' weights and a group's decay is independent of its mother's kinematics (the models'
    weights are Lorentz invariant functions of their own decay, :data:`~mambah.generation.models.LOCAL_MODELS`).
    """

    def __init__(self, root: DecayNode, index: list[int], models: dict[int, tuple[str, tuple[float, ...]]],
                 stop: set[int]):
        def prune(node: DecayNode) -> DecayNode:
            kids = tuple(dataclasses.replace(c, children=(), model=None, params=(), model_position=-1)
                         if id(c) in stop else prune(c) for c in node.children)
            return dataclasses.replace(node, children=kids)

        self.head = prune(root)
        self.desc = Descriptor(self.head.to_string(), self.head)
        self.index = index  # node numbers (in the whole chain) of this group's nodes, depth-first
        self.root = index[0]
        self.mass = root.particle.mass
        self.chain = _chain(self.desc, rest=True)
        own = {j: models[i] for j, i in enumerate(index) if i in models and self.desc.nodes()[j].children}
        self.models = {j: m for j, m in own.items() if m[0] != "PHSP"}
        self.weight = None
        if self.models:
            from mambah.generation.models import DecayModelWeight

            self.weight = DecayModelWeight(self.desc.tree(), self.models)
        self._rest: dict[int, np.ndarray] = {}
        w_sum, _ = self._pilot()
        self.efficiency = max(w_sum / _PILOT, 1e-3)

    def _at_rest(self, n: int) -> np.ndarray:
        h = self._rest.get(n)
        if h is None:
            h = np.zeros((4, n))
            h[3] = self.mass
            self._rest[n] = h
        return h

    def _pilot(self) -> tuple[float, int]:
        """Sum of the weights of ``_PILOT`` decays with a fixed seed (deterministic: it only sizes calls)."""
        p4, w = self.chain.generate(self._at_rest(_PILOT), 20260101)
        if self.weight is not None:
            w = w * self.weight(p4)
        return float(np.sum(np.minimum(w, 1.0))), _PILOT

    def draw(self, need: int, rng: np.random.Generator, stats: dict, max_tries: int, name: str) -> np.ndarray:
        """``need`` accepted decays (4, group nodes, need) in the root's rest frame."""
        st = stats["groups"].setdefault(self.desc.head.to_string(),
                                        {"n_generated": 0, "n_accepted": 0, "sum_weight": 0.0})
        pieces, got, tried = [], 0, 0
        while got < need:
            if tried >= max_tries * max(need, 1):
                raise ConfigurationError(
                    f"{name}: only {got} of {tried} generated {self.desc.head.to_string()} decays passed the "
                    f"accept-reject; efficiency too low for max_tries={max_tries}")
            left = need - got
            plan = _calls(math.ceil(left / self.efficiency * 1.02 + 3.0 * math.sqrt(left) / self.efficiency))
            for size in plan:
                p4, w = self.chain.generate(self._at_rest(size), int(rng.integers(0, 2**63 - 1)))
                keep = rng.random(size) < w
                if self.weight is not None:  # two stages: the model only on the phase-space survivors
                    idx = np.nonzero(keep)[0]
                    wm = self.weight(p4[:, :, idx])
                    stats["n_over"] += int(np.count_nonzero(wm > 1.0))
                    if wm.size:
                        stats["max_model_weight"] = max(stats["max_model_weight"], float(wm.max()))
                    st["sum_weight"] += float(wm.sum())
                    keep[idx] = rng.random(len(idx)) < wm
                else:
                    st["sum_weight"] += float(w.sum())
                k = int(keep.sum())
                pieces.append(p4[:, :, keep])
                got += k
                tried += size
                st["n_generated"] += size
                st["n_accepted"] += k
                if got >= need:
                    break
        return np.concatenate(pieces, axis=2)[:, :, :need]


def _groups(desc: Descriptor) -> list[_Group] | None:
    """The chain cut into independently generated groups (None when a model's weight may read
    beyond its own decay, e.g. a stand-in model: then the whole chain is accept-rejected at once)."""
    key = desc.head.to_string()
    if key in _BLOCKS:
        return _BLOCKS[key]
    from mambah.generation import models as model_lib

    local = getattr(model_lib, "LOCAL_MODELS", None)
    correlating = getattr(model_lib, "CORRELATING_MODELS", None)
    models = desc.models()
    groups = None
    if local is not None and correlating is not None and all(m[0] in local for m in models.values()):
        nodes = desc.nodes()
        ids = {id(n): i for i, n in enumerate(nodes)}
        stop = {id(c) for n in nodes for c in n.children
                if c.children and not c.has_breit_wigner and (n.model or "PHSP") not in correlating}

        def order(node: DecayNode):
            yield ids[id(node)]
            for c in node.children:
                if id(c) in stop:
                    yield ids[id(c)]
                else:
                    yield from order(c)

        roots = [desc.head] + [n for n in nodes if id(n) in stop]
        groups = [_Group(r, list(order(r)), models, stop) for r in roots]
    with _BLOCK_LOCK:
        return _BLOCKS.setdefault(key, groups)


# ------------------------------------------------------------------------------------ acceptance
@dataclasses.dataclass(frozen=True)
class EtaAcceptance:
    """Require every final-state particle (charged ones only by default) in eta_min < eta < eta_max."""

    eta_min: float = 2.0
    eta_max: float = 5.0
    charged_only: bool = True

    def __post_init__(self):
        if not self.eta_min < self.eta_max:
            raise ConfigurationError(f"EtaAcceptance needs eta_min < eta_max, got {self!r}")

    def __call__(self, tree: list[dict], p4: np.ndarray) -> np.ndarray:
        """Boolean mask (n,) of accepted events; ``p4`` (4, nodes, n) in the lab."""
        sel = [i for i, t in enumerate(tree) if t["stable"] and (t["charge"] != 0 or not self.charged_only)]
        if not sel:
            return np.ones(p4.shape[-1], dtype=bool)
        q = p4[:, sel, :]
        eta = pseudorapidity(q[0], q[1], q[2])
        return np.all((eta > self.eta_min) & (eta < self.eta_max), axis=0)

    def config(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------- stage
@dataclasses.dataclass(frozen=True)
class PhaseSpaceDecay:
    """Decay the ParticleGun's hadron through ``descriptor`` (phase space, all events at once).

    Args:
        descriptor: e.g. ``"Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu"``; ``[...]CC``
            generates the decay or its charge conjugate with probability 1/2 each.
        charge_conjugate: False (as written, or as the gun's head says: a gun producing the
            antiparticle of the head conjugates the chain), True (conjugate every event) or
            ``"both"`` (each event with probability 1/2; the default when ``[...]CC`` is given).
        acceptance: None, or e.g. :class:`EtaAcceptance` ``(2, 5)``: regenerate until all N
            events pass; the efficiency is recorded in ``batch.info["generator_acceptance"]``.
        unweight: True (default): keep each event with probability equal to its weight (phase
            space times decay model), so that all events have unit weight; False: keep every
            generated event with its weight in ``events.weight``, which every histogram must use.
        max_tries: give up (ConfigurationError) after generating this many times N events.
        name: stage name (seeds its random stream).
        fixed_shapes: False (default): each ``phasespace`` call has the batch's size. True: the
            calls take their sizes from a fixed set (powers of two from 1024 to 2^18, the last one
            padded), as the staged generator's do, so that the chain's graph is compiled once per
            size; for batches whose sizes vary, e.g. the channels of a cocktail (each batch a
            multinomial share of the events), where a compilation per batch would cost seconds.
            Other random draws than ``False``: the same distributions.

    Example:
        >>> from mambah.generation import ParticleGun, PhaseSpaceDecay
        >>> from mambah.pipeline import Pipeline
        >>> pipe = Pipeline([ParticleGun("B+"), PhaseSpaceDecay("B+ -> (J/psi(1S) -> mu+ mu-) K+")])
        >>> batch = pipe.process(pipe.make_batch(0, production_seed=1, n_events=1000))  # doctest: +SKIP
    """

    descriptor: str
    charge_conjugate: bool | str = False
    acceptance: EtaAcceptance | None = None
    unweight: bool = True
    max_tries: int = 1000
    name: str = "decay"
    fixed_shapes: bool = False

    def __post_init__(self):
        desc = parse_descriptor(self.descriptor)
        object.__setattr__(self, "descriptor", self.descriptor if isinstance(self.descriptor, str) else desc.text)
        cc = self.charge_conjugate
        if cc not in (False, True, "both"):
            raise ConfigurationError(f"charge_conjugate must be False, True or 'both', got {cc!r}")
        if desc.cc and cc is False:
            object.__setattr__(self, "charge_conjugate", "both")
        if self.acceptance is not None and not callable(self.acceptance):
            raise ConfigurationError(f"acceptance must be None or callable(tree, p4) -> mask, got {self.acceptance!r}")
        if not (isinstance(self.max_tries, int) and self.max_tries >= 1):
            raise ConfigurationError(f"max_tries must be a positive int, got {self.max_tries!r}")
        if not isinstance(self.unweight, (bool, np.bool_)):
            raise ConfigurationError(f"unweight must be True or False, got {self.unweight!r}")
        object.__setattr__(self, "unweight", bool(self.unweight))

    # not a field: re-parsed (cheap, cached particle look-ups) after unpickling
    @property
    def parsed(self) -> Descriptor:
        d = self.__dict__.get("_parsed")
        if d is None:
            d = parse_descriptor(self.descriptor)
            object.__setattr__(self, "_parsed", d)
        return d

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_parsed", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

    def tree(self) -> list[dict]:
        """The ``batch.info["decay_tree"]`` node list."""
        return self.parsed.tree()

    # ----------------------------------------------------------------------------- generation
    def _conjugation(self, gun_pid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        head = self.parsed.head.particle
        if head.self_conjugate:
            from_gun = np.zeros(gun_pid.shape, dtype=bool)
        else:
            from_gun = gun_pid == head.anti_pid
        bad = (gun_pid != head.pid) & (gun_pid != head.anti_pid)
        if np.any(bad):
            raise ConfigurationError(
                f"{self.name}: the ParticleGun produced PDG id {int(gun_pid[bad][0])} but the descriptor's head is "
                f"{head.name!r} ({head.pid}); give the gun the same particle"
            )
        if self.charge_conjugate == "both":
            return rng.random(gun_pid.shape) < 0.5
        if self.charge_conjugate is True:
            return ~from_gun
        return from_gun

    def _staged(self, groups: list[_Group], n_nodes: int, tree, gun: dict, rng: np.random.Generator, stats: dict):
        """One round of the staged generator: every gun hadron gets a decay chain made of accepted
        decays of each group (unit weights), boosted to the laboratory group by group, mother first."""
        head_p4 = gun["p4"]
        n = head_p4.shape[1]
        p4 = np.empty((4, n_nodes, n))
        p4[:, 0, :] = head_p4
        for g in groups:
            rest = g.draw(n, rng, stats, self.max_tries, self.name)
            frame = p4[:, g.root, :]
            p4[:, g.index[1:], :] = boost_to_lab(rest[:, 1:, :], frame[:, None, :], g.mass)
        stats["n_weight_pass"] += n
        keep = np.ones(n, dtype=bool)
        if self.acceptance is not None:
            keep &= self.acceptance(tree, p4)
        return p4, np.ones(n), keep

    def _round(self, chain: _Chain, model, tree, gun: dict, rng: np.random.Generator, stats: dict):
        """One generation round: decays of the gun's hadrons, boosted; returns (p4_lab, weight, keep)
        with weight = phase-space weight x decay-model weight."""
        if stats.get("groups") is not None:
            return self._staged(stats["group_list"], len(chain.nodes), tree, gun, rng, stats)
        n = gun["p4"].shape[1]
        p4, w = chain.generate(gun["p4"], int(rng.integers(0, 2**63 - 1)), fixed_shapes=self.fixed_shapes)
        keep = np.ones(n, dtype=bool)
        if model is not None and self.unweight:
            # two-stage accept-reject: u1 < w_phase_space, then u2 < w_model on the survivors only (the
            # same acceptance w_ps * w_model; the model is evaluated on a fraction w_ps of the events)
            keep &= rng.random(n) < w
            idx = np.nonzero(keep)[0]
            wm = model(p4[:, :, idx])
            stats["n_over"] += int(np.count_nonzero(wm > 1.0))
            stats["max_model_weight"] = max(stats["max_model_weight"], float(wm.max()) if wm.size else 0.0)
            stats["sum_weight"] += float(wm.sum())  # sum over passers of w_model: an unbiased sum of w_ps w_model
            keep[idx] = rng.random(len(idx)) < wm
            w = np.ones(n)
        else:
            if model is not None:
                wm = model(p4)
                stats["n_over"] += int(np.count_nonzero(wm > 1.0))
                stats["max_model_weight"] = max(stats["max_model_weight"], float(wm.max()) if wm.size else 0.0)
                w = w * wm
            stats["sum_weight"] += float(w.sum())
            if self.unweight and not (chain.unit_weight and model is None):
                keep &= rng.random(n) < w
        stats["n_weight_pass"] += int(keep.sum())
        if self.acceptance is not None:
            keep &= self.acceptance(tree, p4)
        return p4, w, keep

    def __call__(self, batch):
        from mambah.generation._tables import fill_tables

        gun = batch.arrays.get("gun")
        if gun is None:
            raise ConfigurationError(f"{self.name}: no ParticleGun ran before this stage (batch.arrays['gun'] is "
                                     "missing); put ParticleGun(...) first in the pipeline")
        n = batch.n_events
        rng = batch.rng(self.name)
        desc = self.parsed
        tree = desc.tree()
        chain = _chain(desc)
        model = _model_weight(desc)
        conj = self._conjugation(gun["pid"], rng)
        gun = {k: gun[k] for k in ("p4", "pv", "tau")}
        unit_already = chain.unit_weight and model is None
        rejecting = self.unweight and not unit_already
        # unweighted: each independent decay group is accept-rejected on its own, in its rest frame
        groups = _groups(desc) if rejecting else None
        filtering = (rejecting and groups is None) or self.acceptance is not None
        stats = {"n_over": 0, "max_model_weight": 0.0, "sum_weight": 0.0, "n_weight_pass": 0,
                 "groups": {} if groups is not None else None, "group_list": groups}
        p4, w, keep = self._round(chain, model, tree, gun, rng, stats)
        n_tried = n_acc = n
        if filtering:
            n_tried, pieces, n_acc = n, [], int(keep.sum())
            pieces.append((p4[:, :, keep], w[keep], {k: v[..., keep] for k, v in gun.items()}, conj[keep]))
            gun_stage = batch.arrays["gun"]["stage"]
            while n_acc < n:
                if n_tried >= self.max_tries * n:
                    raise ConfigurationError(
                        f"{self.name}: only {n_acc} of {n_tried} generated events passed "
                        f"(acceptance {self.acceptance!r}, unweight={self.unweight}); efficiency too low "
                        f"for max_tries={self.max_tries}"
                    )
                # every further round has the batch's size (at least 1000): phasespace's graph is
                # compiled once per shape, and a new size per round costs more than the events
                m = max(n, 1000)
                g = gun_stage.sample(m, rng)
                c = self._conjugation(g["pid"], rng)
                g = {k: g[k] for k in ("p4", "pv", "tau")}
                p4_, w_, keep_ = self._round(chain, model, tree, g, rng, stats)
                n_tried += m
                n_acc += int(keep_.sum())
                pieces.append((p4_[:, :, keep_], w_[keep_], {k: v[..., keep_] for k, v in g.items()}, c[keep_]))
            p4 = np.concatenate([p[0] for p in pieces], axis=2)[:, :, :n]
            w = np.concatenate([p[1] for p in pieces])[:n]
            gun = {k: np.concatenate([p[2][k] for p in pieces], axis=-1)[..., :n] for k in gun}
            conj = np.concatenate([p[3] for p in pieces])[:n]
            batch.arrays["gun"] = {**batch.arrays["gun"], **gun}
        if filtering or self.unweight:
            batch.info["generator_acceptance"] = self._acceptance_info(stats, n_tried, n_acc, rejecting)
        if self.unweight:
            w = np.ones(n)

        vtx = self._vertices(chain, tree, p4, gun, rng)
        pid_plain = np.array([t["pid"] for t in tree], dtype=np.int64)
        pid_anti = np.array([nd.particle.anti_pid for nd in chain.nodes], dtype=np.int64)
        pid = np.where(conj[None, :], pid_anti[:, None], pid_plain[:, None])
        unit = unit_already or self.unweight
        batch.arrays["mc_p4"] = p4
        batch.arrays["mc_vertices_xyzt"] = vtx
        batch.arrays["decay_weight"] = w
        batch.arrays["conjugated"] = conj
        batch.info["decay_tree"] = tree
        batch.info["generator"] = {"descriptor": str(desc), "unit_weights": bool(unit), "unweight": self.unweight,
                                   "models": self._models_info(desc, model, stats)}
        if stats["n_over"]:
            log.warning("%s: %d decay-model weights above their bound (largest %.4g) in batch %s: those events are "
                        "under-represented", self.name, stats["n_over"], stats["max_model_weight"], batch.id)
        fill_tables(batch, tree, pid, p4, vtx, None if unit else w)
        return batch

    def _acceptance_info(self, stats: dict, n_tried: int, n_acc: int, rejecting: bool) -> dict[str, Any]:
        """``batch.info["generator_acceptance"]``: the efficiency of the accept-reject on the weights
        times that of the acceptance, with the counts they come from.

        Whole-chain accept-reject: ``n_generated`` chains were generated and ``n_accepted`` kept.
        Staged (``groups``): every group's decays were accept-rejected on their own
        (``groups[decay] = {n_generated, n_accepted, efficiency, mean_weight}``); the weight efficiency
        is the product of the groups' (the probability that a whole chain would have been kept),
        ``n_generated`` counts the complete unit-weight chains made, ``n_accepted`` those kept by the
        acceptance. ``mean_weight``: the expected weight efficiency (mean of the weights, <= 1).
        """
        acc = self.acceptance
        groups = stats.get("groups")
        if groups is not None:
            per = {}
            w_eff, rel_var, mean_w = 1.0, 0.0, 1.0
            for decay, g in groups.items():
                e = g["n_accepted"] / g["n_generated"]
                per[decay] = {**g, "efficiency": e, "mean_weight": g["sum_weight"] / g["n_generated"]}
                del per[decay]["sum_weight"]
                w_eff *= e
                mean_w *= per[decay]["mean_weight"]
                rel_var += (1 - e) / max(e * g["n_generated"], 1e-300)
            acc_eff = n_acc / n_tried
            eff = w_eff * acc_eff
            rel_var += (1 - acc_eff) / max(acc_eff * n_tried, 1e-300)
            err = eff * math.sqrt(rel_var)
        else:
            per = None
            eff = n_acc / n_tried
            err = math.sqrt(eff * (1 - eff) / n_tried)
            w_eff = stats["n_weight_pass"] / n_tried
            acc_eff = n_acc / stats["n_weight_pass"] if stats["n_weight_pass"] else 0.0
            mean_w = stats["sum_weight"] / n_tried
        return {
            "efficiency": eff,
            "uncertainty": err,
            "n_generated": n_tried,
            "n_accepted": n_acc,
            "acceptance": (acc.config() if hasattr(acc, "config") else repr(acc)) if acc is not None else None,
            "unweight": self.unweight,
            # the accept-reject efficiency on the weights alone is their mean (weights <= 1)
            "mean_weight": mean_w,
            "rejection": rejecting,
            # the two factors of the efficiency: accept-reject on the weights, then the acceptance
            "unweight_efficiency": w_eff,
            "acceptance_efficiency": acc_eff,
            "groups": per,
        }

    def _vertices(self, chain: _Chain, tree, p4: np.ndarray, gun: dict, rng) -> np.ndarray:
        from mambah.generation._tables import vertex_layout

        n = p4.shape[-1]
        decaying, prod_block, _, _ = vertex_layout(tree)
        vtx = np.empty((4, 1 + len(decaying), n))
        vtx[:, 0, :] = gun["pv"]
        for k, node in enumerate(decaying):
            info = chain.nodes[node].particle
            q = p4[:, node, :]
            if chain.nodes[node].has_breit_wigner and node != 0:
                m = np.sqrt(np.maximum(q[3] ** 2 - q[0] ** 2 - q[1] ** 2 - q[2] ** 2, 0.0))
            else:
                m = info.mass
            tau = gun["tau"] if node == 0 else rng.exponential(info.lifetime, n)
            start = vtx[:, prod_block[node], :]
            step = C_MM_PER_NS * tau / m
            vtx[0, 1 + k] = start[0] + q[0] * step
            vtx[1, 1 + k] = start[1] + q[1] * step
            vtx[2, 1 + k] = start[2] + q[2] * step
            vtx[3, 1 + k] = start[3] + q[3] / m * tau
        return vtx

    @staticmethod
    def _models_info(desc: Descriptor, model, stats: dict) -> dict[str, Any]:
        """The decay models of the provenance: per node, the model weight's bound and this batch's
        count of weights above it (``n_over``)."""
        info: dict[str, Any] = {"nodes": {str(i): {"particle": desc.nodes()[i].particle.name, "model": m,
                                                   "params": list(p)}
                                          for i, (m, p) in desc.models().items()}}
        if model is not None:
            cfg = model.config()
            info.update({"max_weight": cfg.get("max_weight"), "factors": cfg.get("factors"),
                         "n_over": stats["n_over"], "max_model_weight_seen": stats["max_model_weight"]})
        return info

    def config(self) -> dict[str, Any]:
        return {
            "descriptor": self.descriptor,
            "models": {str(i): [m, list(p)] for i, (m, p) in self.parsed.models().items()},
            "charge_conjugate": self.charge_conjugate,
            "acceptance": (self.acceptance.config() if hasattr(self.acceptance, "config") else repr(self.acceptance))
            if self.acceptance is not None else None,
            "unweight": self.unweight,
            "breit_wigner": [n.particle.name for n in self.parsed.nodes()[1:] if n.has_breit_wigner],
            **({"fixed_shapes": True} if self.fixed_shapes else {}),  # absent by default: older records match
        }


def merge_acceptance(infos) -> dict[str, Any]:
    """The accept-reject record of several batches (their ``batch.info["generator_acceptance"]``):
    counts summed, then ``efficiency`` recomputed as for one batch (the product of the decay groups'
    efficiencies times the acceptance's for staged unweighting, kept / generated otherwise).

    Example:
        >>> merge_acceptance([{"n_generated": 10, "n_accepted": 4}, {"n_generated": 10, "n_accepted": 6}])["efficiency"]
        0.5
    """
    n_gen = n_acc = 0
    groups: dict[str, dict[str, int]] = {}
    for a in infos:
        if not a:
            continue
        n_gen += int(a.get("n_generated", 0))
        n_acc += int(a.get("n_accepted", 0))
        for decay, g in (a.get("groups") or {}).items():
            t = groups.setdefault(decay, {"n_generated": 0, "n_accepted": 0})
            t["n_generated"] += int(g["n_generated"])
            t["n_accepted"] += int(g["n_accepted"])
    eff = n_acc / n_gen if n_gen else float("nan")
    for g in groups.values():
        g["efficiency"] = g["n_accepted"] / g["n_generated"] if g["n_generated"] else float("nan")
        eff *= g["efficiency"]
    return {"efficiency": eff, "n_generated": n_gen, "n_accepted": n_acc, "groups": groups or None}


def generator_stages(descriptor: str, *, charge_conjugate: bool | str = False, acceptance=None,
                     unweight: bool = True, fixed_shapes: bool = False, **gun_options) -> list:
    """``[ParticleGun(head, **gun_options), PhaseSpaceDecay(descriptor, ...)]`` for a Pipeline.

    ``unweight=True`` (default) gives unit-weight events by accept-reject; ``unweight=False`` keeps
    weighted events (``events.weight`` must then be used), see :class:`PhaseSpaceDecay` (also for
    ``fixed_shapes``).

    Example:
        >>> stages = generator_stages("Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu")
        >>> [s.name for s in stages]
        ['gun', 'decay']
    """
    from mambah.generation.gun import ParticleGun

    decay = PhaseSpaceDecay(descriptor, charge_conjugate=charge_conjugate, acceptance=acceptance, unweight=unweight,
                            fixed_shapes=fixed_shapes)
    gun = ParticleGun(decay.parsed.head.particle.name, **gun_options)
    return [gun, decay]
