"""Shared pieces of the corrections tests: a small scan with bright lesions on two slice groups."""

from __future__ import annotations

import numpy as np

from napari_nstseg.io.volume import Geometry

SHAPE, SPACING = (12, 40, 40), (3.0, 1.5, 1.5)


def small_scan(seed: int) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """Soft tissue with a bright lesion on slices 1-3 and 8-10."""
    rng = np.random.default_rng(seed)
    hu = np.round(rng.normal(40, 10, SHAPE)).astype(np.float32)
    mask = np.zeros(SHAPE, np.uint8)
    mask[1:4, 14:22, 14:22] = 1
    mask[8:11, 20:26, 10:16] = 1
    hu[mask > 0] += 80
    return hu, mask, Geometry.from_spacing(SHAPE, SPACING)
