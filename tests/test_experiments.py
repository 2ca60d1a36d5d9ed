"""The one-off analyses under experiments/: what they count and what they print."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from script_helpers import load_script


def _msd_folder(folder: Path, lesions: dict[str, tuple]) -> None:
    """One region (a.nii.gz z000-004) of 4 x 16 x 16 soft tissue (40 HU); a box lesion per case."""
    import nibabel as nib
    import numpy as np

    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
    for case, box in lesions.items():
        mask = np.zeros((16, 16, 4), np.uint8)  # NIfTI (x, y, z)
        mask[box] = 1
        affine = np.diag([1.0, 1.0, 2.0, 1.0])
        nib.save(nib.Nifti1Image(np.full(mask.shape, 40, np.int16), affine),
                 folder / "imagesTr" / f"{case}_0000.nii.gz")  # fmt: skip
        nib.save(nib.Nifti1Image(mask, affine), folder / "labelsTr" / f"{case}.nii.gz")
    split = {"train": list(lesions), "val": [], "test": []}
    cases = {c: {"source": "/data/a.nii.gz", "z_range_display": [0, 4]} for c in lesions}
    (folder / "dataset.json").write_text(json.dumps({"split": split, "cases": cases}))


def test_false_positives_at_training_sites_are_counted_there(tmp_path):
    """A model that flags a training lesion's site in every new copy, and another spot once,
    has 4/5 of its false-positive voxels and all the recurring ones at training sites; a hit
    on the new lesion is not a false positive."""
    import numpy as np

    from napari_nstseg.io import read_mask

    site, elsewhere = np.s_[2:6, 2:6, 1:3], np.s_[2:4, 10:12, 1:3]
    new = np.s_[10:14, 2:6, 1:3]
    other = np.s_[10:14, 10:14, 1:3]
    _msd_folder(tmp_path / "train", {"a_z000-004_c00": site, "a_z000-004_c01": other})
    _msd_folder(tmp_path / "eval", {f"a_z000-004_c{c:02d}": new for c in range(2, 6)})
    _msd_folder(tmp_path / "flags", {"site": site, "once": elsewhere})
    calls = []

    def predict(ct):
        calls.append(ct)
        flags = [read_mask(tmp_path / "flags/labelsTr/site.nii.gz", like=ct.geometry) > 0]
        if len(calls) == 1:
            flags.append(read_mask(tmp_path / "flags/labelsTr/once.nii.gz", like=ct.geometry) > 0)
        truth = read_mask(tmp_path / "eval/labelsTr/a_z000-004_c02.nii.gz", like=ct.geometry) > 0
        return np.logical_or.reduce([truth, *flags])

    fp_sites = load_script("fp_at_training_sites", "experiments")
    rows = fp_sites.site_shares(tmp_path / "train", tmp_path / "eval", "train", predict)
    assert len(calls) == 4
    (region, n, soft, fp, recurring, exact), = rows  # fmt: skip
    assert (region, n, exact) == ("a.nii.gz z000-004", 4, False)  # no record: the HU range
    assert soft == pytest.approx(64 / 1024)  # two 4 x 4 x 2 training lesions in 16 x 16 x 4
    assert fp == pytest.approx(32 / 40) and recurring == 1.0


def test_training_sites_are_measured_against_the_tissue_lesions_may_go_in(tmp_path):
    """On a make-lesions folder the share of tissue under training lesions is taken over the
    tissue make-lesions places lesions in (fat and the bone's rim left out), not over every
    voxel of -100 to 250 HU; a folder without the record of its source scans falls back to the
    HU range and says so."""
    import numpy as np

    from lesion_helpers import phantom, save_int16
    from napari_nstseg.io import read_ct, read_mask
    from napari_nstseg.training.lesions import LesionConfig, SplitConfig, lesion_sites
    from napari_nstseg.training.lesions import make_lesion_dataset as make

    hu, _ = phantom(shape=(40, 48, 48), spacing=(2.0, 1.2, 1.2), seed=5)
    scan = tmp_path / "a.nii.gz"
    save_int16(scan, np.transpose(hu, (2, 1, 0)), np.diag([1.2, 1.2, 2.0, 1.0]))
    cfg = LesionConfig(diameter_mm=(6.0, 9.0), lesions_per_scan=(1, 2), shell_mm=2.0, seed=1)
    split = SplitConfig(fractions=(0.5, 0.25, 0.25), guard_mm=4.0, min_block_mm=16.0)
    train = make([scan], tmp_path / "train", 2, cfg, 3, None, split, splits=("train",))
    new = make([scan], tmp_path / "new", 2, cfg, 3, None, split, splits=("train",), first_copy=2)
    fp_sites = load_script("fp_at_training_sites", "experiments")
    (region, cases), = fp_sites.by_region(train, "train").items()  # fmt: skip
    masks = []
    for case in cases:
        ct = read_ct(case.image)
        masks.append(read_mask(case.label, like=ct.geometry) > 0)
    cover = np.logical_or.reduce(masks)

    def predict(_ct):  # flags every training site in every new copy
        return cover

    (row,) = fp_sites.site_shares(train, new, "train", predict)
    _, n, tissue, fp, recurring, exact = row
    assert n == 2 and exact and fp == 1.0 and recurring == 1.0
    z0, z1 = (int(z) for z in region.split(" z")[1].split("-"))
    soft = lesion_sites(read_ct(scan).hu[z0:z1], (2.0, 1.2, 1.2), None, cfg).soft
    assert tissue == pytest.approx(cover[soft].mean())
    by_hu = cover[(ct.hu > -100) & (ct.hu < 250)].mean()
    assert tissue > by_hu  # fat and the bone's rim no longer dilute the share
    meta = json.loads((train / "dataset.json").read_text())
    del meta["regions"]
    (train / "dataset.json").write_text(json.dumps(meta))
    (row,) = fp_sites.site_shares(train, new, "train", predict)
    assert row[-1] is False and row[2] == pytest.approx(by_hu)


def test_surroundings_table_recounts_target_lesions_by_their_ring():
    table = load_script("surroundings_table", "experiments")
    shares = {("c0", "1"): 0.9, ("c0", "2"): 0.5, ("c0", "3"): 0.85, ("c0", "4"): 0.95}

    def row(lesion, detected, diameter, contrast, matched="True"):
        return {"case": "c0", "lesion_id": lesion, "matched": matched, "detected": detected,
                "diameter_mm": diameter, "contrast_hu": contrast}  # fmt: skip

    rows = [
        row("1", "True", "12", "-30"),
        row("2", "False", "15", "-40"),
        row("3", "False", "12", "25"),  # bright: counted in all, not among the dark
        row("4", "True", "5", "-30"),  # too small for the target group
    ]
    counts = table.recount(rows, shares, 0.8)
    assert counts == {"soft": [1, 2], "soft dark": [1, 1], "mixed": [0, 1], "mixed dark": [0, 1]}
    assert table.recount(rows, shares, 0.95)["mixed"] == [1, 3]
    with pytest.raises(SystemExit, match="not in the lesion table"):
        table.recount([row("9", "True", "12", "-30")], shares, 0.8)


def test_lesion_figure_crops_the_lesion_it_names(tmp_path):
    import numpy as np
    from PIL import Image

    from lesion_helpers import phantom, save_int16
    from napari_nstseg.training.lesions import LesionConfig, SplitConfig
    from napari_nstseg.training.lesions import make_lesion_dataset as make

    hu, _ = phantom(shape=(24, 48, 48), spacing=(2.0, 1.2, 1.2), seed=5)
    scan = tmp_path / "a.nii.gz"
    save_int16(scan, np.transpose(hu, (2, 1, 0)), np.diag([-1.2, -1.2, 2.0, 1.0]))
    cfg = LesionConfig(diameter_mm=(8.0, 9.0), lesions_per_scan=(1, 1), shell_mm=2.0, seed=1,
                       contrast_hu=(-60.0, -50.0), hypodense_fraction=1.0)  # fmt: skip
    folder = make([scan], tmp_path / "set", 1, cfg, 3, None, SplitConfig(by="scan"))
    with open(folder / "lesions.csv") as f:
        (lesion,) = list(csv.DictReader(f))
    figure = load_script("lesion_figure", "experiments")
    pair = figure.crop_pair(folder, lesion, half=10, zoom=1)
    plain, outlined = pair[:, :20], pair[:, 26:]
    # the crop is centred on the lesion: the dark lesion (soft tissue, 40 HU, shows at 127 in
    # W400/L40) and its green outline lie in the middle
    assert plain[8:12, 8:12, 0].mean() < 115
    green = np.argwhere((outlined == figure.GREEN).all(axis=-1))
    assert len(green) and np.abs(green.mean(axis=0) - 9.5).max() < 3
    size = f"{float(lesion['diameter_axial_max_mm']):.0f} mm"
    assert figure.caption(lesion, None).startswith(size)
    assert figure.caption(lesion, False).endswith(": missed")
    out = tmp_path / "fig.png"
    import sys

    argv = sys.argv
    sys.argv = ["lesion_figure", str(folder), str(out), f"{lesion['case']}:{lesion['lesion_id']}"]
    try:
        figure.main()
    finally:
        sys.argv = argv
    assert Image.open(out).size[0] == 2 * 40 * 5 + 6


def test_fp_components_tells_hits_from_false_positives_by_what_a_rule_could_use(tmp_path):
    """A model that outlines the lesion and also flags a long dark tube has one hit and one
    false positive per case, measured in mm, ml and HU; the tube lies outside every range the
    hit spans but the probability (the same for both), and a hit-free case gives no range."""
    import numpy as np

    from napari_nstseg.training.cases import find_cases, load_case

    lesion = np.s_[2:6, 2:6, 1:3]  # NIfTI (x, y, z): 4 x 4 pixels of 1 mm, 2 slices of 2 mm
    _msd_folder(tmp_path / "d", {"a_z000-004_c00": lesion, "a_z000-004_c01": lesion})
    cases = find_cases(tmp_path / "d")
    truth = load_case(cases[0])[1] > 0  # on the display grid the engine predicts on

    def predict(hu, spacing):
        assert hu.shape == (4, 16, 16) and tuple(spacing) == (2.0, 1.0, 1.0)
        mask = truth.copy()
        tube = np.zeros(hu.shape, bool)
        tube[:, 2:4, 2:4] = True  # a tube through every slice, away from the lesion
        assert not (tube & truth).any()
        mask |= tube
        hu[tube] = -20.0  # dark against the 40 HU around it
        return mask, np.where(mask, 0.9, 0.0)

    fp = load_script("fp_components", "experiments")
    rows = fp.component_rows(cases, predict, (1,))
    assert sorted((r["case"], r["hit"]) for r in rows) == [
        ("a_z000-004_c00", False), ("a_z000-004_c00", True),
        ("a_z000-004_c01", False), ("a_z000-004_c01", True),
    ]  # fmt: skip
    (hit, *_), (tube, *_) = ([r for r in rows if r["hit"] is h] for h in (True, False))
    assert hit["depth_mm"] == 4.0 and tube["depth_mm"] == 8.0
    assert hit["diameter_mm"] == pytest.approx(np.hypot(4, 4))
    assert hit["volume_ml"] == pytest.approx(4 * 4 * 2 * 2 / 1000)
    assert hit["contrast_hu"] == pytest.approx(0.0) and tube["contrast_hu"] == pytest.approx(-60)
    assert hit["mean_probability"] == tube["mean_probability"] == pytest.approx(0.9)
    sep = fp.separation(rows)
    assert sep["depth_mm"]["fp_outside_hits"] == 1.0
    assert sep["mean_hu"]["fp_outside_hits"] == 1.0
    assert sep["mean_probability"]["fp_outside_hits"] == 0.0
    assert sep["depth_mm"]["hits"] == [4.0, 4.0, 4.0]
    assert np.isnan(fp.separation([tube])["depth_mm"]["fp_outside_hits"])


def test_sarcoma_extent_splits_the_excess_by_where_it_lies():
    """A tumour on slices 1-2; a prediction that covers it, spills onto slice 3 (beyond the
    contour's last slice) and beside it on slice 1: 4 of 6 wrong voxels lie beyond."""
    import numpy as np

    extent = load_script("sarcoma_extent", folder="experiments")
    gt = np.zeros((5, 4, 4), bool)
    gt[1:3, 1:3, 1:3] = True  # 8 voxels
    pred = gt.copy()
    pred[3, 0:2, 0:2] = True  # 4 beyond the last slice
    pred[1, 0, 0:2] = True  # 2 beside the tumour on its own slice
    row = extent.extent_row("a", pred, gt)
    assert row["fp_share_outside_z_range"] == pytest.approx(4 / 6)
    assert row["fp_share_on_contour_slices"] == pytest.approx(2 / 6)
    assert row["precision"] == pytest.approx(8 / 14) and row["recall"] == 1.0
    assert row["dice"] == pytest.approx(16 / 22)
    assert (row["contour_slices"], row["predicted_slices"]) == (2, 3)


def test_sarcoma_extent_compares_the_tumour_with_the_soft_tissue_around_it():
    """A 30 HU tumour inside 45 HU muscle, with fat (-100 HU) farther out and a prediction that
    spills 2 voxels (2 mm) into the muscle: the shell 3-10 mm out holds muscle and fat, only
    the muscle counts, and the spill is read at the muscle's HU."""
    import numpy as np

    extent = load_script("sarcoma_extent", folder="experiments")
    z, y, x = np.ogrid[:6, :40, :40]
    r = np.hypot(y - 20, x - 20) * np.ones((6, 1, 1))
    hu = np.where(r <= 12, 45.0, -100.0)  # muscle out to 12 mm, fat beyond
    gt = (r <= 6) & (z >= 1) & (z <= 4)
    hu[gt] = 30.0
    pred = (r <= 8) & (z >= 1) & (z <= 4)
    row = extent.extent_row("a", pred, gt, hu, (1.0, 1.0, 1.0))
    assert row["tumour_hu"] == 30.0 and row["wrong_hu"] == 45.0
    assert row["surround_hu"] == 45.0  # the fat in the shell (12-16 mm out) is left out
    assert row["precision"] < 1.0 and row["recall"] == 1.0
    assert "tumour_hu" not in extent.extent_row("a", pred, gt)


def test_organ_anatomy_by_split_counts_each_split_s_organs_without_the_excluded_region(
    tmp_path, capsys
):
    """A case folder's scan (2 mm voxels, 4 slices) whose planning map holds 16 voxels a slice
    of its own label 9 (renamed liver) and 16 of label 3 (not an organ), half the liver
    excluded; slices 0-1 train, 2-3 test; a scan without organ labels is left out."""
    import nibabel as nib
    import numpy as np

    anatomy = load_script("organ_anatomy_by_split", folder="experiments")
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    (tmp_path / "P1").mkdir()
    scan, other = tmp_path / "P1/ct.nii.gz", tmp_path / "b.nii.gz"
    for path in (scan, other):
        nib.save(nib.Nifti1Image(np.full((8, 8, 4), 40, np.int16), affine), path)
    own = np.zeros((8, 8, 4), np.uint8)
    own[0:4, 0:4] = 9
    own[4:8, 4:8] = 3
    nib.save(nib.Nifti1Image(own, affine), tmp_path / "structures.nii.gz")
    excluded = np.zeros((8, 8, 4), np.uint8)
    excluded[0:2, 0:4] = 4  # half of the liver, every slice
    nib.save(nib.Nifti1Image(excluded, affine), tmp_path / "exclude.nii.gz")
    meta = {
        "lesion_config": {"target_organs": {"1": "spleen", "5": "liver"}},
        "regions": [
            {"source": str(scan), "split": "train", "z_range_display": [0, 2]},
            {"source": str(scan), "split": "test", "z_range_display": [2, 4]},
            {"source": str(other), "split": "val", "z_range_display": [0, 4]},
        ],
        "organ_labels": {str(scan): str(tmp_path / "structures.nii.gz")},
        "organ_label_ids": {str(scan): {"9": 5}},
        "exclusions": {str(scan): {"mask": str(tmp_path / "exclude.nii.gz"), "labels": [4]}},
    }
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    rows = anatomy.anatomy_rows(tmp_path)
    ml = 2 * 8 * 0.008  # 2 slices x 8 liver voxels left x 8 mm3
    assert sorted((r["scan"], r["split"]) for r in rows) == [("P1", "test"), ("P1", "train")]
    for r in rows:
        assert r["liver"] == pytest.approx(ml) and r["spleen"] == 0.0
    assert [t["liver"] for t in anatomy.totals(rows)] == pytest.approx([ml, 0.0, ml])
    assert anatomy.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| P1 | train | 0 |" in out and "| all | val | - | 0 |" in out


def test_lidc_organ_labels_puts_the_liver_label_on_the_right_sided_blob(tmp_path, capsys):
    """A body (fat inside a muscle wall of 40 HU) with air lungs in its upper slices, a 55 HU
    'liver' on the patient's right (low x in LPS display order) below them and a decoy of the
    same HU on the left: the script's label map (on the CT's grid) marks the liver, as 5, and
    nothing else."""
    import numpy as np
    from scipy import ndimage

    from lesion_helpers import save_int16
    from napari_nstseg.io import read_ct, read_mask

    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[:32, :56, :72]  # display order; 2 mm voxels
    hu = np.full((32, 56, 72), -1000.0)
    for grow, value in ((0, 40.0), (-3, -100.0)):  # a 6 mm muscle wall (40 HU) around fat
        inside = ((y - 28) / (25 + grow)) ** 2 + ((x - 36) / (33 + grow)) ** 2 <= 1
        hu[np.broadcast_to(inside, hu.shape)] = value
    for cx in (22, 50):
        hu[(z >= 23) & (z <= 30) & (((y - 28) / 14) ** 2 + ((x - cx) / 10) ** 2 <= 1)] = -800.0
    liver = ((z - 11) / 9) ** 2 + ((y - 28) / 13) ** 2 + ((x - 21) / 13) ** 2 <= 1
    decoy = ((z - 11) / 5) ** 2 + ((y - 28) / 6) ** 2 + ((x - 54) / 6) ** 2 <= 1
    hu[liver | decoy] = 55.0
    hu += rng.normal(0, 8, hu.shape)
    scan, out = tmp_path / "ct.nii.gz", tmp_path / "organs.nii.gz"
    # NIfTI (i, j, k) with RAS axes -x, -y: index i runs to the patient's left, as display x.
    save_int16(scan, np.transpose(hu, (2, 1, 0)), np.diag([-2.0, -2.0, 2.0, 1.0]))

    script = load_script("lidc_organ_labels", "experiments")
    assert script.main([str(scan), str(out), "--png-dir", str(tmp_path / "png")]) == 0
    ct = read_ct(scan)
    assert np.allclose(ct.hu, np.round(hu))  # display order is the array's order
    labels = np.asarray(read_mask(out, like=ct.geometry))
    assert labels.shape == ct.hu.shape and set(np.unique(labels)) == {0, 5}
    on = labels == 5
    assert not (on & decoy).any()
    core = ndimage.binary_erosion(liver)  # the blob bar its 2 mm rim, which smoothing blurs
    assert (on & core).sum() / core.sum() > 0.95
    assert (on & ~liver).sum() / on.sum() < 0.1  # and little beside it
    assert "patient's right" in capsys.readouterr().out
    assert len(list((tmp_path / "png").glob("*.png"))) == 8


def test_lidc_organ_labels_splits_a_spleen_touching_the_liver_at_the_neck():
    """Two 55 HU blobs joined by a narrow bridge, the spleen seed in the left one: the
    watershed cuts at the bridge, liver (5) on the right blob, spleen (1) on the left."""
    import numpy as np
    from scipy import ndimage

    script = load_script("lidc_organ_labels", "experiments")
    z, y, x = np.ogrid[:24, :48, :64]  # 2 mm voxels
    hu = np.full((24, 48, 64), -1000.0)
    hu[np.broadcast_to(((y - 24) / 22) ** 2 + ((x - 32) / 30) ** 2 <= 1, hu.shape)] = -100.0
    liver = ((z - 12) / 8) ** 2 + ((y - 24) / 11) ** 2 + ((x - 18) / 11) ** 2 <= 1
    spleen = ((z - 12) / 6) ** 2 + ((y - 24) / 8) ** 2 + ((x - 44) / 8) ** 2 <= 1
    bridge = (abs(z - 12) <= 3) & (abs(y - 24) <= 3) & (x > 18) & (x < 44)
    hu[liver | spleen | bridge] = 55.0
    hu += np.random.default_rng(1).normal(0, 8, hu.shape)
    notes = []
    labels = script.segment(hu, (2.0, 2.0, 2.0), True, spleen_seed=(12, 24, 44), log=notes.append)
    assert any("watershed" in n for n in notes)  # one component after opening: split
    for value, blob in ((5, liver), (1, spleen)):
        core = ndimage.binary_erosion(blob)
        assert (labels[core] == value).mean() > 0.95
    assert not ((labels == 5) & spleen).any() and not ((labels == 1) & liver).any()


def test_hcc_organ_labels_cuts_a_leak_grows_a_kidney_and_marks_a_suspect_ball():
    """A contrast-phase 'liver' (110 HU) joined by a bridge to a neighbour of the same HU, a
    200 HU 'kidney' and a nodule beside the liver: with a cut seed in the neighbour the liver
    label (5) keeps the liver and drops the neighbour, the kidney seed gives label 2 on the
    kidney, and the suspect ball (255) fills only voxels no organ holds."""
    import numpy as np
    from scipy import ndimage

    script = load_script("hcc_organ_labels", "experiments")
    z, y, x = np.ogrid[:24, :56, :72]  # 2 mm voxels
    hu = np.full((24, 56, 72), -1000.0)
    hu[np.broadcast_to(((y - 28) / 26) ** 2 + ((x - 36) / 34) ** 2 <= 1, hu.shape)] = -100.0
    liver = ((z - 12) / 8) ** 2 + ((y - 22) / 11) ** 2 + ((x - 18) / 12) ** 2 <= 1
    neighbour = ((z - 12) / 5) ** 2 + ((y - 22) / 6) ** 2 + ((x - 46) / 7) ** 2 <= 1
    bridge = (abs(z - 12) <= 3) & (abs(y - 22) <= 3) & (x > 18) & (x < 46)
    kidney = ((z - 12) / 8) ** 2 + ((y - 44) / 6) ** 2 + ((x - 40) / 5) ** 2 <= 1
    hu[liver | neighbour | bridge] = 110.0
    hu[kidney] = 200.0
    hu += np.random.default_rng(2).normal(0, 8, hu.shape)
    notes = []
    labels = script.label(
        hu, (2.0, 2.0, 2.0), True, liver_seed=(12, 22, 18), cut_seeds=[(12, 22, 46)],
        organs=[(2, (12, 44, 40), 2.0)], opening_mm=4.0, liver_close_mm=2.0,
        suspects=[((12, 22, 5), 8.0)], log=notes.append,
    )  # fmt: skip
    assert any(n.startswith("cut at (12, 22, 46)") for n in notes)
    core = ndimage.binary_erosion(liver, iterations=2)
    assert (labels[core] == 5).mean() > 0.95
    assert not (labels[ndimage.binary_erosion(neighbour)] == 5).any()
    assert (labels[ndimage.binary_erosion(kidney)] == 2).mean() > 0.9
    # the ball reaches into the liver, and takes only what no organ holds
    ball = script._near((12, 22, 5), hu.shape, (2.0,) * 3, 8.0)
    assert (ball & (labels == 5)).any()
    assert ((labels == 255) == (ball & ~np.isin(labels, (2, 5)))).all()
    # a cut seed that lies in no organ's label is refused, not ignored
    with pytest.raises(SystemExit, match="lie in no organ"):
        script.label(hu, (2.0, 2.0, 2.0), True, liver_seed=(12, 22, 18),
                     cut_seeds=[(2, 2, 2)], opening_mm=4.0, log=notes.append)  # fmt: skip


def test_sarcoma_ensemble_scores_the_mean_of_the_checkpoints_probabilities():
    """Two 'checkpoints' that each half-see a tumour: one over-calls it (0.9 on the tumour and
    0.6 on a spill beside it), one under-calls it (0.6 on the tumour, 0.1 elsewhere). Their mean
    is 0.75 on the tumour and 0.35 on the spill, so a threshold of 0.4 to 0.75 gives the tumour
    exactly (Dice 1, no false positive); a threshold at or below 0.35 adds the spill to it
    (still no separate false positive, lower Dice)."""
    import numpy as np

    ens = load_script("sarcoma_ensemble", folder="experiments")
    gt = np.zeros((4, 8, 8), bool)
    gt[1:3, 2:5, 2:5] = True
    spill = np.zeros_like(gt)
    spill[1:3, 2:5, 5:7] = True
    over = np.where(gt, 0.9, np.where(spill, 0.6, 0.0))
    under = np.where(gt, 0.6, 0.1)
    rows = ens.sweep([([over, under], gt, (3.0, 1.0, 1.0))], max_fp_per_scan=0)
    best = rows[0]
    assert best["mean_dice"] == pytest.approx(1.0) and best["fp_per_scan"] == 0
    assert 0.4 <= best["threshold"] <= 0.75
    at_030 = [r for r in rows if r["threshold"] == 0.3 and r["min_depth_mm"] == 0]
    assert at_030 and at_030[0]["mean_dice"] == pytest.approx(2 * 18 / (30 + 18))
    # exactly the thresholds between the mean's spill (0.35) and tumour (0.75) values, and the
    # depth limits the 6 mm deep tumour passes (0 and 4 mm; 7 and 10 mm remove it)
    perfect = {(r["threshold"], r["min_depth_mm"]) for r in rows if r["mean_dice"] > 0.999}
    assert perfect == {(t, d) for t in ens.THRESHOLDS if 0.35 < t <= 0.75 for d in (0.0, 4.0)}
