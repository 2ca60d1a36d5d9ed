"""The panel's result tabs: the metrics of the tumor mask against a ground truth and the lesion
table with its CSV export, filled from widgets.measurements."""

from __future__ import annotations

from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .measurements import METRIC_NAMES

NO_LAYER = "(none)"
LESION_COLUMNS = ("id", "volume_ml", "longest_axial_diameter_mm", "slices")


class MetricsTab(QWidget):
    """The ground-truth chooser over a table of the paper's metrics: current slice, volume."""

    def __init__(self) -> None:
        super().__init__()
        self.gt_layer = ComboBox(label="ground truth", choices=[NO_LAYER])
        self.table = QTableWidget(len(METRIC_NAMES), 2)
        self.table.setHorizontalHeaderLabels(["current slice", "volume"])
        self.table.setVerticalHeaderLabels(list(METRIC_NAMES))
        fit_table(self.table, len(METRIC_NAMES))
        layout = QVBoxLayout(self)
        layout.addWidget(Container(widgets=[self.gt_layer]).native)
        layout.addWidget(self.table)

    def show_values(self, values: dict[str, tuple[float, float]]) -> None:
        self.table.clearContents()
        for row, name in enumerate(METRIC_NAMES):
            for col, value in enumerate(values.get(name, ())):
                self.table.setItem(row, col, QTableWidgetItem(fmt(value)))


class LesionsTab(QWidget):
    """One row per lesion of the tumor mask, with the buttons that measure and export them."""

    def __init__(self) -> None:
        super().__init__()
        self.table = QTableWidget(0, len(LESION_COLUMNS))
        self.table.setHorizontalHeaderLabels(["id", "volume mL", "diameter mm", "slices"])
        self.table.horizontalHeaderItem(2).setToolTip(
            "longest axial diameter (max Feret diameter in the axial slice where it is largest)"
        )
        self.table.verticalHeader().setVisible(False)
        fit_table(self.table, 4)
        # Ids are short: their column takes its contents' width so the headers with units fit.
        self.table.horizontalHeader().setSectionResizeMode(
            0, QHeaderView.ResizeMode.ResizeToContents
        )
        self.measure_button = QPushButton("Measure lesions")
        self.export_button = QPushButton("Export CSV")
        self.setToolTip("Lesions in the tumor mask")
        layout = QVBoxLayout(self)
        for part in (self.table, self.measure_button, self.export_button):
            layout.addWidget(part)

    def show_rows(self, rows: list[dict[str, Any]]) -> None:
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, key in enumerate(LESION_COLUMNS):
                self.table.setItem(r, c, QTableWidgetItem(fmt(row[key])))


def fit_table(table: QTableWidget, rows: int) -> None:
    """Columns share the width; tall enough for ``rows`` rows without scrolling."""
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
    height = table.horizontalHeader().sizeHint().height() + 2 * table.frameWidth()
    height += rows * table.verticalHeader().defaultSectionSize()
    table.setMinimumHeight(height)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if np.isnan(value) else f"{value:.3f}"
    if isinstance(value, tuple):
        return f"{value[0]}-{value[1]}"
    return str(value)
