"""NSTSegWidget: the napari dock widget that runs CDI-NSTSEG and shows every stage as a layer.

The widget only wires layers to the engine: it reads the CT layer, asks the inference engine
for a Prediction in a ``thread_worker`` generator (so Cancel acts between batches), and hands
the result to :mod:`napari_nstseg.widgets.layers`. Nothing a user can do here raises out of the
widget; problems arrive as napari notifications in one sentence. What the widget remembers
about layers lives in :class:`session.Session`, keyed by napari's layer ids, because the viewer
a plugin gets is a proxy that hands out a new object for every layer access.
"""

from __future__ import annotations

import csv
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    FloatSpinBox,
    Label,
    PushButton,
)
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QDockWidget,
    QFileDialog,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHeaderView,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from napari_nstseg.windows import DEFAULT_WINDOW, WINDOWS, contrast_limits

from . import ablation_view
from .ablation_view import viewer_grid
from .autosave import AUTOSAVE_KEY, Recovery, autosave_path, ct_autosave_path
from .ground_truth import pick_ground_truth
from .layers import (
    LayerNames,
    MapsToShow,
    ct_geometry,
    edit_tracker,
    is_image,
    is_labels,
    is_shapes,
    layer_id,
    link,
    mirroring_of_slices,
)
from .runner import VARIANTS
from .session import OperatingPoint, RunOutcome, RunRequest, Session, mask_role
from .weights import BUNDLED, FROM_FILE, WeightsChoice, describe, first_choice, weights_choices
from .worker import predict_worker, recommended_point

__all__ = ["BUNDLED", "FROM_FILE", "NSTSegWidget", "RunOutcome", "RunRequest", "autosave_path"]
__all__ += ["viewer_grid"]

MODES = ("current slice", "whole volume", "ROI")
NO_LAYER = "(none)"
AUTOSAVE_DELAY_MS = 3000
# Long enough that dragging the threshold slider re-cuts the mask once (one undo step), short
# enough to feel immediate.
THRESHOLD_DELAY_MS = 250
MAX_MIN_LESION_MM = 100.0
METRIC_NAMES = ("Dice", "IoU", "precision", "recall", "specificity", "S-measure", "E-measure")


class WidgetError(ValueError):
    """A problem with what the user chose in the widget; its message is shown as-is."""


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


