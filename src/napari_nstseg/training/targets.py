"""The lesions a reader should not miss (the brief's target: at least 10 mm and 20 HU), as
evaluate, tune-postprocess and organ mode count them in lesions.csv rows."""

from __future__ import annotations

from typing import Any

TARGET_DIAMETER_MM = 10.0
TARGET_CONTRAST_HU = 20.0
TARGET_NAME = f">={TARGET_DIAMETER_MM:g} mm and >={TARGET_CONTRAST_HU:g} HU"


def target_lesion(row: dict[str, Any]) -> bool:
    """A lesions.csv lesion a reader should not miss (>= 10 mm and >= 20 HU)."""
    return (
        row["diameter_mm"] >= TARGET_DIAMETER_MM and abs(row["contrast_hu"]) >= TARGET_CONTRAST_HU
    )
