"""The commands the README and docs/cli.md tell a user to run: every one is run by a test named
here, and every `nstseg` command line in the README and docs/ is one the command accepts.

A command is a line (or lines joined by a trailing backslash) of a ```bash block, without its
comment. A new example in the README or docs/cli.md needs an entry in RUN_BY: the test that runs
it (or the same command on tiny data)."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

# command as the docs write it -> the tests that run it (function names under tests/)
RUN_BY = {
    # README and docs/cli.md
    "bash scripts/demo.sh": [
        "test_demo_script_without_a_display_predicts_and_says_where",
        "test_demo_script_with_a_display_opens_napari_with_the_sample_and_the_panel",
    ],
    "bash scripts/test.sh": ["test_the_test_script_lints_every_python_folder"],  # then the suite
    "nstseg info": ["test_the_info_command_prints_the_bundled_weights"],
    "nstseg info --json": ["test_info_through_the_parser", "test_cli_help_and_info"],
    "nstseg variants": ["test_nstseg_variants_lists_every_entry_without_loading_torch"],
    "nstseg predict scan.nii.gz mask.nii.gz --variant no-glm": [
        "test_predict_runs_an_ablation_and_says_so_in_the_report",
    ],
    "nstseg demo": [
        "test_demo_viewer_docks_the_widget",
        "test_demo_script_with_a_display_opens_napari_with_the_sample_and_the_panel",
    ],
    "nstseg demo --headless --out nstseg-demo": ["test_headless_demo_end_to_end_on_the_sample"],
    "nstseg predict scan.nii.gz mask.nii.gz --report report.json": [
        "test_predict_writes_mask_maps_and_report_on_the_scan_grid",
    ],
    "nstseg predict scan.nii.gz mask.nii.gz --maps maps/ --report report.json "
    "--lesion-map lesions.nii.gz": [
        "test_predict_writes_mask_maps_and_report_on_the_scan_grid",
        "test_report_positions_are_the_written_files_voxels_and_world_points",
    ],
    "nstseg predict thigh.nii.gz mask.nii.gz --weights sarcoma": [
        "test_predict_with_the_sarcoma_weights_by_name_finds_the_real_tumour",
    ],
    "nstseg predict scan.nii.gz mask.nii.gz --organ-mask seg.nii.gz --organs liver,pancreas": [
        "test_organ_mode_finds_lesions_only_in_the_organs",
    ],
    "nstseg predict scan.nii.gz mask.nii.gz --slices 40:60 --mirror --device cpu": [
        "test_predict_writes_mask_maps_and_report_on_the_scan_grid",  # --slices
        "test_predict_uses_the_weights_operating_point_unless_told_otherwise",  # --mirror
    ],
    "nstseg predict dicom_series/ mask.dcm": ["test_predict_on_a_dicom_series_writes_a_seg_of_it"],
    "nstseg predict scans/ out/ --workers 2": [
        "test_a_bad_scan_is_reported_and_a_rerun_skips_every_finished_one",
        "test_two_workers_give_the_same_masks_as_one",
    ],
    "nstseg predict list.csv out/ --lesion-map out/lesions": ["test_a_csv_list_with_output_names"],
    "nstseg predict series/ out/": ["test_a_folder_of_dicom_series_gives_one_seg_each"],
    "nstseg make-lesions ct1.nii.gz ct2.nii.gz -o lesions/ --copies 16": [
        "test_make_lesions_command",
    ],
    "nstseg make-lesions ct1.nii.gz ct2.nii.gz -o evalset/ --splits val test --workers 8": [
        "test_make_lesions_command",  # --splits through the command
        "test_dataset_same_in_worker_processes_and_by_split",  # workers and splits
    ],
    "nstseg make-lesions ct1.nii.gz ct2.nii.gz -o newsites/ --splits train --first-copy 48": [
        "test_later_copies_are_new_lesions_in_the_same_blocks",
    ],
    "nstseg train --data lesions/ --out runs/cdi --variant default": [
        "test_mae_pretraining_then_ssl_guided_training_via_the_cli",
        "test_train_then_evaluate_on_case_folders_through_the_cli",
    ],
    "nstseg train --data lesions/ --out runs/onl --online-lesions": [
        "test_train_command_with_online_lesions",
    ],
    "nstseg train --data mine/ --out runs/ft --init bundled --lr 1e-3": [
        "test_init_starts_from_a_checkpoint_with_its_architecture",
    ],
    "nstseg train --data lesions/ --out runs/p2 --context-mm 3 --region-loss batch "
    "--positive-fraction 0.5": ["test_mae_pretraining_then_ssl_guided_training_via_the_cli"],
    "torchrun --nproc_per_node 4 -m napari_nstseg.cli train --data lesions/ --out runs/ddp": [
        "test_ddp_two_ranks_on_gloo_end_with_identical_weights",  # the environment torchrun sets
    ],
    "nstseg pretrain-mae --data lesions/ --out runs/mae --epochs 20": [
        "test_pretrain_mae_through_the_parser",
    ],
    "nstseg evaluate --weights runs/cdi/best.json --data lesions/": [
        "test_evaluate_command_takes_weights_and_data",
    ],
    "nstseg evaluate runs/cdi/final.json --data lesions/ --split test --threshold 0.5 "
    "--min-depth-mm 4": [
        "test_train_then_evaluate_on_case_folders_through_the_cli",
        "test_evaluate_scores_and_records_the_operating_point",
    ],
    "nstseg evaluate --weights w.json --data set/ --organ-masks organs.nii.gz --organs 5,7": [
        "test_the_command_line_takes_organ_options_and_refuses_bad_ones",
    ],
    "nstseg tune-postprocess --weights runs/cdi/best.json --data lesions/ --split val "
    "--max-fp-per-scan 2": ["test_tune_postprocess_sweeps_the_grid_and_chooses_a_point"],
    "nstseg tune-postprocess runs/sts/best.json --data sts/ --split-file split.json "
    "--objective dice": [
        "test_tune_postprocess_sweeps_the_grid_and_chooses_a_point",
        "test_per_patient_dice_at_each_grid_point_and_the_dice_objective",
    ],
    "nstseg residual-auroc src/napari_nstseg/weights/mae.json --data sts/ --split-file "
    "split.json --split val --out runs/auroc": ["test_residual_auroc_through_the_cli"],
    "nstseg average-weights runs/sts/best.json runs/sts-stage2/best.json --out "
    "runs/sts-avg/best.json": ["test_average_weights_command"],
    "nstseg reproduce configs/sarcoma/recipe.json --list": [
        "test_every_reproduce_command_the_docs_give_runs",
        "test_list_names_every_step_and_the_variables_as_they_are_now",
    ],
    "nstseg reproduce configs/sarcoma/recipe.json train --set variants=unet --dry-run": [
        "test_every_reproduce_command_the_docs_give_runs",
        "test_the_json_recipe_runs_what_the_shell_recipe_ran",  # the same train command
    ],
}


def commands(path: Path) -> list[str]:
    """The command lines of the ```bash blocks of ``path``."""
    found, pending, fenced = [], [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced and line.strip() == "```bash"
            continue
        code = "" if line.lstrip().startswith("#") else line.split(" #")[0].rstrip()
        if not fenced or not code.strip():
            continue
        pending.append(code.strip().rstrip("\\").strip())
        if not code.endswith("\\"):
            found.append(" ".join(pending))
            pending = []
    return found


