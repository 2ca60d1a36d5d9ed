"""Lesion-level operating point (threshold + smallest reported lesion, as nnU-Net ships its
postprocessing choice) and the removal of lesions below a RECIST-style size or seen on too few
slices."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, astuple, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from napari_nstseg.metrics import label_lesions, longest_axial_diameter_mm


@dataclass(frozen=True)
class PostprocessConfig:
    """Operating point: tumor at probability >= ``threshold``, lesions under ``min_lesion_mm``
    (longest axial diameter) dropped, and lesions spanning less than ``min_depth_mm`` along z
    (slices x slice spacing: 4 mm asks for 2 slices of a 3 mm scan, 3 of a 1.5 mm one) dropped,
    the rule by which CT detection systems discard what a single slice shows."""

    threshold: float = 0.5
    min_lesion_mm: float = 0.0
    min_depth_mm: float = 0.0

    def __post_init__(self) -> None:
        for name in ("threshold", "min_lesion_mm", "min_depth_mm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {self.threshold!r}")
        for name in ("min_lesion_mm", "min_depth_mm"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} must be a size in mm, 0 or more, got {value!r}")

    @property
    def removes_lesions(self) -> bool:
        """Whether this point drops lesions by size or depth (else the mask is the plain cut)."""
        return self.min_lesion_mm > 0 or self.min_depth_mm > 0

    def matches(self, other: PostprocessConfig) -> bool:
        """The same point up to float noise (a spin box's 0.35 against a JSON file's 0.35)."""
        return all(
            math.isclose(a, b, rel_tol=0.0, abs_tol=1e-9)
            for a, b in zip(astuple(self), astuple(other), strict=True)
        )

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PostprocessConfig:
        if not isinstance(d, dict):
            raise ValueError(f"an operating point is a JSON object, got {d!r}")
        unknown = sorted(set(d) - {"threshold", "min_lesion_mm", "min_depth_mm"})
        if unknown:
            raise ValueError(f"unknown operating-point key(s) {', '.join(unknown)}")
        return cls(**d)


def _spacing_zyx(spacing: Sequence[float], ndim: int) -> tuple[float, float, float]:
    sp = tuple(float(s) for s in spacing)
    if ndim == 2 and len(sp) == 2:
        sp = (1.0, *sp)
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(
            f"spacing must be the voxel size (z, y, x) in mm, all positive, got {tuple(spacing)!r}"
        )
    return sp  # type: ignore[return-value]


# Sizes are voxel counts times spacings read from headers as rounded decimals: 3 slices of a
# scan whose header says 2.3333333 mm span 6.9999999 mm, and meet a 7 mm limit as a reader
# means it, so a measure within this of the limit counts as reaching it.
LIMIT_TOLERANCE_MM = 1e-6


def below_limit(sizes_mm: np.ndarray, limit_mm: float) -> np.ndarray:
    """Which of ``sizes_mm`` fall short of ``limit_mm`` (a lesion size or depth limit): the one
    comparison the engine's filter and the operating-point sweep share."""
    return np.asarray(sizes_mm, np.float64) < float(limit_mm) - LIMIT_TOLERANCE_MM


def component_diameters_mm(
    labels: np.ndarray,
    boxes: Sequence[tuple[slice, ...] | None],
    spacing_yx: Sequence[float],
    below: float | None = None,
) -> np.ndarray:
    """Longest axial diameter (mm) of components 1..n of a (z, y, x) label array.

    ``boxes`` is ``ndimage.find_objects(labels)``. With ``below`` (a size limit), a component
    whose in-plane bounding-box diagonal (edge to edge, an upper bound of its Feret diameter) is
    already under it by :func:`below_limit` gets that diagonal instead of the exact diameter:
    enough to know it is smaller, and what keeps thousands of specks cheap.
    """
    sy, sx = (float(s) for s in spacing_yx)
    out = np.zeros(len(boxes), np.float64)
    for i, box in enumerate(boxes):
        if box is None:
            continue
        diagonal = math.hypot(
            (box[-2].stop - box[-2].start) * sy, (box[-1].stop - box[-1].start) * sx
        )
        if below is not None and below_limit(diagonal, below):
            out[i] = diagonal
        else:
            out[i] = longest_axial_diameter_mm(labels[box] == i + 1, (sy, sx))[0]
    return out


def component_depths_mm(boxes: Sequence[tuple[slice, ...] | None], spacing_z: float) -> np.ndarray:
    """Extent along z (mm: slices spanned x slice spacing) of components 1..n, from their
    ``ndimage.find_objects`` boxes; 0 for a label that does not occur."""
    return np.array(
        [0.0 if box is None else (box[0].stop - box[0].start) * float(spacing_z) for box in boxes],
        np.float64,
    )


