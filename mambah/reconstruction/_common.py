"""Helpers shared by the reconstruction stages (model versions, table lookups)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import numpy as np
import pandas as pd

from mambah._version import __version__
from mambah.errors import ConfigurationError

#: value of a stage's ``model`` field that selects the reference detector's exact truth
REFERENCE = "reference"


def model_dir_entry(model: str) -> dict:
    """``{name: directory}`` of a model directory; ``{}`` for the reference detector (no files)."""
    if model == REFERENCE:
        return {}
    from mambah.modeldir import load_card, resolve_model

    p = resolve_model(model)
    return {str(load_card(p).get("name", p.name)): p}


def model_version_entry(model: str) -> dict[str, dict[str, str]]:
    """``{name: {"version", "hash"}}`` of a model directory (or of the reference detector)."""
    if model == REFERENCE:
        from mambah.reference.tracking import TrackingDetector

        cfg = json.dumps(dataclasses.asdict(TrackingDetector()), sort_keys=True, default=str)
        return {"reference-tracking": {"version": __version__, "hash": hashlib.sha256(cfg.encode()).hexdigest()[:16]}}
    from mambah.modeldir import load_card, model_hash

    return {name: {"version": str(load_card(p).get("version", "")), "hash": model_hash(p)}
            for name, p in model_dir_entry(model).items()}


class OneModelStage:
    """Base of a stage (a frozen dataclass) that runs one model, named by its field ``model``
    (a name under ``models/``, a model directory, or :data:`REFERENCE`): its provenance entries."""

    model: str

    def config(self) -> dict[str, Any]:
        """The stage's fields, as the production records them."""
        return as_config(self)

    def model_versions(self) -> dict[str, Any]:
        """``{name: {"version", "hash"}}`` of the stage's model (:func:`model_version_entry`)."""
        return model_version_entry(self.model)

    def model_dirs(self) -> dict[str, Any]:
        """``{name: directory}`` of the stage's model (:func:`model_dir_entry`)."""
        return model_dir_entry(self.model)


class ReferenceOrModelStage:
    """Provenance of a stage whose ``model`` is :data:`REFERENCE` (the reference detector's own
    response: no model files, nothing recorded) or a trained model, resolved by the stage's
    ``model_dir`` (the Bremsstrahlung and Neutrals stages)."""

    model: str

    def model_versions(self) -> dict[str, Any]:
        """``{name: {"version", "hash"}}`` of the trained model (:func:`model_version_entry`); ``{}``."""
        return {} if self.model == REFERENCE else model_version_entry(self.model_dir)

    def model_dirs(self) -> dict[str, Any]:
        """``{name: directory}`` of the trained model (:func:`model_dir_entry`); ``{}`` for the reference."""
        return {} if self.model == REFERENCE else model_dir_entry(self.model_dir)

    def check_model(self, stage: str, kind: str, choices: tuple[str, ...]) -> None:
        """Refuse a ``model`` that is neither the reference nor a model directory of ``kind``
        (:class:`~mambah.errors.ConfigurationError` naming ``stage``, the ``choices`` and the problem)."""
        if not isinstance(self.model, str) or not self.model:
            raise ConfigurationError(f"{stage}: model must be {' or '.join(map(repr, choices))} or a {kind} model's "
                                     f"name or directory, got {self.model!r}")
        if self.model == REFERENCE:
            return
        from mambah.errors import ModelDirError
        from mambah.modeldir import load_card, resolve_model

        try:
            card = load_card(resolve_model(self.model_dir))
        except ModelDirError as e:
            raise ConfigurationError(f"{stage}: unknown model {self.model!r}: not one of {', '.join(choices)} and "
                                     f"{e}") from None
        if card.get("kind") != kind:
            raise ConfigurationError(f"{stage}: model {self.model_dir!r} is a {card.get('kind')!r} model, not a "
                                     f"{kind!r} one")


def rows_by_index(table: pd.DataFrame, index: np.ndarray, what: str) -> np.ndarray:
    """Row positions of batch-local ``index`` values in ``table`` (whose ``index`` column is a key)."""
    idx = table["index"].to_numpy()
    index = np.asarray(index, dtype=np.int64)
    if len(idx) and idx[0] == 0 and idx[-1] == len(idx) - 1 and np.all(np.diff(idx) == 1):
        pos = index
    else:
        order = np.argsort(idx, kind="stable")
        j = np.searchsorted(idx, index, sorter=order)
        j = np.minimum(j, len(idx) - 1)
        pos = order[j]
        pos = np.where(idx[pos] == index, pos, -1)
    bad = (pos < 0) | (pos >= len(idx))
    if bad.any():
        raise ConfigurationError(f"{int(bad.sum())} {what} point to rows that do not exist "
                                 f"(e.g. index {int(index[bad][0])}); the batch tables are inconsistent")
    return pos


def require_tables(batch, stage: str, tables: tuple[str, ...]) -> None:
    missing = [t for t in tables if t not in batch]
    if missing:
        raise ConfigurationError(
            f"stage {stage!r} needs the batch table(s) {', '.join(missing)} (batch {batch.id} has "
            f"{', '.join(batch.tables) or 'none'}); run the generation stages (ParticleGun, PhaseSpaceDecay) first"
        )


def as_config(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
