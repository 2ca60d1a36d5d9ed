"""`nstseg train`'s options for where its lesions come from: inserted on the fly
(lesions/online.py) and a second data set (config.ExtraData), kept apart so that building the
command line imports no torch."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_lesion_source_args(p: argparse.ArgumentParser) -> None:
    """On-the-fly lesions (SamplingConfig.online_*) and a second data set (--also-*)."""
    p.add_argument(
        "--online-lesions",
        action="store_true",
        default=None,
        help="--data is a `nstseg make-lesions` folder: train on its training blocks with one "
        "new lesion per crop with lesion, inserted on the fly at a new site, instead of on its "
        "stored cases (validation stays on its validation cases)",
    )
    p.add_argument(
        "--online-min-contrast-hu", type=float, metavar="HU",
        help="with --online-lesions: the least |contrast| against the tissue around them the new "
        "lesions are drawn with, instead of the folder's (e.g. 20, the evaluation's target "
        "contrast); its validation and test cases keep theirs",
    )  # fmt: skip
    p.add_argument(
        "--online-diameter-mm", type=float, nargs=2, metavar=("LO", "HI"),
        help="with --online-lesions: the diameters (mm) the new lesions are drawn from, instead "
        "of the folder's",
    )  # fmt: skip
    also = p.add_argument_group("a second data set trained on in the same run")
    also.add_argument(
        "--also-data", metavar="DIR",
        help="another dataset folder (any layout --data takes), e.g. a make-lesions folder "
        "beside real tumours: a share of the crops comes from it, its validation cases join",
    )  # fmt: skip
    also.add_argument("--also-split-file", metavar="JSON", help="its fixed split by case")
    also.add_argument(
        "--also-online-lesions", action="store_true",
        help="it is a make-lesions folder: new lesions on the fly, as --online-lesions",
    )  # fmt: skip
    also.add_argument(
        "--also-share", type=float, default=0.5, metavar="F",
        help="share of the training crops drawn from it (0.5)",
    )  # fmt: skip


def apply_lesion_source_args(
    d: dict[str, Any], sampling: dict[str, Any], args: argparse.Namespace
) -> None:
    """Put the lesion-source options given on the command line into a TrainConfig dict and
    its sampling dict; the on-the-fly draw options need a set with lesions on the fly."""
    if args.online_lesions is not None:
        sampling["online_lesions"] = args.online_lesions
    on_the_fly = sampling.get("online_lesions") or args.also_online_lesions
    draw = (
        ("--online-min-contrast-hu", "online_min_contrast_hu", args.online_min_contrast_hu),
        ("--online-diameter-mm", "online_diameter_mm", args.online_diameter_mm),
    )
    for flag, key, value in draw:
        if value is None:
            continue
        if not on_the_fly:
            raise ValueError(f"{flag} sets the lesions inserted on the fly: add --online-lesions")
        sampling[key] = value
    if args.also_data:
        split = args.also_split_file and str(Path(args.also_split_file).resolve())
        d["extra_data"] = [
            {"data": str(Path(args.also_data).resolve()), "split_file": split,
             "online_lesions": bool(args.also_online_lesions), "share": args.also_share}
        ]  # fmt: skip
