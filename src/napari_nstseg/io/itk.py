"""MetaImage (.mha/.mhd) and NRRD (.nrrd/.nhdr) through SimpleITK, read and written."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import CTReadError
from .loaded import LoadedImage, make_geometry, warn
from .sniff import describe_file
from .volume import Geometry


def load_itk_file(path: Path) -> LoadedImage:
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
    return from_sitk(path, image, fmt, [])


def from_sitk(path: Path, image, fmt: str, notes: list[str], extra=None) -> LoadedImage:
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
    geometry = make_geometry(path, data.shape, index_to_lps, source_format=fmt, extra=extra or {})
    for note in notes:
        warn(note)
    return LoadedImage(geometry.to_display(data), geometry, list(notes))


def write_itk(tmp: str, source: np.ndarray, geometry: Geometry) -> None:
    import SimpleITK as sitk

    m = geometry.affine_lps
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    direction = m[:3, :3] / spacing[None, :]
    # SimpleITK arrays are (k, j, i); the source array is in index order (i, j, k).
    image = sitk.GetImageFromArray(np.ascontiguousarray(source.T))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(v) for v in m[:3, 3]])
    image.SetDirection([float(v) for v in direction.ravel()])
    sitk.WriteImage(image, tmp, useCompression=True)
