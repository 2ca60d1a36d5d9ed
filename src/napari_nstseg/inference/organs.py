"""Organ-then-tumour search (cascade paper 001) at a size-invariant scale (CL-MSDA 003): each
organ is cropped with a margin, zoomed so that it fills the network's working field, segmented,
mapped back onto the scan's grid, and every map is kept only within the organ grown by a
margin (and, where the weights ask for it, only lesions centred in or near the organ); the
rest of the scan is 0."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from napari_nstseg.organ_labels import TOTALSEGMENTATOR_TOTAL

if TYPE_CHECKING:  # torch only when a model runs: `nstseg predict` checks masks before it
    from napari_nstseg.inference.engine import ProgressEvent
    from napari_nstseg.inference.prediction import MapRequest, Prediction


@dataclass(frozen=True)
class OrganSearch:
    """Where to look. ``labels``: organ label ids of the label map; ``margin_mm``: the crop
    around each organ and the zone kept around it (lesions at an organ's edge count);
    ``field_mm``: the working field an organ's crop should fill (None: no zoom); the zoom is
    held between ``min_zoom`` and ``max_zoom`` (1 and 1: the network sees the scan's own scale,
    right for weights not trained on zoomed organs). ``centre_mm``: a lesion is kept only when
    its centre lies in the organ or within this distance of it (chosen on validation, stored
    with the weights); None: every lesion in the zone."""

    labels: tuple[int, ...]
    margin_mm: float = 10.0
    field_mm: float | None = None
    min_zoom: float = 1.0
    max_zoom: float = 1.0
    centre_mm: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(int(v) for v in self.labels))
        if not self.labels or min(self.labels) < 1:
            raise ValueError(f"organ labels must be ids above 0, got {self.labels!r}")
        if not (math.isfinite(self.margin_mm) and self.margin_mm >= 0):
            raise ValueError(f"the organ margin must be 0 mm or more, got {self.margin_mm!r}")
        if not 0 < self.min_zoom <= self.max_zoom:
            raise ValueError(
                f"zoom limits must satisfy 0 < min_zoom <= max_zoom, got "
                f"{self.min_zoom!r} and {self.max_zoom!r}"
            )
        if self.field_mm is not None and not self.field_mm > 0:
            raise ValueError(f"field_mm must be a positive size in mm, got {self.field_mm!r}")
        if self.centre_mm is not None and not (
            math.isfinite(self.centre_mm) and self.centre_mm >= 0
        ):
            raise ValueError(
                f"centre_mm (how far a lesion's centre may lie from the organ) must be 0 mm or "
                f"more, got {self.centre_mm!r}"
            )

    @classmethod
    def for_weights(
        cls, labels: Sequence[int], margin_mm: float, meta: dict[str, Any] | None
    ) -> OrganSearch:
        """The search over ``labels`` with the zoom limits and the centre rule the checkpoint
        stores under ``organ_search`` (``field_mm``, ``min_zoom``, ``max_zoom``, ``centre_mm``);
        none stored: zoom 1, the scale the weights were trained at, and no centre rule."""
        stored = (meta or {}).get("organ_search") or {}
        keys = ("field_mm", "min_zoom", "max_zoom", "centre_mm")
        return cls(tuple(labels), margin_mm, **{k: stored[k] for k in keys if k in stored})

    def names(self, names: dict[int, str] | None = None) -> list[str]:
        """Each label's organ name (TotalSegmentator's "total" table by default), or its id."""
        table = TOTALSEGMENTATOR_TOTAL if names is None else names
        return [table.get(v, f"label {v}") for v in self.labels]

    def zoom(self, extent_mm: float) -> float:
        """How much to enlarge a crop ``extent_mm`` wide (its longer in-plane side)."""
        if self.field_mm is None or extent_mm <= 0:
            return min(max(1.0, self.min_zoom), self.max_zoom)
        return min(max(self.field_mm / extent_mm, self.min_zoom), self.max_zoom)


@dataclass(frozen=True)
class OrganBox:
    """One connected extent (along z) of one organ, with its crop box and zoom."""

    label: int
    box: tuple[int, int, int, int, int, int]  # z0, z1, y0, y1, x0, x1 (stops exclusive)
    zoom: float


def check_label_map(labels: np.ndarray, shape: Sequence[int], wanted: Sequence[int], name: str):
    """One readable error for an organ mask that cannot be used: wrong grid, empty, or without
    a wanted label (named)."""
    if tuple(labels.shape) != tuple(shape):
        raise ValueError(
            f"{name}: the organ mask is {tuple(labels.shape)} voxels, the CT {tuple(shape)}; "
            "give a mask on the CT's own grid"
        )
    present = set(np.unique(labels).tolist()) - {0}
    if not present:
        raise ValueError(
            f"{name}: the organ mask is empty (no voxel has organ label "
            f"{', '.join(map(str, wanted))})"
        )
    missing = [v for v in wanted if v not in present]
    if missing:
        raise ValueError(
            f"{name}: no voxel has organ label {', '.join(map(str, missing))} "
            f"(labels present: {', '.join(map(str, sorted(present)[:20]))})"
        )


def _runs(z: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive runs [start, stop) of sorted slice indices."""
    if z.size == 0:
        return []
    cut = np.flatnonzero(np.diff(z) > 1) + 1
    return [(int(r[0]), int(r[-1]) + 1) for r in np.split(z, cut)]


