"""Every file shows the radiological axial view: anterior at the top, patient right on the left."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from io_helpers import write_itk, write_nifti

from napari_nstseg.io import read_ct

SPACING = np.array([0.8, 0.6, 3.0])  # L, P, S
ORIGIN_LPS = np.array([-100.0, -80.0, 40.0])


def anatomy_lps() -> np.ndarray:
    """Phantom stored L-P-S (i towards left, j towards posterior, k towards superior).

    A bright marker sits in the anterior-right corner of the top slice; a dimmer one in the
    posterior-left corner of the bottom slice, so flips of any axis are visible.
    """
    data = np.zeros((7, 5, 4), dtype=np.int16)  # i (L), j (P), k (S)
    data[0, 0, 3] = 900  # right (low L), anterior (low P), superior (high S)
    data[6, 4, 0] = 300  # left, posterior, inferior
    data[3, 2, 1] = 50
    return data


def lps_affine() -> np.ndarray:
    m = np.diag([*SPACING, 1.0])
    m[:3, 3] = ORIGIN_LPS
    return m


def ras_twin() -> tuple[np.ndarray, np.ndarray]:
    """The same anatomy stored R-A-S, as most NIfTI tools write it: index axes i, j reversed."""
    data = anatomy_lps()[::-1, ::-1, :]
    n_i, n_j, _ = data.shape
    # The LPS point of RAS voxel (0, 0, k) is LPS voxel (n_i - 1, n_j - 1, k).
    m = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    m[:3, 3] = ORIGIN_LPS + SPACING * np.array([n_i - 1, n_j - 1, 0])
    return np.ascontiguousarray(data), m


@pytest.mark.parametrize("ras_format", ["nii.gz", "mha"])
@pytest.mark.parametrize("lps_format", ["nii.gz", "nrrd"])
def test_lps_and_ras_files_of_one_anatomy_display_identically(tmp_path, ras_format, lps_format):
    write = {"nii.gz": write_nifti, "mha": write_itk, "nrrd": write_itk}
    lps_path = write[lps_format](tmp_path / f"lps.{lps_format}", anatomy_lps(), lps_affine())
    ras_data, ras_m = ras_twin()
    ras_path = write[ras_format](tmp_path / f"ras.{ras_format}", ras_data, ras_m)

    lps, ras = read_ct(lps_path), read_ct(ras_path)
    assert np.array_equal(lps.hu, ras.hu)
    assert lps.hu.shape == (4, 5, 7)  # (z, y, x) = (S, P, L)
    # Top slice (most superior = last z): anterior at row 0, patient right at column 0.
    assert lps.hu[-1, 0, 0] == 900
    assert lps.hu[0, -1, -1] == 300
    assert lps.spacing == pytest.approx((3.0, 0.6, 0.8))
    assert ras.spacing == pytest.approx((3.0, 0.6, 0.8))
    np.testing.assert_allclose(lps.geometry.translate, ras.geometry.translate, atol=1e-4)
    # napari world coordinates are (S, P, L) mm: the marker's world point is its true place.
    marker_world = np.array(lps.geometry.translate) + np.array(lps.spacing) * (3, 0, 0)
    np.testing.assert_allclose(marker_world[::-1], ORIGIN_LPS + SPACING * (0, 0, 3), atol=1e-4)


def test_real_ras_and_lps_copies_of_a_scan_display_identically(tmp_path):
    # The bundled sample keeps TotalSegmentator's example_ct_sm header unchanged.
    path = Path(__file__).parents[2] / "sample_data" / "sample_ct.nii.gz"
    # SimpleITK re-stores the real RAS scan in L-P-S voxel order (a different array on disk).
    lps_copy = sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS")
    sitk.WriteImage(lps_copy, str(tmp_path / "lps.mha"))
    ras, lps = read_ct(path), read_ct(tmp_path / "lps.mha")
    assert ras.geometry.display_flips != lps.geometry.display_flips
    assert np.array_equal(ras.hu, lps.hu)
    np.testing.assert_allclose(ras.geometry.display_to_lps, lps.geometry.display_to_lps, atol=1e-3)


def test_napari_world_is_lps_mm_for_a_flipped_scan(tmp_path):
    """Display voxel -> napari world (translate + scale * index) equals the file's LPS point."""
    ras_data, ras_m = ras_twin()
    path = write_nifti(tmp_path / "ras.nii.gz", ras_data, ras_m)
    volume = read_ct(path)
    z, y, x = 2, 3, 4
    world_spl = np.array(volume.geometry.translate) + np.array(volume.spacing) * (z, y, x)
    # Find the same voxel in the file: its value identifies it after adding a unique ramp.
    ramp = np.arange(ras_data.size, dtype=np.int16).reshape(ras_data.shape)
    path2 = write_nifti(tmp_path / "ramp.nii.gz", ramp, ras_m)
    idx = np.argwhere(ramp == read_ct(path2).hu[z, y, x])[0]
    lps_point = ras_m[:3] @ np.append(idx, 1.0)  # ras_m maps the RAS-ordered voxels to LPS mm
    np.testing.assert_allclose(world_spl[::-1], lps_point, atol=1e-4)
