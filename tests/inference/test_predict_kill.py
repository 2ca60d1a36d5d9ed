"""Killing `nstseg predict` at any moment leaves no partial file at its output paths: while the
model runs (SIGKILL, SIGTERM) and while the outputs are written (a process that kills itself
between two files)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def job(tmp_path, checkpoint_dir, make_ct, shape):
    """A scan of ``shape`` and a `predict` command line writing every kind of output."""
    ct = tmp_path / "scan.nii.gz"
    hu = make_ct(shape)
    nib.save(nib.Nifti1Image(np.transpose(hu, (2, 1, 0)).astype(np.int16), np.eye(4)), ct)
    out = tmp_path / "out"
    argv = ["predict", str(ct), str(out / "mask.nii.gz"), "--weights",
            str(checkpoint_dir / "seg.json"), "--device", "cpu", "--batch-size", "1",
            "--maps", str(out / "maps"), "--report", str(out / "report.json"),
            "--lesion-map", str(out / "lesions.nii.gz")]  # fmt: skip
    return argv, out


def start(argv, prelude: str = "") -> subprocess.Popen:
    # A job started in the background of a non-interactive shell (as CI may start the suite)
    # inherits SIGINT ignored, and Python then installs no Ctrl+C handler: give it a terminal's.
    ctrl_c = "import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)"
    script = (
        f"{ctrl_c}\n{prelude}\nimport sys\nfrom napari_nstseg.cli import main\n"
        f"sys.exit(main({argv!r}))"
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", script],
        stderr=subprocess.PIPE,
        encoding="utf-8",
        errors="replace",
        env=env,
    )


def wait_for(proc: subprocess.Popen, text: str, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stderr.readline()
        if text in line:
            return
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"the run never printed {text!r}")


def files_under(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# However fast the machine, the model is still at work when the signal comes: each batch of
# one slice takes at least 0.2 s more.
SLOW_MODEL = """
import time
from napari_nstseg.inference.engine import Segmenter
real_iter = Segmenter.iter_predict
def slow_iter(self, *args, **kwargs):
    for event in real_iter(self, *args, **kwargs):
        time.sleep(0.2)
        yield event
Segmenter.iter_predict = slow_iter
"""
EXIT = {signal.SIGKILL: -signal.SIGKILL, signal.SIGTERM: 143, signal.SIGINT: 130}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_a_kill_while_the_model_runs_leaves_no_output(tmp_path, checkpoint_dir, make_ct, sig):
    argv, out = job(tmp_path, checkpoint_dir, make_ct, (24, 48, 48))
    proc = start(argv, SLOW_MODEL)
    wait_for(proc, "slice(s) of")  # printed just before the first batch
    proc.send_signal(sig)
    # communicate drains stderr while waiting: a child blocked on a full pipe never exits.
    _, rest = proc.communicate(timeout=180)
    code = proc.returncode
    # SIGTERM and Ctrl+C end through the clean-up (exit status 128 + signal), SIGKILL at once
    assert code == EXIT[sig], rest
    assert "Traceback" not in rest
    if sig == signal.SIGINT:
        assert "nstseg predict: interrupted" in rest
    assert files_under(out) == []


# The run kills itself after the second of its outputs is complete in its temporary file.
SELF_KILL = """
import os, signal
from napari_nstseg.io import writers
real, done = writers._write_array, []
def write_then_die(tmp, *args):
    real(tmp, *args)
    done.append(tmp)
    if len(done) == 2:
        os.kill(os.getpid(), signal.{sig})
writers._write_array = write_then_die
"""


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGTERM"])
def test_a_kill_while_the_outputs_are_written_leaves_none_of_them(
    tmp_path, checkpoint_dir, make_ct, sig
):
    argv, out = job(tmp_path, checkpoint_dir, make_ct, (3, 32, 32))
    proc = start(argv, SELF_KILL.format(sig=sig))
    _, err = proc.communicate(timeout=300)
    code = proc.returncode
    assert code == (-9 if sig == "SIGKILL" else 143), err
    left = files_under(out)
    outputs = ["mask.nii.gz", "lesions.nii.gz", "report.json"]
    assert not [name for name in left if name in outputs or name.startswith("maps/scan_")]
    if sig == "SIGTERM":
        assert left == []  # temporaries and the folders made for the run removed too
    else:  # nothing can run after SIGKILL: only hidden temporaries may stay
        assert all(os.path.basename(name).startswith(".") or name == "maps" for name in left)
