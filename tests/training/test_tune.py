"""Choosing the operating point: the sweep's counts and the choice on made-up grids."""

from __future__ import annotations

import numpy as np
import pytest

from napari_nstseg.metrics import detect_lesions
from napari_nstseg.postprocess import remove_small_lesions
from napari_nstseg.training.evaluate import EvalConfig, score_case
from napari_nstseg.training.tune import choose_operating_point, grid_rows, sweep_case


def point(t, m, sens, target, fp, lesions=10, targets=4, depth=0.0) -> dict:
    return {
        "threshold": t,
        "min_lesion_mm": m,
        "min_depth_mm": depth,
        "scans": 5,
        "lesions": lesions,
        "detected": round(sens * lesions),
        "sensitivity": sens,
        "target_lesions": targets,
        "target_detected": round(target * targets) if targets else 0,
        "target_sensitivity": target if targets else float("nan"),
        "false_positives": round(fp * 5),
        "fp_per_scan": fp,
    }


def test_choice_is_the_most_sensitive_point_for_target_lesions_within_the_fp_budget():
    rows = [
        point(0.3, 0, 0.9, 1.0, 6.0),  # most sensitive, far too many false positives
        point(0.5, 0, 0.7, 0.75, 2.4),
        point(0.5, 5, 0.6, 0.75, 1.6),  # ties on target sensitivity with the next two...
        point(0.7, 5, 0.6, 0.75, 1.2),  # ...and has the fewest false positives: chosen
        point(0.7, 3, 0.8, 0.75, 1.8),
        point(0.9, 10, 0.3, 0.5, 0.2),
    ]
    best, criterion, note = choose_operating_point(rows, max_fp_per_scan=2.0)
    assert (best["threshold"], best["min_lesion_mm"]) == (0.7, 5)
    assert ">=10 mm and >=20 HU" in criterion
    assert "at most 2 false positives per scan" in note
    # A looser budget admits the point that finds every target lesion.
    best, _, _ = choose_operating_point(rows, max_fp_per_scan=6.0)
    assert (best["threshold"], best["min_lesion_mm"]) == (0.3, 0)


def test_without_target_lesions_all_lesions_decide():
    rows = [
        point(0.4, 0, 0.8, 0, 1.0, targets=0),
        point(0.6, 3, 0.9, 0, 1.5, targets=0),
        point(0.8, 5, 0.9, 0, 2.5, targets=0),
    ]
    best, criterion, _ = choose_operating_point(rows, max_fp_per_scan=2.0)
    assert (best["threshold"], best["min_lesion_mm"]) == (0.6, 3)
    assert "all lesions" in criterion


def test_when_no_point_keeps_to_the_budget_the_fewest_false_positives_win_and_it_says_so():
    rows = [
        point(0.5, 0, 0.9, 1.0, 9.0),
        point(0.9, 5, 0.4, 0.5, 3.5),
        point(0.9, 3, 0.5, 0.5, 3.5),
    ]
    best, _, note = choose_operating_point(rows, max_fp_per_scan=2.0)
    assert (best["threshold"], best["min_lesion_mm"]) == (0.9, 3)  # the tie: more sensitive
    assert note.startswith("NO grid point keeps to 2 false positives per scan")
    with pytest.raises(ValueError, match="no ground-truth lesion"):
        choose_operating_point([point(0.5, 0, 0.0, 0.0, 1.0, lesions=0, targets=0)], 2.0)


