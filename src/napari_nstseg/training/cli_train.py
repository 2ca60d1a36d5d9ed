"""`nstseg train`, `pretrain-mae`, `evaluate`, `tune-postprocess` and `residual-auroc`: the
command-line face of segmentation.py, mae_pretrain.py, evaluate.py, tune.py and
residual_auroc.py. With --resume, settings not given on the command line come from the run's
folder."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from napari_nstseg.models.variants import changed_fields, variant_config, variant_names
from napari_nstseg.training.cli_lesion_sources import (
    add_lesion_source_args,
    apply_lesion_source_args,
)
from napari_nstseg.training.cli_organ_crops import add_organ_crop_args, apply_organ_crop_args
from napari_nstseg.training.run_log import CONFIG_NAME


def _saved_config(out: str, kind: str) -> dict[str, Any] | None:
    path = Path(out) / CONFIG_NAME
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    if saved.pop("kind", kind) != kind:
        raise ValueError(f"{path} belongs to another kind of run than {kind!r}.")
    return saved


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        help="dataset folder: MSD (split in dataset.json), images/ + masks/, or one folder per "
        "case with ct.nii.gz and tumour.nii.gz",
    )
    p.add_argument("--out", required=True, help="output folder for checkpoints and the log")
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps-per-epoch", type=int, help="default: one pass over the slices")
    p.add_argument("--batch-size", type=int, help="slices per step and process")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N (under torchrun: one GPU per rank)")
    p.add_argument("--num-workers", type=int, help="data-loader workers (default 0 on the CPU)")
    p.add_argument("--working-spacing-mm", type=float, help="in-plane pixel size the net runs at")
    p.add_argument("--window", type=float, nargs=2, metavar=("WIDTH", "LEVEL"), help="HU window")
    p.add_argument("--resume", action="store_true", help="continue from the last epoch in --out")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument(
        "--no-amp", action="store_true", help="float32 throughout (no bf16 autocast on CUDA or CPU)"
    )
    precision.add_argument(
        "--amp",
        action="store_true",
        help="bf16 autocast on a CPU with native bf16 too (train's default there: float32; "
        "which is faster depends on the CPU, see benchmarks/train_speed.py; on GPUs autocast "
        "is the default)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_parser(subparsers) -> None:
    """Register `train`, `pretrain-mae` and `evaluate` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "train",
        help="train CDI-NSTSEG, an ablation or the U-Net baseline (torchrun-ready)",
        description=(
            "Train a segmentation model on 2-D axial slices with deep supervision and poly "
            "learning-rate decay. Every epoch is checkpointed (resume with --resume); the best "
            "pooled validation Dice is kept as <out>/best.json, the last epoch as final.json. "
            "Under `torchrun --nproc_per_node N` it runs DistributedDataParallel."
        ),
    )
    _common(p)
    p.add_argument(
        "--split-file",
        metavar="JSON",
        help='fixed split by case: {"train": [ids], "val": [ids], "test": [ids]}; cases not '
        "listed are left out",
    )
    p.add_argument(
        "--variant",
        choices=variant_names(),
        help="model variant (`nstseg variants` lists them; default: default)",
    )
    p.add_argument("--base-width", type=int, help="encoder width b (64 in the paper)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a ModelConfig field, e.g. --set fused_channels=32 --set scales=[1.0]",
    )
    p.add_argument("--optimizer", choices=("adamw", "sgd"))
    p.add_argument("--crop-size", type=int, help="square training crop in working pixels")
    p.add_argument("--positive-fraction", type=float, help="share of crops with lesion")
    p.add_argument(
        "--positive-jitter",
        type=float,
        help="how far off centre a positive crop puts its lesion pixel, as a share of the crop "
        "side (0.25: central half, the default; 0.5: up to the edge)",
    )
    p.add_argument(
        "--z-edge-fraction",
        type=float,
        metavar="F",
        help="share of crops drawn at a lesion's ends along z: its first and last slices (with "
        "lesion) and the slices just beyond them (without), centred where it lies (default 0)",
    )
    p.add_argument(
        "--z-edge-slices",
        type=int,
        metavar="N",
        help="how many slices on each side of a lesion's end count as its edge (default 2)",
    )
    p.add_argument("--dice-weight", type=float, help="extra soft-Dice term on the final map")
    p.add_argument(
        "--noise-hu", type=float, help="sigma (HU) of the Gaussian noise added to training crops"
    )
    p.add_argument(
        "--hard-pixel-fraction",
        type=float,
        metavar="F",
        help="BCE over the hardest share F of each crop's pixels (online hard example mining; "
        "default 1: all pixels, as the paper)",
    )
    p.add_argument(
        "--region-loss",
        choices=("image", "batch"),
        help="IoU and Dice terms per image (the paper; a crop without lesion adds a constant) "
        "or over the batch, so false positives on lesion-free crops cost",
    )
    p.add_argument(
        "--context-mm",
        type=float,
        metavar="MM",
        help="2.5-D input: also show the network the planes MM above and below each slice "
        "(3 input channels; 0 = plain 2-D slices, the default)",
    )
    add_lesion_source_args(p)
    add_organ_crop_args(p)
    p.add_argument("--val-max-slices", type=int, help="cap on validation slices per epoch")
    p.add_argument("--mae", help="pretrained MAE checkpoint (SSL guidance, residual maps)")
    p.add_argument(
        "--init",
        metavar="WEIGHTS",
        help="start from these weights instead of random ones ('bundled': the plugin's default; "
        "or a bundled name such as 'sarcoma'), "
        "with their architecture and preprocessing: fine-tune on your data, or continue a run",
    )
    p.add_argument(
        "--allow-small-batch", action="store_true", help="allow batches below 4 (tests only)"
    )
    p.set_defaults(func=_train)

    p = subparsers.add_parser(
        "pretrain-mae",
        help="pretrain the masked autoencoder for SSL residual maps on unlabeled CT",
        description=(
            "Masked-autoencoder pretraining on axial slices of any folder of CT volumes (or an "
            "MSD folder's training images); the checkpoint gives the plugin's residual maps."
        ),
    )
    _common(p)
    p.add_argument("--crop-size", type=int, help="square crops in working pixels")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an MAEConfig field, e.g. --set embed_dim=192 --set depth=6",
    )
    p.set_defaults(func=_pretrain)

    p = subparsers.add_parser(
        "evaluate",
        help="score a checkpoint on a dataset split (pixel, size-group and lesion metrics)",
        description=(
            "Run a checkpoint through the inference engine on every scan of a split and report "
            "Dice, IoU, precision, recall, specificity, accuracy, F1, F2, MAE, S- and E-measure "
            "per lesion-size group, and lesion detection sensitivity and false positives per "
            "scan (per size and contrast when the folder has lesions.csv)."
        ),
    )
    _checkpoint_on_split_args(p, split="test", out="eval")
    _operating_point_args(p)
    p.add_argument(
        "--operating-point",
        metavar="TUNE_JSON",
        help="take the threshold, minimum lesion size and depth from a tune-postprocess "
        "tune.json (its chosen point; --threshold etc. given here win)",
    )
    p.add_argument("--no-structure", action="store_true", help="skip S- and E-measure (faster)")
    p.set_defaults(func=_evaluate)

    p = subparsers.add_parser(
        "tune-postprocess",
        help="choose the threshold and minimum lesion size and depth on validation data",
        description=(
            "Predict every scan of a split once, then sweep probability thresholds x minimum "
            "lesion sizes (longest axial diameter) x minimum depths (extent along z) and "
            "report lesion sensitivity (all lesions, and lesions >= 10 mm and >= 20 HU from "
            "lesions.csv) and false positives per scan at each point. Chooses the most "
            "sensitive point within --max-fp-per-scan and writes tune.csv and tune.json; the "
            "weights are not changed (package the choice "
            "with python -m napari_nstseg.recipes.bundle_weights --postprocess tune.json)."
        ),
    )
    _checkpoint_on_split_args(p, split="val", out="tune")
    p.add_argument(
        "--max-fp-per-scan", type=float, default=2.0, help="false-positive budget per scan (2)"
    )
    p.add_argument(
        "--objective",
        choices=("sensitivity", "dice"),
        default="sensitivity",
        help="what the chosen point maximises within the budget: lesion sensitivity (many "
        "lesions per scan) or mean per-patient Dice (one delineated tumour per patient)",
    )
    p.add_argument(
        "--thresholds", type=float, nargs="+", metavar="T", help="default 0.30, 0.35 ... 0.95"
    )
    p.add_argument(
        "--min-lesion-mm", type=float, nargs="+", metavar="MM", help="default 0 3 5 7 10"
    )
    p.add_argument("--min-depth-mm", type=float, nargs="+", metavar="MM", help="default 0 4 7 10")
    p.set_defaults(func=_tune)
    _add_residual_auroc(subparsers)


