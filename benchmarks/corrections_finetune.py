"""Fine-tuning on corrections (issue 28): weights that miss bright lesions, corrections of one
scan's slices, held-out Dice before and after; prints a table and writes it as JSON.

    nice -n 19 .venv/bin/python benchmarks/corrections_finetune.py --work /tmp/corrections-bench
        [--base-steps 600] [--finetune-steps 150] [--corrected 15] [--threads 1]
        [--replay-share 0.25]

1. A tiny CDI-NSTSEG (base width 8, plain 2-D slices at 1.5 mm) is trained with `nstseg train`
   on synthetic CT phantoms (soft tissue, fat, an organ, CT noise) holding only dark lesions
   (-40 to -60 HU against the organ): weights that miss a kind of lesion, bright ones.
2. The "user's scan" is a phantom with bright lesions (+40 to +60 HU) at seven depths. Its
   ground truth on ``--corrected`` slices through the first lesions stands in for the
   radiologist's corrections and goes into a corrections store (``save_corrections``).
3. ``fine_tune`` fine-tunes a copy of the weights on the store, replaying the dark training set
   (a quarter of every batch; ``--replay-share 0``: none), holding out slice groups far apart
   (one scan), and measures Dice on them before and after. The same weights are also scored on
   a second, unseen bright phantom and on an unseen dark one (is anything forgotten?).

Everything is made by this script from seeds; only the timings depend on the machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SPACING = (3.0, 1.5, 1.5)
SHAPE = (48, 96, 96)
# Lesion depths (slices) of the user's scan: far enough apart (>= 15 mm) to be slice groups.
DEPTHS = (5, 11, 17, 23, 29, 35, 41)


def phantom(seed: int, contrast: str, depths=DEPTHS) -> tuple[np.ndarray, np.ndarray]:
    """(HU, lesion mask) of an abdomen-like phantom: air, fat rim, soft tissue, an organ of
    60 HU, CT noise of 12 HU, and one spherical lesion (radius 4-7 mm, soft edge) at each depth
    inside the organ, dark (-40 to -60 HU) or bright (+40 to +60 HU) against it."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(SHAPE, SPACING, strict=True)),
                          indexing="ij")  # fmt: skip
    cy, cx = SHAPE[1] * SPACING[1] / 2, SHAPE[2] * SPACING[2] / 2
    hu = np.full(SHAPE, -1000.0, np.float32)
    body = ((y - cy) / 62) ** 2 + ((x - cx) / 68) ** 2 < 1
    hu[body] = -100.0  # fat
    hu[((y - cy) / 56) ** 2 + ((x - cx) / 62) ** 2 < 1] = 40.0  # muscle and soft tissue
    oy, ox = cy + rng.uniform(-6, 6), cx + rng.uniform(-20, -8)
    organ = ((y - oy) / 34) ** 2 + ((x - ox) / 38) ** 2 < 1
    hu[organ] = 60.0
    mask = np.zeros(SHAPE, np.uint8)
    sign = 1.0 if contrast == "bright" else -1.0
    for d in depths:
        r = rng.uniform(4.0, 7.0)
        ang, rad = rng.uniform(0, 2 * np.pi), rng.uniform(0, 18)
        c = (d * SPACING[0], oy + rad * np.sin(ang), ox + rad * np.cos(ang))
        dist = np.sqrt((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2)
        profile = np.clip((r + 1.0 - dist) / 2.0, 0, 1)  # a 2 mm partial-volume edge
        hu += (sign * rng.uniform(40, 60) * profile * organ).astype(np.float32)
        mask[(dist <= r) & organ] = 1
    hu += rng.normal(0, 12, SHAPE).astype(np.float32)
    return np.round(hu).astype(np.float32), mask


def geometry():
    from napari_nstseg.io.volume import Geometry

    return Geometry.from_spacing(SHAPE, SPACING)


def write_case(folder: Path, hu: np.ndarray, mask: np.ndarray) -> None:
    from napari_nstseg.io.writers import write_mask

    folder.mkdir(parents=True, exist_ok=True)
    write_mask(folder / "ct.nii.gz", hu.astype(np.int16), geometry())
    write_mask(folder / "tumour.nii.gz", mask, geometry())


def train_base(work: Path, steps: int, threads: int, seed: int = 0) -> Path:
    """The tiny weights trained on dark lesions only (`nstseg train`, one epoch of ``steps``)."""
    data = work / "dark"
    for k in range(4):
        rng = np.random.default_rng(50 + k)
        depths = tuple(int(d) for d in rng.choice(np.arange(4, 44), 5, replace=False))
        write_case(data / f"dark{k}", *phantom(10 + k, "dark", depths))
    out = work / "base"
    best = out / "final.json"
    if best.is_file():  # made by an earlier run in this folder: kept if it had this budget
        made = json.loads(best.read_text())["provenance"]["budget"]["steps_per_epoch"]
        if made != steps:
            raise SystemExit(
                f"{out} holds base weights of {made} steps, not {steps}: use a new --work"
            )
        return best
    command = [sys.executable, "-m", "napari_nstseg.cli", "train", "--data", str(data),
               "--out", str(out), "--base-width", "8", "--set", "fused_channels=8",
               "--working-spacing-mm", "1.5", "--crop-size", "64", "--epochs", "1",
               "--steps-per-epoch", str(steps), "--batch-size", "8", "--lr", "3e-3",
               "--positive-fraction", "0.6", "--dice-weight", "1", "--region-loss", "batch",
               "--seed", str(seed), "--device", "cpu", "--no-progress"]  # fmt: skip
    # One thread per process: on this shared 2-core CPU two OpenMP threads, waiting on each other,
    # were 10 to 150 times slower per step than one.
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(command, check=True, env=env)
    return best


def dice_on(weights: Path, hu: np.ndarray, mask: np.ndarray) -> float:
    """Pixel Dice of the whole scan, through the engine as the plugin runs it (no size filter)."""
    from napari_nstseg.inference import Segmenter

    segmenter = Segmenter.from_checkpoint(weights, device="cpu")
    pred = segmenter.predict(hu, SPACING).mask_at(0.5) > 0
    truth = mask > 0
    tp = int((pred & truth).sum())
    return 2 * tp / max(1, int(pred.sum()) + int(truth.sum()))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--base-steps", type=int, default=600)
    parser.add_argument("--finetune-steps", type=int, default=150)
    parser.add_argument("--corrected", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--replay-share", type=float, default=0.25,
                        help="share of each batch from the dark set (0: none)")  # fmt: skip
    args = parser.parse_args(argv)
    import torch

    from napari_nstseg.corrections.finetune import FineTuneConfig, fine_tune
    from napari_nstseg.corrections.store import save_corrections

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    base = train_base(args.work, args.base_steps, args.threads)
    # The training's own clock (its log), also when the weights come from an earlier run here.
    with open(base.parent / "log.csv") as f:
        base_minutes = float(list(csv.DictReader(f))[-1]["elapsed_s"]) / 60

    hu, mask = phantom(100, "bright")
    lesion_slices = [int(z) for z in np.flatnonzero(mask.any(axis=(1, 2)))]
    corrected = lesion_slices[: args.corrected]
    store = args.work / f"store-{time.strftime('%H%M%S')}"
    save_corrections(store, hu, mask, geometry(), corrected, weights=base, name="bright-scan")

    unseen_bright, unseen_dark = phantom(200, "bright"), phantom(300, "dark")
    before = {
        "unseen bright": dice_on(base, *unseen_bright),
        "unseen dark": dice_on(base, *unseen_dark),
    }
    config = FineTuneConfig(steps=args.finetune_steps, batch_size=8, crop_size=64, lr=1e-3,
                            replay_share=args.replay_share, replay_data=str(args.work / "dark"),
                            device="cpu")  # fmt: skip
    result = fine_tune(store, base, config=config)
    after = {"unseen bright": dice_on(result.weights, *unseen_bright),
             "unseen dark": dice_on(result.weights, *unseen_dark)}  # fmt: skip
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads "
        f"(os.cpu_count() = {os.cpu_count()}), torch {torch.__version__}",
        "base_training": {"steps": args.base_steps, "minutes": round(base_minutes, 2)},
        "corrected_slices": corrected,
        "holdout": result.holdout,
        "replay": result.replay,
        "finetune_steps": args.finetune_steps,
        "replay_share": args.replay_share,
        "finetune_minutes": round(result.seconds / 60, 2),
        "dice_held_out": [result.dice_before, result.dice_after],
        **{f"dice_{k.replace(' ', '_')}": [before[k], after[k]] for k in before},
        "weights": str(result.weights),
    }
    print(f"machine: {report['machine']}")
    print(f"base weights: {args.base_steps} steps on dark lesions, {base_minutes:.1f} min")
    print(f"corrections: {len(corrected)} slices of one bright-lesion scan; {result.holdout}")
    minutes = result.seconds / 60
    print(f"fine-tuning: {args.finetune_steps} steps, {minutes:.1f} min (both Dice passes too)")
    print("| Dice | before | after |\n|---|---:|---:|")
    held = f"{result.dice_before:.3f} | {result.dice_after:.3f}"
    print(f"| held-out corrected slices (bright) | {held} |")
    for k in before:
        print(f"| {k} phantom, whole scan | {before[k]:.3f} | {after[k]:.3f} |")
    (args.work / "corrections_finetune.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