def test_a_point_that_keeps_to_the_budget_by_finding_nothing_is_not_chosen():
    rows = [
        point(0.5, 0, 0.6, 0.75, 40.0),
        point(0.7, 0, 0.3, 0.5, 6.0, depth=7.0),
        point(0.9, 0, 0.1, 0.0, 1.5, depth=10.0),  # within budget, but no target lesion found
        point(0.95, 10, 0.0, 0.0, 0.2, depth=10.0),
    ]
    best, _, note = choose_operating_point(rows, max_fp_per_scan=2.0)
    assert (best["threshold"], best["min_depth_mm"]) == (0.7, 7.0)
    assert note.startswith("every grid point with at most 2 false positives per scan misses")
    # Where nothing finds a target lesion at all, the other lesions decide...
    best, criterion, note = choose_operating_point([rows[2], rows[3]], max_fp_per_scan=2.0)
    assert best["threshold"] == 0.9
    assert "no grid point finds any of the 4 lesions >=10 mm and >=20 HU" in criterion
    # ...and where nothing finds any lesion, the fewest false positives win.
    nothing = [point(0.9, 0, 0.0, 0.0, 1.5), point(0.95, 0, 0.0, 0.0, 0.2)]
    best, _, note = choose_operating_point(nothing, max_fp_per_scan=2.0)
    assert best["threshold"] == 0.95
    assert note.startswith("NO grid point finds any of them")


def planted_case():
    """Two lesions (one large, one 4 mm) and specks of several sizes at several probabilities."""
    spacing = (2.0, 0.8, 0.8)
    gt = np.zeros((6, 48, 48), np.uint8)
    gt[1:4, 5:20, 5:20] = 1  # 17 mm
    gt[2, 30:35, 30:34] = 1  # 5.1 mm
    prob = np.zeros(gt.shape, np.float32)
    prob[1:4, 6:19, 6:19] = 0.9
    prob[2, 30:35, 30:33] = 0.55
    prob[4, 40:42, 5:7] = 0.8  # 2.3 mm speck
    prob[0, 40:47, 30:37] = 0.6  # 7.9 mm false lesion
    prob[5, 2:4, 40:42] = 0.95  # speck
    final = np.round(prob * 255).astype(np.uint8)
    return final, gt, spacing


def test_the_sweep_counts_what_evaluate_counts_on_the_post_processed_mask():
    final, gt, spacing = planted_case()
    thresholds, sizes, depths = (0.3, 0.5, 0.7), (0.0, 3.0, 6.0, 10.0), (0.0, 3.0, 7.0)
    swept = sweep_case(
        final, gt, spacing, thresholds, sizes, min_dice=0.1, targets=[0, 0], depths_mm=depths
    )
    for t in thresholds:
        for m in sizes:
            for d in depths:
                cut = (final >= np.ceil(t * 255 - 1e-6)).astype(np.uint8)
                mask = remove_small_lesions(cut, spacing, m, min_depth_mm=d)
                det = detect_lesions(mask, gt, spacing, min_dice=0.1)
                got = swept[(t, m, d, None)]
                assert got["false_positives"] == det.false_positives, (t, m, d)
                assert got["detected"] == det.n_detected, (t, m, d)
                assert got["lesions"] == 2 and got["target_lesions"] == 2
    assert swept[(0.5, 0.0, 0.0, None)]["false_positives"] == 3
    # the specks go, the 7.9 mm one stays
    assert swept[(0.5, 3.0, 0.0, None)]["false_positives"] == 1
    assert swept[(0.5, 10.0, 0.0, None)]["false_positives"] == 0
    assert swept[(0.5, 6.0, 0.0, None)]["detected"] == 1  # the small true lesion (4.7 mm) goes
    # the large one, counted per table row
    assert swept[(0.7, 0.0, 0.0, None)]["target_detected"] == 2
    # Every false lesion and the small true one lie on one slice (2 mm deep here): a minimum
    # depth of 3 mm keeps only the large true lesion, over three slices (6 mm); 7 mm, nothing.
    assert swept[(0.5, 0.0, 3.0, None)]["false_positives"] == 0
    assert swept[(0.5, 0.0, 3.0, None)]["detected"] == 1
    assert swept[(0.5, 0.0, 7.0, None)]["detected"] == 0
    rows = grid_rows([swept, swept])
    row = next(
        r for r in rows if (r["threshold"], r["min_lesion_mm"], r["min_depth_mm"]) == (0.5, 3, 0)
    )
    assert row["scans"] == 2 and row["fp_per_scan"] == 1.0 and row["sensitivity"] == 1.0


