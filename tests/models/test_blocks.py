"""Blocks, attention, SFM, GLM and LFM units: shapes, the reference formulas, the switches."""

from __future__ import annotations

import pytest
import torch

from napari_nstseg.models.attention import ChannelNonLocal, SpatialNonLocal
from napari_nstseg.models.blocks import ASPP, CBR, ContextExploration, DoubleConv, make_norm
from napari_nstseg.models.glm import GlobalLocalization, PlainLocalization
from napari_nstseg.models.lfm import LayeredFocusing
from napari_nstseg.models.sfm import ChannelCompression, ScaleFusion


@pytest.mark.parametrize("kernel,dilation", [(1, 1), (3, 1), (3, 4), (5, 1), (7, 1), (3, 8)])
def test_cbr_keeps_spatial_size(kernel, dilation):
    out = CBR(3, 5, kernel, dilation)(torch.randn(2, 3, 17, 23))
    assert out.shape == (2, 5, 17, 23)
    assert out.min() >= 0  # ends in a ReLU


def test_group_norm_option_fits_narrow_layers():
    for channels in (2, 6, 8, 64):
        norm = make_norm("group", channels)
        assert isinstance(norm, torch.nn.GroupNorm)
        assert channels % norm.num_groups == 0
    with pytest.raises(ValueError, match="norm"):
        make_norm("layer", 8)


def test_double_conv_and_aspp_shapes():
    assert DoubleConv(1, 8)(torch.randn(2, 1, 16, 16)).shape == (2, 8, 16, 16)
    aspp = ASPP(32, 16)
    assert aspp(torch.randn(2, 32, 9, 7)).shape == (2, 16, 9, 7)


def test_aspp_trains_with_batch_size_one():
    # the image-pooling branch is 1x1 in space; a BatchNorm there would fail at batch 1
    aspp = ASPP(8, 8).train()
    aspp(torch.randn(1, 8, 4, 4)).sum().backward()
    assert all(p.grad is not None for p in aspp.parameters())


def test_context_exploration_shape_and_channel_check():
    ce = ContextExploration(16)
    assert ce(torch.randn(2, 16, 20, 20)).shape == (2, 16, 20, 20)
    assert [m[0].kernel_size for m in ce.local] == [(1, 1), (3, 3), (5, 5), (7, 7)]
    assert [m[0].dilation for m in ce.dilated] == [(1, 1), (2, 2), (4, 4), (8, 8)]
    with pytest.raises(ValueError, match="divisible by 4"):
        ContextExploration(10)


def test_context_exploration_branches_are_cascaded():
    # Only the first branch's input reduction is perturbed; the cascade must carry the change
    # into every later branch's output, not just the first quarter of channels before fusion.
    torch.manual_seed(0)
    ce = ContextExploration(8).eval()
    x = torch.randn(1, 8, 12, 12)
    captured = []
    hooks = [d.register_forward_hook(lambda m, i, o: captured.append(o)) for d in ce.dilated]
    ce(x)
    before = [o.clone() for o in captured]
    captured.clear()
    with torch.no_grad():
        ce.reduce[0][0].weight.add_(0.5)
    ce(x)
    for hook in hooks:
        hook.remove()
    for old, new in zip(before, captured, strict=True):
        assert not torch.allclose(old, new)


def _naive_attention(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v


def test_spatial_non_local_sdpa_matches_plain_softmax():
    torch.manual_seed(0)
    block = SpatialNonLocal(16)
    x = torch.randn(2, 16, 6, 5)
    with torch.no_grad():
        block.gamma.fill_(0.7)
        q = block.query(x).flatten(2).transpose(1, 2)  # (N, HW, C/8)
        k = block.key(x).flatten(2).transpose(1, 2)
        v = block.value(x).flatten(2).transpose(1, 2)  # (N, HW, C)
        expected = 0.7 * _naive_attention(q, k, v).transpose(1, 2).reshape(x.shape) + x
        got = block(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_spatial_non_local_uses_sdpa(monkeypatch):
    import torch.nn.functional as F

    calls = []
    original = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    SpatialNonLocal(8)(torch.randn(1, 8, 4, 3))
    assert calls == [(1, 1, 12, 1)]


def test_channel_non_local_matches_formula():
    torch.manual_seed(0)
    block = ChannelNonLocal()
    x = torch.randn(2, 6, 4, 4)
    flat = x.flatten(2)
    expected = (_naive_attention(flat, flat, flat)).reshape(x.shape) + x
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_attention_gammas_start_at_one():
    assert ChannelNonLocal().gamma.item() == 1.0
    assert SpatialNonLocal(8).gamma.item() == 1.0
    with pytest.raises(ValueError, match="divisible by 8"):
        SpatialNonLocal(12)


def test_channel_compression_is_aspp_on_the_deepest_level():
    ccm = ChannelCompression({2: 16, 5: 128}, 8)
    assert isinstance(ccm.per_level["5"], ASPP)
    assert isinstance(ccm.per_level["2"], CBR)
    assert ccm(5, torch.randn(1, 128, 4, 4)).shape == (1, 8, 4, 4)
    assert ccm(2, torch.randn(1, 16, 32, 32)).shape == (1, 8, 32, 32)


def test_scale_fusion_weights_are_a_softmax_over_scales():
    torch.manual_seed(0)
    sfm = ScaleFusion((0.5, 1.0, 1.5), 8)
    feats = [torch.randn(2, 8, s, s) for s in (8, 16, 24)]
    fused, weights = sfm(feats, (16, 16))
    assert fused.shape == (2, 8, 16, 16)
    assert weights.shape == (2, 3, 16, 16)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2, 16, 16))
    aligned = [branch(x, (16, 16)) for branch, x in zip(sfm.branches, feats, strict=True)]
    expected = sum(weights[:, i : i + 1] * a for i, a in enumerate(aligned))
    torch.testing.assert_close(fused, expected)


