"""Widget-side tables: paper metrics (000/004) of a mask against ground truth, and lesion sizes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_nstseg import metrics

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
