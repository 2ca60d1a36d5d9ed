"""What a file really is, from its first bytes, for errors such as "it starts like a PNG image".

A short table rather than a dependency: the general-purpose sniffers (filetype, puremagic) know
no NIfTI, MetaImage or NRRD, the formats a misnamed scan most often is.
"""

from __future__ import annotations

import gzip
import os
import zlib

# (offset, bytes, what the file is); first match wins.
SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (0, b"\xff\xd8\xff", "a JPEG image"),
    (0, b"GIF8", "a GIF image"),
    (0, b"II*\x00", "a TIFF image"),
    (0, b"MM\x00*", "a TIFF image"),
    (0, b"BM", "a BMP image"),
    (0, b"%PDF", "a PDF document"),
    (0, b"PK\x03\x04", "a ZIP archive"),
    (0, b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (0, b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
    (0, b"\x93NUMPY", "a NumPy array file"),
    (0, b"NRRD", "an NRRD image"),
    (0, b"ObjectType", "a MetaImage (.mha/.mhd) header"),
    (128, b"DICM", "a DICOM file"),
    (344, b"n+1\x00", "a NIfTI-1 image"),
    (344, b"ni1\x00", "a NIfTI-1 header (.hdr/.img pair)"),
    (4, b"n+2\x00", "a NIfTI-2 image"),
    (0, b"\x1f\x8b", "a gzip-compressed file"),
)
HEAD_BYTES = 512


def read_head(path: str | os.PathLike, n: int = HEAD_BYTES) -> bytes:
    """The first ``n`` bytes of a file (fewer if it is shorter); b"" if it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def describe(head: bytes) -> str | None:
    """What bytes starting a file look like ('a PNG image'), or None if nothing known."""
    for offset, magic, what in SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return what
    if head and _looks_like_text(head):
        return "a text file"
    return None


def describe_file(path: str | os.PathLike) -> str | None:
    """What a file is from its first bytes; for gzip, what the compressed content starts like
    ('gzip-compressed NRRD image'), or None."""
    head = read_head(path)
    what = describe(head)
    if head[:2] != b"\x1f\x8b":
        return what
    try:
        with gzip.open(path, "rb") as f:
            inner = describe(f.read(HEAD_BYTES))
    except (OSError, EOFError, zlib.error):
        return what
    return f"a gzip-compressed file holding {inner}" if inner else what


def _looks_like_text(head: bytes) -> bool:
    for cut in range(4):  # the head may end inside a multi-byte character
        try:
            text = head[: len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        return all(c.isprintable() or c in "\r\n\t" for c in text)
    return False
