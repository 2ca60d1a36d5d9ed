"""Reading CT scans and writing masks back onto their own voxel grid."""

from .errors import CTReadError, CTReadWarning, MaskWriteError
from .readers import load_image, looks_like_labels, read_ct, read_mask
from .volume import METADATA_KEY, CTVolume, Geometry, geometry_from_metadata
from .writers import write_mask, write_volume

__all__ = [
    "METADATA_KEY",
    "CTReadError",
    "CTReadWarning",
    "CTVolume",
    "Geometry",
    "MaskWriteError",
    "geometry_from_metadata",
    "load_image",
    "looks_like_labels",
    "read_ct",
    "read_mask",
    "write_mask",
    "write_volume",
]
