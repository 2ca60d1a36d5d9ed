"""The widget as the Plugins menu makes it (napari hands it a proxy that makes a new object for
every layer access): edits, Ctrl+Z, renames, the slice on screen and Cancel, as a user meets them.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np
from widget_helpers import (
    CT_SCALE,
    CT_SHAPE,
    CT_TRANSLATE,
    RUN_TIMEOUT_MS,
    BrightStandIn,
    bright_volume_run,
    docked,
    make_ct,
    make_widget,
    press,
    run_and_wait,
    set_and_wait,
)

from napari_nstseg.widgets.layers import LayerNames


def test_ctrl_z_undoes_one_brush_click_one_fill_and_one_model_run(
    qtbot, make_napari_viewer, tiny_weights, errors, monkeypatch
):
    viewer, _, mask = bright_volume_run(
        qtbot, make_napari_viewer, tiny_weights, monkeypatch, stages=False
    )
    after_run = np.array(mask.data)
    mask.brush_size = 5
    mask.paint((4, 52, 8), 1)  # a click of the brush, outside the body
    after_click = np.array(mask.data)
    assert after_click[4, 52, 8] and not after_run[4, 52, 8]
    viewer.dims.set_point(0, CT_TRANSLATE[0] + 4 * CT_SCALE[0])
    mask.fill((4, 20, 20), 0)  # the bucket erases the lesion on slice 4
    assert not mask.data[4, 14:29, 14:29].any()

    press(viewer, mask, "undo")
    np.testing.assert_array_equal(mask.data, after_click)
    press(viewer, mask, "undo")
    np.testing.assert_array_equal(mask.data, after_run)
    press(viewer, mask, "undo")  # the whole model run is one step
    assert not mask.data.any()
    press(viewer, mask, "redo")
    np.testing.assert_array_equal(mask.data, after_run)
    assert errors == []


def test_corrections_survive_a_rerun_and_trackers_do_not_pile_up(
    qtbot, make_napari_viewer, tiny_weights, errors, monkeypatch
):
    viewer, widget, mask = bright_volume_run(
        qtbot, make_napari_viewer, tiny_weights, monkeypatch, stages=False
    )
    callbacks = len(mask.events.paint.callbacks)
    viewer.dims.set_point(0, CT_TRANSLATE[0] + 3 * CT_SCALE[0])
    mask.fill((3, 20, 20), 0)  # the model's lesion on slice 3 is wrong: erased...
    mask.brush_size = 5
    mask.paint((3, 40, 30), 1)  # ...and the real one painted
    edited = np.array(mask.data[3])
    viewer.add_labels(np.zeros(CT_SHAPE, np.uint8), name="notes")

    run_and_wait(qtbot, widget, "whole volume")  # "overwrite slices I edited" is off
    np.testing.assert_array_equal(mask.data[3], edited)
    others = [z for z in range(CT_SHAPE[0]) if z != 3]
    np.testing.assert_array_equal(mask.data[others], widget.last_outcome.prediction.mask[others])
    assert len(mask.events.paint.callbacks) == callbacks
    assert errors == []


def test_a_renamed_ct_keeps_its_mask_its_edits_and_its_last_run(
    qtbot, make_napari_viewer, tiny_weights, errors, monkeypatch
):
    viewer, widget, mask = bright_volume_run(
        qtbot, make_napari_viewer, tiny_weights, monkeypatch, stages=False
    )
    mask.brush_size = 5
    mask.paint((3, 52, 8), 1)
    edited = np.array(mask.data[3])
    n_layers = len(viewer.layers)

    viewer.layers["CT"].name = "liver"
    assert widget.ct_layer.value == "liver"
    assert mask.name == LayerNames("liver").tumor_mask  # the mask follows the CT's name
    assert widget.mask_layer() is not None and widget.mask_layer().name == mask.name

    set_and_wait(qtbot, widget, widget.min_lesion, 5.0)  # the last run is still the CT's
    assert not mask.data[4, 44:46, 44:46].any() and mask.data[4, 14:29, 14:29].all()
    run_and_wait(qtbot, widget, "whole volume")
    assert len(viewer.layers) == n_layers  # no second set of layers
    np.testing.assert_array_equal(mask.data[3], edited)

    mask.name = "my mask"  # a name the user chose is the user's...
    viewer.layers["liver"].name = "CT"  # ...and the CT still finds its mask
    assert mask.name == "my mask" and widget.mask_layer().name == "my mask"
    assert errors == []


def test_current_slice_on_a_ct_not_on_screen_is_refused_in_words(
    qtbot, viewer_with_ct, tiny_weights, errors
):
    viewer, _ = viewer_with_ct
    far = (CT_TRANSLATE[0] + 1000.0, *CT_TRANSLATE[1:])
    viewer.add_image(make_ct(1), name="other CT", scale=CT_SCALE, translate=far)
    widget = make_widget(viewer, tiny_weights, coarse=False, stages=False)
    viewer.dims.set_point(0, CT_TRANSLATE[0] + 3 * CT_SCALE[0])  # slice 3 of "CT" on screen
    widget.ct_layer.value = "other CT"
    widget.mode.value = "current slice"
    widget.run()
    assert not widget.running
    assert "not on 'other CT'" in errors[-1] and "Scroll to a slice" in errors[-1], errors
    assert [layer.name for layer in viewer.layers] == ["CT", "other CT"]
    widget.run_variants()
    assert not widget.running and "not on 'other CT'" in errors[-1]

    # With a slice of it on screen, that slice is what runs.
    viewer.dims.set_point(0, far[0] + 5 * CT_SCALE[0])
    run_and_wait(qtbot, widget, "current slice")
    assert np.flatnonzero(widget.last_outcome.prediction.done).tolist() == [5]
    assert len(errors) == 2


def test_cancel_before_the_first_batch_says_so_and_changes_nothing(
    qtbot, viewer_with_ct, tiny_weights, errors, monkeypatch
):
    from napari_nstseg.widgets import runner

    viewer, _ = viewer_with_ct
    widget = make_widget(viewer, tiny_weights, coarse=False, stages=False)
    loading = threading.Event()
    load = runner.load_segmenter

    def slow_load(weights, device):
        loading.set()
        assert widget._request.cancel.wait(30)  # the user presses Cancel while it loads
        return load(weights, device)

    monkeypatch.setattr(runner, "load_segmenter", slow_load)
    widget.mode.value = "whole volume"
    widget.run()
    qtbot.waitUntil(loading.is_set, timeout=RUN_TIMEOUT_MS)
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.running, timeout=RUN_TIMEOUT_MS)
    assert widget.status.value.startswith("cancelled before any slice finished")
    assert "as they were" in widget.status.value
    assert widget.progress.value() == 0 < widget.progress.maximum()
    assert [layer.name for layer in viewer.layers] == ["CT"]
    assert errors == []


def test_the_plugin_reads_no_private_napari_attribute(
    qtbot, make_napari_viewer, tiny_weights, errors, monkeypatch
):
    from napari_nstseg.widgets import runner

    monkeypatch.setattr(runner, "load_segmenter", lambda w, d: BrightStandIn.segmenter())
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        viewer = make_napari_viewer()
        viewer.add_image(BrightStandIn.ct(), name="CT", scale=CT_SCALE, translate=CT_TRANSLATE)
        viewer.add_shapes(name="box")
        widget = docked(viewer)
        widget.device.value = "cpu"
        run_and_wait(qtbot, widget, "current slice", z=3)
        set_and_wait(qtbot, widget, widget.threshold, 0.3)
        widget.update_metrics()
        widget.apply_window()
    napari_futures = [str(w.message) for w in seen if issubclass(w.category, FutureWarning)]
    assert napari_futures == []
    assert errors == []
