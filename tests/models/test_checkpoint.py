"""Checkpoints: exact round trips, tamper detection, named mismatches, no pickle anywhere."""

import json
import pickle
import struct

import pytest
import torch

from model_helpers import TINY_CDI, tiny_mae_config
from napari_nstseg.models.checkpoint import (
    CheckpointError,
    checkpoint_paths,
    load_checkpoint,
    save_checkpoint,
)
from napari_nstseg.models.mae import MAEConfig, MaskedAutoencoder

PREPROCESSING = {"hu_window": [-160, 240], "spacing_mm": [0.8, 0.8], "size": 64}
PROVENANCE = {"data": "synthetic test slices", "date": "2026-11-23", "metrics": {"dice": 0.5}}


@pytest.fixture(autouse=True)
def no_unpickling(monkeypatch):
    """Any call to torch.load or pickle loading during a test is a failure."""

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint was unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


def save_tiny_mae(tmp_path, name="mae", **kwargs):
    torch.manual_seed(0)
    cfg = tiny_mae_config()
    model = MaskedAutoencoder(cfg)
    stem = tmp_path / name
    save_checkpoint(stem, model, cfg.to_dict(), PREPROCESSING, PROVENANCE, **kwargs)
    return model, stem


def test_mae_round_trip_is_bit_exact(tmp_path):
    model, stem = save_tiny_mae(tmp_path)
    loaded, meta = load_checkpoint(stem)
    assert isinstance(loaded, MaskedAutoencoder) and not loaded.training
    original = model.state_dict()
    restored = loaded.state_dict()
    assert original.keys() == restored.keys()
    for name in original:
        assert restored[name].dtype == original[name].dtype
        assert torch.equal(restored[name], original[name]), name
    x = torch.randn(2, 1, 32, 32)
    model.eval()
    gen_a, gen_b = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert torch.equal(
        model.residual_map(x, k=2, generator=gen_a), loaded.residual_map(x, k=2, generator=gen_b)
    )
    assert meta["kind"] == "mae"
    assert meta["format_version"] == 1
    assert meta["preprocessing"] == PREPROCESSING
    assert meta["provenance"] == PROVENANCE
    assert MAEConfig.from_dict(meta["model_config"]) == tiny_mae_config()


def test_files_are_safetensors_and_json_named_by_stem(tmp_path):
    _, stem = save_tiny_mae(tmp_path)
    tensor_path, json_path = checkpoint_paths(stem)
    assert (tensor_path.name, json_path.name) == ("mae.safetensors", "mae.json")
    raw = tensor_path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])  # safetensors: u64 length + JSON header
    assert "patch_embed.weight" in header
    assert raw[:1] != b"\x80" and raw[:4] != b"PK\x03\x04"  # neither pickle nor torch zip
    meta = json.loads(json_path.read_text())
    assert len(meta["tensors"]["sha256"]) == 64
    # Either file, or the stem, names the same checkpoint.
    for name in (stem, tensor_path, json_path):
        assert load_checkpoint(name)[1]["tensors"] == meta["tensors"]


def test_the_same_weights_make_the_same_files(tmp_path):
    """Packaging again must not change a byte (the JSON records the tensor file's sha256, and
    a bundle re-made from the same weights should not show up as changed)."""
    files = set()
    for k in range(8):
        _, stem = save_tiny_mae(tmp_path / str(k))
        files.add(tuple(p.read_bytes() for p in checkpoint_paths(stem)))
    assert len(files) == 1


def test_float16_storage_loads_into_a_float32_model(tmp_path):
    model, stem = save_tiny_mae(tmp_path, dtype=torch.float16)
    _, stem32 = save_tiny_mae(tmp_path, name="mae32")
    data16, data32 = (_tensor_bytes(checkpoint_paths(s)[0]) for s in (stem, stem32))
    assert 2 * data16 == data32
    loaded, meta = load_checkpoint(stem)
    assert meta["tensors"]["dtype"] == "float16"
    for name, tensor in loaded.state_dict().items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, model.state_dict()[name].half().float()), name


def _tensor_bytes(path) -> int:
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    return len(raw) - 8 - header_len


def test_tampered_tensor_file_is_rejected(tmp_path):
    _, stem = save_tiny_mae(tmp_path)
    tensor_path, _ = checkpoint_paths(stem)
    raw = bytearray(tensor_path.read_bytes())
    raw[-3] ^= 0x01  # flip one bit of the last tensor's data
    tensor_path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="does not match the sha256.*modified"):
        load_checkpoint(stem)


def test_tampered_json_is_rejected(tmp_path):
    _, stem = save_tiny_mae(tmp_path)
    _, json_path = checkpoint_paths(stem)
    meta = json.loads(json_path.read_text())
    meta["provenance"]["metrics"]["dice"] = 0.99
    json_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"mae\.json was modified after saving"):
        load_checkpoint(stem)


