"""Training on two data sets in one run (real tumours beside inserted lesions): each crop comes
from one source in the configured share, reproducibly, and both sets' validation cases count."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from case_helpers import write_case_folders
from napari_nstseg.cli import main
from napari_nstseg.training.config import ExtraData, TrainConfig
from napari_nstseg.training.data import SamplingConfig
from napari_nstseg.training.mixed_data import MixedDataset


@dataclass
class _Source:
    """A stand-in training set: its items name it and the index asked for."""

    name: str
    n: int = 10
    label_values: tuple = (1,)
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(seed=3))
    epochs: list = field(default_factory=list)

    @property
    def index(self):
        return [(0, z) for z in range(self.n)]

    def set_epoch(self, epoch):
        self.epochs.append(epoch)

    def __len__(self):
        return self.sampling.samples_per_epoch or self.n

    def __getitem__(self, i):
        return {"source": self.name, "i": i}


def _mixed(share=0.3, items=4000):
    a, b = _Source("a"), _Source("b")
    mixed = MixedDataset([a, b], [1 - share, share])
    mixed.sampling = replace(mixed.sampling, samples_per_epoch=items)
    return mixed, a, b


def test_each_source_gets_its_share_and_its_own_item_numbers():
    mixed, a, b = _mixed(0.3)
    assert len(mixed) == len(a) == len(b) == 4000  # the epoch's length reaches every source
    items = [mixed[i] for i in range(len(mixed))]
    share = sum(it["source"] == "b" for it in items) / len(items)
    assert abs(share - 0.3) < 0.03
    assert all(it["i"] == i for i, it in enumerate(items))  # the source's own item i


def test_the_draw_is_reproducible_and_changes_with_the_epoch():
    mixed, a, b = _mixed(0.5, 200)
    first = [mixed.source_of(i) for i in range(200)]
    assert first == [mixed.source_of(i) for i in range(200)]
    mixed.set_epoch(1)
    assert a.epochs == b.epochs == [1]
    assert first != [mixed.source_of(i) for i in range(200)]


def test_bad_mixes_are_refused_by_name():
    with pytest.raises(ValueError, match="add up to 1"):
        MixedDataset([_Source("a"), _Source("b")], [0.5, 0.6])
    with pytest.raises(ValueError, match="label tumour differently"):
        MixedDataset([_Source("a"), _Source("b", label_values=(2,))], [0.5, 0.5])
    with pytest.raises(ValueError, match="share must be between 0 and 1"):
        ExtraData("x", share=1.0)
    with pytest.raises(ValueError, match="none for the main data set"):
        TrainConfig(data="m", extra_data=(ExtraData("x", share=0.6), ExtraData("y", share=0.4)))
    with pytest.raises(ValueError, match="shre"):
        TrainConfig(data="m", extra_data=({"data": "x", "shre": 0.2},))


def test_a_run_on_two_case_folder_sets_validates_on_both_and_says_so(tmp_path, capsys):
    """`nstseg train --data A --also-data B`: the checkpoint records both sets, the share and
    every validation case, and the run resumes with the second set from its saved config."""
    main_root = write_case_folders(tmp_path / "sts", n=4)
    other = write_case_folders(tmp_path / "raw", n=4, seed=1)
    other_root = tmp_path / "other"
    other_root.mkdir()
    for case in sorted(other.iterdir()):  # other patients: other ids
        case.rename(other_root / case.name.replace("STS", "EXT"))
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["STS_000", "STS_001", "STS_002"], "val": ["STS_003"]}))
    split2 = tmp_path / "split2.json"
    split2.write_text(json.dumps({"train": ["EXT_000", "EXT_001", "EXT_002"], "val": ["EXT_003"]}))
    out = tmp_path / "run"
    args = [
        "train", "--data", str(main_root), "--split-file", str(split), "--also-data",
        str(other_root), "--also-split-file", str(split2), "--also-share", "0.4", "--out",
        str(out), "--base-width", "8", "--set", "fused_channels=8", "--epochs", "1",
        "--steps-per-epoch", "2", "--batch-size", "4", "--crop-size", "32", "--no-progress",
    ]  # fmt: skip
    assert main(args) == 0
    data = json.loads((out / "final.json").read_text())["provenance"]["training_data"]
    assert data["val_cases"] == ["STS_003"]
    (extra,) = data["extra"]
    assert Path(extra["folder"]) == other_root.resolve() and extra["share"] == 0.4
    assert extra["val_cases"] == ["EXT_003"] and extra["cases"]["train"] == 3
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["extra_data"][0]["share"] == 0.4
    # the second set's validation cases are validated with the first's: one id twice is refused
    clash = [*args[:6], str(main_root), "--also-split-file", str(split), *args[9:]]
    clash[clash.index(str(out))] = str(tmp_path / "clash")
    assert main(clash) == 2
    assert "STS_003 occur in two data sets" in capsys.readouterr().err
    # a resumed run keeps the second set without being told again
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--no-progress"]) == 0
    data = json.loads((out / "final.json").read_text())["provenance"]["training_data"]
    assert data["extra"][0]["val_cases"] == ["EXT_003"]
