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


def bright_stand_in(hu: float = 100.0):
    """A stand-in network that calls tumour every voxel brighter than ``hu`` (default window and
    normalisation), so a test knows the mask it must get."""
    import numpy as np
    import torch

    from napari_nstseg.models import SegOutput
    from napari_nstseg.preprocessing import PreprocessConfig, window_normalize

    edge = float(window_normalize(np.array([hu], np.float32), PreprocessConfig())[0])

    class Bright(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.edge = torch.nn.Parameter(torch.tensor(edge), requires_grad=False)

        def forward(self, x, residual=None, return_scale_weights=False) -> SegOutput:
            logits = 8.0 * (x - self.edge)
            return SegOutput(coarse=logits, stages=[logits], final=logits, scale_weights=None)

    return Bright()
