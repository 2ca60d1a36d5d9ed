"""The paper's module formulas on tiny fixed tensors, against values worked out by hand.

Each module gets weights that make it transparent (identity kernels, chosen projections), so
what is left is the formula the papers write: the LFM's R1 = up - alpha * FP and
R2 = R1 + beta * FN (PFNet's focus module), the SFM's per-pixel softmax mix of the scale
branches (ZoomNet's SIU, with its max + average pooling of the larger copy), and the GLM's
channel then spatial non-local attention (PFNet's positioning module). The expected numbers
are written in the comments as they were worked out; none comes from the module's code.
BatchNorm layers are in eval mode with fresh statistics, so each divides by sqrt(1 + 1e-5):
the tolerances allow for that.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from napari_nstseg.models.attention import ChannelNonLocal, SpatialNonLocal
from napari_nstseg.models.glm import GlobalLocalization
from napari_nstseg.models.lfm import LayeredFocusing
from napari_nstseg.models.sfm import ScaleFusion

TOL = dict(rtol=1e-4, atol=1e-4)


def identity_kernel(conv: nn.Conv2d) -> None:
    """Output channel c = input channel c at the kernel's centre (same in and out widths)."""
    with torch.no_grad():
        conv.weight.zero_()
        k = conv.kernel_size[0] // 2
        for c in range(conv.out_channels):
            conv.weight[c, c, k, k] = 1.0
        if conv.bias is not None:
            conv.bias.zero_()


def centre_weights(conv: nn.Conv2d, weights: list[list[float]], bias=None) -> None:
    """A kernel that only looks at its centre: out[o] = sum_i weights[o][i] * in[i] + bias[o]."""
    with torch.no_grad():
        conv.weight.zero_()
        k = conv.kernel_size[0] // 2
        conv.weight[:, :, k, k] = torch.tensor(weights)
        if conv.bias is not None:
            conv.bias.copy_(torch.tensor(bias) if bias is not None else torch.zeros_like(conv.bias))


def per_pixel(values: list[float], channels: int) -> torch.Tensor:
    """(1, channels, 1, len(values)): every channel holds ``values`` along x."""
    return torch.tensor(values).reshape(1, 1, 1, -1).repeat(1, channels, 1, 1)


# -- LFM ---------------------------------------------------------------------------------------

# Three pixels along x, the same in all 4 channels:
#   higher features 4, 2, 1 (the up-conv is the identity, then ReLU: up = 4, 2, 1)
#   this level's features x = 2, 4, 12
#   higher logits 0, ln 3, -ln 3, so the mask m = sigmoid = 1/2, 3/4, 1/4
# alpha = 0.5 and beta = 2 (not 1, so swapping them or dropping one shows):
#   FP input x*m = 1, 3, 3;  FN input x*(1-m) = 1, 1, 9
#   R1 = relu(up - 0.5 FP)  = relu(3.5), relu(0.5), relu(-0.5) = 3.5, 0.5, 0
#   R2 = relu(R1 + 2 FN)    = 5.5, 2.5, 18
# foreground only: R2 = R1 = 3.5, 0.5, 0; background only: relu(up + 2 FN) = 6, 4, 19;
# none: up = 4, 2, 1. The head sums the 4 channels: 4 * R2.
LFM_EXPECTED = {
    "both": [5.5, 2.5, 18.0],
    "foreground": [3.5, 0.5, 0.0],
    "background": [6.0, 4.0, 19.0],
    "none": [4.0, 2.0, 1.0],
}


@pytest.mark.parametrize("paths", list(LFM_EXPECTED))
def test_lfm_subtracts_false_positives_and_adds_false_negatives(paths):
    lfm = LayeredFocusing(4, 4, paths=paths).eval()
    identity_kernel(lfm.up[0])
    # the Context Exploration units pass their input through, so FP = x*m and FN = x*(1-m)
    if lfm.use_foreground:
        lfm.false_positives = nn.Identity()
        lfm.alpha.data.fill_(0.5)
    if lfm.use_background:
        lfm.false_negatives = nn.Identity()
        lfm.beta.data.fill_(2.0)
    centre_weights(lfm.head, [[1.0, 1.0, 1.0, 1.0]])
    x = per_pixel([2.0, 4.0, 12.0], 4)
    higher = per_pixel([4.0, 2.0, 1.0], 4)
    logits = torch.tensor([0.0, math.log(3), -math.log(3)]).reshape(1, 1, 1, 3)
    with torch.no_grad():
        refined, out = lfm(x, higher, logits)
    expected = torch.tensor(LFM_EXPECTED[paths])
    torch.testing.assert_close(refined, per_pixel(LFM_EXPECTED[paths], 4), **TOL)
    torch.testing.assert_close(out, 4 * expected.reshape(1, 1, 1, 3), **TOL)


