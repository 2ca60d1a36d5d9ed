"""Re-cutting the dock's last run: threshold, minimum lesion size and depth, operating points."""

from __future__ import annotations

import numpy as np
import pytest
from widget_helpers import (
    CT_SCALE,
    CT_SHAPE,
    RUN_TIMEOUT_MS,
    bright_volume_run,
    make_widget,
    paint_like_a_brush,
    press,
    run_and_wait,
    set_and_wait,
)

from napari_nstseg.widgets.dock import NSTSegWidget
from napari_nstseg.widgets.layers import LayerNames


def wait_for_threshold(qtbot, widget: NSTSegWidget, value: float) -> None:
    """Move the slider like a drag (several values in a row) and wait for the debounced re-cut."""
    start = float(widget.threshold.value)
    for step in np.linspace(start, value, 4)[1:]:
        widget.threshold.value = float(step)
    assert widget._threshold_timer.isActive()
    qtbot.waitUntil(lambda: not widget._threshold_timer.isActive(), timeout=5000)


def cut(probability: np.ndarray, threshold: float) -> np.ndarray:
    """Prediction.mask_at's rule for uint8 maps: stored value v means probability v / 255."""
    return (probability >= np.ceil(threshold * 255.0 - 1e-6)).astype(np.uint8)


def test_moving_the_threshold_recuts_the_last_run_at_once_as_one_undo_step(
    qtbot, viewer_with_ct, tiny_weights, errors
):
    from napari_nstseg.widgets.measurements import lesion_rows

    viewer, _ = viewer_with_ct
    widget = make_widget(viewer, tiny_weights, coarse=True, stages=True)
    run_and_wait(qtbot, widget, "current slice", z=3)
    names = LayerNames("CT")
    mask = viewer.layers[names.tumor_mask]
    prediction = widget.last_outcome.prediction
    at_half = np.array(mask.data)
    np.testing.assert_array_equal(at_half[3], prediction.mask_at(0.5)[3])
    low, high = prediction.mask_at(0.01)[3], prediction.mask_at(0.99)[3]
    # Otherwise the test could not tell a re-cut from no re-cut.
    assert np.count_nonzero(low) > np.count_nonzero(high)

    wait_for_threshold(qtbot, widget, 0.99)
    assert np.count_nonzero(mask.data) == np.count_nonzero(high) <= np.count_nonzero(at_half)
    np.testing.assert_array_equal(mask.data[3], high)
    assert not np.delete(np.asarray(mask.data), 3, axis=0).any()  # only the run's slice
    # The thresholded stage layers follow; the probability map does not change.
    np.testing.assert_array_equal(
        viewer.layers[names.coarse_mask].data[3], cut(prediction.coarse[3], 0.99)
    )
    for k, stage in enumerate(prediction.stages, start=1):
        np.testing.assert_array_equal(viewer.layers[names.stage(k)].data[3], cut(stage[3], 0.99))
    np.testing.assert_array_equal(viewer.layers[names.coarse].data[3], prediction.coarse[3])
    # The lesion table follows the re-cut mask.
    lesions = lesion_rows(np.asarray(mask.data), tuple(mask.scale))
    assert widget.lesion_table.rowCount() == len(lesions)
    for r, row in enumerate(lesions):
        assert widget.lesion_table.item(r, 1).text() == f"{row['volume_ml']:.3f}"

    at_high = np.array(mask.data)
    wait_for_threshold(qtbot, widget, 0.01)
    assert np.count_nonzero(mask.data) == np.count_nonzero(low) >= np.count_nonzero(at_high)
    np.testing.assert_array_equal(mask.data[3], low)
    assert "0.01" in widget.status.value

    # The drag from 0.99 to 0.01 was one step: one Ctrl+Z goes back to the 0.99 mask, the next
    # to the run's own 0.5 mask.
    press(viewer, mask, "undo")
    np.testing.assert_array_equal(mask.data, at_high)
    press(viewer, mask, "undo")
    np.testing.assert_array_equal(mask.data, at_half)
    assert errors == []


