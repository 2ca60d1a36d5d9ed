"""Segmentation training of CDI-NSTSEG, its variants and the U-Net baseline (deep supervision,
poly lr; one process or torchrun DDP): data and splits, starting weights, SSL guidance through
a frozen MAE, whole-slice validation with pooled Dice, and the checkpoints' provenance."""

from __future__ import annotations

import datetime as _dt
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from napari_nstseg.inference.device import autocast, precision_label
from napari_nstseg.models import DeepSupervisionLoss, ModelConfig, build_model
from napari_nstseg.models.checkpoint import (
    checkpoint_paths,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from napari_nstseg.models.mae import MaskedAutoencoder
from napari_nstseg.preprocessing import PreprocessConfig
from napari_nstseg.training.cases import Case, data_splits
from napari_nstseg.training.config import TrainConfig
from napari_nstseg.training.data import SamplingConfig, SliceDataset
from napari_nstseg.training.distributed import DistContext, distributed
from napari_nstseg.training.lesions.online import (
    OnlineLesionDataset,
    online_lesion_config,
    read_source_blocks,
)
from napari_nstseg.training.loop import (
    Job,
    TrainResult,
    epoch_checkpoints,
    epoch_seed,
    num_workers,
    prepare_out,
    run_epochs,
)
from napari_nstseg.training.mixed_data import MixedDataset
from napari_nstseg.training.optimizer import make_optimizer, poly_lr
from napari_nstseg.training.organ_crops import OrganCropConfig
from napari_nstseg.training.run_log import dataset_info, git_commit


def training_set(
    data: str | Path,
    train_cases: Sequence[Case],
    preprocess: PreprocessConfig,
    sampling: SamplingConfig,
    organs: OrganCropConfig | None = None,
) -> SliceDataset:
    """The set `train` samples its crops from: the training split's stored cases, or with
    ``sampling.online_lesions`` the folder's training blocks without their stored lesions and a
    new lesion in every crop with lesion; ``organs``: how organ crops are cut."""
    if sampling.online_lesions:
        blocks, lesion_config = read_source_blocks(data, "train")
        lesion_config = online_lesion_config(lesion_config, sampling)
        return OnlineLesionDataset(blocks, lesion_config, preprocess, sampling, organs)
    return SliceDataset(train_cases, preprocess, sampling, organs)


def load_mae(path: str, preprocess: PreprocessConfig) -> tuple[MaskedAutoencoder, dict]:
    mae, meta = load_checkpoint(path)
    if meta.get("kind") != "mae":
        raise ValueError(f"{path} is a {meta.get('kind')!r} checkpoint, not a masked autoencoder.")
    theirs = PreprocessConfig.from_dict(meta.get("preprocessing") or {})
    if (theirs.hu_window, theirs.norm_mean, theirs.norm_std) != (
        preprocess.hu_window,
        preprocess.norm_mean,
        preprocess.norm_std,
    ):
        raise ValueError(
            f"The MAE {path} was pretrained with HU window {theirs.hu_window} and z-score "
            f"({theirs.norm_mean}, {theirs.norm_std}), not this run's {preprocess.hu_window} "
            f"({preprocess.norm_mean}, {preprocess.norm_std}); pretrain it with the same settings."
        )
    for p in mae.parameters():
        p.requires_grad_(False)
    return mae.eval(), meta


def copy_checkpoint(src: str | Path, dst_stem: Path) -> None:
    for a, b in zip(checkpoint_paths(src), checkpoint_paths(dst_stem), strict=True):
        if a.resolve() != b.resolve():
            shutil.copyfile(a, b)
    read_metadata(dst_stem)  # the copy must verify like the original


def validation_indices(dataset: SliceDataset, max_slices: int | None) -> list[int]:
    """Indices of a sequential SliceDataset to validate on: all, or at most ``max_slices`` with
    every lesion slice first (evenly thinned if they alone exceed it), then evenly spaced
    slices without lesion, so false positives still count."""
    n = len(dataset)
    if max_slices is None or n <= max_slices:
        return list(range(n))
    positive = set(dataset.positives)
    pos = [i for i, kz in enumerate(dataset.index) if kz in positive]
    neg = [i for i, kz in enumerate(dataset.index) if kz not in positive]

    def spread(items: list[int], k: int) -> list[int]:
        if k <= 0 or not items:
            return []
        if k >= len(items):
            return items
        return [items[int(j)] for j in np.linspace(0, len(items) - 1, k).round()]

    chosen = spread(pos, max_slices)
    chosen += spread(neg, max_slices - len(chosen))
    return sorted(set(chosen))


class _SegValidation:
    """Validation on whole working-grid slices: per-case Dice (the checkpoint-selection metric),
    IoU, precision and recall from confusion counts summed over the case's slices, and the loss."""

    def __init__(
        self,
        dataset: SliceDataset,
        ctx: DistContext,
        batch_size: int,
        threshold: float,
        loss_fn: DeepSupervisionLoss,
        forward: Callable,
        workers: int,
        amp: bool,
        max_slices: int | None = None,
    ) -> None:
        self.ctx, self.threshold, self.loss_fn, self.forward, self.amp = (
            ctx,
            threshold,
            loss_fn,
            forward,
            amp,
        )
        self.case_ids = [c.case_id for c in dataset.cases]
        chosen = validation_indices(dataset, max_slices)
        mine = chosen[ctx.rank :: ctx.world]
        self.loader = DataLoader(
            Subset(dataset, mine), batch_size=batch_size, shuffle=False, num_workers=workers
        )

    @torch.no_grad()
    def __call__(self) -> dict[str, float]:
        from napari_nstseg.metrics import Confusion

        ctx = self.ctx
        counts = torch.zeros(len(self.case_ids), 4, dtype=torch.float64)
        loss_sum = torch.zeros(2, dtype=torch.float64)
        index = {c: i for i, c in enumerate(self.case_ids)}
        for batch in self.loader:
            x = batch["image"].to(ctx.device)
            y = batch["mask"].to(ctx.device)
            with autocast(ctx.device, self.amp):
                out = self.forward(x)
                loss = self.loss_fn(out, y)
            loss_sum += torch.tensor([float(loss) * len(x), len(x)], dtype=torch.float64)
            pred = torch.sigmoid(out.final.float()) >= self.threshold
            truth = y > 0.5
            tp = (pred & truth).flatten(1).sum(1)
            fp = (pred & ~truth).flatten(1).sum(1)
            fn = (~pred & truth).flatten(1).sum(1)
            tn = (~pred & ~truth).flatten(1).sum(1)
            per = torch.stack([tp, fp, fn, tn], 1).double().cpu()
            for case, row in zip(batch["case"], per, strict=True):
                counts[index[case]] += row
        counts = ctx.all_sum(counts.to(ctx.device)).cpu()
        loss_sum = ctx.all_sum(loss_sum.to(ctx.device)).cpu()
        per_case = [Confusion(*(int(v) for v in row)).metrics() for row in counts]
        pooled = Confusion(*(int(v) for v in counts.sum(0))).metrics()
        result = {
            "loss": float(loss_sum[0] / max(1.0, float(loss_sum[1]))),
            **{
                k: float(np.mean([m[k] for m in per_case]))
                for k in ("dice", "iou", "precision", "recall")
            },
            "dice_pooled": pooled["dice"],
        }
        return result


def run_training(cfg: TrainConfig) -> TrainResult:
    """Train a segmentation model as ``cfg`` says; returns the model and the checkpoint paths.

    Works as one process or under ``torchrun --nproc_per_node N`` (DDP, DistributedSampler,
    nccl on CUDA / gloo on the CPU); only rank 0 writes files.
    """
    with distributed(cfg.device) as ctx:
        return _run_training(cfg, ctx)


def _run_training(cfg: TrainConfig, ctx: DistContext) -> TrainResult:
    if not cfg.data:
        raise ValueError(
            "No training data: pass --data FOLDER (an MSD or images/ + masks/ folder)."
        )
    splits = data_splits(cfg.data, cfg.split_file)
    online = cfg.sampling.online_lesions
    if not splits["train"] and not online:
        raise ValueError(f"{cfg.data}: no case is in the training split.")
    out = prepare_out(cfg, ctx, "segmentation")
    device = ctx.device

    sampling = replace(cfg.sampling, seed=cfg.seed, sequential=False)
    train_set = training_set(cfg.data, splits["train"], cfg.preprocess, sampling, cfg.organ_search)
    extra_splits = [data_splits(e.data, e.split_file) for e in cfg.extra_data]
    if cfg.extra_data:
        sets = [train_set]
        for extra, its in zip(cfg.extra_data, extra_splits, strict=True):
            if not its["train"] and not extra.online_lesions:
                raise ValueError(f"{extra.data}: no case is in the training split.")
            its_sampling = replace(sampling, online_lesions=extra.online_lesions)
            sets.append(
                training_set(
                    extra.data, its["train"], cfg.preprocess, its_sampling, cfg.organ_search
                )  # fmt: skip
            )
        shares = [e.share for e in cfg.extra_data]
        train_set = MixedDataset(sets, [1.0 - sum(shares), *shares])
    per_step = cfg.batch_size * ctx.world
    steps = cfg.steps_per_epoch or max(1, len(train_set.index) // per_step)
    train_set.sampling = replace(train_set.sampling, samples_per_epoch=steps * per_step)

    torch.manual_seed(cfg.seed)
    # Channels-last convolutions are about 1.2x faster under oneDNN and cuDNN alike.
    model: nn.Module = build_model(cfg.model).to(device, memory_format=torch.channels_last)
    if ctx.distributed and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    initialised_from = None
    if cfg.init_weights:
        found = epoch_checkpoints(out) if cfg.resume else []
        if found:  # resuming: the run's own last epoch replaces the starting weights anyway
            initialised_from = read_metadata(found[-1][1])["provenance"].get("initialised_from")
        else:
            initialised_from = _init_from(model, cfg)
            if ctx.main:
                added = " (context planes added)" if initialised_from["input_planes_added"] else ""
                print(f"train[{cfg.variant}]: starting from {cfg.init_weights}{added}")
    net: nn.Module = model
    if ctx.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    mae = None
    mae_name = None
    if cfg.mae_weights:
        mae, _ = load_mae(cfg.mae_weights, cfg.preprocess)
        mae = mae.to(device)
        mae_name = "mae.json"
        if ctx.main:
            copy_checkpoint(cfg.mae_weights, out / "mae")
    use_residual = cfg.model.ssl_guidance

    def forward(module: nn.Module, x: torch.Tensor, key: int | None = None) -> Any:
        if not use_residual:
            return module(x)
        gen = torch.Generator(device=x.device)
        gen.manual_seed(epoch_seed(cfg.seed, key if key is not None else -1, ctx.rank))
        c = cfg.preprocess.center_channel  # the MAE knows single slices, not context planes
        with torch.no_grad():
            residual = mae.residual_map(
                x[:, c : c + 1].float(),
                k=cfg.residual_masks,
                generator=gen,
                shifts=cfg.residual_shifts,
            )
        return module(x, residual=residual.to(x.dtype))

    loss_fn = DeepSupervisionLoss(cfg.loss)
    amp = device.type != "cpu" if cfg.amp is None else cfg.amp

    def step(batch: dict[str, Any], global_step: int) -> dict[str, torch.Tensor]:
        x = batch["image"].to(device, non_blocking=True, memory_format=torch.channels_last)
        y = batch["mask"].to(device, non_blocking=True)
        with autocast(device, amp):
            return loss_fn.terms(forward(net, x, global_step), y)

    optimizer = make_optimizer(cfg, model)
    workers = num_workers(cfg.num_workers, device)
    val_cases = [*splits["val"], *(c for its in extra_splits for c in its["val"])]
    ids = [c.case_id for c in val_cases]
    if len(set(ids)) < len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(
            f"validation case(s) {', '.join(twice)} occur in two data sets; their results would "
            "mix: rename one set's cases"
        )
    validate: Callable[[], dict[str, float]]
    if val_cases:
        val_set = SliceDataset(
            val_cases,
            cfg.preprocess,
            replace(sampling, sequential=True, label_values=train_set.label_values),
        )
        validate = _SegValidation(
            val_set,
            ctx,
            cfg.val_batch_size or cfg.batch_size,
            cfg.threshold,
            loss_fn,
            lambda x: forward(model, x, None),
            workers,
            amp,
            cfg.val_max_slices,
        )
    else:
        if ctx.main:
            warnings.warn(
                f"{cfg.data}: no validation cases; 'best' is chosen by the training loss.",
                stacklevel=2,
            )
        validate = dict

    counts = {k: len(v) for k, v in splits.items()}
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    commit = git_commit()

    def provenance() -> dict[str, Any]:
        return {
            "trained_by": "napari-nstseg train",
            "variant": cfg.variant,
            "training_data": {
                **dataset_info(cfg.data, counts),
                "split_file": cfg.split_file,
                "val_cases": [c.case_id for c in splits["val"]],
                **(
                    {
                        "extra": [
                            {
                                **dataset_info(e.data, {k: len(v) for k, v in its.items()}),
                                "split_file": e.split_file,
                                "online_lesions": e.online_lesions,
                                "share": e.share,
                                "val_cases": [c.case_id for c in its["val"]],
                            }
                            for e, its in zip(cfg.extra_data, extra_splits, strict=True)
                        ]
                    }
                    if cfg.extra_data
                    else {}
                ),
            },
            "label_values": list(train_set.label_values),
            "started": started,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "git": commit,
            "torch": torch.__version__,
            "device": str(device),
            "precision": precision_label(device, amp),
            "world_size": ctx.world,
            "budget": {
                "epochs": cfg.epochs,
                "steps_per_epoch": steps,
                "batch_size": cfg.batch_size,
                "global_batch": per_step,
                "samples": cfg.epochs * steps * per_step,
                "crop_size": list(sampling.crop_size) if sampling.crop_size else None,
            },
            "seed": cfg.seed,
            "mae": mae_name,
            "initialised_from": initialised_from,
            "train_config": cfg.to_dict(),
        }

    # The zoom limits organ crops were cut at go with the weights, so organ mode uses them.
    organ_search = cfg.organ_search.metadata() if cfg.sampling.organ_crops > 0 else None

    def save_model(stem: Path, prov: dict[str, Any]) -> None:
        save_checkpoint(
            stem, model, cfg.model.to_dict(), cfg.preprocess.to_dict(), prov, mae=mae_name,
            organ_search=organ_search,
        )  # fmt: skip

    lr_total = cfg.epochs * steps
    job = Job(
        name=f"train[{cfg.variant}]",
        cfg=cfg,
        ctx=ctx,
        out=out,
        model=net,
        optimizer=optimizer,
        train_set=train_set,
        num_workers=workers,
        steps_per_epoch=steps,
        lr_at=lambda t: poly_lr(cfg.lr, t, lr_total, cfg.poly_power),
        step=step,
        validate=validate,
        # Pooled Dice over all validation voxels: per-case Dice scores a lesion-free prediction
        # 1 on every case whose sampled slices hold no lesion, and picked an untrained epoch.
        best_key="dice_pooled" if val_cases else "loss",
        best_higher=bool(val_cases),
        save_model=save_model,
        provenance=provenance,
    )
    return run_epochs(job)


def _init_from(model: nn.Module, cfg: TrainConfig) -> dict[str, Any]:
    """Load ``cfg.init_weights`` into ``model``; returns what the provenance records of it (its
    file, tensor hash and its own training budget, so a continued run's total is traceable).

    A 2-D (1-channel) checkpoint may start a 2.5-D run: the input convolution's weights go to
    the centre plane and the context planes start at zero, so the network begins as the 2-D
    model it was and learns from there what the neighbouring planes add.
    """
    path = cfg.init_weights
    meta = read_metadata(path)
    if meta["kind"] != "segmentation":
        raise ValueError(f"--init {path}: a {meta['kind']} checkpoint, not a segmentation model.")
    theirs_model = ModelConfig.from_dict(meta["model_config"]).to_dict()
    theirs_pre = PreprocessConfig.from_dict(meta["preprocessing"]).to_dict()
    inflate = theirs_model["in_channels"] == 1 and cfg.model.in_channels > 1
    free = {"in_channels"} if inflate else set()
    free_pre = {"slice_offsets_mm"} if inflate else set()
    for what, theirs, ours, ignored in (
        ("architecture", theirs_model, cfg.model.to_dict(), free),
        ("preprocessing", theirs_pre, cfg.preprocess.to_dict(), free_pre),
    ):
        differ = sorted(
            k for k in set(theirs) | set(ours) if k not in ignored and theirs.get(k) != ours.get(k)
        )
        if differ:
            shown = ", ".join(f"{k}: {theirs.get(k)!r} there, {ours.get(k)!r} here" for k in differ)
            raise ValueError(
                f"--init {path}: its {what} differs from this run's ({shown}); train with the "
                "checkpoint's settings (leave them out on the command line) or start from scratch."
            )
    loaded, _ = load_checkpoint(path)
    state = loaded.state_dict()
    if inflate:
        own = model.state_dict()
        centre = cfg.preprocess.center_channel
        for name, value in state.items():
            want = own[name].shape
            if value.shape != want and value.ndim == 4 and value.shape[1] == 1:
                wider = torch.zeros(want, dtype=value.dtype)
                wider[:, centre] = value[:, 0]
                state[name] = wider
    model.load_state_dict(state)
    prov = meta.get("provenance") or {}
    return {
        "weights": str(Path(path).resolve()),
        "tensors_sha256": (meta.get("tensors") or {}).get("sha256"),
        "budget": prov.get("budget"),
        "started": prov.get("started"),
        "date": prov.get("date"),
        "device": prov.get("device"),
        "train_config": prov.get("train_config"),
        "input_planes_added": inflate,
        "initialised_from": prov.get("initialised_from"),
    }


def train(cfg: TrainConfig) -> Path:
    """Train as ``cfg`` says and return the best checkpoint (``<out>/best.json``)."""
    result = run_training(cfg)
    if result.best is None:
        raise RuntimeError(f"Training in {cfg.out} produced no checkpoint.")
    return result.best
