"""Detection per source region of a lesion-insertion set: `nstseg make-lesions` copies each
z-block of a real scan many times with other lesions, so a normal structure the model takes
for tumour recurs in every copy, and one anatomy can make most of a split's false positives.
Per region: sensitivity, false positives per scan, and how many places they come from."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_nstseg.metrics import DetectionResult, label_lesions

# A false-positive site recurs when the model flags it in at least this share of the copies.
RECURRING_SHARE = 0.5


def read_case_regions(folder: str | Path) -> dict[str, str]:
    """Case id -> its source region (``"example_ct.nii.gz z061-092"``, the z-block as the case
    ids name it) from the dataset.json that `nstseg make-lesions` writes; empty for data
    without that record (a user's own scans are each their own anatomy)."""
    path = Path(folder) / "dataset.json"
    try:
        cases = json.loads(path.read_text()).get("cases")
    except (OSError, json.JSONDecodeError, AttributeError):
        return {}  # a missing or broken dataset.json is reported where the cases are read
    if not isinstance(cases, dict):
        return {}
    out = {}
    for case_id, info in cases.items():
        try:
            z0, z1 = (int(z) for z in info["z_range_display"])
            source = Path(str(info["source"])).name
        except (TypeError, KeyError, ValueError):
            continue
        out[str(case_id)] = f"{source} z{z0:03d}-{z1:03d}"
    return out


@dataclass
class _Region:
    scans: int = 0
    lesions: int = 0
    detected: int = 0
    target_lesions: int = 0
    target_detected: int = 0
    false_positives: int = 0
    # Per voxel, in how many copies a false positive covers it (copies share the region's grid).
    fp_copies: np.ndarray | None = None
    same_grid: bool = True


class RegionTally:
    """Detection counts of the scans of each source region, added scan by scan."""

    def __init__(self, regions: dict[str, str]):
        self.regions = dict(regions)
        self._by: dict[str, _Region] = {}

    def __bool__(self) -> bool:
        return bool(self.regions)

    def add(
        self, case_id: str, det: DetectionResult, table_rows: list[dict[str, Any]] | None = None
    ) -> None:
        """One scan's detection; ``table_rows``: its lesions.csv rows after matching (with
        ``matched``, ``detected`` and ``target``), for the target-lesion sensitivity."""
        name = self.regions.get(case_id)
        if name is None:
            return
        r = self._by.setdefault(name, _Region())
        r.scans += 1
        r.lesions += det.n_lesions
        r.detected += det.n_detected
        r.false_positives += det.false_positives
        targets = [row for row in table_rows or () if row["matched"] and row["target"]]
        r.target_lesions += len(targets)
        r.target_detected += sum(1 for row in targets if row["detected"])
        fp = det.false_positive_mask
        if fp is None or not r.same_grid:
            return
        if r.fp_copies is None:
            r.fp_copies = np.zeros(fp.shape, np.uint16)
        elif r.fp_copies.shape != fp.shape:
            r.same_grid, r.fp_copies = False, None
            return
        r.fp_copies += fp.astype(np.uint16)

    def results(self) -> dict[str, dict[str, Any]]:
        """Per region: scans, lesions, detected, sensitivity, the same for target lesions,
        false positives (per scan), and ``recurring_fp_sites``: the 26-connected places
        flagged in at least half of the copies, with ``recurring_fp_share``, the share of all
        false-positive voxels (summed over the copies) that lie there. Both None with a single
        copy or copies on different grids."""
        out = {}
        for name in sorted(self._by):
            r = self._by[name]
            sites, share = None, None
            if r.scans >= 2 and r.fp_copies is not None:
                need = max(2, math.ceil(RECURRING_SHARE * r.scans))
                recurring = r.fp_copies >= need
                sites = label_lesions(recurring)[1]
                total = int(r.fp_copies.sum(dtype=np.int64))
                share = int(r.fp_copies[recurring].sum(dtype=np.int64)) / total if total else 0.0
            out[name] = {
                "scans": r.scans,
                "lesions": r.lesions,
                "detected": r.detected,
                "sensitivity": _ratio(r.detected, r.lesions),
                "target_lesions": r.target_lesions,
                "target_detected": r.target_detected,
                "target_sensitivity": _ratio(r.target_detected, r.target_lesions),
                "false_positives": r.false_positives,
                "fp_per_scan": r.false_positives / r.scans,
                "recurring_fp_sites": sites,
                "recurring_fp_share": share,
            }
        return out


def _ratio(a: int, b: int) -> float:
    return a / b if b else float("nan")


def format_regions(by_region: dict[str, dict[str, Any]]) -> list[str]:
    """One line per region, for the printed evaluation."""
    lines = []
    for name, r in by_region.items():
        target = (
            f", target lesions {r['target_sensitivity']:.3f} "
            f"({r['target_detected']}/{r['target_lesions']})"
            if r["target_lesions"]
            else ""
        )
        sites = (
            f"; {r['recurring_fp_sites']} site(s) flagged in at least half of the copies hold "
            f"{100 * r['recurring_fp_share']:.1f} % of its false-positive voxels"
            if r["recurring_fp_sites"] is not None and r["false_positives"]
            else ""
        )
        found = (
            f"sensitivity {r['sensitivity']:.3f} ({r['detected']}/{r['lesions']})"
            if r["lesions"]
            else "no lesions"
        )
        lines.append(
            f"{name}: {r['scans']} scans, {found}{target}, {r['fp_per_scan']:.2f} false "
            f"positives per scan{sites}"
        )
    return lines
