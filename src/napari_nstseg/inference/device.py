"""Compute device choice for inference: CUDA, then Apple MPS, then CPU, and what each can hold."""

from __future__ import annotations

import contextlib
import os
import platform
import re

import torch

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda)(?::(\d+))?$")


class DeviceError(ValueError):
    """A requested compute device that this machine or this torch build cannot provide."""


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """Names of the devices torch can run on here, the preferred one first."""
    names: list[str] = []
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        names.extend(["cuda"] if count == 1 else [f"cuda:{i}" for i in range(count)])
    if _mps_available():
        names.append("mps")
    names.append("cpu")
    return names


def select_device(name: str | torch.device | None = "auto") -> torch.device:
    """The torch device for ``name`` ("auto", "cpu", "cuda", "cuda:N", "mps").

    "auto" (or None) picks CUDA if present, then MPS, then the CPU. Naming a device this machine
    lacks raises DeviceError with one sentence saying what is available instead.
    """
    if isinstance(name, torch.device):
        name = str(name)
    text = "auto" if name is None else str(name).strip().lower()
    match = _DEVICE_PATTERN.match(text)
    if match is None:
        raise DeviceError(f"Unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps.")
    kind, index = match.group(1), match.group(2)
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cpu":
        return torch.device("cpu")
    here = ", ".join(available_devices())
    if kind == "cuda":
        if not torch.cuda.is_available():
            build = (
                f"torch {torch.__version__} is a CPU-only build"
                if torch.version.cuda is None
                else "torch finds no CUDA GPU or driver"
            )
            raise DeviceError(f"Device {name!r} was requested but {build}; available here: {here}.")
        i = int(index or 0)
        if i >= torch.cuda.device_count():
            raise DeviceError(
                f"Device {name!r} was requested but this machine has "
                f"{torch.cuda.device_count()} CUDA GPU(s); available here: {here}."
            )
        return torch.device("cuda", i)
    if not _mps_available():
        raise DeviceError(
            f"Device {name!r} (Apple Metal) was requested but torch cannot use it here; "
            f"available here: {here}."
        )
    return torch.device("mps")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX), as oneDNN reports."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def autocast(device: torch.device, amp: bool = True) -> contextlib.AbstractContextManager:
    """Mixed precision on ``device`` as :func:`autocast_dtype` chooses it; a no-op without."""
    dtype = autocast_dtype(device, amp)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def precision_name(dtype: torch.dtype | None) -> str:
    """An autocast dtype as a report names it: "bfloat16", "float16", or "float32" for none."""
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def precision_label(device: torch.device, amp: bool = True) -> str:
    """What ``device`` computes in, for people: "float32", or e.g. "bfloat16 autocast"."""
    dtype = autocast_dtype(device, amp)
    return precision_name(dtype) + ("" if dtype is None else " autocast")


def autocast_dtype(device: torch.device, amp: bool = True) -> torch.dtype | None:
    """Mixed-precision type for ``device``: bf16 on CUDA (fp16 where bf16 is missing), fp16 on
    MPS, bf16 on CPUs with native bf16 (about 1.5x faster convolutions there), none on other
    CPUs, where emulated bf16 is slower than float32."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def host_memory_available() -> int:
    """Bytes of RAM that can be used without swapping."""
    try:
        import psutil  # napari depends on psutil; the fallback keeps the engine headless-safe

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil ships with napari
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def device_memory_available(device: torch.device) -> int:
    """Bytes the device can still allocate (for the CPU and MPS: free RAM, as MPS shares it)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        # Blocks torch has cached but not handed out are free for us as well.
        reserved_free = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(0, reserved_free))
    if device.type == "mps":
        limit = int(torch.mps.recommended_max_memory())
        return max(
            0, min(limit - int(torch.mps.driver_allocated_memory()), host_memory_available())
        )
    return host_memory_available()


def cpu_name() -> str:
    """The CPU model name, as the OS reports it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: torch.device) -> str:
    """A human-readable name for ``device`` (GPU model, or CPU model and core count)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({platform.machine()})"
    return f"{cpu_name()} ({os.cpu_count()} logical cores, {torch.get_num_threads()} threads)"
