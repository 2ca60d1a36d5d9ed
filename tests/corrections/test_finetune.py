"""Fine-tuning on the corrections store: held-out slices by scan or by far-apart slice groups,
replay of the weights' shipped training data, progress with a time estimate, Cancel, the new
weights and their model card beside the store; and `nstseg train --data STORE` honours the
labelled slices."""

from __future__ import annotations

import json
import threading
from dataclasses import replace

import pytest
from corrections_helpers import small_scan

from napari_nstseg.bundled import WEIGHTS_DIR, resolve_weights
from napari_nstseg.corrections.finetune import FineTuneConfig, fine_tune, fine_tune_steps
from napari_nstseg.corrections.holdout import (
    BY_SCAN,
    BY_SLICE_GROUPS,
    HoldoutConfig,
    split_holdout,
)
from napari_nstseg.corrections.replay import NO_REPLAY, replay_for
from napari_nstseg.corrections.store import save_corrections
from napari_nstseg.training.cases import find_cases

TINY = FineTuneConfig(steps=3, batch_size=4, crop_size=32, device="cpu")


def test_one_scan_holds_out_far_apart_slice_groups_with_a_guard(store):
    (case,) = find_cases(store)
    holdout = split_holdout([case], {case.case_id: 3.0})
    assert holdout.method == BY_SLICE_GROUPS
    # Groups: 1-3 and 7-10 (7 and 3 lie 12 mm apart); one is held out, the other trains.
    groups = {holdout.held_out[0].slices, holdout.train[0].slices}
    assert groups == {(1, 2, 3), (7, 8, 9, 10)} and not holdout.unused
    with pytest.raises(ValueError, match="too close together"):
        split_holdout([case], {case.case_id: 3.0}, HoldoutConfig(guard_mm=100))
    # One run of slices: its top end is held out, the slices within the guard left unused.
    one_run = replace(case, slices=tuple(range(1, 11)))
    split = split_holdout([one_run], {case.case_id: 3.0}, HoldoutConfig(fraction=0.3, guard_mm=6))
    assert split.held_out[0].slices == (8, 9, 10)
    assert split.train[0].slices == tuple(range(1, 7)) and split.unused == [(case.case_id, 7)]
    with pytest.raises(ValueError, match="too few"):
        split_holdout([replace(case, slices=(4, 5))], {case.case_id: 3.0})


def test_two_scans_hold_out_whole_scans(store):
    hu, mask, geometry = small_scan(1)
    save_corrections(store, hu, mask, geometry, [2, 9], name="second")
    cases = find_cases(store)
    holdout = split_holdout(cases, {})
    assert holdout.method == BY_SCAN
    assert len(holdout.held_out) == 1 and len(holdout.train) == 1
    assert {c.case_id for c in holdout.held_out + holdout.train} == {c.case_id for c in cases}


def test_replay_is_the_shipped_sample_of_bundled_weights_and_none_otherwise(tiny_checkpoint):
    replay = replay_for(resolve_weights("default"))
    (case,) = replay.cases
    assert case.image.name == "sample_ct.nii.gz" and case.label.name == "sample_ct_lesion.nii.gz"
    assert "default" in replay.source
    sarcoma = replay_for(resolve_weights("sarcoma"))
    assert sarcoma.cases[0].image.name == "STS_008_ct.nii.gz"
    assert replay_for(tiny_checkpoint) == NO_REPLAY


