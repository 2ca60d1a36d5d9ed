"""Training data: dataset folders, case-level splits, slice sampling and augmentation."""

import json
import warnings

import nibabel as nib
import numpy as np
import pytest

from napari_nstseg.preprocessing import PreprocessConfig, normalized_air, window_normalize
from napari_nstseg.training.cases import Case, find_cases, split_cases
from napari_nstseg.training.data import AugmentConfig, SamplingConfig, SliceDataset, augment_crop

NO_AUG = AugmentConfig(enabled=False)


def _save(path, array_zyx, spacing_zyx=(1.0, 1.0, 1.0), dtype=np.int16):
    """Write a (z, y, x) display array as NIfTI with an LPS-style (i = x, j = y, k = z) grid."""
    sz, sy, sx = spacing_zyx
    # nibabel stores RAS; diag(-sx, -sy, sz) is i towards L, j towards P, k towards S.
    affine = np.diag([-sx, -sy, sz, 1.0])
    data = np.transpose(np.asarray(array_zyx), (2, 1, 0)).astype(dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))


def _phantom(nz=6, ny=40, nx=48, lesion_slices=(2, 3), tumor_hu=300):
    """Soft tissue with an 'organ' (label 1) in every slice and a 'tumour' (label 2) in some."""
    hu = np.zeros((nz, ny, nx), np.int16)
    labels = np.zeros((nz, ny, nx), np.uint8)
    labels[:, 5:35, 5:40] = 1
    for z in lesion_slices:
        labels[z, 15:23, 20:30] = 2
        hu[z, 15:23, 20:30] = tumor_hu
    return hu, labels


def _msd(root, ids, split=None, image_suffix="_0000", spacing=(1.0, 1.0, 1.0)):
    ds = {"name": "test", "labels": {"0": "background", "1": "organ", "2": "tumour"}}
    if split is not None:
        ds["split"] = split
    for case_id in ids:
        hu, labels = _phantom()
        _save(root / "imagesTr" / f"{case_id}{image_suffix}.nii.gz", hu, spacing)
        _save(root / "labelsTr" / f"{case_id}.nii.gz", labels, spacing, np.uint8)
    (root / "dataset.json").write_text(json.dumps(ds))
    return root


def test_find_cases_msd_with_split_and_resource_forks(tmp_path):
    root = _msd(
        tmp_path / "Task",
        ["p_001", "p_002", "p_003"],
        split={"train": ["p_001", "p_003"], "val": ["p_002"]},
    )
    (root / "imagesTr" / "._p_001_0000.nii.gz").write_bytes(b"\x00junk")  # macOS leftovers
    cases = find_cases(root)
    assert [c.case_id for c in cases] == ["p_001", "p_002", "p_003"]
    assert cases[0].image.name == "p_001_0000.nii.gz" and cases[0].label.name == "p_001.nii.gz"
    split = split_cases(cases, val_fraction=0.5, seed=123)  # the dataset.json split wins
    assert [c.case_id for c in split["train"]] == ["p_001", "p_003"]
    assert [c.case_id for c in split["val"]] == ["p_002"]
    assert split["test"] == []


def test_find_cases_msd_without_channel_suffix(tmp_path):
    root = _msd(tmp_path / "Task", ["a", "b"], image_suffix="")
    assert [c.case_id for c in find_cases(root)] == ["a", "b"]


def test_split_listing_missing_case_is_an_error(tmp_path):
    root = _msd(tmp_path / "Task", ["a"], split={"train": ["a"], "val": ["zzz"]})
    with pytest.raises(ValueError, match="zzz"):
        find_cases(root)


def test_find_cases_plain_folder_and_errors(tmp_path):
    hu, labels = _phantom(nz=2, lesion_slices=(1,))
    _save(tmp_path / "d" / "images" / "x.nii.gz", hu)
    _save(tmp_path / "d" / "masks" / "x_seg.nii.gz", labels, dtype=np.uint8)
    _save(tmp_path / "d" / "images" / "lonely.nii.gz", hu)
    with pytest.warns(UserWarning, match="lonely"):
        cases = find_cases(tmp_path / "d")
    assert [(c.case_id, c.label.name) for c in cases] == [("x", "x_seg.nii.gz")]
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "labels").mkdir()
    with pytest.raises(ValueError, match="no image with a matching label"):
        find_cases(tmp_path / "empty")
    with pytest.raises(ValueError, match="no dataset found"):
        find_cases(tmp_path / "empty" / "images")
    with pytest.raises(ValueError, match="not a folder"):
        find_cases(tmp_path / "nope")


