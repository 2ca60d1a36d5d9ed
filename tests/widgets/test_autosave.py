"""Autosave as a user meets it: a recovery file only while the mask holds unsaved hand edits, so
"Restore autosaved mask" comes after a crash or unsaved work, never after a clean session."""

from __future__ import annotations

import numpy as np
import pytest
from widget_helpers import (
    make_widget,
    paint_like_a_brush,
    press,
    run_and_wait,
    scan_file_opener,
)


@pytest.fixture
def scan(tmp_path, monkeypatch):
    """Opens the same scan file's CT in a viewer (each napari session anew); the cache in tmp."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return scan_file_opener(tmp_path / "scan.nii.gz")


def recovery_files(tmp_path) -> list:
    return sorted((tmp_path / "cache").rglob("*.nii.gz"))


def new_session(make_napari_viewer, scan, tiny_weights):
    viewer = make_napari_viewer()
    scan(viewer)
    widget = make_widget(viewer, tiny_weights, coarse=False, stages=False)
    widget._autosave_timer.setInterval(50)
    return viewer, widget


def test_saving_removes_the_recovery_file_and_a_clean_close_leaves_nothing_to_restore(
    qtbot, make_napari_viewer, scan, tiny_weights, tmp_path, errors
):
    viewer, widget = new_session(make_napari_viewer, scan, tiny_weights)
    run_and_wait(qtbot, widget, "current slice", z=3)
    mask = viewer.layers["CT tumor mask"]
    paint_like_a_brush(mask, 5, (12, 12), 1)
    qtbot.waitUntil(lambda: len(recovery_files(tmp_path)) == 1, timeout=5000)

    # File > Save Selected Layer with the plugin's writer: the mask is safe, the copy goes.
    viewer.layers.selection = {mask}
    viewer.layers.save(str(tmp_path / "mask.nii.gz"), selected=True, plugin="napari-nstseg")
    assert recovery_files(tmp_path) == []
    paint_like_a_brush(mask, 6, (40, 40), 1)  # a new edit is unsaved again...
    qtbot.waitUntil(lambda: len(recovery_files(tmp_path)) == 1, timeout=5000)
    press(viewer, mask, "undo")  # ...and undoing it brings back what is saved
    qtbot.wait(300)
    assert recovery_files(tmp_path) == []

    viewer.close()  # a clean end
    assert recovery_files(tmp_path) == []
    viewer, widget = new_session(make_napari_viewer, scan, tiny_weights)
    assert widget.restore_button.isHidden()
    assert errors == []


def test_a_model_run_alone_leaves_no_recovery_file_after_a_clean_close(
    qtbot, make_napari_viewer, scan, tiny_weights, tmp_path, errors
):
    viewer, widget = new_session(make_napari_viewer, scan, tiny_weights)
    run_and_wait(qtbot, widget, "whole volume")
    mask = viewer.layers["CT tumor mask"]
    press(viewer, mask, "undo")  # Ctrl+Z of the run is autosaved like any change...
    press(viewer, mask, "redo")
    qtbot.waitUntil(lambda: len(recovery_files(tmp_path)) == 1, timeout=5000)
    viewer.close()  # ...but holds no hand edit: nothing to offer next time
    assert recovery_files(tmp_path) == []
    _, widget = new_session(make_napari_viewer, scan, tiny_weights)
    assert widget.restore_button.isHidden()
    assert errors == []


def test_closing_the_panel_ends_its_session_too(
    qtbot, make_napari_viewer, scan, tiny_weights, tmp_path, errors
):
    viewer, widget = new_session(make_napari_viewer, scan, tiny_weights)
    run_and_wait(qtbot, widget, "current slice", z=3)
    mask = viewer.layers["CT tumor mask"]
    press(viewer, mask, "undo")
    qtbot.waitUntil(lambda: len(recovery_files(tmp_path)) == 1, timeout=5000)
    viewer.window.remove_dock_widget(widget)  # the panel's close button
    assert recovery_files(tmp_path) == []
    assert errors == []


def test_unsaved_edits_survive_a_clean_close_and_a_crash_and_are_offered_back(
    qtbot, make_napari_viewer, scan, tiny_weights, tmp_path, errors
):
    viewer, widget = new_session(make_napari_viewer, scan, tiny_weights)
    widget._autosave_timer.setInterval(60_000)  # the close comes before the timer
    run_and_wait(qtbot, widget, "current slice", z=3)
    mask = viewer.layers["CT tumor mask"]
    paint_like_a_brush(mask, 5, (12, 12), 1)
    edited = np.array(mask.data)
    assert recovery_files(tmp_path) == []
    viewer.close()  # napari closed with the correction unsaved: it is written on the way out
    assert len(recovery_files(tmp_path)) == 1

    viewer, widget = new_session(make_napari_viewer, scan, tiny_weights)
    assert not widget.restore_button.isHidden()
    widget.restore_autosave()
    np.testing.assert_array_equal(viewer.layers["CT tumor mask"].data, edited)
    # A crash: napari gone without closing; the file is what is left and is offered.
    widget._autosave_timer.stop()
    (path,) = recovery_files(tmp_path)
    assert path.exists()
    _, widget = new_session(make_napari_viewer, scan, tiny_weights)
    assert not widget.restore_button.isHidden()
    assert errors == []
