"""Where lesions may go in one volume (LesionSites), computed once per volume.

Only in soft tissue inside the body (support median HU within ``median_hu``; at least
``min_soft_fraction`` of its voxels in ``soft_tissue_hu`` and none outside ``never_hu``, so no
air or bone and little fat), away from bone and opacified vessels (``dense_mask``: marrow and the
saturated window there would hide a lesion), wholly inside the volume, over tissue whose mean
matches its surrounding shell within ``max_background_step_hu`` (else "contrast to the local
tissue" is undefined), with at least ``min_surround_soft`` of the ring around it soft tissue
(default 0: lesions may abut fat, gas or bone, as tumours do), and, where organ labels exist, a
share ``organ_fraction`` inside one of the target organs (chosen uniformly among those present,
so the small pancreas gets as many as the liver). Every lesion records its surroundings
(``surround_soft_fraction``, ``surround_sd_hu``): a dark lesion against a border with fat is far
harder to see than its contrast to the soft tissue beside it says, so results can be split by
it. Each lesion keeps a reserved zone (its support plus the measuring shell), and zones never
overlap, so lesions neither touch nor disturb each other's contrast measurement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from napari_nstseg.training.lesions.config import LesionConfig
from napari_nstseg.training.lesions.shapes import EDGE_WIDTH_PER_SIGMA, LesionShape
from napari_nstseg.training.lesions.tissue import body_mask, dense_mask

_FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


@dataclass
class LesionSites:
    """Where lesions may go in one volume: the tissue masks every placement is checked against,
    computed once per volume (``lesion_sites``)."""

    hu: np.ndarray  # (z, y, x) float32 HU, the volume as it was before any lesion
    spacing: np.ndarray  # (3,) mm
    config: LesionConfig
    body: np.ndarray
    soft: np.ndarray  # soft tissue in the body, away from bone and opacified vessels
    organ_labels: np.ndarray | None
    organ_candidates: dict[int, np.ndarray]  # flat voxel indices of soft tissue per organ
    tissue_flat: np.ndarray  # flat voxel indices of soft tissue outside the target organs
    sigma_mm: float  # of the edge blur
    shell_outer_mm: float  # outer radius of the measuring shell beyond the support
    # An excluded region (a real, unlabelled tumour) grown by shell_outer_mm: no lesion there.
    excluded: np.ndarray | None = None

    def draw_centre(
        self, rng: np.random.Generator, in_organ: bool = False
    ) -> tuple[np.ndarray, int | None] | None:
        """A candidate voxel (z, y, x) and its target organ id (None: other soft tissue), drawn
        as insert_lesions draws them (``in_organ``: in a target organ whatever the
        ``organ_fraction``, for organ crops); None when the drawn kind of tissue has no voxel."""
        organ_id = None
        candidates = self.tissue_flat
        if self.organ_candidates and (in_organ or rng.random() < self.config.organ_fraction):
            ids = sorted(self.organ_candidates)
            organ_id = ids[int(rng.integers(len(ids)))]
            candidates = self.organ_candidates[organ_id]
        if candidates.size == 0:
            return None
        voxel = candidates[rng.integers(candidates.size)]
        return np.array(np.unravel_index(voxel, self.hu.shape)), organ_id

    def box_margin(self, shape: LesionShape) -> np.ndarray:
        """Half size (z, y, x) in voxels of the box that holds a lesion and its shell."""
        return np.ceil((shape.extent_mm + self.shell_outer_mm) / self.spacing).astype(int) + 1

    def tissue_ok(self, sl: tuple[slice, ...], support: np.ndarray, organ_id: int | None) -> bool:
        """Whether the tissue under a lesion's support in box ``sl`` may hold it: inside the
        body, soft tissue (median, range, share), and mostly inside its organ if it has one."""
        c = self.config
        original = self.hu[sl][support]
        if not self.body[sl][support].all():
            return False
        if self.excluded is not None and self.excluded[sl][support].any():
            return False
        if not c.median_hu[0] <= float(np.median(original)) <= c.median_hu[1]:
            return False
        if original.min() < c.never_hu[0] or original.max() > c.never_hu[1]:
            return False
        if self.soft[sl][support].mean() < c.min_soft_fraction:
            return False
        return organ_id is None or (self.organ_labels[sl][support] == organ_id).mean() >= (
            c.min_in_organ
        )

    def shell(
        self,
        sl: tuple[slice, ...],
        profile: np.ndarray,
        support: np.ndarray,
        zone: np.ndarray,
        organ_id: int | None,
    ) -> np.ndarray | None:
        """The ring of tissue around a lesion where its contrast is measured, or None where it
        is too small, holds less soft tissue than ``min_surround_soft``, or the tissue under the
        lesion does not match it (then "contrast to the local tissue" is undefined: the lesion
        would straddle liver and vessel, muscle and fat)."""
        ring = _ring(profile, zone)
        if self.soft[sl][ring].mean() < self.config.min_surround_soft:
            return None
        shell = ring & self.soft[sl]
        if organ_id is not None:
            in_organ = shell & (self.organ_labels[sl] == organ_id)
            shell = in_organ if in_organ.sum() >= 10 else shell
        if shell.sum() < 5:
            return None
        step = float(self.hu[sl][support].mean() - self.hu[sl][shell].mean())
        if abs(step) > self.config.max_background_step_hu:
            return None
        return shell

    def surroundings(
        self, sl: tuple[slice, ...], profile: np.ndarray, zone: np.ndarray
    ) -> tuple[float, float]:
        """Share of soft tissue in the ring around a lesion, and the SD of its HU (every
        voxel, before insertion): what a reader sees the lesion against."""
        ring = _ring(profile, zone)
        return float(self.soft[sl][ring].mean()), float(self.hu[sl][ring].std())


def _ring(profile: np.ndarray, zone: np.ndarray) -> np.ndarray:
    """The measuring zone beyond the lesion's edge (where its profile has died out)."""
    return (profile < 0.02) & zone


