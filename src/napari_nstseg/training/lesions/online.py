"""Training slices with lesions inserted on the fly, each at a site drawn afresh.

A `nstseg make-lesions` folder holds a fixed number of copies of each source block, so every
training lesion's site comes back epoch after epoch, and with few real scans a model learns
where these scans' lesions were rather than what a lesion looks like (docs/comparison.md, seen
anatomy). Here each positive training sample gets one new lesion, inserted into the lesion-free
source block on its native grid by make-lesions' own rules (training/lesions/: the same
shapes, partial-volume profile, placement tests and contrast against the local tissue) at a new
site with a new contrast. Only the rasterised shapes are drawn from a bank made once per block
(``SamplingConfig.lesion_bank`` of them), because rasterising one costs far more than a training
step's share of time. Crops without lesion are lesion-free crops of the same blocks, drawn by
slice; crops with lesion come from each block in the same share. A crop with lesion shows one
of its lesion's slices, so every lesion counts once, where stored cases weight a lesion by the
slices it spans (large lesions are shown more often there).

The lesion reaches the working grid as make-lesions' cases do, without resampling whole slices
again: bilinear resampling is linear and separable, so the slice with lesion on the working grid
is the cached lesion-free slice plus the resampled offset, and the offset (and its support, the
mask, thresholded at 0.5 after resampling as ``SliceDataset`` does) goes through the rows and
columns of the resampling maps that touch its box (``working_resampling_matrices``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from napari_nstseg.io.readers import read_ct
from napari_nstseg.preprocessing import (
    PreprocessConfig,
    context_planes,
    working_resampling_matrices,
)
from napari_nstseg.training.data import SamplingConfig, SliceDataset
from napari_nstseg.training.lesions.config import LesionConfig, lesion_config_from_dict
from napari_nstseg.training.lesions.insertion import draw_contrast
from napari_nstseg.training.lesions.shapes import LesionShape, lesion_profile
from napari_nstseg.training.lesions.sites import LesionSites, lesion_sites, single_component
from napari_nstseg.training.lesions.sources import from_record, read_exclusion, read_organs
from napari_nstseg.training.organ_crops import OrganCropConfig, box_around

# Placements tried per positive sample before giving up. One try costs about 0.05 ms (a few
# box-sized checks); about one in three passes in the pelvis block of the bundled recipe but
# one in 35 in its chest block, and with `--min-surround-soft 0.8` about one in 800 there (5 of
# 4000 tries), so the cap is set where even that fails about once in 10^10 samples and a hopeless
# setting still errors within a second or two.
MAX_ATTEMPTS = 20000


@dataclass
class SourceBlock:
    """A lesion-free z-block of a real scan (display orientation, HU) to insert lesions into."""

    name: str
    hu: np.ndarray  # (z, y, x)
    spacing: tuple[float, float, float]  # (z, y, x) mm
    organ_labels: np.ndarray | None = None  # TotalSegmentator ids on the same grid
    exclude: np.ndarray | None = None  # never tumour-free (bool, same grid): no lesion, no crop


def read_source_blocks(
    folder: str | Path, split: str = "train"
) -> tuple[list[SourceBlock], LesionConfig]:
    """The source blocks of one split of a `nstseg make-lesions` folder, read from the scans
    its dataset.json names, and the lesion settings the folder was made with."""
    path = Path(folder) / "dataset.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the lesion dataset's record ({e})") from None
    regions = meta.get("regions")
    if not isinstance(regions, list) or "lesion_config" not in meta:
        raise ValueError(
            f"{path}: no record of source regions; training with lesions inserted on the fly "
            "needs a folder made by `nstseg make-lesions` (version 2026-12 or later: make it "
            "again)"
        )
    config = lesion_config_from_dict(meta["lesion_config"])
    organ_sources, exclusions = from_record(meta)
    chosen = [r for r in regions if r.get("split") == split]
    if not chosen:
        raise ValueError(f"{path}: no source region is in the {split!r} split")
    blocks, volumes = [], {}
    for r in chosen:
        source = str(r["source"])
        if source not in volumes:
            if not Path(source).exists():
                raise ValueError(
                    f"{path}: source scan {source} is gone; lesions are inserted into it on the "
                    "fly, so it must stay where make-lesions read it"
                )
            ct = read_ct(source)
            labels, ex = organ_sources.get(source), exclusions.get(source)
            organs = None if labels is None else read_organs(labels, ct.geometry)
            excluded = None if ex is None else read_exclusion(ex, ct.geometry)
            volumes[source] = (ct, organs, excluded)
        ct, organs, excluded = volumes[source]
        z0, z1 = (int(z) for z in r["z_range_display"])
        blocks.append(
            SourceBlock(
                f"{Path(source).name} z{z0:03d}-{z1:03d}",
                ct.hu[z0:z1],
                tuple(float(s) for s in ct.spacing),
                None if organs is None else organs[z0:z1],
                None if excluded is None else excluded[z0:z1],
            )
        )
    return blocks, config


def online_lesion_config(folder: LesionConfig, sampling: SamplingConfig) -> LesionConfig:
    """The lesion settings of on-the-fly insertion: the folder's, with the sampling's
    ``online_min_contrast_hu`` and ``online_diameter_mm`` in place of its own where given."""
    changes: dict[str, Any] = {}
    if sampling.online_min_contrast_hu is not None:
        changes["min_abs_contrast_hu"] = float(sampling.online_min_contrast_hu)
    if sampling.online_diameter_mm is not None:
        changes["diameter_mm"] = tuple(float(v) for v in sampling.online_diameter_mm)
    if not changes:
        return folder
    try:
        return replace(folder, **changes)
    except ValueError as e:
        raise ValueError(f"the on-the-fly lesions' settings: {e}") from None


@dataclass
class _Footprint:
    """A rasterised lesion shape on a block's grid, centred in its box (half + sub-voxel)."""

    half: np.ndarray  # (3,) the box spans voxel - half .. voxel + half
    profile: np.ndarray  # partial-volume fraction, float32
    support: np.ndarray  # profile >= 0.5: the label
    zone: np.ndarray  # support and its measuring shell: where the tissue is checked


