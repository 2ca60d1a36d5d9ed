"""Bundled checkpoints by name: listed with a one-line description, chosen by name anywhere a
weights path is taken (predict, evaluate, --init, the engine)."""

import json
from pathlib import Path

import pytest

from napari_nstseg.models.bundled import DEFAULT_NAME, bundled_weights, resolve_weights


def _fake(folder: Path, name: str, kind: str = "segmentation", **extra) -> Path:
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"kind": kind, "model_config": {"arch": "unet"}, **extra}))
    path.with_suffix(".safetensors").write_bytes(b"")
    return path


def test_bundled_weights_are_listed_by_name_default_first(tmp_path):
    _fake(tmp_path, "sarcoma", description="CDI-NSTSEG for soft-tissue sarcoma\nmore lines")
    _fake(tmp_path, "default")
    _fake(tmp_path, "mae", kind="mae")  # the autoencoder is no segmentation choice
    (tmp_path / "orphan.json").write_text(json.dumps({"kind": "segmentation"}))  # no tensors
    found = bundled_weights(tmp_path)
    assert list(found) == ["default", "sarcoma"]
    assert found["sarcoma"].description == "CDI-NSTSEG for soft-tissue sarcoma"
    assert found["default"].description == "U-Net"


def test_names_paths_and_unknown_names(tmp_path, monkeypatch):
    sarcoma = _fake(tmp_path, "sarcoma")
    assert resolve_weights(None, tmp_path) == tmp_path / f"{DEFAULT_NAME}.json"
    assert resolve_weights("sarcoma", tmp_path) == sarcoma
    assert resolve_weights("runs/x/best.json", tmp_path) == Path("runs/x/best.json")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sarcoma").write_text("a file of that name wins")
    assert resolve_weights("sarcoma", tmp_path) == Path("sarcoma")
    with pytest.raises(FileNotFoundError, match=r"'liver' is neither.*bundled: sarcoma"):
        resolve_weights("liver", tmp_path)


def test_the_installed_default_loads_by_name():
    from napari_nstseg.inference.engine import Segmenter

    assert "default" in bundled_weights()
    engine = Segmenter.from_checkpoint("default", device="cpu")
    assert engine.weights_path == bundled_weights()["default"].path
