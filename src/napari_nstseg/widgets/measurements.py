"""Widget-side tables without Qt: paper metrics (000/004) of a mask against ground truth, lesion
sizes and their CSV export."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_nstseg import metrics

METRIC_NAMES = ("Dice", "IoU", "precision", "recall", "specificity", "S-measure", "E-measure")
# Table row -> key in napari_nstseg.metrics results.
METRIC_KEYS = {
    "Dice": "dice",
    "IoU": "iou",
    "precision": "precision",
    "recall": "recall",
    "specificity": "specificity",
    "S-measure": "s_measure",
    "E-measure": "e_measure",
}


def _volume_structure(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """S- and E-measure of a volume: their mean over the slices where either mask has lesion.

    Both are 2-D measures; slices empty in both masks would only pull the mean towards 1.
    """
    zs = np.flatnonzero(pred.any(axis=(1, 2)) | gt.any(axis=(1, 2)))
    if zs.size == 0:
        return {"s_measure": 1.0, "e_measure": 1.0}
    rows = [metrics.structure_measures(pred[z], gt[z]) for z in zs]
    return {key: float(np.mean([r[key] for r in rows])) for key in ("s_measure", "e_measure")}


def slice_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """{table row: value} on one axial slice (boolean masks)."""
    values = metrics.image_metrics(pred, gt, structure=True)
    return {row: values[key] for row, key in METRIC_KEYS.items()}


def volume_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """{table row: value} on the whole volume: pooled voxel counts, S/E-measure slice means."""
    values = metrics.confusion(pred, gt).metrics()
    values.update(_volume_structure(pred, gt))
    return {row: values[key] for row, key in METRIC_KEYS.items()}


def lesion_rows(mask_zyx: np.ndarray, spacing: Sequence[float]) -> list[dict[str, Any]]:
    """One row per connected lesion: id, volume mL, longest axial diameter mm, slice range."""
    return [
        {
            "id": lesion["label"],
            "volume_ml": float(lesion["volume_ml"]),
            "longest_axial_diameter_mm": float(lesion["longest_axial_diameter_mm"]),
            "slice_range": tuple(lesion["slices"]),
            "slices": f"{lesion['slices'][0]}-{lesion['slices'][1]}",
        }
        for lesion in metrics.measure_lesions(mask_zyx, [abs(float(s)) for s in spacing])
    ]


def write_lesions_csv(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """The lesion table (rows of :func:`lesion_rows`) as CSV at ``path``; raises OSError."""
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["id", "volume_ml", "longest_axial_diameter_mm", "first_slice", "last_slice"]
        )
        for row in rows:
            first, last = row["slice_range"]
            writer.writerow(
                [
                    row["id"],
                    f"{row['volume_ml']:.4f}",
                    f"{row['longest_axial_diameter_mm']:.2f}",
                    first,
                    last,
                ]
            )
    return path


class Scores:
    """The metrics table's values: one slice's, and the volume's kept until an edit or a run
    makes them stale, so stepping through slices stays quick on big scans."""

    def __init__(self) -> None:
        self._volume: dict[str, float] | None = None

    def stale(self) -> None:
        self._volume = None

    def table(
        self, pred: Any, gt: Any, z: int, volume: bool = True
    ) -> dict[str, tuple[float, float]]:
        """{row: (slice ``z``, volume)} of the tumor mask ``pred`` against ``gt`` (Labels
        layers); ``volume=False`` reuses the volume column unless stale. ValueError when the
        two are on different grids."""
        if gt.data.shape != pred.data.shape:
            raise ValueError(
                f"Ground truth {gt.name!r} has shape {tuple(gt.data.shape)}, not the tumor "
                f"mask's {tuple(pred.data.shape)}."
            )
        on_slice = slice_metrics(np.asarray(pred.data[z]) > 0, np.asarray(gt.data[z]) > 0)
        if volume or self._volume is None:
            self._volume = volume_metrics(np.asarray(pred.data) > 0, np.asarray(gt.data) > 0)
        return {name: (on_slice[name], self._volume[name]) for name in METRIC_NAMES}
