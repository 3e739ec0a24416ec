"""Decay modes picked by branching fraction from DecayLanguage's DECAY_LHCB.DEC."""

from __future__ import annotations

import numpy as np
import pytest

from mambah.errors import ConfigurationError
from mambah.generation import PhaseSpaceDecay, parse_descriptor
from mambah.generation.decfile import decay_modes, pick_decay_mode


def test_d0_modes_are_sorted_parse_and_carry_the_files_fractions():
    modes = decay_modes("D0")
    assert len(modes) > 20
    f = np.array([m.fraction for m in modes])
    assert np.all(np.diff(f) <= 0) and 0.5 < f.sum() <= 1.0 + 1e-9
    texts = [m.descriptor for m in modes]
    assert "D0 -> K- pi+" in texts
    kpi = modes[texts.index("D0 -> K- pi+")]
    assert kpi.fraction == pytest.approx(0.0389, rel=0.05)  # PDG: 3.95 %
    for m in modes:
        parse_descriptor(m.descriptor)  # every listed mode is usable
    assert all(m.fraction >= 0.01 for m in decay_modes("D0", min_fraction=0.01))


def test_partonic_modes_are_skipped_and_unknown_mothers_get_suggestions():
    assert not any(" u " in m.descriptor + " " for m in decay_modes("Lambda_c+"))
    with pytest.raises(ConfigurationError, match="Lambda_c\\+"):
        decay_modes("Lambda_cc+")


@pytest.mark.filterwarnings("ignore::mambah.errors.UnknownModelWarning")  # D0 -> K- pi+ pi0 is D_DALITZ in the file
def test_pick_follows_the_branching_fractions():
    modes = decay_modes("D0", min_fraction=0.03)
    f = np.array([m.fraction for m in modes])
    picks = [pick_decay_mode("D0", seed=s, min_fraction=0.03).descriptor for s in range(600)]
    top = modes[0].descriptor
    p = f[0] / f.sum()
    assert abs(picks.count(top) / 600 - p) < 4 * np.sqrt(p * (1 - p) / 600)
    assert pick_decay_mode("D0", seed=3) == pick_decay_mode("D0", seed=3)
    PhaseSpaceDecay(pick_decay_mode("B+", seed=1).descriptor)
