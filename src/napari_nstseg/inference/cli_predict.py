"""`nstseg predict`: segment a CT file with CDI-NSTSEG and write the mask, maps and a report."""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

MAP_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `nstseg predict` on the `nstseg` command's subparsers."""
    p = subparsers.add_parser(
        "predict",
        help="segment small tumors in a CT file and write the mask (and maps) on its grid",
        description=(
            "Run CDI-NSTSEG on a CT scan (NIfTI, DICOM folder, MHA, NRRD) and write the tumor "
            "mask onto the scan's own voxel grid. Optionally write every stage's map and a JSON "
            "report with versions, device, timings and lesion measurements."
        ),
    )
    p.add_argument("ct_file", metavar="CT_FILE", help="the CT scan (file or DICOM folder)")
    p.add_argument(
        "out_file", metavar="OUT_FILE", help="mask to write (.nii.gz, .nii, .mha or .nrrd)"
    )
    p.add_argument(
        "--weights",
        metavar="W",
        default=None,
        help="checkpoint (.json/.safetensors); default: bundled",
    )
    p.add_argument(
        "--device", metavar="D", default="auto", help="auto (default), cpu, cuda, cuda:N or mps"
    )
    p.add_argument(
        "--batch-size",
        metavar="N",
        type=int,
        default=4,
        help="at most N axial slices per forward pass (default 4; fewer if memory says so)",
    )
    p.add_argument(
        "--threshold",
        metavar="T",
        type=float,
        default=None,
        help="probability from which a voxel is tumor (default: the weights' recommendation, "
        "else 0.5)",
    )
    p.add_argument(
        "--min-lesion-mm",
        metavar="MM",
        type=float,
        default=None,
        help="drop lesions whose longest axial diameter is below MM (default: the weights' "
        "recommendation, else 0: keep every lesion)",
    )
    p.add_argument(
        "--min-depth-mm",
        metavar="MM",
        type=float,
        default=None,
        help="drop lesions spanning less than MM along z, slices times slice spacing (4: at "
        "least 2 slices of a 3 mm scan; default: the weights' recommendation, else 0)",
    )
    p.add_argument(
        "--mirror",
        action="store_true",
        help="average each slice's maps with its left-right mirror image's, flipped back "
        "(test-time augmentation; twice the model time)",
    )
    p.add_argument(
        "--slices",
        metavar="a:b",
        default=None,
        help="only axial slices a to b-1 (Python slice: '10:20', '10:', ':-5', or one index)",
    )
    p.add_argument(
        "--maps",
        metavar="DIR",
        default=None,
        help="also write the GLM, LFM stage, final, SFM scale-weight (and SSL residual) maps here",
    )
    p.add_argument("--report", metavar="JSON", default=None, help="write a JSON run report here")
    p.set_defaults(func=run_predict)
    return p


def parse_slices(text: str | None, n_slices: int) -> list[int] | None:
    """'a:b' (Python slice semantics, stop exclusive) or 'a' -> slice indices; None = all."""
    if text is None:
        return None
    raw = text.strip()
    try:
        if ":" in raw:
            parts = raw.split(":")
            if len(parts) != 2:
                raise ValueError
            start, stop = (int(v) if v.strip() else None for v in parts)
            zs = list(range(n_slices))[slice(start, stop)]
        else:
            z = int(raw)
            if not -n_slices <= z < n_slices:
                raise IndexError
            zs = [z % n_slices]
    except ValueError:
        raise ValueError(f"--slices {text!r} is not of the form a:b or a single index") from None
    except IndexError:
        raise ValueError(f"--slices {text!r} is outside the scan's {n_slices} slices") from None
    if not zs:
        raise ValueError(f"--slices {text!r} selects none of the scan's {n_slices} slices")
    return zs


