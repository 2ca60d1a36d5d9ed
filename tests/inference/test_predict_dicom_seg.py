"""`nstseg predict DICOM_DIR OUT.dcm`: the mask as a DICOM SEG of the input series, each frame on
the slice it references; any other input is refused in one line before the model runs."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from dicom_helpers import MARKER, SHAPE_KJI, phantom, write_series
from napari_nstseg.io import read_ct
from napari_nstseg.io.dicom_seg import read_dicom_seg


@pytest.fixture
def bright_weights(monkeypatch, bright):
    """`predict` with the stand-in that marks voxels above 100 HU: the markers, exactly."""
    from napari_nstseg.inference.engine import Segmenter
    from napari_nstseg.preprocessing import PreprocessConfig

    def load(cls, path, device, config):
        return cls(bright(), PreprocessConfig(working_spacing_mm=None), "cpu", config)

    monkeypatch.setattr(Segmenter, "from_checkpoint", classmethod(load))


def nstseg(argv: list) -> int:
    from napari_nstseg.cli import main

    return main([str(a) for a in argv])


def test_predict_on_a_dicom_series_writes_a_seg_of_it(tmp_path, checkpoint_dir, bright_weights):
    import highdicom as hd

    files = write_series(tmp_path / "series", phantom(), "oblique", reverse_files=True)
    out = tmp_path / "out" / "tumor.dcm"
    argv = ["predict", tmp_path / "series", out, "--weights", checkpoint_dir / "seg.json",
            "--device", "cpu", "--min-lesion-mm", "0", "--min-depth-mm", "0"]  # fmt: skip
    assert nstseg(argv) == 0

    seg = hd.seg.segread(out)
    (segment,) = seg.SegmentSequence
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    assert "seg" in segment.SegmentationAlgorithmIdentificationSequence[0].AlgorithmParameters
    frames = seg.pixel_array.reshape(-1, *SHAPE_KJI[1:])
    assert len(frames) == SHAPE_KJI[0] - 1  # one slice holds no marker
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        ref = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        source = pydicom.dcmread(files[ref])
        marker = source.pixel_array.astype(int) + int(source.RescaleIntercept) == MARKER
        np.testing.assert_array_equal(frame.astype(bool), marker)
    ct = read_ct(tmp_path / "series")
    np.testing.assert_array_equal(read_dicom_seg(out, ct.geometry), ct.hu == MARKER)


def test_seg_output_for_a_scan_that_is_not_dicom_is_refused_before_any_work(
    tmp_path, checkpoint_dir, capsys, monkeypatch
):
    import nibabel as nib

    from napari_nstseg.inference.engine import Segmenter

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(Segmenter, "from_checkpoint", classmethod(refuse))
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3), np.int16), np.eye(4)), scan)
    argv = ["predict", scan, tmp_path / "tumor.dcm", "--weights", checkpoint_dir / "seg.json"]
    assert nstseg(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("nstseg predict: error: ")
    assert "can only be written for a DICOM series" in lines[0] and str(scan) in lines[0]
    assert not (tmp_path / "tumor.dcm").exists()