def test_threshold_change_spares_edited_slices(qtbot, viewer_with_ct, tiny_weights, errors):
    viewer, _ = viewer_with_ct
    widget = make_widget(viewer, tiny_weights, coarse=False, stages=False)
    run_and_wait(qtbot, widget, "whole volume")
    prediction = widget.last_outcome.prediction
    mask = viewer.layers[LayerNames("CT").tumor_mask]
    paint_like_a_brush(mask, 2, (10, 10), 1)
    mask.data_setitem((np.array([5, 5]), np.array([40, 41]), np.array([40, 40])), 0)
    mask.data_setitem((np.array([5]), np.array([3]), np.array([3])), 1)
    edited = {z: np.array(mask.data[z]) for z in (2, 5)}

    low = prediction.mask_at(0.01)
    others = [z for z in range(CT_SHAPE[0]) if z not in edited]
    assert (low[others] != prediction.mask_at(0.5)[others]).any()
    wait_for_threshold(qtbot, widget, 0.01)
    np.testing.assert_array_equal(mask.data[others], low[others])
    for z, labels in edited.items():
        np.testing.assert_array_equal(mask.data[z], labels)
    assert errors == []


def test_threshold_moved_during_a_run_is_applied_when_it_ends(
    qtbot, viewer_with_ct, tiny_weights, errors
):
    viewer, _ = viewer_with_ct
    widget = make_widget(viewer, tiny_weights, coarse=False, stages=False)
    run_and_wait(qtbot, widget, "current slice", z=4)
    widget.mode.value = "whole volume"
    widget.run()
    widget.threshold.value = 0.01
    qtbot.waitUntil(lambda: not widget.running, timeout=RUN_TIMEOUT_MS)
    mask = viewer.layers[LayerNames("CT").tumor_mask]
    prediction = widget.last_outcome.prediction
    assert prediction.threshold == pytest.approx(0.5)  # the run used the value it started with
    qtbot.waitUntil(lambda: np.array_equal(mask.data, prediction.mask_at(0.01)), timeout=5000)
    assert errors == []


# -- minimum lesion size ------------------------------------------------------------------------
def test_min_lesion_size_recuts_the_last_run_without_small_lesions_and_spares_edits(
    qtbot, make_napari_viewer, tiny_weights, errors, monkeypatch
):
    from napari_nstseg.widgets.measurements import lesion_rows

    viewer, widget, mask = bright_volume_run(
        qtbot, make_napari_viewer, tiny_weights, monkeypatch, stages=True
    )
    assert mask.data[2:6, 14:29, 14:29].all()
    assert widget.lesion_table.rowCount() == 3
    paint_like_a_brush(mask, 2, (52, 8), 1)
    edited = np.array(mask.data[2])
    before = np.array(mask.data)

    set_and_wait(qtbot, widget, widget.min_lesion, 5.0)
    assert not mask.data[4, 44:46, 44:46].any()  # the speck left the mask...
    assert mask.data[2:6, 14:29, 14:29].all()  # ...the lesion did not
    np.testing.assert_array_equal(mask.data[2], edited)  # the edited slice kept its labels
    stage = viewer.layers[LayerNames("CT").stage(1)]
    assert stage.data[4, 44:46, 44:46].all()  # the network's stage maps are not filtered
    assert "min lesion 5 mm" in widget.status.value
    rows = lesion_rows(np.asarray(mask.data), tuple(mask.scale))
    assert widget.lesion_table.rowCount() == len(rows) == 3  # lesion, edited speck, painting
    press(viewer, mask, "undo")  # one step back to the mask before the change
    np.testing.assert_array_equal(mask.data, before)
    press(viewer, mask, "redo")

    # The next run uses the spin box too.
    run_and_wait(qtbot, widget, "current slice", z=4)
    assert widget.last_outcome.request.min_lesion_mm == 5.0
    assert widget.last_outcome.prediction.min_lesion_mm == 5.0
    assert not mask.data[4, 44:46, 44:46].any()
    assert errors == []


