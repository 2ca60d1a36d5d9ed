"""Training slices for CDI-NSTSEG: 2-D axial slices (and their context planes) of the cases
training/cases.py finds, sampled, cropped and augmented.

Slices come out in a checkpoint's preprocessing (``PreprocessConfig``): display orientation
(read through ``napari_nstseg.io``, image and mask alike), resampled in-plane to the working
spacing, augmented in HU, then windowed and z-scored exactly as the inference engine does.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from napari_nstseg.preprocessing import (
    AIR_HU,
    PreprocessConfig,
    context_planes,
    resample_slices_to_working,
    window_normalize,
)
from napari_nstseg.training.cases import (
    CASE_RECORD_NAME,
    Case,
    default_label_values,
    foreground,
    load_case,
)
from napari_nstseg.training.organ_crops import (
    EXCLUDE_TRIES,
    CropBox,
    OrganCropConfig,
    box_around,
    centre_in_box,
    crop_boxes,
    cut_to_box,
    read_side_maps,
)


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
    - ``z_edge_fraction``: share of the crops with lesion drawn from a lesion's first and last
      ``z_edge_slices`` slices (its small, faint end cross-sections), and the same share of
      the crops without lesion drawn from the ``z_edge_slices`` slices just beyond them,
      centred where the lesion lies on its nearest slice (with ``positive_jitter``): the
      network learns where a tumour ends along z, not only that muscle looks like it. 0: every
      slice alike (the default).
      ``None`` yields whole slices padded to the largest slice of the dataset.
    - ``organ_crops``: share of the crops drawn around an organ as organ mode runs it (the
      run's ``OrganCropConfig``: inside the organ's box grown by the margin, air beyond it, at
      the engine's zoom for that organ; training/organ_crops.py), from cases with organ label
      maps (make-lesions' organsTr, a source block's organ labels); with lesion around a
      lesion in an organ box, without anywhere in a box. 0: none (the default).
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
    - ``online_min_contrast_hu``, ``online_diameter_mm``: with online lesions, the least
      |contrast| against the surrounding tissue and the diameter range (mm) the new lesions are
      drawn with, instead of those the make-lesions folder was made with (its stored
      validation and test cases keep theirs): training on lesions as visible as the ones
      evaluation counts as targets (20 HU, 10 mm) without remaking the data; None: the folder's.
      They apply to every set trained with lesions on the fly (``TrainConfig.extra_data`` too).
    """

    positive_fraction: float = 0.7
    crop_size: tuple[int, int] | None = (256, 256)
    positive_jitter: float = 0.25
    z_edge_fraction: float = 0.0
    z_edge_slices: int = 2
    organ_crops: float = 0.0
    samples_per_epoch: int | None = None
    sequential: bool = False
    label_values: tuple[int, ...] | None = None
    augment: AugmentConfig = AugmentConfig()
    seed: int = 0
    online_lesions: bool = False
    lesion_bank: int = 256
    online_min_contrast_hu: float | None = None
    online_diameter_mm: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.positive_fraction <= 1:
            raise ValueError(f"positive_fraction must be in [0, 1], got {self.positive_fraction!r}")
        if not 0 <= self.positive_jitter <= 0.5:
            raise ValueError(
                f"positive_jitter must be in [0, 0.5] (a share of the crop side), "
                f"got {self.positive_jitter!r}"
            )
        if not 0 <= self.z_edge_fraction <= 1:
            raise ValueError(f"z_edge_fraction is a share in [0, 1], got {self.z_edge_fraction!r}")
        if not 0 <= self.organ_crops <= 1:
            raise ValueError(f"organ_crops is a share in [0, 1], got {self.organ_crops!r}")
        if self.z_edge_slices < 1:
            raise ValueError(f"z_edge_slices must be at least 1, got {self.z_edge_slices!r}")
        if self.crop_size is not None and (len(self.crop_size) != 2 or min(self.crop_size) < 1):
            raise ValueError(
                f"crop_size must be two positive sizes or None, got {self.crop_size!r}"
            )
        if self.samples_per_epoch is not None and self.samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be positive, got {self.samples_per_epoch!r}")
        if self.lesion_bank < 1:
            raise ValueError(f"lesion_bank must be at least 1, got {self.lesion_bank!r}")
        if self.online_min_contrast_hu is not None and self.online_min_contrast_hu < 0:
            raise ValueError(
                "online_min_contrast_hu is a contrast in HU >= 0, "
                f"got {self.online_min_contrast_hu!r}"
            )
        if self.online_diameter_mm is not None:
            lo, hi = self.online_diameter_mm
            if not 0 < lo <= hi:
                raise ValueError(
                    f"online_diameter_mm must be 0 < low <= high, got {self.online_diameter_mm!r}"
                )


