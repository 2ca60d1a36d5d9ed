"""Layered Focusing Module (LFM = PFNet focus): subtract false positives, add false negatives."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import CBR, ContextExploration, make_norm, resize

HEAD_KERNEL = 7


class LayeredFocusing(nn.Module):
    """LFM: split features by the upsampled higher prediction, R1 = up - a*FP, R2 = R1 + b*FN."""

    def __init__(
        self, channels: int, higher_channels: int, paths: str = "both", norm: str = "batch"
    ) -> None:
        super().__init__()
        if paths not in ("both", "foreground", "background", "none"):
            raise ValueError(
                f"Unknown LFM paths {paths!r}; expected 'both', 'foreground', 'background' or "
                "'none'."
            )
        self.up = CBR(higher_channels, channels, HEAD_KERNEL, norm=norm)
        self.use_foreground = paths in ("both", "foreground")
        self.use_background = paths in ("both", "background")
        if self.use_foreground:
            self.false_positives = ContextExploration(channels, norm)
            self.alpha = nn.Parameter(torch.ones(1))
        if self.use_background:
            self.false_negatives = ContextExploration(channels, norm)
            self.beta = nn.Parameter(torch.ones(1))
        self.norm1 = make_norm(norm, channels)
        self.norm2 = make_norm(norm, channels)
        self.relu = nn.ReLU()
        self.head = nn.Conv2d(channels, 1, HEAD_KERNEL, padding=HEAD_KERNEL // 2)

    def forward(
        self, x: torch.Tensor, higher: torch.Tensor, higher_logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: this level's features; higher: the level above's features and logits.

        Returns (refined features R2 for the next LFM, refined logits at x's resolution).
        """
        size = x.shape[-2:]
        up = resize(self.up(higher), size)
        refined = up
        if self.use_foreground or self.use_background:
            # upsample the logits first, then the sigmoid, as the reference code does
            mask = torch.sigmoid(resize(higher_logits, size))
        if self.use_foreground:
            refined = refined - self.alpha * self.false_positives(x * mask)
        refined = self.relu(self.norm1(refined))
        if self.use_background:
            refined = refined + self.beta * self.false_negatives(x * (1 - mask))
        refined = self.relu(self.norm2(refined))
        return refined, self.head(refined)
