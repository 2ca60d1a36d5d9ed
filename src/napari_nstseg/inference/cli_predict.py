"""`nstseg predict`: segment a CT file with CDI-NSTSEG and write the mask, maps and a report."""

from __future__ import annotations

import argparse

from napari_nstseg.inference.cli_organs import (
    add_organ_args,
)
from napari_nstseg.inference.predict_outputs import (
    MAP_SUFFIXES,
)
from napari_nstseg.inference.predict_scan import predict_one, sigterm_as_exit
from napari_nstseg.io.formats import describe


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
    p.add_argument(
        "ct_file",
        metavar="CT_FILE",
        help="the CT scan (file or DICOM folder); or a folder of scans, a folder of DICOM series "
        "(one per sub-folder) or a CSV list (columns input[,output]): a batch",
    )
    p.add_argument(
        "out_file",
        metavar="OUT_FILE",
        help=f"mask to write ({describe(MAP_SUFFIXES)}; .dcm: a DICOM SEG referencing the "
        "input, which must then be a DICOM series); for a batch, the output folder",
    )
    p.add_argument(
        "--weights",
        metavar="W",
        default=None,
        help="checkpoint (.json/.safetensors); default: bundled",
    )
    p.add_argument(
        "--variant",
        metavar="NAME",
        default=None,
        help="run an ablation of the weights' full model, e.g. no-glm (`nstseg variants` lists "
        "those that run from full weights; default: the model as trained)",
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
    p.add_argument(
        "--report",
        metavar="JSON",
        default=None,
        help="write a JSON run report here (lesion positions as voxel index and RAS/LPS mm; "
        "schema in docs/predict-report.md)",
    )
    p.add_argument(
        "--lesion-map",
        metavar="FILE",
        default=None,
        help="also write a label map on the scan's grid in which each lesion holds the id the "
        "report gives it (1 = largest)",
    )
    p.add_argument(
        "--workers",
        metavar="N",
        type=int,
        default=None,
        help="batch only: N worker processes, each loading the model once (default: one per "
        "GPU with CUDA, else 1; on the CPU the cores are shared out among them)",
    )
    add_organ_args(p)
    p.set_defaults(func=run_predict)
    return p


def run_predict(args: argparse.Namespace) -> int:
    """Handler of `nstseg predict`; returns the exit status. A folder or CSV list of scans runs
    as a batch (inference/batch.py)."""
    from napari_nstseg.inference.batch import is_batch_input, run_batch

    if is_batch_input(args.ct_file):
        with sigterm_as_exit():
            return run_batch(args)
    if getattr(args, "workers", None) is not None:
        raise ValueError(f"--workers is for a folder or CSV list of scans; {args.ct_file} is one")
    return predict_one(args)