def test_the_sweep_and_the_engine_filter_agree_on_a_lesion_exactly_at_the_limit():
    """A lesion 3 slices deep in a scan whose header says 2.3333333 mm: at a 7 mm minimum depth
    the sweep and the engine's filter both keep it, so the chosen point means on the scan what
    it meant in the sweep."""
    gt = np.zeros((9, 20, 20), np.uint8)
    gt[3:6, 5:10, 5:10] = 1
    final = gt * np.uint8(255)
    spacing = (2.3333333, 0.7, 0.7)
    swept = sweep_case(final, gt, spacing, (0.5,), (0.0,), targets=[0], depths_mm=(7.0, 7.1))
    for d in (7.0, 7.1):
        kept = remove_small_lesions(gt, spacing, 0, min_depth_mm=d).any()
        assert swept[(0.5, 0.0, d, None)]["detected"] == int(kept), d
    assert swept[(0.5, 0.0, 7.0, None)]["detected"] == 1


def test_evaluation_scores_the_post_processed_mask():
    """Planted specks are false positives at min lesion 0 and gone at 5 mm; the probability
    metrics (MAE) do not change with the operating point."""
    final, gt, spacing = planted_case()
    prob = final / 255.0
    raw = (prob >= 0.5).astype(np.uint8)
    cfg = EvalConfig(min_dice=0.1)
    plain, det_plain = score_case(prob, raw, gt, spacing, cfg)
    filtered, det_filtered = score_case(
        prob, remove_small_lesions(raw, spacing, 5.0), gt, spacing, cfg
    )
    assert det_plain.false_positives == 3
    assert det_filtered.false_positives == 1
    assert filtered["false_positives"] < plain["false_positives"]
    assert filtered["precision"] > plain["precision"]
    assert filtered["mae"] == plain["mae"]


def test_per_patient_dice_at_each_grid_point_and_the_dice_objective():
    # One tumour (a 2 x 10 x 10 box) found half at p 0.9, its other half at p 0.6, and a
    # 2 x 3 x 3 false positive at p 0.8 away from it; 1 mm voxels.
    gt = np.zeros((2, 30, 30), bool)
    gt[:, 5:15, 5:15] = True
    prob = np.zeros(gt.shape, np.float32)
    prob[:, 5:15, 5:10] = 0.9
    prob[:, 5:15, 10:15] = 0.6
    prob[:, 20:23, 20:23] = 0.8
    counts = sweep_case(prob, gt, (1.0, 1.0, 1.0), [0.5, 0.7], [0.0, 5.0])
    truth = 200
    # threshold 0.5: the whole tumour and the false positive (18 voxels).
    assert counts[(0.5, 0.0, 0.0, None)]["dice_e6"] == round(2e6 * 200 / (218 + truth))
    # a 5 mm minimum size drops the false positive (diameter 3 * sqrt 2 mm): Dice 1.
    assert counts[(0.5, 5.0, 0.0, None)]["dice_e6"] == 1_000_000
    assert counts[(0.5, 5.0, 0.0, None)]["false_positives"] == 0
    # threshold 0.7: half the tumour, false positive dropped by size: 2 * 100 / 300.
    assert counts[(0.7, 5.0, 0.0, None)]["dice_e6"] == round(2e6 * 100 / 300)
    rows = grid_rows([counts, counts])
    by_point = {(r["threshold"], r["min_lesion_mm"]): r for r in rows}
    assert by_point[(0.5, 5.0)]["mean_dice"] == pytest.approx(1.0)
    best, criterion, _ = choose_operating_point(rows, 1.0, objective="dice")
    assert (best["threshold"], best["min_lesion_mm"]) == (0.5, 5.0)
    assert criterion == "mean per-patient Dice"
