"""Organ mode's cost against whole-scan mode on the same scan (issue 26): wall time and peak
memory on the CPU, each mode in a fresh process so one's peak does not hide the other's; prints
a table.

    .venv/bin/python benchmarks/organ_mode.py [--ct CT --organ-mask SEG --organs liver]
        [--margin-mm 10] [--threads 2] [--weights W] [--gt MASK]

Defaults: the bundled sample CT, its TotalSegmentator organ labels, the liver, the bundled
weights at their operating point, the mask and final map only (no extra maps). Per mode:
seconds to predict (the model load apart), the process's peak resident memory (ru_maxrss, the
model and torch included), the peak of Python and NumPy allocations while predicting
(tracemalloc: the prediction's arrays, not torch's own buffers), the slices and pixels given to
the network, and the components found (and whether the ground truth's lesion is one of them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import tracemalloc

import numpy as np


def measure(args: argparse.Namespace) -> dict:
    """One mode in this process: load, predict, count."""
    import torch

    torch.set_num_threads(args.threads)
    from napari_nstseg.inference.cli_organs import read_organ_mask
    from napari_nstseg.inference.engine import EngineConfig, Segmenter
    from napari_nstseg.inference.organs import (
        OrganSearch,
        organ_boxes,
        organ_jobs,
        predict_in_organs,
    )
    from napari_nstseg.io import read_ct, read_mask
    from napari_nstseg.metrics import label_lesions
    from napari_nstseg.organ_labels import parse_organs

    ct = read_ct(args.ct)
    t = time.perf_counter()
    seg = Segmenter.from_checkpoint(args.weights, "cpu", EngineConfig(batch_size=4))
    load_s = time.perf_counter() - t
    organ = args.mode == "organ"
    if organ:
        labels = parse_organs(args.organs)
        organs = read_organ_mask(args.organ_mask, ct.geometry, labels)
        search = OrganSearch.for_weights(labels, args.margin_mm, seg.meta)
        jobs = organ_jobs(organ_boxes(organs, ct.spacing, search))
        slices = sum(len(zs) for _, _, zs in jobs)
        pixels = sum(len(zs) * (b[3] - b[2]) * (b[5] - b[4]) for _, b, zs in jobs)
    else:
        slices = ct.shape[0]
        pixels = int(np.prod(ct.shape))
    tracemalloc.start()
    t = time.perf_counter()
    if organ:
        pred = predict_in_organs(seg, ct.hu, ct.spacing, organs, search)
    else:
        pred = seg.predict(ct.hu, ct.spacing)
    predict_s = time.perf_counter() - t
    _, traced = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    found, n = label_lesions(pred.mask > 0)
    hit = None
    if args.gt:
        gt = read_mask(args.gt, like=ct.geometry) > 0
        hit = bool(np.isin(np.unique(found[gt]), np.arange(1, n + 1)).any())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (
        1 if sys.platform == "darwin" else 1024
    )
    point = seg.postprocess.to_dict()
    return {
        "mode": args.mode,
        "load_s": load_s,
        "predict_s": predict_s,
        "peak_rss_mib": peak / 2**20,
        "traced_peak_mib": traced / 2**20,
        "slices_run": slices,
        "pixels_run": int(pixels),
        "components": int(n),
        "lesion_found": hit,
        "operating_point": point,
    }


def main(argv: list[str] | None = None) -> int:
    from napari_nstseg._sample_data import SAMPLE_CT, SAMPLE_MASK, SAMPLE_ORGANS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ct", default=str(SAMPLE_CT))
    p.add_argument("--organ-mask", default=str(SAMPLE_ORGANS))
    p.add_argument("--organs", default="liver")
    p.add_argument("--margin-mm", type=float, default=10.0)
    p.add_argument("--gt", default=None, help="lesion mask (default: the sample's, on the sample)")
    p.add_argument("--weights", default=None, help="default: the bundled weights")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--mode", choices=("whole", "organ"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.gt is None and args.ct == str(SAMPLE_CT):
        args.gt = str(SAMPLE_MASK)
    if args.mode:  # the child: one mode, JSON on the last line
        print(json.dumps(measure(args)))
        return 0
    from napari_nstseg.inference.device import cpu_name

    rows = []
    for mode in ("whole", "organ"):
        child = [sys.executable, __file__, "--mode", mode, *(argv or sys.argv[1:])]
        done = subprocess.run(child, capture_output=True, text=True, check=False)
        if done.returncode:
            print(done.stderr[-2000:], file=sys.stderr)
            return done.returncode
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{cpu_name()}, {args.threads} torch thread(s), load average {load:.1f}; "
          f"{platform.platform()}")  # fmt: skip
    print(f"scan {args.ct}; organs {args.organs} of {args.organ_mask} + {args.margin_mm:g} mm")
    head = ("mode", "predict s", "load s", "peak RSS MiB", "traced MiB", "slices", "pixels",
            "components", "lesion found")  # fmt: skip
    body = [
        (
            r["mode"],
            f"{r['predict_s']:.1f}",
            f"{r['load_s']:.1f}",
            f"{r['peak_rss_mib']:.0f}",
            f"{r['traced_peak_mib']:.0f}",
            str(r["slices_run"]),
            str(r["pixels_run"]),
            str(r["components"]),
            str(r["lesion_found"]),
        )  # fmt: skip
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    for line in (head, *body):
        print("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))
    w, o = rows
    print(f"organ / whole: time {o['predict_s'] / w['predict_s']:.2f}x, peak RSS "
          f"{o['peak_rss_mib'] / w['peak_rss_mib']:.2f}x; operating point "
          f"{w['operating_point']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
