"""The panel's "inside organs" mode without Qt (issue 26; the organ-then-tumour cascade of paper
001): which Labels layers can be organ maps of a CT, the labels each holds and their names, the
checks that turn the user's choice into one readable sentence, and the searched-zone outline
layer that shows where the model looked."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_nstseg.organ_labels import TOTALSEGMENTATOR_TOTAL

from .ground_truth import looks_like_ground_truth, ours
from .layers import _set_label_color, find_linked, is_labels, layer_kwargs, link

ORGAN_MODE = "inside organs"
ZONE_ROLE = "searched zone"
DEFAULT_MARGIN_MM = 10.0
# Columns of a Labels layer's features that name its labels, the first one found wins.
_NAME_COLUMNS = ("name", "label_name", "organ", "class", "structure")


class OrganChoiceError(ValueError):
    """A choice organ mode cannot run with; its message is shown as-is."""


@dataclass
class OrganRequest:
    """What organ mode searches: the label map (on the CT's grid), the ticked label ids and
    their names, the margin in mm; ``zone`` is filled in by the run (where it looked)."""

    layer_name: str
    label_map: np.ndarray
    labels: tuple[int, ...]
    names: tuple[str, ...]
    margin_mm: float = DEFAULT_MARGIN_MM
    zone: np.ndarray | None = None

    def describe(self) -> str:
        organs = ", ".join(f"{n} ({v})" for v, n in zip(self.labels, self.names, strict=True))
        return f"{organs} + {self.margin_mm:g} mm"


def on_grid_of(layer: Any, ct: Any) -> bool:
    """Whether ``layer``'s voxels are ``ct``'s: same shape, spacing and origin."""
    return (
        tuple(layer.data.shape) == tuple(ct.data.shape)
        and np.allclose(np.abs(layer.scale), np.abs(ct.scale))
        and np.allclose(layer.translate, ct.translate)
    )


def organ_map_candidates(layers: Iterable[Any], ct: Any) -> list[str]:
    """Names of the Labels layers that can be ``ct``'s organ map: on its grid, not made by this
    plugin (its tumor masks, stage masks and zone outlines); those named like a ground-truth
    lesion contour last, so the first is the organ map a user means."""
    if ct is None or np.ndim(ct.data) != 3:
        return []
    found = [ly for ly in layers if is_labels(ly) and not ours(ly) and on_grid_of(ly, ct)]
    found.sort(key=looks_like_ground_truth)  # stable: the viewer's order otherwise
    return [ly.name for ly in found]


def labels_present(data: Any) -> list[int]:
    """The label ids above 0 that ``data`` holds (a count per value for small integer types:
    on a whole scan far quicker than np.unique's sort)."""
    arr = np.asarray(data)
    if arr.dtype.kind in "ub" or (arr.dtype.kind == "i" and arr.dtype.itemsize <= 2):
        flat = arr.ravel()
        if arr.dtype.kind == "i":
            flat = flat[flat > 0]
        counts = np.bincount(flat.astype(np.int64, copy=False))
        return [int(v) for v in np.flatnonzero(counts) if v > 0]
    return [int(v) for v in np.unique(arr) if v > 0]


def _feature_names(layer: Any) -> dict[int, str]:
    """Label id -> name from the layer's features table (napari's rule: the 'index' column
    gives the label, else the row number does)."""
    features = getattr(layer, "features", None)
    if features is None or len(features) == 0:
        return {}
    column = next((c for c in _NAME_COLUMNS if c in features.columns), None)
    if column is None:
        return {}
    ids = features["index"] if "index" in features.columns else range(len(features))
    return {int(i): str(n) for i, n in zip(ids, features[column], strict=True) if str(n)}


def _looks_totalsegmentator(layer: Any, present: Sequence[int]) -> bool:
    """TotalSegmentator's output: named so, or several labels that are all its "total" ids (a
    mask of one or two painted labels gets no organ names it may not mean)."""
    source = getattr(getattr(layer, "source", None), "path", None) or ""
    if "totalseg" in f"{layer.name} {source}".lower():
        return True
    return len(present) >= 3 and set(present) <= set(TOTALSEGMENTATOR_TOTAL)


def label_names(layer: Any, present: Sequence[int]) -> dict[int, str]:
    """A name for each present label: from the layer's features, else TotalSegmentator's table
    where the layer looks like its output, else "label N"."""
    names = _feature_names(layer)
    table = TOTALSEGMENTATOR_TOTAL if _looks_totalsegmentator(layer, present) else {}
    return {v: names.get(v) or table.get(v) or f"label {v}" for v in present}


def organ_request(
    ct: Any,
    layer: Any,
    ticked: Sequence[int],
    margin_mm: float,
    others: Iterable[Any] = (),
) -> OrganRequest:
    """The organ search the panel asks for; OrganChoiceError with one sentence when there is
    no labels layer, it is on another grid than the CT, no organ is ticked, or a ticked label
    is no longer in the layer. ``others``: the viewer's layers, to name those on other grids."""
    if layer is None:
        elsewhere = [ly.name for ly in others if is_labels(ly) and not ours(ly)]
        hint = (
            f" ({', '.join(map(repr, elsewhere))} {'is' if len(elsewhere) == 1 else 'are'} on "
            "another grid)"
            if elsewhere
            else ""
        )
        raise OrganChoiceError(
            f"'{ORGAN_MODE}' needs an organ Labels layer on the grid of {ct.name!r}{hint}: open "
            "the scan's TotalSegmentator output (or paint the organ in a new Labels layer) and "
            "choose it under 'organ labels'."
        )
    if not is_labels(layer):
        raise OrganChoiceError(f"Layer {layer.name!r} is not a Labels layer of organs.")
    if not on_grid_of(layer, ct):
        raise OrganChoiceError(
            f"Organ labels {layer.name!r} are on another grid than the CT {ct.name!r} "
            f"({tuple(layer.data.shape)} voxels of {_mm(layer.scale)} mm at {_mm(layer.translate)}"
            f" against {tuple(ct.data.shape)} of {_mm(ct.scale)} mm at {_mm(ct.translate)}); "
            "use the organ map made from this very scan."
        )
    if not ticked:
        raise OrganChoiceError(
            f"Tick at least one organ of {layer.name!r} to search inside (under 'organs')."
        )
    data = np.asarray(layer.data)
    present = labels_present(data)
    names = label_names(layer, sorted(set(present) | set(ticked)))
    missing = [v for v in ticked if v not in present]
    if missing:
        gone = ", ".join(f"{names[v]} ({v})" for v in missing)
        raise OrganChoiceError(
            f"Organ labels {layer.name!r} hold no voxel of {gone}; untick it, or paint it "
            "again, then run."
        )
    labels = tuple(int(v) for v in ticked)
    return OrganRequest(layer.name, data, labels, tuple(names[v] for v in labels), float(margin_mm))


def organ_slices(request: OrganRequest, spacing: Sequence[float]) -> list[int]:
    """The slices organ mode runs: those of each ticked organ's box grown by the margin."""
    from napari_nstseg.inference.organs import OrganSearch, organ_boxes, organ_jobs

    search = OrganSearch(request.labels, request.margin_mm)
    jobs = organ_jobs(organ_boxes(request.label_map, spacing, search))
    return sorted({z for _, _, zs in jobs for z in zs})


def _mm(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"


def zone_name(ct_name: str) -> str:
    return f"{ct_name} {ZONE_ROLE}"


def show_zone(viewer: Any, ct: Any, zone: np.ndarray, slices: Sequence[int]) -> Any:
    """Outline on ``ct`` where organ mode looked (the organs grown by the margin), on the
    ``slices`` it ran; the other slices keep what earlier runs showed. Returns the layer."""
    layer = find_linked(viewer, ct, ZONE_ROLE)
    if layer is None or tuple(layer.data.shape) != tuple(ct.data.shape):
        if layer is not None:
            viewer.layers.remove(layer.name)
        kwargs = layer_kwargs(ct)
        kwargs["metadata"]["nstseg_generated"] = True
        layer = viewer.add_labels(
            np.zeros(ct.data.shape, np.uint8), name=zone_name(ct.name), **kwargs
        )
        link(layer, ct, ZONE_ROLE)
        _set_label_color(layer, "yellow")
        # An outline one voxel wide: the CT and the tumor mask stay visible inside the zone.
        layer.contour = 1
        layer.opacity = 1.0
    zs = np.asarray(sorted(int(z) for z in slices), dtype=int)
    if zs.size:
        layer.data[zs] = zone[zs].astype(np.uint8)
        layer.refresh()
    return layer
