"""The standard simulation chain, assembled from a decay descriptor.

``gun -> decay -> occupancy -> efficiency -> resolution -> composites [-> pid]``; see
:func:`standard_pipeline`. Every stage is a small frozen configuration, so the pipeline pickles
for Dask and its ``config()`` is what a production records and checks on resume.
"""

from __future__ import annotations

import os
from pathlib import Path

from .pipeline import Pipeline

__all__ = ["standard_pipeline", "GENERATOR_LEVEL"]

#: ``level`` value for a generator-level production (truth only, no detector response)
GENERATOR_LEVEL = "truth"


def _model(models_dir: str | os.PathLike | None, name: str) -> str:
    return name if models_dir is None else str(Path(models_dir) / name)


def standard_pipeline(
    descriptor: str,
    *,
    models_dir: str | os.PathLike | None = None,
    level: str = "reco",
    charge_conjugate: bool | str = False,
    acceptance: bool = False,
    pid: bool = False,
    **gun_options,
) -> Pipeline:
    """The simulation chain for ``descriptor``.

    Args:
        descriptor: e.g. ``"Lambda_b0 -> (Lambda_c+ -> p+ K- pi+) mu- anti-nu_mu"``.
        models_dir: where the trained models live (default: the shipped ``models/``).
        level: ``"truth"`` (generator only) or ``"reco"`` (the whole detector response).
        charge_conjugate: generate the charge-conjugate decay too (half of the events), as
            ``[...]CC`` in the descriptor does.
        acceptance: require every charged final-state particle in 2 < eta < 5 at generator level.
        pid: add the PID stage (:class:`mambah.stages.pid.PID`, the chained default PID models of
            e, mu, pi, K, p) after the composites (``level="reco"`` only).
        **gun_options: passed to :class:`mambah.generation.ParticleGun` (``pt``, ``eta``, ...).
    """
    from .errors import ConfigurationError
    from .generation import EtaAcceptance, generator_stages

    if level not in (GENERATOR_LEVEL, "reco"):
        raise ConfigurationError(f"level must be 'truth' or 'reco', not {level!r}")
    stages = generator_stages(descriptor, charge_conjugate=charge_conjugate,
                              acceptance=EtaAcceptance() if acceptance else None, **gun_options)
    if level == "reco":
        from .stages import Composites, Efficiency, Occupancy, Resolution
        from .stages.efficiency import DEFAULT_EFFICIENCY
        from .stages.occupancy import DEFAULT_OCCUPANCY
        from .stages.resolution import DEFAULT_RESOLUTION

        stages += [
            Occupancy(_model(models_dir, DEFAULT_OCCUPANCY)),
            Efficiency(_model(models_dir, DEFAULT_EFFICIENCY)),
            Resolution(_model(models_dir, DEFAULT_RESOLUTION)),
            Composites(),
        ]
        if pid:
            from .stages.pid import PID

            stages.append(PID(models_dir=None if models_dir is None else str(models_dir)))
    return Pipeline(stages)
