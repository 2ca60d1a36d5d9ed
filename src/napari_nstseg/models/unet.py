"""U-Net baseline (Ronneberger et al. 2015) with the same encoder and width as CDI-NSTSEG."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import DoubleConv, resize
from .config import ModelConfig
from .encoder import UNetEncoder
from .outputs import SegOutput, check_input, pad_to_multiple


class UNet(nn.Module):
    """U-Net: the shared encoder, bilinear up + skip concat + DoubleConv per level, 1x1 head."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.arch != "unet":
            raise ValueError(f"UNet needs arch='unet', got {config.arch!r}.")
        self.config = config
        self.encoder = UNetEncoder(config.in_channels, config.base_width, config.norm)
        widths = self.encoder.widths
        self.decoder = nn.ModuleList(
            DoubleConv(deep + skip, skip, config.norm)
            for deep, skip in zip(widths[:0:-1], widths[-2::-1], strict=True)
        )
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None = None,
        return_scale_weights: bool = False,
    ) -> SegOutput:
        """Same call as CDI-NSTSEG; there are no scale weights, so scale_weights stays None."""
        check_input(x, self.config.in_channels)
        if residual is not None:
            raise ValueError("The U-Net baseline takes no residual map (no ssl_guidance).")
        height, width = x.shape[-2:]
        features = self.encoder(pad_to_multiple(x, self.config.pad_multiple))
        out = features[-1]
        for block, skip in zip(self.decoder, features[-2::-1], strict=True):
            out = block(torch.cat([resize(out, skip.shape[-2:]), skip], dim=1))
        logits = self.head(out)[..., :height, :width]
        return SegOutput(coarse=logits, stages=[logits], final=logits)
