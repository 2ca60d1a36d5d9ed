"""Case folders as the real-tumour data come (CASE/ct.nii.gz + CASE/tumour.nii.gz), tiny, for
the tests that train or evaluate on them (tests/training, tests/recipes)."""

from pathlib import Path

import nibabel as nib
import numpy as np

SHAPE_ZYX = (6, 40, 40)


def write_case_folders(root: Path, n: int = 5, seed: int = 0) -> Path:
    """``n`` patients, each a folder with a soft-tissue CT and a faint disc labelled tumour."""
    rng = np.random.default_rng(seed)
    _, yy, xx = np.mgrid[: SHAPE_ZYX[0], : SHAPE_ZYX[1], : SHAPE_ZYX[2]]
    affine = np.diag([-1.0, -1.0, 3.0, 1.0])
    for i in range(n):
        case = root / f"STS_{i:03d}"
        case.mkdir(parents=True)
        hu = 40.0 + rng.normal(0, 8, SHAPE_ZYX)
        mask = np.zeros(SHAPE_ZYX, np.uint8)
        cy, cx = rng.uniform(12, 28, 2)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2) <= 36
        disc[[0, -1]] = False
        hu[disc] += 60
        mask[disc] = 1
        img = nib.Nifti1Image(np.round(hu).astype(np.int16).transpose(2, 1, 0), affine)
        nib.save(img, case / "ct.nii.gz")
        nib.save(nib.Nifti1Image(mask.transpose(2, 1, 0), affine), case / "tumour.nii.gz")
    return root
