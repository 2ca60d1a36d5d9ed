"""CDI-NSTSEG and ModelConfig: geometry at any size, gradients, ablations, determinism, errors."""

from __future__ import annotations

import importlib.util
import itertools
import json

import pytest
import torch

from model_helpers import tiny_config as tiny
from napari_nstseg.models import CDINSTSeg, DeepSupervisionLoss, ModelConfig, SegOutput, build_model
from napari_nstseg.models.outputs import pad_to_multiple

HAS_REGION_COMPENSATION = (
    importlib.util.find_spec("napari_nstseg.models.region_compensation") is not None
)
needs_rc = pytest.mark.skipif(
    not HAS_REGION_COMPENSATION, reason="models/region_compensation.py not available yet"
)


def check_maps(out: SegOutput, n: int, h: int, w: int, stages: int) -> None:
    assert isinstance(out, SegOutput)
    assert out.coarse.shape == (n, 1, h, w)
    assert len(out.stages) == stages
    assert all(s.shape == (n, 1, h, w) for s in out.stages)
    assert out.final is (out.stages[-1] if stages else out.coarse)
    assert all(torch.isfinite(m).all() for m in [out.coarse, *out.stages])


# -- configuration ---------------------------------------------------------------------------


def test_config_defaults_are_the_paper():
    config = ModelConfig()
    assert config.base_width == 64 and config.in_channels == 1
    assert config.scales == (0.5, 1.0, 1.5)
    assert (config.scale_fusion, config.glm, config.lfm_paths) == ("attention", "nonlocal", "both")
    assert config.lfm_stages == 3 and config.ssl_guidance is False
    assert (config.norm, config.fused_channels, config.arch) == ("batch", 64, "cdi_nstseg")
    assert config.pad_multiple == 32


def test_config_round_trips_through_json():
    config = ModelConfig(base_width=16, scales=[1.0, 0.5], glm="none", lfm_stages=4, norm="group")
    assert config.scales == (1.0, 0.5)
    data = json.loads(json.dumps(config.to_dict()))
    assert ModelConfig.from_dict(data) == config


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"base_width": 12}, "base_width"),
        ({"base_width": 8.0}, "base_width"),
        ({"in_channels": 0}, "in_channels"),
        ({"scales": []}, "scales"),
        ({"scales": [1.0, 1.0]}, "scales"),
        ({"scales": [0.3]}, "scales"),
        ({"scales": [3.0]}, "scales"),
        ({"scales": "1.0"}, "scales"),
        ({"scale_fusion": "max"}, "scale_fusion"),
        ({"glm": "transformer"}, "glm"),
        ({"lfm_paths": "fg"}, "lfm_paths"),
        ({"lfm_stages": 5}, "lfm_stages"),
        ({"lfm_stages": -1}, "lfm_stages"),
        ({"ssl_guidance": "yes"}, "ssl_guidance"),
        ({"ssl_guidance": True, "arch": "unet"}, "ssl_guidance"),
        ({"norm": "instance"}, "norm"),
        ({"fused_channels": 2}, "fused_channels"),
        ({"fused_channels": 6, "ssl_guidance": True}, "fused_channels"),
        ({"arch": "resnet"}, "arch"),
    ],
)
def test_config_rejects_bad_values_with_the_field_name(overrides, field):
    with pytest.raises(ValueError, match=f"ModelConfig.{field} "):
        ModelConfig.from_dict(overrides)


def test_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown key.*'width'"):
        ModelConfig.from_dict({"width": 32})
    with pytest.raises(ValueError, match="dictionary"):
        ModelConfig.from_dict([("base_width", 8)])


def test_pad_multiple_keeps_every_scaled_copy_on_the_stride():
    for scales in [(0.5, 1.0, 1.5), (0.25, 1.0), (0.75,), (2.0,)]:
        multiple = ModelConfig(scales=scales).pad_multiple
        assert multiple % 32 == 0
        assert all((multiple * s) % 16 == 0 for s in scales)


def test_build_model_dispatches_on_arch():
    assert isinstance(build_model(tiny()), CDINSTSeg)
    assert build_model(tiny()).config == tiny()
    with pytest.raises(ValueError, match="ModelConfig"):
        build_model({"arch": "unet"})


