"""The npe2 reader and writer functions, called directly (no viewer)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from io_helpers import (
    ORIENTATIONS,
    index_to_lps,
    plain_read,
    plain_read_itk,
    voxel_ids,
    write_itk,
    write_nifti,
)

from napari_nstseg._reader import SOURCE_KEY, get_reader, read_layers
from napari_nstseg._writer import write_labels
from napari_nstseg.io import (
    METADATA_KEY,
    CTReadError,
    CTReadWarning,
    MaskWriteError,
    geometry_from_metadata,
    read_ct,
    write_mask,
)
from napari_nstseg.windows import contrast_limits


@pytest.fixture
def ct_path(tmp_path):
    return write_nifti(tmp_path / "abdomen.nii.gz", voxel_ids(), index_to_lps(ORIENTATIONS["ras"]))


@pytest.mark.parametrize(
    "name", ["a.nii", "a.nii.gz", "A.NII.GZ", "a.mha", "a.mhd", "a.nrrd", "a.nhdr"]
)
def test_get_reader_claims_the_formats_it_reads(tmp_path, name):
    assert callable(get_reader(str(tmp_path / name)))


@pytest.mark.parametrize("name", ["a.png", "a.tif", "a.zarr", "a.txt", "a.gz"])
def test_get_reader_declines_other_files(tmp_path, name):
    assert get_reader(str(tmp_path / name)) is None


def test_get_reader_declines_stacks_and_plain_folders(tmp_path, ct_path):
    assert get_reader([str(ct_path), str(ct_path)]) is None
    assert callable(get_reader([str(ct_path)]))
    assert get_reader(str(tmp_path / "empty_folder")) is None


def test_ct_opens_as_an_image_layer_with_geometry(ct_path):
    reader = get_reader(str(ct_path))
    [(data, kwargs, layer_type)] = reader(str(ct_path))
    volume = read_ct(ct_path)

    assert layer_type == "image"
    np.testing.assert_array_equal(data, volume.hu)
    assert kwargs["name"] == "abdomen"
    assert kwargs["scale"] == pytest.approx(volume.spacing)
    assert kwargs["translate"] == pytest.approx(volume.geometry.translate)
    assert kwargs["contrast_limits"] == contrast_limits("abdomen") == (-160.0, 240.0)
    assert kwargs["colormap"] == "gray"
    assert kwargs["metadata"][SOURCE_KEY] == str(ct_path)
    assert geometry_from_metadata(kwargs["metadata"]) == volume.geometry
    json.dumps(kwargs["metadata"])  # plain data: napari can copy and save it


def test_label_map_opens_as_a_labels_layer(tmp_path):
    labels = np.zeros((7, 6, 5), np.uint8)
    labels[2:4, 1:3, 1:4] = 1
    labels[5, 5, 4] = 7
    path = write_itk(tmp_path / "organs.nrrd", labels, index_to_lps(np.eye(3)))
    [(data, kwargs, layer_type)] = get_reader(str(path))(str(path))
    assert layer_type == "labels"
    assert data.dtype == np.uint8
    assert sorted(np.unique(data)) == [0, 1, 7]
    assert data[4, 5, 5] == 7  # LPS file: display (z, y, x) = (k, j, i)
    assert METADATA_KEY in kwargs["metadata"]
    assert "contrast_limits" not in kwargs


def test_integer_ct_with_many_values_stays_an_image(tmp_path):
    ct = (voxel_ids() + 100).astype(np.uint16)  # non-negative ints, but 210 distinct values
    path = write_nifti(tmp_path / "ct.nii.gz", ct, index_to_lps(np.eye(3)))
    [(_, _, layer_type)] = get_reader(str(path))(str(path))
    assert layer_type == "image"


def test_reader_error_is_one_clear_sentence(tmp_path):
    path = tmp_path / "scan.nii.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00broken")
    with pytest.raises(CTReadError) as info:
        get_reader(str(path))(str(path))
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_reader_warnings_reach_the_user(tmp_path):
    data = voxel_ids().astype(np.float32)
    data[0, 0, 0] = np.nan
    path = write_itk(tmp_path / "nan.mha", data, index_to_lps(np.eye(3)))
    with pytest.warns(CTReadWarning, match="NaN"):
        get_reader(str(path))(str(path))


@pytest.mark.parametrize("orientation", ["ras", "permuted", "oblique"])
@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
def test_write_labels_puts_the_mask_on_the_source_grid(tmp_path, orientation, suffix):
    m = index_to_lps(ORIENTATIONS[orientation])
    source = write_nifti(tmp_path / "scan.nii.gz", voxel_ids(), m)
    [(hu, kwargs, _)] = get_reader(str(source))(str(source))
    labels = np.zeros(hu.shape, np.int32)
    labels[hu == 17] = 3  # one voxel, found by its value
    meta = {**kwargs, "name": "tumour"}
    [written] = write_labels(str(tmp_path / f"tumour{suffix}"), labels, meta)

    mask_ijk, m_mask = plain_read(written) if suffix == ".nii.gz" else plain_read_itk(written)
    np.testing.assert_allclose(m_mask, m, atol=1e-4)
    expected = np.where(voxel_ids() == 17, 3, 0)
    np.testing.assert_array_equal(mask_ijk, expected)


def test_write_labels_without_geometry_uses_scale_and_translate(tmp_path):
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[1, 2, 3] = 1
    meta = {"scale": (2.5, 0.8, 0.6), "translate": (10.0, -20.0, 30.0), "metadata": {}}
    [written] = write_labels(str(tmp_path / "drawn.nrrd"), labels, meta)
    image = sitk.ReadImage(written)
    assert image.GetSpacing() == pytest.approx((0.6, 0.8, 2.5))
    assert image.GetOrigin() == pytest.approx((30.0, -20.0, 10.0))
    assert np.array_equal(sitk.GetArrayFromImage(image), labels)
    # Opening it again gives the same napari placement.
    [(data, kwargs, layer_type)] = get_reader(written)(written)
    assert layer_type == "labels"
    assert kwargs["scale"] == pytest.approx(meta["scale"])
    assert kwargs["translate"] == pytest.approx(meta["translate"])
    np.testing.assert_array_equal(data, labels)


def test_write_labels_adds_a_suffix_when_none_is_given(tmp_path, ct_path):
    [(hu, kwargs, _)] = get_reader(str(ct_path))(str(ct_path))
    [written] = write_labels(str(tmp_path / "mask"), np.zeros(hu.shape, np.uint8), kwargs)
    assert written.endswith("mask.nii.gz")
    assert nib.load(written).shape == voxel_ids().shape


def test_write_labels_refuses_a_mask_of_another_shape(tmp_path, ct_path):
    [(hu, kwargs, _)] = get_reader(str(ct_path))(str(ct_path))
    target = tmp_path / "mask.nii.gz"
    with pytest.raises(MaskWriteError, match="does not match|shape") as info:
        write_labels(str(target), np.zeros((2, 2, 2), np.uint8), kwargs)
    assert str(target) in str(info.value)
    assert not target.exists()


def test_write_labels_refuses_2d_layers_without_geometry(tmp_path):
    with pytest.raises(MaskWriteError, match="2-D"):
        write_labels(str(tmp_path / "m.nii.gz"), np.zeros((4, 4), np.uint8), {"metadata": {}})


def test_as_labels_forces_the_layer_type(tmp_path, ct_path):
    [(data, _, layer_type)] = get_reader(str(ct_path))(str(ct_path))
    assert layer_type == "image"
    labels = (data > 0).astype(np.uint8)
    mask_path = write_mask(tmp_path / "lesion.nii.gz", labels, read_ct(ct_path).geometry)
    [(mask, kwargs, layer_type)] = read_layers(mask_path, as_labels=True)
    assert layer_type == "labels"
    np.testing.assert_array_equal(mask, labels)
    [(_, _, layer_type)] = read_layers(mask_path, as_labels=False)
    assert layer_type == "image"
    with pytest.raises(CTReadError, match="non-integer"):
        read_layers(write_itk(tmp_path / "p.mha", np.full((3, 3, 3), 0.5), np.eye(4)), True)
