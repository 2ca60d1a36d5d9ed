"""Would a lesion-centre rule cut organ mode's false positives: keep a component only when its
centre lies inside the organ or within C mm of it (the zone itself reaches the margin, 10 mm)?

    python experiments/organ_centre_rule.py WEIGHTS.json --data runs/organ/data --split val \
        --organ-masks organsTr --organs 1,2,3,5,6,7,18 [--max-fp-per-scan 2]

Predicts each case of the split in organ mode once (as `tune-postprocess --organ-masks` does),
then for each C sweeps `tune-postprocess`'s grid (threshold x minimum size x minimum depth) on
the map with the components whose centre lies farther than C mm from the organs set to 0, and
chooses by tune's rule (most targets found within the budget). Prints one line per C: what
the rule would ship, with its in-organ figures. C = the margin is today's organ mode.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import ndimage

CENTRES_MM = (0.0, 2.0, 4.0, 6.0, 10.0)


def organ_distance_mm(organs: np.ndarray, spacing) -> np.ndarray:
    """Distance (mm) of every voxel from the organs (0 inside)."""
    return ndimage.distance_transform_edt(~organs, sampling=[float(s) for s in spacing])


def without_far_components(final, threshold, distance, limit_mm):
    """``final`` with the components (of final >= threshold) centred farther than
    ``limit_mm`` from the organs set to 0."""
    from napari_nstseg.inference.prediction import binarize_probability
    from napari_nstseg.metrics import label_lesions
    from napari_nstseg.postprocess import component_centres

    labels, n = label_lesions(binarize_probability(final, threshold))
    if n == 0:
        return final
    far = np.flatnonzero(distance[tuple(component_centres(labels, n).T)] > limit_mm + 1e-6) + 1
    if not far.size:
        return final
    out = np.array(final, copy=True)
    out[np.isin(labels, far)] = 0
    return out


def main(argv=None) -> int:
    from napari_nstseg.io import read_mask
    from napari_nstseg.metrics import label_lesions
    from napari_nstseg.training.cases import foreground
    from napari_nstseg.training.evaluate import (
        engine_for_split,
        match_table_rows,
        read_lesion_table,
    )
    from napari_nstseg.training.organ_eval import (
        OrganEval,
        OrganScoring,
        in_zone,
        organ_mask_path,
    )
    from napari_nstseg.training.targets import target_lesion
    from napari_nstseg.training.tune import (
        TuneConfig,
        choose_operating_point,
        grid_rows,
        sweep_case,
    )

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("weights")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--organ-masks", required=True)
    p.add_argument("--organs", required=True)
    p.add_argument("--margin-mm", type=float, default=10.0)
    p.add_argument("--max-fp-per-scan", type=float, default=2.0)
    args = p.parse_args(argv)

    cfg = TuneConfig(max_fp_per_scan=args.max_fp_per_scan, device="cpu")
    labels_wanted = tuple(int(v) for v in args.organs.split(","))
    engine, cases, label_values = engine_for_split(args.weights, args.data, args.split, "cpu", 4)
    table = read_lesion_table(args.data)
    organs = OrganScoring(OrganEval(args.organ_masks, labels_wanted, args.margin_mm),
                          args.data, engine.meta)  # fmt: skip
    organs.check(cases)
    per_centre: dict[float, list] = {c: [] for c in CENTRES_MM}
    for case in cases:
        scored = organs.predict_case(engine, case)
        if scored is None:
            continue
        hu, labels, spacing, pred, zone = scored
        wanted = organs.present[case.case_id]
        path = organ_mask_path(args.organ_masks, case, args.data)
        organ = np.isin(read_mask(path), wanted)  # make-lesions wrote it on the case's grid
        distance = organ_distance_mm(organ, spacing)
        gt = foreground(labels, label_values)
        gt_labels, n_gt = label_lesions(gt)
        centroids = ndimage.center_of_mass(gt_labels > 0, gt_labels, range(1, n_gt + 1))
        counted = [k for k, ok in enumerate(in_zone(centroids, zone)) if ok]
        rows = table.get(case.case_id, [])
        targets = [
            k
            for row, k in zip(rows, match_table_rows(rows, centroids, spacing), strict=True)
            if k is not None and target_lesion(row) and k in counted
        ]
        for c in CENTRES_MM:
            merged = {}
            for t in cfg.thresholds:
                cut = without_far_components(pred.final, t, distance, c)
                merged.update(sweep_case(cut, gt, spacing, [t], cfg.min_lesion_mm, cfg.min_dice,
                                         targets, cfg.min_depth_mm, counted))  # fmt: skip
            per_centre[c].append(merged)
        print(f"  {case.case_id}: swept", flush=True)
    for c in CENTRES_MM:
        grid = grid_rows(per_centre[c])
        best, criterion, note = choose_operating_point(grid, cfg.max_fp_per_scan)
        within = [r for r in grid if r["fp_per_scan"] <= cfg.max_fp_per_scan + 1e-12]
        most = max(within, key=lambda r: (r["detected"], -r["fp_per_scan"])) if within else None
        print(
            f"centre <= {c:g} mm: {best['threshold']:g} / {best['min_lesion_mm']:g} / "
            f"{best['min_depth_mm']:g}: targets {best['target_detected']}/"
            f"{best['target_lesions']}, all {best['detected']}/{best['lesions']}, "
            f"{best['fp_per_scan']:.2f} FP/scan; most lesions within the budget: "
            + (
                f"{most['detected']}/{most['lesions']} at {most['fp_per_scan']:.2f}"
                if most
                else "-"
            )
        )
        print(f"    {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
