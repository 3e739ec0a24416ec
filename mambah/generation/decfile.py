"""Decay modes and branching fractions from an EvtGen ``.dec`` file (through DecayLanguage).

>>> from mambah.generation.decfile import decay_modes, pick_decay_mode
>>> modes = decay_modes("D0", min_fraction=0.02)          # doctest: +SKIP
>>> modes[0]                                               # doctest: +SKIP
DecayMode(fraction=0.0..., descriptor='D0 -> K- pi+ pi+ pi-', model='PHSP', params=(), model_used=True)
>>> PhaseSpaceDecay(pick_decay_mode("D0", seed=1).descriptor)   # doctest: +SKIP

Only one level is returned (daughters as written in the file); decay the daughters by writing the
descriptor yourself (``"B+ -> (J/psi -> mu+ mu-) K+"``). The default file is the
``DECAY_LHCB.DEC`` that DecayLanguage ships. Modes whose particles mambah cannot resolve, that
fail a descriptor check (e.g. a mode with a single daughter) or that are partonic (Pythia modes
with quarks, diquarks or gluons) are skipped, with a debug log.

Decay models: each mode carries the file's model and parameters (``model``, ``params``). When
mambah has that model (:data:`mambah.generation.models.KNOWN_MODELS`) and it fits the mode (as
:func:`~mambah.generation.parse_descriptor` checks), it is written into the descriptor after the
daughters (``"B+ -> J/psi(1S) K+ SVS"``) and used by :class:`PhaseSpaceDecay`; ``PHSP`` is left
out (it is the default). Otherwise the descriptor is phase space and ``model_used`` is False (a
debug log names the model, and :func:`pick_decay_mode` warns with an
:class:`~mambah.errors.UnknownModelWarning` when it picks such a mode). Angular models such as ``SVS`` only shape a distribution once the
daughters' decays are written too (``"B+ -> (J/psi(1S) -> mu+ mu- VLL) K+ SVS"``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import warnings
from pathlib import Path

import numpy as np

from mambah.errors import ConfigurationError, DescriptorError, closest
from mambah.random import SeedLike, get_rng
from mambah.generation.descriptor import parse_descriptor

__all__ = ["DecayMode", "decay_modes", "pick_decay_mode", "default_dec_file"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DecayMode:
    """One decay mode: branching fraction, descriptor (mambah syntax), the file's EvtGen model
    name and parameters, and whether the descriptor uses that model (False: phase space)."""

    fraction: float
    descriptor: str
    model: str
    params: tuple[float, ...] = ()
    model_used: bool = True


def default_dec_file() -> Path:
    """DecayLanguage's copy of LHCb's ``DECAY.DEC`` (``DECAY_LHCB.DEC``)."""
    from decaylanguage.data import basepath

    return Path(basepath) / "DECAY_LHCB.DEC"


@functools.lru_cache(maxsize=4)
def _parser(path: str):
    from decaylanguage import DecFileParser

    if not Path(path).is_file():
        raise ConfigurationError(f"no .dec file at {path}")
    parser = DecFileParser(path)
    with warnings.catch_warnings():
        # DecayLanguage warns about misconfigured aliases of the shipped file; not the user's problem
        warnings.filterwarnings("ignore", module=r"decaylanguage\..*")
        parser.parse()
    return parser


def _partonic(pid: int) -> bool:
    from particle import PDGID

    p = PDGID(pid)
    return bool(p.is_quark or p.is_diquark or abs(pid) in (21, 81, 82, 91, 92, 93))


def decay_modes(mother: str, dec_file: str | Path | None = None, min_fraction: float = 0.0) -> list[DecayMode]:
    """The decay modes of ``mother`` (EvtGen name) in ``dec_file``, largest fraction first.

    Raises:
        ConfigurationError: the file does not exist or has no decay of ``mother``.
    """
    return [m for m in _modes(mother, str(dec_file or default_dec_file())) if m.fraction >= min_fraction]


@functools.lru_cache(maxsize=256)
def _modes(mother: str, path: str) -> tuple[DecayMode, ...]:
    parser = _parser(path)
    mothers = parser.list_decay_mother_names()
    if mother not in mothers:
        near = closest(mother, mothers, n=5)
        hint = f"; did you mean {', '.join(map(repr, near))}?" if near else ""
        raise ConfigurationError(f"{Path(path).name} has no decay of {mother!r}{hint}")
    aliases = parser.dict_aliases()
    finals = {name for mode in parser.list_decay_modes(mother) for name in mode}
    chains = parser.build_decay_chains(mother, stable_particles=sorted(finals))
    out = []
    for mode in chains[mother]:
        names = [aliases.get(n, n) if isinstance(n, str) else None for n in mode["fs"]]
        if None in names:
            continue
        text = f"{aliases.get(mother, mother)} -> {' '.join(names)}"
        try:
            d = parse_descriptor(text)
            if any(_partonic(n.particle.pid) for n in d.nodes()):
                log.debug("skipping the partonic (Pythia) mode %s", text)
                continue
        except DescriptorError as exc:
            log.debug("skipping %s: %s", text, exc)
            continue
        model, params = str(mode.get("model", "") or ""), _params(mode.get("model_params"))
        text, used = _with_model(text, model, params)
        out.append(DecayMode(float(mode["bf"]), text, model, params if params is not None else (), used))
    out.sort(key=lambda m: -m.fraction)
    return tuple(out)


def _params(raw) -> tuple[float, ...] | None:
    """DecayLanguage's ``model_params`` ('' or a list) as floats; None if one is not a number (a
    name ``Define``d elsewhere in the file)."""
    if raw in (None, ""):
        return ()
    try:
        return tuple(float(x) for x in (raw if isinstance(raw, (list, tuple)) else str(raw).split()))
    except (TypeError, ValueError):
        return None


def _with_model(text: str, model: str, params: tuple[float, ...] | None) -> tuple[str, bool]:
    """``text`` with ``model`` and ``params`` written after the daughters when mambah has the
    model and it fits; else ``text`` (phase space). Returns (descriptor, model used)."""
    from mambah.generation.descriptor import known_models

    if model in ("", "PHSP") and not params:
        return text, True
    if params is None or model not in known_models():
        log.debug("%s: the file's model %r is not one of mambah's (or has symbolic parameters); phase space used",
                  text, model)
        return text, False
    full = " ".join([text, model, *(repr(p) for p in params)])
    try:
        parse_descriptor(full)
    except DescriptorError as exc:
        log.debug("%s: the file's model %r does not fit here (%s); phase space used", text, model, exc)
        return text, False
    return full, True


def pick_decay_mode(mother: str, seed: SeedLike = None, dec_file: str | Path | None = None,
                    min_fraction: float = 0.0) -> DecayMode:
    """One mode of ``mother`` drawn with probability proportional to its branching fraction
    (normalised over the usable modes of :func:`decay_modes`)."""
    modes = decay_modes(mother, dec_file, min_fraction)
    if not modes:
        raise ConfigurationError(f"no usable decay mode of {mother!r} with fraction >= {min_fraction}")
    p = np.array([m.fraction for m in modes])
    mode = modes[int(get_rng(seed).choice(len(modes), p=p / p.sum()))]
    if not mode.model_used:
        from mambah.errors import UnknownModelWarning

        warnings.warn(UnknownModelWarning(
            f"{mother}: the picked mode {mode.descriptor!r} has the model {mode.model!r} "
            f"{' '.join(map(str, mode.params))} in the .dec file, which mambah does not have or which does not fit "
            "here: it is generated with phase space"), stacklevel=2)
    return mode
