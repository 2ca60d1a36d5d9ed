"""Batches through the network: one batch in, its maps out, and the loop that halves on OOM."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_nstseg.inference.device import autocast
from napari_nstseg.inference.engine_config import EngineConfig, ProgressEvent
from napari_nstseg.inference.maps import batch_maps
from napari_nstseg.inference.prediction import MapRequest
from napari_nstseg.inference.residual import residual_maps
from napari_nstseg.inference.roi import spacing_yx, spacing_zyx
from napari_nstseg.postprocess import PostprocessConfig
from napari_nstseg.preprocessing import (
    PreprocessConfig,
    context_planes,
    normalized_air,
    resample_slices_to_working,
    window_normalize,
)


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    # MPS and some CUDA paths report exhaustion as a plain RuntimeError.
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def release_cache(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class BatchRunner:
    """The batch side of the Segmenter (its base class): one batch of slices through the model,
    and the loop over batches with out-of-memory back-off that ``Segmenter.iter_predict`` runs.
    """

    # Set by Segmenter.__init__, which also provides _load_mae.
    device: torch.device
    config: EngineConfig
    preprocessing: PreprocessConfig
    postprocess: PostprocessConfig
    model: nn.Module
    ssl_guidance: bool
    _mae_preprocessing: PreprocessConfig | None
    _stages_seen: int | None

    def _memory_format(self, device: torch.device) -> torch.memory_format:
        if self.config.channels_last and device.type in ("cpu", "cuda"):
            return torch.channels_last
        return torch.contiguous_format

    def _infer(
        self,
        model: nn.Module,
        device: torch.device,
        hu: torch.Tensor,
        sp_yx: tuple[float, float],
        z: Sequence[int],
        maps: MapRequest,
        timings: dict[str, float],
    ) -> dict[str, Any]:
        """HU planes (N, C, h, w) on ``device`` (C: ``preprocessing.slice_offsets_mm``) -> host
        arrays (N, h, w) ready for Prediction.store."""
        pp = self.preprocessing
        t0 = time.perf_counter()
        n, c = hu.shape[:2]
        x = window_normalize(hu.reshape(n * c, *hu.shape[2:]), pp)
        # A fixed pad value (air): the slices' own minimum would make results depend on batching.
        x, info = resample_slices_to_working(x, sp_yx, pp, pad_value=normalized_air(pp))
        x = x.reshape(n, c, *x.shape[-2:]).contiguous(memory_format=self._memory_format(device))
        synchronize(device)
        t1 = time.perf_counter()
        kwargs: dict[str, Any] = {}
        residual = None
        with torch.inference_mode(), autocast(device, self.config.amp):
            if maps.residual or self.ssl_guidance:
                centre = hu[:, pp.center_channel]
                residual = residual_maps(
                    self._load_mae(),
                    centre,
                    sp_yx,
                    z,
                    pp,
                    self._mae_preprocessing,
                    self.config,
                )
                if self.ssl_guidance:
                    kwargs["residual"] = residual
            synchronize(device)
            t2 = time.perf_counter()
            if maps.scale_weights:
                kwargs["return_scale_weights"] = True
            out = model(x, **kwargs)
            mirrored = None
            if self.config.mirror:
                if "residual" in kwargs:
                    kwargs["residual"] = kwargs["residual"].flip(-1)
                mirrored = model(x.flip(-1), **kwargs)
        self._stages_seen = len(out.stages)
        synchronize(device)
        t3 = time.perf_counter()
        result = batch_maps(
            out,
            mirrored,
            residual,
            maps,
            info,
            self.postprocess.threshold,
            self.config.prob_dtype,
        )
        t4 = time.perf_counter()
        for name, seconds in (
            ("preprocess", t1 - t0),
            ("residual", t2 - t1),
            ("model", t3 - t2),
            ("postprocess", t4 - t3),
        ):
            if name != "residual" or residual is not None:
                timings[name] = timings.get(name, 0.0) + seconds
        return result

    def _batches(self, vol, zs, box, spacing, maps, batch, pred, start) -> Iterator[ProgressEvent]:
        """The batch loop of :meth:`iter_predict`, with CUDA out-of-memory back-off."""
        z0, z1, y0, y1, x0, x1 = box
        sp_z, sp_yx = spacing_zyx(spacing)[0], spacing_yx(spacing)
        offsets = self.preprocessing.slice_offsets_mm
        if len(offsets) > 1 and len(spacing) != 3:
            raise ValueError(
                f"this model also looks at the planes {list(offsets)} mm around each slice, so "
                f"it needs the (z, y, x) spacing, not {tuple(spacing)}"
            )
        i = 0
        while i < len(zs):
            chunk = zs[i : i + batch]
            out_of_memory = False
            try:
                # Context planes come from the whole volume, also beyond an ROI's slices.
                planes = context_planes(vol, chunk, sp_z, offsets, (slice(y0, y1), slice(x0, x1)))
                hu = torch.from_numpy(planes).to(self.device)
                arrays = self._infer(self.model, self.device, hu, sp_yx, chunk, maps, pred.timings)
            except Exception as exc:
                if not is_oom(exc):
                    raise
                out_of_memory = True
            if out_of_memory:
                # Outside the except block, so the traceback's activations can be freed.
                hu = None
                release_cache(self.device)
                if batch == 1:
                    raise RuntimeError(
                        f"The {self.device} device ran out of memory on a single "
                        f"{y1 - y0}x{x1 - x0} slice; use a smaller ROI or another device."
                    ) from None
                batch = max(1, batch // 2)
                pred.info["oom_backoffs"] = pred.info.get("oom_backoffs", 0) + 1
                continue
            level = arrays.pop("scale_level", None)
            if level is not None:
                pred.scale_level = level
            pred.store(np.asarray(chunk), (slice(y0, y1), slice(x0, x1)), **arrays)
            pred.info["batch_size"] = batch
            i += len(chunk)
            elapsed = time.perf_counter() - start
            yield ProgressEvent(i, len(zs), tuple(chunk), batch, elapsed, pred)
