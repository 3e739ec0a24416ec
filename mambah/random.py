"""One seed type and one normaliser, as in phasespace.

Every stage draws its random numbers from a generator derived from the batch seed and the
stage's name, so any batch can be regenerated bit for bit from ``(seed, stage)`` alone, and
stages do not share (or depend on the order of) random streams.
"""

from __future__ import annotations

import zlib
from typing import Union

import numpy as np

__all__ = ["SeedLike", "get_rng", "batch_seed", "stage_rng"]

SeedLike = Union[int, np.random.Generator, None]


def get_rng(seed: SeedLike = None) -> np.random.Generator:
    """Return a numpy Generator from an int, a Generator (returned as is) or None (fresh entropy)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or isinstance(seed, (int, np.integer)):
        return np.random.default_rng(seed)
    raise TypeError(f"seed must be an int, a numpy Generator or None, not {seed!r}")


def _key(name: str) -> int:
    return zlib.crc32(name.encode())


def batch_seed(production_seed: int, batch: int) -> int:
    """Seed of batch ``batch`` of a production seeded with ``production_seed`` (a 63-bit int)."""
    ss = np.random.SeedSequence([int(production_seed), int(batch)])
    return int(ss.generate_state(2, dtype=np.uint32).astype(np.uint64) @ np.array([1 << 31, 1], np.uint64)) & ((1 << 63) - 1)


def stage_rng(seed: int, stage: str) -> np.random.Generator:
    """The generator of stage ``stage`` in the batch seeded with ``seed``."""
    return np.random.default_rng([int(seed), _key(stage)])
