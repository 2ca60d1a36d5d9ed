"""Fixtures for the corrections tests: a one-thread torch, a tiny checkpoint, a small store."""

from __future__ import annotations

import pytest
import torch
from corrections_helpers import small_scan

from napari_nstseg.corrections.store import save_corrections
from napari_nstseg.models import ModelConfig, build_model
from napari_nstseg.models.checkpoint import save_checkpoint
from napari_nstseg.preprocessing import PreprocessConfig


@pytest.fixture(autouse=True)
def every_test_on_one_thread(one_torch_thread):
    """Tiny models run fastest on one thread (tests/conftest.py's fixture, for every test here)."""


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    torch.manual_seed(0)
    config = ModelConfig(base_width=8, fused_channels=8, lfm_stages=3)
    stem = tmp_path_factory.mktemp("weights") / "tiny"
    save_checkpoint(
        stem,
        build_model(config),
        config.to_dict(),
        PreprocessConfig(working_spacing_mm=1.5).to_dict(),
        {"note": "untrained, tests", "budget": {"crop_size": [32, 32]}},
    )
    return str(stem) + ".json"


@pytest.fixture
def store(tmp_path):
    """A store with corrected slices 1-3 and 7-10 of one scan."""
    hu, mask, geometry = small_scan(0)
    folder = tmp_path / "store"
    save_corrections(folder, hu, mask, geometry, [1, 2, 3, 7, 8, 9, 10], name="scan")
    return folder