def _map_suffix(out_file: Path) -> str:
    name = out_file.name.lower()
    return next((s for s in MAP_SUFFIXES if name.endswith(s)), ".nii.gz")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (*MAP_SUFFIXES, ".mhd", ".nhdr", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def operating_point(seg) -> dict[str, Any]:
    """The threshold, minimum lesion size and depth a run uses, and where each came from
    ("command line", "weights": the checkpoint's recommendation, or "default")."""
    words = {"explicit": "command line", "weights": "weights", "default": "default"}
    return {
        **seg.postprocess.to_dict(),
        "source": {k: words[v] for k, v in seg.postprocess_sources.items()},
    }


def _peak_host_bytes() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _write_maps(pred, folder: Path, stem: str, suffix: str, geometry, write_volume) -> dict:
    """Each kept map as a float32 image on the scan's grid, one at a time to bound memory."""
    from napari_nstseg.inference.prediction import decode_probability

    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}

    def put(name: str, values: np.ndarray) -> None:
        path = write_volume(folder / f"{stem}_{name}{suffix}", decode_probability(values), geometry)
        written[name] = str(path)

    put("final_probability", pred.final)
    if pred.coarse is not None:
        put("glm_coarse", pred.coarse)
    for k, stage in enumerate(pred.stages, start=1):
        put(f"lfm_stage{k}", stage)
    if pred.residual is not None:
        put("ssl_residual", pred.residual)
    if pred.scale_weights is not None:
        names = ("0.5x", "1.0x", "1.5x") if len(pred.scale_weights) == 3 else None
        for i, weights in enumerate(pred.scale_weights):
            put(f"sfm_weights_{names[i] if names else i}", weights)
    return written


