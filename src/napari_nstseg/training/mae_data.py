"""Normal tissue for the masked autoencoder (GRCSF 002): which scans, which zones stay out
(tumours, regions that hold an unlabelled tumour), and random crops of what is left."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from napari_nstseg.preprocessing import PreprocessConfig, window_normalize
from napari_nstseg.training.cases import (
    SPLIT_SEED,
    TEST_FRACTION,
    VAL_FRACTION,
    VOLUME_SUFFIXES,
    find_cases,
    is_case_folder_set,
    split_cases,
)
from napari_nstseg.training.data import AugmentConfig, augment_crop


@dataclass(frozen=True)
class MAESource:
    """One CT volume and, optionally, a label map on its grid whose ``exclude_labels`` (None:
    every label > 0) mark tissue the autoencoder must never learn to reconstruct."""

    image: Path
    exclude: Path | None = None
    exclude_labels: tuple[int, ...] | None = None


def _labelled_sets(root: Path, split_file: str | Path | None, exclude: bool):
    cases = find_cases(root, split_file)
    split = split_cases(cases, VAL_FRACTION, TEST_FRACTION, SPLIT_SEED)

    def sources(part: str) -> list[MAESource]:
        return [MAESource(c.image, c.label if exclude else None) for c in split[part]]

    return sources("train"), sources("val")


def read_sources_file(path: str | Path) -> tuple[list[MAESource], list[MAESource]]:
    """(train, val) sources of a JSON spec: ``root`` (relative to the file), ``volumes`` (each
    ``{"image", "exclude"?, "exclude_labels"?}``, relative to root) and ``cases`` (``{"folder",
    "split_file"?}``: a labelled case-folder set whose training patients count with their
    tumours left out, and whose validation patients validate)."""
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    root = (path.parent / spec.get("root", ".")).resolve()
    train: list[MAESource] = []
    val: list[MAESource] = []
    for entry in spec.get("volumes", []):
        image = root / entry["image"]
        if not image.is_file():
            raise ValueError(f"{path}: {image} does not exist")
        exclude = root / entry["exclude"] if entry.get("exclude") else None
        labels = (
            tuple(int(v) for v in entry["exclude_labels"]) if "exclude_labels" in entry else None
        )
        train.append(MAESource(image, exclude, labels))
    cases = spec.get("cases")
    if cases:
        split_file = path.parent / cases["split_file"] if cases.get("split_file") else None
        t, v = _labelled_sets(root / cases["folder"], split_file, exclude=True)
        train += t
        val += v
    if not train:
        raise ValueError(f"{path}: names no volume")
    return train, val


def find_sources(data: str | Path) -> tuple[list[MAESource], list[MAESource]]:
    """(train, val) CT volumes for MAE pretraining: a JSON sources file; a case-folder set's
    training patients with their tumours left out (validation: its validation patients); an MSD
    folder's training-split images (validation: its val split); every volume file under a
    folder (recursively); or one file."""
    root = Path(data)
    if root.is_file() and root.suffix == ".json":
        return read_sources_file(root)
    if root.is_file():
        return [MAESource(root)], []
    if not root.is_dir():
        raise ValueError(f"{root}: no such file or folder of CT volumes.")
    if is_case_folder_set(root):
        return _labelled_sets(root, None, exclude=True)
    if (root / "imagesTr").is_dir():
        try:
            return _labelled_sets(root, None, exclude=False)
        except ValueError:
            pass  # an MSD folder without pairs is still a folder of CT volumes: read them all
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and not p.name.startswith(".")
        and any(p.name.lower().endswith(s) for s in VOLUME_SUFFIXES)
    )
    if not files:
        raise ValueError(f"{root}: found no CT volume ({', '.join(VOLUME_SUFFIXES)}).")
    return [MAESource(p) for p in files], []


def find_volumes(data: str | Path) -> list[Path]:
    """The training CT volumes ``find_sources`` names (exclusions aside)."""
    return [s.image for s in find_sources(data)[0]]


def _excluded(source: MAESource, ct, margin_mm: float) -> np.ndarray | None:
    """Boolean (z, y, x) zone to keep out, grown by ``margin_mm`` in 3-D, on the CT's grid."""
    from napari_nstseg.io.readers import read_mask

    if source.exclude is None:
        return None
    labels = read_mask(source.exclude, like=ct.geometry)
    zone = labels > 0 if source.exclude_labels is None else np.isin(labels, source.exclude_labels)
    if not zone.any() or margin_mm <= 0:
        return zone
    return ndimage.distance_transform_edt(~zone, sampling=ct.spacing) <= margin_mm


