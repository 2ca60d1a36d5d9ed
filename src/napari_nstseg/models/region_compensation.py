"""Region compensation: SSL residual maps fused into network features (GRCSF's RCU)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from napari_nstseg.models.mae import patchify, sincos_pos_embed_2d


class RegionCompensation(nn.Module):
    """GRCSF Region Compensation Unit: patch cross-attention to the residual, importance-gated.

    Queries are the feature pixels, keys/values the residual map's patch tokens. The residual is
    resized so its patch grid matches the feature grid, capped at ``max_grid`` patches a side so
    the attention stays affordable on fine feature maps. Both sides carry sin-cos position codes
    laid on the same image extent, so a feature pixel can find the patches it lies in.
    """

    def __init__(
        self, channels: int, patch_size: int = 16, heads: int = 4, max_grid: int = 32
    ) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"RegionCompensation: {channels} channels not divisible by {heads}")
        if channels % 4:
            raise ValueError(f"RegionCompensation needs channels divisible by 4, got {channels}")
        self.channels = channels
        self.patch_size = patch_size
        self.heads = heads
        self.max_grid = max_grid
        self.patch_embed = nn.Linear(patch_size * patch_size, channels)
        self.query_norm = nn.LayerNorm(channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.proj = nn.Linear(channels, channels)
        # Importance of a residual patch given its content and the backbone's global context.
        self.importance_mlp = nn.Sequential(
            nn.Linear(2 * channels, channels), nn.GELU(), nn.Linear(channels, 1)
        )
        self.scale = nn.Parameter(torch.ones(1))

    def _grid(self, h: int, w: int) -> tuple[int, int]:
        return min(h, self.max_grid), min(w, self.max_grid)

    def residual_tokens(self, residual: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Residual patch tokens (N, gh*gw, C) with position codes for a gh x gw patch grid."""
        p = self.patch_size
        size = (grid[0] * p, grid[1] * p)
        if residual.shape[-2:] != size:
            # Area averaging when shrinking keeps the total residual of each patch.
            shrink = residual.shape[-2] >= size[0] and residual.shape[-1] >= size[1]
            if shrink:
                residual = F.interpolate(residual, size=size, mode="area")
            else:
                residual = F.interpolate(residual, size=size, mode="bilinear", align_corners=False)
        tokens = self.patch_embed(patchify(residual, p))
        pos = sincos_pos_embed_2d(self.channels, *grid).to(tokens)
        return tokens + pos[None]

    def _importance(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        context = features.mean(dim=(2, 3))[:, None, :].expand_as(tokens)
        return torch.sigmoid(self.importance_mlp(torch.cat([tokens, context], dim=-1)))

    def patch_importance(self, features: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """The sigmoid importance of each residual patch, (N, 1, gh, gw), for display/analysis."""
        grid = self._grid(*features.shape[-2:])
        score = self._importance(features, self.residual_tokens(residual, grid))
        return score.transpose(1, 2).reshape(features.shape[0], 1, *grid)

    def forward(self, features: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        n, c, h, w = features.shape
        if c != self.channels:
            raise ValueError(f"RegionCompensation expects {self.channels} channels, got {c}")
        if residual.shape[0] != n or residual.shape[1] != 1:
            raise ValueError(f"residual map must be (N={n}, 1, H, W), got {tuple(residual.shape)}")
        residual = residual.to(features.dtype)
        grid = self._grid(h, w)
        tokens = self.residual_tokens(residual, grid)
        gate = self._importance(features, tokens)  # (N, T, 1) in (0, 1)

        pix = features.flatten(2).transpose(1, 2)  # (N, h*w, C)
        # Feature pixels placed on the residual's patch grid, so both share one coordinate frame.
        q_pos = sincos_pos_embed_2d(c, h, w, span_h=grid[0], span_w=grid[1]).to(pix)
        q = self.to_q(self.query_norm(pix) + q_pos[None])
        k = self.to_k(tokens)
        v = self.to_v(tokens) * gate

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(n, t.shape[1], self.heads, c // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))
        out = self.proj(out.transpose(1, 2).reshape(n, h * w, c))
        return features + self.scale * out.transpose(1, 2).reshape(n, c, h, w)
