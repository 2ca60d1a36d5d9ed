"""DICOM series folders: same volume as the NIfTI twin, several series, missing slices."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from io_helpers import phantom_hu_kji, write_dicom_series, write_nifti

from napari_nstseg._reader import get_reader
from napari_nstseg.io import CTReadWarning, read_ct, write_mask

SPACING = (0.8, 0.7, 2.0)  # x, y, z as DICOM PixelSpacing/slice gap give them
ORIGIN = (-40.0, -30.0, 100.0)


def nifti_twin(tmp_path, hu_kji):
    m = np.diag([*SPACING, 1.0])
    m[:3, 3] = ORIGIN
    return write_nifti(tmp_path / "twin.nii.gz", np.ascontiguousarray(hu_kji.T), m)


@pytest.mark.parametrize(("slope", "intercept"), [(1.0, -1024.0), (2.0, -1000.0)])
def test_series_opens_as_the_same_volume_as_its_nifti_twin(tmp_path, slope, intercept):
    hu = phantom_hu_kji()  # even values, so slope 2 stores them exactly
    write_dicom_series(tmp_path / "series", hu, SPACING, ORIGIN, slope=slope, intercept=intercept)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CTReadWarning)  # a clean series opens quietly
        dicom = read_ct(tmp_path / "series")
    twin = read_ct(nifti_twin(tmp_path, hu))

    np.testing.assert_array_equal(dicom.hu, twin.hu)
    assert dicom.hu.dtype == np.float32
    assert dicom.hu.max() == 1500 and dicom.hu.min() == -1000  # rescale applied: HU, not raw
    assert dicom.spacing == pytest.approx(twin.spacing, abs=1e-6)
    np.testing.assert_allclose(
        dicom.geometry.display_to_lps, twin.geometry.display_to_lps, atol=1e-4
    )
    assert dicom.geometry.source_format == "dicom"
    assert dicom.name == "series"


def test_a_single_file_of_a_series_opens_the_whole_series(tmp_path):
    files = write_dicom_series(tmp_path / "series", phantom_hu_kji(), SPACING, ORIGIN)
    volume = read_ct(files[3])
    assert volume.shape[0] == len(files)


def test_folder_with_two_series_opens_the_larger_and_says_so(tmp_path):
    folder = tmp_path / "mixed"
    big = phantom_hu_kji()
    write_dicom_series(folder, big, SPACING, ORIGIN, series_uid="1.2.3.4.100")
    write_dicom_series(folder, big[:3, :5, :4], SPACING, ORIGIN, series_uid="1.2.3.4.200")
    with pytest.warns(CTReadWarning, match=r"2 DICOM series; opened the largest \(6 slices"):
        volume = read_ct(folder)
    assert volume.shape == (6, 9, 8)
    assert any("1.2.3.4.100" in w for w in volume.warnings)


def test_series_with_a_missing_slice_warns_about_uneven_spacing(tmp_path):
    files = write_dicom_series(tmp_path / "gap", phantom_hu_kji(), SPACING, ORIGIN)
    files[2].unlink()
    with pytest.warns(CTReadWarning, match="slice spacing is uneven.*a slice may be missing"):
        volume = read_ct(tmp_path / "gap")
    assert volume.shape[0] == 5
    assert any("uneven" in w for w in volume.warnings)


def test_mask_saved_from_a_series_lands_on_its_grid(tmp_path):
    import SimpleITK as sitk

    write_dicom_series(tmp_path / "series", phantom_hu_kji(), SPACING, ORIGIN)
    volume = read_ct(tmp_path / "series")
    painted = (volume.hu == 1500).astype(np.uint8)
    out = write_mask(tmp_path / "mask.nrrd", painted, volume.geometry)
    mask = sitk.ReadImage(str(out))
    assert mask.GetSpacing() == pytest.approx(SPACING)
    assert mask.GetOrigin() == pytest.approx(ORIGIN)
    # The marker was written at (k, j, i) = (2, 4, 5) in the series.
    assert sitk.GetArrayFromImage(mask)[2, 4, 5] == 1
    assert sitk.GetArrayFromImage(mask).sum() == 1


def test_reader_claims_dicom_folders_only(tmp_path):
    write_dicom_series(tmp_path / "series", phantom_hu_kji(), SPACING, ORIGIN)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    assert get_reader(str(tmp_path / "series")) is not None
    assert get_reader(str(tmp_path / "notes")) is None
