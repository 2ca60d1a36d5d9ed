"""Inference throughput and peak memory of CDI-NSTSEG and the U-Net baseline (engine path).

Whole-volume throughput (slices/s) and peak memory for CDI-NSTSEG at the paper's default width,
CDI-NSTSEG at the width we bundle, and the U-Net baseline, on the CPU and on CUDA when present,
then the latency of one whole slice and of a square ROI on the CPU. Networks are untrained
(random weights): speed and memory do not depend on the weights. Everything runs through
``Segmenter.predict`` (windowing, resampling, batching, maps back to the grid), not the bare
network, because that is what a user waits for.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` during the run; on the CPU the increase
of the process's resident memory over its level before the run, sampled every 5 ms by a
background thread (psutil), so short spikes between samples can be missed.

    python benchmarks/throughput.py                      # 512 x 512 at 0.75 mm, 8 slices
    python benchmarks/throughput.py --slices 2 --size 256 --skip-default   # quick, 2 cores

The bundled rows take their configuration from the bundled weights' JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from dataclasses import dataclass, replace

import numpy as np
import psutil
import torch

from napari_nstseg.inference import EngineConfig, MapRequest, Segmenter
from napari_nstseg.inference.device import cpu_name, precision_label
from napari_nstseg.inference.engine import default_weights_path
from napari_nstseg.models import ModelConfig, build_model
from napari_nstseg.models.checkpoint import read_metadata
from napari_nstseg.preprocessing import PreprocessConfig


@dataclass
class Row:
    model: str
    width: int
    device: str
    size: int
    slices: int
    batch: int
    slices_per_s: float
    peak_bytes: int
    estimated_s_per_slice: float
    measured_s_per_slice: float


class RssPeak:
    """Peak resident memory of this process above its level at start, sampled in a thread."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval = interval_s
        self.process = psutil.Process()
        self.base = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> RssPeak:
        self.base = self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def increase(self) -> int:
        return self.peak - self.base