def test_min_depth_recuts_the_last_run_without_lesions_seen_on_one_slice(
    qtbot, make_napari_viewer, tiny_weights, errors, monkeypatch
):
    viewer, widget, mask = bright_volume_run(
        qtbot, make_napari_viewer, tiny_weights, monkeypatch, stages=False
    )
    set_and_wait(qtbot, widget, widget.min_depth, 1.5 * CT_SCALE[0])  # asks for two slices
    assert not mask.data[4, 44:46, 44:46].any()  # one slice deep: gone
    assert not mask.data[2, 44:46, 20:22].any()
    assert mask.data[2:6, 14:29, 14:29].all()  # four slices deep: kept
    assert "min depth" in widget.status.value
    press(viewer, mask, "undo")  # one Ctrl+Z goes back to the run's own mask
    assert mask.data[4, 44:46, 44:46].all() and mask.data[2, 44:46, 20:22].all()
    request = widget.make_request("whole volume")
    assert request.min_depth_mm == pytest.approx(1.5 * CT_SCALE[0])
    assert errors == []


def tuned_copy(weights: str, stem, **points) -> str:
    """``weights`` saved again at ``stem`` with the operating points given (postprocess=...,
    organ_postprocess=...); its JSON path."""
    from napari_nstseg.models.checkpoint import load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(weights)
    save_checkpoint(stem, model, meta["model_config"], meta["preprocessing"], meta["provenance"],
                    **points)  # fmt: skip
    return f"{stem}.json"


def test_controls_start_at_the_weights_recommendation_until_the_user_moves_them(
    qtbot, viewer_with_ct, tiny_weights, tmp_path, errors
):
    point = {"threshold": 0.3, "min_lesion_mm": 4.0, "min_depth_mm": 6.0}
    tuned = tuned_copy(tiny_weights, tmp_path / "tuned", postprocess=point)
    viewer, _ = viewer_with_ct
    widget = make_widget(viewer, tuned)
    assert widget.threshold.value == pytest.approx(0.3)
    assert widget.min_lesion.value == pytest.approx(4.0)
    assert widget.min_depth.value == pytest.approx(6.0)
    assert not widget._threshold_timer.isActive()  # choosing weights re-cuts nothing
    request = widget.make_request("current slice")
    assert (request.threshold, request.min_lesion_mm) == (pytest.approx(0.3), 4.0)

    widget.threshold.value = 0.6  # the user's choice...
    widget.weights_file.value = tiny_weights  # ...outlives a change of weights,
    assert widget.threshold.value == pytest.approx(0.6)
    assert widget.min_lesion.value == 0.0  # while the untouched control follows the weights
    widget.weights_file.value = tuned
    assert widget.threshold.value == pytest.approx(0.6)
    assert widget.min_lesion.value == pytest.approx(4.0)
    assert errors == []


def test_organ_mode_shows_the_weights_organ_mode_point(
    qtbot, viewer_with_ct, tiny_weights, tmp_path, errors
):
    from napari_nstseg.widgets.organ_mode import ORGAN_MODE

    both = tuned_copy(
        tiny_weights, tmp_path / "both",
        postprocess={"threshold": 0.3, "min_lesion_mm": 4.0, "min_depth_mm": 6.0},
        organ_postprocess={"threshold": 0.7, "min_lesion_mm": 2.0, "min_depth_mm": 6.0},
    )  # fmt: skip
    viewer, _ = viewer_with_ct
    widget = make_widget(viewer, both)
    assert (widget.threshold.value, widget.min_lesion.value) == (pytest.approx(0.3), 4.0)
    widget.mode.value = ORGAN_MODE
    assert (widget.threshold.value, widget.min_lesion.value) == (pytest.approx(0.7), 2.0)
    widget.min_lesion.value = 3.0  # the user's choice holds in every mode
    widget.mode.value = "whole volume"
    assert (widget.threshold.value, widget.min_lesion.value) == (pytest.approx(0.3), 3.0)
    assert errors == []
