"""Throughput of `nstseg predict FOLDER OUT --workers N` (issue 28): scans per minute with 1 and
2 worker processes on a folder of copies of the sample CT; prints a table.

    .venv/bin/python benchmarks/batch_throughput.py [--copies 8] [--workers 1 2] [--weights W]
        [--device cpu] [--ct CT]

Each run is the command itself in a fresh process into a fresh output folder, timed from start
to exit: process start, the workers' start and model loads included (what a user waits for).
Per-scan seconds are the median of summary.csv's column (a scan's read, predict and write in its
worker). The load average before each run is printed, since a shared CPU slows every figure.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1] / "src/napari_nstseg/sample_data/sample_ct.nii.gz"


@dataclass
class Run:
    workers: int
    scans: int
    wall_s: float
    median_scan_s: float
    load_before: float

    @property
    def scans_per_min(self) -> float:
        return 60.0 * self.scans / self.wall_s


def run_once(folder: Path, out: Path, workers: int, args: argparse.Namespace) -> Run:
    """The batch command in a fresh process; its wall time and summary."""
    cmd = [sys.executable, "-m", "napari_nstseg.cli", "predict", str(folder), str(out)]
    cmd += ["--device", args.device, "--workers", str(workers)]
    if args.weights:
        cmd += ["--weights", args.weights]
    load = os.getloadavg()[0]
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"batch with {workers} worker(s) failed:\n{done.stdout}\n{done.stderr}")
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if any(r["status"] != "done" for r in rows):
        raise SystemExit(f"not every scan was done:\n{done.stdout}")
    seconds = [float(r["seconds"]) for r in rows]
    return Run(workers, len(rows), wall, statistics.median(seconds), load)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ct", default=str(SAMPLE), help="the scan to copy (default: the sample CT)")
    p.add_argument("--copies", type=int, default=8, help="scans in the folder (default 8)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--weights", default=None, help="default: the bundled weights")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    import torch

    from napari_nstseg.inference.device import cpu_name

    ct = Path(args.ct)
    suffix = ".nii.gz" if ct.name.endswith(".nii.gz") else ct.suffix
    runs = []
    with tempfile.TemporaryDirectory(prefix="nstseg-batch-") as tmp:
        folder = Path(tmp) / "scans"
        folder.mkdir()
        for i in range(args.copies):
            shutil.copyfile(ct, folder / f"scan{i:03d}{suffix}")
        for workers in args.workers:
            runs.append(run_once(folder, Path(tmp) / f"out{workers}", workers, args))

    print(f"date: {datetime.date.today().isoformat()}")
    print(f"CPU: {cpu_name()}, {os.cpu_count()} logical cores; torch {torch.__version__}")
    print(f"platform: {platform.platform()}; device: {args.device}")
    print(f"scans: {args.copies} copies of {ct.name}; weights: {args.weights or 'bundled'}")
    print()
    print("| workers | scans/min | wall s | median s per scan | load avg before |")
    print("|---|---|---|---|---|")
    for r in runs:
        print(
            f"| {r.workers} | {r.scans_per_min:.1f} | {r.wall_s:.1f} | {r.median_scan_s:.2f} "
            f"| {r.load_before:.2f} |"
        )


if __name__ == "__main__":
    main()
