"""DICOM CT series written with pydicom as a scanner would (axial, oblique, feet-first, files in
reverse order), for the DICOM SEG tests of io/ and of `nstseg predict`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

MARKER = 1500  # HU of the voxels the test mask covers
SHAPE_KJI = (7, 10, 12)  # slices, rows, columns


def _rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    a = np.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


ORIENTATIONS = {
    # row direction, column direction (DICOM Image Orientation (Patient)), in LPS
    "axial": (np.array([1.0, 0, 0]), np.array([0, 1.0, 0])),
    "oblique": tuple(_rotation(np.array([1.0, 0.4, 0.2]), 23) @ v for v in np.eye(3)[:2]),
    # normal (row x column) towards the feet: slices are stacked downwards
    "feet_first": (np.array([1.0, 0, 0]), np.array([0, -1.0, 0])),
}


def write_series(
    folder: Path,
    hu_kji: np.ndarray,
    orientation: str = "axial",
    reverse_files: bool = False,
    series_uid: str | None = None,
) -> dict[str, Path]:
    """One CT slice per file, written with pydicom as a scanner would; SOP UID -> file.

    ``reverse_files`` names and numbers the files from the last slice to the first, so that
    neither file order nor Instance Number follows the slices' positions.
    """
    folder.mkdir(parents=True)
    row_dir, col_dir = ORIENTATIONS[orientation]
    normal = np.cross(row_dir, col_dir)
    row_spacing, col_spacing, gap = 0.7, 0.8, 2.5
    origin = np.array([-40.0, -30.0, 100.0])
    study, frame_of_reference = generate_uid(), generate_uid()
    series_uid = series_uid or generate_uid()
    n = hu_kji.shape[0]
    written = {}
    for k in range(n):
        number = n - k if reverse_files else k + 1
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientName, ds.PatientID = "Test^Phantom", "NSTSEG-1"
        ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
        ds.StudyInstanceUID, ds.StudyID, ds.AccessionNumber = study, "1", "A1"
        ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName = "20260101", "120000", ""
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "CT", series_uid, 3
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference, ""
        ds.Manufacturer, ds.InstanceNumber = "test", number
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [round(float(v), 6) for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [round(float(v), 4) for v in origin + k * gap * normal]
        ds.PixelSpacing = [row_spacing, col_spacing]
        ds.SliceThickness = gap
        ds.Rows, ds.Columns = hu_kji.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.KVP, ds.AcquisitionNumber = 120, 1
        ds.PixelData = (hu_kji[k].astype(np.int16) + 1024).tobytes()
        path = folder / f"IM{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written[ds.SOPInstanceUID] = path
    return written


def phantom(seed: int = 0) -> np.ndarray:
    """Soft tissue with a few marker voxels, a different pattern on every slice but one."""
    rng = np.random.default_rng(seed)
    hu = rng.integers(-100, 100, size=SHAPE_KJI).astype(np.int16)
    for k in range(SHAPE_KJI[0]):
        if k == 3:
            continue  # one slice without tumour: its frame is left out of the SEG
        r, c = rng.integers(0, SHAPE_KJI[1]), rng.integers(0, SHAPE_KJI[2])
        hu[k, r : r + 2, c : c + 3] = MARKER
    return hu
