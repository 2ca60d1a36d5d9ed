"""The recipe file (configs/*/recipe.json) as frozen dataclasses, read and checked by
load_recipe: every mistake is one line naming the file and the key (issue 27)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Names a recipe may give variables and steps: {name} in a command must not be mistaken for
# anything else, and a step name is typed on the command line.
VARIABLE_NAME = re.compile(r"[a-z_][a-z0-9_]*\Z")
STEP_NAME = re.compile(r"[a-z0-9][a-z0-9-]*\Z")
# A {name} reference; {{ and }} are literal braces.
REFERENCE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")
PROGRAMS = ("nstseg", "python")


class RecipeError(ValueError):
    """A recipe file that cannot be run: the message is one line, file and key first."""


@dataclass(frozen=True)
class Variable:
    """A value commands refer to as {name}: a string, or a list that an argument consisting of
    just {name} expands into; --set NAME=VALUE, then the environment variable ``env`` (when set
    and not empty), then ``default``."""

    name: str
    default: str | tuple[str, ...]
    env: str | None = None
    help: str = ""

    @property
    def is_list(self) -> bool:
        return isinstance(self.default, tuple)


@dataclass(frozen=True)
class Command:
    """One program run: `nstseg ARGS` or `python ARGS` (this interpreter). ``resume``: a run
    folder; --resume is added when it holds train_config.json, else --init ``init`` (when not
    empty). ``creates``: the command is skipped when that file exists. ``for_each``: (name,
    list variable): the command once per item, the item as {name}."""

    program: str
    args: tuple[str, ...]
    resume: str | None = None
    init: str | None = None
    creates: str | None = None
    for_each: tuple[str, str] | None = None


@dataclass(frozen=True)
class Step:
    """A named step: its one-line description and its commands, run in order."""

    name: str
    description: str
    commands: tuple[Command, ...]


@dataclass(frozen=True)
class Recipe:
    """A recipe file: what it makes, its variables, the environment its commands run in (values
    may refer to variables) and its steps in the order `nstseg reproduce` runs them."""

    path: Path
    description: str
    variables: dict[str, Variable]
    env: dict[str, str]
    steps: dict[str, Step]


def _fail(path: Path, key: str, what: str) -> RecipeError:
    return RecipeError(f"{path}: {key}: {what}")


def _object(path: Path, key: str, value: Any, allowed: set[str], required: set[str]) -> dict:
    if not isinstance(value, dict):
        raise _fail(path, key, f"expected an object, got {type(value).__name__}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        expected = ", ".join(sorted(allowed))
        raise _fail(path, f"{key}.{unknown[0]}", f"unknown key (expected one of {expected})")
    missing = sorted(required - set(value))
    if missing:
        raise _fail(path, key, f"'{missing[0]}' is missing")
    return value


def _string(path: Path, key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _fail(path, key, f"expected a string, got {json.dumps(value)}")
    return value


def _strings(path: Path, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _fail(path, key, f"expected a list of strings, got {type(value).__name__}")
    return tuple(_string(path, f"{key}[{i}]", v) for i, v in enumerate(value))


def references(text: str) -> list[str]:
    """The variable names ``text`` refers to, in order."""
    return [m.group(1) for m in REFERENCE.finditer(text) if m.group(1) is not None]


def _variable(path: Path, name: str, value: Any) -> Variable:
    key = f"variables.{name}"
    if not VARIABLE_NAME.match(name):
        raise _fail(path, key, "a variable name is lower case letters, digits and _")
    if not isinstance(value, dict):  # the short form: just the default
        value = {"default": value}
    value = _object(path, key, value, {"default", "env", "help"}, {"default"})
    default = value["default"]
    if isinstance(default, list):
        default = _strings(path, f"{key}.default", default)
    else:
        default = _string(path, f"{key}.default", default)
    env = value.get("env")
    if env is not None and not re.match(r"[A-Z_][A-Z0-9_]*\Z", _string(path, f"{key}.env", env)):
        raise _fail(path, f"{key}.env", f"'{env}' is not an environment variable name")
    return Variable(name, default, env, _string(path, f"{key}.help", value.get("help", "")))


def _command(path: Path, key: str, value: Any) -> Command:
    allowed = {*PROGRAMS, "resume", "init", "creates", "for_each"}
    value = _object(path, key, value, allowed, set())
    programs = [p for p in PROGRAMS if p in value]
    if len(programs) != 1:
        raise _fail(path, key, "needs one of 'nstseg' or 'python' (its argument list)")
    program = programs[0]
    args = _strings(path, f"{key}.{program}", value[program])
    if not args:
        raise _fail(path, f"{key}.{program}", "the argument list is empty")
    if "init" in value and "resume" not in value:
        raise _fail(path, f"{key}.init", "--init is for a fresh run: give 'resume', its folder")
    for_each = None
    if "for_each" in value:
        keys = {"variable", "in"}
        loop = _object(path, f"{key}.for_each", value["for_each"], keys, keys)
        for_each = (_string(path, f"{key}.for_each.variable", loop["variable"]),
                    _string(path, f"{key}.for_each.in", loop["in"]))  # fmt: skip
        if not VARIABLE_NAME.match(for_each[0]):
            raise _fail(path, f"{key}.for_each.variable", "lower case letters, digits and _")
    fields = ("resume", "init", "creates")
    optional = {k: _string(path, f"{key}.{k}", value[k]) for k in fields if k in value}
    return Command(program, args, for_each=for_each, **optional)


def _check_references(recipe: Recipe) -> None:
    """Every {name} is a variable (or the command's loop variable); a list is looped over or
    expanded whole, never pasted into a longer string."""
    variables = recipe.variables

    def check(key: str, text: str, local: dict[str, bool]) -> None:
        for name in references(text):
            if name not in variables and name not in local:
                raise _fail(recipe.path, key, f"{{{name}}} is not a variable of the recipe")
            is_list = local[name] if name in local else variables[name].is_list
            if is_list and text != f"{{{name}}}":
                raise _fail(recipe.path, key, f"the list {{{name}}} must be an argument of its own")

    for var in variables.values():
        items = var.default if var.is_list else (var.default,)
        for i, item in enumerate(items):
            check(f"variables.{var.name}.default" + (f"[{i}]" if var.is_list else ""), item, {})
    for name, value in recipe.env.items():
        check(f"env.{name}", value, {})
    for step in recipe.steps.values():
        for i, cmd in enumerate(step.commands):
            key = f"steps.{step.name}.commands[{i}]"
            local: dict[str, bool] = {}
            if cmd.for_each:
                loop, over = cmd.for_each
                if over not in variables or not variables[over].is_list:
                    what = f"'{over}' is not a list variable"
                    raise _fail(recipe.path, f"{key}.for_each.in", what)
                local[loop] = False
            for j, arg in enumerate(cmd.args):
                check(f"{key}.{cmd.program}[{j}]", arg, local)
            for field in ("resume", "init", "creates"):
                if getattr(cmd, field) is not None:
                    check(f"{key}.{field}", getattr(cmd, field), local)


def _keys(top: dict, key: str) -> set:
    value = top.get(key)
    return set(value) if isinstance(value, dict) else set()


def load_recipe(path: str | Path) -> Recipe:
    """The recipe in ``path``, checked; RecipeError (one line) on any mistake."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise RecipeError(f"{path}: line {exc.lineno}: not JSON ({exc.msg})") from None
    top = _object(path, "recipe", raw, {"description", "variables", "env", "steps"}, {"steps"})
    # names are checked where they are read: any key is allowed here
    variables = _object(path, "variables", top.get("variables", {}), _keys(top, "variables"), set())
    env = _object(path, "env", top.get("env", {}), _keys(top, "env"), set())
    steps = _object(path, "steps", top["steps"], _keys(top, "steps"), set())
    if not steps:
        raise _fail(path, "steps", "the recipe has no steps")
    parsed: dict[str, Step] = {}
    for name, value in steps.items():
        key = f"steps.{name}"
        if not STEP_NAME.match(name):
            raise _fail(path, key, "a step name is lower case letters, digits and -")
        value = _object(path, key, value, {"description", "commands"}, {"description", "commands"})
        description = _string(path, f"{key}.description", value["description"])
        if "\n" in description or not description.strip():
            raise _fail(path, f"{key}.description", "one line, not empty")
        commands = value["commands"]
        if not isinstance(commands, list) or not commands:
            raise _fail(path, f"{key}.commands", "expected a list of one or more commands")
        parsed[name] = Step(name, description, tuple(
            _command(path, f"{key}.commands[{i}]", c) for i, c in enumerate(commands)
        ))  # fmt: skip
    recipe = Recipe(
        path=path,
        description=_string(path, "description", top.get("description", "")),
        variables={n: _variable(path, n, v) for n, v in variables.items()},
        env={n: _string(path, f"env.{n}", v) for n, v in env.items()},
        steps=parsed,
    )
    _check_references(recipe)
    return recipe
