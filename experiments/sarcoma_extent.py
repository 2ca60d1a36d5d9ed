"""Where does the sarcoma model's over-segmentation lie: beyond the contour's first and last
slice, or beside the tumour on its own slices?

    python experiments/sarcoma_extent.py WEIGHTS --data ../shared/data/sts \
        --split-file configs/sarcoma/split.json --split val [--out extent.csv]

Runs the weights at their recommended operating point on each patient of the split and prints,
per patient, Dice, precision and recall, and how the predicted voxels that are not tumour divide
into those on slices outside the contour's z-range and those on the contour's own slices; then
what CT shows there: the tumour's mean HU, that of the soft tissue around it (-50 to 150 HU, 3
to 10 mm from the contour, on its slices) and that of the voxels wrongly called tumour.
"""

from __future__ import annotations

import argparse
import csv
import sys

import numpy as np

FIELDS = (
    "case",
    "dice",
    "precision",
    "recall",
    "contour_slices",
    "predicted_slices",
    "fp_share_outside_z_range",
    "fp_share_on_contour_slices",
    "tumour_hu",
    "surround_hu",
    "wrong_hu",
)
# the shell around the contour whose soft tissue the tumour is compared with, and what counts as
# soft tissue there (fat and bone left out: a radiologist compares the tumour with muscle)
SHELL_MM = (3.0, 10.0)
SOFT_TISSUE_HU = (-50.0, 150.0)


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def densities(hu: np.ndarray, spacing, pred: np.ndarray, gt: np.ndarray) -> dict:
    """Mean HU of the tumour, of the soft tissue in a shell around it on its own slices, and of
    the voxels predicted as tumour that are not (``spacing``: (z, y, x) mm)."""
    from scipy import ndimage

    distance = ndimage.distance_transform_edt(~gt, sampling=[float(s) for s in spacing])
    on_gt = gt.any(axis=(1, 2))[:, None, None]
    shell = (distance >= SHELL_MM[0]) & (distance <= SHELL_MM[1]) & on_gt
    soft = (hu >= SOFT_TISSUE_HU[0]) & (hu <= SOFT_TISSUE_HU[1])
    return {
        "tumour_hu": _mean(hu[gt]),
        "surround_hu": _mean(hu[shell & soft]),
        "wrong_hu": _mean(hu[pred & ~gt]),
    }


def extent_row(case: str, pred: np.ndarray, gt: np.ndarray, hu=None, spacing=None) -> dict:
    """The counts for one patient (``pred``, ``gt``: boolean (z, y, x) on the same grid), and
    the densities when ``hu`` (and its ``spacing``, z, y, x mm) is given."""
    tp = int((pred & gt).sum())
    fp = pred & ~gt
    n_fp = int(fp.sum())
    on_gt = gt.any(axis=(1, 2))
    z = np.nonzero(on_gt)[0]
    in_range = np.zeros_like(on_gt)
    if len(z):
        in_range[z.min() : z.max() + 1] = True
    outside = int(fp[~in_range].sum())
    row = {
        "case": case,
        "dice": 2 * tp / max(int(pred.sum()) + int(gt.sum()), 1),
        "precision": tp / max(int(pred.sum()), 1),
        "recall": tp / max(int(gt.sum()), 1),
        "contour_slices": int(on_gt.sum()),
        "predicted_slices": int(pred.any(axis=(1, 2)).sum()),
        "fp_share_outside_z_range": outside / max(n_fp, 1),
        "fp_share_on_contour_slices": (n_fp - outside) / max(n_fp, 1),
    }
    if hu is not None:
        row.update(densities(hu, spacing, pred, gt))
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights")
    ap.add_argument("--data", required=True)
    ap.add_argument("--split-file")
    ap.add_argument("--split", default="val")
    ap.add_argument("--out", help="also write the rows as CSV here")
    args = ap.parse_args(argv)

    from napari_nstseg.inference.engine import Segmenter
    from napari_nstseg.training.cases import (
        cases_of_split,
        default_label_values,
        foreground,
        load_case,
    )

    engine = Segmenter.from_checkpoint(args.weights, device="cpu")
    cases = cases_of_split(args.data, args.split, args.split_file)
    labels_used = default_label_values(cases)
    rows = []
    for case in cases:
        hu, labels, spacing = load_case(case)
        gt = foreground(labels, labels_used)
        pred = engine.predict(hu, spacing).mask > 0
        rows.append(extent_row(case.case_id, pred, gt, hu, spacing))
        r = rows[-1]
        print(
            f"{r['case']}: Dice {r['dice']:.3f}, precision {r['precision']:.3f}, recall "
            f"{r['recall']:.3f}; contour on {r['contour_slices']} slices, prediction on "
            f"{r['predicted_slices']}; of the voxels wrongly called tumour "
            f"{r['fp_share_outside_z_range']:.0%} lie beyond the contour's first and last "
            f"slice, {r['fp_share_on_contour_slices']:.0%} beside it on its slices; mean HU: "
            f"tumour {r['tumour_hu']:.1f}, soft tissue around it {r['surround_hu']:.1f}, "
            f"wrongly called tumour {r['wrong_hu']:.1f}"
        )
    if args.out:
        with open(args.out, "w", newline="") as f:
            w = csv.DictWriter(f, FIELDS)
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
