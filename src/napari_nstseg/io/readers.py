"""Open CT scans (any format in io/formats.py) as CTVolumes or label maps in display order.

The table picks the reader (nifti.py through nibabel, itk.py and dicom.py through SimpleITK);
each ends in ``Geometry.from_index_to_lps``, so any orientation gives the same axial display
stack. This module checks what every path needs first and turns the voxels into HU or labels.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import CTReadError
from .formats import describe_readable, format_of, strip_suffix
from .loaded import LoadedImage, warn
from .volume import CTVolume, Geometry

__all__ = [
    "LoadedImage",
    "file_format",
    "load_image",
    "looks_like_labels",
    "read_ct",
    "read_mask",
    "read_mask_data",
    "to_ct_volume",
]

# Most distinct non-zero values an integer image may hold to be opened as a label map; CT holds
# thousands, while whole-body organ atlases (TotalSegmentator) stay near 120.
MAX_LABELS = 128


def file_format(path: str | os.PathLike) -> str | None:
    """The name of a path's format in io/formats.py if this package reads it, else None."""
    fmt = format_of(path)
    return fmt.name if fmt is not None else None


def read_ct(path: str | os.PathLike) -> CTVolume:
    """Open a scan as float32 HU in display order (z, y, x); problems are warned and recorded."""
    return to_ct_volume(load_image(path))


def to_ct_volume(loaded: LoadedImage) -> CTVolume:
    """HU float32 from loaded voxels, NaN and inf replaced (with a warning)."""
    hu = np.array(loaded.data, dtype=np.float32, order="C")
    hu, note = _replace_non_finite(hu, loaded.geometry.source_path)
    messages = list(loaded.warnings)
    if note:
        messages.append(note)
        warn(note)
    return CTVolume(hu=hu, geometry=loaded.geometry, warnings=messages, name=loaded.name)


def read_mask(path: str | os.PathLike, like: Geometry | None = None) -> np.ndarray:
    """Open an integer label map in display order; with ``like`` it must lie on that scan's grid."""
    loaded = load_image(path)
    if like is not None:
        _check_same_grid(path, loaded.geometry, like)
    return read_mask_data(loaded)


def read_mask_data(loaded: LoadedImage) -> np.ndarray:
    """Loaded voxels as a contiguous integer label array (the smallest dtype that holds them)."""
    data = loaded.data
    if not _is_integral(data):
        raise CTReadError(
            loaded.geometry.source_path,
            "it holds non-integer values, not labels",
            "open it as an image instead",
        )
    return np.ascontiguousarray(data.astype(_label_dtype(data), copy=False))


def looks_like_labels(data: np.ndarray) -> bool:
    """True for integer arrays with a handful of small non-negative values (a label map)."""
    if data.size == 0 or not np.issubdtype(data.dtype, np.integer):
        return False
    # A strided sample (a view, no copy of the volume) rejects CT cheaply before full passes.
    if np.unique(data[..., ::4, ::4]).size > MAX_LABELS + 1:
        return False
    lo, hi = int(data.min()), int(data.max())
    if lo < 0 or hi > 65535:
        return False
    # bincount is one pass, unlike np.unique's sort of the whole volume.
    flat = data.ravel()
    if flat.dtype == np.uint64:  # the one integer type bincount will not take as is
        flat = flat.astype(np.int64)
    counts = np.bincount(flat, minlength=1)
    return int(np.count_nonzero(counts)) <= MAX_LABELS + 1


def load_image(path: str | os.PathLike) -> LoadedImage:
    """Read any supported file into display order with its geometry, keeping the stored dtype."""
    p = Path(path)
    if not p.exists():
        raise CTReadError(p, "no such file or folder", "check the path")
    fmt = format_of(p)
    if fmt is None:
        if p.is_dir():
            raise CTReadError(p, "the folder holds no DICOM files", "choose a DICOM series folder")
        raise CTReadError(p, "the file type is not supported", f"use {describe_readable()}")
    if not os.access(p, os.R_OK):
        raise CTReadError(p, "you have no permission to read it", "ask for read access")
    if p.is_file() and p.stat().st_size == 0:
        raise CTReadError(
            p, "the file is empty (0 bytes)", "check that the copy or download finished"
        )
    loaded = fmt.read(p)
    # The geometry's source is what was opened: the folder of a DICOM series.
    loaded.name = strip_suffix(Path(loaded.geometry.source_path).name)
    return loaded


# -- shared helpers ------------------------------------------------------------------------------
def _replace_non_finite(hu: np.ndarray, source: str) -> tuple[np.ndarray, str | None]:
    finite = np.isfinite(hu)
    if finite.all():
        return hu, None
    n_bad = int(hu.size - np.count_nonzero(finite))
    if n_bad == hu.size:
        raise CTReadError(source, "every voxel is NaN or infinite", "check how it was exported")
    lo = float(hu[finite].min())
    hi = float(hu[finite].max())
    hu = np.nan_to_num(hu, copy=False, nan=lo, posinf=hi, neginf=lo)
    note = (
        f"{source}: {n_bad} NaN or infinite voxels were replaced (NaN and -inf by the lowest "
        f"value {lo:g} HU, +inf by the highest {hi:g} HU)"
    )
    return hu, note


def _check_same_grid(path, geometry: Geometry, like: Geometry) -> None:
    same = geometry.display_shape == like.display_shape and np.allclose(
        geometry.display_to_lps, like.display_to_lps, atol=1e-3
    )
    if not same:
        raise CTReadError(
            path,
            f"the mask grid {geometry.display_shape} does not lie on the scan grid "
            f"{like.display_shape} voxel for voxel",
            "resample the mask onto the scan first",
        )


def _is_integral(data: np.ndarray) -> bool:
    if np.issubdtype(data.dtype, np.integer) or data.dtype == bool:
        return True
    return bool(np.all(np.isfinite(data)) and np.array_equal(data, np.round(data)))


def _label_dtype(data: np.ndarray) -> np.dtype:
    lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
    for dt in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dt)
    return np.dtype(np.int64)