# -- geometry --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(256, 256), (512, 512), (300, 220)])
def test_output_shapes_at_input_resolution(size):
    torch.manual_seed(0)
    model = build_model(tiny(fused_channels=16)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, *size), return_scale_weights=True)
    check_maps(out, 1, *size, stages=3)
    assert len(out.scale_weights) == 4  # fused levels 5, 4, 3, 2
    for weights in out.scale_weights:
        assert weights.shape == (1, 3, *size)
        torch.testing.assert_close(weights.sum(dim=1), torch.ones(1, *size))


def test_scale_weights_only_when_asked():
    model = build_model(tiny()).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert model(x).scale_weights is None
        mean = build_model(tiny(scale_fusion="mean")).eval()(x, return_scale_weights=True)
        single = build_model(tiny(scales=(1.0,))).eval()(x, return_scale_weights=True)
    assert all(torch.equal(w, torch.full((2, 3, 64, 64), 1 / 3)) for w in mean.scale_weights)
    assert all(torch.equal(w, torch.ones(2, 1, 64, 64)) for w in single.scale_weights)


def test_scale_weights_follow_config_order():
    torch.manual_seed(0)
    forward = build_model(tiny(scales=(0.5, 1.0))).eval()
    backward = build_model(tiny(scales=(1.0, 0.5))).eval()
    # same weights with the two scale branches (and the generator's outputs) swapped
    state = forward.state_dict()
    swapped = {}
    for key, value in state.items():
        key2 = key
        if key.startswith("sfm."):
            key2 = key.replace("branches.0.", "branches.X.").replace("branches.1.", "branches.0.")
            key2 = key2.replace("branches.X.", "branches.1.")
        if key.endswith("generator.3.weight") or key.endswith("generator.3.bias"):
            value = value.flip(0)
        if ".generator.0.0.weight" in key:
            value = torch.cat(value.chunk(2, dim=1)[::-1], dim=1)
        swapped[key2] = value
    backward.load_state_dict(swapped)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        a = forward(x, return_scale_weights=True)
        b = backward(x, return_scale_weights=True)
    torch.testing.assert_close(a.final, b.final, rtol=1e-4, atol=1e-4)
    for wa, wb in zip(a.scale_weights, b.scale_weights, strict=True):
        torch.testing.assert_close(wa, wb.flip(1), rtol=1e-4, atol=1e-5)


def test_padding_replicates_edges_at_bottom_right():
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    padded = pad_to_multiple(x, 8)
    assert padded.shape == (1, 1, 8, 8)
    assert torch.equal(padded[..., :3, :4], x)
    assert torch.equal(padded[..., 7, :4], x[..., 2, :])
    assert torch.equal(padded[..., :3, 7], x[..., :, 3])


def test_padding_does_not_shift_the_prediction():
    # A slice already on the multiple and the same slice cut by a few pixels must agree where
    # they overlap, away from the cut (the receptive field sees the replicated edge there).
    torch.manual_seed(0)
    model = build_model(tiny(scales=(1.0,), glm="none", lfm_stages=1)).eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        full = model(x).final
        cut = model(x[..., :61, :62]).final
    assert cut.shape == (1, 1, 61, 62)
    corr = torch.corrcoef(
        torch.stack([full[..., :24, :24].flatten(), cut[..., :24, :24].flatten()])
    )
    assert corr[0, 1] > 0.9


