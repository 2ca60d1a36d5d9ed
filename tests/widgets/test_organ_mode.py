"""The panel's "inside organs" mode (issue 26) through the Plugins menu: masks only inside the
ticked organs grown by the margin, the searched-zone outline, the one-line messages, edits,
undo, autosave and the lesion table after an organ-mode run; the demo starts in it."""

from __future__ import annotations

import numpy as np
import pytest
from widget_helpers import (
    CT_SCALE,
    CT_SHAPE,
    CT_TRANSLATE,
    BrightStandIn,
    make_widget,
    paint_like_a_brush,
    run_and_wait,
    set_and_wait,
)

from napari_nstseg.inference.organs import OrganSearch, search_zone
from napari_nstseg.widgets.layers import LayerNames
from napari_nstseg.widgets.organ_mode import (
    ORGAN_MODE,
    OrganChoiceError,
    label_names,
    labels_present,
    organ_request,
    zone_name,
)

LIVER, SPLEEN = 5, 1


def organ_map() -> np.ndarray:
    """Label 5 ('liver') around the stand-in's large bright lesion, label 1 ('spleen') in a
    corner; the stand-in's two specks lie outside both."""
    labels = np.zeros(CT_SHAPE, np.uint8)
    labels[1:7, 12:31, 12:31] = LIVER
    labels[3:5, 54:60, 54:60] = SPLEEN
    return labels


@pytest.fixture
def organ_viewer(qtbot, make_napari_viewer, tiny_weights, monkeypatch, tmp_path):
    """The stand-in model (tumor where > 150 HU), its CT, an organ layer named as
    TotalSegmentator's output, and the panel from the Plugins menu on the CT."""
    from napari_nstseg.widgets import runner

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    engine = BrightStandIn.segmenter()
    monkeypatch.setattr(runner, "load_segmenter", lambda weights, device, variant="": engine)
    viewer = make_napari_viewer()
    viewer.add_image(BrightStandIn.ct(), name="CT", scale=CT_SCALE, translate=CT_TRANSLATE)
    viewer.add_labels(
        organ_map(), name="organs (TotalSegmentator)", scale=CT_SCALE, translate=CT_TRANSLATE
    )
    widget = make_widget(viewer, tiny_weights, coarse=True, stages=False)
    return viewer, widget


def test_organ_mode_masks_only_inside_the_zone_outlines_it_and_keeps_edits_and_undo(
    qtbot, organ_viewer, errors, tmp_path
):
    viewer, widget = organ_viewer
    widget.mode.value = ORGAN_MODE
    assert widget.organ.visible and widget.roi_layer.native.isHidden()
    # The organ layer on the CT's grid is chosen, its labels listed with TotalSegmentator's names.
    assert widget.organ.layer.value == "organs (TotalSegmentator)"
    assert widget.organ.names() == {SPLEEN: "spleen", LIVER: "liver"}
    assert widget.organ.ticked() == []
    assert widget.organ.tick([LIVER]) == [LIVER]
    widget.organ.margin.value = 2.0
    run_and_wait(qtbot, widget, ORGAN_MODE)
    assert errors == []
    assert "inside liver (5) + 2 mm" in widget.status.value

    names = LayerNames("CT")
    mask = viewer.layers[names.tumor_mask]
    zone = search_zone(organ_map(), CT_SCALE, OrganSearch((LIVER,), 2.0))
    bright = BrightStandIn.ct() > 150
    # The lesion in the liver is found; the specks outside the zone are not sought at all.
    np.testing.assert_array_equal(mask.data > 0, bright & zone)
    assert not mask.data[~zone].any() and not viewer.layers[names.coarse].data[~zone].any()
    # The outline shows where the model looked: the liver grown by the margin, on its slices.
    outline = viewer.layers[zone_name("CT")]
    np.testing.assert_array_equal(outline.data > 0, zone)
    assert outline.contour > 0 and outline.metadata["nstseg_role"] == "searched zone"
    assert viewer.layers.selection.active.name == names.tumor_mask  # ready to correct
    assert len(widget.update_measurements()) == 1  # the lesion table: the one lesion
    # A lower threshold re-cuts from the zone-clipped maps: still nothing outside the zone.
    set_and_wait(qtbot, widget, widget.threshold, 0.05)
    assert mask.data[zone & bright].all() and not mask.data[~zone].any()

    # Edits, autosave, re-runs and undo as in every mode.
    widget._autosave_timer.setInterval(50)
    after_first = np.array(mask.data)
    paint_like_a_brush(mask, 4, (44, 44), 1)  # the speck the organ search left out
    edited = np.array(mask.data)
    qtbot.waitUntil(lambda: any((tmp_path / "cache").rglob("*.nii.gz")), timeout=5000)
    # Now the spleen alone: the liver's lesion goes from every slice but the edited one.
    widget.organ.tick([SPLEEN])
    widget.organ.margin.value = 10.0
    run_and_wait(qtbot, widget, ORGAN_MODE)
    np.testing.assert_array_equal(mask.data[4], edited[4])  # the edited slice is spared
    spleen = search_zone(organ_map(), CT_SCALE, OrganSearch((SPLEEN,), 10.0))
    others = [z for z in range(CT_SHAPE[0]) if z != 4]
    np.testing.assert_array_equal((mask.data > 0)[others], (bright & spleen)[others])
    np.testing.assert_array_equal(outline.data > 0, spleen)
    mask.undo()
    np.testing.assert_array_equal(mask.data, edited)
    mask.undo()
    np.testing.assert_array_equal(mask.data, after_first)
    assert errors == []


