"""Global Localization Module (GLM, PFNet positioning): channel + spatial non-local, 7x7 conv."""

from __future__ import annotations

import torch
from torch import nn

from .attention import ChannelNonLocal, SpatialNonLocal

HEAD_KERNEL = 7


class GlobalLocalization(nn.Module):
    """GLM: channel non-local, spatial non-local, then a 7x7 conv to coarse logits."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channel_attention = ChannelNonLocal()
        self.spatial_attention = SpatialNonLocal(channels)
        self.head = nn.Conv2d(channels, 1, HEAD_KERNEL, padding=HEAD_KERNEL // 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (attended features for the first LFM, coarse logits)."""
        features = self.spatial_attention(self.channel_attention(x))
        return features, self.head(features)


class PlainLocalization(nn.Module):
    """GLM ablation (glm="none"): a 7x7 conv on the deepest features, no attention."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.head = nn.Conv2d(channels, 1, HEAD_KERNEL, padding=HEAD_KERNEL // 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, self.head(x)
