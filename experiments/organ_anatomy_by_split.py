"""How much of each organ a make-lesions data set gives each split: the organ anatomy the
training blocks hold (where training draws its organ crops and in-organ lesions) against what
validation and test search.

    python experiments/organ_anatomy_by_split.py runs/organ/data [--out anatomy.csv]

Reads the folder's dataset.json (its regions: source scan, split, z-range; the organ label
maps, their renaming to TotalSegmentator ids and the excluded regions it records), and prints
one Markdown row per source scan and split with the volume (mL) of each organ lesions may be
placed in, excluded voxels left out, then the totals per split.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")


def organ_volumes(organs: np.ndarray, excluded, z_range, voxel_ml: float, names) -> dict:
    """mL of each organ id of ``names`` in display slices ``z_range`` (end excluded) of a label
    map (z, y, x), the voxels of ``excluded`` (bool or None) left out."""
    z0, z1 = z_range
    block = organs[z0:z1]
    keep = np.ones(block.shape, bool) if excluded is None else ~excluded[z0:z1]
    return {
        name: float(np.count_nonzero((block == int(k)) & keep)) * voxel_ml
        for k, name in names.items()
    }


def anatomy_rows(folder: Path) -> list[dict]:
    """One row per (source scan, split): the organs' mL in the regions of that split."""
    from napari_nstseg.io import read_ct
    from napari_nstseg.recipes.bundle_organs import patient_name
    from napari_nstseg.training.lesions.sources import from_record, read_exclusion, read_organs

    meta = json.loads((folder / "dataset.json").read_text())
    names = meta["lesion_config"]["target_organs"]
    organs, excludes = from_record(meta)
    rows: dict[tuple[str, str], dict] = {}
    loaded: dict[str, tuple] = {}
    for region in meta["regions"]:
        scan = region["source"]
        if scan not in organs:
            continue  # no organ labels: lesions go to soft tissue only
        if scan not in loaded:
            ct = read_ct(scan)
            labels = read_organs(organs[scan], ct.geometry)
            out = read_exclusion(excludes[scan], ct.geometry) if scan in excludes else None
            loaded[scan] = (labels, out, float(np.prod(ct.spacing)) / 1000.0)
        labels, out, voxel_ml = loaded[scan]
        key = (patient_name(scan), region["split"])
        row = rows.setdefault(
            key, {"scan": key[0], "split": key[1], **dict.fromkeys(names.values(), 0.0)}
        )
        for name, ml in organ_volumes(
            labels, out, region["z_range_display"], voxel_ml, names
        ).items():
            row[name] += ml
    return list(rows.values())


def totals(rows: list[dict]) -> list[dict]:
    """The rows summed per split, in the order train, val, test."""
    organs = [k for k in rows[0] if k not in ("scan", "split")] if rows else []
    out = []
    for split in SPLITS:
        mine = [r for r in rows if r["split"] == split]
        out.append({"scan": "all", "split": split, **{o: sum(r[o] for r in mine) for o in organs}})
    return out


def markdown(rows: list[dict]) -> str:
    organs = [k for k in rows[0] if k not in ("scan", "split")]
    shown = [o for o in organs if any(r[o] > 0 for r in rows)]
    lines = ["| scan | split | " + " | ".join(shown) + " | all organs |"]
    lines.append("|---" * (len(shown) + 3) + "|")
    for r in rows:
        cells = [f"{r[o]:.0f}" if r[o] else "-" for o in shown]
        lines.append(
            f"| {r['scan']} | {r['split']} | "
            + " | ".join(cells)
            + f" | {sum(r[o] for o in organs):.0f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="a make-lesions output folder")
    ap.add_argument("--out", help="also write the rows as CSV here")
    args = ap.parse_args(argv)
    rows = sorted(anatomy_rows(args.folder), key=lambda r: (r["scan"], SPLITS.index(r["split"])))
    if not rows:
        print(f"{args.folder}: no source scan has organ labels", file=sys.stderr)
        return 1
    rows += totals(rows)
    print("Organ volumes (mL) per source scan and split, excluded regions left out:\n")
    print(markdown(rows))
    if args.out:
        with open(args.out, "w", newline="") as f:
            w = csv.DictWriter(f, list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
