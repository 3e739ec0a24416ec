"""Background cocktails: several decay channels in one production, with their relative rates.

A cocktail is a list of :class:`Channel` s, each a decay descriptor with its relative rate (and,
for a background study, the mass-hypothesis swaps it is reconstructed with). A cocktail batch of
N events is split among the channels by one multinomial draw from the batch's seed
(:func:`split_events`), the events of each channel are generated vectorised with its own decay
chain from a seed derived from the batch seed and the channel's index (:func:`channel_seed`),
and the channels' tables are concatenated in channel order (:mod:`mambah.pipeline`,
:class:`~mambah.pipeline.CocktailPipeline`). So the channel fractions of a batch follow the rates
within multinomial errors, and every batch is regenerated bit for bit from its seed.

Rates are relative: any non-negative finite numbers, not all zero; they are normalised to
fractions (:func:`check_rates`). A channel of rate 0 is kept (and recorded) but gets no events.
:func:`dec_rates` reads the rates from a ``.dec`` file instead: the rate of a channel is the
product of the branching fractions of each of its decays (a decaying particle with its daughters
as written, in the file's modes of that particle). Branching fractions alone ignore the
production fractions of the heads (f_s/f_d for B_s0 against B0, f_Lb/f_d for Lambda_b0): for
channels of different heads, multiply by them, or give the rates.

Swaps in a cocktail name their channel (:func:`route_swaps`): ``"1:pi+=K+"`` (the channel's index,
``:``, the swap) or the marked form ``"B0 -> ^pi+ pi- : K+"``, whose descriptor is one channel's.

Example:
    >>> chans = channels(["B0 -> pi+ pi-", "B_s0 -> K+ K-"], [3, 1],
    ...                  reconstruct_as=["0:pi+=K+", "B_s0 -> K+ ^K- : pi-"])
    >>> [(c.descriptor, c.fraction, c.reconstruct_as) for c in chans]
    [('B0 -> pi+ pi-', 0.75, ('pi+=K+',)), ('B_s0 -> K+ K-', 0.25, ('B_s0 -> K+ ^K- : pi-',))]
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mambah.errors import ConfigurationError, DescriptorError

__all__ = ["Channel", "channels", "check_rates", "split_events", "channel_seed", "route_swaps", "dec_rates"]

_PREFIX = re.compile(r"^\s*(\d+)\s*:(?!:)(.*)$", re.S)


@dataclasses.dataclass(frozen=True)
class Channel:
    """One channel of a cocktail.

    Attributes:
        descriptor: its decay descriptor (checked by :func:`channels`).
        rate: its relative rate (non-negative).
        fraction: ``rate`` normalised over the cocktail (set by :func:`channels`).
        reconstruct_as: its mass-hypothesis swaps, in the syntax of
            :mod:`mambah.reconstruction.hypotheses` (without the channel prefix).
    """

    descriptor: str
    rate: float
    fraction: float = float("nan")
    reconstruct_as: tuple[str, ...] = ()

    def config(self) -> dict:
        return {"descriptor": self.descriptor, "rate": self.rate, "fraction": self.fraction,
                "reconstruct_as": list(self.reconstruct_as)}


def check_rates(rates, n_channels: int) -> tuple[float, ...]:
    """The fractions (summing to 1) of the relative ``rates`` of ``n_channels`` channels.

    Args:
        rates: a sequence of numbers, or a comma-separated string ``"0.5,0.5"``.
        n_channels: the number of channels.

    Raises:
        ConfigurationError: a number of rates other than ``n_channels``, a rate that is not a
            number, negative, NaN or infinite, or all rates zero (the offending rate is named).
    """
    if isinstance(rates, str):
        parts = [r.strip() for r in rates.split(",")]
    else:
        try:
            parts = list(rates)
        except TypeError:
            raise ConfigurationError(f"rates must be a sequence of numbers (one per channel), not {rates!r}") from None
    if len(parts) != n_channels:
        raise ConfigurationError(f"{len(parts)} rate(s) {', '.join(map(str, parts))} for {n_channels} channel(s): "
                                 "give one rate per channel, in the channels' order")
    out = []
    for i, r in enumerate(parts):
        try:
            v = float(r)
        except (TypeError, ValueError):
            raise ConfigurationError(f"the rate of channel {i} is {r!r}, not a number") from None
        if math.isnan(v) or math.isinf(v) or v < 0:
            raise ConfigurationError(f"the rate of channel {i} is {r!r}: rates must be finite and non-negative")
        out.append(v)
    total = math.fsum(out)
    if total <= 0:
        raise ConfigurationError(f"every rate is zero ({', '.join(map(str, parts))}): at least one channel needs a "
                                 "positive rate")
    return tuple(v / total for v in out)


def route_swaps(descriptors: Sequence[str], reconstruct_as) -> list[tuple[str, ...]]:
    """Give each mass-hypothesis swap of a cocktail to its channel.

    Args:
        descriptors: the channels' descriptors.
        reconstruct_as: ``None``; a sequence of swaps, each ``"N:SWAP"`` (channel index ``N``,
            0-based) or a marked form ``"DESCRIPTOR : HYPOTHESIS"`` whose descriptor (with the
            ``^``) is exactly one channel's; or a mapping ``{channel index: swap(s)}``.

    Returns:
        The swaps of each channel, in the channels' order (checked later against the channel's
        descriptor by :func:`mambah.reconstruction.hypotheses.mass_hypotheses`).

    Raises:
        ConfigurationError: a channel index out of range, or a swap without a channel (a short
            form ``"K+=pi+"`` without ``N:``, or a marked form that matches no or several channels).
    """
    out: list[list[str]] = [[] for _ in descriptors]
    if not reconstruct_as:
        return [tuple(s) for s in out]
    if isinstance(reconstruct_as, Mapping):
        items = []
        for k, v in reconstruct_as.items():
            for s in ([v] if isinstance(v, str) else list(v)):
                items.append((k, s))
    else:
        items = [(None, s) for s in ([reconstruct_as] if isinstance(reconstruct_as, str) else list(reconstruct_as))]
    for key, spec in items:
        if not isinstance(spec, str):
            raise ConfigurationError(f"a mass-hypothesis swap must be a string, not {spec!r}")
        if key is None:
            m = _PREFIX.match(spec)
            if m:
                key, spec = m.group(1), m.group(2).strip()
            elif ":" in spec and "->" in spec.split(":", 1)[0]:
                key = _channel_of_marked(descriptors, spec)
            else:
                raise ConfigurationError(
                    f"reconstruct-as {spec!r}: in a cocktail a swap names its channel, as 'N:{spec.strip()}' (N = the "
                    f"channel's index, 0 to {len(descriptors) - 1}) or as the channel's descriptor with the track marked "
                    "('B0 -> ^pi+ pi- : K+')")
        try:
            k = int(key)
        except (TypeError, ValueError):
            raise ConfigurationError(f"reconstruct-as {spec!r}: channel {key!r} is not an index") from None
        if not 0 <= k < len(descriptors):
            raise ConfigurationError(f"reconstruct-as {spec!r}: there is no channel {k}; the channels are 0 to "
                                     f"{len(descriptors) - 1}: " + "; ".join(f"{i}: {d}" for i, d in enumerate(descriptors)))
        out[k].append(spec)
    return [tuple(s) for s in out]


def _channel_of_marked(descriptors: Sequence[str], spec: str) -> int:
    from mambah.generation.descriptor import parse_descriptor, parse_marked_descriptor

    left = spec.split(":", 1)[0]
    try:
        md, _ = parse_marked_descriptor(left)
    except DescriptorError as exc:
        raise type(exc)(f"reconstruct-as: the marked descriptor before ':': {exc}") from None
    theirs = [(int(n["pid"]), int(n["mother"])) for n in md.tree()]
    hits = [i for i, d in enumerate(descriptors)
            if [(int(n["pid"]), int(n["mother"])) for n in parse_descriptor(d).tree()] == theirs]
    if len(hits) != 1:
        what = "no channel" if not hits else f"channels {', '.join(map(str, hits))}"
        raise ConfigurationError(f"reconstruct-as {spec!r}: its descriptor matches {what} of the cocktail; prefix the "
                                 "swap with its channel's index ('N:...'); the channels: "
                                 + "; ".join(f"{i}: {d}" for i, d in enumerate(descriptors)))
    return hits[0]


def channels(descriptors: Sequence[str], rates, *, reconstruct_as=None) -> tuple[Channel, ...]:
    """The checked channels of a cocktail.

    Args:
        descriptors: one decay descriptor per channel (at least one).
        rates: their relative rates (see :func:`check_rates`).
        reconstruct_as: mass-hypothesis swaps, each naming its channel (:func:`route_swaps`).

    Raises:
        DescriptorError: a bad descriptor; the message starts with the channel's index and text.
        ConfigurationError: no channel, a descriptor that is not a string, bad rates, a swap
            without its channel.
    """
    from mambah.generation.descriptor import parse_descriptor

    if isinstance(descriptors, str) or not len(descriptors):
        raise ConfigurationError(f"a cocktail needs a sequence of one or more descriptors, not {descriptors!r}")
    for i, d in enumerate(descriptors):
        if not isinstance(d, str):
            raise ConfigurationError(f"channel {i}: a descriptor must be a string, not {d!r}")
        try:
            parse_descriptor(d)
        except DescriptorError as exc:
            raise type(exc)(f"channel {i} ({' '.join(d.split())!r}): {exc}") from None
    fractions = check_rates(rates, len(descriptors))
    raw = [float(r) for r in (rates.split(",") if isinstance(rates, str) else rates)]
    swaps = route_swaps(descriptors, reconstruct_as)
    return tuple(Channel(d, r, f, s) for d, r, f, s in zip(descriptors, raw, fractions, swaps))


def split_events(n_events: int, fractions: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """Events of each channel in a batch of ``n_events``: one multinomial draw (int64 array)."""
    p = np.asarray(fractions, dtype=np.float64)
    return rng.multinomial(int(n_events), p / p.sum()).astype(np.int64)


def channel_seed(batch_seed: int, channel: int) -> int:
    """The seed of channel ``channel``'s events in the batch seeded with ``batch_seed`` (63 bits)."""
    ss = np.random.SeedSequence([int(batch_seed), 0x636F636B, int(channel)])  # "cock"
    return int(ss.generate_state(2, dtype=np.uint32).astype(np.uint64) @ np.array([1 << 31, 1], np.uint64)) & ((1 << 63) - 1)


