"""Masked autoencoder (He et al., CVPR 2022) for 1-channel CT slices and its SSL residual maps.

Re-implemented from the paper (the reference code is non-commercial). The residual map is the
GRCSF RCU input: |reconstruction - input| where every patch is reconstructed while masked.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from napari_nstseg._config import known_keys_only


@dataclass
class MAEConfig:
    """Size of a ViT masked autoencoder; defaults are small enough to train and run on a CPU.

    img_size: training slice side; any size works at inference (position codes are built for
    the actual patch grid). mask_ratio: fraction of patches removed in training.
    norm_pix_loss: predict per-patch standardised pixels (keep False for residual maps).
    """

    img_size: int = 256
    patch_size: int = 16
    in_chans: int = 1
    embed_dim: int = 192
    depth: int = 6
    heads: int = 3
    decoder_embed_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    mlp_ratio: float = 4.0
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False

    def __post_init__(self) -> None:
        for name, dim, heads in (
            ("embed_dim", self.embed_dim, self.heads),
            ("decoder_embed_dim", self.decoder_embed_dim, self.decoder_heads),
        ):
            # Half of the sin-cos embedding encodes rows, half columns, each as sin and cos.
            if dim % 4:
                raise ValueError(f"MAEConfig.{name} must be divisible by 4, got {dim}")
            if dim % heads:
                raise ValueError(f"MAEConfig.{name}={dim} is not divisible by {heads} heads")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"MAEConfig.mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.patch_size < 1 or self.img_size < self.patch_size:
            raise ValueError("MAEConfig needs 1 <= patch_size <= img_size")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MAEConfig:
        return cls(**known_keys_only(cls, d))


def sincos_pos_embed_2d(
    dim: int,
    grid_h: int,
    grid_w: int,
    *,
    span_h: float | None = None,
    span_w: float | None = None,
) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding, (grid_h * grid_w, dim), rows first.

    Positions are patch indices; with ``span_h``/``span_w`` a finer or coarser grid is placed on
    a grid of that many patches instead, so two grids covering the same image get comparable
    codes (cell centres line up).
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs dim divisible by 4, got {dim}")

    def centres(n: int, span: float | None) -> torch.Tensor:
        idx = torch.arange(n, dtype=torch.float64)
        if span is None:
            return idx
        return (idx + 0.5) * (span / n) - 0.5

    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter)

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos[:, None] * omega[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    rows = encode(centres(grid_h, span_h))  # (gh, dim/2)
    cols = encode(centres(grid_w, span_w))  # (gw, dim/2)
    emb = torch.cat(
        [
            rows[:, None, :].expand(grid_h, grid_w, dim // 2),
            cols[None, :, :].expand(grid_h, grid_w, dim // 2),
        ],
        dim=2,
    )
    return emb.reshape(grid_h * grid_w, dim).float()


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, L, p*p*C), patches in row-major order, pixels as (row, col, chan)."""
    n, c, h, w = imgs.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
    gh, gw = h // p, w // p
    x = imgs.reshape(n, c, gh, p, gw, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(n, gh * gw, p * p * c)


def unpatchify(
    patches: torch.Tensor, patch_size: int, grid: tuple[int, int] | None = None
) -> torch.Tensor:
    """Exact inverse of :func:`patchify`; ``grid`` = (rows, cols) of patches, square if None."""
    n, length, dim = patches.shape
    p = patch_size
    if grid is None:
        side = math.isqrt(length)
        if side * side != length:
            raise ValueError(f"{length} patches are not a square grid; pass grid=(rows, cols)")
        grid = (side, side)
    gh, gw = grid
    if gh * gw != length or dim % (p * p):
        raise ValueError(f"cannot unpatchify {tuple(patches.shape)} into a {gh}x{gw} grid of {p}")
    c = dim // (p * p)
    x = patches.reshape(n, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(n, c, gh * p, gw * p)


def mask_tokens(
    x: torch.Tensor, ids_shuffle: torch.Tensor, len_keep: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the first ``len_keep`` tokens of each sample's shuffle order.

    Returns the kept tokens (N, len_keep, D), the binary mask in the original order
    (N, L; 1 = removed) and ``ids_restore`` that puts a shuffled sequence back in order.
    """
    n, length, dim = x.shape
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    kept = torch.gather(x, 1, ids_keep[:, :, None].expand(n, len_keep, dim))
    mask = torch.ones(n, length, device=x.device, dtype=x.dtype)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return kept, mask, ids_restore


def random_masking(
    x: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking by argsort of uniform noise (MAE sec. 3)."""
    n, length, _ = x.shape
    len_keep = int(length * (1 - mask_ratio))
    noise = torch.rand(n, length, device=x.device, generator=generator)
    return mask_tokens(x, torch.argsort(noise, dim=1), len_keep)


def complementary_shuffles(
    n: int,
    length: int,
    k: int,
    device: torch.device | None = None,
    generator: torch.Generator | None = None,
) -> list[tuple[torch.Tensor, int]]:
    """k complementary masks as (ids_shuffle (N, L), len_keep) pairs for :func:`mask_tokens`.

    Each sample's patches are randomly permuted and the permutation cut into k groups; pass g
    keeps everything but group g, which sits at the end (``ids_shuffle[:, len_keep:]``). Group
    sizes depend only on L and k, so every sample in a batch keeps the same count.
    """
    k = max(1, min(k, length))
    noise = torch.rand(n, length, generator=generator).to(device)
    perm = torch.argsort(noise, dim=1)
    bounds = [round(g * length / k) for g in range(k + 1)]
    passes = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        ids_shuffle = torch.cat([perm[:, :start], perm[:, end:], perm[:, start:end]], dim=1)
        passes.append((ids_shuffle, length - (end - start)))
    return passes


def mae_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = False
) -> torch.Tensor:
    """Mean squared error over the masked patches only; pred/target (N, L, D), mask (N, L)."""
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6).sqrt()
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


class Attention(nn.Module):
    """Multi-head self-attention (ViT) on torch's fused scaled_dot_product_attention."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class Block(nn.Module):
    """Pre-norm transformer block (ViT): attention and MLP, each with a residual connection."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1.0e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1.0e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MaskedAutoencoder(nn.Module):
    """ViT masked autoencoder (MAE): asymmetric encoder on visible patches, light decoder."""

    def __init__(self, config: MAEConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or MAEConfig()
        p = cfg.patch_size
        self.patch_embed = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=p, stride=p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1.0e-6)

        self.decoder_embed = nn.Linear(cfg.embed_dim, cfg.decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_embed_dim))
        self.decoder_blocks = nn.ModuleList(
            Block(cfg.decoder_embed_dim, cfg.decoder_heads, cfg.mlp_ratio)
            for _ in range(cfg.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(cfg.decoder_embed_dim, eps=1.0e-6)
        self.decoder_pred = nn.Linear(cfg.decoder_embed_dim, p * p * cfg.in_chans)
        self._pos_cache: dict[tuple, torch.Tensor] = {}
        self._init_weights()

    def _init_weights(self) -> None:
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # -- geometry --------------------------------------------------------------------------
    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Replicate-pad H and W up to multiples of the patch size (edge patches stay natural)."""
        p = self.config.patch_size
        h, w = x.shape[-2:]
        ph, pw = (-h) % p, (-w) % p
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        return x

    def pos_embed(self, dim: int, grid: tuple[int, int], ref: torch.Tensor) -> torch.Tensor:
        """Fixed sin-cos embedding for this grid, (1, L, dim); built once per grid size."""
        key = (dim, grid, ref.device, ref.dtype)
        if key not in self._pos_cache:
            emb = sincos_pos_embed_2d(dim, *grid)
            self._pos_cache[key] = emb.to(device=ref.device, dtype=ref.dtype)[None]
        return self._pos_cache[key]

    # -- network ---------------------------------------------------------------------------
    def embed(self, imgs: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch tokens with position embedding, (N, L, D), and the patch grid size."""
        tokens = self.patch_embed(imgs)
        grid = (tokens.shape[2], tokens.shape[3])
        tokens = tokens.flatten(2).transpose(1, 2)
        return tokens + self.pos_embed(self.config.embed_dim, grid, tokens), grid

    def encode_kept(self, kept: torch.Tensor) -> torch.Tensor:
        """Prepend CLS (zero position code) and run the encoder on the visible tokens."""
        cls = self.cls_token.expand(kept.shape[0], -1, -1)
        x = torch.cat([cls, kept], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def decode(
        self, latent: torch.Tensor, ids_restore: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        """Fill the removed positions with the mask token and predict every patch's pixels."""
        x = self.decoder_embed(latent)
        n, length = ids_restore.shape
        dim = x.shape[-1]
        fill = self.mask_token.expand(n, length + 1 - x.shape[1], dim)
        seq = torch.cat([x[:, 1:], fill], dim=1)
        seq = torch.gather(seq, 1, ids_restore[:, :, None].expand(n, length, dim))
        seq = seq + self.pos_embed(dim, grid, seq)
        x = torch.cat([x[:, :1], seq], dim=1)
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward(
        self, imgs: torch.Tensor, mask_ratio: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (loss on masked patches, predicted patches (N, L, p*p*C), mask (N, L)).

        Images of any size are padded to whole patches; pred and mask refer to that padded grid.
        """
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        imgs = self.pad(imgs)
        tokens, grid = self.embed(imgs)
        kept, mask, ids_restore = random_masking(tokens, ratio)
        pred = self.decode(self.encode_kept(kept), ids_restore, grid)
        target = patchify(imgs, self.config.patch_size)
        return mae_loss(pred, target, mask, self.config.norm_pix_loss), pred, mask

    def reconstruct(
        self, imgs: torch.Tensor, ids_shuffle: torch.Tensor, len_keep: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel-space reconstruction (N, C, H, W) of padded images and the patch mask (N, L)."""
        p = self.config.patch_size
        tokens, grid = self.embed(imgs)
        kept, mask, ids_restore = mask_tokens(tokens, ids_shuffle, len_keep)
        pred = self.decode(self.encode_kept(kept), ids_restore, grid)
        if self.config.norm_pix_loss:
            # Normalised predictions carry no patch mean/scale; borrow the input's so the
            # residual measures structure only (train with norm_pix_loss=False for true maps).
            target = patchify(imgs, p)
            mean = target.mean(dim=-1, keepdim=True)
            std = (target.var(dim=-1, keepdim=True) + 1.0e-6).sqrt()
            pred = pred * std + mean
        return unpatchify(pred, p, grid), mask

    @torch.no_grad()
    def residual_map(
        self,
        imgs: torch.Tensor,
        k: int = 4,
        generator: torch.Generator | None = None,
        shifts: int = 1,
    ) -> torch.Tensor:
        """SSL residual map (N, 1, H, W): mean |reconstruction - input| while each patch is masked.

        A random permutation of the patches is cut into k groups and group g is masked in pass
        g, so every patch is reconstructed (exactly once) from the others. With ``shifts`` > 1
        the patch grid is also laid at ``shifts - 1`` diagonal offsets (multiples of
        patch / shifts, the image padded with its lowest value, i.e. air) and the maps are
        averaged, so patch edges no longer show as a block pattern.
        """
        if k < 2:
            raise ValueError(f"residual_map needs k >= 2 complementary masks, got {k}")
        if shifts < 1:
            raise ValueError(f"residual_map needs shifts >= 1, got {shifts}")
        p = self.config.patch_size
        h, w = imgs.shape[-2:]
        total = None
        for j in range(shifts):
            o = round(j * p / shifts)
            x = F.pad(imgs, (o, 0, o, 0), value=float(imgs.amin())) if o else imgs
            r = self._residual_once(x, k, generator)[..., o : o + h, o : o + w]
            total = r if total is None else total + r
        return total / shifts

    def _residual_once(
        self, imgs: torch.Tensor, k: int, generator: torch.Generator | None
    ) -> torch.Tensor:
        h, w = imgs.shape[-2:]
        p = self.config.patch_size
        padded = self.pad(imgs)
        n = padded.shape[0]
        grid = (padded.shape[-2] // p, padded.shape[-1] // p)
        length = grid[0] * grid[1]
        total = torch.zeros(n, 1, *padded.shape[-2:], device=imgs.device, dtype=imgs.dtype)
        count = torch.zeros_like(total)
        for ids_shuffle, len_keep in complementary_shuffles(n, length, k, imgs.device, generator):
            recon, mask = self.reconstruct(padded, ids_shuffle, len_keep)
            err = (recon - padded).abs().mean(dim=1, keepdim=True)
            mask_px = mask.reshape(n, 1, *grid)
            mask_px = mask_px.repeat_interleave(p, dim=2).repeat_interleave(p, dim=3)
            total += err * mask_px
            count += mask_px
        return (total / count.clamp_min(1.0))[..., :h, :w]
