"""The panel in napari's window: the main window's close heard, the dock's title fitted."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QDockWidget, QWidget


class CloseWatch(QObject):
    """Calls ``on_close`` when the window it watches (napari's main window) is closed."""

    def __init__(self, parent: QWidget, on_close: Callable[[], None]) -> None:
        super().__init__(parent)
        self._on_close = on_close
        self._watched: Any = None

    def watch(self, window: QWidget) -> None:
        """Watch ``window`` (the panel's top-level window once docked), once."""
        if window is not self.parent() and window is not self._watched:
            window.installEventFilter(self)
            self._watched = window

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.Close:
            self._on_close()
        return False


def fit_dock_title(panel: QWidget) -> None:
    """Make ``panel`` wide enough that its dock's whole title ("Segment small tumors
    (CDI-NSTSEG) (napari-nstseg)") reads beside the title bar's buttons."""
    dock = panel.parent()
    while dock is not None and not isinstance(dock, QDockWidget):
        dock = dock.parent()
    title = None if dock is None else dock.titleBarWidget()
    if title is not None and title.layout() is not None:
        # +16: the title bar's separator line takes a few pixels of its own.
        needed = title.layout().sizeHint().width() + 16
        if needed > panel.minimumWidth():
            panel.setMinimumWidth(needed)
            dock.updateGeometry()


def weak_call(method: Callable[[], None]) -> Callable[[], None]:
    """``method`` (of the panel itself, never of a napari proxy) without keeping the panel
    alive from what holds the call (a mask's edit tracker, the close watch)."""
    ref = weakref.WeakMethod(method)

    def call() -> None:
        bound = ref()
        if bound is not None:
            bound()

    return call
