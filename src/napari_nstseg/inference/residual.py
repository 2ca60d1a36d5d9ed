"""SSL residual maps: masked-autoencoder reconstruction error per slice, on the working grid."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from napari_nstseg.inference.engine_config import EngineConfig
from napari_nstseg.preprocessing import (
    PreprocessConfig,
    normalized_air,
    resample_slices_to_working,
    window_normalize,
)


def residual_maps(
    mae: nn.Module,
    hu: torch.Tensor,
    sp_yx: tuple[float, float],
    z: Sequence[int],
    preprocessing: PreprocessConfig,
    mae_preprocessing: PreprocessConfig | None,
    config: EngineConfig,
) -> torch.Tensor:
    """SSL residual maps on the working grid, (N, 1, H, W); one seeded mask set per slice.

    ``hu``: (N, h, w) slices (the MAE sees the segmented slice only, never context planes);
    ``preprocessing``: the segmentation network's (its working grid), ``mae_preprocessing``: the
    MAE's own intensity scale, if it has one; ``config``: the seed and the masks and patch grids
    per slice.
    """
    cfg = mae_preprocessing or preprocessing
    x = window_normalize(hu, cfg)  # the MAE's own intensity scale...
    # ...on the segmentation network's working grid, so the map lines up with its input.
    x, _ = resample_slices_to_working(x, sp_yx, preprocessing, pad_value=normalized_air(cfg))
    maps = []
    for i, zi in enumerate(z):
        gen = torch.Generator(device=hu.device)
        gen.manual_seed(config.seed * 1_000_003 + int(zi))
        maps.append(
            mae.residual_map(
                x[i : i + 1, None],
                k=config.residual_masks,
                generator=gen,
                shifts=config.residual_shifts,
            )
        )
    return torch.cat(maps).float()
