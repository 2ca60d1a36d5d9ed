"""Deep-supervised losses of CDI-NSTSEG/PFNet: BCE+IoU, weighted structure loss, soft Dice."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .outputs import SegOutput

# F3Net structure-loss weight w = 1 + EDGE_GAIN * |avgpool_31(g) - g|
EDGE_WINDOW = 31
EDGE_GAIN = 5.0
EPS = 1e-6


def _check_pair(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate shapes and return float32 copies: per-image sums overflow float16 under AMP."""
    if logits.shape != target.shape or logits.ndim != 4:
        raise ValueError(
            f"Loss needs logits and target of the same (N, 1, H, W) shape, got "
            f"{tuple(logits.shape)} and {tuple(target.shape)}."
        )
    return logits.float(), target.float()


REGION_REDUCTIONS = ("image", "batch")


def _region_sum(x: torch.Tensor, region: str = "image") -> torch.Tensor:
    """Sums for an overlap ratio: per image (N,) or over the whole batch (1,).

    Per image, a crop without lesion has intersection 0 whatever it predicts, so its IoU or
    Dice term is constant and a false-positive blob there costs nothing; over the batch the
    blob enlarges the union the lesions of the other crops are measured against.
    """
    if region not in REGION_REDUCTIONS:
        raise ValueError(f"region must be one of {', '.join(REGION_REDUCTIONS)}, got {region!r}")
    return x.flatten(1).sum(dim=1) if region == "image" else x.sum().reshape(1)


def iou_loss(logits: torch.Tensor, target: torch.Tensor, region: str = "image") -> torch.Tensor:
    """Soft IoU loss 1 - sum(pg) / sum(p + g - pg), per image averaged over the batch
    (``region="image"``, PFNet) or over the batch as one region (``"batch"``)."""
    logits, target = _check_pair(logits, target)
    p = torch.sigmoid(logits)
    inter = _region_sum(p * target, region)
    union = _region_sum(p + target, region) - inter
    return (1 - inter / (union + EPS)).mean()


def hardest_mean(
    loss: torch.Tensor, fraction: float, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Per image: the (weighted) mean of the pixel losses over the ``fraction`` of pixels with
    the largest (weighted) loss; 1.0 is the plain (weighted) mean (online hard example mining).

    On a crop without lesion a confident false-positive blob of a few dozen pixels is lost in
    the mean over all pixels; among the hardest few percent it carries the loss.
    """
    flat = loss.flatten(1)
    w = torch.ones_like(flat) if weights is None else weights.flatten(1)
    if fraction >= 1.0:
        return (w * flat).sum(1) / w.sum(1)
    k = max(1, int(round(fraction * flat.shape[1])))
    top, idx = torch.topk(w * flat, k, dim=1)
    return top.sum(1) / torch.gather(w, 1, idx).sum(1)


def bce_iou_loss(
    logits: torch.Tensor, target: torch.Tensor, hard_fraction: float = 1.0, region: str = "image"
) -> torch.Tensor:
    """BCE + soft IoU, PFNet's loss on the coarse (GLM) map (BCE over the hardest
    ``hard_fraction`` of pixels, see :func:`hardest_mean`; IoU per ``region``)."""
    logits, target = _check_pair(logits, target)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return hardest_mean(bce, hard_fraction).mean() + iou_loss(logits, target, region)


def structure_weights(target: torch.Tensor) -> torch.Tensor:
    """F3Net pixel weights 1 + 5|avgpool31(g) - g|: large near boundaries and on small objects."""
    # The 31x31 box mean as two 31-tap passes (exact: zero padding counts in both): 15x fewer
    # operations than one 2-D pool, which dominated a CPU training step's loss.
    half = EDGE_WINDOW // 2
    local_mean = F.avg_pool2d(target, (EDGE_WINDOW, 1), stride=1, padding=(half, 0))
    local_mean = F.avg_pool2d(local_mean, (1, EDGE_WINDOW), stride=1, padding=(0, half))
    return 1 + EDGE_GAIN * (local_mean - target).abs()


def structure_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weighted_bce: bool = True,
    weights: torch.Tensor | None = None,
    hard_fraction: float = 1.0,
    region: str = "image",
) -> torch.Tensor:
    """Weighted BCE + weighted IoU (F3Net), per image, averaged over the batch (the IoU over the
    whole batch with ``region="batch"``, see :func:`_region_sum`).

    weighted_bce=False reproduces the reference code, whose legacy `reduce='none'` call made
    the BCE a plain mean, so only the IoU term was weighted. weights: structure_weights(target)
    when already computed (the 31x31 pooling is the costly part on CPU). hard_fraction: the
    BCE covers only the hardest pixels (:func:`hardest_mean`); 1.0 is the paper's loss.
    """
    logits, target = _check_pair(logits, target)
    w = structure_weights(target) if weights is None else weights
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    wbce = hardest_mean(bce, hard_fraction, w if weighted_bce else None)
    p = torch.sigmoid(logits)
    inter = _region_sum(w * p * target, region)
    union = _region_sum(w * (p + target), region) - inter
    wiou = 1 - inter / (union + EPS)
    return wbce.mean() + wiou.mean()


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0, region: str = "image"
) -> torch.Tensor:
    """Soft Dice loss per image (or over the batch, ``region="batch"``): an overlap ratio, so a
    tiny lesion does not drown in background."""
    logits, target = _check_pair(logits, target)
    p = torch.sigmoid(logits)
    inter = _region_sum(p * target, region)
    total = _region_sum(p, region) + _region_sum(target, region)
    return (1 - (2 * inter + smooth) / (total + smooth)).mean()


def default_stage_weights(n_stages: int) -> tuple[float, ...]:
    """PFNet's 1, 2, 4 on the three finest LFM maps; any coarser extra stage gets 1 (as the
    authors' U-Net variant weighted 1, 1, 1, 2, 4)."""
    finest = (1.0, 2.0, 4.0)
    if n_stages <= len(finest):
        return finest[len(finest) - n_stages :]
    return (1.0,) * (n_stages - len(finest)) + finest


