"""npe2 sample data: an abdominal CT with a small synthetic lesion, and a real sarcoma CT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SAMPLE_DIR = Path(__file__).parent / "sample_data"
SAMPLE_CT = SAMPLE_DIR / "sample_ct.nii.gz"
SAMPLE_MASK = SAMPLE_DIR / "sample_ct_lesion.nii.gz"
# TotalSegmentator's organ labels of the same scan ("total" ids: 5 liver, ...), for organ mode.
SAMPLE_ORGANS = SAMPLE_DIR / "sample_ct_organs.nii.gz"
SAMPLE_ORGANS_NAME = "sample CT organs (TotalSegmentator)"
SARCOMA_DIR = SAMPLE_DIR / "sarcoma"
SARCOMA_CT = SARCOMA_DIR / "STS_008_ct.nii.gz"
SARCOMA_CONTOUR = SARCOMA_DIR / "STS_008_tumour.nii.gz"
# Names the widget recognises: "ground truth" makes the contour the metrics' reference at once.
SARCOMA_CT_NAME = "STS_008 CT"
SARCOMA_CONTOUR_NAME = "STS_008 radiologist's contour (ground truth)"


def _ct_and_ground_truth(
    ct_path: Path, mask_path: Path, ct_name: str, mask_name: str, **mask_style: Any
) -> list[tuple[Any, dict[str, Any], str]]:
    from napari_nstseg._reader import read_layers

    data, kwargs, _ = read_layers(ct_path, as_labels=False)[0]
    mask_data, mask_kwargs, _ = read_layers(mask_path, as_labels=True)[0]
    mask_kwargs = {**mask_kwargs, "name": mask_name, "visible": True, **mask_style}
    return [(data, {**kwargs, "name": ct_name}, "image"), (mask_data, mask_kwargs, "labels")]


def sample_ct():
    """The sample CT (Image), its ground-truth lesion mask (Labels) and TotalSegmentator's organ
    labels (Labels, hidden so the faint lesion stays visible), all on the same grid."""
    from napari_nstseg._reader import read_layers

    layers = _ct_and_ground_truth(
        SAMPLE_CT, SAMPLE_MASK, "sample CT", "sample CT ground truth", opacity=0.5
    )
    organs, kwargs, _ = read_layers(SAMPLE_ORGANS, as_labels=True)[0]
    style = {"name": SAMPLE_ORGANS_NAME, "visible": False, "opacity": 0.3}
    return [*layers, (organs, {**kwargs, **style, "features": _organ_names(organs)}, "labels")]


def _organ_names(organs: Any) -> dict[str, list[Any]]:
    """The organ labels' names as the layer's features (napari shows them under the cursor and
    the panel's organ checklist lists them): TotalSegmentator's "total" table."""
    import numpy as np

    from napari_nstseg.organ_labels import TOTALSEGMENTATOR_TOTAL

    ids = [int(v) for v in np.unique(organs) if v > 0]
    return {"index": ids, "name": [TOTALSEGMENTATOR_TOTAL.get(v, f"label {v}") for v in ids]}


def sample_sarcoma():
    """A real soft-tissue sarcoma (STS_008, a test patient of the sarcoma split) as CT (Image)
    and the radiation oncologist's gross tumour contour as ground truth (Labels), faint so the
    tumour's own faint edge stays visible under it."""
    return _ct_and_ground_truth(
        SARCOMA_CT, SARCOMA_CONTOUR, SARCOMA_CT_NAME, SARCOMA_CONTOUR_NAME, opacity=0.4
    )
