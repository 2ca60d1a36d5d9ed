"""CDI-NSTSEG (Ju et al., JBHI 2024): shared multi-scale U-Net encoder, CCM + SFM, GLM, LFMs."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import CBR, resize
from .config import ModelConfig
from .encoder import NUM_LEVELS, UNetEncoder
from .glm import GlobalLocalization, PlainLocalization
from .lfm import LayeredFocusing
from .outputs import SegOutput, check_input, pad_to_multiple, to_input_size
from .sfm import ChannelCompression, ScaleFusion

# Level 1 (stride 1) is never scale-fused: the reference discards it, and a 5x5 conv on the
# 1.5x copy at full resolution would cost more than the rest of the network.
LOWEST_FUSED_LEVEL = 2


def _scaled(size: tuple[int, int], scale: float) -> tuple[int, int]:
    return (round(size[0] * scale), round(size[1] * scale))


def _expanded_width(base_width: int, level: int) -> int:
    """Decoder width per level: 8b at level 5 halving down to b at level 2 and b/2 at level 1."""
    return base_width * 2**level // 4


def _region_compensation(channels: int) -> nn.Module:
    try:
        from .region_compensation import RegionCompensation
    except ImportError as error:
        raise ImportError(
            "ModelConfig.ssl_guidance needs napari_nstseg.models.region_compensation, which "
            f"could not be imported ({error})."
        ) from error
    return RegionCompensation(channels)


class CDINSTSeg(nn.Module):
    """CDI-NSTSEG: 0.5x/1.0x/1.5x through one encoder, fused per level, GLM then LFMs top-down."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.arch != "cdi_nstseg":
            raise ValueError(f"CDINSTSeg needs arch='cdi_nstseg', got {config.arch!r}.")
        self.config = config
        b, norm, fused = config.base_width, config.norm, config.fused_channels
        self.multi_scale = len(config.scales) > 1
        self.encoder = UNetEncoder(config.in_channels, b, norm)

        lowest_fused = max(LOWEST_FUSED_LEVEL, NUM_LEVELS - config.lfm_stages)
        self.fused_levels = tuple(range(NUM_LEVELS, lowest_fused - 1, -1))
        self.lfm_levels = tuple(range(NUM_LEVELS - 1, NUM_LEVELS - 1 - config.lfm_stages, -1))

        self.ccm = ChannelCompression(
            {level: self.encoder.widths[level - 1] for level in self.fused_levels}, fused, norm
        )
        self.sfm = nn.ModuleDict(
            {
                str(level): ScaleFusion(config.scales, fused, config.scale_fusion, norm)
                for level in self.fused_levels
            }
            if self.multi_scale
            else {}
        )
        self.region_compensation = _region_compensation(fused) if config.ssl_guidance else None
        self.expand = nn.ModuleDict(
            {
                str(level): CBR(fused, _expanded_width(b, level), 3, norm=norm)
                for level in self.fused_levels
            }
        )
        if 1 in self.lfm_levels:
            self.level1_reduce = CBR(b, _expanded_width(b, 1), 3, norm=norm)
        deepest = _expanded_width(b, NUM_LEVELS)
        self.localization = (
            GlobalLocalization(deepest) if config.glm == "nonlocal" else PlainLocalization(deepest)
        )
        self.lfms = nn.ModuleList(
            LayeredFocusing(
                _expanded_width(b, level), _expanded_width(b, level + 1), config.lfm_paths, norm
            )
            for level in self.lfm_levels
        )
        # The stride-1 LFM takes level-1 features from the copy nearest 1.0x (larger on ties).
        self._level1_branch = min(
            range(len(config.scales)), key=lambda i: (abs(config.scales[i] - 1.0), -i)
        )

    def forward(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None = None,
        return_scale_weights: bool = False,
    ) -> SegOutput:
        """x: (N, in_channels, H, W) float; residual: (N, 1, H, W) SSL map when ssl_guidance."""
        config = self.config
        check_input(x, config.in_channels)
        self._check_residual(x, residual)
        size = tuple(x.shape[-2:])
        x = pad_to_multiple(x, config.pad_multiple)
        padded = tuple(x.shape[-2:])
        if residual is not None:
            residual = pad_to_multiple(residual.to(x.dtype), config.pad_multiple)
        per_scale = [self.encoder(resize(x, _scaled(padded, s))) for s in config.scales]
        grid = padded if self.multi_scale else _scaled(padded, config.scales[0])

        fused: dict[int, torch.Tensor] = {}
        scale_weights: list[torch.Tensor] | None = [] if return_scale_weights else None
        for level in self.fused_levels:
            level_size = (grid[0] >> (level - 1), grid[1] >> (level - 1))
            compressed = [self.ccm(level, encoded[level - 1]) for encoded in per_scale]
            if self.multi_scale:
                level_features, weights = self.sfm[str(level)](compressed, level_size)
            else:
                level_features, weights = compressed[0], None
            if scale_weights is not None:
                scale_weights.append(self._weights_at_input(weights, x, padded, size))
            if level == NUM_LEVELS and self.region_compensation is not None:
                level_features = self.region_compensation(level_features, residual)
            fused[level] = self.expand[str(level)](level_features)

        higher, coarse = self.localization(fused[NUM_LEVELS])
        logits, stages = coarse, []
        for level, lfm in zip(self.lfm_levels, self.lfms, strict=True):
            current = fused[level] if level > 1 else self._level1_features(per_scale, grid)
            higher, logits = lfm(current, higher, logits)
            stages.append(to_input_size(logits, padded, size))
        coarse = to_input_size(coarse, padded, size)
        return SegOutput(
            coarse=coarse,
            stages=stages,
            final=stages[-1] if stages else coarse,
            scale_weights=scale_weights,
        )

    def _check_residual(self, x: torch.Tensor, residual: torch.Tensor | None) -> None:
        if not self.config.ssl_guidance:
            if residual is not None:
                raise ValueError(
                    "A residual map was given but this model was built without ssl_guidance."
                )
            return
        if residual is None:
            raise ValueError(
                "This model was built with ssl_guidance; pass the MAE residual map as "
                "model(x, residual=r)."
            )
        check_input(residual, 1, "residual")
        if residual.shape[0] != x.shape[0] or residual.shape[-2:] != x.shape[-2:]:
            raise ValueError(
                f"The residual map must have shape ({x.shape[0]}, 1, {x.shape[2]}, "
                f"{x.shape[3]}) to match the input, got {tuple(residual.shape)}."
            )

    def _level1_features(
        self, per_scale: list[list[torch.Tensor]], grid: tuple[int, int]
    ) -> torch.Tensor:
        return self.level1_reduce(resize(per_scale[self._level1_branch][0], grid))

    def _weights_at_input(
        self,
        weights: torch.Tensor | None,
        x: torch.Tensor,
        padded: tuple[int, int],
        size: tuple[int, int],
    ) -> torch.Tensor:
        """SFM weights at input resolution; constant maps where nothing is learned."""
        if weights is not None:
            return to_input_size(weights, padded, size)
        n_scales = len(self.config.scales)
        return x.new_full((x.shape[0], n_scales, *size), 1.0 / n_scales)
