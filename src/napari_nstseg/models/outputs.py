"""SegOutput, what every segmentation model returns, and the pad/crop geometry around it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .blocks import resize


@dataclass
class SegOutput:
    """Logit maps of one forward pass, each (N, 1, H, W) at the input's resolution.

    coarse: GLM logits. stages: LFM logits, coarse to fine. final: the map to threshold
    (stages[-1], or coarse without LFMs). scale_weights: only when asked for, one
    (N, n_scales, H, W) per-pixel SFM weight map per fused level, deepest level first, scales in
    the config's order (constant 1/n_scales maps for mean fusion, ones for a single scale).
    """

    coarse: torch.Tensor
    stages: list[torch.Tensor]
    final: torch.Tensor
    scale_weights: list[torch.Tensor] | None = None


def check_input(x: torch.Tensor, in_channels: int, name: str = "input") -> None:
    """Raise a readable ValueError unless x is a float (N, in_channels, H, W) tensor."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"The model {name} must be a torch.Tensor, got {type(x).__name__}.")
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(
            f"The model {name} must have shape (N, {in_channels}, H, W), got {tuple(x.shape)}."
        )
    if not x.is_floating_point():
        raise ValueError(f"The model {name} must be a float tensor, got {x.dtype}.")


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad H, W at the bottom/right to a multiple (edges look like CT, zeros do not)."""
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")


def to_input_size(
    maps: torch.Tensor, padded_size: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Upsample a map to the padded input grid, then crop the padding off."""
    return resize(maps, padded_size)[..., : size[0], : size[1]]
