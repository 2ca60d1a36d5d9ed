"""Weight averaging: the mean is exact, the result loads and runs, mismatches are refused."""

import pytest
import torch

from model_helpers import TINY_CDI, tiny_config
from napari_nstseg.cli import main
from napari_nstseg.models import build_model
from napari_nstseg.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from napari_nstseg.models.weight_average import average_checkpoints

PRE = {"hu_window": [400.0, 40.0], "working_spacing_mm": 1.5}


def _save(tmp_path, name, seed, config=TINY_CDI, steps=1, mae=None):
    torch.manual_seed(seed)
    model = build_model(config)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.num_batches_tracked.fill_(steps)
    stem = tmp_path / name
    save_checkpoint(stem, model, config.to_dict(), PRE, {"run": name}, mae=mae)
    return model.state_dict(), stem.with_suffix(".json")


def test_mean_is_exact_and_loads(tmp_path):
    a, pa = _save(tmp_path, "a", 0, steps=300)
    b, pb = _save(tmp_path, "b", 1, steps=100)
    average_checkpoints([pa, pb], tmp_path / "avg", weights=[3, 1])
    model, meta = load_checkpoint(tmp_path / "avg.json")
    got = model.state_dict()
    for name, tensor in got.items():
        if tensor.is_floating_point():
            torch.testing.assert_close(tensor, 0.75 * a[name] + 0.25 * b[name])
        elif name.endswith("num_batches_tracked"):
            assert int(tensor) == 300
    assert [s["weight"] for s in meta["provenance"]["averaged_from"]] == [0.75, 0.25]
    assert "postprocess" not in meta  # averaged weights need their own operating point
    out = model(torch.zeros(1, TINY_CDI.in_channels, 64, 64))
    assert out.final.shape[-2:] == (64, 64) and torch.isfinite(out.final).all()


def test_mae_reference_follows_the_new_folder(tmp_path):
    (tmp_path / "runs").mkdir()
    _, pa = _save(tmp_path / "runs", "a", 0, mae="mae.json")
    _, pb = _save(tmp_path / "runs", "b", 1, mae="mae.json")
    average_checkpoints([pa, pb], tmp_path / "out" / "avg")
    _, meta = load_checkpoint(tmp_path / "out" / "avg.json")
    assert meta["mae"] == "../runs/mae.json"


def test_different_networks_are_refused_by_name(tmp_path):
    _, pa = _save(tmp_path, "a", 0)
    _, pb = _save(tmp_path, "b", 1, config=tiny_config(base_width=16))
    with pytest.raises(CheckpointError, match=r"b\.json differs .* model_config"):
        average_checkpoints([pa, pb], tmp_path / "avg")
    assert not (tmp_path / "avg.json").exists()
    with pytest.raises(CheckpointError, match="at least two"):
        average_checkpoints([pa], tmp_path / "avg")
    with pytest.raises(CheckpointError, match="one positive weight per checkpoint"):
        average_checkpoints([pa, pa], tmp_path / "avg", weights=[1, 0])


def test_average_weights_command(tmp_path, capsys):
    _, pa = _save(tmp_path, "a", 0)
    _, pb = _save(tmp_path, "b", 1)
    out = tmp_path / "avg.json"
    assert main(["average-weights", str(pa), str(pb), "--out", str(out), "--float16"]) == 0
    _, meta = load_checkpoint(out)
    assert meta["tensors"]["dtype"] == "float16"
    before = pa.read_bytes()
    assert main(["average-weights", str(pa), str(pb), "--out", str(pa)]) == 2
    assert "would overwrite" in capsys.readouterr().err and pa.read_bytes() == before
    assert main(["average-weights", str(pa), str(tmp_path / "nope.json"), "--out", str(out)]) == 2
    assert "nope.json does not exist" in capsys.readouterr().err
