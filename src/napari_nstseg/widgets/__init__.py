"""napari widgets: the NSTSEG dock widget and the Prediction -> layers mapping."""

from __future__ import annotations

from typing import Any

__all__ = ["NSTSegWidget"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the writer needs widgets.autosave without Qt and napari's viewer.
    if name == "NSTSegWidget":
        from .dock import NSTSegWidget

        return NSTSegWidget
    raise AttributeError(name)
