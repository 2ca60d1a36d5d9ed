"""Optimizer and learning-rate schedule: parameter groups (no decay on biases and norms, the
reference's 2x bias lr for SGD), poly decay (PFNet / CDI-NSTSEG), warm-up + cosine (MAE), and
their resumable state files (``<stem>.state.safetensors`` + ``<stem>.state.json``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from napari_nstseg.io.atomic import atomic_write

if TYPE_CHECKING:
    from napari_nstseg.training.config import TrainConfig


# Left to itself PyTorch updates parameters one by one in Python on the CPU (foreach only on
# GPUs): with the ~450 small tensors of these models py-spy put 31 % of the wall time of CPU
# training there. The foreach kernels do the same update per list of tensors. Not the fused
# ones: on the CPU (torch 2.13) they walk parameter, gradient and state as one run of memory,
# and a gradient or state laid out otherwise than its channels-last parameter was measured to
# get a wrong update.
FOREACH = True


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    wd = cfg.resolved_weight_decay
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            param_groups(model, wd, bias_lr_scale=2.0),
            lr=cfg.lr,
            momentum=cfg.momentum,
            foreach=FOREACH,
        )
    return torch.optim.AdamW(param_groups(model, wd), lr=cfg.lr, foreach=FOREACH)


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
