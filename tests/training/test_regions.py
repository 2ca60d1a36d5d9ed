"""Detection per source region: a normal structure flagged in every copy of a z-block counts
as one recurring site, and the per-region figures add up to the split's."""

import json

import numpy as np
import pytest

from napari_nstseg.metrics import detect_lesions
from napari_nstseg.training.lesions.regions import RegionTally, format_regions, read_case_regions

SPACING = (2.0, 1.0, 1.0)


def _scan(shape=(6, 24, 24), lesion=True, speck=False):
    """A prediction with one blob at a fixed place (a false positive: no lesion there), the
    lesion found when ``lesion``, and a one-voxel speck elsewhere when ``speck``."""
    gt = np.zeros(shape, bool)
    gt[2:4, 16:20, 16:20] = True
    pred = np.zeros(shape, bool)
    pred[1:4, 3:7, 3:7] = True  # the recurring false positive: 3 x 4 x 4 = 48 voxels
    if lesion:
        pred[2:4, 16:20, 16:20] = True
    if speck:
        pred[5, 12, 2] = True
    return pred, gt


def test_read_case_regions_names_the_z_block_of_each_copy(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"cases": {
        "a_z000-030_c00": {"source": "/data/a.nii.gz", "z_range_display": [0, 30]},
        "a_z000-030_c01": {"source": "/data/a.nii.gz", "z_range_display": [0, 30]},
        "b_z010-020_c00": {"source": "b.nii.gz", "z_range_display": [10, 20]},
        "odd": {"source": "c.nii.gz"},
    }}))  # fmt: skip
    assert read_case_regions(tmp_path) == {
        "a_z000-030_c00": "a.nii.gz z000-030",
        "a_z000-030_c01": "a.nii.gz z000-030",
        "b_z010-020_c00": "b.nii.gz z010-020",
    }
    (tmp_path / "dataset.json").write_text(json.dumps({"split": {"test": ["x"]}}))
    assert read_case_regions(tmp_path) == {}  # a user's own data: no regions
    (tmp_path / "dataset.json").write_text("{not json")
    assert read_case_regions(tmp_path) == {}
    assert read_case_regions(tmp_path / "missing") == {}


def test_a_structure_flagged_in_every_copy_is_one_recurring_site():
    regions = {f"a{i}": "a.nii.gz z000-006" for i in range(4)}
    tally = RegionTally(regions | {"b0": "b.nii.gz z000-006"})
    for i in range(4):
        pred, gt = _scan(lesion=i != 0, speck=i == 3)
        det = detect_lesions(pred, gt, SPACING, min_dice=0.1)
        rows = [{"matched": True, "target": True, "detected": det.lesions[0]["detected"]}]
        tally.add(f"a{i}", det, rows)
    pred, gt = _scan()
    tally.add("b0", detect_lesions(pred, gt, SPACING))
    tally.add("not-a-region-case", detect_lesions(pred, gt, SPACING))
    res = tally.results()
    assert list(res) == ["a.nii.gz z000-006", "b.nii.gz z000-006"]
    a = res["a.nii.gz z000-006"]
    assert (a["scans"], a["lesions"], a["detected"]) == (4, 4, 3)
    assert (a["target_lesions"], a["target_detected"]) == (4, 3)
    assert a["sensitivity"] == pytest.approx(0.75)
    assert a["false_positives"] == 5 and a["fp_per_scan"] == pytest.approx(1.25)
    # The blob recurs (4 of 4 copies); the speck (1 of 4) does not.
    assert a["recurring_fp_sites"] == 1
    assert a["recurring_fp_share"] == pytest.approx(4 * 48 / (4 * 48 + 1))
    b = res["b.nii.gz z000-006"]
    assert b["scans"] == 1 and b["recurring_fp_sites"] is None  # one copy: nothing can recur
    assert np.isnan(b["target_sensitivity"])
    lines = format_regions(res)
    assert lines[0].startswith("a.nii.gz z000-006: 4 scans, sensitivity 0.750 (3/4)")
    assert "1.25 false positives per scan" in lines[0]
    assert "1 site(s) flagged in at least half of the copies hold 99.5 %" in lines[0]


def test_copies_on_different_grids_report_counts_but_no_sites():
    tally = RegionTally({"a0": "r", "a1": "r"})
    for cid, shape in (("a0", (6, 24, 24)), ("a1", (6, 24, 26))):
        pred, gt = _scan(shape)
        tally.add(cid, detect_lesions(pred, gt, SPACING))
    r = tally.results()["r"]
    assert r["false_positives"] == 2 and r["recurring_fp_sites"] is None
    assert not RegionTally({})  # nothing to tally: evaluate writes no region section
