"""The panel's operating point (threshold, min lesion, min depth): what the chosen weights
recommend (models.checkpoint.read_operating_point) for the controls the user has not moved."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class OperatingPoint:
    """Where the probabilities are cut and which lesions are left out of the tumor mask."""

    threshold: float = 0.5
    min_lesion_mm: float = 0.0
    min_depth_mm: float = 0.0

    def describe(self) -> str:
        return (
            f"threshold {self.threshold:.2f}"
            + (f", min lesion {self.min_lesion_mm:g} mm" if self.min_lesion_mm > 0 else "")
            + (f", min depth {self.min_depth_mm:g} mm" if self.min_depth_mm > 0 else "")
        )


def recommended_point(path: Path | None, organs: bool = False) -> OperatingPoint | None:
    """The operating point a checkpoint recommends (``organs``: for organ mode; 0.5, 0 and 0 mm
    when it names none), or None when the file cannot be read: the run that loads it will say
    what is wrong."""
    from napari_nstseg.models.checkpoint import CheckpointError, read_operating_point

    if path is None:
        return None
    try:
        point = read_operating_point(path, organs=organs)
    except CheckpointError:
        return None
    if point is None:
        return OperatingPoint()
    return OperatingPoint(point.threshold, point.min_lesion_mm, point.min_depth_mm)


@dataclass
class Recommendation:
    """Which controls the user moved: from then on the user's value wins over any weights'."""

    moved: set[str] = field(default_factory=set)

    def move(self, control: str) -> None:
        self.moved.add(control)

    def values(self, path: Path | None, organs: bool = False) -> dict[str, float]:
        """{control: value} the weights at ``path`` recommend (``organs``: for organ mode) for
        the controls not moved; empty when the weights cannot be read."""
        point = recommended_point(path, organs)
        if point is None:
            return {}
        values = {
            "threshold": point.threshold,
            "min_lesion": point.min_lesion_mm,
            "min_depth": point.min_depth_mm,
        }
        return {name: value for name, value in values.items() if name not in self.moved}
