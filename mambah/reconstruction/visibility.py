"""Which final-state particles the reconstruction sees, and which it leaves invisible on purpose.

The reconstruction stages give rows of ``particles`` to charged tracks (e, mu, pi, K, p) only; no
stage reconstructs a photon, a pi0 left undecayed, a K_L0, a neutron or any other stable neutral
particle yet. Summing the tracks of a decay with such a particle gives a *partial* mass: the
"B0" of ``B0 -> (K*(892)0 -> K+ pi-) gamma`` would have the K*0's mass. So a descriptor with such a
particle in its final state is refused before anything runs
(:func:`mambah.simulation.check_neutral_coverage`), unless the user asks for it to be left
invisible (``standard_pipeline(..., invisible=("gamma",))``, ``mambah simulate --invisible gamma``).

Neutrinos are invisible by default: they leave no signal at LHCb (or in any collider detector),
and a semileptonic decay's partial mass is what an LHCb selection reconstructs too.

A composite with an invisible descendant (a neutrino or a particle left invisible) has a partial
mass; ``vertices.n_invisible`` counts those descendants (ntuple ``X_NINVISIBLE``; 0 = the mass is
that of the whole decay), see :class:`mambah.reconstruction.Composites`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from mambah.errors import ConfigurationError, DescriptorError

__all__ = ["is_neutrino", "invisible_pids", "unseen_nodes", "invisible_names"]


@functools.lru_cache(maxsize=None)
def is_neutrino(pid: int) -> bool:
    """True for a neutrino or antineutrino (a neutral lepton, from the ``particle`` package)."""
    from particle import PDGID, Particle

    pid = int(pid)
    if not PDGID(pid).is_lepton:
        return False
    try:
        return float(Particle.from_pdgid(pid).charge) == 0.0
    except Exception:  # noqa: BLE001 - an id the particle table lacks is no neutrino we know of
        return False


def invisible_pids(invisible: Iterable[str | int] | str | None) -> tuple[int, ...]:
    """The |PDG id|s of the particles to leave invisible, sorted.

    Args:
        invisible: particle names (``"gamma"``, ``"pi0"``, ``"K_L0"``; names of
            :func:`mambah.generation.resolve`, a particle and its antiparticle alike), PDG ids, or one
            comma-separated string (``"gamma,pi0"``, as ``mambah simulate --invisible`` takes it).

    Raises:
        UnknownParticleError: a name is unknown (close names are suggested).
        ConfigurationError: a charged particle (it would be a track: it cannot be left invisible),
            or a value that is neither a name nor an integer.
    """
    from mambah.generation.particles import resolve
    from mambah.physics import pdg_charge

    if invisible is None:
        return ()
    if isinstance(invisible, str):
        invisible = [invisible]
    out = set()
    for item in invisible:
        if isinstance(item, str):
            for name in (s.strip() for s in item.split(",")):
                if not name:
                    continue
                info = resolve(name)
                if info.charge != 0:
                    raise ConfigurationError(
                        f"invisible: {name!r} is charged (PDG id {info.pid}): a charged final-state particle is a "
                        "track, it cannot be left invisible; only neutral particles can (e.g. gamma, pi0, K_L0, n)")
                out.add(abs(int(info.pid)))
        elif isinstance(item, (int,)) and not isinstance(item, bool):
            if int(pdg_charge([int(item)])[0]) != 0:
                raise ConfigurationError(f"invisible: PDG id {item} is charged: it is a track and cannot be left invisible")
            out.add(abs(int(item)))
        else:
            raise ConfigurationError(f"invisible: expected particle names or PDG ids, got {item!r}")
    return tuple(sorted(out))


def invisible_names(pids: Iterable[int]) -> list[str]:
    """PDG names of |PDG id|s (for messages and provenance)."""
    from particle import Particle

    names = []
    for p in pids:
        try:
            names.append(str(Particle.from_pdgid(int(p)).name))
        except Exception:  # noqa: BLE001 - an id the particle table lacks: show the number
            names.append(str(p))
    return names


def unseen_nodes(tree: list[dict], invisible: Iterable[int] = (), seen: Iterable[int] = ()) -> list[int]:
    """Final-state nodes of a decay tree that no stage reconstructs and nobody asked to leave out.

    A node is *unseen* when it is a stable (undecayed in the tree) neutral particle, not a
    neutrino, whose |PDG id| is neither in ``invisible`` (left invisible on purpose) nor in
    ``seen`` (reconstructed by some stage).

    Args:
        tree: ``batch.info["decay_tree"]`` / :meth:`mambah.generation.Descriptor.tree` nodes.
        invisible, seen: |PDG id|s.

    Raises:
        DescriptorError: a node lacks ``pid`` or ``stable``.
    """
    from mambah.physics import pdg_charge

    invisible, seen = set(map(abs, map(int, invisible))), set(map(abs, map(int, seen)))
    out = []
    for k, nd in enumerate(tree):
        try:
            pid, stable = int(nd["pid"]), bool(nd["stable"])
        except (KeyError, TypeError, ValueError):
            raise DescriptorError(f"decay_tree node {k} lacks 'pid' or 'stable': {nd!r}") from None
        charge = int(nd["charge"]) if "charge" in nd else int(pdg_charge([pid])[0])
        if not stable or charge != 0:
            continue
        if is_neutrino(pid) or abs(pid) in invisible or abs(pid) in seen:
            continue
        out.append(k)
    return out
