"""The recipes' training and packaging modules (napari_nstseg/recipes/: train_bundled,
bundle_weights, comparison_rows): what they run and what they print."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from napari_nstseg.recipes import bundle_weights, comparison_rows, train_bundled

ROOT = Path(__file__).resolve().parents[2]


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
    rows = comparison_rows
    assert rows.main([f"CDI-NSTSEG without SFM, same phases={path}"]) == 0
    out = capsys.readouterr().out.splitlines()
    bundle = bundle_weights
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
    rows = comparison_rows
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
    script = train_bundled
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
    script = train_bundled
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


def test_a_new_bundle_keeps_the_sections_added_since_and_names_the_rows_it_drops(tmp_path):
    # bundle_weights.py writes the card and comparison.md afresh: measurements added by hand
    # since the last bundle must survive it, and rows added by comparison_rows.py be named
    bundle = bundle_weights
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


def test_phase_two_trains_each_variant_on_from_phase_one_on_its_folders(tmp_path, capsys):
    # the second phase of the recipe: phase 1's data, each model from its own last weights,
    # operating points on phase 1's validation cases
    w1, w2 = tmp_path / "p1", tmp_path / "p2"
    for folder in ("lesions", "train"):
        (w1 / folder).mkdir(parents=True)
        (w1 / folder / "dataset.json").write_text("{}")
    args = ["--work", str(w2), "--phase1", str(w1), "--variants", "default", "unet", "--dry-run",
            "--mae-weights", "m.json", "--init", "unet=bundled"]  # fmt: skip
    assert train_bundled.main(args) == 0
    commands = [c for c in capsys.readouterr().out.splitlines() if c.startswith("+ ")]
    assert not any("make-lesions" in c for c in commands)  # phase 1's folders, as they are
    trains = [c for c in commands if "cli train " in c]
    assert f"--data {w1}/train --out {w2}/runs/default --resume" in trains[0]
    assert f"--init {w1}/runs/default/final.json" in trains[0]
    assert "--init bundled" in trains[1]  # --init still names a variant's start
    tunes = [c for c in commands if "tune-postprocess" in c]
    assert all(f"--data {w1}/tuneval " in c for c in tunes) and len(tunes) == 2
    assert all(f"--data {w1}/lesions --split test" in c for c in commands if " evaluate " in c)


def test_the_rows_of_a_variant_through_both_phases_are_named_as_the_registry_titles_it(
    tmp_path, capsys
):
    from napari_nstseg.models.variants import list_variants

    titles = {v.name: v.title for v in list_variants()}
    assert titles["no-sfm"] == "CDI-NSTSEG without SFM (mean of the scales)"  # the docs' rows
    rows = bundle_weights.two_phase_rows(tmp_path, ["no-sfm"], ", on the fly")
    assert rows == [
        f"{titles['no-sfm']}, on the fly, same phases={tmp_path}/evals/no-sfm_d4/evaluation.json",
        f"{titles['no-sfm']}, on the fly at its validation-tuned point="
        f"{tmp_path}/runs/no-sfm/eval_test/evaluation.json",
    ]
    for path in (tmp_path / "evals/no-sfm_d4", tmp_path / "runs/no-sfm/eval_test"):
        path.mkdir(parents=True)
        (path / "evaluation.json").write_text(json.dumps(_evaluation(0.25, 28, 8.5)))
    save = tmp_path / "rows.md"
    argv = ["--work", str(tmp_path), "--variants", "no-sfm", "--save", str(save), "--into"]
    assert comparison_rows.main(argv) == 0
    printed = capsys.readouterr().out
    assert save.read_text() == printed and printed.count("CDI-NSTSEG without SFM") == 4
    # the bundle picks up every ablation evaluated in phase 2's folder, no other
    assert bundle_weights.ablation_rows(str(tmp_path)) == bundle_weights.two_phase_rows(
        tmp_path, ["no-sfm"]
    )
    (tmp_path / "evals/no-sfm_d4/evaluation.json").unlink()
    with pytest.raises(SystemExit, match="no-sfm has no evaluation at the bundled point"):
        bundle_weights.ablation_rows(str(tmp_path))


def test_the_default_recipe_runs_both_phases_as_the_ablation_script_did(
    tmp_path, capfd, monkeypatch
):
    # phase1 and phase2 of configs/default/recipe.json for one ablation, train_bundled itself
    # run (told --dry-run through the phases' extra arguments): phase 1 trains only, phase 2
    # continues each variant from phase 1 with the second schedule, on phase 1's folders
    from napari_nstseg.cli import main

    monkeypatch.chdir(ROOT)
    work = tmp_path / "abl"
    sets = [f"work={work}", "variants=no-sfm", "phase1_args=--dry-run", "phase2_args=--dry-run",
            "train_options=--online-lesions"]  # fmt: skip
    argv = ["reproduce", "configs/default/recipe.json", "phase1", "phase2"]
    argv += [a for item in sets for a in ("--set", item)]
    assert main(argv) == 0
    out = capfd.readouterr().out.splitlines()
    trains = [line for line in out if "cli train " in line]
    assert len(trains) == 2 and all("--online-lesions" in t for t in trains)
    assert f"--out {work}/p1/runs/no-sfm " in trains[0] and "--variant no-sfm" in trains[0]
    assert "--mae src/napari_nstseg/weights/mae.json" in trains[0].replace(f"{ROOT}/", "")
    second = trains[1]
    assert f"--data {work}/p1/train --out {work}/p2/runs/no-sfm" in second
    assert f"--init {work}/p1/runs/no-sfm/final.json" in second
    for flag in ("--epochs 40", "--lr 0.001", "--positive-fraction 0.5", "--region-loss batch",
                 "--context-mm 3.0"):  # fmt: skip
        assert flag in second, flag
    phase2 = next(i for i, line in enumerate(out) if line.startswith("# phase2"))
    assert not any("tune-postprocess" in line for line in out[:phase2])  # phase 1 trains only
    tune = f"tune-postprocess {work}/p2/runs/no-sfm/final.json --data {work}/p1/tuneval"
    assert any(tune in line for line in out[phase2:])
