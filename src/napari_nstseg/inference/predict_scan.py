"""One scan through `nstseg predict`: read it, run the engine (whole scan, slices, an ablation
or inside organs), write the mask, maps and report all or none; shared by the single-scan command
and the batch workers (inference/batch.py)."""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from napari_nstseg.inference.cli_organs import (
    centre_rule,
    organ_labels,
    organ_report,
    read_organ_mask,
)
from napari_nstseg.inference.predict_outputs import (
    PredictOutputs,
    plan_outputs,
    scale_weight_names,
)


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


def operating_point(seg, organs: bool = False) -> dict[str, Any]:
    """The threshold, minimum lesion size and depth a run uses (``organs``: in organ mode), and
    where each came from ("command line", "weights": the checkpoint's recommendation, "weights,
    organ mode": its organ-mode one, or "default")."""
    if organs:
        seg = seg.for_organs()
    own = organs and seg.recommended_organs != seg.recommended
    words = {
        "explicit": "command line",
        "weights": "weights, organ mode" if own else "weights",
        "default": "default",
    }
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


def _write_maps(pred, plan: PredictOutputs, geometry, batch) -> dict[str, str]:
    """Stage each kept map as a float32 image on the scan's grid, one at a time (memory)."""
    from napari_nstseg.inference.prediction import decode_probability
    from napari_nstseg.io import write_volume
    from napari_nstseg.io.outputs import check_output

    written: dict[str, str] = {}

    def put(name: str, values: np.ndarray) -> None:
        # Checked again by its final name, in case the model gives a map the plan did not list.
        path = check_output(plan.map_path(name), {k: str(v) for k, v in plan.inputs.items()})
        write_volume(path, decode_probability(values), geometry, batch=batch)
        written[name] = str(path)

    put("final_probability", pred.final)
    if pred.coarse is not None:
        put("glm_coarse", pred.coarse)
    for k, stage in enumerate(pred.stages, start=1):
        put(f"lfm_stage{k}", stage)
    if pred.residual is not None:
        put("ssl_residual", pred.residual)
    if pred.scale_weights is not None:
        for name, weights in zip(
            scale_weight_names(len(pred.scale_weights)), pred.scale_weights, strict=True
        ):
            put(f"sfm_weights_{name}", weights)
    return written


