"""Multi-scale map assembly: a batch's model outputs stacked, taken back to the slice grid."""

from __future__ import annotations

from typing import Any

import torch

from napari_nstseg.inference.prediction import MapRequest, encode_probability
from napari_nstseg.preprocessing import resample_back


def model_maps(out: Any, maps: MapRequest, level: int | None) -> torch.Tensor:
    """The model's maps one batch keeps, as probabilities stacked on dim 1: final, then coarse,
    stages and the scale weights of fused ``level`` as ``maps`` asks."""
    planes = [out.final.float().sigmoid()]
    if maps.coarse:
        planes.append(out.coarse.float().sigmoid())
    if maps.stages:
        planes.extend(s.float().sigmoid() for s in out.stages)
    if level is not None:
        planes.append(out.scale_weights[level].float())
    return torch.cat(planes, dim=1)


def batch_maps(
    out: Any,
    mirrored: Any | None,
    residual: torch.Tensor | None,
    maps: MapRequest,
    info: Any,
    threshold: float,
    prob_dtype: str,
) -> dict[str, Any]:
    """Host arrays (N, h, w) ready for Prediction.store, from the model's output ``out`` (and
    ``mirrored``, its output on the mirrored slices under test-time mirroring), the residual
    maps and the working-grid ``info`` from ``resample_slices_to_working``; the mask is the
    plain ``threshold`` cut."""
    # Every map goes back to the slice grid in one resampling call.
    with torch.inference_mode():
        n_levels = len(out.scale_weights or ())
        level = None
        if maps.scale_weights and n_levels:
            # SegOutput lists fused levels deepest first, so the finest is the last one.
            level = n_levels - 1 if maps.scale_level is None else maps.scale_level
            if not -n_levels <= level < n_levels:
                raise ValueError(
                    f"scale_level {level} does not exist: this model fuses {n_levels} levels"
                )
        stack = model_maps(out, maps, level)
        if mirrored is not None:
            # Probabilities are averaged, not logits, as nnU-Net does.
            stack = (stack + model_maps(mirrored, maps, level).flip(-1)) * 0.5
        if maps.residual:
            stack = torch.cat([stack, residual], dim=1)
        n, k = stack.shape[:2]
        back = resample_back(stack.reshape(n * k, *stack.shape[-2:]), info)
        back = back.reshape(n, k, *back.shape[-2:])
        final = back[:, 0]
        result: dict[str, Any] = {
            "mask": (final >= threshold).to(torch.uint8).cpu().numpy(),
            "final": encode_probability(final, prob_dtype),
        }
        c = 1
        if maps.coarse:
            result["coarse"] = encode_probability(back[:, c], prob_dtype)
            c += 1
        if maps.stages:
            result["stages"] = [
                encode_probability(back[:, c + i], prob_dtype) for i in range(len(out.stages))
            ]
            c += len(out.stages)
        if level is not None:
            w = out.scale_weights[level].shape[1]
            result["scale_weights"] = encode_probability(back[:, c : c + w], prob_dtype)
            result["scale_level"] = level % n_levels
            c += w
        if maps.residual:
            result["residual"] = back[:, c].to(torch.float16).cpu().numpy()
    return result