def lesion_sites(
    hu_zyx: np.ndarray,
    spacing_zyx,
    organ_labels: np.ndarray | None = None,
    config: LesionConfig | None = None,
    scan: str = "",
    excluded: np.ndarray | None = None,
) -> LesionSites:
    """The tissue masks of a CT volume (z, y, x) in HU where ``config``'s lesions may go;
    none within reach of ``excluded`` (a region never tumour-free: its lesion's edge and
    measuring shell keep clear of it too)."""
    config = config or LesionConfig()
    hu = np.asarray(hu_zyx, dtype=np.float32)
    name = scan or "the volume"
    if hu.ndim != 3:
        raise ValueError(f"{name}: lesions need a 3-D (z, y, x) volume, got {hu.ndim}-D")
    spacing = np.asarray(spacing_zyx, dtype=float)
    if spacing.shape != (3,) or np.any(spacing <= 0):
        raise ValueError(f"{name}: spacing must be three positive mm values, got {spacing_zyx}")
    if organ_labels is not None and tuple(organ_labels.shape) != hu.shape:
        raise ValueError(
            f"{name}: organ labels of shape {tuple(organ_labels.shape)} do not match the scan's "
            f"shape {hu.shape}"
        )
    edge = config.edge_softness_mm
    edge = float(np.mean(spacing[1:])) if edge is None else edge
    sigma_mm = edge / EDGE_WIDTH_PER_SIGMA
    # The measuring shell starts where the profile has died out and is shell_mm thick.
    shell_outer_mm = 3 * sigma_mm + float(spacing.max()) + config.shell_mm

    body = body_mask(hu, config.body_hu)
    soft = body & (hu >= config.soft_tissue_hu[0]) & (hu <= config.soft_tissue_hu[1])
    if config.dense_hu is not None:
        soft &= ~dense_mask(
            hu, spacing, config.dense_hu, config.dense_hole_mm2, config.dense_margin_mm
        )
    reach = None
    if excluded is not None:
        if tuple(excluded.shape) != hu.shape:
            raise ValueError(
                f"{name}: the excluded region of shape {tuple(excluded.shape)} does not match "
                f"the scan's shape {hu.shape}"
            )
        if excluded.any():
            reach = grown(excluded.astype(bool), spacing, shell_outer_mm)
            soft &= ~reach
    organ_candidates: dict[int, np.ndarray] = {}
    tissue_candidates = soft
    if organ_labels is not None:
        targets = np.isin(organ_labels, list(config.target_organs))
        tissue_candidates = soft & ~targets
        for oid in config.target_organs:
            cand = np.flatnonzero(soft & (organ_labels == oid))
            if cand.size:
                organ_candidates[oid] = cand
    return LesionSites(
        hu, spacing, config, body, soft, organ_labels, organ_candidates,
        np.flatnonzero(tissue_candidates), sigma_mm, shell_outer_mm, reach,
    )  # fmt: skip


def grown(region: np.ndarray, spacing, margin_mm: float) -> np.ndarray:
    """``region`` grown by ``margin_mm`` (3-D, in mm), the distance computed only over its
    bounding box grown by the margin (whole scans are big)."""
    (box,) = ndimage.find_objects(region.astype(np.uint8))
    pad = [int(np.ceil(margin_mm / s)) + 1 for s in spacing]
    box = tuple(
        slice(max(0, b.start - p), min(n, b.stop + p))
        for b, p, n in zip(box, pad, region.shape, strict=True)
    )
    out = np.zeros(region.shape, bool)
    out[box] = ndimage.distance_transform_edt(~region[box], sampling=spacing) <= margin_mm
    return out


def single_component(support: np.ndarray) -> bool:
    """Whether a lesion's support is one 26-connected piece (a perturbed shape can split)."""
    return bool(support.any()) and ndimage.label(support, _FULL_CONNECTIVITY)[1] == 1
