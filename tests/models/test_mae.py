"""Masked autoencoder: exact patch geometry, masking bookkeeping, loss, residual maps, learning."""

import time

import pytest
import torch

from model_helpers import tiny_mae_config
from napari_nstseg.models.mae import (
    MAEConfig,
    MaskedAutoencoder,
    complementary_shuffles,
    mae_loss,
    patchify,
    random_masking,
    sincos_pos_embed_2d,
    unpatchify,
)


def tiny_config(**overrides) -> MAEConfig:
    """The shared tiny MAE on 64 px slices with 32-wide embeddings, enough to learn faint discs."""
    wider = {"img_size": 64, "embed_dim": 32, "decoder_embed_dim": 32}
    return tiny_mae_config(**{**wider, **overrides})


@pytest.mark.parametrize("shape,p", [((2, 1, 64, 64), 8), ((1, 3, 32, 48), 16), ((3, 2, 6, 9), 3)])
def test_unpatchify_inverts_patchify_exactly(shape, p):
    x = torch.randn(shape)
    patches = patchify(x, p)
    grid = (shape[2] // p, shape[3] // p)
    assert patches.shape == (shape[0], grid[0] * grid[1], p * p * shape[1])
    assert torch.equal(unpatchify(patches, p, grid), x)


def test_patchify_puts_each_patch_in_row_major_order():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    patches = patchify(x, 2)
    # Patch 1 is the top-right 2x2 block, its pixels listed row by row.
    assert patches[0, 1].tolist() == [2.0, 3.0, 6.0, 7.0]


def test_patchify_rejects_sizes_that_are_not_whole_patches():
    with pytest.raises(ValueError, match="multiple of the patch size"):
        patchify(torch.zeros(1, 1, 10, 16), 8)


def test_random_masking_keeps_the_right_count_and_restores_order():
    torch.manual_seed(0)
    n, length, dim, ratio = 3, 50, 5, 0.75
    x = torch.randn(n, length, dim)
    kept, mask, ids_restore = random_masking(x, ratio)
    len_keep = int(length * (1 - ratio))
    assert kept.shape == (n, len_keep, dim)
    assert torch.all(mask.sum(dim=1) == length - len_keep)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    # Kept tokens followed by the removed ones, un-shuffled with ids_restore, is x again.
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    removed = torch.gather(x, 1, ids_shuffle[:, len_keep:, None].expand(-1, -1, dim))
    full = torch.cat([kept, removed], dim=1)
    restored = torch.gather(full, 1, ids_restore[:, :, None].expand(-1, -1, dim))
    assert torch.equal(restored, x)
    # The mask marks exactly the tokens that are not among the kept ones.
    for b in range(n):
        kept_rows = {tuple(r.tolist()) for r in kept[b]}
        for i in range(length):
            assert (tuple(x[b, i].tolist()) in kept_rows) == (mask[b, i] == 0)


@pytest.mark.parametrize("length,k", [(64, 4), (35, 4), (10, 3), (5, 8)])
def test_complementary_masks_cover_every_patch_exactly_once(length, k):
    passes = complementary_shuffles(2, length, k, generator=torch.Generator().manual_seed(1))
    assert len(passes) == min(k, length)
    for b in range(2):
        for ids_shuffle, _ in passes:
            assert torch.equal(ids_shuffle[b].sort().values, torch.arange(length))
        masked = torch.cat([ids[b, keep:] for ids, keep in passes])
        assert torch.equal(masked.sort().values, torch.arange(length))


def test_sincos_position_embedding_is_fixed_and_distinct():
    emb = sincos_pos_embed_2d(16, 3, 5)
    assert emb.shape == (15, 16)
    assert torch.equal(emb, sincos_pos_embed_2d(16, 3, 5))
    assert torch.cdist(emb, emb).add(torch.eye(15)).min() > 0.1
    model = MaskedAutoencoder(tiny_config())
    # Fixed, so not a parameter and not in the checkpoint.
    assert not any("pos" in name for name, _ in model.named_parameters())
    assert not any("pos" in name for name in model.state_dict())


def test_loss_counts_only_masked_patches():
    torch.manual_seed(0)
    pred = torch.randn(2, 10, 12)
    target = torch.randn(2, 10, 12)
    mask = torch.zeros(2, 10)
    mask[:, :4] = 1
    loss = mae_loss(pred, target, mask)
    perturbed = pred.clone()
    perturbed[:, 7] += 100.0  # a visible patch
    assert torch.equal(mae_loss(perturbed, target, mask), loss)
    expected = ((pred[:, :4] - target[:, :4]) ** 2).mean()
    assert torch.allclose(loss, expected)
    perturbed[:, 2] += 1.0  # a masked patch
    assert mae_loss(perturbed, target, mask) > loss


def test_forward_shapes_and_mask_ratio_on_padded_grid():
    model = MaskedAutoencoder(tiny_config())
    loss, pred, mask = model(torch.randn(2, 1, 30, 41), mask_ratio=0.5)
    grid = (4, 6)  # 30x41 padded to 32x48 with 8-pixel patches
    assert pred.shape == (2, grid[0] * grid[1], 64)
    assert mask.shape == (2, 24)
    assert torch.all(mask.sum(dim=1) == 24 - 12)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.patch_embed.weight.grad is not None


@pytest.mark.parametrize("size", [(64, 64), (37, 53), (9, 70)])
def test_residual_map_has_input_shape_and_is_nonnegative(size):
    torch.manual_seed(0)
    model = MaskedAutoencoder(tiny_config()).eval()
    x = torch.randn(2, 1, *size)
    res = model.residual_map(x, k=4)
    assert res.shape == (2, 1, *size)
    assert torch.isfinite(res).all() and (res >= 0).all()


def test_residual_map_is_the_reconstruction_error_of_each_masked_patch():
    torch.manual_seed(0)
    model = MaskedAutoencoder(tiny_config()).eval()
    x = torch.randn(1, 1, 32, 32)
    gen_seed = 3
    res = model.residual_map(x, k=4, generator=torch.Generator().manual_seed(gen_seed))
    # Redo the same passes by hand: each patch's residual comes from the pass masking it.
    passes = complementary_shuffles(1, 16, 4, generator=torch.Generator().manual_seed(gen_seed))
    expected = torch.zeros_like(res)
    for ids_shuffle, len_keep in passes:
        with torch.no_grad():
            recon, mask = model.reconstruct(x, ids_shuffle, len_keep)
        err = (recon - x).abs()
        for i in ids_shuffle[0, len_keep:].tolist():
            r, c = divmod(i, 4)
            assert mask[0, i] == 1
            rows, cols = slice(r * 8, r * 8 + 8), slice(c * 8, c * 8 + 8)
            expected[..., rows, cols] = err[..., rows, cols]
    assert torch.allclose(res, expected, atol=1e-6)


def test_residual_map_needs_at_least_two_masks():
    model = MaskedAutoencoder(tiny_config())
    with pytest.raises(ValueError, match="k >= 2"):
        model.residual_map(torch.zeros(1, 1, 16, 16), k=1)


def test_config_round_trips_and_rejects_bad_sizes():
    cfg = tiny_config(mask_ratio=0.5)
    assert MAEConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="divisible by 4"):
        MAEConfig(embed_dim=30, heads=3)
    with pytest.raises(ValueError, match="MAEConfig got unknown key.*'embed_dims'"):
        MAEConfig.from_dict({"embed_dims": 32})