def synthetic_ct(slices: int, size: int, seed: int = 0) -> np.ndarray:
    """An elliptic soft-tissue body in air with noise, HU float32 (z, y, x)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    body = ((yy - size / 2) / (0.4 * size)) ** 2 + ((xx - size / 2) / (0.45 * size)) ** 2 < 1
    vol = np.where(body, 40.0, -1000.0).astype(np.float32)[None].repeat(slices, axis=0)
    vol += rng.normal(0.0, 15.0, vol.shape).astype(np.float32)
    return vol


def make_segmenter(
    config: ModelConfig, prep: PreprocessConfig, device: str, batch: int, options: dict
) -> Segmenter:
    """``options``: EngineConfig fields the command line set (amp, channels_last)."""
    torch.manual_seed(0)
    return Segmenter(
        build_model(config),
        prep,
        device,
        EngineConfig(batch_size=batch, maps=MapRequest(), **options),
    )


def throughput(
    name: str, config: ModelConfig, prep: PreprocessConfig, device: str, vol: np.ndarray,
    spacing: tuple[float, float, float], batch: int, options: dict,
) -> Row:  # fmt: skip
    seg = make_segmenter(config, prep, device, batch, options)
    est = seg.estimate(vol.shape, spacing)
    seg.predict(vol[:1], spacing)  # warm-up: lazy initialisation, kernel selection
    if seg.device.type == "cuda":
        torch.cuda.synchronize(seg.device)
        torch.cuda.reset_peak_memory_stats(seg.device)
    with RssPeak() as rss:
        t0 = time.perf_counter()
        pred = seg.predict(vol, spacing)
        seconds = time.perf_counter() - t0
    peak = (
        torch.cuda.max_memory_allocated(seg.device) if seg.device.type == "cuda" else rss.increase
    )
    return Row(
        name,
        config.base_width,
        str(seg.device),
        vol.shape[1],
        vol.shape[0],
        int(pred.info.get("batch_size", batch)),
        vol.shape[0] / seconds,
        int(peak),
        est.seconds_per_slice,
        seconds / vol.shape[0],
    )


def latency(seg: Segmenter, vol: np.ndarray, spacing, roi, repeats: int) -> float:
    """Median seconds for one slice (or one ROI on it), after a warm-up call."""
    seg.predict(vol, spacing, z_indices=[0], roi=roi)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        seg.predict(vol, spacing, z_indices=[0], roi=roi)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def hardware() -> list[str]:
    lines = [
        f"- CPU: {cpu_name()}, {os.cpu_count()} logical cores, torch threads "
        f"{torch.get_num_threads()}",
        f"- RAM: {psutil.virtual_memory().total / 2**30:.0f} GiB; {platform.platform()}",
        f"- torch {torch.__version__}",
    ]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        lines.append(
            f"- GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
        )
    else:
        lines.append("- GPU: none")
    return lines


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slices", type=int, default=8, help="slices per volume (default 8)")
    p.add_argument("--size", type=int, default=512, help="slice side in pixels (default 512)")
    p.add_argument("--roi", type=int, default=256, help="ROI side for the latency (default 256)")
    p.add_argument(
        "--spacing", type=float, default=0.75,
        help="in-plane pixel size of the test volume in mm (default 0.75: a 384 mm field of view)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=4, help="slices per batch (default 4)")
    p.add_argument("--repeats", type=int, default=3, help="latency repeats (median)")
    p.add_argument("--devices", default="cpu,cuda", help="comma list among cpu, cuda")
    p.add_argument("--skip-default", action="store_true", help="skip the width-64 network")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument(
        "--no-amp", action="store_true", help="float32 throughout (no bf16 or fp16 autocast)"
    )
    p.add_argument(
        "--no-channels-last", action="store_true",
        help="convolutions in NCHW layout (the engine's default on CPUs and CUDA: NHWC)",
    )  # fmt: skip
    args = p.parse_args(argv)
    amp = not args.no_amp
    options = {"amp": amp, "channels_last": not args.no_channels_last}

    # The paper's network at 1 mm, then the bundled weights' configuration and an equally wide
    # U-Net at the bundled working spacing (random weights: speed does not depend on them).
    paper = PreprocessConfig(working_spacing_mm=1.0)
    configs = [] if args.skip_default else [("CDI-NSTSEG (paper width)", ModelConfig(), paper)]
    meta = read_metadata(default_weights_path())
    bundled = ModelConfig.from_dict(meta["model_config"])
    prep = PreprocessConfig.from_dict(meta["preprocessing"])
    configs += [
        ("CDI-NSTSEG (bundled)", bundled, prep),
        ("U-Net (bundled width)", replace(bundled, arch="unet"), prep),
    ]
    devices = [d for d in args.devices.split(",") if d == "cpu" or torch.cuda.is_available()]
    vol = synthetic_ct(args.slices, args.size)
    spacing = (3.0, args.spacing, args.spacing)

    rows: list[Row] = []
    for device in devices:
        for name, config, pre in configs:
            rows.append(
                throughput(name, config, pre, device, vol, spacing, args.batch_size, options)
            )
            r = rows[-1]
            print(
                f"  {r.model} b={r.width} on {r.device}: {r.slices_per_s:.2f} slices/s", flush=True
            )

    lat = []
    half = args.roi // 2
    c = args.size // 2
    roi = (0, 1, c - half, c - half + args.roi, c - half, c - half + args.roi)
    for name, config, pre in configs:
        if config.arch != "cdi_nstseg":
            continue
        seg = make_segmenter(config, pre, "cpu", 1, options)
        lat.append(
            (
                name,
                config.base_width,
                latency(seg, vol, spacing, None, args.repeats),
                latency(seg, vol, spacing, roi, args.repeats),
            )
        )

    print("\n## Inference throughput (napari-nstseg engine, untrained weights)\n")
    print("\n".join(hardware()))
    for device in devices:
        layout = "NHWC (channels_last)" if options["channels_last"] else "NCHW"
        print(f"- {device}: {precision_label(torch.device(device), amp)}, {layout}")
    print(
        f"\nWhole volume: {args.slices} slices of {args.size} x {args.size} pixels of "
        f"{args.spacing} mm, each resampled to its model's working spacing (paper width: 1 mm; "
        f"bundled: {prep.working_spacing_mm} mm) and back; maps kept: final, GLM coarse, LFM "
        "stages (uint8).\n"
    )
    print(
        "| model | base width | device | slices/s | s/slice | estimated s/slice | batch "
        "| peak memory |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        kind = "allocated" if r.device.startswith("cuda") else "RSS increase"
        print(
            f"| {r.model} | {r.width} | {r.device} | {r.slices_per_s:.2f} | "
            f"{r.measured_s_per_slice:.3f} | {r.estimated_s_per_slice:.3f} | {r.batch} | "
            f"{mib(r.peak_bytes)} ({kind}) |"
        )
    if lat:
        print(
            f"\nCPU latency (median of {args.repeats}), one slice, all maps of the default run:\n"
        )
        print(
            f"| model | base width | {args.size} x {args.size} slice "
            f"| {args.roi} x {args.roi} ROI |"
        )
        print("|---|---|---|---|")
        for name, width, whole, part in lat:
            print(f"| {name} | {width} | {whole:.3f} s | {part:.3f} s |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                {
                    "hardware": hardware(),
                    "throughput": [r.__dict__ for r in rows],
                    "latency": [
                        {"model": n, "width": w, "slice_s": a, "roi_s": b} for n, w, a, b in lat
                    ],
                },
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
