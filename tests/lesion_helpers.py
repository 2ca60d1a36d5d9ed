"""Synthetic CT phantoms for the lesion-insertion tests (training/test_lesions.py,
training/test_online_lesions.py)."""

from __future__ import annotations

import nibabel as nib
import numpy as np

AIR, SOFT, BONE, FAT = 0, 1, 2, 3
SPACING = (2.5, 0.8, 0.8)  # anisotropic, as clinical CT: thick slices, fine in-plane
NOISE_HU = 10.0


def phantom(shape=(24, 80, 80), spacing=SPACING, seed=0, noise=NOISE_HU):
    """Body ellipse of soft tissue (40 HU) in air, with a bone disc and a fat pad; white noise."""
    nz, ny, nx = shape
    _, sy, sx = spacing
    yy, xx = np.mgrid[:ny, :nx].astype(float)
    yy = (yy - ny / 2) * sy
    xx = (xx - nx / 2) * sx
    body = (yy / (0.45 * ny * sy)) ** 2 + (xx / (0.47 * nx * sx)) ** 2 <= 1
    bone = (yy - 8) ** 2 + (xx + 8) ** 2 <= 6**2
    fat = body & (xx > 0.3 * nx * sx)
    cls2d = np.where(body, SOFT, AIR)
    cls2d[fat] = FAT
    cls2d[bone] = BONE
    classes = np.broadcast_to(cls2d, shape).copy()
    values = np.array([-1000.0, 40.0, 700.0, -100.0])
    rng = np.random.default_rng(seed)
    hu = values[classes] + rng.normal(0.0, noise, shape)
    return hu.astype(np.float32), classes


def save_int16(path, hu, affine) -> None:
    """A NIfTI file of HU rounded to int16, as scanners store them."""
    nib.save(nib.Nifti1Image(np.round(hu).astype(np.int16), affine), path)
