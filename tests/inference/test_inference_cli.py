"""`nstseg predict` end to end on a small synthetic NIfTI written here."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from napari_nstseg.inference.cli_predict import add_parser
from napari_nstseg.inference.predict_scan import parse_slices
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


# -- the output rule: never over an input, checked before any model work, all or none ----------
@pytest.fixture
def no_model_work(monkeypatch):
    """Fails the test if the weights are loaded: every refusal must come before."""
    from napari_nstseg.inference.engine import Segmenter

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the outputs were checked")

    monkeypatch.setattr(Segmenter, "from_checkpoint", classmethod(refuse))


def nstseg(argv: list[str]) -> int:
    from napari_nstseg.cli import main

    return main([str(a) for a in argv])


def one_line(err: str, path) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("nstseg predict: error: ") and str(path) in lines[0]


def test_predict_never_writes_over_its_input(ct_file, tmp_path, checkpoint_dir, capsys,
                                             no_model_work):  # fmt: skip
    before = ct_file.read_bytes()
    hard = tmp_path / "hard_link.nii.gz"
    os.link(ct_file, hard)
    soft = tmp_path / "link.nii.gz"
    soft.symlink_to(ct_file)
    weights = checkpoint_dir / "seg.json"
    weights_before = weights.read_bytes()
    common = ["--weights", weights, "--device", "cpu"]
    cases = [
        ([ct_file, ct_file], "it is the CT scan this command reads"),
        ([ct_file, hard], "it is the CT scan this command reads"),
        ([soft, ct_file], "it is the CT scan this command reads"),
        ([ct_file, tmp_path / "m.nii.gz", "--report", weights], "the weights' description"),
        ([ct_file, tmp_path / "m.nii.gz", "--lesion-map", ct_file], "the CT scan"),
        ([ct_file, checkpoint_dir / "mae.nii"], None),  # not an input: allowed (no model here)
    ]
    for argv, expected in cases[:-1]:
        assert nstseg(["predict", *argv, *common]) == 2
        err = capsys.readouterr().err
        assert expected in err and "inputs are never written over" in err
    assert ct_file.read_bytes() == before and weights.read_bytes() == weights_before
    assert hard.read_bytes() == before


def test_the_mae_named_by_the_weights_is_an_input_too(ct_file, checkpoint_dir, capsys,
                                                      no_model_work):  # fmt: skip
    mae = checkpoint_dir / "mae.json"
    before = mae.read_bytes()
    argv = ["predict", ct_file, ct_file.parent / "m.nii.gz", "--weights",
            checkpoint_dir / "seg", "--report", mae]  # fmt: skip
    assert nstseg(argv) == 2
    assert "the MAE weights' description" in capsys.readouterr().err
    assert mae.read_bytes() == before


def _locked(folder):
    folder.mkdir(exist_ok=True)
    folder.chmod(0o555)  # refused by mode bits, so this holds when tests run as root
    return folder


@pytest.mark.parametrize("case", ["out folder", "maps folder", "maps under a file",
                                  "read-only mask", "full disk", "report is a folder",
                                  "two outputs on one path", "missing weights"])  # fmt: skip
def test_output_problems_are_found_before_any_model_work(ct_file, tmp_path, checkpoint_dir,
                                                         capsys, monkeypatch, no_model_work,
                                                         case):  # fmt: skip
    out = tmp_path / "out" / "mask.nii.gz"
    extra: list = ["--maps", tmp_path / "maps", "--report", tmp_path / "report.json"]
    named, weights = out, checkpoint_dir / "seg.json"
    if case == "out folder":
        named = _locked(tmp_path / "out")
    elif case == "maps folder":
        named = _locked(tmp_path / "maps")
    elif case == "maps under a file":
        named = tmp_path / "maps"
        named.write_text("a file where the maps folder should go")
        extra = ["--maps", named / "sub"]
    elif case == "read-only mask":
        out.parent.mkdir()
        out.write_bytes(b"an earlier mask")
        out.chmod(0o444)
    elif case == "full disk":
        from napari_nstseg.io import outputs

        usage = outputs.shutil.disk_usage(tmp_path)
        monkeypatch.setattr(outputs.shutil, "disk_usage", lambda _p: usage._replace(free=100_000))
        named = tmp_path
    elif case == "report is a folder":
        (tmp_path / "report.json").mkdir()
        named = tmp_path / "report.json"
    elif case == "two outputs on one path":
        extra = ["--lesion-map", out]
    elif case == "missing weights":
        weights = named = tmp_path / "nowhere.json"
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code = nstseg(["predict", ct_file, out, "--weights", weights, "--device", "cpu", *extra])
    assert code == 2
    one_line(capsys.readouterr().err, named)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing made, nothing left
    for folder in (tmp_path / "out", tmp_path / "maps"):
        if folder.is_dir():
            folder.chmod(0o755)
    if out.exists():
        assert out.read_bytes() == b"an earlier mask"


def test_a_failure_while_writing_leaves_every_output_as_it_was(ct_file, tmp_path,
                                                               checkpoint_dir, capsys,
                                                               monkeypatch):  # fmt: skip
    from napari_nstseg.io import writers

    out = tmp_path / "mask.nii.gz"
    out.write_bytes(b"an earlier mask")
    real, calls = writers._write_array, []

    def disk_full_on_the_third_file(tmp, *args):
        calls.append(tmp)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real(tmp, *args)

    monkeypatch.setattr(writers, "_write_array", disk_full_on_the_third_file)
    code = nstseg(["predict", ct_file, out, "--weights", checkpoint_dir / "seg.json",
                   "--device", "cpu", "--slices", "1:2", "--maps", tmp_path / "maps",
                   "--report", tmp_path / "report.json"])  # fmt: skip
    assert code == 2
    assert "No space left on device" in capsys.readouterr().err
    assert out.read_bytes() == b"an earlier mask"
    # no maps folder either: it was made for this run
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["mask.nii.gz", "scan.nii.gz"]


def test_ct_warnings_are_printed_once(tmp_path, make_ct, checkpoint_dir, capsys):
    import warnings

    hu = make_ct((2, 32, 32))
    hu[0, :2, :2] = np.nan
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(np.transpose(hu, (2, 1, 0)), np.diag([-1.0, -1, 2, 1])), path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = nstseg(["predict", path, tmp_path / "m.nii.gz", "--weights",
                       checkpoint_dir / "seg.json", "--device", "cpu"])  # fmt: skip
    assert code == 0
    assert capsys.readouterr().err.count("NaN or infinite voxels were replaced") == 1
    assert not [w for w in caught if "NaN" in str(w.message)]  # not a second time via warnings


def test_bad_arguments_are_reported_before_torch_is_imported(ct_file, tmp_path):
    script = (
        "import sys\nfrom napari_nstseg.cli import main\n"
        f"codes = [main(['predict', {str(ct_file)!r}, {str(ct_file)!r}]),\n"
        f"         main(['predict', {str(tmp_path / 'none.nii.gz')!r}, 'm.nii.gz']),\n"
        f"         main(['predict', {str(ct_file)!r}, 'm.nii.gz', '--slices', '9:12']),\n"
        f"         main(['predict', {str(ct_file)!r}, 'm.nii.gz', '--batch-size', '0'])]\n"
        "print(codes, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, encoding="utf-8",
                          errors="replace", cwd=tmp_path, timeout=120)  # fmt: skip
    assert done.stdout.strip() == "[2, 2, 2, 2] False", done.stderr
    assert not (tmp_path / "m.nii.gz").exists()


# -- the report's lesions, in the written file's own frame ---------------------------------------
@pytest.fixture
def bright_weights(monkeypatch, bright):
    """`predict` with the stand-in that marks voxels above 100 HU: known lesions, exact."""
    from napari_nstseg.inference.engine import Segmenter
    from napari_nstseg.preprocessing import PreprocessConfig

    def load(cls, path, device, config):
        return cls(bright(), PreprocessConfig(working_spacing_mm=None), "cpu", config)

    monkeypatch.setattr(Segmenter, "from_checkpoint", classmethod(load))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_report_positions_are_the_written_files_voxels_and_world_points(
    tmp_path, make_ct, checkpoint_dir, bright_weights, suffix
):
    import SimpleITK as sitk

    hu = make_ct((5, 36, 40))  # display (z, y, x): a 6 x 8 blob on every slice
    hu[1:3, 26:29, 3:6] = 200.0  # and a small one, 2 slices deep
    # stored i = x reversed (R to L is +i in LAS), j = y reversed, k = z
    data = np.transpose(hu, (2, 1, 0))[::-1, ::-1].astype(np.int16)
    affine = np.array([[-0.9, 0, 0, 30.0], [0, -1.1, 0, -20.0], [0, 0, 2.5, 5.0], [0, 0, 0, 1]])
    ct = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), ct)
    report, ids = tmp_path / "report.json", tmp_path / f"lesions{suffix}"
    argv = ["predict", ct, tmp_path / f"mask{suffix}", "--weights", checkpoint_dir / "seg.json",
            "--device", "cpu", "--min-depth-mm", "0", "--report", report,
            "--lesion-map", ids]  # fmt: skip
    assert nstseg(argv) == 0
    rep = json.loads(report.read_text())
    assert rep["schema"] == "nstseg-predict-report/2"
    lesions = rep["lesions"]
    assert [les["id"] for les in lesions] == [1, 2] and lesions[0]["voxels"] > lesions[1]["voxels"]

    if suffix == ".nii.gz":
        img = nib.load(ids)
        labels, to_ras = np.asarray(img.dataobj), img.affine
        np.testing.assert_allclose(to_ras, affine, atol=1e-5)
    else:
        img = sitk.ReadImage(str(ids))
        labels = sitk.GetArrayFromImage(img).T  # ITK index order (i, j, k)
    expected_ids = np.isin(data, [200]).astype(int)  # blob voxels in the file's order
    assert np.array_equal(labels > 0, expected_ids > 0)
    for les in lesions:
        voxels = np.argwhere(labels == les["id"])
        assert len(voxels) == les["voxels"]
        np.testing.assert_allclose(les["centroid_ijk"], voxels.mean(0), atol=1e-6)
        ijk1 = [*les["centroid_ijk"], 1.0]
        if suffix == ".nii.gz":
            np.testing.assert_allclose(les["centroid_ras_mm"], (to_ras @ ijk1)[:3], atol=1e-4)
        else:  # ITK's own index -> physical point is LPS
            lps = img.TransformContinuousIndexToPhysicalPoint(les["centroid_ijk"])
            np.testing.assert_allclose(les["centroid_lps_mm"], lps, atol=1e-4)
        np.testing.assert_allclose(
            les["centroid_lps_mm"], np.multiply(les["centroid_ras_mm"], [-1, -1, 1]), atol=1e-6
        )
        assert les["axial_axis"] == "k"
        ks = voxels[:, 2]
        assert les["axial_slices"] == [int(ks.min()), int(ks.max())]
    assert lesions[1]["axial_slices"] == [1, 2]


def test_without_a_lesion_map_the_report_gives_no_ids(ct_file, tmp_path, checkpoint_dir,
                                                      bright_weights):  # fmt: skip
    report = tmp_path / "r.json"
    argv = ["predict", ct_file, tmp_path / "m.nii.gz", "--weights", checkpoint_dir / "seg.json",
            "--report", report]  # fmt: skip
    assert nstseg(argv) == 0
    lesions = json.loads(report.read_text())["lesions"]
    assert lesions and all("id" not in les and "label" not in les for les in lesions)


def test_weights_are_found_as_the_engine_finds_them(tmp_path):
    """predict protects the checkpoint files before torch is loaded, so it resolves --weights
    itself; it must agree with napari_nstseg.bundled for every bundled name and for paths."""
    from napari_nstseg.bundled import bundled_weights, resolve_weights
    from napari_nstseg.inference.predict_outputs import weights_file

    for name in [None, *bundled_weights()]:
        assert weights_file(name) == resolve_weights(name)
    assert weights_file(str(tmp_path / "w.json")) == resolve_weights(str(tmp_path / "w.json"))
    assert weights_file("no-such-bundle") is None


def test_an_unknown_bundled_name_says_which_exist(ct_file, tmp_path, capsys):
    assert nstseg(["predict", ct_file, tmp_path / "m.nii.gz", "--weights", "no-such-bundle"]) == 2
    err = capsys.readouterr().err
    assert "'no-such-bundle' is neither a weights file nor the name of bundled weights" in err
    assert "default" in err and not (tmp_path / "m.nii.gz").exists()
