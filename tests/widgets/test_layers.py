"""Prediction -> layers without Qt: names, grid, finished-slices-only writes, edit tracking."""

from __future__ import annotations

import numpy as np
from napari.components import ViewerModel

from napari_nstseg.inference import Prediction
from napari_nstseg.io.volume import METADATA_KEY, Geometry
from napari_nstseg.widgets.layers import (
    LayerNames,
    MapsToShow,
    edit_tracker,
    show_prediction,
)

SHAPE = (4, 16, 20)
SCALE = (2.5, 0.7, 0.7)


def ct_viewer():
    viewer = ViewerModel()
    geometry = Geometry.from_spacing(SHAPE, SCALE, (5.0, -3.0, 7.0))
    ct = viewer.add_image(
        np.full(SHAPE, 40.0, np.float32),
        name="scan",
        scale=geometry.spacing,
        translate=geometry.translate,
        metadata={METADATA_KEY: geometry.to_dict()},
    )
    return viewer, ct, geometry


def partial_prediction() -> Prediction:
    """Slices 1 and 2 finished inside the box y 4:12, x 5:15; slices 0 and 3 never ran."""
    pred = Prediction(SHAPE)
    ramp = np.linspace(0, 255, 10 * 8).reshape(1, 8, 10).repeat(2, axis=0).astype(np.uint8)
    pred.store(
        np.array([1, 2]),
        (slice(4, 12), slice(5, 15)),
        final=ramp,
        mask=(ramp >= 128).astype(np.uint8),
        coarse=255 - ramp,
        stages=[ramp // 2, ramp],
        scale_weights=np.stack([ramp // 3, ramp // 3, 255 - 2 * (ramp // 3)], axis=1),
        residual=(ramp / 100.0).astype(np.float16),  # reconstruction error, up to 2.55
    )
    pred.cover((1, 3, 4, 12, 5, 15))
    return pred


def test_layers_share_the_ct_grid_and_hold_only_finished_slices_in_the_roi():
    viewer, ct, geometry = ct_viewer()
    pred = partial_prediction()
    maps = MapsToShow(stage_probabilities=True, scale_weights=True, residual=True)
    layers = show_prediction(viewer, ct, pred, maps=maps, threshold=0.25)
    names = LayerNames("scan")
    assert set(layers) == {
        names.coarse,
        names.coarse_mask,
        names.stage(1),
        names.stage(2),
        names.stage_probability(1),
        names.stage_probability(2),
        *(names.scale_weight(i) for i in range(3)),
        names.residual,
        names.tumor_mask,
    }
    for layer in layers.values():
        assert layer.data.shape == SHAPE
        np.testing.assert_allclose(layer.scale, ct.scale)
        np.testing.assert_allclose(layer.translate, ct.translate)
        assert Geometry.from_dict(layer.metadata[METADATA_KEY]) == geometry
        outside = np.ones(SHAPE, bool)
        outside[1:3, 4:12, 5:15] = False
        assert not np.asarray(layer.data)[outside].any(), layer.name
    # The mask follows the threshold asked for, not the engine's 0.5.
    np.testing.assert_array_equal(layers[names.tumor_mask].data, pred.mask_at(0.25))
    stage1 = pred.stages[0] >= round(0.25 * 255)
    np.testing.assert_array_equal(layers[names.stage(1)].data, stage1.astype(np.uint8))
    np.testing.assert_array_equal(layers[names.coarse].data, pred.coarse)
    # The residual is no probability: kept as float, not clipped at 1.
    residual = layers[names.residual]
    np.testing.assert_allclose(residual.data, pred.residual.astype(np.float32))
    assert residual.contrast_limits[1] > 2.0


def test_variant_suffix_and_edit_tracking():
    viewer, ct, _ = ct_viewer()
    pred = partial_prediction()
    layers = show_prediction(
        viewer, ct, pred, MapsToShow(coarse=False, stages=False), 0.5, False, " [no GLM]"
    )
    assert list(layers) == ["scan tumor mask [no GLM]"]
    mask = layers["scan tumor mask [no GLM]"]
    tracker = edit_tracker(mask)
    assert tracker.edited == set()  # the model's own write is no user edit
    mask.data_setitem((np.array([3, 3]), np.array([0, 1]), np.array([0, 0])), 1)
    assert tracker.edited == {3}
    assert edit_tracker(mask) is tracker


def test_undo_and_redo_tell_the_tracker_without_marking_slices():
    viewer, ct, _ = ct_viewer()
    mask = show_prediction(viewer, ct, partial_prediction(), MapsToShow(False, False))[
        LayerNames("scan").tumor_mask
    ]
    tracker = edit_tracker(mask)
    heard: list[int] = []
    tracker.on_edit.append(lambda: heard.append(1))
    written = np.array(mask.data)
    mask.undo()  # undoes the model's write
    assert not mask.data.any() and len(heard) == 1 and tracker.edited == set()
    mask.redo()
    np.testing.assert_array_equal(mask.data, written)
    assert len(heard) == 2 and tracker.edited == set()
    with tracker.model_writing():
        mask.undo()
    assert len(heard) == 2


def test_rethreshold_recuts_masks_only_and_brings_no_closed_layer_back():
    viewer, ct, _ = ct_viewer()
    pred = partial_prediction()
    names = LayerNames("scan")
    maps = MapsToShow(stage_probabilities=True)
    show_prediction(viewer, ct, pred, maps=maps, threshold=0.5)
    viewer.layers.remove(names.stage(2))
    probability = viewer.layers[names.coarse]
    probability.data[:] = 0  # would be rewritten if the maps were copied again
    show_prediction(viewer, ct, pred, maps=maps, threshold=0.25, rethreshold=True)
    assert names.stage(2) not in viewer.layers
    assert not probability.data.any()
    np.testing.assert_array_equal(viewer.layers[names.tumor_mask].data, pred.mask_at(0.25))
    stage1 = (pred.stages[0] >= round(0.25 * 255)).astype(np.uint8)
    np.testing.assert_array_equal(viewer.layers[names.stage(1)].data, stage1)


def test_layers_follow_a_ct_layer_with_rotation_in_its_affine():
    viewer = ViewerModel()
    ct = viewer.add_image(np.full(SHAPE, 40.0, np.float32), name="scan", scale=SCALE,
                          rotate=((1, 0, 0), (0, 0.8, -0.6), (0, 0.6, 0.8)))  # fmt: skip
    layers = show_prediction(viewer, ct, partial_prediction(), maps=MapsToShow())
    for layer in layers.values():
        np.testing.assert_allclose(layer.rotate, ct.rotate)
        point = (1, 5, 7)
        np.testing.assert_allclose(layer.data_to_world(point), ct.data_to_world(point))


# -- through napari's plugin proxy, which hands out a new object for every layer access --------
def proxy_viewer():
    from napari.utils._proxies import PublicOnlyProxy

    viewer, ct, geometry = ct_viewer()
    proxy = PublicOnlyProxy(viewer)
    assert proxy.layers["scan"] is not proxy.layers["scan"]
    return proxy


def test_edits_and_undo_hold_through_the_plugin_proxy():
    viewer = proxy_viewer()
    pred = partial_prediction()
    maps = MapsToShow(coarse=False, stages=False)
    name = LayerNames("scan").tumor_mask
    show_prediction(viewer, viewer.layers["scan"], pred, maps)
    viewer.layers[name].data_setitem((np.array([1, 1]), np.array([0, 1]), np.array([0, 0])), 1)
    assert edit_tracker(viewer.layers[name]).edited == {1}
    callbacks = len(viewer.layers[name].events.paint.callbacks)  # napari's own and the tracker
    edited = np.array(viewer.layers[name].data[1])

    show_prediction(viewer, viewer.layers["scan"], pred, maps, threshold=0.1)
    assert len(viewer.layers) == 2
    assert len(viewer.layers[name].events.paint.callbacks) == callbacks
    np.testing.assert_array_equal(viewer.layers[name].data[1], edited)  # the edit is spared
    viewer.layers[name].undo()  # the second run's write
    viewer.layers[name].undo()  # the edit
    np.testing.assert_array_equal(viewer.layers[name].data, pred.mask_at(0.5))


def test_session_recuts_its_last_run_and_follows_the_ct_through_a_rename():
    from napari_nstseg.widgets.session import OperatingPoint, RunOutcome, RunRequest, Session

    viewer = proxy_viewer()
    session = Session(viewer)
    session.follow_renames()
    pred = partial_prediction()
    request = RunRequest(
        ct_name="scan", volume=np.zeros(SHAPE, np.float32), spacing=SCALE, z_indices=[1, 2],
        roi=None, weights=None, device="cpu", threshold=0.5, maps=MapsToShow(),
        overwrite=False, ct_id=str(viewer.layers["scan"].unique_id),
    )  # fmt: skip
    session.show(RunOutcome(request, prediction=pred))
    viewer.layers["scan"].name = "liver"
    assert session.follow_renames() == [("scan", "liver")]
    names = LayerNames("liver")
    assert {names.tumor_mask, names.coarse, names.stage(1)} <= {ly.name for ly in viewer.layers}
    ct = viewer.layers["liver"]
    assert session.mask_layer(ct).name == names.tumor_mask

    assert session.recut(ct, OperatingPoint(threshold=0.25)) is not None
    np.testing.assert_array_equal(session.mask_layer(ct).data, pred.mask_at(0.25))
    n_layers = len(viewer.layers)
    session.show(RunOutcome(request, prediction=pred))  # a later run finds the same layers
    assert len(viewer.layers) == n_layers
    viewer.layers.remove("liver")
    session.forget(ct)
    assert session.last_run is None
