"""Tissue masks and sizes lesion placement measures: the body, bone and opacified vessels (dense
tissue), a support's volume-equivalent and longest axial diameters."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.spatial.distance import cdist


def body_mask(hu_zyx: np.ndarray, threshold_hu: float = -500.0) -> np.ndarray:
    """The patient: largest connected region above ``threshold_hu``, holes filled per slice."""
    above = hu_zyx > threshold_hu
    labels, n = ndimage.label(above)
    if n == 0:
        return above
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == int(np.argmax(sizes))
    for z in range(body.shape[0]):
        body[z] = ndimage.binary_fill_holes(body[z])
    return body


def dense_mask(
    hu_zyx: np.ndarray,
    spacing_zyx,
    threshold_hu: float = 250.0,
    max_hole_mm2: float = 2500.0,
    margin_mm: float = 3.0,
) -> np.ndarray:
    """Bone and opacified vessels: voxels above ``threshold_hu`` with small enclosed holes filled.

    Holes are filled per axial slice only up to ``max_hole_mm2`` so a vertebral body's marrow
    counts as bone while a ring of ribs or pelvis never swallows the soft tissue it encloses.
    """
    dense = hu_zyx > threshold_hu
    pixel_mm2 = float(spacing_zyx[1]) * float(spacing_zyx[2])
    for z in range(dense.shape[0]):
        holes = ndimage.binary_fill_holes(dense[z]) & ~dense[z]
        if not holes.any():
            continue
        labels, n = ndimage.label(holes)
        areas = np.bincount(labels.ravel(), minlength=n + 1) * pixel_mm2
        small = areas <= max_hole_mm2
        small[0] = False
        dense[z] |= small[labels]
    if margin_mm > 0 and dense.any():
        outside = ndimage.distance_transform_edt(~dense, sampling=spacing_zyx)
        dense = outside <= margin_mm
    return dense


def equivalent_diameter_mm(n_voxels: int, spacing_zyx) -> float:
    volume = n_voxels * float(np.prod(spacing_zyx))
    return float((6.0 * volume / np.pi) ** (1.0 / 3.0))


def axial_max_diameter_mm(mask_zyx: np.ndarray, spacing_zyx) -> float:
    """Longest in-plane extent of a mask over its slices, edge to edge, in mm."""
    sy, sx = float(spacing_zyx[1]), float(spacing_zyx[2])
    best = 0.0
    for z in np.flatnonzero(mask_zyx.any(axis=(1, 2))):
        sl = mask_zyx[z]
        edge = sl & ~ndimage.binary_erosion(sl)
        pts = np.argwhere(edge) * np.array([sy, sx])
        d = cdist(pts, pts)
        i, j = np.unravel_index(int(np.argmax(d)), d.shape)
        delta = pts[i] - pts[j]
        length = float(np.linalg.norm(delta))
        # add the voxel's own width along that direction: centre-to-centre -> edge-to-edge
        unit = delta / length if length > 0 else np.array([0.0, 1.0])
        best = max(best, length + abs(unit[0]) * sy + abs(unit[1]) * sx)
    return best
