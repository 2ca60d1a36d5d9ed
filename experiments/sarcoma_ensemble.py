"""Would averaging checkpoints help the sarcoma model: the mean of several weights' final
probabilities, at the operating point that scores best on the split's patients?

    python experiments/sarcoma_ensemble.py W1.json W2.json [...] --data ../shared/data/sts \
        --split-file configs/sarcoma/split.json --split val [--max-fp-per-scan 1]

Predicts each patient once per checkpoint (at zoom 1, whole volume), averages the final
probabilities, and sweeps threshold x minimum depth as `tune-postprocess --objective dice`
does (minimum lesion size 0): prints the points with the highest mean per-patient Dice within
the false-positive budget (components that touch no tumour, per scan). The point is chosen on
the same patients it is scored on, so the figure is an upper bound for a held-out split.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.30, 0.951, 0.05))
DEPTHS_MM = (0.0, 4.0, 7.0, 10.0)


def score(prob, gt, spacing, threshold, depth_mm) -> tuple[float, int]:
    """(Dice, false-positive components) of one patient's mean probability at one point."""
    from napari_nstseg.metrics import dice, label_lesions
    from napari_nstseg.postprocess import remove_small_lesions

    mask = (prob >= threshold).astype(np.uint8)
    mask = remove_small_lesions(mask, spacing, 0.0, min_depth_mm=depth_mm) > 0
    labels, n = label_lesions(mask)
    hit = set(np.unique(labels[gt & mask]).tolist()) - {0}
    return dice(mask, gt), n - len(hit)


def sweep(patients, max_fp_per_scan: float) -> list[dict]:
    """Points within the budget, best mean Dice first; ``patients``: (probability maps, one per
    checkpoint; tumour mask; spacing) per patient."""
    means = [(np.mean(probs, axis=0), gt, sp) for probs, gt, sp in patients]
    rows = []
    for t in THRESHOLDS:
        for d in DEPTHS_MM:
            scored = [score(p, gt, sp, t, d) for p, gt, sp in means]
            fp = sum(f for _, f in scored) / len(scored)
            if fp <= max_fp_per_scan:
                dice = [x for x, _ in scored]
                rows.append({"threshold": t, "min_depth_mm": d, "mean_dice": float(np.mean(dice)),
                             "fp_per_scan": fp, "dice": dice})  # fmt: skip
    return sorted(rows, key=lambda r: -r["mean_dice"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", nargs="+")
    ap.add_argument("--data", required=True)
    ap.add_argument("--split-file")
    ap.add_argument("--split", default="val")
    ap.add_argument("--max-fp-per-scan", type=float, default=1.0)
    args = ap.parse_args(argv)

    from napari_nstseg.inference.engine import Segmenter
    from napari_nstseg.training.cases import (
        cases_of_split,
        default_label_values,
        foreground,
        load_case,
    )

    cases = cases_of_split(args.data, args.split, args.split_file)
    values = default_label_values(cases)
    engines = [Segmenter.from_checkpoint(w, device="cpu") for w in args.weights]
    patients = []
    for case in cases:
        hu, labels, spacing = load_case(case)
        probs = [e.predict(hu, spacing).probability("final") for e in engines]
        patients.append((probs, foreground(labels, values), spacing))
    rows = sweep(patients, args.max_fp_per_scan)
    if not rows:
        print(f"no point keeps within {args.max_fp_per_scan} false positives per scan")
        return 1
    ids = ", ".join(c.case_id for c in cases)
    for r in rows[:3]:
        print(f"mean Dice {r['mean_dice']:.3f} at {r['fp_per_scan']:.2f} false positives per "
              f"scan, threshold {r['threshold']:.2f}, min depth {r['min_depth_mm']:g} mm; "
              f"per patient ({ids}): {', '.join(f'{x:.3f}' for x in r['dice'])}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
