"""Preprocessing: HU window + z-score, in-plane resampling geometry, organ ROI crop."""

import numpy as np
import pytest
import torch

from napari_nstseg.preprocessing import (
    PreprocessConfig,
    crop_roi,
    normalized_air,
    resample_back,
    resample_slices_to_working,
    roi_box,
    window_normalize,
    working_resampling_matrices,
)


def test_window_normalize_maps_window_edges_and_clips():
    cfg = PreprocessConfig(hu_window=(400, 40), norm_mean=0.5, norm_std=0.25)
    hu = np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0])
    out = window_normalize(hu, cfg)
    assert out.dtype == np.float32
    # -160 and 240 HU are the abdomen window's edges: 0 and 1 before the z-score.
    np.testing.assert_allclose(out, [-2.0, -2.0, 0.0, 2.0, 2.0], atol=1e-6)
    assert normalized_air(cfg) == pytest.approx(-2.0)


def test_window_normalize_torch_matches_numpy():
    hu = np.linspace(-300, 400, 50, dtype=np.float32).reshape(5, 10)
    a = window_normalize(hu)
    b = window_normalize(torch.from_numpy(hu))
    assert isinstance(b, torch.Tensor) and b.dtype == torch.float32
    np.testing.assert_allclose(b.numpy(), a, atol=1e-6)


def test_config_round_trips_and_rejects_bad_values():
    cfg = PreprocessConfig(hu_window=(350, 50), working_spacing_mm=0.8, pad_multiple=16)
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="PreprocessConfig got unknown key.*'window'"):
        PreprocessConfig.from_dict({"window": [1, 2]})
    with pytest.raises(ValueError, match="positive width"):
        PreprocessConfig(hu_window=(-5, 40))
    with pytest.raises(ValueError, match="working_spacing_mm"):
        PreprocessConfig(working_spacing_mm=0)
    with pytest.raises(ValueError, match="pad_multiple"):
        PreprocessConfig(pad_multiple=0)


def _disc(shape, spacing, center_mm, radius_mm):
    """Disc rendered by area coverage (4x4 supersampling) on a grid of given spacing."""
    sub = 4
    ys = (np.arange(shape[0] * sub) + 0.5) / sub * spacing[0]
    xs = (np.arange(shape[1] * sub) + 0.5) / sub * spacing[1]
    inside = (ys[:, None] - center_mm[0]) ** 2 + (xs[None, :] - center_mm[1]) ** 2 <= radius_mm**2
    return inside.reshape(shape[0], sub, shape[1], sub).mean(axis=(1, 3)).astype(np.float32)


def _centroid_mm(img, spacing):
    ys, xs = np.indices(img.shape)
    w = img.sum()
    return np.array(
        [((ys + 0.5) * img).sum() / w * spacing[0], ((xs + 0.5) * img).sum() / w * spacing[1]]
    )


@pytest.mark.parametrize("spacing", [(0.7, 0.7), (3.0, 3.0), (0.7, 1.3)])
def test_disc_lands_at_same_place_in_mm(spacing):
    # The same 180 x 150 mm field of view, a 10 mm disc at (61.3, 97.9) mm.
    fov = (180.0, 150.0)
    shape = tuple(int(round(f / s)) for f, s in zip(fov, spacing, strict=True))
    img = _disc(shape, spacing, (61.3, 97.9), 10.0)
    cfg = PreprocessConfig(working_spacing_mm=1.0, pad_multiple=32)
    work, info = resample_slices_to_working(img, spacing, cfg, pad_value=0.0)
    assert info.resampled_shape == (180, 150)
    assert work.shape == (192, 160)  # padded to multiples of 32
    np.testing.assert_allclose(info.working_spacing_yx, (1.0, 1.0), atol=5e-3)
    # Same anatomy in mm on the working grid, whatever the scan's pixel size.
    got = _centroid_mm(work[:180, :150], info.working_spacing_yx)
    np.testing.assert_allclose(got, (61.3, 97.9), atol=0.15)
    assert work.sum() * 1.0 == pytest.approx(np.pi * 100, rel=0.03)  # area in mm^2
    # And back exactly onto the scan's own pixels.
    back = resample_back(work, info)
    assert back.shape == img.shape
    np.testing.assert_allclose(_centroid_mm(back, spacing), (61.3, 97.9), atol=0.15)
    inter = np.minimum(back >= 0.5, img >= 0.5).sum()
    dice = 2 * inter / ((back >= 0.5).sum() + (img >= 0.5).sum())
    assert dice > 0.9


def test_stack_and_torch_input_keep_slices_separate():
    stack = np.zeros((3, 40, 50), np.float32)
    stack[1, 10:20, 10:20] = 1.0
    work, info = resample_slices_to_working(torch.from_numpy(stack), (2.0, 2.0))
    assert isinstance(work, torch.Tensor) and work.shape == (3, 96, 128)
    assert work[0].abs().max() == 0 and work[2].abs().max() == 0
    assert work[1, 21:39, 21:39].min() > 0.99  # the 20 mm square, edges blurred by 1 px
    assert work[1].sum() == pytest.approx(400, rel=0.01)