def test_organ_mode_says_in_one_line_what_is_missing(qtbot, organ_viewer, errors):
    viewer, widget = organ_viewer
    widget.mode.value = ORGAN_MODE
    organs = viewer.layers["organs (TotalSegmentator)"]

    widget.run()  # nothing ticked
    assert errors[-1] == (
        "Tick at least one organ of 'organs (TotalSegmentator)' to search inside (under 'organs')."
    )

    # A label ticked, then erased from the layer without the list knowing.
    widget.organ.tick([SPLEEN])
    organs.data[organs.data == SPLEEN] = 0
    widget.run()
    assert "hold no voxel of spleen (1)" in errors[-1] and "\n" not in errors[-1]
    # A brush stroke on the organ layer lists the labels again: the spleen has gone.
    paint_like_a_brush(organs, 0, (5, 5), 7)
    qtbot.waitUntil(lambda: sorted(widget.organ.names()) == [LIVER, 7], timeout=5000)

    # The slice on screen must cross the ticked organs when only it is run.
    widget.organ.tick([7])
    widget.organ.slice_only.value = True
    viewer.dims.set_point(0, CT_TRANSLATE[0] + 7 * CT_SCALE[0])
    widget.run()
    assert "Slice 7 of 'CT' crosses none of pancreas (7) + 10 mm" in errors[-1]

    # No organ layer on the CT's grid: the one on another grid is named.
    viewer.layers.remove(organs)
    viewer.add_labels(np.zeros((8, 32, 32), np.uint8), name="coarse organs", scale=(3, 1.6, 1.6))
    assert widget.organ.layer.value == "(none)"
    widget.run()
    assert errors[-1].startswith(
        "'inside organs' needs an organ Labels layer on the grid of 'CT' ('coarse organs' is on "
        "another grid)"
    )
    assert not widget.running and all("\n" not in e for e in errors)


def test_organ_choice_checks_without_a_viewer():
    from napari.layers import Image, Labels

    ct = Image(np.zeros(CT_SHAPE, np.float32), name="CT", scale=CT_SCALE)
    shifted = Labels(organ_map(), name="other scan's organs", scale=CT_SCALE, translate=(3, 0, 0))
    with pytest.raises(OrganChoiceError, match="on another grid than the CT 'CT'"):
        organ_request(ct, shifted, [LIVER], 10.0)
    # Names from the layer's features first, TotalSegmentator's table only for its output.
    named = Labels(organ_map(), name="mine", features={"index": [5], "name": ["my liver"]})
    assert label_names(named, [1, 5]) == {1: "label 1", 5: "my liver"}
    assert labels_present(organ_map()) == [SPLEEN, LIVER]
    request = organ_request(ct, Labels(organ_map(), scale=CT_SCALE), [LIVER], 4.0)
    assert request.labels == (LIVER,) and request.describe() == "label 5 (5) + 4 mm"


