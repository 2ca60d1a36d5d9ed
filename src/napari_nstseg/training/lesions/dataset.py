"""The lesion dataset writer (``make_lesion_dataset``): real CT + inserted lesions -> an MSD-layout
folder (imagesTr, labelsTr, dataset.json with the split, lesions.csv and lesions.json).

The unit of splitting is a *source region*: a block of consecutive axial slices of one source scan.
Every augmented copy of a region (new lesions, new seed) stays in the region's split, so no anatomy
is shared between train, val and test. With only a handful of real scans (three TotalSegmentator
files) splitting by scan would leave one scan per split, so by default each scan long enough is cut
along z into one block per split (block order drawn per scan with the seed or given per scan, sizes
from the split fractions), with ``guard_mm`` of discarded slices between blocks so neighbouring
slices (and the 2.5-D context a model may use) never cross a split boundary. A scan too short to
hold a block of ``min_block_mm`` per split goes whole to the split furthest below its share of
slices (largest scans first, so an empty test split is filled before train grows). Lesions must fit
wholly inside their block, so thin blocks hold smaller lesions on average; lesions.csv records every
size for per-size evaluation. ``by="scan"`` assigns whole scans instead (the right choice once there
are many scans). Scans that repeat another scan's slices (TotalSegmentator's example_ct_sm is slices
82-111 of example_ct) are refused, because they would leak one region into two splits.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import re
import warnings
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from napari_nstseg.io.volume import CTVolume, Geometry
from napari_nstseg.training.lesions.config import (
    CSV_COLUMNS,
    SPLITS,
    LesionConfig,
    LesionRecord,
    SplitConfig,
)
from napari_nstseg.training.lesions.insertion import insert_lesions
from napari_nstseg.training.lesions.sources import (
    OrganSource,
    read_exclusion,
    read_organs,
    record,
)

# Beside imagesTr and labelsTr, on each case's grid: its organ label map (TotalSegmentator ids,
# all 0 for a scan without one), so evaluate and tune-postprocess find it with --organ-masks
# organsTr, and its excluded region where it has one (training/organ_crops.py reads both).
ORGANS_DIR = "organsTr"
EXCLUDE_DIR = "excludeTr"


@dataclass
class _Region:
    scan_index: int
    split: str
    z0: int
    z1: int


def case_image_path(dataset_dir: str | Path, case: str) -> Path:
    """The image of a case in an MSD folder, named <case>_0000.nii.gz (v2) or <case>.nii.gz."""
    images = Path(dataset_dir) / "imagesTr"
    for name in (f"{case}_0000.nii.gz", f"{case}.nii.gz", f"{case}_0000.nii", f"{case}.nii"):
        if (images / name).exists():
            return images / name
    raise FileNotFoundError(f"No image for case {case!r} in {images} (<case>_0000.nii.gz).")


def make_lesion_dataset(
    scans: list[Path],
    out_dir: str | Path,
    n_copies: int = 4,
    config: LesionConfig | None = None,
    seed: int = 0,
    organ_labels: dict | None = None,
    split: SplitConfig | tuple[float, float, float] | None = None,
    name: str = "nstseg-synthetic-lesions",
    licence: str = (
        "Apache-2.0 (source scans: TotalSegmentator, Wasserthal et al., Radiology: AI 2023)"
    ),
    workers: int = 1,
    splits: tuple[str, ...] = SPLITS,
    first_copy: int = 0,
    exclude: dict | None = None,
) -> Path:
    """Write an MSD-layout folder of CT cases with inserted lesions; returns the folder.

    ``organ_labels`` maps a scan path to an organ label map on that scan's grid (a path:
    TotalSegmentator ids, see ``LesionConfig.target_organs``; an ``OrganSource``: its ids
    renamed to those); every case gets its map in organsTr. ``exclude`` maps a scan path to an
    ``ExcludeSource``, a region never tumour-free: no lesion within reach of it, and each
    case's part of it in excludeTr. Every case's lesions are in lesions.csv/.json.
    ``workers`` > 1 makes the cases in that many processes; the folder is the same byte for byte.
    ``splits`` makes only those splits' cases (e.g. val and test for an evaluation set); they
    are the cases the full set would hold. ``first_copy`` numbers the copies from there: copies
    ``first_copy`` on are new lesions in the same regions, e.g. to score a model on new lesions
    in the anatomy it was trained on (copies 0 to ``first_copy`` - 1 are its training cases).
    """
    from napari_nstseg.io.readers import read_ct

    config = config or LesionConfig()
    if split is None:
        split = SplitConfig()
    elif not isinstance(split, SplitConfig):
        split = SplitConfig(fractions=tuple(split))
    if n_copies < 1:
        raise ValueError(f"n_copies must be at least 1, got {n_copies}")
    if first_copy < 0:
        raise ValueError(f"first_copy must be at least 0, got {first_copy}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown or not splits:
        raise ValueError(f"splits must be some of {', '.join(SPLITS)}, got {list(splits)}")
    scans = [Path(s) for s in scans]
    if not scans:
        raise ValueError("make_lesion_dataset needs at least one scan")
    labels_by_scan = {
        Path(k).resolve(): v if isinstance(v, OrganSource) else OrganSource(Path(v))
        for k, v in (organ_labels or {}).items()
    }
    excludes = {Path(k).resolve(): v for k, v in (exclude or {}).items()}
    known = {p.resolve() for p in scans}
    for what, table in (("organ labels", labels_by_scan), ("an exclusion", excludes)):
        stray = [str(k) for k in table if k not in known]
        if stray:
            raise ValueError(f"{stray[0]} has {what} but is not one of the scans given")

    volumes: list[CTVolume] = [read_ct(p) for p in scans]
    organ_maps: list[np.ndarray | None] = []
    excluded: list[np.ndarray | None] = []
    for path, vol in zip(scans, volumes, strict=True):
        source = labels_by_scan.get(path.resolve())
        organ_maps.append(None if source is None else read_organs(source, vol.geometry))
        ex = excludes.get(path.resolve())
        excluded.append(None if ex is None else read_exclusion(ex, vol.geometry))
    _refuse_repeated_slices(scans, volumes)

    orders = {Path(k).resolve(): tuple(v) for k, v in split.block_orders.items()}
    stray = [str(k) for k in orders if k not in known]
    if stray:
        raise ValueError(f"{stray[0]} has a block order but is not one of the scans given")
    regions = _plan_regions(
        volumes, split, np.random.default_rng(seed), [orders.get(p.resolve()) for p in scans],
        [str(p) for p in scans],
    )  # fmt: skip
    out = Path(out_dir)
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    (out / ORGANS_DIR).mkdir(parents=True, exist_ok=True)
    stems = _unique_stems(scans)

    training, rows, skipped = [], [], []
    split_cases: dict[str, list[str]] = {s: [] for s in SPLITS}
    cases_meta = {}
    jobs, tasks = [], []
    for r_index, region in enumerate(regions):
        vol = volumes[region.scan_index]
        hu, geometry = _crop_z(vol, region.z0, region.z1)
        organs = organ_maps[region.scan_index]
        organs = None if organs is None else organs[region.z0 : region.z1]
        ex = excluded[region.scan_index]
        ex = None if ex is None else ex[region.z0 : region.z1]
        ex = ex if ex is not None and ex.any() else None
        copies = range(first_copy, first_copy + n_copies) if region.split in splits else ()
        for copy in copies:
            case = f"{stems[region.scan_index]}_z{region.z0:03d}-{region.z1:03d}_c{copy:02d}"
            jobs.append((case, region, geometry, copy))
            # Each case's generator comes from its own key, so the order (or process) in which
            # cases are made does not change them.
            tasks.append(
                (hu, organs, geometry, config, (seed, region.scan_index, r_index, copy),
                 scans[region.scan_index].name, out, case, ex)
            )  # fmt: skip
    if not jobs:
        raise ValueError(
            f"no source region of {len(scans)} scan(s) falls in the {' or '.join(splits)} split "
            f"(the regions: {', '.join(sorted({r.split for r in regions}))})"
        )
    with _case_runner(workers) as run_cases:
        for (case, region, geometry, copy), (records, error) in zip(
            jobs, run_cases(_make_case, tasks), strict=True
        ):
            if error is not None:
                warnings.warn(f"skipped case {case}: {error}", stacklevel=2)
                skipped.append({"case": case, "reason": error})
                continue
            image_name = f"{case}_0000.nii.gz"
            training.append(
                {"image": f"./imagesTr/{image_name}", "label": f"./labelsTr/{case}.nii.gz"}
            )
            split_cases[region.split].append(case)
            cases_meta[case] = {
                "source": str(scans[region.scan_index]),
                "split": region.split,
                "z_range_display": [region.z0, region.z1],
                "copy": copy,
                "n_lesions": len(records),
            }
            to_lps = geometry.display_to_lps
            for rec in records:
                row = {"case": case, "split": region.split, **rec.to_row()}
                lps = to_lps @ np.array([*rec.centre_voxel_zyx, 1.0])
                for axis, v in zip("xyz", lps[:3], strict=True):
                    row[f"centre_lps_{axis}_mm"] = round(float(v), 3)
                rows.append(row)
    if not training:
        raise ValueError(f"No case could be made from {len(scans)} scan(s); see the warnings")

    with open(out / "lesions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (out / "lesions.json").write_text(json.dumps(rows, indent=1))
    dataset = {
        "name": name,
        "description": (
            "Real CT with synthetic small, low-contrast lesions inserted by napari-nstseg "
            "(training/lesions/); the lesions are synthetic, the anatomy is real."
        ),
        "reference": "TotalSegmentator (Wasserthal et al., Radiology: AI 2023) for the scans",
        "licence": licence,
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "channel_names": {"0": "CT"},
        "labels": {"0": "background", "1": "lesion"},
        "file_ending": ".nii.gz",
        "numTraining": len(training),
        "numTest": 0,
        "training": training,
        "test": [],
        "split": split_cases,
        "split_method": (
            f"by {split.by}: every copy of a source region stays in one split"
            + (
                f"; {split.guard_mm:g} mm guard gaps between z-blocks"
                if split.by == "zblock"
                else ""
            )
        ),
        "split_fractions": list(split.fractions),
        "block_orders": {str(Path(k).resolve()): list(v) for k, v in split.block_orders.items()},
        "splits_made": [s for s in SPLITS if s in splits],
        "lesions": "lesions.csv",
        "lesion_config": _jsonable(asdict(config)),
        "seed": seed,
        "first_copy": first_copy,
        # Every source region, made or not, and the organ labels (absolute paths): what training
        # with lesions inserted on the fly (training/lesions/online.py) starts from.
        "regions": [
            {
                "source": str(scans[r.scan_index].resolve()),
                "split": r.split,
                "z_range_display": [r.z0, r.z1],
            }
            for r in regions
        ],
        # With organ_label_ids (a map's own ids renamed) and exclusions (training/lesions/
        # sources.py), what training on the fly reads beside each scan.
        **record(labels_by_scan, excludes),
        "cases": cases_meta,
        "skipped": skipped,
    }
    (out / "dataset.json").write_text(json.dumps(dataset, indent=1))
    return out


def _make_case(task) -> tuple[list[LesionRecord] | None, str | None]:
    """Insert one case's lesions and write its image and mask: (records, None) or (None, why)."""
    hu, organs, geometry, config, key, scan_name, out, case, excluded = task
    rng = np.random.default_rng(list(key))
    try:
        new_hu, mask, records = insert_lesions(
            hu, geometry.spacing, organs, config, rng, scan=scan_name, excluded=excluded
        )
    except ValueError as e:
        return None, str(e)
    save_on_source_grid(out / "imagesTr" / f"{case}_0000.nii.gz", new_hu, geometry, np.int16)
    save_on_source_grid(out / "labelsTr" / f"{case}.nii.gz", mask > 0, geometry, np.uint8)
    organ_map = np.zeros(hu.shape, np.uint8) if organs is None else organs
    dtype = np.uint8 if int(organ_map.max()) < 256 else np.uint16
    save_on_source_grid(out / ORGANS_DIR / f"{case}.nii.gz", organ_map, geometry, dtype)
    if excluded is not None:
        (out / EXCLUDE_DIR).mkdir(exist_ok=True)
        save_on_source_grid(out / EXCLUDE_DIR / f"{case}.nii.gz", excluded, geometry, np.uint8)
    return records, None


