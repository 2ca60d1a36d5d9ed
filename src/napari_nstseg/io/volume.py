"""CTVolume: HU voxels in display order (z, y, x) plus the geometry needed to write back.

Display order is what a radiologist expects on screen: axial slices along the first axis
(inferior to superior), anterior at the top of each slice, the patient's right on the left of
the screen. In LPS world coordinates (DICOM / ITK) that is: array axis 0 runs towards S,
axis 1 towards P and axis 2 towards L.

The display array is only ever a permutation and flip of the file's own voxel array (no
resampling), so a mask drawn on it maps back onto the source grid voxel for voxel. For oblique
scans the nearest anatomical axis is chosen for each array axis.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

# Display axes (z, y, x) point towards these LPS world axes: S = +2, P = +1, L = +0.
_DISPLAY_TO_LPS_AXIS = (2, 1, 0)

METADATA_KEY = "nstseg_geometry"


@dataclass(frozen=True)
class Geometry:
    """Everything needed to map a (z, y, x) display array back onto the source file's grid.

    ``index_to_lps`` maps the source file's voxel index (i, j, k), in the file's own index
    order (nibabel's data order, ITK's x-y-z index order), to LPS millimetres.
    ``display_axes[d]`` is the source index axis shown along display axis d and
    ``display_flips[d]`` says whether it is reversed.
    """

    source_shape: tuple[int, int, int]
    index_to_lps: tuple[tuple[float, ...], ...]
    display_axes: tuple[int, int, int]
    display_flips: tuple[bool, bool, bool]
    source_path: str = ""
    source_format: str = ""  # "nifti", "dicom", "mha", "nrrd", ...
    # NIfTI header codes, so a written mask carries the same qform/sform intent as its scan.
    nifti_qform_code: int = 1
    nifti_sform_code: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_index_to_lps(
        cls, source_shape: tuple[int, ...], index_to_lps: np.ndarray, **kwargs: Any
    ) -> Geometry:
        """Choose the display permutation and flips for a file with this voxel-to-LPS matrix."""
        m = np.asarray(index_to_lps, dtype=float)
        if m.shape != (4, 4):
            raise ValueError(f"index_to_lps must be 4x4, got {m.shape}")
        directions = m[:3, :3] / np.linalg.norm(m[:3, :3], axis=0, keepdims=True)
        axes, flips = _nearest_axes(directions)
        return cls(
            source_shape=tuple(int(s) for s in source_shape),
            index_to_lps=tuple(tuple(float(v) for v in row) for row in m),
            display_axes=axes,
            display_flips=flips,
            **kwargs,
        )

    # -- derived ----------------------------------------------------------------------------
    @property
    def affine_lps(self) -> np.ndarray:
        return np.asarray(self.index_to_lps, dtype=float)

    @property
    def affine_ras(self) -> np.ndarray:
        """Voxel index -> RAS mm, as nibabel writes it."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine_lps

    @property
    def source_spacing(self) -> tuple[float, float, float]:
        """Voxel size along the source index axes (i, j, k) in mm."""
        return tuple(float(v) for v in np.linalg.norm(self.affine_lps[:3, :3], axis=0))

    @property
    def display_shape(self) -> tuple[int, int, int]:
        return tuple(self.source_shape[a] for a in self.display_axes)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along display axes (z, y, x) in mm: the napari layer scale."""
        sp = self.source_spacing
        return tuple(sp[a] for a in self.display_axes)

    @property
    def display_to_lps(self) -> np.ndarray:
        """Display index (z, y, x) -> LPS mm."""
        perm = np.zeros((4, 4))
        perm[3, 3] = 1.0
        for d, (a, flip) in enumerate(zip(self.display_axes, self.display_flips, strict=True)):
            if flip:
                perm[a, d] = -1.0
                perm[a, 3] = self.source_shape[a] - 1
            else:
                perm[a, d] = 1.0
        return self.affine_lps @ perm

    @property
    def translate(self) -> tuple[float, float, float]:
        """napari translate (z, y, x) in mm: the display origin on the S, P, L world axes.

        For scans aligned with the anatomical axes napari's world coordinates are then LPS
        millimetres (axis order S, P, L), so scans of one patient overlay where they should.
        """
        origin = self.display_to_lps[:3, 3]
        return tuple(float(origin[w]) for w in _DISPLAY_TO_LPS_AXIS)

    @property
    def is_oblique(self) -> bool:
        d = self.display_to_lps[:3, :3]
        d = d / np.linalg.norm(d, axis=0, keepdims=True)
        aligned = np.abs(d[list(_DISPLAY_TO_LPS_AXIS), [0, 1, 2]])
        return bool(np.any(aligned < 1 - 1e-4))

    def display_to_index(self, zyx) -> np.ndarray:
        """Display coordinates (z, y, x), fractions allowed, -> the file's voxel index (i, j, k)."""
        ijk = np.zeros(3)
        for d, (a, flip) in enumerate(zip(self.display_axes, self.display_flips, strict=True)):
            value = float(zyx[d])
            ijk[a] = self.source_shape[a] - 1 - value if flip else value
        return ijk

    # -- array mapping ----------------------------------------------------------------------
    def to_display(self, source_array: np.ndarray) -> np.ndarray:
        """Source-index-ordered array (i, j, k) -> display (z, y, x) view."""
        if tuple(source_array.shape[:3]) != self.source_shape:
            raise ValueError(
                f"array of shape {source_array.shape} does not match the source grid "
                f"{self.source_shape}"
            )
        out = np.transpose(source_array, self.display_axes)
        for d, flip in enumerate(self.display_flips):
            if flip:
                out = np.flip(out, axis=d)
        return out

    def to_source(self, display_array: np.ndarray) -> np.ndarray:
        """Display (z, y, x) array -> source-index-ordered (i, j, k) array."""
        if tuple(display_array.shape) != self.display_shape:
            raise ValueError(
                f"mask of shape {tuple(display_array.shape)} does not match the scan's "
                f"shape {self.display_shape} (z, y, x)"
            )
        out = display_array
        for d, flip in enumerate(self.display_flips):
            if flip:
                out = np.flip(out, axis=d)
        return np.transpose(out, np.argsort(self.display_axes))

    # -- serialisation (napari layer metadata must stay plain data) ---------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Geometry:
        return cls(
            source_shape=tuple(d["source_shape"]),
            index_to_lps=tuple(tuple(r) for r in d["index_to_lps"]),
            display_axes=tuple(d["display_axes"]),
            display_flips=tuple(bool(f) for f in d["display_flips"]),
            source_path=d.get("source_path", ""),
            source_format=d.get("source_format", ""),
            nifti_qform_code=int(d.get("nifti_qform_code", 1)),
            nifti_sform_code=int(d.get("nifti_sform_code", 1)),
            extra=dict(d.get("extra", {})),
        )

    @classmethod
    def from_spacing(
        cls,
        shape_zyx: tuple[int, int, int],
        spacing_zyx=(1.0, 1.0, 1.0),
        translate_zyx=(0.0, 0.0, 0.0),
    ) -> Geometry:
        """Geometry for an array with no source file: axis-aligned LPS, display order = index order
        reversed (i = x towards L, j = y towards P, k = z towards S), as ITK stores it."""
        sz, sy, sx = (float(s) for s in spacing_zyx)
        tz, ty, tx = (float(t) for t in translate_zyx)
        m = np.array([[sx, 0, 0, tx], [0, sy, 0, ty], [0, 0, sz, tz], [0, 0, 0, 1.0]])
        z, y, x = (int(s) for s in shape_zyx)
        return cls.from_index_to_lps((x, y, z), m)


