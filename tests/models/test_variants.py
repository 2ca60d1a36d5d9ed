"""The registry of model variants: every entry builds, runs, trains and (where it says so)
runs from the full model's weights; names stay what older checkpoints recorded."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from model_helpers import tiny_config
from napari_nstseg.models import build_model
from napari_nstseg.models.variants import (
    Variant,
    ablated_model,
    ablation_variants,
    get_variant,
    list_variants,
    register_variant,
    variant_config,
    variant_names,
)
from napari_nstseg.training.config import TrainConfig

NAMES = variant_names()


def tiny(name: str):
    return variant_config(name, tiny_config())


def forward(model, x):
    kwargs = (
        {"residual": torch.rand(x.shape[0], 1, *x.shape[2:])} if model.config.ssl_guidance else {}
    )
    with torch.no_grad():
        return model(x, **kwargs)


@pytest.fixture(scope="module")
def full_model():
    torch.manual_seed(0)
    return build_model(tiny_config()).eval()


def test_checkpoint_names_stay_as_older_runs_recorded_them():
    # Checkpoints' provenance and run folders hold these strings: they must keep loading.
    assert {"default", "no-sfm", "no-glm", "no-lfm", "single-scale", "unet", "ssl"} <= set(NAMES)
    assert NAMES[0] == "default" and get_variant("default").changes == {}


def test_an_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown variant 'no-xyz'; choose one of default, "):
        get_variant("no-xyz")


def test_a_name_is_registered_once_and_a_bad_change_fails_at_registration():
    entry = get_variant("no-glm")
    with pytest.raises(ValueError, match="registered already"):
        register_variant(entry)
    with pytest.raises(ValueError, match="ModelConfig.glm"):
        Variant("typo", {"glm": "nonlocl"}, "typo", "typo", False, "a misspelt value")
    assert variant_names() == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_every_variant_builds_and_runs_a_forward_pass(name):
    config = tiny(name)
    for key, value in get_variant(name).changes.items():
        assert getattr(config, key) == (tuple(value) if isinstance(value, list) else value)
    torch.manual_seed(0)
    out = forward(build_model(config).eval(), torch.randn(1, 1, 64, 64))
    assert out.final.shape == (1, 1, 64, 64) and torch.isfinite(out.final).all()


@pytest.mark.parametrize("name", NAMES)
def test_training_accepts_every_variant(name):
    config = tiny(name)
    mae = "mae.json" if config.ssl_guidance else None
    cfg = TrainConfig(data="d", variant=name, model=config, mae_weights=mae)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("entry", list_variants(), ids=lambda v: v.name)
def test_ablations_run_from_the_full_models_weights_where_the_registry_allows(entry, full_model):
    if not entry.from_full_weights:
        with pytest.raises(ValueError, match="cannot run from the full model's weights"):
            ablated_model(full_model, entry.name)
        return
    ablated = ablated_model(full_model, entry.name)
    assert not ablated.training
    full = full_model.state_dict()
    for key, tensor in ablated.state_dict().items():
        assert torch.equal(tensor, full[key])  # the same trained tensors, none drawn afresh
    x = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    out, reference = forward(ablated, x), forward(full_model, x)
    if entry.name == "default":
        assert ablated is full_model
    elif entry.name == "no-lfm":  # exactly the full model's coarse map
        assert torch.allclose(out.final, reference.coarse)
    else:
        assert not torch.allclose(out.final, reference.final)


def test_an_ablation_the_weights_already_are_is_refused():
    mean = build_model(tiny_config(scale_fusion="mean"))
    with pytest.raises(ValueError, match="trained as 'no SFM' already"):
        ablated_model(mean, "no-sfm")
    with pytest.raises(ValueError, match="needs a CDI-NSTSEG checkpoint"):
        ablated_model(build_model(tiny_config(arch="unet")), "no-glm")


def test_the_widget_grid_shows_the_ablations_by_display_name():
    from napari_nstseg.widgets.runner import VARIANTS

    assert list(VARIANTS) == ["no SFM", "no GLM", "no LFM", "single scale 1.0"]
    assert [v.name for v in VARIANTS.values()] == [v.name for v in ablation_variants()]


def nstseg(*argv: str) -> subprocess.CompletedProcess:
    code = "import sys; from napari_nstseg.cli import main; c = main(sys.argv[1:]); "
    code += "print('torch' in sys.modules); sys.exit(c)"
    return subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120
    )


def test_nstseg_variants_lists_every_entry_without_loading_torch():
    done = nstseg("variants")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["name", "display", "name", "from", "full", "weights", "description"]
    assert lines[-1] == "False"  # torch was never imported
    rows = {line.split()[0]: line for line in lines[1:-1]}
    assert list(rows) == NAMES
    for entry in list_variants():
        row = rows[entry.name]
        assert entry.display_name in row and entry.description in row
        assert ("  yes  " if entry.from_full_weights else "  no  ") in row

    done = nstseg("variants", "--json")
    listed = json.loads(done.stdout.rsplit("\n", 2)[0])
    assert [r["name"] for r in listed] == NAMES
    assert listed[1]["changes"] == {"scale_fusion": "mean"}
