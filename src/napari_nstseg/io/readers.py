"""Open CT scans (NIfTI, DICOM series, MHA/MHD, NRRD) as CTVolumes in radiological display order.

NIfTI goes through nibabel (its sform/qform choice is the affine), everything else through
SimpleITK (origin, spacing and direction give the index -> LPS matrix). Both end in
``Geometry.from_index_to_lps``, so any orientation gives the same axial display stack.
"""

from __future__ import annotations

import gzip
import os
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import CTReadError, CTReadWarning
from .sniff import describe_file, read_head
from .volume import CTVolume, Geometry

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
# Most distinct non-zero values an integer image may hold to be opened as a label map; CT holds
# thousands, while whole-body organ atlases (TotalSegmentator) stay near 120.
MAX_LABELS = 128
# Relative deviation of one slice gap from the median before the spacing counts as uneven.
SLICE_GAP_TOLERANCE = 0.01

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class LoadedImage:
    """Voxels in display order (z, y, x) with their stored dtype, before any HU conversion."""

    data: np.ndarray
    geometry: Geometry
    warnings: list[str] = field(default_factory=list)
    name: str = ""


def file_format(path: str | os.PathLike) -> str | None:
    """'nifti', 'itk' or 'dicom' for paths this package reads, else None."""
    p = Path(path)
    if p.is_dir():
        return "dicom" if is_dicom_folder(p) else None
    lower = p.name.lower()
    if lower.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if lower.endswith(ITK_SUFFIXES):
        return "itk"
    if lower.endswith(".dcm"):
        return "dicom"
    return None


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


def read_ct(path: str | os.PathLike) -> CTVolume:
    """Open a scan as float32 HU in display order (z, y, x); problems are warned and recorded."""
    return to_ct_volume(load_image(path))


def to_ct_volume(loaded: LoadedImage) -> CTVolume:
    """HU float32 from loaded voxels, NaN and inf replaced (with a warning)."""
    hu = np.array(loaded.data, dtype=np.float32, order="C")
    hu, note = _replace_non_finite(hu, loaded.geometry.source_path)
    messages = list(loaded.warnings)
    if note:
        messages.append(note)
        _warn(note)
    return CTVolume(hu=hu, geometry=loaded.geometry, warnings=messages, name=loaded.name)


def read_mask(path: str | os.PathLike, like: Geometry | None = None) -> np.ndarray:
    """Open an integer label map in display order; with ``like`` it must lie on that scan's grid."""
    loaded = load_image(path)
    if like is not None:
        _check_same_grid(path, loaded.geometry, like)
    return read_mask_data(loaded)


def read_mask_data(loaded: LoadedImage) -> np.ndarray:
    """Loaded voxels as a contiguous integer label array (the smallest dtype that holds them)."""
    data = loaded.data
    if not _is_integral(data):
        raise CTReadError(
            loaded.geometry.source_path,
            "it holds non-integer values, not labels",
            "open it as an image instead",
        )
    return np.ascontiguousarray(data.astype(_label_dtype(data), copy=False))


def looks_like_labels(data: np.ndarray) -> bool:
    """True for integer arrays with a handful of small non-negative values (a label map)."""
    if data.size == 0 or not np.issubdtype(data.dtype, np.integer):
        return False
    # A strided sample (a view, no copy of the volume) rejects CT cheaply before full passes.
    if np.unique(data[..., ::4, ::4]).size > MAX_LABELS + 1:
        return False
    lo, hi = int(data.min()), int(data.max())
    if lo < 0 or hi > 65535:
        return False
    # bincount is one pass, unlike np.unique's sort of the whole volume.
    flat = data.ravel()
    if flat.dtype == np.uint64:  # the one integer type bincount will not take as is
        flat = flat.astype(np.int64)
    counts = np.bincount(flat, minlength=1)
    return int(np.count_nonzero(counts)) <= MAX_LABELS + 1


def load_image(path: str | os.PathLike) -> LoadedImage:
    """Read any supported file into display order with its geometry, keeping the stored dtype."""
    p = Path(path)
    if not p.exists():
        raise CTReadError(p, "no such file or folder", "check the path")
    kind = file_format(p)
    if kind is None:
        if p.is_dir():
            raise CTReadError(p, "the folder holds no DICOM files", "choose a DICOM series folder")
        raise CTReadError(
            p,
            "the file type is not supported",
            "use NIfTI (.nii, .nii.gz), MetaImage (.mha, .mhd), NRRD or a DICOM folder",
        )
    if not os.access(p, os.R_OK):
        raise CTReadError(p, "you have no permission to read it", "ask for read access")
    if p.is_file() and p.stat().st_size == 0:
        raise CTReadError(
            p, "the file is empty (0 bytes)", "check that the copy or download finished"
        )
    if kind == "nifti":
        return _load_nifti(p)
    if kind == "dicom":
        return _load_dicom(p)
    return _load_itk_file(p)


