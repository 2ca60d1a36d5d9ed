"""Segmentation models: CDI-NSTSEG, the U-Net baseline, their configuration, variants and losses."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Loaded on first use, so that the configuration and the variant registry (config.py,
# variants.py) can be read without torch (a few seconds): `nstseg variants` and the argument
# checks of `nstseg predict` run before any model code is imported.
_HOMES = {
    "CDINSTSeg": "cdi_nstseg",
    "CheckpointError": "checkpoint",
    "DeepSupervisionLoss": "losses",
    "LossConfig": "losses",
    "MAEConfig": "mae",
    "MaskedAutoencoder": "mae",
    "ModelConfig": "config",
    "RegionCompensation": "region_compensation",
    "SegOutput": "outputs",
    "UNet": "unet",
    "build_model": "build",
    "calibrate_batchnorm": "build",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
}
_SUBMODULES = ("losses",)

__all__ = [
    "CDINSTSeg",
    "CheckpointError",
    "DeepSupervisionLoss",
    "LossConfig",
    "MAEConfig",
    "MaskedAutoencoder",
    "ModelConfig",
    "RegionCompensation",
    "SegOutput",
    "UNet",
    "build_model",
    "calibrate_batchnorm",
    "load_checkpoint",
    "losses",
    "save_checkpoint",
]

if TYPE_CHECKING:
    from . import losses
    from .build import build_model, calibrate_batchnorm
    from .cdi_nstseg import CDINSTSeg
    from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from .config import ModelConfig
    from .losses import DeepSupervisionLoss, LossConfig
    from .mae import MAEConfig, MaskedAutoencoder
    from .outputs import SegOutput
    from .region_compensation import RegionCompensation
    from .unet import UNet


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    elif name in _HOMES:
        value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES, *_SUBMODULES])
