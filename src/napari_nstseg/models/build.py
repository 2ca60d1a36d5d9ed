"""build_model (CDI-NSTSEG or the U-Net baseline, as ModelConfig.arch says) and BatchNorm
calibration for demonstration and test checkpoints."""

from __future__ import annotations

import torch
from torch import nn

from .cdi_nstseg import CDINSTSeg
from .config import ModelConfig
from .unet import UNet


def build_model(config: ModelConfig) -> nn.Module:
    """Build CDI-NSTSEG or the U-Net baseline, as config.arch says."""
    if not isinstance(config, ModelConfig):
        raise ValueError(f"build_model needs a ModelConfig, got {type(config).__name__}.")
    if config.arch == "unet":
        return UNet(config)
    return CDINSTSeg(config)


def calibrate_batchnorm(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """Set every BatchNorm's running statistics to those of ``images`` (N, C, H, W); eval mode.

    An untrained network with the default statistics fades layer by layer to constant maps; one
    pass over real slices gives demonstration and test checkpoints maps that show structure.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the calibration pass
    model.train()
    with torch.no_grad():
        model(images)
    return model.eval()
