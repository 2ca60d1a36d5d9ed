"""The training and packaging scripts under scripts/: what they run and what they print."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from script_helpers import ROOT, load_script


def _evaluation(sensitivity_big: float, detected: int, fp: float) -> dict:
    group = {"dice": 0.05}
    return {
        "pixel": {"groups": {"area<1%": group, "area<10%": group, "all": group}},
        "volume": {"dice": 0.03},
        "detection": {"sensitivity": 0.08, "fp_per_scan": fp},
        "lesions_by_table": {
            ">=10 mm and >=20 HU": {
                "lesions": 112,
                "detected": detected,
                "sensitivity": sensitivity_big,
            }
        },
        "postprocess": {"threshold": 0.5, "min_lesion_mm": 0.0, "min_depth_mm": 4.0},
        "by_region": {
            "example_ct.nii.gz z061-092": {
                "scans": 48,
                "target_lesions": 83,
                "target_detected": detected,
                "target_sensitivity": detected / 83,
                "fp_per_scan": fp,
                "recurring_fp_sites": 15,
                "recurring_fp_share": 0.988,
            }
        },
    }


def test_comparison_rows_prints_both_tables_for_a_later_model(tmp_path, capsys):
    # an ablation trained after the tables were written gets rows in their exact format
    path = tmp_path / "evaluation.json"
    path.write_text(json.dumps(_evaluation(0.25, 28, 8.5416)))
    rows = load_script("comparison_rows")
    assert rows.main([f"CDI-NSTSEG without SFM, same phases={path}"]) == 0
    out = capsys.readouterr().out.splitlines()
    bundle = load_script("bundle_weights")
    assert out[:2] == bundle.HEADER.splitlines()
    assert out[2] == (
        "| CDI-NSTSEG without SFM, same phases | 0.50 / 0 mm / 4 mm | 0.050 | 0.050 | 0.050 | "
        "0.030 | 0.080 | 0.250 (28/112) | 8.54 |"
    )
    assert out[4:6] == bundle.REGION_HEADER.splitlines()
    assert out[6] == (
        "| CDI-NSTSEG without SFM, same phases | example_ct.nii.gz z061-092 | 48 | "
        "0.337 (28/83) | 8.54 | 15 (98.8 %) |"
    )
    with pytest.raises(SystemExit):
        rows.main([f"no equals sign {path}"])
    assert "expected NAME=EVALUATION_JSON" in capsys.readouterr().err


def test_comparison_rows_go_into_the_tables_of_the_docs(tmp_path, capsys):
    # the rows of a later model land at the end of both tables of comparison.md and the model
    # card, the text around them untouched; a second run replaces them instead of adding more
    path = tmp_path / "evaluation.json"
    path.write_text(json.dumps(_evaluation(0.25, 28, 8.5416)))
    rows = load_script("comparison_rows")
    name = "CDI-NSTSEG trained later, same phases"
    docs = []
    for source in (ROOT / "docs/comparison.md", ROOT / "src/napari_nstseg/weights/MODEL_CARD.md"):
        docs.append(tmp_path / source.name)
        docs[-1].write_text(source.read_text())
        assert name not in source.read_text()
    before = [d.read_text().splitlines() for d in docs]
    assert rows.main([f"{name}={path}", "--into", *map(str, docs)]) == 0
    path.write_text(json.dumps(_evaluation(0.30, 34, 7.0)))  # measured again
    assert rows.main([f"{name}={path}", "--into", *map(str, docs)]) == 0
    for doc, old in zip(docs, before, strict=True):
        new = doc.read_text().splitlines()
        assert len(new) == len(old) + 2  # one row in each table
        added = [i for i, line in enumerate(new) if name in line]
        assert len(added) == 2 and "0.300 (34/112)" in new[added[0]]
        assert "example_ct.nii.gz z061-092 | 48 | 0.410 (34/83) | 7.00" in new[added[1]]
        for i in added:  # each the last row of its table
            assert new[i - 1].startswith("| ")
            assert i + 1 == len(new) or not new[i + 1].startswith("|")
        assert [line for line in new if name not in line] == old
    capsys.readouterr()
    docs[0].write_text("# no tables here\n")
    with pytest.raises(SystemExit):
        rows.main([f"{name}={path}", "--into", str(docs[0])])
    assert "has no table with the header" in capsys.readouterr().err


def test_train_bundled_makes_only_the_splits_each_folder_needs(tmp_path, capsys):
    script = load_script("train_bundled")
    work = str(tmp_path / "dry")  # a folder of its own: what an earlier run left there counts
    assert script.main(["--work", work, "--variants", "no-sfm", "--dry-run",
                        "--train-only", "--lesion-workers", "3"]) == 0  # fmt: skip
    commands = [c for c in capsys.readouterr().out.splitlines() if c.startswith("+ ")]
    made = {c.split(" -o ")[1].split()[0]: c for c in commands if "make-lesions" in c}
    assert {Path(k).name for k in made} == {"lesions", "train", "tune"}
    splits = {Path(k).name: c.split("--splits ")[1].split(" --")[0] for k, c in made.items()}
    assert splits == {"lesions": "val test", "train": "train val", "tune": "val"}
    assert all("--workers 3" in c for c in made.values())
    # an earlier phase trains only: no operating point, no test evaluation
    trains = [c for c in commands if "cli train " in c]
    assert len(trains) == 1 and "--amp" not in trains[0]  # float32 on a CPU unless asked
    assert not any("tune-postprocess" in c or " evaluate " in c for c in commands)
    assert script.main(["--work", work, "--variants", "no-sfm", "--dry-run",
                        "--train-only", "--amp"]) == 0  # fmt: skip
    assert "--amp" in next(c for c in capsys.readouterr().out.splitlines() if "cli train " in c)
    assert "--online-lesions" not in trains[0]  # stored copies unless asked
    assert script.main(["--work", work, "--variants", "no-sfm", "--dry-run",
                        "--train-only", "--online-lesions"]) == 0  # fmt: skip
    train = next(c for c in capsys.readouterr().out.splitlines() if "cli train " in c)
    assert "--online-lesions" in train and f"{work}/train " in train


def test_train_bundled_draws_a_share_of_bright_training_lesions_only_when_asked(tmp_path, capsys):
    script = load_script("train_bundled")
    work = tmp_path / "work"
    args = ["--work", str(work), "--variants", "unet", "--dry-run", "--train-only"]
    assert script.main([*args, "--train-hypodense-fraction", "0.5"]) == 0
    made = [c for c in capsys.readouterr().out.splitlines() if "make-lesions" in c]
    dark = {Path(c.split(" -o ")[1].split()[0]).name: "--hypodense-fraction 0.5" in c
            for c in made}  # fmt: skip
    assert dark == {"lesions": False, "train": True, "tune": False}  # evaluation sets as usual
    assert not any("--hypodense-fraction" in c for c in made if "/train " not in c)
    # a training folder made with the usual share is not trained on as if it were another
    (work / "train").mkdir(parents=True)
    (work / "train" / "dataset.json").write_text(
        json.dumps({"lesion_config": {"hypodense_fraction": 0.8}})
    )
    with pytest.raises(SystemExit, match="hypodense fraction 0.8, not the 0.5"):
        script.main([*args, "--train-hypodense-fraction", "0.5"])
    assert script.main(args) == 0  # the usual share: that folder is the right one
    (work / "train" / "dataset.json").write_text(json.dumps({"name": "made before 2026-12"}))
    assert script.main(args) == 0  # a folder that predates the record used the usual share
    capsys.readouterr()


@pytest.mark.parametrize(
    ("env", "message"),
    [({"ONLINE": "2"}, "ONLINE is 0 or 1"), ({"HYPODENSE": "1.5"}, "share of dark training")],
)
def test_ablation_refuses_a_bad_setting_before_any_work(tmp_path, env, message):
    import os
    import subprocess
    import sys

    run = subprocess.run(
        ["bash", str(ROOT / "scripts/ablation.sh"), str(tmp_path / "w"), "default"],
        env={**os.environ, "PYTHON": sys.executable, **env}, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 2 and message in run.stderr
    assert not (tmp_path / "w").exists()


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

    fp_sites = load_script("fp_at_training_sites")
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
    fp_sites = load_script("fp_at_training_sites")
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


def test_a_new_bundle_keeps_the_sections_added_since_and_names_the_rows_it_drops(tmp_path):
    # bundle_weights.py writes the card and comparison.md afresh: measurements added by hand
    # since the last bundle must survive it, and rows added by comparison_rows.py be named
    bundle = load_script("bundle_weights")
    doc = tmp_path / "comparison.md"
    doc.write_text(
        "# Title\n\nintro\n\n" + bundle.HEADER + "\n| CDI-NSTSEG (bundled, float16) | a |\n"
        "| U-Net on the fly | b |\n\na note\n\n### Added later\n\ntext\n\n```bash\n"
        "# a comment, not a heading\n```\nmore\n\n### Per source region\n\nwritten by the "
        "script\n\n" + bundle.REGION_HEADER + "\n| U-Net on the fly | c |\n"
    )
    assert bundle.later_sections(doc) == [
        "### Added later\n\ntext\n\n```bash\n# a comment, not a heading\n```\nmore"
    ]
    kept = {"CDI-NSTSEG (bundled, float16)"}
    assert bundle.dropped_rows(doc, bundle.HEADER, kept) == ["U-Net on the fly"]
    assert bundle.dropped_rows(doc, bundle.REGION_HEADER, kept) == ["U-Net on the fly"]
    assert bundle.later_sections(tmp_path / "absent.md") == []
    # the measurements in the repository's docs are such sections
    headings = [s.splitlines()[0] for s in bundle.later_sections(ROOT / "docs/comparison.md")]
    assert {"### Lesions inserted on the fly", "### Dark and bright lesions"} <= set(headings)
    card = bundle.later_sections(ROOT / "src/napari_nstseg/weights/MODEL_CARD.md")
    assert any("Dark and bright lesions apart" in s for s in card)


def test_surroundings_table_recounts_target_lesions_by_their_ring():
    table = load_script("surroundings_table")
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
    figure = load_script("lesion_figure")
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

    from napari_nstseg.training.data import find_cases, load_case

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

    fp = load_script("fp_components")
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