# -- NIfTI via nibabel --------------------------------------------------------------------------
def _load_nifti(path: Path) -> LoadedImage:
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError

    corrupt = "the file is damaged or truncated"
    try:
        img = nib.load(str(path))
    except (ImageFileError, HeaderDataError, EOFError, zlib.error, OSError) as e:
        # nibabel's own messages repeat the path and name no cause: look at the bytes instead.
        problem = _nifti_problem(path)
        advice = "copy it again from its source" if problem == corrupt else ""
        raise CTReadError(path, problem, advice) from e
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise CTReadError(path, f"nibabel reads it as {type(img).__name__}, not NIfTI")
    try:
        data = np.asanyarray(img.dataobj)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError, ValueError) as e:
        raise CTReadError(path, corrupt, "copy it again from its source") from e
    data = _squeeze_to_3d(path, data)
    index_to_lps = _RAS_TO_LPS @ np.asarray(img.affine, dtype=float)
    header = img.header
    _, qcode = header.get_qform(coded=True)
    _, scode = header.get_sform(coded=True)
    extra = {
        # The exact header matrices, so a saved mask carries both forms as the scan did.
        "nifti_qform": np.asarray(header.get_qform(), dtype=float).tolist(),
        "nifti_sform": np.asarray(header.get_sform(), dtype=float).tolist(),
    }
    geometry = _make_geometry(
        path,
        data.shape,
        index_to_lps,
        source_format="nifti",
        nifti_qform_code=int(qcode),
        nifti_sform_code=int(scode),
        extra=extra,
    )
    return LoadedImage(geometry.to_display(data), geometry, [], _display_name(path))


def _nifti_problem(path: Path) -> str:
    """Why nibabel refused a file: broken compression or data, or another kind of file."""
    what = describe_file(path)
    if what is not None and "NIfTI" not in what and "gzip" not in what:
        return f"not a NIfTI file: it starts like {what}"
    opener = gzip.open if read_head(path, 2) == b"\x1f\x8b" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            while f.read(1 << 22):  # decompress to the end: a cut-off stream fails here
                pass
    except (OSError, EOFError, zlib.error):
        return "the file is damaged or truncated"
    sizes = {int.from_bytes(head, "little"), int.from_bytes(head, "big")}
    if len(head) == 4 and sizes & {348, 540}:
        return "the file is damaged or truncated"
    if what is not None and "NIfTI" not in what:
        return f"not a NIfTI file: it starts like {what}"
    return "it is not a NIfTI file (there is no NIfTI header at its start)"


# -- MHA / MHD / NRRD and DICOM via SimpleITK ---------------------------------------------------
def _load_itk_file(path: Path) -> LoadedImage:
    import SimpleITK as sitk

    nrrd = path.name.lower().endswith((".nrrd", ".nhdr"))
    # A MetaImage header is plain text whose first key may vary: only other kinds count. Checked
    # before ITK, which would otherwise pick a reader by content (a PNG opens as a 2-D image,
    # or libpng prints its own errors).
    fits = ("an NRRD image",) if nrrd else ("a MetaImage (.mha/.mhd) header", "a text file")
    what = describe_file(path)
    if what is not None and what not in fits:
        kind = "an NRRD" if nrrd else "a MetaImage"
        raise CTReadError(path, f"not {kind} file: it starts like {what}")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        image = reader.Execute()
    except RuntimeError as e:
        problem = "the file is damaged, truncated or not a valid image"
        if path.name.lower().endswith((".mhd", ".nhdr")):
            problem += " (or the voxel data file its header names is missing)"
        raise CTReadError(path, problem, "copy it again") from e
    fmt = "nrrd" if nrrd else "mha"
    return _from_sitk(path, image, fmt, [])


def _load_dicom(path: Path) -> LoadedImage:
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
    return _from_sitk(folder, image, "dicom", notes, extra=extra)


def _slice_tag(reader, k: int, tag: str) -> str:
    """One tag of slice ``k`` as the series reader kept it ('' when the slice has none)."""
    try:
        return reader.GetMetaData(k, tag).strip().rstrip("\x00")
    except RuntimeError:
        return ""


