"""Data and weights for organ mode (issue 26): make-lesions writes each case's organ map (renamed
to TotalSegmentator ids) and excluded region on the case's grid, `evaluate --organ-masks
organsTr` finds them, a bad --exclude is one readable line, and a run with organ crops stores
its zoom limits in the checkpoint, which `nstseg predict --organ-mask` then uses."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from lesion_helpers import SOFT, phantom, save_int16
from model_helpers import bright_stand_in
from napari_nstseg.io.readers import read_ct, read_mask
from napari_nstseg.preprocessing import PreprocessConfig
from napari_nstseg.training.cases import data_splits
from napari_nstseg.training.data import SamplingConfig, SliceDataset
from napari_nstseg.training.lesions import (
    LesionConfig,
    SplitConfig,
    make_lesion_dataset,
    save_on_source_grid,
)
from napari_nstseg.training.lesions.online import read_source_blocks
from napari_nstseg.training.lesions.sources import ExcludeSource, OrganSource

SPACING = (2.5, 1.2, 1.2)
AFFINE = np.diag([1.2, 1.2, 2.5, 1.0])
LESIONS = LesionConfig(diameter_mm=(4.0, 8.0), shell_mm=2.0, lesions_per_scan=(1, 2), seed=1)


def to_file(display):
    return np.transpose(display, (2, 1, 0))


@pytest.fixture
def scan(tmp_path):
    """A phantom scan, its organ map with its own ids (9: the 'liver', 3: a structure not
    kept) and planning structures whose label 4 is a region never tumour-free."""
    hu, classes = phantom(shape=(60, 48, 48), spacing=SPACING, seed=2)
    organs = np.zeros(hu.shape, np.uint8)
    organs[:, 10:30, 6:26] = 9
    organs[(classes == SOFT) & (organs == 0)] = 3
    structures = np.zeros(hu.shape, np.uint8)
    structures[4:50, 12:20, 20:30] = 4  # overlaps the 'liver', as CB_001's region its bowel
    structures[:, 2:4, 2:4] = 2
    paths = {name: tmp_path / f"{name}.nii.gz" for name in ("ct", "organs", "structures")}
    save_int16(paths["ct"], to_file(hu), AFFINE)
    for name, data in (("organs", organs), ("structures", structures)):
        nib.save(nib.Nifti1Image(to_file(data), AFFINE), paths[name])
    # in display order as the readers give it (the file is RAS; display is not)
    geometry = read_ct(paths["ct"]).geometry
    shown = {name: read_mask(paths[name], like=geometry) for name in ("organs", "structures")}
    return paths, shown["organs"], shown["structures"] == 4


def make(paths, out, copies=1):
    split = SplitConfig(fractions=(0.5, 0.25, 0.25), guard_mm=5.0, min_block_mm=20.0)
    return make_lesion_dataset(
        [paths["ct"]], out, copies, LESIONS, 3,
        {paths["ct"]: OrganSource(paths["organs"], {9: 5})}, split,
        exclude={paths["ct"]: ExcludeSource(paths["structures"], (4,))},
    )  # fmt: skip


def test_each_case_carries_its_organ_map_and_excluded_region(scan, tmp_path):
    paths, organs, excluded = scan
    out = make(paths, tmp_path / "set")
    meta = json.loads((out / "dataset.json").read_text())
    source = str(paths["ct"].resolve())
    assert meta["organ_label_ids"] == {source: {"9": 5}}
    assert meta["exclusions"] == {
        source: {"mask": str(paths["structures"].resolve()), "labels": [4]}
    }
    assert meta["cases"]
    for case, info in meta["cases"].items():
        z0, z1 = info["z_range_display"]
        image = out / "imagesTr" / f"{case}_0000.nii.gz"
        ct = read_ct(image)
        organ_file = out / "organsTr" / f"{case}.nii.gz"
        assert np.allclose(nib.load(organ_file).affine, nib.load(image).affine)
        got = read_mask(organ_file, like=ct.geometry)  # on the case's own grid
        # only the kept label, renamed to TotalSegmentator's liver
        np.testing.assert_array_equal(got, np.where(organs[z0:z1] == 9, 5, 0))
        lesion = read_mask(out / "labelsTr" / f"{case}.nii.gz", like=ct.geometry) > 0
        assert lesion.any() and not (lesion & excluded[z0:z1]).any()
        ex_file = out / "excludeTr" / f"{case}.nii.gz"
        assert ex_file.is_file() == bool(excluded[z0:z1].any())
        if ex_file.is_file():
            np.testing.assert_array_equal(read_mask(ex_file, like=ct.geometry) > 0, excluded[z0:z1])
    # training on stored cases finds them beside each case: organ boxes and the region
    cases = data_splits(out)["val"] + data_splits(out)["test"]
    sampling = SamplingConfig(crop_size=(16, 16), organ_crops=1.0, samples_per_epoch=8)
    stored = SliceDataset(cases, PreprocessConfig(working_spacing_mm=1.5), sampling)
    assert all(c.boxes and c.boxes[0].label == 5 for c in stored.cases)
    assert all(c.exclude is not None for c in stored.cases)
    assert all(stored[i]["image"].shape[-2:] == (16, 16) for i in range(len(stored)))
    # training on the fly reads the same maps beside its blocks
    (block,) = read_source_blocks(out, "train")[0]
    z0, z1 = next(r["z_range_display"] for r in meta["regions"] if r["split"] == "train")
    np.testing.assert_array_equal(block.organ_labels, np.where(organs[z0:z1] == 9, 5, 0))
    np.testing.assert_array_equal(block.exclude, excluded[z0:z1])


def test_a_bad_exclude_is_one_readable_line(scan, tmp_path):
    from napari_nstseg.cli import main

    paths, _, _ = scan
    base = ["make-lesions", str(paths["ct"]), "-o", str(tmp_path / "x"), "--copies", "1"]
    other = tmp_path / "other.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), np.eye(4)), other)
    cases = {
        "no-equals": ("structures.nii.gz", "--exclude expects SCAN=MASK[:LABELS]"),
        "bad labels": (f"{paths['ct']}={paths['structures']}:4;5", "label ids separated"),
        "absent label": (f"{paths['ct']}={paths['structures']}:7", "no voxel has label 7"),
        "missing file": (f"{paths['ct']}={tmp_path / 'gone.nii.gz'}", "does not exist"),
        "not a scan": (f"{other}={paths['structures']}", "is not one of the scans given"),
        "other grid": (f"{paths['ct']}={other}", "Cannot open"),
    }
    for name, (spec, message) in cases.items():
        with pytest.raises(SystemExit) as e:
            main([*base, "--exclude", spec])
        text = str(e.value)
        assert message in text and "\n" not in text, name
    with pytest.raises(SystemExit, match="ID=TSID pairs"):
        main([*base, "--organ-labels", f"{paths['ct']}={paths['organs']}:9,5"])
    assert not (tmp_path / "x" / "dataset.json").exists()


def test_evaluate_finds_the_organ_maps_of_a_make_lesions_folder(scan, tmp_path, monkeypatch):
    from napari_nstseg.cli import main
    from napari_nstseg.inference.engine import Segmenter

    def load(cls, path, device, config):
        return cls(bright_stand_in(), PreprocessConfig(working_spacing_mm=None), "cpu", config)

    monkeypatch.setattr(Segmenter, "from_checkpoint", classmethod(load))
    paths, _, _ = scan
    out = make(paths, tmp_path / "set")
    test_cases = json.loads((out / "dataset.json").read_text())["split"]["test"]
    argv = ["evaluate", str(tmp_path / "w.json"), "--data", str(out), "--split", "test",
            "--device", "cpu", "--no-structure", "--min-depth-mm", "0", "--organ-masks",
            "organsTr", "--organs", "5", "--out", str(tmp_path / "e")]  # fmt: skip
    assert main(argv) == 0
    organs = json.loads((tmp_path / "e" / "evaluation.json").read_text())["organs"]
    assert organs["labels"] == [5] and organs["scans"] == len(test_cases)
    assert organs["scans_without_organs"] == []
    assert organs["scans_with_excluded_region"] == test_cases

    # the excluded region (a real, unlabelled tumour) is not searched: made bright here, it
    # gives no false positive, and it does once excludeTr is gone
    for case in test_cases:
        image = out / "imagesTr" / f"{case}_0000.nii.gz"
        ct = read_ct(image)
        region = read_mask(out / "excludeTr" / f"{case}.nii.gz", like=ct.geometry) > 0
        region &= read_mask(out / "organsTr" / f"{case}.nii.gz", like=ct.geometry) == 5
        assert region.any()
        save_on_source_grid(image, np.where(region, 300, ct.hu), ct.geometry, np.int16)
    argv[-1] = str(tmp_path / "e2")
    assert main(argv) == 0
    kept = json.loads((tmp_path / "e2" / "evaluation.json").read_text())["organs"]
    assert kept["fp_per_scan"] == organs["fp_per_scan"]
    shutil.rmtree(out / "excludeTr")
    argv[-1] = str(tmp_path / "e3")
    assert main(argv) == 0
    searched = json.loads((tmp_path / "e3" / "evaluation.json").read_text())["organs"]
    assert searched["fp_per_scan"] > kept["fp_per_scan"]
    assert searched["scans_with_excluded_region"] == []


def test_a_run_with_organ_crops_stores_its_zoom_and_predict_uses_it(scan, tmp_path, capsys):
    from napari_nstseg.cli import main
    from napari_nstseg.inference.organs import OrganSearch, organ_boxes
    from napari_nstseg.models.checkpoint import read_metadata

    paths, _, _ = scan
    data = make(paths, tmp_path / "set")
    run = tmp_path / "run"
    argv = ["train", "--data", str(data), "--out", str(run), "--epochs", "1",
            "--steps-per-epoch", "2", "--batch-size", "4", "--crop-size", "32",
            "--base-width", "8", "--set", "fused_channels=8", "--working-spacing-mm", "1.5",
            "--organ-crops", "0.5", "--organ-field-mm", "60", "--organ-zoom", "1", "1.5",
            "--organ-margin-mm", "5", "--organs", "liver", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    stored = {"field_mm": 60.0, "min_zoom": 1.0, "max_zoom": 1.5, "margin_mm": 5.0}
    assert read_metadata(run / "best.json")["organ_search"] == stored
    saved = json.loads((run / "train_config.json").read_text())
    assert saved["sampling"]["organ_crops"] == 0.5 and saved["organ_search"]["labels"] == [5]

    case = json.loads((data / "dataset.json").read_text())["split"]["train"][0]
    ct, seg = data / "imagesTr" / f"{case}_0000.nii.gz", data / "organsTr" / f"{case}.nii.gz"
    report = tmp_path / "report.json"
    argv = ["predict", str(ct), str(tmp_path / "mask.nii.gz"), "--weights",
            str(run / "best.json"), "--device", "cpu", "--organ-mask", str(seg), "--organs",
            "5", "--report", str(report)]  # fmt: skip
    assert main(argv) == 0
    searched = json.loads(report.read_text())["organs"]
    geometry = read_ct(ct)
    expected = organ_boxes(
        read_mask(seg, like=geometry.geometry),
        geometry.spacing,
        OrganSearch((5,), 10.0, 60.0, 1.0, 1.5),
    )
    assert searched["zoom_limits"] == [1.0, 1.5] and searched["field_mm"] == 60.0
    assert [b["zoom"] for b in searched["boxes_zyx"]] == [round(b.zoom, 3) for b in expected]
    assert all(1.0 <= b["zoom"] <= 1.5 for b in searched["boxes_zyx"])
    assert any(b["zoom"] > 1.0 for b in searched["boxes_zyx"])  # the trained zoom, not 1
