"""Inference: run CDI-NSTSEG on slices, volumes or ROIs of a CT scan (headless, no Qt)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Loaded on first use, so `nstseg predict` can check its arguments and paths before torch (a
# few seconds) is imported by the engine.
_HOMES = {
    "DeviceError": "device",
    "available_devices": "device",
    "select_device": "device",
    "EngineConfig": "engine_config",
    "Estimate": "estimate",
    "ProgressEvent": "engine_config",
    "Segmenter": "engine",
    "WeightsMissingError": "engine",
    "default_weights_path": "engine",
    "roi_from_corners": "roi",
    "roi_from_mask": "roi",
    "MapRequest": "prediction",
    "Prediction": "prediction",
    "decode_probability": "prediction",
}

__all__ = [
    "DeviceError",
    "EngineConfig",
    "Estimate",
    "MapRequest",
    "Prediction",
    "ProgressEvent",
    "Segmenter",
    "WeightsMissingError",
    "available_devices",
    "decode_probability",
    "default_weights_path",
    "roi_from_corners",
    "roi_from_mask",
    "select_device",
]

if TYPE_CHECKING:
    from .device import DeviceError, available_devices, select_device
    from .engine import Segmenter, WeightsMissingError, default_weights_path
    from .engine_config import EngineConfig, ProgressEvent
    from .estimate import Estimate
    from .prediction import MapRequest, Prediction, decode_probability
    from .roi import roi_from_corners, roi_from_mask


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