def remove_small_lesions(
    mask_zyx: np.ndarray,
    spacing_zyx: Sequence[float],
    min_lesion_mm: float,
    slices: Sequence[int] | None = None,
    min_depth_mm: float = 0.0,
) -> np.ndarray:
    """``mask_zyx`` without the lesions whose longest axial diameter is below ``min_lesion_mm``
    or whose extent along z is below ``min_depth_mm``.

    A lesion is a 26-connected 3-D component of ``mask > 0``; its size is the largest in-plane
    Feret diameter over its slices, edge to edge in mm (as the lesion table measures it), its
    depth the number of slices it spans times the slice spacing. ``slices``: only these axial
    slices are looked at and changed (e.g. the finished slices of a cancelled run); the others
    neither join components nor lose voxels, and a lesion reaching a slice next to one of them
    keeps its place whatever its depth (it may go on there). Returns a new array of the mask's
    dtype; both limits 0 return an unchanged copy. A (y, x) mask with a (y, x) spacing is one
    slice, whose depth is never judged.
    """
    mask = np.asarray(mask_zyx)
    if mask.ndim not in (2, 3):
        raise ValueError(f"expected a (z, y, x) mask, got shape {mask.shape}")
    sp = _spacing_zyx(spacing_zyx, mask.ndim)
    point = PostprocessConfig(min_lesion_mm=min_lesion_mm, min_depth_mm=min_depth_mm)
    limit, depth_limit = point.min_lesion_mm, point.min_depth_mm
    if mask.ndim == 2:
        depth_limit = 0.0
    out = mask.copy()
    if (limit == 0.0 and depth_limit == 0.0) or mask.size == 0:
        return out
    volume = out[None] if out.ndim == 2 else out
    if slices is None:
        zs = np.arange(volume.shape[0])
    else:
        zs = np.unique(np.asarray(list(slices), dtype=np.intp))
        if zs.size and not (0 <= zs[0] and zs[-1] < volume.shape[0]):
            raise ValueError(f"slices must lie in 0..{volume.shape[0] - 1}, got {zs.tolist()}")
    if zs.size == 0:
        return out
    z0, z1 = int(zs[0]), int(zs[-1]) + 1
    listed = np.zeros(volume.shape[0], bool)
    listed[zs] = True
    work = volume[z0:z1] > 0
    work[~listed[z0:z1]] = False  # a slice in between that is not ours must not bridge two lesions
    # A slice whose neighbour exists but was not segmented: depth there is not known.
    open_below = np.zeros(volume.shape[0], bool)
    open_above = np.zeros(volume.shape[0], bool)
    open_below[1:] = ~listed[:-1]
    open_above[:-1] = ~listed[1:]
    # Labelling is the cost: only the box around the mask's voxels is labelled.
    crop = []
    for axis in range(3):
        present = np.flatnonzero(work.any(axis=tuple(a for a in range(3) if a != axis)))
        if present.size == 0:
            return out
        crop.append(slice(int(present[0]), int(present[-1]) + 1))
    work = work[tuple(crop)]
    part = volume[z0:z1][tuple(crop)]
    labels, n = label_lesions(work)
    boxes = ndimage.find_objects(labels, max_label=n)
    drop = np.zeros(n, bool)
    if limit > 0:
        drop |= below_limit(component_diameters_mm(labels, boxes, sp[1:], below=limit), limit)
    if depth_limit > 0:
        first = z0 + crop[0].start
        shallow = below_limit(component_depths_mm(boxes, sp[0]), depth_limit)
        for i, box in enumerate(boxes):
            if box is None:
                continue
            lo, hi = first + box[0].start, first + box[0].stop - 1
            measured = not (open_below[lo] or open_above[hi])
            drop[i] |= measured and bool(shallow[i])
    for i in np.flatnonzero(drop):
        box = boxes[i]
        part[box][labels[box] == i + 1] = 0
    return out


def keep_centred_lesions(mask_zyx: np.ndarray, centre_zone: np.ndarray) -> np.ndarray:
    """``mask_zyx`` without the lesions whose centre lies outside ``centre_zone`` (organ mode:
    a lesion of an organ has its centre in the organ or near it, cascade paper 001, while the
    vessels, fat and bowel at an organ's rim only reach into the margin kept around it).

    A lesion is a 26-connected 3-D component of ``mask > 0``; its centre is its centre of mass,
    rounded to the nearest voxel. Returns a new array of the mask's dtype.
    """
    mask = np.asarray(mask_zyx)
    zone = np.asarray(centre_zone, bool)
    if zone.shape != mask.shape:
        raise ValueError(f"the centre zone {zone.shape} and the mask {mask.shape} differ in shape")
    out = mask.copy()
    present = mask > 0
    # Labelling is the cost (the panel re-cuts at every threshold): only the mask's box.
    box = []
    for axis in range(mask.ndim):
        on = np.flatnonzero(present.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if on.size == 0:
            return out
        box.append(slice(int(on[0]), int(on[-1]) + 1))
    box = tuple(box)
    labels, n = label_lesions(present[box])
    far = np.flatnonzero(~zone[box][tuple(component_centres(labels, n).T)]) + 1
    if far.size:
        out[box][np.isin(labels, far)] = 0
    return out


def component_centres(labels: np.ndarray, n: int) -> np.ndarray:
    """(n, 3) voxel indices of components 1..n's centres of mass, rounded to the nearest voxel
    (the centre rule's measure of where a lesion lies)."""
    if n == 0:
        return np.zeros((0, labels.ndim), np.intp)
    com = ndimage.center_of_mass(labels > 0, labels, range(1, n + 1))
    top = np.asarray(labels.shape) - 1
    return np.clip(np.rint(np.asarray(com, np.float64)).astype(np.intp), 0, top)