def _add_residual_auroc(subparsers) -> None:
    p = subparsers.add_parser(
        "residual-auroc",
        help="how well an MAE's SSL residual map singles out tumour (AUROC against the tissue "
        "around it)",
        description=(
            "For every tumour slice of a split: the masked autoencoder's residual map as the "
            "plugin shows it, then the AUROC of tumour pixels against soft tissue (HU -100..200) "
            "within --ring-mm of the tumour, per scan and pooled; writes residual_auroc.json."
        ),
    )
    p.add_argument("mae", help="masked-autoencoder checkpoint (or a bundled one: its .json)")
    p.add_argument("--data", required=True, help="dataset folder with tumour labels")
    p.add_argument("--split", default="val", choices=("train", "val", "test"))
    p.add_argument("--split-file", metavar="JSON", help="fixed split by case")
    p.add_argument("--ring-mm", type=float, default=20.0, help="surroundings: within MM (20)")
    p.add_argument(
        "--shifts", type=int, default=2, help="patch grids averaged per slice (2; 1: one grid)"
    )
    p.add_argument("--out", help="folder for residual_auroc.json")
    p.set_defaults(func=_residual_auroc)


def _residual_auroc(args: argparse.Namespace) -> int:
    from napari_nstseg.training.residual_auroc import ResidualAurocConfig, measure

    cfg = ResidualAurocConfig(ring_mm=args.ring_mm, shifts=args.shifts)
    _check_results(args.out, ("residual_auroc.json",), args, **{"the MAE": args.mae})
    measure(args.mae, args.data, args.split, args.split_file, cfg, args.out)
    return 0