def test_companion_mae_name_is_kept_and_protected(tmp_path):
    _, stem = save_tiny_mae(tmp_path, name="seg", mae="mae.json")
    _, meta = load_checkpoint(stem)
    assert meta["mae"] == "mae.json"
    _, json_path = checkpoint_paths(stem)
    meta = json.loads(json_path.read_text())
    meta["mae"] = "other.json"
    json_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"seg\.json was modified after saving"):
        load_checkpoint(stem)


def test_broken_or_missing_files_give_clear_errors(tmp_path):
    _, stem = save_tiny_mae(tmp_path)
    tensor_path, json_path = checkpoint_paths(stem)
    json_path.write_text("{not json")
    with pytest.raises(CheckpointError, match=r"mae\.json is not valid JSON"):
        load_checkpoint(stem)
    json_path.unlink()
    with pytest.raises(CheckpointError, match=r"mae\.json does not exist"):
        load_checkpoint(stem)
    with pytest.raises(CheckpointError, match=r"nothing\.json does not exist"):
        load_checkpoint(tmp_path / "nothing")


def test_wrong_shape_is_named(tmp_path):
    stem = tmp_path / "linear"
    save_checkpoint(stem, torch.nn.Linear(3, 4), {}, PREPROCESSING, PROVENANCE)
    with pytest.raises(
        CheckpointError, match=r"mis-shaped tensor\(s\): bias is \(4,\) but the model needs \(5,\)"
    ):
        load_checkpoint(stem, build_fn=lambda config: torch.nn.Linear(3, 5))
    torch.manual_seed(0)
    model = MaskedAutoencoder(tiny_mae_config(decoder_embed_dim=24))
    # The JSON claims a 16-wide decoder but the tensors come from a 24-wide one.
    stem = tmp_path / "shape"
    save_checkpoint(stem, model, tiny_mae_config().to_dict(), PREPROCESSING, PROVENANCE)
    with pytest.raises(CheckpointError, match=r"decoder_blocks\.0\.attn\.proj\.bias is \(24,\) "):
        load_checkpoint(stem)


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    model = MaskedAutoencoder(tiny_mae_config(depth=2))
    stem = tmp_path / "extra"
    save_checkpoint(stem, model, tiny_mae_config(depth=1).to_dict(), PREPROCESSING, PROVENANCE)
    with pytest.raises(CheckpointError, match=r"unexpected tensor\(s\) blocks\.1\.attn"):
        load_checkpoint(stem)
    model = MaskedAutoencoder(tiny_mae_config(depth=1))
    stem = tmp_path / "missing"
    save_checkpoint(stem, model, tiny_mae_config(depth=2).to_dict(), PREPROCESSING, PROVENANCE)
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\) blocks\.1\.attn"):
        load_checkpoint(stem)


def test_custom_build_fn_receives_the_model_config(tmp_path):
    _, stem = save_tiny_mae(tmp_path)
    seen = []

    def build(config):
        seen.append(config)
        return MaskedAutoencoder(MAEConfig.from_dict(config))

    load_checkpoint(stem, build_fn=build)
    assert seen == [tiny_mae_config().to_dict()]


def test_unserialisable_metadata_is_refused(tmp_path):
    model = MaskedAutoencoder(tiny_mae_config())
    with pytest.raises(CheckpointError, match="not JSON-serialisable"):
        save_checkpoint(tmp_path / "x", model, {}, {"window": object()}, {})
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "overrides",
    [
        {"arch": "unet", "base_width": 8},
        {**TINY_CDI.to_dict(), "ssl_guidance": True, "norm": "group"},
    ],
    ids=["unet", "cdi_nstseg_ssl"],
)
def test_segmentation_round_trip_is_bit_exact(tmp_path, overrides):
    from napari_nstseg.models import ModelConfig, build_model

    torch.manual_seed(0)
    cfg = ModelConfig(**overrides)
    model = build_model(cfg)
    x = torch.randn(2, 1, 64, 64)
    inputs = {"residual": torch.rand(2, 1, 64, 64)} if cfg.ssl_guidance else {}
    model.train()
    with torch.no_grad():
        model(x, **inputs)  # move any running statistics off their initial values
    model.eval()
    stem = tmp_path / "seg"
    save_checkpoint(stem, model, cfg.to_dict(), PREPROCESSING, PROVENANCE)
    loaded, meta = load_checkpoint(stem)
    assert meta["kind"] == "segmentation"
    assert type(loaded) is type(model) and not loaded.training
    assert ModelConfig.from_dict(meta["model_config"]) == cfg
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    with torch.no_grad():
        a, b = model(x, **inputs), loaded(x, **inputs)
    pairs = list(zip(_tensors(a), _tensors(b), strict=True))
    assert pairs
    for ta, tb in pairs:
        assert torch.equal(ta, tb)


def _tensors(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _tensors(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _tensors(v)]
    if hasattr(out, "__dataclass_fields__"):
        return [t for name in out.__dataclass_fields__ for t in _tensors(getattr(out, name))]
    return []
