"""What a run costs on a device (memory, time, batch size), measured on the model itself."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from napari_nstseg.inference.batching import BatchRunner, is_oom, release_cache, synchronize
from napari_nstseg.inference.device import (
    device_memory_available,
    host_memory_available,
    select_device,
)
from napari_nstseg.inference.prediction import MapRequest, Prediction
from napari_nstseg.inference.roi import spacing_yx

# Leave this share of the free memory alone: allocator fragmentation, other processes, the OS.
MEMORY_HEADROOM = 0.85
MAX_AUTO_BATCH = 32
# CPU/MPS cost probe: the largest slice side run to measure. Per-pixel time grows with the size
# (caches), so a probe far below the working size under-estimates; 256 costs a quarter of a
# 512 x 512 slice.
CPU_PROBE_SIDE = 256


@dataclass(frozen=True)
class Estimate:
    """What a run will cost on a device, and whether it can run there at all.

    ``bytes_peak`` is device memory at ``batch_size`` (weights + activations; on the CPU also the
    maps kept), ``host_bytes`` the RAM the kept maps take, ``seconds`` the model time for all
    slices. ``fits`` is False only when even one slice per batch cannot fit; ``reason`` says why
    in one sentence. ``method`` says how the per-slice cost was obtained.
    """

    bytes_peak: int
    seconds: float
    batch_size: int
    fits: bool
    reason: str
    host_bytes: int = 0
    bytes_per_slice: int = 0
    seconds_per_slice: float = 0.0
    bytes_available: int = 0
    working_shape: tuple[int, int] = (0, 0)
    device: str = "cpu"
    method: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["working_shape"] = list(self.working_shape)
        return d


@dataclass(frozen=True)
class SliceCost:
    fixed_bytes: int
    bytes_per_slice: int
    seconds_fixed: float
    seconds_per_pixel: float
    method: str


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


class CostEstimator(BatchRunner):
    """The cost side of the Segmenter (its base class): per-slice memory and time measured on the
    device, cached per slice size, and the batch size that fits."""

    _costs: dict[tuple, SliceCost]
    _mae: nn.Module | None

    def _model_on(self, device: torch.device) -> tuple[nn.Module, nn.Module | None]:
        if device == self.device:
            return self.model, self._mae
        mae = copy.deepcopy(self._mae).to(device) if self._mae is not None else None
        return copy.deepcopy(self.model).to(device, memory_format=self._memory_format(device)), mae

    def _slice_cost(
        self, device: torch.device, shape_yx: tuple[int, int], sp_yx, maps: MapRequest
    ) -> SliceCost:
        """Measure the per-slice memory and time of one batch on ``device`` (cached)."""
        if maps.residual or self.ssl_guidance:
            self._load_mae()
        key = (str(device), tuple(shape_yx), tuple(sp_yx), maps)
        if key in self._costs:
            return self._costs[key]
        model, mae = self._model_on(device)
        saved = self._mae
        self._mae = mae
        try:
            if device.type == "cuda":
                cost = self._measure_cuda(model, device, shape_yx, sp_yx, maps)
            else:
                cost = self._measure_by_modules(model, device, shape_yx, sp_yx, maps)
        finally:
            self._mae = saved
        self._costs[key] = cost
        return cost

    def _dummy_slices(self, n: int, shape_yx, device: torch.device) -> torch.Tensor:
        # Soft tissue everywhere: the cost does not depend on the values.
        return torch.full((n, self.preprocessing.n_channels, *shape_yx), 40.0, device=device)

    def _measure_cuda(self, model, device, shape_yx, sp_yx, maps) -> SliceCost:
        """Exact: peak allocated bytes and time of batches of 1 and 2 at the real slice size."""
        release_cache(device)
        base = torch.cuda.memory_allocated(device)

        def run(n: int) -> tuple[int, float]:
            hu = self._dummy_slices(n, shape_yx, device)
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            self._infer(model, device, hu, sp_yx, list(range(n)), maps, {})
            torch.cuda.synchronize(device)
            return torch.cuda.max_memory_allocated(device) - base, time.perf_counter() - t0

        run(1)  # first call pays for cuDNN autotuning and lazy initialisation
        peak1, t1 = run(1)
        try:
            peak2, t2 = run(2)
        except Exception as exc:
            if not is_oom(exc):
                raise
            release_cache(device)
            return SliceCost(0, peak1, 0.0, t1 / math.prod(shape_yx), "measured, batch 1 only")
        per = max(peak2 - peak1, 1)
        pixels = math.prod(shape_yx)
        return SliceCost(
            fixed_bytes=max(peak1 - per, 0),
            bytes_per_slice=per,
            seconds_fixed=max(t1 - (t2 - t1), 0.0),
            seconds_per_pixel=max(t2 - t1, 1e-9) / pixels,
            method=f"measured on {device} at {shape_yx[0]}x{shape_yx[1]}, batches of 1 and 2",
        )

    def _measure_by_modules(self, model, device, shape_yx, sp_yx, maps) -> SliceCost:
        """CPU/MPS: no allocator statistics, so add up every layer's output on a probe slice.

        Counting every module output as if none were ever freed is usually well above the true
        peak (inference mode frees most of them at once), the safe side for "does it fit". The
        probe is a working-grid slice of side up to ``CPU_PROBE_SIDE``; its memory and time (of a
        second, hook-free call) are scaled linearly in the pixel count to the real working
        size: convolutions dominate the cost, and the non-local attention, quadratic in pixels,
        runs at stride 16 where it is minor.
        """
        m = self.preprocessing.pad_multiple
        wy, wx = self.working_shape(shape_yx, (1.0, *sp_yx))
        side = max(m, min(CPU_PROBE_SIDE, max(wy, wx)) // m * m)
        probe = (side, side)
        modules = [model] + ([self._mae] if self._mae is not None else [])
        work_sp = self.preprocessing.working_spacing_mm
        sp = (work_sp, work_sp) if work_sp is not None else (1.0, 1.0)
        total = [0]

        def hook(_module, _inputs, output) -> None:
            for t in output if isinstance(output, (tuple, list)) else (output,):
                if isinstance(t, torch.Tensor):
                    total[0] += t.numel() * t.element_size()

        hu = self._dummy_slices(1, probe, device)
        handles = [
            sub.register_forward_hook(hook)
            for mod in modules
            for sub in mod.modules()
            if not list(sub.children())
        ]
        try:
            self._infer(model, device, hu, sp, [0], maps, {})
        finally:
            for h in handles:
                h.remove()
        # Timed apart from the hooked call, which pays for the hooks, lazy initialisation and
        # oneDNN's kernels for a new shape: timing that one put estimates at 2-3x the real run.
        t0 = time.perf_counter()
        self._infer(model, device, hu, sp, [0], maps, {})
        synchronize(device)
        seconds = time.perf_counter() - t0
        scale = (wy * wx) / (side * side)
        return SliceCost(
            fixed_bytes=0,
            bytes_per_slice=int(total[0] * scale),
            seconds_fixed=0.0,
            seconds_per_pixel=seconds / (side * side),
            method=(
                f"layer outputs summed and time taken at {side}x{side} on {device}, scaled to "
                f"the working size {wy}x{wx} (memory usually over-estimated)"
            ),
        )

    def estimate(
        self,
        volume_shape: Sequence[int],
        spacing: Sequence[float],
        device: str | torch.device | None = None,
        maps: MapRequest | None = None,
    ) -> Estimate:
        """Memory and time for predicting a (z, y, x) volume (or ROI) on ``device``.

        On CUDA the per-slice cost is measured exactly (peak allocated bytes and time for
        batches of 1 and 2 at the real size); on the CPU and MPS it is measured on a small slice
        and scaled (see ``_measure_by_modules``). The batch size is the largest, up to
        ``config.batch_size`` (32 when None), that fits in ``MEMORY_HEADROOM`` of the free
        memory; ``fits`` is False only if a batch of one slice does not.
        """
        shape = tuple(int(s) for s in volume_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"volume shape must be (z, y, x), all positive, got {volume_shape!r}")
        dev = self.device if device is None else select_device(device)
        maps = maps or self.config.maps
        sp_yx = spacing_yx(spacing)
        work = self.working_shape(shape[1:], spacing)
        weights = sum(
            t.numel() * t.element_size()
            for mod in (self.model, self._mae)
            if mod is not None
            for t in (*mod.parameters(), *mod.buffers())
        )
        cap = self.config.batch_size or MAX_AUTO_BATCH
        cost = None
        try:
            cost = self._slice_cost(dev, shape[1:], sp_yx, maps)
        except Exception as exc:
            if not is_oom(exc):
                raise
        if cost is None:
            release_cache(dev)
            return Estimate(
                bytes_peak=0,
                seconds=math.inf,
                batch_size=0,
                fits=False,
                reason=(
                    f"A single {shape[1]}x{shape[2]} slice (working grid {work[0]}x{work[1]}) "
                    f"runs out of memory on {dev}; use a smaller ROI, a coarser working spacing "
                    "or another device."
                ),
                host_bytes=Prediction.bytes_for(shape, maps, self.n_stages, self.config.prob_dtype),
                working_shape=work,
                device=str(dev),
                method="out of memory",
            )
        # After measuring: the model has now shown how many stage maps it makes.
        host = Prediction.bytes_for(shape, maps, self.n_stages, self.config.prob_dtype)
        seconds_per_slice = cost.seconds_fixed + cost.seconds_per_pixel * math.prod(work)
        host_free = host_memory_available()
        shared = dev.type != "cuda"  # CPU and Apple unified memory hold the maps too
        free = device_memory_available(dev)
        budget = int((free if dev.type == "cuda" else min(free, host_free)) * MEMORY_HEADROOM)
        # Weights already on the device are not part of the free memory just measured.
        resident = weights if dev != self.device else 0
        fixed = resident + cost.fixed_bytes + (host if shared else 0)
        need_one = fixed + cost.bytes_per_slice
        room = budget - fixed
        batch = int(max(1, min(cap, room // max(cost.bytes_per_slice, 1), shape[0])))
        fits_device = need_one <= budget
        fits_host = shared or host <= host_free * MEMORY_HEADROOM
        peak = weights + cost.fixed_bytes + batch * cost.bytes_per_slice + (host if shared else 0)
        if not fits_device:
            reason = (
                f"One {shape[1]}x{shape[2]} slice (working grid {work[0]}x{work[1]}) needs about "
                f"{format_bytes(need_one)} on {dev} but only {format_bytes(budget)} is usable; "
                "use a smaller ROI, fewer maps, a coarser working spacing or another device."
            )
        elif not fits_host:
            reason = (
                f"The maps for a {shape[0]}x{shape[1]}x{shape[2]} volume need "
                f"{format_bytes(host)} of RAM but only {format_bytes(host_free)} is free; ask "
                "for fewer maps or a smaller ROI."
            )
        else:
            reason = (
                f"Fits: batches of {batch} need about {format_bytes(peak)} of the "
                f"{format_bytes(budget)} usable on {dev}."
            )
        return Estimate(
            bytes_peak=int(peak),
            seconds=float(seconds_per_slice * shape[0]),
            batch_size=batch if fits_device and fits_host else 0,
            fits=bool(fits_device and fits_host),
            reason=reason,
            host_bytes=int(host),
            bytes_per_slice=int(cost.bytes_per_slice),
            seconds_per_slice=float(seconds_per_slice),
            bytes_available=int(budget),
            working_shape=work,
            device=str(dev),
            method=cost.method,
        )
