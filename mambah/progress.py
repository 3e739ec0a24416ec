"""Progress bars (tqdm), off unless the caller (the CLI) turns them on."""

from __future__ import annotations

from collections.abc import Iterable


def progress(iterable: Iterable | None = None, *, enabled: bool = False, **kwargs):
    """``tqdm(iterable, **kwargs)`` when enabled, else a silent stand-in with the same interface."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not enabled, **kwargs)