class NSTSegWidget(QWidget):
    """Dock widget: choose CT, weights, device and mode; run, cancel, inspect, measure, save."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = Session(napari_viewer)
        self._worker: Any = None
        self._request: RunRequest | None = None
        self.last_outcome: RunOutcome | None = None
        # The chosen CT's napari unique_id: the choice follows the CT through a rename.
        self._ct_id = ""
        # What the viewer looked like before the ablation grid, while the grid is shown.
        self._normal_view: ablation_view.NormalView | None = None
        self._view_before_variants: ablation_view.NormalView | None = None
        self._threshold_pending = False
        # Operating-point controls the user moved ("threshold", "min_lesion", "min_depth"):
        # weights chosen later no longer set them.
        self._moved: set[str] = set()
        self._recommending = False
        self.variant_outcomes: dict[str, RunOutcome] = {}
        self.last_error: str = ""
        self._pending_variants: list[str] = []
        self._volume_metrics: dict[str, float] | None = None
        self._autosave_timer = QTimer(self)
        self._autosave_timer.setSingleShot(True)
        self._autosave_timer.setInterval(AUTOSAVE_DELAY_MS)
        self._autosave_timer.timeout.connect(self.autosave_now)
        self.recovery = Recovery()
        self._docked = False
        self._watched_window: Any = None
        # Labels layers already offered as ground truth (by unique_id): each is picked once.
        self._seen_labels: set[str] = set()
        self._close_watch = _CloseWatch(self, _weak_call(self.end_session))
        self._threshold_timer = QTimer(self)
        self._threshold_timer.setSingleShot(True)
        self._threshold_timer.setInterval(THRESHOLD_DELAY_MS)
        self._threshold_timer.timeout.connect(self.apply_threshold)
        self._build_ui()
        self._connect_viewer()
        self._refresh_layer_choices()
        self.apply_recommendation()

    # -- UI -----------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        from napari_nstseg.inference import available_devices

        self.ct_layer = ComboBox(label="CT layer", choices=[])
        # Bundled checkpoints by name (each one's description as its tooltip and below), 'file...'.
        self.weights_choices: dict[str, WeightsChoice] = weights_choices()
        self.weights_source = ComboBox(
            label="weights",
            choices=list(self.weights_choices),
            value=first_choice(self.weights_choices),
        )
        for index, choice in enumerate(self.weights_choices.values()):
            self.weights_source.native.setItemData(
                index, choice.description, Qt.ItemDataRole.ToolTipRole
            )
        self.weights_about = Label(value="")
        self.weights_about.native.setWordWrap(True)
        self.weights_file = FileEdit(label="weights file", mode="r", filter="*.safetensors *.json")
        self._show_weights_choice()
        self.device = ComboBox(label="device", choices=["auto", *available_devices()])
        self.mode = ComboBox(label="mode", choices=list(MODES), value="current slice")
        self.roi_layer = ComboBox(label="ROI layer", choices=[NO_LAYER])
        self.roi_margin = FloatSpinBox(label="ROI margin (mm)", value=10.0, min=0.0, max=200.0)
        self.window = ComboBox(label="HU window", choices=list(WINDOWS), value=DEFAULT_WINDOW)
        self.threshold = FloatSlider(label="threshold", value=0.5, min=0.01, max=0.99, step=0.01)
        self.min_lesion = FloatSpinBox(
            label="min lesion (mm)", value=0.0, min=0.0, max=MAX_MIN_LESION_MM, step=0.5
        )
        self.min_lesion.tooltip = (
            "Lesions whose longest axial diameter is below this are left out of the tumor mask "
            "(0: keep every lesion)."
        )
        self.min_depth = FloatSpinBox(
            label="min depth (mm)", value=0.0, min=0.0, max=MAX_MIN_LESION_MM, step=0.5
        )
        self.min_depth.tooltip = (
            "Lesions spanning less than this along z (slices x slice spacing; 4 mm: at least two "
            "slices of a 3 mm scan) are left out of the tumor mask; a lesion next to a slice that "
            "was not run stays (0: keep every lesion)."
        )
        self.show_coarse = CheckBox(text="GLM coarse map", value=True)
        self.show_stages = CheckBox(text="LFM stage masks", value=True)
        self.show_stage_probs = CheckBox(text="LFM stage probabilities", value=False)
        self.show_residual = CheckBox(text="SSL residual", value=False)
        self.show_scale_weights = CheckBox(text="SFM scale weights", value=False)
        self.mirror = CheckBox(text="average with the mirror image", value=False)
        self.mirror.tooltip = (
            "Test-time augmentation: each slice is also run flipped left-right and the two "
            "results are averaged (twice the time)."
        )
        self.overwrite = CheckBox(text="overwrite slices I edited", value=False)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.form = Container(
            widgets=[
                self.ct_layer,
                self.weights_source,
                self.weights_about,
                self.weights_file,
                self.device,
                self.mode,
                self.roi_layer,
                self.roi_margin,
                self.window,
                self.threshold,
                self.min_lesion,
                self.min_depth,
            ]
        )
        # The maps to show, two to a row: five rows of check boxes would push the results down.
        maps_box = QGroupBox("Maps to show")
        maps_grid = QGridLayout(maps_box)
        map_boxes = (
            self.show_coarse,
            self.show_stages,
            self.show_stage_probs,
            self.show_residual,
            self.show_scale_weights,
        )
        for index, box in enumerate(map_boxes):
            maps_grid.addWidget(box.native, index // 2, index % 2)
        options = Container(
            widgets=[
                self.mirror,
                self.overwrite,
                Container(widgets=[self.run_button, self.cancel_button], layout="horizontal"),
            ]
        )
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)

        # metrics against a ground-truth Labels layer
        self.gt_layer = ComboBox(label="ground truth", choices=[NO_LAYER])
        self.metrics_table = QTableWidget(len(METRIC_NAMES), 2)
        self.metrics_table.setHorizontalHeaderLabels(["current slice", "volume"])
        self.metrics_table.setVerticalHeaderLabels(list(METRIC_NAMES))
        _fit_table(self.metrics_table, len(METRIC_NAMES))
        metrics_box = QWidget()
        metrics_layout = QVBoxLayout(metrics_box)
        metrics_layout.addWidget(Container(widgets=[self.gt_layer]).native)
        metrics_layout.addWidget(self.metrics_table)

        # lesion measurements
        self.lesion_table = QTableWidget(0, 4)
        self.lesion_table.setHorizontalHeaderLabels(["id", "volume mL", "diameter mm", "slices"])
        self.lesion_table.horizontalHeaderItem(2).setToolTip(
            "longest axial diameter (max Feret diameter in the axial slice where it is largest)"
        )
        self.lesion_table.verticalHeader().setVisible(False)
        _fit_table(self.lesion_table, 4)
        # Ids are short: their column takes its contents' width so the headers with units fit.
        self.lesion_table.horizontalHeader().setSectionResizeMode(
            0, QHeaderView.ResizeMode.ResizeToContents
        )
        self.measure_button = QPushButton("Measure lesions")
        self.export_button = QPushButton("Export CSV")
        lesions_box = QWidget()
        lesions_box.setToolTip("Lesions in the tumor mask")
        lesions_layout = QVBoxLayout(lesions_box)
        lesions_layout.addWidget(self.lesion_table)
        lesions_layout.addWidget(self.measure_button)
        lesions_layout.addWidget(self.export_button)

        # visual ablation
        self.variant_boxes = {name: CheckBox(text=name, value=True) for name in VARIANTS}
        self.ablation_button = PushButton(text="Run variants on current slice")
        self.normal_view_button = PushButton(text="Back to the normal view", enabled=False)
        self.normal_view_button.tooltip = (
            "Leave the side-by-side grid: layer order, visibility and grid as before the variants"
        )
        ablation = Container(
            widgets=[*self.variant_boxes.values(), self.ablation_button, self.normal_view_button]
        )
        ablation_box = QWidget()
        ablation_box.setToolTip("Visual ablation: the same weights with one module switched off")
        QVBoxLayout(ablation_box).addWidget(ablation.native)

        self.restore_button = QPushButton("Restore autosaved mask")
        self.restore_button.setVisible(False)

        # Results in tabs: one above the other they made the dock taller than a laptop screen.
        self.results = QTabWidget()
        self.results.addTab(metrics_box, "Metrics")
        self.results.addTab(lesions_box, "Lesions")
        self.results.addTab(ablation_box, "Visual ablation")
        content = QWidget()
        layout = QVBoxLayout(content)
        for part in (self.form.native, maps_box, options.native, self.progress, self.status.native):
            layout.addWidget(part)
        layout.addWidget(self.restore_button)
        layout.addWidget(self.results)
        layout.addStretch(1)
        # Whatever does not fit the dock's height scrolls, so no control is ever off-screen.
        self.scroll = QScrollArea()
        self.scroll.setWidget(content)
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.scroll)
        # Wide enough for the content (the lesion table's headers) beside the scroll bar; the
        # height is the dock's to give (napari then adds no stretch below).
        width = (
            content.minimumSizeHint().width() + self.scroll.verticalScrollBar().sizeHint().width()
        )
        self.setMinimumWidth(max(380, width))
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)

        self.weights_source.changed.connect(self._on_weights_source)
        self.mode.changed.connect(self._show_roi_controls)
        self.weights_file.changed.connect(self.apply_recommendation)
        self.window.changed.connect(self.apply_window)
        self.threshold.changed.connect(self._on_threshold_changed)
        self.min_lesion.changed.connect(self._on_min_lesion_changed)
        self.min_depth.changed.connect(self._on_min_depth_changed)
        self.ct_layer.changed.connect(self._on_ct_changed)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.gt_layer.changed.connect(self.update_metrics)
        self.measure_button.clicked.connect(self.update_measurements)
        self.export_button.clicked.connect(self._export_clicked)
        self.ablation_button.changed.connect(self.run_variants)
        self.normal_view_button.changed.connect(self.show_normal_view)
        self.restore_button.clicked.connect(self.restore_autosave)

    def _connect_viewer(self) -> None:
        events = self.viewer.layers.events
        events.inserted.connect(self._refresh_layer_choices)
        events.removed.connect(self._on_layer_removed)
        events.removed.connect(self._refresh_layer_choices)
        events.moved.connect(self._refresh_layer_choices)
        self.viewer.dims.events.current_step.connect(self._on_step)

    def _on_layer_removed(self, event: Any) -> None:
        # A mask closed (also by viewer.close(), which removes every layer before the window
        # closes): its recovery file is settled before its edit tracker is forgotten.
        self._settle_recovery(event.value)
        self.session.forget(event.value)

    def _refresh_layer_choices(self, event: Any = None) -> None:
        # A renamed CT's layers take its new name, and the choice below follows it.
        self.session.follow_renames()
        layers = list(self.viewer.layers)
        for layer in layers:
            # Renames must reach the choices too; connecting twice is harmless for psygnal/vispy.
            layer.events.name.disconnect(self._refresh_layer_choices)
            layer.events.name.connect(self._refresh_layer_choices)
        images = [ly.name for ly in layers if is_image(ly) and not _generated(ly)]
        labels = [ly.name for ly in layers if is_labels(ly)]
        shapes = [ly.name for ly in layers if is_shapes(ly)]
        chosen = self.session.layer_by_id(self._ct_id)
        _set_choices(self.ct_layer, images, keep_first=False)
        if chosen is not None and chosen.name in images and self.ct_layer.value != chosen.name:
            self.ct_layer.value = chosen.name
        _set_choices(self.roi_layer, [NO_LAYER, *shapes, *labels])
        _set_choices(self.gt_layer, [NO_LAYER, *labels])
        self._pick_ground_truth(layers)
        self._track_mask_layer()

    def _pick_ground_truth(self, layers: list[Any]) -> None:
        """A Labels layer that newly arrived and looks like ground truth (the sample's, or one
        named so) becomes the metrics' reference while none is chosen; a choice the user made,
        "(none)" included once a layer was offered, is left alone."""
        new = [ly for ly in layers if is_labels(ly) and layer_id(ly) not in self._seen_labels]
        self._seen_labels.update(layer_id(ly) for ly in new)
        if self.gt_layer.value not in (None, NO_LAYER) or not new:
            return
        ct = self._layer(self.ct_layer.value)
        name = pick_ground_truth(new, None if ct is None else tuple(ct.data.shape))
        if name is not None:
            self.gt_layer.value = name

    def _on_weights_source(self, value: str) -> None:
        self._show_weights_choice()
        self.apply_recommendation()

    def _show_weights_choice(self) -> None:
        choice = self.weights_choices[self.weights_source.value]
        self.weights_file.visible = not choice.bundled
        self.weights_about.value = describe(choice)
        self.weights_source.tooltip = choice.description

    def _show_roi_controls(self, *_: Any) -> None:
        # Only ROI mode reads them: elsewhere they would only make the panel taller.
        roi = self.mode.value == "ROI"
        self.roi_layer.visible = roi
        self.roi_margin.visible = roi

    def apply_recommendation(self, *_: Any) -> None:
        """Set the threshold, min-lesion and min-depth controls the user has not moved to the
        operating point the chosen weights recommend (0.5, 0 and 0 mm when they carry none).

        Setting them re-cuts nothing: the mask shown came from the run that made it, and the
        values are for the next run (moving a control afterwards re-cuts as usual).
        """
        point = recommended_point(self._chosen_weights_path())
        if point is None:
            return
        controls = (
            ("threshold", self.threshold, point.threshold),
            ("min_lesion", self.min_lesion, point.min_lesion_mm),
            ("min_depth", self.min_depth, point.min_depth_mm),
        )
        self._recommending = True
        try:
            for name, control, value in controls:
                if name not in self._moved:
                    control.value = float(np.clip(value, control.min, control.max))
        finally:
            self._recommending = False

    def _chosen_weights_path(self) -> Path | None:
        choice = self.weights_choices[self.weights_source.value]
        if choice.bundled:
            return choice.path
        value = str(self.weights_file.value)
        return Path(value) if value and value != "." else None

    def _on_ct_changed(self, name: str | None) -> None:
        ct = self._layer(name)
        uid = "" if ct is None else layer_id(ct)
        if uid and uid != self._ct_id:  # another CT, not this one renamed
            self._ct_id = uid
            self.apply_window()
            self._offer_autosave()
        self._track_mask_layer()

    def _on_threshold_changed(self, *_: Any) -> None:
        self._on_operating_point_changed("threshold")

    def _on_min_lesion_changed(self, *_: Any) -> None:
        self._on_operating_point_changed("min_lesion")

    def _on_min_depth_changed(self, *_: Any) -> None:
        self._on_operating_point_changed("min_depth")

    def _on_operating_point_changed(self, name: str) -> None:
        if self._recommending:
            return
        # From now on the user's value wins over any weights' recommendation.
        self._moved.add(name)
        # Not QTimer.start directly: it would take the slider value as its interval.
        self._threshold_timer.start()

    def _on_step(self, event: Any = None) -> None:
        if self.gt_layer.value not in (None, NO_LAYER):
            self.update_metrics(volume=False)

    # -- helpers ----------------------------------------------------------------------------
    def _layer(self, name: str | None) -> Any:
        return None if name == NO_LAYER else self.session.layer(name)

    def _ct(self) -> Any:
        layer = self._layer(self.ct_layer.value)
        if layer is None:
            raise WidgetError("Choose a CT image layer first (open a scan or the sample CT).")
        check_ct_layer(layer)
        return layer

    def mask_layer(self, variant: str = "") -> Any:
        """The chosen CT's tumor mask (of ``variant`` if named), wherever it is in the list and
        whatever the CT is called now."""
        return self.session.mask_layer(self._layer(self.ct_layer.value), variant)

    def _fail(self, message: str) -> None:
        self.last_error = message
        self.status.value = message
        show_error(message)

    def apply_window(self, *_: Any) -> None:
        """Set the CT layer's contrast limits to the chosen HU window preset."""
        layer = self._layer(self.ct_layer.value)
        if layer is not None and is_image(layer) and not layer.rgb:
            layer.contrast_limits = contrast_limits(self.window.value)

    def current_z(self, layer: Any) -> int:
        """The axial slice of ``layer`` the viewer shows now (the nearest one, off its ends)."""
        return int(np.clip(self._z_on_screen(layer), 0, layer.data.shape[0] - 1))

    def _z_on_screen(self, layer: Any) -> int:
        point = layer.world_to_data(self.viewer.dims.point[-layer.ndim :])
        return int(np.round(point[0]))

    def slice_on_screen(self, ct: Any) -> int:
        """The slice of ``ct`` the viewer shows now; WidgetError when the view is on no slice
        of it (another scan on screen), rather than a run on its first or last slice."""
        z = self._z_on_screen(ct)
        n = int(ct.data.shape[0])
        if 0 <= z < n:
            return z
        world_z = float(self.viewer.dims.point[-ct.ndim])
        ends = sorted(float(ct.data_to_world((i, 0, 0))[0]) for i in (0, n - 1))
        raise WidgetError(
            f"The view is not on {ct.name!r}: it shows z = {world_z:.1f} mm, and "
            f"{ct.name!r} spans z = {ends[0]:.1f} to {ends[1]:.1f} mm. Scroll to a slice of "
            f"{ct.name!r}, or choose the CT on screen, then run again."
        )

    def _weights(self) -> str | None:
        choice = self.weights_choices[self.weights_source.value]
        if choice.bundled:
            # The engine gets the checkpoint's path, so the chosen name is what runs.
            if choice.path is None or not choice.path.is_file():
                raise WidgetError(
                    f"The bundled weights {choice.name!r} are no longer installed at "
                    f"{choice.path}; choose 'file...' under weights and pick a checkpoint (.json)."
                )
            return str(choice.path)
        path = Path(self.weights_file.value)
        if not str(self.weights_file.value) or str(path) == "." or not path.exists():
            raise WidgetError(f"Weights file {str(path)!r} does not exist; choose a checkpoint.")
        return str(path)

    def roi_box(self, ct: Any) -> tuple[slice, slice, slice]:
        """(z, y, x) box around the ROI layer (a rectangle or a mask), grown by the margin."""
        roi_layer = self._layer(self.roi_layer.value)
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
                z_world = self.viewer.dims.point[-3]
                world = np.column_stack([np.full(len(world), z_world), world])
            points = np.array([ct.world_to_data(w[-3:]) for w in world])
            low, high = points.min(axis=0), points.max(axis=0)
        else:
            data = np.asarray(roi_layer.data)
            if data.shape != tuple(shape):
                raise WidgetError(
                    f"ROI layer {roi_layer.name!r} has shape {data.shape}, not the CT's "
                    f"{tuple(shape)}."
                )
            nonzero = np.argwhere(data > 0)
            if nonzero.size == 0:
                raise WidgetError(f"ROI layer {roi_layer.name!r} is empty; paint a region first.")
            low, high = nonzero.min(axis=0), nonzero.max(axis=0)
        margin = float(self.roi_margin.value) / np.abs(np.asarray(ct.scale, dtype=float))
        start = np.clip(np.floor(low - margin), 0, shape - 1).astype(int)
        stop = np.clip(np.ceil(high + margin) + 1, 1, shape).astype(int)
        return tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))

    def _maps(self) -> MapsToShow:
        return MapsToShow(
            coarse=self.show_coarse.value,
            stages=self.show_stages.value,
            stage_probabilities=self.show_stage_probs.value,
            residual=self.show_residual.value,
            scale_weights=self.show_scale_weights.value,
        )

    def make_request(self, mode: str | None = None, variant: str = "") -> RunRequest:
        """Read the widget into a RunRequest; raises WidgetError with a readable message."""
        ct = self._ct()
        mode = mode or self.mode.value
        roi = None
        if mode == "current slice":
            z_indices: list[int] | None = [self.slice_on_screen(ct)]
        elif mode == "whole volume":
            z_indices = None
        else:
            roi = self.roi_box(ct)
            z_indices = list(range(roi[0].start, roi[0].stop))
        return RunRequest(
            ct_name=ct.name,
            volume=np.asarray(ct.data),
            spacing=tuple(float(abs(s)) for s in ct.scale),
            z_indices=z_indices,
            roi=roi,
            weights=self._weights(),
            device=str(self.device.value),
            threshold=float(self.threshold.value),
            maps=self._maps(),
            overwrite=bool(self.overwrite.value),
            variant=variant,
            min_lesion_mm=float(self.min_lesion.value),
            min_depth_mm=float(self.min_depth.value),
            mirror=bool(self.mirror.value),
            ct_id=layer_id(ct),
        )

    # -- running ----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._worker is not None

    def run(self, *_: Any, mode: str | None = None) -> None:
        """Start a model run in the background; problems become a notification."""
        if self.running:
            show_info("A run is already in progress; cancel it or wait for it to finish.")
            return
        try:
            request = self.make_request(mode)
        except WidgetError as exc:
            self._fail(str(exc))
            return
        # This run reads the slider now, so an earlier threshold change needs no re-cut.
        self._threshold_timer.stop()
        self._threshold_pending = False
        self._start(request)

    def run_variants(self, *_: Any) -> None:
        """Run the current slice once per chosen ablation variant and show them side by side."""
        if self.running:
            show_info("A run is already in progress; cancel it or wait for it to finish.")
            return
        self._pending_variants = [n for n, box in self.variant_boxes.items() if box.value]
        # The view to come back to is the one before the variants' layers were made.
        self._view_before_variants = (
            ablation_view.normal_view(self.viewer) if self._normal_view is None else None
        )
        if not self._pending_variants:
            self._fail("Tick at least one ablation variant to run.")
            return
        self._next_variant()

    def _next_variant(self) -> None:
        if not self._pending_variants:
            self._show_grid()
            return
        variant = self._pending_variants.pop(0)
        try:
            request = self.make_request("current slice", variant=variant)
        except WidgetError as exc:
            self._pending_variants = []
            self._fail(str(exc))
            return
        # Variants are compared on the mask; intermediate maps would triple the layer list.
        request.maps = MapsToShow(coarse=False, stages=False)
        request.overwrite = True
        self._start(request)

    def _show_grid(self) -> None:
        """The full model and each variant side by side, each cell its CT under its mask with
        the mask's name; "Back to the normal view" undoes it."""
        ct = self._layer(self.ct_layer.value)
        if ct is None:
            return
        cells = []
        if self.mask_layer() is not None:
            cells.append((ct, self.mask_layer()))
        for variant in VARIANTS:
            mask = self.mask_layer(variant)
            if mask is not None:
                cells.append((self.session.ct_view(ct, variant), mask))
        if self._normal_view is None:
            self._normal_view = self._view_before_variants or ablation_view.normal_view(self.viewer)
        ablation_view.show_grid(self.viewer, cells)
        self.normal_view_button.enabled = True

    def show_normal_view(self, *_: Any) -> None:
        """Leave the ablation grid: layer order, visibility and grid settings as before it."""
        if self._normal_view is not None:
            ablation_view.restore_view(self.viewer, self._normal_view)
        self._normal_view = None
        self.normal_view_button.enabled = False

    def _start(self, request: RunRequest) -> None:
        self._request = request
        self.run_button.enabled = False
        self.ablation_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.setRange(0, 0)
        self.status.value = "loading model..." if request.variant == "" else request.variant
        worker = predict_worker(self.session, request)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_returned)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        worker.start()

    def cancel(self, *_: Any) -> None:
        """Stop after the batch in progress; finished slices are kept."""
        self._pending_variants = []
        if self._request is not None:
            self._request.cancel.set()
            self.status.value = "cancelling after this batch..."

    def _on_progress(self, progress: tuple[int, int] | str) -> None:
        if isinstance(progress, str):
            self.status.value = progress
            show_info(progress)
            return
        done, total = progress
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        self.status.value = f"{done} / {total} slices"

    def _on_returned(self, outcome: RunOutcome) -> None:
        self.last_outcome = outcome
        request = outcome.request
        if request.variant:
            self.variant_outcomes[request.variant] = outcome
        if outcome.error:
            self._fail(outcome.error)
        done = outcome.slices_done
        if outcome.prediction is None or (outcome.cancelled and done == 0):
            if outcome.cancelled:
                self.status.value = (
                    f"cancelled before any slice finished: the layers of {request.ct_name!r} "
                    "are as they were"
                )
            return
        try:
            ct = self.session.show(outcome)
        except Exception as exc:  # a layer problem must not take the viewer down
            self._fail(f"Could not show the prediction on {request.ct_name!r}: {exc}")
            return
        if ct is None:
            if not outcome.error:
                self._fail(f"The CT layer {request.ct_name!r} was closed during the run.")
            return
        if not request.variant:
            self._warn_mixed_mirroring(ct)
        self._track_mask_layer()
        if outcome.error:
            return
        self.status.value = (
            f"cancelled: {done} of {request.n_slices} slice(s) finished and kept; the others "
            "are as they were"
            if outcome.cancelled
            else f"done: {done} slice(s)"
        )
        if not request.variant:
            self._ready_to_correct(ct)
            self.update_measurements()
            self.update_metrics()

    def _ready_to_correct(self, ct: Any) -> None:
        """After a run the tumor mask is the selected layer, shown, so napari's brush, eraser and
        fill act on it at once (not on a map that happened to be added last)."""
        mask = self.session.mask_layer(ct)
        if mask is None:
            return
        mask.visible = True
        self.viewer.layers.selection.active = mask

    def _on_finished(self) -> None:
        self._worker = None
        self._request = None
        self.run_button.enabled = True
        self.ablation_button.enabled = True
        self.cancel_button.enabled = False
        # The bar says how much of the run was done: full only when it all was.
        outcome = self.last_outcome
        total, done = 1, 1
        if outcome is not None and (outcome.cancelled or outcome.error):
            total, done = max(outcome.request.n_slices, 1), outcome.slices_done
        self.progress.setRange(0, total)
        self.progress.setValue(done)
        if self._pending_variants:
            self._next_variant()
        elif outcome is not None and outcome.request.variant and not outcome.cancelled:
            self._show_grid()
        if self._threshold_pending and not self.running:
            self._threshold_pending = False
            self._threshold_timer.start()

    # -- live threshold and minimum lesion size and depth ----------------------------------
    def apply_threshold(self, *_: Any) -> bool:
        """Re-cut the last run's masks at the slider's threshold and the min-lesion size and
        depth, as one undoable step.

        The tumor mask (except slices the user edited; lesions under the minimum size or
        depth left out) and the GLM coarse and LFM stage masks of the last full-model run on
        the chosen CT layer are re-cut from its stored probabilities; no model runs. Returns
        whether anything was re-cut. Called by the controls' debounce timer; during a run it
        waits for the run to finish.
        """
        self._threshold_timer.stop()
        if self.running:
            self._threshold_pending = True
            return False
        ct = self._layer(self.ct_layer.value)
        point = OperatingPoint(
            float(self.threshold.value), float(self.min_lesion.value), float(self.min_depth.value)
        )
        try:
            outcome = self.session.recut(ct, point)
        except Exception as exc:  # a layer problem must not take the viewer down
            self._fail(f"Could not apply {point.describe()} on {ct.name!r}: {exc}")
            return False
        if outcome is None:
            if ct is not None:
                self.status.value = (
                    f"{point.describe()}: used by the next run (no run on {ct.name!r} to re-cut)"
                )
            return False
        self._track_mask_layer()
        self.status.value = (
            f"{point.describe()} applied to the last run ({outcome.slices_done} slice(s))"
        )
        self.update_measurements()
        self.update_metrics()
        return True

    # -- edits and autosave -----------------------------------------------------------------
    def _warn_mixed_mirroring(self, ct: Any) -> None:
        """Say so when runs with and without mirroring have made slices of one tumor mask."""
        layer = self.session.mask_layer(ct)
        if layer is None:
            return
        mirrored, plain = mirroring_of_slices(layer)
        if mirrored and plain:
            show_warning(
                f"The tumor mask of {ct.name!r} now holds slices made with the mirror image "
                f"averaged in ({_slice_list(mirrored)}) and slices made without "
                f"({_slice_list(plain)}); run the whole volume again with one setting for a "
                "consistent mask."
            )

    def _track_mask_layer(self) -> None:
        layer = self.mask_layer()
        if layer is not None:
            self.session.watch(layer, _weak_call(self._schedule_autosave))
            ct = self._layer(self.ct_layer.value)
            # Where its recovery file goes, for the writer to remove it when the mask is saved.
            layer.metadata[AUTOSAVE_KEY] = str(ct_autosave_path(ct))

    def _schedule_autosave(self) -> None:
        self._volume_metrics = None
        self._autosave_timer.start()

    def autosave_now(self) -> Path | None:
        """Write the tumor mask to the recovery file (atomically, via io.write_mask); a mask as
        it was last saved removes the file instead. Returns the file written, if any."""
        mask, ct = self.mask_layer(), self._layer(self.ct_layer.value)
        if mask is None or ct is None:
            return None
        path = ct_autosave_path(ct)
        try:
            return self.recovery.write(path, mask.data, ct_geometry(ct))
        except Exception as exc:
            show_warning(f"Autosave of {mask.name!r} to {path} failed: {exc}")
            return None

    def end_session(self) -> list[Path]:
        """The viewer or this panel is closing cleanly: each tumor mask still open settles its
        recovery file (:meth:`autosave.Recovery.settle`). Returns the files kept."""
        self._autosave_timer.stop()
        kept = []
        for mask in list(self.viewer.layers):
            if self._settle_recovery(mask):
                kept.append(Path(mask.metadata[AUTOSAVE_KEY]))
        return kept

    def _settle_recovery(self, mask: Any) -> bool:
        """Keep ``mask``'s recovery file only while it holds unsaved hand edits; whether kept."""
        path = mask.metadata.get(AUTOSAVE_KEY)
        if not path or not is_labels(mask):
            return False
        edited = bool(edit_tracker(mask).edited)
        try:
            return self.recovery.settle(Path(path), mask.data, ct_geometry(mask), edited)
        except Exception as exc:  # closing must go on whatever the disk says
            show_warning(f"Could not settle the autosave of {mask.name!r} at {path}: {exc}")
            return False

    def event(self, event: QEvent) -> bool:
        # Docked: watch the main window's close and fit the dock's title. Taken out of the
        # dock (its close button): the panel's session ends.
        if event.type() == QEvent.Type.ParentChange:
            if self.parent() is None:
                if getattr(self, "_docked", False):
                    self._docked = False
                    self.end_session()
            else:
                self._docked = True
                self._on_docked()
        return super().event(event)

    def _on_docked(self) -> None:
        window = QWidget.window(self)  # self.window is the HU window control
        if window is not self and window is not self._watched_window:
            window.installEventFilter(self._close_watch)
            self._watched_window = window

    def showEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        # The dock's title bar is made after the panel is put in it, and the main window lays
        # its docks out once they are shown: fitted then.
        super().showEvent(event)
        QTimer.singleShot(0, self._fit_dock_title)

    def _fit_dock_title(self) -> None:
        dock = self.parent()
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parent()
        title = None if dock is None else dock.titleBarWidget()
        if title is not None and title.layout() is not None:
            # The whole title ("Segment small tumors (CDI-NSTSEG) (napari-nstseg)") readable
            # beside the title bar's buttons, not cut at the panel's own width.
            # (+16: the title bar's separator line takes a few pixels of its own)
            needed = title.layout().sizeHint().width() + 16
            if needed > self.minimumWidth():
                self.setMinimumWidth(needed)
                dock.updateGeometry()

    def _offer_autosave(self) -> None:
        ct = self._layer(self.ct_layer.value)
        available = False
        if ct is not None and is_image(ct) and ct.data.ndim == 3:
            available = ct_autosave_path(ct).exists()
        self.restore_button.setVisible(available)
        if available:
            show_info(
                f"An autosaved tumor mask exists for {ct.name!r}; use 'Restore autosaved mask' "
                "in the NSTSEG panel to get it back."
            )

    def restore_autosave(self) -> None:
        """Load the recovery file into the tumor mask (undoable)."""
        from napari_nstseg.io.readers import read_mask

        from .layers import Region, layer_kwargs, write_mask

        try:
            ct = self._ct()
            geometry = ct_geometry(ct)
            path = ct_autosave_path(ct)
            data = read_mask(path, like=geometry)
        except Exception as exc:
            self._fail(f"Could not restore the autosaved mask: {exc}")
            return
        layer = self.mask_layer()
        if layer is None:
            layer = self.viewer.add_labels(
                np.zeros(ct.data.shape, np.uint8),
                name=LayerNames(ct.name).tumor_mask,
                **layer_kwargs(ct),
            )
            link(layer, ct, mask_role())
            self._track_mask_layer()
        region = Region(np.arange(ct.data.shape[0]), slice(None), slice(None))
        tracker = edit_tracker(layer)
        write_mask(layer, region, data, tracker, overwrite=True)
        # The recovery file holds the user's work; which slices were hand-edited is not stored,
        # so every slice with a label is protected from model re-runs like a fresh edit.
        tracker.mark_edited(np.flatnonzero(data.reshape(data.shape[0], -1).any(axis=1)))
        self.status.value = f"restored the autosaved mask from {path}"

    # -- metrics and measurements -----------------------------------------------------------
    def update_metrics(self, *_: Any, volume: bool = True) -> dict[str, tuple[float, float]]:
        """Fill the metrics table (current slice, volume) against the ground-truth layer.

        ``volume=False`` (scrolling through slices) reuses the volume column unless an edit
        or a run made it stale, so stepping stays quick on big scans.
        """
        from .measurements import slice_metrics, volume_metrics

        gt, pred = self._layer(self.gt_layer.value), self.mask_layer()
        self.metrics_table.clearContents()
        if gt is None or pred is None:
            return {}
        if gt.data.shape != pred.data.shape:
            self._fail(
                f"Ground truth {gt.name!r} has shape {tuple(gt.data.shape)}, not the tumor "
                f"mask's {tuple(pred.data.shape)}."
            )
            return {}
        z = self.current_z(pred)
        on_slice = slice_metrics(np.asarray(pred.data[z]) > 0, np.asarray(gt.data[z]) > 0)
        if volume or self._volume_metrics is None:
            self._volume_metrics = volume_metrics(
                np.asarray(pred.data) > 0, np.asarray(gt.data) > 0
            )
        values = {name: (on_slice[name], self._volume_metrics[name]) for name in METRIC_NAMES}
        for row, name in enumerate(METRIC_NAMES):
            for col, value in enumerate(values[name]):
                self.metrics_table.setItem(row, col, QTableWidgetItem(_fmt(value)))
        return values

    def update_measurements(self, *_: Any) -> list[dict[str, Any]]:
        """Fill the lesion table from the tumor mask's connected components."""
        from .measurements import lesion_rows

        layer = self.mask_layer()
        rows = [] if layer is None else lesion_rows(np.asarray(layer.data), tuple(layer.scale))
        self.lesion_table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, key in enumerate(("id", "volume_ml", "longest_axial_diameter_mm", "slices")):
                self.lesion_table.setItem(r, c, QTableWidgetItem(_fmt(row[key])))
        self._lesion_rows = rows
        return rows

    def _export_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export lesions", "lesions.csv", "CSV (*.csv)")
        if path:
            self.export_csv(path)

    def export_csv(self, path: str | Path) -> Path | None:
        """Write the lesion table to ``path`` as CSV."""
        rows = self.update_measurements()
        path = Path(path)
        try:
            with open(path, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(
                    ["id", "volume_ml", "longest_axial_diameter_mm", "first_slice", "last_slice"]
                )
                for row in rows:
                    first, last = row["slice_range"]
                    writer.writerow(
                        [
                            row["id"],
                            f"{row['volume_ml']:.4f}",
                            f"{row['longest_axial_diameter_mm']:.2f}",
                            first,
                            last,
                        ]
                    )
        except OSError as exc:
            self._fail(f"Could not write {path}: {exc.strerror or exc}")
            return None
        return path


class _CloseWatch(QObject):
    """Calls ``on_close`` when the window it watches (napari's main window) is closed."""

    def __init__(self, parent: QObject, on_close: Callable[[], None]) -> None:
        super().__init__(parent)
        self._on_close = on_close

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.Close:
            self._on_close()
        return False


def _weak_call(method: Callable[[], None]) -> Callable[[], None]:
    """``method`` (of the widget itself, never of a napari proxy) without keeping the widget
    alive from the mask's edit tracker."""
    ref = weakref.WeakMethod(method)

    def call() -> None:
        bound = ref()
        if bound is not None:
            bound()

    return call


def _generated(layer: Any) -> bool:
    return bool(layer.metadata.get("nstseg_generated"))


def _set_choices(combo: ComboBox, names: list[str], keep_first: bool = True) -> None:
    current = combo.value
    combo.choices = names
    if current in names:
        combo.value = current
    elif names and (keep_first or current is None):
        combo.value = names[0]


def _fit_table(table: QTableWidget, rows: int) -> None:
    """Columns share the width; tall enough for ``rows`` rows without scrolling."""
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
    height = table.horizontalHeader().sizeHint().height() + 2 * table.frameWidth()
    height += rows * table.verticalHeader().defaultSectionSize()
    table.setMinimumHeight(height)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)


def _slice_list(zs: list[int]) -> str:
    """Sorted slice indices as runs: [1, 2, 3, 7] -> '1-3, 7'."""
    runs: list[list[int]] = []
    for z in zs:
        if runs and z == runs[-1][1] + 1:
            runs[-1][1] = z
        else:
            runs.append([z, z])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if np.isnan(value) else f"{value:.3f}"
    if isinstance(value, tuple):
        return f"{value[0]}-{value[1]}"
    return str(value)
