"""Metrics: hand-computed overlaps, empty conventions, size groups, detection, measurements."""

import math

import numpy as np
import pytest

from napari_nstseg.metrics import (
    SliceEvaluator,
    confusion,
    detect_lesions,
    dice,
    feret_diameter_mm,
    image_metrics,
    iou,
    mae,
    measure_lesions,
    structure_measures,
    summarize_detection,
)


def _squares():
    # GT: 4x4 = 16 px; prediction: 4x4 shifted by 2 columns -> overlap 8 px, union 24 px.
    gt = np.zeros((10, 10), np.uint8)
    gt[2:6, 2:6] = 1
    pred = np.zeros((10, 10), np.float32)
    pred[2:6, 4:8] = 0.9
    return pred, gt


def test_known_overlap_numbers():
    pred, gt = _squares()
    c = confusion(pred, gt)
    assert (c.tp, c.fp, c.fn, c.tn) == (8, 8, 8, 76)
    m = image_metrics(pred, gt)
    assert m["dice"] == pytest.approx(0.5)
    assert m["iou"] == pytest.approx(8 / 24)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(0.5)
    assert m["specificity"] == pytest.approx(76 / 84)
    assert m["accuracy"] == pytest.approx(0.84)
    assert m["f1"] == pytest.approx(m["dice"])
    # F2 = 5 TP / (5 TP + 4 FN + FP) = 40 / 80
    assert m["f2"] == pytest.approx(0.5)
    # |0.9 - 1| on 8 px, |0.9 - 0| on 8 px, |0 - 1| on 8 px
    assert m["mae"] == pytest.approx((8 * 0.1 + 8 * 0.9 + 8 * 1.0) / 100)
    assert dice(pred, gt) == m["dice"] and iou(pred, gt) == m["iou"]


def test_f2_weighs_recall_over_precision():
    gt = np.zeros((10, 10), bool)
    gt[:, :4] = True  # 40 px
    pred = np.zeros((10, 10), bool)
    pred[:, :2] = True  # 20 px, all correct: precision 1, recall 0.5
    m = image_metrics(pred, gt, structure=False)
    assert m["f2"] == pytest.approx(5 * 20 / (5 * 20 + 4 * 20))
    assert m["f2"] < m["f1"]


def test_empty_conventions():
    empty = np.zeros((8, 8))
    some = np.zeros((8, 8))
    some[2, 2] = 1
    both_empty = image_metrics(empty, empty, structure=False)
    assert both_empty["dice"] == 1.0 and both_empty["iou"] == 1.0
    assert both_empty["precision"] == 1.0 and both_empty["recall"] == 1.0
    assert dice(some, empty) == 0.0
    assert dice(empty, some) == 0.0
    assert image_metrics(empty, some, structure=False)["precision"] == 0.0


def test_structure_measures_perfect_and_wrong():
    gt = np.zeros((64, 64), np.uint8)
    gt[20:40, 10:30] = 1
    perfect = structure_measures(gt.astype(np.float32), gt)
    assert perfect["s_measure"] == pytest.approx(1.0)
    # Mean over pysodmetrics' 256 thresholds: the top one cuts even a perfect map, so just < 1.
    assert 0.99 < perfect["e_measure"] <= 1.0
    inverted = structure_measures(1.0 - gt.astype(np.float32), gt)
    assert inverted["s_measure"] < 0.2 and inverted["e_measure"] < 0.2


