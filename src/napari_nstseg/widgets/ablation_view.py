"""Visual ablation side by side: napari's grid with one cell per model (CT, mask, name), and back.

napari's grid puts ``stride`` consecutive layers of the list into one cell, counting from the
bottom, and leaves out cells with no visible layer. So each (CT, mask) pair moves to the bottom
in order and every other layer is hidden while the grid is on; the layer order, visibility and
grid settings from before are kept (by layer ``unique_id``, in an AblationGrid) to go back to
the normal view.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .layers import layer_id


def viewer_grid(viewer: Any) -> Any:
    """Grid settings: ``viewer.canvas.grid`` since napari 0.9, ``viewer.grid`` before it."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


@dataclass
class NormalView:
    """What the viewer looked like before the grid: layer order and visibility, grid settings."""

    order: list[str] = field(default_factory=list)
    visible: dict[str, bool] = field(default_factory=dict)
    grid_enabled: bool = False
    grid_stride: int = 1


def _index(viewer: Any, uid: str) -> int:
    for i, layer in enumerate(viewer.layers):
        if layer_id(layer) == uid:
            return i
    raise ValueError(uid)


def normal_view(viewer: Any) -> NormalView:
    """The viewer as it is now, to come back to after the grid."""
    grid = viewer_grid(viewer)
    return NormalView(
        order=[layer_id(layer) for layer in viewer.layers],
        visible={layer_id(layer): bool(layer.visible) for layer in viewer.layers},
        grid_enabled=bool(grid.enabled),
        grid_stride=int(grid.stride),
    )


def show_grid(viewer: Any, cells: Sequence[tuple[Any, Any]]) -> None:
    """Show each (CT, mask) of ``cells`` in a grid cell of its own, the mask's name written in
    it; every other layer is hidden."""
    wanted = [layer_id(layer) for cell in cells for layer in cell]
    for index, uid in enumerate(wanted):
        viewer.layers.move(_index(viewer, uid), index)
    keep = set(wanted)
    for layer in viewer.layers:
        layer.visible = layer_id(layer) in keep
    for _, mask in cells:
        mask.name_overlay.visible = True
    grid = viewer_grid(viewer)
    grid.stride = 2
    grid.enabled = True
    viewer.reset_view()  # each cell shows its whole slice, not the single view's zoom


def restore_view(viewer: Any, before: NormalView) -> None:
    """Back to ``before``: grid settings, layer order and visibility; layers made since (the CT
    views, the variants' masks) stay in the list, hidden."""
    grid = viewer_grid(viewer)
    grid.enabled = before.grid_enabled
    grid.stride = before.grid_stride
    present = {layer_id(layer) for layer in viewer.layers}
    order = [uid for uid in before.order if uid in present]
    for index, uid in enumerate(order):
        viewer.layers.move(_index(viewer, uid), index)
    for layer in viewer.layers:
        layer.visible = before.visible.get(layer_id(layer), False)
        layer.name_overlay.visible = False
    viewer.reset_view()


class AblationGrid:
    """The grid's state in one panel: the normal view to go back to, while the grid is shown."""

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        self.normal: NormalView | None = None
        self._before_variants: NormalView | None = None

    @property
    def shown(self) -> bool:
        return self.normal is not None

    def remember(self) -> None:
        """Variants are about to run: the view to come back to is the one before their layers
        were made (a grid already shown keeps the one from before it)."""
        self._before_variants = None if self.shown else normal_view(self.viewer)

    def show(self, cells: Sequence[tuple[Any, Any]]) -> None:
        if self.normal is None:
            self.normal = self._before_variants or normal_view(self.viewer)
        show_grid(self.viewer, cells)

    def leave(self) -> None:
        """Back to the normal view: layer order, visibility and grid settings as before."""
        if self.normal is not None:
            restore_view(self.viewer, self.normal)
        self.normal = None
