"""What make-lesions reads beside each source scan: its organ label map (issue 26; renamed to
TotalSegmentator ids when the map has its own, as planning structures do) and an excluded region
that is never tumour-free (a real, unlabelled tumour, data README: no lesion placed there, no
crop without lesion drawn from it). Given on the command line as ``SCAN=LABELS[:ID=TSID,...]``
and ``SCAN=MASK[:LABELS]``, and recorded in dataset.json for training on the fly."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_IDS = re.compile(r"\d+(,\d+)*\Z")
_RENAME = re.compile(r"\d+=\d+(,\d+=\d+)*\Z")


@dataclass(frozen=True)
class OrganSource:
    """A scan's organ label map; ``ids``: its own label -> TotalSegmentator id, only these
    kept (None: the map holds TotalSegmentator ids already, all kept)."""

    path: Path
    ids: dict[int, int] | None = None


@dataclass(frozen=True)
class ExcludeSource:
    """A scan's region never treated as tumour-free: the voxels of ``path`` with one of
    ``labels`` (None: every voxel above 0)."""

    path: Path
    labels: tuple[int, ...] | None = None


def _split(text: str, flag: str, form: str) -> tuple[str, str, str]:
    scan, sep, rest = text.partition("=")
    if not sep or not scan or not rest:
        raise ValueError(f"{flag} expects {form}, got {text!r}")
    path, colon, tail = rest.rpartition(":")
    if not colon or not path:  # no suffix (or a path with a colon and none)
        return scan, rest, ""
    return scan, path, tail


def parse_organ_spec(text: str) -> tuple[Path, OrganSource]:
    """``SCAN=LABELS`` or ``SCAN=LABELS:5=6,1=18`` (the map's 5 is TotalSegmentator's 6, ...)."""
    form = "SCAN=LABELS[:ID=TSID,...]"
    scan, path, tail = _split(text, "--organ-labels", form)
    if tail and not _RENAME.match(tail):
        if Path(path).exists() or "=" in tail:  # the file is there: the suffix is wrong
            raise ValueError(
                f"--organ-labels {text!r}: after ':' give the map's ids as ID=TSID pairs "
                "(e.g. 5=6,1=18: its 5 is TotalSegmentator's stomach, 6)"
            )
        path, tail = f"{path}:{tail}", ""  # a colon in the file name
    ids = None
    if tail:
        ids = {int(a): int(b) for a, b in (pair.split("=") for pair in tail.split(","))}
        if 0 in ids or 0 in ids.values():
            raise ValueError(f"--organ-labels {text!r}: 0 is the background, not an organ id")
    return Path(scan), OrganSource(Path(path), ids)


def parse_exclude_spec(text: str) -> tuple[Path, ExcludeSource]:
    """``SCAN=MASK`` (every voxel above 0) or ``SCAN=MASK:4`` / ``SCAN=MASK:4,6``."""
    scan, path, tail = _split(text, "--exclude", "SCAN=MASK[:LABELS]")
    if tail and not _IDS.match(tail):
        if Path(path).exists():  # the file is there: the suffix is wrong
            raise ValueError(
                f"--exclude {text!r}: after ':' give label ids separated by commas (e.g. 4,6)"
            )
        path, tail = f"{path}:{tail}", ""
    labels = tuple(int(v) for v in tail.split(",")) if tail else None
    if labels is not None and 0 in labels:
        raise ValueError(f"--exclude {text!r}: label 0 is the background, not a region")
    return Path(scan), ExcludeSource(Path(path), labels)


def read_organs(source: OrganSource, geometry) -> np.ndarray:
    """The organ label map on the scan's grid, renamed to TotalSegmentator ids."""
    from napari_nstseg.io.readers import read_mask

    data = read_mask(source.path, like=geometry)
    if source.ids is None:
        return data
    _require_labels(source.path, data, source.ids, "organ label {}")
    out = np.zeros(data.shape, np.uint8)
    for own, ts in source.ids.items():
        out[data == own] = ts
    return out


def read_exclusion(source: ExcludeSource, geometry) -> np.ndarray:
    """The excluded region (bool) on the scan's grid; an empty one or an absent label is an
    error naming the file."""
    from napari_nstseg.io.readers import read_mask

    data = read_mask(source.path, like=geometry)
    if source.labels is None:
        region = data > 0
        if not region.any():
            raise ValueError(f"{source.path}: the exclusion mask is empty")
        return region
    _require_labels(source.path, data, source.labels, "label {} to exclude")
    return np.isin(data, source.labels)


def _require_labels(path: Path, data: np.ndarray, wanted, what: str) -> None:
    """A one-line error naming the file when a wanted label has no voxel in ``data``; ``what``
    words the missing ids ("organ label {}")."""
    missing = [v for v in wanted if not np.any(data == v)]
    if missing:
        raise ValueError(
            f"{path}: no voxel has {what.format(', '.join(map(str, missing)))} "
            f"(labels present: {_present(data)})"
        )


def _present(data: np.ndarray) -> str:
    values = sorted(set(np.unique(data).tolist()) - {0})
    return ", ".join(map(str, values[:20])) or "none"


def record(organs: dict[Path, OrganSource], excludes: dict[Path, ExcludeSource]) -> dict:
    """dataset.json's entries for these (absolute paths, keyed by the scan's)."""
    return {
        "organ_labels": {str(k): str(v.path.resolve()) for k, v in organs.items()},
        "organ_label_ids": {
            str(k): {str(a): b for a, b in v.ids.items()} for k, v in organs.items() if v.ids
        },
        "exclusions": {
            str(k): {"mask": str(v.path.resolve()), "labels": list(v.labels or []) or None}
            for k, v in excludes.items()
        },
    }


def from_record(meta: dict[str, Any]) -> tuple[dict[str, OrganSource], dict[str, ExcludeSource]]:
    """The organ maps and exclusions a dataset.json records, keyed by the scan's path."""
    ids = meta.get("organ_label_ids") or {}
    organs = {
        scan: OrganSource(
            Path(path), {int(a): int(b) for a, b in ids[scan].items()} if scan in ids else None
        )
        for scan, path in (meta.get("organ_labels") or {}).items()
    }
    excludes = {
        scan: ExcludeSource(Path(e["mask"]), tuple(e["labels"]) if e.get("labels") else None)
        for scan, e in (meta.get("exclusions") or {}).items()
    }
    return organs, excludes
