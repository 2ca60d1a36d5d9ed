"""Checkpoints as safetensors plus a JSON description; nothing is ever unpickled.

One checkpoint is two files sharing a stem: ``<stem>.safetensors`` (the tensors) and
``<stem>.json`` (what the network is, how its input was preprocessed, where it came from, the
operating point it recommends, if any, and the sha256 of the tensor file). Any of ``<stem>``,
``<stem>.json`` or ``<stem>.safetensors`` names the checkpoint. The JSON is bound to the
tensors too: the tensor file's header records a sha256 of the JSON's content, so editing either
file by hand makes loading fail loudly.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from napari_nstseg.io.atomic import atomic_write, file_sha256

FORMAT_VERSION = 1
KINDS = ("segmentation", "mae")
_CONTENT_KEYS = ("format_version", "kind", "model_config", "preprocessing", "provenance")
# The organ-mode operating point's key, beside the whole-scan "postprocess".
ORGAN_POINT = "organ_postprocess"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: missing, corrupted, modified or not matching."""


def checkpoint_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(tensor file, JSON file) for a checkpoint named by its stem or either file."""
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def _content_sha256(meta: dict[str, Any]) -> str:
    content = {key: meta.get(key) for key in _CONTENT_KEYS}
    # Optional entries are hashed only when present, so files written before them still verify.
    for key in ("mae", "postprocess", "organ_search"):
        if key in meta:
            content[key] = meta[key]
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _infer_kind(model: nn.Module) -> str:
    from napari_nstseg.models.mae import MaskedAutoencoder

    return "mae" if isinstance(model, MaskedAutoencoder) else "segmentation"


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    model_config: dict[str, Any],
    preprocessing: dict[str, Any],
    provenance: dict[str, Any],
    dtype: torch.dtype | None = None,
    kind: str | None = None,
    mae: str | None = None,
    postprocess: dict[str, Any] | None = None,
    description: str | None = None,
    organ_search: dict[str, Any] | None = None,
    organ_postprocess: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``<stem>.safetensors`` and ``<stem>.json``; returns both paths.

    ``dtype`` (e.g. torch.float16) stores floating-point tensors at that precision to halve the
    file; integer buffers are kept as they are. ``kind`` defaults to "mae" for a
    MaskedAutoencoder and "segmentation" otherwise. ``mae`` names the MAE checkpoint (a path
    relative to this one) whose residual maps go with a segmentation model. ``postprocess``
    ({"threshold": t, "min_lesion_mm": m, "min_depth_mm": d}) is the operating point the engine
    uses by default (chosen on validation data with `nstseg tune-postprocess`); it is hashed
    with the rest of the JSON. ``description``: the one line that lists the weights by name
    (bundled checkpoints). ``organ_search`` ({"field_mm", "min_zoom", "max_zoom",
    "margin_mm"}): the organ-mode zoom the weights were trained for (organ crops,
    training/organ_crops.py), which ``OrganSearch.for_weights`` reads; hashed too.
    ``organ_postprocess``: the operating point for organ mode (chosen on validation inside the
    organs), where it differs from the whole-scan one. Both files are written atomically.
    """
    kind = kind or _infer_kind(model)
    if kind not in KINDS:
        raise CheckpointError(f"Checkpoint kind must be one of {KINDS}, got {kind!r}")
    if dtype is not None and not dtype.is_floating_point:
        raise CheckpointError(f"Checkpoint dtype must be a floating-point dtype, got {dtype}")
    tensor_path, json_path = checkpoint_paths(path)
    tensor_path.parent.mkdir(parents=True, exist_ok=True)

    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "model_config": model_config,
        "preprocessing": preprocessing,
        "provenance": provenance,
    }
    if mae:
        meta["mae"] = mae
    if description:
        meta["description"] = description
    if organ_search is not None:
        meta["organ_search"] = dict(organ_search)
    for key, point in (("postprocess", postprocess), (ORGAN_POINT, organ_postprocess)):
        if point is not None:
            from napari_nstseg.postprocess import PostprocessConfig

            try:
                meta[key] = PostprocessConfig.from_dict(point).to_dict()
            except (TypeError, ValueError) as exc:
                raise CheckpointError(f"Unusable operating point {point!r}: {exc}") from None
    try:
        # Round-trip through JSON now so the hash below is of exactly what will be read back.
        meta = json.loads(json.dumps(meta))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"Checkpoint metadata is not JSON-serialisable: {exc}") from exc

    tensors = {}
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        # Clones so tensors sharing storage are saved as independent entries.
        tensors[name] = t.contiguous().clone()
    # One key only: safetensors writes its metadata in hash-map order, which changes from run to
    # run, and the same weights must make the same file (the JSON records its sha256).
    header = {"nstseg_json_sha256": _content_sha256(meta)}
    atomic_write(tensor_path, lambda tmp: save_file(tensors, tmp, metadata=header))

    meta["tensors"] = {
        "file": tensor_path.name,
        "sha256": file_sha256(tensor_path),
        "dtype": str(dtype).removeprefix("torch.") if dtype is not None else "native",
        "count": len(tensors),
    }

    def write_json(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, sort_keys=False)
            f.write("\n")

    atomic_write(json_path, write_json)
    return tensor_path, json_path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's JSON, validated against its tensor file (sha256 both ways)."""
    tensor_path, json_path = checkpoint_paths(path)
    if not json_path.is_file():
        raise CheckpointError(f"Checkpoint description {json_path} does not exist.")
    if not tensor_path.is_file():
        raise CheckpointError(f"Checkpoint tensor file {tensor_path} does not exist.")
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"Checkpoint description {json_path} is not valid JSON: {exc}"
        ) from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"Checkpoint description {json_path} is not a JSON object.")
    missing = [k for k in (*_CONTENT_KEYS, "tensors") if k not in meta]
    if missing:
        raise CheckpointError(f"Checkpoint description {json_path} lacks {', '.join(missing)}.")
    if meta["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"Checkpoint {json_path} has format version {meta['format_version']!r}; "
            f"this napari-nstseg reads version {FORMAT_VERSION}."
        )
    if meta["kind"] not in KINDS:
        raise CheckpointError(f"Checkpoint {json_path} has unknown kind {meta['kind']!r}.")
    expected = meta["tensors"].get("sha256") if isinstance(meta["tensors"], dict) else None
    if file_sha256(tensor_path) != expected:
        raise CheckpointError(
            f"Checkpoint tensor file {tensor_path} does not match the sha256 recorded in "
            f"{json_path.name}; it is corrupted or was modified after saving."
        )
    try:
        with safe_open(str(tensor_path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"Checkpoint tensor file {tensor_path} is unreadable: {exc}") from exc
    if header.get("nstseg_json_sha256") != _content_sha256(meta):
        raise CheckpointError(
            f"Checkpoint description {json_path} was modified after saving (its content no "
            f"longer matches {tensor_path.name}); restore the original file."
        )
    return meta


def read_operating_point(
    checkpoint: str | os.PathLike | Mapping[str, Any],
    path: str | os.PathLike | None = None,
    organs: bool = False,
) -> Any:
    """The operating point (a PostprocessConfig) a checkpoint recommends, its "postprocess"
    entry written by `nstseg tune-postprocess`; None when it names none. ``organs``: the one
    for organ mode, its "organ_postprocess" entry where it has one, else the same.

    ``checkpoint`` is the checkpoint's JSON as read (:func:`read_metadata`; ``path``, where it
    was read from, is named in errors) or a path naming the checkpoint, whose JSON alone is then
    read (the tensors are checked when they are loaded). Raises CheckpointError for a file that
    cannot be read or an entry that cannot be used.
    """
    from napari_nstseg.postprocess import PostprocessConfig

    if not isinstance(checkpoint, Mapping):
        path, checkpoint = checkpoint, _read_json(checkpoint)
    key = ORGAN_POINT if organs and checkpoint.get(ORGAN_POINT) is not None else "postprocess"
    entry = checkpoint.get(key)
    if entry is None:
        return None
    try:
        return PostprocessConfig.from_dict(entry)
    except (TypeError, ValueError, AttributeError) as exc:
        where = "" if path is None else f" {checkpoint_paths(path)[1]}"
        raise CheckpointError(
            f"The checkpoint{where} recommends an unusable operating point ('{key}' entry): {exc}"
        ) from None


def _read_json(path: str | os.PathLike) -> Mapping[str, Any]:
    json_path = checkpoint_paths(path)[1]
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"Checkpoint description {json_path} is unreadable: {exc}") from None
    if not isinstance(meta, Mapping):
        raise CheckpointError(f"Checkpoint description {json_path} is not a JSON object.")
    return meta


