"""`nstseg predict FOLDER_OR_CSV OUT_DIR`: one output set per scan, a bad scan reported and
passed over, resume after an interruption, worker processes giving the same masks."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest

from dicom_helpers import phantom, write_series
from napari_nstseg.inference import predict_scan
from napari_nstseg.inference.engine import Segmenter

AFFINE = np.array([[-1.2, 0, 0, 30.0], [0, 1.1, 0, -20.0], [0, 0, 3.0, 5.0], [0, 0, 0, 1]])


def nstseg(argv: list) -> int:
    from napari_nstseg.cli import main

    return main([str(a) for a in argv])


def write_scan(path, make_ct, seed=0):
    hu = make_ct((4, 32, 40), seed=seed)  # display (z, y, x)
    nib.save(nib.Nifti1Image(np.transpose(hu, (2, 1, 0)).astype(np.int16), AFFINE), path)
    return path


@pytest.fixture
def scans(tmp_path, make_ct):
    """Three good scans and a file that only looks like one."""
    folder = tmp_path / "scans"
    folder.mkdir()
    for i, name in enumerate(("a", "b", "c")):
        write_scan(folder / f"{name}.nii.gz", make_ct, seed=i)
    (folder / "broken.nii.gz").write_bytes(b"not a NIfTI file at all")
    (folder / "notes.txt").write_text("not a scan: passed over")
    return folder


@pytest.fixture
def weights_args(checkpoint_dir):
    return ["--weights", checkpoint_dir / "seg.json", "--device", "cpu"]


@pytest.fixture
def count_runs(monkeypatch):
    """How often each scan's prediction starts and how often the model is loaded."""
    runs: dict[str, int] = {}
    loads = []
    predict_one, load = predict_scan.predict_one, Segmenter.from_checkpoint.__func__

    def counted(args, segmenter=None):
        name = os.path.basename(args.out_file)
        runs[name] = runs.get(name, 0) + 1
        return predict_one(args, segmenter)

    def counted_load(cls, *a, **k):
        loads.append(a)
        return load(cls, *a, **k)

    monkeypatch.setattr(predict_scan, "predict_one", counted)
    monkeypatch.setattr(Segmenter, "from_checkpoint", classmethod(counted_load))
    return runs, loads


def summary(out):
    with open(out / "summary.csv", newline="") as f:
        return {row["scan"]: row for row in csv.DictReader(f)}


def leftovers(folder):
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


def test_a_bad_scan_is_reported_and_a_rerun_skips_every_finished_one(
    scans, tmp_path, weights_args, count_runs, capsys
):
    runs, loads = count_runs
    out = tmp_path / "out"
    assert nstseg(["predict", scans, out, *weights_args]) == 1  # one scan failed

    assert runs == {"a.nii.gz": 1, "b.nii.gz": 1, "c.nii.gz": 1, "broken.nii.gz": 1}
    assert len(loads) == 1  # the model is loaded once, not per scan
    rows = summary(out)
    assert sorted(rows) == ["a", "b", "broken", "c"]
    for name in "abc":
        assert rows[name]["status"] == "done" and rows[name]["error"] == ""
        assert int(rows[name]["lesions"]) >= 0 and float(rows[name]["seconds"]) > 0
        mask = nib.load(out / f"{name}.nii.gz")
        assert mask.shape == (40, 32, 4)
        np.testing.assert_allclose(mask.affine, AFFINE, atol=1e-5)
        assert (out / f"{name}.json").is_file()
    assert rows["broken"]["status"] == "failed"
    assert "broken.nii.gz" in rows["broken"]["error"] and "\n" not in rows["broken"]["error"]
    assert not (out / "broken.nii.gz").exists() and not leftovers(out)
    printed = capsys.readouterr()
    assert "broken" in printed.out and "failed" in printed.out
    assert "summary.csv" in printed.out

    written = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "summary.csv"}
    runs.clear()
    assert nstseg(["predict", scans, out, *weights_args]) == 1  # the bad scan fails again
    assert runs == {"broken.nii.gz": 1}  # nothing finished is run again
    rows = summary(out)
    assert [rows[n]["status"] for n in "abc"] == ["skipped"] * 3
    assert rows["broken"]["status"] == "failed"
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "summary.csv"} == (
        written
    )


