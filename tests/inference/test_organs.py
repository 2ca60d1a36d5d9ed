"""Organ mode: crop each organ with a margin, zoom it, map back onto the exact source grid, and
keep nothing outside the organs grown by the margin."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_nstseg.inference.engine import EngineConfig, Segmenter
from napari_nstseg.inference.organs import (
    OrganSearch,
    check_label_map,
    iter_predict_in_organs,
    organ_boxes,
    predict_in_organs,
    search_zone,
)
from napari_nstseg.models import SegOutput
from napari_nstseg.organ_labels import parse_organs
from napari_nstseg.preprocessing import PreprocessConfig

SPACING = (3.0, 0.8, 0.9)  # anisotropic, as CT is
SHAPE = (7, 51, 45)  # odd sizes


class BrightModel(nn.Module):
    """Stand-in network: tumour where the (windowed, z-scored) slice is brighter than 150 HU."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.edge = ((150 + 160) / 400 - 0.485) / 0.229

    def forward(self, x, residual=None, return_scale_weights=False) -> SegOutput:
        logits = 8.0 * (x - self.edge) + self.anchor
        return SegOutput(coarse=logits, stages=[logits], final=logits, scale_weights=None)


def engine() -> Segmenter:
    pre = PreprocessConfig(working_spacing_mm=0.8, pad_multiple=8)
    return Segmenter(BrightModel(), pre, "cpu", EngineConfig(batch_size=4, channels_last=False))


def scene():
    """Soft tissue with an organ (label 5) touching the volume's right edge, a second organ
    (label 1), and three bright 'lesions': inside organ 5, just outside it (within 10 mm) and
    far from any organ."""
    hu = np.full(SHAPE, 40, np.int16)
    labels = np.zeros(SHAPE, np.uint8)
    labels[1:6, 10:35, 25:45] = 5  # reaches x = 44, the last column
    labels[2:4, 40:48, 2:10] = 1
    inside = np.zeros(SHAPE, bool)
    inside[2:5, 18:26, 30:38] = True
    beside = np.zeros(SHAPE, bool)
    beside[3, 36:40, 28:33] = True  # 1-4 pixels (0.8-3.2 mm) below organ 5
    far = np.zeros(SHAPE, bool)
    far[3, 2:8, 2:8] = True
    far[3, 5:7, 20:22] = True  # in the corner of organ 5's crop, but over 4 mm from it
    for blob in (inside, beside, far):
        hu[blob] = 400
    return hu, labels, inside, beside, far


def test_boxes_margin_zoom_and_an_organ_at_the_volume_edge():
    _, labels, *_ = scene()
    search = OrganSearch((5,), margin_mm=4.0, field_mm=40.0, min_zoom=1.0, max_zoom=2.0)
    (box,) = organ_boxes(labels, SPACING, search)
    # 4 mm is 2 slices of 3 mm, 5 rows of 0.8 mm and 5 columns of 0.9 mm (rounded up); the
    # box stops at the volume's edge.
    assert box.box == (0, 7, 5, 40, 20, 45)
    # crop 35 x 0.8 = 28 mm by 25 x 0.9 = 22.5 mm: 40 / 28 = 1.43 times larger
    assert box.zoom == pytest.approx(40.0 / 28.0)
    assert OrganSearch((5,), field_mm=10.0, max_zoom=2.0).zoom(28.0) == 1.0  # held at min
    assert OrganSearch((5,), field_mm=200.0, max_zoom=2.0).zoom(28.0) == 2.0  # held at max
    # two separate z-extents of one organ give two boxes
    labels[6] = 0
    labels[0, 10:35, 25:45] = 5
    labels[1] = 0
    assert len(organ_boxes(labels, SPACING, OrganSearch((5,), margin_mm=0.0))) == 2


def test_zone_is_the_organ_grown_by_the_margin_in_mm():
    _, labels, _, beside, far = scene()
    zone = search_zone(labels, SPACING, OrganSearch((5,), margin_mm=4.0))
    assert zone[labels == 5].all() and zone[beside].all() and not zone[far].any()
    # in-plane 4 mm: 5 rows of 0.8 mm below the organ's last row (34) are in, the 6th not
    assert zone[3, 39, 30] and not zone[3, 40, 30]
    # along z 4 mm is one slice of 3 mm, not two
    assert zone[0, 20, 30] and not search_zone(labels, SPACING, OrganSearch((5,), 2.0))[0, 20, 30]