def test_split_is_by_case_deterministic_and_disjoint(tmp_path):
    cases = [Case(f"c{i:02d}", tmp_path / f"i{i}", tmp_path / f"l{i}") for i in range(20)]
    a = split_cases(cases, val_fraction=0.2, test_fraction=0.1, seed=7)
    b = split_cases(list(reversed(cases)), val_fraction=0.2, test_fraction=0.1, seed=7)
    assert a == b  # input order does not matter, only ids and seed
    assert [len(a[k]) for k in ("train", "val", "test")] == [14, 4, 2]
    ids = [{c.case_id for c in a[k]} for k in ("train", "val", "test")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert set().union(*ids) == {c.case_id for c in cases}
    c = split_cases(cases, val_fraction=0.2, test_fraction=0.1, seed=8)
    assert c["val"] != a["val"]


def test_slices_never_leak_across_splits(tmp_path):
    root = _msd(tmp_path / "Task", ["a", "b", "c", "d"])
    split = split_cases(find_cases(root), val_fraction=0.25, seed=0)
    seq = SamplingConfig(sequential=True)
    train = SliceDataset(split["train"], sampling=seq)
    val = SliceDataset(split["val"], sampling=seq)
    train_cases = {train[i]["case"] for i in range(len(train))}
    val_cases = {val[i]["case"] for i in range(len(val))}
    assert len(val_cases) == 1 and len(train_cases) == 3 and not train_cases & val_cases


def test_resampling_to_working_spacing_and_highest_label_default(tmp_path):
    root = _msd(tmp_path / "Task", ["a"], spacing=(3.0, 2.0, 2.0))  # 40 x 48 px of 2 mm
    ds = SliceDataset(
        find_cases(root), PreprocessConfig(working_spacing_mm=1.0), SamplingConfig(sequential=True)
    )
    assert ds.label_values == (2,)  # tumour, not the organ
    assert ds.cases[0].hu.shape == (6, 80, 96) and ds.cases[0].hu.dtype == np.int16
    item = ds[2]
    assert item["image"].shape == (1, 96, 96) and item["mask"].shape == (1, 96, 96)
    assert item["image"].dtype.is_floating_point and item["case"] == "a" and item["z"] == 2
    mask = item["mask"][0].numpy()
    # The 8 x 10 px tumour of 2 mm is 16 x 20 px at 1 mm, at twice its pixel position.
    ys, xs = np.nonzero(mask)
    assert mask.sum() == 16 * 20 and (ys.min(), xs.min()) == (30, 40)
    # Image and mask went through the same geometry: the bright tumour is exactly under the mask
    # (300 HU on 0 HU, so half-way, 150 HU, is where the mask's 0.5 threshold falls).
    image = item["image"][0].numpy()
    np.testing.assert_array_equal(
        image >= window_normalize(np.float32(150), ds.preprocess), mask > 0
    )
    assert ds[0]["mask"].sum() == 0  # slice without tumour (organ only)
    organ = SliceDataset(
        find_cases(root), sampling=SamplingConfig(sequential=True, label_values=(1, 2))
    )
    assert organ[0]["mask"].sum() > 0


def test_context_planes_come_with_the_slice_and_share_its_augmentation(tmp_path):
    root = _msd(tmp_path / "Task", ["a"], spacing=(2.0, 1.0, 1.0))
    offsets = PreprocessConfig(working_spacing_mm=None, slice_offsets_mm=(-2.0, 0.0, 2.0))
    plain = PreprocessConfig(working_spacing_mm=None)
    seq = SamplingConfig(sequential=True)
    ctx = SliceDataset(find_cases(root), offsets, seq)
    flat = SliceDataset(find_cases(root), plain, seq)
    # Slice 1 has no tumour but the one below it (2 mm further) has: only the planes show it.
    item = ctx[1]
    assert item["image"].shape == (3, 64, 64) and item["mask"].shape == (1, 64, 64)
    assert item["mask"].sum() == 0
    for c, z in enumerate((0, 1, 2)):
        np.testing.assert_array_equal(item["image"][c], flat[z]["image"][0])
    # Random crops: one geometric transform for every plane, the mask is the centre slice's.
    geometric = AugmentConfig(flip_ud=0.5, rotate_deg=30.0, hu_scale=0, hu_shift=0, noise_std_hu=0)
    aug = SamplingConfig(crop_size=(24, 24), positive_fraction=1.0, seed=3, augment=geometric)
    crop = SliceDataset(find_cases(root), offsets, aug)[0]
    assert crop["image"].shape == (3, 24, 24) and crop["z"] in (2, 3)
    bright = crop["image"] > window_normalize(np.float32(150), offsets)
    centre = crop["image"][1] > window_normalize(np.float32(150), offsets)
    np.testing.assert_array_equal(centre.numpy(), crop["mask"][0].numpy() > 0)
    # Slice 2's lower neighbour (3) also has the tumour in the same place; its upper one (1) not.
    neighbour = 2 if crop["z"] == 2 else 0
    np.testing.assert_array_equal(bright[neighbour].numpy(), centre.numpy())


def test_declared_labels_win_over_labels_present(tmp_path):
    root = tmp_path / "Task"
    hu, labels = _phantom(lesion_slices=())  # this case has organ only
    _save(root / "imagesTr" / "a_0000.nii.gz", hu)
    _save(root / "labelsTr" / "a.nii.gz", labels, dtype=np.uint8)
    (root / "dataset.json").write_text(
        json.dumps({"labels": {"background": 0, "organ": 1, "tumour": 2}})
    )
    ds = SliceDataset(find_cases(root), sampling=SamplingConfig(sequential=True))
    assert ds.label_values == (2,)
    assert all(ds[i]["mask"].sum() == 0 for i in range(len(ds)))


def test_shape_mismatch_is_a_clear_error(tmp_path):
    hu, labels = _phantom()
    _save(tmp_path / "d" / "images" / "x.nii.gz", hu)
    _save(tmp_path / "d" / "masks" / "x.nii.gz", labels[:, :30], dtype=np.uint8)
    with pytest.raises(ValueError, match="x.nii.gz"):
        SliceDataset(find_cases(tmp_path / "d"))


def test_positive_share_and_reproducible_sampling(tmp_path):
    root = _msd(tmp_path / "Task", ["a", "b"])
    sampling = SamplingConfig(
        positive_fraction=0.25,
        crop_size=(32, 32),
        samples_per_epoch=40,
        augment=AugmentConfig(noise_std_hu=0.0),
    )
    ds = SliceDataset(find_cases(root), sampling=sampling)
    items = [ds[i] for i in range(len(ds))]
    with_lesion = [it["mask"].sum().item() > 0 for it in items]
    assert sum(with_lesion) == 10  # exactly a quarter, each positive crop shows its lesion
    assert all(it["image"].shape == (1, 32, 32) for it in items)
    assert all((it["z"] in (2, 3)) == pos for it, pos in zip(items, with_lesion, strict=True))
    again = ds[5]
    assert again["z"] == items[5]["z"] and np.array_equal(again["image"], items[5]["image"])
    ds.set_epoch(1)
    assert any(not np.array_equal(ds[i]["image"], items[i]["image"]) for i in range(8))


def test_small_slice_is_padded_with_air(tmp_path):
    root = _msd(tmp_path / "Task", ["a"])
    ds = SliceDataset(
        find_cases(root),
        sampling=SamplingConfig(
            positive_fraction=0.0, crop_size=(96, 96), augment=NO_AUG, samples_per_epoch=4
        ),
    )
    image = ds[0]["image"][0].numpy()
    assert image.shape == (96, 96)
    # A 40 x 48 slice cannot fill 96 x 96: the rest is air, as around a patient.
    assert (np.isclose(image, normalized_air(ds.preprocess))).sum() >= 96 * 96 - 40 * 48


def test_augmentation_keeps_image_and_mask_aligned():
    rng = np.random.default_rng(0)
    mask = np.zeros((80, 90), np.uint8)
    mask[30:45, 25:60] = 1
    mask[45:55, 25:35] = 1  # an L shape, so flips and rotations are visible
    hu = (300.0 * mask).astype(np.float32)
    aug = AugmentConfig(
        flip_lr=0.5,
        flip_ud=0.5,
        rotate_deg=30,
        scale_range=(0.8, 1.2),
        hu_scale=0.0,
        hu_shift=0.0,
        noise_std_hu=0.0,
    )
    changed = 0
    for _ in range(12):
        img, msk = augment_crop(hu, mask, (40.0, 42.0), (64, 64), aug, rng)
        # Both are resampled through one transform: the bright region is exactly the mask.
        np.testing.assert_array_equal(img >= 150, msk > 0)
        changed += not np.array_equal(msk, mask[8:72, 10:74])
    assert changed > 0


def test_flip_mirrors_image_and_mask_together():
    rng = np.random.default_rng(1)
    mask = np.zeros((20, 20), np.uint8)
    mask[5:10, 2:6] = 1  # on the left
    hu = np.where(mask > 0, 200.0, -50.0).astype(np.float32)
    flip = AugmentConfig(
        flip_lr=1.0,
        rotate_deg=0.0,
        scale_range=(1.0, 1.0),
        hu_scale=0.0,
        hu_shift=0.0,
        noise_std_hu=0.0,
    )
    img, msk = augment_crop(hu, mask, (9.5, 9.5), (20, 20), flip, rng)
    np.testing.assert_array_equal(msk, mask[:, ::-1])
    np.testing.assert_allclose(img, hu[:, ::-1], atol=1e-4)


def test_intensity_jitter_stays_in_bounds():
    rng = np.random.default_rng(2)
    hu = np.full((30, 30), 40.0, np.float32)
    aug = AugmentConfig(
        flip_lr=0.0,
        rotate_deg=0.0,
        scale_range=(1.0, 1.0),
        hu_scale=0.1,
        hu_shift=20.0,
        noise_std_hu=0.0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vals = [
            augment_crop(hu, np.zeros((30, 30)), (14.5, 14.5), (30, 30), aug, rng)[0]
            for _ in range(20)
        ]
    means = np.array([v.mean() for v in vals])
    assert np.all(np.abs(means - 40.0) <= 40.0 * 0.1 + 20.0 + 1e-3)
    assert means.std() > 1.0  # it does jitter


@pytest.mark.parametrize("jitter", [0.25, 0.5])
def test_positive_jitter_sets_how_far_off_centre_the_lesion_may_sit(tmp_path, jitter):
    hu = np.zeros((3, 80, 80), np.int16)
    labels = np.zeros((3, 80, 80), np.uint8)
    labels[1, 39:42, 39:42] = 1  # a tiny lesion: its place in the crop is the jitter itself
    _save(tmp_path / "images" / "a.nii.gz", hu)
    _save(tmp_path / "labels" / "a.nii.gz", labels, dtype=np.uint8)
    sampling = SamplingConfig(
        positive_fraction=1.0,
        crop_size=(20, 20),
        positive_jitter=jitter,
        samples_per_epoch=200,
        augment=NO_AUG,
        label_values=(1,),
    )
    ds = SliceDataset(find_cases(tmp_path), sampling=sampling)
    offsets = []
    for i in range(len(ds)):
        ys, xs = np.nonzero(ds[i]["mask"][0].numpy())
        if len(ys):
            offsets.append(max(abs(ys.mean() - 9.5), abs(xs.mean() - 9.5)))
    assert len(offsets) >= 190  # only a lesion right at the crop's edge may fall outside
    assert max(offsets) <= 20 * jitter + 1.5
    if jitter == 0.5:
        assert max(offsets) > 20 * 0.25 + 1  # some crops show it near the edge


def test_positive_jitter_outside_its_range_is_refused():
    with pytest.raises(ValueError, match="positive_jitter"):
        SamplingConfig(positive_jitter=0.75)


def test_z_edge_slices_are_a_lesions_ends_and_the_slices_beyond():
    from napari_nstseg.training.data import z_edge_slices

    inside, beyond = z_edge_slices(np.arange(5, 11), 20, 2)
    assert inside == [5, 6, 9, 10]
    assert beyond == [(3, 5), (4, 5), (11, 10), (12, 10)]
    # At the volume's edge nothing beyond it; a one-slice gap between two runs is beyond both.
    inside, beyond = z_edge_slices(np.array([0, 1, 3, 4, 5]), 6, 2)
    assert inside == [0, 1, 3, 4, 5]
    assert beyond == [(2, 1)]
    # Only annotated slices are drawn; no lesion: no edges.
    assert z_edge_slices(np.arange(5, 11), 20, 2, allowed=np.array([4, 6, 12]))[1] == [
        (4, 5),
        (12, 10),
    ]
    assert z_edge_slices(np.array([], int), 10, 2) == ([], [])


def _column_case(tmp_path):
    """A lesion on slices 4-9 of 14 in a column of bright tissue running through every slice,
    in a slice that is otherwise air: a crop shows the column only if it is cut around it."""
    hu = np.full((14, 80, 80), -1000, np.int16)
    labels = np.zeros((14, 80, 80), np.uint8)
    hu[:, 55:62, 10:17] = 60
    labels[4:10, 57:60, 12:15] = 1
    _save(tmp_path / "images" / "a.nii.gz", hu)
    _save(tmp_path / "labels" / "a.nii.gz", labels, dtype=np.uint8)
    return find_cases(tmp_path)


def test_z_edge_sampling_draws_a_lesions_ends_and_the_slices_beyond_around_it(tmp_path):
    sampling = SamplingConfig(
        positive_fraction=0.5,
        crop_size=(20, 20),
        z_edge_fraction=1.0,
        z_edge_slices=2,
        samples_per_epoch=120,
        augment=NO_AUG,
        label_values=(1,),
    )
    ds = SliceDataset(_column_case(tmp_path), sampling=sampling)
    tissue = window_normalize(np.float32(60), ds.preprocess)
    for i in range(len(ds)):
        item = ds[i]
        if ds.is_positive_item(i):
            assert item["z"] in (4, 5, 8, 9) and item["mask"].sum() > 0
        else:
            assert item["z"] in (2, 3, 10, 11) and item["mask"].sum() == 0
            # Cut where the lesion lies on its nearest slice, not anywhere in the slice.
            assert np.isclose(item["image"][0].numpy(), tissue).sum() >= 9


def test_z_edge_sampling_off_draws_every_slice_and_keeps_the_draws_of_before(tmp_path):
    cases = _column_case(tmp_path)
    base = dict(positive_fraction=0.5, crop_size=(20, 20), samples_per_epoch=200,
                augment=NO_AUG, label_values=(1,))  # fmt: skip
    before = SliceDataset(cases, sampling=SamplingConfig(**base))
    off = SliceDataset(cases, sampling=SamplingConfig(**base, z_edge_fraction=0.0))
    zs = [off[i]["z"] for i in range(len(off))]
    assert zs == [before[i]["z"] for i in range(len(before))]
    assert set(zs) >= {0, 13, 6, 7}  # far slices and the lesion's middle are drawn too
    half = SliceDataset(cases, sampling=SamplingConfig(**base, z_edge_fraction=0.5))
    ends = sum(half[i]["z"] in (2, 3, 4, 5, 8, 9, 10, 11) for i in range(len(half)))
    assert 0.55 * len(half) < ends < 0.95 * len(half)  # half drawn there, the rest by slice


@pytest.mark.parametrize(
    "kwargs, match",
    [({"z_edge_fraction": 1.5}, "z_edge_fraction"), ({"z_edge_slices": 0}, "z_edge_slices")],
)
def test_z_edge_settings_outside_their_range_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingConfig(**kwargs)


def test_train_takes_the_z_edge_settings_from_the_command_line(tmp_path):
    from napari_nstseg.cli import build_parser
    from napari_nstseg.training.cli_train import build_train_config

    args = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run")]
    parser = build_parser()
    cfg = build_train_config(parser.parse_args(args))
    assert (cfg.sampling.z_edge_fraction, cfg.sampling.z_edge_slices) == (0.0, 2)
    flags = ["--z-edge-fraction", "0.3", "--z-edge-slices", "3"]
    cfg = build_train_config(parser.parse_args(args + flags))
    assert (cfg.sampling.z_edge_fraction, cfg.sampling.z_edge_slices) == (0.3, 3)
    assert cfg.to_dict()["sampling"]["z_edge_fraction"] == 0.3  # recorded in train_config.json