@contextmanager
def _case_runner(workers: int):
    """An ordered map over cases: in this process, or in a pool of ``workers`` processes."""
    if workers == 1:
        yield map
        return
    # spawn, not fork: the caller may hold threads (PyTorch's, napari's) that fork would copy
    # in whatever state they are in.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        yield pool.map


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=lambda v: list(v) if isinstance(v, tuple) else str(v)))


def _unique_stems(scans: list[Path]) -> list[str]:
    stems = []
    for p in scans:
        stem = re.sub(r"(\.nii\.gz|\.nii|\.mha|\.mhd|\.nrrd)$", "", p.name)
        stem = re.sub(r"[^A-Za-z0-9]+", "-", stem).strip("-") or "scan"
        while stem in stems:
            stem += "-b"
        stems.append(stem)
    return stems


def _refuse_repeated_slices(scans: list[Path], volumes: list[CTVolume]) -> None:
    for a, (pa, va) in enumerate(zip(scans, volumes, strict=True)):
        for b, (pb, vb) in enumerate(zip(scans, volumes, strict=True)):
            if a == b or va.shape[1:] != vb.shape[1:] or vb.shape[0] > va.shape[0]:
                continue
            if a > b and va.shape[0] == vb.shape[0]:
                continue  # equal lengths: checked once
            first = vb.hu[0]
            for z in range(va.shape[0] - vb.shape[0] + 1):
                if np.array_equal(va.hu[z], first) and np.array_equal(
                    va.hu[z : z + vb.shape[0]], vb.hu
                ):
                    raise ValueError(
                        f"{pb} repeats slices {z}-{z + vb.shape[0] - 1} of {pa}; pass only one "
                        "of them, or the same anatomy would land in two splits"
                    )


