"""A short training run on a faint disc in noise must drive the loss down and find the disc."""

from __future__ import annotations

import pytest
import torch

from model_helpers import TINY_CDI
from napari_nstseg.models import DeepSupervisionLoss, ModelConfig, build_model

SIZE = 64


def faint_discs(generator: torch.Generator, n: int, contrast: float = 1.0):
    """Unit-variance noise with discs (radius 4-10 px) brighter by `contrast` std: low SNR."""
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    centres = torch.randint(12, SIZE - 12, (n, 2), generator=generator)
    radii = 4 + 6 * torch.rand(n, generator=generator)
    d2 = (yy - centres[:, 0, None, None]) ** 2 + (xx - centres[:, 1, None, None]) ** 2
    masks = (d2 <= radii[:, None, None] ** 2).float()[:, None]
    images = torch.randn(n, 1, SIZE, SIZE, generator=generator) + contrast * masks
    return images, masks


@pytest.mark.slow
@pytest.mark.parametrize(
    "config,steps",
    [
        (TINY_CDI, 150),
        (ModelConfig(arch="unet", base_width=8), 200),
    ],
    ids=["cdi_nstseg", "unet"],
)
def test_training_reduces_the_loss_and_segments_the_disc(config, steps):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = build_model(config).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    criterion = DeepSupervisionLoss()
    history = []
    for _ in range(steps):
        images, masks = faint_discs(generator, 4)
        loss = criterion(model(images), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    initial = sum(history[:10]) / 10
    final = sum(history[-20:]) / 20
    assert final < 0.6 * initial, f"loss went from {initial:.3f} to only {final:.3f}"

    model.eval()
    images, masks = faint_discs(generator, 16)
    with torch.no_grad():
        predicted = (model(images).final > 0).float()
    dice = 2 * (predicted * masks).sum() / (predicted.sum() + masks.sum())
    assert dice > 0.6, f"held-out Dice {dice:.3f}"
