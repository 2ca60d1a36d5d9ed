"""The panel as a user meets it on a laptop: it fits a 1000 px screen with every control reachable,
offers the bundled weights by name, and leaves the tumor mask ready to correct after a run."""

from __future__ import annotations

import json
import shutil

import numpy as np
from widget_helpers import (
    CT_SCALE,
    CT_SHAPE,
    CT_TRANSLATE,
    BrightStandIn,
    docked,
    make_widget,
    run_and_wait,
)

from napari_nstseg.widgets.layers import LayerNames


def test_the_dock_fits_a_1000_px_screen_its_title_reads_whole_and_every_control_is_reachable(
    make_napari_viewer, qtbot
):
    from qtpy.QtWidgets import QApplication, QDockWidget, QLabel, QWidget

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1600, 1000)
    widget = docked(viewer)
    window = QWidget.window(widget)
    dock = widget.parent()
    while not isinstance(dock, QDockWidget):
        dock = dock.parent()
    title = dock.titleBarWidget().findChild(QLabel)
    qtbot.waitUntil(lambda: title.width() >= title.sizeHint().width(), timeout=5000)
    assert "Segment small tumors (CDI-NSTSEG)" in title.text()

    hint = widget.minimumSizeHint().expandedTo(widget.minimumSize())
    assert hint.height() <= 800, hint  # was 1366 with every section one above the other
    assert window.minimumSizeHint().height() <= 1000
    QApplication.processEvents()
    assert window.height() <= 1000

    widget.mode.value = "ROI"  # the ROI controls show in ROI mode only
    controls = [
        widget.ct_layer, widget.weights_source, widget.device, widget.mode, widget.roi_layer,
        widget.roi_margin, widget.window, widget.threshold, widget.min_lesion, widget.min_depth,
        widget.show_coarse, widget.show_stages, widget.show_stage_probs, widget.show_residual,
        widget.show_scale_weights, widget.mirror, widget.overwrite, widget.run_button,
        widget.cancel_button,
    ]  # fmt: skip
    natives = [c.native for c in controls]
    tabbed = {
        "Metrics": [widget.gt_layer.native, widget.metrics_table],
        "Lesions": [widget.lesion_table, widget.measure_button, widget.export_button],
        "Visual ablation": [
            *(box.native for box in widget.variant_boxes.values()),
            widget.ablation_button.native,
            widget.normal_view_button.native,
        ],
    }
    viewport = widget.scroll.viewport()
    tabs = [widget.results.tabText(i) for i in range(widget.results.count())]
    for tab, members in [("Metrics", natives), *tabbed.items()]:
        widget.results.setCurrentIndex(tabs.index(tab))
        for native in members:
            widget.scroll.ensureWidgetVisible(native, 0, 0)
            QApplication.processEvents()
            assert native.isVisibleTo(widget), native
            top_left = native.mapTo(viewport, native.rect().topLeft())
            bottom = native.mapTo(viewport, native.rect().bottomLeft()).y()
            # In view once scrolled to, and not taller than the view (a table fits whole).
            assert 0 <= top_left.y() and bottom <= viewport.height(), (native, tab)
            assert 0 <= top_left.x() and native.width() <= viewport.width()


def _bundled_folder(tmp_path, tiny_weights) -> dict[str, str]:
    """A weights folder as the package ships one: 'default' and a second checkpoint 'sarcoma',
    each with its one-line description."""
    from pathlib import Path

    folder = tmp_path / "weights"
    folder.mkdir()
    descriptions = {
        "default": "CDI-NSTSEG on inserted lesions (test stand-in)",
        "sarcoma": "CDI-NSTSEG for soft-tissue sarcoma (test stand-in)",
    }
    source = Path(tiny_weights)
    for name, text in descriptions.items():
        meta = json.loads(source.read_text())
        meta["description"] = text
        (folder / f"{name}.json").write_text(json.dumps(meta))
        shutil.copy(source.with_suffix(".safetensors"), folder / f"{name}.safetensors")
    return {"folder": str(folder), **descriptions}


def test_the_weights_chooser_offers_each_bundled_checkpoint_by_name_and_runs_the_chosen_one(
    qtbot, viewer_with_ct, tiny_weights, tmp_path, monkeypatch, errors
):
    from qtpy.QtCore import Qt

    from napari_nstseg import bundled
    from napari_nstseg.inference import Segmenter

    shipped = _bundled_folder(tmp_path, tiny_weights)
    monkeypatch.setattr(bundled, "WEIGHTS_DIR", tmp_path / "weights")
    loaded: list[str | None] = []
    original = Segmenter.from_checkpoint

    def spy(cls, path=None, *args, **kwargs):
        loaded.append(path)
        return original(path, *args, **kwargs)

    monkeypatch.setattr(Segmenter, "from_checkpoint", classmethod(spy))
    viewer, _ = viewer_with_ct
    widget = docked(viewer)
    combo = widget.weights_source.native
    assert [combo.itemText(i) for i in range(combo.count())] == ["default", "sarcoma", "file..."]
    tips = [combo.itemData(i, Qt.ItemDataRole.ToolTipRole) for i in range(2)]
    assert tips == [shipped["default"], shipped["sarcoma"]]
    assert widget.weights_source.value == "default"
    assert shipped["default"] in widget.weights_about.value

    widget.weights_source.value = "sarcoma"
    assert shipped["sarcoma"] in widget.weights_about.value
    assert widget.weights_file.native.isHidden()  # a bundled choice needs no file
    widget.device.value = "cpu"
    run_and_wait(qtbot, widget, "current slice", z=4)
    assert loaded == [str(tmp_path / "weights" / "sarcoma.json")]
    assert widget.last_error == "" and errors == []

    widget.weights_source.value = "file..."
    assert not widget.weights_file.native.isHidden()


