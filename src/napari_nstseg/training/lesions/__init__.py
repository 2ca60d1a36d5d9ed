"""Lesion insertion: synthetic small, low-contrast tumours in real CT, for training and evaluation
sets (CDI-NSTSEG, seed 000, targets non-salient small tumours; no labelled tumour CT is at hand).

config.py (settings, the per-lesion record), shapes.py (shapes, partial-volume profile),
tissue.py (body and dense-tissue masks, diameters), sites.py (where a lesion may go),
insertion.py (adding the contrast), dataset.py (the `nstseg make-lesions` folder and its
split), online.py (a new lesion in every training crop), regions.py (results per source
region), cli_make_lesions.py (the command). The names below are the public API.
"""

from __future__ import annotations

import importlib
from typing import Any

# The public API, name -> its module. Loaded on first use (PEP 562), so that `nstseg --help`
# and `nstseg make-lesions --help`, which read only config.py, do not import scipy and nibabel.
_API = {
    "CSV_COLUMNS": "config",
    "SOFT_TISSUE": "config",
    "SPLITS": "config",
    "TOTALSEG_TARGET_ORGANS": "config",
    "LesionConfig": "config",
    "LesionRecord": "config",
    "SplitConfig": "config",
    "lesion_config_from_dict": "config",
    "case_image_path": "dataset",
    "make_lesion_dataset": "dataset",
    "save_on_source_grid": "dataset",
    "insert_lesions": "insertion",
    "LesionSites": "sites",
    "lesion_sites": "sites",
    "single_component": "sites",
    "axial_max_diameter_mm": "tissue",
    "body_mask": "tissue",
    "dense_mask": "tissue",
    "equivalent_diameter_mm": "tissue",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
