"""Voxels as a format reader returns them (LoadedImage) and the checks every reader shares."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import CTReadError, CTReadWarning
from .volume import Geometry


@dataclass
class LoadedImage:
    """Voxels in display order (z, y, x) with their stored dtype, before any HU conversion."""

    data: np.ndarray
    geometry: Geometry
    warnings: list[str] = field(default_factory=list)
    name: str = ""


def make_geometry(path: Path, shape, index_to_lps: np.ndarray, **kwargs) -> Geometry:
    m = np.asarray(index_to_lps, dtype=float)
    if not np.all(np.isfinite(m)) or abs(np.linalg.det(m[:3, :3])) < 1e-12:
        raise CTReadError(
            path,
            "its voxel-to-world matrix is missing or degenerate (zero voxel size or collinear "
            "axes)",
            "repair the header (spacing and direction) in the tool that made it",
        )
    return Geometry.from_index_to_lps(shape, m, source_path=str(path), **kwargs)


def squeeze_to_3d(path: Path, data: np.ndarray) -> np.ndarray:
    if data.ndim > 3:
        extra_dims = data.shape[3:]
        if int(np.prod(extra_dims)) != 1:
            raise CTReadError(
                path,
                f"it is a {data.ndim}-D image of shape {data.shape} with "
                f"{int(np.prod(extra_dims))} volumes",
                "save the one CT volume you want as its own file",
            )
        data = data.reshape(data.shape[:3])
    if data.ndim != 3:
        raise CTReadError(path, f"it is a {data.ndim}-D image", "open a 3-D CT volume")
    return data


def warn(message: str) -> None:
    warnings.warn(message, CTReadWarning, stacklevel=3)