@dataclass
class _Block:
    name: str
    sites: LesionSites
    bank: list[_Footprint]
    rows: np.ndarray  # (h, H) native -> working rows
    cols: np.ndarray  # (w, W) native -> working columns


def _footprint_bank(
    sites: LesionSites, n: int, rng: np.random.Generator, name: str
) -> list[_Footprint]:
    config = sites.config
    lo_d, hi_d = np.log(config.diameter_mm[0]), np.log(config.diameter_mm[1])
    bank: list[_Footprint] = []
    for _ in range(20 * n):
        if len(bank) == n:
            break
        shape = LesionShape.random(rng, float(np.exp(rng.uniform(lo_d, hi_d))), config)
        half = sites.box_margin(shape)
        box_shape = tuple(int(v) for v in 2 * half + 1)
        if any(b > s for b, s in zip(box_shape, sites.hu.shape, strict=True)):
            continue  # can never fit this block
        centre = half + rng.uniform(-0.5, 0.5, 3)
        profile = lesion_profile(
            shape, centre, np.zeros(3, int), box_shape, sites.spacing, sites.sigma_mm
        ).astype(np.float32)
        support = profile >= 0.5
        if not single_component(support):
            continue
        zone = ndimage.distance_transform_edt(~support, sampling=sites.spacing)
        bank.append(_Footprint(half, profile, support, zone <= sites.shell_outer_mm))
    if not bank:
        raise ValueError(
            f"{name}: no lesion of {config.diameter_mm[0]:g}-{config.diameter_mm[1]:g} mm fits "
            "this block; use smaller diameters or thicker blocks"
        )
    return bank


@dataclass
class Placement:
    """A lesion placed in a source block: where, its offset in HU on the native grid, and what
    it adds on the working grid (one slice of it chosen for the training crop)."""

    z: int  # the native slice the crop is cut from (it holds the lesion on the working grid)
    box: tuple[slice, slice, slice]  # native (z, y, x) box of the lesion and its shell
    native_offset: np.ndarray  # HU added inside ``box`` (contrast x partial-volume profile)
    support: np.ndarray  # the lesion's label inside ``box`` (profile >= 0.5)
    working_box: tuple[slice, slice]  # the working-grid rows and columns the box reaches
    offset: np.ndarray  # HU added there, per native slice of the block (z, rows, cols)
    mask: np.ndarray  # slice z's label on the working box (rows, cols), 0/1


