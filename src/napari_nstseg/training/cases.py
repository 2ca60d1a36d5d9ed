"""Training cases: MSD, paired and case folders (with a corrections store's labelled-slice
list), case-level splits and split files, and reading a case onto the display grid."""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_nstseg.io.formats import volume_file_suffixes
from napari_nstseg.io.readers import read_ct, read_mask

# Single-file volume formats of io/formats.py (a DICOM series is a folder, not a case file).
VOLUME_SUFFIXES = volume_file_suffixes()
# MSD names the first (only, for CT) channel of a case "<case>_0000".
_CHANNEL_SUFFIX = "_0000"
# Names a mask may carry in plain paired folders besides the image's own name.
_MASK_SUFFIXES = ("_mask", "_seg", "_label", "_labels", "_gt")
SPLITS = ("train", "val", "test")
# The split a folder without a recorded one gets (every command splits it the same way).
VAL_FRACTION, TEST_FRACTION, SPLIT_SEED = 0.15, 0.15, 0
# Case folders (one folder per patient, as TCIA/IBSI exports and the corrections store keep them):
# the image and the label map by these names, with any volume suffix.
CASE_IMAGE_NAMES = ("ct", "image", "img")
CASE_LABEL_NAMES = ("tumour", "tumor", "label", "labels", "mask", "seg", "gt")
# A case folder's record beside its volumes; its "annotated_slices" (display-order axial indices)
# are the only slices that are labelled: the rest of the label map is unknown, not tumour-free.
CASE_RECORD_NAME = "case.json"


@dataclass(frozen=True)
class Case:
    """One scan and its label map; ``split`` is set when dataset.json assigns one and
    ``highest_label`` when dataset.json names its labels."""

    case_id: str
    image: Path
    label: Path
    split: str | None = None
    highest_label: int | None = None
    # Labelled axial slices (display order) when only these are; None: every slice is.
    slices: tuple[int, ...] | None = None


def _strip_suffix(name: str) -> str | None:
    lower = name.lower()
    for suffix in VOLUME_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _volumes_by_id(folder: Path, strip: Sequence[str]) -> dict[str, Path]:
    """Volume files in ``folder`` keyed by their name without extension and ``strip`` suffix."""
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        # MSD tarballs carry macOS "._name" resource forks next to every volume.
        if p.name.startswith(".") or not p.is_file():
            continue
        stem = _strip_suffix(p.name)
        if stem is None:
            continue
        for suffix in strip:
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        if stem in found:
            raise ValueError(
                f"{folder}: two files belong to case {stem!r}: {found[stem].name}, {p.name}"
            )
        found[stem] = p
    return found


def _pair(folder: Path, images_dir: Path, labels_dir: Path, mask_strip: Sequence[str]):
    images = _volumes_by_id(images_dir, (_CHANNEL_SUFFIX,))
    labels = _volumes_by_id(labels_dir, mask_strip)
    unpaired = sorted(set(images) - set(labels))
    if unpaired:
        shown = ", ".join(images[c].name for c in unpaired[:5])
        more = f" and {len(unpaired) - 5} more" if len(unpaired) > 5 else ""
        warnings.warn(
            f"{folder}: skipping {len(unpaired)} image(s) without a label file: {shown}{more}",
            stacklevel=3,
        )
    return {c: (images[c], labels[c]) for c in sorted(set(images) & set(labels))}


def _read_split(dataset_json: dict, path: Path) -> dict[str, str]:
    split = dataset_json.get("split")
    if split is None:
        return {}
    if not isinstance(split, dict) or not set(split) <= set(SPLITS):
        raise ValueError(f"{path}: 'split' must map some of {', '.join(SPLITS)} to case id lists")
    assigned: dict[str, str] = {}
    for name, ids in split.items():
        for case_id in ids:
            case_id = _strip_suffix(Path(str(case_id)).name) or Path(str(case_id)).name
            if case_id in assigned and assigned[case_id] != name:
                raise ValueError(
                    f"{path}: case {case_id!r} is in both the {assigned[case_id]!r} and "
                    f"the {name!r} split"
                )
            assigned[case_id] = name
    return assigned


def _highest_label(dataset_json: dict) -> int | None:
    """Largest label id in dataset.json's "labels" (MSD: id -> name; nnU-Net v2: name -> id)."""
    ids = []
    for key, value in (dataset_json.get("labels") or {}).items():
        for candidate in (key, value):
            try:
                ids.append(int(candidate))
            except (TypeError, ValueError):
                continue
    return max(ids) if ids else None


