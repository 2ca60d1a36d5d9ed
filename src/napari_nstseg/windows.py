"""HU display/normalisation windows radiologists use, as (width, level) in Hounsfield units."""

from __future__ import annotations

WINDOWS: dict[str, tuple[float, float]] = {
    "abdomen": (400.0, 40.0),
    "soft tissue": (350.0, 50.0),
    "liver": (150.0, 30.0),
    "lung": (1500.0, -600.0),
    "bone": (1800.0, 400.0),
}
DEFAULT_WINDOW = "abdomen"


def contrast_limits(name_or_window: str | tuple[float, float]) -> tuple[float, float]:
    """(low, high) HU for a preset name or a (width, level) pair."""
    if isinstance(name_or_window, str):
        try:
            width, level = WINDOWS[name_or_window]
        except KeyError:
            raise ValueError(
                f"unknown HU window {name_or_window!r}; choose one of {', '.join(WINDOWS)}"
            ) from None
    else:
        width, level = name_or_window
    return (level - width / 2.0, level + width / 2.0)
