"""Region-of-interest boxes (from a mask or a drawn rectangle) and the checks of a run's box
and spacing."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from napari_nstseg.inference.prediction import ROI
from napari_nstseg.preprocessing import roi_box


def roi_from_mask(mask_zyx: np.ndarray, spacing: Sequence[float], margin_mm: float = 10.0) -> ROI:
    """ROI box (z0, z1, y0, y1, x0, x1) around ``mask > 0`` plus ``margin_mm`` on every side."""
    box = roi_box(mask_zyx, spacing, margin_mm)
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    return (z0, z1, y0, y1, x0, x1)


def roi_from_corners(
    corners: np.ndarray, shape: Sequence[int], z_range: tuple[int, int] | None = None
) -> ROI:
    """ROI box from rectangle corners in data pixel coordinates, (k, 3) as (z, y, x) or (k, 2)
    as (y, x) (a napari Shapes rectangle); ``z_range`` (start, stop) sets the slices, default
    the corners' own z extent or, for 2-D corners, every slice."""
    pts = np.asarray(corners, dtype=float)
    if pts.ndim != 2 or pts.shape[1] not in (2, 3) or len(pts) == 0:
        raise ValueError(f"rectangle corners must be an array (k, 2) or (k, 3), got {pts.shape}")
    shape = tuple(int(s) for s in shape)
    yx = pts[:, -2:]
    y0, x0 = (max(0, math.floor(v + 0.5)) for v in yx.min(axis=0))
    y1, x1 = (
        min(n, math.floor(v + 0.5) + 1) for v, n in zip(yx.max(axis=0), shape[1:], strict=True)
    )
    if z_range is not None:
        z0, z1 = int(z_range[0]), int(z_range[1])
    elif pts.shape[1] == 3:
        z0 = max(0, math.floor(pts[:, 0].min() + 0.5))
        z1 = min(shape[0], math.floor(pts[:, 0].max() + 0.5) + 1)
    else:
        z0, z1 = 0, shape[0]
    return check_roi((z0, z1, y0, y1, x0, x1), shape)


def check_roi(roi: Sequence[int], shape: tuple[int, int, int]) -> ROI:
    if len(roi) != 6:
        raise ValueError(f"an ROI is (z0, z1, y0, y1, x0, x1), got {tuple(roi)!r}")
    box = tuple(int(v) for v in roi)
    for axis, name in enumerate("zyx"):
        start, stop = box[2 * axis], box[2 * axis + 1]
        if not 0 <= start < stop <= shape[axis]:
            raise ValueError(
                f"the ROI's {name} range {start}:{stop} is empty or outside the volume's "
                f"0:{shape[axis]}"
            )
    return box  # type: ignore[return-value]


def spacing_yx(spacing: Sequence[float]) -> tuple[float, float]:
    sp = tuple(float(s) for s in spacing)
    if len(sp) not in (2, 3) or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(
            f"spacing must be the voxel size (z, y, x) in mm, all positive, got {tuple(spacing)!r}"
        )
    return sp[-2:]


def spacing_zyx(spacing: Sequence[float]) -> tuple[float, float, float]:
    sp_yx = spacing_yx(spacing)
    # Lesion sizes are in-plane: a (y, x) spacing needs no slice thickness.
    return (float(spacing[0]) if len(spacing) == 3 else 1.0, *sp_yx)
