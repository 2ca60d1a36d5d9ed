"""CUDA-only checks (skipped without a GPU): bf16 autocast, measured estimate, real OOM types."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_nstseg.inference import EngineConfig, Segmenter
from napari_nstseg.preprocessing import PreprocessConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
NATIVE = PreprocessConfig(working_spacing_mm=None)
SPACING = (2.0, 1.0, 1.0)


def test_bf16_on_cuda_agrees_with_float32_on_cpu(tiny_model, make_ct):
    import copy

    vol = make_ct((4, 64, 64))
    cpu = Segmenter(copy.deepcopy(tiny_model), NATIVE, "cpu", EngineConfig(batch_size=2))
    gpu = Segmenter(copy.deepcopy(tiny_model), NATIVE, "cuda", EngineConfig(batch_size=2))
    a = cpu.predict(vol, SPACING).probability("final")
    b = gpu.predict(vol, SPACING).probability("final")
    assert gpu.device.type == "cuda"
    confident = np.abs(a - 0.5) > 0.1
    agree = (a[confident] >= 0.5) == (b[confident] >= 0.5)
    assert agree.mean() > 0.95
    assert np.abs(a - b).mean() < 0.05


def test_cuda_estimate_is_measured_and_bounds_the_run(tiny_model, make_ct):
    import copy

    vol = make_ct((6, 128, 128))
    seg = Segmenter(copy.deepcopy(tiny_model), NATIVE, "cuda", EngineConfig(batch_size=3))
    est = seg.estimate(vol.shape, SPACING)
    assert est.fits and est.batch_size == 3 and est.method.startswith("measured on cuda")
    assert est.bytes_per_slice > 0
    torch.cuda.reset_peak_memory_stats()
    pred = seg.predict(vol, SPACING)
    assert pred.complete
    assert torch.cuda.max_memory_allocated() <= 1.25 * est.bytes_peak + (8 << 20)
