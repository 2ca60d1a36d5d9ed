"""npe2 reader: CT scans (NIfTI, MHA/MHD, NRRD, DICOM folders) as napari Image or Labels layers."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._seg import get_seg_reader
from .io.readers import (
    file_format,
    load_image,
    looks_like_labels,
    read_mask_data,
    to_ct_volume,
)
from .io.volume import METADATA_KEY
from .windows import DEFAULT_WINDOW, contrast_limits

SOURCE_KEY = "nstseg_source"

LayerData = tuple[Any, dict[str, Any], str]


def get_reader(path: str | os.PathLike | list) -> Callable[[Any], list[LayerData]] | None:
    """The reader for a scan this plugin can open, else None (napari then asks other plugins)."""
    if isinstance(path, list | tuple):
        if len(path) != 1:
            return None  # stacks of files are not one scan
        path = path[0]
    seg_reader = get_seg_reader(path)  # a DICOM SEG goes onto its open series, not a new CT
    if seg_reader is not None:
        return seg_reader
    try:
        kind = file_format(path)
    except OSError:
        return None
    return read_layers if kind is not None else None


def read_layers(path: str | os.PathLike | list, as_labels: bool | None = None) -> list[LayerData]:
    """Layer data for one scan: an Image in HU with the abdomen window, or Labels for a label map.

    ``as_labels`` forces Labels (True) or Image (False); None guesses from the voxels. Problems
    raise ``CTReadError`` (one sentence naming the file), which napari shows to the user;
    warnings (several series, uneven slices, NaN voxels) go through ``warnings.warn``.
    """
    if isinstance(path, list | tuple):
        path = path[0]
    path = os.fspath(path)
    loaded = load_image(path)
    geometry = loaded.geometry
    metadata = {METADATA_KEY: geometry.to_dict(), SOURCE_KEY: str(Path(path).absolute())}
    common = {
        "name": loaded.name,
        "scale": geometry.spacing,
        "translate": geometry.translate,
        "metadata": metadata,
    }
    if as_labels is None:
        as_labels = geometry.source_format != "dicom" and looks_like_labels(loaded.data)
    if as_labels:
        labels = read_mask_data(loaded)
        return [(labels, common, "labels")]
    volume = to_ct_volume(loaded)
    kwargs = {
        **common,
        "contrast_limits": contrast_limits(DEFAULT_WINDOW),
        "colormap": "gray",
    }
    return [(volume.hu, kwargs, "image")]
