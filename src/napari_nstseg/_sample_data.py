"""npe2 sample data: a real abdominal CT with one small synthetic low-contrast lesion."""

from __future__ import annotations

from pathlib import Path

SAMPLE_DIR = Path(__file__).parent / "sample_data"
SAMPLE_CT = SAMPLE_DIR / "sample_ct.nii.gz"
SAMPLE_MASK = SAMPLE_DIR / "sample_ct_lesion.nii.gz"


def sample_ct():
    """The sample CT (Image) and its ground-truth lesion mask (Labels), on the same grid."""
    from napari_nstseg._reader import read_layers

    ct_layers = read_layers(SAMPLE_CT)
    data, kwargs, _ = ct_layers[0]
    kwargs = {**kwargs, "name": "sample CT"}
    mask_data, mask_kwargs, _ = read_layers(SAMPLE_MASK, as_labels=True)[0]
    mask_kwargs = {**mask_kwargs, "name": "sample CT ground truth", "opacity": 0.5, "visible": True}
    return [(data, kwargs, "image"), (mask_data, mask_kwargs, "labels")]
