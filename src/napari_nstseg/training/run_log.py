"""The run log: one CSV row per epoch (rewritten atomically, truncated on resume) and the
provenance a checkpoint records of its run (git commit, dataset)."""

from __future__ import annotations

import csv
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from napari_nstseg.io.atomic import atomic_write

# A run folder's settings, read by --resume (and by `nstseg train --help`'s parser, which
# must not import torch).
CONFIG_NAME = "train_config.json"

LOG_NAME = "log.csv"


def git_commit() -> dict[str, Any] | None:
    """The source checkout's commit (and whether it had local changes), if it is a git checkout."""
    root = Path(__file__).resolve().parents[3]

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        status = git("status", "--porcelain")
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head, "dirty": bool(status)} if head else None


def dataset_info(folder: str, counts: dict[str, int]) -> dict[str, Any]:
    root = Path(folder).resolve()
    info: dict[str, Any] = {"folder": str(root), "cases": counts}
    ds = root / "dataset.json" if root.is_dir() else None
    if ds is not None and ds.is_file():
        try:
            meta = json.loads(ds.read_text())
            info["dataset_json"] = str(ds)
            info["name"] = meta.get("name")
            info["seed"] = meta.get("seed")
        except (OSError, json.JSONDecodeError):
            info["dataset_json"] = str(ds)
    return info


class CsvLog:
    """Per-epoch CSV log. Columns come from the first row (or the existing file); on resume,
    rows past the resumed epoch are dropped because they are about to be redone."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> tuple[list[str], list[dict[str, str]]]:
        with open(self.path, newline="") as f:
            reader = csv.DictReader(f)
            return list(reader.fieldnames or []), list(reader)

    def truncate_after(self, epoch: int) -> None:
        if not self.path.is_file():
            return
        columns, rows = self._read()
        self._write(columns, [r for r in rows if int(r["epoch"]) <= epoch])

    def _write(self, columns: list[str], rows: list[dict[str, Any]]) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)

        atomic_write(self.path, write)

    def append(self, row: dict[str, Any]) -> None:
        formatted = {k: _fmt(v) for k, v in row.items()}
        if not self.path.is_file():
            self._write(list(row), [formatted])
            return
        columns, rows = self._read()
        if not columns:
            columns = list(row)
        columns += [k for k in row if k not in columns]
        self._write(columns, [*rows, formatted])


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def iter_epoch_rows(out: str | Path) -> Iterator[dict[str, str]]:
    """Rows of a run's CSV log."""
    path = Path(out) / LOG_NAME
    with open(path, newline="") as f:
        yield from csv.DictReader(f)
