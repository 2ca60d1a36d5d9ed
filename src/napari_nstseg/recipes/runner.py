"""Running a recipe (schema.Recipe): its variables' values (--set, then the environment, then
the file), each step's exact command lines, and the commands themselves (issue 27)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .schema import REFERENCE, Command, Recipe, RecipeError

Value = str | tuple[str, ...]
# The file whose presence in a run folder means the run started: `nstseg train` and
# `pretrain-mae` write it first, and --resume needs it.
RUN_MARKER = "train_config.json"


@dataclass(frozen=True)
class Planned:
    """A command as it runs: the program ('nstseg' or 'python'), its arguments after
    substitution, and why it is skipped (None: it runs)."""

    step: str
    program: str
    args: tuple[str, ...]
    skipped: str | None = None

    def shown(self) -> str:
        """The command line a user would type (`nstseg ...` / `python ...`)."""
        return shlex.join([self.program, *self.args])

    def argv(self) -> list[str]:
        """What runs: this interpreter, for `nstseg` through the package's own entry point, so
        the command is the one of the environment that runs the recipe."""
        if self.program == "nstseg":
            return [sys.executable, "-m", "napari_nstseg", *self.args]
        return [sys.executable, *self.args]


class Values:
    """The recipe's variables, resolved on demand: --set wins over the variable's environment
    variable (when set and not empty, as the shell recipes' ${VAR:-default}), which wins over
    the file's default; values may refer to other variables."""

    def __init__(self, recipe: Recipe, overrides: Mapping[str, str], environ: Mapping[str, str]):
        unknown = sorted(set(overrides) - set(recipe.variables))
        if unknown:
            names = ", ".join(recipe.variables) or "none"
            raise RecipeError(
                f"{recipe.path}: --set {unknown[0]}: not a variable of the recipe (one of {names})"
            )
        self.recipe = recipe
        self._raw: dict[str, tuple[str, Value]] = {}
        for name, var in recipe.variables.items():
            if name in overrides:
                where, text = f"--set {name}", overrides[name]
            elif var.env and environ.get(var.env):
                where, text = f"${var.env}", environ[var.env]
            else:
                self._raw[name] = (f"variables.{name}", var.default)
                continue
            # a list given on the command line or in the environment is words, as in a shell
            self._raw[name] = (where, tuple(shlex.split(text)) if var.is_list else text)
        self._done: dict[str, Value] = {}

    def get(self, name: str, _stack: tuple[str, ...] = ()) -> Value:
        if name in self._done:
            return self._done[name]
        if name in _stack:
            chain = " -> ".join((*_stack[_stack.index(name) :], name))
            raise RecipeError(f"{self.recipe.path}: variables.{name}: refers to itself ({chain})")
        where, raw = self._raw[name]
        stack = (*_stack, name)
        if isinstance(raw, tuple):
            value: Value = tuple(a for item in raw for a in self.expand(item, where, {}, stack))
        else:
            value = self.substitute(raw, where, {}, stack)
        self._done[name] = value
        return value

    def _lookup(self, name: str, where: str, local: Mapping[str, str], stack) -> Value:
        if name in local:
            return local[name]
        if name not in self._raw:
            raise RecipeError(f"{self.recipe.path}: {where}: {{{name}}} is not a variable")
        return self.get(name, stack)

    def substitute(self, text: str, where: str, local: Mapping[str, str] = {}, stack=()) -> str:
        """``text`` with every {name} replaced by its (string) value."""

        def one(match) -> str:
            if match.group(1) is None:  # {{ or }}
                return match.group(0)[0]
            value = self._lookup(match.group(1), where, local, stack)
            if isinstance(value, tuple):
                raise RecipeError(
                    f"{self.recipe.path}: {where}: the list {{{match.group(1)}}} must be an "
                    "argument of its own"
                )
            return value

        return REFERENCE.sub(one, text)

    def expand(self, arg: str, where: str, local: Mapping[str, str] = {}, stack=()) -> list[str]:
        """The arguments ``arg`` stands for: a list variable's items when it is just {list},
        else one string."""
        match = REFERENCE.fullmatch(arg)
        if match and match.group(1) is not None:
            value = self._lookup(match.group(1), where, local, stack)
            if isinstance(value, tuple):
                return list(value)
        return [self.substitute(arg, where, local, stack)]

    def environment(self) -> dict[str, str]:
        """The variables the recipe's commands run with (OMP_NUM_THREADS and the like)."""
        return {k: self.substitute(v, f"env.{k}") for k, v in self.recipe.env.items()}


def _planned(step: str, cmd: Command, where: str, values: Values, local: dict) -> Planned:
    args = [a for arg in cmd.args for a in values.expand(arg, where, local)]
    if cmd.creates is not None:
        creates = values.substitute(cmd.creates, f"{where}.creates", local)
        if Path(creates).exists():
            return Planned(step, cmd.program, tuple(args), skipped=f"{creates} exists")
    if cmd.resume is not None:
        # a started run continues where it stopped; a fresh one may start from earlier weights
        # (a resumed run keeps the weights it started from, so --init would change nothing)
        folder = Path(values.substitute(cmd.resume, f"{where}.resume", local))
        if (folder / RUN_MARKER).is_file():
            args.append("--resume")
        elif cmd.init is not None:
            init = values.substitute(cmd.init, f"{where}.init", local)
            if init:
                args += ["--init", init]
    return Planned(step, cmd.program, tuple(args))


def plan_command(recipe: Recipe, step: str, index: int, values: Values) -> list[Planned]:
    """The command lines of command ``index`` of ``step`` as they would run now (the resume
    choice looks at the run folder at this moment)."""
    cmd = recipe.steps[step].commands[index]
    where = f"steps.{step}.commands[{index}]"
    if cmd.for_each is None:
        return [_planned(step, cmd, where, values, {})]
    loop, over = cmd.for_each
    items = values.get(over)
    return [_planned(step, cmd, where, values, {loop: item}) for item in items]


def check_steps(recipe: Recipe, steps: Sequence[str]) -> None:
    unknown = [s for s in steps if s not in recipe.steps]
    if unknown:
        raise RecipeError(
            f"{recipe.path}: no step '{unknown[0]}' (steps: {', '.join(recipe.steps)})"
        )


def listing(recipe: Recipe, values: Values) -> str:
    """The recipe's steps with their descriptions, then its variables with their values now."""
    lines = [recipe.description, ""] if recipe.description else []
    width = max(len(s) for s in recipe.steps)
    lines += ["steps:"] + [f"  {s.name:<{width}}  {s.description}" for s in recipe.steps.values()]
    lines += ["", "variables (--set NAME=VALUE; environment variable in brackets):"]
    for var in recipe.variables.values():
        value = values.get(var.name)
        shown = shlex.join(value) if isinstance(value, tuple) else value
        env = f" [{var.env}]" if var.env else ""
        lines.append(f"  {var.name}{env} = {shown}" + (f"  ({var.help})" if var.help else ""))
    return "\n".join(lines)


def run_recipe(
    recipe: Recipe,
    steps: Sequence[str],
    overrides: Mapping[str, str] | None = None,
    dry_run: bool = False,
    environ: Mapping[str, str] | None = None,
    out=None,
) -> int:
    """Run ``steps`` of ``recipe`` in order, printing every command line first ('+ ...', or
    '# skipped ...'); ``dry_run`` prints them only. Stops at the first command that fails and
    returns its exit code."""
    out = out or sys.stdout
    environ = os.environ if environ is None else environ
    check_steps(recipe, steps)
    values = Values(recipe, overrides or {}, environ)
    env = values.environment()
    if env:
        print("# environment: " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()),
              file=out, flush=True)  # fmt: skip
    for step in steps:
        print(f"# {step}: {recipe.steps[step].description}", file=out, flush=True)
        for index in range(len(recipe.steps[step].commands)):
            # planned just before it runs: an earlier command may have started the run folder
            for planned in plan_command(recipe, step, index, values):
                if planned.skipped:
                    print(f"# skipped ({planned.skipped}): {planned.shown()}", file=out)
                    continue
                print(f"+ {planned.shown()}", file=out, flush=True)
                if dry_run:
                    continue
                code = subprocess.run(planned.argv(), env={**environ, **env}).returncode
                if code != 0:
                    raise RecipeError(
                        f"{recipe.path}: step {step}: `{planned.shown()}` exited with code {code}"
                    )
    return 0
