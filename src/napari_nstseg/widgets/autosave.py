"""Crash recovery of the tumor mask: a copy in the user cache only while it holds unsaved edits.

The recovery file of a scan is written a few seconds after each change of its mask that is not
the model's own write (brush, fill, Ctrl+Z, a restore). It goes away when the mask is saved with
this plugin's writer (:func:`mask_saved`), when the mask is back to what was saved, and when the
session ends cleanly (viewer or widget closed) with no hand edits left unsaved. So "Restore
autosaved mask" is offered after a crash, or for edits that were never saved, and not after
every clean session.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# Tumor-mask metadata: the path of its recovery file, so the writer can remove it on save.
AUTOSAVE_KEY = "nstseg_autosave"
# Recovery file -> digest of the mask as last saved in this process: an autosave of the same
# content would offer back what is already on disk.
_SAVED: dict[str, str] = {}


def autosave_path(source: str, shape: tuple[int, ...]) -> Path:
    """The recovery file for a scan: keyed by its source path and shape, in the user cache."""
    from platformdirs import user_cache_dir

    key = f"{source}|{tuple(int(s) for s in shape)}"
    digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]
    return Path(user_cache_dir("napari-nstseg")) / "autosave" / f"mask_{digest}.nii.gz"


def source_key(ct: Any) -> str:
    """What identifies a scan across sessions: its file, else (made in napari) its layer name."""
    from .layers import ct_geometry

    return ct_geometry(ct).source_path or f"layer:{ct.name}"


def ct_autosave_path(ct: Any) -> Path:
    """The recovery file of the CT layer ``ct``'s tumor mask."""
    return autosave_path(source_key(ct), tuple(ct.data.shape))


def mask_digest(data: Any) -> str:
    """A digest of a mask's voxels (and shape), to tell whether it changed since a save."""
    array = np.ascontiguousarray(np.asarray(data))
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((array.shape, array.dtype.str)).encode())
    h.update(memoryview(array).cast("B"))
    return h.hexdigest()


def mask_saved(metadata: dict[str, Any] | None, data: Any) -> None:
    """A mask was saved to disk: its recovery file goes, and the same content is not autosaved
    again (called by the plugin's writer with the layer's metadata)."""
    path = (metadata or {}).get(AUTOSAVE_KEY)
    if not path:
        return
    _SAVED[str(path)] = mask_digest(data)
    Path(path).unlink(missing_ok=True)


class Recovery:
    """One widget's recovery files: written after edits, settled when a mask leaves."""

    def write(self, path: Path, data: Any, geometry: Any) -> Path | None:
        """Write ``data`` to ``path`` (atomically), or remove ``path`` when ``data`` is what was
        last saved; returns the path written, if any. Raises OSError and friends."""
        from napari_nstseg.io.writers import write_mask

        mask = np.asarray(data)
        if _SAVED.get(str(path)) == mask_digest(mask):
            self.remove(path)
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        write_mask(path, mask, geometry)
        return path

    @staticmethod
    def remove(path: Path | str) -> None:
        Path(path).unlink(missing_ok=True)

    def settle(self, path: Path, data: Any, geometry: Any, edited: bool) -> bool:
        """A mask leaves cleanly (its layer closed, the viewer or the panel closed): its recovery
        file stays, written now with any edit still pending, only while it holds hand edits
        that were not saved; otherwise it goes. Returns whether a file stays."""
        if edited:
            return self.write(path, data, geometry) is not None
        self.remove(path)
        return False


def settle_mask(recovery: Recovery, mask: Any) -> bool:
    """A layer leaves cleanly: a tumor mask's recovery file is kept only while it holds unsaved
    hand edits (:meth:`Recovery.settle`); whether kept. Raises OSError and friends."""
    from .layers import ct_geometry, edit_tracker, is_labels

    path = mask.metadata.get(AUTOSAVE_KEY)
    if not path or not is_labels(mask):
        return False
    edited = bool(edit_tracker(mask).edited)
    return recovery.settle(Path(path), mask.data, ct_geometry(mask), edited)


def restore(session: Any, ct: Any, track: Callable[[], None]) -> Path:
    """Load the recovery file of the CT layer ``ct`` into its tumor mask (made, linked and then
    handed to ``track`` when there is none) as one undoable step; returns the file read."""
    from napari_nstseg.io.readers import read_mask

    from .layers import LayerNames, Region, ct_geometry, edit_tracker, layer_kwargs, link
    from .layers import write_mask as write_layer
    from .session import mask_role

    path = ct_autosave_path(ct)
    data = read_mask(path, like=ct_geometry(ct))
    layer = session.mask_layer(ct)
    if layer is None:
        layer = session.viewer.add_labels(
            np.zeros(ct.data.shape, np.uint8),
            name=LayerNames(ct.name).tumor_mask,
            **layer_kwargs(ct),
        )
        link(layer, ct, mask_role())
        track()
    region = Region(np.arange(ct.data.shape[0]), slice(None), slice(None))
    tracker = edit_tracker(layer)
    write_layer(layer, region, data, tracker, overwrite=True)
    # The recovery file holds the user's work; which slices were hand-edited is not stored,
    # so every slice with a label is protected from model re-runs like a fresh edit.
    tracker.mark_edited(np.flatnonzero(data.reshape(data.shape[0], -1).any(axis=1)))
    return path
