"""Tumour masks as DICOM SEG (PS3.3 A.51 Segmentation IOD, via highdicom) on their source series."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .atomic import AtomicBatch
from .errors import CTReadError, MaskWriteError
from .outputs import check_folder
from .volume import Geometry
from .writers import check_mask_shape

SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage (PS3.4 B.5)
SEG_SUFFIX = ".dcm"
ALGORITHM_NAME = "CDI-NSTSEG"
SEGMENT_LABEL = "Tumor"
# The SEG gets its own series next to the CT's (same study): its number says where it came from.
SERIES_NUMBER_OFFSET = 1000
# How far (in voxels) a SEG frame may lie from a slice of the scan and still be that slice.
POSITION_TOLERANCE = 1e-2


# -- writing ------------------------------------------------------------------------------------
def write_dicom_seg(
    path: str | os.PathLike,
    mask_zyx: np.ndarray,
    geometry: Geometry,
    *,
    edited: bool,
    weights_name: str = "",
    batch: AtomicBatch | None = None,
) -> Path:
    """Write a mask shown in display order (z, y, x) as a binary DICOM SEG of its source series.

    Every non-zero voxel is tumour (one segment, SNOMED CT "Neoplasm" in the category
    "Morphologically Abnormal Structure", 49755003, which older DICOM editions call
    "Morphologically Altered Structure"). ``edited`` says whether a person changed the model's
    mask: SEMIAUTOMATIC then, AUTOMATIC otherwise. Each frame references the SOP Instance of the
    slice it lies on. With ``batch`` the file is only staged; it appears when the batch commits.
    """
    import highdicom as hd
    from pydicom.uid import ExplicitVRLittleEndian

    path = Path(path)
    files, uids = _source_slices(path, geometry, MaskWriteError)
    mask = np.asarray(mask_zyx)
    check_mask_shape(path, mask, geometry)
    sources = _read_sources(path, files, uids, geometry)
    # Source index (i, j, k) = (column, row, file) in ITK's slice order, so frame k of this
    # (k, rows, columns) array is the mask on sources[k].
    frames = np.ascontiguousarray(geometry.to_source(mask != 0).transpose(2, 1, 0))
    first = sources[0]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_tumour_segment(edited, weights_name)],
        series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBER_OFFSET + int(getattr(first, "SeriesNumber", None) or 0),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="napari-nstseg",
        manufacturer_model_name=ALGORITHM_NAME,
        software_versions=_package_version(),
        device_serial_number="none",
        content_label="TUMOR",
        content_description=f"{ALGORITHM_NAME} tumor mask" + (", edited by hand" if edited else ""),
        # Uncompressed, bit-packed: lossless, and every DICOM reader takes it.
        transfer_syntax_uid=ExplicitVRLittleEndian,
        # Slices without tumour get no frame; a mask without any keeps them all (DICOM
        # needs at least one frame), which highdicom would otherwise only log.
        omit_empty_frames=bool(frames.any()),
    )
    return _save(path, seg, batch)


def _tumour_segment(edited: bool, weights_name: str):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME,
        family=codes.cid7162.ArtificialIntelligence,
        version=_package_version(),
        source="napari-nstseg",
        parameters={"weights": weights_name} if weights_name else None,
    )
    kind = hd.seg.SegmentAlgorithmTypeValues
    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=kind.SEMIAUTOMATIC if edited else kind.AUTOMATIC,
        algorithm_identification=algorithm,
    )


def _package_version() -> str:
    from napari_nstseg import __version__

    return __version__


def _source_slices(path: Path, geometry: Geometry, error: type) -> tuple[list[str], list[str]]:
    """The scan's DICOM files and SOP Instance UIDs in ITK's slice order (source index k)."""
    files = list(geometry.extra.get("dicom_files") or [])
    uids = list(geometry.extra.get("dicom_sop_instance_uids") or [])
    if geometry.source_format != "dicom":
        raise error(
            path,
            "the scan did not come from a DICOM series, so there is no series for a DICOM SEG "
            "to refer to",
            "save the mask as .nii.gz, .mha or .nrrd instead",
        )
    if not files or len(files) != len(uids) or len(files) != geometry.source_shape[2]:
        raise error(
            path,
            f"the scan from {geometry.source_path} does not record its DICOM files slice by "
            "slice (opened by an older version, or a multi-frame file)",
            "open the DICOM series folder again",
        )
    return files, uids


def check_seg_source(path: str | os.PathLike, geometry: Geometry) -> None:
    """Refuse (``MaskWriteError``) before any work a scan a DICOM SEG cannot be written for:
    not a DICOM series, its slices not recorded, or its first slice unfit to be referenced."""
    path = Path(path)
    files, uids = _source_slices(path, geometry, MaskWriteError)
    _read_sources(path, files[:1], uids[:1], geometry)


def _read_sources(path: Path, files: list[str], uids: list[str], geometry: Geometry) -> list:
    """The source slices' headers, checked to be the very instances the scan was read from."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    series = geometry.extra.get("dicom_series_uid")
    sources = []
    for file, uid in zip(files, uids, strict=True):
        try:
            ds = pydicom.dcmread(file, stop_before_pixels=True)
        except (OSError, InvalidDicomError) as e:
            raise MaskWriteError(
                path,
                f"the source slice {file} cannot be read any more ({e})",
                "a DICOM SEG must reference its series: keep the series where it was opened",
            ) from e
        if ds.get("SOPInstanceUID") != uid or (series and ds.get("SeriesInstanceUID") != series):
            raise MaskWriteError(
                path,
                f"{file} is no longer the slice the scan was read from (another SOP Instance)",
                "open the DICOM series again",
            )
        sources.append(ds)
    first = sources[0]
    if (int(first.Columns), int(first.Rows)) != tuple(geometry.source_shape[:2]):
        raise MaskWriteError(
            path,
            f"the source slices are {first.Columns}x{first.Rows} pixels but the scan's grid is "
            f"{geometry.source_shape[0]}x{geometry.source_shape[1]}",
            "open the DICOM series again",
        )
    if "FrameOfReferenceUID" not in first:
        raise MaskWriteError(
            path,
            "the source series has no Frame of Reference UID, which a DICOM SEG must refer to",
            "save the mask as .nii.gz, .mha or .nrrd instead",
        )
    return sources