def dec_rates(descriptors: Sequence[str], dec_file: str | Path | None = None) -> list[float]:
    """Rates of the channels from the branching fractions of a ``.dec`` file.

    The rate of a channel is the product, over its decaying particles, of the branching fraction of
    the file's mode of that particle with the same daughters (compared as PDG ids, in any order;
    :func:`mambah.generation.decfile.decay_modes`). Production fractions are not included.

    Raises:
        ConfigurationError: the file has no decay of a particle, or no mode with those daughters
            (the channel and the decay are named, with the file's largest modes).
    """
    from particle import Particle

    from mambah.generation.decfile import _modes, default_dec_file
    from mambah.generation.descriptor import parse_descriptor

    path = str(dec_file or default_dec_file())
    out = []
    for i, text in enumerate(descriptors):
        try:
            d = parse_descriptor(text)
        except DescriptorError as exc:
            raise type(exc)(f"channel {i} ({' '.join(text.split())!r}): {exc}") from None
        rate = 1.0
        for node in d.nodes():
            if not node.children:
                continue
            mother = Particle.from_pdgid(int(node.particle.pid)).evtgen_name
            want = sorted(int(c.particle.pid) for c in node.children)
            try:
                modes = _modes(mother, path)
            except ConfigurationError as exc:
                raise ConfigurationError(f"channel {i} ({text!r}): {exc}") from None
            hit = [m for m in modes if sorted(int(c.particle.pid) for c in parse_descriptor(m.descriptor).head.children)
                   == want]
            if not hit:
                kids = " ".join(c.particle.name for c in node.children)
                top = "; ".join(f"{m.descriptor} ({m.fraction:.3g})" for m in modes[:5])
                raise ConfigurationError(f"channel {i} ({text!r}): {Path(path).name} has no mode {mother} -> {kids}; "
                                         f"its largest modes of {mother}: {top}")
            rate *= sum(m.fraction for m in hit)
        out.append(rate)
    return out