def test_the_sample_organ_labels_are_the_organ_layer_offered_first(make_napari_viewer):
    """Not the ground-truth lesion mask opened before them: the organ map a user means."""
    from widget_helpers import docked

    viewer = make_napari_viewer()
    viewer.open_sample("napari-nstseg", "sample_ct")
    widget = docked(viewer)
    assert widget.organ.layer.value == "sample CT organs (TotalSegmentator)"
    assert widget.organ.layer.choices[-1] == "sample CT ground truth"
    assert widget.organ.names()[5] == "liver" and widget.organ.ticked() == []


def test_sample_in_organ_mode_finds_the_lesion_on_its_slice_inside_the_liver(
    make_napari_viewer, qtbot, errors, one_torch_thread
):
    """The demo's start (the sample, organ mode on the liver, the lesion's slice on screen)
    with the bundled weights on that one slice: the lesion is found and nothing lies outside
    the liver grown by 10 mm."""
    from napari_nstseg.demo import WIDGET, open_viewer

    viewer = open_viewer(make_napari_viewer())
    widget = next(w for n, w in viewer.window.dock_widgets.items() if WIDGET in n)
    assert widget.mode.value == ORGAN_MODE and widget.organ.ticked() == [LIVER]
    assert widget.organ.layer.value == "sample CT organs (TotalSegmentator)"
    assert widget.organ.names()[LIVER] == "liver"
    widget.device.value = "cpu"
    widget.organ.slice_only.value = True
    widget.run()
    qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    assert errors == []
    organs = np.asarray(viewer.layers["sample CT organs (TotalSegmentator)"].data)
    zone = search_zone(organs, viewer.layers["sample CT"].scale, OrganSearch((LIVER,), 10.0))
    mask = np.asarray(viewer.layers["sample CT tumor mask"].data) > 0
    truth = np.asarray(viewer.layers["sample CT ground truth"].data) > 0
    assert (mask & truth).any() and not mask[~zone].any()
    assert viewer.layers[zone_name("sample CT")].data.any()


def test_weights_with_a_centre_rule_leave_out_a_lesion_centred_beside_the_organ(
    qtbot, make_napari_viewer, tiny_weights, monkeypatch, tmp_path, errors
):
    """Weights whose organ search keeps only lesions centred in the organ (centre_mm 0): a
    lesion reaching into the liver from beside it is left out, the status says why, and a
    re-cut at another threshold keeps it out."""
    from napari_nstseg.widgets import runner

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    engine = BrightStandIn.segmenter()
    engine.meta = {"organ_search": {"centre_mm": 0.0}}
    monkeypatch.setattr(runner, "load_segmenter", lambda weights, device, variant="": engine)
    viewer = make_napari_viewer()
    viewer.add_image(BrightStandIn.ct(), name="CT", scale=CT_SCALE, translate=CT_TRANSLATE)
    labels = np.zeros(CT_SHAPE, np.uint8)
    labels[1:7, 12:31, 22:40] = LIVER  # the lesion (x 14-28, centre x 21) reaches in from the left
    viewer.add_labels(labels, name="organs", scale=CT_SCALE, translate=CT_TRANSLATE)
    widget = make_widget(viewer, tiny_weights, coarse=True, stages=False)
    widget.mode.value = ORGAN_MODE
    widget.organ.tick([LIVER])
    widget.organ.margin.value = 10.0
    run_and_wait(qtbot, widget, ORGAN_MODE)
    assert errors == []
    mask = viewer.layers[LayerNames("CT").tumor_mask]
    zone = search_zone(labels, CT_SCALE, OrganSearch((LIVER,), 10.0))
    bright = BrightStandIn.ct() > 150
    assert (bright[2:6, 14:29, 14:29] & zone[2:6, 14:29, 14:29]).all()  # sought, and found...
    assert not mask.data.any()  # ...but centred outside the liver, so left out
    assert "lesions centred over 0 mm from the organ are left out" in widget.status.value
    set_and_wait(qtbot, widget, widget.threshold, 0.05)
    assert not mask.data.any()
