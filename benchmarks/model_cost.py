"""Parameter counts and multiply-accumulates per CT slice for CDI-NSTSEG, its ablations, the U-Net
baseline and the masked autoencoder; prints a markdown table.

MACs come from torch.utils.flop_counter.FlopCounterMode (MACs = FLOPs / 2), which counts
convolutions and matrix products (linear layers and every attention matmul); element-wise work,
normalisation, softmax, pooling and resizing are not counted. Models are built on the meta
device, so nothing is allocated or computed and the whole table takes seconds on a CPU.
Attention runs through the math SDPA backend so its two matmuls are visible to the counter.

    .venv/bin/python benchmarks/model_cost.py [--size 512] [--residual-passes 4]
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from napari_nstseg.models import build_model
from napari_nstseg.models.mae import MAEConfig, MaskedAutoencoder
from napari_nstseg.models.variants import list_variants, variant_config

CONV_OPS = ("convolution",)


@dataclasses.dataclass
class Cost:
    name: str
    params: int
    total: float  # MACs
    conv: float
    matmul: float


def count(name: str, model: nn.Module, run: Callable[[nn.Module], object]) -> Cost:
    """Count MACs of one forward pass of ``run(model)`` under no_grad."""
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        run(model)
    per_op = counter.get_flop_counts()["Global"]
    conv = sum(v for op, v in per_op.items() if str(op).split(".")[-1] in CONV_OPS)
    total = counter.get_total_flops()
    params = sum(p.numel() for p in model.parameters())
    return Cost(name, params, total / 2, conv / 2, (total - conv) / 2)


# ModelConfig switches that are no registry variant, costed beside them.
EXTRA_SWITCHES = [
    ("no LFM branches (lfm_paths='none')", {"lfm_paths": "none"}),
    ("LFM foreground only", {"lfm_paths": "foreground"}),
    ("LFM background only", {"lfm_paths": "background"}),
    ("4 LFM stages", {"lfm_stages": 4}),
]


def segmentation_rows(size: int) -> list[Cost]:
    variants = [(f"{v.title} ({v.name})", dict(v.changes)) for v in list_variants()]
    variants += EXTRA_SWITCHES
    rows = []
    for name, overrides in variants:
        config = variant_config(overrides=overrides)
        with torch.device("meta"):
            model = build_model(config)
        x = torch.zeros(1, config.in_channels, size, size, device="meta")
        kwargs = {"residual": torch.zeros(1, 1, size, size, device="meta")}
        if not config.ssl_guidance:
            kwargs = {}
        rows.append(count(name, model, lambda m, x=x, kw=kwargs: m(x, **kw)))
    return rows


def mae_rows(size: int, passes: int) -> list[Cost]:
    config = MAEConfig()
    with torch.device("meta"):
        model = MaskedAutoencoder(config)
    x = torch.zeros(1, config.in_chans, size, size, device="meta")
    desc = f"{config.embed_dim}d x {config.depth}, dec {config.decoder_embed_dim}d"
    desc += f" x {config.decoder_depth}, p={config.patch_size}"
    return [
        count(f"MAE training pass, mask {config.mask_ratio} ({desc})", model, lambda m: m(x)),
        count(
            f"MAE residual map, {passes} complementary passes",
            model,
            lambda m: m.residual_map(x, k=passes),
        ),
    ]


def table(rows: list[Cost], size: int) -> str:
    lines = [
        f"| Model ({size}x{size} slice, batch 1) | Params (M) | GMAC | conv GMAC | matmul GMAC |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.params / 1e6:.2f} | {r.total / 1e9:.1f} | {r.conv / 1e9:.1f} "
            f"| {r.matmul / 1e9:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512, help="slice side in pixels")
    parser.add_argument("--residual-passes", type=int, default=4, help="MAE residual masks k")
    args = parser.parse_args()
    rows = segmentation_rows(args.size) + mae_rows(args.size, args.residual_passes)
    print(table(rows, args.size))


if __name__ == "__main__":
    main()
