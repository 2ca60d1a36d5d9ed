"""The corrections store: the slices a user corrected and confirmed, with their CT, in the case
folder layout `nstseg train` reads (``CASE/ct.nii.gz``, ``CASE/tumour.nii.gz``, ``CASE/case.json``).

One folder per scan, found again by a hash of the scan's voxels, so saving twice updates the
folder instead of adding one. Only the slices listed in ``case.json``'s ``annotated_slices`` are
labelled: the label map is zero elsewhere, but training.data reads those slices only, so a slice
nobody looked at is never taught as tumour-free. Nothing here imports Qt or torch.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_nstseg.io.atomic import AtomicBatch
from napari_nstseg.io.outputs import check_output
from napari_nstseg.io.readers import read_mask
from napari_nstseg.io.volume import Geometry
from napari_nstseg.io.writers import write_mask, write_volume
from napari_nstseg.training.cases import CASE_RECORD_NAME

APP_NAME = "napari-nstseg"
CT_NAME, LABEL_NAME = "ct.nii.gz", "tumour.nii.gz"
RECORD_FORMAT = "napari-nstseg corrections"
# Fine-tuned weights go here, inside the store: case discovery skips a folder without a CT.
WEIGHTS_FOLDER = "weights"
SLICE_AXIS = "axial slice index in display order (inferior to superior), as napari shows it"
TUMOR_LABEL = 1


def default_store() -> Path:
    """The store's folder when the user chose none: the user's data directory (platformdirs)."""
    from platformdirs import user_data_dir

    return Path(user_data_dir(APP_NAME)) / "corrections"


@dataclass(frozen=True)
class ScanIdentity:
    """What identifies a scan: its voxels' sha256 (the key), where it was read from, its grid
    and, for a DICOM series, its series and instance UIDs."""

    voxel_sha256: str
    source_path: str
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    dicom_series_uid: str = ""
    dicom_sop_instance_uids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


def voxel_sha256(hu: np.ndarray) -> str:
    """sha256 of the scan's voxels as float32 in display order, with their shape."""
    array = np.ascontiguousarray(hu, dtype=np.float32)
    digest = hashlib.sha256(repr(array.shape).encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def scan_identity(hu: np.ndarray, geometry: Geometry) -> ScanIdentity:
    extra = geometry.extra or {}
    return ScanIdentity(
        voxel_sha256=voxel_sha256(hu),
        source_path=str(geometry.source_path or ""),
        shape=tuple(int(s) for s in hu.shape),
        spacing_mm=tuple(float(s) for s in geometry.spacing),
        dicom_series_uid=str(extra.get("dicom_series_uid") or ""),
        dicom_sop_instance_uids=tuple(str(u) for u in extra.get("dicom_sop_instance_uids") or ()),
    )


def weights_identity(path: str | Path | None) -> dict[str, Any] | None:
    """The checkpoint a mask came from: its path and its tensors' sha256 (plain JSON, no torch)."""
    if not path:
        return None
    path = Path(path)
    info: dict[str, Any] = {"path": str(path.resolve()), "name": path.stem}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        info["tensors_sha256"] = (meta.get("tensors") or {}).get("sha256")
    except (OSError, ValueError, AttributeError):
        info["tensors_sha256"] = None
    return info


@dataclass
class SavedCorrections:
    """What one save did: the case folder, the slices it now lists, the slices this save wrote,
    and whether the folder is new."""

    folder: Path
    slices: list[int]
    written: list[int]
    created: bool
    record: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredCase:
    folder: Path
    record: dict[str, Any]

    @property
    def slices(self) -> list[int]:
        return [int(z) for z in self.record.get("annotated_slices", [])]


def stored_cases(store: str | Path) -> list[StoredCase]:
    """The store's case folders that carry a corrections record, by folder name."""
    root = Path(store)
    if not root.is_dir():
        return []
    found = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        record_path = sub / CASE_RECORD_NAME
        if not record_path.is_file():
            continue
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a damaged record is reported by training when it reads the folder
        if isinstance(record, dict) and record.get("format") == RECORD_FORMAT:
            found.append(StoredCase(sub, record))
    return found


def find_scan(store: str | Path, identity: ScanIdentity) -> StoredCase | None:
    """The store's folder of this scan (same voxels), or None."""
    for case in stored_cases(store):
        if (case.record.get("scan") or {}).get("voxel_sha256") == identity.voxel_sha256:
            return case
    return None


def case_folder_name(identity: ScanIdentity, name: str = "") -> str:
    """A readable, unique folder name: the scan's name (or file stem) and its hash's start."""
    stem = name or Path(identity.source_path).name or "scan"
    for suffix in (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".dcm"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._") or "scan"
    return f"{stem[:40]}-{identity.voxel_sha256[:10]}"


def save_corrections(
    store: str | Path,
    hu: np.ndarray,
    mask: np.ndarray,
    geometry: Geometry,
    slices: Iterable[int],
    weights: str | Path | None = None,
    name: str = "",
) -> SavedCorrections:
    """Keep ``slices`` of ``mask`` (the corrected tumor mask, display order) with the CT ``hu``
    in the store; the scan's folder is made on its first save and updated on later ones.

    On an update the slices saved now replace what the store held for them, slices saved before
    keep their stored labels, and the CT (the same voxels, by identity) is not written again.
    ``weights``: the checkpoint that made the first mask, recorded on the folder's first save.
    All files of one save appear together or not at all (io.atomic), and nothing is ever
    written over the scan's own file.
    """
    hu, mask = np.asarray(hu), np.asarray(mask)
    if hu.ndim != 3 or mask.shape != hu.shape:
        raise ValueError(
            f"The tumor mask has shape {mask.shape} but its CT has shape {hu.shape}; the mask "
            "must lie on its CT's grid."
        )
    wanted = sorted({int(z) for z in slices})
    if not wanted:
        raise ValueError(
            "No corrected slice to save: correct the tumor mask with the brush, fill or eraser "
            "first."
        )
    if wanted[0] < 0 or wanted[-1] >= hu.shape[0]:
        raise ValueError(f"Slices {wanted} are not all within the scan's {hu.shape[0]} slices.")
    root = Path(store).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    identity = scan_identity(hu, geometry)
    existing = find_scan(root, identity)
    folder = existing.folder if existing else root / case_folder_name(identity, name)
    folder.mkdir(parents=True, exist_ok=True)
    inputs = {"the scan": identity.source_path} if identity.source_path else {}
    ct_path = check_output(folder / CT_NAME, inputs)
    label_path = check_output(folder / LABEL_NAME, inputs)
    record_path = check_output(folder / CASE_RECORD_NAME, inputs)

    labels = np.zeros(hu.shape, np.uint8)
    before: list[int] = []
    if existing is not None and label_path.is_file():
        before = existing.slices
        stored = read_mask(label_path, like=geometry)
        labels[before] = (stored[before] > 0).astype(np.uint8) * TUMOR_LABEL
    labels[wanted] = (mask[wanted] > 0).astype(np.uint8) * TUMOR_LABEL
    annotated = sorted(set(before) | set(wanted))

    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    record = dict(existing.record) if existing else {}
    record.update(
        format=RECORD_FORMAT,
        version=1,
        annotated_slices=annotated,
        slice_axis=SLICE_AXIS,
        note=(
            "Only annotated_slices are labelled; the label map's other slices are unknown, "
            "not tumour-free."
        ),
        scan=identity.to_dict(),
        updated=now,
    )
    record.setdefault("created", now)
    record.setdefault("name", name or Path(identity.source_path).name)
    first = weights_identity(weights)
    if record.get("first_mask_weights") is None:  # kept from the folder's first save on
        record["first_mask_weights"] = first
    history = list(record.get("saves", []))
    history.append({"saved": now, "slices": wanted, "weights": first})
    record["saves"] = history

    with AtomicBatch() as batch:
        if not ct_path.is_file():
            _write_ct(ct_path, hu, geometry, batch)
        write_mask(label_path, labels, geometry, batch=batch)
        text = json.dumps(record, indent=1) + "\n"
        batch.add(record_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
        batch.commit()
    return SavedCorrections(folder, annotated, wanted, existing is None, record)


def _write_ct(path: Path, hu: np.ndarray, geometry: Geometry, batch: AtomicBatch) -> None:
    """The CT as int16 when its HU are whole numbers in range (as scanners store them), else
    float32; on the scan's own grid either way, so its display array reads back unchanged."""
    finite = np.isfinite(hu).all()
    if finite and np.array_equal(hu, np.round(hu)) and hu.min() >= -32768 and hu.max() <= 32767:
        write_mask(path, hu.astype(np.int16), geometry, batch=batch)
    else:
        write_volume(path, hu, geometry, batch=batch)
