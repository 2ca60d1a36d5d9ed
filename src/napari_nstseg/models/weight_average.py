"""Checkpoint weight averaging (Izmailov et al. 2018, SWA; Wortsman et al. 2022, model soups).

Weights of one model fine-tuned from another lie in one basin, so their element-wise mean is a
model in its own right: one file, one forward pass, often better than either end. BatchNorm
running statistics are averaged like the weights (no data pass); BatchNorm's step counters
keep the largest, any other integer buffer must agree.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from napari_nstseg.models.checkpoint import (
    CheckpointError,
    checkpoint_paths,
    load_checkpoint,
    save_checkpoint,
)

# What must match for two checkpoints' tensors to mean the same thing.
_SAME = ("kind", "model_config", "preprocessing")


def average_checkpoints(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    weights: Sequence[float] | None = None,
    dtype: torch.dtype | None = None,
    description: str | None = None,
) -> tuple[Path, Path]:
    """Write the (weighted) mean of ``paths``' tensors as a new checkpoint at ``out``.

    The checkpoints must describe the same network and preprocessing; the result keeps the
    first one's provenance, organ search and MAE reference (name the checkpoint trained last
    first: its `--init` chain then covers every stage) but no operating point (tune it again:
    averaged weights move the probabilities). Its provenance adds every source and its weight.
    """
    if len(paths) < 2:
        raise CheckpointError("Averaging needs at least two checkpoints.")
    w = [1.0] * len(paths) if weights is None else [float(x) for x in weights]
    if len(w) != len(paths) or any(x <= 0 for x in w):
        raise CheckpointError(
            f"Give one positive weight per checkpoint ({len(paths)}), got {list(weights or [])}."
        )
    total = sum(w)
    w = [x / total for x in w]

    model, first = load_checkpoint(paths[0])
    mean = {k: v.double() * w[0] if v.is_floating_point() else v.clone()
            for k, v in model.state_dict().items()}  # fmt: skip
    for path, share in zip(paths[1:], w[1:], strict=True):
        other, meta = load_checkpoint(path)
        for key in _SAME:
            if meta[key] != first[key]:
                raise CheckpointError(
                    f"{checkpoint_paths(path)[1]} differs from {checkpoint_paths(paths[0])[1]} "
                    f"in its {key}: only checkpoints of one network can be averaged."
                )
        for name, tensor in other.state_dict().items():
            if tensor.is_floating_point():
                mean[name] += tensor.double() * share
            elif name.endswith("num_batches_tracked"):  # a step counter, not a weight
                mean[name] = torch.maximum(mean[name], tensor)
            elif not torch.equal(tensor, mean[name]):
                raise CheckpointError(
                    f"{checkpoint_paths(path)[1]}: integer buffer {name} differs from the "
                    "first checkpoint's; these weights do not share one training history."
                )
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in mean.items()})

    sources: list[dict[str, Any]] = [
        {"checkpoint": str(checkpoint_paths(p)[1]), "weight": round(x, 6)}
        for p, x in zip(paths, w, strict=True)
    ]
    mae = first.get("mae")
    if mae:  # stored relative to the checkpoint: re-anchor it where the average is written
        source = checkpoint_paths(paths[0])[1].parent / mae
        mae = os.path.relpath(source.resolve(), checkpoint_paths(out)[1].parent.resolve())
    provenance = dict(first["provenance"])
    provenance["averaged_from"] = sources
    return save_checkpoint(
        out,
        model,
        first["model_config"],
        first["preprocessing"],
        provenance,
        dtype=dtype,
        kind=first["kind"],
        mae=mae,
        description=description,
        organ_search=first.get("organ_search"),
    )
