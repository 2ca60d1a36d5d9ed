"""The output rule every writing command follows: never over an input, read-only files and
folders refused (by their mode bits, so the tests mean the same as root), room checked first,
and several files written all or none."""

from __future__ import annotations

import os
import signal
from collections import namedtuple

import pytest

from napari_nstseg.io import outputs
from napari_nstseg.io.atomic import AtomicBatch, atomic_write
from napari_nstseg.io.errors import MaskWriteError
from napari_nstseg.io.outputs import (
    OutputPathError,
    check_distinct,
    check_output,
    check_space,
    is_read_only,
    same_file,
)


def one_sentence(error: Exception, path) -> None:
    message = str(error)
    assert str(path) in message and "\n" not in message and message.endswith(".")


@pytest.fixture
def ct(tmp_path):
    path = tmp_path / "scan.nii.gz"
    path.write_bytes(b"the radiologist's scan")
    return path


def test_an_input_is_recognised_by_path_link_and_inode(tmp_path, ct, monkeypatch):
    hard = tmp_path / "hard.nii.gz"
    os.link(ct, hard)
    soft = tmp_path / "soft.nii.gz"
    soft.symlink_to(ct)
    monkeypatch.chdir(tmp_path)
    for alias in (ct, "scan.nii.gz", f"../{tmp_path.name}/scan.nii.gz", hard, soft):
        assert same_file(alias, ct)
        with pytest.raises(OutputPathError, match="it is the CT scan this command reads") as e:
            check_output(alias, {"the CT scan": ct})
        one_sentence(e.value, tmp_path)
    assert not same_file(tmp_path / "other.nii.gz", ct)
    assert check_output(tmp_path / "mask.nii.gz", {"the CT scan": ct}) == tmp_path / "mask.nii.gz"
    assert ct.read_bytes() == b"the radiologist's scan"


def test_a_file_inside_an_input_folder_belongs_to_it(tmp_path):
    series = tmp_path / "dicom"
    series.mkdir()
    (series / "IM0001").write_bytes(b"DICM")
    with pytest.raises(OutputPathError, match="the DICOM series"):
        check_output(series / "IM0001", {"the DICOM series": series})
    check_output(series / "new_mask.nii.gz", {"the DICOM series": series})  # nothing lost


def test_read_only_means_the_mode_bits_even_for_root(tmp_path):
    path = tmp_path / "mask.nii.gz"
    path.write_bytes(b"x")
    assert not is_read_only(path) and not is_read_only(tmp_path / "absent")
    path.chmod(0o444)
    assert is_read_only(path)
    with pytest.raises(OutputPathError, match="the file is read-only") as e:
        check_output(path)
    one_sentence(e.value, path)
    path.chmod(0o644)


def test_folders_are_checked_before_they_are_made(tmp_path):
    check_output(tmp_path / "new" / "deeper" / "mask.nii.gz")
    assert not (tmp_path / "new").exists()  # checking creates nothing
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OutputPathError, match="is a file, not a folder"):
        check_output(blocker / "sub" / "mask.nii.gz")
    with pytest.raises(OutputPathError, match="a folder of that name exists"):
        check_output(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(OutputPathError, match="folder .* is not writable") as e:
            check_output(locked / "maps" / "m.nii.gz")
        one_sentence(e.value, locked / "maps" / "m.nii.gz")
    finally:
        locked.chmod(0o755)


def test_two_outputs_on_one_path_are_refused(tmp_path):
    check_distinct([tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"])
    with pytest.raises(OutputPathError, match="two outputs"):
        check_distinct([tmp_path / "a.nii.gz", tmp_path / "x" / ".." / "a.nii.gz"])


Usage = namedtuple("Usage", "total used free")


def test_a_full_disk_is_refused_with_the_sizes(tmp_path, monkeypatch):
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda _p: Usage(10**9, 10**9, 5_000_000))
    with pytest.raises(OutputPathError, match=r"only 5\.0 MB free there .* about 30\.0 MB") as e:
        check_space({tmp_path / "a" / "m.nii.gz": 10_000_000, tmp_path / "r.json": 20_000_000})
    one_sentence(e.value, tmp_path)
    check_space({tmp_path / "m.nii.gz": 1000}, outputs.SpaceCheck(margin_bytes=0))


def test_a_batch_writes_all_or_none(tmp_path):
    old = tmp_path / "mask.nii.gz"
    old.write_text("old mask")

    def fail(_tmp):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"), AtomicBatch() as batch:
        batch.add(old, lambda tmp: open(tmp, "w").write("new mask"))
        batch.add(tmp_path / "map.nii.gz", fail)
        batch.commit()
    assert old.read_text() == "old mask"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz"]

    with AtomicBatch() as batch:
        batch.add(old, lambda tmp: open(tmp, "w").write("new mask"))
        batch.add(tmp_path / "map.nii.gz", lambda tmp: open(tmp, "w").write("map"))
        assert old.read_text() == "old mask"  # staged, not yet in place
        batch.commit()
    assert old.read_text() == "new mask" and (tmp_path / "map.nii.gz").read_text() == "map"


def test_an_interrupt_while_moving_files_into_place_waits_for_the_last_one(tmp_path, monkeypatch):
    """SIGTERM arriving during commit is held until every file is in place."""
    got: list[int] = []
    sent: list[str] = []
    previous = signal.signal(signal.SIGTERM, lambda s, _f: got.append(s))
    real_replace = os.replace

    def replace_and_signal(src, dst):
        real_replace(src, dst)
        if not sent:
            sent.append(str(dst))
            os.kill(os.getpid(), signal.SIGTERM)
        assert not got  # not delivered while files are moved

    try:
        with AtomicBatch() as batch:
            for name in ("a", "b", "c"):
                batch.add(tmp_path / name, lambda tmp: open(tmp, "w").write("x"))
            monkeypatch.setattr(os, "replace", replace_and_signal)
            batch.commit()
            monkeypatch.undo()
        assert got == [signal.SIGTERM] and sent == [str(tmp_path / "a")]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_atomic_write_refuses_a_read_only_target(tmp_path):
    path = tmp_path / "best.json"
    path.write_text("{}")
    path.chmod(0o444)
    try:
        with pytest.raises(MaskWriteError, match="read-only"):
            atomic_write(path, lambda tmp: open(tmp, "w").write("new"))
        assert path.read_text() == "{}"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json"]
    finally:
        path.chmod(0o644)