def test_nearest_mode_keeps_label_values_and_default_pad_is_minimum():
    labels = np.zeros((30, 30), np.float32)
    labels[5:10, 5:10] = 2
    labels[20:25, 20:25] = 1
    work, info = resample_slices_to_working(labels, (1.5, 1.5), mode="nearest")
    assert set(np.unique(work)) == {0.0, 1.0, 2.0}
    hu = np.full((20, 20), -1000.0, np.float32)
    work, _ = resample_slices_to_working(hu, (1.0, 1.0))
    assert work.shape == (32, 32) and work.min() == -1000.0


def test_resample_back_rejects_wrong_grid():
    _, info = resample_slices_to_working(np.zeros((3, 40, 40)), (1.0, 1.0))
    with pytest.raises(ValueError, match="does not match the working grid"):
        resample_back(np.zeros((3, 40, 40)), info)


def test_roi_box_margin_in_mm_and_paste_back():
    mask = np.zeros((20, 50, 60), np.uint8)
    mask[8:10, 20:25, 30:40] = 1
    vol = np.arange(mask.size, dtype=np.float32).reshape(mask.shape)
    # 5 mm margin: 2.5 -> 3 slices at 2 mm along z, 10 px at 0.5 mm in y, 5 px at 1 mm in x.
    crop, box = crop_roi(vol, mask, spacing=(2.0, 0.5, 1.0), margin_mm=5.0)
    assert box.start == (5, 10, 25) and box.stop == (13, 35, 45)
    np.testing.assert_array_equal(crop, vol[5:13, 10:35, 25:45])
    pasted = box.paste(np.ones(crop.shape, np.uint8))
    assert pasted.shape == mask.shape and pasted.sum() == crop.size
    assert pasted[5:13, 10:35, 25:45].all()


def test_roi_box_clips_to_volume_and_rejects_empty():
    mask = np.zeros((10, 10), bool)
    mask[0, 8] = True
    box = roi_box(mask, (1.0, 1.0), margin_mm=3.0)
    assert box.start == (0, 5) and box.stop == (4, 10)
    with pytest.raises(ValueError, match="empty"):
        roi_box(np.zeros((4, 4)), (1.0, 1.0))


# -- 2.5-D context planes ------------------------------------------------------------------------
def test_context_planes_are_taken_at_physical_offsets_whatever_the_slice_spacing():
    from napari_nstseg.preprocessing import context_planes

    # Every voxel holds its slice's height in mm, so a plane's value is where it was taken.
    fine = np.broadcast_to((np.arange(20) * 1.5)[:, None, None], (20, 4, 5)).astype(np.float32)
    coarse = np.broadcast_to((np.arange(10) * 3.0)[:, None, None], (10, 4, 5)).astype(np.float32)
    a = context_planes(fine, [6], 1.5, (-3.0, 0.0, 3.0))
    b = context_planes(coarse, [3], 3.0, (-3.0, 0.0, 3.0))
    assert a.shape == b.shape == (1, 3, 4, 5)
    np.testing.assert_allclose(a[0, :, 0, 0], [6.0, 9.0, 12.0])
    np.testing.assert_allclose(b[0, :, 0, 0], [6.0, 9.0, 12.0])
    # Between slices: a linear blend of the two nearest.
    c = context_planes(coarse, [3], 3.0, (-1.5, 0.0, 2.0))
    np.testing.assert_allclose(c[0, :, 0, 0], [7.5, 9.0, 11.0], atol=1e-5)


def test_context_planes_repeat_the_edge_slice_and_crop_in_plane():
    from napari_nstseg.preprocessing import context_planes

    vol = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    out = context_planes(vol, [0, 2], 2.0, (-2.0, 0.0, 2.0), (slice(1, 3), slice(0, 2)))
    assert out.shape == (2, 3, 2, 2)
    np.testing.assert_array_equal(out[0, 0], vol[0, 1:3, 0:2])  # above the first slice
    np.testing.assert_array_equal(out[0, 2], vol[1, 1:3, 0:2])
    np.testing.assert_array_equal(out[1, 2], vol[2, 1:3, 0:2])  # below the last slice


def test_slice_offsets_config_is_checked_and_round_trips():
    cfg = PreprocessConfig(slice_offsets_mm=[-3, 0, 3])
    assert cfg.n_channels == 3 and cfg.center_channel == 1
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    # Checkpoints written before 2.5-D inputs existed read as plain 2-D slices.
    old = {k: v for k, v in cfg.to_dict().items() if k != "slice_offsets_mm"}
    assert PreprocessConfig.from_dict(old).slice_offsets_mm == (0.0,)
    for bad in [(), (-3.0, 3.0), (3.0, 0.0), (0.0, float("nan"))]:
        with pytest.raises(ValueError, match="slice_offsets_mm"):
            PreprocessConfig(slice_offsets_mm=bad)


@pytest.mark.parametrize(
    "shape, spacing",
    [((120, 100), (0.8, 0.7)), ((60, 90), (2.0, 1.0)), ((50, 50), (3.0, 3.0))],
    ids=["shrink", "enlarge-one-shrink-other", "enlarge"],
)
def test_resampling_matrices_are_the_whole_slice_resampling(shape, spacing):
    # a lesion inserted on the fly reaches the working grid through these maps: they must be
    # exactly what resampling the whole slice does, antialiasing included
    cfg = PreprocessConfig(working_spacing_mm=1.5, pad_multiple=1)
    s = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    whole, _ = resample_slices_to_working(s, spacing, cfg)
    rows, cols = working_resampling_matrices(shape, spacing, cfg)
    np.testing.assert_allclose(rows @ s @ cols.T, whole, atol=1e-5)
