"""`nstseg predict --organ-mask SEG --organs 5,7`: organ mode (issue 26; cascade paper 001) on
the command line: the organ label map is read on the CT's grid and checked, with one line naming
the file and the labels, before any model work."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MARGIN_MM = 10.0


NO_CENTRE_RULE = "none"


def add_organ_args(p: argparse.ArgumentParser, masks_help: str | None = None) -> None:
    """--organ-mask (or --organ-masks with ``masks_help``), --organs and --organ-margin-mm."""
    if masks_help is None:
        p.add_argument(
            "--organ-mask",
            metavar="SEG",
            default=None,
            help="organ label map on the CT's grid (e.g. TotalSegmentator's multi-label output): "
            "search for lesions only inside the --organs it labels",
        )
    else:
        p.add_argument("--organ-masks", metavar="WHERE", default=None, help=masks_help)
    p.add_argument(
        "--organs",
        metavar="LIST",
        default=None,
        help="organ label ids or TotalSegmentator names to search, e.g. '5,7' or "
        "'liver,pancreas' (with the organ mask)",
    )
    p.add_argument(
        "--organ-margin-mm",
        metavar="MM",
        type=float,
        default=DEFAULT_MARGIN_MM,
        help=f"crop around each organ and zone kept around it, in mm (default "
        f"{DEFAULT_MARGIN_MM:g}: lesions at an organ's edge count)",
    )
    p.add_argument(
        "--organ-centre-mm",
        metavar="MM",
        type=centre_arg,
        default=None,
        help="keep a lesion only when its centre lies in the organ or within MM of it ('none': "
        "anywhere in the zone); default: the rule the weights store, chosen on validation",
    )


def centre_arg(value: str) -> float | str:
    """--organ-centre-mm's value: a distance in mm, or 'none' (no centre rule)."""
    if value.strip().lower() == "none":
        return NO_CENTRE_RULE
    try:
        mm = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"give a distance in mm or 'none', not {value!r}"
        ) from None
    if not (np.isfinite(mm) and mm >= 0):
        raise argparse.ArgumentTypeError(f"the distance must be 0 mm or more, got {value}")
    return mm


def centre_rule(value: float | str | None, stored: float | None) -> float | None:
    """The centre rule in force: --organ-centre-mm's ``value`` (None: not given) over the
    weights' ``stored`` one."""
    if value is None:
        return stored
    return None if value == NO_CENTRE_RULE else float(value)


def organ_labels(mask: str | None, organs: str | None, margin_mm: float, flag: str):
    """The organ label ids asked for (None: whole-scan mode), checked without reading files."""
    from napari_nstseg.organ_labels import parse_organs

    if mask is None and organs is None:
        return None
    if mask is None:
        raise ValueError(f"--organs needs {flag} SEG, the label map the organs are in")
    if organs is None:
        raise ValueError(f"{flag} {mask} needs --organs, the labels to search (e.g. 5 or liver)")
    if not (np.isfinite(margin_mm) and margin_mm >= 0):
        raise ValueError(f"--organ-margin-mm must be 0 or more, got {margin_mm:g}")
    return parse_organs(organs)


def read_organ_mask(path: str | Path, geometry, labels: tuple[int, ...]) -> np.ndarray:
    """The organ label map on the scan's grid, checked: one line naming the file and the
    labels when it is on another grid, lacks a label or is empty."""
    from napari_nstseg.inference.organs import check_label_map
    from napari_nstseg.io import read_mask
    from napari_nstseg.io.errors import CTReadError

    wanted = ", ".join(map(str, labels))
    try:
        data = read_mask(path, like=geometry)
    except CTReadError as exc:
        if "does not lie on the scan grid" not in exc.problem:
            raise
        raise ValueError(
            f"{path}: the organ mask (searched for organ label {wanted}) is on another grid "
            f"than the CT; {exc.problem}; give TotalSegmentator's output for this very scan or "
            "resample the mask onto it"
        ) from None
    check_label_map(data, geometry.display_shape, labels, str(path))
    return data


def organ_report(search, pred, names: dict[int, str] | None = None) -> dict[str, Any]:
    """The report's `organs` entry: what was searched and how (schema docs/predict-report.md)."""
    info = pred.info.get("organs") or {}
    return {
        "mask": None,  # filled in by the caller, resolved
        "labels": list(search.labels),
        "names": search.names(names),
        "margin_mm": search.margin_mm,
        "field_mm": search.field_mm,
        "zoom_limits": [search.min_zoom, search.max_zoom],
        "centre_mm": search.centre_mm,
        "boxes_zyx": info.get("boxes", []),
        "lesions_only_inside": True,
        "note": "lesions were only sought inside the organs grown by margin_mm; every map and "
        "the mask are 0 elsewhere; with centre_mm, the mask keeps only lesions whose centre lies "
        "within centre_mm of the organs",
    }