def test_scale_fusion_mean_averages_aligned_branches():
    torch.manual_seed(0)
    sfm = ScaleFusion((1.0, 2.0), 4, fusion="mean")
    assert not hasattr(sfm, "generator")
    feats = [torch.randn(1, 4, 10, 10), torch.randn(1, 4, 20, 20)]
    fused, weights = sfm(feats, (10, 10))
    assert weights is None
    aligned = [branch(x, (10, 10)) for branch, x in zip(sfm.branches, feats, strict=True)]
    torch.testing.assert_close(fused, (aligned[0] + aligned[1]) / 2)


def test_scale_fusion_mixed_pooling_sums_max_and_average():
    sfm = ScaleFusion((1.0, 1.5), 4)
    larger = sfm.branches[1]
    larger.before = torch.nn.Identity()
    larger.after = torch.nn.Identity()
    x = torch.arange(36.0).reshape(1, 1, 6, 6).repeat(1, 4, 1, 1)
    out = larger(x, (3, 3))
    # 2x2 windows of an arange: max = mean + 3.5
    windows = x.unfold(2, 2, 2).unfold(3, 2, 2)
    expected = windows.amax(dim=(-1, -2)) + windows.mean(dim=(-1, -2))
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="two scales"):
        ScaleFusion((1.0,), 4)


def test_glm_and_plain_localization():
    x = torch.randn(2, 16, 4, 4)
    features, logits = GlobalLocalization(16)(x)
    assert features.shape == x.shape and logits.shape == (2, 1, 4, 4)
    features, logits = PlainLocalization(16)(x)
    assert features is x and logits.shape == (2, 1, 4, 4)


@pytest.mark.parametrize("paths", ["both", "foreground", "background", "none"])
def test_lfm_paths_switch_branches(paths):
    lfm = LayeredFocusing(8, 16, paths)
    assert hasattr(lfm, "alpha") == (paths in ("both", "foreground"))
    assert hasattr(lfm, "beta") == (paths in ("both", "background"))
    refined, logits = lfm(
        torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8), torch.randn(2, 1, 8, 8)
    )
    assert refined.shape == (2, 8, 16, 16)
    assert logits.shape == (2, 1, 16, 16)


def test_lfm_splits_features_by_the_upsampled_sigmoid_mask():
    torch.manual_seed(0)
    lfm = LayeredFocusing(4, 8).eval()
    seen = {}
    lfm.false_positives.register_forward_hook(lambda m, i, o: seen.setdefault("fg", i[0]))
    lfm.false_negatives.register_forward_hook(lambda m, i, o: seen.setdefault("bg", i[0]))
    x = torch.randn(1, 4, 8, 8)
    logits = torch.full((1, 1, 4, 4), -30.0)  # "certainly background" everywhere
    lfm(x, torch.randn(1, 8, 4, 4), logits)
    assert seen["fg"].abs().max() < 1e-6
    torch.testing.assert_close(seen["bg"], x)
    assert lfm.alpha.item() == 1.0 and lfm.beta.item() == 1.0
    with pytest.raises(ValueError, match="paths"):
        LayeredFocusing(4, 8, "left")


def test_channel_non_local_energy_does_not_overflow_half_precision():
    # 32 x 32 positions of value 10 give energies of 102400, beyond float16's 65504
    x = torch.full((1, 4, 32, 32), 10.0).half()
    assert torch.isfinite(ChannelNonLocal()(x)).all()
