"""The NSTSEG dock widget on a real (tiny, untrained) checkpoint and a synthetic CT layer."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from widget_helpers import (
    CT_SCALE,
    CT_SHAPE,
    CT_TRANSLATE,
    RUN_TIMEOUT_MS,
    BrightStandIn,
    docked,
    make_widget,
    paint_like_a_brush,
    press,
    run_and_wait,
    scan_file_opener,
)

from napari_nstseg.io.volume import METADATA_KEY
from napari_nstseg.widgets import dock as dock_module
from napari_nstseg.widgets.dock import BUNDLED, FROM_FILE, viewer_grid
from napari_nstseg.widgets.layers import LayerNames, mirroring_of_slices
from napari_nstseg.widgets.weights import WeightsChoice


def test_slice_then_volume_run_make_every_stage_layer_on_the_ct_grid(
    qtbot, viewer_with_ct, tiny_weights, errors
):
    viewer, ct = viewer_with_ct
    widget = make_widget(
        viewer, tiny_weights, coarse=True, stages=True, stage_probs=True, scale_weights=True
    )
    run_and_wait(qtbot, widget, "current slice", z=3)
    assert errors == []
    names = LayerNames("CT")
    expected = [
        names.coarse,
        names.coarse_mask,
        *(names.stage(k) for k in (1, 2, 3)),
        *(names.stage_probability(k) for k in (1, 2, 3)),
        *(names.scale_weight(i) for i in range(3)),
        names.tumor_mask,
    ]
    for name in expected:
        layer = viewer.layers[name]
        assert layer.data.shape == CT_SHAPE, name
        np.testing.assert_allclose(layer.scale, CT_SCALE)
        np.testing.assert_allclose(layer.translate, CT_TRANSLATE)
        assert layer.metadata[METADATA_KEY]["source_shape"] == [64, 64, 8]
    # Only the current slice was predicted: the maps hold values there and nowhere else.
    coarse = viewer.layers[names.coarse].data
    assert coarse[3].any()
    assert not np.delete(coarse, 3, axis=0).any()
    prediction = widget.last_outcome.prediction
    np.testing.assert_array_equal(viewer.layers[names.tumor_mask].data[3], prediction.mask[3])
    # The three scale weights are a softmax: they sum to one (255 in uint8) on every pixel.
    total = sum(viewer.layers[names.scale_weight(i)].data[3].astype(int) for i in range(3))
    assert np.abs(total - 255).max() <= 2

    run_and_wait(qtbot, widget, "whole volume")
    assert errors == []
    assert viewer.layers[names.coarse].data.reshape(8, -1).any(axis=1).all()
    prediction = widget.last_outcome.prediction
    assert prediction.done.all()
    np.testing.assert_array_equal(viewer.layers[names.tumor_mask].data, prediction.mask)


def test_user_edits_survive_a_rerun_unless_overwrite(qtbot, viewer_with_ct, tiny_weights, errors):
    viewer, _ = viewer_with_ct
    widget = make_widget(viewer, tiny_weights, coarse=False, stages=False)
    run_and_wait(qtbot, widget, "current slice", z=3)
    mask = viewer.layers[LayerNames("CT").tumor_mask]
    before = np.array(mask.data[3])
    paint_like_a_brush(mask, 3, (10, 10), 1)  # outside the body: the model never puts tumor here
    paint_like_a_brush(mask, 3, (40, 40), 0)
    edited = np.array(mask.data[3])
    assert (edited != before).any()

    run_and_wait(qtbot, widget, "whole volume")
    prediction = widget.last_outcome.prediction
    np.testing.assert_array_equal(mask.data[3], edited)
    others = [z for z in range(CT_SHAPE[0]) if z != 3]
    np.testing.assert_array_equal(mask.data[others], prediction.mask[others])

    widget.overwrite.value = True
    run_and_wait(qtbot, widget, "current slice", z=3)
    np.testing.assert_array_equal(mask.data[3], widget.last_outcome.prediction.mask[3])
    assert errors == []


def test_undo_after_a_model_run_restores_the_previous_mask(
    qtbot, viewer_with_ct, tiny_weights, errors
):
    viewer, _ = viewer_with_ct
    widget = make_widget(viewer, tiny_weights, coarse=False, stages=False)
    widget.threshold.value = 0.3
    run_and_wait(qtbot, widget, "current slice", z=2)
    mask = viewer.layers[LayerNames("CT").tumor_mask]
    after_first = np.array(mask.data)
    widget.threshold.value = 0.6
    run_and_wait(qtbot, widget, "whole volume")
    assert not np.array_equal(mask.data, after_first)
    mask.undo()
    np.testing.assert_array_equal(mask.data, after_first)
    mask.undo()
    assert not mask.data.any()
    assert errors == []


def test_cancel_keeps_finished_slices_and_leaves_the_rest_untouched(
    qtbot, viewer_with_ct, tiny_weights, errors, monkeypatch
):
    from napari_nstseg.inference import Segmenter

    viewer, _ = viewer_with_ct
    widget = make_widget(viewer, tiny_weights, coarse=True, stages=False)
    widget.threshold.value = 0.3
    run_and_wait(qtbot, widget, "current slice", z=7)
    names = LayerNames("CT")
    mask, coarse = viewer.layers[names.tumor_mask], viewer.layers[names.coarse]
    mask_before, coarse_before = np.array(mask.data), np.array(coarse.data)

    # Hold the engine after its first batch (4 of 8 slices) until Cancel is pressed, so the
    # cancel lands between batches deterministically.
    original = Segmenter.iter_predict
    first_batch_done = threading.Event()

    def held(self, *args, **kwargs):
        events = original(self, *args, **kwargs)
        first = next(events)
        first_batch_done.set()
        assert widget._request.cancel.wait(30)
        yield first
        yield from events

    monkeypatch.setattr(Segmenter, "iter_predict", held)
    widget.threshold.value = 0.6
    widget.mode.value = "whole volume"
    widget.run()
    qtbot.waitUntil(first_batch_done.is_set, timeout=RUN_TIMEOUT_MS)
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.running, timeout=RUN_TIMEOUT_MS)

    outcome = widget.last_outcome
    assert outcome.cancelled and errors == []
    np.testing.assert_array_equal(outcome.prediction.done, [True] * 4 + [False] * 4)
    np.testing.assert_array_equal(mask.data[:4], outcome.prediction.mask[:4])
    np.testing.assert_array_equal(mask.data[4:], mask_before[4:])
    assert coarse.data[:4].any()
    np.testing.assert_array_equal(coarse.data[4:], coarse_before[4:])
    assert coarse.data[7].any()  # the earlier run's slice is still there
    assert "cancelled: 4 of 8 slice(s)" in widget.status.value
    # The bar shows what was done, not a full run.
    assert (widget.progress.value(), widget.progress.maximum()) == (4, 8)


def test_bad_weights_and_non_ct_layers_give_a_notification_not_an_exception(
    qtbot, viewer_with_ct, tiny_weights, errors, tmp_path, monkeypatch
):
    viewer, _ = viewer_with_ct
    bad = tmp_path / "bad.json"
    bad.write_text("this is not a checkpoint")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    widget = make_widget(viewer, str(bad))
    run_and_wait(qtbot, widget, "current slice", z=1)
    assert len(errors) == 1 and "bad.json" in errors[0]
    assert [layer.name for layer in viewer.layers] == ["CT"]

    widget.weights_file.value = str(tmp_path / "missing.json")
    widget.run()
    assert "missing.json" in errors[-1] and "does not exist" in errors[-1]

    # Bundled weights removed while napari runs: the run says so and what to do instead.
    gone = WeightsChoice(BUNDLED, tmp_path / "no-weights-here" / "default.json", "gone")
    monkeypatch.setitem(widget.weights_choices, BUNDLED, gone)
    widget.weights_source.value = BUNDLED
    run_and_wait(qtbot, widget, "current slice", z=1)
    assert "'default'" in errors[-1] and "no longer installed" in errors[-1]
    assert "file..." in errors[-1]
    widget.weights_source.value = FROM_FILE

    widget.weights_file.value = tiny_weights
    viewer.add_image(np.zeros((64, 64), np.float32), name="photo")
    viewer.add_image(np.zeros((8, 64, 64, 3), np.uint8), name="colour", rgb=True)
    viewer.add_image(np.random.default_rng(0).random(CT_SHAPE), name="normalised")
    for name, words in (
        ("photo", "3-D"),
        ("colour", "RGB"),
        ("normalised", "Hounsfield"),
    ):
        widget.ct_layer.value = name
        widget.run()
        assert not widget.running
        assert name in errors[-1] and words in errors[-1], errors[-1]
    assert len(errors) == 6
    assert len(viewer.layers) == 4


def add_mask_layer(viewer, name: str = "CT tumor mask") -> object:
    return viewer.add_labels(
        np.zeros(CT_SHAPE, np.uint8), name=name, scale=CT_SCALE, translate=CT_TRANSLATE
    )


def test_metrics_panel_scores_the_mask_against_ground_truth(viewer_with_ct):
    viewer, _ = viewer_with_ct
    mask = add_mask_layer(viewer)
    truth = add_mask_layer(viewer, "truth")
    mask.data[3, 10:20, 10:20] = 1  # 100 px
    truth.data[3, 15:25, 10:20] = 1  # 100 px, 50 of them shared
    widget = docked(viewer)
    viewer.dims.set_point(0, CT_TRANSLATE[0] + 3 * CT_SCALE[0])
    widget.gt_layer.value = "truth"
    values = widget.update_metrics()
    n_slice, n_volume = 64 * 64, int(np.prod(CT_SHAPE))
    expected = {
        "Dice": (0.5, 0.5),
        "IoU": (1 / 3, 1 / 3),
        "precision": (0.5, 0.5),
        "recall": (0.5, 0.5),
        "specificity": ((n_slice - 150) / (n_slice - 100), (n_volume - 150) / (n_volume - 100)),
    }
    for name, (on_slice, on_volume) in expected.items():
        assert values[name] == pytest.approx((on_slice, on_volume)), name
    # S- and E-measure of a half-overlapping square lie strictly between chance and perfect.
    for name in ("S-measure", "E-measure"):
        assert 0.3 < values[name][0] < 1.0 and values[name][0] == pytest.approx(values[name][1])
    assert widget.metrics_table.item(0, 0).text() == "0.500"

    # An empty slice that both masks agree on is perfect there, while the volume stays the same.
    viewer.dims.set_point(0, CT_TRANSLATE[0] + 6 * CT_SCALE[0])
    assert widget.update_metrics()["Dice"] == pytest.approx((1.0, 0.5))


def test_lesion_table_and_csv_export(viewer_with_ct, tmp_path):
    viewer, _ = viewer_with_ct
    mask = add_mask_layer(viewer)
    mask.data[2:4, 10:20, 10:20] = 1  # 200 voxels of 3 x 0.8 x 0.8 mm
    mask.data[6, 40:45, 40:45] = 1  # 25 voxels
    widget = docked(viewer)
    rows = widget.update_measurements()
    voxel_ml = 3 * 0.8 * 0.8 / 1000
    assert [r["id"] for r in rows] == [1, 2]
    assert rows[0]["volume_ml"] == pytest.approx(200 * voxel_ml)
    assert rows[1]["volume_ml"] == pytest.approx(25 * voxel_ml)
    # Between pixel edges: a 10 x 10 px square of 0.8 mm pixels measures its 8 mm diagonal.
    assert rows[0]["longest_axial_diameter_mm"] == pytest.approx(8 * np.sqrt(2))
    assert rows[0]["slice_range"] == (2, 3) and rows[1]["slice_range"] == (6, 6)
    assert widget.lesion_table.rowCount() == 2
    assert widget.lesion_table.item(0, 3).text() == "2-3"
    # every header, units included, is readable at the dock's width
    viewer.window._qt_window.show()
    header = widget.lesion_table.horizontalHeader()
    metrics = header.fontMetrics()
    for c in range(widget.lesion_table.columnCount()):
        text = widget.lesion_table.horizontalHeaderItem(c).text()
        # (plus the header's own padding, a few pixels each side)
        assert header.sectionSize(c) >= metrics.horizontalAdvance(text) + 8, (text, header.width())

    path = widget.export_csv(tmp_path / "lesions.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == "id,volume_ml,longest_axial_diameter_mm,first_slice,last_slice"
    assert lines[1] == f"1,{200 * voxel_ml:.4f},11.31,2,3"
    assert lines[2] == f"2,{25 * voxel_ml:.4f},5.66,6,6"


def test_visual_ablation_adds_one_mask_per_variant_in_grid_mode(
    qtbot, viewer_with_ct, tiny_weights, errors
):
    viewer, _ = viewer_with_ct
    viewer.add_labels(np.zeros(CT_SHAPE, np.uint8), name="notes", visible=False)
    widget = make_widget(viewer, tiny_weights, coarse=True, stages=False)
    run_and_wait(qtbot, widget, "current slice", z=4)
    full = widget.last_outcome.prediction
    before = [(layer.name, layer.visible) for layer in viewer.layers]
    widget.run_variants()
    qtbot.waitUntil(lambda: not widget.running, timeout=RUN_TIMEOUT_MS)
    assert errors == []
    for variant in ("no SFM", "no GLM", "no LFM", "single scale 1.0"):
        layer = viewer.layers[f"CT tumor mask [{variant}]"]
        assert layer.data.shape == CT_SHAPE
        np.testing.assert_allclose(layer.translate, CT_TRANSLATE)
        prediction = widget.variant_outcomes[variant].prediction
        np.testing.assert_array_equal(layer.data[4], prediction.mask[4])
    grid = viewer_grid(viewer)
    assert grid.enabled and grid.stride == 2
    # Without LFMs the final map is exactly the full network's GLM coarse map.
    no_lfm = widget.variant_outcomes["no LFM"].prediction
    assert np.abs(no_lfm.final[4].astype(int) - full.coarse[4].astype(int)).max() <= 1
    # Dropping the GLM attention changes the result: the switch really acts.
    no_glm = widget.variant_outcomes["no GLM"].prediction
    assert (no_glm.final[4] != full.final[4]).any()
    # The main tumor mask (what users save) is untouched by the variants.
    np.testing.assert_array_equal(viewer.layers["CT tumor mask"].data[4], full.mask[4])

    # What the user sees: one cell per model, each the CT (visible) under its mask (visible,
    # its name written in the cell), the full model first.
    from napari.layers import Image, Labels

    cells = []
    for _, indices in grid.iter_viewboxes(viewer.layers):
        if not indices:  # five cells fill a 3 x 2 grid
            continue
        shown = [viewer.layers[i] for i in indices if viewer.layers[i].visible]
        assert [type(layer) for layer in shown] == [Image, Labels], [ly.name for ly in shown]
        ct_view, mask = shown
        assert np.shares_memory(ct_view.data, viewer.layers["CT"].data)
        assert tuple(ct_view.contrast_limits) == tuple(viewer.layers["CT"].contrast_limits)
        assert mask.opacity > 0 and mask.name_overlay.visible
        cells.append(mask.name)
    variants = ("no SFM", "no GLM", "no LFM", "single scale 1.0")
    assert cells == ["CT tumor mask", *(f"CT tumor mask [{v}]" for v in variants)]
    assert widget.normal_view_button.enabled

    # ... and the way back: the grid off, the layers as they were, the variants' hidden.
    widget.show_normal_view()
    assert not grid.enabled and not widget.normal_view_button.enabled
    assert [(layer.name, layer.visible) for layer in viewer.layers][: len(before)] == before
    assert not any(layer.visible for layer in list(viewer.layers)[len(before) :])
    assert not any(layer.name_overlay.visible for layer in viewer.layers)


def test_edited_mask_is_autosaved_and_offered_back_when_the_scan_reopens(
    qtbot, make_napari_viewer, tiny_weights, errors, tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    open_scan = scan_file_opener(tmp_path / "scan.nii.gz")

    viewer = make_napari_viewer()
    open_scan(viewer)
    widget = make_widget(viewer, tiny_weights, coarse=False, stages=False)
    widget._autosave_timer.setInterval(50)
    run_and_wait(qtbot, widget, "current slice", z=3)
    mask = viewer.layers["CT tumor mask"]
    paint_like_a_brush(mask, 5, (12, 12), 1)
    edited = np.array(mask.data)
    saved = tmp_path / "cache"
    qtbot.waitUntil(lambda: any(saved.rglob("*.nii.gz")), timeout=5000)

    viewer.layers.clear()
    assert widget.restore_button.isHidden()
    open_scan(viewer)
    assert not widget.restore_button.isHidden()
    widget.restore_autosave()
    np.testing.assert_array_equal(viewer.layers["CT tumor mask"].data, edited)
    # A model run after the restore must not overwrite the recovered work.
    run_and_wait(qtbot, widget, "whole volume")
    for z in np.flatnonzero(edited.reshape(edited.shape[0], -1).any(axis=1)):
        np.testing.assert_array_equal(viewer.layers["CT tumor mask"].data[z], edited[z])
    viewer.layers["CT tumor mask"].undo()
    viewer.layers["CT tumor mask"].undo()
    assert not viewer.layers["CT tumor mask"].data.any()
    assert errors == []


def world(z: float, y: float, x: float) -> list[float]:
    """CT data index -> napari world coordinates (mm)."""
    return [t + i * s for t, i, s in zip(CT_TRANSLATE, (z, y, x), CT_SCALE, strict=True)]


def test_roi_mode_runs_only_inside_a_rectangle_or_a_mask_box_plus_margin(
    qtbot, viewer_with_ct, tiny_weights, errors
):
    viewer, _ = viewer_with_ct
    corners = [world(5, 20, 25), world(5, 20, 40), world(5, 30, 40), world(5, 30, 25)]
    viewer.add_shapes([np.array(corners)], shape_type="rectangle", name="box")
    widget = make_widget(viewer, tiny_weights, coarse=True, stages=False)
    widget.roi_layer.value = "box"
    widget.roi_margin.value = 2.4  # 3 pixels in-plane, 0.8 of a 3 mm slice
    run_and_wait(qtbot, widget, "ROI")
    assert errors == []
    prediction = widget.last_outcome.prediction
    assert prediction.roi == (4, 7, 17, 34, 22, 44)
    coarse = viewer.layers["CT GLM coarse"].data
    inside = np.zeros(CT_SHAPE, bool)
    inside[4:7, 17:34, 22:44] = True
    assert coarse[inside].any()
    assert not coarse[~inside].any()

    organ = add_mask_layer(viewer, "organ")
    organ.data[1:3, 50:55, 5:9] = 1
    widget.roi_layer.value = "organ"
    widget.roi_margin.value = 0.0
    run_and_wait(qtbot, widget, "ROI")
    assert widget.last_outcome.prediction.roi == (1, 3, 50, 55, 5, 9)
    assert errors == []

    # A 2-D rectangle lies on the slice shown now.
    flat = [c[1:] for c in corners]
    viewer.add_shapes([np.array(flat)], shape_type="rectangle", name="flat box")
    viewer.dims.set_point(0, world(2, 0, 0)[0])
    widget.roi_layer.value = "flat box"
    widget.roi_margin.value = 0.0
    assert widget.make_request("ROI").roi == (slice(2, 3), slice(20, 31), slice(25, 41))

    widget.roi_layer.value = "(none)"
    widget.run()
    assert "ROI" in errors[-1]


def test_window_preset_sets_the_ct_contrast_and_missing_mae_skips_the_residual(
    qtbot, viewer_with_ct, tiny_weights, errors
):
    viewer, ct = viewer_with_ct
    widget = make_widget(viewer, tiny_weights, coarse=False, stages=False, residual=True)
    widget.window.value = "lung"
    assert tuple(ct.contrast_limits) == (-1350.0, 150.0)
    widget.window.value = "abdomen"
    assert tuple(ct.contrast_limits) == (-160.0, 240.0)
    run_and_wait(qtbot, widget, "current slice", z=0)
    assert errors == []
    assert "CT SSL residual" not in viewer.layers
    assert "CT tumor mask" in viewer.layers


def test_undo_and_redo_reach_the_autosave(qtbot, viewer_with_ct, tmp_path, monkeypatch):
    from napari_nstseg.io.readers import read_mask
    from napari_nstseg.widgets.dock import autosave_path
    from napari_nstseg.widgets.layers import ct_geometry

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    viewer, ct = viewer_with_ct
    widget = docked(viewer)
    widget._autosave_timer.setInterval(50)
    mask = add_mask_layer(viewer)
    path = autosave_path("layer:CT", CT_SHAPE)
    geometry = ct_geometry(ct)

    def saved_stroke() -> bool:
        return path.exists() and bool(read_mask(path, like=geometry)[5].any())

    paint_like_a_brush(mask, 5, (12, 12), 1)
    qtbot.waitUntil(saved_stroke, timeout=5000)

    press(viewer, mask, "undo")
    assert not mask.data.any()
    qtbot.waitUntil(lambda: not saved_stroke(), timeout=5000)

    press(viewer, mask, "redo")
    assert mask.data[5].any()
    qtbot.waitUntil(saved_stroke, timeout=5000)


def test_the_mirror_box_also_runs_each_slice_mirrored_and_keeps_the_mask_in_place(
    qtbot, make_napari_viewer, tiny_weights, errors, monkeypatch
):
    from napari_nstseg.widgets import runner

    engine = BrightStandIn.segmenter()
    seen = []
    forward = engine.model.forward

    def recording(x, *args, **kwargs):
        seen.append(x.clone())
        return forward(x, *args, **kwargs)

    engine.model.forward = recording
    monkeypatch.setattr(runner, "load_segmenter", lambda weights, device, variant="": engine)
    viewer = make_napari_viewer()
    viewer.add_image(BrightStandIn.ct(), name="CT", scale=CT_SCALE, translate=CT_TRANSLATE)
    widget = make_widget(viewer, tiny_weights, coarse=False, stages=False)
    run_and_wait(qtbot, widget, "current slice", z=2)
    assert len(seen) == 1
    mask = viewer.layers[LayerNames("CT").tumor_mask]
    plain = np.array(mask.data)

    widget.mirror.value = True
    widget.overwrite.value = True
    run_and_wait(qtbot, widget, "current slice", z=2)
    assert widget.last_outcome.request.mirror
    assert len(seen) == 3
    np.testing.assert_array_equal(seen[2], seen[1].flip(-1))
    # A stand-in that looks at each voxel alone: the averaged mask lies where the lesion is.
    np.testing.assert_array_equal(mask.data, plain)
    assert mask.data[2, 14:29, 14:29].all() and mask.data[2, 44:46, 20:22].all()
    assert errors == []

    # Runs on different slices add up in one mask: the mask records how each slice was made,
    # and the widget says so as soon as it mixes both ways.
    warnings: list[str] = []
    monkeypatch.setattr(dock_module, "show_warning", warnings.append)
    assert mirroring_of_slices(mask) == ([2], [])  # the mirrored run replaced the plain slice
    run_and_wait(qtbot, widget, "current slice", z=3)
    assert warnings == []  # still one setting throughout
    widget.mirror.value = False
    run_and_wait(qtbot, widget, "current slice", z=5)
    assert mirroring_of_slices(mask) == ([2, 3], [5])
    assert len(warnings) == 1 and "(2-3)" in warnings[0] and "(5)" in warnings[0]
    # a slice corrected by hand is left alone by the next run, and so is its record
    widget.overwrite.value = False
    paint_like_a_brush(mask, 3, (5, 5), 1)
    run_and_wait(qtbot, widget, "current slice", z=3)  # without mirroring, as for slice 5
    assert mirroring_of_slices(mask) == ([2, 3], [5])