def faint_discs(n: int, gen: torch.Generator) -> torch.Tensor:
    """Noisy 64x64 slices with a smooth background and one or two faint discs."""
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    imgs = 0.05 * torch.randn(n, 1, 64, 64, generator=gen)
    for i in range(n):
        tilt = torch.rand(2, generator=gen) - 0.5
        imgs[i, 0] += 0.5 + tilt[0] * (yy - 32) / 64 + tilt[1] * (xx - 32) / 64
        for _ in range(int(torch.randint(1, 3, (1,), generator=gen))):
            cy, cx = (torch.rand(2, generator=gen) * 40 + 12).tolist()
            radius = float(torch.rand(1, generator=gen) * 6 + 4)
            imgs[i, 0] += 0.2 * (((yy - cy) ** 2 + (xx - cx) ** 2) < radius**2).float()
    return imgs


def test_training_on_faint_discs_drives_the_loss_down():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = MaskedAutoencoder(tiny_config())
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.05)
    losses = []
    start = time.perf_counter()
    for _ in range(300):
        loss, _, _ = model(faint_discs(8, gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    elapsed = time.perf_counter() - start
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.2 * first, (first, last)
    # Better than painting each image's own mean: the model uses the visible context.
    held_out = faint_discs(32, torch.Generator().manual_seed(99))
    flat_guess = ((held_out - held_out.mean(dim=(1, 2, 3), keepdim=True)) ** 2).mean()
    with torch.no_grad():
        held_out_loss = torch.stack([model(held_out)[0] for _ in range(4)]).mean()
    assert held_out_loss < 0.7 * flat_guess, (held_out_loss, flat_guess)
    print(f"300 tiny-MAE steps took {elapsed:.1f} s")  # budget 30 s; speed is not asserted
