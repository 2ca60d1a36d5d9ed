"""What the panel's choices ask the model to run, without Qt: the CT checked, the slice on
screen, the ROI box, the organs to search inside (:mod:`.organ_mode`), the weights file; a bad
choice is one WidgetError sentence naming it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .layers import MapsToShow, is_image, is_shapes, layer_id
from .organ_mode import ORGAN_MODE, OrganChoiceError, organ_request, organ_slices
from .session import RunRequest

MODES = ("current slice", "whole volume", "ROI", ORGAN_MODE)


class WidgetError(ValueError):
    """A problem with what the user chose in the widget; its message is shown as-is."""


@dataclass
class Choices:
    """The panel's controls as one run reads them (layers by the objects the viewer gave)."""

    mode: str
    # The chosen checkpoint, and the bundled weights' name when it is one (None: a file).
    weights_path: Path | None
    bundled_name: str | None
    device: str
    threshold: float
    min_lesion_mm: float
    min_depth_mm: float
    maps: MapsToShow
    overwrite: bool
    mirror: bool
    roi_layer: Any = None
    roi_margin_mm: float = 10.0
    # Organ mode: the organ label layer, the ticked label ids, the margin, whether to run only
    # the slice on screen, and the viewer's layers (to name labels layers on other grids).
    organ_layer: Any = None
    organs: tuple[int, ...] = ()
    organ_margin_mm: float = 10.0
    organ_slice_only: bool = False
    layers: tuple[Any, ...] = ()


def check_ct_layer(layer: Any) -> None:
    """Refuse layers the network cannot read as CT, in one sentence naming the layer."""
    if not is_image(layer):
        kind = type(layer).__name__.lower()
        raise WidgetError(f"Layer {layer.name!r} is a {kind} layer, not a CT image.")
    if getattr(layer, "rgb", False):
        raise WidgetError(f"Layer {layer.name!r} is a colour (RGB) image, not a CT scan.")
    if getattr(layer, "multiscale", False):
        raise WidgetError(f"Layer {layer.name!r} is multiscale; open the CT at full resolution.")
    data = layer.data
    if data.ndim != 3:
        raise WidgetError(
            f"Layer {layer.name!r} is {data.ndim}-D; the model needs a 3-D CT volume (z, y, x)."
        )
    if not np.issubdtype(np.asarray(data[:1, :1, :1]).dtype, np.number):
        raise WidgetError(f"Layer {layer.name!r} does not hold numbers.")
    if layer.metadata.get("nstseg_geometry") is None:
        # Without the reader's geometry, check the values look like Hounsfield units: a
        # normalised 0-1 image or a mask would give a silently wrong result.
        low, high = float(np.min(data)), float(np.max(data))
        if high - low < 20 or low < -4000 or high > 40000:
            raise WidgetError(
                f"Layer {layer.name!r} does not look like CT in Hounsfield units (values "
                f"{low:g} to {high:g}); open the scan with the napari-nstseg reader."
            )


def checked_weights(path: Path | None, bundled_name: str | None) -> str:
    """The checkpoint file to run: ``path`` of the bundled weights ``bundled_name``, or of the
    file the user chose (``bundled_name`` None); WidgetError when it is not there."""
    if bundled_name is not None:
        # The engine gets the checkpoint's path, so the chosen name is what runs.
        if path is None or not path.is_file():
            raise WidgetError(
                f"The bundled weights {bundled_name!r} are no longer installed at {path}; "
                "choose 'file...' under weights and pick a checkpoint (.json)."
            )
        return str(path)
    if path is None or not path.exists():
        raise WidgetError(f"Weights file {str(path or '')!r} does not exist; choose a checkpoint.")
    return str(path)


def z_on_screen(viewer: Any, layer: Any) -> int:
    """The axial slice of ``layer`` at the viewer's point, unclamped."""
    point = layer.world_to_data(viewer.dims.point[-layer.ndim :])
    return int(np.round(point[0]))


def current_z(viewer: Any, layer: Any) -> int:
    """The axial slice of ``layer`` the viewer shows now (the nearest one, off its ends)."""
    return int(np.clip(z_on_screen(viewer, layer), 0, layer.data.shape[0] - 1))


def slice_on_screen(viewer: Any, ct: Any) -> int:
    """The slice of ``ct`` the viewer shows now; WidgetError when the view is on no slice of
    it (another scan on screen), rather than a run on its first or last slice."""
    z = z_on_screen(viewer, ct)
    n = int(ct.data.shape[0])
    if 0 <= z < n:
        return z
    world_z = float(viewer.dims.point[-ct.ndim])
    ends = sorted(float(ct.data_to_world((i, 0, 0))[0]) for i in (0, n - 1))
    raise WidgetError(
        f"The view is not on {ct.name!r}: it shows z = {world_z:.1f} mm, and "
        f"{ct.name!r} spans z = {ends[0]:.1f} to {ends[1]:.1f} mm. Scroll to a slice of "
        f"{ct.name!r}, or choose the CT on screen, then run again."
    )