def _checkpoint_on_split_args(p: argparse.ArgumentParser, split: str, out: str) -> None:
    """What `evaluate` and `tune-postprocess` share: a checkpoint, a dataset split, the engine's
    device and batch, the detection rule and the results folder."""
    p.add_argument(
        "weights_pos", nargs="?", metavar="WEIGHTS", help="the checkpoint (or use --weights)"
    )
    p.add_argument("--weights", metavar="W", help="segmentation checkpoint (.json or .safetensors)")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--split", default=split, choices=("train", "val", "test"))
    p.add_argument(
        "--split-file", metavar="JSON", help="fixed split by case (as for train), over the folder's"
    )
    p.add_argument("--out", help=f"results folder (default: <checkpoint folder>/{out}_<split>)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument(
        "--min-dice", type=float, default=0.1, help="Dice a detected lesion must reach (0.1)"
    )
    p.add_argument(
        "--mirror",
        action="store_true",
        help="average each slice's maps with its left-right mirror image's (twice the time)",
    )
    from napari_nstseg.training.organ_eval import add_organ_eval_args

    add_organ_eval_args(p)  # organ mode (--organ-masks, --organs, --organ-margin-mm)


def _weights(args: argparse.Namespace, what: str) -> str:
    weights = args.weights or args.weights_pos
    if not weights:
        raise ValueError(f"name the checkpoint to {what} with --weights W")
    return weights


def _operating_point_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threshold",
        type=float,
        help="probability from which a voxel is tumor (default: the weights' recommendation, "
        "else 0.5)",
    )
    p.add_argument(
        "--min-lesion-mm",
        type=float,
        metavar="MM",
        help="drop lesions whose longest axial diameter is below MM (default: the weights' "
        "recommendation, else 0)",
    )
    p.add_argument(
        "--min-depth-mm",
        type=float,
        metavar="MM",
        help="drop lesions spanning less than MM along z (default: the weights' "
        "recommendation, else 0)",
    )


def _apply_common(d: dict[str, Any], args: argparse.Namespace) -> None:
    for key in (
        "data",
        "out",
        "epochs",
        "steps_per_epoch",
        "batch_size",
        "lr",
        "weight_decay",
        "seed",
        "device",
        "num_workers",
    ):
        value = getattr(args, key, None)
        if value is not None:
            d[key] = value
    if args.data is not None:
        d["data"] = str(Path(args.data).resolve())
    if getattr(args, "split_file", None) is not None:
        d["split_file"] = str(Path(args.split_file).resolve())
    d["resume"] = bool(args.resume)
    if args.no_amp:
        d["amp"] = False
    elif args.amp:
        d["amp"] = True
    if args.no_progress:
        d["progress"] = False
    pre = dict(d.get("preprocess") or {})
    if args.working_spacing_mm is not None:
        pre["working_spacing_mm"] = args.working_spacing_mm
    if args.window is not None:
        pre["hu_window"] = list(args.window)
    d["preprocess"] = pre


