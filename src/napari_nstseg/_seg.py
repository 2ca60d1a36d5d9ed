"""npe2 entry points for DICOM SEG (io/dicom_seg.py): save a mask on its series, open one on it."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .io.dicom_seg import SEG_SUFFIX, read_dicom_seg, referenced_series, write_dicom_seg
from .io.errors import CTReadError, MaskWriteError
from .io.volume import METADATA_KEY, geometry_from_metadata

# Layer metadata a caller may set on a mask: whether a person changed it (bool) and the name of
# the weights that made it. Without the first, the edits the dock widget tracks decide.
EDITED_KEY = "nstseg_edited"
WEIGHTS_KEY = "nstseg_weights"

LayerData = tuple[Any, dict[str, Any], str]


def write_seg(path: str | os.PathLike, data: Any, meta: dict[str, Any]) -> list[str]:
    """Save one Labels layer drawn on a CT from a DICOM series as a DICOM SEG of that series."""
    path = os.fspath(path)
    if Path(path).is_dir():  # a folder chosen: the SEG goes in, named after the layer
        path = os.path.join(path, f"{meta.get('name') or 'tumor mask'}{SEG_SUFFIX}")
    elif not path.lower().endswith(SEG_SUFFIX):
        path += SEG_SUFFIX
    metadata = meta.get("metadata") or {}
    geometry = geometry_from_metadata(metadata)
    if geometry is None:
        raise MaskWriteError(
            path,
            "the layer does not lie on a CT opened by this plugin, so there is no DICOM series "
            "for a SEG to refer to",
            "open the CT series with napari-nstseg and draw or predict the mask on it",
        )
    written = write_dicom_seg(
        path,
        np.asarray(data),
        geometry,
        edited=_edited(meta),
        weights_name=str(metadata.get(WEIGHTS_KEY) or ""),
    )
    from .widgets.autosave import mask_saved

    mask_saved(metadata, data)
    return [str(written)]


def _edited(meta: dict[str, Any]) -> bool:
    """Whether a person changed the mask: said by the layer, else by the dock widget's record
    of edited slices; a mask the model never wrote, or one with no record, counts as edited
    (SEMIAUTOMATIC claims less than AUTOMATIC)."""
    metadata = meta.get("metadata") or {}
    if isinstance(metadata.get(EDITED_KEY), bool):
        return metadata[EDITED_KEY]
    from .widgets.layers import MIRROR_KEY, edit_tracker

    if not metadata.get(MIRROR_KEY):  # the dock widget records there every slice the model made
        return True
    layer = _layer_of(metadata, meta.get("name"))
    if layer is None:
        return True

    return bool(edit_tracker(layer).edited)


def _layer_of(metadata: dict[str, Any], name: str | None) -> Any:
    """The viewer's layer whose metadata this is (napari hands writers the layer's own dict)."""
    layers = _open_layers()
    for layer in layers:
        if layer.metadata is metadata:
            return layer
    return next((layer for layer in layers if name and layer.name == name), None)


def get_seg_reader(path: str | os.PathLike) -> Any:
    """``read_seg_layers`` for a ``.dcm`` file that is a DICOM SEG, else None."""
    from .io.dicom_seg import is_dicom_seg

    p = os.fspath(path)
    return read_seg_layers if p.lower().endswith(SEG_SUFFIX) and is_dicom_seg(p) else None


def read_seg_layers(path: str | os.PathLike | list) -> list[LayerData]:
    """A DICOM SEG as a Labels layer on the open CT series it segments (napari's reader)."""
    if isinstance(path, list | tuple):
        path = path[0]
    return seg_layer_data(path, _open_layers())


def seg_layer_data(path: str | os.PathLike, layers: Iterable[Any]) -> list[LayerData]:
    """The Labels layer data of a DICOM SEG on the one of ``layers`` that shows its series."""
    series = referenced_series(path)
    for layer in layers:
        geometry = geometry_from_metadata(getattr(layer, "metadata", None))
        if geometry is None or geometry.extra.get("dicom_series_uid") not in series:
            continue
        labels = read_dicom_seg(path, geometry)
        kwargs = {
            "name": Path(path).stem,
            "scale": geometry.spacing,
            "translate": geometry.translate,
            "metadata": {METADATA_KEY: geometry.to_dict()},
        }
        return [(labels, kwargs, "labels")]
    raise CTReadError(
        path,
        f"it is a DICOM SEG of series {', '.join(series) or '(none named)'}, which is not open",
        "open that CT series with napari-nstseg first, then the SEG",
    )


def _open_layers() -> list[Any]:
    """The current napari viewer's layers (none without a viewer)."""
    try:
        import napari
    except ImportError:
        return []
    viewer = napari.current_viewer()
    return list(viewer.layers) if viewer is not None else []