def roi_box(viewer: Any, ct: Any, roi_layer: Any, margin_mm: float) -> tuple[slice, ...]:
    """(z, y, x) box around ``roi_layer`` (a rectangle or a mask), grown by ``margin_mm``."""
    if roi_layer is None:
        raise WidgetError("ROI mode needs a Shapes (rectangle) or Labels layer as ROI layer.")
    shape = np.asarray(ct.data.shape)
    if is_shapes(roi_layer):
        if len(roi_layer.data) == 0:
            raise WidgetError(f"Shapes layer {roi_layer.name!r} has no rectangle; draw one.")
        chosen = sorted(roi_layer.selected_data) or [len(roi_layer.data) - 1]
        vertices = np.concatenate([np.asarray(roi_layer.data[i]) for i in chosen])
        world = np.array([roi_layer.data_to_world(v) for v in vertices])
        if world.shape[1] < 3:
            # A 2-D rectangle has no slice of its own: it lies on the slice shown now.
            z_world = viewer.dims.point[-3]
            world = np.column_stack([np.full(len(world), z_world), world])
        points = np.array([ct.world_to_data(w[-3:]) for w in world])
        low, high = points.min(axis=0), points.max(axis=0)
    else:
        data = np.asarray(roi_layer.data)
        if data.shape != tuple(shape):
            raise WidgetError(
                f"ROI layer {roi_layer.name!r} has shape {data.shape}, not the CT's {tuple(shape)}."
            )
        nonzero = np.argwhere(data > 0)
        if nonzero.size == 0:
            raise WidgetError(f"ROI layer {roi_layer.name!r} is empty; paint a region first.")
        low, high = nonzero.min(axis=0), nonzero.max(axis=0)
    margin = float(margin_mm) / np.abs(np.asarray(ct.scale, dtype=float))
    start = np.clip(np.floor(low - margin), 0, shape - 1).astype(int)
    stop = np.clip(np.ceil(high + margin) + 1, 1, shape).astype(int)
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))


def build_request(viewer: Any, ct: Any, choices: Choices, variant: str = "") -> RunRequest:
    """The run ``choices`` ask for on the CT layer ``ct``; WidgetError with a readable message."""
    check_ct_layer(ct)
    roi = organs = None
    if choices.mode == "current slice":
        z_indices: list[int] | None = [slice_on_screen(viewer, ct)]
    elif choices.mode == "whole volume":
        z_indices = None
    elif choices.mode == ORGAN_MODE:
        organs, z_indices = organ_choice(viewer, ct, choices)
    else:
        roi = roi_box(viewer, ct, choices.roi_layer, choices.roi_margin_mm)
        z_indices = list(range(roi[0].start, roi[0].stop))
    return RunRequest(
        ct_name=ct.name,
        volume=np.asarray(ct.data),
        spacing=tuple(float(abs(s)) for s in ct.scale),
        z_indices=z_indices,
        roi=roi,
        weights=checked_weights(choices.weights_path, choices.bundled_name),
        device=choices.device,
        threshold=choices.threshold,
        maps=choices.maps,
        overwrite=choices.overwrite,
        variant=variant,
        min_lesion_mm=choices.min_lesion_mm,
        min_depth_mm=choices.min_depth_mm,
        mirror=choices.mirror,
        ct_id=layer_id(ct),
        organs=organs,
    )


def organ_choice(viewer: Any, ct: Any, choices: Choices) -> tuple[Any, list[int]]:
    """Organ mode's search and the slices it runs: every slice of the ticked organs grown by
    the margin, or only the slice on screen (which must cross them)."""
    try:
        organs = organ_request(
            ct, choices.organ_layer, choices.organs, choices.organ_margin_mm, choices.layers
        )
    except OrganChoiceError as exc:
        raise WidgetError(str(exc)) from None
    spacing = tuple(float(abs(s)) for s in ct.scale)
    slices = organ_slices(organs, spacing)
    if not choices.organ_slice_only:
        return organs, slices
    z = slice_on_screen(viewer, ct)
    if z not in slices:
        raise WidgetError(
            f"Slice {z} of {ct.name!r} crosses none of {organs.describe()}; scroll to a slice "
            "through them, or untick 'only the slice on screen'."
        )
    return organs, [z]
