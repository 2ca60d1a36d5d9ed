"""`nstseg predict CT OUT --organ-mask SEG --organs 5,1` on a TotalSegmentator-style multi-label
file written here: lesions only inside the organs (grown by the margin), the search in the
report, and bad masks refused in one line before any model work, with nothing written."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

SHAPE = (6, 40, 44)  # display (z, y, x)
AFFINE = np.array([[-1.2, 0, 0, 30.0], [0, 1.1, 0, -20.0], [0, 0, 3.0, 5.0], [0, 0, 0, 1]])


def to_file(display: np.ndarray) -> np.ndarray:
    """Display (z, y, x) to the file's (i, j, k): the affine's x runs R to L, so no flip."""
    return np.transpose(display, (2, 1, 0))


@pytest.fixture
def scene(tmp_path):
    """A scan with a bright lesion in the liver (5), one in the spleen (1) and one far from
    every organ, and its organ labels with TotalSegmentator's ids (also 2, a kidney, and 52,
    the aorta, which are not searched)."""
    hu = np.full(SHAPE, 40, np.int16)
    organs = np.zeros(SHAPE, np.uint8)
    organs[1:5, 4:20, 4:22] = 5
    organs[1:4, 26:36, 28:40] = 1
    organs[2:4, 26:32, 4:10] = 2
    organs[0:6, 20:24, 24:27] = 52
    lesions = {
        "liver": (slice(2, 4), slice(8, 13), slice(8, 14)),
        "spleen": (slice(2, 3), slice(29, 33), slice(31, 36)),
        "far": (slice(2, 4), slice(34, 38), slice(12, 17)),  # over 10 mm from any organ
    }
    for box in lesions.values():
        hu[box] = 300
    ct = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(to_file(hu), AFFINE), ct)
    seg = tmp_path / "organs.nii.gz"
    nib.save(nib.Nifti1Image(to_file(organs), AFFINE), seg)
    return ct, seg, organs, lesions


@pytest.fixture
def bright_weights(monkeypatch, bright):
    """The stand-in network that marks voxels above 100 HU: what is found is known exactly."""
    from napari_nstseg.inference.engine import Segmenter
    from napari_nstseg.preprocessing import PreprocessConfig

    def load(cls, path, device, config):
        return cls(bright(), PreprocessConfig(working_spacing_mm=None), "cpu", config)

    monkeypatch.setattr(Segmenter, "from_checkpoint", classmethod(load))


@pytest.fixture
def no_model_work(monkeypatch):
    from napari_nstseg.inference.engine import Segmenter

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the organ mask was checked")

    monkeypatch.setattr(Segmenter, "from_checkpoint", classmethod(refuse))


def nstseg(argv) -> int:
    from napari_nstseg.cli import main

    return main([str(a) for a in argv])


def read(path) -> np.ndarray:
    return np.transpose(np.asarray(nib.load(path).dataobj), (2, 1, 0))


def test_organ_mode_finds_lesions_only_in_the_organs(scene, tmp_path, checkpoint_dir,
                                                     bright_weights, capsys):  # fmt: skip
    ct, seg, organs, lesions = scene
    out, report = tmp_path / "out" / "mask.nii.gz", tmp_path / "out" / "report.json"
    common = [ct, out, "--weights", checkpoint_dir / "seg.json", "--device", "cpu",
              "--min-depth-mm", "0", "--report", report]  # fmt: skip
    assert nstseg(["predict", *common, "--organ-mask", seg, "--organs", "5,1"]) == 0
    assert "organ mode: searching organ label 5 (liver), 1 (spleen)" in capsys.readouterr().err
    mask = read(out) > 0
    assert mask[lesions["liver"]].all() and mask[lesions["spleen"]].all()
    assert not mask[lesions["far"]].any()
    rep = json.loads(report.read_text())
    searched = rep["organs"]
    assert searched["labels"] == [5, 1] and searched["names"] == ["liver", "spleen"]
    assert searched["margin_mm"] == 10.0 and searched["lesions_only_inside"] is True
    assert searched["mask"] == str(seg.resolve())
    assert [b["label"] for b in searched["boxes_zyx"]] == [5, 1]
    assert all(b["zoom"] == 1.0 for b in searched["boxes_zyx"])
    assert len(rep["lesions"]) == 2

    # Whole-scan mode on the same scan finds the far lesion too; its report says no organs.
    assert nstseg(["predict", *common]) == 0
    assert read(out)[lesions["far"]].all()
    assert json.loads(report.read_text())["organs"] is None

    # Names, one organ, and --slices: only the liver, only slice 2.
    argv = ["predict", *common, "--organ-mask", seg, "--organs", "liver", "--slices", "2"]
    assert nstseg(argv) == 0
    mask = read(out) > 0
    assert mask[2][lesions["liver"][1:]].all() and not mask[3].any()
    assert not mask[lesions["spleen"]].any()
    assert json.loads(report.read_text())["run"]["slices"] == [2]


def test_the_report_names_the_organ_mode_point_of_the_weights(scene, tmp_path, monkeypatch,
                                                               bright, capsys):  # fmt: skip
    from napari_nstseg.inference.engine import Segmenter
    from napari_nstseg.preprocessing import PreprocessConfig

    meta = {
        "postprocess": {"threshold": 0.5, "min_lesion_mm": 0.0, "min_depth_mm": 0.0},
        "organ_postprocess": {"threshold": 0.9, "min_lesion_mm": 2.0, "min_depth_mm": 0.0},
    }

    def load(cls, path, device, config):
        pre = PreprocessConfig(working_spacing_mm=None)
        return cls(bright(), pre, "cpu", config, meta=meta)  # fmt: skip

    monkeypatch.setattr(Segmenter, "from_checkpoint", classmethod(load))
    ct, seg, *_ = scene
    report = tmp_path / "report.json"
    argv = ["predict", ct, tmp_path / "mask.nii.gz", "--device", "cpu", "--report", report]
    assert nstseg([*argv, "--organ-mask", seg, "--organs", "liver"]) == 0
    run = json.loads(report.read_text())["run"]
    assert (run["threshold"], run["min_lesion_mm"]) == (0.9, 2.0)
    assert run["operating_point_source"]["threshold"] == "weights, organ mode"
    assert "threshold 0.9 (weights, organ mode)" in capsys.readouterr().err
    assert nstseg(argv) == 0  # the whole scan at the whole-scan point
    run = json.loads(report.read_text())["run"]
    assert (run["threshold"], run["operating_point_source"]["threshold"]) == (0.5, "weights")


def test_the_margin_keeps_a_lesion_beside_the_organ(scene, tmp_path, checkpoint_dir,
                                                    bright_weights):  # fmt: skip
    ct, seg, organs, _ = scene
    hu = np.full(SHAPE, 40, np.int16)
    hu[2, 21:23, 10:14] = 300  # 1-3 rows (1.1-3.3 mm) below the liver's last row (19)
    nib.save(nib.Nifti1Image(to_file(hu), AFFINE), ct)
    out = tmp_path / "m.nii.gz"
    common = ["predict", ct, out, "--weights", checkpoint_dir / "seg.json", "--device", "cpu",
              "--min-depth-mm", "0", "--organ-mask", seg, "--organs", "5"]  # fmt: skip
    assert nstseg([*common, "--organ-margin-mm", "5"]) == 0
    assert (read(out) > 0)[2, 21:23, 10:14].all()
    assert nstseg([*common, "--organ-margin-mm", "0"]) == 0
    assert not (read(out) > 0).any()


def one_line_naming(err: str, *names) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("nstseg predict: error: "), err
    for name in names:
        assert str(name) in lines[0], (name, err)
    return lines[0]


BAD = (
    "another grid,another affine,absent label,empty,slices without organ,organs without mask,"
    "mask without organs,unknown name,mask is an output"
).split(",")


@pytest.mark.parametrize("case", BAD)
def test_bad_organ_masks_are_one_line_before_any_model_work(
    scene, tmp_path, checkpoint_dir, no_model_work, capsys, case
):
    ct, seg, organs, _ = scene
    out = tmp_path / "out" / "mask.nii.gz"
    report = tmp_path / "out" / "report.json"
    organ_args = ["--organ-mask", seg, "--organs", "5,1"]
    extra: list = []
    expected: tuple = (seg, "5")
    if case == "another grid":
        nib.save(nib.Nifti1Image(to_file(organs[:, :-1]), AFFINE), seg)
        expected = (seg, "5, 1", "another grid than the CT")
    elif case == "another affine":
        shifted = AFFINE.copy()
        shifted[0, 3] += 7.0
        nib.save(nib.Nifti1Image(to_file(organs), shifted), seg)
        expected = (seg, "5, 1", "another grid than the CT")
    elif case == "absent label":
        organ_args[-1] = "5,7"
        expected = (seg, "no voxel has organ label 7", "labels present: 1, 2, 5, 52")
    elif case == "empty":
        nib.save(nib.Nifti1Image(np.zeros(to_file(organs).shape, np.uint8), AFFINE), seg)
        expected = (seg, "empty", "5, 1")
    elif case == "slices without organ":
        # the liver and spleen end at slice 4 (with a margin their boxes would reach slice 5)
        extra = ["--slices", "5", "--organ-margin-mm", "0"]
        expected = (seg, "5 (liver), 1 (spleen)", "--slices '5'")
    elif case == "organs without mask":
        organ_args = ["--organs", "5"]
        expected = ("--organs needs --organ-mask",)
    elif case == "mask without organs":
        organ_args = ["--organ-mask", seg]
        expected = (seg, "needs --organs")
    elif case == "unknown name":
        organ_args[-1] = "livr"
        expected = ("unknown organ 'livr'",)
    elif case == "mask is an output":
        extra = ["--lesion-map", seg]
        expected = (seg, "the organ mask")
    before = seg.read_bytes()
    argv = ["predict", ct, out, "--weights", checkpoint_dir / "seg.json", "--device", "cpu",
            "--report", report, *organ_args, *extra]  # fmt: skip
    assert nstseg(argv) == 2
    one_line_naming(capsys.readouterr().err, *expected)
    assert not (tmp_path / "out").exists()  # nothing written, not even the folder
    assert seg.read_bytes() == before


def test_a_bad_organ_mask_is_refused_before_torch_is_imported(scene, tmp_path):
    import subprocess
    import sys

    ct, seg, *_ = scene
    script = (
        "import sys; from napari_nstseg.cli import main; "
        f"rc = main(['predict', {str(ct)!r}, 'm.nii.gz', '--organ-mask', {str(seg)!r}, "
        "'--organs', '5,7']); print(rc, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, encoding="utf-8",
                          errors="replace", cwd=tmp_path, timeout=120)  # fmt: skip
    assert done.stdout.strip() == "2 False", done.stderr
    assert "no voxel has organ label 7" in done.stderr
