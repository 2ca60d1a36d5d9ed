"""Training crops around organs at the engine's zoom (cascade paper 001: look inside the organ;
CL-MSDA 003: at a size-invariant scale), so that weights for organ mode see in training what
`inference/organs.py` shows them: each organ's box grown by the margin, resampled to
``working_spacing / zoom``, with air beyond the box.

The boxes and zooms come from ``inference.organs.organ_boxes`` (one rule for both sides); the
pixel size is the one the engine's resampling gives that box (``preprocessing.working_shape``
of the box at the declared spacing ``spacing * zoom``), taken from the case's cached working
grid with a step of (that pixel size / the cached pixel size): one bilinear resampling more than
the engine does, as every augmented training crop already has.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_nstseg.inference.organs import OrganSearch, organ_boxes
from napari_nstseg.preprocessing import PreprocessConfig, working_shape
from napari_nstseg.training.lesions.config import TOTALSEG_TARGET_ORGANS
from napari_nstseg.training.lesions.dataset import EXCLUDE_DIR, ORGANS_DIR

# Draws of a crop's centre before another slice is tried, when the crop must keep clear of an
# excluded region (a real, unlabelled tumour): a few dozen keep the cost per crop small while
# a region covering much of a slice still leaves its edges to draw from.
EXCLUDE_TRIES = 40


@dataclass(frozen=True)
class OrganCropConfig:
    """The organ-mode search a run trains for, as ``OrganSearch`` takes it at inference:
    ``field_mm`` (the field an organ's box should fill; None: zoom 1), ``min_zoom`` and
    ``max_zoom`` (the limits the checkpoint stores under ``organ_search``), ``margin_mm`` (the
    box around each organ); ``labels``: the organ ids crops are drawn around (None: the target
    organs of lesion insertion, TotalSegmentator ids)."""

    field_mm: float | None = None
    min_zoom: float = 1.0
    max_zoom: float = 1.0
    margin_mm: float = 10.0
    labels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(int(v) for v in self.labels))
        self.search(self.labels or (1,))  # OrganSearch's own checks, one definition

    def search(self, labels: Sequence[int]) -> OrganSearch:
        """The inference-side search over ``labels`` with these settings."""
        return OrganSearch(
            tuple(labels), self.margin_mm, self.field_mm, self.min_zoom, self.max_zoom
        )

    def organ_ids(self) -> tuple[int, ...]:
        return self.labels or tuple(sorted(TOTALSEG_TARGET_ORGANS))

    def metadata(self) -> dict[str, Any]:
        """The checkpoint's ``organ_search`` entry (``OrganSearch.for_weights`` reads it)."""
        return {
            "field_mm": self.field_mm,
            "min_zoom": self.min_zoom,
            "max_zoom": self.max_zoom,
            "margin_mm": self.margin_mm,
        }


@dataclass(frozen=True)
class CropBox:
    """One organ's box on a case's working grid as the engine runs it: slices [z0, z1), rows
    and columns of the cached working grid, the zoom, the engine's pixel size there (mm) and
    the step (cached working pixels per pixel the network sees)."""

    label: int
    z0: int
    z1: int
    rows: tuple[int, int]
    cols: tuple[int, int]
    zoom: float
    pixel_mm: tuple[float, float]
    step_yx: tuple[float, float]

    def holds(self, z: int, y: float, x: float) -> bool:
        r, c = self.rows, self.cols
        return self.z0 <= z < self.z1 and r[0] <= y < r[1] and c[0] <= x < c[1]


def crop_boxes(
    organs: np.ndarray,
    spacing: Sequence[float],
    preprocess: PreprocessConfig,
    cfg: OrganCropConfig,
) -> list[CropBox]:
    """The organ boxes of a label map (native grid, (z, y, x)) on its working grid, each with
    the zoom and pixel size the engine would use for it; [] when it holds none of the organs."""
    present = set(np.unique(organs).tolist())
    labels = [v for v in cfg.organ_ids() if v in present]
    if not labels:
        return []
    sp = [float(s) for s in spacing]
    big = working_shape(organs.shape[1:], sp[1:], preprocess.working_spacing_mm)
    cached_mm = [n * s / m for n, s, m in zip(organs.shape[1:], sp[1:], big, strict=True)]
    out = []
    for ob in organ_boxes(organs, sp, cfg.search(labels)):
        z0, z1, y0, y1, x0, x1 = ob.box
        declared = (sp[1] * ob.zoom, sp[2] * ob.zoom)  # as iter_predict_in_organs declares it
        small = working_shape((y1 - y0, x1 - x0), declared, preprocess.working_spacing_mm)
        pixel = ((y1 - y0) * sp[1] / small[0], (x1 - x0) * sp[2] / small[1])
        scale = [m / n for m, n in zip(big, organs.shape[1:], strict=True)]
        rows = (int(math.floor(y0 * scale[0])), min(big[0], int(math.ceil(y1 * scale[0]))))
        cols = (int(math.floor(x0 * scale[1])), min(big[1], int(math.ceil(x1 * scale[1]))))
        out.append(
            CropBox(
                ob.label, z0, z1, rows, cols, float(ob.zoom), pixel,
                (pixel[0] / cached_mm[0], pixel[1] / cached_mm[1]),
            )
        )  # fmt: skip
    return out


def box_around(
    boxes: Sequence[CropBox], z: int, mask: np.ndarray, rng: np.random.Generator
) -> tuple[CropBox, tuple[int, int]] | None:
    """A box of slice ``z`` holding a lesion pixel of ``mask`` (that slice's lesion, working
    grid), and the pixel; None when the lesion lies in no organ box."""
    ys, xs = np.nonzero(mask)
    fits = [(b, j) for b in boxes for j in range(len(ys)) if b.holds(z, ys[j], xs[j])]
    if not fits:
        return None
    b, j = fits[int(rng.integers(len(fits)))]
    return b, (int(ys[j]), int(xs[j]))


def centre_in_box(box: CropBox, rng: np.random.Generator) -> tuple[int, tuple[float, float]]:
    """A slice and an in-plane centre drawn uniformly inside the box (working grid)."""
    z = int(rng.integers(box.z0, box.z1))
    return z, (rng.uniform(box.rows[0], box.rows[1] - 1), rng.uniform(box.cols[0], box.cols[1] - 1))


def cut_to_box(planes: np.ndarray, mask: np.ndarray, box: CropBox, centre: Sequence[float]):
    """The box's part of a slice's planes and mask, and the centre in it: what the engine
    gives the network (beyond the box it pads with air, as the crop's sampler does)."""
    (r0, r1), (c0, c1) = box.rows, box.cols
    return (
        planes[..., r0:r1, c0:c1],
        mask[r0:r1, c0:c1],
        (centre[0] - r0, centre[1] - c0),
    )


def side_map_path(case, folder_name: str) -> Path:
    """``<set>/<folder_name>/<case>.nii.gz`` for a case of an MSD-layout set (imagesTr)."""
    return Path(case.image).parent.parent / folder_name / f"{case.case_id}.nii.gz"


def read_side_maps(case, shape: Sequence[int]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """A case's organ label map and excluded region (bool) from organsTr and excludeTr beside
    its image, each None when the set has none for it; on the case's grid or an error."""
    from napari_nstseg.io.readers import read_mask

    out = []
    for name in (ORGANS_DIR, EXCLUDE_DIR):
        path = side_map_path(case, name)
        data = read_mask(path) if path.is_file() else None
        if data is not None and tuple(data.shape) != tuple(shape):
            raise ValueError(
                f"{path}: {tuple(data.shape)} voxels, the case's CT {tuple(shape)}; it must lie "
                "on the case's grid (make-lesions writes it so)"
            )
        out.append(data)
    organs, exclude = out
    return organs, None if exclude is None else exclude > 0