def _plan_regions(
    volumes: list[CTVolume],
    split: SplitConfig,
    rng: np.random.Generator,
    orders: list[tuple[str, ...] | None] | None = None,
    names: list[str] | None = None,
) -> list[_Region]:
    fractions = np.asarray(split.fractions, dtype=float)
    active = [s for s, f in zip(SPLITS, fractions, strict=True) if f > 0]
    assigned = dict.fromkeys(SPLITS, 0.0)
    total = float(sum(v.shape[0] for v in volumes))
    regions: list[_Region] = []
    whole: list[int] = []
    for i, vol in enumerate(volumes):
        nz, sz = vol.shape[0], vol.spacing[0]
        if split.by == "scan":
            whole.append(i)
            continue
        guard = int(math.ceil(split.guard_mm / sz))
        usable = nz - guard * (len(active) - 1)
        sizes = [int(round(fractions[SPLITS.index(s)] * usable)) for s in active]
        sizes[active.index("train") if "train" in active else 0] += usable - sum(sizes)
        given = orders[i] if orders else None
        if usable <= 0 or min(sizes) < math.ceil(split.min_block_mm / sz):
            if given:
                raise ValueError(
                    f"{names[i] if names else f'scan {i + 1}'} has a block order but is too "
                    f"short for one z-block of {split.min_block_mm:g} mm per split with "
                    f"{split.guard_mm:g} mm guards between them"
                )
            whole.append(i)
            continue
        order = [active[j] for j in rng.permutation(len(active))]  # drawn even when given:
        if given:  # the scans after this one keep the blocks the seed gives them
            order = list(given)
        z = 0
        for s in order:
            n = sizes[active.index(s)]
            regions.append(_Region(i, s, z, z + n))
            assigned[s] += n
            z += n + guard
    # Largest scans first; each goes to the split furthest below its share of slices (relative
    # to that share, so an empty test split is filled before train grows; ties: test, val, train).
    for i in sorted(whole, key=lambda j: (-volumes[j].shape[0], rng.random())):
        target = {s: fractions[SPLITS.index(s)] * total for s in active}
        s = max(
            reversed(active),
            key=lambda k: (round(1 - assigned[k] / target[k], 9), target[k] - assigned[k]),
        )
        regions.append(_Region(i, s, 0, volumes[i].shape[0]))
        assigned[s] += volumes[i].shape[0]
    for s in active:
        if assigned[s] == 0:
            warnings.warn(
                f"the {s} split got no scan: {len(volumes)} scan(s) are too few or too short "
                f"for z-blocks of {split.min_block_mm:g} mm; add scans or lower min_block_mm",
                stacklevel=3,
            )
    return sorted(regions, key=lambda r: (r.scan_index, r.z0))


