"""The whole "learn from my corrections" round in napari, as users reach it (Plugins menu, so the
widget holds a proxy of the viewer): run, paint corrections, keep them for training, fine-tune
(a tiny budget) in the thread worker, see Dice before and after, switch to the new weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from widget_helpers import RUN_TIMEOUT_MS, make_widget, paint_like_a_brush, run_and_wait

from napari_nstseg.bundled import WEIGHTS_DIR
from napari_nstseg.corrections.store import CT_NAME, stored_cases
from napari_nstseg.io.readers import read_ct
from napari_nstseg.training.cases import CASE_RECORD_NAME
from napari_nstseg.widgets.dock import FROM_FILE
from napari_nstseg.widgets.layers import LayerNames

CORRECTED = (0, 1, 2, 6, 7)


def keep(qtbot, widget) -> None:
    """Click "Use my corrections for training" and wait for the save in the background."""
    widget.corrections_tab.keep_button.clicked()
    qtbot.waitUntil(lambda: not widget.corrections.keeping, timeout=RUN_TIMEOUT_MS)


def correct(mask, z: int) -> None:
    """One brush click that fixes a pixel the model got wrong on slice ``z`` (the synthetic CT's
    darker blob is the lesion): a missed lesion pixel painted, or a false one erased."""
    y, x = np.mgrid[: mask.data.shape[1], : mask.data.shape[2]]
    truth = ((y - 30) ** 2 + (x - 36) ** 2 < 25) & (abs(z - 4) < 3)
    wrong = np.argwhere((np.asarray(mask.data[z]) > 0) != truth)
    assert len(wrong), f"the model's mask is right on slice {z}: nothing to correct"
    wy, wx = (int(v) for v in wrong[len(wrong) // 2])
    paint_like_a_brush(mask, z, (wy, wx), int(truth[wy, wx]))


def test_correct_keep_fine_tune_and_use_the_new_weights(
    qtbot, viewer_with_ct, tiny_weights, errors, tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data-home"))
    viewer, ct = viewer_with_ct
    widget = make_widget(viewer, tiny_weights, coarse=False, stages=False)
    tab = widget.corrections_tab
    store = tmp_path / "my corrections"
    tab.store.value = str(store)

    # Nothing corrected yet: one sentence, nothing written.
    tab.keep_button.clicked()
    assert errors and "run the model" in errors[-1]
    run_and_wait(qtbot, widget, "whole volume")
    tab.keep_button.clicked()
    assert "No slice" in errors[-1] and not store.exists()

    mask = viewer.layers[LayerNames("CT").tumor_mask]
    for z in CORRECTED:
        correct(mask, z)
    n_errors = len(errors)
    tab.keep_button.clicked()
    assert widget.corrections.keeping and not tab.keep_button.enabled  # saved in the background
    qtbot.waitUntil(lambda: not widget.corrections.keeping, timeout=RUN_TIMEOUT_MS)
    assert len(errors) == n_errors and tab.keep_button.enabled
    (case,) = stored_cases(store)
    assert case.slices == list(CORRECTED)
    assert case.record["first_mask_weights"]["path"] == str(Path(tiny_weights).resolve())
    assert np.array_equal(read_ct(case.folder / CT_NAME).hu.shape, ct.data.shape)
    assert "kept slice(s) 0-2, 6-7" in tab.status.value

    # A second keep of the same scan updates its folder.
    correct(mask, 4)
    keep(qtbot, widget)
    (case,) = stored_cases(store)
    assert case.slices == sorted({*CORRECTED, 4})
    assert json.loads((case.folder / CASE_RECORD_NAME).read_text())["annotated_slices"] == [
        0, 1, 2, 4, 6, 7
    ]  # fmt: skip

    tab.steps.value = 2
    progress = []
    tab.finetune_button.clicked()
    assert widget.corrections.finetuning and tab.cancel_button.enabled
    widget.corrections._finetune_worker.yielded.connect(progress.append)
    qtbot.waitUntil(lambda: not widget.corrections.finetuning, timeout=RUN_TIMEOUT_MS * 3)
    assert len(errors) == n_errors, errors
    result = widget.corrections.finetune_result
    assert result is not None and not result.cancelled
    assert {p.stage for p in progress} >= {"training", "after"}
    assert any(p.eta_s is not None for p in progress)
    assert "before" in tab.dice.value and "after" in tab.dice.value
    assert f"{result.dice_before:.3f}" in tab.dice.value
    # Saved beside the store, never over the weights it started from or the bundled ones.
    assert result.weights.parent == store / "weights" and result.weights.is_file()
    assert WEIGHTS_DIR not in result.weights.parents
    card = result.card.read_text()
    assert "6 corrected slices from 1 scan" in card and "before" in card
    meta = json.loads(result.weights.read_text())
    assert meta["provenance"]["fine_tuned"]["dice_held_out"]["before"] == result.dice_before

    assert tab.use_button.enabled
    tab.use_button.clicked()
    assert widget.weights_source.value == FROM_FILE
    assert Path(str(widget.weights_file.value)) == result.weights
    run_and_wait(qtbot, widget, "current slice", z=3)
    assert widget.last_outcome.request.weights == str(result.weights)
    assert len(errors) == n_errors, errors


def test_cancel_stops_fine_tuning_and_saves_nothing(
    qtbot, viewer_with_ct, tiny_weights, errors, tmp_path
):
    viewer, _ = viewer_with_ct
    widget = make_widget(viewer, tiny_weights, coarse=False, stages=False)
    tab = widget.corrections_tab
    store = tmp_path / "store"
    run_and_wait(qtbot, widget, "whole volume")
    mask = viewer.layers[LayerNames("CT").tumor_mask]
    for z in CORRECTED:
        correct(mask, z)
    not_a_folder = tmp_path / "a file"
    not_a_folder.write_text("")
    tab.store.value = str(not_a_folder)
    keep(qtbot, widget)
    assert len(errors) == 1 and errors[0].startswith("Could not keep the corrections of 'CT'")
    tab.store.value = str(store)
    keep(qtbot, widget)
    tab.steps.value = 10_000
    tab.finetune_button.clicked()
    qtbot.waitUntil(lambda: "step" in tab.status.value, timeout=RUN_TIMEOUT_MS)
    tab.cancel_button.clicked()
    qtbot.waitUntil(lambda: not widget.corrections.finetuning, timeout=RUN_TIMEOUT_MS)
    assert widget.corrections.finetune_result.cancelled and "cancelled" in tab.status.value
    assert not (store / "weights").exists() and not tab.use_button.enabled
    assert len(errors) == 1
