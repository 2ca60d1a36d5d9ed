"""Every ablation switch changes what the model computes.

The ablation grid in test_cdi_nstseg.py checks that every combination runs; here each switch
of the registry's variants (models/variants.py) and of ModelConfig is turned on against
the full model with the same weights wherever the two share a tensor (the rest drawn from a
fixed seed), on the same slice: the outputs must differ. A switch that the model ignored
would give the same numbers, as the control case (no switch) does.

The models use GroupNorm: an untrained tiny model with BatchNorm's initial statistics loses
the input on the way down (its maps vary by 1e-7 from one slice to another), so any switch
would look like no change.
"""

from __future__ import annotations

import pytest
import torch

from model_helpers import tiny_config
from napari_nstseg.models import build_model
from napari_nstseg.models.variants import variant_config, variant_names

# ModelConfig switches beyond the training variants: each LFM path set and a fourth LFM.
EXTRA_SWITCHES = {
    "lfm-foreground-only": {"lfm_paths": "foreground"},
    "lfm-background-only": {"lfm_paths": "background"},
    "lfm-no-paths": {"lfm_paths": "none"},
    "four-lfms": {"lfm_stages": 4},
    "two-scales": {"scales": (0.5, 1.0)},
}
SWITCHES = {name: ("variant", name) for name in variant_names() if name != "default"} | {
    name: ("config", overrides) for name, overrides in EXTRA_SWITCHES.items()
}


def base(**overrides):
    return tiny_config(norm="group", **overrides)


def with_shared_weights(reference: torch.nn.Module, config) -> torch.nn.Module:
    """``config``'s model carrying ``reference``'s tensors where names and shapes agree."""
    torch.manual_seed(1)
    model = build_model(config)
    own = model.state_dict()
    shared = {
        k: v for k, v in reference.state_dict().items() if k in own and own[k].shape == v.shape
    }
    # tensors only the switched model has (e.g. region compensation) get non-trivial values,
    # so that a module initialised to pass its input through still shows
    with torch.no_grad():
        for name, tensor in own.items():
            if name not in shared and tensor.is_floating_point() and "running" not in name:
                tensor.copy_(0.3 * torch.randn_like(tensor))
    model.load_state_dict({**own, **shared})
    return model.eval()


def outputs(model, x, residual):
    kwargs = {"residual": residual} if model.config.ssl_guidance else {}
    with torch.no_grad():
        out = model(x, **kwargs)
    return torch.cat([out.coarse, out.final], dim=1)


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    return build_model(base()).eval()


@pytest.fixture(scope="module")
def slice_and_residual():
    torch.manual_seed(2)
    return torch.randn(1, 1, 64, 64), torch.rand(1, 1, 64, 64)


def test_the_control_without_a_switch_gives_the_same_output(reference, slice_and_residual):
    x, residual = slice_and_residual
    same = with_shared_weights(reference, base())
    assert torch.equal(outputs(same, x, residual), outputs(reference, x, residual))
    # and the reference's maps follow its input, so a change can show
    other = outputs(reference, torch.randn(1, 1, 64, 64), residual)
    assert (other - outputs(reference, x, residual)).abs().max() > 0.1


@pytest.mark.parametrize("name", list(SWITCHES))
def test_each_switch_changes_the_output(name, reference, slice_and_residual):
    kind, what = SWITCHES[name]
    if kind == "variant":
        config = variant_config(what, base=base())
    else:
        config = base(**what)
    assert config != base()
    x, residual = slice_and_residual
    switched = with_shared_weights(reference, config)
    full, changed = outputs(reference, x, residual), outputs(switched, x, residual)
    assert torch.isfinite(changed).all()
    difference = (full - changed).abs().max().item()
    assert difference > 1e-2, f"{name}: the output moved by at most {difference:.2e}"
