"""The table of file formats (as nnU-Net's LIST_OF_IO_CLASSES): suffixes, reader and writer."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dicom import is_dicom_folder, load_dicom
from .itk import load_itk_file, write_itk
from .loaded import LoadedImage
from .nifti import load_nifti, write_nifti
from .volume import Geometry

# Header and voxels in two files: a save could not replace both at once.
DETACHED = "that format keeps header and voxels in two files, which cannot be saved atomically"


@dataclass(frozen=True)
class FileFormat:
    """One format the plugin reads, and writes where ``write`` is set.

    - ``suffixes``: lower case; a name matches the longest that ends it (".nii.gz" before ".nii").
    - ``read``: the file (or, for a folder format, the file or its folder) in display order with
      its geometry (io/loaded.py); each reader raises CTReadError naming what is wrong.
    - ``write``: writes a source-grid array (index order i, j, k) with the geometry's affine to a
      path it is given (a temporary file that io/writers.py moves into place).
    - ``folder``: for a format stored as a folder of files (a DICOM series), whether a folder
      holds one; napari and ``read`` then open the folder.
    - ``refusal``: for a readable format without ``write``, why a mask is not saved in it (the
      writer's error says so instead of "not supported").
    """

    name: str
    suffixes: tuple[str, ...]
    read: Callable[[Path], LoadedImage] | None = None
    write: Callable[[str, np.ndarray, Geometry], None] | None = None
    folder: Callable[[Path], bool] | None = None
    refusal: str = ""


# Order matters only to messages, napari's file dialogs (the first writable suffix is the
# default) and napari.yaml, which lists the same suffixes in this order (tests/io/test_formats.py).
FORMATS: tuple[FileFormat, ...] = (
    FileFormat("NIfTI", (".nii.gz", ".nii"), load_nifti, write_nifti),
    FileFormat("MetaImage", (".mha",), load_itk_file, write_itk),
    FileFormat("MetaImage", (".mhd",), load_itk_file, refusal=DETACHED),
    FileFormat("NRRD", (".nrrd",), load_itk_file, write_itk),
    FileFormat("NRRD", (".nhdr",), load_itk_file, refusal=DETACHED),
    # A .dcm file opens its whole series; masks of a DICOM series are saved as DICOM SEG
    # (io/dicom_seg.py), which needs the series itself and has a writer of its own.
    FileFormat("DICOM series", (".dcm",), load_dicom, folder=is_dicom_folder),
)


def _suffixes(formats) -> tuple[str, ...]:
    return tuple(s for f in formats for s in f.suffixes)


def readable_suffixes() -> tuple[str, ...]:
    """Every suffix a file the plugin opens may end with, in table order."""
    return _suffixes(f for f in FORMATS if f.read is not None)


def volume_file_suffixes() -> tuple[str, ...]:
    """Suffixes of formats that hold a whole volume in one file (not a series of files):
    the files training's case discovery pairs."""
    return _suffixes(f for f in FORMATS if f.read is not None and f.folder is None)


def writable_suffixes() -> tuple[str, ...]:
    """Suffixes masks and maps can be saved with, in table order (the first is the default)."""
    return _suffixes(f for f in FORMATS if f.write is not None)


def matching_suffix(name: str, suffixes: tuple[str, ...]) -> str | None:
    """The longest of ``suffixes`` that ends ``name`` (any case), else None."""
    lower = name.lower()
    return max((s for s in suffixes if lower.endswith(s)), key=len, default=None)


def strip_suffix(name: str) -> str:
    """``name`` without the suffix of any format in the table (unchanged if it has none)."""
    suffix = matching_suffix(name, _suffixes(FORMATS))
    return name[: -len(suffix)] if suffix else name


def format_of(path: str | os.PathLike) -> FileFormat | None:
    """The readable format of a file (by its suffix) or folder (by its content), else None."""
    p = Path(path)
    if p.is_dir():
        return next((f for f in FORMATS if f.folder is not None and f.folder(p)), None)
    return _by_suffix(p.name, [f for f in FORMATS if f.read is not None])


def writer_of(path: str | os.PathLike) -> FileFormat | None:
    """The entry that saves a file of this name: the first with its suffix and a writer, else
    the first with its suffix (whose ``refusal`` says why not), else None."""
    suffix = matching_suffix(Path(path).name, _suffixes(FORMATS))
    if suffix is None:
        return None
    matching = [f for f in FORMATS if suffix in f.suffixes]
    return next((f for f in matching if f.write is not None), matching[0])


def _by_suffix(name: str, formats: list[FileFormat]) -> FileFormat | None:
    suffix = matching_suffix(name, _suffixes(formats))
    return next((f for f in formats if suffix in f.suffixes), None) if suffix else None


def describe(suffixes: tuple[str, ...]) -> str:
    """Suffixes for a message: ".nii.gz, .nii, .mha or .nrrd"."""
    return suffixes[0] if len(suffixes) == 1 else f"{', '.join(suffixes[:-1])} or {suffixes[-1]}"


def describe_readable() -> str:
    """The readable formats for a message, by name with their suffixes: "NIfTI (.nii.gz, .nii),
    MetaImage (.mha, .mhd), ... or a DICOM series (a folder, or one of its .dcm files)"."""
    names: dict[str, list[str]] = {}
    for f in FORMATS:
        if f.read is not None:
            names.setdefault(f.name, []).extend(f.suffixes)
    parts = []
    for name, suffixes in names.items():
        folder = any(f.folder is not None for f in FORMATS if f.name == name)
        shown = ", ".join(suffixes)
        parts.append(
            f"a {name} (a folder, or one of its {shown} files)" if folder else f"{name} ({shown})"
        )
    return describe(tuple(parts))
