"""An engine running an ablation variant on the full model's trained weights (visual ablation,
CDI-NSTSEG paper's table of ablations; the variants and what each means: models/variants.py)."""

from __future__ import annotations

from napari_nstseg.inference.engine import Segmenter
from napari_nstseg.models.variants import ablated_model, get_variant


def ablated_segmenter(base: Segmenter, variant: str) -> Segmenter:
    """``base`` rebuilt as the registry's ``variant``, on the same trained weights, device,
    operating point and masked autoencoder; ValueError in one sentence where it cannot run."""
    entry = get_variant(variant)
    model = ablated_model(base.model, entry.name)
    if model is base.model:
        return base
    return Segmenter(
        model,
        base.preprocessing,
        base.device,
        base.config,
        meta=dict(base.meta, variant=entry.name),
        weights_path=base.weights_path,
        mae_path=base.mae_path,
    )
