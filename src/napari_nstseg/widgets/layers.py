"""Prediction -> napari layers: one layer per CDI-NSTSEG stage (GLM, LFM, SSL, SFM) on the CT grid.

Every layer reuses the CT layer's scale, translate and geometry metadata, so it overlays the scan
and the writer saves it onto the source file's voxel grid. The tumor mask (the finest LFM stage)
is the layer users edit: model writes go through ``Labels.data_setitem`` inside one
``block_history`` so a whole run is a single Ctrl+Z, and slices the user painted are spared on
re-runs unless ``overwrite`` is asked for.

napari hands a plugin a proxy of the viewer that makes a new object for every layer access, so
nothing here is keyed by object identity: each layer we make records in its metadata the
``unique_id`` of its CT and its role ("tumor mask", ...), which is how it is found again (also
after the CT is renamed), and edit trackers are kept by the mask's ``unique_id``.

Probability maps are shown as uint8 (0-255 = probability 0-1) so that a dozen full-volume maps
of a 512 x 512 x 300 scan stay near 75 MB each; ``metadata["probability_scale"]`` says so.
The SFM scale weights are three Image layers (one per input scale, red/green/blue with additive
blending), so together they read as one RGB composite and each can still be toggled alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_nstseg.inference.prediction import binarize_probability
from napari_nstseg.io.volume import METADATA_KEY, Geometry, geometry_from_metadata
from napari_nstseg.postprocess import PostprocessConfig

SCALE_NAMES = ("0.5x", "1.0x", "1.5x")
_SCALE_COLORMAPS = ("red", "green", "blue")
TUMOR_LABEL = 1


@dataclass(frozen=True)
class MapsToShow:
    """Which intermediate maps become layers (the tumor mask always does)."""

    coarse: bool = True
    stages: bool = True
    stage_probabilities: bool = False
    residual: bool = False
    scale_weights: bool = False


@dataclass(frozen=True)
class LayerNames:
    """Names of the layers drawn on the CT layer ``ct``; ``suffix`` marks ablation variants."""

    ct: str
    suffix: str = ""

    def _name(self, what: str) -> str:
        return f"{self.ct} {what}{self.suffix}"

    @property
    def coarse(self) -> str:
        return self._name("GLM coarse")

    @property
    def coarse_mask(self) -> str:
        return self._name("GLM coarse mask")

    def stage(self, k: int) -> str:
        return self._name(f"LFM stage {k}")

    def stage_probability(self, k: int) -> str:
        return self._name(f"LFM stage {k} probability")

    @property
    def residual(self) -> str:
        return self._name("SSL residual")

    def scale_weight(self, i: int) -> str:
        return self._name(f"SFM scale weights {SCALE_NAMES[i]}")

    @property
    def tumor_mask(self) -> str:
        return self._name("tumor mask")

    def role_name(self, role: str) -> str:
        """The name of this CT's layer of ``role`` (see :meth:`role`)."""
        return f"{self.ct} {role}"

    def role(self, name: str) -> str:
        """What the layer ``name`` is, without the CT's name: e.g. "tumor mask [no GLM]"."""
        return name[len(self.ct) + 1 :]


# Metadata of the layers drawn on a CT: the CT's unique_id and the layer's role (see LayerNames).
CT_KEY = "nstseg_ct"
ROLE_KEY = "nstseg_role"


def layer_id(layer: Any) -> str:
    """A layer's napari ``unique_id`` as text: the same for every proxy of one layer."""
    return str(layer.unique_id)


def link(layer: Any, ct_layer: Any, role: str) -> None:
    """Record that ``layer`` is ``ct_layer``'s ``role`` layer."""
    layer.metadata[CT_KEY] = layer_id(ct_layer)
    layer.metadata[ROLE_KEY] = role