def _case_folder_pairs(root: Path) -> dict[str, tuple[Path, Path]]:
    """``CASE/ct.nii.gz`` + ``CASE/tumour.nii.gz`` pairs of the sub-folders of ``root``."""
    pairs: dict[str, tuple[Path, Path]] = {}
    unpaired = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = _volumes_by_id(sub, ())
        image = next((files[n] for n in CASE_IMAGE_NAMES if n in files), None)
        label = next((files[n] for n in CASE_LABEL_NAMES if n in files), None)
        if image is not None and label is not None:
            pairs[sub.name] = (image, label)
        elif image is not None:
            unpaired.append(sub.name)
    if unpaired:
        shown = ", ".join(unpaired[:5]) + (
            f" and {len(unpaired) - 5} more" if len(unpaired) > 5 else ""
        )
        warnings.warn(
            f"{root}: skipping {len(unpaired)} case folder(s) without a label file "
            f"({'/'.join(CASE_LABEL_NAMES)}): {shown}",
            stacklevel=3,
        )
    return pairs


def annotated_slices(case_folder: Path) -> tuple[int, ...] | None:
    """The labelled slices a case folder's ``case.json`` lists (``annotated_slices``), or None
    when it has no such record (every slice is labelled)."""
    path = case_folder / CASE_RECORD_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    slices = record.get("annotated_slices") if isinstance(record, dict) else None
    if slices is None:
        return None
    if not isinstance(slices, list) or not all(
        isinstance(z, int) and not isinstance(z, bool) and z >= 0 for z in slices
    ):
        raise ValueError(f"{path}: 'annotated_slices' must be a list of slice indices (0, 1, ...)")
    return tuple(sorted(set(slices)))


def is_case_folder_set(root: Path) -> bool:
    """Whether ``root`` holds case folders (a sub-folder with a ct.* / image.* volume)."""
    for sub in root.iterdir():
        if sub.is_dir() and not sub.name.startswith("."):
            stems = {_strip_suffix(p.name) for p in sub.iterdir() if p.is_file()}
            if stems & set(CASE_IMAGE_NAMES):
                return True
    return False


