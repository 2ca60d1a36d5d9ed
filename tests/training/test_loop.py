"""Training loop, resume, DDP, MAE pretraining, the CLI and evaluation, on a tiny synthetic MSD
folder of faint discs (CPU, tiny models, a few steps)."""

from __future__ import annotations

import csv
import json
import shutil
import socket
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from model_helpers import tiny_mae_config
from napari_nstseg.metrics import PIXEL_METRICS, STRUCTURE_METRICS
from napari_nstseg.models import ModelConfig
from napari_nstseg.models.checkpoint import load_checkpoint, read_metadata
from napari_nstseg.models.variants import variant_config
from napari_nstseg.training.config import MAEPretrainConfig, TrainConfig, parse_overrides
from napari_nstseg.training.data import AugmentConfig, SamplingConfig
from napari_nstseg.training.eval_report import format_table
from napari_nstseg.training.evaluate import EvalConfig, evaluate
from napari_nstseg.training.mae_pretrain import pretrain_mae
from napari_nstseg.training.segmentation import run_training

SHAPE_ZYX = (6, 32, 32)
TINY = ModelConfig(base_width=8, fused_channels=8)
TINY_MAE = tiny_mae_config()


def write_msd(root: Path, n_cases: int = 5, seed: int = 0, contrast: float = 60.0) -> Path:
    """MSD folder of soft-tissue volumes (40 HU, noise 8 HU) with two +60 HU discs each, a split
    (3 train, 1 val, 1 test) in dataset.json and a lesions.csv like `make-lesions` writes."""
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    ids = [f"case{i}" for i in range(n_cases)]
    rows = []
    # Negative x/y axes: the array is already in the readers' LPS display order.
    affine = np.diag([-1.0, -1.0, 2.0, 1.0])
    _, yy, xx = np.mgrid[: SHAPE_ZYX[0], : SHAPE_ZYX[1], : SHAPE_ZYX[2]]
    for cid in ids:
        hu = 40.0 + rng.normal(0, 8, SHAPE_ZYX)
        mask = np.zeros(SHAPE_ZYX, np.uint8)
        for k, cz in enumerate((1, 4)):
            cy, cx = rng.uniform(9, 23, 2)
            r = rng.uniform(3, 5)
            disc = ((yy[cz] - cy) ** 2 + (xx[cz] - cx) ** 2) <= r * r
            hu[cz][disc] += contrast
            mask[cz][disc] = 1
            rows.append(
                {"case": cid, "lesion_id": k + 1, "centre_z": cz, "centre_y": cy,
                 "centre_x": cx, "diameter_axial_max_mm": 2 * r + 1,
                 "contrast_measured_hu": contrast}
            )  # fmt: skip
        nib.save(
            nib.Nifti1Image(np.round(hu).astype(np.int16).transpose(2, 1, 0), affine),
            root / "imagesTr" / f"{cid}_0000.nii.gz",
        )
        nib.save(
            nib.Nifti1Image(mask.transpose(2, 1, 0), affine), root / "labelsTr" / f"{cid}.nii.gz"
        )
    split = {"train": ids[:-2], "val": [ids[-2]], "test": [ids[-1]]}
    (root / "dataset.json").write_text(json.dumps({"name": "synthetic-discs", "split": split}))
    with open(root / "lesions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_msd(tmp_path_factory.mktemp("msd") / "discs")


def tiny_config(data: Path, out: Path, **changes) -> TrainConfig:
    cfg = TrainConfig(
        data=str(data),
        out=str(out),
        model=TINY,
        sampling=SamplingConfig(crop_size=(32, 32), augment=AugmentConfig(enabled=False)),
        epochs=3,
        steps_per_epoch=3,
        batch_size=4,
        lr=3e-3,
        progress=False,
    )
    return replace(cfg, **changes)


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """One uninterrupted 3-epoch run of a tiny CDI-NSTSEG that the tests below inspect."""
    cfg = tiny_config(dataset, tmp_path_factory.mktemp("runs") / "reference")
    return cfg, run_training(cfg)


def read_log(out: str | Path) -> list[dict[str, str]]:
    with open(Path(out) / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_training_lowers_the_loss_and_logs_every_epoch(reference):
    cfg, result = reference
    rows = read_log(cfg.out)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert [int(r["step"]) for r in rows] == [3, 6, 9]
    for column in ("lr", "train_loss", "train_coarse", "train_stage1", "train_stage2",
                   "train_stage3", "val_loss", "val_dice", "val_iou", "samples_per_s",
                   "epoch_time_s", "elapsed_s"):  # fmt: skip
        assert column in rows[0], column
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] < cfg.lr and lrs == sorted(lrs, reverse=True)  # poly decay per iteration
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < 0.9 * losses[0], losses
    # The logged terms are the deep-supervision loss: they add up to the total.
    terms = sum(float(rows[0][k]) for k in ("train_coarse", "train_stage1", "train_stage2",
                                              "train_stage3"))  # fmt: skip
    assert terms == pytest.approx(losses[0], rel=1e-4)


def test_logged_losses_are_step_means_with_or_without_a_progress_bar(reference, tmp_path):
    cfg, _ = reference
    with_bar = replace(cfg, out=str(tmp_path / "bar"), epochs=1, progress=True)
    run_training(with_bar)
    quiet, shown = read_log(cfg.out)[0], read_log(with_bar.out)[0]
    # Same seed, same first epoch: the bar must not change what is logged.
    # (a sum over the 3 steps instead of their mean would be 3x off)
    assert float(quiet["train_loss"]) == pytest.approx(float(shown["train_loss"]), rel=0.02)
    assert float(quiet["samples_per_s"]) > 0


def test_best_and_final_checkpoints_load_with_provenance(reference, dataset):
    cfg, result = reference
    assert result.best == Path(cfg.out) / "best.json"
    model, meta = load_checkpoint(result.best)
    assert meta["kind"] == "segmentation"
    assert ModelConfig.from_dict(meta["model_config"]) == TINY
    prov = meta["provenance"]
    assert prov["training_data"]["folder"] == str(dataset.resolve())
    assert prov["training_data"]["name"] == "synthetic-discs"
    assert prov["training_data"]["cases"] == {"train": 3, "val": 1, "test": 1}
    assert prov["budget"]["epochs"] == 3 and prov["budget"]["samples"] == 36
    assert "val_dice" in prov["metrics"] and prov["date"] and "git" in prov
    # on a CPU, training runs in float32 unless told otherwise (whether bf16 autocast is faster
    # depends on the CPU), and the checkpoint says what it ran in
    assert prov["device"] == "cpu" and prov["precision"] == "float32"
    best_dice = max(float(r["val_dice_pooled"]) for r in read_log(cfg.out))
    assert prov["metrics"]["val_dice_pooled"] == pytest.approx(best_dice, rel=1e-4)
    assert prov["selected_by"] == "val_dice_pooled"
    final, _ = load_checkpoint(result.final)
    trained = result.model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in final.state_dict().items())
    # Only the last keep_epochs epoch checkpoints stay.
    assert sorted(p.name for p in Path(cfg.out).glob("epoch_*.json")) == [
        "epoch_0002.json", "epoch_0002.state.json", "epoch_0003.json", "epoch_0003.state.json"
    ]  # fmt: skip


