"""The epoch loop shared by segmentation training and MAE pretraining: resume from the last epoch
checkpoint, epochs with a progress bar, validation, the CSV log, epoch / best / final checkpoints.

Every epoch writes a resumable checkpoint (model: safetensors + JSON via ``save_checkpoint``;
optimizer and schedule: ``<stem>.state.safetensors`` + ``<stem>.state.json``), a row of the CSV
log, and ``best`` when validation improves. Randomness is a function of (seed, epoch, index), so
a run resumed from an epoch checkpoint continues exactly as if it had never stopped.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from napari_nstseg.io.atomic import atomic_write
from napari_nstseg.models.checkpoint import load_checkpoint
from napari_nstseg.training.distributed import DistContext, sync_buffers, unwrap
from napari_nstseg.training.optimizer import (
    optimizer_state_from_files,
    optimizer_state_to_files,
    set_lr,
)
from napari_nstseg.training.run_log import CONFIG_NAME, LOG_NAME, CsvLog

STATE_SUFFIX = ".state"
_EPOCH_RE = re.compile(r"^epoch_(\d+)\.json$")


@dataclass
class TrainResult:
    """What a run leaves: the trained model (this rank's copy), the best checkpoint and the log."""

    model: nn.Module
    best: Path | None
    final: Path | None
    history: list[dict[str, Any]]


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + int(rank)) % (2**63 - 1)


def num_workers(requested: int | None, device: torch.device) -> int:
    if requested is not None:
        return int(requested)
    # On a small CPU the workers would steal the cores the model needs.
    return 0 if device.type == "cpu" else min(4, os.cpu_count() or 1)


@dataclass
class Job:
    """Everything the epoch loop needs from one kind of training (segmentation or MAE)."""

    name: str
    cfg: Any
    ctx: DistContext
    out: Path
    model: nn.Module  # possibly DDP-wrapped
    optimizer: torch.optim.Optimizer
    train_set: Any
    num_workers: int  # data-loader workers (batch size from cfg, pinning from the device)
    steps_per_epoch: int
    lr_at: Callable[[int], float]
    step: Callable[[dict[str, Any], int], dict[str, torch.Tensor]]
    validate: Callable[[], dict[str, float]]
    best_key: str  # validation metric that picks "best"
    best_higher: bool
    save_model: Callable[[Path, dict[str, Any]], None]
    provenance: Callable[[], dict[str, Any]]


def run_epochs(job: Job) -> TrainResult:
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
            unwrap(job.model).load_state_dict(loaded.state_dict())
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
    batch_size = cfg.batch_size
    loader_kwargs = {
        "batch_size": batch_size,
        "num_workers": job.num_workers,
        "drop_last": True,
        "pin_memory": ctx.device.type == "cuda",
    }
    best_path = out / "best.json" if (out / "best.json").is_file() else None
    for epoch in range(start_epoch, cfg.epochs + 1):
        torch.manual_seed(epoch_seed(cfg.seed, epoch, ctx.rank))
        job.train_set.set_epoch(epoch)
        sampler.set_epoch(epoch)
        loader = DataLoader(job.train_set, sampler=sampler, **loader_kwargs)
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
        sync_buffers(unwrap(job.model), ctx)
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
    return TrainResult(unwrap(job.model), best_path, final, history)


def prepare_out(cfg: Any, ctx: DistContext, kind: str) -> Path:
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
