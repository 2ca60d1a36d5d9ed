"""Training-data throughput without the model: crops per second of `nstseg train`'s sampler,
stored cases against lesions inserted on the fly; prints a table.

Measures the items the training loop asks for (random crop, augmentation, 2.5-D planes; for
online lesions also the placement of a new lesion), split into crops with and without lesion,
in this process (the loop's CPU default, `--num-workers 0`) and through a DataLoader with
worker processes (its GPU default), so one sees how many workers keep a GPU fed. Needs a
`nstseg make-lesions` folder with a train split (the online sampler reads its source blocks):

    .venv/bin/python benchmarks/data_speed.py --data train/ [--items 400] [--workers 0 2 4]
        [--context-mm 3] [--crop-size 96] [--working-spacing-mm 1.5]

Loading and resampling the volumes, and the online sampler's lesion bank, happen before the
clock starts and are reported apart.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from napari_nstseg.inference.device import cpu_name
from napari_nstseg.preprocessing import PreprocessConfig
from napari_nstseg.training.cases import data_splits
from napari_nstseg.training.data import SamplingConfig, SliceDataset
from napari_nstseg.training.segmentation import training_set


def build(args: argparse.Namespace, online: bool) -> SliceDataset:
    offsets = (0.0,) if not args.context_mm else (-args.context_mm, 0.0, args.context_mm)
    preprocess = PreprocessConfig(working_spacing_mm=args.working_spacing_mm,
                                  slice_offsets_mm=offsets)  # fmt: skip
    sampling = SamplingConfig(positive_fraction=args.positive_fraction,
                              crop_size=(args.crop_size, args.crop_size), seed=0,
                              samples_per_epoch=args.items, online_lesions=online)  # fmt: skip
    return training_set(args.data, data_splits(str(args.data))["train"], preprocess, sampling)


def per_item(dataset: SliceDataset, positive: bool, n: int) -> float:
    """Seconds per item of one kind, in this process."""
    items = [i for i in range(len(dataset)) if dataset.is_positive_item(i) == positive][:n]
    dataset[items[0]]  # first touch
    start = time.perf_counter()
    for i in items:
        dataset[i]
    return (time.perf_counter() - start) / len(items)


def through_loader(dataset: SliceDataset, workers: int, batch: int) -> float:
    """Items per second of a shuffled epoch through a DataLoader (its start-up excluded)."""
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0, drop_last=True)  # fmt: skip
    dataset.set_epoch(0)
    next(iter(loader))  # workers start, pages warm
    dataset.set_epoch(1)
    start = time.perf_counter()
    n = sum(len(b["image"]) for b in loader)
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="make-lesions folder, train split")
    p.add_argument("--items", type=int, default=400, help="items per measured epoch")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop-size", type=int, default=96)
    p.add_argument("--working-spacing-mm", type=float, default=1.5)
    p.add_argument("--context-mm", type=float, default=0.0)
    p.add_argument("--positive-fraction", type=float, default=0.7)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # the items are numpy and scipy; one thread, as in a worker

    print(f"- {cpu_name()}, {os.cpu_count()} logical cores, {platform.machine()}; "
          f"torch {torch.__version__}")  # fmt: skip
    print(f"- {args.crop_size}x{args.crop_size} crops at {args.working_spacing_mm:g} mm, "
          f"{args.positive_fraction:.0%} with lesion"
          + (f", 2.5-D +-{args.context_mm:g} mm" if args.context_mm else ", 2-D"))  # fmt: skip
    print()
    print("| training lesions | set-up s | ms per crop with lesion | ms per crop without | "
          + " | ".join(f"crops/s, {w} workers" for w in args.workers) + " |")  # fmt: skip
    print("|---|---:|---:|---:|" + "---:|" * len(args.workers))
    for online in (False, True):
        start = time.perf_counter()
        dataset = build(args, online)
        setup = time.perf_counter() - start
        n = max(1, args.items // 4)
        pos, neg = per_item(dataset, True, n), per_item(dataset, False, n)
        rates = [through_loader(dataset, w, args.batch_size) for w in args.workers]
        name = "inserted on the fly" if online else "stored cases"
        print(f"| {name} | {setup:.1f} | {pos * 1e3:.1f} | {neg * 1e3:.1f} | "
              + " | ".join(f"{r:.0f}" for r in rates) + " |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