class UnlabeledSlices(Dataset):
    """Random square crops of axial slices of CT, for MAE pretraining.

    Volumes are resampled in-plane to the working spacing once and cached as int16 HU. A crop
    is centred in the body (HU > -500) and never touches a source's excluded zone (grown by
    ``exclude_margin_mm``): slices where no crop fits are left out. Item ``i`` of epoch ``e``
    depends only on (seed, e, i), like SliceDataset. ``sequential`` yields each usable slice
    once (one fixed crop, no augmentation) for validation.
    """

    def __init__(
        self,
        sources: Sequence[MAESource | Path],
        preprocess: PreprocessConfig,
        crop_size: int,
        samples_per_epoch: int | None = None,
        seed: int = 0,
        sequential: bool = False,
        exclude_margin_mm: float = 10.0,
    ) -> None:
        from napari_nstseg.io.readers import read_ct
        from napari_nstseg.preprocessing import resample_slices_to_working

        if not sources:
            raise ValueError("MAE pretraining needs at least one CT volume.")
        self.preprocess = preprocess
        self.crop = (int(crop_size), int(crop_size))
        self.seed, self.epoch, self.sequential = seed, 0, sequential
        cfg = replace(preprocess, pad_multiple=1)
        self.volumes: list[np.ndarray] = []
        self.centres: list[list[np.ndarray]] = []  # per volume, per slice: allowed (y, x)
        for source in sources:
            source = source if isinstance(source, MAESource) else MAESource(Path(source))
            ct = read_ct(source.image)
            hu, _ = resample_slices_to_working(ct.hu, ct.spacing[1:], cfg)
            allowed = hu > -500
            zone = _excluded(source, ct, exclude_margin_mm)
            if zone is not None and zone.any():
                z, _ = resample_slices_to_working(
                    zone.astype(np.float32), ct.spacing[1:], cfg, mode="nearest", pad_value=0.0
                )
                # A centre is allowed when the whole crop around it stays clear of the zone, also
                # rotated by 10 degrees and zoomed out by 1/0.9 (the augmentation): 1.3 x.
                reach = tuple(int(np.ceil(1.3 * n)) for n in self.crop)
                near = ndimage.maximum_filter(z > 0.5, size=(1, *reach), mode="constant")
                allowed &= ~near
            self.volumes.append(np.clip(np.round(hu), -32768, 32767).astype(np.int16))
            self.centres.append([np.argwhere(a).astype(np.int16) for a in allowed])
        self.index = [
            (k, z) for k, c in enumerate(self.centres) for z in range(len(c)) if len(c[z])
        ]
        if not self.index:
            raise ValueError("no slice leaves room for a crop outside the excluded zones")
        self.samples_per_epoch = samples_per_epoch
        self.augment = AugmentConfig(rotate_deg=10.0, noise_std_hu=0.0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if self.sequential:
            return len(self.index)
        return self.samples_per_epoch or len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        if self.sequential:
            rng, aug = np.random.default_rng([self.seed, i]), None
            k, z = self.index[i]
        else:
            rng, aug = np.random.default_rng([self.seed, self.epoch, i]), self.augment
            k, z = self.index[int(rng.integers(len(self.index)))]
        hu = self.volumes[k][z].astype(np.float32)
        centres = self.centres[k][z]
        center = tuple(centres[int(rng.integers(len(centres)))])
        img, _ = augment_crop(hu, np.zeros(hu.shape, np.uint8), center, self.crop, aug, rng)
        image = window_normalize(img, self.preprocess)
        return {"image": torch.from_numpy(np.ascontiguousarray(image, np.float32))[None]}
