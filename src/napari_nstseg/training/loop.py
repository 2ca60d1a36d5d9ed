"""Training of CDI-NSTSEG (deep supervision, poly lr), its ablations and the U-Net baseline, on one
process or under torchrun DDP, and masked-autoencoder (MAE) pretraining for the SSL residual maps.

Every epoch writes a resumable checkpoint (model: safetensors + JSON via ``save_checkpoint``;
optimizer and schedule: ``<stem>.state.safetensors`` + ``<stem>.state.json``), a row of the CSV
log, and ``best`` when validation improves. Randomness is a function of (seed, epoch, index), so
a run resumed from an epoch checkpoint continues exactly as if it had never stopped.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import re
import shutil
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from napari_nstseg._config import nested_from_dict, nested_to_dict
from napari_nstseg.inference.device import autocast, precision_label
from napari_nstseg.io.atomic import atomic_write
from napari_nstseg.models import DeepSupervisionLoss, LossConfig, ModelConfig, build_model
from napari_nstseg.models.checkpoint import (
    checkpoint_paths,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)
from napari_nstseg.models.mae import MAEConfig, MaskedAutoencoder
from napari_nstseg.preprocessing import PreprocessConfig
from napari_nstseg.training.data import (
    SPLIT_SEED,
    TEST_FRACTION,
    VAL_FRACTION,
    AugmentConfig,
    Case,
    SamplingConfig,
    SliceDataset,
    find_cases,
    split_cases,
)
from napari_nstseg.training.mae_data import UnlabeledSlices, find_sources
from napari_nstseg.training.online_lesions import OnlineLesionDataset, read_source_blocks

# Ablations of the paper (and the baseline) as ModelConfig changes; every variant gets the same
# data, budget and seed, so their numbers compare.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "no-sfm": {"scale_fusion": "mean"},
    "no-glm": {"glm": "none"},
    "no-lfm": {"lfm_stages": 0},
    "single-scale": {"scales": (1.0,)},
    "unet": {"arch": "unet"},
    "ssl": {"ssl_guidance": True},
}
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("poly", "cosine")
MIN_BATCH = 4
# Fractions of a dataset without a split in dataset.json; a fixed seed so that train and
# evaluate (and every variant) cut the same cases.
STATE_SUFFIX = ".state"
LOG_NAME = "log.csv"
CONFIG_NAME = "train_config.json"
_EPOCH_RE = re.compile(r"^epoch_(\d+)\.json$")


# -- configuration --------------------------------------------------------------------------------
def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["key=value", ...]`` -> dict; values are JSON when they parse ("1.0", "[1.0]", "true"),
    comma lists become lists of numbers, anything else stays a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {item!r}.")
        try:
            value: Any = json.loads(text)
        except json.JSONDecodeError:
            if "," in text:
                try:
                    value = [float(v) for v in text.split(",") if v.strip()]
                except ValueError:
                    value = text
            else:
                value = text
        out[key] = value
    return out


def variant_config(
    variant: str = "default",
    base: ModelConfig | None = None,
    overrides: dict[str, Any] | None = None,
) -> ModelConfig:
    """The ModelConfig of an ablation variant, then free ``overrides`` of ModelConfig fields."""
    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}.")
    data = (base or ModelConfig()).to_dict()
    data.update(VARIANTS[variant])
    data.update(overrides or {})
    if isinstance(data.get("scales"), (int, float)):
        data["scales"] = [data["scales"]]
    return ModelConfig.from_dict(data)


def _sampling_from_dict(d: dict[str, Any]) -> SamplingConfig:
    d = dict(d)
    if isinstance(d.get("augment"), dict):
        aug = dict(d["augment"])
        if "scale_range" in aug:
            aug["scale_range"] = tuple(aug["scale_range"])
        d["augment"] = AugmentConfig(**aug)
    for key in ("crop_size", "label_values"):
        if d.get(key) is not None:
            d[key] = tuple(d[key])
    return SamplingConfig(**d)


def _loss_from_dict(d: dict[str, Any]) -> LossConfig:
    d = dict(d)
    if d.get("stage_weights") is not None:
        d["stage_weights"] = tuple(d["stage_weights"])
    return LossConfig(**d)


def _check_positive(owner: str, name: str, value: Any, minimum: float = 1) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise ValueError(f"{owner}.{name} must be a number >= {minimum:g}, got {value!r}.")


@dataclass
class TrainConfig:
    """One segmentation training run (identical budget and seed across variants).

    ``steps_per_epoch`` None: one pass over the training slices per epoch. ``batch_size`` is
    per process (BatchNorm needs at least 4 slices; ``allow_small_batch`` is for tests).
    ``weight_decay`` None: 1e-4 for AdamW, 5e-4 for SGD (the reference). The learning rate
    decays per iteration as lr * (1 - t / T) ** poly_power; SGD biases get 2x lr, as in the
    reference. ``val_max_slices`` caps validation (every lesion slice first, then evenly spaced
    slices without lesion) when whole-slice validation would cost too much. ``amp`` None:
    mixed precision on GPUs, float32 on CPUs, where bf16 autocast trains slower on some CPUs
    with native bf16 and faster on others (benchmarks/train_speed.py: an Intel Xeon vs an AMD
    EPYC); True or False force it either way. ``init_weights``: a
    segmentation checkpoint to start from instead of random weights (fine-tuning, or a longer
    run continued with a new schedule); its architecture and preprocessing must be this run's.
    ``split_file``: a JSON split by case (``data.read_split_file``) over the folder's own.
    ``mae_weights``: a pretrained MAE checkpoint, used for SSL guidance and named in the
    checkpoints so the plugin can show residual maps.
    """

    data: str = ""
    split_file: str | None = None
    out: str = "runs/nstseg"
    variant: str = "default"
    model: ModelConfig = field(default_factory=ModelConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float | None = None
    momentum: float = 0.9
    poly_power: float = 0.9
    epochs: int = 30
    steps_per_epoch: int | None = None
    batch_size: int = 8
    allow_small_batch: bool = False
    val_batch_size: int | None = None
    val_max_slices: int | None = None
    amp: bool | None = None
    seed: int = 0
    num_workers: int | None = None
    device: str = "auto"
    resume: bool = False
    init_weights: str | None = None
    mae_weights: str | None = None
    residual_masks: int = 4
    residual_shifts: int = 2
    threshold: float = 0.5
    keep_epochs: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"TrainConfig.optimizer must be one of {', '.join(OPTIMIZERS)}, "
                f"got {self.optimizer!r}."
            )
        if self.variant not in VARIANTS:
            raise ValueError(
                f"Unknown variant {self.variant!r}; choose one of {', '.join(VARIANTS)}."
            )
        _check_positive("TrainConfig", "epochs", self.epochs)
        _check_positive("TrainConfig", "steps_per_epoch", self.steps_per_epoch)
        _check_positive("TrainConfig", "batch_size", self.batch_size)
        _check_positive("TrainConfig", "val_batch_size", self.val_batch_size)
        _check_positive("TrainConfig", "val_max_slices", self.val_max_slices)
        _check_positive("TrainConfig", "keep_epochs", self.keep_epochs)
        _check_positive("TrainConfig", "residual_masks", self.residual_masks, 2)
        _check_positive("TrainConfig", "residual_shifts", self.residual_shifts, 1)
        _check_positive("TrainConfig", "num_workers", self.num_workers, 0)
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"TrainConfig.lr must be a positive number, got {self.lr!r}.")
        if self.batch_size < MIN_BATCH and not self.allow_small_batch:
            raise ValueError(
                f"Batch size {self.batch_size} is too small for BatchNorm training; use at least "
                f"{MIN_BATCH} (or --allow-small-batch for a quick test)."
            )
        if self.model.in_channels != self.preprocess.n_channels:
            raise ValueError(
                f"The model takes {self.model.in_channels} input channel(s) but the preprocessing "
                f"makes {self.preprocess.n_channels} (slice offsets "
                f"{list(self.preprocess.slice_offsets_mm)} mm); set in_channels to match."
            )
        if self.model.ssl_guidance and not self.mae_weights:
            raise ValueError(
                "SSL guidance (variant 'ssl' or ssl_guidance=true) needs a pretrained MAE "
                "checkpoint: pass --mae PATH (see `nstseg pretrain-mae`)."
            )

    @property
    def resolved_weight_decay(self) -> float:
        if self.weight_decay is not None:
            return float(self.weight_decay)
        return 1e-4 if self.optimizer == "adamw" else 5e-4

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dictionary (nested configs as dictionaries)."""
        return nested_to_dict(self, ("model", "preprocess"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of to_dict(); unknown keys raise ValueError."""
        parsers = {
            "model": ModelConfig.from_dict,
            "preprocess": PreprocessConfig.from_dict,
            "sampling": _sampling_from_dict,
            "loss": _loss_from_dict,
        }
        return nested_from_dict(cls, d, parsers)


@dataclass
class MAEPretrainConfig:
    """MAE pretraining on unlabeled CT slices (MAE paper: AdamW (0.9, 0.95), wd 0.05, warm-up then
    cosine). ``data``: what ``mae_data.find_sources`` takes (a JSON sources file, a case-folder
    set, an MSD folder, a folder of CT volumes or one file). ``crop_size``: square crops in
    working pixels; ``exclude_margin_mm``: crops keep this far from excluded zones (tumours)."""

    data: str = ""
    out: str = "runs/mae"
    mae: MAEConfig = field(default_factory=MAEConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    crop_size: int = 128
    exclude_margin_mm: float = 10.0
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    epochs: int = 20
    steps_per_epoch: int | None = None
    batch_size: int = 16
    amp: bool = True
    seed: int = 0
    num_workers: int | None = None
    device: str = "auto"
    resume: bool = False
    keep_epochs: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        _check_positive("MAEPretrainConfig", "epochs", self.epochs)
        _check_positive("MAEPretrainConfig", "steps_per_epoch", self.steps_per_epoch)
        _check_positive("MAEPretrainConfig", "batch_size", self.batch_size)
        _check_positive("MAEPretrainConfig", "keep_epochs", self.keep_epochs)
        _check_positive("MAEPretrainConfig", "crop_size", self.crop_size, self.mae.patch_size)
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(
                f"MAEPretrainConfig.warmup_fraction must be in [0, 1), got {self.warmup_fraction}."
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dictionary (nested configs as dictionaries)."""
        return nested_to_dict(self, ("mae", "preprocess"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MAEPretrainConfig:
        """Inverse of to_dict(); unknown keys raise ValueError."""
        parsers = {"mae": MAEConfig.from_dict, "preprocess": PreprocessConfig.from_dict}
        return nested_from_dict(cls, d, parsers)


# -- distributed ----------------------------------------------------------------------------------
@dataclass
class DistContext:
    """Where this process stands: rank, world size, device; rank 0 alone writes files."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks (a no-op on one process)."""
        if self.distributed:
            # gloo reduces CPU tensors, nccl CUDA ones: keep the tensor where the backend wants it.
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def setup_distributed(device: str = "auto") -> DistContext:
    """Join the torchrun process group from its environment (WORLD_SIZE, RANK, LOCAL_RANK,
    MASTER_ADDR/PORT): nccl on CUDA, gloo on the CPU. One process without those: no group."""
    from napari_nstseg.inference.device import select_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    chosen = select_device(device)
    if world <= 1:
        return DistContext(0, 1, chosen, False)
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
    if chosen.type == "cuda":
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    elif chosen.type != "cpu":
        raise ValueError(f"Distributed training runs on CUDA or the CPU, not on {chosen}.")
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
        owns = True
    return DistContext(dist.get_rank(), dist.get_world_size(), chosen, owns)


def _teardown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


# -- optimisation ---------------------------------------------------------------------------------
def param_groups(
    model: nn.Module, weight_decay: float, bias_lr_scale: float = 1.0
) -> list[dict[str, Any]]:
    """Weights decay; biases, norm parameters and attention gammas (<= 1-D) do not, and biases
    may get a larger lr (the reference's 2x for SGD)."""
    decay, biases, other = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 and name.endswith("bias"):
            biases.append(p)
        elif p.ndim <= 1:
            other.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
        {"params": biases, "weight_decay": 0.0, "lr_scale": bias_lr_scale},
        {"params": other, "weight_decay": 0.0, "lr_scale": 1.0},
    ]
    return [g for g in groups if g["params"]]


def poly_lr(base_lr: float, step: int, total: int, power: float = 0.9) -> float:
    """Poly decay (PFNet/CDI-NSTSEG): base * (1 - step / total) ** power, per iteration."""
    return base_lr * max(0.0, 1.0 - step / max(1, total)) ** power


def warmup_cosine_lr(base_lr: float, step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then half-cosine decay to zero (MAE pretraining)."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def optimizer_state_to_files(
    optimizer: torch.optim.Optimizer, extra: dict[str, Any], stem: Path
) -> None:
    """Optimizer + schedule state as ``<stem>.safetensors`` (tensors) and ``<stem>.json``."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{key}"] = value.detach().to("cpu").contiguous().clone()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    tensor_path = stem.with_name(stem.name + ".safetensors")
    json_path = stem.with_name(stem.name + ".json")
    atomic_write(tensor_path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    meta = {"param_groups": sd["param_groups"], "scalars": scalars, **extra}
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1) + "\n"))


def optimizer_state_from_files(optimizer: torch.optim.Optimizer, stem: Path) -> dict[str, Any]:
    """Restore what ``optimizer_state_to_files`` wrote; returns the extra JSON entries."""
    tensor_path = stem.with_name(stem.name + ".safetensors")
    json_path = stem.with_name(stem.name + ".json")
    meta = json.loads(json_path.read_text())
    tensors = load_file(str(tensor_path))
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, entry in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(entry)
    groups = meta["param_groups"]
    sizes = [len(g["params"]) for g in groups]
    if sizes != [len(g["params"]) for g in optimizer.param_groups]:
        raise ValueError(
            f"Optimizer state {json_path} was saved for a different model or optimizer; "
            "start a new output folder or drop --resume."
        )
    # How the update is computed (fused, foreach) is this run's choice, not saved state: a run
    # resumed from an older checkpoint keeps the current optimizer's implementation.
    for saved, current in zip(groups, optimizer.param_groups, strict=True):
        for key in ("fused", "foreach"):
            if key in current:
                saved[key] = current[key]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    # The files hold contiguous tensors: lay each state tensor out like its (channels-last)
    # parameter again, as a fresh optimizer would, so no update mixes two layouts (a fused one
    # would then pair the wrong elements).
    for group in optimizer.param_groups:
        for param in group["params"]:
            entry = optimizer.state.get(param, {})
            for key, value in entry.items():
                if isinstance(value, torch.Tensor) and value.shape == param.shape:
                    entry[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
    return {k: v for k, v in meta.items() if k not in ("param_groups", "scalars")}


# -- provenance, log and checkpoint files ---------------------------------------------------------
def git_commit() -> dict[str, Any] | None:
    """The source checkout's commit (and whether it had local changes), if it is a git checkout."""
    root = Path(__file__).resolve().parents[3]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head, "dirty": bool(status)} if head else None


def _dataset_info(folder: str, counts: dict[str, int]) -> dict[str, Any]:
    root = Path(folder).resolve()
    info: dict[str, Any] = {"folder": str(root), "cases": counts}
    ds = root / "dataset.json" if root.is_dir() else None
    if ds is not None and ds.is_file():
        try:
            meta = json.loads(ds.read_text())
            info["dataset_json"] = str(ds)
            info["name"] = meta.get("name")
            info["seed"] = meta.get("seed")
        except (OSError, json.JSONDecodeError):
            info["dataset_json"] = str(ds)
    return info


class CsvLog:
    """Per-epoch CSV log. Columns come from the first row (or the existing file); on resume,
    rows past the resumed epoch are dropped because they are about to be redone."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> tuple[list[str], list[dict[str, str]]]:
        with open(self.path, newline="") as f:
            reader = csv.DictReader(f)
            return list(reader.fieldnames or []), list(reader)

    def truncate_after(self, epoch: int) -> None:
        if not self.path.is_file():
            return
        columns, rows = self._read()
        self._write(columns, [r for r in rows if int(r["epoch"]) <= epoch])

    def _write(self, columns: list[str], rows: list[dict[str, Any]]) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)

        atomic_write(self.path, write)

    def append(self, row: dict[str, Any]) -> None:
        formatted = {k: _fmt(v) for k, v in row.items()}
        if not self.path.is_file():
            self._write(list(row), [formatted])
            return
        columns, rows = self._read()
        if not columns:
            columns = list(row)
        columns += [k for k in row if k not in columns]
        self._write(columns, [*rows, formatted])


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def epoch_checkpoints(out: Path) -> list[tuple[int, Path]]:
    """(epoch, stem) of complete epoch checkpoints in ``out`` (model and state), oldest first."""
    found = []
    if not out.is_dir():
        return found
    for p in out.iterdir():
        m = _EPOCH_RE.match(p.name)
        if not m:
            continue
        stem = p.with_suffix("")
        state = stem.with_name(stem.name + STATE_SUFFIX + ".json")
        if state.is_file() and stem.with_name(stem.name + ".safetensors").is_file():
            found.append((int(m.group(1)), stem))
    return sorted(found)


def _remove_checkpoint(stem: Path) -> None:
    for suffix in (".json", ".safetensors", f"{STATE_SUFFIX}.json", f"{STATE_SUFFIX}.safetensors"):
        stem.with_name(stem.name + suffix).unlink(missing_ok=True)


# -- the generic epoch loop -----------------------------------------------------------------------
@dataclass
class TrainResult:
    """What a run leaves: the trained model (this rank's copy), the best checkpoint and the log."""

    model: nn.Module
    best: Path | None
    final: Path | None
    history: list[dict[str, Any]]


def _epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + int(rank)) % (2**63 - 1)


def _num_workers(requested: int | None, device: torch.device) -> int:
    if requested is not None:
        return int(requested)
    # On a small CPU the workers would steal the cores the model needs.
    return 0 if device.type == "cpu" else min(4, os.cpu_count() or 1)


def sync_buffers(model: nn.Module, ctx: DistContext) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics), as DDP does before each
    forward: each rank's last training step updated them with its own batch. Validation then
    runs on the unwrapped module, free of collectives, so ranks may see unequal shards."""
    if not ctx.distributed:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@dataclass
class _Job:
    """Everything the epoch loop needs from one kind of training (segmentation or MAE)."""

    name: str
    cfg: Any
    ctx: DistContext
    out: Path
    model: nn.Module  # possibly DDP-wrapped
    optimizer: torch.optim.Optimizer
    train_set: Any
    loader_kwargs: dict[str, Any]
    steps_per_epoch: int
    lr_at: Callable[[int], float]
    step: Callable[[dict[str, Any], int], dict[str, torch.Tensor]]
    validate: Callable[[], dict[str, float]]
    best_key: str  # validation metric that picks "best"
    best_higher: bool
    save_model: Callable[[Path, dict[str, Any]], None]
    provenance: Callable[[], dict[str, Any]]


def _run_epochs(job: _Job) -> TrainResult:
    """The shared loop: resume, epochs with a progress bar, validation, CSV log, checkpoints."""
    from tqdm.auto import tqdm

    cfg, ctx, out = job.cfg, job.ctx, job.out
    total_steps = cfg.epochs * job.steps_per_epoch
    start_epoch, global_step, best, elapsed = 1, 0, None, 0.0
    history: list[dict[str, Any]] = []
    log = CsvLog(out / LOG_NAME)

    if cfg.resume:
        found = epoch_checkpoints(out)
        if found:
            epoch, stem = found[-1]
            loaded, _ = load_checkpoint(stem)
            _unwrap(job.model).load_state_dict(loaded.state_dict())
            extra = optimizer_state_from_files(
                job.optimizer, stem.with_name(stem.name + STATE_SUFFIX)
            )
            start_epoch = int(extra["epoch"]) + 1
            global_step = int(extra["global_step"])
            best = extra.get("best")
            elapsed = float(extra.get("elapsed_s", 0.0))
            history = list(extra.get("history", []))
            if ctx.main:
                log.truncate_after(start_epoch - 1)
                print(f"{job.name}: resuming from {stem.name} (epoch {epoch}, step {global_step})")
        elif ctx.main:
            print(f"{job.name}: nothing to resume in {out}; starting a new run")
    if start_epoch > cfg.epochs and ctx.main:
        print(f"{job.name}: all {cfg.epochs} epochs are already done in {out}")

    sampler = DistributedSampler(
        job.train_set, num_replicas=ctx.world, rank=ctx.rank, shuffle=False, drop_last=True
    )
    batch_size = job.loader_kwargs["batch_size"]
    best_path = out / "best.json" if (out / "best.json").is_file() else None
    for epoch in range(start_epoch, cfg.epochs + 1):
        torch.manual_seed(_epoch_seed(cfg.seed, epoch, ctx.rank))
        job.train_set.set_epoch(epoch)
        sampler.set_epoch(epoch)
        loader = DataLoader(job.train_set, sampler=sampler, **job.loader_kwargs)
        job.model.train()
        sums: dict[str, torch.Tensor] = {}
        t0 = time.perf_counter()
        bar = tqdm(
            total=job.steps_per_epoch,
            desc=f"{job.name} epoch {epoch}/{cfg.epochs}",
            unit="batch",
            disable=not (ctx.main and cfg.progress),
            dynamic_ncols=True,
        )
        lr = job.lr_at(global_step)
        n_steps = 0  # tqdm's own count stays 0 when the bar is disabled (--no-progress)
        for batch in loader:
            lr = job.lr_at(global_step)
            set_lr(job.optimizer, lr)
            terms = job.step(batch, global_step)
            loss = sum(terms.values())
            value = loss.item()  # the one host sync per step
            if not math.isfinite(value):
                raise RuntimeError(
                    f"{job.name}: the loss became {value} at epoch {epoch}, step "
                    f"{global_step}; lower the learning rate (--lr) and start again."
                )
            job.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            job.optimizer.step()
            global_step += 1
            n_steps += 1
            for k, v in {"loss": loss, **terms}.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float()
            bar.update(1)
            done = n_steps * batch_size * ctx.world
            bar.set_postfix(
                loss=f"{value:.4f}",
                samples_s=f"{done / max(1e-9, time.perf_counter() - t0):.1f}",
                lr=f"{lr:.2e}",
            )
        bar.close()
        train_time = time.perf_counter() - t0
        names = sorted(sums)
        stacked = torch.stack([sums[k] for k in names]).to(ctx.device) / max(1, n_steps)
        stacked = ctx.all_sum(stacked) / ctx.world
        row: dict[str, Any] = {
            "epoch": epoch,
            "step": global_step,
            "lr": lr,
            **{("train_" + k): float(v) for k, v in zip(names, stacked.tolist(), strict=True)},
        }
        job.model.eval()
        sync_buffers(_unwrap(job.model), ctx)
        metrics = job.validate()
        row.update({f"val_{k}": v for k, v in metrics.items()})
        epoch_time = time.perf_counter() - t0
        elapsed += epoch_time
        row.update(
            samples_per_s=job.steps_per_epoch * batch_size * ctx.world / max(1e-9, train_time),
            epoch_time_s=epoch_time,
            elapsed_s=elapsed,
        )
        history.append(row)
        score = row.get(f"val_{job.best_key}", row.get("train_loss"))
        improved = best is None or (score > best if job.best_higher else score < best)
        if improved:
            best = score
        if ctx.main:
            log.append(row)
            prov = {**job.provenance(), "epoch": epoch, "global_step": global_step}
            prov["metrics"] = {k: v for k, v in row.items() if k.startswith(("val_", "train_"))}
            stem = out / f"epoch_{epoch:04d}"
            job.save_model(stem, prov)
            state = {
                "epoch": epoch,
                "global_step": global_step,
                "best": best,
                "elapsed_s": elapsed,
                "history": history,
                "total_steps": total_steps,
            }
            optimizer_state_to_files(job.optimizer, state, stem.with_name(stem.name + STATE_SUFFIX))
            if improved:
                job.save_model(out / "best", {**prov, "selected_by": f"val_{job.best_key}"})
            if epoch == cfg.epochs:
                job.save_model(out / "final", prov)
            for _, old in epoch_checkpoints(out)[: -cfg.keep_epochs]:
                _remove_checkpoint(old)
            summary = ", ".join(
                f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float) and k != "lr"
            )
            print(f"{job.name} epoch {epoch}/{cfg.epochs}: {summary}", flush=True)
        # Every rank names the files rank 0 wrote (they exist once all ranks pass the barrier).
        if improved:
            best_path = out / "best.json"
        ctx.barrier()
    final = out / "final.json" if (out / "final.json").is_file() else None
    return TrainResult(_unwrap(job.model), best_path, final, history)


def _prepare_out(cfg: Any, ctx: DistContext, kind: str) -> Path:
    """Create the output folder; refuse to mix runs unless resuming with the same settings."""
    out = Path(cfg.out)
    saved = out / CONFIG_NAME
    mine = {"kind": kind, **cfg.to_dict()}
    if saved.is_file():
        previous = json.loads(saved.read_text())
        # Precision goes with the device (as on a resumed run that moved to another machine).
        volatile = {"resume", "epochs", "num_workers", "device", "amp", "progress", "out",
                    "keep_epochs"}  # fmt: skip
        differ = sorted(
            k
            for k in set(previous) | set(mine)
            if k not in volatile and previous.get(k) != mine.get(k)
        )
        if not cfg.resume and epoch_checkpoints(out):
            raise ValueError(
                f"{out} already holds a training run; pass --resume to continue it or choose "
                "another --out folder."
            )
        if cfg.resume and differ:
            raise ValueError(
                f"Cannot resume in {out}: its run used other settings for {', '.join(differ)}; "
                "resume with the same settings or choose another --out folder."
            )
        if cfg.resume and previous.get("epochs") != mine.get("epochs") and ctx.main:
            warnings.warn(
                f"Resuming {out} with {cfg.epochs} epochs instead of {previous.get('epochs')}: "
                "the learning-rate schedule changes from here on.",
                stacklevel=3,
            )
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(saved, lambda tmp: Path(tmp).write_text(json.dumps(mine, indent=1) + "\n"))
    ctx.barrier()
    return out


# -- segmentation ---------------------------------------------------------------------------------
def training_set(
    data: str | Path,
    train_cases: Sequence[Case],
    preprocess: PreprocessConfig,
    sampling: SamplingConfig,
) -> SliceDataset:
    """The set `train` samples its crops from: the training split's stored cases, or with
    ``sampling.online_lesions`` the folder's training blocks without their stored lesions and a
    new lesion in every crop with lesion."""
    if sampling.online_lesions:
        blocks, lesion_config = read_source_blocks(data, "train")
        return OnlineLesionDataset(blocks, lesion_config, preprocess, sampling)
    return SliceDataset(train_cases, preprocess, sampling)


def _split(data: str, split_file: str | None = None) -> dict[str, list[Case]]:
    return split_cases(find_cases(data, split_file), VAL_FRACTION, TEST_FRACTION, SPLIT_SEED)


def _load_mae(path: str, preprocess: PreprocessConfig) -> tuple[MaskedAutoencoder, dict]:
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


def _copy_checkpoint(src: str | Path, dst_stem: Path) -> None:
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
    ctx = setup_distributed(cfg.device)
    try:
        return _run_training(cfg, ctx)
    finally:
        _teardown(ctx)


def _run_training(cfg: TrainConfig, ctx: DistContext) -> TrainResult:
    if not cfg.data:
        raise ValueError(
            "No training data: pass --data FOLDER (an MSD or images/ + masks/ folder)."
        )
    splits = _split(cfg.data, cfg.split_file)
    online = cfg.sampling.online_lesions
    if not splits["train"] and not online:
        raise ValueError(f"{cfg.data}: no case is in the training split.")
    out = _prepare_out(cfg, ctx, "segmentation")
    device = ctx.device

    sampling = replace(cfg.sampling, seed=cfg.seed, sequential=False)
    train_set = training_set(cfg.data, splits["train"], cfg.preprocess, sampling)
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
        mae, _ = _load_mae(cfg.mae_weights, cfg.preprocess)
        mae = mae.to(device)
        mae_name = "mae.json"
        if ctx.main:
            _copy_checkpoint(cfg.mae_weights, out / "mae")
    use_residual = cfg.model.ssl_guidance

    def forward(module: nn.Module, x: torch.Tensor, key: int | None = None) -> Any:
        if not use_residual:
            return module(x)
        gen = torch.Generator(device=x.device)
        gen.manual_seed(_epoch_seed(cfg.seed, key if key is not None else -1, ctx.rank))
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

    optimizer = _make_optimizer(cfg, model)
    workers = _num_workers(cfg.num_workers, device)
    val_cases = splits["val"]
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
                **_dataset_info(cfg.data, counts),
                "split_file": cfg.split_file,
                "val_cases": [c.case_id for c in splits["val"]],
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

    def save_model(stem: Path, prov: dict[str, Any]) -> None:
        save_checkpoint(
            stem, model, cfg.model.to_dict(), cfg.preprocess.to_dict(), prov, mae=mae_name
        )

    lr_total = cfg.epochs * steps
    job = _Job(
        name=f"train[{cfg.variant}]",
        cfg=cfg,
        ctx=ctx,
        out=out,
        model=net,
        optimizer=optimizer,
        train_set=train_set,
        loader_kwargs={
            "batch_size": cfg.batch_size,
            "num_workers": workers,
            "drop_last": True,
            "pin_memory": device.type == "cuda",
        },
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
    return _run_epochs(job)


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


# Left to itself PyTorch updates parameters one by one in Python on the CPU (foreach only on
# GPUs): with the ~450 small tensors of these models py-spy put 31 % of the wall time of CPU
# training there. The foreach kernels do the same update per list of tensors. Not the fused
# ones: on the CPU (torch 2.13) they walk parameter, gradient and state as one run of memory,
# and a gradient or state laid out otherwise than its channels-last parameter was measured to
# get a wrong update.
FOREACH = True


def _make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    wd = cfg.resolved_weight_decay
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            param_groups(model, wd, bias_lr_scale=2.0),
            lr=cfg.lr,
            momentum=cfg.momentum,
            foreach=FOREACH,
        )
    return torch.optim.AdamW(param_groups(model, wd), lr=cfg.lr, foreach=FOREACH)


def train(cfg: TrainConfig) -> Path:
    """Train as ``cfg`` says and return the best checkpoint (``<out>/best.json``)."""
    result = run_training(cfg)
    if result.best is None:
        raise RuntimeError(f"Training in {cfg.out} produced no checkpoint.")
    return result.best


# -- MAE pretraining ------------------------------------------------------------------------------
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
    ctx = setup_distributed(cfg.device)
    try:
        return _run_mae(cfg, ctx)
    finally:
        _teardown(ctx)


def _run_mae(cfg: MAEPretrainConfig, ctx: DistContext) -> TrainResult:
    if not cfg.data:
        raise ValueError("No data: pass --data (a folder of CT volumes or an MSD folder).")
    sources, val_sources = find_sources(cfg.data)
    volumes = [src.image for src in sources]
    val_volumes = [src.image for src in val_sources]
    out = _prepare_out(cfg, ctx, "mae")
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
                **_dataset_info(cfg.data, {"train": len(volumes), "val": len(val_volumes)}),
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

    job = _Job(
        name="pretrain-mae",
        cfg=cfg,
        ctx=ctx,
        out=out,
        model=net,
        optimizer=optimizer,
        train_set=train_set,
        loader_kwargs={
            "batch_size": cfg.batch_size,
            "num_workers": _num_workers(cfg.num_workers, device),
            "drop_last": True,
            "pin_memory": device.type == "cuda",
        },
        steps_per_epoch=steps,
        lr_at=lambda t: warmup_cosine_lr(cfg.lr, t, total, warmup),
        step=step,
        validate=validate,
        best_key="loss",
        best_higher=False,
        save_model=save_model,
        provenance=provenance,
    )
    return _run_epochs(job)


def pretrain_mae(cfg: MAEPretrainConfig) -> Path:
    """Pretrain the MAE and return its best checkpoint (``<out>/best.json``)."""
    result = run_mae_pretraining(cfg)
    if result.best is None:
        raise RuntimeError(f"MAE pretraining in {cfg.out} produced no checkpoint.")
    return result.best


def iter_epoch_rows(out: str | Path) -> Iterator[dict[str, str]]:
    """Rows of a run's CSV log."""
    path = Path(out) / LOG_NAME
    with open(path, newline="") as f:
        yield from csv.DictReader(f)


__all__ = [
    "MAEPretrainConfig",
    "TrainConfig",
    "TrainResult",
    "VARIANTS",
    "parse_overrides",
    "pretrain_mae",
    "run_mae_pretraining",
    "run_training",
    "train",
    "variant_config",
]
