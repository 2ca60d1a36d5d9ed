"""NSTSegWidget: the napari dock widget that runs CDI-NSTSEG and shows every stage as a layer.

Wiring only (the controls are laid out by :mod:`.panel_layout`): the controls are read into a
run request (:mod:`.requests`); the runs, their results and the live re-cut are kept by
:mod:`.runs` and :mod:`.session` (no Qt, keyed by napari's layer ids, because the viewer a
plugin gets is a proxy that hands out a new object for every layer access); the engine runs in
a ``thread_worker`` (:mod:`.worker`) so Cancel acts between batches; autosave is
:mod:`.autosave`, the metrics and lesion table :mod:`.measurements` and :mod:`.results`;
keeping corrections and fine-tuning on them :mod:`.corrections_round` (its tab
:mod:`.corrections_tab`, the work without Qt :mod:`.learning`).
Nothing a user can do here raises out of the widget; problems arrive as napari notifications
in one sentence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QTimer
from qtpy.QtWidgets import QFileDialog, QWidget

from napari_nstseg.windows import contrast_limits

from .ablation_view import AblationGrid, viewer_grid
from .autosave import AUTOSAVE_KEY, Recovery, autosave_path, ct_autosave_path, restore, settle_mask
from .corrections_round import CorrectionsRound
from .docking import CloseWatch, weak_call
from .ground_truth import pick_ground_truth
from .layers import MapsToShow, ct_geometry, is_image, is_labels, is_shapes, layer_id
from .measurements import Scores, lesion_rows, write_lesions_csv
from .operating_point import OperatingPoint, Recommendation
from .organ_mode import ORGAN_MODE
from .panel_layout import PanelLayout
from .requests import Choices, WidgetError, build_request, check_ct_layer, current_z
from .results import NO_LAYER
from .runner import VARIANTS
from .runs import Report, Runs
from .session import RunOutcome, RunRequest, Session
from .weights import BUNDLED, FROM_FILE
from .worker import predict_worker

__all__ = ["BUNDLED", "FROM_FILE", "NSTSegWidget", "RunOutcome", "RunRequest", "WidgetError"]
__all__ += ["autosave_path", "check_ct_layer", "viewer_grid"]

AUTOSAVE_DELAY_MS = 3000
# Long enough that dragging the threshold slider re-cuts the mask once (one undo step), short
# enough to feel immediate.
THRESHOLD_DELAY_MS = 250


class NSTSegWidget(PanelLayout):
    """Dock widget: choose CT, weights, device and mode; run, cancel, inspect, measure, save."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = Session(napari_viewer)
        self.runs = Runs(self.session)
        self.grid = AblationGrid(napari_viewer)
        self.recommendation = Recommendation()
        self.scores = Scores()
        self.recovery = Recovery()
        self._worker: Any = None  # the run's thread worker, held while it runs
        self.corrections = CorrectionsRound(
            self.corrections_tab,
            self.session,
            ct=self._ct,
            weights=self._chosen_weights_path,
            device=lambda: str(self.device.value),
            fail=self._fail,
            use_weights=self._use_weights_file,
        )
        self._recommending = False
        self.last_error: str = ""
        # The chosen CT's napari unique_id: the choice follows the CT through a rename.
        self._ct_id = ""
        # Labels layers already offered as ground truth (by unique_id): each is picked once.
        self._seen_labels: set[str] = set()
        self._docked = False
        self._close_watch = CloseWatch(self, weak_call(self.end_session))
        self._autosave_timer = _single_shot(self, AUTOSAVE_DELAY_MS, self.autosave_now)
        self._threshold_timer = _single_shot(self, THRESHOLD_DELAY_MS, self.apply_threshold)
        self._connect_controls()
        self._connect_viewer()
        self._refresh_layer_choices()
        self.apply_recommendation()

    # -- wiring -------------------------------------------------------------------------------
    def _connect_controls(self) -> None:
        self.weights_source.changed.connect(self._on_weights_source)
        self.mode.changed.connect(self._show_roi_controls)
        self.mode.changed.connect(self.apply_recommendation)  # organ mode may have its own point
        self.organ.layer.changed.connect(self._on_organ_layer)
        self.weights_file.changed.connect(self.apply_recommendation)
        self.window.changed.connect(self.apply_window)
        for name in ("threshold", "min_lesion", "min_depth"):
            getattr(self, name).changed.connect(lambda *_, name=name: self._on_point_moved(name))
        self.ct_layer.changed.connect(self._on_ct_changed)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.gt_layer.changed.connect(self.update_metrics)
        self.measure_button.clicked.connect(self.update_measurements)
        self.export_button.clicked.connect(self._export_clicked)
        self.ablation_button.changed.connect(self.run_variants)
        self.normal_view_button.changed.connect(self.show_normal_view)
        self.restore_button.clicked.connect(self.restore_autosave)
        tab, corrections = self.corrections_tab, self.corrections
        tab.keep_button.changed.connect(corrections.keep)
        tab.finetune_button.changed.connect(corrections.fine_tune)
        tab.cancel_button.changed.connect(corrections.cancel)
        tab.use_button.changed.connect(corrections.use_new_weights)

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
        self.organ.set_layers(layers, self._layer(self.ct_layer.value))
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

    def apply_recommendation(self, *_: Any) -> None:
        """Set the threshold, min-lesion and min-depth controls the user has not moved to the
        operating point the chosen weights recommend for the mode (in organ mode their organ-
        mode point where they carry one; 0.5, 0 and 0 mm when they carry none).

        Setting them re-cuts nothing: the mask shown came from the run that made it, and the
        values are for the next run (moving a control afterwards re-cuts as usual).
        """
        self._recommending = True
        try:
            organs = self.mode.value == ORGAN_MODE
            chosen = self._chosen_weights_path()
            for name, value in self.recommendation.values(chosen, organs).items():
                control = getattr(self, name)
                control.value = float(np.clip(value, control.min, control.max))
        finally:
            self._recommending = False

    def _chosen_weights_path(self) -> Path | None:
        choice = self.weights_choices[self.weights_source.value]
        if choice.bundled:
            return choice.path
        value = str(self.weights_file.value)
        return Path(value) if value and value != "." else None

    def _use_weights_file(self, path: Path) -> None:
        self.weights_source.value = FROM_FILE
        self.weights_file.value = str(path)

    def _on_ct_changed(self, name: str | None) -> None:
        ct = self._layer(name)
        uid = "" if ct is None else layer_id(ct)
        if uid and uid != self._ct_id:  # another CT, not this one renamed
            self._ct_id = uid
            self.apply_window()
            self._offer_autosave()
            self.organ.set_layers(list(self.viewer.layers), ct)  # those on this CT's grid
        self._track_mask_layer()

    def _on_organ_layer(self, *_: Any) -> None:
        self.organ.follow(self._layer(self.organ.layer.value))

    def _on_point_moved(self, name: str) -> None:
        if self._recommending:
            return
        self.recommendation.move(name)  # from now on the user's value wins over the weights'
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

    def _tell(self, report: Report) -> None:
        for error in report.errors:
            self._fail(error)
        for warning in report.warnings:
            show_warning(warning)
        if report.status:
            self.status.value = report.status

    def apply_window(self, *_: Any) -> None:
        """Set the CT layer's contrast limits to the chosen HU window preset."""
        layer = self._layer(self.ct_layer.value)
        if layer is not None and is_image(layer) and not layer.rgb:
            layer.contrast_limits = contrast_limits(self.window.value)

    def make_request(self, mode: str | None = None, variant: str = "") -> RunRequest:
        """Read the widget into a RunRequest; raises WidgetError with a readable message."""
        choice = self.weights_choices[self.weights_source.value]
        choices = Choices(
            mode=mode or self.mode.value,
            weights_path=self._chosen_weights_path(),
            bundled_name=choice.name if choice.bundled else None,
            device=str(self.device.value),
            threshold=float(self.threshold.value),
            min_lesion_mm=float(self.min_lesion.value),
            min_depth_mm=float(self.min_depth.value),
            maps=self.maps_to_show(),
            overwrite=bool(self.overwrite.value),
            mirror=bool(self.mirror.value),
            roi_layer=self._layer(self.roi_layer.value),
            roi_margin_mm=float(self.roi_margin.value),
            organ_layer=self._layer(self.organ.layer.value),
            organs=tuple(self.organ.ticked()),
            organ_margin_mm=float(self.organ.margin.value),
            organ_slice_only=bool(self.organ.slice_only.value),
            layers=tuple(self.viewer.layers),
        )
        return build_request(self.viewer, self._ct(), choices, variant)

    # -- running ----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.runs.running

    @property
    def last_outcome(self) -> RunOutcome | None:
        return self.runs.last_outcome

    @property
    def variant_outcomes(self) -> dict[str, RunOutcome]:
        return self.runs.variant_outcomes

    @property
    def _request(self) -> RunRequest | None:
        return self.runs.request

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
        self._threshold_timer.stop()  # this run reads the operating point now
        self._start(request)

    def run_variants(self, *_: Any) -> None:
        """Run the current slice once per chosen ablation variant and show them side by side."""
        if self.running:
            show_info("A run is already in progress; cancel it or wait for it to finish.")
            return
        self.runs.pending_variants = [n for n, box in self.variant_boxes.items() if box.value]
        self.grid.remember()
        if not self.runs.pending_variants:
            self._fail("Tick at least one ablation variant to run.")
            return
        self._next_variant()

    def _next_variant(self) -> None:
        variant = self.runs.pending_variants.pop(0)
        try:
            request = self.make_request("current slice", variant=variant)
        except WidgetError as exc:
            self.runs.pending_variants = []
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
        if ct is not None:
            self.grid.show(self.session.grid_cells(ct, VARIANTS))
            self.normal_view_button.enabled = True

    def show_normal_view(self, *_: Any) -> None:
        """Leave the ablation grid: layer order, visibility and grid settings as before it."""
        self.grid.leave()
        self.normal_view_button.enabled = False

    def _start(self, request: RunRequest) -> None:
        self.status.value = self.runs.start(request)
        self.run_button.enabled = False
        self.ablation_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.setRange(0, 0)
        worker = predict_worker(self.session, request)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_returned)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        worker.start()

    def cancel(self, *_: Any) -> None:
        """Stop after the batch in progress; finished slices are kept."""
        if self.runs.cancel():
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
        report = self.runs.returned(outcome)
        self._tell(report)
        self._after_change(report)

    def _after_change(self, report: Report) -> None:
        if report.ct is not None:
            self._track_mask_layer()
        if report.measure:
            self.update_measurements()
            self.update_metrics()

    def _on_finished(self) -> None:
        self._worker = None
        done, total = self.runs.finished()
        self.run_button.enabled = True
        self.ablation_button.enabled = True
        self.cancel_button.enabled = False
        # The bar says how much of the run was done: full only when it all was.
        self.progress.setRange(0, total)
        self.progress.setValue(done)
        if self.runs.pending_variants:
            self._next_variant()
        elif self.runs.grid_due():
            self._show_grid()
        if self.runs.recut_pending and not self.running:
            self.runs.recut_pending = False
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
        point = OperatingPoint(
            float(self.threshold.value), float(self.min_lesion.value), float(self.min_depth.value)
        )
        report = self.runs.recut(self._layer(self.ct_layer.value), point)
        self._tell(report)
        self._after_change(report)
        return report.ct is not None

    # -- edits and autosave -----------------------------------------------------------------
    def _track_mask_layer(self) -> None:
        layer = self.mask_layer()
        if layer is not None:
            self.session.watch(layer, weak_call(self._schedule_autosave))
            ct = self._layer(self.ct_layer.value)
            # Where its recovery file goes, for the writer to remove it when the mask is saved.
            layer.metadata[AUTOSAVE_KEY] = str(ct_autosave_path(ct))

    def _schedule_autosave(self) -> None:
        self.scores.stale()
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
        recovery file (:func:`.autosave.settle_mask`). Returns the files kept."""
        self._autosave_timer.stop()
        self.corrections.cancel()  # a fine-tuning in progress stops after its step, saving nothing
        kept = []
        for mask in list(self.viewer.layers):
            if self._settle_recovery(mask):
                kept.append(Path(mask.metadata[AUTOSAVE_KEY]))
        return kept

    def _settle_recovery(self, mask: Any) -> bool:
        try:
            return settle_mask(self.recovery, mask)
        except Exception as exc:  # closing must go on whatever the disk says
            where = mask.metadata.get(AUTOSAVE_KEY)
            show_warning(f"Could not settle the autosave of {mask.name!r} at {where}: {exc}")
            return False

    def event(self, event: QEvent) -> bool:
        # Docked: watch the main window's close. Taken out of the dock (its close button): the
        # panel's session ends.
        if event.type() == QEvent.Type.ParentChange:
            if self.parent() is None:
                if getattr(self, "_docked", False):
                    self._docked = False
                    self.end_session()
            else:
                self._docked = True
                self._close_watch.watch(QWidget.window(self))  # self.window: the HU window
        return super().event(event)

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
        try:
            path = restore(self.session, self._ct(), self._track_mask_layer)
        except Exception as exc:
            self._fail(f"Could not restore the autosaved mask: {exc}")
            return
        self.status.value = f"restored the autosaved mask from {path}"

    # -- metrics and measurements -----------------------------------------------------------
    def update_metrics(self, *_: Any, volume: bool = True) -> dict[str, tuple[float, float]]:
        """Fill the metrics table (current slice, volume) against the ground-truth layer;
        ``volume=False`` (scrolling through slices) reuses the volume column if still valid."""
        gt, pred = self._layer(self.gt_layer.value), self.mask_layer()
        values: dict[str, tuple[float, float]] = {}
        if gt is not None and pred is not None:
            try:
                values = self.scores.table(pred, gt, current_z(self.viewer, pred), volume)
            except ValueError as exc:
                self._fail(str(exc))
        self.metrics_tab.show_values(values)
        return values

    def update_measurements(self, *_: Any) -> list[dict[str, Any]]:
        """Fill the lesion table from the tumor mask's connected components."""
        layer = self.mask_layer()
        rows = [] if layer is None else lesion_rows(np.asarray(layer.data), tuple(layer.scale))
        self.lesions_tab.show_rows(rows)
        return rows

    def _export_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export lesions", "lesions.csv", "CSV (*.csv)")
        if path:
            self.export_csv(path)

    def export_csv(self, path: str | Path) -> Path | None:
        """Write the lesion table to ``path`` as CSV."""
        try:
            return write_lesions_csv(path, self.update_measurements())
        except OSError as exc:
            self._fail(f"Could not write {path}: {exc.strerror or exc}")
            return None


def _single_shot(parent: QWidget, interval_ms: int, slot: Any) -> QTimer:
    timer = QTimer(parent)
    timer.setSingleShot(True)
    timer.setInterval(interval_ms)
    timer.timeout.connect(slot)
    return timer


def _generated(layer: Any) -> bool:
    return bool(layer.metadata.get("nstseg_generated"))


def _set_choices(combo: ComboBox, names: list[str], keep_first: bool = True) -> None:
    current = combo.value
    combo.choices = names
    if current in names:
        combo.value = current
    elif names and (keep_first or current is None):
        combo.value = names[0]
