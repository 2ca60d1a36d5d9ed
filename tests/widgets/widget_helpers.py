"""Shared pieces of the widget tests: the synthetic CT and its grid."""

from __future__ import annotations

import numpy as np

CT_SHAPE = (8, 64, 64)
CT_SCALE = (3.0, 0.8, 0.8)
CT_TRANSLATE = (-12.0, 20.0, -30.0)


def make_ct(seed: int = 0) -> np.ndarray:
    """Soft tissue (~40 HU) in air with a slightly darker blob: HU a CT scan would hold."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: CT_SHAPE[0], : CT_SHAPE[1], : CT_SHAPE[2]]
    hu = np.full(CT_SHAPE, -1000.0, np.float32)
    body = (y - 32) ** 2 + (x - 32) ** 2 < 28**2
    hu[body] = 40.0
    hu[((y - 30) ** 2 + (x - 36) ** 2 < 5**2) & (abs(z - 4) < 3)] = 20.0
    return hu + rng.normal(0, 8, CT_SHAPE).astype(np.float32)
