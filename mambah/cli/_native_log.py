"""Drop TensorFlow's native (C++/absl) log lines from the CLI's standard error.

TensorFlow 2.21 prints its start-up notes ("oneDNN custom operations are on", "Could not find
cuda drivers", "failed call to cuInit", CPU instruction hints) from C++ before absl's logging
is initialised, so ``TF_CPP_MIN_LOG_LEVEL`` does not silence them. The CLI therefore routes file
descriptor 2 through a pipe and a thread that forwards everything except lines of that native
format. Python's own warnings, errors, logging and progress bars pass untouched, at once.

One Python log message of TensorFlow is dropped too: "N out of the last N calls to <function ...>
triggered tf.function retracing". mambah compiles one function per model with a fixed input
signature, so each traces once; but TensorFlow counts the traces of all functions made from the
same Python code together and calls the first traces of the fifth and later models of a run
(the PID chains load fifteen) "excessive retracing". A filter on the ``tensorflow`` logger drops
it in this process, and the same line is dropped from standard error, where Dask worker processes
(which inherit the filtered descriptor) write theirs.

``mambah -vv`` (or ``MAMBAH_NATIVE_LOGS=1``) leaves standard error and the log alone. Because fd 2
becomes a pipe, :func:`install` first tells :mod:`mambah.progress` whether it was a terminal
(a tqdm bar there, plain progress lines otherwise).
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading

_NATIVE = re.compile(
    rb"^(?:[IWEF]\d{4} [\d:.]+\s+\d+ [\w./+-]+:\d+\]"  # absl/glog: I0000 00:00:17953.123   25396 port.cc:153]
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|To enable the following instructions: .*rebuild TensorFlow"
    rb"|.{0,120}\d+ out of the last \d+ calls to <.*> triggered tf\.function retracing\.)"  # see the docstring
)
# a partial line that may still become a native line: held back until its end arrives
_PREFIX = re.compile(rb"^(?:[IWEF][\d :.]*(?:\s+\d*)?|WARNING:? ?[A-Za-z ]*|To enable[a-z ]*)$")

_installed = False

_RETRACING = re.compile(r"\d+ out of the last \d+ calls to <.*> triggered tf\.function retracing")


class _DropRetracing(logging.Filter):
    """Drop TensorFlow's "triggered tf.function retracing" warning (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return not _RETRACING.search(record.getMessage())
        except Exception:  # a record whose message cannot be formatted: not ours to judge
            return True


def install() -> None:
    """Start filtering fd 2 for the rest of the process (idempotent)."""
    global _installed
    if _installed or os.environ.get("MAMBAH_NATIVE_LOGS"):
        return
    tf_log = logging.getLogger("tensorflow")
    if not any(isinstance(f, _DropRetracing) for f in tf_log.filters):
        tf_log.addFilter(_DropRetracing())
    from mambah.progress import set_terminal

    try:
        set_terminal(os.isatty(2))  # fd 2 becomes a pipe below: progress bars must know where it ends
        sys.stderr.flush()
        orig = os.dup(2)
        r, w = os.pipe()
        os.dup2(w, 2)
        os.close(w)
    except OSError:  # no usable fd 2: nothing to filter
        return
    _installed = True

    def pump() -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(r, 65536)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            out = [line + b"\n" for line in lines if not _NATIVE.match(line)]
            if buf and not _PREFIX.match(buf):
                out.append(buf)
                buf = b""
            if out:
                os.write(orig, b"".join(out))
        if buf and not _NATIVE.match(buf):
            os.write(orig, buf)
        os.close(r)

    thread = threading.Thread(target=pump, name="mambah-stderr-filter", daemon=True)
    thread.start()

    def restore() -> None:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(orig, 2)  # closes the pipe's last write end: the pump sees EOF and drains
        thread.join(timeout=5)

    atexit.register(restore)
