"""The panel's controls and how they are laid out, no behaviour (dock.NSTSegWidget wires them):
a form, the maps to show, Run and Cancel, and the results in tabs, scrolling in a dock that fits
a laptop screen."""

from __future__ import annotations

from typing import Any

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
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QFrame,
    QGridLayout,
    QGroupBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from napari_nstseg.windows import DEFAULT_WINDOW, WINDOWS

from .corrections_tab import CorrectionsTab
from .docking import fit_dock_title
from .layers import MapsToShow
from .organ_mode import ORGAN_MODE
from .organ_panel import OrganControls
from .requests import MODES
from .results import NO_LAYER, LesionsTab, MetricsTab
from .runner import VARIANTS
from .weights import WeightsChoice, describe, first_choice, weights_choices

MAX_MIN_LESION_MM = 100.0


class PanelLayout(QWidget):
    """The panel's widgets as attributes (``threshold``, ``run_button``, ``metrics_table``...)."""

    def __init__(self) -> None:
        from napari_nstseg.inference import available_devices

        super().__init__()
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
        self.organ = OrganControls()
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
                self.organ.container,
                self.window,
                self.threshold,
                self.min_lesion,
                self.min_depth,
            ]
        )
        self.organ.visible = False  # organ mode's own controls, shown in that mode
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

        self.metrics_tab, self.lesions_tab = MetricsTab(), LesionsTab()
        self.gt_layer, self.metrics_table = self.metrics_tab.gt_layer, self.metrics_tab.table
        self.lesion_table = self.lesions_tab.table
        self.measure_button = self.lesions_tab.measure_button
        self.export_button = self.lesions_tab.export_button

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

        # Learning from corrections: keep them, fine-tune on them, use the new weights.
        self.corrections_tab = CorrectionsTab()

        self.restore_button = QPushButton("Restore autosaved mask")
        self.restore_button.setVisible(False)

        # Results in tabs: one above the other they made the dock taller than a laptop screen.
        self.results = QTabWidget()
        self.results.addTab(self.metrics_tab, "Metrics")
        self.results.addTab(self.lesions_tab, "Lesions")
        self.results.addTab(ablation_box, "Visual ablation")
        self.results.addTab(self.corrections_tab, "Learn from corrections")
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

    def maps_to_show(self) -> MapsToShow:
        """The maps the check boxes ask for."""
        return MapsToShow(
            coarse=self.show_coarse.value,
            stages=self.show_stages.value,
            stage_probabilities=self.show_stage_probs.value,
            residual=self.show_residual.value,
            scale_weights=self.show_scale_weights.value,
        )

    def _show_weights_choice(self) -> None:
        choice = self.weights_choices[self.weights_source.value]
        self.weights_file.visible = not choice.bundled
        self.weights_about.value = describe(choice)
        self.weights_source.tooltip = choice.description

    def _show_roi_controls(self, *_: Any) -> None:
        # Only ROI mode reads them (organ mode its own): elsewhere they would only make the
        # panel taller.
        roi = self.mode.value == "ROI"
        self.roi_layer.visible = roi
        self.roi_margin.visible = roi
        self.organ.visible = self.mode.value == ORGAN_MODE

    def showEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        # The dock's title bar is made after the panel is put in it, and the main window lays
        # its docks out once they are shown: fitted then.
        super().showEvent(event)
        QTimer.singleShot(0, self._fit_dock_title)

    def _fit_dock_title(self) -> None:
        fit_dock_title(self)
