"""Axial crops of chosen lesions of a make-lesions set, as a reader sees them (W400/L40), each
without and with its label's outline, captioned with size, contrast, surroundings and whether an
evaluation found it (docs/images/lesion_surroundings.png):

    python experiments/lesion_figure.py SET OUT.png CASE:LESION_ID [...] [--evaluation EVAL_DIR]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from napari_nstseg.io.readers import read_ct, read_mask
from napari_nstseg.training.lesions import case_image_path

GREEN = (0, 230, 0)


def window(hu: np.ndarray, width: float = 400.0, level: float = 40.0) -> np.ndarray:
    return np.clip((hu - level + width / 2) / width * 255, 0, 255).astype(np.uint8)


def crop_pair(folder: Path, row: dict[str, str], half: int, zoom: int) -> np.ndarray:
    """The lesion's central slice around its centre: plain, a gap, and outlined."""
    ct = read_ct(case_image_path(folder, row["case"]))
    mask = read_mask(folder / "labelsTr" / f"{row['case']}.nii.gz", like=ct.geometry) > 0
    z, y, x = (int(round(float(row[f"centre_{a}"]))) for a in "zyx")
    pad = ((half, half), (half, half))
    hu = np.pad(ct.hu[z], pad, constant_values=-1000.0)[y : y + 2 * half, x : x + 2 * half]
    lab = np.pad(mask[z], pad)[y : y + 2 * half, x : x + 2 * half]
    # only this lesion's outline, not a neighbour's
    pieces, _ = ndimage.label(lab)
    if pieces[half, half]:
        lab = pieces == pieces[half, half]
    grey = window(hu).repeat(zoom, 0).repeat(zoom, 1)
    plain = np.stack([grey] * 3, axis=-1)
    big = lab.repeat(zoom, 0).repeat(zoom, 1)
    edge = big & ~ndimage.binary_erosion(big, iterations=2)
    outlined = plain.copy()
    outlined[edge] = GREEN
    gap = np.full((plain.shape[0], 6, 3), 255, np.uint8)
    return np.concatenate([plain, gap, outlined], axis=1)


def caption(row: dict[str, str], found: bool | None) -> str:
    text = (
        f"{float(row['diameter_axial_max_mm']):.0f} mm, {float(row['contrast_measured_hu']):+.0f}"
        f" HU, ring {float(row['surround_soft_fraction']):.0%} soft tissue"
    )
    return text if found is None else f"{text}: {'found' if found else 'missed'}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("set", type=Path, help="make-lesions folder (with the surroundings record)")
    p.add_argument("out", type=Path)
    p.add_argument("lesions", nargs="+", metavar="CASE:LESION_ID")
    p.add_argument("--evaluation", type=Path, help="nstseg evaluate folder: found or missed")
    p.add_argument("--half", type=int, default=20, help="crop half size in voxels")
    p.add_argument("--zoom", type=int, default=5)
    args = p.parse_args()
    with open(args.set / "lesions.csv", newline="") as f:
        table = {(r["case"], r["lesion_id"]): r for r in csv.DictReader(f)}
    detected = {}
    if args.evaluation:
        with open(args.evaluation / "lesions.csv", newline="") as f:
            detected = {
                (r["case"], r["lesion_id"]): r["detected"] == "True" for r in csv.DictReader(f)
            }
    tiles = []
    for item in args.lesions:
        key = tuple(item.rsplit(":", 1))
        if key not in table:
            raise SystemExit(f"{item}: no such lesion in {args.set / 'lesions.csv'}")
        pair = crop_pair(args.set, table[key], args.half, args.zoom)
        band = Image.new("RGB", (pair.shape[1], 22), "white")
        ImageDraw.Draw(band).text((4, 5), caption(table[key], detected.get(key)), fill="black")
        tiles += [np.asarray(band), pair, np.full((8, pair.shape[1], 3), 255, np.uint8)]
    Image.fromarray(np.concatenate(tiles[:-1], axis=0)).save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
