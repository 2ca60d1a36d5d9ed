"""Atomic file replacement and file digests: nothing this package saves is ever half-written.

A writer fills a temporary file in the target's own folder (same file system, so the final
``os.replace`` is atomic), the data is flushed to disk, and only then is it moved over the
target. On any failure the temporary file is removed and an existing target is left untouched.
``AtomicBatch`` does the same for several files that belong together (a mask, its maps and the
report): all are written to temporaries first and moved into place only when every one is
complete, so a failure or an interrupt leaves either all of them or none.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import MaskWriteError
from .outputs import is_read_only

NEW_FILE_MODE = 0o644
# Ctrl+C and `kill` are held back while the finished files are moved into place (microseconds),
# so an interrupted run never leaves some outputs new and others old.
_DEFERRED = (signal.SIGINT, signal.SIGTERM)


@dataclass
class _Staged:
    tmp: str
    target: Path


@dataclass
class AtomicBatch:
    """Files written to temporaries now and moved over their targets together by ``commit``.

    Use as a context manager: leaving it without ``commit`` (an exception, Ctrl+C, SIGTERM
    turned into an exception) removes every temporary and leaves the targets as they were.
    """

    staged: list[_Staged] = field(default_factory=list)
    committed: bool = False

    def __enter__(self) -> AtomicBatch:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.committed:
            self.discard()

    def add(
        self, target: str | os.PathLike, write_fn: Callable[[str], Any], tmp_suffix: str = ""
    ) -> Path:
        """Run ``write_fn(tmp_path)`` on a temporary file beside ``target`` and flush it.

        ``tmp_suffix`` ends the temporary name, for writers that pick the format from it
        (nibabel, SimpleITK). Returns the absolute target path.
        """
        target = Path(target).expanduser().absolute()
        if is_read_only(target):
            # os.replace needs only the folder's permission: without this check a file the
            # user made read-only would be replaced silently.
            raise MaskWriteError(
                target, "the file is read-only", "choose another name or make it writable first"
            )
        fd, tmp = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=f".tmp{tmp_suffix}", dir=target.parent
        )
        os.close(fd)
        self.staged.append(_Staged(tmp, target))
        write_fn(tmp)
        _fsync(tmp)
        mode = target.stat().st_mode & 0o7777 if target.exists() else NEW_FILE_MODE
        os.chmod(tmp, mode)
        return target

    def commit(self) -> list[Path]:
        """Move every staged file over its target; returns the targets in the order added."""
        with _signals_deferred():
            for item in self.staged:
                os.replace(item.tmp, item.target)
            self.committed = True
        for folder in {item.target.parent for item in self.staged}:
            _fsync_folder(folder)
        return [item.target for item in self.staged]

    def discard(self) -> None:
        """Remove the temporaries not yet moved into place."""
        for item in self.staged:
            with contextlib.suppress(OSError):
                os.unlink(item.tmp)
        self.staged.clear()


def atomic_write(
    target: str | os.PathLike, write_fn: Callable[[str], Any], tmp_suffix: str = ""
) -> Path:
    """Run ``write_fn(tmp_path)`` on a temporary file beside ``target``, then move it into place.

    ``tmp_suffix`` ends the temporary name, for writers that pick the format from it (nibabel,
    SimpleITK). The file keeps the mode of the file it replaces (new files get 0o644, not
    mkstemp's 0o600); a read-only target is refused (``MaskWriteError``). Exceptions from
    ``write_fn`` or the file system propagate unchanged. Returns the absolute target path.
    """
    with AtomicBatch() as batch:
        path = batch.add(target, write_fn, tmp_suffix)
        batch.commit()
    return path


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold Ctrl+C and SIGTERM until the block ends, then deliver them as they came."""
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be set from the main thread
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda s, _f: caught.append(s)) for sig in _DEFERRED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        for sig in caught:
            signal.raise_signal(sig)


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
