"""Lesions as `nstseg predict` reports them: in the written file's own voxel index (i, j, k) and
in world millimetres with the convention named (RAS as nibabel, LPS as DICOM and ITK), so a
position can be typed into ITK-SNAP or 3D Slicer. The report's schema is docs/predict-report.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from napari_nstseg.io.volume import Geometry
from napari_nstseg.metrics import label_lesions, measure_lesions

SCHEMA = "nstseg-predict-report/2"
COORDINATES = {
    "index": "ijk: voxel index in the written files' own array order (nibabel's data order for "
    "NIfTI, ITK's index order for MHA/NRRD), starting at 0",
    "ras_mm": "world millimetres, x towards the patient's Right, y Anterior, z Superior "
    "(NIfTI, nibabel, 3D Slicer)",
    "lps_mm": "world millimetres, x towards the patient's Left, y Posterior, z Superior "
    "(DICOM, ITK, ITK-SNAP)",
}


def lesion_table(
    mask_zyx: np.ndarray, geometry: Geometry
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Per lesion (3-D component of the mask, largest first) its size and position in the
    file's frame, and a (z, y, x) label map in which lesion n has the value n (its ``id``)."""
    labels, n = label_lesions(mask_zyx)
    spacing = geometry.spacing
    rows: list[dict[str, Any]] = []
    for i, box in enumerate(ndimage.find_objects(labels, max_label=n), start=1):
        # Measured on its own box, so every lesion costs its size, not the volume's.
        (m,) = measure_lesions(labels[box] == i, spacing)
        start = np.array([s.start for s in box], dtype=float)
        first, last = (int(v + box[0].start) for v in m["slices"])
        rows.append(
            {
                "component": i,
                "centroid_zyx": np.asarray(m["centroid_zyx"]) + start,
                "axial_slice": int(m["axial_slice"] + box[0].start),
                "axial_range": (first, last),
                "voxels": int(m["voxels"]),
                "volume_ml": float(m["volume_ml"]),
                "longest_axial_diameter_mm": float(m["longest_axial_diameter_mm"]),
            }
        )
    rows.sort(key=lambda r: (-r["voxels"], tuple(r["centroid_zyx"])))
    lookup = np.zeros(n + 1, np.int32)
    for rank, row in enumerate(rows, start=1):
        lookup[row["component"]] = rank
    return [_in_file_frame(r, rank, geometry) for rank, r in enumerate(rows, 1)], lookup[labels]


def _in_file_frame(row: dict[str, Any], rank: int, geometry: Geometry) -> dict[str, Any]:
    ijk = geometry.display_to_index(row["centroid_zyx"])
    axis = int(geometry.display_axes[0])  # the file axis the axial slices run along

    def along_axis(z: int) -> int:
        return int(round(geometry.display_to_index((z, 0, 0))[axis]))

    ends = sorted(along_axis(z) for z in row["axial_range"])
    return {
        "id": rank,
        "voxels": row["voxels"],
        "volume_ml": row["volume_ml"],
        "longest_axial_diameter_mm": row["longest_axial_diameter_mm"],
        "centroid_ijk": [float(v) for v in ijk],
        "centroid_ras_mm": [float(v) for v in (geometry.affine_ras @ [*ijk, 1.0])[:3]],
        "centroid_lps_mm": [float(v) for v in (geometry.affine_lps @ [*ijk, 1.0])[:3]],
        "axial_axis": "ijk"[axis],
        "largest_axial_slice": along_axis(row["axial_slice"]),
        "axial_slices": ends,
    }