def test_resume_after_interruption_gives_the_same_weights(reference, tmp_path):
    cfg, _ = reference
    out = tmp_path / "interrupted"
    shutil.copytree(cfg.out, out)
    # As if killed during epoch 3: its checkpoint and the final one never got written.
    for p in [*out.glob("epoch_0003*"), *out.glob("final.*")]:
        p.unlink()
    resumed = run_training(replace(cfg, out=str(out), resume=True))
    assert [int(r["epoch"]) for r in read_log(out)] == [1, 2, 3]
    a = load_file(str(Path(cfg.out) / "final.safetensors"))
    b = load_file(str(out / "final.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.history[-1]["train_loss"] == pytest.approx(
        float(read_log(cfg.out)[-1]["train_loss"]), rel=1e-5
    )


def test_a_run_resumed_from_an_older_optimizer_state_continues_the_same_update(tmp_path):
    """Optimizer state saved by the per-parameter AdamW (runs before the foreach one) resumes
    into the foreach optimizer, which keeps its implementation, lays the state out like the
    channels-last parameters and takes the step the old one would have taken."""
    from napari_nstseg.models import build_model
    from napari_nstseg.training.optimizer import (
        FOREACH,
        optimizer_state_from_files,
        optimizer_state_to_files,
    )

    torch.manual_seed(0)
    model = build_model(TINY).to(memory_format=torch.channels_last)  # as training lays it out
    x = torch.randn(2, TINY.in_channels, 32, 32)

    def step(opt):
        opt.zero_grad()
        model(x).final.square().mean().backward()
        opt.step()

    old = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=False)
    step(old)
    optimizer_state_to_files(old, {}, tmp_path / "state")
    start = {k: v.clone() for k, v in model.state_dict().items()}
    step(old)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(start)
    new = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=FOREACH)
    optimizer_state_from_files(new, tmp_path / "state")
    assert new.param_groups[0]["foreach"] is True
    for p in model.parameters():
        assert new.state[p]["exp_avg"].stride() == p.stride()
    step(new)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=1e-5, atol=1e-6)


