"""File > Open Sample gives the real CT and its lesion mask overlaid; the demo docks the widget."""

from __future__ import annotations

import json

import numpy as np
from scipy import ndimage

from napari_nstseg._sample_data import SAMPLE_DIR
from napari_nstseg.io.volume import geometry_from_metadata


def test_sample_opens_as_ct_and_ground_truth(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-nstseg", "sample_ct")
    ct, gt = viewer.layers["sample CT"], viewer.layers["sample CT ground truth"]
    assert ct.data.shape == gt.data.shape == (30, 101, 122)
    assert np.allclose(ct.scale, (3.0, 3.0, 3.0)) and np.allclose(gt.scale, ct.scale)
    assert np.allclose(gt.translate, ct.translate)
    g_ct, g_gt = geometry_from_metadata(ct.metadata), geometry_from_metadata(gt.metadata)
    assert g_ct.source_shape == g_gt.source_shape
    assert np.allclose(g_ct.affine_lps, g_gt.affine_lps)
    assert (g_ct.display_axes, g_ct.display_flips) == (g_gt.display_axes, g_gt.display_flips)
    assert tuple(ct.contrast_limits) == (-160.0, 240.0)  # abdomen window W400/L40

    # One small faint lesion: about as large and as dark as its record says.
    record = json.loads((SAMPLE_DIR / "sample_ct_lesion.json").read_text())["record"]
    lesion = np.asarray(gt.data) > 0
    _, n = ndimage.label(lesion)
    assert n == 1
    assert abs(lesion.sum() * 27e-3 - record["volume_ml"]) < 0.05
    shell = ndimage.binary_dilation(lesion, iterations=2) & ~lesion
    hu = np.asarray(ct.data, dtype=float)
    contrast = hu[lesion].mean() - hu[shell].mean()
    assert -45 < contrast < -20, contrast


def test_demo_viewer_docks_the_widget(make_napari_viewer):
    from napari_nstseg.demo import WIDGET, open_viewer

    viewer = open_viewer(make_napari_viewer())
    assert "sample CT" in viewer.layers
    assert any(WIDGET in name for name in viewer.window.dock_widgets)


def test_bundled_weights_segment_the_sample_in_the_widget(make_napari_viewer, qtbot):
    """The plugin as a user meets it: sample CT, bundled weights, slice then volume mode."""
    from napari_nstseg.widgets.dock import BUNDLED, NSTSegWidget
    from napari_nstseg.widgets.layers import LayerNames

    viewer = make_napari_viewer()
    viewer.open_sample("napari-nstseg", "sample_ct")
    ct = viewer.layers["sample CT"]
    widget = NSTSegWidget(viewer)
    viewer.window.add_dock_widget(widget, name="NSTSEG")
    assert widget.weights_source.value == BUNDLED
    widget.device.value = "cpu"
    widget.show_residual.value = True  # the bundled weights name their MAE
    lesion_z = int(np.argmax((viewer.layers["sample CT ground truth"].data > 0).sum(axis=(1, 2))))
    viewer.dims.set_point(0, ct.translate[0] + lesion_z * ct.scale[0])
    for mode in ("current slice", "whole volume"):
        widget.mode.value = mode
        widget.run()
        qtbot.waitUntil(lambda: not widget.running, timeout=120_000)
    names = LayerNames("sample CT")
    for name in (names.coarse, names.stage(1), names.stage(3), names.residual, names.tumor_mask):
        layer = viewer.layers[name]
        assert layer.data.shape == ct.data.shape, name
        np.testing.assert_allclose(layer.scale, ct.scale)
        np.testing.assert_allclose(layer.translate, ct.translate)
    assert widget.last_outcome.prediction.done.all()


def test_file_open_and_save_selected_layer_through_napari(make_napari_viewer, tmp_path):
    """File > Open with our reader, paint, File > Save Selected Layer: the scan's own grid."""
    import nibabel as nib

    from napari_nstseg._sample_data import SAMPLE_CT

    viewer = make_napari_viewer()
    (ct,) = viewer.open(str(SAMPLE_CT), plugin="napari-nstseg")
    mask = viewer.add_labels(np.zeros(ct.data.shape, np.uint8), name="mask", scale=ct.scale,
                             translate=ct.translate, metadata=dict(ct.metadata))  # fmt: skip
    mask.data_setitem((np.array([4]), np.array([10]), np.array([20])), 1)
    viewer.layers.selection = {mask}
    out = tmp_path / "mask.nii.gz"
    written = viewer.layers.save(str(out), selected=True, plugin="napari-nstseg")
    assert [str(p) for p in written] == [str(out)]
    src, saved = nib.load(SAMPLE_CT), nib.load(out)
    assert saved.shape == src.shape
    np.testing.assert_array_equal(saved.affine, src.affine)
    (i, j, k) = np.argwhere(np.asarray(saved.dataobj) > 0)[0]
    # display (z=4, y=10, x=20) of this RAS file is voxel (i, j, k) = (121-20, 100-10, 4)
    assert (i, j, k) == (src.shape[0] - 1 - 20, src.shape[1] - 1 - 10, 4)
