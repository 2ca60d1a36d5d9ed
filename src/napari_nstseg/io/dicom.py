"""DICOM series through SimpleITK (GDCM): a folder (or one of its files) as one volume."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import CTReadError
from .itk import from_sitk
from .loaded import LoadedImage

# Relative deviation of one slice gap from the median before the spacing counts as uneven.
SLICE_GAP_TOLERANCE = 0.01


def is_dicom_folder(folder: Path, max_files: int = 32) -> bool:
    """True if one of the first files in the folder is DICOM (a .dcm name or the DICM preamble)."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return False
    checked = 0
    for entry in entries:
        if not entry.is_file():
            continue
        if entry.name.lower().endswith(".dcm") or _has_dicm_preamble(entry.path):
            return True
        checked += 1
        if checked >= max_files:
            break
    return False


def _has_dicm_preamble(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def load_dicom(path: Path) -> LoadedImage:
    import SimpleITK as sitk

    folder = path.parent if path.is_file() else path
    wanted_file = str(path) if path.is_file() else None
    notes: list[str] = []
    try:
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as e:
        raise CTReadError(path, "its DICOM files could not be listed") from e
    series = []
    for uid in series_ids:
        files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        if files:
            series.append((uid, files))
    if not series:
        raise CTReadError(path, "it holds no readable DICOM image series", "choose a series folder")
    if wanted_file is not None:
        chosen = [s for s in series if any(os.path.samefile(f, wanted_file) for f in s[1])]
        uid, files = chosen[0] if chosen else max(series, key=lambda s: len(s[1]))
    else:
        uid, files = max(series, key=lambda s: len(s[1]))
        if len(series) > 1:
            others = ", ".join(str(len(f)) for u, f in series if u != uid)
            notes.append(
                f"{folder} holds {len(series)} DICOM series; opened the largest ({len(files)} "
                f"slices, SeriesInstanceUID {uid}) and skipped the others ({others} slices)"
            )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()  # per-slice tags for the spacing check, no re-read
    try:
        image = reader.Execute()
    except RuntimeError as e:
        raise CTReadError(path, "its DICOM series could not be decoded", "check the files") from e
    gap_note = _uneven_slice_note(folder, reader, len(files))
    if gap_note:
        notes.append(gap_note)
    extra = {
        "dicom_series_uid": uid,
        # File and SOP Instance UID of each slice, in ITK's slice order (index k): a DICOM SEG
        # written for the scan references them (io/dicom_seg.py), and one read back is matched
        # to slices by them.
        "dicom_files": [str(Path(f).absolute()) for f in files],
        "dicom_sop_instance_uids": [_slice_tag(reader, k, "0008|0018") for k in range(len(files))],
    }
    return from_sitk(folder, image, "dicom", notes, extra=extra)


def _slice_tag(reader, k: int, tag: str) -> str:
    """One tag of slice ``k`` as the series reader kept it ('' when the slice has none)."""
    try:
        return reader.GetMetaData(k, tag).strip().rstrip("\x00")
    except RuntimeError:
        return ""


def _uneven_slice_note(folder: Path, reader, n_slices: int) -> str | None:
    """Say so when the slice positions of a DICOM series are not evenly spaced."""
    if n_slices < 3:
        return None
    positions = []
    normal = None
    for s in range(n_slices):
        try:
            pos = [float(v) for v in reader.GetMetaData(s, "0020|0032").split("\\")]
            if normal is None:
                iop = [float(v) for v in reader.GetMetaData(s, "0020|0037").split("\\")]
                normal = np.cross(iop[:3], iop[3:])
        except (RuntimeError, ValueError):
            return None  # no usable positions: ITK's own spacing is all there is
        positions.append(float(np.dot(pos, normal)))
    gaps = np.diff(np.sort(positions))
    median = float(np.median(gaps))
    if median <= 0:
        return f"{folder}: several DICOM slices share one position; the volume may be wrong"
    worst = float(np.max(np.abs(gaps - median)))
    if worst <= SLICE_GAP_TOLERANCE * median:
        return None
    return (
        f"{folder}: slice spacing is uneven (gaps from {gaps.min():.3g} to {gaps.max():.3g} mm, "
        f"usually {median:.3g} mm), a slice may be missing; distances along z are approximate"
    )