def test_init_starts_from_a_checkpoint_with_its_architecture(reference, dataset, tmp_path, capsys):
    """`train --init W` fine-tunes W: its architecture and preprocessing come with it, the
    provenance names it and its budget, and a conflicting architecture is refused readably."""
    from napari_nstseg.cli import main

    cfg, result = reference
    out = tmp_path / "finetuned"
    code = main([
        "train", "--data", str(dataset), "--out", str(out), "--init", str(result.final),
        "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "4", "--crop-size", "32",
        "--lr", "1e-12", "--no-progress",
    ])  # fmt: skip
    assert code == 0
    model, meta = load_checkpoint(out / "final.json")
    assert ModelConfig.from_dict(meta["model_config"]) == TINY  # no --base-width was given
    start = dict(load_checkpoint(result.final)[0].named_parameters())
    # at a learning rate of 1e-12 one step leaves the starting weights in place
    for name, value in model.named_parameters():
        torch.testing.assert_close(value, start[name], atol=1e-6, rtol=0)
    origin = meta["provenance"]["initialised_from"]
    assert origin["weights"] == str(Path(result.final).resolve())
    assert origin["budget"]["samples"] == 36
    assert origin["tensors_sha256"] == read_metadata(result.final)["tensors"]["sha256"]
    # Resumed for a second epoch, the run keeps naming where it started.
    code = main(["train", "--data", str(dataset), "--out", str(out), "--resume", "--epochs", "2"])
    assert code == 0
    resumed = read_metadata(out / "final.json")["provenance"]
    assert resumed["epoch"] == 2 and resumed["initialised_from"] == origin
    # A 2-D checkpoint starts a 2.5-D run: its input weights on the centre plane, zeros on the
    # context planes, so the network begins as the 2-D model.
    code = main([
        "train", "--data", str(dataset), "--out", str(tmp_path / "planes"), "--init",
        str(result.final), "--context-mm", "2", "--epochs", "1", "--steps-per-epoch", "1",
        "--batch-size", "4", "--crop-size", "32", "--lr", "1e-12", "--no-progress",
    ])  # fmt: skip
    assert code == 0
    planes, meta = load_checkpoint(tmp_path / "planes" / "final.json")
    assert meta["model_config"]["in_channels"] == 3
    assert meta["preprocessing"]["slice_offsets_mm"] == [-2.0, 0.0, 2.0]
    assert meta["provenance"]["initialised_from"]["input_planes_added"] is True
    widened = [n for n, v in planes.named_parameters() if v.ndim == 4 and v.shape[1] == 3]
    assert widened
    for name in widened:
        w = dict(planes.named_parameters())[name]
        torch.testing.assert_close(w[:, 1:2], start[name], atol=1e-6, rtol=0)
        assert float(w[:, [0, 2]].abs().max()) < 1e-6
    capsys.readouterr()
    code = main([
        "train", "--data", str(dataset), "--out", str(tmp_path / "wider"),
        "--init", str(result.final), "--base-width", "16", "--epochs", "1",
        "--steps-per-epoch", "1", "--batch-size", "4", "--no-progress",
    ])  # fmt: skip
    assert code == 2
    assert "architecture differs from this run's (base_width: 8 there, 16 here" in (
        capsys.readouterr().err
    )