def organ_boxes(
    labels: np.ndarray, spacing: Sequence[float], search: OrganSearch
) -> list[OrganBox]:
    """Crop boxes (organ bounding box plus the margin, inside the volume) per organ and
    connected z-extent, each with its zoom."""
    sp = [float(s) for s in spacing]
    grow = [int(math.ceil(search.margin_mm / s)) for s in sp]
    boxes = []
    for label in search.labels:
        organ = labels == label
        zs = np.flatnonzero(organ.reshape(organ.shape[0], -1).any(axis=1))
        for a, b in _runs(zs):
            ys = np.flatnonzero(organ[a:b].any(axis=(0, 2)))
            xs = np.flatnonzero(organ[a:b].any(axis=(0, 1)))
            lo = (a, ys[0], xs[0])
            hi = (b, ys[-1] + 1, xs[-1] + 1)
            box = []
            for d in range(3):
                box += [max(0, lo[d] - grow[d]), min(labels.shape[d], hi[d] + grow[d])]
            extent = max((box[3] - box[2]) * sp[1], (box[5] - box[4]) * sp[2])
            boxes.append(OrganBox(int(label), tuple(int(v) for v in box), search.zoom(extent)))
    return boxes


def grown_organs(organ: np.ndarray, spacing: Sequence[float], mm: float) -> np.ndarray:
    """``organ`` (bool) grown by ``mm`` (3-D distance in mm)."""
    organ = np.asarray(organ, bool)
    if mm <= 0:
        return organ.copy()
    grown = np.zeros(organ.shape, bool)
    boxes = ndimage.find_objects(organ.astype(np.uint8))
    if not boxes or boxes[0] is None:
        return grown
    # The distance transform only over the organs' box grown by the reach: whole scans are big.
    sp = [float(s) for s in spacing]
    grow = [int(math.ceil(mm / s)) + 1 for s in sp]
    box = tuple(
        slice(max(0, s.start - g), min(n, s.stop + g))
        for s, g, n in zip(boxes[0], grow, organ.shape, strict=True)
    )
    grown[box] = ndimage.distance_transform_edt(~organ[box], sampling=sp) <= mm
    return grown


def search_zone(labels: np.ndarray, spacing: Sequence[float], search: OrganSearch) -> np.ndarray:
    """The organs grown by ``margin_mm`` (3-D, in mm): where lesions are kept."""
    return grown_organs(np.isin(labels, search.labels), spacing, search.margin_mm)


def centre_zone(
    labels: np.ndarray, spacing: Sequence[float], search: OrganSearch
) -> np.ndarray | None:
    """Where a kept lesion's centre must lie: the organs grown by ``centre_mm`` (no farther
    than the zone); None when the search has no centre rule."""
    if search.centre_mm is None:
        return None
    reach = min(search.centre_mm, search.margin_mm)
    return grown_organs(np.isin(labels, search.labels), spacing, reach)


def clip_to_zone(pred: Prediction, zone: np.ndarray) -> None:
    """Every map and the mask 0 outside the searched zone."""
    outside = ~zone
    for arr in (pred.final, pred.mask, pred.coarse, pred.residual, *pred.stages):
        if arr is not None:
            arr[outside] = 0
    if pred.scale_weights is not None:
        pred.scale_weights[:, outside] = 0


