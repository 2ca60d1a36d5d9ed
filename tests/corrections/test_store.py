"""The corrections store: case folders `nstseg train` reads, one per scan, updated in place, with
the labelled slices recorded and honoured by training's case discovery."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_nstseg.corrections.store import (
    CT_NAME,
    LABEL_NAME,
    default_store,
    save_corrections,
    stored_cases,
)
from napari_nstseg.io.readers import read_ct, read_mask
from napari_nstseg.io.volume import Geometry
from napari_nstseg.io.writers import write_mask
from napari_nstseg.preprocessing import PreprocessConfig
from napari_nstseg.training.cases import CASE_RECORD_NAME, find_cases
from napari_nstseg.training.data import SamplingConfig, SliceDataset

SHAPE, SPACING = (10, 24, 28), (3.0, 1.5, 1.5)


def scan(seed: int = 0) -> tuple[np.ndarray, np.ndarray, Geometry]:
    rng = np.random.default_rng(seed)
    hu = np.round(rng.normal(40, 10, SHAPE)).astype(np.float32)
    mask = np.zeros(SHAPE, np.uint8)
    mask[2:5, 8:12, 8:12] = 1
    mask[7, 15:18, 15:18] = 1
    return hu, mask, Geometry.from_spacing(SHAPE, SPACING)


def test_saves_a_case_folder_training_reads_with_only_the_corrected_slices(tmp_path):
    hu, mask, geometry = scan()
    store = tmp_path / "store"
    saved = save_corrections(store, hu, mask, geometry, [3, 4, 8], name="patient scan.nii.gz")
    assert saved.created and saved.slices == [3, 4, 8]
    assert saved.folder.parent == store and saved.folder.name.startswith("patient_scan-")
    # The CT reads back voxel for voxel in display order; the label map holds only the slices.
    assert np.array_equal(read_ct(saved.folder / CT_NAME).hu, hu)
    labels = read_mask(saved.folder / LABEL_NAME)
    assert np.array_equal(labels[[3, 4, 8]], mask[[3, 4, 8]])
    assert not labels[[0, 1, 2, 5, 6, 7, 9]].any()  # unlabelled slices are not taught as empty
    record = json.loads((saved.folder / CASE_RECORD_NAME).read_text())
    assert record["annotated_slices"] == [3, 4, 8]
    assert len(record["scan"]["voxel_sha256"]) == 64

    (case,) = find_cases(store)
    assert case.slices == (3, 4, 8)
    sampling = SamplingConfig(crop_size=None, sequential=True, label_values=(1,))
    data = SliceDataset([case], PreprocessConfig(working_spacing_mm=1.5), sampling)
    assert [z for _, z in data.index] == [3, 4, 8]
    assert data.positives == [(0, 3), (0, 4)] and data.negatives == [(0, 8)]


def test_saving_again_updates_the_scan_folder_and_keeps_earlier_slices(tmp_path):
    hu, mask, geometry = scan()
    store = tmp_path / "store"
    weights = tmp_path / "w.json"
    weights.write_text(json.dumps({"tensors": {"sha256": "abc"}}))
    first = save_corrections(store, hu, mask, geometry, [3], weights=weights)
    # Later in another session: the mask on screen is a fresh model mask (empty on slice 3).
    fresh = np.zeros_like(mask)
    fresh[7] = mask[7]
    second = save_corrections(store, hu, fresh, geometry, [7, 8], weights=tmp_path / "other.json")
    assert second.folder == first.folder and not second.created
    assert len(stored_cases(store)) == 1 and second.slices == [3, 7, 8] and second.written == [7, 8]
    labels = read_mask(second.folder / LABEL_NAME)
    assert np.array_equal(labels[3], mask[3])  # kept from the first save
    assert np.array_equal(labels[7], mask[7])
    record = json.loads((second.folder / CASE_RECORD_NAME).read_text())
    assert record["first_mask_weights"]["tensors_sha256"] == "abc"
    assert [s["slices"] for s in record["saves"]] == [[3], [7, 8]]
    # Another scan gets its own folder.
    other = save_corrections(store, *scan(seed=1), [2])
    assert other.created and len(stored_cases(store)) == 2


def test_never_writes_over_the_scan_it_came_from(tmp_path):
    hu, mask, geometry = scan()
    store = tmp_path / "store"
    saved = save_corrections(store, hu, mask, geometry, [3])
    source = saved.folder / CT_NAME  # a scan opened from inside the store itself
    opened = read_ct(source)
    before = source.read_bytes()
    write_mask(tmp_path / "x.nii.gz", mask, geometry)
    from napari_nstseg.io.outputs import OutputPathError

    with pytest.raises(OutputPathError, match="never written over"):
        save_corrections(store, opened.hu, mask, opened.geometry, [4])
    assert source.read_bytes() == before


def test_refuses_nothing_to_save_and_a_mask_off_the_grid(tmp_path):
    hu, mask, geometry = scan()
    with pytest.raises(ValueError, match="No corrected slice"):
        save_corrections(tmp_path, hu, mask, geometry, [])
    with pytest.raises(ValueError, match="grid"):
        save_corrections(tmp_path, hu, mask[:5], geometry, [1])


def test_default_store_is_in_the_users_data_directory():
    from platformdirs import user_data_dir

    assert default_store().parent == type(default_store())(user_data_dir("napari-nstseg"))


def test_a_bad_slice_list_is_one_sentence(tmp_path):
    hu, mask, geometry = scan()
    saved = save_corrections(tmp_path, hu, mask, geometry, [3])
    record_path = saved.folder / CASE_RECORD_NAME
    record = json.loads(record_path.read_text())
    record["annotated_slices"] = ["three"]
    record_path.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="annotated_slices"):
        find_cases(tmp_path)
    record["annotated_slices"] = [30]
    record_path.write_text(json.dumps(record))
    (case,) = find_cases(tmp_path)
    with pytest.raises(ValueError, match="beyond the scan's 10 slices"):
        SliceDataset([case], PreprocessConfig(), SamplingConfig(label_values=(1,)))


def test_a_dicom_series_is_identified_by_its_uids_and_float_hu_are_kept(tmp_path):
    from dataclasses import replace

    hu, mask, geometry = scan()
    hu = hu + 0.25  # HU from a rescale slope that are not whole numbers
    dicom = replace(
        geometry,
        source_path=str(tmp_path / "series"),
        source_format="dicom",
        extra={"dicom_series_uid": "1.2.3", "dicom_sop_instance_uids": ["1.2.3.1", "1.2.3.2"]},
    )
    saved = save_corrections(tmp_path / "store", hu, mask, dicom, [3])
    scan_record = saved.record["scan"]
    assert scan_record["dicom_series_uid"] == "1.2.3"
    assert scan_record["dicom_sop_instance_uids"] == ["1.2.3.1", "1.2.3.2"]
    assert scan_record["source_path"] == str(tmp_path / "series")
    assert saved.folder.name.startswith("series-")
    assert np.allclose(read_ct(saved.folder / CT_NAME).hu, hu)
