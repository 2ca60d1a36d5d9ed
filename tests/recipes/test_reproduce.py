"""`nstseg reproduce`: recipe files checked with one-line errors, their steps listed and printed
as the exact commands, variables from --set / the environment / the file, the resume-or-init
choice, and a real two-step run on tiny case folders (napari_nstseg/recipes/)."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from case_helpers import write_case_folders
from napari_nstseg.cli import main
from napari_nstseg.recipes.runner import Values, plan_command, run_recipe
from napari_nstseg.recipes.schema import RecipeError, load_recipe
from test_docs_commands import commands

RECIPE = {
    "description": "two stages",
    "variables": {
        "work": {"default": "runs/x", "env": "NSTSEG_TEST_WORK", "help": "run folders"},
        "threads": {"default": "1", "env": "NSTSEG_TEST_THREADS"},
        "init": {"default": "", "env": "NSTSEG_TEST_INIT"},
        "variants": ["default", "unet"],
        "budget": ["--epochs", "{epochs}", "--no-progress"],
        "epochs": "3",
    },
    "env": {"OMP_NUM_THREADS": "{threads}"},
    "steps": {
        "train": {
            "description": "stage 1 of each variant",
            "commands": [
                {
                    "for_each": {"variable": "variant", "in": "variants"},
                    "nstseg": [
                        "train",
                        "--variant",
                        "{variant}",
                        "{budget}",
                        "--out",
                        "{work}/{variant}",
                    ],
                    "resume": "{work}/{variant}",
                    "init": "{init}",
                }
            ],  # fmt: skip
        },
        "stage2": {
            "description": "stage 2 from stage 1's best epoch",
            "commands": [
                {
                    "nstseg": ["train", "{budget}", "--out", "{work}/s2"],
                    "resume": "{work}/s2",
                    "init": "{work}/default/best.json",
                }
            ],  # fmt: skip
        },
        "report": {
            "description": "a python command, once",
            "commands": [{"python": ["-m", "json.tool", "{work}/a.json"], "creates": "{work}/b"}],
        },
    },
}


def _write(tmp_path: Path, recipe: dict, name: str = "recipe.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(recipe))
    return path


def _lines(recipe: dict, step: str, tmp_path: Path, sets=(), environ=None) -> list[str]:
    loaded = load_recipe(_write(tmp_path, recipe))
    values = Values(loaded, dict(sets), environ or {})
    return [
        p.shown()
        for i in range(len(loaded.steps[step].commands))
        for p in plan_command(loaded, step, i, values)
    ]


def _broken(change) -> dict:
    recipe = json.loads(json.dumps(RECIPE))
    change(recipe)
    return recipe


@pytest.mark.parametrize(
    ("change", "key", "says"),
    [
        (lambda r: r.pop("steps"), "recipe", "'steps' is missing"),
        (lambda r: r.update(step={}), "recipe.step", "unknown key"),
        (lambda r: r["steps"]["train"].pop("description"), "steps.train", "'description'"),
        (
            lambda r: r["steps"]["train"]["commands"][0].update(nstseg="train"),
            "steps.train.commands[0].nstseg",
            "expected a list of strings",
        ),  # fmt: skip
        (
            lambda r: r["steps"]["report"]["commands"][0].update(nstseg=["x"]),
            "steps.report.commands[0]",
            "one of 'nstseg' or 'python'",
        ),  # fmt: skip
        (
            lambda r: r["steps"]["stage2"]["commands"][0]["nstseg"].append("{wokr}"),
            "steps.stage2.commands[0].nstseg[4]",
            "{wokr} is not a variable",
        ),  # fmt: skip
        (
            lambda r: r["steps"]["stage2"]["commands"][0]["nstseg"].append("x{variants}"),
            "steps.stage2.commands[0].nstseg[4]",
            "must be an argument of its own",
        ),  # fmt: skip
        (
            lambda r: r["steps"]["train"]["commands"][0]["for_each"].update({"in": "work"}),
            "steps.train.commands[0].for_each.in",
            "'work' is not a list variable",
        ),  # fmt: skip
        (
            lambda r: r["steps"]["stage2"]["commands"][0].pop("resume"),
            "steps.stage2.commands[0].init",
            "give 'resume'",
        ),  # fmt: skip
        (
            lambda r: r["steps"].update({"Stage 3": r["steps"]["stage2"]}),
            "steps.Stage 3",
            "a step name is",
        ),  # fmt: skip
        (
            lambda r: r["variables"].update(epochs=3),
            "variables.epochs.default",
            "expected a string",
        ),  # fmt: skip
        (
            lambda r: r["variables"]["work"].update(env="work dir"),
            "variables.work.env",
            "not an environment variable name",
        ),  # fmt: skip
        (
            lambda r: r["steps"]["train"].update(description="two\nlines"),
            "steps.train.description",
            "one line",
        ),  # fmt: skip
        (lambda r: r.update(steps={}), "steps", "no steps"),
    ],
)
def test_a_bad_recipe_is_one_line_naming_the_file_and_the_key(tmp_path, change, key, says):
    path = _write(tmp_path, _broken(change))
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}: {key}: ") and says in message


def test_unreadable_files_and_cycles_are_one_line_too(tmp_path, capsys):
    assert main(["reproduce", str(tmp_path / "none.json"), "train"]) == 2
    assert capsys.readouterr().err.startswith(f"nstseg reproduce: error: {tmp_path}/none.json: ")
    (tmp_path / "bad.json").write_text('{"steps": {\n  "a": }')
    with pytest.raises(RecipeError, match=r"bad.json: line 2: not JSON"):
        load_recipe(tmp_path / "bad.json")
    looped = _broken(lambda r: r["variables"].update(epochs="{work}", work="{epochs}"))
    with pytest.raises(RecipeError, match=r"variables.epochs: refers to itself"):
        _lines(looped, "stage2", tmp_path)


def test_list_names_every_step_and_the_variables_as_they_are_now(tmp_path, capsys, monkeypatch):
    path = _write(tmp_path, RECIPE)
    monkeypatch.setenv("NSTSEG_TEST_WORK", "elsewhere")
    assert main(["reproduce", str(path), "--list", "--set", "epochs=7"]) == 0
    out = capsys.readouterr().out
    assert "  train   stage 1 of each variant\n" in out and "  report  a python command" in out
    assert "  work [NSTSEG_TEST_WORK] = elsewhere  (run folders)" in out
    assert "  budget = --epochs 7 --no-progress" in out and "  variants = default unet" in out
    # no step named: the same listing, and a refusal
    assert main(["reproduce", str(path)]) == 2
    assert "name the steps to run" in capsys.readouterr().out
    assert main(["reproduce", str(path), "train", "stage3"]) == 2
    err = capsys.readouterr().err
    assert "no step 'stage3' (steps: train, stage2, report)" in err and "\n" not in err.strip()
    assert main(["reproduce", str(path), "train", "--set", "epoch=1"]) == 2
    assert "--set epoch: not a variable of the recipe" in capsys.readouterr().err


def test_dry_run_prints_the_exact_commands_in_step_order(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, RECIPE)
    # options anywhere among the steps, as a user types them
    assert main(["reproduce", str(path), "stage2", "--dry-run", "train", "report"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "# environment: OMP_NUM_THREADS=1",
        "# stage2: stage 2 from stage 1's best epoch",
        "+ nstseg train --epochs 3 --no-progress --out runs/x/s2 --init runs/x/default/best.json",
        "# train: stage 1 of each variant",
        "+ nstseg train --variant default --epochs 3 --no-progress --out runs/x/default",
        "+ nstseg train --variant unet --epochs 3 --no-progress --out runs/x/unet",
        "# report: a python command, once",
        "+ python -m json.tool runs/x/a.json",
    ]
    assert not (tmp_path / "runs").exists()  # nothing run, nothing made
    (tmp_path / "runs/x").mkdir(parents=True)
    (tmp_path / "runs/x/b").write_text("")
    assert main(["reproduce", str(path), "report", "--dry-run"]) == 0
    assert "# skipped (runs/x/b exists): python -m json.tool" in capsys.readouterr().out


def test_set_wins_over_the_environment_which_wins_over_the_file(tmp_path):
    stage2 = "nstseg train --epochs {} --no-progress --out {}/s2 --init {}/default/best.json"
    assert _lines(RECIPE, "stage2", tmp_path) == [stage2.format(3, "runs/x", "runs/x")]
    env = {"NSTSEG_TEST_WORK": "w"}
    assert _lines(RECIPE, "stage2", tmp_path, environ=env) == [stage2.format(3, "w", "w")]
    sets = [("work", "v"), ("epochs", "9")]
    assert _lines(RECIPE, "stage2", tmp_path, sets, env) == [stage2.format(9, "v", "v")]
    # an empty environment variable is unset (the shell recipes' ${VAR:-default})
    assert _lines(RECIPE, "stage2", tmp_path, environ={"NSTSEG_TEST_WORK": ""})[0].endswith(
        "runs/x/default/best.json"
    )
    # a list takes words; a value may refer to another variable
    sets = [("variants", "no-sfm 'a b'"), ("work", "{epochs}/w")]
    assert _lines(RECIPE, "train", tmp_path, sets) == [
        "nstseg train --variant no-sfm --epochs 3 --no-progress --out 3/w/no-sfm",
        "nstseg train --variant 'a b' --epochs 3 --no-progress --out '3/w/a b'",
    ]
    sets = [("budget", "")]  # an empty list is no arguments
    assert _lines(RECIPE, "stage2", tmp_path, sets)[0] == (
        "nstseg train --out runs/x/s2 --init runs/x/default/best.json"
    )
    # literal braces are doubled, as in Python's format strings
    sets = [("work", "{{a}}")]
    assert _lines(RECIPE, "stage2", tmp_path, sets)[0].endswith("--init '{a}/default/best.json'")


def test_a_started_run_resumes_and_a_fresh_one_starts_from_the_given_weights(tmp_path):
    work = tmp_path / "w"
    sets = [("work", str(work))]
    fresh = _lines(RECIPE, "stage2", tmp_path, sets)[0]
    assert fresh.endswith(f"--out {work}/s2 --init {work}/default/best.json")
    (work / "s2").mkdir(parents=True)  # a folder alone is no started run
    assert _lines(RECIPE, "stage2", tmp_path, sets)[0] == fresh
    (work / "s2" / "train_config.json").write_text("{}")  # the run started: its own weights
    assert _lines(RECIPE, "stage2", tmp_path, sets)[0].endswith(f"--out {work}/s2 --resume")
    # stage 1 starts from weights only when given some
    assert "--init" not in " ".join(_lines(RECIPE, "train", tmp_path, sets))
    train = _lines(RECIPE, "train", tmp_path, [*sets, ("init", "sarcoma")])
    assert all(line.endswith(" --init sarcoma") for line in train)


def test_a_failing_command_stops_the_recipe_and_says_which(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = {"steps": {"s": {"description": "fails, then would run", "commands": [
        {"python": ["-c", "import sys; sys.exit(3)"]},
        {"python": ["-c", "open('ran', 'w')"]},
    ]}}}  # fmt: skip
    path = _write(tmp_path, recipe)
    assert main(["reproduce", str(path), "s"]) == 2
    err = capsys.readouterr().err
    assert "step s: `python -c 'import sys; sys.exit(3)'` exited with code 3" in err
    assert not (tmp_path / "ran").exists()


def test_two_steps_train_then_continue_from_the_best_epoch(tmp_path, capsys, monkeypatch):
    # the real thing, tiny: stage 1 trains, stage 2 starts from its best.json, with the
    # recipe's thread count in the commands' environment; run again, both resume
    monkeypatch.chdir(tmp_path)
    data = write_case_folders(tmp_path / "sts", n=4)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["STS_000", "STS_001"], "val": ["STS_002"],
                                 "test": ["STS_003"]}))  # fmt: skip
    budget = ["--data", "{data}", "--split-file", "{split}", "--base-width", "8", "--set",
              "fused_channels=8", "--steps-per-epoch", "2", "--batch-size", "4", "--crop-size",
              "32", "--val-max-slices", "2", "--no-progress"]  # fmt: skip
    recipe = {
        "variables": {"data": str(data), "split": str(split), "work": "runs", "threads": "1",
                      "budget": budget},  # fmt: skip
        "env": {"OMP_NUM_THREADS": "{threads}", "MKL_NUM_THREADS": "{threads}"},
        "steps": {
            "stage1": {"description": "from scratch", "commands": [
                {"nstseg": ["train", "{budget}", "--epochs", "1", "--out", "{work}/s1"],
                 "resume": "{work}/s1"}]},
            "stage2": {"description": "from stage 1's best", "commands": [
                {"nstseg": ["train", "{budget}", "--epochs", "1", "--lr", "5e-4", "--out",
                            "{work}/s2"], "resume": "{work}/s2", "init": "{work}/s1/best.json"},
                {"python": ["-c", "import os; open('threads', 'w').write("
                            "os.environ['OMP_NUM_THREADS'])"]}]},
        },
    }  # fmt: skip
    path = _write(tmp_path, recipe)
    assert main(["reproduce", str(path), "stage1", "stage2", "--set", "threads=2"]) == 0
    out = capsys.readouterr().out
    assert "+ nstseg train " in out and "--out runs/s2 --init runs/s1/best.json" in out
    assert (tmp_path / "threads").read_text() == "2"
    stage2 = json.loads((tmp_path / "runs/s2/final.json").read_text())["provenance"]
    assert stage2["initialised_from"]  # stage 2 continued stage 1
    assert (tmp_path / "runs/s1/final.json").is_file()
    assert main(["reproduce", str(path), "stage1", "stage2", "--dry-run"]) == 0
    printed = [x for x in capsys.readouterr().out.splitlines() if x.startswith("+ nstseg")]
    assert [x.split(" --out ")[1] for x in printed] == ["runs/s1 --resume", "runs/s2 --resume"]


def test_commands_run_with_this_interpreter():
    loaded_path = Path(__file__).resolve().parents[2] / "configs/sarcoma/recipe.json"
    recipe = load_recipe(loaded_path)
    planned = plan_command(recipe, "mae", 0, Values(recipe, {}, {}))[0]
    assert planned.argv()[:3] == [sys.executable, "-m", "napari_nstseg"]
    bundle = plan_command(recipe, "bundle", 0, Values(recipe, {}, {}))[0]
    assert bundle.argv()[:3] == [sys.executable, "-m", "napari_nstseg.recipes.bundle_sarcoma"]
    assert run_recipe(recipe, ["mae"], {"work": "/nonexistent"}, dry_run=True) == 0


ROOT = Path(__file__).resolve().parents[2]
# what the docs write for a value the reader picks
PLACEHOLDERS = {"STEP": "train", "VARIANT": "no-sfm"}


def _documented_reproduce_commands() -> list[tuple[str, str]]:
    pages = [ROOT / "README.md", ROOT / "experiments/README.md", *sorted(ROOT.glob("docs/*.md")),
             *sorted(ROOT.glob("src/napari_nstseg/weights/*.md"))]  # fmt: skip
    found = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        inline = re.findall(r"`(nstseg reproduce [^`]+)`", text)
        block = [c for c in commands(page) if c.startswith("nstseg reproduce ")]
        found += [(page.name, " ".join(c.split())) for c in [*inline, *block]]
    return found


def test_every_reproduce_command_the_docs_give_runs(capsys, monkeypatch, tmp_path):
    # run from the repository root, as the docs say, with work folders that are not there
    monkeypatch.chdir(ROOT)
    given = _documented_reproduce_commands()
    assert {p for p, _ in given} >= {"cli.md", "training.md", "sarcoma-stage2.md"}
    for page, command in given:
        argv = [PLACEHOLDERS.get(w, w) for w in shlex.split(command)[1:]]
        if "--list" not in argv:
            argv.append("--dry-run")
        if not any(a.startswith("work=") for a in argv):
            argv += ["--set", f"work={tmp_path}/w"]
        assert main(argv) == 0, f"{page}: `{command}`: {capsys.readouterr().err}"
        assert "+ " in capsys.readouterr().out or "--list" in argv


@pytest.mark.parametrize(
    "recipe", sorted(ROOT.glob("configs/*/recipe.json")), ids=lambda p: p.parent.name
)
def test_every_checked_in_recipe_loads_and_dry_runs_every_step(recipe, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    steps = list(load_recipe(recipe).steps)
    assert main(["reproduce", str(recipe.relative_to(ROOT)), *steps, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert all(f"# {step}: " in out for step in steps)
