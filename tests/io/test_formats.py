"""The table of formats (io/formats.py) is what every reader, writer and check goes by: each
entry's suffixes open, train and save as the table says, and napari.yaml claims the same."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import yaml
from io_helpers import phantom_hu_kji, write_dicom_series

from napari_nstseg._reader import get_reader
from napari_nstseg.inference.predict_outputs import mask_suffix, stem
from napari_nstseg.io import CTReadError, MaskWriteError, read_ct, read_mask, write_mask
from napari_nstseg.io.formats import (
    FORMATS,
    readable_suffixes,
    volume_file_suffixes,
    writable_suffixes,
)
from napari_nstseg.training.cases import find_cases

ROOT = Path(__file__).resolve().parents[2]
SHAPE_KJI = (4, 9, 11)
SPACING = (0.8, 0.7, 2.5)  # i, j, k in mm


def write_sample(folder: Path, name: str, suffix: str, data_kji: np.ndarray) -> Path:
    """A small volume saved with ``suffix``: a DICOM series for .dcm, SimpleITK otherwise (it
    writes every single-file format of the table)."""
    if suffix == ".dcm":
        return write_dicom_series(folder / name, data_kji)[0]
    image = sitk.GetImageFromArray(data_kji)
    image.SetSpacing(SPACING)
    path = folder / f"{name}{suffix}"
    sitk.WriteImage(image, str(path))
    return path


def labels_kji() -> np.ndarray:
    labels = np.zeros(SHAPE_KJI, np.uint8)
    labels[1:3, 2:6, 3:8] = 1
    return labels


def test_suffixes_are_lower_case_dotted_and_each_belongs_to_one_reader():
    suffixes = [s for f in FORMATS for s in f.suffixes]
    assert all(s.startswith(".") and s == s.lower() for s in suffixes)
    readable = [s for f in FORMATS if f.read is not None for s in f.suffixes]
    assert len(readable) == len(set(readable))


@pytest.mark.parametrize("suffix", readable_suffixes())
def test_every_readable_suffix_opens_in_napari_and_as_ct(tmp_path, suffix):
    hu = phantom_hu_kji()
    path = write_sample(tmp_path, "scan", suffix, hu)
    assert get_reader(str(path)) is not None
    ct = read_ct(path)
    # Identity directions: display order (z, y, x) is the stored (k, j, i).
    assert ct.hu.shape == hu.shape and ct.name == "scan"  # a series is named for its folder


@pytest.mark.parametrize("suffix", volume_file_suffixes())
def test_every_single_file_suffix_is_found_by_case_discovery(tmp_path, suffix):
    case = tmp_path / "set" / "P1"
    case.mkdir(parents=True)
    write_sample(case, "ct", suffix, np.full(SHAPE_KJI, 40, np.int16))
    write_sample(case, "tumour", suffix, labels_kji())
    (found,) = find_cases(tmp_path / "set")
    assert found.case_id == "P1"
    assert found.image.name == f"ct{suffix}" and found.label.name == f"tumour{suffix}"


def test_folder_formats_are_left_to_their_folder_by_case_discovery():
    folder_suffixes = {s for f in FORMATS if f.folder is not None for s in f.suffixes}
    assert folder_suffixes and not folder_suffixes & set(volume_file_suffixes())


@pytest.mark.parametrize("suffix", writable_suffixes())
def test_every_writable_suffix_saves_a_mask_that_reads_back(tmp_path, suffix):
    scan = read_ct(write_sample(tmp_path, "scan", ".nii.gz", phantom_hu_kji()))
    mask = np.zeros(scan.hu.shape, np.uint8)
    mask[1, 2:5, 3:7] = 1
    written = write_mask(tmp_path / f"mask{suffix}", mask, scan.geometry)
    assert np.array_equal(read_mask(written, like=scan.geometry), mask)
    assert mask_suffix(written) == suffix  # `nstseg predict` takes it as an output name


@pytest.mark.parametrize("suffix", sorted(set(readable_suffixes()) - set(writable_suffixes())))
def test_a_suffix_read_but_not_written_is_refused_naming_those_that_are(tmp_path, suffix):
    scan = read_ct(write_sample(tmp_path, "scan", ".nii.gz", phantom_hu_kji()))
    with pytest.raises(MaskWriteError) as info:
        write_mask(tmp_path / f"mask{suffix}", np.zeros(scan.hu.shape, np.uint8), scan.geometry)
    assert all(s in str(info.value) for s in writable_suffixes())
    assert "\n" not in str(info.value)


def test_an_unknown_suffix_is_one_sentence_listing_the_tables_suffixes(tmp_path):
    path = tmp_path / "scan.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.raises(CTReadError, match="not supported") as info:
        read_ct(path)
    message = str(info.value)
    assert all(s in message for s in readable_suffixes()), message
    assert "\n" not in message and get_reader(str(path)) is None


@pytest.mark.parametrize("suffix", [s for f in FORMATS for s in f.suffixes])
def test_output_names_lose_any_suffix_of_the_table(suffix):
    assert stem(Path(f"/out/scan.v2{suffix.upper()}")) == "scan.v2"


def test_napari_yaml_claims_what_the_table_says():
    manifest = yaml.safe_load((ROOT / "napari.yaml").read_text())["contributions"]
    (reader,) = manifest["readers"]
    # napari matches reader patterns in any order; folder formats need directories.
    assert sorted(reader["filename_patterns"]) == sorted(f"*{s}" for s in readable_suffixes())
    assert reader["accepts_directories"] == any(f.folder is not None for f in FORMATS)
    writers = {w["command"]: w["filename_extensions"] for w in manifest["writers"]}
    # The order matters here: napari's save dialog offers the first extension by default.
    assert writers.pop("napari-nstseg.write_labels") == list(writable_suffixes())
    # Any other writer (DICOM SEG) saves a kind of file the table knows.
    known = {s for f in FORMATS for s in f.suffixes}
    assert all(set(extensions) <= known for extensions in writers.values()), writers
