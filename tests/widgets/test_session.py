"""The panel's state without Qt: a run, its re-cut, edits kept and Ctrl+Z, driven through
Session and Runs on napari's plugin proxy of a bare ViewerModel, as the panel drives them."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from napari.components import ViewerModel
from napari.utils._proxies import PublicOnlyProxy
from widget_helpers import BrightStandIn

from napari_nstseg.io.volume import METADATA_KEY, Geometry
from napari_nstseg.widgets import runner
from napari_nstseg.widgets.layers import LayerNames, MapsToShow
from napari_nstseg.widgets.operating_point import OperatingPoint, Recommendation
from napari_nstseg.widgets.requests import Choices, WidgetError, build_request
from napari_nstseg.widgets.runs import Runs, slice_list
from napari_nstseg.widgets.session import Session

SHAPE = (6, 32, 32)
SCALE = (3.0, 0.8, 0.8)
LESION = (slice(1, 5), slice(8, 20), slice(8, 20))  # 12 px at 0.8 mm: 9.6 mm across
SPECK = (4, slice(26, 28), slice(26, 28))  # 2 px: 1.6 mm


def bright_ct() -> np.ndarray:
    """Soft tissue with a lesion and a speck brighter than 150 HU: what the stand-in finds."""
    hu = np.full(SHAPE, 40.0, np.float32)
    hu[LESION] = 300.0
    hu[SPECK] = 300.0
    return hu


@pytest.fixture
def panel(tmp_path, monkeypatch):
    """(viewer as a plugin gets it, Session, Runs, choices of a whole-volume run); engines
    loaded are counted in ``panel.loads``."""
    loads: list[str] = []
    engine = BrightStandIn.segmenter()

    def load(weights, device, variant=""):
        loads.append(weights)
        return engine

    monkeypatch.setattr(runner, "load_segmenter", load)
    model = ViewerModel()
    geometry = Geometry.from_spacing(SHAPE, SCALE, (0.0, 0.0, 0.0))
    model.add_image(
        bright_ct(), name="CT", scale=SCALE, metadata={METADATA_KEY: geometry.to_dict()}
    )
    viewer = PublicOnlyProxy(model)
    weights = tmp_path / "stand-in.json"
    weights.write_text("{}")
    choices = Choices(
        mode="whole volume",
        weights_path=weights,
        bundled_name=None,
        device="cpu",
        threshold=0.5,
        min_lesion_mm=0.0,
        min_depth_mm=0.0,
        maps=MapsToShow(coarse=False, stages=True),
        overwrite=False,
        mirror=False,
    )
    session = Session(viewer)
    return viewer, session, Runs(session), choices, loads


def run(viewer, runs: Runs, choices: Choices):
    """One run as the panel makes it, in this thread: start, result shown, finished."""
    request = build_request(viewer, viewer.layers["CT"], choices)
    runs.start(request)
    report = runs.returned(runs.session.run(request))
    runs.finished()
    return report


def test_a_run_shows_its_mask_ready_to_correct_and_loads_the_engine_once(panel):
    viewer, session, runs, choices, loads = panel
    report = run(viewer, runs, choices)
    assert report.errors == [] and report.status == "done: 6 slice(s)" and report.measure
    mask = viewer.layers[LayerNames("CT").tumor_mask]
    expected = (bright_ct() > 150).astype(np.uint8)
    np.testing.assert_array_equal(mask.data, expected)
    # the brush is ready on the mask, not on a stage map added after it
    assert viewer.layers.selection.active.name == mask.name and mask.visible
    assert session.mask_layer(viewer.layers["CT"]).name == mask.name
    run(viewer, runs, choices)
    assert len(loads) == 1  # the engine is kept for the next run


def test_a_recut_changes_the_mask_at_once_as_one_undo_step(panel):
    viewer, session, runs, choices, _ = panel
    run(viewer, runs, choices)
    mask = viewer.layers[LayerNames("CT").tumor_mask]
    ct = viewer.layers["CT"]
    assert mask.data[SPECK].all()

    report = runs.recut(ct, OperatingPoint(min_lesion_mm=5.0))
    assert report.ct is not None and "min lesion 5 mm applied" in report.status
    assert not mask.data[SPECK].any() and mask.data[LESION].all()
    report = runs.recut(ct, OperatingPoint(min_lesion_mm=5.0, min_depth_mm=15.0))
    assert not mask.data.any()  # the lesion spans 4 slices of 3 mm: 12 mm
    mask.undo()
    assert mask.data[LESION].all() and not mask.data[SPECK].any()
    mask.undo()
    assert mask.data[SPECK].all()


def test_edits_survive_a_rerun_and_a_recut_and_undo_takes_each_back_in_turn(panel):
    viewer, _, runs, choices, _ = panel
    choices.min_lesion_mm = 5.0
    run(viewer, runs, choices)
    mask = viewer.layers[LayerNames("CT").tumor_mask]
    after_run = np.array(mask.data)
    assert not after_run[SPECK].any()
    mask.brush_size = 3
    mask.paint((2, 28, 4), 1)  # the radiologist adds what the model missed on slice 2
    mask.paint((3, 10, 10), 0)  # and erases part of the lesion on slice 3
    edited = np.array(mask.data)
    assert not np.array_equal(edited[2], after_run[2]) and not edited[3, 10, 10]

    choices.min_lesion_mm = 0.0
    run(viewer, runs, choices)  # "overwrite slices I edited" is off
    assert mask.data[SPECK].all()  # the run changed what nobody edited...
    after_rerun = np.array(mask.data)
    np.testing.assert_array_equal(after_rerun[[2, 3]], edited[[2, 3]])  # ...and only that
    runs.recut(viewer.layers["CT"], OperatingPoint(min_lesion_mm=5.0, min_depth_mm=15.0))
    assert not mask.data[[1, 4]].any()  # the lesion spans 4 slices of 3 mm: 12 mm
    np.testing.assert_array_equal(mask.data[[2, 3]], edited[[2, 3]])

    mask.undo()  # the recut
    np.testing.assert_array_equal(mask.data, after_rerun)
    mask.undo()  # the second run
    np.testing.assert_array_equal(mask.data, edited)
    mask.undo()  # the erasing
    mask.undo()  # the painting
    np.testing.assert_array_equal(mask.data, after_run)


def test_a_recut_asked_for_during_a_run_waits_for_it(panel):
    viewer, _, runs, choices, _ = panel
    request = build_request(viewer, viewer.layers["CT"], choices)
    runs.start(request)
    assert runs.recut(viewer.layers["CT"], OperatingPoint(threshold=0.3)).ct is None
    assert runs.recut_pending
    runs.returned(runs.session.run(request))
    assert runs.finished() == (1, 1)
    assert runs.recut_pending  # the panel re-cuts now
    assert runs.recut(viewer.layers["CT"], OperatingPoint(threshold=0.3)).ct is not None


def test_a_recut_without_a_run_on_the_ct_changes_nothing_and_says_so(panel):
    viewer, _, runs, _, _ = panel
    report = runs.recut(viewer.layers["CT"], OperatingPoint(threshold=0.3))
    assert report.ct is None and "used by the next run" in report.status
    assert [layer.name for layer in viewer.layers] == ["CT"]


def test_cancel_before_the_first_batch_leaves_the_layers_alone(panel):
    viewer, _, runs, choices, _ = panel
    request = build_request(viewer, viewer.layers["CT"], choices)
    runs.start(request)
    assert runs.cancel()
    report = runs.returned(runs.session.run(request))
    assert "cancelled before any slice finished" in report.status
    assert runs.finished() == (0, SHAPE[0])  # the bar shows nothing done
    assert [layer.name for layer in viewer.layers] == ["CT"]


def test_weights_that_do_not_load_are_one_sentence(panel, monkeypatch):
    viewer, _, runs, choices, _ = panel

    def broken(weights, device, variant=""):
        raise ValueError("tensor 'head.weight' has the wrong shape")

    monkeypatch.setattr(runner, "load_segmenter", broken)
    report = run(viewer, runs, choices)
    assert len(report.errors) == 1 and "Could not load weights file" in report.errors[0]
    assert "wrong shape" in report.errors[0]
    assert [layer.name for layer in viewer.layers] == ["CT"]


def test_a_choice_the_model_cannot_run_is_refused_in_words(panel, tmp_path):
    viewer, _, _, choices, _ = panel
    choices.weights_path = tmp_path / "missing.json"
    with pytest.raises(WidgetError, match="missing.json.*does not exist"):
        build_request(viewer, viewer.layers["CT"], choices)
    viewer.add_image(np.zeros((4, 4)), name="flat")
    with pytest.raises(WidgetError, match="'flat' is 2-D"):
        build_request(viewer, viewer.layers["flat"], choices)
    choices.mode = "ROI"
    with pytest.raises(WidgetError, match="ROI mode needs"):
        build_request(viewer, viewer.layers["CT"], choices)


def test_the_weights_recommend_only_the_controls_the_user_has_not_moved(tmp_path):
    import torch

    from napari_nstseg.models import ModelConfig, build_model
    from napari_nstseg.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    config = ModelConfig(base_width=8, fused_channels=8, lfm_stages=1)
    tuned = {"threshold": 0.3, "min_lesion_mm": 4.0, "min_depth_mm": 6.0}
    stem = tmp_path / "tuned"
    save_checkpoint(stem, build_model(config), config.to_dict(), {}, {}, postprocess=tuned)
    plain = tmp_path / "plain"
    save_checkpoint(plain, build_model(config), config.to_dict(), {}, {})

    recommendation = Recommendation()
    assert recommendation.values(tmp_path / "tuned.json") == {
        "threshold": 0.3,
        "min_lesion": 4.0,
        "min_depth": 6.0,
    }
    recommendation.move("threshold")
    assert recommendation.values(plain) == {"min_lesion": 0.0, "min_depth": 0.0}
    assert recommendation.values(tmp_path / "absent.json") == {}  # the run will say why
    assert recommendation.values(None) == {}


def test_slice_lists_read_as_runs():
    assert slice_list([1, 2, 3, 7]) == "1-3, 7"
    assert slice_list([5]) == "5"


def test_the_session_modules_import_neither_qt_nor_magicgui():
    modules = ["session", "runs", "requests", "operating_point", "autosave", "measurements"]
    code = (
        "import sys\n"
        + "".join(f"import napari_nstseg.widgets.{m}\n" for m in modules + ["ablation_view"])
        + "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'superqt'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
