"""Metrics of the papers (CDI-NSTSEG 000, cascade 001, SoSegFormer 004) and lesion measurements.

Conventions (what a user reading a results table needs to know):

- A prediction is a probability map in [0, 1] or a binary mask; it is binarised at
  ``threshold`` (default 0.5, ``p >= threshold`` is lesion). MAE, S-measure and E-measure use the
  probabilities themselves.
- A ratio whose denominator is zero (e.g. Dice when both the prediction and the ground truth are
  empty, precision when nothing was predicted) is 1.0 when the prediction equals the ground
  truth and 0.0 otherwise. So Dice(empty, empty) = 1, Dice(anything, empty) = 0 and
  recall on a slice without lesion = 1 only when nothing was predicted either.
- Per-image means in the size groups are over images whose ground truth contains lesion;
  groups follow SoSegFormer (004): lesion area below 1 % of the slice, below 10 %, and all.
  ``pooled`` sums the confusion counts over every image, with and without lesion.
- S-measure and E-measure come from pysodmetrics with its benchmark convention (prediction as
  uint8 0-255, min-max stretched per image as the MATLAB toolboxes do), so they compare with
  published camouflaged/salient-object numbers. E-measure is the mean over its 256 thresholds.
- Lesion-level detection works on 3-D connected components (26-connectivity): a ground-truth
  lesion is detected when a predicted component overlaps it by at least one voxel (or, with
  ``min_dice`` > 0, when its Dice with the overlapping predicted components reaches
  ``min_dice``, e.g. 0.1); a predicted component that overlaps no ground-truth lesion is one
  false positive.
- Hausdorff 95 (``hausdorff95_mm``) is MONAI's, between the surfaces of the whole 3-D masks in mm;
  NaN when either mask is empty (no distance exists).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import py_sod_metrics
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

PIXEL_METRICS = (
    "dice",
    "iou",
    "precision",
    "recall",
    "specificity",
    "accuracy",
    "f1",
    "f2",
    "mae",
)
STRUCTURE_METRICS = ("s_measure", "e_measure")
# SoSegFormer (004) groups: lesion area as a fraction of the slice.
AREA_GROUPS: tuple[tuple[str, float], ...] = (("area<1%", 0.01), ("area<10%", 0.10), ("all", 1.01))
DEFAULT_DIAMETER_BINS_MM: tuple[float, ...] = (10.0, 20.0)


# -- pixel-level ----------------------------------------------------------------------------------
@dataclass
class Confusion:
    """Pixel counts of true/false positives/negatives."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(
            self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn
        )

    @property
    def agree(self) -> bool:
        """Prediction equals ground truth."""
        return self.fp == 0 and self.fn == 0

    def _ratio(self, num: float, den: float) -> float:
        if den == 0:
            return 1.0 if self.agree else 0.0
        return float(num) / float(den)

    def f_beta(self, beta: float) -> float:
        b2 = beta * beta
        return self._ratio((1 + b2) * self.tp, (1 + b2) * self.tp + b2 * self.fn + self.fp)

    def metrics(self) -> dict[str, float]:
        tp, fp, fn, tn = self.tp, self.fp, self.fn, self.tn
        return {
            "dice": self._ratio(2 * tp, 2 * tp + fp + fn),
            "iou": self._ratio(tp, tp + fp + fn),
            "precision": self._ratio(tp, tp + fp),
            "recall": self._ratio(tp, tp + fn),
            "specificity": self._ratio(tn, tn + fp),
            "accuracy": self._ratio(tp + tn, tp + tn + fp + fn),
            "f1": self.f_beta(1.0),
            "f2": self.f_beta(2.0),
        }


def _binarize(pred: np.ndarray, threshold: float) -> np.ndarray:
    pred = np.asarray(pred)
    if pred.dtype == bool:
        return pred
    return pred >= threshold


def _counted(pred: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """What the pixel counts are taken on: ``mask`` (> 0) when given, else ``pred`` itself."""
    if mask is None:
        return pred
    if np.shape(mask) != np.shape(pred):
        raise ValueError(
            f"mask of shape {np.shape(mask)} does not match the prediction's {np.shape(pred)}"
        )
    return np.asarray(mask) > 0


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> None:
    if np.shape(pred) != np.shape(gt):
        raise ValueError(
            f"prediction of shape {np.shape(pred)} and ground truth of shape {np.shape(gt)} "
            "must have the same shape"
        )
    if np.size(gt) == 0:
        raise ValueError("cannot score an empty image")


def confusion(pred: np.ndarray, gt: np.ndarray, threshold: float = 0.5) -> Confusion:
    """Pixel confusion counts of a prediction (probabilities or mask) vs a mask (> 0 = lesion)."""
    _check_pair(pred, gt)
    p = _binarize(pred, threshold)
    g = np.asarray(gt) > 0
    tp = int(np.count_nonzero(p & g))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(g)) - tp
    return Confusion(tp, fp, fn, int(g.size) - tp - fp - fn)