def find_linked(viewer: Any, ct_layer: Any, role: str) -> Any:
    """``ct_layer``'s ``role`` layer: the one linked to it in metadata, else (a mask the user
    opened, a restored one) the one with the usual name, which is then linked."""
    ct_id = layer_id(ct_layer)
    for layer in viewer.layers:
        if layer.metadata.get(CT_KEY) == ct_id and layer.metadata.get(ROLE_KEY) == role:
            return layer
    name = f"{ct_layer.name} {role}"
    if name in viewer.layers:
        layer = viewer.layers[name]
        # A layer of another CT still open is not taken over (napari numbers our new one).
        owner = layer.metadata.get(CT_KEY)
        if owner is None or not any(layer_id(other) == owner for other in viewer.layers):
            link(layer, ct_layer, role)
            return layer
    return None


def is_image(layer: Any) -> bool:
    from napari.layers import Image

    return isinstance(layer, Image)


def is_labels(layer: Any) -> bool:
    from napari.layers import Labels

    return isinstance(layer, Labels)


def is_shapes(layer: Any) -> bool:
    from napari.layers import Shapes

    return isinstance(layer, Shapes)


# -- edits protection ---------------------------------------------------------------------------


class EditTracker:
    """Remembers which axial slices of a mask the user painted, so model re-runs spare them.

    napari emits ``Labels.events.paint`` for every committed brush stroke, fill, polygon and
    ``data_setitem``; the model's own writes happen inside :meth:`model_writing` and are not
    counted as user edits. ``on_edit`` callbacks run after every change of the mask that is not
    the model's own write, undo and redo included.
    """

    def __init__(self, layer: Any) -> None:
        self.edited: set[int] = set()
        self.on_edit: list[Callable[[], None]] = []
        self._model_writing = False
        self._n_slices = int(layer.data.shape[0])
        layer.events.paint.connect(self._on_paint)

    @contextmanager
    def model_writing(self) -> Iterator[None]:
        self._model_writing = True
        try:
            yield
        finally:
            self._model_writing = False

    def mark_edited(self, z_indices: Sequence[int]) -> None:
        self.edited.update(int(z) for z in z_indices)
        self._notify()

    def _notify(self) -> None:
        for callback in list(self.on_edit):
            callback()

    def _notify_after_history(self) -> None:
        """Called after an undo or redo of the mask (see :func:`_notify_history`)."""
        if not self._model_writing:
            self._notify()

    def _on_paint(self, event: Any) -> None:
        if self._model_writing:
            return
        zs: set[int] = set()
        for atom in event.value:
            zs.update(_atom_slices(atom, self._n_slices))
        if zs:
            self.mark_edited(sorted(zs))


def _atom_slices(atom: Any, n_slices: int) -> set[int]:
    """Axial slices touched by one napari Labels history atom (masked-paint or fancy-index)."""
    slice_key = getattr(atom, "slice_key", None)
    if slice_key is not None:
        first = slice_key[0]
        if isinstance(first, slice):
            return set(range(*first.indices(n_slices)))
        return {int(first)}
    indices = atom[0]
    return {int(z) for z in np.unique(np.asarray(indices[0]))}


# Keyed by the mask's unique_id: what the proxy hands out is a new object on every access.
_TRACKERS: dict[str, EditTracker] = {}


def edit_tracker(layer: Any) -> EditTracker:
    """The (one) EditTracker of a Labels layer, created on first use."""
    key = layer_id(layer)
    tracker = _TRACKERS.get(key)
    if tracker is None:
        tracker = EditTracker(layer)
        _TRACKERS[key] = tracker
        _notify_history(layer, key)
    return tracker


def forget_tracker(layer: Any) -> None:
    """Drop the tracker of a layer that left the viewer."""
    _TRACKERS.pop(layer_id(layer), None)


def _notify_history(layer: Any, key: str) -> None:
    """Make ``layer.undo``/``layer.redo`` tell the mask's tracker afterwards (once per layer).

    napari's Labels.undo/redo write layer.data and refresh without emitting events.paint, so
    without this an autosave would keep the mask as it was before Ctrl+Z. The Ctrl+Z and
    Ctrl+Shift+Z key bindings call layer.undo()/layer.redo(), which find these first. The
    wrapper holds the layer's own method (a reference cycle the garbage collector frees with
    the layer); a weak reference to it would die at once when it came through the proxy.
    """
    for name in ("undo", "redo"):
        original = getattr(layer, name)
        if getattr(original, "nstseg_notifies", False):
            continue

        def wrapped(original: Callable[[], None] = original) -> None:
            original()
            tracker = _TRACKERS.get(key)
            if tracker is not None:
                tracker._notify_after_history()

        wrapped.__doc__ = original.__doc__
        wrapped.nstseg_notifies = True  # type: ignore[attr-defined]
        setattr(layer, name, wrapped)


