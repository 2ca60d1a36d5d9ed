"""Bundled checkpoints by name: listed with a one-line description, chosen by name anywhere a
weights path is taken (predict, evaluate, --init, the engine)."""

import json
from pathlib import Path

import pytest

from napari_nstseg.bundled import DEFAULT_NAME, bundled_weights, resolve_weights


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


def test_shifted_patch_grids_remove_the_block_pattern_of_the_residual_map():
    import numpy as np
    import torch

    from napari_nstseg.io import read_ct
    from napari_nstseg.models.checkpoint import load_checkpoint
    from napari_nstseg.preprocessing import (
        PreprocessConfig,
        normalized_air,
        resample_slices_to_working,
        window_normalize,
    )

    sample = Path(__file__).resolve().parents[1] / "sample_data" / "sample_ct.nii.gz"
    mae, meta = load_checkpoint(bundled_weights()["default"].path.with_name("mae.json"))
    pre = PreprocessConfig.from_dict(meta["preprocessing"])
    ct = read_ct(sample)
    z = ct.hu.shape[0] // 2
    x = window_normalize(torch.from_numpy(ct.hu[z : z + 1].astype(np.float32)), pre)
    x, _ = resample_slices_to_working(x, ct.spacing[1:], pre, pad_value=normalized_air(pre))
    p = mae.config.patch_size

    def edge_excess(shifts: int) -> float:
        """Mean jump between neighbouring pixels across patch edges over that inside patches."""
        gen = torch.Generator()
        gen.manual_seed(0)
        with torch.no_grad():
            r = mae.eval().residual_map(x[:, None], k=4, generator=gen, shifts=shifts)[0, 0]
        jump = (r[:, 1:] - r[:, :-1]).abs()
        at_edge = torch.tensor([(j + 1) % p == 0 for j in range(jump.shape[1])])
        return float(jump[:, at_edge].mean() / jump[:, ~at_edge].mean())

    one_grid = edge_excess(1)
    assert one_grid > 1.5  # the block pattern a user saw (1.88 measured)
    # two grids (the default) leave each edge half its jump (1.44 measured), four a quarter (1.21)
    assert edge_excess(2) - 1 < (one_grid - 1) * 0.6
    assert edge_excess(4) - 1 < (one_grid - 1) / 3


def test_nstseg_info_lists_the_bundled_weights_by_name(capsys):
    from napari_nstseg.cli import main

    assert main(["info", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["bundled_weights"]
    assert listed == {w.name: w.description for w in bundled_weights().values()}
    assert listed["default"].startswith("CDI-NSTSEG trained on synthetic lesions")


def test_predict_with_the_sarcoma_weights_by_name_finds_the_real_tumour(tmp_path):
    """The README's `nstseg predict ... --weights sarcoma` on the real-tumour sample (a test
    patient): the tumour is found on the slices asked for (Dice 0.28 measured on slices 22-27;
    the model under-segments this patient, see MODEL_CARD_sarcoma.md) and nothing elsewhere."""
    import nibabel as nib
    import numpy as np

    from napari_nstseg.cli import main

    sample = Path(__file__).resolve().parents[1] / "sample_data" / "sarcoma"
    out = tmp_path / "mask.nii.gz"
    args = ["predict", str(sample / "STS_008_ct.nii.gz"), str(out), "--weights", "sarcoma"]
    assert main([*args, "--slices", "22:28", "--device", "cpu"]) == 0
    mask = np.asarray(nib.load(out).dataobj) > 0
    truth = np.asarray(nib.load(sample / "STS_008_tumour.nii.gz").dataobj) > 0
    assert mask.shape == truth.shape
    found, wanted = mask[:, :, 22:28], truth[:, :, 22:28]
    assert 2 * (found & wanted).sum() / (found.sum() + wanted.sum()) > 0.15
    assert not mask[:, :, :22].any() and not mask[:, :, 28:].any()