def dice(pred: np.ndarray, gt: np.ndarray, threshold: float = 0.5) -> float:
    """Dice = 2|P∩G| / (|P| + |G|); 1.0 for empty vs empty."""
    return confusion(pred, gt, threshold).metrics()["dice"]


def iou(pred: np.ndarray, gt: np.ndarray, threshold: float = 0.5) -> float:
    """IoU = |P∩G| / |P∪G|; 1.0 for empty vs empty."""
    return confusion(pred, gt, threshold).metrics()["iou"]


def _as_probability(pred: np.ndarray) -> np.ndarray:
    p = np.asarray(pred)
    if p.dtype == bool:
        return p.astype(np.float64)
    p = p.astype(np.float64)
    if p.size and (p.min() < 0 or p.max() > 1):
        raise ValueError(
            f"prediction values must lie in [0, 1] (probabilities or a mask), got "
            f"{p.min():g} to {p.max():g}"
        )
    return p


def mae(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean absolute error between the probability map and the binary ground truth."""
    _check_pair(pred, gt)
    return float(np.mean(np.abs(_as_probability(pred) - (np.asarray(gt) > 0))))


def structure_measures(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """S-measure (alpha 0.5) and mean E-measure of one 2-D image, via pysodmetrics."""
    _check_pair(pred, gt)
    if np.ndim(gt) != 2:
        raise ValueError(f"S- and E-measure are defined on 2-D images, got shape {np.shape(gt)}")
    p8 = np.round(_as_probability(pred) * 255).astype(np.uint8)
    g8 = np.where(np.asarray(gt) > 0, 255, 0).astype(np.uint8)
    sm = py_sod_metrics.Smeasure()
    sm.step(pred=p8, gt=g8)
    em = py_sod_metrics.Emeasure()
    em.step(pred=p8, gt=g8)
    return {
        "s_measure": float(sm.get_results()["sm"]),
        "e_measure": float(np.mean(em.get_results()["em"]["curve"])),
    }


def image_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    threshold: float = 0.5,
    structure: bool = True,
    mask: np.ndarray | None = None,
) -> dict[str, float]:
    """All per-image metrics: Dice, IoU, precision, recall, specificity, accuracy, F1, F2, MAE,
    and (2-D, ``structure=True``) S-measure and E-measure.

    ``mask``: the binary mask to count pixels on (e.g. after removing small lesions) instead of
    ``pred >= threshold``; MAE, S- and E-measure still use the probabilities ``pred``.
    """
    out = confusion(_counted(pred, mask), gt, threshold).metrics()
    out["mae"] = mae(pred, gt)
    if structure:
        out.update(structure_measures(pred, gt))
    return out


# -- lesion measurements --------------------------------------------------------------------------
_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)


def hausdorff95_mm(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile symmetric surface distance (mm) between two binary (z, y, x) masks, by
    MONAI's ``compute_hausdorff_distance``; NaN when either mask is empty."""
    import warnings

    import torch
    from monai.metrics import compute_hausdorff_distance

    pred, gt = np.asarray(pred) > 0, np.asarray(gt) > 0
    _check_pair(pred, gt)
    if not pred.any() or not gt.any():
        return float("nan")
    with warnings.catch_warnings():
        # MONAI 1.5+ warns about one of its own internal arguments on every call.
        warnings.simplefilter("ignore", FutureWarning)
        d = compute_hausdorff_distance(
            torch.from_numpy(pred)[None, None],
            torch.from_numpy(gt)[None, None],
            percentile=95,
            spacing=[float(s) for s in spacing],
        )
    return float(d.reshape(-1)[0])


def _as_zyx(mask: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, tuple[float, ...]]:
    m = np.asarray(mask)
    sp = tuple(float(s) for s in spacing)
    if m.ndim == 2 and len(sp) == 2:
        return m[None], (1.0, *sp)
    if m.ndim != 3 or len(sp) != 3:
        raise ValueError(
            f"expected a (z, y, x) mask with 3 spacings or a (y, x) mask with 2, got shape "
            f"{m.shape} and spacing {spacing!r}"
        )
    if not all(s > 0 for s in sp):
        raise ValueError(f"voxel spacing must be positive, got {spacing!r}")
    return m, sp


def feret_diameter_mm(region_yx: np.ndarray, spacing_yx: Sequence[float]) -> float:
    """Largest caliper (max Feret) diameter in mm of a 2-D region, measured between pixel edges.

    Each pixel is the square it covers on screen, so one pixel measures its diagonal and a
    10 x 20 pixel rectangle measures the rectangle's diagonal in mm.
    """
    r = np.asarray(region_yx) > 0
    if not r.any():
        return 0.0
    boundary = r & ~ndimage.binary_erosion(r)
    ys, xs = np.nonzero(boundary)
    corners = np.concatenate(
        [np.stack([ys + dy, xs + dx], axis=1) for dy in (0, 1) for dx in (0, 1)], axis=0
    ).astype(np.float64)
    pts = np.unique(corners, axis=0) * np.asarray(spacing_yx, dtype=np.float64)
    try:
        pts = pts[ConvexHull(pts).vertices]
    except QhullError:
        pass  # all corners on one line cannot happen for pixel squares; keep every point
    d = pts[:, None, :] - pts[None, :, :]
    return float(np.sqrt((d * d).sum(-1)).max())


def longest_axial_diameter_mm(
    region_zyx: np.ndarray, spacing_yx: Sequence[float]
) -> tuple[float, int]:
    """RECIST-style size of a 3-D region: the largest :func:`feret_diameter_mm` over its axial
    slices, and the index (into ``region_zyx``) of the slice where it is reached."""
    region = np.asarray(region_zyx)
    diam, best = 0.0, 0
    for dz in range(region.shape[0]):
        d = feret_diameter_mm(region[dz], spacing_yx)
        if d > diam:
            diam, best = d, dz
    return diam, best


def label_lesions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """3-D connected components (26-connectivity) of ``mask > 0``; labels 1..n."""
    m = np.asarray(mask) > 0
    structure = _STRUCTURE_26 if m.ndim == 3 else np.ones((3,) * m.ndim, dtype=bool)
    labels, n = ndimage.label(m, structure=structure)
    return labels, int(n)


def _measure_components(labels: np.ndarray, n: int, sp: tuple[float, ...]) -> list[dict]:
    """Measurements of components 1..n of a (z, y, x) label array, in component order."""
    voxel_ml = float(np.prod(sp)) / 1000.0
    found = []
    for i, box in enumerate(ndimage.find_objects(labels, max_label=n), start=1):
        region = labels[box] == i
        count = int(region.sum())
        zz, yy, xx = np.nonzero(region)
        centroid = (
            float(zz.mean() + box[0].start),
            float(yy.mean() + box[1].start),
            float(xx.mean() + box[2].start),
        )
        diam, dz = longest_axial_diameter_mm(region, sp[1:])
        best_z = box[0].start + dz
        found.append(
            {
                "component": i,
                "volume_ml": count * voxel_ml,
                "voxels": count,
                "longest_axial_diameter_mm": diam,
                "axial_slice": int(best_z),
                "centroid_zyx": centroid,
                "centroid_mm": tuple(c * s for c, s in zip(centroid, sp, strict=True)),
                "slices": (int(box[0].start), int(box[0].stop) - 1),
            }
        )
    # Largest first, ties by position, so label 1 is the lesion a reader looks at first.
    order = sorted(range(len(found)), key=lambda k: (-found[k]["voxels"], found[k]["centroid_zyx"]))
    for rank, k in enumerate(order, start=1):
        found[k]["label"] = rank
    return found


def measure_lesions(mask_zyx: np.ndarray, spacing: Sequence[float]) -> list[dict]:
    """Per lesion (3-D connected component of ``mask > 0``), largest first:

    ``label`` (1 = largest), ``volume_ml``, ``voxels``, ``longest_axial_diameter_mm`` (max Feret
    diameter, between pixel edges, in the axial slice where it is largest), ``axial_slice`` (that
    slice's z index), ``centroid_zyx`` (voxel index coordinates, as napari's data coordinates),
    ``centroid_mm`` (centroid times spacing) and ``slices`` (first and last z index, inclusive).
    ``spacing`` is the voxel size (z, y, x) in mm; a (y, x) mask with a (y, x) spacing is one slice.
    """
    m, sp = _as_zyx(mask_zyx, spacing)
    labels, n = label_lesions(m)
    found = _measure_components(labels, n, sp)
    found.sort(key=lambda d: d["label"])
    return [
        {"label": d["label"], **{k: v for k, v in d.items() if k not in ("label", "component")}}
        for d in found
    ]


# -- lesion-level detection -----------------------------------------------------------------------
def diameter_bin_names(bins_mm: Sequence[float] = DEFAULT_DIAMETER_BINS_MM) -> list[str]:
    """Names of the diameter groups for bin edges, e.g. (10, 20) -> <10, 10-20, >=20 mm."""
    edges = [float(b) for b in bins_mm]
    if edges != sorted(edges) or len(set(edges)) != len(edges):
        raise ValueError(f"diameter bins must be increasing, got {bins_mm!r}")
    if not edges:
        return ["all"]
    names = [f"<{edges[0]:g} mm"]
    names += [f"{a:g}-{b:g} mm" for a, b in zip(edges[:-1], edges[1:], strict=True)]
    names.append(f">={edges[-1]:g} mm")
    return names


def diameter_bin(diameter_mm: float, bins_mm: Sequence[float] = DEFAULT_DIAMETER_BINS_MM) -> str:
    """The diameter group a lesion falls in (left-closed bins)."""
    names = diameter_bin_names(bins_mm)
    return names[int(np.searchsorted(np.asarray(bins_mm, dtype=float), diameter_mm, "right"))]


@dataclass
class DetectionResult:
    """Lesion-level outcome for one scan."""

    lesions: list[dict]  # one per ground-truth lesion: measurements + detected, dice, size_group
    false_positives: int
    predicted_components: int
    # The voxels of the false-positive components, (z, y, x): where the model errs, for the
    # evaluation's count of sites that recur in every copy of a source region.
    false_positive_mask: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def n_lesions(self) -> int:
        return len(self.lesions)

    @property
    def n_detected(self) -> int:
        return sum(1 for les in self.lesions if les["detected"])


def detect_lesions(
    pred_zyx: np.ndarray,
    gt_zyx: np.ndarray,
    spacing: Sequence[float],
    threshold: float = 0.5,
    min_dice: float = 0.0,
    diameter_bins_mm: Sequence[float] = DEFAULT_DIAMETER_BINS_MM,
) -> DetectionResult:
    """Match predicted and ground-truth lesions of one scan (3-D connected components).

    A ground-truth lesion is detected when some predicted component overlaps it and, if
    ``min_dice`` > 0, the Dice between the lesion and the union of the predicted components
    touching it is at least ``min_dice``. Predicted components touching no lesion are false
    positives.
    """
    _check_pair(pred_zyx, gt_zyx)
    pred, sp = _as_zyx(_binarize(pred_zyx, threshold), spacing)
    gt, _ = _as_zyx(np.asarray(gt_zyx) > 0, spacing)
    gt_labels, n_gt = label_lesions(gt)
    pred_labels, n_pred = label_lesions(pred)
    out = []
    touched_pred: set[int] = set()
    for les in _measure_components(gt_labels, n_gt, sp):
        region = gt_labels == les["component"]
        overlapping = np.unique(pred_labels[region])
        overlapping = overlapping[overlapping > 0]
        touched_pred.update(int(v) for v in overlapping)
        d = 0.0
        if overlapping.size:
            matched = np.isin(pred_labels, overlapping)
            inter = np.count_nonzero(matched & region)
            d = 2.0 * inter / (np.count_nonzero(matched) + np.count_nonzero(region))
        row = {k: v for k, v in les.items() if k != "component"}
        row["detected"] = bool(overlapping.size) and d >= min_dice
        row["dice"] = float(d)
        row["size_group"] = diameter_bin(les["longest_axial_diameter_mm"], diameter_bins_mm)
        out.append(row)
    out.sort(key=lambda r: r["label"])
    untouched = sorted(set(range(1, n_pred + 1)) - touched_pred)
    return DetectionResult(
        lesions=out,
        false_positives=len(untouched),
        predicted_components=n_pred,
        false_positive_mask=np.isin(pred_labels, untouched),
    )


def summarize_detection(
    results: Iterable[DetectionResult],
    diameter_bins_mm: Sequence[float] = DEFAULT_DIAMETER_BINS_MM,
) -> dict:
    """Lesion sensitivity (overall and per diameter group) and false positives per scan."""
    results = list(results)
    if not results:
        raise ValueError("no scans to summarize")
    lesions = [les for r in results for les in r.lesions]
    total = len(lesions)
    detected = sum(1 for les in lesions if les["detected"])
    by_size = {}
    for name in diameter_bin_names(diameter_bins_mm):
        group = [les for les in lesions if les["size_group"] == name]
        by_size[name] = {
            "lesions": len(group),
            "detected": sum(1 for les in group if les["detected"]),
            "sensitivity": (
                sum(1 for les in group if les["detected"]) / len(group) if group else float("nan")
            ),
        }
    fp = sum(r.false_positives for r in results)
    return {
        "scans": len(results),
        "lesions": total,
        "detected": detected,
        "sensitivity": detected / total if total else float("nan"),
        "false_positives": fp,
        "fp_per_scan": fp / len(results),
        "by_diameter": by_size,
    }


# -- image-level aggregation ----------------------------------------------------------------------
@dataclass
class SliceEvaluator:
    """Accumulates per-image metrics over 2-D slices and reports them by lesion-size group.

    ``add(pred, gt, spacing_yx=None, mask=None)``: with a pixel spacing the slice also goes into
    a diameter group (longest diameter of its largest lesion); with a ``mask`` the pixel counts
    are taken on it rather than on ``pred >= threshold`` (see :func:`image_metrics`).
    ``results()`` gives, per group, the number of images and the mean of every metric;
    ``pooled`` sums pixel counts over all images, and ``empty_gt`` reports slices without
    lesion (share with any false-positive pixel).
    """

    threshold: float = 0.5
    structure: bool = True
    diameter_bins_mm: tuple[float, ...] = DEFAULT_DIAMETER_BINS_MM
    rows: list[dict] = field(default_factory=list)
    pooled: Confusion = field(default_factory=Confusion)

    def add(
        self,
        pred: np.ndarray,
        gt: np.ndarray,
        spacing_yx: Sequence[float] | None = None,
        mask: np.ndarray | None = None,
    ) -> dict[str, float]:
        pred = np.squeeze(np.asarray(pred))
        gt = np.squeeze(np.asarray(gt))
        if mask is not None:
            mask = np.squeeze(np.asarray(mask))
        if gt.ndim != 2:
            raise ValueError(f"SliceEvaluator scores 2-D slices, got shape {gt.shape}")
        c = confusion(_counted(pred, mask), gt, self.threshold)
        self.pooled = self.pooled + c
        row = image_metrics(pred, gt, self.threshold, self.structure, mask=mask)
        g = gt > 0
        row["_area_fraction"] = float(g.mean())
        row["_has_lesion"] = bool(g.any())
        row["_any_pred"] = c.tp + c.fp > 0
        if spacing_yx is not None and g.any():
            labels, n = label_lesions(g)
            sizes = ndimage.sum_labels(g, labels, index=np.arange(1, n + 1))
            largest = labels == (int(np.argmax(sizes)) + 1)
            diam = feret_diameter_mm(largest, spacing_yx)
            row["_diameter_group"] = diameter_bin(diam, self.diameter_bins_mm)
        self.rows.append(row)
        return {k: v for k, v in row.items() if not k.startswith("_")}

    def _mean(self, rows: list[dict]) -> dict[str, float]:
        names = PIXEL_METRICS + (STRUCTURE_METRICS if self.structure else ())
        out: dict[str, float] = {"images": len(rows)}
        for name in names:
            out[name] = float(np.mean([r[name] for r in rows])) if rows else float("nan")
        return out

    def results(self) -> dict:
        positive = [r for r in self.rows if r["_has_lesion"]]
        groups = {
            name: self._mean([r for r in positive if r["_area_fraction"] < limit])
            for name, limit in AREA_GROUPS
        }
        by_diameter = {
            name: self._mean([r for r in positive if r.get("_diameter_group") == name])
            for name in diameter_bin_names(self.diameter_bins_mm)
        }
        empty = [r for r in self.rows if not r["_has_lesion"]]
        pooled = self.pooled.metrics()
        return {
            "images": len(self.rows),
            "groups": groups,
            "by_diameter": by_diameter,
            "pooled": pooled,
            "empty_gt": {
                "images": len(empty),
                "with_false_positive": sum(1 for r in empty if r["_any_pred"]),
            },
        }
