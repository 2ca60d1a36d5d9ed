"""The rule for every file a command writes, checked before any work: never over an input, only
where it can be written, only with room for it. Each refusal is one sentence naming the path."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import MaskWriteError

_WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH


class OutputPathError(MaskWriteError):
    """An output refused before anything was written: nothing at any output path changed."""


@dataclass(frozen=True)
class SpaceCheck:
    """Free space a command wants beyond its estimate (file systems misreport a little, and a
    nearly full disk slows everything down)."""

    margin_bytes: int = 16 << 20


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when two paths name one file: the same inode (hard links, symlinks, bind mounts)
    or, for paths that do not exist yet, the same resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def is_read_only(path: str | os.PathLike) -> bool:
    """True for an existing file the user cannot write, or whose write bits are all off.

    The mode bits are read explicitly because ``os.access`` says yes to root for any file, and
    a file someone made read-only (``chmod a-w``) is meant to stay as it is whoever runs.
    """
    try:
        st = os.stat(path)
    except OSError:
        return False
    return not os.access(path, os.W_OK) or not st.st_mode & _WRITE_BITS


def nearest_existing(path: Path) -> Path:
    """``path`` or its closest existing parent folder (where a new file or folder would go)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _is_input(path: Path, inputs: Iterable[Path]) -> Path | None:
    for source in inputs:
        if same_file(path, source):
            return source
        # A file inside an input folder (a DICOM series) belongs to that input.
        if source.is_dir() and path.exists() and path.resolve().is_relative_to(source.resolve()):
            return source
    return None


def check_output(path: str | os.PathLike, inputs: Mapping[str, str | os.PathLike] = {}) -> Path:
    """Refuse (``OutputPathError``) an output that is an input, a folder, read-only, or in a
    folder that cannot be made or written. ``inputs``: what each input is ('the CT scan') ->
    its path. Returns the absolute path; nothing is created."""
    target = Path(path).expanduser().absolute()
    named = {Path(p).expanduser().absolute(): what for what, p in inputs.items()}
    clash = _is_input(target, named)
    if clash is not None:
        raise OutputPathError(
            target,
            f"it is {named[clash]} this command reads",
            "choose another output name (inputs are never written over)",
        )
    if target.is_dir():
        raise OutputPathError(target, "a folder of that name exists", "choose another file name")
    if is_read_only(target):
        raise OutputPathError(
            target, "the file is read-only", "choose another name or make it writable first"
        )
    check_folder(target.parent, for_file=target)
    return target


def check_folder(folder: str | os.PathLike, for_file: str | os.PathLike | None = None) -> None:
    """Refuse a folder that is a file, sits under a file, or cannot be written or created."""
    folder = Path(folder).expanduser().absolute()
    what = Path(for_file) if for_file is not None else folder
    base = nearest_existing(folder)
    if not base.is_dir():
        raise OutputPathError(
            what, f"{base} is a file, not a folder", "choose an output folder that is a folder"
        )
    st = base.stat()
    if not os.access(base, os.W_OK | os.X_OK) or not st.st_mode & _WRITE_BITS:
        where = "folder" if base == folder else f"folder {base}, where {folder} would be made,"
        raise OutputPathError(
            what,
            f"the {where} is not writable",
            "choose another folder or fix its permissions",
        )


def check_results_folder(
    folder: str | os.PathLike,
    writes: Iterable[str],
    inputs: Mapping[str, str | os.PathLike | None],
) -> Path:
    """Refuse a results folder a command would write ``writes`` (file names) into when it is,
    or lies inside, an input folder (a data set is never written into), when one of those files
    would be an input file, or when the folder cannot be written. ``inputs``: what -> path
    (None: not given)."""
    target = Path(folder).expanduser().absolute()
    check_folder(target)
    for what, path in inputs.items():
        if path is None:
            continue
        source = Path(path).expanduser().absolute()
        if source.is_dir() and (
            same_file(target, source) or target.resolve().is_relative_to(source.resolve())
        ):
            raise OutputPathError(
                target, f"it is inside {what} ({source})", "choose a results folder outside it"
            )
        for name in writes:
            if same_file(target / name, source):
                raise OutputPathError(
                    target / name,
                    f"it is {what} this command reads",
                    "choose another results folder (inputs are never written over)",
                )
    return target


def check_distinct(paths: Iterable[str | os.PathLike]) -> None:
    """Refuse two outputs at one path (one would silently replace the other)."""
    seen: list[Path] = []
    for p in paths:
        path = Path(p).expanduser().absolute()
        for other in seen:
            if same_file(path, other):
                raise OutputPathError(
                    path, f"two outputs of this command would be written to {other}",
                    "give each output its own name",
                )  # fmt: skip
        seen.append(path)


def check_space(needs: Mapping[str | os.PathLike, int], config: SpaceCheck = SpaceCheck()) -> None:
    """Refuse when a file system has less free space than the outputs on it need (bytes by
    output path, an estimate), plus a margin."""
    per_device: dict[int, tuple[Path, int]] = {}
    for path, size in needs.items():
        base = nearest_existing(Path(path).expanduser())
        device = base.stat().st_dev
        first, total = per_device.get(device, (base, 0))
        per_device[device] = (first, total + int(size))
    for base, total in per_device.values():
        free = shutil.disk_usage(base).free
        if free < total + config.margin_bytes:
            raise OutputPathError(
                base,
                f"only {_size(free)} free there and the outputs need about {_size(total)}",
                "free some space or choose another folder",
            )


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
