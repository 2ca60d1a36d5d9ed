"""Losses: BCE+IoU, the structure loss with its pixel weighting applied, Dice, deep supervision."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from napari_nstseg.models import DeepSupervisionLoss, LossConfig, SegOutput, losses

BIG = 20.0  # a logit this large is a confident prediction


def disc(size: int = 64, radius: float = 6.0, center=(32, 32)) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    inside = (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2
    return inside.float()[None, None]


def confident(mask: torch.Tensor) -> torch.Tensor:
    return (mask * 2 - 1) * BIG


def f3net_weights(g: torch.Tensor) -> torch.Tensor:
    """F3Net's weight map as published (reference-models.md): one 31x31 average pool, stride 1,
    padding 15 (zeros counted), written here independently of losses.structure_weights."""
    return 1 + 5 * torch.abs(F.avg_pool2d(g, kernel_size=31, stride=1, padding=15) - g)


def f3net_structure_loss(logits: torch.Tensor, g: torch.Tensor, weighted_bce=True):
    """F3Net / PFNet structure loss: weighted BCE + weighted IoU per image, batch mean."""
    w = f3net_weights(g)
    bce = F.binary_cross_entropy_with_logits(logits, g, reduction="none")
    if weighted_bce:
        wbce = (w * bce).sum(dim=(2, 3)) / w.sum(dim=(2, 3))
    else:
        wbce = bce.mean(dim=(2, 3))  # the reference code's plain mean
    p = torch.sigmoid(logits)
    inter = (w * p * g).sum(dim=(2, 3))
    union = (w * (p + g)).sum(dim=(2, 3))
    return (wbce + 1 - inter / (union - inter)).mean()


def test_iou_and_bce_iou_near_zero_when_right_and_high_when_wrong():
    g = disc()
    assert losses.iou_loss(confident(g), g) < 1e-6
    assert losses.bce_iou_loss(confident(g), g) < 1e-6
    assert losses.iou_loss(confident(1 - g), g) > 0.999
    assert losses.bce_iou_loss(confident(1 - g), g) > BIG * 0.9


def test_iou_loss_matches_the_formula_per_image():
    torch.manual_seed(0)
    logits, g = torch.randn(3, 1, 8, 8), (torch.rand(3, 1, 8, 8) > 0.5).float()
    p = torch.sigmoid(logits)
    per_image = [1 - (p[i] * g[i]).sum() / (p[i] + g[i] - p[i] * g[i]).sum() for i in range(3)]
    torch.testing.assert_close(losses.iou_loss(logits, g), torch.stack(per_image).mean())


def test_structure_weights_peak_at_boundaries_and_are_one_far_away():
    g = disc(radius=6)
    w = losses.structure_weights(g)
    assert w.shape == g.shape
    assert w.min() >= 1 and w.max() <= 6
    assert w[0, 0, 0, 0] == 1.0  # background more than 15 px from the disc
    edge, centre = w[0, 0, 32, 38], w[0, 0, 32, 32]  # just inside the rim vs the middle
    assert edge > 1.5 and edge >= centre > 1.0


def test_structure_weights_are_f3nets_by_hand():
    # One lesion pixel in the middle of a 40x40 crop: its 31x31 window holds 1 of 961 pixels,
    # so w = 1 + 5 (1 - 1/961) there, 1 + 5/961 within 15 px of it, 1 beyond.
    g = torch.zeros(1, 1, 40, 40)
    g[0, 0, 20, 20] = 1.0
    w = losses.structure_weights(g)[0, 0]
    assert w[20, 20].item() == pytest.approx(1 + 5 * 960 / 961, abs=1e-5)
    assert w[20, 35].item() == pytest.approx(1 + 5 / 961, abs=1e-5)
    assert w[35, 35].item() == pytest.approx(1 + 5 / 961, abs=1e-5)
    assert w[20, 36].item() == pytest.approx(1.0, abs=1e-6)
    assert w[0, 0].item() == pytest.approx(1.0, abs=1e-6)
    # A crop that is all lesion: zero padding counts, so at a corner the window holds
    # 16 x 16 = 256 lesion pixels of 961: w = 1 + 5 (1 - 256/961); 15 px in, w = 1.
    w = losses.structure_weights(torch.ones(1, 1, 40, 40))[0, 0]
    assert w[0, 0].item() == pytest.approx(1 + 5 * 705 / 961, abs=1e-5)
    assert w[0, 20].item() == pytest.approx(1 + 5 * (1 - 16 * 31 / 961), abs=1e-5)
    assert w[15, 20].item() == pytest.approx(1.0, abs=1e-5)


def test_structure_weights_equal_the_published_pooling():
    torch.manual_seed(0)
    g = torch.cat([disc(48, 4, (10, 12)), disc(48, 9, (30, 20)), (torch.rand(1, 1, 48, 48) > 0.7)])
    torch.testing.assert_close(losses.structure_weights(g.float()), f3net_weights(g.float()))


def test_structure_loss_matches_the_published_formula():
    torch.manual_seed(0)
    g = torch.cat([disc(32, 4, (10, 12)), disc(32, 7, (20, 16)), torch.zeros(1, 1, 32, 32)])
    logits = torch.randn(3, 1, 32, 32)
    torch.testing.assert_close(losses.structure_loss(logits, g), f3net_structure_loss(logits, g))
    # the pixel weights handed in are used as they are (DeepSupervisionLoss computes them once)
    torch.testing.assert_close(
        losses.structure_loss(logits, g, weights=f3net_weights(g)), f3net_structure_loss(logits, g)
    )


def test_unweighted_flag_reproduces_the_reference_mean_bce():
    torch.manual_seed(0)
    g = disc(32, 5, (16, 16))
    logits = torch.randn(1, 1, 32, 32)
    plain = losses.structure_loss(logits, g, weighted_bce=False)
    weighted = losses.structure_loss(logits, g, weighted_bce=True)
    torch.testing.assert_close(plain, f3net_structure_loss(logits, g, weighted_bce=False))
    assert not torch.isclose(plain, weighted)


def test_pixel_weighting_makes_boundary_errors_cost_more():
    # Same number of wrong pixels with the same confidence: a ring of errors on the lesion rim
    # versus the same count far out in the background. Only the weighted BCE can tell them
    # apart; the reference's unweighted BCE sees the two as equal.
    g = disc(64, 8)
    right = confident(g)
    rim = (losses.structure_weights(g) > 2.0) & (g == 0)
    far = torch.zeros_like(rim)
    far.view(-1)[: int(rim.sum())] = True  # first rows: > 15 px from the disc
    assert far.sum() == rim.sum() and (losses.structure_weights(g)[far] == 1).all()
    wrong_rim = torch.where(rim, torch.tensor(1.0), right)
    wrong_far = torch.where(far, torch.tensor(1.0), right)

    def weighted_minus_plain(logits):
        # the IoU term is weighted in both modes, so the difference is wBCE - mean BCE
        plain = losses.structure_loss(logits, g, weighted_bce=False)
        return losses.structure_loss(logits, g) - plain

    weighted_rim, weighted_far = weighted_minus_plain(wrong_rim), weighted_minus_plain(wrong_far)
    # weighted BCE minus plain BCE: positive on the rim (errors up-weighted), negative far away
    assert weighted_rim > 0 > weighted_far
    plain_rim = F.binary_cross_entropy_with_logits(wrong_rim, g)
    torch.testing.assert_close(plain_rim, F.binary_cross_entropy_with_logits(wrong_far, g))


def test_soft_dice_notices_a_missed_tiny_lesion_that_bce_barely_sees():
    g = disc(64, 2)  # 13 pixels of 4096
    missed = torch.full_like(g, -BIG)
    assert F.binary_cross_entropy_with_logits(missed, g) < 0.1
    assert losses.soft_dice_loss(missed, g) > 0.9
    assert losses.soft_dice_loss(confident(g), g) < 1e-3


def test_hard_pixel_mining_makes_a_false_positive_blob_on_an_empty_crop_count():
    empty = torch.zeros(1, 1, 64, 64)
    blob = confident(disc(64, 3))  # a confident 29-pixel false positive, nothing to find
    # On an empty crop the IoU term is 1 whatever is predicted; the rest is the BCE.
    plain = losses.structure_loss(blob, empty) - 1
    mined = losses.structure_loss(blob, empty, hard_fraction=0.02) - 1
    # All pixels: the blob is under 1 % of the crop, so the BCE barely sees it...
    assert plain < 0.2
    # ...the hardest 2 % (82 pixels) hold it, and its BCE of about 20 per pixel dominates.
    assert mined > 5.0
    nothing = torch.full_like(empty, -BIG)
    assert losses.structure_loss(nothing, empty, hard_fraction=0.02) - 1 < 1e-6
    # The config reaches every BCE term of the deep-supervision loss.
    out = SegOutput(coarse=blob, stages=[blob], final=blob)
    terms = DeepSupervisionLoss(LossConfig(hard_pixel_fraction=0.02)).terms(out, empty)
    torch.testing.assert_close(terms["stage1"], 4.0 * (mined + 1))
    assert terms["coarse"] > 5.0
    # The weighted mean over every pixel is the paper's loss, unchanged.
    w = losses.structure_weights(disc())
    bce = F.binary_cross_entropy_with_logits(confident(1 - disc()), disc(), reduction="none")
    torch.testing.assert_close(
        losses.hardest_mean(bce, 1.0, w), ((w * bce).sum() / w.sum()).reshape(1)
    )
    with pytest.raises(ValueError, match="hard_pixel_fraction"):
        LossConfig(hard_pixel_fraction=0)


def test_batch_region_makes_a_false_positive_on_a_lesion_free_crop_cost():
    """Per image, an empty crop's IoU is the same whatever it predicts (only the BCE, and the
    soft Dice's smoothing term, see a blob there); over the batch a false-positive blob on it
    lowers the overlap of the whole batch."""
    lesion, empty = disc(64, 5), torch.zeros(1, 1, 64, 64)
    g = torch.cat([lesion, empty])
    clean = torch.cat([confident(lesion), torch.full_like(empty, -BIG)])
    blob = torch.cat([confident(lesion), confident(disc(64, 5, (12, 12)))])
    for loss in (losses.iou_loss, losses.soft_dice_loss, losses.structure_loss):
        image_clean, image_blob = loss(clean, g), loss(blob, g)
        batch_clean, batch_blob = loss(clean, g, region="batch"), loss(blob, g, region="batch")
        if loss is losses.iou_loss:
            assert float(image_blob - image_clean) < 1e-3
        assert float(batch_clean) < 1e-3, loss.__name__
        # the blob is as large as the lesion: the batch IoU halves, the Dice drops to 2/3
        assert float(batch_blob) > 0.3, loss.__name__
    # With one image in the batch both reductions agree.
    torch.manual_seed(0)
    logits = torch.randn(1, 1, 16, 16)
    one = (torch.rand(1, 1, 16, 16) > 0.7).float()
    torch.testing.assert_close(
        losses.iou_loss(logits, one), losses.iou_loss(logits, one, region="batch")
    )

    # The config reaches every term of the deep-supervision loss; in the IoU-based ones the blob
    # adds more over the batch than per image (the smoothed per-image Dice already sees it).
    def added(config: LossConfig) -> dict[str, torch.Tensor]:
        loss = DeepSupervisionLoss(config)
        with_blob = loss.terms(SegOutput(coarse=blob, stages=[blob], final=blob), g)
        without = loss.terms(SegOutput(coarse=clean, stages=[clean], final=clean), g)
        return {k: with_blob[k] - without[k] for k in with_blob}

    per_image = added(LossConfig(dice_weight=1.0))
    per_batch = added(LossConfig(dice_weight=1.0, region="batch"))
    for name in ("coarse", "stage1"):
        assert per_batch[name] > per_image[name] + 0.1, name
    assert per_batch["dice"] > 0.3 and per_image["dice"] > 0.3
    with pytest.raises(ValueError, match="LossConfig.region"):
        LossConfig(region="pixel")


def test_default_stage_weights():
    assert losses.default_stage_weights(3) == (1.0, 2.0, 4.0)
    assert losses.default_stage_weights(4) == (1.0, 1.0, 2.0, 4.0)
    assert losses.default_stage_weights(1) == (4.0,)
    assert losses.default_stage_weights(0) == ()


def fake_output(n_stages: int, g: torch.Tensor) -> SegOutput:
    torch.manual_seed(1)
    coarse = torch.randn_like(g)
    stages = [torch.randn_like(g) for _ in range(n_stages)]
    return SegOutput(coarse=coarse, stages=stages, final=stages[-1] if stages else coarse)


def test_deep_supervision_combines_the_terms():
    g = disc(32, 5, (16, 16))
    out = fake_output(3, g)
    loss = DeepSupervisionLoss()
    expected = losses.bce_iou_loss(out.coarse, g) + sum(
        w * losses.structure_loss(s, g) for w, s in zip((1, 2, 4), out.stages, strict=True)
    )
    torch.testing.assert_close(loss(out, g), expected)
    assert list(loss.terms(out, g)) == ["coarse", "stage1", "stage2", "stage3"]

    with_dice = DeepSupervisionLoss(LossConfig(dice_weight=0.5, weighted_bce=False))
    terms = with_dice.terms(out, g)
    torch.testing.assert_close(terms["dice"], 0.5 * losses.soft_dice_loss(out.final, g))
    torch.testing.assert_close(
        terms["stage3"], 4 * losses.structure_loss(out.stages[2], g, weighted_bce=False)
    )


def test_deep_supervision_without_stages_and_with_custom_weights():
    g = disc(32, 5, (16, 16))
    out = fake_output(0, g)
    torch.testing.assert_close(DeepSupervisionLoss()(out, g), losses.bce_iou_loss(out.coarse, g))
    custom = DeepSupervisionLoss(LossConfig(coarse_weight=0, stage_weights=(0, 0, 1)))
    out3 = fake_output(3, g)
    torch.testing.assert_close(custom(out3, g), losses.structure_loss(out3.stages[2], g))
    with pytest.raises(ValueError, match="stage_weights has 3 entries"):
        custom(fake_output(4, g), g)


def test_loss_errors_are_readable():
    with pytest.raises(ValueError, match="same"):
        losses.structure_loss(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9))
    with pytest.raises(ValueError, match="LossConfig.dice_weight"):
        LossConfig(dice_weight=-1)
    with pytest.raises(ValueError, match="LossConfig.stage_weights"):
        LossConfig(stage_weights=(1, "2"))


def test_hardest_mean_averages_the_top_share_of_pixels_by_hand():
    loss = torch.arange(1.0, 9.0).reshape(1, 1, 2, 4)  # pixel losses 1..8
    assert losses.hardest_mean(loss, 1.0).item() == pytest.approx(4.5)  # all: 36 / 8
    assert losses.hardest_mean(loss, 0.5).item() == pytest.approx(6.5)  # 8 + 7 + 6 + 5
    assert losses.hardest_mean(loss, 0.25).item() == pytest.approx(7.5)  # 8 + 7
    assert losses.hardest_mean(loss, 0.01).item() == pytest.approx(8.0)  # at least one pixel
    # weighted: ranked by w * loss, averaged as sum(w * loss) / sum(w) over the chosen pixels
    w = torch.ones_like(loss)
    w[0, 0, 0, 0] = 10.0  # the pixel of loss 1 weighs 10 (w * loss = 10, the largest)
    assert losses.hardest_mean(loss, 0.25, w).item() == pytest.approx((10 + 8) / (10 + 1))
    assert losses.hardest_mean(loss, 1.0, w).item() == pytest.approx((10 + 35) / (10 + 7))