def _defined_tests() -> set[str]:
    names = set()
    for path in TESTS.rglob("*.py"):
        names.update(re.findall(r"^def (test_\w+)\(", path.read_text(encoding="utf-8"), re.M))
    return names


def test_every_command_of_the_readme_and_the_cli_page_is_run_by_a_test():
    given = commands(ROOT / "README.md") + commands(ROOT / "docs/cli.md")
    assert "bash scripts/demo.sh" in given and "bash scripts/test.sh" in given
    assert [c for c in given if c not in RUN_BY] == [], "add them to RUN_BY with their tests"
    defined = _defined_tests()
    missing = {c: t for c, ts in RUN_BY.items() for t in ts if t not in defined}
    assert missing == {}, "RUN_BY names tests that no longer exist"
    assert set(RUN_BY) <= set(given), "RUN_BY lists commands the docs no longer give"


def _nstseg_argv(command: str) -> list[str] | None:
    words = shlex.split(command)
    if words[0] == "nstseg":
        return words[1:]
    if "napari_nstseg.cli" in words:
        return words[words.index("napari_nstseg.cli") + 1 :]
    return None


DOC_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", DOC_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_nstseg_command_line_in_the_docs_parses(page, capsys):
    from napari_nstseg.cli import build_parser

    for command in commands(page):
        argv = _nstseg_argv(command)
        if argv is None:
            continue
        try:
            build_parser(argv[0]).parse_args(argv)
        except SystemExit:
            pytest.fail(f"{page.name}: `{command}` is refused: {capsys.readouterr().err}")


def test_the_info_command_prints_the_bundled_weights(capsys):
    from napari_nstseg.cli import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "bundled_weights" in out and "sarcoma" in out


def test_the_test_script_lints_every_python_folder():
    # scripts/test.sh is the suite itself (CI runs it); what it adds is the lint, which must
    # cover every folder of the repository that holds Python files
    script = (ROOT / "scripts/test.sh").read_text()
    tracked = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    folders = {Path(f).parts[0] for f in tracked if len(Path(f).parts) > 1}
    for tool in ("ruff check", "ruff format --check"):
        (line,) = [x for x in script.splitlines() if x.startswith(tool + " ")]
        assert folders <= set(line.split()[len(tool.split()) :]), line
    assert 'python -m pytest --durations=25 "$@"' in script


@pytest.mark.parametrize(
    "page",
    [*DOC_PAGES, ROOT / "experiments/README.md", ROOT / "scripts/README.md"],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_every_relative_link_of_the_docs_leads_to_a_file(page):
    text = page.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [x for x in links if not re.match(r"[a-z]+:", x)]
    assert [x for x in local if not (page.parent / x).exists()] == []


def test_the_readme_stays_a_front_door():
    # what it is, a picture, the two commands first, using it, where to go next: the rest
    # lives in docs/
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    assert "docs/images/widget.png" in text
    assert commands(ROOT / "README.md")[:2] == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    for credit in ("Apache-2.0", "CC BY 3.0"):
        assert credit in text
