"""Recount evaluations by what their lesions lie against (docs/comparison.md, 'Surroundings').

`nstseg evaluate` splits lesions by the soft-tissue share of the ring around them when the
lesion set's lesions.csv records it (make-lesions since 2026-12-03). For evaluations of a set
made before that, make the set again from its seed (the same lesions, byte for byte, now with
the record) and recount each evaluation's lesions.csv against it:

    python experiments/surroundings_table.py NEW_SET/lesions.csv NAME=EVAL_DIR [NAME=EVAL_DIR ...]

prints a Markdown table: detected / lesions >= 10 mm and >= 20 HU (all, then the dark ones) with
the ring at least ``--edge`` soft tissue and below it.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from napari_nstseg.training.evaluate import surround_names
from napari_nstseg.training.targets import TARGET_CONTRAST_HU, TARGET_DIAMETER_MM


def recount(evaluated: list[dict[str, str]], shares: dict[tuple[str, str], float], edge: float):
    """(found, total) of target lesions: all and dark, ring >= edge soft and below."""
    counts = {key: [0, 0] for key in ("soft", "soft dark", "mixed", "mixed dark")}
    for row in evaluated:
        if row["matched"] != "True":
            continue
        if float(row["diameter_mm"]) < TARGET_DIAMETER_MM:
            continue
        if abs(float(row["contrast_hu"])) < TARGET_CONTRAST_HU:
            continue
        key = (row["case"], row["lesion_id"])
        if key not in shares:
            raise SystemExit(f"lesion {key} of the evaluation is not in the lesion table")
        group = "soft" if shares[key] >= edge else "mixed"
        keys = [group] + ([f"{group} dark"] if float(row["contrast_hu"]) < 0 else [])
        for k in keys:
            counts[k][0] += row["detected"] == "True"
            counts[k][1] += 1
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("lesions_csv", type=Path, help="make-lesions lesions.csv with the record")
    p.add_argument("evaluations", nargs="+", metavar="NAME=EVAL_DIR")
    p.add_argument("--edge", type=float, default=0.8, help="soft-tissue share (default 0.8)")
    args = p.parse_args()
    with open(args.lesions_csv, newline="") as f:
        shares = {
            (r["case"], r["lesion_id"]): float(r["surround_soft_fraction"])
            for r in csv.DictReader(f)
        }
    soft, mixed = surround_names(args.edge)
    print(f"| model | {soft} | of them dark | {mixed} | of them dark |")
    print("|---|---:|---:|---:|---:|")
    for item in args.evaluations:
        name, _, folder = item.rpartition("=")
        with open(Path(folder) / "lesions.csv", newline="") as f:
            c = recount(list(csv.DictReader(f)), shares, args.edge)
        cells = [f"{c[k][0]}/{c[k][1]}" for k in ("soft", "soft dark", "mixed", "mixed dark")]
        print(f"| {name or folder} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
