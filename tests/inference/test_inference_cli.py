"""`nstseg predict` end to end on a small synthetic NIfTI written here."""

from __future__ import annotations

import argparse
import json

import nibabel as nib
import numpy as np
import pytest

from napari_nstseg.inference.cli_predict import add_parser, parse_slices
from napari_nstseg.io import read_ct, read_mask


@pytest.fixture
def ct_file(tmp_path, make_ct):
    """A 4-slice scan stored x-flipped (LAS) with int16 voxels, as scanners often write."""
    hu = make_ct((4, 36, 40))  # display (z, y, x)
    data = np.transpose(hu, (2, 1, 0)).astype(np.int16)  # (i, j, k)
    affine = np.array([[-1.2, 0, 0, 30.0], [0, 1.1, 0, -20.0], [0, 0, 3.0, 5.0], [0, 0, 0, 1]])
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_predict_writes_mask_maps_and_report_on_the_scan_grid(
    ct_file, tmp_path, checkpoint_dir, capsys
):
    out = tmp_path / "out" / "scan_mask.nii.gz"
    maps = tmp_path / "maps"
    report = tmp_path / "report.json"
    argv = [
        "predict",
        str(ct_file),
        str(out),
        "--weights",
        str(checkpoint_dir / "seg.json"),
        "--device",
        "cpu",
        "--batch-size",
        "2",
        "--threshold",
        "0.4",
        "--slices",
        "1:3",
        "--maps",
        str(maps),
        "--report",
        str(report),
    ]
    assert run(argv) == 0

    scan = nib.load(ct_file)
    mask_img = nib.load(out)
    assert mask_img.shape == scan.shape
    np.testing.assert_allclose(mask_img.affine, scan.affine, atol=1e-5)
    geometry = read_ct(ct_file).geometry
    mask = read_mask(out, like=geometry)
    assert not mask[[0, 3]].any()  # outside --slices 1:3

    written = sorted(p.name for p in maps.iterdir())
    expected = {
        "final_probability",
        "glm_coarse",
        "lfm_stage1",
        "lfm_stage2",
        "lfm_stage3",
        "ssl_residual",
        "sfm_weights_0.5x",
        "sfm_weights_1.0x",
        "sfm_weights_1.5x",
    }
    assert written == sorted(f"scan_{name}.nii.gz" for name in expected)
    for name in written:
        img = nib.load(maps / name)
        assert img.shape == scan.shape and img.get_data_dtype() == np.float32
        np.testing.assert_allclose(img.affine, scan.affine, atol=1e-5)
        values = np.asarray(img.dataobj)
        if "residual" not in name:
            assert values.min() >= 0.0 and values.max() <= 1.0

    rep = json.loads(report.read_text())
    assert {"napari_nstseg", "torch", "numpy"} <= set(rep["versions"])
    assert rep["device"]["name"] == "cpu"
    assert rep["weights"]["sha256"] and len(rep["weights"]["sha256"]) == 64
    assert rep["weights"]["path"].endswith("seg.json")
    assert rep["run"]["slices"] == [1, 2] and rep["run"]["threshold"] == 0.4
    for key in ("read", "load", "predict", "write", "total", "predict_model", "slices_per_s"):
        assert rep["timings_s"][key] > 0
    assert rep["estimate"]["fits"] and rep["estimate"]["seconds"] > 0
    assert rep["actual"]["predict_seconds"] > 0 and rep["actual"]["prediction_bytes"] > 0
    assert isinstance(rep["lesions"], list)
    for lesion in rep["lesions"]:
        assert lesion["volume_ml"] > 0 and lesion["longest_axial_diameter_mm"] > 0
    assert rep["outputs"]["mask"] == str(out)

    printed = capsys.readouterr().out
    assert f"mask: {out}" in printed and f"report: {report}" in printed
    assert str(maps) in printed


def test_predict_through_the_nstseg_command_reports_bad_input(
    ct_file, tmp_path, checkpoint_dir, capsys
):
    from napari_nstseg.cli import main

    code = main(
        [
            "predict",
            str(ct_file),
            str(tmp_path / "m.nii.gz"),
            "--device",
            "cpu",
            "--weights",
            str(checkpoint_dir / "seg.json"),
            "--slices",
            "7:9",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "--slices '7:9' selects none of the scan's 4 slices" in err


def test_mask_extension_is_checked_before_any_work(ct_file, tmp_path):
    with pytest.raises(ValueError, match="no mask file extension"):
        run(["predict", str(ct_file), str(tmp_path / "mask.png"), "--device", "cpu"])


def test_parse_slices():
    assert parse_slices(None, 5) is None
    assert parse_slices("1:3", 5) == [1, 2]
    assert parse_slices("3:", 5) == [3, 4]
    assert parse_slices(":-3", 5) == [0, 1]
    assert parse_slices("-1", 5) == [4]
    for bad in ("a:b", "1:2:3", "9"):
        with pytest.raises(ValueError, match="--slices"):
            parse_slices(bad, 5)


def test_predict_uses_the_weights_operating_point_unless_told_otherwise(
    ct_file, tmp_path, tiny_model, capsys
):
    from napari_nstseg.models import ModelConfig
    from napari_nstseg.models.checkpoint import save_checkpoint
    from napari_nstseg.preprocessing import PreprocessConfig

    tiny = ModelConfig(base_width=8, fused_channels=8)
    save_checkpoint(
        tmp_path / "tuned",
        tiny_model,
        tiny.to_dict(),
        PreprocessConfig(working_spacing_mm=1.0).to_dict(),
        {},
        postprocess={"threshold": 0.45, "min_lesion_mm": 6.0},
    )
    common = ["predict", str(ct_file), str(tmp_path / "m.nii.gz"), "--device", "cpu",
              "--weights", str(tmp_path / "tuned.json"), "--slices", "1:2"]  # fmt: skip

    assert run([*common, "--report", str(tmp_path / "a.json")]) == 0
    rep = json.loads((tmp_path / "a.json").read_text())["run"]
    assert (rep["threshold"], rep["min_lesion_mm"]) == (0.45, 6.0)
    assert rep["operating_point_source"] == {
        "threshold": "weights",
        "min_lesion_mm": "weights",
        "min_depth_mm": "weights",
    }
    assert "threshold 0.45 (weights), min lesion 6 mm (weights)" in capsys.readouterr().err

    assert rep["mirror"] is False

    argv = [*common, "--min-lesion-mm", "0", "--min-depth-mm", "4", "--mirror", "--report",
            str(tmp_path / "b.json")]  # fmt: skip
    assert run(argv) == 0
    rep = json.loads((tmp_path / "b.json").read_text())["run"]
    assert rep["mirror"] is True
    assert (rep["threshold"], rep["min_lesion_mm"], rep["min_depth_mm"]) == (0.45, 0.0, 4.0)
    assert rep["operating_point_source"] == {
        "threshold": "weights",
        "min_lesion_mm": "command line",
        "min_depth_mm": "command line",
    }
