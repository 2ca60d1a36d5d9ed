"""Masked-autoencoder pretraining on unlabeled CT slices for the SSL residual maps (MAE paper:
AdamW (0.9, 0.95), warm-up then cosine; the data set is mae_data.UnlabeledSlices), one process
or torchrun DDP."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from napari_nstseg.inference.device import autocast
from napari_nstseg.models.checkpoint import save_checkpoint
from napari_nstseg.models.mae import MaskedAutoencoder
from napari_nstseg.training.config import MAEPretrainConfig
from napari_nstseg.training.distributed import DistContext, distributed
from napari_nstseg.training.loop import Job, TrainResult, num_workers, prepare_out, run_epochs
from napari_nstseg.training.mae_data import UnlabeledSlices, find_sources
from napari_nstseg.training.optimizer import FOREACH, param_groups, warmup_cosine_lr
from napari_nstseg.training.run_log import dataset_info, git_commit


class _MAEValidation:
    """Masked-patch reconstruction loss on held-out slices, with fixed masks per slice."""

    def __init__(
        self, dataset: Dataset, model: nn.Module, ctx: DistContext, batch: int, seed: int, amp: bool
    ) -> None:
        self.model, self.ctx, self.seed, self.amp = model, ctx, seed, amp
        mine = list(range(ctx.rank, len(dataset), ctx.world))
        self.loader = DataLoader(Subset(dataset, mine), batch_size=batch, shuffle=False)

    @torch.no_grad()
    def __call__(self) -> dict[str, float]:
        ctx = self.ctx
        total = torch.zeros(2, dtype=torch.float64)
        # Same masks every epoch, so the numbers compare; the training RNG is left as it was.
        with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            for batch in self.loader:
                x = batch["image"].to(ctx.device)
                with autocast(ctx.device, self.amp):
                    loss, _, _ = self.model(x)
                total += torch.tensor([float(loss) * len(x), len(x)], dtype=torch.float64)
        total = ctx.all_sum(total.to(ctx.device)).cpu()
        return {"loss": float(total[0] / max(1.0, float(total[1])))}


def run_mae_pretraining(cfg: MAEPretrainConfig) -> TrainResult:
    """Pretrain the masked autoencoder as ``cfg`` says (one process or torchrun DDP)."""
    with distributed(cfg.device) as ctx:
        return _run_mae(cfg, ctx)


def _run_mae(cfg: MAEPretrainConfig, ctx: DistContext) -> TrainResult:
    if not cfg.data:
        raise ValueError("No data: pass --data (a folder of CT volumes or an MSD folder).")
    sources, val_sources = find_sources(cfg.data)
    volumes = [src.image for src in sources]
    val_volumes = [src.image for src in val_sources]
    out = prepare_out(cfg, ctx, "mae")
    device = ctx.device
    train_set = UnlabeledSlices(
        sources,
        cfg.preprocess,
        cfg.crop_size,
        seed=cfg.seed,
        exclude_margin_mm=cfg.exclude_margin_mm,
    )
    per_step = cfg.batch_size * ctx.world
    steps = cfg.steps_per_epoch or max(1, len(train_set.index) // per_step)
    train_set.samples_per_epoch = steps * per_step

    torch.manual_seed(cfg.seed)
    model: nn.Module = MaskedAutoencoder(cfg.mae).to(device)
    net: nn.Module = model
    if ctx.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95), foreach=FOREACH
    )

    def step(batch: dict[str, Any], global_step: int) -> dict[str, torch.Tensor]:
        x = batch["image"].to(device, non_blocking=True)
        with autocast(device, cfg.amp):
            loss, _, _ = net(x)
        return {"reconstruction": loss}

    if val_sources:
        val_set = UnlabeledSlices(
            val_sources,
            cfg.preprocess,
            cfg.crop_size,
            seed=cfg.seed,
            sequential=True,
            exclude_margin_mm=cfg.exclude_margin_mm,
        )
        validate = _MAEValidation(val_set, model, ctx, cfg.batch_size, cfg.seed, cfg.amp)
    else:
        validate = dict
    total = cfg.epochs * steps
    warmup = int(round(cfg.warmup_fraction * total))
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    commit = git_commit()

    def provenance() -> dict[str, Any]:
        return {
            "trained_by": "napari-nstseg pretrain-mae",
            "training_data": {
                **dataset_info(cfg.data, {"train": len(volumes), "val": len(val_volumes)}),
                "volumes": [str(p) for p in volumes],
            },
            "started": started,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "git": commit,
            "torch": torch.__version__,
            "budget": {
                "epochs": cfg.epochs,
                "steps_per_epoch": steps,
                "batch_size": cfg.batch_size,
                "global_batch": per_step,
                "samples": total * per_step,
                "crop_size": cfg.crop_size,
            },
            "seed": cfg.seed,
            "train_config": cfg.to_dict(),
        }

    def save_model(stem: Path, prov: dict[str, Any]) -> None:
        save_checkpoint(stem, model, cfg.mae.to_dict(), cfg.preprocess.to_dict(), prov, kind="mae")

    job = Job(
        name="pretrain-mae",
        cfg=cfg,
        ctx=ctx,
        out=out,
        model=net,
        optimizer=optimizer,
        train_set=train_set,
        num_workers=num_workers(cfg.num_workers, device),
        steps_per_epoch=steps,
        lr_at=lambda t: warmup_cosine_lr(cfg.lr, t, total, warmup),
        step=step,
        validate=validate,
        best_key="loss",
        best_higher=False,
        save_model=save_model,
        provenance=provenance,
    )
    return run_epochs(job)


def pretrain_mae(cfg: MAEPretrainConfig) -> Path:
    """Pretrain the MAE and return its best checkpoint (``<out>/best.json``)."""
    result = run_mae_pretraining(cfg)
    if result.best is None:
        raise RuntimeError(f"MAE pretraining in {cfg.out} produced no checkpoint.")
    return result.best