def test_output_folder_is_not_mixed_between_runs(reference):
    cfg, _ = reference
    with pytest.raises(ValueError, match="--resume"):
        run_training(replace(cfg, resume=False))
    with pytest.raises(ValueError, match="lr"):
        run_training(replace(cfg, lr=1e-2, resume=True))


def test_small_batches_are_refused_with_a_clear_error(dataset, tmp_path):
    with pytest.raises(ValueError, match="at least 4"):
        tiny_config(dataset, tmp_path, batch_size=2)
    assert tiny_config(dataset, tmp_path, batch_size=2, allow_small_batch=True).batch_size == 2


def test_channels_must_match_the_context_planes(dataset, tmp_path):
    from napari_nstseg.preprocessing import PreprocessConfig

    with pytest.raises(ValueError, match="1 input channel.*makes 3"):
        tiny_config(
            dataset, tmp_path, preprocess=PreprocessConfig(slice_offsets_mm=(-2.0, 0.0, 2.0))
        )


def test_precision_flags_of_train(tmp_path, capsys):
    from napari_nstseg.cli import build_parser
    from napari_nstseg.training.cli_train import build_train_config

    parser = build_parser()
    base = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run")]
    amp = [build_train_config(parser.parse_args(base + flag)).amp
           for flag in ([], ["--amp"], ["--no-amp"])]  # fmt: skip
    assert amp == [None, True, False]  # None: autocast on GPUs only
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--amp", "--no-amp"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_variants_and_overrides():
    base = ModelConfig(base_width=16)
    assert variant_config("no-sfm", base).scale_fusion == "mean"
    assert variant_config("no-glm", base).glm == "none"
    assert variant_config("no-lfm", base).lfm_stages == 0
    assert variant_config("single-scale", base).scales == (1.0,)
    unet = variant_config("unet", base, parse_overrides(["fused_channels=8"]))
    assert (unet.arch, unet.base_width, unet.fused_channels) == ("unet", 16, 8)
    assert parse_overrides(["scales=0.5,1.0", "glm=none"]) == {"scales": [0.5, 1.0], "glm": "none"}
    with pytest.raises(ValueError, match="variant"):
        variant_config("no-such")
    with pytest.raises(ValueError, match="unknown key"):
        variant_config("default", base, {"widht": 3})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cfg: TrainConfig, dump: str) -> None:
    import os

    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
        RANK=str(rank), LOCAL_RANK=str(rank),
    )  # fmt: skip
    result = run_training(cfg)
    state = {k: v.contiguous().clone() for k, v in result.model.state_dict().items()}
    save_file(state, f"{dump}/rank{rank}.safetensors", metadata={"best": str(result.best)})


