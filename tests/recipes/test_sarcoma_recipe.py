"""configs/sarcoma/recipe.json runs what the shell recipe it replaced ran: for every step of
tests/recipes/sarcoma_recipe.sh (driven with stub `nstseg` and `python` that print their
arguments), the JSON's command line is the same, word for word, with the same thread count."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from napari_nstseg.recipes.runner import Values, plan_command
from napari_nstseg.recipes.schema import load_recipe

ROOT = Path(__file__).resolve().parents[2]
SHELL = Path(__file__).resolve().parent / "sarcoma_recipe.sh"
RECIPE = ROOT / "configs/sarcoma/recipe.json"
# the shell ran the packaging script by path; the JSON runs it as the package's module
SCRIPT_TO_MODULE = {"scripts/bundle_sarcoma.py": ["-m", "napari_nstseg.recipes.bundle_sarcoma"]}
STUB = """#!/bin/sh
{ echo "OMP_NUM_THREADS=$OMP_NUM_THREADS MKL_NUM_THREADS=$MKL_NUM_THREADS"; echo "$0";
  for a in "$@"; do echo "$a"; done; } > "$STUB_OUT"
"""

# (shell arguments, its environment) -> (JSON steps' --set, the same environment); "RUN" is the
# work folder, made fresh for each case
CASES = [
    (["train", "default"], {}, ["train"], {"variants": "default"}),
    (["train", "unet"], {"INIT": "sarcoma", "EPOCHS": "2", "THREADS": "3"}, ["train"],
     {"variants": "unet"}),
    (["train", "default"], {"DATA": "/d"}, ["train"], {"variants": "default"}),
    (["stage2", "default"], {}, ["stage2"], {"variants": "default"}),
    (["stage2", "unet"], {"EPOCHS": "5"}, ["stage2"], {"variants": "unet"}),
    (["stage2z", "default"], {}, ["stage2z"], {"variants": "default"}),
    (["mae"], {"MAE_EPOCHS": "1"}, ["mae"], {}),
    (["tune", "default"], {}, ["tune"], {"variants": "default"}),
    (["tune", "default-stage2"], {"CKPT": "final"}, ["tune-final"],
     {"variants": "default-stage2"}),
    (["auroc", "m/best.json"], {}, ["auroc"], {"mae_weights": "m/best.json"}),
    (["auroc", "m/best.json", "out/a"], {}, ["auroc"],
     {"mae_weights": "m/best.json", "auroc_out": "out/a"}),
    (["bundle"], {}, ["bundle"], {}),
    (["bundle"], {"SEG": "default-stage2", "CMP": "unet-stage2"}, ["bundle"], {}),
    (["bundle"], {"SEG": "default-stage2", "CMP": "unet-stage2", "OUT": "scratch"},
     ["bundle-aside"], {"seg": "default-stage2", "cmp": "unet-stage2", "bundle_out": "scratch"}),
]  # fmt: skip
# options the JSON's steps gained after the shell recipe was retired, at the end of the line
_BUNDLE_ADDED = ["--ablations", "single-scale", "no-sfm", "no-glm", "no-lfm", "ssl", "--reading",
                 "docs/sarcoma-reading.md"]  # fmt: skip
ADDED_SINCE = {"bundle": _BUNDLE_ADDED, "bundle-aside": _BUNDLE_ADDED}
# and inside it, after the U-Net's --compare: the averaged runs' rows
_AVERAGED = [
    "--compare", "CDI-NSTSEG, stages 1 and 2 averaged={w}/default-avg/best.json:"
    "{w}/default-avg/tune_val/tune.json",
    "--compare", "U-Net, stages 1 and 2 averaged={w}/unet-avg/best.json:"
    "{w}/unet-avg/tune_val/tune.json",
]  # fmt: skip
# steps the JSON gained after the shell recipe was retired (each has its own test)
STEPS_ADDED_SINCE = {
    "average", "train-ssl", "context", "train-joint", "joint-stage", "joint-lesions"
}  # fmt: skip
# the run folders a started run would have: the shell and the JSON must both resume them
STARTED = ["default", "unet-stage2", "mae"]


def _shell(tmp_path: Path, args: list[str], env: dict[str, str]) -> tuple[str, list[str]]:
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    for name in ("nstseg", "python"):
        (stubs / name).write_text(STUB)
        (stubs / name).chmod(0o755)
    out = tmp_path / "argv.txt"
    run = subprocess.run(
        ["bash", str(SHELL), *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": f"{stubs}:/usr/bin:/bin", "STUB_OUT": str(out), **env},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    threads, program, *argv = out.read_text().splitlines()
    return threads, [Path(program).name, *argv]


def _json(args_env: dict[str, str], steps: list[str], sets: dict[str, str]):
    recipe = load_recipe(RECIPE)
    values = Values(recipe, sets, args_env)
    env = values.environment()
    threads = f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']} MKL_NUM_THREADS={env['MKL_NUM_THREADS']}"
    (planned,) = [p for s in steps for i, _ in enumerate(recipe.steps[s].commands)
                  for p in plan_command(recipe, s, i, values)]  # fmt: skip
    return threads, [planned.program, *planned.args]


@pytest.mark.parametrize("started", [False, True], ids=["fresh", "resumed"])
@pytest.mark.parametrize(("shell_args", "env", "steps", "sets"), CASES)
def test_the_json_recipe_runs_what_the_shell_recipe_ran(
    tmp_path, shell_args, env, steps, sets, started
):
    work = tmp_path / "runs"
    for run in STARTED if started else []:
        (work / run).mkdir(parents=True)
        (work / run / "train_config.json").write_text("{}")
    env = {**env, "WORK": str(work)}
    shell_threads, shell = _shell(tmp_path, shell_args, env)
    json_threads, planned = _json(env, steps, sets)
    if shell[0] == "python":  # python scripts/x.py ... == python -m napari_nstseg.recipes.x ...
        shell = ["python", *SCRIPT_TO_MODULE[shell[1]], *shell[2:]]
    if "--resume" in shell and "--init" in shell:
        # the shell passed both when INIT was set; a resumed run ignores --init (its saved
        # starting weights stand), so the JSON gives --resume alone
        i = shell.index("--init")
        shell = shell[:i] + shell[i + 2 :]
    if steps[0].startswith("bundle"):
        i = planned.index("--compare") + 2
        assert planned[i : i + 4] == [a.format(w=work) for a in _AVERAGED]
        planned = planned[:i] + planned[i + 4 :]
    assert planned == shell + ADDED_SINCE.get(steps[0], [])
    assert json_threads == shell_threads


def test_every_step_of_the_shell_recipe_is_checked():
    steps = re.findall(r"^  ([a-z0-9]+)\)$", SHELL.read_text(), re.M)
    assert steps and set(steps) == {c[0][0] for c in CASES}
    # and the JSON has no step the cases leave unchecked, but those added since (tested below)
    assert set(load_recipe(RECIPE).steps) == {s for c in CASES for s in c[2]} | STEPS_ADDED_SINCE


def test_the_average_step_averages_stage_2_and_stage_1_per_variant(tmp_path):
    recipe = load_recipe(RECIPE)
    values = Values(recipe, {"work": "W"}, {})
    planned = [list(p.args) for i, _ in enumerate(recipe.steps["average"].commands)
               for p in plan_command(recipe, "average", i, values)]  # fmt: skip
    assert planned == [
        ["average-weights", f"W/{v}-stage2/best.json", f"W/{v}/best.json", "--out",
         f"W/{v}-avg/best.json"]
        for v in ("default", "unet")
    ]  # fmt: skip


def test_the_ssl_step_trains_stage_1_with_the_residual_of_the_bundled_mae(tmp_path):
    """train-ssl is stage 1 (the same data, budget and seed as train) with variant ssl and the
    MAE whose residual it feeds the network, into its own run folder."""
    recipe = load_recipe(RECIPE)
    values = Values(recipe, {"work": "W"}, {})
    stage1_values = Values(recipe, {"work": "W", "variants": "default"}, {})
    stage1 = list(plan_command(recipe, "train", 0, stage1_values)[0].args)
    (ssl,) = [p.args for p in plan_command(recipe, "train-ssl", 0, values)]
    ssl = list(ssl)
    assert ssl[ssl.index("--variant") + 1] == "ssl"
    assert ssl[ssl.index("--mae") + 1] == "src/napari_nstseg/weights/mae.json"
    assert ssl[ssl.index("--out") + 1] == "W/ssl"
    shared = stage1[: stage1.index("--variant")]
    assert ssl[: len(shared)] == shared  # every option of stage 1's data and budget


def test_the_context_step_trains_stage_1_with_each_other_2_5_d_input():
    """context is stage 1 (the same data, budget and seed as train) with another --context-mm,
    the last one given, which argparse keeps: the slice alone, then the planes 6.5 mm away."""
    recipe = load_recipe(RECIPE)
    values = Values(recipe, {"work": "W"}, {})
    stage1_values = Values(recipe, {"work": "W", "variants": "default"}, {})
    stage1 = list(plan_command(recipe, "train", 0, stage1_values)[0].args)
    runs = [list(p.args) for p in plan_command(recipe, "context", 0, values)]
    assert [r[r.index("--out") + 1] for r in runs] == ["W/ctx0", "W/ctx6.5"]
    cut = stage1.index("--variant")
    assert stage1[stage1.index("--context-mm") + 1] == "3.0"  # what the shipped weights saw
    for run, context in zip(runs, ("0", "6.5"), strict=True):
        assert run[:cut] == stage1[:cut]
        assert run[cut:] == ["--context-mm", context, "--variant", "default",
                             "--out", f"W/ctx{context}"]  # fmt: skip


def test_the_joint_step_trains_stage_1_with_half_the_crops_from_inserted_lesions():
    recipe = load_recipe(RECIPE)
    values = Values(recipe, {"work": "W", "joint_lesions": "L"}, {})
    (joint,) = [list(p.args) for p in plan_command(recipe, "train-joint", 0, values)]
    stage1_values = Values(recipe, {"work": "W", "variants": "default"}, {})
    stage1 = list(plan_command(recipe, "train", 0, stage1_values)[0].args)
    assert joint[: stage1.index("--variant")] == stage1[: stage1.index("--variant")]
    tail = joint[stage1.index("--variant") :]
    assert tail == ["--variant", "default", "--also-data", "L", "--also-online-lesions",
                    "--also-share", "0.5", "--out", "W/joint"]  # fmt: skip


def test_the_joint_stage_continues_the_bundled_weights_alike_with_and_without_lesions():
    """Both runs of joint-stage start from the bundled sarcoma weights with the same data,
    budget and seed; only the joint one draws half its crops from inserted lesions."""
    recipe = load_recipe(RECIPE)
    values = Values(recipe, {"work": "W", "joint_lesions": "L"}, {})
    (alone,) = [list(p.args) for p in plan_command(recipe, "joint-stage", 0, values)]
    (joint,) = [list(p.args) for p in plan_command(recipe, "joint-stage", 1, values)]
    extra = ["--also-data", "L", "--also-online-lesions", "--also-share", "0.5"]
    cut = alone.index("--out")
    assert joint == alone[:cut] + extra + ["--out", "W/joint-cont"] + alone[cut + 2 :]
    assert alone[cut : cut + 2] == ["--out", "W/sarcoma-cont"]
    assert alone[-2:] == ["--init", "src/napari_nstseg/weights/sarcoma.json"]
    epochs = [alone[i + 1] for i, w in enumerate(alone) if w == "--epochs"]
    assert epochs[-1] == "6"  # the last --epochs wins: 6 x 100 x 8 = 4 800 crops


def test_joint_lesions_scores_both_runs_and_the_default_on_the_checked_in_cases():
    import json

    recipe = load_recipe(RECIPE)
    values = Values(recipe, {"work": "W", "joint_lesions": "L"}, {})
    runs = [list(p.args) for p in plan_command(recipe, "joint-lesions", 0, values)]
    (default,) = [list(p.args) for p in plan_command(recipe, "joint-lesions", 1, values)]
    assert [a[1] for a in runs] == ["W/sarcoma-cont/best.json", "W/joint-cont/best.json"]
    assert runs[1][runs[1].index("--operating-point") + 1] == "W/joint-cont/tune_val/tune.json"
    assert default[1] == "src/napari_nstseg/weights/default.json"
    assert "--operating-point" not in default  # the default weights at their own point
    for args in (*runs, default):
        split = ROOT / args[args.index("--split-file") + 1]
        assert args[args.index("--data") + 1] == "L" and split.is_file()
    cases = json.loads(split.read_text())["val"]
    assert len(cases) == 8 and all(c.endswith(("_c00", "_c01")) for c in cases)


def test_the_environment_the_shell_honoured_is_honoured():
    recipe = load_recipe(RECIPE)
    shell = SHELL.read_text()
    honoured = set(re.findall(r"\$\{([A-Z_]+):[-?+]", shell)) - {"CKPT", "OUT"}
    # CKPT=final is the step tune-final, OUT=DIR the step bundle-aside with --set bundle_out=DIR
    assert honoured == {v.env for v in recipe.variables.values() if v.env}


def test_the_sarcoma_results_page_ends_with_its_hand_written_reading():
    # bundle_sarcoma --reading appends docs/sarcoma-reading.md: an edit there must reach the page
    reading = (ROOT / "docs/sarcoma-reading.md").read_text().strip()
    assert (ROOT / "docs/sarcoma.md").read_text().strip().endswith(reading)
