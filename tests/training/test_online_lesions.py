"""Training with lesions inserted on the fly: a new site for every crop, inserted as make-lesions
inserts them, from the blocks a make-lesions folder records."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from lesion_helpers import SOFT, phantom, save_int16
from napari_nstseg.io.readers import read_ct
from napari_nstseg.preprocessing import (
    PreprocessConfig,
    resample_slices_to_working,
    window_normalize,
)
from napari_nstseg.training.data import AugmentConfig, SamplingConfig
from napari_nstseg.training.lesions import LesionConfig, SplitConfig, make_lesion_dataset
from napari_nstseg.training.lesions.online import (
    OnlineLesionDataset,
    SourceBlock,
    read_source_blocks,
)

SPACING = (2.5, 0.8, 0.8)
PRE = PreprocessConfig(working_spacing_mm=1.5)
LESIONS = LesionConfig(diameter_mm=(5.0, 9.0), shell_mm=3.0, contrast_hu=(-40.0, 30.0))


def block(seed=0):
    hu, classes = phantom(shape=(24, 80, 80), spacing=SPACING, seed=seed)
    return SourceBlock("phantom z000-024", hu, SPACING), classes


def dataset(**sampling) -> OnlineLesionDataset:
    base = dict(
        crop_size=(32, 32),
        samples_per_epoch=40,
        positive_fraction=0.5,
        lesion_bank=24,
        seed=3,
        augment=AugmentConfig(enabled=False),
    )
    base.update(sampling)
    return OnlineLesionDataset([block()[0]], LESIONS, PRE, SamplingConfig(**base))


def test_every_crop_with_lesion_gets_a_new_lesion_site():
    # the point of inserting on the fly: no lesion site recurs, so a model cannot learn where
    # the training lesions were
    ds = dataset(crop_size=None)  # whole slices, so positions compare between items
    sites = set()
    for i in range(len(ds)):
        item = ds[i]
        mask = item["mask"][0].numpy()
        if ds.is_positive_item(i):
            assert mask.sum() > 0
            ys, xs = np.nonzero(mask)
            sites.add((item["z"], round(ys.mean()), round(xs.mean())))
        else:
            assert mask.sum() == 0  # the blocks themselves hold no lesion
    assert len(sites) == 20  # 20 crops with lesion, 20 different places
    # reproducible per (seed, epoch, item), new samples in the next epoch
    again = dataset(crop_size=None)
    np.testing.assert_array_equal(again[1]["image"], ds[1]["image"])
    again.set_epoch(1)
    assert not np.array_equal(again[1]["mask"], ds[1]["mask"])


def test_a_lesion_on_the_fly_is_the_lesion_make_lesions_would_insert():
    # the crop must show what a stored case would: the lesion added on the native grid, then
    # the slice resampled to the working grid, its label resampled and thresholded at 0.5
    src, classes = block()
    ds = dataset()
    rng = np.random.default_rng(0)
    placed = next(p for p in (ds.place(0, rng) for _ in range(200)) if p is not None)
    # in soft tissue, with a contrast in the requested range (the offset's mean on the label)
    assert (classes[placed.box][placed.support] == SOFT).all()
    contrast = float(placed.native_offset[placed.support].mean())
    assert abs(contrast) >= LESIONS.min_abs_contrast_hu and -40 <= contrast <= 30
    cfg = replace(PRE, pad_multiple=1)
    native = src.hu.copy()
    native[placed.box] += placed.native_offset
    expected, _ = resample_slices_to_working(native[placed.z], SPACING[1:], cfg)
    got = ds.cases[0].hu[placed.z].astype(np.float32)
    rows, cols = placed.working_box
    got[rows, cols] += placed.offset[placed.z]
    np.testing.assert_allclose(got, expected, atol=0.5 + 1e-3)  # the cache holds whole HU
    label = np.zeros(src.hu.shape, np.float32)
    label[placed.box] = placed.support
    want, _ = resample_slices_to_working(label[placed.z], SPACING[1:], cfg, pad_value=0.0)
    mask = np.zeros(want.shape, np.float32)
    mask[rows, cols] = placed.mask
    assert mask.sum() > 0
    np.testing.assert_array_equal(mask, (want >= 0.5).astype(np.float32))


def test_lesions_on_the_fly_keep_off_fat_and_air_when_asked():
    # make-lesions' --min-surround-soft holds on the fly too: with the whole ring soft tissue no
    # lesion lies within its ring (3 mm shell + a slice + the blur) of the fat pad, air or bone
    src, classes = block()
    clearance_mm = ndimage.distance_transform_edt(classes == SOFT, sampling=SPACING)

    def clearances(config):
        sampling = SamplingConfig(crop_size=(32, 32), samples_per_epoch=8, lesion_bank=24, seed=3)
        ds = OnlineLesionDataset([src], config, PRE, sampling)
        rng = np.random.default_rng(0)
        out = []
        while len(out) < 30:
            placed = ds.place(0, rng)
            if placed is not None:
                out.append(clearance_mm[placed.box][placed.support].min())
        return np.array(out)

    assert (clearances(LESIONS) < 2.0).any()  # by default lesions may abut the fat pad
    assert (clearances(replace(LESIONS, min_surround_soft=1.0)) > 5.0).all()


def test_settings_no_block_can_meet_fail_with_a_readable_error():
    impossible = replace(LESIONS, median_hu=(500.0, 600.0))  # no soft tissue is that dense
    sampling = SamplingConfig(crop_size=(32, 32), samples_per_epoch=4, positive_fraction=1.0,
                              lesion_bank=4, seed=3)  # fmt: skip
    ds = OnlineLesionDataset([block()[0]], impossible, PRE, sampling)
    with pytest.raises(RuntimeError, match=r"could not place a lesion in phantom z000-024 after"):
        ds[0]


def test_context_planes_carry_the_lesion_too():
    # 2.5-D training: the planes above and below show the lesion where it reaches them
    pre = replace(PRE, slice_offsets_mm=(-2.5, 0.0, 2.5))
    sampling = SamplingConfig(
        crop_size=None, samples_per_epoch=8, lesion_bank=8, augment=AugmentConfig(enabled=False)
    )
    ds = OnlineLesionDataset([block()[0]], LESIONS, pre, sampling)
    c = ds.cases[0]
    h, w = c.hu.shape[1:]
    positives = [i for i in range(len(ds)) if ds.is_positive_item(i)]
    assert positives
    for i in positives:
        item = ds[i]
        assert item["image"].shape[0] == 3
        lesion_free = window_normalize(ds._planes(c, item["z"]), pre)
        changed = np.abs(item["image"][:, :h, :w].numpy() - lesion_free) > 1e-6
        assert changed[1].any() and (changed[0].any() or changed[2].any())


def test_a_block_where_lesions_are_hard_to_place_still_gets_its_share():
    # a chest block with little soft tissue must get as many crops with lesion per slice as an
    # abdominal one; otherwise it is shown almost only lesion-free and a model learns to find
    # nothing there
    easy, _ = block(seed=0)
    hu, classes = phantom(shape=(24, 80, 80), spacing=SPACING, seed=1)
    hu[:, :, 20:] = np.where(classes[:, :, 20:] == SOFT, -100.0, hu[:, :, 20:])  # soft -> fat
    hard = SourceBlock("lean z000-024", hu, SPACING)
    sampling = SamplingConfig(
        crop_size=(32, 32), samples_per_epoch=160, positive_fraction=0.5, lesion_bank=24,
        seed=3, augment=AugmentConfig(enabled=False),
    )  # fmt: skip
    ds = OnlineLesionDataset([easy, hard], LESIONS, PRE, sampling)
    rng = np.random.default_rng(0)
    rate = [np.mean([ds.place(k, rng) is not None for _ in range(400)]) for k in (0, 1)]
    assert 0 < rate[1] < rate[0] / 3  # placing really is much harder in the lean block
    blocks = [ds[i]["case"] for i in range(len(ds)) if ds.is_positive_item(i)]
    assert 0.35 < blocks.count(hard.name) / len(blocks) < 0.65  # equal slices, equal share


def _evaluation_only_folder(tmp_path, copies):
    """A make-lesions folder of a phantom scan's val cases, and the lesion settings; the
    scan's training block is only in the folder's record."""
    hu, _ = phantom(shape=(60, 40, 40), spacing=(2.0, 1.5, 1.5), seed=4)
    save_int16(tmp_path / "a.nii.gz", np.transpose(hu, (2, 1, 0)), np.diag([1.5, 1.5, 2.0, 1.0]))
    cfg = LesionConfig(diameter_mm=(4.0, 7.0), lesions_per_scan=(1, 2), shell_mm=2.0, seed=1)
    split = SplitConfig(fractions=(0.4, 0.3, 0.3), guard_mm=6.0, min_block_mm=20.0)
    out = make_lesion_dataset([tmp_path / "a.nii.gz"], tmp_path / "ds", copies, cfg, 3, None,
                              split, splits=("val",))  # fmt: skip
    return out, cfg


def test_blocks_come_from_the_make_lesions_record(tmp_path):
    # an evaluation-only folder (val cases) still records the training block
    out, cfg = _evaluation_only_folder(tmp_path, 1)
    blocks, read_cfg = read_source_blocks(out, "train")
    assert read_cfg == cfg
    meta = json.loads((out / "dataset.json").read_text())
    (region,) = [r for r in meta["regions"] if r["split"] == "train"]
    z0, z1 = region["z_range_display"]
    (b,) = blocks
    np.testing.assert_array_equal(b.hu, read_ct(tmp_path / "a.nii.gz").hu[z0:z1])
    assert b.spacing == (2.0, 1.5, 1.5) and b.organ_labels is None
    # a folder from before the record, or a moved scan: a readable error, not a traceback
    del meta["regions"]
    (out / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="make-lesions"):
        read_source_blocks(out)
    with pytest.raises(ValueError, match="dataset.json"):
        read_source_blocks(tmp_path)


def test_train_command_with_online_lesions(tmp_path, capsys):
    from napari_nstseg.cli import main

    data, _ = _evaluation_only_folder(tmp_path, 2)
    args = ["train", "--data", str(data), "--epochs", "2", "--steps-per-epoch", "2",
            "--batch-size", "4", "--crop-size", "32", "--base-width", "8",
            "--set", "fused_channels=8", "--no-progress"]  # fmt: skip
    # the folder holds no stored training case: only the blocks can train
    assert main([*args, "--out", str(tmp_path / "stored")]) == 2
    assert "no case is in the training split" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "run"), "--online-lesions"]) == 0
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["sampling"]["online_lesions"] is True
    log = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert len(log) == 3 and "val_dice" in log[0]  # validated on the stored val cases


def test_real_tumours_and_online_lesions_train_together(tmp_path, capsys):
    """`--also-data MAKE_LESIONS --also-online-lesions` beside case folders: crops from both,
    lesions inserted on the fly in the second; without the flag its lack of stored training
    cases is named."""
    from case_helpers import write_case_folders
    from napari_nstseg.cli import main

    data, _ = _evaluation_only_folder(tmp_path, 2)
    cases = write_case_folders(tmp_path / "sts", n=3)
    args = ["train", "--data", str(cases), "--also-data", str(data), "--epochs", "1",
            "--steps-per-epoch", "2", "--batch-size", "4", "--crop-size", "32", "--base-width",
            "8", "--set", "fused_channels=8", "--no-progress"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "stored")]) == 2
    assert f"{data.resolve()}: no case is in the training split" in capsys.readouterr().err
    assert main([*args, "--also-online-lesions", "--out", str(tmp_path / "run")]) == 0
    meta = json.loads((tmp_path / "run" / "final.json").read_text())
    (extra,) = meta["provenance"]["training_data"]["extra"]
    assert extra["online_lesions"] is True and extra["share"] == 0.5


def test_online_lesions_can_be_drawn_more_visible_than_the_folder(tmp_path, capsys):
    """--online-min-contrast-hu / --online-diameter-mm change the lesions inserted on the fly
    (a curriculum of lesions as visible as the evaluation's targets), not the folder's stored
    cases; asked for without --online-lesions, or out of the folder's contrast range, they get
    a one-line error."""
    from napari_nstseg.cli import main
    from napari_nstseg.training.lesions.insertion import draw_contrast
    from napari_nstseg.training.segmentation import training_set

    data, cfg = _evaluation_only_folder(tmp_path, 1)
    before = (data / "dataset.json").read_bytes()
    sampling = SamplingConfig(
        crop_size=(32, 32), online_lesions=True, online_min_contrast_hu=25.0, lesion_bank=8,
        online_diameter_mm=(5.0, 6.0), augment=AugmentConfig(enabled=False),
    )  # fmt: skip
    ds = training_set(data, [], PRE, sampling)
    assert ds.lesion_config.min_abs_contrast_hu == 25.0 and ds.lesion_config.diameter_mm == (5, 6)
    assert ds.lesion_config.contrast_hu == cfg.contrast_hu  # the rest is the folder's
    rng = np.random.default_rng(0)
    drawn = np.array([draw_contrast(rng, ds.lesion_config) for _ in range(300)])
    assert np.abs(drawn).min() >= 25.0 and (drawn < 0).any() and (drawn > 0).any()
    plain = training_set(data, [], PRE, replace(sampling, online_min_contrast_hu=None))
    assert plain.lesion_config.min_abs_contrast_hu == cfg.min_abs_contrast_hu

    args = ["train", "--data", str(data), "--epochs", "1", "--steps-per-epoch", "1",
            "--batch-size", "4", "--crop-size", "32", "--base-width", "8",
            "--set", "fused_channels=8", "--no-progress",
            "--online-min-contrast-hu", "20"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err
    assert "--online-min-contrast-hu sets the lesions inserted on the fly" in err
    too_high = [*args[:-1], "60", "--online-lesions", "--out", str(tmp_path / "high")]
    assert main(too_high) == 2
    err = capsys.readouterr().err
    assert "on-the-fly lesions" in err and "no room" in err and len(err.strip().splitlines()) == 1
    run = tmp_path / "run"
    sized = ["--online-lesions", "--online-diameter-mm", "5", "8", "--out", str(run)]
    assert main([*args, *sized]) == 0
    saved = json.loads((run / "train_config.json").read_text())["sampling"]
    assert saved["online_min_contrast_hu"] == 20.0 and saved["online_diameter_mm"] == [5.0, 8.0]
    assert (data / "dataset.json").read_bytes() == before  # the folder is never rewritten
