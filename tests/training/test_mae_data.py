"""Normal tissue for the masked autoencoder: crops never touch a tumour or a zone said to hold
one, case-folder sets give their training patients, and a JSON sources file names the rest."""

import json

import nibabel as nib
import numpy as np
import pytest

from napari_nstseg.preprocessing import PreprocessConfig
from napari_nstseg.training.mae_data import MAESource, UnlabeledSlices, find_sources

PRE = PreprocessConfig(working_spacing_mm=1.0)


def _write(path, array_zyx, dtype=np.int16):
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([-1.0, -1.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(np.asarray(array_zyx).astype(dtype).transpose(2, 1, 0), affine), path)
    return path


@pytest.fixture
def scan_with_zone(tmp_path):
    """Soft tissue (40 HU) with a zone (label 4) at the left edge of slices 2-3, marked 900 HU so
    any crop that reaches it shows it."""
    hu = np.full((6, 64, 64), 40)
    labels = np.zeros(hu.shape, np.uint8)
    labels[2:4, 20:40, 0:10] = 4
    labels[:, 0:4, 60:64] = 1  # another structure, not excluded
    hu[labels == 4] = 900
    return _write(tmp_path / "ct.nii.gz", hu), _write(tmp_path / "seg.nii.gz", labels, np.uint8)


def test_crops_never_touch_the_excluded_zone(scan_with_zone):
    ct, seg = scan_with_zone
    ds = UnlabeledSlices(
        [MAESource(ct, seg, (4,))], PRE, crop_size=16, samples_per_epoch=300,
        exclude_margin_mm=2.0,
    )  # fmt: skip
    top = (900 - PRE.hu_window[1]) / PRE.hu_window[0] + 0.5  # the zone's window value
    assert all(
        float(ds[i]["image"].max()) < (top - PRE.norm_mean) / PRE.norm_std for i in range(300)
    )
    # the zone's slices still give crops away from it, and slices 1 and 4 (within the 2 mm margin
    # of it along z: 2 mm slices) keep away from it too
    assert {z for _, z in ds.index} == set(range(6))


def test_without_exclusion_the_zone_is_seen(scan_with_zone):
    ct, _ = scan_with_zone
    ds = UnlabeledSlices([MAESource(ct)], PRE, crop_size=16, samples_per_epoch=300)
    assert any(float(ds[i]["image"].max()) > 1.0 for i in range(300))


def test_a_zone_that_fills_everything_is_a_readable_error(tmp_path):
    ct = _write(tmp_path / "ct.nii.gz", np.full((2, 16, 16), 40))
    seg = _write(tmp_path / "seg.nii.gz", np.ones((2, 16, 16)), np.uint8)
    with pytest.raises(ValueError, match="no slice leaves room"):
        UnlabeledSlices([MAESource(ct, seg)], PRE, crop_size=8)


def test_sources_file_names_volumes_zones_and_a_case_folder_set(tmp_path, scan_with_zone):
    ct, seg = scan_with_zone
    for i in range(3):
        _write(tmp_path / "sts" / f"P{i}" / "ct.nii.gz", np.full((2, 8, 8), 40))
        _write(tmp_path / "sts" / f"P{i}" / "tumour.nii.gz", np.zeros((2, 8, 8)), np.uint8)
    (tmp_path / "split.json").write_text(json.dumps({"train": ["P0", "P1"], "val": ["P2"]}))
    spec = tmp_path / "cfg" / "sources.json"
    spec.parent.mkdir()
    spec.write_text(json.dumps({
        "root": "..",
        "volumes": [{"image": "ct.nii.gz", "exclude": "seg.nii.gz", "exclude_labels": [4]}],
        "cases": {"folder": "sts", "split_file": "../split.json"},
    }))  # fmt: skip
    train, val = find_sources(spec)
    assert train[0] == MAESource(ct.resolve(), seg.resolve(), (4,))
    assert [s.image.parent.name for s in train[1:]] == ["P0", "P1"]
    assert all(s.exclude.name == "tumour.nii.gz" and s.exclude_labels is None for s in train[1:])
    assert [s.image.parent.name for s in val] == ["P2"]
    spec.write_text(json.dumps({"root": "..", "volumes": [{"image": "missing.nii.gz"}]}))
    with pytest.raises(ValueError, match="missing.nii.gz does not exist"):
        find_sources(spec)
