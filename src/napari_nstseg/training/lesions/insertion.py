"""Insertion of synthetic small, low-contrast tumours into real CT (CDI-NSTSEG, seed 000, targets
non-salient small tumours; with no labelled tumour CT, lesions are inserted into real scans).

The contrast is ADDED to the existing voxels as an offset times the lesion's profile
(shapes.py), so the scan's own noise and texture stay inside the lesion; the offset is scaled so
that the mean over the labelled support (profile >= 0.5) differs from the unchanged surroundings
by the requested contrast, the difference a reader measures with an ROI on the label. Where a
lesion may go: sites.py.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from napari_nstseg.training.lesions.config import SOFT_TISSUE, LesionConfig, LesionRecord
from napari_nstseg.training.lesions.shapes import LesionShape, lesion_profile
from napari_nstseg.training.lesions.sites import lesion_sites, single_component
from napari_nstseg.training.lesions.tissue import axial_max_diameter_mm, equivalent_diameter_mm


def insert_lesions(
    hu_zyx: np.ndarray,
    spacing_zyx,
    organ_labels: np.ndarray | None = None,
    config: LesionConfig | None = None,
    rng: np.random.Generator | None = None,
    scan: str = "",
    excluded: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, list[LesionRecord]]:
    """Insert synthetic lesions into a CT volume (z, y, x) in HU, none within reach of
    ``excluded`` (a region never tumour-free, e.g. around a real, unlabelled tumour).

    Returns the new float32 HU volume, an int16 instance mask (lesion k has value k, the
    support where the profile >= 0.5) and one record per lesion. ``rng`` defaults to one seeded
    with ``config.seed``, so equal inputs give equal outputs.
    """
    config = config or LesionConfig()
    rng = rng if rng is not None else np.random.default_rng(config.seed)
    sites = lesion_sites(hu_zyx, spacing_zyx, organ_labels, config, scan, excluded)
    hu, spacing = sites.hu, sites.spacing
    name = scan or "the volume"

    new = hu.copy()
    mask = np.zeros(hu.shape, dtype=np.int16)
    reserved = np.zeros(hu.shape, dtype=bool)
    records: list[LesionRecord] = []
    n_wanted = int(rng.integers(config.lesions_per_scan[0], config.lesions_per_scan[1] + 1))
    for _ in range(config.max_attempts):
        if len(records) == n_wanted:
            break
        drawn = sites.draw_centre(rng)
        if drawn is None:
            continue
        centre, organ_id = drawn
        centre = centre + rng.uniform(-0.5, 0.5, 3)
        lo_d, hi_d = config.diameter_mm
        diameter = float(np.exp(rng.uniform(np.log(lo_d), np.log(hi_d))))
        shape = LesionShape.random(rng, diameter, config)
        half = sites.box_margin(shape)
        if reserved[tuple(np.round(centre).astype(int))]:
            continue
        box_lo = np.round(centre).astype(int) - half
        box_hi = np.round(centre).astype(int) + half + 1
        if np.any(box_lo < 0) or np.any(box_hi > np.array(hu.shape)):
            continue
        box_shape = tuple(int(v) for v in box_hi - box_lo)
        sl = tuple(slice(int(a), int(b)) for a, b in zip(box_lo, box_hi, strict=True))
        profile = lesion_profile(shape, centre, box_lo, box_shape, spacing, sites.sigma_mm)
        support = profile >= 0.5
        if not single_component(support) or not sites.tissue_ok(sl, support, organ_id):
            continue
        zone = ndimage.distance_transform_edt(~support, sampling=spacing) <= sites.shell_outer_mm
        if (reserved[sl] & zone).any():
            continue
        shell = sites.shell(sl, profile, support, zone, organ_id)
        if shell is None:
            continue

        contrast = draw_contrast(rng, config)
        amplitude = contrast / float(profile[support].mean())
        new[sl] += (amplitude * profile).astype(np.float32)
        lesion_id = len(records) + 1
        mask[sl][support] = lesion_id
        reserved[sl] |= zone

        measured = float(new[sl][support].mean() - new[sl][shell].mean())
        soft_share, sd_hu = sites.surroundings(sl, profile, zone)
        n_vox = int(support.sum())
        centroid = np.argwhere(support).mean(axis=0) + box_lo
        records.append(
            LesionRecord(
                lesion_id=lesion_id,
                scan=scan,
                organ=config.target_organs[organ_id] if organ_id is not None else SOFT_TISSUE,
                centre_voxel_zyx=tuple(round(float(c), 3) for c in centroid),
                centre_mm_zyx=tuple(round(float(c), 3) for c in centroid * spacing),
                diameter_requested_mm=round(diameter, 3),
                diameter_equivalent_mm=round(equivalent_diameter_mm(n_vox, spacing), 3),
                diameter_axial_max_mm=round(axial_max_diameter_mm(support, spacing), 3),
                contrast_requested_hu=round(contrast, 3),
                contrast_measured_hu=round(measured, 3),
                offset_peak_hu=round(amplitude, 3),
                volume_ml=round(n_vox * float(np.prod(spacing)) / 1000.0, 6),
                n_voxels=n_vox,
                surround_soft_fraction=round(soft_share, 4),
                surround_sd_hu=round(sd_hu, 2),
            )
        )
    if not records:
        raise ValueError(
            f"Could not place any lesion in {name} after {config.max_attempts} attempts: it has "
            "no soft-tissue region large enough for the requested diameters; use a scan that "
            "covers the abdomen or smaller diameter_mm"
        )
    return new, mask, records


def draw_contrast(rng: np.random.Generator, config: LesionConfig) -> float:
    lo, hi = config.contrast_hu
    m = config.min_abs_contrast_hu
    if rng.random() < config.hypodense_fraction:
        return float(rng.uniform(lo, min(-m, hi)))
    return float(rng.uniform(max(m, lo), hi))
