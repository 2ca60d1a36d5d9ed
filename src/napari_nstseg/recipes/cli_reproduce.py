"""`nstseg reproduce RECIPE.json [STEP ...]`: run a checked-in recipe's steps (issue 27)."""

from __future__ import annotations

import argparse
import os


def _key_value(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got '{text}'")
    return name, value


class _IntermixedParser(argparse.ArgumentParser):
    """Steps and options in any order (`reproduce R.json --dry-run train stage2`): plain
    argparse gives the steps only the words before the first option."""

    _mixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._mixing:  # parse_known_intermixed_args calls back in here
            return super().parse_known_args(args, namespace)
        self._mixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._mixing = False


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `reproduce` on the `nstseg` command's subparsers."""
    p = subparsers.add_parser(
        "reproduce",
        help="run steps of a recipe (configs/*/recipe.json): the exact commands behind the "
        "bundled weights and their figures",
        description="Run the named steps of a recipe file in order, printing each command line "
        "before it runs. Every training step resumes: run it again after an interruption.",
    )
    p.add_argument("recipe", help="the recipe file, e.g. configs/sarcoma/recipe.json")
    p.add_argument("steps", nargs="*", metavar="STEP", help="steps to run, in this order")
    p.add_argument("--list", action="store_true", help="the steps and variables, nothing run")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    p.add_argument(
        "--set",
        action="append",
        type=_key_value,
        default=[],
        metavar="NAME=VALUE",
        help="a variable's value (wins over its environment variable and the file); a list "
        "variable takes words, as a shell splits them",
    )
    p.set_defaults(func=_reproduce)
    # the subparsers object makes plain parsers; this one is the same with the steps intermixed
    p.__class__ = _IntermixedParser
    return p


def _reproduce(args: argparse.Namespace) -> int:
    from .runner import Values, check_steps, listing, run_recipe
    from .schema import load_recipe

    recipe = load_recipe(args.recipe)
    overrides = dict(args.set)
    if args.list or not args.steps:
        print(listing(recipe, Values(recipe, overrides, os.environ)))
        if not args.list:
            print(f"\nnstseg reproduce: name the steps to run, e.g. {next(iter(recipe.steps))}")
            return 2
        return 0
    check_steps(recipe, args.steps)
    return run_recipe(recipe, args.steps, overrides, dry_run=args.dry_run)