def read_split_file(path: str | Path) -> dict[str, str]:
    """Case id -> split from a JSON file ``{"train": [...], "val": [...], "test": [...]}`` (a
    fixed split by patient kept in the repository; other keys, e.g. "note", are ignored)."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such split file") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: a split file maps train/val/test to lists of case ids")
    return _read_split({"split": {k: v for k, v in d.items() if k in SPLITS}}, path)


def find_cases(folder: str | Path, split_file: str | Path | None = None) -> list[Case]:
    """Image/label pairs of a Medical Segmentation Decathlon folder, a plain paired folder or a
    folder of case folders.

    - MSD: ``dataset.json``, ``imagesTr/<case>_0000.nii.gz`` (or ``<case>.nii.gz``) and
      ``labelsTr/<case>.nii.gz``. A ``"split": {"train": [...], "val": [...], "test": [...]}``
      entry in dataset.json (our addition) sets each case's ``split``; cases it does not list
      are left out.
    - Plain: ``images/`` with ``masks/`` or ``labels/``; a mask matches the image of the same
      name, optionally with ``_mask``, ``_seg``, ``_label(s)`` or ``_gt`` before the extension.
    - Case folders: ``<case>/ct.nii.gz`` (or image.*) and ``<case>/tumour.nii.gz`` (or tumor,
      label(s), mask, seg, gt; any volume suffix); the folder's name is the case id.

    ``split_file`` (``read_split_file``) assigns each case its split, over dataset.json's; cases
    it does not list are left out. Images without a label are skipped with a warning; no pair
    at all is an error.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder; give a dataset folder (MSD or images/ + masks/)")
    msd_images, msd_labels = root / "imagesTr", root / "labelsTr"
    assigned: dict[str, str] = {}
    highest: int | None = None
    slices: dict[str, tuple[int, ...] | None] = {}
    if msd_images.is_dir() or (root / "dataset.json").is_file():
        if not (msd_images.is_dir() and msd_labels.is_dir()):
            raise ValueError(f"{root}: an MSD dataset needs both imagesTr/ and labelsTr/ folders")
        ds_path = root / "dataset.json"
        if ds_path.is_file():
            try:
                ds_json = json.loads(ds_path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{ds_path}: not valid JSON ({e.msg}, line {e.lineno})") from None
            assigned = _read_split(ds_json, ds_path)
            highest = _highest_label(ds_json)
        pairs = _pair(root, msd_images, msd_labels, ())
    elif not (root / "images").is_dir() and is_case_folder_set(root):
        pairs = _case_folder_pairs(root)
        slices = {c: annotated_slices(root / c) for c in pairs}
    else:
        masks = next((root / n for n in ("masks", "labels") if (root / n).is_dir()), None)
        if not (root / "images").is_dir() or masks is None:
            raise ValueError(
                f"{root}: no dataset found; expected imagesTr/ + labelsTr/ (+ dataset.json), "
                "images/ + masks/ (or labels/), or one folder per case with ct.nii.gz and "
                "tumour.nii.gz"
            )
        pairs = _pair(root, root / "images", masks, _MASK_SUFFIXES)
    if not pairs:
        raise ValueError(f"{root}: found no image with a matching label file")
    split_source = root / "dataset.json"
    if split_file is not None:
        assigned, split_source = read_split_file(split_file), Path(split_file)
    if assigned:
        missing = sorted(set(assigned) - set(pairs))
        if missing:
            raise ValueError(
                f"{split_source}: the split lists case(s) with no image/label pair in {root}: "
                + ", ".join(missing[:5])
            )
        return [
            Case(c, *pairs[c], split=assigned[c], highest_label=highest, slices=slices.get(c))
            for c in sorted(pairs)
            if c in assigned
        ]
    return [Case(c, *pairs[c], highest_label=highest, slices=slices.get(c)) for c in sorted(pairs)]


def split_cases(
    cases: Sequence[Case], val_fraction: float = 0.2, test_fraction: float = 0.0, seed: int = 0
) -> dict[str, list[Case]]:
    """Train/val/test lists of whole cases (never slices), so no scan leaks across splits.

    When the cases carry a split (from dataset.json) that split is used as is. Otherwise the
    case ids are shuffled with ``seed`` and cut by the fractions (each non-zero fraction gets at
    least one case when there are enough); the same ids and seed always give the same split.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be in [0, 1) "
            "and leave cases for training"
        )
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        raise ValueError("case ids must be unique to split by case")
    if any(c.split is not None for c in cases):
        return {name: [c for c in cases if c.split == name] for name in SPLITS}
    ordered = sorted(cases, key=lambda c: c.case_id)
    order = np.random.default_rng(seed).permutation(len(ordered))
    shuffled = [ordered[i] for i in order]
    n = len(shuffled)

    def count(fraction: float) -> int:
        return 0 if fraction == 0 or n < 2 else max(1, int(round(fraction * n)))

    n_test = count(test_fraction)
    n_val = min(count(val_fraction), max(0, n - n_test - 1))
    return {
        "test": sorted(shuffled[:n_test], key=lambda c: c.case_id),
        "val": sorted(shuffled[n_test : n_test + n_val], key=lambda c: c.case_id),
        "train": sorted(shuffled[n_test + n_val :], key=lambda c: c.case_id),
    }


def load_case(case: Case) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """(HU float32 (z, y, x), label map (z, y, x), spacing (z, y, x) mm) in display orientation."""
    ct = read_ct(case.image)
    labels = read_mask(case.label, like=ct.geometry)
    return ct.hu, labels, ct.spacing


def default_label_values(cases: Sequence[Case]) -> tuple[int, ...]:
    """The lesion label when none is given: the highest one dataset.json declares, else the
    highest found in the cases' label maps (1 when they are all empty)."""
    # dataset.json's label list first: a set whose cases happen to lack the tumour label must
    # not fall back to the organ.
    declared = [c.highest_label for c in cases if c.highest_label is not None]
    if declared:
        highest = max(declared)
    else:  # label maps only, so no two scans are in memory as float32 at once
        highest = max(int(read_mask(c.label).max()) for c in cases)
    return (highest,) if highest > 0 else (1,)


def foreground(labels: np.ndarray, label_values: Sequence[int]) -> np.ndarray:
    """Boolean lesion mask: voxels whose label is one of ``label_values``."""
    return np.isin(labels, np.asarray(label_values, dtype=labels.dtype))


def data_splits(data: str | Path, split_file: str | Path | None = None) -> dict[str, list[Case]]:
    """A folder's cases by split, as every command cuts them: its own or ``split_file``'s
    split, else the fixed fractions and seed above."""
    return split_cases(find_cases(data, split_file), VAL_FRACTION, TEST_FRACTION, SPLIT_SEED)


def cases_of_split(
    data: str | Path, split: str, split_file: str | Path | None = None
) -> list[Case]:
    """The cases of one split of a folder; a readable error for an unknown or empty split."""
    splits = data_splits(data, split_file)
    if split not in splits:
        raise ValueError(f"Unknown split {split!r}; choose one of {', '.join(splits)}.")
    cases = splits[split]
    if not cases:
        raise ValueError(f"{data}: no case is in the {split!r} split.")
    return cases