@dataclass(frozen=True)
class LossConfig:
    """Deep-supervision loss settings.

    coarse_weight: weight of BCE + IoU on the GLM map. stage_weights: weights of the structure
    loss on the LFM maps, coarse to fine (None: default_stage_weights). weighted_bce: apply the
    structure-loss pixel weights to the BCE (False reproduces the reference code).
    dice_weight: weight of an extra soft-Dice term on the final map (0 turns it off).
    hard_pixel_fraction: the BCE terms average only this share of each crop's pixels, those
    with the largest loss (online hard example mining; 1.0, the paper's loss, averages all).
    region: the IoU and Dice terms per "image" (PFNet; a crop without lesion adds a constant)
    or over the "batch" as one region, so false positives on lesion-free crops are penalised.
    """

    coarse_weight: float = 1.0
    stage_weights: tuple[float, ...] | None = None
    weighted_bce: bool = True
    dice_weight: float = 0.0
    hard_pixel_fraction: float = 1.0
    region: str = "image"

    def __post_init__(self) -> None:
        if self.region not in REGION_REDUCTIONS:
            raise ValueError(
                f"LossConfig.region must be one of {', '.join(REGION_REDUCTIONS)}, "
                f"got {self.region!r}."
            )
        f = self.hard_pixel_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
            raise ValueError(f"LossConfig.hard_pixel_fraction must be in (0, 1], got {f!r}.")
        for name in ("coarse_weight", "dice_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"LossConfig.{name} must be a number >= 0, got {value!r}.")
        if self.stage_weights is not None:
            weights = tuple(self.stage_weights)
            if any(
                isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 for v in weights
            ):
                raise ValueError(
                    f"LossConfig.stage_weights must be numbers >= 0, got {self.stage_weights!r}."
                )
            object.__setattr__(self, "stage_weights", tuple(float(v) for v in weights))


class DeepSupervisionLoss(nn.Module):
    """Total loss of a SegOutput: BCE+IoU on coarse, weighted structure loss on each LFM stage."""

    def __init__(self, config: LossConfig | None = None) -> None:
        super().__init__()
        self.config = config or LossConfig()

    def terms(self, output: SegOutput, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each weighted term by name ("coarse", "stage1".., "dice"), for logging."""
        config = self.config
        target = target.float()
        weights = config.stage_weights or default_stage_weights(len(output.stages))
        if len(weights) != len(output.stages):
            raise ValueError(
                f"LossConfig.stage_weights has {len(weights)} entries but the model produced "
                f"{len(output.stages)} stage maps."
            )
        hard, region = config.hard_pixel_fraction, config.region
        terms = {"coarse": config.coarse_weight * bce_iou_loss(output.coarse, target, hard, region)}
        pixel_weights = structure_weights(target) if output.stages else None
        for i, (weight, logits) in enumerate(zip(weights, output.stages, strict=True), start=1):
            terms[f"stage{i}"] = weight * structure_loss(
                logits, target, config.weighted_bce, pixel_weights, hard, region
            )
        if config.dice_weight > 0:
            terms["dice"] = config.dice_weight * soft_dice_loss(output.final, target, region=region)
        return terms

    def forward(self, output: SegOutput, target: torch.Tensor) -> torch.Tensor:
        return sum(self.terms(output, target).values())