def _crop_z(vol: CTVolume, z0: int, z1: int) -> tuple[np.ndarray, Geometry]:
    """Display slices z0..z1-1 and the geometry of that slab on the source file's own grid."""
    g = vol.geometry
    a = g.display_axes[0]
    n = g.source_shape[a]
    start = n - z1 if g.display_flips[0] else z0
    shift = np.eye(4)
    shift[a, 3] = start
    shape = list(g.source_shape)
    shape[a] = z1 - z0
    geometry = Geometry.from_index_to_lps(
        tuple(shape),
        g.affine_lps @ shift,
        source_path=g.source_path,
        source_format=g.source_format,
        nifti_qform_code=g.nifti_qform_code,
        nifti_sform_code=g.nifti_sform_code,
    )
    return vol.hu[z0:z1], geometry


def save_on_source_grid(path: Path, display: np.ndarray, geometry: Geometry, dtype) -> None:
    """Write a display-order array on the geometry's source grid (same affine, index order)."""
    data = geometry.to_source(np.asarray(display))
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        data = np.clip(np.round(data), info.min, info.max)
    img = nib.Nifti1Image(np.ascontiguousarray(data.astype(dtype)), geometry.affine_ras)
    qcode, scode = geometry.nifti_qform_code, geometry.nifti_sform_code
    if qcode == 0 and scode == 0:  # a reader would fall back to the voxel sizes alone
        qcode = scode = 1
    img.header.set_qform(geometry.affine_ras, code=qcode)
    img.header.set_sform(geometry.affine_ras, code=scode)
    img.header.set_xyzt_units("mm")
    tmp = path.with_name(path.name + ".part.nii.gz")
    nib.save(img, tmp)
    tmp.replace(path)
