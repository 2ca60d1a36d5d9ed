"""Training data for CDI-NSTSEG: MSD, paired and case folders, case-level splits, 2-D axial slices.

Slices come out in a checkpoint's preprocessing (``PreprocessConfig``): display orientation
(read through ``napari_nstseg.io``, image and mask alike), resampled in-plane to the working
spacing, augmented in HU, then windowed and z-scored exactly as the inference engine does.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from napari_nstseg.io.formats import volume_file_suffixes
from napari_nstseg.io.readers import read_ct, read_mask
from napari_nstseg.preprocessing import (
    AIR_HU,
    PreprocessConfig,
    context_planes,
    resample_slices_to_working,
    window_normalize,
)

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


# -- slices ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation of a training crop (image and mask share every geometric step).

    Flip probabilities, rotation in degrees (uniform in +-), isotropic scale range, intensity
    jitter in HU (``hu_scale``: relative contrast change about water, 0 HU; ``hu_shift``: offset;
    both uniform in +-) and Gaussian noise (sigma in HU), all before the window.
    """

    enabled: bool = True
    flip_lr: float = 0.5
    flip_ud: float = 0.0
    rotate_deg: float = 10.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    hu_scale: float = 0.05
    hu_shift: float = 20.0
    noise_std_hu: float = 10.0

    def __post_init__(self) -> None:
        lo, hi = (float(v) for v in self.scale_range)
        if not 0 < lo <= hi:
            raise ValueError(
                f"scale_range must be (low, high) with 0 < low <= high, got {self.scale_range!r}"
            )
        for name in ("flip_lr", "flip_ud"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a probability in [0, 1], got {getattr(self, name)!r}")


@dataclass(frozen=True)
class SamplingConfig:
    """Which slices a ``SliceDataset`` yields and how.

    - ``positive_fraction``: share of samples drawn from slices with lesion (the rest from
      slices without); exact over any run of consecutive indices, up to one sample.
    - ``crop_size``: (h, w) of the random crop in working pixels; slices smaller than the crop
      are padded with air.
    - ``positive_jitter``: where a positive crop puts its lesion pixel: up to this share of the
      crop side from the centre (0.25: within the central half; 0.5: anywhere, up to the edge,
      so that the network also learns tumours cut by the field of view).
      ``None`` yields whole slices padded to the largest slice of the dataset.
    - ``samples_per_epoch``: dataset length in random mode (default: the number of slices).
    - ``sequential``: yield every slice once, in order, whole, without augmentation
      (validation).
    - ``label_values``: label values that count as lesion; default ``None`` = the highest
      label dataset.json declares, else the highest present in the cases given (MSD
      pancreas: 2 = tumour, not 1 = pancreas). Pass it explicitly for plain folders whose
      validation cases may lack the lesion label.
    - ``online_lesions``: train on a `nstseg make-lesions` folder with one new lesion per
      positive sample, inserted on the fly into the lesion-free source blocks of its training
      split (``OnlineLesionDataset``), instead of on its stored cases, so that no training
      lesion site repeats; ``lesion_bank``: lesion shapes rasterised per block for that.
    """

    positive_fraction: float = 0.7
    crop_size: tuple[int, int] | None = (256, 256)
    positive_jitter: float = 0.25
    samples_per_epoch: int | None = None
    sequential: bool = False
    label_values: tuple[int, ...] | None = None
    augment: AugmentConfig = AugmentConfig()
    seed: int = 0
    online_lesions: bool = False
    lesion_bank: int = 256

    def __post_init__(self) -> None:
        if not 0 <= self.positive_fraction <= 1:
            raise ValueError(f"positive_fraction must be in [0, 1], got {self.positive_fraction!r}")
        if not 0 <= self.positive_jitter <= 0.5:
            raise ValueError(
                f"positive_jitter must be in [0, 0.5] (a share of the crop side), "
                f"got {self.positive_jitter!r}"
            )
        if self.crop_size is not None and (len(self.crop_size) != 2 or min(self.crop_size) < 1):
            raise ValueError(
                f"crop_size must be two positive sizes or None, got {self.crop_size!r}"
            )
        if self.samples_per_epoch is not None and self.samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be positive, got {self.samples_per_epoch!r}")
        if self.lesion_bank < 1:
            raise ValueError(f"lesion_bank must be at least 1, got {self.lesion_bank!r}")


@dataclass
class _CachedCase:
    case_id: str
    hu: np.ndarray  # (z, h, w) int16 HU on the working grid
    mask: np.ndarray  # (z, h, w) uint8 0/1 on the working grid
    positive_z: np.ndarray  # indices of slices with lesion
    z_spacing: float  # mm between slices, for the context planes
    # The labelled slices when only these are (the others are never centre slices); None: all.
    slices: np.ndarray | None = None


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


class SliceDataset(Dataset):
    """2-D axial slices of a list of cases for training or validation.

    Volumes are read once, resampled in-plane to ``preprocess.working_spacing_mm`` (image
    bilinear, lesion mask bilinear then thresholded at 0.5, so both keep the same geometry)
    and cached as int16 HU / uint8 masks. Items: ``dict(image=(C, h, w) float32 normalised,
    mask=(1, h, w) float32 0/1, case=str, z=int)``, C = one plane per
    ``preprocess.slice_offsets_mm`` (1 for a plain 2-D slice); the mask is the centre slice's.

    Random mode is reproducible: item ``i`` of epoch ``e`` depends only on (seed, e, i), so
    DataLoader workers agree; call ``set_epoch`` between epochs for fresh samples.
    """

    def __init__(
        self,
        cases: Sequence[Case],
        preprocess: PreprocessConfig | None = None,
        sampling: SamplingConfig | None = None,
    ) -> None:
        self.preprocess = preprocess or PreprocessConfig()
        self.sampling = sampling or SamplingConfig()
        if not cases:
            raise ValueError("SliceDataset needs at least one case")
        self.epoch = 0
        values = self.sampling.label_values
        if values is None:
            values = default_label_values(cases)
        self.label_values = tuple(int(v) for v in values)
        cached = []
        for case in cases:
            hu, labels, spacing = load_case(case)
            if hu.shape != labels.shape:
                raise ValueError(
                    f"{case.label}: label map of shape {labels.shape} does not match the image "
                    f"{case.image.name} of shape {hu.shape}"
                )
            item = self._cache(case.case_id, hu, labels, spacing)
            if case.slices is not None:
                item.slices = _labelled_slices(case, hu.shape[0])
                item.positive_z = np.intersect1d(item.positive_z, item.slices)
            cached.append(item)
        self._set_cases(cached)
        if (
            not self.positives
            and self.sampling.positive_fraction > 0
            and not self.sampling.sequential
        ):
            warnings.warn(
                f"no slice has lesion label {self.label_values}; sampling slices without lesion",
                stacklevel=2,
            )

    def _set_cases(self, cached: list[_CachedCase]) -> None:
        self.cases = cached
        self.index = [
            (k, int(z))
            for k, c in enumerate(self.cases)
            for z in (range(c.hu.shape[0]) if c.slices is None else c.slices)
        ]
        self.positives = [(k, int(z)) for k, c in enumerate(self.cases) for z in c.positive_z]
        positive_set = set(self.positives)
        self.negatives = [kz for kz in self.index if kz not in positive_set]
        m = self.preprocess.pad_multiple
        self.full_shape = tuple(-(-max(c.hu.shape[d] for c in self.cases) // m) * m for d in (1, 2))

    def _cache(self, case_id: str, hu, labels, spacing) -> _CachedCase:
        # Padding is per item (crop or whole-slice size), not per volume.
        cfg = replace(self.preprocess, pad_multiple=1)
        img, _ = resample_slices_to_working(hu, spacing[1:], cfg)
        fg = foreground(labels, self.label_values).astype(np.float32)
        msk, _ = resample_slices_to_working(fg, spacing[1:], cfg, pad_value=0.0)
        mask = (msk >= 0.5).astype(np.uint8)
        hu16 = np.clip(np.round(img), -32768, 32767).astype(np.int16)
        positive_z = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
        return _CachedCase(case_id, hu16, mask, positive_z, float(spacing[0]))

    def _planes(self, c: _CachedCase, z: int) -> np.ndarray:
        """(C, h, w) HU: the slice and its context planes."""
        return context_planes(c.hu, [z], c.z_spacing, self.preprocess.slice_offsets_mm)[0]

    def set_epoch(self, epoch: int) -> None:
        """Draw a different set of random samples (same for every worker) for this epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.sampling.sequential:
            return len(self.index)
        return self.sampling.samples_per_epoch or len(self.index)

    def wants_positive(self, i: int) -> bool:
        """Whether random-mode item ``i`` falls on a slot for a crop with lesion (the share is
        exact over any run of consecutive items)."""
        p = self.sampling.positive_fraction
        return math.floor((i + 1) * p + 1e-9) > math.floor(i * p + 1e-9)

    def is_positive_item(self, i: int) -> bool:
        """Whether random-mode item ``i`` is drawn from a slice with lesion."""
        wants = self.wants_positive(i)
        if wants and self.positives:
            return True
        return not self.negatives and bool(self.positives)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        if self.sampling.sequential:
            k, z = self.index[i]
            return self._whole(k, z)
        rng = np.random.default_rng([self.sampling.seed, self.epoch, i])
        positive = self.is_positive_item(i)
        pool = self.positives if positive else self.negatives
        k, z = pool[int(rng.integers(len(pool)))]
        c = self.cases[k]
        return self._crop_item(self._planes(c, z), c.mask[z], positive, rng, c.case_id, z)

    def _crop_item(
        self,
        hu: np.ndarray,
        mask: np.ndarray,
        positive: bool,
        rng: np.random.Generator,
        case_id: str,
        z: int,
    ) -> dict:
        """A training item cut from a slice's planes: around a lesion pixel (up to
        ``positive_jitter`` of the side off centre) when ``positive``, anywhere otherwise;
        augmented."""
        size = self.sampling.crop_size or self.full_shape
        if self.sampling.crop_size is None:
            center = ((mask.shape[0] - 1) / 2, (mask.shape[1] - 1) / 2)
        elif positive:
            ys, xs = np.nonzero(mask)
            j = int(rng.integers(len(ys)))
            j_max = self.sampling.positive_jitter
            jitter = [rng.uniform(-j_max * s, j_max * s) for s in size]
            center = (ys[j] + jitter[0], xs[j] + jitter[1])
        else:
            center = tuple(rng.uniform(0, max(n - 1, 0)) for n in mask.shape)
        aug = self.sampling.augment if self.sampling.augment.enabled else None
        img, msk = augment_crop(hu, mask, center, size, aug, rng)
        return self._item(img, msk, case_id, z)

    def _whole(self, k: int, z: int) -> dict:
        c = self.cases[k]
        h, w = c.hu.shape[1:]
        img = np.full((self.preprocess.n_channels, *self.full_shape), AIR_HU, np.float32)
        msk = np.zeros(self.full_shape, np.float32)
        img[:, :h, :w] = self._planes(c, z)
        msk[:h, :w] = c.mask[z]
        return self._item(img, msk, c.case_id, z)

    def _item(self, hu: np.ndarray, mask: np.ndarray, case_id: str, z: int) -> dict:
        image = window_normalize(hu, self.preprocess)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image, np.float32)),
            "mask": torch.from_numpy(np.ascontiguousarray(mask, np.float32))[None],
            "case": case_id,
            "z": int(z),
        }


def _labelled_slices(case: Case, n_slices: int) -> np.ndarray:
    bad = [z for z in case.slices if z >= n_slices]
    if bad:
        raise ValueError(
            f"{case.label.parent / CASE_RECORD_NAME}: annotated slice(s) {bad[:5]} beyond the "
            f"scan's {n_slices} slices"
        )
    return np.asarray(case.slices, dtype=np.int64)


def augment_crop(
    hu: np.ndarray,
    mask: np.ndarray,
    center_yx: Sequence[float],
    size: Sequence[int],
    aug: AugmentConfig | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``size`` pixels around ``center_yx`` with one shared flip/rotate/scale transform.

    ``hu`` is one slice (H, W) or its context planes (C, H, W), which all get the same
    transform and intensity jitter, each its own noise (CT noise is independent between slices).
    Output pixels are sampled straight from the whole slice (one affine resampling, outside the
    slice = air / background), so rotations do not bring in padding from a tight crop. The
    mask is interpolated bilinearly and thresholded at 0.5 so its edge moves with the image.
    HU jitter and noise (``aug``) are applied to the image only. Returns float32 (HU, 0/1).
    """
    out_c = np.array([(s - 1) / 2 for s in size])
    a = np.eye(2)
    if aug is not None:
        theta = math.radians(rng.uniform(-aug.rotate_deg, aug.rotate_deg))
        scale = rng.uniform(*aug.scale_range)
        cos, sin = math.cos(theta), math.sin(theta)
        # Output -> input mapping: zooming in by ``scale`` samples the input with step 1/scale.
        a = np.array([[cos, -sin], [sin, cos]]) / scale
        flips = np.diag(
            [
                -1.0 if rng.random() < aug.flip_ud else 1.0,
                -1.0 if rng.random() < aug.flip_lr else 1.0,
            ]
        )
        a = a @ flips
    offset = np.asarray(center_yx, dtype=float) - a @ out_c
    planes = np.asarray(hu, dtype=np.float32)
    img = np.stack(
        [
            ndimage.affine_transform(
                plane, a, offset, output_shape=tuple(size), order=1, mode="constant", cval=AIR_HU
            )
            for plane in planes.reshape(-1, *planes.shape[-2:])
        ]
    ).reshape(*planes.shape[:-2], *size)
    msk = ndimage.affine_transform(
        mask.astype(np.float32),
        a,
        offset,
        output_shape=tuple(size),
        order=1,
        mode="constant",
        cval=0.0,
    )
    msk = (msk >= 0.5).astype(np.float32)
    if aug is not None:
        img = img * (1 + rng.uniform(-aug.hu_scale, aug.hu_scale))
        img = img + rng.uniform(-aug.hu_shift, aug.hu_shift)
        if aug.noise_std_hu > 0:
            img = img + rng.normal(0.0, aug.noise_std_hu, img.shape).astype(np.float32)
    return img.astype(np.float32), msk
