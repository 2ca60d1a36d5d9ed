"""`nstseg average-weights`: one checkpoint from the mean of several (SWA, model soups)."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `average-weights` on the `nstseg` command's subparsers."""
    p = subparsers.add_parser(
        "average-weights",
        help="average the weights of checkpoints of one network (e.g. two training stages)",
        description="Write one checkpoint whose tensors are the (weighted) mean of the given "
        "checkpoints'. They must describe the same network and preprocessing, and averaging "
        "only makes sense for weights that share a training history (one fine-tuned from the "
        "other, or epochs of one run). The result has no operating point: tune it again with "
        "`nstseg tune-postprocess`.",
    )
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="two or more .json")
    p.add_argument("--out", required=True, help="the averaged checkpoint (.json)")
    p.add_argument(
        "--weights",
        nargs="+",
        type=float,
        metavar="W",
        help="one positive weight per checkpoint (default: equal)",
    )
    p.add_argument("--float16", action="store_true", help="store float tensors as float16")
    p.add_argument("--description", help="the one line that lists the weights by name")
    p.set_defaults(func=_average)
    return p


def _average(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from napari_nstseg.models.checkpoint import CheckpointError
    from napari_nstseg.models.weight_average import average_checkpoints

    out = Path(args.out)
    if any(
        Path(c).resolve().with_suffix("") == out.resolve().with_suffix("") for c in args.checkpoints
    ):
        print(
            f"error: --out {out} would overwrite one of the checkpoints averaged", file=sys.stderr
        )
        return 2
    try:
        _, json_path = average_checkpoints(
            args.checkpoints,
            out,
            weights=args.weights,
            dtype=torch.float16 if args.float16 else None,
            description=args.description,
        )
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"averaged {len(args.checkpoints)} checkpoints into {json_path}")
    return 0