@pytest.mark.parametrize("zoom", [1.0, 1.7])
def test_organ_mode_keeps_lesions_in_and_beside_the_organ_on_the_source_grid(zoom):
    hu, labels, inside, beside, far = scene()
    search = OrganSearch((5,), margin_mm=4.0, field_mm=1e6, min_zoom=zoom, max_zoom=zoom)
    pred = predict_in_organs(engine(), hu, SPACING, labels, search)
    mask = pred.mask > 0
    assert not mask[far].any()  # a lesion far from the organ is not searched
    assert not mask[~search_zone(labels, SPACING, search)].any()
    assert pred.final[~search_zone(labels, SPACING, search)].max() == 0
    expected = inside | beside
    if zoom == 1.0:  # the network sees the scan's own pixels: exact
        np.testing.assert_array_equal(mask, expected)
    else:  # zoomed and mapped back: the same voxels, up to the blobs' rims
        assert (mask & expected).sum() / (mask | expected).sum() > 0.8
        assert mask[2:5, 19:25, 31:37].all()  # the inside lesion's core
    assert pred.info["organs"]["boxes"][0]["zoom"] == pytest.approx(zoom)


def test_organ_mode_combines_with_slices_and_roi_and_cancel_keeps_the_zone():
    hu, labels, inside, *_ = scene()
    search = OrganSearch((5, 1), margin_mm=4.0)
    pred = predict_in_organs(engine(), hu, SPACING, labels, search, z_indices=[3])
    assert pred.done.tolist() == [False, False, False, True, False, False, False]
    roi = (0, 7, 0, 51, 0, 20)  # only organ 1's side
    pred = predict_in_organs(engine(), hu, SPACING, labels, search, roi=roi)
    assert not (pred.mask[inside] > 0).any()
    events = iter_predict_in_organs(engine(), hu, SPACING, labels, search)
    first = next(events)
    events.close()  # Cancel after the first batch
    assert first.total == 7 + 6  # organ 5's box spans 7 slices, organ 1's 6
    assert first.prediction.final[~search_zone(labels, SPACING, search)].max() == 0


def test_bad_organ_masks_and_names_are_one_readable_line():
    _, labels, *_ = scene()
    with pytest.raises(ValueError, match="organ mask is .* voxels, the CT"):
        check_label_map(labels[:-1], SHAPE, (5,), "organ mask")
    with pytest.raises(ValueError, match="no voxel has organ label 7 .labels present: 1, 5"):
        check_label_map(labels, SHAPE, (5, 7), "organ mask")
    with pytest.raises(ValueError, match="empty"):
        check_label_map(np.zeros(SHAPE, np.uint8), SHAPE, (5,), "organ mask")
    assert parse_organs("5,pancreas, Liver") == (5, 7)
    with pytest.raises(ValueError, match="unknown organ 'heartx'"):
        parse_organs("heartx")


def test_organ_mode_runs_at_the_weights_organ_mode_point_and_the_rest_at_theirs():
    hu, labels, inside, beside, _ = scene()
    search = OrganSearch((5,), margin_mm=4.0, field_mm=1e6)
    # The weights recommend a point that drops every lesion over the whole scan and, for organ
    # mode, one that keeps the lesions of 3 mm and more.
    meta = {
        "postprocess": {"threshold": 0.5, "min_lesion_mm": 50.0, "min_depth_mm": 0.0},
        "organ_postprocess": {"threshold": 0.5, "min_lesion_mm": 3.5, "min_depth_mm": 0.0},
    }
    pre = PreprocessConfig(working_spacing_mm=0.8, pad_multiple=8)
    seg = Segmenter(BrightModel(), pre, "cpu", EngineConfig(batch_size=4), meta=meta)
    assert not (seg.predict(hu, SPACING).mask > 0).any()
    pred = predict_in_organs(seg, hu, SPACING, labels, search)
    # the inside lesion is 8 x 0.9 = 7.2 mm across, the one beside 5 x 0.9 = 4.5 mm
    np.testing.assert_array_equal(pred.mask > 0, inside | beside)
    assert pred.point.min_lesion_mm == 3.5 and seg.postprocess.min_lesion_mm == 50.0
    # an organ-mode engine keeps its point through a change of configuration
    assert seg.for_organs().with_config(batch_size=2).postprocess.min_lesion_mm == 3.5
    # a value given explicitly wins in both modes
    strict = seg.with_config(min_lesion_mm=6.0)
    np.testing.assert_array_equal(
        predict_in_organs(strict, hu, SPACING, labels, search).mask > 0, inside
    )
    # weights without an organ-mode point use their one point in organ mode too
    plain = Segmenter(BrightModel(), pre, "cpu", EngineConfig(batch_size=4),
                      meta={"postprocess": meta["postprocess"]})  # fmt: skip
    assert not (predict_in_organs(plain, hu, SPACING, labels, search).mask > 0).any()
