"""Held-out evaluation of a checkpoint as users get it (the inference engine on whole scans): the
papers' pixel metrics per lesion-size group (SoSegFormer 004), volume Dice, and lesion-level
detection sensitivity and false positives per scan, also per size, contrast, polarity, organ
and surroundings from lesions.csv.
Pixel counts and detection are taken on the post-processed mask (threshold + small lesions
removed, the operating point users get); MAE, S- and E-measure on the probability.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_nstseg.metrics import (
    DetectionResult,
    SliceEvaluator,
    confusion,
    detect_lesions,
    hausdorff95_mm,
    mae,
    summarize_detection,
)
from napari_nstseg.training.cases import cases_of_split, default_label_values, foreground, load_case
from napari_nstseg.training.eval_report import format_table, write_results
from napari_nstseg.training.lesions.regions import RegionTally, read_case_regions
from napari_nstseg.training.organ_eval import OrganEval, OrganScoring
from napari_nstseg.training.targets import TARGET_NAME, target_lesion

POLARITY_NAMES = ("hypodense", "hyperdense")


@dataclass(frozen=True)
class EvalConfig:
    """How to evaluate: the engine's device and batch; the operating point (``threshold``,
    ``min_lesion_mm``, ``min_depth_mm``; None: the weights' recommendation, else 0.5, 0 and 0
    mm); the lesion-size
    bins (mm, longest axial diameter) and the contrast bins (|HU| against the surrounding
    tissue). ``min_dice``: a lesion counts as detected when the predicted components touching
    it reach this Dice with it (0.1 by default, so one huge false region does not "detect"
    everything). ``mirror``: the engine's left-right test-time mirroring (EngineConfig).
    ``surround_soft``: lesions are reported apart by whether the ring around them (lesions.csv
    ``surround_soft_fraction``) is at least this share soft tissue or more of it is fat, gas or
    bone (0.8 splits the test split's lesions >= 10 mm and >= 20 HU about in half).
    ``split_file``: a fixed split by case (as for training) over the folder's own."""

    device: str = "auto"
    batch_size: int = 4
    mirror: bool = False
    threshold: float | None = None
    min_lesion_mm: float | None = None
    min_depth_mm: float | None = None
    structure: bool = True
    min_dice: float = 0.1
    diameter_bins_mm: tuple[float, ...] = (10.0, 20.0)
    contrast_bins_hu: tuple[float, ...] = (20.0, 40.0)
    surround_soft: float = 0.8
    split_file: str | None = None
    organs: OrganEval | None = None  # organ mode: predict inside each case's organs only


def _bin_names(edges: Sequence[float], unit: str) -> list[str]:
    names = [f"<{edges[0]:g} {unit}"]
    names += [f"{a:g}-{b:g} {unit}" for a, b in zip(edges[:-1], edges[1:], strict=True)]
    return names + [f">={edges[-1]:g} {unit}"]


def _bin(value: float, edges: Sequence[float], unit: str) -> str:
    return _bin_names(edges, unit)[int(np.searchsorted(np.asarray(edges), value, "right"))]


def read_lesion_table(folder: str | Path) -> dict[str, list[dict[str, Any]]]:
    """lesions.csv of a lesion dataset (``make-lesions``) by case; empty when there is none."""
    path = Path(folder) / "lesions.csv"
    if not path.is_file():
        return {}
    by_case: dict[str, list[dict[str, Any]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                entry = {
                    "lesion_id": row.get("lesion_id"),
                    "centre_zyx": tuple(float(row[f"centre_{a}"]) for a in "zyx"),
                    "diameter_mm": float(row["diameter_axial_max_mm"]),
                    "contrast_hu": float(row["contrast_measured_hu"]),
                    # make-lesions records the organ a lesion was placed in ('soft tissue'
                    # outside the organ labels); other tables may not.
                    "organ": row.get("organ") or None,
                    # Tables made before make-lesions recorded the surroundings lack it.
                    "surround_soft": _optional_float(row.get("surround_soft_fraction")),
                }
            except (KeyError, ValueError) as exc:
                raise ValueError(
                    f"{path}: row for case {row.get('case')!r} lacks a readable {exc}; "
                    "expected the columns that `nstseg make-lesions` writes."
                ) from None
            by_case.setdefault(row["case"], []).append(entry)
    return by_case


def _optional_float(text: str | None) -> float | None:
    if text in (None, ""):
        return None
    value = float(text)
    return None if math.isnan(value) else value


def match_table_rows(
    table_rows: list[dict[str, Any]],
    centroids_zyx: Sequence[Sequence[float]],
    spacing: Sequence[float],
) -> list[int | None]:
    """For each lesions.csv lesion, the index of the ground-truth component whose centroid
    (voxel coordinates) is nearest, within the lesion's own diameter; None when none is."""
    sp = np.asarray(spacing, dtype=float)
    out: list[int | None] = []
    for les in table_rows:
        best, best_d = None, math.inf
        for k, centroid in enumerate(centroids_zyx):
            d = float(np.linalg.norm((np.asarray(centroid) - les["centre_zyx"]) * sp))
            if d < best_d:
                best, best_d = k, d
        matched = best is not None and best_d <= max(les["diameter_mm"], 2 * float(sp.max()))
        out.append(best if matched else None)
    return out


def _match_table(
    table_rows: list[dict[str, Any]], found: list[dict[str, Any]], spacing: Sequence[float]
) -> list[dict[str, Any]]:
    """Pair each lesions.csv lesion with its ground-truth component (:func:`match_table_rows`),
    so its requested contrast joins its detection result."""
    out = []
    nearest = match_table_rows(table_rows, [c["centroid_zyx"] for c in found], spacing)
    for les, k in zip(table_rows, nearest, strict=True):
        matched = k is not None
        best = found[k] if matched else None
        out.append(
            {
                **les,
                "centre_zyx": list(les["centre_zyx"]),
                "matched": bool(matched),
                "detected": bool(matched and best["detected"]),
                "dice": float(best["dice"]) if matched else 0.0,
                "target": target_lesion(les),
            }
        )
    return out


def _sensitivity(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    hit = sum(1 for r in rows if r["detected"])
    return {"lesions": n, "detected": hit, "sensitivity": hit / n if n else float("nan")}


def _by_polarity(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Sensitivity for lesions darker (hypodense) and brighter (hyperdense) than their shell."""
    return {
        POLARITY_NAMES[0]: _sensitivity([r for r in rows if r["contrast_hu"] < 0]),
        POLARITY_NAMES[1]: _sensitivity([r for r in rows if r["contrast_hu"] > 0]),
    }


def surround_names(edge: float) -> tuple[str, str]:
    """Names of the two surroundings groups at share ``edge`` of soft tissue in the ring."""
    return (f"ring >={edge:.0%} soft tissue", f"ring <{edge:.0%} soft tissue")


def _by_surroundings(rows: list[dict[str, Any]], edge: float) -> dict[str, Any]:
    """Sensitivity for lesions mostly in soft tissue and for those with more fat, gas or bone
    around them (rows without the record are left out)."""
    known = [r for r in rows if r.get("surround_soft") is not None]
    soft, mixed = surround_names(edge)
    return {
        soft: _sensitivity([r for r in known if r["surround_soft"] >= edge]),
        mixed: _sensitivity([r for r in known if r["surround_soft"] < edge]),
    }


def _lesion_groups(rows: list[dict[str, Any]], cfg: EvalConfig) -> dict[str, Any]:
    rows = [r for r in rows if r["matched"]]
    by_size = {
        name: _sensitivity(
            [r for r in rows if _bin(r["diameter_mm"], cfg.diameter_bins_mm, "mm") == name]
        )
        for name in _bin_names(cfg.diameter_bins_mm, "mm")
    }
    by_contrast = {
        name: _sensitivity(
            [r for r in rows if _bin(abs(r["contrast_hu"]), cfg.contrast_bins_hu, "HU") == name]
        )
        for name in _bin_names(cfg.contrast_bins_hu, "HU")
    }
    target = [r for r in rows if target_lesion(r)]
    groups = {
        "all": _sensitivity(rows),
        TARGET_NAME: _sensitivity(target),
        "by_diameter": by_size,
        "by_contrast": by_contrast,
        # Contrast bins are by magnitude; darker and brighter than the tissue around are
        # different tasks (vessels and opacified bowel are bright spots in every scan).
        "by_polarity": _by_polarity(rows),
        "target_by_polarity": _by_polarity(target),
    }
    if any(r.get("surround_soft") is not None for r in rows):
        # A dark lesion against fat looks like fat, whatever its contrast to the tissue beside.
        groups["by_surroundings"] = _by_surroundings(rows, cfg.surround_soft)
        groups["target_by_surroundings"] = _by_surroundings(target, cfg.surround_soft)
    organs = sorted({r["organ"] for r in rows if r.get("organ")})
    if organs:
        groups["by_organ"] = {
            name: _sensitivity([r for r in rows if r.get("organ") == name]) for name in organs
        }
    return groups


def engine_for_split(
    weights: str | Path,
    data_folder: str | Path,
    split: str,
    device: str,
    batch_size: int,
    threshold: float | None = None,
    min_lesion_mm: float | None = None,
    min_depth_mm: float | None = None,
    mirror: bool = False,
    split_file: str | None = None,
):
    """(engine, cases of the split, label values scored as lesion) for scoring a checkpoint;
    the engine keeps only the final probability and the mask."""
    from napari_nstseg.inference.engine import EngineConfig, Segmenter
    from napari_nstseg.inference.prediction import MapRequest

    cases = cases_of_split(data_folder, split, split_file)
    engine = Segmenter.from_checkpoint(
        weights,
        device=device,
        config=EngineConfig(
            batch_size=batch_size,
            threshold=threshold,
            min_lesion_mm=min_lesion_mm,
            min_depth_mm=min_depth_mm,
            maps=MapRequest.minimal(),
            mirror=mirror,
        ),
    )
    trained_labels = (engine.meta.get("provenance") or {}).get("label_values")
    # The same label for every scan: a scan without tumour must not have its organ scored.
    return engine, cases, trained_labels or default_label_values(cases)


def results_folder(weights: str | Path, out: str | Path | None, kind: str, split: str) -> Path:
    """Where a scoring command writes: ``out``, else ``<checkpoint folder>/<kind>_<split>``."""
    return Path(out) if out is not None else Path(weights).resolve().parent / f"{kind}_{split}"


def score_case(
    prob: np.ndarray,
    mask: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float],
    cfg: EvalConfig,
    slices: SliceEvaluator | None = None,
    labelled: Sequence[int] | None = None,
) -> tuple[dict[str, Any], DetectionResult]:
    """Score one scan as users get it: pixel counts and lesion detection on the post-processed
    ``mask``, MAE (and S/E-measure, per slice into ``slices``) on the probability ``prob``.
    ``labelled``: the only slices with a label (a corrections store's case): the others are
    neither tumour nor tumour-free, so the mask is scored on these alone, on the scan's grid."""
    mask = np.asarray(mask) > 0
    zs = range(gt.shape[0]) if labelled is None else sorted(labelled)
    if labelled is not None:
        keep = np.zeros(gt.shape[0], bool)
        keep[list(zs)] = True
        mask = mask & keep[:, None, None]
        gt = np.asarray(gt) & keep[:, None, None]
    if slices is not None:
        for z in zs:
            slices.add(prob[z], gt[z], spacing[1:], mask=mask[z])
    det = detect_lesions(
        mask, gt, spacing, min_dice=cfg.min_dice, diameter_bins_mm=tuple(cfg.diameter_bins_mm)
    )
    row = {
        **confusion(mask, gt).metrics(),
        "mae": mae(prob[list(zs)], gt[list(zs)]),
        "hd95_mm": hausdorff95_mm(mask, gt, spacing),
        "lesions": det.n_lesions,
        "detected": det.n_detected,
        "false_positives": det.false_positives,
    }
    return row, det


def per_scan_summary(case_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-patient figures: mean of each volume metric, median Dice, Hausdorff 95 over the scans
    where it exists, and how many scans with tumour had it found (any lesion detected)."""
    with_tumour = [r for r in case_rows if r["lesions"] > 0]
    hd = [r["hd95_mm"] for r in case_rows if math.isfinite(r["hd95_mm"])]
    keys = ("dice", "iou", "precision", "recall", "specificity", "accuracy", "f1", "f2", "mae")
    return {
        "cases": len(case_rows),
        **{k: float(np.mean([r[k] for r in case_rows])) for k in keys},
        "dice_median": float(np.median([r["dice"] for r in case_rows])),
        "hd95_mm": float(np.mean(hd)) if hd else None,
        "hd95_mm_median": float(np.median(hd)) if hd else None,
        "hd95_cases": len(hd),
        "scans_with_tumour": len(with_tumour),
        "scans_detected": sum(r["detected"] > 0 for r in with_tumour),
        "fp_per_scan": float(np.mean([r["false_positives"] for r in case_rows])),
    }


def evaluate(
    weights: str | Path,
    data_folder: str | Path,
    split: str = "test",
    out: str | Path | None = None,
    config: EvalConfig | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a split of a dataset folder; writes JSON + CSV and returns the dict.

    ``out`` defaults to ``<checkpoint folder>/eval_<split>``. Files: evaluation.json (everything),
    evaluation.csv (one row per metric group), cases.csv (per scan) and lesions.csv (per
    ground-truth lesion: detected, Dice, size and contrast groups).
    """
    cfg = config or EvalConfig()
    engine, cases, label_values = engine_for_split(
        weights,
        data_folder,
        split,
        cfg.device,
        cfg.batch_size,
        cfg.threshold,
        cfg.min_lesion_mm,
        cfg.min_depth_mm,
        cfg.mirror,
        cfg.split_file,
    )
    if cfg.organs is not None:
        engine = engine.for_organs()  # scored, cut and reported at the organ-mode point
    point = engine.postprocess
    table = read_lesion_table(data_folder)
    slices = SliceEvaluator(
        threshold=point.threshold,
        structure=cfg.structure,
        diameter_bins_mm=tuple(cfg.diameter_bins_mm),
    )
    regions = RegionTally(read_case_regions(data_folder))
    organs = OrganScoring(cfg.organs, data_folder, engine.meta) if cfg.organs else None
    if organs is not None:
        organs.check(cases)
    case_rows, detections, lesion_rows = [], [], []
    for case in cases:
        if organs is None:
            hu, labels, spacing = load_case(case)
            pred = engine.predict(hu, spacing)
        else:
            scored = organs.predict_case(engine, case)
            if scored is None:  # holds none of the organs: organ mode has nothing to score
                continue
            hu, labels, spacing, pred, zone = scored
        gt = foreground(labels, label_values)
        row, det = score_case(
            pred.probability("final"), pred.mask, gt, spacing, cfg, slices, case.slices
        )
        matched = (
            _match_table(table[case.case_id], det.lesions, spacing)
            if case.case_id in table
            else None
        )
        regions.add(case.case_id, det, matched)
        if organs is not None:
            organs.add(case.case_id, det, zone, matched)
        # Only the region tally needs where the false positives are; a scan's mask is not kept.
        detections.append(replace(det, false_positive_mask=None))
        case_rows.append({"case": case.case_id, **row})
        if matched is not None:
            for row in matched:
                lesion_rows.append({"case": case.case_id, **row})
        else:
            for les in det.lesions:
                lesion_rows.append(
                    {
                        "case": case.case_id,
                        "lesion_id": les["label"],
                        "centre_zyx": list(les["centroid_zyx"]),
                        "diameter_mm": les["longest_axial_diameter_mm"],
                        "contrast_hu": None,
                        "matched": True,
                        "detected": les["detected"],
                        "dice": les["dice"],
                    }
                )

    pixel = slices.results()
    volume = per_scan_summary(case_rows)
    detection = summarize_detection(detections, tuple(cfg.diameter_bins_mm))
    result: dict[str, Any] = {
        "weights": str(Path(weights).resolve()),
        "data": str(Path(data_folder).resolve()),
        "split": split,
        "config": {**asdict(cfg)},
        # What was scored: the operating point in use and where each value came from
        # ("explicit": the EvalConfig / command line, "weights", or "default").
        "postprocess": {**point.to_dict(), "source": dict(engine.postprocess_sources)},
        "model": {
            "arch": engine.arch,
            "variant": (engine.meta.get("provenance") or {}).get("variant"),
            "model_config": engine.meta.get("model_config"),
        },
        "pixel": pixel,
        "volume": volume,
        "detection": detection,
    }
    if table:
        result["lesions_by_table"] = _lesion_groups(lesion_rows, cfg)
    if regions:
        result["by_region"] = regions.results()
    if organs is not None:
        result["organs"] = organs.results()
    out_dir = results_folder(weights, out, "eval", split)
    write_results(result, case_rows, lesion_rows, out_dir)
    result["files"] = {
        name: str(out_dir / name)
        for name in ("evaluation.json", "evaluation.csv", "cases.csv", "lesions.csv")
    }
    if verbose:
        print(format_table(result))
    return result
