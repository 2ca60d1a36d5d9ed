"""Removing lesions below a minimum size (longest axial diameter, in the scan's own spacing)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_nstseg import postprocess
from napari_nstseg.metrics import measure_lesions
from napari_nstseg.postprocess import PostprocessConfig, remove_small_lesions


def blobs(shape=(6, 60, 60)) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[1:4, 5:29, 5:17] = 1  # 24 x 12 px
    mask[2, 40:44, 40:43] = 1  # 4 x 3 px
    return mask


def test_keeps_a_12_mm_lesion_and_drops_a_3_mm_one_on_an_anisotropic_grid():
    spacing = (2.5, 0.4, 0.8)  # in-plane pixels are not square either
    mask = blobs()
    sizes = sorted(les["longest_axial_diameter_mm"] for les in measure_lesions(mask, spacing))
    # edge to edge: hypot(24 * 0.4, 12 * 0.8) = 13.6 mm and hypot(4 * 0.4, 3 * 0.8) = 2.9 mm
    assert sizes == pytest.approx([np.hypot(1.6, 2.4), np.hypot(9.6, 9.6)])
    out = remove_small_lesions(mask, spacing, 5.0)
    expected = mask.copy()
    expected[2, 40:44, 40:43] = 0
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == mask.dtype and mask[2, 41, 41] == 1  # the input is left alone


def test_the_size_follows_the_spacing():
    mask = np.zeros((3, 30, 30), np.uint8)
    mask[1, 10:18, 10:18] = 1  # 8 x 8 voxels
    kept = remove_small_lesions(mask, (1.0, 1.0, 1.0), 5.0)  # 11.3 mm
    dropped = remove_small_lesions(mask, (1.0, 0.3, 0.3), 5.0)  # 3.4 mm
    np.testing.assert_array_equal(kept, mask)
    assert not dropped.any()
    # Only the in-plane spacing decides: the slice thickness is not part of an axial diameter.
    np.testing.assert_array_equal(remove_small_lesions(mask, (9.0, 1.0, 1.0), 5.0), mask)


def test_the_size_is_the_largest_axial_diameter_not_the_3d_extent():
    """A thin oblique structure crossing many slices (a vessel) spans far in-plane over its
    slices but is small in every one of them."""
    mask = np.zeros((8, 40, 40), np.uint8)
    for z in range(8):
        # 2 x 2 px moving 2 px a slice: consecutive squares touch corner to corner (26-connected)
        mask[z, 2 + 2 * z : 4 + 2 * z, 2 + 2 * z : 4 + 2 * z] = 1
    (lesion,) = measure_lesions(mask, (1.0, 1.0, 1.0))
    assert lesion["longest_axial_diameter_mm"] == pytest.approx(np.hypot(2, 2))
    assert not remove_small_lesions(mask, (1.0, 1.0, 1.0), 5.0).any()


def test_specks_only_become_empty_and_zero_keeps_everything():
    rng = np.random.default_rng(0)
    mask = np.zeros((10, 64, 64), np.uint8)
    idx = rng.integers(0, [10, 64, 64], size=(300, 3))
    mask[tuple(idx.T)] = 1
    assert mask.any()
    assert not remove_small_lesions(mask, (2.0, 0.7, 0.7), 3.0).any()
    labels = mask * 3  # other label values pass through untouched
    same = remove_small_lesions(labels, (2.0, 0.7, 0.7), 0.0)
    np.testing.assert_array_equal(same, labels)
    assert same.dtype == labels.dtype and same is not labels


def test_a_single_slice_and_a_2d_mask_work():
    mask = blobs()[2:3]
    out = remove_small_lesions(mask, (2.5, 0.4, 0.8), 5.0)
    assert out[0, 5:29, 5:17].all() and not out[0, 40:44, 40:43].any()
    np.testing.assert_array_equal(remove_small_lesions(mask[0], (0.4, 0.8), 5.0), out[0])


def test_only_the_named_slices_are_looked_at_and_changed():
    mask = np.zeros((5, 20, 20), np.uint8)
    mask[1, 5:7, 5:7] = 1
    mask[2, 5:7, 5:20] = 1  # not ours: must neither be removed nor join slices 1 and 3
    mask[3, 5:7, 5:7] = 1
    out = remove_small_lesions(mask, (1.0, 1.0, 1.0), 5.0, slices=[1, 3])
    assert not out[[1, 3]].any()
    np.testing.assert_array_equal(out[2], mask[2])


def test_specks_skip_the_exact_diameter(monkeypatch):
    """Thousands of specks must not each pay for a convex hull: their bounding box already
    shows they are too small."""
    calls = []
    real = postprocess.longest_axial_diameter_mm

    def counting(region, spacing_yx):
        calls.append(region.shape)
        return real(region, spacing_yx)

    monkeypatch.setattr(postprocess, "longest_axial_diameter_mm", counting)
    mask = np.zeros((20, 128, 128), np.uint8)
    mask[::2, ::4, ::4] = 1  # thousands of isolated voxels
    mask[3:10, 36:64, 36:64] = 0
    mask[5:8, 40:60, 40:60] = 1  # and one 20 x 20 lesion, clear of them
    out = remove_small_lesions(mask, (1.0, 0.8, 0.8), 5.0)
    assert len(calls) == 1
    assert out.sum() == 3 * 20 * 20


def test_operating_point_is_validated_and_round_trips():
    point = PostprocessConfig(0.35, 5)
    assert PostprocessConfig.from_dict(point.to_dict()) == point
    assert point.to_dict() == {"threshold": 0.35, "min_lesion_mm": 5.0, "min_depth_mm": 0.0}
    # an operating point written before min_depth_mm existed still reads
    assert PostprocessConfig.from_dict({"min_lesion_mm": 3}) == PostprocessConfig(0.5, 3.0)
    for bad in (
        {"threshold": 1.5},
        {"min_lesion_mm": -1},
        {"min_lesion_mm": float("nan")},
        {"min_depth_mm": -2},
    ):
        with pytest.raises(ValueError):
            PostprocessConfig.from_dict(bad)
    with pytest.raises(ValueError, match="unknown"):
        PostprocessConfig.from_dict({"thresold": 0.4})
    with pytest.raises(ValueError, match="number"):
        PostprocessConfig.from_dict({"threshold": "0.4"})


def test_lesions_seen_on_too_few_slices_are_dropped_by_depth_in_mm():
    """min_depth_mm counts slices times the slice spacing, so 4 mm asks for 2 slices of a 3 mm
    scan and 3 slices of a 1.5 mm one; the in-plane size plays no part."""
    mask = np.zeros((10, 40, 40), np.uint8)
    mask[2, 5:15, 5:15] = 1  # one slice, 10 x 10 px
    mask[5:7, 20:30, 20:30] = 1  # two slices
    single, double = mask.copy(), mask.copy()
    single[5:7] = 0
    double[2] = 0
    np.testing.assert_array_equal(
        remove_small_lesions(mask, (3.0, 1.0, 1.0), 0, min_depth_mm=4), double
    )
    assert not remove_small_lesions(mask, (1.5, 1.0, 1.0), 0, min_depth_mm=4).any()
    np.testing.assert_array_equal(
        remove_small_lesions(mask, (5.0, 1.0, 1.0), 0, min_depth_mm=4), mask
    )
    # both limits at once: each lesion has to pass both
    both = remove_small_lesions(mask, (3.0, 1.0, 1.0), 12.0, min_depth_mm=4)
    np.testing.assert_array_equal(both, double)
    assert not remove_small_lesions(mask, (3.0, 1.0, 1.0), 15.0, min_depth_mm=4).any()


def test_depth_is_not_judged_where_the_neighbouring_slice_was_not_segmented():
    """A single slice run (the widget's current-slice mode) or the edge of a cancelled run:
    the lesion may go on in the slice next to it, so it stays."""
    mask = np.zeros((10, 40, 40), np.uint8)
    mask[4, 5:15, 5:15] = 1
    mask[7, 20:30, 20:30] = 1
    spacing = (3.0, 1.0, 1.0)
    # only slice 4 was segmented: kept, and slice 7 (not ours) is left alone
    np.testing.assert_array_equal(
        remove_small_lesions(mask, spacing, 0, slices=[4], min_depth_mm=4), mask
    )
    # slices 3-8 segmented: both lie inside, both are one slice deep
    assert not remove_small_lesions(mask, spacing, 0, slices=range(3, 9), min_depth_mm=4).any()
    # slices 4-8: the one at slice 4 touches slice 3, which was not segmented
    kept = remove_small_lesions(mask, spacing, 0, slices=range(4, 9), min_depth_mm=4)
    np.testing.assert_array_equal(kept[4], mask[4])
    assert not kept[7].any()
    # the scan's own first and last slices are no unknown neighbours
    edge = np.zeros((3, 20, 20), np.uint8)
    edge[0, 2:8, 2:8] = 1
    assert not remove_small_lesions(edge, spacing, 0, min_depth_mm=4).any()
    # one (y, x) slice has no depth to judge
    np.testing.assert_array_equal(
        remove_small_lesions(mask[4], (1.0, 1.0), 0, min_depth_mm=4), mask[4]
    )


def test_a_lesion_exactly_at_the_depth_limit_stays_whatever_the_rounding_of_the_spacing():
    """3 slices of a scan whose header says 2.3333333 mm span 7 mm to a reader, although the
    product falls 1e-7 short: a lesion at the limit is kept, one a slice less deep is not."""
    mask = np.zeros((9, 20, 20), np.uint8)
    mask[3:6, 5:10, 5:10] = 1
    mask[7:8, 12:17, 12:17] = 1  # one slice less deep would be 2 slices; this is 1
    spacing = (2.3333333, 0.7, 0.7)
    assert 3 * spacing[0] < 7.0  # the case is a real floating-point edge
    kept = remove_small_lesions(mask, spacing, 0, min_depth_mm=7)
    assert kept[3:6].all(axis=0).sum() == 25 and not kept[7].any()
    assert not remove_small_lesions(mask, spacing, 0, min_depth_mm=7.001).any()


def test_operating_points_match_up_to_float_noise_only():
    """A spin box's 0.35 and a JSON file's 0.35 are one point; 0.36 is another."""
    point = PostprocessConfig(0.35, 5.0, 4.0)
    assert 0.05 * 7 != 0.35 and point.matches(PostprocessConfig(0.05 * 7, 5.0, 4.0))
    assert not point.matches(PostprocessConfig(0.36, 5.0, 4.0))
    assert not point.matches(PostprocessConfig(0.35, 5.0, 0.0))


def test_weights_without_an_operating_point_get_the_documented_one_and_it_cannot_drift():
    # docs: a checkpoint that carries none is run at 0.5 / 0 mm / 0 mm (keep every lesion)
    import dataclasses

    point = PostprocessConfig()
    assert (point.threshold, point.min_lesion_mm, point.min_depth_mm) == (0.5, 0.0, 0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        point.threshold = 0.9  # shared by the engine and the panel: never changed in place


# The cases below were found by mutation testing (docs/mutation.md): each one a change to
# postprocess.py that no test noticed before.


def test_a_lesion_on_pixels_larger_than_1_mm_is_measured_in_mm_before_the_shortcut():
    # 4 x 4 pixels of 2 mm: 8 mm a side, about 11 mm corner to corner. The cheap bounding-box
    # shortcut must scale both sides by their spacing, or it calls the lesion small and drops it.
    mask = np.zeros((1, 12, 12), np.uint8)
    mask[0, 4:8, 4:8] = 1
    diameter = measure_lesions(mask, (3.0, 2.0, 2.0))[0]["longest_axial_diameter_mm"]
    assert diameter > 10.0
    for spacing in ((3.0, 2.0, 2.0), (3.0, 2.0, 2.5), (3.0, 2.5, 2.0)):
        assert remove_small_lesions(mask, spacing, 10.0).sum() == 16, spacing


def test_the_first_and_the_last_slice_can_be_named_and_one_past_the_end_cannot():
    mask = np.zeros((4, 8, 8), np.uint8)
    mask[0, 1:2, 1:2] = 1  # a speck on the first slice
    mask[3, 5:6, 5:6] = 1  # and one on the last
    out = remove_small_lesions(mask, (1.0, 1.0, 1.0), 3.0, slices=[0, 3])
    assert out.sum() == 0
    with pytest.raises(ValueError, match=r"slices must lie in 0\.\.3, got \[4\]"):
        remove_small_lesions(mask, (1.0, 1.0, 1.0), 3.0, slices=[4])
    with pytest.raises(ValueError, match=r"0\.\.3"):
        remove_small_lesions(mask, (1.0, 1.0, 1.0), 3.0, slices=[-1])


def test_a_zero_or_missing_spacing_is_refused():
    mask = np.ones((2, 4, 4), np.uint8)
    for spacing in ((0.0, 1.0, 1.0), (1.0, 1.0), (1.0, float("nan"), 1.0)):
        with pytest.raises(ValueError, match="spacing must be the voxel size"):
            remove_small_lesions(mask, spacing, 3.0)
    # a (y, x) mask takes a (y, x) spacing: one slice, its depth never judged
    speck = np.zeros((6, 6), np.uint8)
    speck[2:4, 2:4] = 1
    assert remove_small_lesions(speck, (2.0, 2.0), 0.0, min_depth_mm=5.0).sum() == 4


def test_threshold_0_and_1_are_valid_operating_points():
    assert PostprocessConfig(threshold=0.0).threshold == 0.0
    assert PostprocessConfig(threshold=1.0).threshold == 1.0


def test_the_centre_rule_keeps_lesions_by_where_their_centre_lies_not_where_they_reach():
    from napari_nstseg.postprocess import keep_centred_lesions

    zone = np.zeros((3, 20, 20), bool)
    zone[:, :, :10] = True  # the organ (grown by the rule's distance): the left half
    mask = np.zeros((3, 20, 20), np.uint8)
    mask[1, 2:5, 2:14] = 1  # reaches out of the zone, centred in it (x 7.5)
    mask[1, 10:13, 6:18] = 1  # reaches into the zone, centred out of it (x 11.5)
    mask[1, 16:18, 16:18] = 1  # wholly outside
    out = keep_centred_lesions(mask, zone)
    assert out.dtype == mask.dtype and mask.sum() == 36 + 36 + 4  # the input is not changed
    assert out[1, 2:5, 2:14].all() and not out[1, 10:].any()
    with pytest.raises(ValueError, match="differ in shape"):
        keep_centred_lesions(mask, zone[:2])
