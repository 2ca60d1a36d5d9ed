"""Atomic file replacement and file digests: nothing this package saves is ever half-written.

A writer fills a temporary file in the target's own folder (same file system, so the final
``os.replace`` is atomic), the data is flushed to disk, and only then is it moved over the
target. On any failure the temporary file is removed and an existing target is left untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

NEW_FILE_MODE = 0o644


def atomic_write(
    target: str | os.PathLike, write_fn: Callable[[str], Any], tmp_suffix: str = ""
) -> Path:
    """Run ``write_fn(tmp_path)`` on a temporary file beside ``target``, then move it into place.

    ``tmp_suffix`` ends the temporary name, for writers that pick the format from it (nibabel,
    SimpleITK). The file keeps the mode of the file it replaces (new files get 0o644, not
    mkstemp's 0o600). Exceptions from ``write_fn`` or the file system propagate unchanged.
    Returns the absolute target path.
    """
    target = Path(target).expanduser().absolute()
    folder = target.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{tmp_suffix}", dir=folder)
    os.close(fd)
    try:
        write_fn(tmp)
        _fsync(tmp)
        mode = target.stat().st_mode & 0o7777 if target.exists() else NEW_FILE_MODE
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)
    return target


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(file: str) -> None:
    with open(file, "rb") as f:
        os.fsync(f.fileno())


def _fsync_folder(folder: Path) -> None:
    # Makes the rename itself durable on POSIX; folders cannot be opened this way on Windows.
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
