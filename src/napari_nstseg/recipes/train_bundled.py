#!/usr/bin/env python
"""Reproduce the bundled weights and the ablation table, end to end, with one budget for all.

Steps (each printed as the exact `nstseg` command it runs):
  1. make-lesions, twice with one seed (so both folders share the same split into source
     regions): the evaluation set `lesions` with the issue's 3-30 mm lesions, and the training
     set `train` whose lesions start at --train-diameter-mm (the smallest lesions of a 3 mm scan
     are a voxel or two: as training targets they are mostly label noise). Only the training
     split of `train` is trained on; val and test come from `lesions`;
  2. pretrain-mae: the masked autoencoder for the SSL residual maps, on the training split;
  3. train: CDI-NSTSEG (default) and the ablations no-sfm, no-glm, no-lfm, single-scale and the
     U-Net baseline, all with the same data, budget and seed;
  4. tune-postprocess: each variant's operating point (threshold, minimum lesion size and
     depth) on validation blocks, at most --max-fp-per-scan false positives per scan. Those
     blocks are thin, so few lesions >= 10 mm fit in them: a third folder `tune` (same seed and
     split, --tune-diameter-mm lesions) adds larger ones, and `tuneval` holds the validation
     cases of `lesions` and `tune` together;
  5. evaluate: each final checkpoint at its operating point on the held-out test split;
  6. results.md: the comparison table.

Every step resumes: run the same command again after an interruption and finished work is kept
(training continues from its last epoch checkpoint). A second phase continues trained models with
a new schedule and loss (each variant from its own phase-1 weights, on phase 1's data folders
and validation cases, the same for every variant): --phase1 W1. The recipe of the bundled
`default` weights, configs/default/recipe.json, runs both phases (`nstseg reproduce`).
Small smoke run:
  python -m napari_nstseg.recipes.train_bundled --work /tmp/nstseg-small --copies 1 --epochs 1 \
      --steps-per-epoch 2 --mae-epochs 1 --mae-steps 2 --base-width 8 --crop-size 64
Under torchrun (GPUs): add --nproc N.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from napari_nstseg.models.variants import list_variants, variant_names
from napari_nstseg.training.lesions import LesionConfig

# Share of dark lesions the evaluation and tuning sets keep (make-lesions' default).
USUAL_HYPODENSE = LesionConfig().hypodense_fraction
# The source scans beside the repository checkout (src/napari_nstseg/recipes/ is 3 levels in).
DATA = Path(__file__).resolve().parents[4] / "shared" / "data" / "totalsegmentator"
# example_ct_sm repeats slices of example_ct, so only the two distinct scans are used; its organ
# labels (example_seg) are padded onto example_ct's grid, where they are slices 82-111.
SCANS = ("example_ct.nii.gz", "ct_cropped.nii.gz")
ORGANS_OFFSET = 82
VARIANTS = tuple(variant_names())
# The comparison table's rows: the paper's ablations and the U-Net baseline (SSL guidance is this
# project's addition and is trained only when named).
TABLE_VARIANTS = [v.name for v in list_variants() if not v.changes.get("ssl_guidance")]


def pad_organ_labels(data: Path, out: Path) -> Path:
    """example_seg.nii.gz (on example_ct_sm's 30 slices) placed into example_ct's grid."""
    import nibabel as nib
    import numpy as np

    ct = nib.load(data / "example_ct.nii.gz")
    seg = np.asarray(nib.load(data / "example_seg.nii.gz").dataobj).astype(np.uint8)
    labels = np.zeros(ct.shape, np.uint8)
    labels[:, :, ORGANS_OFFSET : ORGANS_OFFSET + seg.shape[2]] = seg
    img = nib.Nifti1Image(labels, ct.affine, ct.header)
    img.set_data_dtype(np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, out)
    return out


def merge_validation(out: Path, folders: dict[str, Path]) -> Path:
    """One MSD folder (links, no copies) of the validation cases of ``folders``, each case
    named with its folder's tag in front, and their lesions.csv rows; kept if it exists."""
    import csv

    if (out / "dataset.json").is_file():
        return out
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(exist_ok=True)
    cases, rows, fields = [], [], None
    for tag, src in folders.items():
        for case in json.loads((src / "dataset.json").read_text())["split"]["val"]:
            name = f"{tag}-{case}"
            (out / "imagesTr" / f"{name}_0000.nii.gz").symlink_to(
                (src / "imagesTr" / f"{case}_0000.nii.gz").resolve()
            )
            (out / "labelsTr" / f"{name}.nii.gz").symlink_to(
                (src / "labelsTr" / f"{case}.nii.gz").resolve()
            )
            cases.append(name)
        with open(src / "lesions.csv", newline="") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames
            rows += [{**r, "case": f"{tag}-{r['case']}"} for r in reader if r["split"] == "val"]
    with open(out / "lesions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    dataset = {
        "name": "validation blocks of " + " and ".join(p.name for p in folders.values()),
        "labels": {"0": "background", "1": "lesion"},
        "training": [
            {"image": f"./imagesTr/{c}_0000.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
            for c in cases
        ],
        "split": {"val": cases},
    }
    (out / "dataset.json").write_text(json.dumps(dataset, indent=1))
    return out


def check_hypodense_fraction(folder: Path, wanted: float) -> None:
    """Refuse an existing lesion folder made with another share of dark lesions than this run
    asks for: a resumed run reuses its folders, a changed recipe needs another --work."""
    meta = json.loads((folder / "dataset.json").read_text())
    # Folders from before dataset.json recorded its lesion settings used the usual share.
    made = (meta.get("lesion_config") or {}).get("hypodense_fraction", USUAL_HYPODENSE)
    if abs(float(made) - wanted) > 1e-9:
        raise SystemExit(
            f"{folder} was made with hypodense fraction {made}, not the {wanted} this run "
            "asks for (--train-hypodense-fraction, for the training folder): use another --work"
        )


def run(cmd: list[str], dry: bool) -> None:
    print("+ " + shlex.join(cmd), flush=True)
    if not dry:
        subprocess.run(cmd, check=True)


def nstseg(args: argparse.Namespace, *rest: str, distributed: bool = False) -> list[str]:
    if distributed and args.nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.nproc}",
                "-m", "napari_nstseg.cli", *rest]  # fmt: skip
    return [sys.executable, "-m", "napari_nstseg.cli", *rest]


