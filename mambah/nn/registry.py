"""The model registry: load any trained model by name or path, once, and never stale.

:func:`load_model` resolves a name in the models directory (:func:`mambah.modeldir.resolve_model`),
reads the card's ``kind`` to choose the class (:data:`KINDS`), loads the model and caches it.

**What the cache is keyed by.** The resolved directory path *and* the content hash of the
directory (:func:`content_hash`: sha256 over the name and bytes of every file in it, the card
included). A model retrained in place under the same name (same path, new files) is therefore
loaded anew, in a long-lived process as in a Dask worker. To keep a lookup cheap, the content is
re-hashed only when the directory's signature — the ``(name, size, mtime_ns, inode)`` of its files —
has changed since the last lookup (a rewrite such as :func:`mambah.modeldir.save_model_dir`'s
creates new files, hence new inodes, even within one tick of the file-system clock); an unchanged directory costs one ``scandir`` and returns the same
object. Only the newest version of each path is kept.

Example:
    >>> m = load_model("pid-mu-flags")                 # doctest: +SKIP
    >>> m.kind, m.name, m.hash                         # doctest: +SKIP
    ('pid-flags', 'pid-mu-flags', '...')
    >>> load_model("efficiency-ref-v1", kind="efficiency").probability(...)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import threading
from pathlib import Path

from mambah.errors import ModelDirError
from mambah.nn.model import Model

__all__ = ["KINDS", "load_model", "model_class", "content_hash", "clear_cache", "cached_models"]

log = logging.getLogger(__name__)

#: card ``kind`` -> the class that loads it ("module:Class", imported on first use)
KINDS: dict[str, str] = {
    "pid": "mambah.nn.pidmodel:PidModel",
    "pid-flags": "mambah.nn.flags:FlagModel",
    "efficiency": "mambah.nn.tracking:EfficiencyModel",
    "resolution": "mambah.nn.tracking:ResolutionModel",
    "occupancy": "mambah.nn.occupancy:OccupancyModel",
    "brem": "mambah.nn.calo:BremModel",
    "photon": "mambah.nn.calo:PhotonModel",
    "trackstate": "mambah.nn.trackstate:TrackStateNet",
}

_LOCK = threading.RLock()
#: resolved path -> (signature, content hash, model)
_CACHE: dict[str, tuple[tuple, str, Model]] = {}


def model_class(kind: str) -> type[Model]:
    """The :class:`~mambah.nn.model.Model` subclass of a card ``kind`` (unknown kinds list the known)."""
    try:
        module, name = KINDS[kind].split(":")
    except KeyError:
        raise ModelDirError(f"unknown model kind {kind!r}; known kinds: {', '.join(KINDS)}") from None
    return getattr(importlib.import_module(module), name)


def _signature(path: Path) -> tuple:
    """``(name, size, mtime_ns, inode)`` of every file of the directory, sorted."""
    try:
        with os.scandir(path) as it:
            stats = [(e.name, e.stat()) for e in it if e.is_file()]
        return tuple(sorted((name, st.st_size, st.st_mtime_ns, st.st_ino) for name, st in stats))
    except OSError as e:
        raise ModelDirError(f"cannot read the model directory {str(path)!r} ({e})") from None


def content_hash(path: str | os.PathLike) -> str:
    """sha256 (hex) over the name and bytes of every file of a model directory, in name order."""
    path = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file()):
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def load_model(path_or_name: str | os.PathLike, kind: str | None = None, *,
               models_dir: str | os.PathLike | None = None) -> Model:
    """The model at ``path_or_name`` (a directory, or a name under ``models_dir``), cached.

    Args:
        path_or_name: a model directory or the name of one under ``models_dir``.
        kind: the card ``kind`` the caller needs (``"pid"``, ``"pid-flags"``, ``"efficiency"``,
            ``"resolution"``, ``"occupancy"``); ``None``: whatever the card says.
        models_dir: where names are looked up (default: :func:`mambah.modeldir.default_models_dir`).

    Returns:
        The loaded :class:`~mambah.nn.model.Model` of the card's kind: the same object as long as the
        directory's content is unchanged, a freshly loaded one after it changed (see the module
        docstring for the cache key).

    Raises:
        ModelDirError: no such model (the message lists the known ones), a corrupt directory, an
            unknown kind, or a kind other than ``kind``.
    """
    from mambah.modeldir import load_card, resolve_model

    path = resolve_model(path_or_name, models_dir).resolve()
    key = str(path)
    with _LOCK:
        sig = _signature(path)
        entry = _CACHE.get(key)
        if entry is not None and entry[0] == sig:
            model = entry[2]
        else:
            digest = content_hash(path)
            if entry is not None and entry[1] == digest:
                model = entry[2]
            else:
                card = load_card(path)
                cls = model_class(str(card.get("kind")))
                if kind is not None and card.get("kind") != kind:
                    raise ModelDirError(f"model {card.get('name', path.name)!r} ({key!r}) is a {card.get('kind')!r} "
                                        f"model, not {kind!r}")
                model = cls.load(path)
                model.content_hash = digest
                if entry is not None:
                    log.info("model %s changed on disk (content %s -> %s): reloaded", key, entry[1][:12], digest[:12])
            # the signature is recorded only when the directory did not change while it was read
            _CACHE[key] = (sig if _signature(path) == sig else (), digest, model)
    if kind is not None and model.kind != kind:
        raise ModelDirError(f"model {model.name!r} ({key!r}) is a {model.kind!r} model, not {kind!r}")
    return model


def cached_models() -> dict[str, tuple[str, Model]]:
    """``{resolved path: (content hash, model)}`` of the models this process holds."""
    with _LOCK:
        return {k: (v[1], v[2]) for k, v in _CACHE.items()}


def clear_cache() -> None:
    """Forget every cached model (the next :func:`load_model` reads from disk)."""
    with _LOCK:
        _CACHE.clear()
