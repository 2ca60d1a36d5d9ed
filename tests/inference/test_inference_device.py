"""Device choice: CUDA, then MPS, then CPU; a device the machine lacks is one clear error."""

from __future__ import annotations

import pytest
import torch

from napari_nstseg.inference import device as dev
from napari_nstseg.inference.device import DeviceError, autocast_dtype, select_device


@pytest.fixture
def machine(monkeypatch):
    """Pretend which accelerators exist."""

    def set_machine(cuda: int = 0, mps: bool = False) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
        monkeypatch.setattr(dev, "_mps_available", lambda: mps)

    return set_machine


def test_auto_prefers_cuda_then_mps_then_cpu(machine):
    machine(cuda=1, mps=True)
    assert select_device("auto") == torch.device("cuda", 0)
    machine(cuda=0, mps=True)
    assert select_device("auto") == torch.device("mps")
    assert select_device(None) == torch.device("mps")
    machine(cuda=0, mps=False)
    assert select_device("auto") == torch.device("cpu")


def test_user_can_override_auto(machine):
    machine(cuda=2, mps=False)
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("CUDA:1") == torch.device("cuda", 1)
    assert dev.available_devices() == ["cuda:0", "cuda:1", "cpu"]


def test_missing_cuda_is_one_readable_sentence(machine):
    machine(cuda=0, mps=False)
    with pytest.raises(DeviceError) as info:
        select_device("cuda")
    message = str(info.value)
    assert "'cuda'" in message and "available here: cpu" in message
    assert "\n" not in message


def test_cuda_index_beyond_the_machine(machine):
    machine(cuda=1)
    with pytest.raises(DeviceError, match="has 1 CUDA GPU"):
        select_device("cuda:3")


def test_missing_mps_and_unknown_names(machine):
    machine(cuda=0, mps=False)
    with pytest.raises(DeviceError, match="Apple Metal"):
        select_device("mps")
    with pytest.raises(DeviceError, match="Unknown device 'tpu'"):
        select_device("tpu")


def test_autocast_types(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype(torch.device("cuda", 0)) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype(torch.device("cuda", 0)) == torch.float16
    assert autocast_dtype(torch.device("mps")) == torch.float16
    assert autocast_dtype(torch.device("cuda", 0), amp=False) is None
    # The CPU: bf16 only where the hardware has it (emulated bf16 is slower than float32).
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: False)
    assert autocast_dtype(torch.device("cpu")) is None
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: True)
    assert autocast_dtype(torch.device("cpu")) == torch.bfloat16
    assert autocast_dtype(torch.device("cpu"), amp=False) is None


def test_checkpoint_on_a_missing_device_fails_before_loading(machine, tmp_path):
    from napari_nstseg.inference import Segmenter

    machine(cuda=0, mps=False)
    # The device is checked first: no file is read, so a missing path cannot mask the error.
    with pytest.raises(DeviceError, match="cuda"):
        Segmenter.from_checkpoint(tmp_path / "nothing.json", device="cuda")