def budget(args: argparse.Namespace) -> list[str]:
    """The one budget every variant gets."""
    out = ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
           "--base-width", str(args.base_width), "--crop-size", str(args.crop_size),
           "--working-spacing-mm", str(args.working_spacing_mm), "--seed", str(args.seed),
           "--lr", str(args.lr), "--device", args.device,
           "--dice-weight", str(args.dice_weight),
           "--positive-fraction", str(args.positive_fraction),
           "--noise-hu", str(args.noise_hu), "--context-mm", str(args.context_mm),
           "--hard-pixel-fraction", str(args.hard_pixel_fraction),
           "--region-loss", args.region_loss]  # fmt: skip
    if args.amp:
        out.append("--amp")
    if args.online_lesions:
        out.append("--online-lesions")
    if args.steps_per_epoch:
        out += ["--steps-per-epoch", str(args.steps_per_epoch)]
    if args.val_max_slices:
        out += ["--val-max-slices", str(args.val_max_slices)]
    for item in args.set:
        out += ["--set", item]
    return out


def operating_point(tune_json: Path, dry: bool) -> list[str]:
    """--threshold/--min-lesion-mm/--min-depth-mm arguments for the point tune-postprocess
    chose."""
    if dry:
        return ["--threshold", "T", "--min-lesion-mm", "MM", "--min-depth-mm", "D"]
    chosen = json.loads(tune_json.read_text())["postprocess"]
    return ["--threshold", str(chosen["threshold"]), "--min-lesion-mm",
            str(chosen["min_lesion_mm"]), "--min-depth-mm",
            str(chosen.get("min_depth_mm", 0.0))]  # fmt: skip