def build_train_config(args: argparse.Namespace):
    """TrainConfig from parsed `train` arguments (on --resume: the saved run's, then the args)."""
    from napari_nstseg.models import ModelConfig
    from napari_nstseg.training.config import TrainConfig, parse_overrides

    saved = _saved_config(args.out, "segmentation") if args.resume else None
    d: dict[str, Any] = saved or TrainConfig().to_dict()
    init = _init_weights(args.init) if getattr(args, "init", None) else None
    if init is not None and saved is None:
        # The starting weights fix the architecture and the input they expect.
        d["init_weights"], meta = init
        d["model"], d["preprocess"] = meta["model_config"], meta["preprocessing"]
        d["variant"] = (meta.get("provenance") or {}).get("variant") or d["variant"]
    _apply_common(d, args)
    overrides = parse_overrides(args.set)
    if args.base_width is not None:
        overrides["base_width"] = args.base_width
    if args.context_mm is not None:
        if args.context_mm < 0:
            raise ValueError(f"--context-mm is a distance in mm >= 0, got {args.context_mm}")
        offsets = [0.0] if args.context_mm == 0 else [-args.context_mm, 0.0, args.context_mm]
        d["preprocess"] = {**d["preprocess"], "slice_offsets_mm": offsets}
        overrides["in_channels"] = len(offsets)
    if saved is None or args.variant is not None or overrides:
        base = ModelConfig.from_dict(d["model"]) if saved or init else ModelConfig()
        if args.variant is not None:
            d["variant"] = args.variant
            base = replace(base, **{k: getattr(ModelConfig(), k) for k in changed_fields()})
        d["model"] = variant_config(d.get("variant", "default"), base, overrides).to_dict()
    sampling = dict(d.get("sampling") or {})
    if args.crop_size is not None:
        sampling["crop_size"] = [args.crop_size, args.crop_size]
    if args.positive_fraction is not None:
        sampling["positive_fraction"] = args.positive_fraction
    if args.positive_jitter is not None:
        sampling["positive_jitter"] = args.positive_jitter
    if args.z_edge_fraction is not None:
        sampling["z_edge_fraction"] = args.z_edge_fraction
    if args.z_edge_slices is not None:
        sampling["z_edge_slices"] = args.z_edge_slices
    apply_lesion_source_args(d, sampling, args)
    if args.noise_hu is not None:
        sampling["augment"] = {**(sampling.get("augment") or {}), "noise_std_hu": args.noise_hu}
    d["sampling"] = sampling
    apply_organ_crop_args(d, args)
    if args.dice_weight is not None:
        d["loss"] = {**(d.get("loss") or {}), "dice_weight": args.dice_weight}
    if args.hard_pixel_fraction is not None:
        d["loss"] = {**(d.get("loss") or {}), "hard_pixel_fraction": args.hard_pixel_fraction}
    if args.region_loss is not None:
        d["loss"] = {**(d.get("loss") or {}), "region": args.region_loss}
    if args.val_max_slices is not None:
        d["val_max_slices"] = args.val_max_slices
    if args.optimizer is not None:
        d["optimizer"] = args.optimizer
    if args.mae is not None:
        d["mae_weights"] = str(Path(args.mae).resolve())
    if args.allow_small_batch:
        d["allow_small_batch"] = True
    return TrainConfig.from_dict(d)


def _init_weights(name: str) -> tuple[str, dict[str, Any]]:
    """(path, metadata) of the --init checkpoint; 'bundled' names the plugin's default, another
    bundled name (e.g. 'sarcoma') those weights."""
    from napari_nstseg.bundled import resolve_weights
    from napari_nstseg.models.checkpoint import read_metadata

    path = resolve_weights(None if name == "bundled" else name)
    return str(Path(path).resolve()), read_metadata(path)


def build_mae_config(args: argparse.Namespace):
    """MAEPretrainConfig from parsed `pretrain-mae` arguments."""
    from napari_nstseg.training.config import MAEPretrainConfig, parse_overrides

    saved = _saved_config(args.out, "mae") if args.resume else None
    d: dict[str, Any] = saved or MAEPretrainConfig().to_dict()
    _apply_common(d, args)
    if args.crop_size is not None:
        d["crop_size"] = args.crop_size
    overrides = parse_overrides(args.set)
    if overrides:
        d["mae"] = {**d["mae"], **overrides}
    return MAEPretrainConfig.from_dict(d)


# What each command writes into its results folder (checked against its inputs before work).
_RUN_FILES = ("best.json", "best.safetensors", "final.json", "final.safetensors", "log.csv")
_EVAL_FILES = ("evaluation.json", "evaluation.csv", "cases.csv", "lesions.csv")
_TUNE_FILES = ("tune.json", "tune.csv")