def _save(path: Path, seg, batch: AtomicBatch | None) -> Path:
    """Save atomically (temporary file, then rename), every failure one MaskWriteError."""
    target = path.expanduser().absolute()
    folder = target.parent
    if not folder.is_dir():
        raise MaskWriteError(path, f"the folder {folder} does not exist", "choose another folder")
    if target.is_dir():
        raise MaskWriteError(path, "a folder of that name exists", "choose another file name")
    check_folder(folder, for_file=path)

    def write(tmp: str) -> None:
        seg.save_as(tmp, enforce_file_format=True)

    try:
        if batch is not None:
            return batch.add(target, write, tmp_suffix=SEG_SUFFIX)
        with AtomicBatch() as own:
            own.add(target, write, tmp_suffix=SEG_SUFFIX)
            return own.commit()[0]
    except MaskWriteError:
        raise
    except Exception as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).split("\n")[0]
        raise MaskWriteError(
            path, f"writing failed ({reason})", "the previous file, if any, is unchanged"
        ) from e


# -- reading ------------------------------------------------------------------------------------
def is_dicom_seg(path: str | os.PathLike) -> bool:
    """True for a file whose SOP Class is Segmentation Storage (reads the header only)."""
    import pydicom

    p = Path(path)
    if not p.is_file():
        return False
    try:
        ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:  # whatever pydicom cannot parse is no SEG; the CT reader
        return False  # then says in its own words what is wrong with the file
    return str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS_UID


