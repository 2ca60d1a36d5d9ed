"""DICOM SEG of the tumour mask: every frame on its source slice and pixel (axial, oblique,
feet-first with files in reverse order), the segment described, read back onto the series."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from dicom_helpers import MARKER, SHAPE_KJI, phantom, write_series
from napari_nstseg.io import CTReadError, MaskWriteError, read_ct
from napari_nstseg.io.dicom_seg import (
    SEG_SOP_CLASS_UID,
    _frames_reference_instances,
    is_dicom_seg,
    read_dicom_seg,
    write_dicom_seg,
)


def frame_sources(seg) -> list[str]:
    """The source SOP Instance UID each frame says it was derived from."""
    return [
        str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        for item in seg.PerFrameFunctionalGroupsSequence
    ]


@pytest.mark.parametrize(
    ("orientation", "reverse_files"),
    [("axial", False), ("oblique", False), ("feet_first", True), ("oblique", True)],
)
def test_every_frame_lands_on_its_source_slice_and_pixel(tmp_path, orientation, reverse_files):
    import highdicom as hd

    files = write_series(tmp_path / "ct", phantom(), orientation, reverse_files)
    ct = read_ct(tmp_path / "ct")
    mask = (ct.hu == MARKER).astype(np.uint8)
    out = write_dicom_seg(tmp_path / "tumor.dcm", mask, ct.geometry, edited=False)

    seg = hd.seg.segread(out)
    assert seg.SOPClassUID == SEG_SOP_CLASS_UID and seg.SegmentationType == "BINARY"
    sources = frame_sources(seg)
    assert len(sources) == SHAPE_KJI[0] - 1  # the empty slice has no frame
    assert set(sources) <= set(files) and len(set(sources)) == len(sources)
    pixels = seg.pixel_array.reshape(len(sources), *SHAPE_KJI[1:])
    for frame, uid, item in zip(pixels, sources, seg.PerFrameFunctionalGroupsSequence, strict=True):
        source = pydicom.dcmread(files[uid])
        tumour = source.pixel_array.astype(int) + int(source.RescaleIntercept) == MARKER
        np.testing.assert_array_equal(frame.astype(bool), tumour)
        position = item.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose(position, source.ImagePositionPatient, atol=1e-3)
    orientation_seq = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
    np.testing.assert_allclose(
        orientation_seq.ImageOrientationPatient, source.ImageOrientationPatient, atol=1e-5
    )
    # Every slice of the series is referenced, the empty one included.
    (series,) = seg.ReferencedSeriesSequence
    assert {i.ReferencedSOPInstanceUID for i in series.ReferencedInstanceSequence} == set(files)

    # ... and read back onto the scan it lands exactly where the mask was.
    np.testing.assert_array_equal(read_dicom_seg(out, ct.geometry), mask)


def test_segment_says_what_and_who_automatic_until_edited(tmp_path):
    import highdicom as hd

    import napari_nstseg

    write_series(tmp_path / "ct", phantom())
    ct = read_ct(tmp_path / "ct")
    mask = ct.hu == MARKER
    for edited, kind in ((False, "AUTOMATIC"), (True, "SEMIAUTOMATIC")):
        out = tmp_path / f"edited_{edited}.dcm"
        write_dicom_seg(out, mask, ct.geometry, edited=edited, weights_name="sarcoma")
        seg = hd.seg.segread(out)
        (segment,) = seg.SegmentSequence
        assert segment.SegmentAlgorithmType == kind
        assert segment.SegmentAlgorithmName == "CDI-NSTSEG"
        assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"  # Neoplasm
        category = segment.SegmentedPropertyCategoryCodeSequence[0]
        assert (category.CodingSchemeDesignator, category.CodeValue) == ("SCT", "49755003")
        (algorithm,) = segment.SegmentationAlgorithmIdentificationSequence
        assert algorithm.AlgorithmName == "CDI-NSTSEG"
        assert algorithm.AlgorithmVersion == napari_nstseg.__version__
        assert "sarcoma" in algorithm.AlgorithmParameters
        assert seg.StudyInstanceUID == pydicom.dcmread(ct.geometry.extra["dicom_files"][0]).get(
            "StudyInstanceUID"
        )
        assert is_dicom_seg(out)
    assert not is_dicom_seg(ct.geometry.extra["dicom_files"][0])


def test_a_seg_of_another_series_is_refused_with_one_sentence(tmp_path):
    write_series(tmp_path / "a", phantom(0))
    write_series(tmp_path / "b", phantom(1))
    a, b = read_ct(tmp_path / "a"), read_ct(tmp_path / "b")
    out = write_dicom_seg(tmp_path / "a_tumor.dcm", a.hu == MARKER, a.geometry, edited=False)
    with pytest.raises(CTReadError, match=r"a_tumor\.dcm: it segments DICOM series .* not the"):
        read_dicom_seg(out, b.geometry)


def test_a_seg_without_frame_references_is_placed_by_position(tmp_path):
    """SEGs from other tools may only give each frame's position: those land as well."""
    write_series(tmp_path / "ct", phantom(), "oblique", reverse_files=True)
    ct = read_ct(tmp_path / "ct")
    mask = (ct.hu == MARKER).astype(np.uint8)
    out = write_dicom_seg(tmp_path / "tumor.dcm", mask, ct.geometry, edited=False)
    ds = pydicom.dcmread(out)
    for item in ds.PerFrameFunctionalGroupsSequence:
        del item.DerivationImageSequence
    ds.save_as(tmp_path / "positions_only.dcm", enforce_file_format=True)
    assert not _frames_reference_instances(ds)
    np.testing.assert_array_equal(
        read_dicom_seg(tmp_path / "positions_only.dcm", ct.geometry), mask
    )


