"""Case folders (CASE/ct.nii.gz + CASE/tumour.nii.gz, as the real-tumour data come) with a
fixed split file: read as they are, split by patient, trained on and evaluated through the CLI."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from case_helpers import write_case_folders
from napari_nstseg.cli import main
from napari_nstseg.training.cases import data_splits, find_cases, read_split_file

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cases_root(tmp_path_factory) -> Path:
    return write_case_folders(tmp_path_factory.mktemp("sts") / "sts")


@pytest.fixture(scope="module")
def split_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("split") / "split.json"
    split = {"note": "ignored", "train": ["STS_000", "STS_001", "STS_002"], "val": ["STS_003"]}
    path.write_text(json.dumps({**split, "test": ["STS_004"]}))
    return path


def test_case_folders_are_read_as_they_are(cases_root):
    cases = find_cases(cases_root)
    assert [c.case_id for c in cases] == [f"STS_{i:03d}" for i in range(5)]
    assert all(c.image.name == "ct.nii.gz" and c.label.name == "tumour.nii.gz" for c in cases)
    assert all(c.image.parent.name == c.case_id for c in cases)


def test_a_case_folder_without_contour_is_skipped_with_a_warning(tmp_path):
    root = write_case_folders(tmp_path / "sts", n=2)
    (root / "STS_001" / "tumour.nii.gz").rename(root / "STS_001" / "notes.nii.gz")
    with pytest.warns(UserWarning, match="without a label file.*STS_001"):
        cases = find_cases(root)
    assert [c.case_id for c in cases] == ["STS_000"]


def test_split_file_splits_by_patient_and_leaves_out_the_unlisted(cases_root, tmp_path):
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": ["STS_000", "STS_002"], "val": ["STS_004"]}))
    splits = data_splits(str(cases_root), str(path))
    assert [c.case_id for c in splits["train"]] == ["STS_000", "STS_002"]
    assert [c.case_id for c in splits["val"]] == ["STS_004"]
    assert splits["test"] == []


def test_bad_split_files_say_what_is_wrong(cases_root, tmp_path):
    missing = tmp_path / "missing.json"
    with pytest.raises(ValueError, match="no such split file"):
        read_split_file(missing)
    both = tmp_path / "both.json"
    both.write_text(json.dumps({"train": ["STS_000"], "val": ["STS_000"]}))
    with pytest.raises(ValueError, match="in both the 'train' and the 'val' split"):
        read_split_file(both)
    ghost = tmp_path / "ghost.json"
    ghost.write_text(json.dumps({"train": ["STS_999"]}))
    with pytest.raises(ValueError, match="STS_999"):
        find_cases(cases_root, ghost)


def test_the_repository_sarcoma_split_is_by_patient_and_disjoint():
    split = json.loads((REPO / "configs" / "sarcoma" / "split.json").read_text())
    ids = {name: set(split[name]) for name in ("train", "val", "test")}
    assert (len(ids["train"]), len(ids["val"]), len(ids["test"])) == (24, 6, 6)
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    shared = REPO.parent / "shared" / "data" / "sts"
    if shared.is_dir():  # every listed patient exists in the shared data
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            found = {c.case_id for c in find_cases(shared, REPO / "configs/sarcoma/split.json")}
        assert found == ids["train"] | ids["val"] | ids["test"]


@pytest.fixture(scope="module")
def tiny_run(cases_root, split_file, tmp_path_factory) -> Path:
    """A tiny CDI-NSTSEG trained on the case folders through `nstseg train`."""
    out = tmp_path_factory.mktemp("runs") / "run"
    code = main([
        "train", "--data", str(cases_root), "--split-file", str(split_file), "--out", str(out),
        "--base-width", "8", "--set", "fused_channels=8", "--epochs", "1",
        "--steps-per-epoch", "2", "--batch-size", "4", "--crop-size", "32", "--no-progress",
    ])  # fmt: skip
    assert code == 0
    return out


def test_train_then_evaluate_on_case_folders_through_the_cli(
    cases_root, split_file, tiny_run, tmp_path
):
    out = tiny_run
    meta = json.loads((out / "final.json").read_text())
    data = meta["provenance"]["training_data"]
    assert data["cases"] == {"train": 3, "val": 1, "test": 1}
    assert data["val_cases"] == ["STS_003"] and data["split_file"] == str(split_file)
    code = main([
        "evaluate", str(out / "final.json"), "--data", str(cases_root), "--split-file",
        str(split_file), "--split", "test", "--out", str(tmp_path / "ev"), "--device", "cpu",
    ])  # fmt: skip
    assert code == 0
    rows = (tmp_path / "ev" / "cases.csv").read_text().splitlines()
    assert len(rows) == 2 and "STS_004" in rows[1] and "hd95_mm" in rows[0]
    from napari_nstseg.training.offcentre import CORNERS, measure

    off = measure(out / "final.json", cases_root, "val", str(split_file), out=tmp_path / "off")
    assert [r["case"] for r in off["cases"]] == ["STS_003"]
    assert 0 <= off["whole_dice"] <= 1 and set(CORNERS) <= set(off["cases"][0])
    assert (tmp_path / "off" / "offcentre.json").is_file()
    volume = json.loads((tmp_path / "ev" / "evaluation.json").read_text())["volume"]
    assert volume["cases"] == 1 and volume["scans_with_tumour"] == 1
    assert volume["dice_median"] == pytest.approx(volume["dice"])
    assert 0 <= volume["scans_detected"] <= 1 and volume["hd95_cases"] in (0, 1)


def test_auroc_is_the_chance_a_tumour_pixel_outscores_its_surroundings():
    from napari_nstseg.training.residual_auroc import auroc

    assert auroc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auroc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    # 2 wins, 1 tie (half) and 1 loss of 4 pairs
    assert auroc(np.array([2.0, 5.0]), np.array([2.0, 3.0])) == pytest.approx(2.5 / 4)
    assert np.isnan(auroc(np.array([]), np.array([1.0])))


def test_ring_is_soft_tissue_within_the_distance_in_mm():
    from napari_nstseg.training.residual_auroc import ResidualAurocConfig, case_samples

    tumour = np.zeros((1, 1, 40), bool)
    tumour[0, 0, 10:12] = True
    hu = np.full(tumour.shape, 40.0)
    hu[0, 0, 13] = -500.0  # gas beside the tumour is no surroundings
    residual = np.arange(40, dtype=np.float32)[None, None]
    cfg = ResidualAurocConfig(ring_mm=4.0)
    pos, neg = case_samples(residual, hu, tumour, (1.0, 1.0, 2.0), cfg, np.random.default_rng(0))
    assert sorted(pos) == [10, 11]
    assert sorted(neg) == [8, 9, 12]  # 2 pixels of 2 mm each side, less the gas pixel


def test_residual_auroc_through_the_cli(cases_root, split_file, tmp_path):
    from model_helpers import tiny_mae_config
    from napari_nstseg.training.config import MAEPretrainConfig
    from napari_nstseg.training.mae_pretrain import pretrain_mae

    mae = pretrain_mae(
        MAEPretrainConfig(
            data=str(cases_root / "STS_000" / "ct.nii.gz"), out=str(tmp_path / "mae"),
            mae=tiny_mae_config(), crop_size=32, epochs=1, steps_per_epoch=1, batch_size=4,
            progress=False,
        )
    )  # fmt: skip
    code = main([
        "residual-auroc", str(mae), "--data", str(cases_root), "--split-file", str(split_file),
        "--split", "val", "--out", str(tmp_path / "auroc"),
    ])  # fmt: skip
    assert code == 0
    result = json.loads((tmp_path / "auroc" / "residual_auroc.json").read_text())
    assert [r["case"] for r in result["cases"]] == ["STS_003"]
    assert 0 <= result["pooled_auroc"] <= 1 and result["cases"][0]["tumour"] > 0


def test_mae_pretraining_on_case_folders_reads_the_training_cts_never_the_contours(cases_root):
    from napari_nstseg.training.mae_data import find_volumes

    volumes = find_volumes(cases_root)
    assert volumes and all(v.name == "ct.nii.gz" for v in volumes)


def test_corner_crops_put_the_tumour_off_centre():
    from napari_nstseg.training.offcentre import corner_boxes

    boxes = corner_boxes((100, 80), 0.7)
    assert boxes["top-left"] == (slice(0, 70), slice(0, 56))
    assert boxes["bottom-right"] == (slice(30, 100), slice(24, 80))
    # a tumour in the middle of the case lies at an edge region of every corner crop
    for ys, xs in boxes.values():
        centre = ((ys.start + ys.stop) / 2, (xs.start + xs.stop) / 2)
        assert abs(centre[0] - 50) >= 14 and abs(centre[1] - 40) >= 11


def test_bundle_sarcoma_writes_named_weights_card_and_comparison(
    cases_root, split_file, tiny_run, tmp_path
):
    from napari_nstseg.bundled import bundled_weights
    from napari_nstseg.recipes import bundle_sarcoma as bundle

    tune = tmp_path / "tune.json"
    point = {"threshold": 0.6, "min_lesion_mm": 0.0, "min_depth_mm": 4.0}
    tune.write_text(json.dumps({"postprocess": point}))
    weights, docs = tmp_path / "weights", tmp_path / "docs"
    docs.mkdir()
    stage2 = tmp_path / "stage2"  # a second stage, continued from the first with --init
    code = main([
        "train", "--data", str(cases_root), "--split-file", str(split_file), "--out", str(stage2),
        "--init", str(tiny_run / "final.json"), "--epochs", "1", "--steps-per-epoch", "3",
        "--batch-size", "4", "--crop-size", "32", "--positive-jitter", "0.5", "--no-progress",
    ])  # fmt: skip
    assert code == 0
    # an ablation's run beside the bundled one's, tuned on its own (its tune_val/tune.json)
    from napari_nstseg.training.segmentation import copy_checkpoint

    (tmp_path / "single-scale" / "tune_val").mkdir(parents=True)
    copy_checkpoint(tiny_run / "final.json", tmp_path / "single-scale" / "best")
    (tmp_path / "single-scale" / "tune_val" / "tune.json").write_text(tune.read_text())
    reading = tmp_path / "reading.md"
    reading.write_text("### Reading the figures\n\nhand-written\n")
    args = [
        "--seg", str(stage2 / "final.json"), "--tune", str(tune),
        "--compare", f"U-Net={tiny_run / 'final.json'}:{tune}", "--data", str(cases_root),
        "--split-file", str(split_file), "--work", str(tmp_path / "work"),
        "--weights-dir", str(weights), "--docs", str(docs), "--hardware", "test CPU",
    ]  # fmt: skip
    with pytest.raises(SystemExit, match="train and tune the no-glm ablation first"):
        bundle.main([*args, "--ablations", "no-glm"])
    code = bundle.main([*args, "--ablations", "single-scale", "--reading", str(reading)])
    assert code == 0
    named = bundled_weights(weights)["sarcoma"]
    assert named.description.startswith("CDI-NSTSEG for soft-tissue sarcoma")
    assert json.loads(named.path.read_text())["postprocess"] == point
    card = (weights / "MODEL_CARD_sarcoma.md").read_text()
    assert "not for diagnosis" in card and "STS_003" in card and "test CPU" in card
    table = (docs / "sarcoma.md").read_text()
    assert "| U-Net |" in table and "| CDI-NSTSEG (bundled `sarcoma`) |" in table
    # the budget adds up over the stages: 1 x 2 x 4 crops, then 1 x 3 x 4 more
    assert "| CDI-NSTSEG (bundled `sarcoma`) | 1 x 2 x 4 + 1 x 3 x 4 = 20 crops |" in table
    assert "| U-Net | 1 x 2 x 4 = 8 crops |" in table
    assert table.count("| CDI-NSTSEG single scale (1.0x only), same data, budget and seed |") == 3
    assert table.rstrip().endswith("### Reading the figures\n\nhand-written")  # kept, last


def test_results_never_go_into_the_data_set_or_over_an_input(
    cases_root, tiny_run, tmp_path, capsys
):
    ckpt = str(tiny_run / "final.json")
    before = {p: p.stat().st_mtime_ns for p in [*cases_root.rglob("*"), *tiny_run.iterdir()]}
    assert main(["evaluate", ckpt, "--data", str(cases_root), "--out", str(cases_root / "e")]) == 2
    assert "it is inside the data set" in capsys.readouterr().err
    assert main(["train", "--data", str(cases_root), "--init", ckpt, "--out", str(tiny_run)]) == 2
    assert "it is the starting weights this command reads" in capsys.readouterr().err
    after = {p: p.stat().st_mtime_ns for p in [*cases_root.rglob("*"), *tiny_run.iterdir()]}
    assert after == before  # nothing written, nothing made
