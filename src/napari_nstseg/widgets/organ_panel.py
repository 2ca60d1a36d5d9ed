"""The "inside organs" controls (issue 26, cascade paper 001): the organ Labels layer, a
checklist of the labels it holds with their names, the margin, and "only the slice on screen";
shown in organ mode only. What they mean is :mod:`.organ_mode` (no Qt)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QListWidget, QListWidgetItem

from .organ_mode import DEFAULT_MARGIN_MM, label_names, labels_present, organ_map_candidates
from .results import NO_LAYER

# Rows of the checklist shown before it scrolls: TotalSegmentator's output holds over 100.
_VISIBLE_ROWS = 6
PAINT_DELAY_MS = 300


class OrganControls:
    """The organ-mode widgets (``layer``, ``organs``, ``margin``, ``slice_only``) in one
    ``container`` the panel's form holds."""

    def __init__(self) -> None:
        self.layer = ComboBox(label="organ labels", choices=[NO_LAYER])
        self.layer.tooltip = (
            "A Labels layer of organs on the CT's grid, e.g. TotalSegmentator's output "
            "(File > Open Sample gives the sample CT's)."
        )
        self.organs = QListWidget()
        self.organs.setToolTip("Tick the organs to search inside; nothing is sought elsewhere.")
        row = int(self.organs.fontMetrics().height() * 1.4)
        self.organs.setMaximumHeight(row * _VISIBLE_ROWS + 6)
        self.organs_label = Label(value="organs")
        self.margin = FloatSpinBox(
            label="organ margin (mm)", value=DEFAULT_MARGIN_MM, min=0.0, max=100.0, step=1.0
        )
        self.margin.tooltip = (
            "Searched around each ticked organ, so a lesion at its edge counts; the yellow "
            "'searched zone' outline shows the result."
        )
        self.slice_only = CheckBox(text="only the slice on screen", value=False)
        self.container = Container(widgets=[self.layer, self.margin, self.slice_only])
        self.container.margins = (0, 0, 0, 0)  # aligned with the form around it
        # The checklist under the layer it lists, labelled like the form's rows.
        self.container.native.layout().insertWidget(1, self.organs)
        self.container.native.layout().insertWidget(1, self.organs_label.native)
        # Label id of each row, by row.
        self._ids: list[int] = []
        self._painted: Any = None
        self._paint_timer = QTimer(self.container.native)
        self._paint_timer.setSingleShot(True)
        self._paint_timer.setInterval(PAINT_DELAY_MS)
        self._paint_timer.timeout.connect(self._after_paint)

    @property
    def visible(self) -> bool:
        """Whether the panel shows them (also before the window is on screen)."""
        return not self.container.native.isHidden()

    @visible.setter
    def visible(self, value: bool) -> None:
        self.container.visible = value

    # -- choices ----------------------------------------------------------------------------
    def set_layers(self, layers: Iterable[Any], ct: Any) -> bool:
        """Offer the Labels layers on ``ct``'s grid; returns whether the chosen one changed."""
        before = self.layer.value
        names = organ_map_candidates(layers, ct)
        self.layer.choices = [NO_LAYER, *names]
        if before in names:
            self.layer.value = before
        else:
            # A layer of organs, when there is one, is what the user will want.
            self.layer.value = names[0] if names else NO_LAYER
        return self.layer.value != before

    def show_labels(self, layer: Any) -> None:
        """List the labels ``layer`` holds, named; ticks kept for the ids still there."""
        ticked = set(self.ticked())
        present = [] if layer is None else labels_present(layer.data)
        names = {} if layer is None else label_names(layer, present)
        self.organs.clear()
        self._ids = list(present)
        for value in present:
            item = QListWidgetItem(f"{value}  {names[value]}")
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            checked = Qt.CheckState.Checked if value in ticked else Qt.CheckState.Unchecked
            item.setCheckState(checked)
            self.organs.addItem(item)
        self.organs_label.value = "organs" if present or layer is None else "organs: none labelled"

    def follow(self, layer: Any) -> None:
        """List ``layer``'s labels now and again after each brush stroke on it (an organ painted
        by hand appears in the list)."""
        self.show_labels(layer)
        if layer is not None:
            layer.events.paint.disconnect(self._on_paint)
            layer.events.paint.connect(self._on_paint)

    def _on_paint(self, event: Any) -> None:
        # napari tells of a stroke before it writes it, and a drag is many strokes: the list
        # is made again once the painting has paused.
        self._painted = event.source
        self._paint_timer.start()

    def _after_paint(self) -> None:
        layer, self._painted = self._painted, None
        if layer is not None and layer.name == self.layer.value:
            self.show_labels(layer)

    def ticked(self) -> list[int]:
        """The ticked label ids, in list order."""
        return [
            self._ids[i]
            for i in range(self.organs.count())
            if self.organs.item(i).checkState() == Qt.CheckState.Checked
        ]

    def tick(self, values: Sequence[int]) -> list[int]:
        """Tick exactly ``values`` (ids listed); returns the ids ticked."""
        wanted = {int(v) for v in values}
        for i, value in enumerate(self._ids):
            state = Qt.CheckState.Checked if value in wanted else Qt.CheckState.Unchecked
            self.organs.item(i).setCheckState(state)
        return self.ticked()

    def names(self) -> dict[int, str]:
        """Label id -> the text its row shows after the id."""
        return {v: self.organs.item(i).text().split("  ", 1)[-1] for i, v in enumerate(self._ids)}
