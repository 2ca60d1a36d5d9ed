"""Synthetic lesion insertion and the MSD lesion dataset writer, on small synthetic phantoms."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from lesion_helpers import AIR, BONE, NOISE_HU, SOFT, SPACING, phantom
from lesion_helpers import save_int16 as _save
from napari_nstseg.io.readers import read_ct
from napari_nstseg.training.lesions import (
    LesionConfig,
    SplitConfig,
    case_image_path,
    dense_mask,
    insert_lesions,
    make_lesion_dataset,
)

FULL = np.ones((3, 3, 3), dtype=bool)


def small_config(**kw) -> LesionConfig:
    base = dict(diameter_mm=(6.0, 12.0), lesions_per_scan=(3, 3), shell_mm=3.0, seed=1)
    base.update(kw)
    return LesionConfig(**base)


def test_lesions_sit_in_soft_tissue_with_sizes_in_mm():
    hu, classes = phantom()
    cfg = small_config()
    new, mask, records = insert_lesions(hu, SPACING, config=cfg)
    assert len(records) == 3
    labels, n = ndimage.label(mask > 0, FULL)
    assert n == 3  # separate, non-touching lesions
    voxel_ml = float(np.prod(SPACING)) / 1000
    for rec in records:
        lesion = mask == rec.lesion_id
        assert np.all(classes[lesion] != AIR) and np.all(classes[lesion] != BONE)
        assert np.mean(classes[lesion] == SOFT) >= cfg.min_soft_fraction
        # size from the mask and the anisotropic spacing, independently of the module
        volume_mm3 = lesion.sum() * float(np.prod(SPACING))
        d_eq = (6 * volume_mm3 / np.pi) ** (1 / 3)
        assert 6.0 <= rec.diameter_requested_mm <= 12.0
        assert d_eq == pytest.approx(rec.diameter_requested_mm, rel=0.15)
        assert rec.diameter_equivalent_mm == pytest.approx(d_eq, abs=1e-2)
        assert rec.volume_ml == pytest.approx(lesion.sum() * voxel_ml, rel=1e-6)
        assert rec.diameter_axial_max_mm >= 0.8 * d_eq
        assert np.allclose(np.argwhere(lesion).mean(axis=0), rec.centre_voxel_zyx, atol=1e-3)
    assert np.array_equal(np.unique(mask), [0, 1, 2, 3])


def test_surroundings_recorded_and_lesions_kept_off_fat_on_request():
    hu, classes = phantom()
    # mm from every voxel to the nearest one that is not soft tissue (fat pad, bone, air)
    clearance_mm = ndimage.distance_transform_edt(classes == SOFT, sampling=SPACING)
    # the ring reaches 3 shell_mm + a slice + the edge blur beyond the lesion, and bone's
    # 3 mm margin is no place for lesions either: beyond 10 mm a lesion sees soft tissue only
    beside = 0
    for seed in range(4):
        cfg = small_config(lesions_per_scan=(5, 5), max_attempts=2000, seed=seed)
        _, mask, records = insert_lesions(hu, SPACING, config=cfg)
        for rec in records:
            clear = clearance_mm[mask == rec.lesion_id].min()
            assert 0.0 <= rec.surround_soft_fraction <= 1.0
            if clear > 10.0:
                assert rec.surround_soft_fraction == 1.0
                assert rec.surround_sd_hu == pytest.approx(NOISE_HU, rel=0.3)
            if rec.surround_soft_fraction < 0.9:
                beside += 1
                assert clear < 10.0 and rec.surround_sd_hu > 2 * NOISE_HU
    assert beside > 0  # by default lesions may abut fat, as tumours do
    for seed in range(4):
        cfg = small_config(lesions_per_scan=(5, 5), max_attempts=2000, seed=seed,
                           min_surround_soft=0.95)  # fmt: skip
        _, mask, records = insert_lesions(hu, SPACING, config=cfg)
        assert records and all(r.surround_soft_fraction >= 0.95 for r in records)
        assert all(clearance_mm[mask == r.lesion_id].min() > 1.0 for r in records)
    with pytest.raises(ValueError, match="min_surround_soft"):
        LesionConfig(min_surround_soft=1.5)


def vertebra_phantom(noise=NOISE_HU):
    """Soft tissue with a cortical ring around marrow at soft-tissue HU, a contrast-filled vessel,
    and a ring of "ribs" enclosing the whole belly (a hole far too large to count as bone)."""
    hu, classes = phantom(shape=(24, 128, 128), noise=noise)
    ny, nx = hu.shape[1:]
    yy, xx = np.mgrid[:ny, :nx].astype(float)
    r_vert = np.hypot((yy - 84) * 0.8, (xx - 64) * 0.8)
    cortex = (r_vert >= 16) & (r_vert <= 18)
    marrow = r_vert < 16  # 150 HU: passes every soft-tissue test, but is bone
    vessel = np.hypot((yy - 40) * 0.8, (xx - 40) * 0.8) <= 5  # opacified, 350 HU
    ribs = np.abs(np.hypot((yy - ny / 2) / 0.4, (xx - nx / 2) / 0.42) / ny - 1) < 0.02
    hu[:, cortex | ribs] = 700.0
    hu[:, marrow] = 150.0 + np.random.default_rng(1).normal(0, NOISE_HU, hu[:, marrow].shape)
    hu[:, vessel] = 350.0
    return hu, marrow, vessel


def test_no_lesion_in_marrow_or_opacified_vessels():
    hu, marrow, vessel = vertebra_phantom()
    dense = dense_mask(hu, SPACING, threshold_hu=250.0, max_hole_mm2=2500.0, margin_mm=3.0)
    assert dense[:, marrow].all() and dense[:, vessel].all()
    # The belly the ribs enclose is soft tissue, not "bone" (a 3 mm margin aside).
    assert not dense[:, 30, 90].any() and not dense[:, 50, 80].any()
    cfg = small_config(diameter_mm=(6.0, 9.0), lesions_per_scan=(6, 6), max_attempts=2000)
    _, mask, records = insert_lesions(hu, SPACING, config=cfg)
    assert records
    assert not (mask > 0)[:, marrow].any() and not (mask > 0)[:, vessel].any()
    # Without the exclusion marrow at 150 HU is fair game, which is what the guard is for.
    loose = small_config(
        diameter_mm=(6.0, 9.0), lesions_per_scan=(6, 6), max_attempts=2000, dense_hu=None, seed=4
    )
    hits = 0
    for seed in range(6):
        _, m, _ = insert_lesions(hu, SPACING, config=replace(loose, seed=seed))
        hits += int((m > 0)[:, marrow].any())
    assert hits > 0


def test_measured_contrast_near_requested_and_noise_kept():
    hu, classes = phantom()
    cfg = small_config(
        diameter_mm=(9.0, 12.0), contrast_hu=(-30.0, -30.0), hypodense_fraction=1, max_attempts=2000
    )
    new, mask, records = insert_lesions(hu, SPACING, config=cfg)
    assert len(records) == 3
    for rec in records:
        lesion = mask == rec.lesion_id
        # the surrounding soft tissue, beyond the blurred edge, measured here from scratch
        dist = ndimage.distance_transform_edt(~lesion, sampling=SPACING)
        ring = (dist > 3.0) & (dist <= 6.0) & (classes == SOFT) & (mask == 0)
        measured = new[lesion].mean() - new[ring].mean()
        assert measured == pytest.approx(-30.0, abs=3.0)
        assert rec.contrast_measured_hu == pytest.approx(-30.0, abs=3.0)
        assert rec.contrast_requested_hu == -30.0
        # noise kept: inside the lesion core the voxel std is the scan's own
        profile = (new - hu) / rec.offset_peak_hu
        core = lesion & (profile > 0.98) & (classes == SOFT)
        assert core.sum() >= 20
        outside = (classes == SOFT) & (mask == 0) & (dist > 6.0)
        assert np.std(new[core]) == pytest.approx(np.std(new[outside]), rel=0.25)
        # the offset is smooth: it adds no noise of its own
        assert np.std((new - hu)[core]) < 0.2 * NOISE_HU
    # nothing changes far from the lesions
    far = ndimage.distance_transform_edt(mask == 0, sampling=SPACING) > 6.0
    assert np.abs(new - hu)[far].max() < 0.01


def test_edge_is_soft_partial_volume():
    hu, _ = phantom(noise=0.0)
    cfg = small_config(
        diameter_mm=(10.0, 12.0),
        lesions_per_scan=(1, 1),
        contrast_hu=(-40.0, -40.0),
        hypodense_fraction=1.0,
    )
    new, mask, records = insert_lesions(hu, SPACING, config=cfg)
    fraction = (new - hu) / records[0].offset_peak_hu  # the lesion profile, 0..1
    lesion = mask == 1
    # the voxels either side of the in-plane border hold partial values, as in a real scan
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    border = (ndimage.binary_dilation(lesion, in_plane) & ~lesion) | (
        lesion & ~ndimage.binary_erosion(lesion, in_plane)
    )
    intermediate = (fraction[border] > 0.05) & (fraction[border] < 0.95)
    assert intermediate.mean() > 0.8
    assert fraction[lesion].min() >= 0.5 - 1e-4  # the mask is the profile's >= 0.5 support
    assert fraction[~lesion].max() < 0.5 + 1e-4
    assert np.isclose(fraction.max(), 1.0, atol=0.02)


def test_seeded_and_reproducible():
    hu, _ = phantom()
    a = insert_lesions(hu, SPACING, config=small_config(seed=5))
    b = insert_lesions(hu, SPACING, config=small_config(seed=5))
    c = insert_lesions(hu, SPACING, config=small_config(seed=6))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert not np.array_equal(a[1], c[1])


def test_organ_targets_and_clear_error_without_tissue():
    hu, classes = phantom()
    organs = np.zeros(hu.shape, dtype=np.uint8)
    organs[:, 18:42, 10:30] = 7  # a "pancreas" block inside the soft tissue
    organs[classes != SOFT] = 0
    cfg = small_config(diameter_mm=(5.0, 8.0), organ_fraction=1.0, lesions_per_scan=(2, 2))
    _, mask, records = insert_lesions(hu, SPACING, organs, cfg)
    assert [r.organ for r in records] == ["pancreas", "pancreas"]
    for rec in records:
        assert np.mean(organs[mask == rec.lesion_id] == 7) >= cfg.min_in_organ
    air = np.full((10, 20, 20), -1000.0, dtype=np.float32)
    with pytest.raises(ValueError, match="Could not place any lesion in air.nii"):
        insert_lesions(air, SPACING, config=small_config(max_attempts=20), scan="air.nii")
    with pytest.raises(ValueError, match="organ labels of shape"):
        insert_lesions(hu, SPACING, organs[:-1], cfg)


def test_dataset_writer_msd_layout_split_by_region(tmp_path):
    # scan A: long enough for one z-block per split; stored RAS (display flips) at 2 x 1.5 x 1.5
    hu_a, _ = phantom(shape=(60, 40, 40), spacing=(2.0, 1.5, 1.5), seed=1)
    affine_a = np.diag([1.5, 1.5, 2.0, 1.0])
    affine_a[:3, 3] = [-30.0, 20.0, 100.0]
    _save(tmp_path / "a.nii.gz", np.transpose(hu_a, (2, 1, 0)), affine_a)
    # scan B: too short for three blocks, goes whole to one split
    hu_b, _ = phantom(shape=(18, 40, 40), spacing=(2.0, 1.5, 1.5), seed=2)
    _save(tmp_path / "b.nii.gz", np.transpose(hu_b, (2, 1, 0)), affine_a)
    cfg = small_config(diameter_mm=(4.0, 7.0), lesions_per_scan=(1, 2), shell_mm=2.0)
    split = SplitConfig(fractions=(0.4, 0.3, 0.3), guard_mm=6.0, min_block_mm=30.0)
    out = make_lesion_dataset(
        [tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"], tmp_path / "ds", 2, cfg, 3, None, split
    )
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["modality"] == {"0": "CT"}
    assert meta["labels"] == {"0": "background", "1": "lesion"}
    assert meta["numTraining"] == len(meta["training"]) == 8  # 4 regions x 2 copies
    assert meta["lesions"] == "lesions.csv"
    cases = [c for s in ("train", "val", "test") for c in meta["split"][s]]
    assert sorted(cases) == sorted(meta["cases"]) and len(set(cases)) == len(cases)
    # every copy of a region in one split; blocks of scan A disjoint with a guard gap
    region_split = {}
    for info in meta["cases"].values():
        key = (info["source"], tuple(info["z_range_display"]))
        assert region_split.setdefault(key, info["split"]) == info["split"]
    a_blocks = sorted(k[1] for k in region_split if k[0].endswith("a.nii.gz"))
    assert len(a_blocks) == 3
    assert len({region_split[k] for k in region_split if k[0].endswith("a.nii.gz")}) == 3
    for (_, end), (start, _) in zip(a_blocks, a_blocks[1:], strict=False):
        assert start - end >= 3  # 6 mm guard at 2 mm slices
    assert [k[1] for k in region_split if k[0].endswith("b.nii.gz")] == [(0, 18)]

    with open(out / "lesions.csv") as f:
        rows = list(csv.DictReader(f))
    rows_json = json.loads((out / "lesions.json").read_text())
    assert [(r["case"], int(r["lesion_id"])) for r in rows] == [
        (r["case"], r["lesion_id"]) for r in rows_json
    ]
    source = read_ct(tmp_path / "a.nii.gz")
    for entry in meta["training"]:
        case = entry["label"].split("/")[-1].removesuffix(".nii.gz")
        image = nib.load(out / entry["image"])
        label = nib.load(out / entry["label"])
        assert image.get_data_dtype() == np.int16
        assert np.allclose(image.affine, label.affine)
        lab = np.asarray(label.dataobj)
        assert set(np.unique(lab)) <= {0, 1}
        comps, n = ndimage.label(lab > 0, FULL)
        case_rows = [r for r in rows if r["case"] == case]
        assert n == len(case_rows) == meta["cases"][case]["n_lesions"] >= 1
        voxel_ml = float(np.prod(image.header.get_zooms())) / 1000
        sizes = sorted(np.bincount(comps.ravel())[1:] * voxel_ml)
        assert np.allclose(sizes, sorted(float(r["volume_ml"]) for r in case_rows), rtol=1e-4)
        if meta["cases"][case]["source"].endswith("a.nii.gz"):
            # written on the source grid: outside the lesions the slab equals the source scan
            z0, z1 = meta["cases"][case]["z_range_display"]
            written = read_ct(out / entry["image"])
            to_lps = written.geometry.display_to_lps
            assert np.allclose(to_lps[:3, :3], source.geometry.display_to_lps[:3, :3])
            origin = source.geometry.display_to_lps @ np.array([z0, 0, 0, 1.0])
            assert np.allclose(to_lps[:, 3], origin)
            lesion_zone = ndimage.binary_dilation(
                written.geometry.to_display(lab) > 0, FULL, iterations=4
            )
            diff = np.abs(written.hu - source.hu[z0:z1])
            assert diff[~lesion_zone].max() <= 0.5
            assert diff[lesion_zone].max() > 5
    # a loader also finds plain <case>.nii.gz images
    first = meta["split"]["train"][0]
    (out / "imagesTr" / f"{first}_0000.nii.gz").rename(out / "imagesTr" / f"{first}.nii.gz")
    assert case_image_path(out, first).name == f"{first}.nii.gz"


def test_dataset_writer_refuses_repeated_slices(tmp_path):
    hu, _ = phantom(shape=(20, 30, 30))
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    _save(tmp_path / "full.nii.gz", np.transpose(hu, (2, 1, 0)), affine)
    _save(tmp_path / "part.nii.gz", np.transpose(hu[5:12], (2, 1, 0)), affine)
    with pytest.raises(ValueError, match="part.nii.gz repeats slices 5-11 of"):
        make_lesion_dataset(
            [tmp_path / "full.nii.gz", tmp_path / "part.nii.gz"], tmp_path / "ds", 1, small_config()
        )


def test_make_lesions_command(tmp_path, capsys):
    import argparse

    from napari_nstseg.training.lesions.cli_make_lesions import add_parser

    hu, classes = phantom(shape=(24, 40, 40), spacing=(2.0, 1.5, 1.5))
    affine = np.diag([-1.5, -1.5, 2.0, 1.0])  # LPS-stored, as ITK writes
    _save(tmp_path / "scan.nii.gz", np.transpose(hu, (2, 1, 0)), affine)
    organs = np.where(classes == SOFT, 5, 0).astype(np.uint8)  # all soft tissue is "liver"
    nib.save(nib.Nifti1Image(np.transpose(organs, (2, 1, 0)), affine), tmp_path / "seg.nii.gz")
    parser = argparse.ArgumentParser(prog="nstseg")
    add_parser(parser.add_subparsers(dest="command", required=True))
    scan = tmp_path / "scan.nii.gz"
    argv = ["make-lesions", str(scan), "-o", str(tmp_path / "ds"), "--copies", "1"]
    argv += ["--diameter-mm", "4", "6", "--split-by", "scan", "--organ-fraction", "1"]
    args = parser.parse_args([*argv, "--organ-labels", f"{scan}={tmp_path / 'seg.nii.gz'}"])
    assert args.func(args) == 0
    assert "dataset.json" in capsys.readouterr().out
    with open(tmp_path / "ds" / "lesions.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["organ"] for r in rows} == {"liver"}
    # a validation set of lesions as visible as the evaluation's targets
    vis = ["-o", str(tmp_path / "vis"), "--contrast-hu", "-24", "24", "--min-contrast-hu", "20"]
    seen = parser.parse_args([*argv, *vis])
    assert seen.func(seen) == 0
    with open(tmp_path / "vis" / "lesions.csv") as f:
        asked = [abs(float(r["contrast_requested_hu"])) for r in csv.DictReader(f)]
    assert asked and min(asked) >= 20
    bad = parser.parse_args([*argv, "--contrast-hu", "5", "40"])
    with pytest.raises(SystemExit, match="make-lesions: contrast_hu"):
        bad.func(bad)
    bad = parser.parse_args([*argv, "--min-contrast-hu", "-5"])
    with pytest.raises(SystemExit, match="make-lesions: min_abs_contrast_hu is a contrast in HU"):
        bad.func(bad)
    # one scan split by scan goes whole to the training split: asking for test only says so
    none = parser.parse_args([*argv, "-o", str(tmp_path / "none"), "--splits", "test"])
    with pytest.raises(SystemExit, match=r"falls in the test split \(the regions: train\)"):
        none.func(none)


def _three_block_scan(tmp_path):
    """A 120 mm phantom long enough for a train, a val and a test block; small lesions."""
    hu, _ = phantom(shape=(60, 40, 40), spacing=(2.0, 1.5, 1.5), seed=4)
    _save(tmp_path / "a.nii.gz", np.transpose(hu, (2, 1, 0)), np.diag([1.5, 1.5, 2.0, 1.0]))
    cfg = small_config(diameter_mm=(4.0, 7.0), lesions_per_scan=(1, 3), shell_mm=2.0)
    split = SplitConfig(fractions=(0.4, 0.3, 0.3), guard_mm=6.0, min_block_mm=20.0)
    return [tmp_path / "a.nii.gz"], cfg, split


@pytest.mark.filterwarnings("ignore:skipped case")
def test_dataset_same_in_worker_processes_and_by_split(tmp_path):
    # a researcher with many cores makes the set with --workers, and an evaluation set needs
    # only val and test: the cases, their order in dataset.json and lesions.csv, and every
    # voxel must not depend on either
    scans, cfg, split = _three_block_scan(tmp_path)
    full = make_lesion_dataset(scans, tmp_path / "full", 3, cfg, 5, None, split)
    part = make_lesion_dataset(
        scans, tmp_path / "part", 3, cfg, 5, None, split, workers=2, splits=("val", "test")
    )
    meta_full, meta_part = (json.loads((f / "dataset.json").read_text()) for f in (full, part))
    assert meta_full["splits_made"] == ["train", "val", "test"]
    assert meta_part["splits_made"] == ["val", "test"] and meta_part["split"]["train"] == []
    for key in ("val", "test"):
        assert meta_part["split"][key] == meta_full["split"][key] != []
    kept = set(meta_part["split"]["val"] + meta_part["split"]["test"])
    assert meta_part["cases"] == {c: v for c, v in meta_full["cases"].items() if c in kept}
    assert meta_part["skipped"] == [s for s in meta_full["skipped"] if s["case"] in kept]
    assert meta_part["training"] == [
        e for e in meta_full["training"] if e["label"].split("/")[-1][:-7] in kept
    ]

    def lesion_rows(folder):
        with open(folder / "lesions.csv") as f:
            return list(csv.DictReader(f))

    assert lesion_rows(part) == [r for r in lesion_rows(full) if r["case"] in kept]
    for entry in meta_part["training"]:
        for key in ("image", "label"):
            a, b = (nib.load(f / entry[key]) for f in (full, part))
            assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
            assert a.header == b.header
    with pytest.raises(ValueError, match="workers must be at least 1"):
        make_lesion_dataset(scans, tmp_path / "w0", 1, cfg, workers=0)
    with pytest.raises(ValueError, match="splits must be some of train, val, test"):
        make_lesion_dataset(scans, tmp_path / "w0", 1, cfg, splits=("validation",))


@pytest.mark.filterwarnings("ignore:skipped case")
def test_later_copies_are_new_lesions_in_the_same_blocks(tmp_path):
    # scoring a model on new lesions in the anatomy it trained on: copies 2-3 made on their own
    # are copies 2-3 of a 4-copy set, voxel for voxel, and none of them is a copy 0-1 case
    scans, cfg, split = _three_block_scan(tmp_path)
    full = make_lesion_dataset(scans, tmp_path / "full", 4, cfg, 5, None, split, splits=("train",))
    later = make_lesion_dataset(
        scans, tmp_path / "later", 2, cfg, 5, None, split, splits=("train",), first_copy=2
    )
    meta_full, meta_later = (json.loads((f / "dataset.json").read_text()) for f in (full, later))
    assert meta_later["first_copy"] == 2
    assert [meta_later["cases"][c]["copy"] for c in meta_later["split"]["train"]] == [2, 3]
    assert meta_later["split"]["train"] == meta_full["split"]["train"][2:]
    for case in meta_later["split"]["train"]:
        for sub, name in (("imagesTr", f"{case}_0000.nii.gz"), ("labelsTr", f"{case}.nii.gz")):
            a, b = (np.asarray(nib.load(f / sub / name).dataobj) for f in (full, later))
            assert np.array_equal(a, b)
    first = np.asarray(
        nib.load(full / "labelsTr" / f"{meta_full['split']['train'][0]}.nii.gz").dataobj
    )
    third = np.asarray(
        nib.load(later / "labelsTr" / f"{meta_later['split']['train'][0]}.nii.gz").dataobj
    )
    assert not np.array_equal(first, third)
    with pytest.raises(ValueError, match="first_copy must be at least 0"):
        make_lesion_dataset(scans, tmp_path / "neg", 1, cfg, first_copy=-1)
