"""Do a model's false positives sit where its training lesions were? (memorised sites)

For every source region (z-block) of EVAL's split: the union of the lesion masks of TRAIN's
cases of that region (the lesions the model was trained on), the model's false-positive voxels
on EVAL's cases of the region (new lesions in the same anatomy: `nstseg make-lesions --splits
train --first-copy N`), and how much of each lies in that union, against the share of the
region's soft tissue (see below) the union covers. Far more than that share means the
model has learnt sites of these scans rather than what a lesion looks like. The tissue is where
`make-lesions` may put a lesion (its soft-tissue mask, away from bone and opacified vessels, from
the source scans TRAIN's dataset.json names); for folders without that record it is every voxel
of -100 to 250 HU, which also counts vessels and tissue by bone where no lesion may go, and so
understates the share.

    python experiments/fp_at_training_sites.py TRAIN EVAL [--split train] [--weights W]
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from napari_nstseg.inference.engine import Segmenter, default_weights_path
from napari_nstseg.io import read_ct, read_mask
from napari_nstseg.metrics import label_lesions
from napari_nstseg.training.cases import Case, find_cases
from napari_nstseg.training.lesions import lesion_sites
from napari_nstseg.training.lesions.online import read_source_blocks
from napari_nstseg.training.lesions.regions import RECURRING_SHARE, read_case_regions


def by_region(folder: Path, split: str) -> dict[str, list[Case]]:
    """The split's cases of a `make-lesions` folder, by source region."""
    regions = read_case_regions(folder)
    out: dict[str, list[Case]] = defaultdict(list)
    for case in find_cases(folder):
        if case.split == split and case.case_id in regions:
            out[regions[case.case_id]].append(case)
    return out


def placement_tissue(folder: Path) -> dict[str, np.ndarray]:
    """Region -> the mask of tissue where `make-lesions` may place a lesion, for the training
    regions of a folder whose dataset.json records its source scans; empty without that record
    or when the scans are gone."""
    try:
        blocks, config = read_source_blocks(folder, "train")
    except ValueError:
        return {}
    return {
        b.name: lesion_sites(b.hu, b.spacing, b.organ_labels, config, scan=b.name).soft
        for b in blocks
    }


def _share(cover: np.ndarray, where: np.ndarray) -> float:
    return float(cover[where].mean()) if where.any() else float("nan")


def site_shares(train: Path, evaluate: Path, split: str, predict) -> list[tuple]:
    """(region, cases, share of tissue under training lesions, share of false-positive voxels
    there, share of recurring ones there, whether the tissue is the placement mask) per region
    of EVAL's split that TRAIN trained on; ``predict(ct)`` gives a boolean mask on the scan's
    grid."""
    trained = by_region(train, "train")
    placeable = placement_tissue(train)
    rows = []
    for region, cases in by_region(evaluate, split).items():
        if region not in trained:
            continue
        cover = None
        for case in trained[region]:
            ct = read_ct(case.image)
            m = read_mask(case.label, like=ct.geometry) > 0
            cover = m if cover is None else cover | m
        soft = placeable.get(region)
        if soft is None or soft.shape != cover.shape:
            soft = (ct.hu > -100) & (ct.hu < 250)
            exact = False
        else:
            exact = True
        fp_count = np.zeros(cover.shape, np.int32)
        for case in cases:
            ct = read_ct(case.image)
            truth = read_mask(case.label, like=ct.geometry) > 0
            labels, _ = label_lesions(predict(ct))
            hits = sorted(set(np.unique(labels[truth])) - {0})
            fp_count += (labels > 0) & ~np.isin(labels, hits)
        rows.append(
            (
                region,
                len(cases),
                _share(cover, soft),
                _share(cover, fp_count > 0),
                _share(cover, fp_count >= RECURRING_SHARE * len(cases)),
                exact,
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("train", type=Path, help="MSD folder the model was trained on")
    p.add_argument("eval", type=Path, help="MSD folder of new lesions in the same regions")
    p.add_argument("--split", default="train", help="EVAL's split to score (default train)")
    p.add_argument("--weights", default=None, help="checkpoint (default: the bundled one)")
    args = p.parse_args(argv)
    seg = Segmenter.from_checkpoint(args.weights or default_weights_path(), device="cpu")
    rows = site_shares(
        args.train, args.eval, args.split, lambda ct: seg.predict(ct.hu, ct.spacing).mask > 0
    )
    print("| region | tissue under training lesions | false-positive voxels there "
          "| recurring (>= half the copies) false-positive voxels there |")  # fmt: skip
    print("|---|---:|---:|---:|")
    for region, n, *shares, exact in rows:
        tissue = "" if exact else " (tissue: -100 to 250 HU, no record of the source scans)"
        cells = " | ".join(f"{s:.1%}" for s in shares)
        print(f"| {region} ({n} cases){tissue} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
