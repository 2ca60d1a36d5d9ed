"""Fixtures for the widget tests: a tiny untrained checkpoint and a small synthetic CT layer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from widget_helpers import CT_SCALE, CT_TRANSLATE, make_ct

from napari_nstseg.models import ModelConfig, build_model, calibrate_batchnorm
from napari_nstseg.models.checkpoint import save_checkpoint
from napari_nstseg.preprocessing import PreprocessConfig, window_normalize

HERE = Path(__file__).parent
# napari's deprecations (a private attribute read through the plugin proxy, an API going away)
# fail the widget tests instead of printing in every user's session.
NAPARI_WARNINGS_ARE_ERRORS = (
    "error:Private attribute access:FutureWarning",
    "error::FutureWarning:napari_nstseg",
    "error::DeprecationWarning:napari_nstseg",
)


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if HERE in Path(item.fspath).parents:
            for rule in NAPARI_WARNINGS_ARE_ERRORS:
                item.add_marker(pytest.mark.filterwarnings(rule))


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> str:
    """An untrained CDI-NSTSEG of the smallest width, saved as a real checkpoint.

    Its BatchNorm statistics are measured on the synthetic CT: with the default ones the
    untrained activations fade layer by layer and every map is a constant 0.5, which would let
    tests of "this map differs from that one" pass or fail for no reason.
    """
    torch.manual_seed(0)
    config = ModelConfig(base_width=8, fused_channels=8, lfm_stages=3)
    slices = window_normalize(torch.from_numpy(make_ct()), PreprocessConfig())[:, None]
    model = calibrate_batchnorm(build_model(config), slices)
    stem = tmp_path_factory.mktemp("weights") / "tiny"
    preprocessing = PreprocessConfig().to_dict()
    save_checkpoint(stem, model, config.to_dict(), preprocessing, {"note": "untrained, tests"})
    return str(stem) + ".json"


@pytest.fixture
def viewer_with_ct(make_napari_viewer):
    viewer = make_napari_viewer()
    layer = viewer.add_image(make_ct(), name="CT", scale=CT_SCALE, translate=CT_TRANSLATE)
    return viewer, layer


@pytest.fixture
def errors(monkeypatch) -> list[str]:
    """The error notifications the widget shows, in order."""
    from napari_nstseg.widgets import dock

    shown: list[str] = []
    monkeypatch.setattr(dock, "show_error", shown.append)
    return shown
