"""Channel Compression Module (CCM) and Scale Fusion Module (SFM, ZoomNet's SIU) of CDI-NSTSEG."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ASPP, CBR, resize

DEEPEST_LEVEL = 5


class ChannelCompression(nn.Module):
    """CCM: 3x3 CBR to the fused width per encoder level, ASPP on the deepest; shared by scales."""

    def __init__(self, widths: dict[int, int], out_channels: int, norm: str = "batch") -> None:
        super().__init__()
        self.per_level = nn.ModuleDict(
            {
                str(level): ASPP(width, out_channels, norm)
                if level == DEEPEST_LEVEL
                else CBR(width, out_channels, 3, norm=norm)
                for level, width in widths.items()
            }
        )

    def forward(self, level: int, x: torch.Tensor) -> torch.Tensor:
        return self.per_level[str(level)](x)


class _ScaleBranch(nn.Module):
    """Brings one scale's features onto the 1.0x grid (SIU's l / m / s paths)."""

    def __init__(self, scale: float, channels: int, norm: str) -> None:
        super().__init__()
        self.scale = scale
        if scale > 1.0:
            # larger copy: 5x5 CBR, mixed pooling (max + avg, summed) down, 3x3 CBR
            self.before = CBR(channels, channels, 5, norm=norm)
        else:
            self.before = CBR(channels, channels, 3, norm=norm)
        # smaller copies are upsampled between two 3x3 CBRs; the 1.0x copy only gets one
        self.after = CBR(channels, channels, 3, norm=norm) if scale != 1.0 else nn.Identity()

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = self.before(x)
        if self.scale > 1.0:
            x = F.adaptive_max_pool2d(x, size) + F.adaptive_avg_pool2d(x, size)
        elif self.scale < 1.0:
            x = resize(x, size)
        return self.after(x)


class ScaleFusion(nn.Module):
    """SFM: per-pixel softmax over scales from an attention generator, or a mean (ablation)."""

    def __init__(
        self,
        scales: tuple[float, ...],
        channels: int,
        fusion: str = "attention",
        norm: str = "batch",
    ) -> None:
        super().__init__()
        if len(scales) < 2:
            raise ValueError("ScaleFusion needs at least two scales; one scale needs no fusion.")
        self.fusion = fusion
        self.branches = nn.ModuleList(_ScaleBranch(s, channels, norm) for s in scales)
        if fusion == "attention":
            self.generator = nn.Sequential(
                CBR(channels * len(scales), channels, 1, norm=norm),
                CBR(channels, channels, 3, norm=norm),
                CBR(channels, channels, 3, norm=norm),
                nn.Conv2d(channels, len(scales), 1),
            )
        elif fusion != "mean":
            raise ValueError(f"Unknown scale fusion {fusion!r}; expected 'attention' or 'mean'.")

    def forward(
        self, features: list[torch.Tensor], size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Fuse per-scale features (config order) on the grid `size`; return (fused, weights).

        weights is the (N, n_scales, h, w) softmax map in attention mode, None for the mean.
        """
        aligned = [branch(x, size) for branch, x in zip(self.branches, features, strict=True)]
        if self.fusion == "mean":
            return torch.stack(aligned).mean(dim=0), None
        weights = torch.softmax(self.generator(torch.cat(aligned, dim=1)), dim=1)
        fused = sum(weights[:, i : i + 1] * x for i, x in enumerate(aligned))
        return fused, weights
