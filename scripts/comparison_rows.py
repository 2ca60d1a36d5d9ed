#!/usr/bin/env python
"""Rows of docs/comparison.md's tables for test-split evaluations, without re-packaging.

    python scripts/comparison_rows.py "NAME=runs/x/eval_test/evaluation.json" ...

Prints the comparison header and one row per evaluation, then the per-source-region header and
rows, in bundle_weights.py's format, so that a model trained later (an ablation) can be added
to tables bundle_weights.py wrote from evaluations that are no longer at hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bundle_weights import HEADER, REGION_HEADER, region_rows, row  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("evaluations", nargs="+", metavar="NAME=EVALUATION_JSON")
    args = ap.parse_args(argv)
    results = {}
    for item in args.evaluations:
        name, sep, path = item.partition("=")
        if not sep or not name or not Path(path).is_file():
            ap.error(f"expected NAME=EVALUATION_JSON of an existing file, got {item!r}")
        results[name] = json.loads(Path(path).read_text())
    print("\n".join([HEADER, *(row(n, r) for n, r in results.items())]))
    regions = [line for n, r in results.items() for line in region_rows(n, r)]
    if regions:
        print("\n" + "\n".join([REGION_HEADER, *regions]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