def organ_jobs(
    boxes: Sequence[OrganBox],
    z_indices: Sequence[int] | None = None,
    roi: Sequence[int] | None = None,
) -> list[tuple[OrganBox, tuple[int, int, int, int, int, int], list[int]]]:
    """What organ mode runs: each box cut to ``roi`` and with the slices of ``z_indices`` in
    it, as (box, cut box, slices); boxes left with no slice are dropped."""
    wanted = None if z_indices is None else {int(z) for z in z_indices}
    jobs = []
    for ob in boxes:
        z0, z1, y0, y1, x0, x1 = ob.box
        if roi is not None:
            r = [int(v) for v in roi]
            z0, y0, x0 = max(z0, r[0]), max(y0, r[2]), max(x0, r[4])
            z1, y1, x1 = min(z1, r[1]), min(y1, r[3]), min(x1, r[5])
            if z0 >= z1 or y0 >= y1 or x0 >= x1:
                continue
        zs = list(range(z0, z1)) if wanted is None else sorted(wanted & set(range(z0, z1)))
        if zs:
            jobs.append((ob, (z0, z1, y0, y1, x0, x1), zs))
    return jobs


def iter_predict_in_organs(
    engine,
    volume_hu: np.ndarray,
    spacing: Sequence[float],
    labels: np.ndarray,
    search: OrganSearch,
    z_indices: Sequence[int] | None = None,
    roi: Sequence[int] | None = None,
    maps: MapRequest | None = None,
    into: Prediction | None = None,
) -> Iterator[ProgressEvent]:
    """Organ mode over ``engine`` (a ``Segmenter``): each organ box (within ``roi`` and the
    slices ``z_indices`` when given) runs as an ROI with its in-plane spacing declared
    ``zoom`` times larger, so the engine resamples it ``zoom`` times finer and maps it back;
    then everything outside ``search_zone`` is set to 0 and the operating point re-applied.
    Yields the engine's progress events, numbered over all organs."""
    from napari_nstseg.inference.engine import ProgressEvent

    engine = engine.for_organs()  # every box and the final cut at the organ-mode point
    vol = np.asarray(volume_hu)
    check_label_map(labels, vol.shape, search.labels, "organ mask")
    sp = tuple(float(s) for s in spacing)
    boxes = organ_boxes(labels, sp, search)
    jobs = organ_jobs(boxes, z_indices, roi)
    pred = into if into is not None else engine._new_prediction(vol.shape, sp)
    pred.centre_zone = None  # set for this search once its organs are done
    total = sum(len(zs) for _, _, zs in jobs)
    done = 0
    try:
        for ob, box, zs in jobs:
            declared = (sp[0], sp[1] * ob.zoom, sp[2] * ob.zoom)
            last = 0
            for event in engine.iter_predict(vol, declared, zs, box, maps, pred):
                last = event.done
                yield ProgressEvent(
                    done + event.done, total, event.z, event.batch_size, event.elapsed_s, pred
                )
            done += last
    finally:
        # Also on cancel: what was kept is clipped to the zone like a finished run.
        clip_to_zone(pred, search_zone(labels, sp, search))
        pred.centre_zone = centre_zone(labels, sp, search)
        pp = engine.postprocess
        pred.finish_mask(pp.threshold, pp.min_lesion_mm, min_depth_mm=pp.min_depth_mm)
        pred.info["organs"] = {
            "labels": list(search.labels),
            "margin_mm": search.margin_mm,
            "centre_mm": search.centre_mm,
            "boxes": [
                {"label": b.label, "box": list(b.box), "zoom": round(b.zoom, 3)} for b in boxes
            ],
        }


def predict_in_organs(engine, volume_hu, spacing, labels, search, **kwargs) -> Prediction:
    """Run :func:`iter_predict_in_organs` to the end and return the Prediction."""
    pred = kwargs.get("into")
    for event in iter_predict_in_organs(engine, volume_hu, spacing, labels, search, **kwargs):
        pred = event.prediction
    if pred is None:  # no organ slice to run
        pred = engine._new_prediction(np.shape(volume_hu), spacing)
    return pred