def _read_scan(path: str):
    """The scan, its warnings printed once each (not also through Python's warnings)."""
    from napari_nstseg.io import CTReadWarning, read_ct

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CTReadWarning)
        ct = read_ct(path)
    for warning in ct.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return ct


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """`kill` ends the run like Ctrl+C does: through the clean-up that removes temporaries."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def engine_config(args: argparse.Namespace):
    """The engine settings predict's options ask for (one scan, or a batch worker's model)."""
    from napari_nstseg.inference.engine import EngineConfig

    return EngineConfig(
        batch_size=args.batch_size,
        threshold=args.threshold,
        min_lesion_mm=args.min_lesion_mm,
        min_depth_mm=args.min_depth_mm,
        mirror=args.mirror,
    )


def predict_one(args: argparse.Namespace, segmenter=None) -> int:
    """One scan; ``segmenter``: a model already loaded (a batch worker's) instead of
    ``--weights`` loaded here."""
    with sigterm_as_exit():
        return _run_predict(args, segmenter)


def _run_predict(args: argparse.Namespace, segmenter=None) -> int:
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    # Arguments and every output path first: a mistake costs a second, not a model run, and
    # none of this needs torch.
    organs = organ_labels(args.organ_mask, args.organs, args.organ_margin_mm, "--organ-mask")
    plan = plan_outputs(args)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.variant is not None:
        from napari_nstseg.models.variants import from_full_weights

        from_full_weights(args.variant)

    t = time.perf_counter()
    ct = _read_scan(args.ct_file)
    timings["read"] = time.perf_counter() - t
    zs = parse_slices(args.slices, ct.shape[0])
    plan.check_space(int(np.prod(ct.shape)))
    if plan.mask_is_seg:
        from napari_nstseg.io.dicom_seg import check_seg_source

        check_seg_source(plan.mask, ct.geometry)
    search = organ_map = None
    if organs is not None:
        search, organ_map, zs_run = _organ_search(args, ct, organs, zs, plan.weights_meta)

    import torch

    import napari_nstseg
    from napari_nstseg.inference.device import autocast_dtype, device_name, precision_name
    from napari_nstseg.inference.engine import Segmenter
    from napari_nstseg.inference.prediction import MapRequest
    from napari_nstseg.inference.report import COORDINATES, SCHEMA, lesion_table
    from napari_nstseg.io import write_mask
    from napari_nstseg.io.atomic import AtomicBatch, file_sha256
    from napari_nstseg.models.checkpoint import checkpoint_paths

    t = time.perf_counter()
    seg = segmenter or Segmenter.from_checkpoint(args.weights, args.device, engine_config(args))
    if args.variant is not None:
        from napari_nstseg.inference.ablation import ablated_segmenter

        seg = ablated_segmenter(seg, args.variant)
        print(f"variant: {args.variant}, rebuilt from the full model's weights", file=sys.stderr)
    point = operating_point(seg, organs=search is not None)
    print(
        f"operating point: threshold {point['threshold']:g} ({point['source']['threshold']}), "
        f"min lesion {point['min_lesion_mm']:g} mm ({point['source']['min_lesion_mm']}), "
        f"min depth {point['min_depth_mm']:g} mm ({point['source']['min_depth_mm']})",
        file=sys.stderr,
    )
    weights = seg.weights_path or plan.inputs.get("the weights' description")
    timings["load"] = time.perf_counter() - t

    n = len(zs) if zs is not None else ct.shape[0]
    if search is not None:
        n = len(zs_run)  # slices the organ boxes run, counted once per box
    if plan.maps_dir is not None:
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
        if search is None:
            events = seg.iter_predict(ct.hu, ct.spacing, z_indices=zs, maps=maps)
        else:
            from napari_nstseg.inference.organs import iter_predict_in_organs

            events = iter_predict_in_organs(
                seg, ct.hu, ct.spacing, organ_map, search, z_indices=zs, maps=maps
            )
        for event in events:
            bar.update(len(event.z))
            pred = event.prediction
    timings["predict"] = time.perf_counter() - t
    device_peak = (
        int(torch.cuda.max_memory_allocated(seg.device)) if seg.device.type == "cuda" else None
    )
    lesions, lesion_ids = lesion_table(pred.mask, ct.geometry)
    if plan.lesion_map is None:
        # An id is only worth giving when a file holds it.
        lesions = [{k: v for k, v in row.items() if k != "id"} for row in lesions]

    # Every file goes to a temporary first and all move into place together at the end: an
    # error, Ctrl+C or `kill` before then leaves every output path as it was.
    with plan.folders(), AtomicBatch() as batch:
        t = time.perf_counter()
        if plan.mask_is_seg:
            from napari_nstseg.io.dicom_seg import write_dicom_seg

            # Straight from the model: AUTOMATIC, naming the weights that made it.
            name = Path(str(weights)).stem if weights else ""
            write_dicom_seg(
                plan.mask, pred.mask, ct.geometry, edited=False, weights_name=name, batch=batch
            )
        else:
            write_mask(plan.mask, pred.mask, ct.geometry, batch=batch)
        map_paths = _write_maps(pred, plan, ct.geometry, batch) if plan.maps_dir else {}
        if plan.lesion_map is not None:
            write_mask(plan.lesion_map, lesion_ids, ct.geometry, batch=batch)
        timings["write"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t_start
        outputs: dict[str, Any] = {"mask": str(plan.mask), "maps": map_paths}
        if plan.lesion_map is not None:
            outputs["lesion_map"] = str(plan.lesion_map)
        if plan.report is not None:
            tensor_path, json_path = checkpoint_paths(weights)
            amp = autocast_dtype(seg.device, seg.config.amp)
            geometry = ct.geometry
            report: dict[str, Any] = {
                "schema": SCHEMA,
                "coordinates": COORDINATES,
                "versions": {
                    "napari_nstseg": napari_nstseg.__version__,
                    "torch": torch.__version__,
                    "numpy": np.__version__,
                    "python": platform.python_version(),
                    "cuda": torch.version.cuda,
                },
                "input": {
                    "path": str(Path(args.ct_file).resolve()),
                    "shape_ijk": list(geometry.source_shape),
                    "spacing_ijk_mm": list(geometry.source_spacing),
                    "affine_ras": geometry.affine_ras.tolist(),
                    "axial_axis": "ijk"[geometry.display_axes[0]],
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
                    "variant": args.variant,
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
                "organs": _organ_entry(args, search, pred),
                "lesions": lesions,
                "outputs": outputs,
            }
            text = json.dumps(report, indent=2, default=_jsonable) + "\n"
            batch.add(plan.report, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        batch.commit()

    print(f"mask: {plan.mask}")
    if map_paths:
        print(f"maps: {len(map_paths)} file(s) in {plan.maps_dir}")
    if plan.lesion_map is not None:
        print(f"lesion map: {plan.lesion_map}")
    print(
        f"{len(lesions)} lesion(s) found"
        + (
            f"; largest {lesions[0]['volume_ml']:.2f} mL, "
            f"{lesions[0]['longest_axial_diameter_mm']:.1f} mm"
            if lesions
            else ""
        )
    )
    if plan.report is not None:
        print(f"report: {plan.report}")
    return 0


def _organ_search(args, ct, organs, zs, meta):
    """Organ mode's search, its label map (checked) and the slices its boxes run; before torch,
    so a bad mask or a --slices range without organ costs a second."""
    from dataclasses import replace

    from napari_nstseg.inference.organs import OrganSearch, organ_boxes, organ_jobs

    organ_map = read_organ_mask(args.organ_mask, ct.geometry, organs)
    search = OrganSearch.for_weights(organs, args.organ_margin_mm, meta)
    search = replace(search, centre_mm=centre_rule(args.organ_centre_mm, search.centre_mm))
    jobs = organ_jobs(organ_boxes(organ_map, ct.spacing, search), zs)
    wanted = ", ".join(f"{v} ({n})" for v, n in zip(organs, search.names(), strict=True))
    if not jobs:
        raise ValueError(
            f"{args.organ_mask}: organ label {wanted} lies on none of the slices "
            f"--slices {args.slices!r} selects"
        )
    zs_run = [z for _, _, job_zs in jobs for z in job_zs]
    print(
        f"organ mode: searching organ label {wanted} within {search.margin_mm:g} mm "
        f"({len(jobs)} box(es), {len(set(zs_run))} slice(s)); lesions elsewhere are not sought"
        + (
            ""
            if search.centre_mm is None
            else f", nor lesions centred over {search.centre_mm:g} mm from the organ"
        ),
        file=sys.stderr,
    )
    return search, organ_map, zs_run


def _organ_entry(args, search, pred) -> dict[str, Any] | None:
    if search is None:
        return None
    return {**organ_report(search, pred), "mask": str(Path(args.organ_mask).resolve())}


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
