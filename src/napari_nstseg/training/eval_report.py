"""Writing an evaluation (training/evaluate.py's result): the summary rows, the CSV and JSON
files beside it, and the table `nstseg evaluate` prints."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from napari_nstseg.metrics import PIXEL_METRICS, STRUCTURE_METRICS
from napari_nstseg.training.lesions.regions import format_regions
from napari_nstseg.training.organ_eval import format_organs, organ_rows
from napari_nstseg.training.targets import TARGET_NAME

METRIC_COLUMNS = PIXEL_METRICS + STRUCTURE_METRICS


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Flat rows (section, group, n, metrics...) of an evaluation result, for CSV and tables."""
    rows = []
    pixel = result["pixel"]
    for section in ("groups", "by_diameter"):
        for group, values in pixel[section].items():
            rows.append(
                {
                    "section": f"slices {'area' if section == 'groups' else 'diameter'}",
                    "group": group,
                    "n": values["images"],
                    **{k: values.get(k) for k in METRIC_COLUMNS},
                }
            )
    rows.append(
        {"section": "slices pooled", "group": "all", "n": pixel["images"], **pixel["pooled"]}
    )
    vol = result["volume"]
    rows.append(
        {
            "section": "volume",
            "group": "per-scan mean",
            "n": vol["cases"],
            **{k: vol.get(k) for k in METRIC_COLUMNS if k in vol},
            "hd95_mm": vol.get("hd95_mm"),
        }
    )
    if "dice_median" in vol:  # evaluations from before per-patient medians lack it
        rows.append(
            {
                "section": "volume",
                "group": "per-scan median",
                "n": vol["cases"],
                "dice": vol["dice_median"],
                "hd95_mm": vol.get("hd95_mm_median"),
            }
        )
        rows.append(
            {
                "section": "scans",
                "group": "tumour found",
                "n": vol["scans_with_tumour"],
                "sensitivity": vol["scans_detected"] / max(vol["scans_with_tumour"], 1),
                "fp_per_scan": vol["fp_per_scan"],
            }
        )
    det = result["detection"]
    rows.append(
        {
            "section": "detection",
            "group": "all",
            "n": det["lesions"],
            "sensitivity": det["sensitivity"],
            "fp_per_scan": det["fp_per_scan"],
        }
    )
    for group, values in det["by_diameter"].items():
        rows.append(
            {
                "section": "detection diameter",
                "group": group,
                "n": values["lesions"],
                "sensitivity": values["sensitivity"],
            }
        )
    table = result.get("lesions_by_table")
    if table:
        for group, values in table.items():
            if group in (
                "by_diameter",
                "by_contrast",
                "by_polarity",
                "by_organ",
                "by_surroundings",
            ):
                section = f"lesions.csv {group[3:]}"
            elif group == "target_by_polarity":
                section = f"lesions.csv {TARGET_NAME}"
            elif group == "target_by_surroundings":
                section = f"lesions.csv {TARGET_NAME} surroundings"
            else:
                section = None
            if section:
                for sub, v in values.items():
                    rows.append(
                        {
                            "section": section,
                            "group": sub,
                            "n": v["lesions"],
                            "sensitivity": v["sensitivity"],
                        }
                    )
            else:
                rows.append(
                    {
                        "section": "lesions.csv",
                        "group": group,
                        "n": values["lesions"],
                        "sensitivity": values["sensitivity"],
                    }
                )
    for name, r in (result.get("by_region") or {}).items():
        rows.append(
            {
                "section": "detection region",
                "group": name,
                "n": r["lesions"],
                "sensitivity": r["sensitivity"],
                "fp_per_scan": r["fp_per_scan"],
            }
        )
    return rows + organ_rows(result.get("organs"))


SUMMARY_COLUMNS = (
    "section", "group", "n", *METRIC_COLUMNS, "hd95_mm", "sensitivity", "fp_per_scan"
)  # fmt: skip


def write_results(
    result: dict[str, Any],
    case_rows: list[dict[str, Any]],
    lesion_rows: list[dict[str, Any]],
    out_dir: Path,
) -> None:
    """evaluation.json, evaluation.csv, cases.csv and lesions.csv in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "evaluation.json").write_text(
        json.dumps({**result, "cases": case_rows, "lesions": lesion_rows}, indent=1, default=str)
        + "\n"
    )
    _write_csv(out_dir / "evaluation.csv", SUMMARY_COLUMNS, summary_rows(result))
    if case_rows:
        _write_csv(out_dir / "cases.csv", list(case_rows[0]), case_rows)
    lesion_columns = (
        "case",
        "lesion_id",
        "diameter_mm",
        "contrast_hu",
        "organ",
        "surround_soft",
        "matched",
        "detected",
        "dice",
        "centre_zyx",
    )
    _write_csv(out_dir / "lesions.csv", lesion_columns, lesion_rows)


def _write_csv(path: Path, columns: Sequence[str], rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in columns})


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return " ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in value)
    return "" if value is None else value


def format_table(result: dict[str, Any]) -> str:
    """The evaluation as a fixed-width text table (what `nstseg evaluate` prints)."""
    shown = (
        "dice",
        "iou",
        "precision",
        "recall",
        "specificity",
        "f2",
        "mae",
        "s_measure",
        "e_measure",
        "hd95_mm",
        "sensitivity",
        "fp_per_scan",
    )
    rows = summary_rows(result)
    head = ["section", "group", "n", *shown]
    body = [
        [str(r.get("section", "")), str(r.get("group", "")), str(r.get("n", ""))]
        + [_short(r.get(k)) for k in shown]
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    point = result.get("postprocess")
    at = (
        f" at threshold {point['threshold']:g}, min lesion {point['min_lesion_mm']:g} mm, "
        f"min depth {point.get('min_depth_mm', 0.0):g} mm"
        if point
        else ""
    )
    lines = [
        f"{result['model'].get('variant') or result['model']['arch']} on "
        f"{Path(result['data']).name} [{result['split']}]{at}",
        "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    if result.get("organs"):
        lines += format_organs(result["organs"])
    if result.get("by_region"):
        lines.append("by source region (copies of one z-block share its anatomy):")
        lines += [f"  {line}" for line in format_regions(result["by_region"])]
    return "\n".join(lines)


def _short(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)
