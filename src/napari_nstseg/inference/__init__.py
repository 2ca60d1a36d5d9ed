"""Inference: run CDI-NSTSEG on slices, volumes or ROIs of a CT scan (headless, no Qt)."""

from .device import DeviceError, available_devices, select_device
from .engine import (
    EngineConfig,
    Estimate,
    ProgressEvent,
    Segmenter,
    WeightsMissingError,
    default_weights_path,
    roi_from_corners,
    roi_from_mask,
)
from .prediction import MapRequest, Prediction, decode_probability

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