def _default_build(meta: dict[str, Any]) -> nn.Module:
    config = meta["model_config"]
    if meta["kind"] == "mae":
        from napari_nstseg.models.mae import MAEConfig, MaskedAutoencoder

        return MaskedAutoencoder(MAEConfig.from_dict(config))
    from napari_nstseg.models.build import build_model
    from napari_nstseg.models.config import ModelConfig

    return build_model(ModelConfig.from_dict(config))


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_checkpoint(
    path: str | os.PathLike,
    build_fn: Callable[[dict[str, Any]], nn.Module] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from the JSON alone and load its tensors; returns (model in eval, meta).

    ``build_fn(model_config)`` replaces the default builder (ModelConfig + build_model for
    "segmentation", MAEConfig for "mae"). Tensors stored at lower precision are cast to the
    model's own dtypes. Missing, unexpected or mis-shaped tensors are refused by name.
    """
    tensor_path, json_path = checkpoint_paths(path)
    meta = read_metadata(path)
    try:
        model = build_fn(meta["model_config"]) if build_fn else _default_build(meta)
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"Checkpoint {json_path} describes a model that cannot be built: {exc}"
        ) from exc

    own = model.state_dict()
    with safe_open(str(tensor_path), framework="pt", device="cpu") as f:
        stored_names = list(f.keys())
        missing = sorted(set(own) - set(stored_names))
        unexpected = sorted(set(stored_names) - set(own))
        problems = []
        if missing:
            problems.append(f"missing tensor(s) {_names(missing)}")
        if unexpected:
            problems.append(f"unexpected tensor(s) {_names(unexpected)}")
        shapes = {name: tuple(f.get_slice(name).get_shape()) for name in stored_names}
        wrong = [
            f"{name} is {shapes[name]} but the model needs {tuple(own[name].shape)}"
            for name in sorted(set(own) & set(stored_names))
            if shapes[name] != tuple(own[name].shape)
        ]
        if wrong:
            more = f"; and {len(wrong) - 8} more" if len(wrong) > 8 else ""
            problems.append("mis-shaped tensor(s): " + "; ".join(wrong[:8]) + more)
        if problems:
            raise CheckpointError(
                f"Checkpoint {tensor_path} does not fit the model described in "
                f"{json_path.name}: " + "; ".join(problems) + "."
            )
        state = {name: f.get_tensor(name).to(own[name].dtype) for name in stored_names}
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, meta
