"""Rows of docs/comparison.md's tables for test-split evaluations, without re-packaging.

    python -m napari_nstseg.recipes.comparison_rows "NAME=runs/x/eval_test/evaluation.json" \
        ... [--into docs/comparison.md src/napari_nstseg/weights/MODEL_CARD.md]
    python -m napari_nstseg.recipes.comparison_rows --work W/p2 --variants no-sfm [--tag TAG]

Prints the comparison header and one row per evaluation, then the per-source-region header and
rows, in bundle_weights.py's format, so that a model trained later (an ablation) can be added
to tables bundle_weights.py wrote from evaluations that are no longer at hand. ``--into``
writes them into those files' tables: at the end of each table, in place of any rows of the
same model names (running it again changes nothing). ``--work W2 --variants V...``: the two
rows of each variant trained through the bundled model's phases (the `rows` step of
configs/default/recipe.json), named as the variant registry titles it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_nstseg.recipes.bundle_weights import (
    HEADER,
    REGION_HEADER,
    model_name,
    region_rows,
    row,
    table_span,
    two_phase_rows,
)


def insert_rows(text: str, header: str, rows: list[str], where: str) -> str:
    """``text`` with ``rows`` at the end of the table under ``header``, replacing the rows of
    the same models."""
    lines = text.split("\n")
    span = table_span(lines, header)
    if span is None:
        raise ValueError(f"{where} has no table with the header {header[:60]}...")
    start, end = span
    names = {model_name(r) for r in rows}
    kept = [line for line in lines[start:end] if model_name(line) not in names]
    return "\n".join(lines[:start] + kept + rows + lines[end:])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("evaluations", nargs="*", metavar="NAME=EVALUATION_JSON")
    ap.add_argument("--into", nargs="*", type=Path, default=[], metavar="MARKDOWN",
                    help="write the rows into these files' tables")  # fmt: skip
    ap.add_argument("--work", type=Path, metavar="W2",
                    help="phase-2 work folder of the variants named by --variants")  # fmt: skip
    ap.add_argument("--variants", nargs="+", default=[], metavar="VARIANT")
    ap.add_argument("--tag", default="", help="added to the variants' names, e.g. ', on the fly'")
    ap.add_argument("--save", type=Path, help="also write the printed tables here")
    args = ap.parse_args(argv)
    if bool(args.work) != bool(args.variants):
        ap.error("--work and --variants go together")
    evaluations = [*args.evaluations, *two_phase_rows(args.work, args.variants, args.tag)]
    if not evaluations:
        ap.error("no evaluations: give NAME=EVALUATION_JSON or --work and --variants")
    results = {}
    for item in evaluations:
        name, sep, path = item.partition("=")
        if not sep or not name or not Path(path).is_file():
            ap.error(f"expected NAME=EVALUATION_JSON of an existing file, got {item!r}")
        results[name] = json.loads(Path(path).read_text())
    rows = [row(n, r) for n, r in results.items()]
    regions = [line for n, r in results.items() for line in region_rows(n, r)]
    printed = "\n".join([HEADER, *rows]) + "\n"
    if regions:
        printed += "\n" + "\n".join([REGION_HEADER, *regions]) + "\n"
    print(printed, end="")
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(printed)
    for path in args.into:
        try:
            text = insert_rows(path.read_text(), HEADER, rows, str(path))
            if regions:
                text = insert_rows(text, REGION_HEADER, regions, str(path))
        except (OSError, ValueError) as e:
            ap.error(str(e))
        path.write_text(text)
        print(f"wrote the rows into {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
