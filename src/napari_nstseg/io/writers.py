"""Save masks and float maps onto the source scan's own voxel grid, atomically.

The display array goes back through ``Geometry.to_source`` (a permutation and flips, never a
resampling), so the file written has the scan's shape and affine and overlays it voxel for voxel
in nibabel, SimpleITK, ITK-SNAP and 3D Slicer. Every write goes to a temporary file in the target
folder and is moved into place with ``os.replace``: a crash or a failed save never leaves a
half-written file and never touches an existing one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .atomic import AtomicBatch
from .errors import MaskWriteError
from .formats import describe, matching_suffix, writable_suffixes, writer_of
from .outputs import check_folder
from .volume import Geometry

WRITABLE_SUFFIXES = writable_suffixes()


def write_mask(
    path: str | os.PathLike,
    mask_zyx: np.ndarray,
    geometry: Geometry,
    batch: AtomicBatch | None = None,
) -> Path:
    """Write an integer label mask shown in display order (z, y, x) onto the source grid.

    With ``batch`` the file is only staged: it appears when the batch commits."""
    path = Path(path)
    suffix = _check_suffix(path)
    mask = np.asarray(mask_zyx)
    check_mask_shape(path, mask, geometry)
    labels = _as_label_array(path, mask)
    source = np.ascontiguousarray(geometry.to_source(labels))
    return _atomic_write(path, lambda tmp: _write_array(tmp, suffix, source, geometry), batch)


def write_volume(
    path: str | os.PathLike,
    volume_zyx: np.ndarray,
    geometry: Geometry,
    batch: AtomicBatch | None = None,
) -> Path:
    """Write a float map (probabilities, residuals) in display order onto the source grid
    (staged in ``batch`` if given)."""
    path = Path(path)
    suffix = _check_suffix(path)
    volume = np.asarray(volume_zyx)
    check_mask_shape(path, volume, geometry)
    if not np.issubdtype(volume.dtype, np.number) and volume.dtype != bool:
        raise MaskWriteError(path, f"values of type {volume.dtype} are not numbers")
    source = np.ascontiguousarray(geometry.to_source(volume.astype(np.float32, copy=False)))
    return _atomic_write(path, lambda tmp: _write_array(tmp, suffix, source, geometry), batch)


# -- checks --------------------------------------------------------------------------------------
def _check_suffix(path: Path) -> str:
    fmt = writer_of(path)
    if fmt is not None and fmt.write is not None:
        return matching_suffix(path.name, fmt.suffixes)
    if fmt is not None and fmt.refusal:
        raise MaskWriteError(path, fmt.refusal, f"save as {describe(WRITABLE_SUFFIXES)} instead")
    raise MaskWriteError(
        path, "the file type is not supported", f"end the name with {describe(WRITABLE_SUFFIXES)}"
    )


def check_mask_shape(path: Path, array: np.ndarray, geometry: Geometry) -> None:
    """A mask (or map) to be written for ``geometry``'s scan must have that scan's shape."""
    if tuple(array.shape) != tuple(geometry.display_shape):
        raise MaskWriteError(
            path,
            f"the mask has shape {tuple(array.shape)} but its scan has shape "
            f"{tuple(geometry.display_shape)} (z, y, x)",
            "draw the mask on the scan's own grid (same layer scale and shape)",
        )


def _as_label_array(path: Path, mask: np.ndarray) -> np.ndarray:
    if mask.dtype == bool:
        return mask.astype(np.uint8)
    if not np.issubdtype(mask.dtype, np.integer):
        if not np.issubdtype(mask.dtype, np.floating) or not (
            np.all(np.isfinite(mask)) and np.array_equal(mask, np.round(mask))
        ):
            raise MaskWriteError(
                path,
                "the mask holds non-integer values",
                "save probability maps with write_volume, or threshold them first",
            )
    lo, hi = (int(mask.min()), int(mask.max())) if mask.size else (0, 0)
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return mask.astype(dtype, copy=False)
    raise MaskWriteError(path, f"label values {lo}..{hi} do not fit in 32 bits")


def _write_array(tmp: str, suffix: str, source: np.ndarray, geometry: Geometry) -> None:
    writer_of(suffix).write(tmp, source, geometry)


# -- atomic replace ------------------------------------------------------------------------------
def _atomic_write(path: Path, write: Callable[[str], None], batch: AtomicBatch | None) -> Path:
    """An atomic write (now, or staged in ``batch``) with every failure turned into one
    readable MaskWriteError."""
    target = path.expanduser().absolute()
    folder = target.parent
    if not folder.exists():
        raise MaskWriteError(
            path, f"the folder {folder} does not exist", "create it or choose another folder"
        )
    if not folder.is_dir():
        raise MaskWriteError(path, f"{folder} is a file, not a folder", "choose another folder")
    if target.is_dir():
        raise MaskWriteError(path, "a folder of that name exists", "choose another file name")
    check_folder(folder, for_file=path)  # a read-only folder is refused even for root
    started = False

    def run(tmp: str) -> None:
        nonlocal started
        started = True
        write(tmp)

    try:
        if batch is not None:
            return batch.add(target, run, tmp_suffix=_check_suffix(target))
        with AtomicBatch() as own:
            own.add(target, run, tmp_suffix=_check_suffix(target))
            return own.commit()[0]
    except Exception as e:
        if isinstance(e, MaskWriteError):
            raise
        lines = str(e).splitlines() or [type(e).__name__]
        reason = e.strerror if isinstance(e, OSError) and e.strerror else lines[0]
        if not started:  # the temporary file could not even be created
            raise MaskWriteError(
                path,
                f"the folder {folder} is not writable ({reason})",
                "choose another folder or fix its permissions",
            ) from e
        raise MaskWriteError(
            path, f"writing failed ({reason})", "the previous file, if any, is unchanged"
        ) from e
