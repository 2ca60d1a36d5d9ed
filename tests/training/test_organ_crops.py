"""Organ crops for organ-mode weights (training/organ_crops.py): drawn inside the organ's box
grown by the margin, air beyond it, at the pixel size the engine gives that box (a round trip
through a HU ramp whose slope reads the pixel size back), around lesions placed in the organ;
and excluded regions (a real, unlabelled tumour) that no crop and no lesion ever reach."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_nstseg.inference.organs import organ_boxes
from napari_nstseg.preprocessing import PreprocessConfig, resample_slices_to_working
from napari_nstseg.training.data import AugmentConfig, SamplingConfig
from napari_nstseg.training.lesions import LesionConfig, insert_lesions
from napari_nstseg.training.lesions.online import OnlineLesionDataset, SourceBlock
from napari_nstseg.training.organ_crops import OrganCropConfig

SPACING = (2.5, 0.8, 0.8)
PRE = PreprocessConfig(working_spacing_mm=1.5)
LESIONS = LesionConfig(diameter_mm=(4.0, 7.0), shell_mm=2.0, contrast_hu=(-40.0, 30.0))
ORGAN = (slice(4, 16), slice(25, 50), slice(25, 55))  # pancreas (7), 20 x 24 mm
ORGANS = OrganCropConfig(field_mm=60.0, min_zoom=1.0, max_zoom=2.0, margin_mm=5.0)
# HU = -280 + 6 y + 4 x (mm): the crop's slope along its rows and columns is 6 and 4 times its
# pixel size, steep against the cache's whole-HU steps, and inside the organ's box every value
# stays within the abdomen window (no clipping).
SLOPE = (6.0, 4.0)
BASE_HU = -280.0


def ramp_block(shape=(20, 80, 80)) -> SourceBlock:
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    hu = (BASE_HU + SLOPE[0] * y * SPACING[1] + SLOPE[1] * x * SPACING[2]).astype(np.float32)
    organs = np.zeros(shape, np.uint8)
    organs[ORGAN] = 7
    return SourceBlock("ramp z000-020", hu, SPACING, organs)


def organ_set(block, lesions: LesionConfig = LESIONS, **sampling) -> OnlineLesionDataset:
    base = dict(crop_size=(32, 32), samples_per_epoch=12, positive_fraction=0.0, organ_crops=1.0,
                lesion_bank=16, seed=5, augment=AugmentConfig(enabled=False))  # fmt: skip
    base.update(sampling)
    return OnlineLesionDataset([block], lesions, PRE, SamplingConfig(**base), ORGANS)


def to_hu(image: np.ndarray) -> np.ndarray:
    width, level = PRE.hu_window
    return (image * PRE.norm_std + PRE.norm_mean) * width + level - width / 2


def test_organ_crops_lie_in_the_grown_box_at_the_engines_pixel_size():
    block = ramp_block()
    ds = organ_set(block)
    (box,) = ds.cases[0].boxes
    # the engine's box and zoom: inference/organs.py's rule, not a copy of it
    (engine_box,) = organ_boxes(block.organ_labels, SPACING, ORGANS.search((7,)))
    z0, z1, y0, y1, x0, x1 = engine_box.box
    assert (box.label, box.z0, box.z1, box.zoom) == (7, z0, z1, engine_box.zoom)
    extent = max((y1 - y0) * SPACING[1], (x1 - x0) * SPACING[2])
    assert box.zoom == pytest.approx(min(2.0, 60.0 / extent)) and box.zoom > 1
    # the pixel size the engine's resampling gives that box at the declared spacing
    declared = (SPACING[1] * box.zoom, SPACING[2] * box.zoom)
    _, info = resample_slices_to_working(np.zeros((1, y1 - y0, x1 - x0)), declared, PRE)
    engine_mm = np.array(info.working_spacing_yx) / box.zoom
    np.testing.assert_allclose(box.pixel_mm, engine_mm, rtol=1e-9)
    lo = BASE_HU + SLOPE[0] * y0 * SPACING[1] + SLOPE[1] * x0 * SPACING[2]
    hi = BASE_HU + SLOPE[0] * (y1 - 1) * SPACING[1] + SLOPE[1] * (x1 - 1) * SPACING[2]
    fits = []
    for i in range(len(ds)):
        item = ds[i]
        assert z0 <= item["z"] < z1 and item["mask"].sum() == 0
        hu = to_hu(item["image"][0].numpy())
        inside = hu >= lo - 16  # the box's content (one working pixel of blur allowed)
        assert hu.max() <= hi + 16  # nothing from beyond the box: air there, as the engine pads
        assert inside.mean() > 0.25
        # the pixel size read back from the ramp's slope: a plane fitted away from the box's
        # edge (the cache holds whole HU, so one crop reads it to about 0.5 %)
        core = ndimage.binary_erosion(inside, iterations=2)
        rr, cc = np.nonzero(core)
        fit = np.linalg.lstsq(np.c_[rr, cc, np.ones(rr.size)], hu[core], rcond=None)[0]
        fits.append(fit[:2] / SLOPE)
    # over the crops: the engine's pixel size, not the nominal working spacing / zoom (1.3 %
    # off along y here, where the box's rows round to a whole number of working pixels)
    np.testing.assert_allclose(np.mean(fits, axis=0), engine_mm, rtol=3e-3)
    assert abs(engine_mm[0] / (PRE.working_spacing_mm / box.zoom) - 1) > 0.01


def test_positive_organ_crops_show_a_lesion_placed_in_the_organ():
    ds = organ_set(ramp_block(), positive_fraction=1.0)
    (box,) = ds.cases[0].boxes
    for i in range(len(ds)):
        item = ds[i]
        assert item["mask"].sum() > 0 and box.z0 <= item["z"] < box.z1


def test_the_label_of_a_lesion_in_a_zoomed_organ_crop_lies_where_the_image_shows_it():
    # flat 40 HU tissue darkened only by the inserted lesion (50 to 60 HU below it; air beyond
    # the organ's box lies far lower): at the crop's zoom the label must lie on what the lesion
    # darkened, and what it darkened by over two thirds of its contrast must lie under the label
    # (less than that is the edge's blur, which near a pole spreads a lesion's last slice wide)
    hu = np.full((20, 80, 80), 40.0, np.float32)
    organs = np.zeros(hu.shape, np.uint8)
    organs[ORGAN] = 7
    dark = LesionConfig(diameter_mm=(5.0, 8.0), shell_mm=2.0, contrast_hu=(-60.0, -50.0),
                        hypodense_fraction=1.0)  # fmt: skip
    block = SourceBlock("flat z000-020", hu, SPACING, organs)
    ds = organ_set(block, lesions=dark, positive_fraction=1.0, seed=3)
    assert ds.cases[0].boxes[0].zoom > 1
    core_total = core_under_label = 0
    for i in range(len(ds)):
        item = ds[i]
        centre = to_hu(item["image"][item["image"].shape[0] // 2].numpy())  # the slice itself
        label = item["mask"].numpy().squeeze() > 0
        reached = (centre < 35) & (centre > -100)
        core = (centre < 5) & (centre > -100)
        assert label.sum() > 0 and (label & reached).sum() >= 0.95 * label.sum()
        core_total += core.sum()
        core_under_label += (core & ndimage.binary_dilation(label)).sum()
    assert core_total > 100 and core_under_label >= 0.95 * core_total


def excluded_block() -> tuple[SourceBlock, np.ndarray]:
    """Soft tissue (40 HU, no noise) with a 200 HU disc on slices 5-14 that is excluded, so a
    crop that reaches it shows it."""
    shape = (20, 80, 80)
    hu = np.full(shape, 40.0, np.float32)
    yy, xx = np.mgrid[: shape[1], : shape[2]]
    disc = (yy - 22) ** 2 + (xx - 22) ** 2 <= 10**2
    excluded = np.zeros(shape, bool)
    excluded[5:15] = disc
    hu[excluded] = 200.0
    return SourceBlock("excl z000-020", hu, SPACING, None, excluded), excluded


def test_no_crop_and_no_lesion_reaches_an_excluded_region():
    block, excluded = excluded_block()
    flat = AugmentConfig(enabled=False)  # no HU jitter: the disc's 200 HU stays recognisable
    base = dict(crop_size=(16, 16), samples_per_epoch=40, positive_fraction=0.5, lesion_bank=16,
                seed=2, augment=flat)  # fmt: skip
    ds = OnlineLesionDataset([block], LESIONS, PRE, SamplingConfig(**base))
    assert ds.cases[0].exclude[5:15].any() and not ds.cases[0].exclude[:5].any()
    near = 0
    for i in range(len(ds)):
        item = ds[i]
        hu = to_hu(item["image"][0].numpy())
        assert hu.max() < 120  # the disc never shows, in crops with lesion or without
        near += 5 <= item["z"] < 15
        if ds.is_positive_item(i):
            assert item["mask"].sum() > 0
    assert near > 5  # the excluded slices still give crops, away from the disc
    # make-lesions' insertion keeps its lesions (and their measuring shells) off it too
    for seed in range(4):
        _, mask, records = insert_lesions(
            block.hu, SPACING, None, LESIONS, np.random.default_rng(seed), excluded=excluded
        )
        assert records and not (mask[excluded] > 0).any()


def test_an_excluded_region_that_leaves_no_room_is_a_readable_error():
    block, _ = excluded_block()
    block.exclude = np.ones(block.hu.shape, bool)
    ds = OnlineLesionDataset([block], LESIONS, PRE, SamplingConfig(crop_size=(16, 16)))
    with pytest.raises(RuntimeError, match="no crop clear of the excluded regions"):
        ds[0]