def test_an_interrupted_batch_resumes_and_does_each_scan_once(
    scans, tmp_path, weights_args, count_runs, monkeypatch
):
    (scans / "broken.nii.gz").unlink()
    runs, _ = count_runs
    out = tmp_path / "out"
    import napari_nstseg.io as nio

    write_mask = nio.write_mask

    def interrupt_second(path, *a, **k):
        written = write_mask(path, *a, **k)  # staged beside the target, not yet moved
        if os.path.basename(path) == "b.nii.gz":
            raise KeyboardInterrupt  # Ctrl+C while the second scan is being written
        return written

    monkeypatch.setattr(nio, "write_mask", interrupt_second)
    assert nstseg(["predict", scans, out, *weights_args]) == 130
    rows = summary(out)
    assert [rows[n]["status"] for n in "abc"] == ["done", "interrupted", "interrupted"]
    assert not (out / "b.nii.gz").exists() and not (out / "b.json").exists()
    assert not leftovers(out)  # no half-written file

    monkeypatch.setattr(nio, "write_mask", write_mask)
    first = (out / "a.nii.gz").stat().st_mtime_ns
    assert nstseg(["predict", scans, out, *weights_args]) == 0
    assert runs == {"a.nii.gz": 1, "b.nii.gz": 2, "c.nii.gz": 1}  # b: once stopped, once done
    rows = summary(out)
    assert [rows[n]["status"] for n in "abc"] == ["skipped", "done", "done"]
    assert (out / "a.nii.gz").stat().st_mtime_ns == first


def test_a_csv_list_with_output_names(tmp_path, make_ct, weights_args):
    import SimpleITK as sitk

    data = tmp_path / "archive"
    (data / "p1").mkdir(parents=True)
    (data / "p2").mkdir()
    write_scan(data / "p1" / "ct.nii.gz", make_ct, seed=1)
    write_scan(data / "p2" / "ct.nii.gz", make_ct, seed=2)
    image = sitk.GetImageFromArray(make_ct((4, 32, 40), seed=3).astype(np.int16))
    sitk.WriteImage(image, str(data / "third.mha"))
    listing = tmp_path / "list.csv"
    listing.write_text(
        "input,output\narchive/p1/ct.nii.gz,patient1\narchive/p2/ct.nii.gz,patient2.nrrd\n"
        f"{data / 'third.mha'},\n"
    )
    out = tmp_path / "out"
    extra = ["--lesion-map", out / "lesions", "--maps", out / "maps"]
    assert nstseg(["predict", listing, out, *weights_args, *extra]) == 0
    rows = summary(out)
    assert [rows[n]["status"] for n in ("patient1", "patient2", "third")] == ["done"] * 3
    # the scan's own format where it can be written, else what the output name says
    for name in ("patient1.nii.gz", "patient2.nrrd", "third.mha"):
        assert (out / name).is_file()
    for name in ("patient1", "patient2", "third"):
        assert (out / "lesions" / f"{name}_lesions.nii.gz").is_file()
        assert list((out / "maps" / name).glob("*_final_probability.*"))  # its own folder


def test_same_output_name_twice_is_refused_before_any_work(tmp_path, make_ct, weights_args, capsys):
    listing = tmp_path / "list.csv"
    write_scan(tmp_path / "x.nii.gz", make_ct)
    listing.write_text("input\nx.nii.gz\nx.nii.gz\n")
    assert nstseg(["predict", listing, tmp_path / "out", *weights_args]) == 2
    assert "would both be written as x" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_list_without_an_input_column_or_scans_is_refused(tmp_path, weights_args, capsys):
    listing = tmp_path / "list.csv"
    listing.write_text("path\nx.nii.gz\n")
    assert nstseg(["predict", listing, tmp_path / "out", *weights_args]) == 2
    assert f"{listing}: no 'input' column" in capsys.readouterr().err
    listing.write_text("input,output\n")
    assert nstseg(["predict", listing, tmp_path / "out", *weights_args]) == 2
    assert "the list names no scans" in capsys.readouterr().err


def test_workers_with_one_scan_is_refused(tmp_path, make_ct, weights_args, capsys):
    scan = write_scan(tmp_path / "x.nii.gz", make_ct)
    assert nstseg(["predict", scan, tmp_path / "m.nii.gz", *weights_args, "--workers", "2"]) == 2
    assert "--workers is for a folder or CSV list" in capsys.readouterr().err


def test_one_worker_per_gpu_and_the_cpu_cores_shared_out(monkeypatch):
    import torch

    from napari_nstseg.inference import batch

    monkeypatch.setattr(batch, "_cores", lambda: 8)
    cpu = batch.BatchConfig.for_machine(3, "cpu", pending=10)
    assert (cpu.workers, cpu.threads_per_worker, cpu.devices) == (3, 2, ("cpu",))
    assert batch.BatchConfig.for_machine(4, "cpu", pending=2).workers == 2  # no idle process
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    gpus = batch.BatchConfig.for_machine(None, "auto", pending=10)
    assert gpus.devices == ("cuda:0", "cuda:1", "cuda:2", "cuda:3") and gpus.workers == 4
    assert gpus.threads_per_worker is None
    one = batch.BatchConfig.for_machine(None, "cuda:2", pending=10)
    assert one.devices == ("cuda:2",) and one.workers == 1


