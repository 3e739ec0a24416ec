"""The clipped logit of probabilities that the ProbNN steps, their calibration maps and the affine condition
transform share (numpy only, cheap to import)."""

from __future__ import annotations

import numpy as np

__all__ = ["LOGIT_CLIP", "clipped_logit"]

#: probabilities are clipped to [LOGIT_CLIP, 1 - LOGIT_CLIP] before their logit: the float32 spacing below 1
LOGIT_CLIP = 2.0 ** -24


def clipped_logit(x) -> np.ndarray:
    """``log(p) - log1p(-p)`` of ``p = clip(x, LOGIT_CLIP, 1 - LOGIT_CLIP)``, float64."""
    p = np.clip(np.asarray(x, dtype=float), LOGIT_CLIP, 1.0 - LOGIT_CLIP)
    return np.log(p) - np.log1p(-p)
