"""napari widgets: the NSTSEG dock widget and the Prediction -> layers mapping."""

from .dock import NSTSegWidget

__all__ = ["NSTSegWidget"]
