"""Training throughput of `nstseg train` in float32 and under bf16/fp16 autocast; prints a table.

Runs the real training loop (data sampling, augmentation, deep-supervision loss, AdamW) for a
few steps per setting, each in its own process with the thread count given, and reads the
samples per second the loop logs (training steps only: the first epoch's data caching and the
validation are not in it). Needs an MSD folder to sample from, e.g. one of `nstseg make-lesions`:

    .venv/bin/python benchmarks/train_speed.py --data lesions/ [--variant no-sfm] [--steps 30]
        [--threads 1 2] [--device cpu] [--context-mm 0] [--online-lesions]
        [--precision both|float32|autocast]

`--online-lesions` measures training on the folder's blocks with lesions inserted on the fly
(the lesion bank is made before the first epoch and is not in the figure).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from napari_nstseg.inference.device import cpu_name, device_name, precision_label, select_device


def measure(args: argparse.Namespace, threads: int, amp: bool) -> float:
    """Samples per second of the second epoch (the first one warms up)."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "napari_nstseg.cli", "train", "--data", str(args.data),
               "--out", out, "--variant", args.variant, "--epochs", "2",
               "--steps-per-epoch", str(args.steps), "--batch-size", str(args.batch_size),
               "--crop-size", str(args.crop_size), "--base-width", str(args.base_width),
               "--working-spacing-mm", str(args.working_spacing_mm),
               "--context-mm", str(args.context_mm), "--val-max-slices", "4",
               "--device", args.device, "--no-progress", "--seed", "0",
               "--set", "fused_channels=32"]  # fmt: skip
        # train's CPU default is float32: both settings are asked for explicitly
        cmd.append("--amp" if amp else "--no-amp")
        if args.online_lesions:
            cmd.append("--online-lesions")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        with open(Path(out) / "log.csv", newline="") as f:
            rows = list(csv.DictReader(f))
    return float(rows[-1]["samples_per_s"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="MSD folder with a train split")
    p.add_argument("--variant", default="default")
    p.add_argument("--steps", type=int, default=30, help="steps per measured epoch")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop-size", type=int, default=96)
    p.add_argument("--base-width", type=int, default=16)
    p.add_argument("--working-spacing-mm", type=float, default=1.5)
    p.add_argument("--context-mm", type=float, default=0.0)
    p.add_argument("--threads", type=int, nargs="+", default=[os.cpu_count() or 1])
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--online-lesions",
        action="store_true",
        help="train with lesions inserted on the fly (a make-lesions folder)",
    )
    p.add_argument("--precision", choices=("both", "float32", "autocast"), default="both")
    args = p.parse_args(argv)

    device = select_device(args.device)
    name = (
        f"{cpu_name()}, {os.cpu_count()} logical cores"
        if device.type == "cpu"
        else (device_name(device))
    )
    print(f"- {name}, {platform.machine()}; torch {torch.__version__}")
    print(f"- {args.variant}, base width {args.base_width}, batch {args.batch_size} of "
          f"{args.crop_size}x{args.crop_size} crops, {args.steps} steps per setting"
          + (f", 2.5-D +-{args.context_mm:g} mm" if args.context_mm else "")
          + (", lesions inserted on the fly" if args.online_lesions else ""))  # fmt: skip
    print()
    print("| threads | precision | samples/s | s/step |")
    print("|---:|---|---:|---:|")
    settings = {"both": (False, True), "float32": (False,), "autocast": (True,)}
    for threads in args.threads:
        for amp in settings[args.precision]:
            label = precision_label(device, amp)
            if amp and label == "float32":
                continue  # no autocast on this device: the same run twice
            rate = measure(args, threads, amp)
            print(f"| {threads} | {label} | {rate:.2f} | {args.batch_size / rate:.3f} |",
                  flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
