"""A mask painted on the display array lands on the same physical points of the source scan."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from io_helpers import (
    ORIENTATIONS,
    RAS_TO_LPS,
    SHAPE,
    index_to_lps,
    plain_read,
    plain_read_itk,
    voxel_ids,
    write_itk,
    write_nifti,
)

from napari_nstseg.io import CTReadError, read_ct, read_mask, write_mask, write_volume

SOURCE_FORMATS = {
    "nibabel-nii.gz": ("scan.nii.gz", write_nifti),
    "sitk-mha": ("scan.mha", write_itk),
    "sitk-nrrd": ("scan.nrrd", write_itk),
}
MASK_SUFFIXES = (".nii.gz", ".mha", ".nrrd")


# Label painted on each source id: random, so any misplaced flip or swap changes the pattern.
_LABELS = np.random.default_rng(7).integers(0, 6, size=int(np.prod(SHAPE)) + 100).astype(np.uint8)


def label_of(ids: np.ndarray) -> np.ndarray:
    """The label the test paints on a voxel, as a function of its source id (0 = unpainted)."""
    return _LABELS[np.asarray(ids).astype(np.int64) + 100]


def world_of_display(hu: np.ndarray, ids: np.ndarray, m_file: np.ndarray) -> np.ndarray:
    """LPS point of every display voxel, found through its id in the file and the file affine."""
    where = np.empty((ids.size, 3))
    where[(ids.ravel() + 100)] = np.indices(ids.shape).reshape(3, -1).T
    idx = where[hu.astype(np.int64).ravel() + 100].T
    world = m_file[:3, :3] @ idx + m_file[:3, 3:4]
    return world.reshape((3, *hu.shape))


def source_ids_at(mask_m: np.ndarray, mask_shape, src_m: np.ndarray, src_ids: np.ndarray):
    """For every voxel of a written mask, the source id at the same LPS point (via the affines)."""
    idx = np.indices(mask_shape).reshape(3, -1)
    world = mask_m @ np.vstack([idx, np.ones(idx.shape[1])])
    src_idx = np.linalg.inv(src_m) @ world
    rounded = np.rint(src_idx[:3]).astype(int)
    # Every mask voxel centre must sit exactly on a source voxel centre.
    assert np.abs(src_idx[:3] - rounded).max() < 1e-3
    return src_ids[tuple(rounded)].reshape(mask_shape)


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
@pytest.mark.parametrize("source_format", list(SOURCE_FORMATS))
@pytest.mark.parametrize("mask_suffix", MASK_SUFFIXES)
def test_painted_voxels_land_on_the_same_physical_points(
    tmp_path, orientation, source_format, mask_suffix
):
    name, writer = SOURCE_FORMATS[source_format]
    m_src = index_to_lps(ORIENTATIONS[orientation])
    ids = voxel_ids()
    source = writer(tmp_path / name, ids, m_src)

    volume = read_ct(source)
    # The display array is the source voxels, only permuted and flipped: every id once.
    assert volume.hu.shape == tuple(SHAPE[a] for a in volume.geometry.display_axes)
    assert np.array_equal(np.sort(volume.hu.ravel()), np.sort(ids.ravel().astype(np.float32)))

    # Radiological display: along axes 0, 1, 2 the anatomy moves towards S, P and L (the
    # dominant component for oblique scans), whatever the file's own voxel order.
    _, m_file = plain_read(source)
    world = world_of_display(volume.hu, ids, m_file)
    for axis, lps in ((0, 2), (1, 1), (2, 0)):
        step = np.diff(world, axis=axis + 1)
        assert np.all(step[lps] > 0.5 * np.abs(step).max(axis=0))

    # Paint in display space, driven by what the user sees (the HU value = the source id).
    painted = label_of(volume.hu)
    assert painted.any()
    out = write_mask(tmp_path / f"mask{mask_suffix}", painted, volume.geometry)

    # Reload with plain libraries; compare in world coordinates through the affines.
    reloads = [plain_read_itk(out)]
    if mask_suffix == ".nii.gz":
        reloads.append(plain_read(out))
    for mask_ijk, m_mask in reloads:
        assert mask_ijk.shape == SHAPE
        np.testing.assert_allclose(m_mask, m_file, atol=1e-4)
        expected = label_of(source_ids_at(m_mask, mask_ijk.shape, m_file, ids))
        assert np.array_equal(mask_ijk, expected)
        assert mask_ijk.dtype == np.uint8


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_nifti_mask_keeps_the_scans_header_forms(tmp_path, orientation):
    m_src = index_to_lps(ORIENTATIONS[orientation])
    source = write_nifti(tmp_path / "scan.nii.gz", voxel_ids(), m_src, qcode=1, scode=4)
    volume = read_ct(source)
    out = write_mask(tmp_path / "mask.nii", np.ones(volume.shape, np.uint8), volume.geometry)

    src_hdr, out_hdr = nib.load(str(source)).header, nib.load(str(out)).header
    assert out_hdr.get_qform(coded=True)[1] == 1
    assert out_hdr.get_sform(coded=True)[1] == 4
    np.testing.assert_allclose(out_hdr.get_qform(), src_hdr.get_qform(), atol=1e-5)
    np.testing.assert_array_equal(out_hdr.get_sform(), src_hdr.get_sform())
    np.testing.assert_allclose(out_hdr.get_zooms(), src_hdr.get_zooms(), atol=1e-6)


def test_sitk_mask_has_the_scans_origin_spacing_direction(tmp_path):
    m_src = index_to_lps(ORIENTATIONS["oblique"])
    source = write_itk(tmp_path / "scan.mha", voxel_ids(), m_src)
    volume = read_ct(source)
    out = write_mask(tmp_path / "mask.nrrd", np.zeros(volume.shape, np.uint8), volume.geometry)
    a, b = sitk.ReadImage(str(source)), sitk.ReadImage(str(out))
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-9)


def test_analyze_style_nifti_without_codes_round_trips(tmp_path):
    """qform and sform codes 0: nibabel falls back to the voxel sizes; so must the mask."""
    data = voxel_ids()
    img = nib.Nifti1Image(data, None)
    img.header.set_zooms((0.7, 0.9, 2.5))
    img.set_qform(None, code=0)
    img.set_sform(None, code=0)
    nib.save(img, str(tmp_path / "old.nii"))
    volume = read_ct(tmp_path / "old.nii")
    out = write_mask(tmp_path / "mask.nii.gz", label_of(volume.hu), volume.geometry)
    reloaded = nib.load(str(out))
    source = nib.load(str(tmp_path / "old.nii"))
    np.testing.assert_allclose(reloaded.affine, source.affine, atol=1e-6)
    assert np.array_equal(np.asanyarray(reloaded.dataobj), label_of(data))


def test_float_map_round_trips_with_write_volume(tmp_path):
    m_src = index_to_lps(ORIENTATIONS["permuted"])
    source = write_nifti(tmp_path / "scan.nii.gz", voxel_ids(), m_src)
    volume = read_ct(source)
    prob = (volume.hu - volume.hu.min()) / np.ptp(volume.hu)
    out = write_volume(tmp_path / "prob.nii.gz", prob, volume.geometry)
    back = read_ct(out)
    np.testing.assert_allclose(back.hu, prob.astype(np.float32), rtol=0, atol=1e-7)
    np.testing.assert_allclose(back.geometry.display_to_lps, volume.geometry.display_to_lps)
    assert nib.load(str(out)).get_data_dtype() == np.float32


def test_real_ras_scan_mask_overlays_in_nibabel_and_sitk(tmp_path):
    """A real TotalSegmentator header (RAS, sform code 2, qform code 0) round-trips."""
    # The bundled sample keeps TotalSegmentator's example_ct_sm header unchanged.
    path = str(Path(__file__).parents[2] / "sample_data" / "sample_ct.nii.gz")
    volume = read_ct(path)
    painted = (volume.hu > 100).astype(np.uint8)
    out = write_mask(tmp_path / "mask.nii.gz", painted, volume.geometry)
    src, msk = nib.load(path), nib.load(str(out))
    np.testing.assert_array_equal(msk.affine, src.affine)
    assert msk.header.get_sform(coded=True)[1] == src.header.get_sform(coded=True)[1]
    assert msk.header.get_qform(coded=True)[1] == src.header.get_qform(coded=True)[1]
    assert np.array_equal(np.asanyarray(msk.dataobj) > 0, np.asanyarray(src.dataobj) > 100)
    itk_mask, itk_src = sitk.ReadImage(str(out)), sitk.ReadImage(path)
    np.testing.assert_allclose(itk_mask.GetOrigin(), itk_src.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(itk_mask.GetDirection(), itk_src.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(RAS_TO_LPS[:3, :3] @ src.affine[:3, 3], itk_src.GetOrigin())


def test_read_mask_gives_back_the_painted_labels_on_the_scan_grid(tmp_path):
    m_src = index_to_lps(ORIENTATIONS["oblique"])
    volume = read_ct(write_nifti(tmp_path / "scan.nii.gz", voxel_ids(), m_src))
    painted = label_of(volume.hu)
    for suffix in MASK_SUFFIXES:
        out = write_mask(tmp_path / f"mask{suffix}", painted, volume.geometry)
        back = read_mask(out, like=volume.geometry)
        assert back.dtype == np.uint8
        np.testing.assert_array_equal(back, painted)


def test_read_mask_refuses_a_mask_from_another_grid(tmp_path):
    volume = read_ct(write_nifti(tmp_path / "scan.nii.gz", voxel_ids(), index_to_lps(np.eye(3))))
    shifted = index_to_lps(np.eye(3), origin=(0.0, 0.0, 0.0))
    other = write_itk(tmp_path / "other.nrrd", np.zeros(SHAPE, np.uint8), shifted)
    with pytest.raises(CTReadError, match="does not lie on the scan grid"):
        read_mask(other, like=volume.geometry)
    floats = write_itk(tmp_path / "prob.mha", np.full(SHAPE, 0.5, np.float32), shifted)
    with pytest.raises(CTReadError, match="non-integer"):
        read_mask(floats)


def test_nifti_scl_slope_and_inter_give_hu(tmp_path):
    """Scanners' NIfTI often stores unsigned raw values with slope/intercept: read HU, not raw."""
    hu = (voxel_ids() + 100).astype(np.float32) * 2 - 1000
    raw = ((hu + 1024) / 2).astype(np.uint16)
    img = nib.Nifti1Image(raw, RAS_TO_LPS @ index_to_lps(ORIENTATIONS["lps"]))
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, str(tmp_path / "scaled.nii.gz"))
    volume = read_ct(tmp_path / "scaled.nii.gz")
    np.testing.assert_array_equal(np.sort(volume.hu.ravel()), np.sort(hu.ravel()))
    assert volume.hu.min() == hu.min()