# -- training behaviour ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "stages,ssl", [(3, False), (4, False), pytest.param(3, True, marks=needs_rc)]
)
def test_gradients_reach_every_parameter(stages, ssl):
    torch.manual_seed(0)
    model = build_model(tiny(lfm_stages=stages, ssl_guidance=ssl)).train()
    residual = torch.rand(2, 1, 64, 64) if ssl else None
    out = model(torch.randn(2, 1, 64, 64), residual=residual)
    (out.coarse.mean() + sum(s.mean() for s in out.stages)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


def test_eval_is_deterministic_and_batch_independent():
    torch.manual_seed(0)
    model = build_model(tiny())
    model(torch.randn(4, 1, 64, 64))  # move the BatchNorm running statistics off their init
    model.eval()
    x = torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        first, second = model(x), model(x)
        alone = model(x[1:2])
    assert torch.equal(first.final, second.final)
    assert torch.equal(first.coarse, second.coarse)
    torch.testing.assert_close(alone.final, first.final[1:2], rtol=1e-4, atol=1e-4)


def test_mixed_precision_forward_and_float32_loss():
    torch.manual_seed(0)
    model = build_model(tiny()).train()
    target = (torch.rand(2, 1, 64, 64) > 0.9).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 1, 64, 64), return_scale_weights=True)
        loss = DeepSupervisionLoss()(out, target)
    assert out.final.dtype == torch.bfloat16
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_no_lfm_means_final_is_coarse():
    out = build_model(tiny(lfm_stages=0)).eval()(torch.randn(1, 1, 64, 64))
    check_maps(out, 1, 64, 64, stages=0)


# -- ablations -------------------------------------------------------------------------------

SCALE_SETS = [s for r in (1, 2, 3) for s in itertools.combinations((0.5, 1.0, 1.5), r)]
ABLATIONS = [
    (scales, fusion, glm, paths, stages, ssl)
    for scales in SCALE_SETS
    # with one scale there is nothing to fuse: the fusion switch has no effect
    for fusion in (("attention", "mean") if len(scales) > 1 else ("attention",))
    for glm in ("nonlocal", "none")
    for paths in ("both", "foreground", "background", "none")
    for stages in (3, 4)
    for ssl in (False, True)
]


def _ablation_id(case) -> str:
    scales, fusion, glm, paths, stages, ssl = case
    return "-".join(
        [
            "x".join(map(str, scales)),
            fusion,
            f"glm_{glm}",
            f"lfm_{paths}",
            f"{stages}st",
            "ssl" if ssl else "nossl",
        ]
    )


@pytest.mark.parametrize(
    "scales,fusion,glm,paths,stages,ssl", ABLATIONS, ids=[_ablation_id(a) for a in ABLATIONS]
)
def test_every_ablation_runs_forward_and_backward(scales, fusion, glm, paths, stages, ssl):
    if ssl and not HAS_REGION_COMPENSATION:
        pytest.skip("models/region_compensation.py not available yet")
    config = tiny(
        scales=scales,
        scale_fusion=fusion,
        glm=glm,
        lfm_paths=paths,
        lfm_stages=stages,
        ssl_guidance=ssl,
    )
    model = build_model(config).train()
    x = torch.randn(2, 1, 64, 64)
    residual = torch.rand(2, 1, 64, 64) if ssl else None
    out = model(x, residual=residual, return_scale_weights=True)
    check_maps(out, 2, 64, 64, stages=stages)
    assert [w.shape[1] for w in out.scale_weights] == [len(scales)] * 4
    (out.coarse.mean() + sum(s.mean() for s in out.stages)).backward()
    assert all(p.grad is not None for p in model.encoder.parameters())


# -- SSL guidance and errors -----------------------------------------------------------------


@needs_rc
def test_ssl_guidance_uses_the_residual():
    torch.manual_seed(0)
    model = build_model(tiny(ssl_guidance=True)).eval()
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        a = model(x, residual=torch.zeros(1, 1, 64, 64)).final
        b = model(x, residual=torch.rand(1, 1, 64, 64)).final
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="residual"):
        model(x)
    with pytest.raises(ValueError, match="residual"):
        model(x, residual=torch.zeros(1, 1, 32, 64))


def test_residual_without_ssl_guidance_is_an_error():
    with pytest.raises(ValueError, match="without ssl_guidance"):
        build_model(tiny())(torch.randn(1, 1, 64, 64), residual=torch.zeros(1, 1, 64, 64))


@pytest.mark.parametrize(
    "x", [torch.randn(1, 2, 64, 64), torch.randn(1, 64, 64), torch.zeros(1, 1, 64, 64).long()]
)
def test_bad_input_gets_a_clear_error(x):
    with pytest.raises(ValueError, match="model input"):
        build_model(tiny())(x)
