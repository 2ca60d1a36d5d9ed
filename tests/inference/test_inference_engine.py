"""The engine's mechanics: batching, slice/volume/ROI modes, resampling, cancel, OOM, estimate."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from napari_nstseg.inference import (
    EngineConfig,
    MapRequest,
    Prediction,
    Segmenter,
    roi_from_corners,
    roi_from_mask,
)
from napari_nstseg.inference import estimate as estimate_mod
from napari_nstseg.preprocessing import PreprocessConfig

NATIVE = PreprocessConfig(working_spacing_mm=None)  # no resampling: fastest on 2 cores
SPACING = (2.0, 1.0, 1.0)


def segmenter(model, prep=NATIVE, **config) -> Segmenter:
    return Segmenter(model, prep, "cpu", EngineConfig(**config))


def blob_mask(vol: np.ndarray) -> np.ndarray:
    return (vol > 150).astype(np.uint8)


# -- batching and modes -------------------------------------------------------------------------
def test_results_do_not_depend_on_batch_size(tiny_model, make_ct):
    vol = make_ct((4, 32, 32))
    one = segmenter(tiny_model, batch_size=1, prob_dtype="float16").predict(vol, SPACING)
    four = segmenter(tiny_model, batch_size=4, prob_dtype="float16").predict(vol, SPACING)
    assert one.complete and four.complete
    np.testing.assert_allclose(one.final.astype(float), four.final.astype(float), atol=2e-3)
    for a, b in zip(one.stages, four.stages, strict=True):
        np.testing.assert_allclose(a.astype(float), b.astype(float), atol=2e-3)
    clear = np.abs(one.final.astype(float) - 0.5) > 0.01
    assert np.array_equal(one.mask[clear], four.mask[clear])


def test_channels_last_layout_gives_the_same_prediction(tiny_model, make_ct):
    """NHWC is the CPU default for speed; it must not change what the user gets."""
    vol = make_ct((3, 32, 40))
    nhwc = segmenter(copy.deepcopy(tiny_model), prob_dtype="float16")
    conv = next(m for m in nhwc.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    nchw = nhwc.with_config(channels_last=False)
    assert nchw.model is not nhwc.model
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)  # self left as it was
    a, b = nhwc.predict(vol, SPACING), nchw.predict(vol, SPACING)
    np.testing.assert_allclose(a.final.astype(float), b.final.astype(float), atol=2e-3)
    for x, y in zip(a.stages, b.stages, strict=True):
        np.testing.assert_allclose(x.astype(float), y.astype(float), atol=2e-3)


def test_a_whole_float_batch_size_runs_like_the_integer(bright, make_ct):
    """A batch size read from JSON may arrive as 2.0; the config accepts it, so must the run."""
    vol = make_ct((5, 16, 16))
    pred = segmenter(bright(), batch_size=2.0).predict(vol, SPACING)
    assert pred.complete and pred.info["batch_size"] == 2
    reference = segmenter(bright(), batch_size=2).predict(vol, SPACING)
    np.testing.assert_array_equal(pred.final, reference.final)
    with pytest.raises(ValueError, match="batch size must be a positive integer"):
        EngineConfig(batch_size=2.5)


def test_slice_mode_matches_volume_mode(tiny_model, make_ct):
    vol = make_ct((5, 32, 40))
    seg = segmenter(tiny_model, batch_size=2, prob_dtype="float16")
    whole = seg.predict(vol, SPACING)
    some = seg.predict(vol, SPACING, z_indices=[3, 1])
    assert some.done.tolist() == [False, True, False, True, False]
    for z in (1, 3):
        np.testing.assert_allclose(
            some.final[z].astype(float), whole.final[z].astype(float), atol=2e-3
        )
    assert not some.final[[0, 2, 4]].any() and not some.mask[[0, 2, 4]].any()


def test_runs_on_more_slices_add_up(bright, make_ct):
    vol = make_ct((4, 24, 24))
    seg = segmenter(bright(), batch_size=2)
    pred = seg.predict(vol, SPACING, z_indices=[0])
    seg.predict(vol, SPACING, z_indices=[2], into=pred)
    assert pred.done.tolist() == [True, False, True, False]
    assert np.array_equal(pred.mask[[0, 2]], blob_mask(vol)[[0, 2]])


def test_bright_voxels_land_where_they_are(bright, make_ct):
    vol = make_ct((3, 32, 40))
    pred = segmenter(bright()).predict(vol, SPACING)
    assert np.array_equal(pred.mask, blob_mask(vol))


def test_roi_is_processed_alone_and_pasted_back_in_place(bright, make_ct):
    vol = make_ct((6, 32, 40))
    vol[:, 26:30, 2:6] = 200.0  # a second bright spot, outside the ROI
    model = bright()
    roi = (1, 4, 8, 20, 16, 32)
    pred = segmenter(model).predict(vol, SPACING, roi=roi)
    expected = np.zeros_like(pred.mask)
    expected[1:4, 8:20, 16:32] = blob_mask(vol)[1:4, 8:20, 16:32]
    assert expected.sum() > 0
    assert np.array_equal(pred.mask, expected)
    assert pred.done.tolist() == [False, True, True, True, False, False]
    assert pred.roi == roi
    # Only the box went through the network.
    assert all(b <= 3 for b in model.batches)


def test_roi_helpers(make_ct):
    mask = np.zeros((10, 40, 40), np.uint8)
    mask[4:6, 10:12, 20:23] = 1
    assert roi_from_mask(mask, (2.0, 1.0, 1.0), margin_mm=4.0) == (2, 8, 6, 16, 16, 27)
    corners = np.array([[3, 5.2, 7.0], [3, 5.2, 12.6], [3, 9.7, 12.6], [3, 9.7, 7.0]])
    assert roi_from_corners(corners, (10, 40, 40)) == (3, 4, 5, 11, 7, 14)
    assert roi_from_corners(corners[:, 1:], (10, 40, 40), z_range=(2, 5))[:2] == (2, 5)
    with pytest.raises(ValueError, match="ROI's y range"):
        segmenter(torch.nn.Identity()).predict(make_ct(), SPACING, roi=(0, 2, 30, 50, 0, 4))


def test_bad_requests_are_readable(bright, make_ct):
    seg = segmenter(bright())
    with pytest.raises(ValueError, match=r"slice\(s\) \[7\] are outside"):
        seg.predict(make_ct((5, 16, 16)), SPACING, z_indices=[7])
    with pytest.raises(ValueError, match="3-D"):
        seg.predict(np.zeros((16, 16)), SPACING)
    with pytest.raises(ValueError, match="spacing"):
        seg.predict(make_ct((2, 16, 16)), (1.0, 0.0, 1.0))


def test_non_working_spacing_comes_back_on_the_volume_grid(bright):
    vol = np.full((3, 40, 30), 40.0, np.float32)
    vol[:, 10:22, 8:16] = 200.0  # 12 x 8 pixels = 7.2 x 11.2 mm
    spacing = (2.5, 0.6, 1.4)
    seg = segmenter(bright(), prep=PreprocessConfig(working_spacing_mm=1.0))
    assert seg.working_shape((40, 30), spacing) == (32, 64)  # 24 x 42 px, padded to 32
    pred = seg.predict(vol, spacing, maps=MapRequest(scale_weights=True))
    assert pred.mask.shape == pred.final.shape == vol.shape
    assert pred.scale_weights.shape == (3, *vol.shape) and pred.scale_level == 1  # the finest
    coarser = seg.predict(vol, spacing, maps=MapRequest(scale_weights=True, scale_level=0))
    assert coarser.scale_level == 0
    assert not np.array_equal(coarser.scale_weights, pred.scale_weights)
    with pytest.raises(ValueError, match="scale_level 5 does not exist"):
        seg.predict(vol, spacing, maps=MapRequest(scale_weights=True, scale_level=5))
    truth = blob_mask(vol).astype(bool)
    got = pred.mask.astype(bool)
    assert (truth & got).sum() / (truth | got).sum() > 0.85
    assert not got[:, 25:, :].any() and not got[:, :, 20:].any()


# -- cancel and out-of-memory -------------------------------------------------------------------
def test_cancel_keeps_finished_slices_and_marks_the_rest(bright, make_ct):
    vol = make_ct((5, 24, 24))
    run = segmenter(bright(), batch_size=2).iter_predict(vol, SPACING)
    first = next(run)
    run.close()  # what a Cancel button does between batches
    pred = first.prediction
    assert (first.done, first.total, first.z) == (2, 5, (0, 1))
    assert pred.done.tolist() == [True, True, False, False, False]
    assert np.array_equal(pred.mask[:2], blob_mask(vol)[:2])
    assert not pred.mask[2:].any() and not pred.final[2:].any()
    assert not pred.complete


def test_progress_events_cover_every_slice(bright, make_ct):
    events = list(segmenter(bright(), batch_size=2).iter_predict(make_ct((5, 16, 16)), SPACING))
    assert [e.done for e in events] == [2, 4, 5]
    assert [z for e in events for z in e.z] == [0, 1, 2, 3, 4]
    assert events[-1].fraction == 1.0


def test_out_of_memory_halves_the_batch_and_goes_on(bright, make_ct):
    vol = make_ct((7, 24, 24))
    model = bright(oom_above=2)
    pred = segmenter(model, batch_size=8).predict(vol, SPACING)
    assert pred.complete
    assert pred.info["oom_backoffs"] == 2 and pred.info["batch_size"] == 2  # 8 -> 4 -> 2
    assert max(model.batches) == 2
    reference = segmenter(bright(), batch_size=1).predict(vol, SPACING)
    assert np.array_equal(pred.final, reference.final)


def test_out_of_memory_on_one_slice_is_a_clear_error(bright, make_ct):
    with pytest.raises(RuntimeError, match="out of memory on a single 16x16 slice"):
        segmenter(bright(oom_above=0), batch_size=4).predict(make_ct((3, 16, 16)), SPACING)


def test_other_errors_are_not_taken_for_out_of_memory(make_ct):
    class Broken(torch.nn.Module):
        def forward(self, x, **kwargs):
            raise ValueError("broken network")

    with pytest.raises(ValueError, match="broken network"):
        segmenter(Broken()).predict(make_ct((2, 16, 16)), SPACING)


# -- memory --------------------------------------------------------------------------------------
def test_prediction_keeps_small_dtypes(tiny_model, tiny_mae, make_ct):
    vol = make_ct((3, 32, 32))
    seg = Segmenter(tiny_model, NATIVE, "cpu", EngineConfig(batch_size=2), mae=tiny_mae)
    pred = seg.predict(vol, SPACING, maps=MapRequest.all())
    assert pred.mask.dtype == np.uint8 and set(np.unique(pred.mask)) <= {0, 1}
    for arr in (pred.final, pred.coarse, *pred.stages, pred.scale_weights):
        assert arr.dtype == np.uint8
    assert len(pred.stages) == 3 and pred.scale_weights.shape == (3, *vol.shape)
    assert pred.residual.dtype == np.float16 and pred.residual.shape == vol.shape
    assert np.isfinite(pred.residual.astype(np.float32)).all() and pred.residual.max() > 0
    # Scale weights are a softmax over the three scales.
    sums = pred.probability("scale_weights").sum(axis=0)
    np.testing.assert_allclose(sums, 1.0, atol=2.0 / 255)
    assert pred.nbytes == Prediction.bytes_for(vol.shape, MapRequest.all(), 3) + vol.shape[0]

    half = seg.with_config(prob_dtype="float16").predict(vol, SPACING, maps=MapRequest.all())
    for arr in (half.final, half.coarse, *half.stages, half.scale_weights, half.residual):
        assert arr.dtype == np.float16
    np.testing.assert_allclose(pred.probability("final"), half.probability("final"), atol=1.0 / 255)
    # The residual does not depend on how slices were batched (masks seeded per slice).
    np.testing.assert_allclose(
        seg.with_config(batch_size=1).predict(vol, SPACING, maps=MapRequest.all()).residual,
        pred.residual,
        atol=1e-3,
    )


def test_minimal_maps_allocate_only_mask_and_final(bright, make_ct):
    pred = segmenter(bright()).predict(make_ct((2, 16, 16)), SPACING, maps=MapRequest.minimal())
    assert pred.coarse is None and pred.stages == [] and pred.residual is None
    assert pred.scale_weights is None
    assert pred.nbytes == 2 * 16 * 16 * 2 + 2


def test_residual_without_an_mae_is_a_clear_error(tiny_model, make_ct):
    with pytest.raises(ValueError, match="names no masked autoencoder"):
        segmenter(tiny_model).predict(make_ct((1, 32, 32)), SPACING, maps=MapRequest.all())


def test_mask_at_another_threshold(bright, make_ct):
    pred = segmenter(bright(gain=0.5), threshold=0.5).predict(make_ct((2, 24, 24)), SPACING)
    # uint8 storage keeps probabilities to 1/255: agreement is exact away from the threshold.
    clear = np.abs(pred.probability("final") - 0.5) > 1.0 / 255
    assert np.array_equal(pred.mask_at(0.5)[clear], pred.mask[clear])
    assert pred.mask_at(0.2).sum() > pred.mask.sum() > pred.mask_at(0.8).sum()


# -- estimate ------------------------------------------------------------------------------------
def test_estimate_refuses_only_what_cannot_fit_one_slice(bright, monkeypatch):
    seg = segmenter(bright(), batch_size=8)
    shape = (20, 64, 64)
    free = {"bytes": 1 << 40}
    monkeypatch.setattr(estimate_mod, "device_memory_available", lambda d: free["bytes"])
    monkeypatch.setattr(estimate_mod, "host_memory_available", lambda: free["bytes"])

    roomy = seg.estimate(shape, SPACING)
    assert roomy.fits and roomy.batch_size == 8 and roomy.seconds > 0
    per_slice, host = roomy.bytes_per_slice, roomy.host_bytes
    assert per_slice > 0 and host == Prediction.bytes_for(shape, MapRequest(), 2)

    free["bytes"] = int((host + 1.5 * per_slice) / estimate_mod.MEMORY_HEADROOM)
    tight = seg.estimate(shape, SPACING)
    assert tight.fits and tight.batch_size == 1, tight.reason

    free["bytes"] = int((host + 0.5 * per_slice) / estimate_mod.MEMORY_HEADROOM)
    refused = seg.estimate(shape, SPACING)
    assert not refused.fits and refused.batch_size == 0
    assert "One 64x64 slice" in refused.reason and "\n" not in refused.reason


def test_estimate_scales_with_slice_size(bright):
    seg = segmenter(bright())
    small = seg.estimate((10, 64, 64), SPACING)
    large = seg.estimate((10, 256, 256), SPACING)
    assert large.working_shape == (256, 256)
    assert large.bytes_per_slice == pytest.approx(16 * small.bytes_per_slice, rel=0.01)
    assert large.seconds > small.seconds


def test_auto_batch_size_comes_from_the_estimate(bright, make_ct, monkeypatch):
    monkeypatch.setattr(estimate_mod, "MAX_AUTO_BATCH", 3)
    pred = segmenter(bright(), batch_size=None).predict(make_ct((7, 16, 16)), SPACING)
    assert pred.complete and pred.info["batch_size"] == 3


# -- operating point: threshold + minimum lesion size -------------------------------------------
def lesion_and_speck(shape=(4, 32, 32)) -> np.ndarray:
    """40 HU with a bright 12 x 12 px lesion on slices 1-2 and a bright 2 x 2 px speck on 3."""
    vol = np.full(shape, 40.0, np.float32)
    vol[1:3, 4:16, 4:16] = 200.0
    vol[3, 24:26, 24:26] = 200.0
    return vol


def test_small_lesions_leave_the_mask_and_the_prediction_says_so(bright):
    vol = lesion_and_speck()
    seg = segmenter(bright(), batch_size=1, min_lesion_mm=5.0)
    assert seg.postprocess.min_lesion_mm == 5.0 and seg.postprocess.threshold == 0.5
    pred = seg.predict(vol, SPACING)
    lesion = blob_mask(vol)
    lesion[3] = 0
    # Batches of one slice: the lesion spans two batches and is judged as one 3-D lesion.
    np.testing.assert_array_equal(pred.mask, lesion)
    assert (pred.threshold, pred.min_lesion_mm, pred.spacing) == (0.5, 5.0, SPACING)
    np.testing.assert_array_equal(pred.mask_at(0.5, 5.0), pred.mask)
    np.testing.assert_array_equal(pred.mask_at(0.5), blob_mask(vol))  # the speck is still there
    # The SSL/stage maps and the probability are not filtered.
    assert pred.final[3, 24, 24] > 200 and pred.stages[-1][3, 24, 24] > 200
    plain = segmenter(bright(), batch_size=1).predict(vol, SPACING)
    assert plain.min_lesion_mm == 0.0
    np.testing.assert_array_equal(plain.mask, blob_mask(vol))


def test_a_cancelled_run_filters_the_slices_it_finished(bright):
    vol = lesion_and_speck()
    vol[0, 20:22, 4:6] = 200.0  # a second speck, on the first slice
    seg = segmenter(bright(), batch_size=2, min_lesion_mm=5.0)
    events = seg.iter_predict(vol, SPACING)
    first = next(events)
    assert first.prediction.mask[0, 20, 4] == 1  # mid-run: the plain cut
    events.close()  # what the widget's Cancel does
    pred = first.prediction
    assert pred.done.tolist() == [True, True, False, False]
    assert not pred.mask[0].any() and pred.mask[1, 4:16, 4:16].all()
    assert pred.min_lesion_mm == 5.0


def test_runs_into_one_prediction_are_filtered_over_all_their_slices(bright):
    vol = lesion_and_speck()
    seg = segmenter(bright(), min_lesion_mm=5.0)
    pred = seg.predict(vol, SPACING, z_indices=[3])
    assert not pred.mask.any()  # the speck alone
    seg.predict(vol, SPACING, z_indices=[1, 2], into=pred)
    expected = blob_mask(vol)
    expected[[0, 3]] = 0
    np.testing.assert_array_equal(pred.mask, expected)
    # At another operating point the earlier run's slice is re-cut from its probability.
    segmenter(bright(), min_lesion_mm=0.0).predict(vol, SPACING, z_indices=[0], into=pred)
    np.testing.assert_array_equal(pred.mask, blob_mask(vol))


def test_bad_operating_points_are_refused_when_configured():
    with pytest.raises(ValueError, match="threshold must be between 0 and 1"):
        EngineConfig(threshold=1.2)
    with pytest.raises(ValueError, match="min_lesion_mm"):
        EngineConfig(min_lesion_mm=-2)


# -- 2.5-D input ----------------------------------------------------------------------------------
class PlaneModel(torch.nn.Module):
    """A 3-channel stand-in that segments what is bright in ONE of its input planes."""

    def __init__(self, bright, channel: int) -> None:
        super().__init__()
        from types import SimpleNamespace

        self.inner = bright()
        self.channel = channel
        self.config = SimpleNamespace(in_channels=3, arch="plane", ssl_guidance=False)

    def forward(self, x, residual=None, return_scale_weights=False):
        assert x.shape[1] == 3
        return self.inner(x[:, self.channel : self.channel + 1], residual, return_scale_weights)


CONTEXT = PreprocessConfig(working_spacing_mm=None, slice_offsets_mm=(-3.0, 0.0, 3.0))


@pytest.mark.parametrize("z_mm", [3.0, 1.5])
def test_context_planes_reach_the_model_at_their_distance_in_mm(bright, z_mm):
    # A bright spot 3 mm below slice 2 only: the model that segments the +3 mm plane marks it
    # on slice 2, whatever the slice spacing, and also when only slice 2 is asked for.
    vol = np.full((8, 16, 16), 40.0, np.float32)
    below = 2 + int(round(3.0 / z_mm))
    vol[below, 5:8, 6:9] = 300.0
    seg = segmenter(PlaneModel(bright, channel=2), CONTEXT, batch_size=2)
    whole = seg.predict(vol, (z_mm, 1.0, 1.0))
    assert np.flatnonzero(whole.mask.any(axis=(1, 2))).tolist() == [2]
    np.testing.assert_array_equal(np.argwhere(whole.mask[2]), np.argwhere(vol[below] > 100))
    only = seg.predict(vol, (z_mm, 1.0, 1.0), roi=(2, 3, 0, 16, 0, 16))
    np.testing.assert_array_equal(only.mask, whole.mask)


def test_context_model_errors_are_readable(bright, tiny_model):
    seg = segmenter(PlaneModel(bright, channel=1), CONTEXT)
    with pytest.raises(ValueError, match=r"\(z, y, x\) spacing"):
        seg.predict(np.zeros((3, 8, 8), np.float32), (1.0, 1.0))
    with pytest.raises(ValueError, match="1 input channel.*makes 3"):
        segmenter(tiny_model, CONTEXT)


# -- test-time mirroring --------------------------------------------------------------------------
class ShiftedBright(torch.nn.Module):
    """The bright-voxel stand-in, looking 3 pixels to the left: not left-right symmetric."""

    def __init__(self, bright) -> None:
        super().__init__()
        self.inner = bright()

    def forward(self, x, residual=None, return_scale_weights=False):
        shifted = torch.nn.functional.pad(x, (3, 0, 0, 0), mode="replicate")[..., :-3]
        return self.inner(shifted, residual, return_scale_weights)


def test_mirroring_makes_a_mirrored_scan_get_the_mirrored_prediction(bright, make_ct):
    # Without mirroring, a network that is not symmetric tells a scan from its mirror image;
    # with it, each slice is averaged with its mirror, and every map of the mirrored scan is
    # the mirrored map.
    vol = make_ct((2, 32, 64))  # a multiple of the pad size: no padding on one side only
    flipped = np.ascontiguousarray(vol[..., ::-1])
    maps = MapRequest(coarse=True, stages=True, scale_weights=True)
    plain = segmenter(ShiftedBright(bright), prob_dtype="float16")
    a, b = (plain.predict(v, SPACING, maps=maps) for v in (vol, flipped))
    assert not np.array_equal(a.mask[..., ::-1], b.mask)
    mirrored = plain.with_config(mirror=True)
    a, b = (mirrored.predict(v, SPACING, maps=maps) for v in (vol, flipped))
    np.testing.assert_array_equal(a.mask[..., ::-1], b.mask)
    for name in ("final", "coarse", "scale_weights"):
        np.testing.assert_allclose(
            a.probability(name)[..., ::-1], b.probability(name), atol=1e-3, err_msg=name
        )
    for x, y in zip(a.stages, b.stages, strict=True):
        np.testing.assert_allclose(x.astype(float)[..., ::-1], y.astype(float), atol=1e-3)


def test_mirroring_flips_the_maps_back_onto_the_slice(bright, make_ct):
    vol = make_ct((3, 32, 40))  # the blob lies right of centre
    plain = segmenter(bright(), prob_dtype="float16").predict(vol, SPACING)
    seg = segmenter(bright(), prob_dtype="float16", mirror=True)
    mirrored = seg.predict(vol, SPACING)
    assert np.array_equal(mirrored.mask, blob_mask(vol))
    np.testing.assert_allclose(mirrored.final.astype(float), plain.final.astype(float), atol=1e-3)
    assert seg.model.batches == [3, 3]  # the slices, then their mirror images


def test_mirroring_gives_the_mirror_image_the_mirrored_residual_map(bright, tiny_mae, make_ct):
    from types import SimpleNamespace

    class Guided(bright):
        config = SimpleNamespace(in_channels=1, arch="guided", ssl_guidance=True)

        def forward(self, x, residual=None, return_scale_weights=False):
            self.seen.append((x.clone(), residual.clone()))
            return super().forward(x, residual, return_scale_weights)

    model = Guided()
    model.seen = []
    seg = Segmenter(model, NATIVE, "cpu", EngineConfig(mirror=True), mae=tiny_mae)
    seg.predict(make_ct((2, 32, 40)), SPACING)
    (x, residual), (x_m, residual_m) = model.seen
    torch.testing.assert_close(x_m, x.flip(-1))
    torch.testing.assert_close(residual_m, residual.flip(-1))
    assert residual.abs().max() > 0