def _from_sitk(path: Path, image, fmt: str, notes: list[str], extra=None) -> LoadedImage:
    import SimpleITK as sitk

    if image.GetNumberOfComponentsPerPixel() != 1:
        raise CTReadError(
            path,
            f"it has {image.GetNumberOfComponentsPerPixel()} values per voxel (a colour or "
            "vector image), not a CT scan",
        )
    dim = image.GetDimension()
    if dim == 4:
        size = image.GetSize()
        if size[3] != 1:
            raise CTReadError(
                path,
                f"it is a 4-D image with {size[3]} volumes",
                "save the one CT volume you want as its own file",
            )
        image = sitk.Extract(image, (*size[:3], 0), (0, 0, 0, 0))
        dim = 3
    if dim != 3:
        raise CTReadError(path, f"it is a {dim}-D image", "open a 3-D CT volume")
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    index_to_lps = np.eye(4)
    index_to_lps[:3, :3] = direction * spacing[None, :]
    index_to_lps[:3, 3] = image.GetOrigin()
    # ITK arrays come out (k, j, i); the geometry works in index order (i, j, k).
    data = sitk.GetArrayViewFromImage(image).T
    data = np.array(data, copy=True)  # the view dies with the SimpleITK image
    geometry = _make_geometry(path, data.shape, index_to_lps, source_format=fmt, extra=extra or {})
    for note in notes:
        _warn(note)
    return LoadedImage(geometry.to_display(data), geometry, list(notes), _display_name(path))


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


# -- shared helpers ------------------------------------------------------------------------------
def _make_geometry(path: Path, shape, index_to_lps: np.ndarray, **kwargs) -> Geometry:
    m = np.asarray(index_to_lps, dtype=float)
    if not np.all(np.isfinite(m)) or abs(np.linalg.det(m[:3, :3])) < 1e-12:
        raise CTReadError(
            path,
            "its voxel-to-world matrix is missing or degenerate (zero voxel size or collinear "
            "axes)",
            "repair the header (spacing and direction) in the tool that made it",
        )
    return Geometry.from_index_to_lps(shape, m, source_path=str(path), **kwargs)


def _squeeze_to_3d(path: Path, data: np.ndarray) -> np.ndarray:
    if data.ndim > 3:
        extra_dims = data.shape[3:]
        if int(np.prod(extra_dims)) != 1:
            raise CTReadError(
                path,
                f"it is a {data.ndim}-D image of shape {data.shape} with "
                f"{int(np.prod(extra_dims))} volumes",
                "save the one CT volume you want as its own file",
            )
        data = data.reshape(data.shape[:3])
    if data.ndim != 3:
        raise CTReadError(path, f"it is a {data.ndim}-D image", "open a 3-D CT volume")
    return data


def _replace_non_finite(hu: np.ndarray, source: str) -> tuple[np.ndarray, str | None]:
    finite = np.isfinite(hu)
    if finite.all():
        return hu, None
    n_bad = int(hu.size - np.count_nonzero(finite))
    if n_bad == hu.size:
        raise CTReadError(source, "every voxel is NaN or infinite", "check how it was exported")
    lo = float(hu[finite].min())
    hi = float(hu[finite].max())
    hu = np.nan_to_num(hu, copy=False, nan=lo, posinf=hi, neginf=lo)
    note = (
        f"{source}: {n_bad} NaN or infinite voxels were replaced (NaN and -inf by the lowest "
        f"value {lo:g} HU, +inf by the highest {hi:g} HU)"
    )
    return hu, note


def _check_same_grid(path, geometry: Geometry, like: Geometry) -> None:
    same = geometry.display_shape == like.display_shape and np.allclose(
        geometry.display_to_lps, like.display_to_lps, atol=1e-3
    )
    if not same:
        raise CTReadError(
            path,
            f"the mask grid {geometry.display_shape} does not lie on the scan grid "
            f"{like.display_shape} voxel for voxel",
            "resample the mask onto the scan first",
        )


def _is_integral(data: np.ndarray) -> bool:
    if np.issubdtype(data.dtype, np.integer) or data.dtype == bool:
        return True
    return bool(np.all(np.isfinite(data)) and np.array_equal(data, np.round(data)))


def _label_dtype(data: np.ndarray) -> np.dtype:
    lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
    for dt in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def _display_name(path: Path) -> str:
    name = path.name
    for suffix in (*NIFTI_SUFFIXES, *ITK_SUFFIXES, ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _warn(message: str) -> None:
    warnings.warn(message, CTReadWarning, stacklevel=3)
