"""Small models for the inference tests: a tiny untrained CDI-NSTSEG, a tiny MAE, and a
predictable stand-in network that marks bright voxels (so positions can be checked exactly)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from model_helpers import TINY_CDI, tiny_mae_config
from napari_nstseg.models import SegOutput, build_model
from napari_nstseg.models.checkpoint import save_checkpoint
from napari_nstseg.models.mae import MaskedAutoencoder
from napari_nstseg.preprocessing import PreprocessConfig, window_normalize

TINY = TINY_CDI
TINY_MAE = tiny_mae_config()
# Bright-voxel stand-in: probability 0.5 exactly at this HU.
EDGE_HU = 100.0


class BrightModel(nn.Module):
    """Logits = gain * (normalised input - value of EDGE_HU): voxels above EDGE_HU are tumor."""

    def __init__(self, gain: float = 8.0, oom_above: int | None = None) -> None:
        super().__init__()
        edge = float(window_normalize(np.array([EDGE_HU], np.float32), PreprocessConfig())[0])
        self.conv = nn.Conv2d(1, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(gain)
            self.conv.bias.fill_(-gain * edge)
        self.oom_above = oom_above
        self.batches: list[int] = []

    def forward(self, x, residual=None, return_scale_weights=False) -> SegOutput:
        if self.oom_above is not None and x.shape[0] > self.oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.batches.append(int(x.shape[0]))
        logits = self.conv(x)
        weights = None
        if return_scale_weights:
            w = torch.softmax(torch.cat([logits, torch.zeros_like(logits), -logits], 1), dim=1)
            weights = [w[..., ::2, ::2].repeat_interleave(2, -1).repeat_interleave(2, -2), w]
        return SegOutput(
            coarse=0.5 * logits,
            stages=[0.5 * logits, logits],
            final=logits,
            scale_weights=weights,
        )


@pytest.fixture(scope="session")
def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model(TINY).eval()


@pytest.fixture(scope="session")
def tiny_mae() -> MaskedAutoencoder:
    torch.manual_seed(1)
    return MaskedAutoencoder(TINY_MAE).eval()


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory, tiny_model, tiny_mae):
    """A segmentation checkpoint naming its MAE (as bundled weights may), both untrained."""
    folder = tmp_path_factory.mktemp("weights")
    prep = PreprocessConfig(working_spacing_mm=1.0).to_dict()
    save_checkpoint(folder / "mae", tiny_mae, TINY_MAE.to_dict(), prep, {"note": "test"})
    save_checkpoint(
        folder / "seg",
        tiny_model,
        TINY.to_dict(),
        prep,
        {"note": "untrained, for tests"},
        mae="mae.json",
    )
    return folder


def ct_volume(shape=(5, 32, 40), seed=0) -> np.ndarray:
    """Soft-tissue noise (40 +- 10 HU) with a 200 HU blob, float32 (z, y, x)."""
    rng = np.random.default_rng(seed)
    vol = rng.normal(40.0, 10.0, shape).astype(np.float32)
    z, y, x = shape
    vol[:, y // 3 : y // 3 + 6, x // 2 : x // 2 + 8] = 200.0
    return vol


@pytest.fixture
def make_ct():
    return ct_volume


@pytest.fixture
def bright():
    """The BrightModel class (tests build it with their own gain / OOM limit)."""
    return BrightModel
