"""Shared pieces of the widget tests: the synthetic CT and its grid, the widget as the Plugins
menu makes it, runs, brush clicks, key presses and a stand-in model whose mask is known."""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_nstseg.widgets.dock import FROM_FILE, NSTSegWidget
from napari_nstseg.widgets.layers import LayerNames

CT_SHAPE = (8, 64, 64)
CT_SCALE = (3.0, 0.8, 0.8)
CT_TRANSLATE = (-12.0, 20.0, -30.0)


def make_ct(seed: int = 0) -> np.ndarray:
    """Soft tissue (~40 HU) in air with a slightly darker blob: HU a CT scan would hold."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: CT_SHAPE[0], : CT_SHAPE[1], : CT_SHAPE[2]]
    hu = np.full(CT_SHAPE, -1000.0, np.float32)
    body = (y - 32) ** 2 + (x - 32) ** 2 < 28**2
    hu[body] = 40.0
    hu[((y - 30) ** 2 + (x - 36) ** 2 < 5**2) & (abs(z - 4) < 3)] = 20.0
    return hu + rng.normal(0, 8, CT_SHAPE).astype(np.float32)


def scan_file_opener(source_path):
    """A function that opens the synthetic CT in a viewer as read from the file ``source_path``
    (its grid and source in the layer's metadata), as each new napari session would."""
    from dataclasses import replace

    from napari_nstseg.io.volume import METADATA_KEY, Geometry

    geometry = replace(
        Geometry.from_spacing(CT_SHAPE, CT_SCALE, CT_TRANSLATE), source_path=str(source_path)
    )

    def open_scan(viewer):
        return viewer.add_image(
            make_ct(),
            name="CT",
            scale=geometry.spacing,
            translate=geometry.translate,
            metadata={METADATA_KEY: geometry.to_dict()},
        )

    return open_scan


RUN_TIMEOUT_MS = 60_000
PLUGIN, WIDGET = "napari-nstseg", "Segment small tumors (CDI-NSTSEG)"


def docked(viewer) -> NSTSegWidget:
    """The widget as users get it: from the Plugins menu, so napari hands it a proxy of the
    viewer (a new object for every layer access), docked in the window and closed with it."""
    from napari.utils._proxies import PublicOnlyProxy

    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    assert isinstance(widget, NSTSegWidget) and isinstance(widget.viewer, PublicOnlyProxy)
    return widget


def make_widget(viewer, weights: str, **maps: bool) -> NSTSegWidget:
    widget = docked(viewer)
    widget.weights_source.value = FROM_FILE
    widget.weights_file.value = weights
    widget.device.value = "cpu"
    for name, value in maps.items():
        getattr(widget, f"show_{name}").value = value
    return widget


def run_and_wait(qtbot, widget: NSTSegWidget, mode: str, z: int | None = None) -> None:
    if z is not None:
        widget.viewer.dims.set_point(0, CT_TRANSLATE[0] + z * CT_SCALE[0])
    widget.mode.value = mode
    widget.run()
    qtbot.waitUntil(lambda: not widget.running, timeout=RUN_TIMEOUT_MS)


def paint_like_a_brush(layer, z: int, center_yx: tuple[int, int], label: int) -> None:
    """A click of the brush: the layer's own paint call, one undo step."""
    layer.brush_size = 7
    layer.paint((z, *center_yx), label)


def press(viewer, layer, action: str) -> None:
    """Ctrl+Z ("undo") or Ctrl+Shift+Z ("redo") on the canvas with ``layer`` active: the path
    a user's key takes through napari's key bindings to the layer."""
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    viewer.layers.selection.active = layer
    modifiers = Qt.KeyboardModifier.ControlModifier
    if action == "redo":
        modifiers |= Qt.KeyboardModifier.ShiftModifier
    QTest.keyClick(viewer.window._qt_viewer.canvas.native, Qt.Key.Key_Z, modifiers)


class BrightStandIn:
    """Builds a network that calls tumor whatever is brighter than 150 HU, so the test knows
    the mask: a large lesion and two specks."""

    @staticmethod
    def segmenter():
        import torch

        from napari_nstseg.inference import Segmenter
        from napari_nstseg.models import SegOutput
        from napari_nstseg.preprocessing import PreprocessConfig, window_normalize

        prep = PreprocessConfig(working_spacing_mm=None)  # no resampling: crisp edges
        edge = float(window_normalize(np.array([150.0], np.float32), prep)[0])

        class Bright(torch.nn.Module):
            def forward(self, x, residual=None, return_scale_weights=False):
                logits = 50.0 * (x - edge)
                return SegOutput(coarse=logits, stages=[logits], final=logits)

        return Segmenter(Bright(), prep, "cpu")

    @staticmethod
    def ct() -> np.ndarray:
        hu = make_ct()
        hu[2:6, 14:29, 14:29] = 300.0  # 15 x 15 px at 0.8 mm: 17 mm across
        hu[4, 44:46, 44:46] = 300.0  # 2 x 2 px: 2.3 mm
        hu[2, 44:46, 20:22] = 300.0  # another speck, on the slice the user will edit
        return hu


def set_and_wait(qtbot, widget: NSTSegWidget, control: Any, value: float) -> None:
    """Move an operating-point control and wait for its debounced re-cut."""
    control.value = value
    assert widget._threshold_timer.isActive()
    qtbot.waitUntil(lambda: not widget._threshold_timer.isActive(), timeout=5000)


def bright_volume_run(qtbot, make_napari_viewer, tiny_weights, monkeypatch, stages: bool):
    """A whole-volume run of the stand-in model on its CT: (viewer, widget, tumor mask)."""
    from napari_nstseg.widgets import runner

    engine = BrightStandIn.segmenter()
    monkeypatch.setattr(runner, "load_segmenter", lambda weights, device, variant="": engine)
    viewer = make_napari_viewer()
    viewer.add_image(BrightStandIn.ct(), name="CT", scale=CT_SCALE, translate=CT_TRANSLATE)
    widget = make_widget(viewer, tiny_weights, coarse=False, stages=stages)
    run_and_wait(qtbot, widget, "whole volume")
    mask = viewer.layers[LayerNames("CT").tumor_mask]
    assert mask.data[4, 44:46, 44:46].all() and mask.data[2, 44:46, 20:22].all()
    return viewer, widget, mask