def test_lfm_focuses_with_the_higher_prediction_upsampled():
    # A 1x1 higher level (logit ln 3: m = 3/4 after upsampling, everywhere) on a 2x2 level:
    # with x = 4, up = 1: R1 = relu(1 - 4*3/4) = 0, R2 = relu(0 + 4*1/4) = 1 at every pixel.
    lfm = LayeredFocusing(4, 4).eval()
    identity_kernel(lfm.up[0])
    lfm.false_positives, lfm.false_negatives = nn.Identity(), nn.Identity()
    centre_weights(lfm.head, [[1.0, 0.0, 0.0, 0.0]])
    with torch.no_grad():
        refined, out = lfm(
            torch.full((1, 4, 2, 2), 4.0),
            torch.ones(1, 4, 1, 1),
            torch.full((1, 1, 1, 1), math.log(3)),
        )
    torch.testing.assert_close(refined, torch.ones(1, 4, 2, 2), **TOL)
    torch.testing.assert_close(out, torch.ones(1, 1, 2, 2), **TOL)


# -- SFM ---------------------------------------------------------------------------------------


def transparent_sfm(fusion: str) -> ScaleFusion:
    """Scales 0.5, 1.0, 2.0 on one channel; every branch conv is the identity."""
    sfm = ScaleFusion((0.5, 1.0, 2.0), 1, fusion=fusion).eval()
    for branch in sfm.branches:
        identity_kernel(branch.before[0])
        if isinstance(branch.after, nn.Sequential):
            identity_kernel(branch.after[0])
    if fusion == "attention":
        # generator: keep only the 1.0x branch's value b (input channels: 0.5x, 1.0x, 2.0x),
        # two identity 3x3 CBRs, then scale logits (0, b, 0)
        centre_weights(sfm.generator[0][0], [[0.0, 1.0, 0.0]])
        identity_kernel(sfm.generator[1][0])
        identity_kernel(sfm.generator[2][0])
        centre_weights(sfm.generator[3], [[0.0], [1.0], [0.0]], bias=[0.0, 0.0, 0.0])
    return sfm


# Inputs on a 1x2 grid:
#   0.5x copy: one pixel of 4 -> upsampled, 4 at both pixels
#   1.0x copy: b = 0 and ln 6
#   2.0x copy: 2x4 pixels, blocks [[1, 3], [5, 7]] and [[2, 2], [2, 10]] -> max + mean per
#              block: 7 + 4 = 11 and 10 + 4 = 14
# attention: softmax(0, b, 0) = 1/3 each where b = 0; 1/8, 6/8, 1/8 where b = ln 6
#   fused = 11/3 + 4/3 + 0 = 5 at the first pixel; 4/8 + 6/8 ln 6 + 14/8 at the second
# mean: (4 + 0 + 11) / 3 = 5 and (4 + ln 6 + 14) / 3
SFM_INPUTS = (
    torch.tensor([[[[4.0]]]]),
    torch.tensor([[[[0.0, math.log(6)]]]]),
    torch.tensor([[[[1.0, 3.0, 2.0, 2.0], [5.0, 7.0, 2.0, 10.0]]]]),
)


def test_sfm_mixes_the_scales_with_a_per_pixel_softmax():
    sfm = transparent_sfm("attention")
    with torch.no_grad():
        fused, weights = sfm(list(SFM_INPUTS), (1, 2))
    expected_weights = torch.tensor([[1 / 3, 1 / 8], [1 / 3, 6 / 8], [1 / 3, 1 / 8]])
    torch.testing.assert_close(weights, expected_weights.reshape(1, 3, 1, 2), **TOL)
    second = 4 / 8 + 6 / 8 * math.log(6) + 14 / 8
    torch.testing.assert_close(fused, torch.tensor([[[[5.0, second]]]]), **TOL)


