"""Small model configurations shared by the tests (pyproject puts tests/ on the path)."""

from __future__ import annotations

from napari_nstseg.models import ModelConfig
from napari_nstseg.models.mae import MAEConfig


def tiny_config(**overrides) -> ModelConfig:
    """The smallest CDI-NSTSEG the configuration allows (base width 8, 8 fused channels);
    ``overrides`` replace any ModelConfig field."""
    return ModelConfig(**{"base_width": 8, "fused_channels": 8, **overrides})


TINY_CDI = tiny_config()


def tiny_mae_config(**overrides) -> MAEConfig:
    """A one-block MAE on 32 px slices (8 px patches); ``overrides`` replace any field."""
    base = dict(
        img_size=32,
        patch_size=8,
        embed_dim=16,
        depth=1,
        heads=2,
        decoder_embed_dim=16,
        decoder_depth=1,
        decoder_heads=2,
        mlp_ratio=2.0,
    )
    base.update(overrides)
    return MAEConfig(**base)
