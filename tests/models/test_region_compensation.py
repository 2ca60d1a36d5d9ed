"""GRCSF region compensation: geometry, gradients, initial scale and the importance gate."""

import pytest
import torch

from napari_nstseg.models.region_compensation import RegionCompensation


@pytest.mark.parametrize(
    "feat_hw,res_hw", [((16, 16), (128, 128)), ((7, 11), (100, 75)), ((48, 40), (64, 64))]
)
def test_output_has_the_feature_shape_for_any_size(feat_hw, res_hw):
    torch.manual_seed(0)
    rcu = RegionCompensation(channels=16, patch_size=8, heads=4, max_grid=16)
    features = torch.randn(2, 16, *feat_hw)
    out = rcu(features, torch.rand(2, 1, *res_hw))
    assert out.shape == features.shape
    assert torch.isfinite(out).all()


def test_gradients_reach_features_residual_and_every_parameter():
    torch.manual_seed(0)
    rcu = RegionCompensation(channels=8, patch_size=4, heads=2)
    features = torch.randn(1, 8, 6, 6, requires_grad=True)
    residual = torch.rand(1, 1, 24, 24, requires_grad=True)
    rcu(features, residual).square().sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    assert residual.grad is not None and residual.grad.abs().sum() > 0
    for name, param in rcu.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_scale_starts_at_one_and_zero_scale_is_identity():
    torch.manual_seed(0)
    rcu = RegionCompensation(channels=8, patch_size=4, heads=2)
    assert rcu.scale.item() == 1.0
    features = torch.randn(1, 8, 5, 5)
    residual = torch.rand(1, 1, 20, 20)
    assert not torch.allclose(rcu(features, residual), features)
    with torch.no_grad():
        rcu.scale.zero_()
    assert torch.equal(rcu(features, residual), features)


def test_importance_gate_is_strictly_between_zero_and_one_per_patch():
    torch.manual_seed(0)
    rcu = RegionCompensation(channels=8, patch_size=4, heads=2, max_grid=6)
    features = torch.randn(3, 8, 10, 9)
    score = rcu.patch_importance(features, torch.rand(3, 1, 40, 36) * 5)
    assert score.shape == (3, 1, 6, 6)  # grid capped at max_grid patches a side
    assert (score > 0).all() and (score < 1).all()


def test_residual_changes_the_output_where_it_is_attended():
    torch.manual_seed(0)
    rcu = RegionCompensation(channels=8, patch_size=4, heads=2)
    features = torch.randn(1, 8, 6, 6)
    flat = torch.zeros(1, 1, 24, 24)
    spot = flat.clone()
    spot[..., 8:12, 8:12] = 1.0
    assert not torch.allclose(rcu(features, flat), rcu(features, spot))


def test_wrong_inputs_give_clear_errors():
    rcu = RegionCompensation(channels=8, patch_size=4, heads=2)
    with pytest.raises(ValueError, match="expects 8 channels"):
        rcu(torch.randn(1, 4, 6, 6), torch.rand(1, 1, 24, 24))
    with pytest.raises(ValueError, match="residual map must be"):
        rcu(torch.randn(1, 8, 6, 6), torch.rand(1, 2, 24, 24))
    with pytest.raises(ValueError, match="not divisible by 3"):
        RegionCompensation(channels=8, heads=3)
