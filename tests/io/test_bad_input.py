"""Bad files and failed saves give one clear sentence naming the file, and lose nothing."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from io_helpers import ORIENTATIONS, index_to_lps, voxel_ids, write_itk, write_nifti

from napari_nstseg.io import CTReadError, CTReadWarning, MaskWriteError, read_ct, write_mask
from napari_nstseg.io import writers as writers_module


def assert_one_sentence(error: Exception, path) -> None:
    message = str(error)
    assert str(path) in message
    assert "\n" not in message
    assert message.endswith(".")
    assert message.count(". ") == 0, message  # one sentence: no full stop before the end


@pytest.fixture
def scan(tmp_path):
    return write_nifti(tmp_path / "scan.nii.gz", voxel_ids(), index_to_lps(np.eye(3)))


# -- reading -------------------------------------------------------------------------------------
def test_truncated_nii_gz(tmp_path, scan):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(scan.read_bytes()[: scan.stat().st_size // 2])
    with pytest.raises(CTReadError, match="damaged or truncated") as info:
        read_ct(broken)
    assert_one_sentence(info.value, broken)
    broken.write_bytes(scan.read_bytes()[:-30])  # header intact, voxel data cut short
    with pytest.raises(CTReadError, match="damaged or truncated") as info:
        read_ct(broken)
    assert_one_sentence(info.value, broken)


def test_truncated_uncompressed_nii(tmp_path):
    path = write_nifti(tmp_path / "scan.nii", voxel_ids(), index_to_lps(np.eye(3)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    with pytest.raises(CTReadError) as info:
        read_ct(path)
    assert_one_sentence(info.value, path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.nii.gz"
    path.write_bytes(b"")
    with pytest.raises(CTReadError, match="empty") as info:
        read_ct(path)
    assert_one_sentence(info.value, path)


@pytest.mark.parametrize("name", ["notes.nii", "notes.mha", "notes.nrrd"])
def test_text_file_with_an_image_name(tmp_path, name):
    path = tmp_path / name
    path.write_text("patient list\nnot an image at all, just some text\n" * 20)
    with pytest.raises(CTReadError) as info:
        read_ct(path)
    assert_one_sentence(info.value, path)


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(CTReadError, match="no such file") as info:
        read_ct(tmp_path / "nowhere.nii.gz")
    assert_one_sentence(info.value, tmp_path / "nowhere.nii.gz")
    png = tmp_path / "photo.png"
    png.write_bytes(b"\x89PNG")
    with pytest.raises(CTReadError, match="not supported") as info:
        read_ct(png)
    assert_one_sentence(info.value, png)


def write_4d(path, data_ijkt):
    """A 4-D image (i, j, k, t) with nibabel or as a true 4-D SimpleITK image."""
    if str(path).endswith(".nii.gz"):
        nib.save(nib.Nifti1Image(data_ijkt, np.diag([-0.7, -0.9, 2.5, 1.0])), str(path))
        return
    volumes = [
        sitk.GetImageFromArray(np.ascontiguousarray(data_ijkt[..., t].T))
        for t in range(data_ijkt.shape[3])
    ]
    sitk.WriteImage(sitk.JoinSeries(volumes), str(path))


@pytest.mark.parametrize("suffix", ["nii.gz", "mha"])
def test_4d_with_one_volume_is_squeezed(tmp_path, suffix):
    data = voxel_ids()[..., None]
    path = tmp_path / f"one.{suffix}"
    write_4d(path, data)
    volume = read_ct(path)
    assert volume.shape == (5, 6, 7)
    np.testing.assert_array_equal(np.sort(volume.hu.ravel()), np.sort(data.ravel()))


@pytest.mark.parametrize("suffix", ["nii.gz", "mha"])
def test_4d_with_several_volumes_is_refused(tmp_path, suffix):
    data = np.zeros((7, 6, 5, 3), dtype=np.int16)
    path = tmp_path / f"series4d.{suffix}"
    write_4d(path, data)
    with pytest.raises(CTReadError, match="3 volumes") as info:
        read_ct(path)
    assert_one_sentence(info.value, path)


@pytest.mark.parametrize("suffix", ["nii.gz", "mha"])
def test_2d_image_is_refused(tmp_path, suffix):
    data = np.zeros((7, 6), dtype=np.int16)
    path = tmp_path / f"slice.{suffix}"
    if suffix == "nii.gz":
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    else:
        sitk.WriteImage(sitk.GetImageFromArray(data), str(path))
    with pytest.raises(CTReadError, match="2-D") as info:
        read_ct(path)
    assert_one_sentence(info.value, path)


def test_colour_image_is_refused(tmp_path):
    rgb = sitk.Image([4, 5, 3], sitk.sitkVectorUInt8, 3)
    path = tmp_path / "rgb.mha"
    sitk.WriteImage(rgb, str(path))
    with pytest.raises(CTReadError, match="3 values per voxel") as info:
        read_ct(path)
    assert_one_sentence(info.value, path)


def test_degenerate_affine_is_refused(tmp_path):
    path = tmp_path / "flat.nii.gz"
    img = nib.Nifti1Image(voxel_ids(), None)
    # nibabel refuses to set such a matrix, so write the header fields as a broken tool would.
    img.header["sform_code"], img.header["qform_code"] = 1, 0
    img.header["srow_x"], img.header["srow_y"], img.header["srow_z"] = np.eye(4)[:3] * [1, 1, 0, 1]
    nib.save(img, str(path))
    with pytest.raises(CTReadError, match="degenerate") as info:
        read_ct(path)
    assert_one_sentence(info.value, path)


def test_nan_and_inf_voxels_are_replaced_with_a_warning(tmp_path):
    data = voxel_ids().astype(np.float32)
    data[1, 2, 3] = np.nan
    data[2, 2, 2] = np.inf
    data[3, 1, 0] = -np.inf
    path = write_itk(tmp_path / "nan.mha", data, index_to_lps(np.eye(3)))
    with pytest.warns(CTReadWarning, match="3 NaN or infinite voxels were replaced") as record:
        volume = read_ct(path)
    assert str(path) in str(record[0].message)
    assert np.isfinite(volume.hu).all()
    finite = data[np.isfinite(data)]
    # Display order is (k, j, i) here (an LPS file): check each replaced voxel's new value.
    assert volume.hu[3, 2, 1] == finite.min()
    assert volume.hu[2, 2, 2] == finite.max()
    assert volume.hu[0, 1, 3] == finite.min()
    assert volume.warnings and "NaN" in volume.warnings[0]


def test_all_nan_volume_is_refused(tmp_path):
    path = write_itk(tmp_path / "nan.nrrd", np.full((4, 4, 4), np.nan, np.float32), np.eye(4))
    with pytest.raises(CTReadError, match="NaN") as info:
        read_ct(path)
    assert_one_sentence(info.value, path)


# -- saving --------------------------------------------------------------------------------------
@pytest.fixture
def volume(scan):
    return read_ct(scan)


@pytest.fixture
def existing(tmp_path):
    path = tmp_path / "mask.nii.gz"
    path.write_bytes(b"an earlier mask the user must not lose")
    return path


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def test_mask_of_wrong_shape_is_refused_and_the_old_file_kept(volume, existing):
    before = existing.read_bytes()
    wrong = np.zeros((volume.shape[0] + 1, *volume.shape[1:]), np.uint8)
    with pytest.raises(MaskWriteError, match=r"shape \(6, 6, 7\).*\(5, 6, 7\)") as info:
        write_mask(existing, wrong, volume.geometry)
    assert_one_sentence(info.value, existing)
    assert existing.read_bytes() == before


def test_non_integer_mask_is_refused(volume, tmp_path):
    with pytest.raises(MaskWriteError, match="non-integer") as info:
        write_mask(tmp_path / "m.nii.gz", np.full(volume.shape, 0.5), volume.geometry)
    assert_one_sentence(info.value, tmp_path / "m.nii.gz")


def test_save_into_a_missing_folder(volume, tmp_path):
    target = tmp_path / "no" / "such" / "mask.nii.gz"
    with pytest.raises(MaskWriteError, match="does not exist") as info:
        write_mask(target, np.zeros(volume.shape, np.uint8), volume.geometry)
    assert_one_sentence(info.value, target)
    assert isinstance(info.value, OSError)


def test_save_under_a_regular_file(volume, tmp_path):
    blocker = tmp_path / "report.txt"
    blocker.write_text("a file, not a folder")
    target = blocker / "mask.nii.gz"
    with pytest.raises(MaskWriteError, match="is a file, not a folder") as info:
        write_mask(target, np.zeros(volume.shape, np.uint8), volume.geometry)
    assert_one_sentence(info.value, target)


def test_save_into_a_read_only_folder(volume, tmp_path):
    """Refused by its mode bits, so the test means the same when CI runs as root."""
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(MaskWriteError, match="not writable") as info:
            write_mask(folder / "mask.nii.gz", np.zeros(volume.shape, np.uint8), volume.geometry)
        assert_one_sentence(info.value, folder / "mask.nii.gz")
    finally:
        folder.chmod(0o700)


@pytest.mark.parametrize("suffix", [".mhd", ".png"])
def test_unsupported_save_formats(volume, tmp_path, suffix):
    with pytest.raises(MaskWriteError) as info:
        write_mask(tmp_path / f"m{suffix}", np.zeros(volume.shape, np.uint8), volume.geometry)
    assert_one_sentence(info.value, tmp_path / f"m{suffix}")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_crash_during_save_leaves_the_old_file_byte_identical(
    volume, tmp_path, monkeypatch, suffix
):
    target = tmp_path / f"mask{suffix}"
    write_mask(target, np.ones(volume.shape, np.uint8), volume.geometry)
    before = target.read_bytes()

    real_write = writers_module._write_array

    def write_half_then_fail(tmp, *args):
        real_write(tmp, *args)
        with open(tmp, "r+b") as f:  # a half-written file, then the disk gives up
            f.truncate(os.path.getsize(tmp) // 2)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writers_module, "_write_array", write_half_then_fail)
    with pytest.raises(MaskWriteError, match="No space left on device") as info:
        write_mask(target, np.zeros(volume.shape, np.uint8), volume.geometry)
    assert_one_sentence(info.value, target)
    assert target.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_successful_save_replaces_the_file_and_keeps_its_permissions(volume, existing):
    existing.chmod(0o640)
    write_mask(existing, np.ones(volume.shape, np.uint8), volume.geometry)
    assert np.asanyarray(nib.load(str(existing)).dataobj).all()
    assert existing.stat().st_mode & 0o777 == 0o640
    assert _leftovers(existing.parent) == []


def test_oblique_scan_saved_as_nrrd_keeps_the_tilt(tmp_path):
    m = index_to_lps(ORIENTATIONS["oblique"])
    volume = read_ct(write_nifti(tmp_path / "scan.nii.gz", voxel_ids(), m))
    out = write_mask(tmp_path / "m.nrrd", np.ones(volume.shape, np.uint8), volume.geometry)
    direction = np.asarray(sitk.ReadImage(str(out)).GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction, m[:3, :3] / np.linalg.norm(m[:3, :3], axis=0), atol=1e-5)


# -- files that are something else -------------------------------------------------------------
PNG_HEAD = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("photo.nii.gz", "not a NIfTI file: it starts like a PNG image"),
        ("photo.nii", "not a NIfTI file: it starts like a PNG image"),
        ("photo.mha", "not a MetaImage file: it starts like a PNG image"),
        ("photo.nrrd", "not an NRRD file: it starts like a PNG image"),
    ],
)
def test_a_renamed_png_is_called_a_png(tmp_path, name, expected):
    path = tmp_path / name
    path.write_bytes(PNG_HEAD)
    with pytest.raises(CTReadError, match=expected) as info:
        read_ct(path)
    assert_one_sentence(info.value, path)


def test_a_gzipped_nrrd_named_nii_gz_says_what_it_holds(tmp_path):
    import gzip

    path = tmp_path / "scan.nii.gz"
    path.write_bytes(gzip.compress(b"NRRD0004\ntype: short\n" + bytes(300)))
    with pytest.raises(CTReadError, match="gzip-compressed file holding an NRRD image") as info:
        read_ct(path)
    assert_one_sentence(info.value, path)


# -- saving over a file the user made read-only --------------------------------------------------
def test_a_read_only_mask_file_is_not_replaced(volume, existing):
    """os.replace needs only the folder's permission: the writer checks the file's own mode
    bits (as root too, where os.access says yes to everything)."""
    before = existing.read_bytes()
    existing.chmod(0o444)
    try:
        with pytest.raises(MaskWriteError, match="read-only") as info:
            write_mask(existing, np.ones(volume.shape, np.uint8), volume.geometry)
        assert_one_sentence(info.value, existing)
        assert existing.read_bytes() == before
        assert existing.stat().st_mode & 0o777 == 0o444
        assert _leftovers(existing.parent) == []
    finally:
        existing.chmod(0o644)


def test_the_napari_writer_refuses_a_read_only_file_too(volume, existing):
    from napari_nstseg._writer import write_labels
    from napari_nstseg.io.volume import METADATA_KEY

    before = existing.read_bytes()
    existing.chmod(0o400)
    try:
        meta = {"metadata": {METADATA_KEY: volume.geometry.to_dict()}}
        with pytest.raises(MaskWriteError, match="read-only"):
            write_labels(str(existing), np.ones(volume.shape, np.uint8), meta)
        assert existing.read_bytes() == before
    finally:
        existing.chmod(0o644)
