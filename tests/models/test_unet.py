"""U-Net baseline: same encoder as CDI-NSTSEG, any input size, the SegOutput contract."""

from __future__ import annotations

import pytest
import torch

from napari_nstseg.models import ModelConfig, SegOutput, UNet, build_model


def tiny_unet(**overrides) -> UNet:
    return build_model(ModelConfig(**{"arch": "unet", "base_width": 8, **overrides}))


@pytest.mark.parametrize("size", [(256, 256), (300, 220), (37, 70)])
def test_unet_output_shapes(size):
    model = tiny_unet().eval()
    assert isinstance(model, UNet)
    with torch.no_grad():
        out = model(torch.randn(2, 1, *size), return_scale_weights=True)
    assert isinstance(out, SegOutput)
    assert out.final.shape == (2, 1, *size)
    assert out.coarse is out.final
    assert len(out.stages) == 1 and out.stages[0] is out.final
    assert out.scale_weights is None


def test_unet_shares_the_cdi_nstseg_encoder_widths():
    unet = tiny_unet(base_width=16)
    cdi = build_model(ModelConfig(base_width=16, fused_channels=8))
    assert unet.encoder.widths == cdi.encoder.widths == (16, 32, 64, 128, 256)
    unet_encoder = {k: v.shape for k, v in unet.encoder.state_dict().items()}
    assert unet_encoder == {k: v.shape for k, v in cdi.encoder.state_dict().items()}


def test_unet_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = tiny_unet(norm="group").train()
    model(torch.randn(2, 1, 48, 40)).final.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


def test_unet_eval_is_deterministic():
    torch.manual_seed(0)
    model = tiny_unet().eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x).final, model(x).final)


def test_unet_rejects_a_residual_and_bad_input():
    model = tiny_unet()
    with pytest.raises(ValueError, match="residual"):
        model(torch.randn(1, 1, 32, 32), residual=torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        model(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="arch='unet'"):
        UNet(ModelConfig(base_width=8))