def test_input_errors_are_readable():
    with pytest.raises(ValueError, match="same shape"):
        dice(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mae(np.full((4, 4), 3.0), np.zeros((4, 4)))


def test_feret_diameter_rectangle_and_disc_with_anisotropic_spacing():
    rect = np.zeros((30, 40), bool)
    rect[5:15, 10:30] = True  # 10 x 20 px at (0.5, 1.0) mm -> 5 x 20 mm
    assert feret_diameter_mm(rect, (0.5, 1.0)) == pytest.approx(math.hypot(5, 20))
    # Disc of radius 8 mm drawn on 0.5 x 1.0 mm pixels: diameter 16 mm within a pixel.
    ys = (np.arange(60) + 0.5) * 0.5
    xs = (np.arange(40) + 0.5) * 1.0
    disc = (ys[:, None] - 15.0) ** 2 + (xs[None, :] - 20.0) ** 2 <= 8.0**2
    d = feret_diameter_mm(disc, (0.5, 1.0))
    assert 16.0 <= d <= 16.0 + math.hypot(0.5, 1.0)


def test_measure_lesions_volume_diameter_centroid_slices():
    mask = np.zeros((10, 40, 40), np.uint8)
    mask[2:5, 10:20, 5:25] = 1  # 3 x 10 x 20 voxels, the largest slice is any of them
    mask[7, 30:32, 30:33] = 1  # 1 x 2 x 3 voxels
    spacing = (2.5, 0.5, 1.0)
    les = measure_lesions(mask, spacing)
    assert [x["label"] for x in les] == [1, 2]
    big, small = les
    assert big["volume_ml"] == pytest.approx(600 * 2.5 * 0.5 * 1.0 / 1000)
    assert big["longest_axial_diameter_mm"] == pytest.approx(math.hypot(5, 20))
    assert big["centroid_zyx"] == pytest.approx((3.0, 14.5, 14.5))
    assert big["slices"] == (2, 4)
    assert small["volume_ml"] == pytest.approx(6 * 1.25 / 1000)
    assert small["longest_axial_diameter_mm"] == pytest.approx(math.hypot(1.0, 3.0))
    assert small["slices"] == (7, 7) and small["axial_slice"] == 7
    assert measure_lesions(np.zeros((3, 4, 4)), spacing) == []


def test_lesion_detection_sensitivity_and_false_positives():
    spacing = (1.0, 1.0, 1.0)
    gt = np.zeros((8, 60, 60), np.uint8)
    gt[2:5, 5:30, 5:30] = 1  # 25 mm lesion (diagonal larger still): >=20 mm
    gt[2:4, 40:45, 40:45] = 1  # 5 mm across: <10 mm
    pred = np.zeros_like(gt)
    pred[3, 10:12, 10:12] = 1  # touches the big lesion, tiny overlap
    pred[6, 50:55, 5:10] = 1  # touches nothing: one false positive
    res = detect_lesions(pred, gt, spacing)
    assert res.n_lesions == 2 and res.n_detected == 1 and res.false_positives == 1
    # Where the false positive is, voxel for voxel (the evaluation counts recurring sites).
    assert res.false_positive_mask.sum() == 25 and res.false_positive_mask[6, 50:55, 5:10].all()
    big = res.lesions[0]
    assert big["detected"] and big["dice"] == pytest.approx(2 * 4 / (4 + 3 * 25 * 25))
    # With a Dice criterion the token overlap no longer counts as a detection.
    strict = detect_lesions(pred, gt, spacing, min_dice=0.1)
    assert strict.n_detected == 0
    summary = summarize_detection([res, detect_lesions(gt, gt, spacing)])
    assert summary["lesions"] == 4 and summary["detected"] == 3
    assert summary["sensitivity"] == pytest.approx(0.75)
    assert summary["fp_per_scan"] == pytest.approx(0.5)
    assert summary["by_diameter"]["<10 mm"] == {"lesions": 2, "detected": 1, "sensitivity": 0.5}
    assert summary["by_diameter"][">=20 mm"]["sensitivity"] == 1.0


def test_slice_evaluator_groups_by_area_fraction():
    ev = SliceEvaluator(structure=False)
    tiny = np.zeros((100, 100), np.uint8)
    tiny[10:14, 10:14] = 1  # 0.16 % of the slice
    mid = np.zeros((100, 100), np.uint8)
    mid[20:40, 20:45] = 1  # 5 %
    big = np.zeros((100, 100), np.uint8)
    big[:50, :50] = 1  # 25 %
    ev.add(tiny.astype(float), tiny, spacing_yx=(1.0, 1.0))  # Dice 1
    ev.add(np.zeros((100, 100)), mid, spacing_yx=(1.0, 1.0))  # Dice 0
    ev.add(big.astype(float), big, spacing_yx=(1.0, 1.0))  # Dice 1
    empty = np.zeros((100, 100))
    fp = empty.copy()
    fp[0, 0] = 1
    ev.add(fp, empty)  # slice without lesion, one false-positive pixel
    r = ev.results()
    assert r["images"] == 4
    assert r["groups"]["area<1%"]["images"] == 1 and r["groups"]["area<1%"]["dice"] == 1.0
    assert r["groups"]["area<10%"]["images"] == 2 and r["groups"]["area<10%"]["dice"] == 0.5
    assert r["groups"]["all"]["images"] == 3
    assert r["groups"]["all"]["dice"] == pytest.approx(2 / 3)
    assert r["empty_gt"] == {"images": 1, "with_false_positive": 1}
    assert r["by_diameter"]["<10 mm"]["images"] == 1
    assert r["by_diameter"][">=20 mm"]["images"] == 2
    tp = 16 + 2500
    assert r["pooled"]["dice"] == pytest.approx(2 * tp / (2 * tp + 1 + 500))


def test_hausdorff95_in_mm_on_shifted_boxes_and_nan_when_empty():
    from napari_nstseg.metrics import hausdorff95_mm

    gt = np.zeros((8, 30, 30), bool)
    gt[2:6, 10:20, 10:20] = True
    along_x = np.roll(gt, 2, axis=2)  # 2 pixels of 0.5 mm: every boundary point moves 1 mm
    assert hausdorff95_mm(along_x, gt, (3.0, 0.8, 0.5)) == pytest.approx(1.0)
    along_z = np.roll(gt, 1, axis=0)  # one slice of 3 mm
    assert hausdorff95_mm(along_z, gt, (3.0, 0.8, 0.5)) == pytest.approx(3.0)
    assert hausdorff95_mm(gt, gt, (3.0, 0.8, 0.5)) == 0.0
    assert np.isnan(hausdorff95_mm(np.zeros_like(gt), gt, (1, 1, 1)))