def test_ddp_two_ranks_on_gloo_end_with_identical_weights(dataset, tmp_path):
    # Unequal validation shards (3 and 2 slices, batches of 2) must not hang the ranks.
    cfg = tiny_config(
        dataset, tmp_path / "ddp", epochs=1, steps_per_epoch=2, val_batch_size=2, val_max_slices=5
    )
    torch.multiprocessing.spawn(
        _ddp_worker, args=(2, _free_port(), cfg, str(tmp_path)), nprocs=2, join=True
    )
    a = load_file(str(tmp_path / "rank0.safetensors"))
    b = load_file(str(tmp_path / "rank1.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Rank 0 wrote the checkpoints, and every rank names the same best checkpoint.
    saved = load_checkpoint(tmp_path / "ddp" / "final.json")[0].state_dict()
    assert all(torch.equal(v, a[k]) for k, v in saved.items())
    for rank in (0, 1):
        with safe_open(str(tmp_path / f"rank{rank}.safetensors"), "pt") as f:
            assert f.metadata()["best"] == str(tmp_path / "ddp" / "best.json")
    meta = read_metadata(tmp_path / "ddp" / "final.json")
    assert meta["provenance"]["world_size"] == 2
    assert meta["provenance"]["budget"]["global_batch"] == 8
    assert len(read_log(tmp_path / "ddp")) == 1


def test_mae_pretraining_then_ssl_guided_training_via_the_cli(dataset, tmp_path):
    from napari_nstseg.cli import main
    from napari_nstseg.inference.engine import Segmenter

    mae_cfg = MAEPretrainConfig(
        data=str(dataset), out=str(tmp_path / "mae"), mae=TINY_MAE, crop_size=32,
        epochs=1, steps_per_epoch=2, batch_size=4, progress=False,
    )  # fmt: skip
    mae_best = pretrain_mae(mae_cfg)
    model, meta = load_checkpoint(mae_best)
    assert meta["kind"] == "mae" and meta["provenance"]["training_data"]["cases"]["train"] == 3
    assert "val_loss" in read_log(tmp_path / "mae")[0]

    out = tmp_path / "ssl"
    code = main([
        "train", "--data", str(dataset), "--out", str(out), "--variant", "ssl",
        "--base-width", "8", "--set", "fused_channels=8", "--epochs", "1",
        "--steps-per-epoch", "1", "--batch-size", "4", "--crop-size", "32",
        "--mae", str(mae_best), "--no-progress", "--noise-hu", "3", "--positive-fraction", "0.6",
        "--context-mm", "2", "--hard-pixel-fraction", "0.1", "--region-loss", "batch",
    ])  # fmt: skip
    assert code == 0
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["loss"]["hard_pixel_fraction"] == 0.1 and saved["loss"]["region"] == "batch"
    sampling = saved["sampling"]
    assert sampling["augment"]["noise_std_hu"] == 3.0 and sampling["positive_fraction"] == 0.6
    meta = read_metadata(out / "best.json")
    assert meta["model_config"]["ssl_guidance"] is True and meta["mae"] == "mae.json"
    # 2.5-D: the planes 2 mm above and below feed the network; the MAE sees the slice alone.
    assert meta["model_config"]["in_channels"] == 3
    assert meta["preprocessing"]["slice_offsets_mm"] == [-2.0, 0.0, 2.0]
    segmenter = Segmenter.from_checkpoint(out / "best.json", device="cpu")
    assert segmenter.has_mae
    pred = segmenter.predict(np.full(SHAPE_ZYX, 40.0, np.float32), (2.0, 1.0, 1.0))
    assert pred.final.shape == SHAPE_ZYX


def test_evaluate_writes_every_metric_and_group(reference, dataset, tmp_path):
    cfg, result = reference
    res = evaluate(result.best, dataset, "test", out=tmp_path, config=EvalConfig(device="cpu"),
                   verbose=False)  # fmt: skip
    metric_names = set(PIXEL_METRICS + STRUCTURE_METRICS)
    groups = res["pixel"]["groups"]
    assert set(groups) == {"area<1%", "area<10%", "all"}
    assert metric_names <= set(groups["all"]) and groups["all"]["images"] == 2
    assert set(res["pixel"]["by_diameter"]) == {"<10 mm", "10-20 mm", ">=20 mm"}
    det = res["detection"]
    assert det["lesions"] == 2 and det["scans"] == 1
    assert {"sensitivity", "fp_per_scan", "by_diameter"} <= set(det)
    table = res["lesions_by_table"]
    assert table["all"]["lesions"] == 2  # both lesions.csv rows found their lesion
    assert set(table["by_contrast"]) == {"<20 HU", "20-40 HU", ">=40 HU"}
    assert table["by_contrast"][">=40 HU"]["lesions"] == 2
    polarity = table["by_polarity"]
    assert polarity["hypodense"]["lesions"] + polarity["hyperdense"]["lesions"] == 2
    assert ">=10 mm and >=20 HU" in table
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved["detection"]["lesions"] == 2 and len(saved["cases"]) == 1
    with open(tmp_path / "evaluation.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert metric_names <= set(rows[0]) and {"sensitivity", "fp_per_scan"} <= set(rows[0])
    assert {r["group"] for r in rows if r["section"] == "slices area"} == set(groups)
    assert {r["group"] for r in rows if r["section"] == "lesions.csv polarity"} == {
        "hypodense", "hyperdense"}  # fmt: skip
    assert {r["group"] for r in rows if r["section"] == "lesions.csv >=10 mm and >=20 HU"} == {
        "hypodense", "hyperdense"}  # fmt: skip
    with open(tmp_path / "lesions.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 2


def test_evaluate_reports_each_source_region_of_a_lesion_set(reference, dataset, tmp_path):
    """Copies of one z-block (dataset.json "cases", as make-lesions writes it) are tallied
    together, and the regions add up to the whole split."""
    import shutil

    _, result = reference
    data = tmp_path / "regions"
    shutil.copytree(dataset, data)
    meta = json.loads((data / "dataset.json").read_text())
    meta["split"]["test"] = ["case3", "case4"]
    meta["split"].update(train=["case0", "case1"], val=["case2"])
    meta["cases"] = {cid: {"source": "/src/scan.nii.gz", "z_range_display": [0, 8]}
                     for cid in ("case3", "case4")}  # fmt: skip
    (data / "dataset.json").write_text(json.dumps(meta))
    res = evaluate(result.best, data, "test", out=tmp_path / "eval",
                   config=EvalConfig(device="cpu", structure=False), verbose=False)  # fmt: skip
    region = res["by_region"]["scan.nii.gz z000-008"]
    det = res["detection"]
    assert region["scans"] == det["scans"] == 2
    assert (region["lesions"], region["detected"]) == (det["lesions"], det["detected"])
    assert region["false_positives"] == det["false_positives"]
    assert region["target_lesions"] == res["lesions_by_table"][">=10 mm and >=20 HU"]["lesions"]
    assert region["recurring_fp_sites"] is not None  # two copies on one grid
    with open(tmp_path / "eval" / "evaluation.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["section"] == "detection region"]
    assert [r["group"] for r in rows] == ["scan.nii.gz z000-008"]
    assert "by source region" in format_table(res)
    assert "by_region" not in evaluate(result.best, dataset, "test", out=tmp_path / "plain",
                                       config=EvalConfig(device="cpu", structure=False),
                                       verbose=False)  # fmt: skip


def test_evaluate_command_takes_weights_and_data(reference, dataset, tmp_path, capsys):
    from napari_nstseg.cli import main

    _, result = reference
    out = tmp_path / "eval"
    code = main(["evaluate", "--weights", str(result.best), "--data", str(dataset),
                 "--out", str(out), "--device", "cpu", "--no-structure"])  # fmt: skip
    assert code == 0
    assert (out / "evaluation.json").exists() and (out / "evaluation.csv").exists()
    printed = capsys.readouterr().out
    assert "dice" in printed.lower() and "fp" in printed.lower(), printed
    assert main(["evaluate", "--data", str(dataset)]) == 2  # no weights: one clear line


def test_evaluate_without_trained_labels_never_scores_the_organ_as_tumor(tmp_path):
    """A checkpoint that does not record its label values is scored on dataset.json's highest
    label, even on a test scan whose label map holds only the organ (label 1)."""
    from napari_nstseg.models import build_model
    from napari_nstseg.models.checkpoint import save_checkpoint

    root = tmp_path / "organ"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    affine = np.diag([-1.0, -1.0, 2.0, 1.0])
    labels = np.zeros(SHAPE_ZYX, np.uint8)
    labels[1:5, 8:24, 8:24] = 1  # organ only: this scan has no tumor (label 2)
    for cid in ("case0", "case1"):
        hu = np.full(SHAPE_ZYX, 40, np.int16)
        nib.save(
            nib.Nifti1Image(hu.transpose(2, 1, 0), affine), root / "imagesTr" / f"{cid}_0000.nii.gz"
        )
        nib.save(
            nib.Nifti1Image(labels.transpose(2, 1, 0), affine), root / "labelsTr" / f"{cid}.nii.gz"
        )
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "labels": {"0": "background", "1": "organ", "2": "tumour"},
                "split": {"train": ["case0"], "test": ["case1"]},
            }
        )
    )
    torch.manual_seed(0)
    stem = tmp_path / "weights" / "untrained"
    save_checkpoint(stem, build_model(TINY), TINY.to_dict(), {}, {"data": "none"})
    res = evaluate(stem, root, "test", out=tmp_path / "eval", config=EvalConfig(device="cpu"),
                   verbose=False)  # fmt: skip
    assert res["detection"]["lesions"] == 0


def test_evaluate_scores_and_records_the_operating_point(reference, dataset, tmp_path):
    from napari_nstseg.cli import main

    _, result = reference
    default = evaluate(result.best, dataset, "test", out=tmp_path / "a",
                       config=EvalConfig(device="cpu", structure=False), verbose=False)  # fmt: skip
    assert default["postprocess"] == {
        "threshold": 0.5,
        "min_lesion_mm": 0.0,
        "min_depth_mm": 0.0,
        "source": {"threshold": "default", "min_lesion_mm": "default", "min_depth_mm": "default"},
    }
    out = tmp_path / "b"
    code = main(["evaluate", str(result.best), "--data", str(dataset), "--out", str(out),
                 "--device", "cpu", "--no-structure", "--threshold", "0.3",
                 "--min-lesion-mm", "50", "--mirror"])  # fmt: skip
    assert code == 0
    saved = json.loads((out / "evaluation.json").read_text())
    assert saved["config"]["mirror"] is True and default["config"]["mirror"] is False
    assert saved["postprocess"]["threshold"] == 0.3
    assert saved["postprocess"]["min_lesion_mm"] == 50.0
    assert saved["postprocess"]["source"]["min_lesion_mm"] == "explicit"
    # Nothing in these 32 x 32 px scans reaches 50 mm: no lesion, no false positive remains.
    assert saved["detection"]["false_positives"] == 0 and saved["detection"]["detected"] == 0


def test_tune_postprocess_sweeps_the_grid_and_chooses_a_point(reference, dataset, tmp_path, capsys):
    from napari_nstseg.cli import main

    _, result = reference
    out = tmp_path / "tune"
    code = main(["tune-postprocess", "--weights", str(result.best), "--data", str(dataset),
                 "--split", "val", "--thresholds", "0.3", "0.5", "--min-lesion-mm", "0", "4",
                 "--min-depth-mm", "0", "--max-fp-per-scan", "1000", "--out", str(out),
                 "--device", "cpu"])  # fmt: skip
    assert code == 0
    tuned = json.loads((out / "tune.json").read_text())
    assert tuned["mirror"] is False
    assert {r["min_depth_mm"] for r in tuned["grid"]} == {0.0}
    grid = {(r["threshold"], r["min_lesion_mm"]): r for r in tuned["grid"]}
    assert set(grid) == {(0.3, 0.0), (0.3, 4.0), (0.5, 0.0), (0.5, 4.0)}
    assert all(r["scans"] == 1 and r["lesions"] == 2 for r in grid.values())
    # Target lesions (>= 10 mm, >= 20 HU) decide when lesions.csv lists some, else all do.
    with open(dataset / "lesions.csv", newline="") as f:
        val = [r for r in csv.DictReader(f) if r["case"] == "case3"]
    targets = sum(float(r["diameter_axial_max_mm"]) >= 10 for r in val)
    assert all(r["target_lesions"] == targets for r in grid.values())
    assert ("all lesions" in tuned["criterion"]) == (targets == 0) and tuned["met_fp_limit"]
    # A minimum size can only remove components: never more false positives, never more hits.
    for t in (0.3, 0.5):
        assert grid[(t, 4.0)]["false_positives"] <= grid[(t, 0.0)]["false_positives"]
        assert grid[(t, 4.0)]["detected"] <= grid[(t, 0.0)]["detected"]
    choice = tuned["postprocess"]
    assert (choice["threshold"], choice["min_lesion_mm"]) in grid
    assert tuned["choice"] == grid[(choice["threshold"], choice["min_lesion_mm"])]
    with open(out / "tune.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and sum(int(r["chosen"]) for r in rows) == 1
    printed = capsys.readouterr().out
    assert "FP/scan" in printed and "chosen: threshold" in printed
    # The weights are not modified.
    assert "postprocess" not in read_metadata(result.best)
