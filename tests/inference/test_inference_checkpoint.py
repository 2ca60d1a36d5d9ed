"""Loading the engine from checkpoints: bundled default, named MAE, readable refusals."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from model_helpers import TINY_CDI
from napari_nstseg.inference import (
    EngineConfig,
    MapRequest,
    Segmenter,
    WeightsMissingError,
    default_weights_path,
)
from napari_nstseg.inference import engine as engine_mod
from napari_nstseg.models.checkpoint import CheckpointError, save_checkpoint
from napari_nstseg.preprocessing import PreprocessConfig

TINY = TINY_CDI


def test_default_weights_path_is_inside_the_package():
    path = default_weights_path()
    assert path.name == "default.json" and path.parent.name == "weights"
    assert path.parent.parent.name == "napari_nstseg"


def test_missing_bundled_weights_say_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setattr(engine_mod, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(WeightsMissingError, match=r"No bundled weights.*--weights PATH"):
        Segmenter.from_checkpoint(None, device="cpu")


def test_bundled_weights_are_used_when_present(monkeypatch, tmp_path, checkpoint_dir):
    for name in ("seg.json", "seg.safetensors"):
        shutil.copy(checkpoint_dir / name, tmp_path / name.replace("seg", "default"))
    monkeypatch.setattr(engine_mod, "WEIGHTS_DIR", tmp_path)
    seg = Segmenter.from_checkpoint(device="cpu")
    assert seg.weights_path == tmp_path / "default.json"
    assert seg.preprocessing.working_spacing_mm == 1.0


def test_checkpoint_with_its_mae_gives_residual_maps(checkpoint_dir, make_ct):
    seg = Segmenter.from_checkpoint(
        checkpoint_dir / "seg.json", device="cpu", config=EngineConfig(batch_size=2)
    )
    assert seg.has_mae and seg.arch == "cdi_nstseg"
    vol = make_ct((2, 32, 32))
    pred = seg.predict(vol, (3.0, 1.0, 1.0), maps=MapRequest(residual=True))
    assert pred.residual is not None and pred.residual.dtype == np.float16
    assert pred.residual.shape == vol.shape and pred.complete


def test_a_named_mae_that_is_not_an_mae_is_refused(tiny_model, tmp_path, make_ct):
    # Names itself as its MAE: a segmentation checkpoint where an autoencoder should be.
    save_checkpoint(
        tmp_path / "seg",
        tiny_model,
        TINY.to_dict(),
        PreprocessConfig().to_dict(),
        {},
        mae="seg.json",
    )
    seg = Segmenter.from_checkpoint(tmp_path / "seg.json", device="cpu")
    with pytest.raises(CheckpointError, match="not a masked autoencoder"):
        seg.predict(make_ct((1, 32, 32)), (1.0, 1.0, 1.0), maps=MapRequest(residual=True))


def test_an_mae_checkpoint_is_not_a_segmenter(checkpoint_dir):
    with pytest.raises(CheckpointError, match="'mae' checkpoint, not a segmentation model"):
        Segmenter.from_checkpoint(checkpoint_dir / "mae.json", device="cpu")


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="nothing.json does not exist"):
        Segmenter.from_checkpoint(tmp_path / "nothing.json", device="cpu")


def test_the_weights_recommended_operating_point_is_the_default(tiny_model, tmp_path, make_ct):
    import json

    from napari_nstseg.models.checkpoint import load_checkpoint

    save_checkpoint(
        tmp_path / "tuned",
        tiny_model,
        TINY.to_dict(),
        PreprocessConfig().to_dict(),
        {},
        postprocess={"threshold": 0.35, "min_lesion_mm": 4},
    )
    meta = json.loads((tmp_path / "tuned.json").read_text())
    assert meta["postprocess"] == {"threshold": 0.35, "min_lesion_mm": 4.0, "min_depth_mm": 0.0}
    load_checkpoint(tmp_path / "tuned.json")  # hashes verify with the entry in them

    seg = Segmenter.from_checkpoint(tmp_path / "tuned.json", device="cpu")
    assert (seg.postprocess.threshold, seg.postprocess.min_lesion_mm) == (0.35, 4.0)
    assert seg.postprocess_sources == {
        "threshold": "weights",
        "min_lesion_mm": "weights",
        "min_depth_mm": "weights",
    }
    pred = seg.predict(make_ct((1, 32, 32)), (2.0, 1.0, 1.0))
    assert (pred.threshold, pred.min_lesion_mm) == (0.35, 4.0)

    # What the caller sets wins, field by field.
    mine = Segmenter.from_checkpoint(
        tmp_path / "tuned.json", device="cpu", config=EngineConfig(threshold=0.6)
    )
    assert (mine.postprocess.threshold, mine.postprocess.min_lesion_mm) == (0.6, 4.0)
    assert mine.postprocess_sources == {
        "threshold": "explicit",
        "min_lesion_mm": "weights",
        "min_depth_mm": "weights",
    }
    none = mine.with_config(min_lesion_mm=0.0)
    assert (none.postprocess.threshold, none.postprocess.min_lesion_mm) == (0.6, 0.0)
    assert mine.postprocess.min_lesion_mm == 4.0  # with_config leaves the original alone

    # Weights without a recommendation: 0.5 and no minimum size, as before.
    save_checkpoint(tmp_path / "plain", tiny_model, TINY.to_dict(), {}, {})
    plain = Segmenter.from_checkpoint(tmp_path / "plain.json", device="cpu")
    assert (plain.postprocess.threshold, plain.postprocess.min_lesion_mm) == (0.5, 0.0)
    assert plain.postprocess_sources == {
        "threshold": "default",
        "min_lesion_mm": "default",
        "min_depth_mm": "default",
    }


def test_an_edited_or_unusable_recommendation_is_refused(tiny_model, tmp_path):
    import json

    save_checkpoint(
        tmp_path / "tuned", tiny_model, TINY.to_dict(), {}, {}, postprocess={"threshold": 0.4}
    )
    path = tmp_path / "tuned.json"
    meta = json.loads(path.read_text())
    meta["postprocess"]["threshold"] = 0.1  # changed by hand after saving
    path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="modified after saving"):
        Segmenter.from_checkpoint(path, device="cpu")
    with pytest.raises(CheckpointError, match="operating point"):
        save_checkpoint(
            tmp_path / "bad", tiny_model, TINY.to_dict(), {}, {}, postprocess={"threshold": 2}
        )
