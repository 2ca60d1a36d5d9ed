"""Blocks shared by CDI-NSTSEG and the U-Net: CBR, DoubleConv, ASPP, Context Exploration."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# GroupNorm group count for the "group" norm option; gcd keeps it valid for narrow layers.
MAX_GROUPS = 32


def make_norm(kind: str, channels: int) -> nn.Module:
    """Normalisation layer selected by ModelConfig.norm ("batch" or "group")."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(channels, MAX_GROUPS), channels)
    raise ValueError(f"Unknown norm {kind!r}; expected 'batch' or 'group'.")


class CBR(nn.Sequential):
    """Conv k x k (dilation d, same padding) + norm + ReLU, the CBR(k, d) unit of PFNet/ZoomNet."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        dilation: int = 1,
        norm: str = "batch",
    ) -> None:
        padding = dilation * (kernel_size // 2)
        super().__init__(
            # no bias: the norm's shift replaces it
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                padding=padding,
                dilation=dilation,
                bias=False,
            ),
            make_norm(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """Two 3x3 CBRs, the U-Net stage (Ronneberger et al. 2015)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch") -> None:
        super().__init__(
            CBR(in_channels, out_channels, 3, norm=norm),
            CBR(out_channels, out_channels, 3, norm=norm),
        )


class ASPP(nn.Module):
    """ASPP (1x1, 3x3 at dilations 2/5/7, image pooling): ZoomNet's CCM on the deepest level."""

    DILATIONS = (2, 5, 7)

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch") -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [CBR(in_channels, out_channels, 1, norm=norm)]
            + [CBR(in_channels, out_channels, 3, d, norm=norm) for d in self.DILATIONS]
        )
        # The pooled branch is 1x1 in space: a norm there breaks training at batch size 1.
        self.pooled = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1),
            nn.ReLU(inplace=True),
        )
        self.fuse = CBR(out_channels * (len(self.DILATIONS) + 2), out_channels, 3, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [branch(x) for branch in self.branches]
        outputs.append(self.pooled(x).expand(-1, -1, *x.shape[-2:]))
        return self.fuse(torch.cat(outputs, dim=1))


class ContextExploration(nn.Module):
    """PFNet Context Exploration unit: 4 cascaded branches, kernels 1/3/5/7, dilations 1/2/4/8."""

    KERNELS = (1, 3, 5, 7)
    DILATIONS = (1, 2, 4, 8)

    def __init__(self, channels: int, norm: str = "batch") -> None:
        super().__init__()
        if channels % 4:
            raise ValueError(f"ContextExploration needs channels divisible by 4, got {channels}.")
        branch = channels // 4
        self.reduce = nn.ModuleList(CBR(channels, branch, 1, norm=norm) for _ in self.KERNELS)
        self.local = nn.ModuleList(CBR(branch, branch, k, norm=norm) for k in self.KERNELS)
        self.dilated = nn.ModuleList(CBR(branch, branch, 3, d, norm=norm) for d in self.DILATIONS)
        self.fuse = CBR(channels, channels, 1, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs: list[torch.Tensor] = []
        for reduce, local, dilated in zip(self.reduce, self.local, self.dilated, strict=True):
            r = reduce(x)
            if outputs:
                # cascade: each branch sees the previous branch's wider context
                r = r + outputs[-1]
            outputs.append(dilated(local(r)))
        return self.fuse(torch.cat(outputs, dim=1))


def resize(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize (align_corners=False, as ZoomNet), a no-op when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