def comparison_table(work: Path, variants: list[str]) -> str:
    """Markdown table of the variants' held-out results."""
    cols = [
        ("Dice (slices)", lambda r: r["pixel"]["groups"]["all"]["dice"]),
        ("IoU", lambda r: r["pixel"]["groups"]["all"]["iou"]),
        ("Dice area<1%", lambda r: r["pixel"]["groups"]["area<1%"]["dice"]),
        ("Dice <10 mm", lambda r: r["pixel"]["by_diameter"]["<10 mm"]["dice"]),
        ("F2", lambda r: r["pixel"]["groups"]["all"]["f2"]),
        ("S-measure", lambda r: r["pixel"]["groups"]["all"]["s_measure"]),
        ("E-measure", lambda r: r["pixel"]["groups"]["all"]["e_measure"]),
        ("MAE", lambda r: r["pixel"]["groups"]["all"]["mae"]),
        ("Dice (scans)", lambda r: r["volume"]["dice"]),
        ("lesion sens.", lambda r: r["detection"]["sensitivity"]),
        ("sens. >=10 mm & >=20 HU",
         lambda r: r.get("lesions_by_table", {}).get(">=10 mm and >=20 HU", {}).get("sensitivity")),
        ("FP/scan", lambda r: r["detection"]["fp_per_scan"]),
    ]  # fmt: skip
    lines = ["| variant | " + " | ".join(c for c, _ in cols) + " |",
             "|---|" + "---|" * len(cols)]  # fmt: skip
    for v in variants:
        path = work / "runs" / v / "eval_test" / "evaluation.json"
        if not path.is_file():
            lines.append(f"| {v} | " + " | ".join("-" for _ in cols) + " |")
            continue
        r = json.loads(path.read_text())
        cells = []
        for _, get in cols:
            try:
                value = get(r)
            except (KeyError, TypeError):
                value = None
            ok = isinstance(value, (int, float)) and value == value
            cells.append(f"{value:.3f}" if ok else "-")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("runs/bundled"), help="working folder")
    p.add_argument("--data", type=Path, default=DATA, help="folder with the source CT scans")
    # Defaults = the budget of the bundled weights (a 2-core CPU, no GPU).
    p.add_argument("--copies", type=int, default=48, help="lesion copies per source region")
    p.add_argument("--train-diameter-mm", nargs=2, type=float, default=(5.0, 30.0),
                   help="lesion diameters of the training set (evaluation: 3-30 mm)")  # fmt: skip
    p.add_argument("--train-hypodense-fraction", type=float,
                   help="share of dark lesions in the training set (default: make-lesions' "
                   "0.8, as in the evaluation set; docs/comparison.md, 'Dark and bright "
                   "lesions', for why 0.5 is worth a run)")  # fmt: skip
    p.add_argument("--lesions-per-scan", nargs=2, type=int, default=(3, 8))
    p.add_argument("--split", nargs=3, type=float, default=(0.55, 0.15, 0.30))
    p.add_argument("--lesion-seed", type=int, default=7)
    p.add_argument("--lesion-workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="processes making lesion cases (the data do not depend on it)")  # fmt: skip
    p.add_argument("--epochs", type=int, default=55)
    p.add_argument("--steps-per-epoch", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--base-width", type=int, default=16)
    p.add_argument("--crop-size", type=int, default=96)
    p.add_argument("--working-spacing-mm", type=float, default=1.5)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--dice-weight", type=float, default=1.0)
    p.add_argument("--positive-fraction", type=float, default=0.7)
    p.add_argument("--noise-hu", type=float, default=5.0, help="added noise; the scan's own stays")
    p.add_argument(
        "--context-mm",
        type=float,
        default=0.0,
        help="2.5-D input: planes this far above and below each slice (0: 2-D)",
    )
    p.add_argument("--hard-pixel-fraction", type=float, default=1.0,
                   help="BCE over the hardest share of each crop's pixels (1: all)")  # fmt: skip
    p.add_argument("--region-loss", choices=("image", "batch"), default="image",
                   help="IoU/Dice terms per image (the paper) or over the batch")  # fmt: skip
    p.add_argument("--init", action="append", default=[], metavar="VARIANT=WEIGHTS",
                   help="start VARIANT from WEIGHTS ('bundled': the shipped model) instead of "
                   "random weights: a second training phase")  # fmt: skip
    p.add_argument("--phase1", type=Path, metavar="W1",
                   help="a second phase after the one in W1: its data folders, each variant "
                   "started from W1/runs/VARIANT/final.json (unless --init names it), operating "
                   "points on W1's validation cases (unless --tune-data)")  # fmt: skip
    p.add_argument("--mae-weights", type=Path,
                   help="an MAE checkpoint to use instead of pretraining one")  # fmt: skip
    p.add_argument("--tune-diameter-mm", nargs=2, type=float, default=(8.0, 16.0),
                   help="lesion diameters of the extra validation lesions (larger ones do not "
                   "fit the validation blocks)")  # fmt: skip
    p.add_argument("--tune-copies", type=int, default=24)
    p.add_argument("--tune-data", type=Path,
                   help="choose the operating points on this folder's validation split "
                   "instead of `tuneval`")  # fmt: skip
    p.add_argument("--max-fp-per-scan", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--val-max-slices", type=int, default=40)
    p.add_argument("--set", action="append", default=["fused_channels=32"],
                   help="ModelConfig override for all")  # fmt: skip
    p.add_argument("--mae-epochs", type=int, default=12)
    p.add_argument("--mae-steps", type=int, default=100)
    p.add_argument("--mae-batch-size", type=int, default=16)
    p.add_argument("--mae-crop-size", type=int, default=128)
    p.add_argument("--variants", nargs="+", default=TABLE_VARIANTS, choices=VARIANTS)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", action="store_true",
                   help="bf16 autocast on a CPU too (train's CPU default is float32; which is "
                   "faster depends on the CPU; the weights of 2026-12-01 were trained under "
                   "autocast)")  # fmt: skip
    p.add_argument("--online-lesions", action="store_true",
                   help="train on lesions inserted afresh at every crop into the training "
                   "blocks of `train` instead of its stored copies (measured: fewer false "
                   "positives at the same or higher sensitivity, docs/comparison.md)")  # fmt: skip
    p.add_argument("--nproc", type=int, default=1, help="processes per node under torchrun")
    p.add_argument("--train-only", action="store_true",
                   help="train only (an earlier phase): no operating point, test evaluation or "
                   "results.md")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = p.parse_args(argv)

    work = args.work.resolve()
    inits = dict(item.split("=", 1) for item in args.init)
    unknown = sorted(set(inits) - set(VARIANTS))
    if unknown:
        p.error(f"--init names unknown variant(s) {', '.join(unknown)}")
    lesions, train = work / "lesions", work / "train"
    if args.phase1 is not None:
        # phase 2 trains and evaluates on phase 1's very folders (what ablation.sh linked)
        w1 = args.phase1.resolve()
        lesions, train = w1 / "lesions", w1 / "train"
        for variant in args.variants:
            inits.setdefault(variant, str(w1 / "runs" / variant / "final.json"))
        if args.tune_data is None:
            args.tune_data = w1 / "tuneval"
    scans = [str(args.data / s) for s in SCANS]
    organs = work / "example_ct_organs.nii.gz"
    tune = work / "tune"
    # Only the splits each folder is used for (the cases are those of the full set).
    folders = [(lesions, None, args.copies, ("val", "test")),
               (train, args.train_diameter_mm, args.copies, ("train", "val"))]  # fmt: skip
    if args.tune_data is None:
        folders.append((tune, args.tune_diameter_mm, args.tune_copies, ("val",)))
    for folder, diameters, copies, splits in folders:
        asked = args.train_hypodense_fraction if folder == train else None
        if (folder / "dataset.json").is_file():
            check_hypodense_fraction(folder, USUAL_HYPODENSE if asked is None else asked)
            continue
        if not args.dry_run and not organs.is_file():
            pad_organ_labels(args.data, organs)
        extra = [] if diameters is None else ["--diameter-mm", *map(str, diameters)]
        if asked is not None:
            extra += ["--hypodense-fraction", str(asked)]
        run(nstseg(args, "make-lesions", *scans, "-o", str(folder), "--copies",
                   str(copies), "--seed", str(args.lesion_seed),
                   "--organ-labels", f"{scans[0]}={organs}",
                   "--lesions-per-scan", *map(str, args.lesions_per_scan),
                   "--split", *map(str, args.split), "--splits", *splits,
                   "--workers", str(args.lesion_workers), *extra), args.dry_run)  # fmt: skip

    mae = work / "runs" / "mae"
    mae_weights = args.mae_weights.resolve() if args.mae_weights else mae / "final.json"
    mae_cmd = nstseg(
        args, "pretrain-mae", "--data", str(train), "--out", str(mae), "--resume",
        "--epochs", str(args.mae_epochs), "--steps-per-epoch", str(args.mae_steps),
        "--batch-size", str(args.mae_batch_size), "--crop-size", str(args.mae_crop_size),
        "--working-spacing-mm", str(args.working_spacing_mm), "--seed", str(args.seed),
        "--device", args.device, "--no-progress", distributed=True,
    )  # fmt: skip
    if args.mae_weights is None:
        run(mae_cmd, args.dry_run)

    for variant in args.variants:
        out = work / "runs" / variant
        weights = str(out / "final.json")
        start = ["--init", inits[variant]] if variant in inits else ["--variant", variant]
        run(nstseg(args, "train", "--data", str(train), "--out", str(out), "--resume",
                   *start, "--mae", str(mae_weights), *budget(args),
                   "--no-progress", distributed=True), args.dry_run)  # fmt: skip
        tune_data = args.tune_data.resolve() if args.tune_data else work / "tuneval"
        if args.tune_data is None and not args.dry_run:
            merge_validation(tune_data, {"l48": lesions, "t24": tune})
        if args.train_only:
            continue
        run(nstseg(args, "tune-postprocess", weights, "--data", str(tune_data), "--split", "val",
                   "--max-fp-per-scan", str(args.max_fp_per_scan), "--out",
                   str(out / "tune_val"), "--device", args.device), args.dry_run)  # fmt: skip
        point = operating_point(out / "tune_val" / "tune.json", args.dry_run)
        run(nstseg(args, "evaluate", weights, "--data", str(lesions), "--split", "test",
                   "--out", str(out / "eval_test"), "--device", args.device,
                   *point), args.dry_run)  # fmt: skip

    if not args.dry_run and not args.train_only:
        table = comparison_table(work, list(args.variants))
        header = (
            f"# CDI-NSTSEG ablations on {lesions.name} (held-out test split)\n\n"
            f"Same data, budget and seed for every row: {args.epochs} epochs x "
            f"{args.steps_per_epoch} steps x batch {args.batch_size}, base width "
            f"{args.base_width}, {args.crop_size} px crops at {args.working_spacing_mm} mm"
            + (f" with planes +-{args.context_mm:g} mm (2.5-D), " if args.context_mm else ", ")
            + f"seed {args.seed}; each at the operating point tuned on the validation split "
            f"(<= {args.max_fp_per_scan:g} false positives per scan).\n\n"
        )
        legend = (
            "\nSlice metrics are means over test slices with lesion; 'Dice (scans)' is the mean "
            "3-D Dice per scan; a lesion is detected when the predicted components touching it "
            "reach Dice 0.1 with it; FP/scan counts predicted components touching no lesion.\n"
        )
        table += legend
        (work / "results.md").write_text(header + table)
        print(header + table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
