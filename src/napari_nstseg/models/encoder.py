"""U-Net contracting path (DoubleConv, then 4 x max-pool + DoubleConv), shared across scales."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import DoubleConv

NUM_LEVELS = 5


class UNetEncoder(nn.Module):
    """U-Net encoder: levels 1..5 at strides 1/2/4/8/16 with widths b, 2b, 4b, 8b, 16b."""

    def __init__(self, in_channels: int, base_width: int, norm: str = "batch") -> None:
        super().__init__()
        self.widths = tuple(base_width * 2**i for i in range(NUM_LEVELS))
        self.stem = DoubleConv(in_channels, self.widths[0], norm)
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), DoubleConv(c_in, c_out, norm))
            for c_in, c_out in zip(self.widths[:-1], self.widths[1:], strict=True)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the five level features, finest (level 1) first."""
        features = [self.stem(x)]
        for down in self.downs:
            features.append(down(features[-1]))
        return features
