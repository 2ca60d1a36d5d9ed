"""Choose a checkpoint's lesion-level operating point (threshold x minimum lesion size x
minimum depth) on
validation data: lesion sensitivity (or, for one delineated tumour per patient, mean per-patient
Dice) against false positives per scan over a grid, the way nnU-Net picks its postprocessing on
validation folds. The weights are not modified; the choice goes into tune.json, which
`python -m napari_nstseg.recipes.bundle_weights --postprocess` writes into the bundle.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from napari_nstseg.inference.prediction import binarize_probability
from napari_nstseg.metrics import label_lesions
from napari_nstseg.postprocess import (
    PostprocessConfig,
    below_limit,
    component_centres,
    component_depths_mm,
    component_diameters_mm,
)
from napari_nstseg.training.evaluate import (
    engine_for_split,
    match_table_rows,
    read_lesion_table,
    results_folder,
)
from napari_nstseg.training.organ_eval import OrganEval, OrganScoring, in_zone
from napari_nstseg.training.targets import TARGET_NAME, target_lesion

OBJECTIVES = ("sensitivity", "dice")
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.30 + 0.05 * k, 2) for k in range(14))
DEFAULT_MIN_LESION_MM: tuple[float, ...] = (0.0, 3.0, 5.0, 7.0, 10.0)
# 4 mm: two slices of a 3 mm scan, three of a 1.5 mm one; 10 mm: a 10 mm lesion's own depth.
DEFAULT_MIN_DEPTH_MM: tuple[float, ...] = (0.0, 4.0, 7.0, 10.0)
# Organ mode's centre rule: a lesion's centre in the organ (0) or within a few mm of it; None:
# anywhere in the searched zone (the organs grown by the margin), organ mode without the rule.
DEFAULT_CENTRE_MM: tuple[float | None, ...] = (0.0, 2.0, 5.0, None)
GRID_COLUMNS = (
    "threshold",
    "min_lesion_mm",
    "min_depth_mm",
    "centre_mm",
    "scans",
    "lesions",
    "detected",
    "sensitivity",
    "target_lesions",
    "target_detected",
    "target_sensitivity",
    "false_positives",
    "fp_per_scan",
    "mean_dice",
)


@dataclass(frozen=True)
class TuneConfig:
    """The grid (probability thresholds x minimum lesion sizes x minimum depths, both in mm; in
    organ mode also x ``centre_mm``, how far from the organ a kept lesion's centre may lie),
    the false-positive budget
    per scan, the detection rule (``min_dice`` as in `nstseg evaluate`) and the engine's device,
    batch and test-time mirroring; ``split_file`` a fixed split by case (as for training).
    ``objective``: what the choice maximises within the budget: lesion ``sensitivity`` (many
    small lesions per scan) or mean per-patient ``dice`` (one delineated tumour per patient)."""

    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    min_lesion_mm: tuple[float, ...] = DEFAULT_MIN_LESION_MM
    min_depth_mm: tuple[float, ...] = DEFAULT_MIN_DEPTH_MM
    centre_mm: tuple[float | None, ...] = DEFAULT_CENTRE_MM
    max_fp_per_scan: float = 2.0
    min_dice: float = 0.1
    device: str = "auto"
    batch_size: int = 4
    mirror: bool = False
    split_file: str | None = None
    objective: str = "sensitivity"
    organs: OrganEval | None = None  # organ mode: predict and count inside the organs only

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}"
            )
        if not self.thresholds or not self.min_lesion_mm or not self.min_depth_mm:
            raise ValueError(
                "the grid needs at least one threshold, minimum lesion size and minimum depth"
            )
        for t in self.thresholds:
            for m in self.min_lesion_mm:
                for d in self.min_depth_mm:
                    PostprocessConfig(t, m, d)  # every grid point must be a valid point
        if not self.max_fp_per_scan >= 0:
            raise ValueError(f"max_fp_per_scan must be 0 or more, got {self.max_fp_per_scan!r}")
        object.__setattr__(self, "thresholds", tuple(sorted({float(t) for t in self.thresholds})))
        for name in ("min_lesion_mm", "min_depth_mm"):
            object.__setattr__(self, name, tuple(sorted({float(m) for m in getattr(self, name)})))
        if not self.centre_mm:
            raise ValueError("the grid needs at least one centre_mm (None: no centre rule)")
        centres = {None if c is None else float(c) for c in self.centre_mm}
        if any(c is not None and not (math.isfinite(c) and c >= 0) for c in centres):
            raise ValueError(
                f"centre_mm values must be 0 mm or more (or None), got {self.centre_mm}"
            )
        finite = sorted(c for c in centres if c is not None)
        object.__setattr__(self, "centre_mm", (*finite, *([None] if None in centres else [])))


def sweep_case(
    final: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float],
    thresholds: Sequence[float],
    sizes_mm: Sequence[float],
    min_dice: float = 0.1,
    targets: Sequence[int] = (),
    depths_mm: Sequence[float] = (0.0,),
    counted: Sequence[int] | None = None,
    centre_zones: Sequence[tuple[float | None, np.ndarray | None]] = ((None, None),),
) -> dict[tuple[float, float, float, float | None], dict[str, int]]:
    """Detection counts of one scan at every (threshold, minimum size, minimum depth, centre
    rule) of the grid.

    ``final``: the stored final probability (uint8 0..255 or float 0..1); ``gt``: the lesion
    mask; ``targets``: ground-truth component indices (0-based, in ``label_lesions`` order)
    counted as target lesions, once per entry. The rules are `nstseg evaluate`'s on the mask
    the engine makes at that operating point: 26-connected components, a lesion is detected
    when the kept components touching it reach ``min_dice``, a kept component touching no lesion
    is a false positive. Components are labelled and measured once per threshold; the sizes
    and depths (slices spanned x slice spacing; the whole scan is segmented, so every depth is
    known) only filter those measurements. ``counted`` (organ mode): the ground-truth components
    (0-based) counted as lesions, the others (outside the searched zone) neither counted nor,
    when a kept component touches them, a false positive; None: all. ``centre_zones``: (centre
    rule in mm, the zone a kept component's centre must lie in) pairs (organ mode); a zone of
    None keeps every component.
    """
    sp = tuple(float(s) for s in spacing)
    gt_labels, n_gt = label_lesions(np.asarray(gt) > 0)
    gt_sizes = np.bincount(gt_labels.ravel(), minlength=n_gt + 1).astype(np.float64)
    targets = np.asarray(list(targets), dtype=np.intp) + 1
    scored = np.zeros(n_gt + 1, bool)
    scored[1:] = True
    if counted is not None:
        scored[1:] = False
        scored[np.asarray(list(counted), dtype=np.intp) + 1] = True
    positive = [m for m in sizes_mm if m > 0]
    out: dict[tuple[float, float, float, float | None], dict[str, int]] = {}
    for t in thresholds:
        labels, n = label_lesions(binarize_probability(final, t))
        boxes = ndimage.find_objects(labels, max_label=n)
        centred = _centred(labels, n, centre_zones)
        below = min(positive) if positive else None
        diam = np.concatenate([[0.0], component_diameters_mm(labels, boxes, sp[1:], below)])
        depth = np.concatenate([[0.0], component_depths_mm(boxes, sp[0])])
        sizes = np.bincount(labels.ravel(), minlength=n + 1).astype(np.float64)
        both = (labels > 0) & (gt_labels > 0)
        pairs, inter = np.unique(
            labels[both].astype(np.int64) * (n_gt + 1) + gt_labels[both], return_counts=True
        )
        p_ids, g_ids = pairs // (n_gt + 1), pairs % (n_gt + 1)
        touches = np.zeros(n + 1, bool)
        touches[p_ids] = True
        for m, d, (c, inside) in ((m, d, c) for m in sizes_mm for d in depths_mm for c in centred):
            kept = ~below_limit(diam, m) & ~below_limit(depth, d) & inside
            kept[0] = False
            sel = kept[p_ids]
            g = g_ids[sel]
            overlap = np.bincount(g, weights=inter[sel], minlength=n_gt + 1)
            predicted = np.bincount(g, weights=sizes[p_ids[sel]], minlength=n_gt + 1)
            touched = np.bincount(g, minlength=n_gt + 1) > 0
            with np.errstate(invalid="ignore", divide="ignore"):
                dice = 2.0 * overlap / (predicted + gt_sizes)
            detected = touched & (dice >= min_dice)
            detected[0] = False
            kept_voxels = float(sizes[1:][kept[1:]].sum())
            kept_overlap = float(inter[sel].sum())
            out[(float(t), float(m), float(d), c)] = {
                # Volume Dice of the kept mask, x 1e6 so the counts stay integers to sum.
                "dice_e6": _dice_e6(kept_overlap, kept_voxels, float(gt_sizes[1:].sum())),
                "lesions": int(scored.sum()),
                "detected": int((detected & scored).sum()),
                "target_lesions": int(targets.size),
                "target_detected": int(detected[targets].sum()) if targets.size else 0,
                "false_positives": int(np.count_nonzero(kept & ~touches)),
            }
    return out


def _centred(
    labels: np.ndarray, n: int, centre_zones: Sequence[tuple[float | None, np.ndarray | None]]
) -> list[tuple[float | None, np.ndarray]]:
    """(centre rule, per component 0..n whether it may be kept) for each rule: components
    1..n whose centre of mass (nearest voxel) lies in the rule's zone."""
    out = []
    centres = None
    for c, zone in centre_zones:
        ok = np.ones(n + 1, bool)
        if zone is not None and n:
            if centres is None:
                centres = component_centres(labels, n)
            ok[1:] = zone[tuple(centres.T)]
        out.append((None if c is None else float(c), ok))
    return out


def _dice_e6(overlap: float, predicted: float, truth: float) -> int:
    """Dice x 1e6 (metrics' rule: both empty is 1, one empty is 0)."""
    if predicted + truth == 0:
        return 1_000_000
    return int(round(2e6 * overlap / (predicted + truth)))


def grid_rows(
    per_case: Sequence[dict[tuple[float, float], dict[str, int]]],
) -> list[dict[str, Any]]:
    """Sum the per-scan counts of :func:`sweep_case` into one row per grid point."""
    if not per_case:
        raise ValueError("no scans to tune on")
    rows = []
    for point in per_case[0]:
        total = {k: sum(c[point][k] for c in per_case) for k in per_case[0][point]}
        scans = len(per_case)
        rows.append(
            {
                "threshold": point[0],
                "min_lesion_mm": point[1],
                "min_depth_mm": point[2],
                "centre_mm": point[3] if len(point) > 3 else None,
                "scans": scans,
                **total,
                "sensitivity": _ratio(total["detected"], total["lesions"]),
                "target_sensitivity": _ratio(total["target_detected"], total["target_lesions"]),
                "fp_per_scan": total["false_positives"] / scans,
                "mean_dice": total["dice_e6"] / 1e6 / scans,
            }
        )
    return rows


def _ratio(a: int, b: int) -> float:
    return a / b if b else float("nan")


def choose_operating_point(
    rows: Sequence[dict[str, Any]], max_fp_per_scan: float, objective: str = "sensitivity"
) -> tuple[dict[str, Any], str, str]:
    """The grid point to ship: (row, criterion, note).

    Among points with at most ``max_fp_per_scan`` false positives per scan, the highest
    sensitivity for lesions >= 10 mm and >= 20 HU (all lesions when the data has none of
    those); ties go to fewer false positives, then to the higher all-lesion sensitivity, then to
    the smaller minimum size and depth and the lower threshold (the point that hides the
    least); where no grid point finds any of those, the all-lesion sensitivity decides. When no
    point keeps to the budget, or those that do find none of the lesions, the point with the
    fewest false positives among those that find some (ties: the most sensitive), and the note
    says so. With ``objective="dice"`` the mean per-patient volume
    Dice takes the place of the target sensitivity.
    """
    if not rows:
        raise ValueError("the grid is empty")
    if rows[0]["lesions"] == 0:
        raise ValueError(
            "the split has no ground-truth lesion, so sensitivity cannot be measured; tune on "
            "a split with lesions"
        )
    use_target = rows[0]["target_lesions"] > 0
    key = "target_sensitivity" if use_target else "sensitivity"
    criterion = (
        f"sensitivity for lesions {TARGET_NAME}"
        if use_target
        else f"sensitivity over all lesions (no lesion {TARGET_NAME} in lesions.csv)"
    )
    if use_target and not any(r["target_detected"] > 0 for r in rows):
        # A few target lesions that no point finds cannot rank the grid; the rest can.
        key = "sensitivity"
        criterion = (
            f"sensitivity over all lesions (no grid point finds any of the "
            f"{rows[0]['target_lesions']} lesions {TARGET_NAME})"
        )
    if objective == "dice":
        key, criterion = "mean_dice", "mean per-patient Dice"

    def rank(r: dict[str, Any]) -> tuple:
        return (
            -r[key],
            r["fp_per_scan"],
            -r["sensitivity"],
            r["min_lesion_mm"],
            r.get("min_depth_mm", 0.0),
            # the point that hides the least: a wider centre rule, None (no rule) widest
            -(math.inf if r.get("centre_mm") is None else r["centre_mm"]),
            r["threshold"],
        )

    within = [r for r in rows if r["fp_per_scan"] <= max_fp_per_scan + 1e-12]
    # A point that keeps to the budget by finding nothing is no operating point for a reader.
    if within and min(within, key=rank)[key] > 0:
        best = min(within, key=rank)
        note = (
            f"highest {criterion} with at most {max_fp_per_scan:g} false positives per scan: "
            f"{best[key]:.3f} at {best['fp_per_scan']:.2f} per scan"
        )
        return best, criterion, note
    finding = [r for r in rows if r[key] > 0]
    if within and finding:
        best = min(finding, key=lambda r: (r["fp_per_scan"], *rank(r)))
        note = (
            f"every grid point with at most {max_fp_per_scan:g} false positives per scan misses "
            f"all of them ({criterion} 0); chose the point with the fewest false positives that "
            f"still finds some: {best[key]:.3f} at {best['fp_per_scan']:.2f} per scan."
        )
        return best, criterion, note
    best = min(rows, key=lambda r: (r["fp_per_scan"], *rank(r)))
    failing = (
        f"NO grid point finds any of them ({criterion} 0)"
        if within
        else f"NO grid point keeps to {max_fp_per_scan:g} false positives per scan"
    )
    note = (
        f"{failing}; chose the one with the fewest false positives, "
        f"{best['fp_per_scan']:.2f} per scan ({criterion} {best[key]:.3f}). "
        "Consider higher thresholds, larger minimum sizes or depths, or a better model."
    )
    return best, criterion, note


def tune_postprocess(
    weights: str | Path,
    data_folder: str | Path,
    split: str = "val",
    out: str | Path | None = None,
    config: TuneConfig | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Predict each case of ``split`` once, sweep the grid, choose; writes tune.csv and
    tune.json (default folder: ``<checkpoint folder>/tune_<split>``) and returns the result."""
    from napari_nstseg.training.cases import foreground, load_case

    cfg = config or TuneConfig()
    engine, cases, label_values = engine_for_split(
        weights,
        data_folder,
        split,
        cfg.device,
        cfg.batch_size,
        mirror=cfg.mirror,
        split_file=cfg.split_file,
    )
    table = read_lesion_table(data_folder)
    organs = OrganScoring(cfg.organs, data_folder, engine.meta) if cfg.organs else None
    if organs is not None:
        organs.check(cases)
    outside = 0
    per_case = []
    for case in cases:
        counted = None
        centre_zones: list[tuple[float | None, np.ndarray | None]] = [(None, None)]
        if organs is None:
            hu, labels, spacing = load_case(case)
            # Only the stored probability is swept; the engine's own mask is not needed.
            final = engine.predict(hu, spacing).final
        else:
            scored = organs.predict_case(engine, case)
            if scored is None:  # holds none of the organs: organ mode has nothing to score
                continue
            hu, labels, spacing, pred, zone = scored
            final = pred.final
            centre_zones = organs.centre_zones(case, cfg.centre_mm)
        gt = foreground(labels, label_values)
        if case.slices is not None:
            # A corrections store's case: only its labelled slices say tumour or not, so the
            # sweep sees nothing elsewhere (evaluate.score_case scores it the same way).
            unlabelled = np.ones(gt.shape[0], bool)
            unlabelled[list(case.slices)] = False
            final = np.array(final, copy=True)
            final[unlabelled] = 0
            gt = gt.copy()
            gt[unlabelled] = False
        gt_labels, n_gt = label_lesions(gt)
        centroids = ndimage.center_of_mass(gt_labels > 0, gt_labels, range(1, n_gt + 1))
        if organs is not None:  # lesions centred outside the zone are counted apart
            counted = [k for k, ok in enumerate(in_zone(centroids, zone)) if ok]
            outside += n_gt - len(counted)
        targets: list[int] = []
        rows = table.get(case.case_id, [])
        if rows:
            for row, k in zip(rows, match_table_rows(rows, centroids, spacing), strict=True):
                if k is not None and target_lesion(row) and (counted is None or k in counted):
                    targets.append(k)
        per_case.append(
            sweep_case(
                final,
                gt,
                spacing,
                cfg.thresholds,
                cfg.min_lesion_mm,
                cfg.min_dice,
                targets,
                cfg.min_depth_mm,
                counted,
                centre_zones,
            )
        )
        if verbose:
            print(f"  {case.case_id}: predicted and swept", flush=True)
    grid = grid_rows(per_case)
    best, criterion, note = choose_operating_point(grid, cfg.max_fp_per_scan, cfg.objective)
    chosen = PostprocessConfig(best["threshold"], best["min_lesion_mm"], best["min_depth_mm"])
    result: dict[str, Any] = {
        "weights": str(Path(weights).resolve()),
        "data": str(Path(data_folder).resolve()),
        "split": split,
        "max_fp_per_scan": cfg.max_fp_per_scan,
        "objective": cfg.objective,
        "min_dice": cfg.min_dice,
        # An operating point chosen on mirrored predictions belongs with mirrored runs.
        "mirror": cfg.mirror,
        "criterion": criterion,
        "met_fp_limit": best["fp_per_scan"] <= cfg.max_fp_per_scan + 1e-12,
        "note": note,
        "postprocess": chosen.to_dict(),
        **({"organ_search": {"centre_mm": best["centre_mm"]}} if organs is not None else {}),
        "choice": best,
        "grid": grid,
    }
    if organs is not None:
        # The grid's figures are in-organ; the lesions it leaves out are counted here.
        result["organs"] = {
            **{k: v for k, v in organs.results().items() if k in ORGAN_KEYS},
            "scans": len(per_case),
            "scans_without_organs": list(organs.without_organs),
            "lesions_outside_zone": outside,
        }
    out_dir = results_folder(weights, out, "tune", split)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "tune.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*GRID_COLUMNS, "chosen"])
        writer.writeheader()
        for r in grid:
            writer.writerow({**{k: r[k] for k in GRID_COLUMNS}, "chosen": int(r is best)})
    (out_dir / "tune.json").write_text(json.dumps(_no_nan(result), indent=1) + "\n")
    result["files"] = {name: str(out_dir / name) for name in ("tune.csv", "tune.json")}
    if verbose:
        print(format_grid(result))
    return result


ORGAN_KEYS = ("labels", "names", "margin_mm", "zoom_limits")


def tuned_organ_search(tune_json: str | Path) -> dict[str, Any]:
    """The organ-mode search settings a tune.json chose (``centre_mm``, the centre rule), as
    :func:`tune_postprocess` writes them; {} for a whole-scan tune."""
    return dict(json.loads(Path(tune_json).read_text()).get("organ_search") or {})


def _no_nan(value: Any) -> Any:
    """NaN (a sensitivity without lesions) as JSON null, so tune.json is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_no_nan(v) for v in value]
    return value


def format_grid(result: dict[str, Any]) -> str:
    """The sweep as a text table, the chosen point marked with '*', then the choice."""
    organ_mode = bool(result.get("organs"))
    head = ["", "threshold", "min mm", "depth mm", "sens. all", "sens. target", "FP/scan", "Dice"]
    if organ_mode:
        head.insert(4, "centre mm")
    body = []
    choice = result["choice"]
    for r in result["grid"]:
        row = [
            "*" if r is choice else "",
            f"{r['threshold']:.2f}",
            f"{r['min_lesion_mm']:g}",
            f"{r['min_depth_mm']:g}",
            _fmt(r["sensitivity"], r["detected"], r["lesions"]),
            _fmt(r["target_sensitivity"], r["target_detected"], r["target_lesions"]),
            f"{r['fp_per_scan']:.2f}",
            f"{r['mean_dice']:.3f}" if "mean_dice" in r else "-",
        ]
        if organ_mode:
            row.insert(4, "-" if r.get("centre_mm") is None else f"{r['centre_mm']:g}")
        body.append(row)
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    point = result["postprocess"]
    if result.get("organs"):
        o = result["organs"]
        names = ", ".join(f"{v} ({n})" for v, n in zip(o["labels"], o["names"], strict=True))
        lines.append(
            f"inside organs {names} + {o['margin_mm']:g} mm (sensitivity and FP/scan in-organ); "
            f"{o['lesions_outside_zone']} lesion(s) outside the searched zone not counted"
        )
    centre = (result.get("organ_search") or {}).get("centre_mm")
    rule = "" if not organ_mode else (
        ", lesions centred anywhere in the zone" if centre is None
        else f", lesions centred within {centre:g} mm of the organ"
    )  # fmt: skip
    lines.append(
        f"chosen: threshold {point['threshold']:g}, min lesion {point['min_lesion_mm']:g} mm, "
        f"min depth {point['min_depth_mm']:g} mm{rule} ({result['split']} split). "
        f"{result['note']}"
    )
    return "\n".join(lines)


def _fmt(value: float, hit: int, n: int) -> str:
    if n == 0 or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f} ({hit}/{n})"
