"""`nstseg make-lesions`: real CT + synthetic lesions -> an MSD-layout training folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_nstseg.training.lesions.config import SPLITS, LesionConfig, SplitConfig
from napari_nstseg.training.lesions.sources import parse_exclude_spec, parse_organ_spec


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the `make-lesions` subcommand on an argparse subparsers object."""
    p = subparsers.add_parser(
        "make-lesions",
        help="insert synthetic small, low-contrast lesions into CT scans and write a dataset",
        description=(
            "Insert synthetic lesions into real CT scans and write a Medical Segmentation "
            "Decathlon folder (imagesTr, labelsTr, dataset.json with a train/val/test split by "
            "source region, lesions.csv)."
        ),
    )
    p.add_argument("scans", nargs="+", type=Path, help="CT scans (NIfTI, MHA, NRRD, DICOM folder)")
    p.add_argument("-o", "--out", type=Path, required=True, help="output dataset folder")
    p.add_argument("--copies", type=int, default=4, help="lesion copies per source region")
    p.add_argument(
        "--first-copy", type=int, default=0, metavar="N",
        help="number the copies from N: new lesions in the same regions, e.g. --splits train "
        "--first-copy 48 scores a model on new lesions in the anatomy its 48 copies trained it on",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--organ-labels",
        action="append",
        default=[],
        metavar="SCAN=LABELS[:ID=TSID,...]",
        help="organ label map (TotalSegmentator ids) on SCAN's grid; repeat per scan. A map "
        "with its own ids names them: ':5=6,1=18' keeps only its 5 and 1, as TotalSegmentator's "
        "6 (stomach) and 18 (small bowel). Each case's map is written to organsTr",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="SCAN=MASK[:LABELS]",
        help="a region of SCAN never tumour-free (a real, unlabelled tumour): the voxels of MASK "
        "(on SCAN's grid) with LABELS (default: all above 0); no lesion is placed within reach "
        "of it, training crops keep clear of it (each case's part in excludeTr); repeat per scan",
    )
    d = LesionConfig()
    p.add_argument(
        "--diameter-mm", nargs=2, type=float, default=d.diameter_mm, metavar=("LO", "HI")
    )
    p.add_argument(
        "--contrast-hu", nargs=2, type=float, default=d.contrast_hu, metavar=("LO", "HI")
    )
    p.add_argument(
        "--min-contrast-hu",
        type=float,
        default=d.min_abs_contrast_hu,
        metavar="HU",
        help="least |contrast| of a lesion against its tissue (default %(default)g: below it a "
        "lesion is invisible even to a reader); 20 makes every lesion as visible as the "
        "evaluation's targets",
    )
    p.add_argument("--hypodense-fraction", type=float, default=d.hypodense_fraction)
    p.add_argument(
        "--lesions-per-scan", nargs=2, type=int, default=d.lesions_per_scan, metavar=("LO", "HI")
    )
    p.add_argument("--organ-fraction", type=float, default=d.organ_fraction)
    p.add_argument("--irregularity", type=float, default=d.irregularity)
    p.add_argument("--edge-softness-mm", type=float, default=None)
    p.add_argument(
        "--min-surround-soft",
        type=float,
        default=d.min_surround_soft,
        metavar="SHARE",
        help="least share (0-1) of the ring around each lesion that is soft tissue, not fat, "
        "gas or bone (default 0: lesions may abut anything, as tumours do)",
    )
    s = SplitConfig()
    p.add_argument(
        "--split", nargs=3, type=float, default=s.fractions, metavar=("TRAIN", "VAL", "TEST")
    )
    p.add_argument("--split-by", choices=("zblock", "scan"), default=s.by)
    p.add_argument("--guard-mm", type=float, default=s.guard_mm)
    p.add_argument(
        "--block-order",
        action="append",
        default=[],
        metavar="SCAN=SPLIT,SPLIT,SPLIT",
        help="the splits of SCAN's z-blocks from its first display slice up (e.g. "
        "test,train,val), instead of the order the seed draws; the other scans keep theirs; "
        "repeat per scan",
    )
    p.add_argument(
        "--splits",
        nargs="+",
        choices=SPLITS,
        default=SPLITS,
        help="make only these splits' cases (each the same as in the full set)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes making cases in parallel (the result does not depend on it)",
    )
    p.set_defaults(func=run)
    return p


def parse_block_order(text: str) -> tuple[str, tuple[str, ...]]:
    """``SCAN=test,train,val`` -> (SCAN, its splits from the first display slice up)."""
    scan, sep, order = text.rpartition("=")
    splits = tuple(s.strip() for s in order.split(","))
    if not sep or not scan or any(s not in SPLITS for s in splits):
        raise ValueError(
            f"--block-order expects SCAN=SPLIT,SPLIT,SPLIT with splits among "
            f"{', '.join(SPLITS)}, got {text!r}"
        )
    return scan, splits


def run(args: argparse.Namespace) -> int:
    """Build the dataset described by parsed `make-lesions` arguments; 0 on success."""
    # Lesion insertion (scipy, nibabel) only when a data set is made: `nstseg --help` stays fast.
    from napari_nstseg.training.lesions.dataset import make_lesion_dataset

    try:
        labels = dict(parse_organ_spec(item) for item in args.organ_labels)
        exclude = dict(parse_exclude_spec(item) for item in args.exclude)
    except ValueError as e:
        raise SystemExit(f"make-lesions: {e}") from None
    named = [*args.scans, *(v.path for v in labels.values()), *(v.path for v in exclude.values())]
    for path in named:
        if not path.exists():
            raise SystemExit(f"{path} does not exist")
    try:
        config = LesionConfig(
            diameter_mm=tuple(args.diameter_mm),
            contrast_hu=tuple(args.contrast_hu),
            min_abs_contrast_hu=args.min_contrast_hu,
            hypodense_fraction=args.hypodense_fraction,
            lesions_per_scan=tuple(args.lesions_per_scan),
            organ_fraction=args.organ_fraction,
            irregularity=args.irregularity,
            edge_softness_mm=args.edge_softness_mm,
            min_surround_soft=args.min_surround_soft,
            seed=args.seed,
        )
        split = SplitConfig(
            fractions=tuple(args.split),
            by=args.split_by,
            guard_mm=args.guard_mm,
            block_orders=dict(parse_block_order(item) for item in args.block_order),
        )
        out = make_lesion_dataset(
            args.scans,
            args.out,
            args.copies,
            config,
            args.seed,
            labels or None,
            split,
            workers=args.workers,
            splits=tuple(args.splits),
            first_copy=args.first_copy,
            exclude=exclude or None,
        )
    except ValueError as e:  # bad settings or unreadable scans: one sentence, no traceback
        raise SystemExit(f"make-lesions: {e}") from None
    print(f"wrote {out / 'dataset.json'} and {out / 'lesions.csv'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry:
    `python -m napari_nstseg.training.lesions.cli_make_lesions make-lesions ...`."""
    parser = argparse.ArgumentParser(prog="nstseg")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
