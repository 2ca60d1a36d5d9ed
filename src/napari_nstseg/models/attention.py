"""Non-local attention of PFNet's positioning module: channel (CA) and spatial (SA) blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ChannelNonLocal(nn.Module):
    """PFNet CA block: softmax(X X^T) X over channels, no projections, gamma initialised to 1."""

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        # The energy sums H*W products unscaled, which overflows float16 under autocast on large
        # slices; the C x C matrix is small, so compute it in float32.
        flat = x.reshape(n, c, h * w).float()
        with torch.autocast(x.device.type, enabled=False):
            attention = torch.softmax(torch.bmm(flat, flat.transpose(1, 2)), dim=-1)
            out = torch.bmm(attention, flat).reshape(n, c, h, w)
        return self.gamma * out.to(x.dtype) + x


class SpatialNonLocal(nn.Module):
    """PFNet SA block: C/8 query/key and C value 1x1 projections, softmax over keys, gamma = 1."""

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        if channels % reduction:
            raise ValueError(
                f"SpatialNonLocal needs channels divisible by {reduction}, got {channels}."
            )
        self.query = nn.Conv2d(channels, channels // reduction, 1)
        self.key = nn.Conv2d(channels, channels // reduction, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape

        def tokens(t: torch.Tensor) -> torch.Tensor:
            return t.flatten(2).transpose(1, 2).unsqueeze(1)  # (N, 1 head, HW, C')

        # The HW x HW attention matrix is what grows with the slice; SDPA picks a fused kernel
        # (flash / memory-efficient) where the device has one. PFNet does not scale the energy.
        out = F.scaled_dot_product_attention(
            tokens(self.query(x)), tokens(self.key(x)), tokens(self.value(x)), scale=1.0
        )
        out = out.squeeze(1).transpose(1, 2).reshape(n, c, h, w)
        return self.gamma * out + x