def test_sfm_mean_ablation_averages_the_aligned_scales():
    sfm = transparent_sfm("mean")
    with torch.no_grad():
        fused, weights = sfm(list(SFM_INPUTS), (1, 2))
    assert weights is None
    second = (4 + math.log(6) + 14) / 3
    torch.testing.assert_close(fused, torch.tensor([[[[5.0, second]]]]), **TOL)


# -- GLM ---------------------------------------------------------------------------------------

# 8 channels, 2 pixels. x: channel 0 = (10, 0), channel 1 = (0, 10), channels 2-7 = 0.
# Channel attention, energy X X^T: channel 0's row is (100, 0, ..., 0), so its softmax picks
# channel 0 (e^-100 is nothing); channel 1 picks itself; the zero channels' rows are all 0, a
# uniform 1/8 over channels: (X0 + X1) / 8 = (1.25, 1.25). Plus x (gamma 1):
#   after CA: ch0 = (20, 0), ch1 = (0, 20), ch2-7 = (1.25, 1.25)
CA_EXPECTED = torch.tensor([[20.0, 0.0], [0.0, 20.0]] + [[1.25, 1.25]] * 6)
# Spatial attention on that, query = ch0 / 20 = (1, 0), key = ln 3 * ch0 / 20 = (ln 3, 0),
# value = the features themselves, energies q_i k_j unscaled, softmax over j:
#   pixel 0: (ln 3, 0) -> (3/4, 1/4); pixel 1: (0, 0) -> (1/2, 1/2)
#   out = attention @ values + features (gamma 1):
#   ch0: (3/4*20 + 20, 1/2*20 + 0) = (35, 10);  ch1: (1/4*20, 1/2*20 + 20) = (5, 30)
#   ch2-7: (1.25 + 1.25, 1.25 + 1.25) = (2.5, 2.5)
GLM_EXPECTED = torch.tensor([[35.0, 10.0], [5.0, 30.0]] + [[2.5, 2.5]] * 6)
# Head: channel c weighted c + 1: pixel 0 = 35 + 2*5 + 2.5*(3+...+8) = 35 + 10 + 82.5 = 127.5,
# pixel 1 = 10 + 60 + 82.5 = 152.5
HEAD_EXPECTED = torch.tensor([127.5, 152.5])


def glm_input() -> torch.Tensor:
    x = torch.zeros(1, 8, 1, 2)
    x[0, 0, 0, 0] = 10.0
    x[0, 1, 0, 1] = 10.0
    return x


def set_spatial(sa: SpatialNonLocal) -> None:
    centre_weights(sa.query, [[1 / 20] + [0.0] * 7])
    centre_weights(sa.key, [[math.log(3) / 20] + [0.0] * 7])
    identity_kernel(sa.value)


def test_channel_non_local_attends_over_channels():
    with torch.no_grad():
        out = ChannelNonLocal()(glm_input())
    torch.testing.assert_close(out, CA_EXPECTED.reshape(1, 8, 1, 2), **TOL)


def test_spatial_non_local_attends_over_pixels_with_gamma():
    sa = SpatialNonLocal(8)
    set_spatial(sa)
    sa.gamma.data.fill_(0.5)  # half the attention: ch0 = (7.5 + 20, 5 + 0)
    with torch.no_grad():
        out = sa(CA_EXPECTED.reshape(1, 8, 1, 2))
    half = 0.5 * (GLM_EXPECTED - CA_EXPECTED) + CA_EXPECTED
    torch.testing.assert_close(out, half.reshape(1, 8, 1, 2), **TOL)
    assert out[0, 0, 0].tolist() == pytest.approx([27.5, 5.0], abs=1e-4)


def test_glm_is_channel_then_spatial_attention_then_the_head():
    glm = GlobalLocalization(8).eval()
    set_spatial(glm.spatial_attention)
    centre_weights(glm.head, [[float(c + 1) for c in range(8)]], bias=[0.0])
    with torch.no_grad():
        features, coarse = glm(glm_input())
    torch.testing.assert_close(features, GLM_EXPECTED.reshape(1, 8, 1, 2), **TOL)
    torch.testing.assert_close(coarse, HEAD_EXPECTED.reshape(1, 1, 1, 2), **TOL)
