"""npe2 writer: a Labels layer saved onto its scan's own voxel grid (NIfTI, MHA or NRRD)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .io.errors import MaskWriteError
from .io.volume import Geometry, geometry_from_metadata
from .io.writers import WRITABLE_SUFFIXES, write_mask

DEFAULT_SUFFIX = ".nii.gz"


def write_labels(path: str | os.PathLike, data: Any, meta: dict[str, Any]) -> list[str]:
    """Save one Labels layer; returns the written path.

    With the scan geometry in the layer metadata the mask lands on the scan's grid with its
    exact affine; without it an axis-aligned file is written from the layer scale and translate.
    """
    path = os.fspath(path)
    if not path.lower().endswith(WRITABLE_SUFFIXES):
        path += DEFAULT_SUFFIX
    mask = np.asarray(data)
    geometry = geometry_from_metadata(meta.get("metadata"))
    if geometry is None:
        if mask.ndim != 3:
            raise MaskWriteError(
                path,
                f"the layer is {mask.ndim}-D and this plugin saves 3-D masks only",
                "use napari's own writer for other shapes",
            )
        scale = tuple(meta.get("scale") or (1.0, 1.0, 1.0))[-3:]
        translate = tuple(meta.get("translate") or (0.0, 0.0, 0.0))[-3:]
        geometry = Geometry.from_spacing(mask.shape, scale, translate)
    written = write_mask(path, mask, geometry)
    # The mask is on disk now: its crash-recovery copy would only offer back what is saved.
    from .widgets.autosave import mask_saved

    mask_saved(meta.get("metadata"), mask)
    return [str(written)]