# -- geometry -------------------------------------------------------------------------------------


def ct_geometry(ct_layer: Any) -> Geometry:
    """The CT layer's geometry; for a layer made without the reader, one built from its scale."""
    geometry = geometry_from_metadata(ct_layer.metadata)
    if geometry is None:
        geometry = Geometry.from_spacing(
            tuple(ct_layer.data.shape),
            tuple(float(s) for s in ct_layer.scale),
            tuple(float(t) for t in ct_layer.translate),
        )
    return geometry


def layer_kwargs(ct_layer: Any) -> dict[str, Any]:
    """Scale, translate, any extra affine and the geometry shared by every layer on this CT."""
    return {
        "scale": tuple(ct_layer.scale),
        "translate": tuple(ct_layer.translate),
        # CT layers from other readers may carry rotation, shear or a further affine
        "rotate": np.array(ct_layer.rotate),
        "shear": np.array(ct_layer.shear),
        "affine": np.array(ct_layer.affine.affine_matrix),
        "metadata": {METADATA_KEY: ct_geometry(ct_layer).to_dict()},
    }


# -- writing maps ---------------------------------------------------------------------------------


def as_probability_uint8(array: np.ndarray) -> np.ndarray:
    """A probability map as uint8 0-255, whether it came as uint8 (already 0-255) or float 0-1."""
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array
    return np.clip(np.rint(array.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Region:
    """Where a prediction is valid: its finished slices and the in-plane box it covers."""

    z: np.ndarray
    y: slice
    x: slice


class PredictionView:
    """The engine's Prediction seen as full-volume (z, y, x) arrays plus the region it covers."""

    def __init__(self, prediction: Any, shape: tuple[int, int, int]) -> None:
        self.prediction = prediction
        self.shape = shape
        self.mask = prediction.mask
        self.coarse = getattr(prediction, "coarse", None)
        self.stages = list(getattr(prediction, "stages", None) or [])
        self.residual = getattr(prediction, "residual", None)
        self.scale_weights = getattr(prediction, "scale_weights", None)

    def region(self) -> Region:
        done = np.asarray(self.prediction.done, dtype=bool)
        roi = getattr(self.prediction, "roi", None)
        ys, xs = slice(0, self.shape[1]), slice(0, self.shape[2])
        z = np.flatnonzero(done)
        if roi is not None:
            z0, z1, y0, y1, x0, x1 = (int(v) for v in roi)
            z = z[(z >= z0) & (z < z1)]
            ys, xs = slice(y0, y1), slice(x0, x1)
        return Region(z, ys, xs)

    def mask_at(
        self, threshold: float, min_lesion_mm: float = 0.0, min_depth_mm: float = 0.0
    ) -> np.ndarray:
        """The tumor mask at this operating point (the engine's own mask when it used it)."""
        if PostprocessConfig(threshold, min_lesion_mm, min_depth_mm).matches(self.prediction.point):
            return self.mask
        return self.prediction.mask_at(threshold, min_lesion_mm, min_depth_mm)


def _get_image(
    viewer: Any,
    names: LayerNames,
    name: str,
    shape: tuple[int, ...],
    ct_layer: Any,
    dtype: Any = np.uint8,
    **style,
) -> Any:
    layer = _existing(viewer, names, name, shape, ct_layer, is_image)
    if layer is None:
        blank = np.zeros(shape, dtype)
        layer = viewer.add_image(blank, name=name, **layer_kwargs(ct_layer), **style)
        link(layer, ct_layer, names.role(name))
        if dtype == np.uint8:
            layer.metadata["probability_scale"] = 1.0 / 255.0
    return layer


def _get_labels(
    viewer: Any,
    names: LayerNames,
    name: str,
    shape: tuple[int, ...],
    ct_layer: Any,
    color: str,
    **style: Any,
) -> Any:
    layer = _existing(viewer, names, name, shape, ct_layer, is_labels)
    if layer is None:
        layer = viewer.add_labels(np.zeros(shape, np.uint8), name=name, **layer_kwargs(ct_layer))
        link(layer, ct_layer, names.role(name))
        _set_label_color(layer, color)
        for key, value in style.items():
            setattr(layer, key, value)
    return layer


def _existing(
    viewer: Any,
    names: LayerNames,
    name: str,
    shape: tuple[int, ...],
    ct_layer: Any,
    kind: Callable[[Any], bool],
) -> Any:
    layer = find_linked(viewer, ct_layer, names.role(name))
    if layer is None:
        return None
    if kind(layer) and tuple(layer.data.shape) == tuple(shape):
        return layer
    # Same role, other kind or size (e.g. the CT was swapped): ours goes, the user's is kept aside.
    if layer.metadata.get("nstseg_generated"):
        viewer.layers.remove(layer.name)
    else:
        layer.name = f"{layer.name} (old)"
        layer.metadata.pop(CT_KEY, None)
        layer.metadata.pop(ROLE_KEY, None)
    return None


def _put_map(
    layer: Any, region: Region, values: np.ndarray, convert: Callable[[np.ndarray], np.ndarray]
) -> None:
    """Copy the region of a full-volume map into the layer, converting only that part."""
    layer.data[region.z, region.y, region.x] = convert(values[region.z, region.y, region.x])
    layer.metadata["nstseg_generated"] = True
    layer.refresh()


def write_mask(
    layer: Any, region: Region, mask: np.ndarray, tracker: EditTracker, overwrite: bool = False
) -> list[int]:
    """Write ``mask`` into the tumor-mask layer as one undoable step; returns the slices written.

    Slices in ``tracker.edited`` are left alone unless ``overwrite``; slices outside the region
    keep what they had, so successive runs on different slices add up.
    """
    zs = [int(z) for z in region.z if overwrite or int(z) not in tracker.edited]
    if not zs:
        return []
    z_arr = np.asarray(zs)
    current = np.asarray(layer.data[z_arr, region.y, region.x])
    new = (np.asarray(mask)[z_arr, region.y, region.x] > 0).astype(layer.data.dtype) * TUMOR_LABEL
    dz, dy, dx = np.nonzero(current != new)
    if dz.size:
        indices = (
            z_arr[dz],
            dy + (region.y.start or 0),
            dx + (region.x.start or 0),
        )
        with tracker.model_writing(), layer.block_history():
            layer.data_setitem(indices, new[dz, dy, dx], refresh=False)
        layer.refresh()
    if overwrite:
        tracker.edited.difference_update(zs)
    return zs


# Tumor-mask metadata: slice index -> whether the run that wrote it used test-time mirroring.
MIRROR_KEY = "nstseg_mirrored"


def show_prediction(
    viewer: Any,
    ct_layer: Any,
    prediction: Any,
    maps: MapsToShow = MapsToShow(),
    threshold: float = 0.5,
    overwrite: bool = False,
    suffix: str = "",
    rethreshold: bool = False,
    min_lesion_mm: float = 0.0,
    min_depth_mm: float = 0.0,
    mirror: bool = False,
) -> dict[str, Any]:
    """Add or update the layers for ``prediction`` on ``ct_layer``; returns them by name.

    Only the slices the prediction finished (its ``done`` flags) and its in-plane ROI are
    written, so a cancelled run leaves the rest of every layer as it was.

    ``rethreshold`` re-cuts only what the threshold decides: the tumor mask, and the GLM coarse
    and LFM stage masks still in the viewer. Probability maps do not depend on the threshold,
    and a layer the user closed should not come back because a slider moved.
    ``min_lesion_mm`` and ``min_depth_mm`` remove small and shallow lesions from the tumor mask
    only; the stage masks show the network's stages as they are. ``mirror``: whether the
    prediction averaged each slice with its mirror image; the tumor mask records it for every
    slice it writes (``metadata[MIRROR_KEY]``, see :func:`mirroring_of_slices`), since runs on
    different slices add up in one mask.
    """
    view = PredictionView(prediction, tuple(ct_layer.data.shape))
    names = LayerNames(ct_layer.name, suffix)
    shape = tuple(ct_layer.data.shape)
    region = view.region()
    out: dict[str, Any] = {}
    if region.z.size == 0:
        return out

    def labels_from(prob: np.ndarray, name: str, color: str) -> None:
        if rethreshold and find_linked(viewer, ct_layer, names.role(name)) is None:
            return
        # Outlines: the stage masks show where each stage cuts without hiding the CT under them.
        layer = _get_labels(viewer, names, name, shape, ct_layer, color, opacity=0.8, contour=1)
        # The engine's own cut (Prediction.mask_at), for uint8 and float16 maps alike.
        _put_map(layer, region, prob, lambda p: binarize_probability(p, threshold).astype(np.uint8))
        out[name] = layer

    def image_from(array: np.ndarray, name: str, colormap: str, **style: Any) -> None:
        if rethreshold:
            return
        layer = _get_image(
            viewer,
            names,
            name,
            shape,
            ct_layer,
            colormap=colormap,
            blending="additive",
            contrast_limits=(0, 255),
            **style,
        )
        _put_map(layer, region, array, as_probability_uint8)
        out[name] = layer

    if maps.coarse and view.coarse is not None:
        image_from(view.coarse, names.coarse, "magma", opacity=0.6)
        labels_from(view.coarse, names.coarse_mask, "yellow")
    for k, prob in enumerate(view.stages, start=1):
        if maps.stages:
            labels_from(prob, names.stage(k), "cyan")
        if maps.stage_probabilities:
            # Black at 0: with additive blending only where the stage sees tumor is tinted.
            image_from(prob, names.stage_probability(k), "green", opacity=0.5)
    if maps.residual and view.residual is not None and not rethreshold:
        # Reconstruction error is not a probability: kept as float, contrast from its range.
        layer = _get_image(
            viewer,
            names,
            names.residual,
            shape,
            ct_layer,
            dtype=np.float32,
            colormap="inferno",
            blending="additive",
            opacity=0.6,
        )
        _put_map(layer, region, view.residual, lambda r: r.astype(np.float32))
        high = float(np.percentile(layer.data[region.z, region.y, region.x], 99.5))
        layer.contrast_limits = (0.0, max(high, 1e-3))
        out[names.residual] = layer
    if maps.scale_weights and view.scale_weights is not None and not rethreshold:
        for i, weights in enumerate(view.scale_weights):
            # The three add up to 1 everywhere: faint, so the CT still reads through them.
            image_from(weights, names.scale_weight(i), _SCALE_COLORMAPS[i], opacity=0.3)

    # Not marked generated: a tumor mask of another shape is renamed aside, never deleted.
    mask_layer = _get_labels(viewer, names, names.tumor_mask, shape, ct_layer, "red", opacity=0.6)
    written = write_mask(
        mask_layer,
        region,
        view.mask_at(threshold, min_lesion_mm, min_depth_mm),
        edit_tracker(mask_layer),
        overwrite=overwrite,
    )
    made = mask_layer.metadata.setdefault(MIRROR_KEY, {})
    made.update(dict.fromkeys(written, bool(mirror)))
    out[names.tumor_mask] = mask_layer
    return out


def mirroring_of_slices(mask_layer: Any) -> tuple[list[int], list[int]]:
    """The slices of a tumor mask the model made with test-time mirroring and those it made
    without; a slice corrected by hand, which later runs leave alone, keeps the entry of the run
    that wrote it."""
    made = mask_layer.metadata.get(MIRROR_KEY) or {}
    mirrored = sorted(int(z) for z, m in made.items() if m)
    plain = sorted(int(z) for z, m in made.items() if not m)
    return mirrored, plain


def _set_label_color(layer: Any, color: str) -> None:
    from napari.utils.colormaps import DirectLabelColormap

    layer.colormap = DirectLabelColormap(
        color_dict={None: "transparent", 0: "transparent", 1: color}
    )