def referenced_series(path: str | os.PathLike) -> list[str]:
    """The SeriesInstanceUIDs a DICOM SEG refers to (its Referenced Series Sequence)."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return [str(item.SeriesInstanceUID) for item in ds.get("ReferencedSeriesSequence", [])]


def read_dicom_seg(path: str | os.PathLike, geometry: Geometry) -> np.ndarray:
    """A DICOM SEG of the scan with ``geometry`` as a label array in display order (z, y, x).

    Frames are placed by the SOP Instance UID of the slice each references, or, for a SEG whose
    frames reference none, by their Image Position (Patient); never by frame order. Pixels hold
    segment numbers (0 = background); where segments overlap the higher number wins.
    """
    import highdicom as hd

    path = Path(path)
    _, uids = _source_slices(path, geometry, CTReadError)
    try:
        seg = hd.seg.segread(path)
    except Exception as e:
        raise CTReadError(path, f"it is not a readable DICOM SEG ({_first_line(e)})") from e
    series = geometry.extra.get("dicom_series_uid", "")
    referenced = [str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])]
    if series not in referenced:
        raise CTReadError(
            path,
            f"it segments DICOM series {', '.join(referenced) or '(none named)'}, not the open "
            f"series {series}",
            "open the CT series it was made on",
        )
    if (int(seg.Columns), int(seg.Rows)) != tuple(geometry.source_shape[:2]):
        raise CTReadError(
            path,
            f"its frames are {seg.Columns}x{seg.Rows} pixels but the series' slices are "
            f"{geometry.source_shape[0]}x{geometry.source_shape[1]}",
        )
    try:
        if _frames_reference_instances(seg):
            frames = _labels_by_instance(seg, uids)
        else:
            frames = _labels_by_position(path, seg, geometry)
    except CTReadError:
        raise
    except Exception as e:
        raise CTReadError(path, f"its frames could not be decoded ({_first_line(e)})") from e
    # (k, rows, columns) -> source index (i, j, k) -> display (z, y, x)
    return np.ascontiguousarray(geometry.to_display(frames.transpose(2, 1, 0)))


def _frames_reference_instances(seg) -> bool:
    """True when every frame names the source slice it was derived from."""
    for item in seg.PerFrameFunctionalGroupsSequence:
        derivation = item.get("DerivationImageSequence") or []
        if not any(d.get("SourceImageSequence") for d in derivation):
            return False
    return True


def _labels_by_instance(seg, uids: list[str]) -> np.ndarray:
    return seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids,
        combine_segments=True,
        # Slices without a frame are empty (omitted empty frames), not an error.
        assert_missing_frames_are_empty=True,
        skip_overlap_checks=True,
        dtype=np.uint16,
    )


def _labels_by_position(path: Path, seg, geometry: Geometry) -> np.ndarray:
    """Place a SEG's volume through its frames' positions: each of its voxels must fall on one
    of the scan's, within POSITION_TOLERANCE of a voxel."""
    volume = seg.get_volume(combine_segments=True, skip_overlap_checks=True, dtype=np.uint16)
    # SEG voxel index (slice, row, column) -> scan source index (i, j, k)
    to_scan = np.linalg.inv(geometry.affine_lps) @ np.asarray(volume.affine, dtype=float)
    linear = to_scan[:3, :3]
    rounded = np.round(linear)
    offset = to_scan[:3, 3]
    on_grid = (
        np.allclose(linear, rounded, atol=POSITION_TOLERANCE)
        and np.allclose(offset, np.round(offset), atol=POSITION_TOLERANCE)
        and sorted(np.abs(rounded).sum(axis=0).tolist()) == [1, 1, 1]
        and sorted(np.abs(rounded).sum(axis=1).tolist()) == [1, 1, 1]
    )
    if not on_grid:
        raise CTReadError(
            path, "its frames do not lie on the series' slices and pixels voxel for voxel"
        )
    data = np.asarray(volume.array)
    out = np.zeros(geometry.source_shape, dtype=np.uint16)
    index = np.indices(data.shape).reshape(3, -1)
    target = (rounded @ index + np.round(offset)[:, None]).astype(int)
    inside = np.all((target >= 0) & (target < np.array(geometry.source_shape)[:, None]), axis=0)
    values = data.reshape(-1)
    if np.any(values[~inside]):
        raise CTReadError(path, "part of the segmentation lies outside the series' volume")
    out[tuple(target[:, inside])] = values[inside]
    return out.transpose(2, 1, 0)


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]
