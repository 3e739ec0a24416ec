"""Progress display, off unless the caller (the CLI) turns it on.

On a terminal, a tqdm bar. Anywhere else (standard error redirected to a file or a pipe, a batch
job's log), a tqdm bar is a stream of ``\\r``-separated fragments (a 15-minute training wrote
90 kB of them), so :func:`progress` writes one plain line every :data:`LINE_INTERVAL` seconds
instead, with what is done, the rate and the estimated time left::

    simulate 88167441-seed1: 6.00k/20.0k ev (30%), 1.2k ev/s, 0:05 elapsed, ETA 0:12

and a last line when it closes. The CLI declares whether its standard error is a terminal
(:func:`set_terminal`), because it routes standard error through a pipe of its own
(:mod:`mambah.cli._native_log`); otherwise ``sys.stderr.isatty()`` decides.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["progress", "set_terminal", "stderr_is_terminal", "LINE_INTERVAL", "LineProgress"]

#: Seconds between two progress lines when standard error is not a terminal (environment
#: variable ``MAMBAH_PROGRESS_INTERVAL`` overrides it).
LINE_INTERVAL = 10.0

_TERMINAL: bool | None = None


def set_terminal(is_terminal: bool | None) -> None:
    """Declare whether standard error reaches a terminal (``None``: ask ``sys.stderr``)."""
    global _TERMINAL
    _TERMINAL = None if is_terminal is None else bool(is_terminal)


def stderr_is_terminal() -> bool:
    """Whether progress on standard error reaches a terminal (see :func:`set_terminal`)."""
    if _TERMINAL is not None:
        return _TERMINAL
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


def _interval() -> float:
    raw = os.environ.get("MAMBAH_PROGRESS_INTERVAL")
    if raw is None:
        return LINE_INTERVAL
    try:
        return max(0.0, float(raw))
    except ValueError:
        logging.getLogger(__name__).warning("MAMBAH_PROGRESS_INTERVAL=%r is not a number of seconds: progress lines "
                                            "every %g s", raw, LINE_INTERVAL)
        return LINE_INTERVAL


def progress(iterable: Iterable | None = None, *, enabled: bool = False, **kwargs):
    """A progress display over ``iterable`` (or updated by hand, ``total=...``).

    Args:
        iterable: what to iterate over (optional).
        enabled: show progress at all; ``False`` gives a silent stand-in with the same interface.
        **kwargs: tqdm's (``total``, ``desc``, ``unit``, ``unit_scale``, ``initial``...).

    Returns:
        ``tqdm(iterable, **kwargs)`` when enabled and standard error is a terminal; a
        :class:`LineProgress` (one line every :data:`LINE_INTERVAL` seconds) when enabled and it
        is not; a disabled tqdm otherwise.
    """
    if enabled and not stderr_is_terminal():
        return LineProgress(iterable, interval=_interval(), **kwargs)
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not enabled, **kwargs)


class LineProgress:
    """tqdm's interface (``update``, ``set_postfix``, ``set_postfix_str``, ``set_description``,
    ``close``, iteration, context manager) writing a plain line every ``interval`` seconds.

    Args:
        iterable: what to iterate over (optional).
        interval: seconds between two lines (0: a line at every update).
        total, desc, unit, unit_scale, initial, postfix, file: as tqdm's; other tqdm arguments
            (``mininterval``, ``smoothing``, ``leave``...) are accepted and ignored.
    """

    def __init__(self, iterable: Iterable | None = None, *, interval: float = LINE_INTERVAL,
                 total: float | None = None, desc: str | None = None, unit: str = "it", unit_scale: bool = False,
                 initial: float = 0, postfix: Any = None, file=None, **_ignored):
        self.iterable = iterable
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except (TypeError, AttributeError):
                total = None
        self.total = total
        self.desc = desc or ""
        self.unit = unit
        self.unit_scale = bool(unit_scale)
        self.n = initial
        self.initial = initial
        self.interval = float(interval)
        self.postfix = ""
        self.file = file
        self.closed = False
        self.start_t = time.monotonic()
        self._last = self.start_t
        if postfix is not None:
            self.set_postfix(postfix, refresh=False)

    # -- tqdm's interface ---------------------------------------------------------------------
    def __iter__(self) -> Iterator:
        if self.iterable is None:
            return
        try:
            for x in self.iterable:
                yield x
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._write()

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        """Nothing: lines are written by time, not on request."""

    def close(self) -> None:
        """Write the last line (once)."""
        if self.closed:
            return
        self.closed = True
        self._write(final=True)

    # -- the line -------------------------------------------------------------------------------
    def _fmt(self, x: float) -> str:
        from tqdm import tqdm

        return tqdm.format_sizeof(x) if self.unit_scale else f"{x:g}"

    def line(self, final: bool = False) -> str:
        """The progress line as it is now."""
        from tqdm import tqdm

        elapsed = time.monotonic() - self.start_t
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = []
        if self.total:
            parts.append(f"{self._fmt(self.n)}/{self._fmt(self.total)} {self.unit} ({100 * self.n / self.total:.0f}%)")
        else:
            parts.append(f"{self._fmt(self.n)} {self.unit}")
        if rate > 0:
            parts.append(f"{self._fmt(rate)} {self.unit}/s")
        parts.append(f"{tqdm.format_interval(elapsed)} elapsed")
        if not final and self.total and rate > 0 and self.n < self.total:
            parts.append(f"ETA {tqdm.format_interval((self.total - self.n) / rate)}")
        if final:
            parts.append("done" if not self.total or self.n >= self.total else "stopped")
        if self.postfix:
            parts.append(self.postfix)
        return (f"{self.desc}: " if self.desc else "") + ", ".join(parts)

    def _write(self, final: bool = False) -> None:
        f = self.file if self.file is not None else sys.stderr
        try:
            f.write(self.line(final) + "\n")
            f.flush()
        except (OSError, ValueError, AttributeError):  # a closed or absent stream: progress is not worth an error
            pass
