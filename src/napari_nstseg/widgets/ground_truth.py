"""Which Labels layer looks like a ground truth to score the tumor mask against."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from .layers import CT_KEY, ROLE_KEY, is_labels

# A reference contour is usually named so: "... ground truth", "gt", "tumour", "lesion",
# "contour", "GTV" (the radiotherapy gross tumour volume).
_GROUND_TRUTH_WORDS = re.compile(
    r"ground[ _-]?truth|(?<![a-z])(gt|gtv)(?![a-z])|tumou?r|lesion|contour", re.IGNORECASE
)
# What this plugin makes: "<CT> tumor mask", a variant's "<CT> tumor mask [no GLM]", the stages.
_OUR_NAMES = re.compile(r" (tumor mask|GLM coarse mask|LFM stage \d+)( \[[^\]]+\])?( \[\d+\])?$")


def ours(layer: Any) -> bool:
    """Whether this plugin made ``layer`` (or linked it to a CT as one of its outputs)."""
    metadata = layer.metadata
    if metadata.get("nstseg_generated") or metadata.get(CT_KEY) or metadata.get(ROLE_KEY):
        return True
    return bool(_OUR_NAMES.search(layer.name))


def looks_like_ground_truth(layer: Any) -> bool:
    """A Labels layer named like a reference contour that is not one of our outputs."""
    return is_labels(layer) and not ours(layer) and bool(_GROUND_TRUTH_WORDS.search(layer.name))


def pick_ground_truth(layers: Iterable[Any], shape: tuple[int, ...] | None) -> str | None:
    """The name of the layer to score against: one that looks like ground truth, on the CT's
    grid (``shape``) when one is, the topmost first; None when there is none."""
    found = [layer for layer in layers if looks_like_ground_truth(layer)]
    if shape is not None:
        same = [layer for layer in found if tuple(layer.data.shape) == tuple(shape)]
        found = same or found
    return found[-1].name if found else None
