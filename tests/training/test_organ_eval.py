"""`nstseg evaluate` and `tune-postprocess` in organ mode on a tiny case-folder set made here:
in-organ sensitivity and false positives per scan, lesions centred outside the searched zone
left out of them and counted apart, and organ masks found per case (case folder, folder of
<case> files, pattern)."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from model_helpers import bright_stand_in
from napari_nstseg.preprocessing import PreprocessConfig

SHAPE = (6, 40, 44)  # display (z, y, x)
AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])  # 2 mm pixels: a 6-pixel lesion is 12 mm across
BOXES = {
    "in": (slice(2, 4), slice(8, 14), slice(8, 14)),  # a lesion in the liver (5)
    "out": (slice(2, 4), slice(32, 38), slice(30, 36)),  # a lesion far from both organs
    "fp_far": (slice(2, 4), slice(32, 36), slice(4, 8)),  # bright, not a lesion, no organ near
    "fp_liver": (slice(2, 4), slice(16, 19), slice(16, 19)),  # bright in the liver, case P0 only
    # bright just below the liver (rows 4-21): centred 6 mm outside it, within the 10 mm zone
    "fp_rim": (slice(2, 4), slice(23, 26), slice(8, 11)),
}


def save(display, path) -> None:
    nib.save(nib.Nifti1Image(display.transpose(2, 1, 0), AFFINE), path)


def write_set(root, rim: bool = False):
    """Two patients, P0 and P1, each with ct, tumour and TotalSegmentator-style organ labels
    (liver 5, spleen 1), organsTr/<case> copies of the labels, a split file and lesions.csv;
    ``rim``: a false lesion at the liver's rim too, in both."""
    (root / "organsTr").mkdir(parents=True)
    rows = []
    for case in ("P0", "P1"):
        hu = np.full(SHAPE, 40, np.int16)
        tumour = np.zeros(SHAPE, np.uint8)
        organs = np.zeros(SHAPE, np.uint8)
        organs[1:5, 4:22, 4:22] = 5
        organs[1:4, 4:14, 28:40] = 1
        for name in ("in", "out", "fp_far", "fp_liver", "fp_rim"):
            if (name == "fp_liver" and case == "P1") or (name == "fp_rim" and not rim):
                continue
            hu[BOXES[name]] = 300
            if name in ("in", "out"):
                tumour[BOXES[name]] = 1
                centre = [float(np.mean([s.start, s.stop - 1])) for s in BOXES[name]]
                rows.append({"case": case, "lesion_id": name, "organ": "liver",
                             "centre_z": centre[0], "centre_y": centre[1], "centre_x": centre[2],
                             "diameter_axial_max_mm": 12, "contrast_measured_hu": 260})  # fmt: skip
        (root / case).mkdir()
        files = {"ct": hu, "tumour": tumour, "organs": organs}
        for name, data in files.items():
            save(data, root / case / f"{name}.nii.gz")
        save(organs, root / "organsTr" / f"{case}.nii.gz")
    with open(root / "lesions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    split = root.parent / "split.json"
    split.write_text(json.dumps({"train": [], "test": ["P0", "P1"]}))
    return root, split


@pytest.fixture
def dataset(tmp_path, monkeypatch):
    from napari_nstseg.inference.engine import Segmenter

    def load(cls, path, device, config):
        return cls(bright_stand_in(), PreprocessConfig(working_spacing_mm=None), "cpu", config)

    monkeypatch.setattr(Segmenter, "from_checkpoint", classmethod(load))
    return write_set(tmp_path / "set")


def test_evaluate_in_organs_counts_lesions_outside_the_zone_apart(dataset, tmp_path):
    from napari_nstseg.training.evaluate import EvalConfig, evaluate
    from napari_nstseg.training.organ_eval import OrganEval

    root, split = dataset
    common = {"device": "cpu", "min_depth_mm": 0.0, "structure": False, "split_file": str(split)}
    weights = tmp_path / "w.json"
    whole = evaluate(weights, root, "test", tmp_path / "whole", EvalConfig(**common), False)
    assert whole["detection"]["sensitivity"] == 1.0
    assert whole["detection"]["fp_per_scan"] == 1.5  # fp_far in both, fp_liver in P0
    assert "organs" not in whole

    cfg = EvalConfig(**common, organs=OrganEval("organs.nii.gz", (5, 1), 10.0))
    res = evaluate(weights, root, "test", tmp_path / "organ", cfg, False)
    organs = res["organs"]
    assert organs["names"] == ["liver", "spleen"] and organs["margin_mm"] == 10.0
    assert (organs["lesions"], organs["detected"], organs["sensitivity"]) == (2, 2, 1.0)
    assert organs["lesions_outside_zone"] == 2
    assert organs["fp_per_scan"] == 0.5  # only fp_liver, in P0
    assert organs["target"] == {"lesions": 2, "detected": 2, "sensitivity": 1.0}
    # The whole-scan sections of the same run count the unsearched lesions as missed.
    assert res["detection"]["sensitivity"] == 0.5
    table = (tmp_path / "organ" / "evaluation.csv").read_text()
    assert "inside organs,all,2," in table and "inside organs,outside zone,2" in table

    from napari_nstseg.training.eval_report import format_table

    text = format_table(res)
    assert "inside organs 5 (liver), 1 (spleen) + 10 mm: sensitivity 1.000 (2/2)" in text
    assert "0.50 false positives per scan" in text


def test_evaluate_in_organs_scores_and_reports_the_organ_mode_point(tmp_path, monkeypatch):
    from napari_nstseg.inference.engine import Segmenter
    from napari_nstseg.training.evaluate import EvalConfig, evaluate
    from napari_nstseg.training.organ_eval import OrganEval

    # Weights whose whole-scan point drops every lesion (min 20 mm) and whose organ-mode
    # point keeps them (min 5 mm): the in-organ figures and the report follow the latter.
    meta = {
        "postprocess": {"threshold": 0.5, "min_lesion_mm": 20.0, "min_depth_mm": 0.0},
        "organ_postprocess": {"threshold": 0.5, "min_lesion_mm": 5.0, "min_depth_mm": 0.0},
    }

    def load(cls, path, device, config):
        pre = PreprocessConfig(working_spacing_mm=None)
        return cls(bright_stand_in(), pre, "cpu", config, meta=meta)

    monkeypatch.setattr(Segmenter, "from_checkpoint", classmethod(load))
    root, split = write_set(tmp_path / "set")
    cfg = EvalConfig(device="cpu", structure=False, split_file=str(split),
                     organs=OrganEval("organs.nii.gz", (5, 1), 10.0))  # fmt: skip
    res = evaluate(tmp_path / "w.json", root, "test", tmp_path / "organ", cfg, False)
    assert res["organs"]["detected"] == 2
    assert res["postprocess"]["min_lesion_mm"] == 5.0
    assert res["postprocess"]["source"]["min_lesion_mm"] == "weights"
    plain = EvalConfig(device="cpu", structure=False, split_file=str(split))
    whole = evaluate(tmp_path / "w.json", root, "test", tmp_path / "whole", plain, False)
    assert whole["detection"]["detected"] == 0 and whole["postprocess"]["min_lesion_mm"] == 20.0


def test_tune_in_organs_sweeps_in_organ_figures(dataset, tmp_path):
    from napari_nstseg.training.organ_eval import OrganEval
    from napari_nstseg.training.tune import TuneConfig, tune_postprocess

    root, split = dataset
    grid = {"thresholds": (0.5,), "min_lesion_mm": (0.0,), "min_depth_mm": (0.0,)}
    common = {"device": "cpu", "split_file": str(split), **grid}
    whole = tune_postprocess(tmp_path / "w.json", root, "test", tmp_path / "a",
                             TuneConfig(**common), False)  # fmt: skip
    (row,) = whole["grid"]
    assert (row["lesions"], row["detected"], row["fp_per_scan"]) == (4, 4, 1.5)
    cfg = TuneConfig(**common, centre_mm=(None,),
                     organs=OrganEval(str(root / "organsTr"), (5, 1)))  # fmt: skip
    res = tune_postprocess(tmp_path / "w.json", root, "test", tmp_path / "b", cfg, False)
    (row,) = res["grid"]
    assert (row["lesions"], row["detected"], row["fp_per_scan"]) == (2, 2, 0.5)
    assert (row["target_lesions"], row["target_detected"]) == (2, 2)
    assert res["organs"]["lesions_outside_zone"] == 2 and res["organs"]["labels"] == [5, 1]


def test_organ_masks_are_found_per_case_and_a_missing_one_is_named(dataset, tmp_path):
    from napari_nstseg.training.cases import find_cases
    from napari_nstseg.training.organ_eval import organ_mask_path

    root, _ = dataset
    case = find_cases(root)[0]
    assert organ_mask_path("organs.nii.gz", case, root) == root / "P0" / "organs.nii.gz"
    assert organ_mask_path("organsTr", case, root) == root / "organsTr" / "P0.nii.gz"
    pattern = str(root / "organsTr" / "{case}.nii.gz")
    assert organ_mask_path(pattern, case, root) == root / "organsTr" / "P0.nii.gz"
    with pytest.raises(ValueError, match="no organ mask for case P0"):
        organ_mask_path("seg.nii.gz", case, root)


def test_a_missing_organ_mask_stops_evaluate_before_any_case_is_predicted(dataset, tmp_path,
                                                                          monkeypatch):  # fmt: skip
    from napari_nstseg.inference.engine import Segmenter
    from napari_nstseg.training.evaluate import EvalConfig, evaluate
    from napari_nstseg.training.organ_eval import OrganEval

    root, split = dataset
    (root / "P1" / "organs.nii.gz").unlink()  # the second case lacks its map

    def refuse(*args, **kwargs):
        raise AssertionError("a case was predicted before every organ mask was found")

    monkeypatch.setattr(Segmenter, "iter_predict", refuse)
    cfg = EvalConfig(device="cpu", split_file=str(split), organs=OrganEval("organs.nii.gz", (5,)))
    with pytest.raises(ValueError, match="no organ mask for case P1"):
        evaluate(tmp_path / "w.json", root, "test", tmp_path / "e", cfg, False)


def test_the_command_line_takes_organ_options_and_refuses_bad_ones(dataset, tmp_path, capsys):
    from napari_nstseg.cli import main

    root, split = dataset
    base = ["evaluate", str(tmp_path / "w.json"), "--data", str(root), "--split-file",
            str(split), "--device", "cpu", "--no-structure", "--min-depth-mm", "0"]  # fmt: skip
    out = tmp_path / "e"
    argv = [*base, "--out", str(out), "--organ-masks", "organs.nii.gz", "--organs", "liver"]
    assert main(argv) == 0
    organs = json.loads((out / "evaluation.json").read_text())["organs"]
    assert organs["labels"] == [5] and organs["lesions"] == 2 and organs["fp_per_scan"] == 0.5
    assert main([*base, "--out", str(tmp_path / "x"), "--organs", "5"]) == 2
    assert "--organs needs --organ-masks" in capsys.readouterr().err
    bad = [*base, "--out", str(tmp_path / "y"), "--organ-masks", "organs.nii.gz", "--organs", "7"]
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert "organs.nii.gz: no voxel has organ label 7" in err and "P0" in err
    tune = ["tune-postprocess", *base[1:8], "--organ-masks", "organsTr", "--organs", "5,1",
            "--split", "test", "--out", str(tmp_path / "t"), "--thresholds", "0.5",
            "--min-lesion-mm", "0", "--min-depth-mm", "0"]  # fmt: skip
    assert main(tune) == 0
    tuned = json.loads((tmp_path / "t" / "tune.json").read_text())
    assert tuned["organs"]["scans"] == 2 and tuned["choice"]["fp_per_scan"] == 0.5


def test_the_centre_rule_drops_lesions_centred_beside_the_organ_and_tune_chooses_it(
    tmp_path, monkeypatch
):
    """A false lesion at the liver's rim (centred 6 mm outside it, inside the 10 mm zone) is a
    false positive in organ mode without the centre rule and gone with a 2 mm one, while the
    lesion inside the liver is kept; tune-postprocess sweeps the rule, chooses it (as many
    found, fewer false positives), writes it to tune.json, and `nstseg evaluate
    --operating-point` scores with it."""
    from napari_nstseg.cli import main
    from napari_nstseg.inference.engine import Segmenter
    from napari_nstseg.training.evaluate import EvalConfig, evaluate
    from napari_nstseg.training.organ_eval import OrganEval
    from napari_nstseg.training.tune import TuneConfig, tune_postprocess

    def load(cls, path, device, config):
        return cls(bright_stand_in(), PreprocessConfig(working_spacing_mm=None), "cpu", config)

    monkeypatch.setattr(Segmenter, "from_checkpoint", classmethod(load))
    root, split = write_set(tmp_path / "set", rim=True)
    common = {"device": "cpu", "structure": False, "min_depth_mm": 0.0, "split_file": str(split)}
    fp = {}
    for centre in (None, 2.0):
        cfg = EvalConfig(**common, organs=OrganEval("organs.nii.gz", (5, 1), 10.0, centre))
        res = evaluate(tmp_path / "w.json", root, "test", tmp_path / f"e{centre}", cfg, False)
        assert res["organs"]["detected"] == 2  # the liver's lesions, both cases
        fp[centre] = res["organs"]["fp_per_scan"]
    assert fp == {None: 1.5, 2.0: 0.5}  # the rim's lesion in both cases, then only fp_liver

    grid = {"thresholds": (0.5,), "min_lesion_mm": (0.0,), "min_depth_mm": (0.0,)}
    cfg = TuneConfig(device="cpu", split_file=str(split), centre_mm=(None, 2.0, 0.0), **grid,
                     organs=OrganEval(str(root / "organsTr"), (5, 1)))  # fmt: skip
    res = tune_postprocess(tmp_path / "w.json", root, "test", tmp_path / "t", cfg, False)
    by_centre = {r["centre_mm"]: r for r in res["grid"]}
    assert [by_centre[c]["fp_per_scan"] for c in (None, 2.0, 0.0)] == [1.5, 0.5, 0.5]
    assert all(r["detected"] == 2 for r in res["grid"])
    # As many found and fewer false positives; of 0 and 2 mm, the wider rule hides less.
    assert res["choice"]["centre_mm"] == 2.0 and res["organ_search"] == {"centre_mm": 2.0}
    tune_json = tmp_path / "t" / "tune.json"
    assert json.loads(tune_json.read_text())["organ_search"] == {"centre_mm": 2.0}

    out = tmp_path / "cli"
    args = ["evaluate", str(tmp_path / "w.json"), "--data", str(root), "--split-file",
            str(split), "--split", "test", "--organ-masks", "organsTr", "--organs", "5,1",
            "--operating-point", str(tune_json), "--no-structure", "--device", "cpu",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert json.loads((out / "evaluation.json").read_text())["organs"]["fp_per_scan"] == 0.5
    # tune-postprocess --organ-centre-mm: that rule alone, not a sweep.
    tuned = tmp_path / "cli-tune"
    tune_args = ["tune-postprocess", str(tmp_path / "w.json"), "--data", str(root),
                 "--split-file", str(split), "--split", "test", "--organ-masks", "organsTr",
                 "--organs", "5,1", "--device", "cpu", "--out", str(tuned),
                 "--organ-centre-mm", "0"]  # fmt: skip
    assert main(tune_args) == 0
    grid = json.loads((tuned / "tune.json").read_text())["grid"]
    assert {r["centre_mm"] for r in grid} == {0.0}
    # --organ-centre-mm none wins over the tuned rule.
    assert main([*args[:-1], str(tmp_path / "cli2"), "--organ-centre-mm", "none"]) == 0
    result = json.loads((tmp_path / "cli2" / "evaluation.json").read_text())
    assert result["organs"]["fp_per_scan"] == 1.5