class OnlineLesionDataset(SliceDataset):
    """Random training crops of lesion-free source blocks, each positive one with one new
    lesion inserted on the fly (see the module docstring); items as ``SliceDataset``'s.

    Reproducible like ``SliceDataset``: item ``i`` of epoch ``e`` depends only on (seed, e, i)
    (and the bank, made from the seed). Validation stays on stored cases: a validation set must
    not change between epochs.
    """

    def __init__(
        self,
        blocks: Sequence[SourceBlock],
        lesion_config: LesionConfig,
        preprocess: PreprocessConfig | None = None,
        sampling: SamplingConfig | None = None,
        organs: OrganCropConfig | None = None,
    ) -> None:
        self.preprocess = preprocess or PreprocessConfig()
        self.sampling = sampling or SamplingConfig()
        self.organs = organs or OrganCropConfig()
        if self.sampling.sequential:
            raise ValueError("lesions inserted on the fly are for training; validate on cases")
        if not blocks:
            raise ValueError("OnlineLesionDataset needs at least one source block")
        self.epoch = 0
        self.label_values = (1,)
        self.lesion_config = lesion_config
        self.blocks: list[_Block] = []
        cached = []
        for k, b in enumerate(blocks):
            if b.organ_labels is not None and b.organ_labels.shape != b.hu.shape:
                raise ValueError(
                    f"{b.name}: organ labels of shape {b.organ_labels.shape} do not match the "
                    f"block's shape {b.hu.shape}"
                )
            sites = lesion_sites(b.hu, b.spacing, b.organ_labels, lesion_config, b.name, b.exclude)
            rng = np.random.default_rng([self.sampling.seed, k, 0x1E5])
            bank = _footprint_bank(sites, self.sampling.lesion_bank, rng, b.name)
            rows, cols = working_resampling_matrices(b.hu.shape[1:], b.spacing[1:], self.preprocess)
            self.blocks.append(_Block(b.name, sites, bank, rows, cols))
            cached.append(self._cache(b.name, b.hu, np.zeros(b.hu.shape, np.uint8), b.spacing))
            self._add_side_maps(cached[-1], b.organ_labels, b.exclude, b.spacing)
        self._set_cases(cached)
        # The block of a crop with lesion is drawn by its share of slices, as lesion-free crops
        # are drawn by slice, so every block gets the same share of crops with lesion. Drawing
        # a new block at each failed placement instead would favour the blocks where placing
        # is easy: a block that passes one try in twenty would get almost none, and a model
        # learns to find nothing there.
        slices = np.array([b.hu.shape[0] for b in blocks], float)
        self._block_p = slices / slices.sum()

    def is_positive_item(self, i: int) -> bool:
        return self.wants_positive(i)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        if not self.is_positive_item(i):
            return super().__getitem__(i)  # a lesion-free crop: every slice is a negative
        rng = np.random.default_rng([self.sampling.seed, self.epoch, i, 1])
        k = int(rng.choice(len(self.blocks), p=self._block_p))
        c = self.cases[k]
        share = self.sampling.organ_crops
        # An organ crop (training/organ_crops.py) around a lesion placed in an organ; drawn
        # only when the setting is on, so that runs without it sample as before.
        organ = share > 0 and bool(c.boxes) and bool(self.blocks[k].sites.organ_candidates)
        organ = organ and rng.random() < share
        for _ in range(MAX_ATTEMPTS):
            placed = self.place(k, rng, in_organ=organ)
            if placed is None:
                continue
            planes = self._planes(c, placed.z)
            rows, cols = placed.working_box
            planes[:, rows, cols] += context_planes(
                placed.offset, [placed.z], c.z_spacing, self.preprocess.slice_offsets_mm
            )[0]
            mask = np.zeros(planes.shape[1:], np.float32)
            mask[rows, cols] = placed.mask
            box = anchor = None
            if organ:
                found = box_around(c.boxes, placed.z, mask, rng)
                if found is None:  # an organ the run does not crop around
                    continue
                box, anchor = found
            item = self._crop_item(
                planes, mask, True, rng, c.case_id, placed.z,
                box=box, anchor=anchor, exclude=self._exclude(c, placed.z),
            )  # fmt: skip
            if item is not None:
                return item
        raise RuntimeError(
            f"could not place a lesion in {self.blocks[k].name} after {MAX_ATTEMPTS} attempts; "
            "the block holds too little soft tissue for the lesion settings"
        )

    def place(self, k: int, rng: np.random.Generator, in_organ: bool = False) -> Placement | None:
        """One try at placing a new lesion in block ``k`` by make-lesions' rules (``in_organ``:
        in a target organ); None when the drawn site fails them."""
        block = self.blocks[k]
        sites = block.sites
        drawn = sites.draw_centre(rng, in_organ)
        if drawn is None:
            return None
        voxel, organ_id = drawn
        fp = block.bank[int(rng.integers(len(block.bank)))]
        lo, hi = voxel - fp.half, voxel + fp.half + 1
        if np.any(lo < 0) or np.any(hi > np.array(sites.hu.shape)):
            return None
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        if not sites.tissue_ok(box, fp.support, organ_id):
            return None
        if sites.shell(box, fp.profile, fp.support, fp.zone, organ_id) is None:
            return None
        native = draw_contrast(rng, sites.config) / float(fp.profile[fp.support].mean())
        native = (native * fp.profile).astype(np.float32)
        # The rows and columns of the working grid that the box reaches.
        rows, cols = block.rows[:, box[1]], block.cols[:, box[2]]
        r = np.flatnonzero(np.abs(rows).sum(axis=1) > 0)
        c = np.flatnonzero(np.abs(cols).sum(axis=1) > 0)
        rows, cols = rows[r[0] : r[-1] + 1], cols[c[0] : c[-1] + 1]
        support = rows @ fp.support.astype(np.float32) @ cols.T >= 0.5
        with_lesion = np.flatnonzero(support.any(axis=(1, 2)))
        if with_lesion.size == 0:
            return None  # too small to survive the working grid
        dz = int(with_lesion[rng.integers(with_lesion.size)])
        offset = np.zeros((sites.hu.shape[0], rows.shape[0], cols.shape[0]), np.float32)
        offset[box[0]] = rows @ native @ cols.T
        working_box = (slice(int(r[0]), int(r[-1]) + 1), slice(int(c[0]), int(c[-1]) + 1))
        return Placement(
            int(lo[0]) + dz,
            box,
            native,
            fp.support,
            working_box,
            offset,
            support[dz].astype(np.float32),
        )
