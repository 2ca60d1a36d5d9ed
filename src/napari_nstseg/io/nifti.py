"""NIfTI through nibabel: read with its sform/qform choice, write with the scan's own matrices."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from .errors import CTReadError
from .loaded import LoadedImage, make_geometry, squeeze_to_3d
from .sniff import describe_file, read_head
from .volume import Geometry

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def load_nifti(path: Path) -> LoadedImage:
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
    data = squeeze_to_3d(path, data)
    index_to_lps = _RAS_TO_LPS @ np.asarray(img.affine, dtype=float)
    header = img.header
    _, qcode = header.get_qform(coded=True)
    _, scode = header.get_sform(coded=True)
    extra = {
        # The exact header matrices, so a saved mask carries both forms as the scan did.
        "nifti_qform": np.asarray(header.get_qform(), dtype=float).tolist(),
        "nifti_sform": np.asarray(header.get_sform(), dtype=float).tolist(),
    }
    geometry = make_geometry(
        path,
        data.shape,
        index_to_lps,
        source_format="nifti",
        nifti_qform_code=int(qcode),
        nifti_sform_code=int(scode),
        extra=extra,
    )
    return LoadedImage(geometry.to_display(data), geometry, [])


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


def write_nifti(tmp: str, source: np.ndarray, geometry: Geometry) -> None:
    import nibabel as nib

    affine_ras = geometry.affine_ras
    image = nib.Nifti1Image(source, affine=None)
    header = image.header
    header.set_data_dtype(source.dtype)
    header.set_xyzt_units(xyz="mm")
    qcode, scode = geometry.nifti_qform_code, geometry.nifti_sform_code
    qform = geometry.extra.get("nifti_qform") if geometry.source_format == "nifti" else None
    sform = geometry.extra.get("nifti_sform") if geometry.source_format == "nifti" else None
    if qform is not None and sform is not None:
        # The scan's own header matrices and codes: tools that prefer the qform (or the sform)
        # then see the mask exactly where they see the scan.
        image.set_qform(np.asarray(qform), code=qcode)
        image.set_sform(np.asarray(sform), code=scode)
    if qform is None or not np.allclose(header.get_best_affine(), affine_ras, atol=1e-4):
        # No NIfTI source (DICOM, ITK, napari-only), or its header no longer says where the
        # voxels are: write the geometry's affine, labelled as scanner coordinates unless told.
        qcode = qcode or 1
        scode = scode or 1
        image.set_qform(affine_ras, code=qcode)
        image.set_sform(affine_ras, code=scode)
    nib.save(image, tmp)