def test_fine_tune_saves_new_weights_and_card_beside_the_store(store, tiny_checkpoint):
    original = open(tiny_checkpoint, "rb").read()
    reports = []
    result = fine_tune(store, tiny_checkpoint, config=TINY, progress=reports.append)
    assert not result.cancelled and result.weights.parent == store / "weights"
    assert open(tiny_checkpoint, "rb").read() == original  # the starting weights are only read
    assert [r.stage for r in reports][0] == "before" and reports[-1].stage == "saving"
    assert sum(r.stage == "training" for r in reports) == 3
    assert all(r.eta_s is not None for r in reports)  # measured from the very first report
    assert 0 <= result.dice_before <= 1 and 0 <= result.dice_after <= 1
    meta = json.loads(result.weights.read_text())
    record = meta["provenance"]["fine_tuned"]
    assert record["data"] == "7 corrected slices from 1 scan(s)"
    assert record["holdout"]["method"] == BY_SLICE_GROUPS
    assert record["budget"]["steps"] == 3 and record["dice_held_out"]["after"] == result.dice_after
    assert meta["description"].startswith("tiny fine-tuned on 7 corrected slices")
    card = result.card.read_text()
    assert "before" in card and "after" in card and "3 steps x batch 4" in card
    # Fine-tuning the result again starts from it; a second file never overwrites the first.
    again = fine_tune(store, result.weights, config=TINY)
    assert again.weights != result.weights and result.weights.is_file()


def test_cancel_between_steps_saves_nothing_and_the_bundled_folder_is_refused(
    store, tiny_checkpoint
):
    cancel = threading.Event()
    steps = fine_tune_steps(store, tiny_checkpoint, config=TINY, cancel=cancel)
    while next(steps).stage != "training":
        pass
    cancel.set()
    with pytest.raises(StopIteration) as stop:
        while True:
            next(steps)
    assert stop.value.value.cancelled and stop.value.value.weights is None
    assert not (store / "weights").exists()
    with pytest.raises(ValueError, match="bundled weights' folder"):
        fine_tune(store, tiny_checkpoint, out_dir=WEIGHTS_DIR, config=TINY)


def test_an_empty_store_is_one_sentence(tmp_path, tiny_checkpoint):
    with pytest.raises(ValueError, match="no saved corrections"):
        fine_tune(tmp_path, tiny_checkpoint, config=TINY)


def test_nstseg_train_reads_the_store_as_a_case_folder_set_and_only_its_labelled_slices(
    store, tiny_checkpoint, tmp_path, monkeypatch
):
    from napari_nstseg.cli import main
    from napari_nstseg.training import data

    seen = []
    original = data.SliceDataset._set_cases

    def spy(self, cached):
        original(self, cached)
        seen.append(sorted(z for _, z in self.index))

    monkeypatch.setattr(data.SliceDataset, "_set_cases", spy)
    out = tmp_path / "run"
    code = main(["train", "--data", str(store), "--init", tiny_checkpoint, "--out", str(out),
                 "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2",
                 "--allow-small-batch", "--crop-size", "32", "--device", "cpu",
                 "--no-progress"])  # fmt: skip
    assert code in (0, None)
    assert (out / "final.json").is_file()
    assert seen and seen[0] == [1, 2, 3, 7, 8, 9, 10]


def test_the_bundled_weights_fine_tune_with_their_shipped_replay_and_keep_their_mae(tmp_path):
    from napari_nstseg._sample_data import SAMPLE_CT, SAMPLE_MASK
    from napari_nstseg.io.readers import read_ct, read_mask

    ct = read_ct(SAMPLE_CT)
    store = tmp_path / "store"
    save_corrections(store, ct.hu, read_mask(SAMPLE_MASK), ct.geometry, [2, 3, 8, 9, 10, 20, 21])
    config = FineTuneConfig(steps=1, device="cpu")
    result = fine_tune(store, resolve_weights("default"), config=config)
    assert "sample_ct" in result.replay and "'default'" in result.replay
    meta = json.loads(result.weights.read_text())
    record = meta["provenance"]["fine_tuned"]
    assert record["budget"]["replay_per_batch"] == 2 and record["budget"]["crop_size"] == [96, 96]
    assert meta["mae"] == "mae.json" and (result.weights.parent / "mae.safetensors").is_file()
    assert meta["postprocess"] == json.loads(resolve_weights("default").read_text())["postprocess"]
    # Fine-tuning the result again replays what its own fine-tuning did.
    assert replay_for(result.weights).cases == replay_for(resolve_weights("default")).cases
