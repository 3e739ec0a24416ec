"""The validation has power on real sWeighted data (a small slice of the calibration sample).

Known ordering (full-sample numbers in examples/validation_sanity_real_data.py): the two halves
of the data score at the statistical floor; targets drawn without conditioning, or shuffled
across rows, score far above it. Tolerance of the floor: the two-sample Kolmogorov critical
value at 0.1 % for the Kish effective sizes of the held-out parts.
"""

from __future__ import annotations

import numpy as np
import pytest

from mambah.io import read_table
from mambah.validation import effective_size
from mambah.validation.sanity import sanity_table


@pytest.fixture(scope="module")
def real_slice(real_data_path):
    data = read_table(real_data_path)
    return data.iloc[np.random.default_rng(5).permutation(len(data))[:16000]].reset_index(drop=True)


def test_real_data_ordering(real_slice):
    table = sanity_table(real_slice, ["P", "ETA", "nLongTracks"], ["DLLp"], "sWeight",
                         cases=("null", "shuffled", "unconditional"), seed=0, n_repeats=2,
                         classifier_options={"max_iter": 60}, n_threads=1).set_index("case")["bdt_ks"]
    # held-out part: half of each half of the slice
    n_eff = effective_size(real_slice["sWeight"]) / 4
    crit = 1.949 * np.sqrt(2 / n_eff)
    assert table["null"] < crit, table
    assert table["unconditional"] > max(2 * crit, 4 * table["null"]), table
    assert table["shuffled"] > max(2 * crit, 4 * table["null"]), table