def test_an_empty_mask_is_a_valid_seg_with_nothing_in_it(tmp_path):
    """A scan where the model finds nothing still gets its SEG (all frames, all zero)."""
    write_series(tmp_path / "ct", phantom())
    ct = read_ct(tmp_path / "ct")
    out = write_dicom_seg(
        tmp_path / "none.dcm", np.zeros(ct.shape, bool), ct.geometry, edited=False
    )
    assert pydicom.dcmread(out).NumberOfFrames == SHAPE_KJI[0]
    assert not read_dicom_seg(out, ct.geometry).any()


def test_a_scan_that_is_not_dicom_cannot_be_saved_as_seg(tmp_path):
    from io_helpers import phantom_hu_kji, write_nifti

    nifti = write_nifti(tmp_path / "ct.nii.gz", np.ascontiguousarray(phantom_hu_kji().T), np.eye(4))
    ct = read_ct(nifti)
    with pytest.raises(MaskWriteError, match="did not come from a DICOM series"):
        write_dicom_seg(tmp_path / "tumor.dcm", ct.hu > 0, ct.geometry, edited=False)
    assert not (tmp_path / "tumor.dcm").exists()


def test_written_seg_passes_validation(tmp_path):
    """highdicom re-reads it as a Segmentation with the IOD's mandatory attributes; where
    dicom3tools' dciodvfy is installed, it reports no error either."""
    import highdicom as hd

    write_series(tmp_path / "ct", phantom(), "oblique")
    ct = read_ct(tmp_path / "ct")
    out = write_dicom_seg(tmp_path / "tumor.dcm", ct.hu == MARKER, ct.geometry, edited=True)

    ds = pydicom.dcmread(out)  # a Part 10 file: preamble, file meta, no leftover private data
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian  # lossless, uncompressed
    assert ds.file_meta.MediaStorageSOPClassUID == SEG_SOP_CLASS_UID
    seg = hd.seg.Segmentation.from_dataset(ds)
    mandatory = [
        # Patient, General Study, General Series, Segmentation Series, Frame of Reference,
        # General Equipment, Enhanced General Equipment, General Image, Image Pixel,
        # Segmentation Image, Multi-frame Functional Groups, Multi-frame Dimension, SOP Common
        "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber",
        "FrameOfReferenceUID", "Manufacturer", "ManufacturerModelName", "DeviceSerialNumber",
        "SoftwareVersions", "InstanceNumber", "ImageType", "ContentLabel", "ContentDate",
        "ContentTime", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
        "SamplesPerPixel", "PhotometricInterpretation", "PixelRepresentation",
        "LossyImageCompression", "SegmentationType", "SegmentSequence", "NumberOfFrames",
        "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
        "DimensionOrganizationSequence", "DimensionIndexSequence", "SOPClassUID",
        "SOPInstanceUID", "ReferencedSeriesSequence",
    ]  # fmt: skip
    assert [k for k in mandatory if k not in seg] == []
    assert seg.Modality == "SEG" and seg.BitsAllocated == 1 and seg.LossyImageCompression == "00"
    assert seg.FrameOfReferenceUID == pydicom.dcmread(ct.geometry.extra["dicom_files"][0]).get(
        "FrameOfReferenceUID"
    )
    assert seg.number_of_frames == SHAPE_KJI[0] - 1

    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is not None:
        report = subprocess.run([dciodvfy, str(out)], capture_output=True, text=True)
        errors = [line for line in report.stderr.splitlines() if line.startswith("Error")]
        assert errors == [], report.stderr
