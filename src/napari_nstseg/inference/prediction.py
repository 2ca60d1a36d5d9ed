"""Prediction: the engine's result per CDI-NSTSEG stage (GLM, LFM, SSL, SFM), memory-bounded.

Probability maps are kept as uint8 (0..255 = probability 0..1, the default) or float16, never
as float32 copies, so a dozen full-volume maps of a 512 x 512 x 600 scan stay near 150 MB each.
``done`` says per axial slice whether the maps hold a result, so a cancelled run is explicit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from napari_nstseg.postprocess import PostprocessConfig, keep_centred_lesions, remove_small_lesions

PROB_DTYPES = ("uint8", "float16")
ROI = tuple[int, int, int, int, int, int]  # z0, z1, y0, y1, x0, x1 (stops exclusive)


@dataclass(frozen=True)
class MapRequest:
    """Which maps the engine keeps besides the final probability and the mask.

    ``residual`` needs the masked autoencoder named by the checkpoint and costs k extra MAE
    passes per slice; ``scale_weights`` keeps the SFM per-pixel softmax over the three input
    scales at fused level ``scale_level`` (an index into the model's fused levels, None = the
    finest one).
    """

    coarse: bool = True
    stages: bool = True
    residual: bool = False
    scale_weights: bool = False
    scale_level: int | None = None

    @classmethod
    def all(cls) -> MapRequest:
        return cls(coarse=True, stages=True, residual=True, scale_weights=True)

    @classmethod
    def minimal(cls) -> MapRequest:
        """Only the final probability and the mask."""
        return cls(coarse=False, stages=False)


def encode_probability(prob: torch.Tensor, dtype: str) -> np.ndarray:
    """Probabilities in [0, 1] (any float tensor, any device) -> host array of ``dtype``.

    Quantised on the device, so only a quarter (uint8) or half (float16) of the bytes travel.
    """
    if dtype == "uint8":
        out = (prob.float().clamp(0.0, 1.0) * 255.0).round_().to(torch.uint8)
    elif dtype == "float16":
        out = prob.float().clamp(0.0, 1.0).to(torch.float16)
    else:
        raise ValueError(f"probability dtype must be one of {PROB_DTYPES}, got {dtype!r}")
    return out.cpu().numpy()


def decode_probability(values: np.ndarray) -> np.ndarray:
    """A stored map (uint8 0..255 or float16 0..1) -> float32 probabilities 0..1."""
    values = np.asarray(values)
    if values.dtype == np.uint8:
        return values.astype(np.float32) * np.float32(1.0 / 255.0)
    return values.astype(np.float32)


def binarize_probability(values: np.ndarray, threshold: float) -> np.ndarray:
    """``probability >= threshold`` (bool) for a stored map, uint8 0..255 or float 0..1."""
    values = np.asarray(values)
    if values.dtype == np.uint8:
        # A stored value v means probability v/255; compare in the integer domain.
        return values >= math.ceil(threshold * 255.0 - 1e-6)
    return values >= threshold


def _union(a: ROI | None, b: ROI | None) -> ROI | None:
    if a is None or b is None:
        return None
    return (
        min(a[0], b[0]),
        max(a[1], b[1]),
        min(a[2], b[2]),
        max(a[3], b[3]),
        min(a[4], b[4]),
        max(a[5], b[5]),
    )


@dataclass
class Prediction:
    """Stage maps for a (z, y, x) volume; slices not yet ``done`` hold zeros.

    - ``mask``: uint8 tumor mask (1 = tumor) at ``threshold`` on the final probability, without
      the lesions whose longest axial diameter is under ``min_lesion_mm`` or whose extent along
      z is under ``min_depth_mm`` (3-D components over the done slices, measured with
      ``spacing``, the volume's (z, y, x) voxel size in mm).
    - ``final``: final (finest LFM) probability; ``coarse``: GLM coarse localisation
      probability; ``stages``: each LFM stage probability, coarse to fine. uint8 or float16 as
      ``prob_dtype`` says (``decode_probability`` turns either into float32 0..1).
    - ``residual``: SSL residual map |MAE reconstruction - input|, float16, only if asked.
    - ``scale_weights``: SFM scale weights (3, z, y, x) for the 0.5x / 1.0x / 1.5x inputs at fused
      level ``scale_level`` (index into the model's fused levels, deepest first), only if asked.
    - ``done``: bool per axial slice; ``roi``: the (z0, z1, y0, y1, x0, x1) box the results
      cover, None for whole slices.
    - ``centre_zone``: organ mode's centre rule (bool, the volume's shape), set by the run: the
      mask keeps only lesions centred in it, at every operating point; None: no such rule.
    """

    shape: tuple[int, int, int]
    prob_dtype: str = "uint8"
    threshold: float = 0.5
    min_lesion_mm: float = 0.0
    spacing: tuple[float, float, float] | None = None
    min_depth_mm: float = 0.0
    mask: np.ndarray = field(init=False)
    final: np.ndarray = field(init=False)
    coarse: np.ndarray | None = field(init=False, default=None)
    stages: list[np.ndarray] = field(init=False, default_factory=list)
    residual: np.ndarray | None = field(init=False, default=None)
    scale_weights: np.ndarray | None = field(init=False, default=None)
    scale_level: int | None = field(init=False, default=None)
    done: np.ndarray = field(init=False)
    roi: ROI | None = field(init=False, default=None)
    centre_zone: np.ndarray | None = field(init=False, default=None, repr=False)
    timings: dict[str, float] = field(init=False, default_factory=dict)
    info: dict[str, Any] = field(init=False, default_factory=dict)
    _covered: bool = field(init=False, default=False, repr=False)

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"a prediction needs a non-empty (z, y, x) shape, got {self.shape}")
        if self.prob_dtype not in PROB_DTYPES:
            raise ValueError(
                f"probability dtype must be one of {PROB_DTYPES}, got {self.prob_dtype!r}"
            )
        if self.spacing is not None:
            self.spacing = tuple(float(v) for v in self.spacing)
        self.mask = np.zeros(self.shape, np.uint8)
        self.final = np.zeros(self.shape, self.prob_dtype)
        self.done = np.zeros(self.shape[0], bool)

    # -- filling (the engine) -------------------------------------------------------------------
    def _map(self, current: np.ndarray | None, dtype: str, lead: tuple[int, ...] = ()):
        if current is None:
            current = np.zeros(lead + self.shape, dtype)
        return current

    def store(
        self,
        z: np.ndarray,
        box_yx: tuple[slice, slice],
        *,
        final: np.ndarray,
        mask: np.ndarray,
        coarse: np.ndarray | None = None,
        stages: list[np.ndarray] | None = None,
        residual: np.ndarray | None = None,
        scale_weights: np.ndarray | None = None,
    ) -> None:
        """Write one batch: ``z`` slice indices, maps of shape (len(z), h, w) for ``box_yx``
        (scale weights (len(z), 3, h, w)), already encoded with ``encode_probability``."""
        z = np.asarray(z, dtype=np.intp)
        ys, xs = box_yx
        self.final[z, ys, xs] = final
        self.mask[z, ys, xs] = mask
        if coarse is not None:
            self.coarse = self._map(self.coarse, self.prob_dtype)
            self.coarse[z, ys, xs] = coarse
        if stages:
            if len(self.stages) != len(stages):
                self.stages = [np.zeros(self.shape, self.prob_dtype) for _ in stages]
            for target, values in zip(self.stages, stages, strict=True):
                target[z, ys, xs] = values
        if residual is not None:
            self.residual = self._map(self.residual, "float16")
            self.residual[z, ys, xs] = residual
        if scale_weights is not None:
            n_scales = (scale_weights.shape[1],)
            self.scale_weights = self._map(self.scale_weights, self.prob_dtype, n_scales)
            self.scale_weights[:, z, ys, xs] = np.moveaxis(scale_weights, 1, 0)
        self.done[z] = True

    def cover(self, roi: ROI | None) -> None:
        """Record that a run covered ``roi`` (None = whole slices); boxes of runs add up."""
        self.roi = roi if not self._covered else _union(self.roi, roi)
        self._covered = True

    def finish_mask(
        self,
        threshold: float,
        min_lesion_mm: float,
        earlier: np.ndarray | None = None,
        min_depth_mm: float = 0.0,
    ) -> None:
        """Make ``mask`` the mask of the done slices at this operating point, and record it.

        The engine calls this when a run ends (completed or cancelled): the batches wrote
        ``mask`` at ``threshold``, so only the small (or too shallow) lesions remain to be
        removed, over all done slices at once (a lesion may span batches). ``earlier``: per
        slice, True where the mask came from an earlier run into this Prediction; those slices
        are re-cut from the stored probability when the operating point asks for it (they may
        hold another cut).
        """
        point = PostprocessConfig(threshold, min_lesion_mm, min_depth_mm)
        if earlier is not None:
            stale = np.asarray(earlier, bool) & self.done
            changed = not point.matches(self.point)
            if stale.any() and (changed or point.removes_lesions or self.point.removes_lesions):
                self.mask[stale] = self._cut(point.threshold, stale)
        self.threshold, self.min_lesion_mm = point.threshold, point.min_lesion_mm
        self.min_depth_mm = point.min_depth_mm
        if point.removes_lesions and self.done.any():
            self.mask = remove_small_lesions(
                self.mask,
                self._spacing(),
                point.min_lesion_mm,
                slices=self.done_slices,
                min_depth_mm=point.min_depth_mm,
            )
        if self.centre_zone is not None:
            self.mask = keep_centred_lesions(self.mask, self.centre_zone)

    @property
    def point(self) -> PostprocessConfig:
        """The operating point ``mask`` was made at."""
        return PostprocessConfig(self.threshold, self.min_lesion_mm, self.min_depth_mm)

    def _spacing(self) -> tuple[float, float, float]:
        if self.spacing is None:
            raise ValueError(
                "removing small lesions needs the voxel spacing; this prediction records none"
            )
        return self.spacing

    def add_time(self, stage: str, seconds: float) -> None:
        self.timings[stage] = self.timings.get(stage, 0.0) + float(seconds)

    # -- reading (layers, writers, reports) -----------------------------------------------------
    @property
    def complete(self) -> bool:
        """True when every axial slice holds a result."""
        return bool(self.done.all())

    @property
    def done_slices(self) -> np.ndarray:
        return np.flatnonzero(self.done)

    def probability(self, which: str = "final") -> np.ndarray:
        """A map as float32 0..1: "final", "coarse", "stage1".."stageK" (coarse to fine),
        "scale_weights" or "residual". Makes a float32 copy: use per slice on big volumes."""
        if which.startswith("stage") and which[5:].isdigit():
            k = int(which[5:])
            if not 1 <= k <= len(self.stages):
                raise KeyError(f"this prediction has {len(self.stages)} LFM stage maps, not {k}")
            return decode_probability(self.stages[k - 1])
        values = (
            getattr(self, which, None)
            if which in ("final", "coarse", "residual", "scale_weights")
            else None
        )
        if values is None:
            raise KeyError(f"this prediction holds no {which!r} map")
        return decode_probability(values)

    def _cut(self, threshold: float, z: np.ndarray | slice = slice(None)) -> np.ndarray:
        return binarize_probability(self.final[z], threshold).astype(np.uint8)

    def mask_at(
        self, threshold: float, min_lesion_mm: float = 0.0, min_depth_mm: float = 0.0
    ) -> np.ndarray:
        """The mask at another operating point, from the stored final probability (done
        slices): ``p >= threshold``, then lesions under ``min_lesion_mm`` or spanning less than
        ``min_depth_mm`` along z removed."""
        point = PostprocessConfig(threshold, min_lesion_mm, min_depth_mm)
        out = self._cut(point.threshold)
        out[~self.done] = 0
        if point.removes_lesions:
            out = remove_small_lesions(
                out,
                self._spacing(),
                point.min_lesion_mm,
                slices=self.done_slices,
                min_depth_mm=point.min_depth_mm,
            )
        if self.centre_zone is not None:
            out = keep_centred_lesions(out, self.centre_zone)
        return out

    @property
    def nbytes(self) -> int:
        """Host memory held by the maps."""
        arrays = [
            self.mask,
            self.final,
            self.coarse,
            self.residual,
            self.scale_weights,
            *self.stages,
            self.done,
            self.centre_zone,
        ]
        return int(sum(a.nbytes for a in arrays if a is not None))

    @staticmethod
    def bytes_for(
        shape: tuple[int, int, int], maps: MapRequest, n_stages: int, prob_dtype: str = "uint8"
    ) -> int:
        """Host bytes a prediction of ``shape`` keeping ``maps`` will hold."""
        voxels = int(np.prod(shape))
        item = np.dtype(prob_dtype).itemsize
        n_prob = 1 + (1 if maps.coarse else 0) + (n_stages if maps.stages else 0)
        total = voxels * (1 + n_prob * item)
        if maps.residual:
            total += voxels * 2
        if maps.scale_weights:
            total += 3 * voxels * item
        return int(total)
