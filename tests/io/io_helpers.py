"""Synthetic scans in every orientation, written by plain nibabel and plain SimpleITK.

(A plain module imported by name, since tests/ has no __init__.py: an __init__.py in tests/io
alone would make a package called ``io`` that shadows the standard library.)
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
SPACING = (0.7, 0.9, 2.5)  # along source index axes i, j, k
SHAPE = (7, 6, 5)  # i, j, k


def _rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [x for x in range(3) if x != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def index_to_lps(directions: np.ndarray, origin=(-12.5, 30.25, -101.0)) -> np.ndarray:
    """4x4 voxel index -> LPS mm for unit direction columns and the test spacing."""
    m = np.eye(4)
    m[:3, :3] = np.asarray(directions, dtype=float) @ np.diag(SPACING)
    m[:3, 3] = origin
    return m


# Direction columns (LPS) of the source index axes i, j, k for each orientation under test.
ORIENTATIONS = {
    # nibabel's favourite: i towards R, j towards A, k towards S.
    "ras": np.diag([-1.0, -1.0, 1.0]),
    # DICOM / ITK: i towards L, j towards P, k towards S.
    "lps": np.eye(3),
    # slices stored superior first and columns right-to-left reversed.
    "flipped": np.diag([-1.0, 1.0, -1.0]),
    # a sagittal acquisition: i towards S, j towards A, k towards L.
    "permuted": np.array([[0.0, 0, 1], [0, -1, 0], [1, 0, 0]]),
    # tilted gantry on top of a permutation.
    "oblique": _rotation(0, 17.0)
    @ _rotation(2, -9.0)
    @ np.array([[0.0, 1, 0], [0, 0, 1], [1, 0, 0]]),
}


def voxel_ids(shape=SHAPE) -> np.ndarray:
    """A source array whose every voxel holds its own id (unique HU-like values)."""
    return (np.arange(int(np.prod(shape)), dtype=np.int16) - 100).reshape(shape)


def write_nifti(path: Path, data_ijk: np.ndarray, m_lps: np.ndarray, qcode=1, scode=2) -> Path:
    """Write with plain nibabel, qform and sform both set (different codes on purpose)."""
    affine = RAS_TO_LPS @ m_lps
    img = nib.Nifti1Image(data_ijk, affine)
    img.set_qform(affine, code=qcode)
    img.set_sform(affine, code=scode)
    nib.save(img, str(path))
    return path


def write_itk(path: Path, data_ijk: np.ndarray, m_lps: np.ndarray) -> Path:
    """Write with plain SimpleITK (origin, spacing, direction)."""
    spacing = np.linalg.norm(m_lps[:3, :3], axis=0)
    img = sitk.GetImageFromArray(np.ascontiguousarray(data_ijk.T))
    img.SetSpacing(spacing.tolist())
    img.SetOrigin(m_lps[:3, 3].tolist())
    img.SetDirection((m_lps[:3, :3] / spacing).ravel().tolist())
    sitk.WriteImage(img, str(path))
    return path


def plain_read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(array in index order i, j, k; index -> LPS matrix) with nibabel or SimpleITK alone."""
    if str(path).endswith((".nii", ".nii.gz")):
        img = nib.load(str(path))
        return np.asanyarray(img.dataobj), RAS_TO_LPS @ img.affine
    return plain_read_itk(path)


def plain_read_itk(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = sitk.ReadImage(str(path))
    m = np.eye(4)
    m[:3, :3] = np.asarray(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing())
    m[:3, 3] = img.GetOrigin()
    return sitk.GetArrayFromImage(img).T, m


def write_dicom_series(
    folder: Path,
    hu_kji: np.ndarray,
    spacing=(0.8, 0.7, 2.0),
    origin=(-40.0, -30.0, 100.0),
    series_uid="1.2.826.0.1.3680043.2.1125.1.1",
    slope=1.0,
    intercept=-1024.0,
) -> list[Path]:
    """One CT slice per file with the tags scanners write (IPP, IOP, UIDs, rescale)."""
    folder.mkdir(parents=True, exist_ok=True)
    volume = sitk.GetImageFromArray(hu_kji.astype(np.int16))
    volume.SetSpacing(spacing)
    volume.SetOrigin(origin)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    paths = []
    for k in range(hu_kji.shape[0]):
        image = volume[:, :, k]
        position = volume.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series_uid}.{k + 1}",
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0018|0050": f"{spacing[2]:g}",
            "0028|1052": f"{intercept:g}",
            "0028|1053": f"{slope:g}",
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        path = folder / f"{series_uid[-3:]}_{k:03d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(image)
        paths.append(path)
    return paths


def phantom_hu_kji() -> np.ndarray:
    """A small CT-like volume (k, j, i) with air, soft tissue and a bright marker."""
    rng = np.random.default_rng(0)
    hu = rng.integers(-200, 200, size=(6, 9, 8)).astype(np.int16) * 2
    hu[:, 0, :] = -1000
    hu[2, 4, 5] = 1500
    return hu
