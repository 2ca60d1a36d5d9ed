"""`nstseg train`'s options for organ crops (training/organ_crops.py; cascade paper 001, CL-MSDA
003), kept apart so that building the command line imports no torch."""

from __future__ import annotations

import argparse
from typing import Any


def add_organ_crop_args(p: argparse.ArgumentParser) -> None:
    """Organ crops for organ-mode weights (training/organ_crops.py; TrainConfig.organ_search)."""
    p.add_argument(
        "--organ-crops",
        type=float,
        metavar="F",
        help="share of crops cut around an organ as organ mode runs it (its box grown by "
        "--organ-margin-mm, at the engine's zoom), from cases with organ label maps "
        "(make-lesions' organsTr or --online-lesions blocks; default 0)",
    )
    p.add_argument(
        "--organ-field-mm",
        type=float,
        metavar="MM",
        help="the field an organ's box is zoomed to fill (zoom = MM / the box's longer side, "
        "held within --organ-zoom); stored in the checkpoint for organ mode",
    )
    p.add_argument(
        "--organ-zoom", type=float, nargs=2, metavar=("MIN", "MAX"), help="zoom limits (1 1)"
    )
    p.add_argument(
        "--organ-margin-mm", type=float, metavar="MM", help="box around each organ (10 mm)"
    )
    p.add_argument(
        "--organs",
        metavar="LIST",
        help="organ ids or TotalSegmentator names to crop around (default: the organs "
        "make-lesions places lesions in)",
    )


def apply_organ_crop_args(d: dict[str, Any], args: argparse.Namespace) -> None:
    """Put the organ-crop options given on the command line into a TrainConfig dict."""
    organ = dict(d.get("organ_search") or {})
    if args.organ_field_mm is not None:
        organ["field_mm"] = args.organ_field_mm
    if args.organ_zoom is not None:
        organ["min_zoom"], organ["max_zoom"] = args.organ_zoom
    if args.organ_margin_mm is not None:
        organ["margin_mm"] = args.organ_margin_mm
    if args.organs is not None:
        from napari_nstseg.organ_labels import parse_organs

        organ["labels"] = list(parse_organs(args.organs))
    d["organ_search"] = organ
    if args.organ_crops is not None:
        d["sampling"] = {**d["sampling"], "organ_crops": args.organ_crops}