def test_after_a_run_the_mask_is_selected_the_ticked_maps_show_and_ground_truth_is_scored(
    qtbot, make_napari_viewer, tiny_weights, monkeypatch, errors
):
    from napari_nstseg.widgets import runner

    engine = BrightStandIn.segmenter()
    monkeypatch.setattr(runner, "load_segmenter", lambda weights, device, variant="": engine)
    viewer = make_napari_viewer()
    hu = BrightStandIn.ct()
    grid = {"scale": CT_SCALE, "translate": CT_TRANSLATE}
    viewer.add_image(hu, name="CT", **grid)
    viewer.add_labels(np.zeros(CT_SHAPE, np.uint8), name="notes", **grid)
    viewer.add_labels((hu > 150).astype(np.uint8), name="CT ground truth", **grid)
    viewer.add_labels(np.zeros(CT_SHAPE, np.uint8), name="more notes", **grid)
    widget = make_widget(viewer, tiny_weights, coarse=True, stages=True, stage_probs=True)
    assert widget.gt_layer.value == "CT ground truth"  # at once, not picked by hand
    run_and_wait(qtbot, widget, "whole volume")
    assert errors == []

    names = LayerNames("CT")
    mask = viewer.layers[names.tumor_mask]
    assert viewer.layers.selection.active is mask and mask.visible
    mask.mode = "paint"  # napari's brush acts on the mask
    mask.brush_size = 3
    mask.paint((1, 5, 5), 1)
    assert mask.data[1, 5, 5] == 1
    mask.undo()

    # (the stand-in network has one LFM stage)
    maps = [names.coarse, names.coarse_mask, names.stage(1), names.stage_probability(1)]
    for name in maps:
        layer = viewer.layers[name]
        assert layer.visible and layer.opacity >= 0.5, name
    for name in (names.coarse, names.stage_probability(1)):
        layer = viewer.layers[name]
        assert tuple(layer.contrast_limits) == (0, 255), name
        assert layer.blending == "additive" and layer.colormap.colors[0][:3].max() < 0.05
    assert viewer.layers[names.stage(1)].contour > 0  # outlines: the CT shows through
    # The stand-in marks exactly the bright voxels, so the mask matches the ground truth.
    assert widget.metrics_table.item(0, 1).text() == "1.000"

    # A layer the user hid stays hidden on the next run; the mask is selected again.
    viewer.layers[names.coarse].visible = False
    viewer.layers.selection.active = viewer.layers["notes"]
    run_and_wait(qtbot, widget, "current slice", z=4)
    assert not viewer.layers[names.coarse].visible
    assert viewer.layers.selection.active is mask
    # Choosing no ground truth is the user's to make: new layers do not undo it.
    widget.gt_layer.value = "(none)"
    viewer.add_labels(np.zeros(CT_SHAPE, np.uint8), name="notes 2", **grid)
    assert widget.gt_layer.value == "(none)"


def test_ground_truth_is_recognised_by_name_but_never_our_own_output():
    from napari.components import ViewerModel

    from napari_nstseg.widgets.ground_truth import looks_like_ground_truth, pick_ground_truth

    viewer = ViewerModel()
    blank = np.zeros(CT_SHAPE, np.uint8)
    for name in ("sample CT ground truth", "STS_008 radiologist's contour (ground truth)",
                 "case_gt", "GTV", "tumour", "liver lesions", "ROI", "notes", "CT tumor mask",
                 "CT tumor mask [no GLM]", "CT LFM stage 3", "target"):  # fmt: skip
        viewer.add_labels(blank, name=name)
    viewer.add_labels(blank, name="tumor", metadata={"nstseg_role": "tumor mask"})
    viewer.add_image(blank.astype(float), name="tumour image")
    picked = [ly.name for ly in viewer.layers if looks_like_ground_truth(ly)]
    assert picked == [
        "sample CT ground truth",
        "STS_008 radiologist's contour (ground truth)",
        "case_gt",
        "GTV",
        "tumour",
        "liver lesions",
    ]
    viewer.add_labels(np.zeros((2, 2, 2), np.uint8), name="small gt")
    assert pick_ground_truth(viewer.layers, CT_SHAPE) == "liver lesions"
    assert pick_ground_truth(viewer.layers, None) == "small gt"
