"""Optional dependencies, imported in one place (in the manner of uproot's ``extras.py``).

mambah needs these packages only for some jobs. Each function imports its package and returns
the module, or raises :class:`~mambah.errors.OptionalDependencyError` (an ``ImportError``) that
says what needs it and gives the exact ``pip install`` line of the matching extra of
``setup.cfg``:

============================ ============================= ===================================
function                     needed for                    install
============================ ============================= ===================================
:func:`psycopg`              PostgreSQL stores             ``pip install 'mambah[postgres]'``
:func:`dask`                 Dask productions              ``pip install 'mambah[dask]'``
:func:`dask_distributed`     Dask productions              ``pip install 'mambah[dask]'``
:func:`onnx`                 ONNX export                   ``pip install 'mambah[onnx]'``
:func:`tf2onnx`              ONNX export                   ``pip install 'mambah[onnx]'``
:func:`onnxruntime`          running an exported model     ``pip install 'mambah[onnx]'``
============================ ============================= ===================================

Example:
    >>> from mambah import extras
    >>> distributed = extras.dask_distributed()          # doctest: +SKIP
    >>> client = distributed.Client(cluster)             # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from types import ModuleType

from mambah.errors import OptionalDependencyError

__all__ = ["INSTALL", "psycopg", "dask", "dask_distributed", "onnx", "tf2onnx", "onnxruntime"]

#: The ``pip install`` line of each extra of ``setup.cfg``.
INSTALL = {
    "postgres": "pip install 'mambah[postgres]'",
    "dask": "pip install 'mambah[dask]'",
    "onnx": "pip install 'mambah[onnx]'",
}


def _require(module: str, extra: str, purpose: str) -> ModuleType:
    """``import module``, or an :class:`OptionalDependencyError` with the install line of ``extra``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:  # ModuleNotFoundError, or a module set to None in sys.modules
        raise OptionalDependencyError(
            f"{purpose} needs the optional package {module.split('.')[0]!r}, which cannot be imported "
            f"({err}); install it with:\n\n    {INSTALL[extra]}\n"
        ) from err


def psycopg() -> ModuleType:
    """``psycopg`` (version 3), the driver of PostgreSQL stores (``postgresql://`` URLs)."""
    return _require("psycopg", "postgres", "a PostgreSQL store (postgresql://...)")


def dask() -> ModuleType:
    """``dask`` (its configuration is set for the workers of a local cluster)."""
    return _require("dask", "dask", "a production on Dask (workers=N or scheduler=ADDRESS)")


def dask_distributed() -> ModuleType:
    """``dask.distributed`` (``Client``, ``LocalCluster``, ``as_completed``) for Dask productions."""
    return _require("dask.distributed", "dask", "a production on Dask (workers=N or scheduler=ADDRESS)")


def onnx() -> ModuleType:
    """``onnx``, to export trained models to ONNX."""
    return _require("onnx", "onnx", "exporting a model to ONNX")


def tf2onnx() -> ModuleType:
    """``tf2onnx``, the converter of TensorFlow/Keras models to ONNX (imports TensorFlow)."""
    return _require("tf2onnx", "onnx", "exporting a model to ONNX")


def onnxruntime() -> ModuleType:
    """``onnxruntime``, to run an exported ONNX model."""
    return _require("onnxruntime", "onnx", "running an ONNX model")
