"""read_operating_point: the one reader of a checkpoint's recommended operating point, as the
engine, the panel and `nstseg info` all use it."""

import json

import pytest
import torch

from model_helpers import tiny_mae_config
from napari_nstseg.models.checkpoint import (
    CheckpointError,
    checkpoint_paths,
    read_metadata,
    read_operating_point,
    save_checkpoint,
)
from napari_nstseg.models.mae import MaskedAutoencoder
from napari_nstseg.postprocess import PostprocessConfig

TUNED = {"threshold": 0.35, "min_lesion_mm": 4.0, "min_depth_mm": 6.0}


def save(tmp_path, name, **kwargs):
    torch.manual_seed(0)
    config = tiny_mae_config()
    stem = tmp_path / name
    save_checkpoint(stem, MaskedAutoencoder(config), config.to_dict(), {}, {}, **kwargs)
    return stem


def test_the_tuned_point_reads_back_from_the_path_and_from_the_json(tmp_path):
    stem = save(tmp_path, "tuned", postprocess=TUNED)
    expected = PostprocessConfig(**TUNED)
    for name in (stem, f"{stem}.json", f"{stem}.safetensors"):
        assert read_operating_point(name) == expected
    assert read_operating_point(read_metadata(stem)) == expected


def test_a_checkpoint_without_a_point_recommends_none(tmp_path):
    stem = save(tmp_path, "plain")
    assert read_operating_point(stem) is None
    assert read_operating_point(read_metadata(stem)) is None


@pytest.mark.parametrize(
    "entry", [{"threshold": 1.5}, {"min_lesion_mm": -1}, {"threshold": "high"}, [0.5]]
)
def test_an_unusable_point_is_named_with_its_file(tmp_path, entry):
    stem = save(tmp_path, "odd")
    json_path = checkpoint_paths(stem)[1]
    meta = json.loads(json_path.read_text())
    meta["postprocess"] = entry
    json_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="unusable operating point") as info:
        read_operating_point(stem)
    assert str(json_path) in str(info.value)
    with pytest.raises(CheckpointError, match="unusable operating point"):
        read_operating_point(meta)


def test_a_missing_or_broken_description_is_one_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="unreadable"):
        read_operating_point(tmp_path / "absent.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        read_operating_point(tmp_path / "broken")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="not a JSON object"):
        read_operating_point(tmp_path / "list")


def test_the_organ_mode_point_is_its_own_entry_and_falls_back_to_the_whole_scan_one(tmp_path):
    organ = {"threshold": 0.8, "min_lesion_mm": 5.0, "min_depth_mm": 4.0}
    stem = save(tmp_path, "both", postprocess=TUNED, organ_postprocess=organ)
    assert read_operating_point(stem) == PostprocessConfig(**TUNED)
    assert read_operating_point(stem, organs=True) == PostprocessConfig(**organ)
    plain = save(tmp_path, "one", postprocess=TUNED)
    assert read_operating_point(plain, organs=True) == PostprocessConfig(**TUNED)
    assert read_operating_point(save(tmp_path, "none"), organs=True) is None
    json_path = checkpoint_paths(stem)[1]
    meta = json.loads(json_path.read_text())
    meta["organ_postprocess"]["threshold"] = 2.0
    with pytest.raises(CheckpointError, match="'organ_postprocess' entry"):
        read_operating_point(meta, stem, organs=True)
    with pytest.raises(CheckpointError, match="Unusable operating point"):
        save(tmp_path, "bad", organ_postprocess={"threshold": -1})
