"""Could a rule on a predicted lesion's size, shape, probability or HU drop the false positives?

For every 3-D component of a model's mask on a split (at the weights' operating point, or the
one given), whether it touches a ground-truth lesion (a hit) or not (a false positive), and its
extent along z, longest axial diameter, volume, mean probability, mean HU and contrast against
the 2-pixel in-plane ring around it. Per source region and feature, the hits' and the false
positives' 10th/50th/90th percentiles, and the share of false positives outside the range the
hits span: what the best one-feature cut that keeps every hit would remove.

    python experiments/fp_components.py DATA [--split test] [--weights W] [--threshold T]
        [--min-lesion-mm MM] [--min-depth-mm D] [--csv components.csv]
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_nstseg.metrics import label_lesions
from napari_nstseg.postprocess import component_depths_mm, component_diameters_mm
from napari_nstseg.training.cases import Case, foreground, load_case
from napari_nstseg.training.lesions.regions import read_case_regions

FEATURES = ("depth_mm", "diameter_mm", "volume_ml", "mean_probability", "mean_hu", "contrast_hu")
_RING = np.array([[[0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1],
                   [0, 1, 1, 1, 0]]], bool)  # fmt: skip


def component_rows(cases: Iterable[Case], predict, label_values: Sequence[int]) -> list[dict]:
    """One row per predicted component of each case; ``predict(hu, spacing)`` gives the
    (mask, probability) pair on the case's (z, y, x) grid."""
    rows = []
    for case in cases:
        hu, labels, spacing = load_case(case)
        truth = foreground(labels, label_values)
        mask, prob = predict(hu, spacing)
        comps, n = label_lesions(np.asarray(mask) > 0)
        boxes = ndimage.find_objects(comps, max_label=n)
        # The measures the engine's size and depth limits judge a lesion by.
        depths = component_depths_mm(boxes, spacing[0])
        diameters = component_diameters_mm(comps, boxes, spacing[1:])
        for i, box in enumerate(boxes):
            if box is None:
                continue
            # The box widened by the ring's 2 pixels in-plane.
            grown = tuple(
                slice(max(s.start - 2, 0), s.stop + 2) if axis else s for axis, s in enumerate(box)
            )
            inside = comps[grown] == i + 1
            ring = ndimage.binary_dilation(inside, _RING) & (comps[grown] == 0)
            mean_hu = float(hu[grown][inside].mean())
            rows.append(
                {
                    "case": case.case_id,
                    "hit": bool(truth[grown][inside].any()),
                    "depth_mm": float(depths[i]),
                    "diameter_mm": float(diameters[i]),
                    "volume_ml": int(inside.sum()) * float(np.prod(spacing)) / 1000.0,
                    "mean_probability": float(prob[grown][inside].mean()),
                    "mean_hu": mean_hu,
                    "contrast_hu": mean_hu - float(np.median(hu[grown][ring]))
                    if ring.any()
                    else float("nan"),
                }
            )
    return rows


def separation(rows: Sequence[dict]) -> dict[str, dict]:
    """Feature -> percentiles (10, 50, 90) of hits and of false positives, and the share of
    false positives below the smallest or above the largest value any hit has."""
    hits = [r for r in rows if r["hit"]]
    fps = [r for r in rows if not r["hit"]]
    out = {}
    for name in FEATURES:
        h = np.array([r[name] for r in hits], np.float64)
        f = np.array([r[name] for r in fps], np.float64)
        h, f = h[np.isfinite(h)], f[np.isfinite(f)]
        out[name] = {
            "hits": np.percentile(h, [10, 50, 90]).tolist() if h.size else [],
            "false_positives": np.percentile(f, [10, 50, 90]).tolist() if f.size else [],
            "fp_outside_hits": float(((f < h.min()) | (f > h.max())).mean())
            if h.size and f.size
            else float("nan"),
        }
    return out


def _triple(values: list[float]) -> str:
    return " / ".join(f"{v:.3g}" for v in values) if values else "none"


def main(argv: list[str] | None = None) -> int:
    from napari_nstseg.inference.engine import default_weights_path
    from napari_nstseg.training.evaluate import engine_for_split

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", type=Path, help="MSD folder (e.g. of `nstseg make-lesions`)")
    p.add_argument("--split", default="test")
    p.add_argument("--weights", default=None, help="checkpoint (default: the bundled one)")
    p.add_argument("--threshold", type=float)
    p.add_argument("--min-lesion-mm", type=float)
    p.add_argument("--min-depth-mm", type=float)
    p.add_argument("--device", default="cpu")
    p.add_argument("--csv", type=Path, help="also write every component's row here")
    args = p.parse_args(argv)
    engine, cases, label_values = engine_for_split(
        args.weights or default_weights_path(), args.data, args.split, args.device, 8,
        args.threshold, args.min_lesion_mm, args.min_depth_mm,
    )  # fmt: skip

    def predict(hu, spacing):
        pred = engine.predict(hu, spacing)
        return pred.mask, pred.probability("final")

    rows = component_rows(cases, predict, label_values)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["case", "hit", *FEATURES])
            writer.writeheader()
            writer.writerows(rows)
    regions = read_case_regions(args.data)
    by_region: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_region[regions.get(row["case"], "all")].append(row)
    point = engine.postprocess
    print(f"threshold {point.threshold:g}, min lesion {point.min_lesion_mm:g} mm, "
          f"min depth {point.min_depth_mm:g} mm; {args.data} ({args.split})")  # fmt: skip
    print("| region | feature | hits p10 / p50 / p90 | false positives p10 / p50 / p90 "
          "| false positives outside the hits' range |")  # fmt: skip
    print("|---|---|---|---|---:|")
    for region in sorted(by_region):
        part = by_region[region]
        n_hit = sum(r["hit"] for r in part)
        label = f"{region} ({n_hit} hits, {len(part) - n_hit} false positives)"
        for name, s in separation(part).items():
            print(f"| {label} | {name} | {_triple(s['hits'])} | "
                  f"{_triple(s['false_positives'])} | {s['fp_outside_hits']:.1%} |")  # fmt: skip
            label = ""
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