def _check_results(out, writes, args, **inputs) -> None:
    """A command's results folder never lies inside its data set and never writes over one of
    its inputs (see io.outputs.check_results_folder); None: the command writes no folder."""
    from napari_nstseg.io.outputs import check_results_folder

    if out is not None:
        named = {"the data set": getattr(args, "data", None), **inputs}
        check_results_folder(out, writes, {k: v for k, v in named.items() if v})


def _train(args: argparse.Namespace) -> int:
    from napari_nstseg.training.segmentation import train

    _check_results(args.out, _RUN_FILES, args, **{
        "the starting weights": args.init if args.init and args.init != "bundled" else None,
        "the masked autoencoder": args.mae,
        "the split file": args.split_file,
    })  # fmt: skip
    best = train(build_train_config(args))
    print(f"best checkpoint: {best}")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from napari_nstseg.training.mae_pretrain import pretrain_mae

    _check_results(args.out, _RUN_FILES, args)
    best = pretrain_mae(build_mae_config(args))
    print(f"best MAE checkpoint: {best}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from napari_nstseg.training.evaluate import EvalConfig, evaluate, results_folder
    from napari_nstseg.training.organ_eval import FROM_WEIGHTS, organ_eval_from_args
    from napari_nstseg.training.tune import tuned_organ_search

    point = _tuned_point(args.operating_point)
    for key in ("threshold", "min_lesion_mm", "min_depth_mm"):
        if getattr(args, key) is not None:  # given on the command line: it wins
            point[key] = getattr(args, key)
    organs = organ_eval_from_args(args)
    if organs is not None and organs.centre_mm == FROM_WEIGHTS:
        # The tuned centre rule goes with the tuned point (--organ-centre-mm wins).
        tuned = tuned_organ_search(args.operating_point) if args.operating_point else {}
        if "centre_mm" in tuned:
            organs = replace(organs, centre_mm=tuned["centre_mm"])
    cfg = EvalConfig(
        device=args.device,
        batch_size=args.batch_size,
        threshold=point.get("threshold"),
        min_lesion_mm=point.get("min_lesion_mm"),
        min_depth_mm=point.get("min_depth_mm"),
        structure=not args.no_structure,
        min_dice=args.min_dice,
        mirror=args.mirror,
        split_file=args.split_file,
        organs=organs,
    )
    weights = _weights(args, "evaluate")
    out = results_folder(weights, args.out, "eval", args.split)
    _check_results(out, _EVAL_FILES, args, **{"the weights": weights})
    result = evaluate(weights, args.data, args.split, args.out, cfg)
    print(f"wrote {result['files']['evaluation.json']} and evaluation.csv")
    return 0


def _tuned_point(path: str | None) -> dict[str, float]:
    """The operating point a tune.json chose ({} without one); one line when it has none."""
    if path is None:
        return {}
    try:
        point = json.loads(Path(path).read_text())["postprocess"]
        return {k: float(point[k]) for k in ("threshold", "min_lesion_mm", "min_depth_mm")}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"--operating-point {path}: not a tune.json of tune-postprocess ({exc})"
        ) from None


def _tune(args: argparse.Namespace) -> int:
    from napari_nstseg.training.evaluate import results_folder
    from napari_nstseg.training.organ_eval import FROM_WEIGHTS, organ_eval_from_args
    from napari_nstseg.training.tune import TuneConfig, tune_postprocess

    grid = {}
    if args.thresholds:
        grid["thresholds"] = tuple(args.thresholds)
    if args.min_lesion_mm:
        grid["min_lesion_mm"] = tuple(args.min_lesion_mm)
    if args.min_depth_mm:
        grid["min_depth_mm"] = tuple(args.min_depth_mm)
    organs = organ_eval_from_args(args)
    if organs is not None and organs.centre_mm != FROM_WEIGHTS:
        grid["centre_mm"] = (organs.centre_mm,)  # --organ-centre-mm: that rule, not a sweep
    cfg = TuneConfig(
        max_fp_per_scan=args.max_fp_per_scan,
        min_dice=args.min_dice,
        device=args.device,
        batch_size=args.batch_size,
        mirror=args.mirror,
        split_file=args.split_file,
        objective=args.objective,
        organs=organs,
        **grid,
    )
    weights = _weights(args, "tune")
    out = results_folder(weights, args.out, "tune", args.split)
    _check_results(out, _TUNE_FILES, args, **{"the weights": weights})
    result = tune_postprocess(weights, args.data, args.split, args.out, cfg)
    print(f"wrote {result['files']['tune.json']} and tune.csv")
    return 0