def run_predict(args: argparse.Namespace) -> int:
    """Handler of `nstseg predict`; returns the exit status."""
    import torch

    import napari_nstseg
    from napari_nstseg.inference.device import autocast_dtype, device_name, precision_name
    from napari_nstseg.inference.engine import EngineConfig, Segmenter, default_weights_path
    from napari_nstseg.inference.prediction import MapRequest
    from napari_nstseg.io import read_ct, write_mask, write_volume
    from napari_nstseg.io.atomic import atomic_write, file_sha256
    from napari_nstseg.metrics import measure_lesions
    from napari_nstseg.models.checkpoint import checkpoint_paths

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    out_file = Path(args.out_file)
    if not any(out_file.name.lower().endswith(s) for s in MAP_SUFFIXES):
        raise ValueError(f"{out_file} has no mask file extension; use .nii.gz, .nii, .mha or .nrrd")

    # Created before the (long) run, so a bad output place fails in seconds, not after it.
    out_file.parent.mkdir(parents=True, exist_ok=True)

    t = time.perf_counter()
    ct = read_ct(args.ct_file)
    timings["read"] = time.perf_counter() - t
    for warning in ct.warnings:
        print(f"warning: {warning}", file=sys.stderr)

    t = time.perf_counter()
    config = EngineConfig(
        batch_size=args.batch_size,
        threshold=args.threshold,
        min_lesion_mm=args.min_lesion_mm,
        min_depth_mm=args.min_depth_mm,
        mirror=args.mirror,
    )
    seg = Segmenter.from_checkpoint(args.weights, args.device, config)
    point = operating_point(seg)
    print(
        f"operating point: threshold {point['threshold']:g} ({point['source']['threshold']}), "
        f"min lesion {point['min_lesion_mm']:g} mm ({point['source']['min_lesion_mm']}), "
        f"min depth {point['min_depth_mm']:g} mm ({point['source']['min_depth_mm']})",
        file=sys.stderr,
    )
    weights = Path(args.weights) if args.weights else default_weights_path()
    timings["load"] = time.perf_counter() - t

    zs = parse_slices(args.slices, ct.shape[0])
    n = len(zs) if zs is not None else ct.shape[0]
    if args.maps:
        maps = MapRequest(coarse=True, stages=True, residual=seg.has_mae, scale_weights=True)
    else:
        maps = MapRequest.minimal()

    t = time.perf_counter()
    est = seg.estimate((n, *ct.shape[1:]), ct.spacing, maps=maps)
    timings["estimate"] = time.perf_counter() - t
    print(
        f"{n} slice(s) of {ct.shape[1]}x{ct.shape[2]} on {seg.device}: about "
        f"{est.seconds:.0f} s; {est.reason}",
        file=sys.stderr,
    )
    if not est.fits:
        raise RuntimeError(est.reason)
    seg = seg.with_config(batch_size=max(1, min(args.batch_size, est.batch_size)))

    if seg.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(seg.device)
    t = time.perf_counter()
    pred = None
    from tqdm import tqdm

    with tqdm(total=n, unit="slice", file=sys.stderr, disable=None) as bar:
        for event in seg.iter_predict(ct.hu, ct.spacing, z_indices=zs, maps=maps):
            bar.update(len(event.z))
            pred = event.prediction
    timings["predict"] = time.perf_counter() - t
    device_peak = (
        int(torch.cuda.max_memory_allocated(seg.device)) if seg.device.type == "cuda" else None
    )

    t = time.perf_counter()
    mask_path = write_mask(out_file, pred.mask, ct.geometry)
    map_paths = (
        _write_maps(
            pred,
            Path(args.maps),
            _stem(Path(args.ct_file)),
            _map_suffix(out_file),
            ct.geometry,
            write_volume,
        )
        if args.maps
        else {}
    )
    timings["write"] = time.perf_counter() - t
    lesions = measure_lesions(pred.mask, ct.spacing)
    timings["total"] = time.perf_counter() - t_start

    print(f"mask: {mask_path}")
    if map_paths:
        print(f"maps: {len(map_paths)} file(s) in {Path(args.maps)}")
    print(
        f"{len(lesions)} lesion(s) found"
        + (
            f"; largest {lesions[0]['volume_ml']:.2f} mL, "
            f"{lesions[0]['longest_axial_diameter_mm']:.1f} mm"
            if lesions
            else ""
        )
    )
    if args.report:
        tensor_path, json_path = checkpoint_paths(weights)
        amp = autocast_dtype(seg.device, seg.config.amp)
        report: dict[str, Any] = {
            "versions": {
                "napari_nstseg": napari_nstseg.__version__,
                "torch": torch.__version__,
                "numpy": np.__version__,
                "python": platform.python_version(),
                "cuda": torch.version.cuda,
            },
            "input": {
                "path": str(Path(args.ct_file).resolve()),
                "shape_zyx": list(ct.shape),
                "spacing_zyx_mm": list(ct.spacing),
            },
            "device": {
                "name": str(seg.device),
                "description": device_name(seg.device),
                "autocast": precision_name(amp),
                "platform": platform.platform(),
            },
            "weights": {
                "path": str(json_path.resolve()),
                "tensors": str(tensor_path.resolve()),
                "sha256": file_sha256(tensor_path),
                "arch": seg.arch,
                "model_config": seg.meta.get("model_config"),
                "preprocessing": seg.preprocessing.to_dict(),
            },
            "run": {
                "slices": [int(z) for z in pred.done_slices],
                "threshold": point["threshold"],
                "min_lesion_mm": point["min_lesion_mm"],
                "min_depth_mm": point["min_depth_mm"],
                "operating_point_source": point["source"],
                "mirror": seg.config.mirror,
                "batch_size": pred.info.get("batch_size"),
                "oom_backoffs": pred.info.get("oom_backoffs", 0),
                "maps": sorted(map_paths),
            },
            "timings_s": {
                **timings,
                **{f"predict_{k}": v for k, v in pred.timings.items()},
                "slices_per_s": n / timings["predict"] if timings["predict"] > 0 else None,
            },
            "estimate": est.to_dict(),
            "actual": {
                "predict_seconds": timings["predict"],
                "device_peak_bytes": device_peak,
                "process_peak_rss_bytes": _peak_host_bytes(),
                "prediction_bytes": pred.nbytes,
            },
            "lesions": lesions,
            "outputs": {"mask": str(mask_path), "maps": map_paths},
        }
        report_path = Path(args.report)
        report_path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(report, indent=2, default=_jsonable) + "\n"
        # never a half-written report
        atomic_write(report_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        print(f"report: {report_path}")
    return 0


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