@pytest.fixture
def bright_weights(monkeypatch, bright):
    """The stand-in that marks voxels above 100 HU, so every SEG holds the markers."""
    from napari_nstseg.preprocessing import PreprocessConfig

    def load(cls, path, device, config):
        return cls(bright(), PreprocessConfig(working_spacing_mm=None), "cpu", config)

    monkeypatch.setattr(Segmenter, "from_checkpoint", classmethod(load))


def test_a_folder_of_dicom_series_gives_one_seg_each(tmp_path, weights_args, bright_weights):
    import highdicom as hd
    import pydicom

    series = tmp_path / "series"
    series.mkdir()
    uids = {}
    for i, name in enumerate(("s1", "s2")):
        files = write_series(series / name, phantom(seed=i), reverse_files=bool(i))
        uids[name] = pydicom.dcmread(next(iter(files.values()))).SeriesInstanceUID
    out = tmp_path / "out"
    argv = ["predict", series, out, *weights_args, "--min-lesion-mm", "0", "--min-depth-mm", "0"]
    assert nstseg(argv) == 0
    assert sorted(p.name for p in out.glob("*.dcm")) == ["s1.dcm", "s2.dcm"]
    for name, uid in uids.items():
        seg = hd.seg.segread(out / f"{name}.dcm")
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
        assert int(summary(out)[name]["lesions"]) > 0


def test_two_workers_give_the_same_masks_as_one(scans, tmp_path, weights_args):
    (scans / "broken.nii.gz").unlink()
    one, two = tmp_path / "one", tmp_path / "two"
    assert nstseg(["predict", scans, one, *weights_args, "--threshold", "0.3"]) == 0
    assert nstseg(["predict", scans, two, *weights_args, "--threshold", "0.3", "--workers", 2]) == 0
    for name in "abc":
        a = np.asarray(nib.load(one / f"{name}.nii.gz").dataobj)
        b = np.asarray(nib.load(two / f"{name}.nii.gz").dataobj)
        np.testing.assert_array_equal(a, b)
        assert summary(one)[name]["lesions"] == summary(two)[name]["lesions"]
        assert summary(two)[name]["status"] == "done"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_stops_the_workers_cleanly_and_a_rerun_finishes(scans, tmp_path, weights_args):
    (scans / "broken.nii.gz").unlink()
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "napari_nstseg.cli", "predict", scans, out, *weights_args]
    proc = subprocess.Popen(
        [str(a) for a in [*argv, "--workers", 2]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as a terminal's Ctrl+C reaches
        # A suite started in the background of a non-interactive shell (as CI may start it)
        # passes SIGINT on ignored, and Python then installs no Ctrl+C handler: restore it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 240
    while not list(out.glob("*.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    finished = {p.stem for p in out.glob("*.json")}
    if proc.returncode == 0:
        pytest.skip("the batch finished before Ctrl+C came")  # a fast machine
    assert proc.returncode == 130, err.decode()
    assert not leftovers(out)
    rows = summary(out)
    assert {n for n, r in rows.items() if r["status"] == "done"} == finished

    assert nstseg(["predict", scans, out, *weights_args]) == 0
    rows = summary(out)
    assert {n for n, r in rows.items() if r["status"] == "skipped"} == finished
    assert all(rows[n]["status"] in ("done", "skipped") for n in "abc")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_killed_worker_costs_only_a_rerun_of_its_scans(scans, tmp_path, make_ct, weights_args):
    import psutil

    (scans / "broken.nii.gz").unlink()
    write_scan(scans / "d.nii.gz", make_ct, seed=3)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "napari_nstseg.cli", "predict", scans, out, *weights_args]
    proc = subprocess.Popen([str(a) for a in [*argv, "--workers", 2]], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not list(out.glob("*.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = [
        p
        for p in psutil.Process(proc.pid).children()
        if any("spawn_main" in word for word in p.cmdline())
    ]
    if proc.poll() is not None or not workers:
        pytest.skip("the batch finished before a worker could be killed")  # a fast machine
    workers[0].kill()  # as the kernel's out-of-memory killer would
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert "a worker process died" in err.decode()
    rows = summary(out)
    assert [rows[n]["status"] for n in "abcd"] == ["done"] * 4
    assert all((out / f"{n}.nii.gz").is_file() for n in "abcd") and not leftovers(out)