@dataclass
class _CachedCase:
    case_id: str
    hu: np.ndarray  # (z, h, w) int16 HU on the working grid
    mask: np.ndarray  # (z, h, w) uint8 0/1 on the working grid
    positive_z: np.ndarray  # indices of slices with lesion
    z_spacing: float  # mm between slices, for the context planes
    # The labelled slices when only these are (the others are never centre slices); None: all.
    slices: np.ndarray | None = None
    boxes: list[CropBox] = field(default_factory=list)  # organ boxes (organ crops)
    # Never tumour-free (a real, unlabelled tumour): no crop may overlap it; working grid.
    exclude: np.ndarray | None = None


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
        organs: OrganCropConfig | None = None,
    ) -> None:
        self.preprocess = preprocess or PreprocessConfig()
        self.sampling = sampling or SamplingConfig()
        self.organs = organs or OrganCropConfig()
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
            self._add_side_maps(item, *read_side_maps(case, hu.shape), spacing)
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
        self.edge_positives, self.edge_negatives = [], []
        for k, c in enumerate(self.cases):
            inside, beyond = z_edge_slices(
                c.positive_z, c.hu.shape[0], self.sampling.z_edge_slices, c.slices
            )
            self.edge_positives += [(k, z, z) for z in inside]
            self.edge_negatives += [(k, z, ref) for z, ref in beyond]
        m = self.preprocess.pad_multiple
        self.full_shape = tuple(-(-max(c.hu.shape[d] for c in self.cases) // m) * m for d in (1, 2))
        self.organ_boxes = [(k, b) for k, c in enumerate(self.cases) for b in c.boxes]
        self.organ_positives = [
            (k, z) for k, z in self.positives if any(b.z0 <= z < b.z1 for b in self.cases[k].boxes)
        ]
        if self.sampling.organ_crops > 0 and not self.sampling.sequential and not self.organ_boxes:
            warnings.warn(
                f"organ crops asked for, but no case has an organ label map holding organ "
                f"{', '.join(map(str, self.organs.organ_ids()))}; sampling without them",
                stacklevel=3,
            )

    def _add_side_maps(self, c: _CachedCase, organs, exclude, spacing) -> None:
        """A case's organ boxes (organ crops) and excluded region (working grid), when given
        on its native grid."""
        if organs is not None:
            c.boxes = crop_boxes(organs, spacing, self.preprocess, self.organs)
        if exclude is not None and exclude.any():
            cfg = replace(self.preprocess, pad_multiple=1)
            ex, _ = resample_slices_to_working(
                exclude.astype(np.float32), spacing[1:], cfg, pad_value=0.0
            )
            # Any share of an excluded voxel counts: the crop check must be conservative.
            c.exclude = (ex > 0).astype(np.uint8)

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
        # Without excluded regions the first try always succeeds, so runs without them draw
        # the same crops as before.
        for _ in range(EXCLUDE_TRIES):
            item = self._draw(positive, rng)
            if item is not None:
                return item
        raise RuntimeError(
            f"no crop clear of the excluded regions in {EXCLUDE_TRIES} tries (item {i}); the "
            "exclusion masks cover too much of the scans for this crop size"
        )

    def _draw(self, positive: bool, rng: np.random.Generator) -> dict | None:
        """One try at a random item; None when its crop overlaps an excluded region."""
        s = self.sampling
        # Drawn only when the setting is on, so that runs without it sample as before.
        if s.organ_crops > 0 and (self.organ_positives if positive else self.organ_boxes):
            if rng.random() < s.organ_crops:
                return self._organ_draw(positive, rng)
        edges = self.edge_positives if positive else self.edge_negatives
        if edges and s.z_edge_fraction > 0:
            if rng.random() < s.z_edge_fraction:
                k, z, ref = edges[int(rng.integers(len(edges)))]
                c = self.cases[k]
                return self._crop_item(
                    self._planes(c, z), c.mask[z], positive, rng, c.case_id, z, c.mask[ref],
                    exclude=self._exclude(c, z),
                )  # fmt: skip
        pool = self.positives if positive else self.negatives
        k, z = pool[int(rng.integers(len(pool)))]
        c = self.cases[k]
        return self._crop_item(
            self._planes(c, z), c.mask[z], positive, rng, c.case_id, z, exclude=self._exclude(c, z)
        )

    def _organ_draw(self, positive: bool, rng: np.random.Generator) -> dict | None:
        """One try at an organ crop (training/organ_crops.py): around a lesion in an organ's
        box, or anywhere in a box on a slice without lesion."""
        if positive:
            k, z = self.organ_positives[int(rng.integers(len(self.organ_positives)))]
            c = self.cases[k]
            found = box_around(c.boxes, z, c.mask[z], rng)
            if found is None:
                return None
            box, anchor = found
            centre = None
        else:
            k, box = self.organ_boxes[int(rng.integers(len(self.organ_boxes)))]
            c = self.cases[k]
            z, centre = centre_in_box(box, rng)
            anchor = None
            if np.any(c.positive_z == z) or (c.slices is not None and not np.any(c.slices == z)):
                return None
        return self._crop_item(
            self._planes(c, z), c.mask[z], positive, rng, c.case_id, z,
            box=box, anchor=anchor, centre=centre, exclude=self._exclude(c, z),
        )  # fmt: skip

    @staticmethod
    def _exclude(c: _CachedCase, z: int) -> np.ndarray | None:
        """Slice ``z``'s excluded region when it has one (None: nothing to keep clear of)."""
        if c.exclude is None or not c.exclude[z].any():
            return None
        return c.exclude[z]

    def _crop_item(
        self,
        hu: np.ndarray,
        mask: np.ndarray,
        positive: bool,
        rng: np.random.Generator,
        case_id: str,
        z: int,
        around: np.ndarray | None = None,
        *,
        box: CropBox | None = None,
        anchor: tuple[int, int] | None = None,
        centre: Sequence[float] | None = None,
        exclude: np.ndarray | None = None,
    ) -> dict | None:
        """A training item cut from a slice's planes: around a lesion pixel (``anchor``, else
        one of ``around``, the lesion mask of a nearby slice, or of the slice itself when
        ``positive``; up to ``positive_jitter`` of the side off centre), at ``centre``, or
        anywhere; augmented. With ``box`` (an organ crop) only the box's pixels, at its step;
        None when the crop would overlap ``exclude``."""
        size = self.sampling.crop_size or self.full_shape
        step = (1.0, 1.0) if box is None else box.step_yx
        if around is None and positive:
            around = mask
        if centre is None and self.sampling.crop_size is not None:
            if anchor is None and around is not None:
                ys, xs = np.nonzero(around)
                j = int(rng.integers(len(ys)))
                anchor = (ys[j], xs[j])
            if anchor is not None:
                j_max = self.sampling.positive_jitter
                jitter = [
                    rng.uniform(-j_max * n, j_max * n) * t for n, t in zip(size, step, strict=True)
                ]
                centre = (anchor[0] + jitter[0], anchor[1] + jitter[1])
            else:
                centre = tuple(rng.uniform(0, max(n - 1, 0)) for n in mask.shape)
        elif centre is None:
            centre = ((mask.shape[0] - 1) / 2, (mask.shape[1] - 1) / 2)
        if box is not None:
            if exclude is not None:
                exclude = cut_to_box(exclude, exclude, box, centre)[0]
            hu, mask, centre = cut_to_box(hu, mask, box, centre)
        aug = self.sampling.augment if self.sampling.augment.enabled else None
        cut = augment_crop(hu, mask, centre, size, aug, rng, step, exclude)
        return None if cut is None else self._item(*cut, case_id, z)

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


def z_edge_slices(
    positive_z: np.ndarray, n_slices: int, depth: int, allowed: np.ndarray | None = None
) -> tuple[list[int], list[tuple[int, int]]]:
    """A lesion's end slices along z: (the first and last ``depth`` slices of each run of
    slices with lesion, [(slice just beyond a run, the run's end slice nearest to it)]), up to
    ``depth`` beyond each end, within the volume and, when given, the ``allowed`` slices."""
    pos = np.asarray(positive_z, dtype=np.int64)
    ok = set(range(n_slices)) if allowed is None else {int(z) for z in allowed}
    inside: set[int] = set()
    beyond: dict[int, int] = {}
    positive = set(pos.tolist())
    if len(pos):
        breaks = np.flatnonzero(np.diff(pos) > 1)
        starts = np.r_[pos[0], pos[breaks + 1]]
        ends = np.r_[pos[breaks], pos[-1]]
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            inside.update(range(a, min(a + depth, b + 1)))
            inside.update(range(max(b - depth + 1, a), b + 1))
            for d in range(1, depth + 1):
                for z, ref in ((a - d, a), (b + d, b)):
                    if 0 <= z < n_slices and z not in positive and z not in beyond:
                        beyond[z] = ref
    return (
        sorted(z for z in inside if z in ok),
        sorted((z, ref) for z, ref in beyond.items() if z in ok),
    )


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
    step_yx: Sequence[float] = (1.0, 1.0),
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Crop ``size`` pixels around ``center_yx`` with one shared flip/rotate/scale transform.

    ``hu`` is one slice (H, W) or its context planes (C, H, W), which all get the same
    transform and intensity jitter, each its own noise (CT noise is independent between slices).
    Output pixels are sampled straight from the whole slice (one affine resampling, outside the
    slice = air / background), so rotations do not bring in padding from a tight crop. The
    mask is interpolated bilinearly and thresholded at 0.5 so its edge moves with the image.
    HU jitter and noise (``aug``) are applied to the image only. Returns float32 (HU, 0/1).
    ``step_yx``: input pixels per output pixel before the augmentation's scale (an organ
    crop's zoom: training/organ_crops.py). ``exclude``: a region (H, W) the crop must not
    reach (a real, unlabelled tumour); None is returned when it does, before any sampling.
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
    a = np.diag([float(v) for v in step_yx]) @ a
    offset = np.asarray(center_yx, dtype=float) - a @ out_c
    if exclude is not None:
        reach = ndimage.affine_transform(
            exclude.astype(np.uint8), a, offset, output_shape=tuple(size), order=0, cval=0
        )
        if reach.any():
            return None
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