@dataclass
class CTVolume:
    """A CT scan in display order: ``hu`` is float32 Hounsfield units, shape (z, y, x)."""

    hu: np.ndarray
    geometry: Geometry
    warnings: list[str] = field(default_factory=list)
    name: str = ""

    def __post_init__(self) -> None:
        if self.hu.ndim != 3:
            raise ValueError(f"CTVolume needs a 3-D array, got {self.hu.ndim}-D")
        if tuple(self.hu.shape) != self.geometry.display_shape:
            raise ValueError(
                f"voxel array {self.hu.shape} does not match geometry {self.geometry.display_shape}"
            )

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (z, y, x) in mm."""
        return self.geometry.spacing

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)

    def layer_metadata(self) -> dict[str, Any]:
        return {METADATA_KEY: self.geometry.to_dict()}


def geometry_from_metadata(metadata: dict[str, Any] | None) -> Geometry | None:
    """The Geometry stored in a napari layer's metadata, or None."""
    if not metadata or METADATA_KEY not in metadata:
        return None
    return Geometry.from_dict(metadata[METADATA_KEY])


def _nearest_axes(directions: np.ndarray) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """For each display axis (towards S, P, L) the source index axis closest to it and its sign.

    Greedy on the largest |cosine| first, so an oblique scan still gets a one-to-one mapping.
    """
    cos = directions.copy()  # rows: LPS world axes, columns: source index axes
    axes = [-1, -1, -1]
    flips = [False, False, False]
    free_world = {0, 1, 2}
    free_index = {0, 1, 2}
    while free_world:
        w, i = max(
            ((w, i) for w in free_world for i in free_index), key=lambda wi: abs(cos[wi[0], wi[1]])
        )
        d = _DISPLAY_TO_LPS_AXIS.index(w)
        axes[d] = i
        flips[d] = bool(cos[w, i] < 0)
        free_world.remove(w)
        free_index.remove(i)
    return tuple(axes), tuple(flips)
