"""The one atomic writer every saved file goes through: all or nothing, readable modes."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest
import torch

from napari_nstseg.io.atomic import atomic_write, file_sha256
from napari_nstseg.models.checkpoint import save_checkpoint


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")

    def half_then_fail(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_new_files_are_readable_by_others_and_replaced_files_keep_their_mode(tmp_path):
    new = atomic_write(tmp_path / "new.txt", lambda tmp: open(tmp, "w").write("a"))
    assert new == (tmp_path / "new.txt").absolute() and new.read_text() == "a"
    assert _mode(new) == 0o644  # not mkstemp's owner-only 0o600
    kept = tmp_path / "kept.txt"
    kept.write_text("x")
    os.chmod(kept, 0o640)
    atomic_write(kept, lambda tmp: open(tmp, "w").write("y"))
    assert kept.read_text() == "y" and _mode(kept) == 0o640


def test_checkpoint_files_are_written_through_it(tmp_path):
    tensors, description = save_checkpoint(
        tmp_path / "ckpt", torch.nn.Linear(2, 1), {}, {}, {"data": "none"}, kind="segmentation"
    )
    assert _mode(tensors) == 0o644 and _mode(description) == 0o644
    assert file_sha256(tensors) == hashlib.sha256(tensors.read_bytes()).hexdigest()
