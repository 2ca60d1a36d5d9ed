"""Lesion insertion: synthetic small, low-contrast tumours in real CT, for training and evaluation
sets (CDI-NSTSEG, seed 000, targets non-salient small tumours; no labelled tumour CT is at hand).

config.py (settings, the per-lesion record), shapes.py (shapes, partial-volume profile),
tissue.py (body and dense-tissue masks, diameters), sites.py (where a lesion may go),
insertion.py (adding the contrast), dataset.py (the `nstseg make-lesions` folder and its
split), online.py (a new lesion in every training crop), regions.py (results per source
region), cli_make_lesions.py (the command). The names below are the public API.
"""

from napari_nstseg.training.lesions.config import (
    CSV_COLUMNS,
    SOFT_TISSUE,
    TOTALSEG_TARGET_ORGANS,
    LesionConfig,
    LesionRecord,
    lesion_config_from_dict,
)
from napari_nstseg.training.lesions.dataset import (
    SPLITS,
    SplitConfig,
    case_image_path,
    make_lesion_dataset,
    save_on_source_grid,
)
from napari_nstseg.training.lesions.insertion import insert_lesions
from napari_nstseg.training.lesions.sites import LesionSites, lesion_sites, single_component
from napari_nstseg.training.lesions.tissue import (
    axial_max_diameter_mm,
    body_mask,
    dense_mask,
    equivalent_diameter_mm,
)

__all__ = [
    "CSV_COLUMNS",
    "SOFT_TISSUE",
    "SPLITS",
    "TOTALSEG_TARGET_ORGANS",
    "LesionConfig",
    "LesionRecord",
    "LesionSites",
    "SplitConfig",
    "axial_max_diameter_mm",
    "body_mask",
    "case_image_path",
    "dense_mask",
    "equivalent_diameter_mm",
    "insert_lesions",
    "lesion_config_from_dict",
    "lesion_sites",
    "make_lesion_dataset",
    "save_on_source_grid",
    "single_component",
]
