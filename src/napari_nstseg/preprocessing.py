"""CT preprocessing (CDI-NSTSEG design step 0): HU window, z-score, in-plane resampling, ROI crop.

Every array here is in display order: volumes (z, y, x), slices (y, x), stacks of axial slices
(N, y, x). Resampling is in-plane only; the slice axis is never touched, so a slice index in the
network's input is the same slice index in the scan.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from napari_nstseg._config import known_keys_only
from napari_nstseg.windows import DEFAULT_WINDOW, WINDOWS

# Air in HU: what a CT slice is padded with, so padding looks like the space around the patient.
AIR_HU = -1024.0


@dataclass(frozen=True)
class PreprocessConfig:
    """How a checkpoint expects its input: HU window, z-score and working pixel size.

    - ``hu_window``: (width, level) in HU; HU in [level - width/2, level + width/2] maps to [0, 1]
      and everything outside is clipped. Default: the abdomen window (400, 40).
    - ``norm_mean`` / ``norm_std``: the fixed z-score applied after the window,
      ``(x - norm_mean) / norm_std``. The defaults 0.485 / 0.229 are the grey-level statistics
      the authors' 1-channel PFNet_unet normalises with (reference-models.md, section 2); they
      are fixed, not measured per scan, so a slice means the same thing in every scan.
    - ``working_spacing_mm``: in-plane pixel size the network runs at; slices are resampled to it
      (and predictions back), so a 0.7 mm and a 3 mm scan show a lesion at the same pixel size.
      ``None`` keeps each scan's own pixel size.
    - ``pad_multiple``: slices are padded to a multiple of this (32: five 2x poolings, and the
      0.5x branch still has an integer size at stride 16).
    - ``slice_offsets_mm``: the network's input channels, as axial planes at these offsets (mm,
      along z) from the slice being segmented; ``(0.0,)`` is a plain 2-D slice, ``(-3, 0, 3)``
      a 2.5-D input that also shows the planes 3 mm above and below. Planes between slices are
      interpolated linearly, so a 1.5 mm and a 3 mm scan give the network the same anatomy;
      beyond the first and last slice the edge slice is repeated. A small lesion persists over
      neighbouring planes while noise does not, which a single slice cannot show.
    """

    hu_window: tuple[float, float] = WINDOWS[DEFAULT_WINDOW]
    norm_mean: float = 0.485
    norm_std: float = 0.229
    working_spacing_mm: float | None = 1.0
    pad_multiple: int = 32
    slice_offsets_mm: tuple[float, ...] = (0.0,)

    def __post_init__(self) -> None:
        window = tuple(float(v) for v in self.hu_window)
        if len(window) != 2 or not all(math.isfinite(v) for v in window) or window[0] <= 0:
            raise ValueError(
                f"hu_window must be (width, level) with a positive width, got {self.hu_window!r}"
            )
        object.__setattr__(self, "hu_window", window)
        if not (math.isfinite(self.norm_std) and self.norm_std > 0):
            raise ValueError(f"norm_std must be a positive number, got {self.norm_std!r}")
        if not math.isfinite(self.norm_mean):
            raise ValueError(f"norm_mean must be a finite number, got {self.norm_mean!r}")
        if self.working_spacing_mm is not None and not (
            math.isfinite(self.working_spacing_mm) and self.working_spacing_mm > 0
        ):
            raise ValueError(
                f"working_spacing_mm must be a positive size in mm or None, "
                f"got {self.working_spacing_mm!r}"
            )
        if int(self.pad_multiple) != self.pad_multiple or self.pad_multiple < 1:
            raise ValueError(f"pad_multiple must be a positive integer, got {self.pad_multiple!r}")
        object.__setattr__(self, "pad_multiple", int(self.pad_multiple))
        offsets = tuple(float(v) for v in self.slice_offsets_mm)
        if (
            not offsets
            or not all(math.isfinite(v) for v in offsets)
            or 0.0 not in offsets
            or list(offsets) != sorted(set(offsets))
        ):
            raise ValueError(
                "slice_offsets_mm must be increasing z offsets in mm that include 0 (the slice "
                f"itself), e.g. (0,) or (-3, 0, 3); got {self.slice_offsets_mm!r}"
            )
        object.__setattr__(self, "slice_offsets_mm", offsets)

    @property
    def n_channels(self) -> int:
        """Input channels of a network with this preprocessing: one per slice offset."""
        return len(self.slice_offsets_mm)

    @property
    def center_channel(self) -> int:
        """Index of the channel holding the slice being segmented (offset 0)."""
        return self.slice_offsets_mm.index(0.0)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (stored in checkpoint configs)."""
        d = asdict(self)
        d["hu_window"] = list(self.hu_window)
        d["slice_offsets_mm"] = list(self.slice_offsets_mm)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        kwargs = known_keys_only(cls, d)
        for key in ("hu_window", "slice_offsets_mm"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


def context_planes(
    volume: np.ndarray,
    z_indices: Sequence[int],
    z_spacing_mm: float,
    offsets_mm: Sequence[float] = (0.0,),
    yx: tuple[slice, slice] | None = None,
) -> np.ndarray:
    """The planes at ``offsets_mm`` around each slice of ``z_indices``: float32 (N, C, h, w).

    ``volume`` is (z, y, x); planes between slices are linear blends of the two nearest, planes
    beyond the volume repeat its edge slice. ``yx`` restricts the planes to an in-plane box.
    """
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"expected a (z, y, x) volume, got an array of shape {vol.shape}")
    if not (math.isfinite(z_spacing_mm) and z_spacing_mm > 0):
        raise ValueError(f"the slice spacing must be a positive size in mm, got {z_spacing_mm!r}")
    ys, xs = yx or (slice(None), slice(None))
    n_z = vol.shape[0]
    zs = np.asarray(list(z_indices), dtype=float)
    offsets = np.asarray(list(offsets_mm), dtype=float)
    pos = np.clip(zs[:, None] + offsets[None, :] / z_spacing_mm, 0, n_z - 1)
    lo = np.floor(pos + 1e-6).astype(int)
    frac = np.where(pos - lo > 1e-6, pos - lo, 0.0)
    hi = np.minimum(lo + 1, n_z - 1)
    needed = np.unique(np.concatenate([lo.ravel(), hi[frac > 0]]))
    planes = {int(z): np.asarray(vol[int(z), ys, xs], dtype=np.float32) for z in needed}
    first = planes[int(lo.flat[0])] if len(zs) else np.zeros((0, 0), np.float32)
    out = np.empty((len(zs), len(offsets)) + first.shape, np.float32)
    for i in range(len(zs)):
        for c in range(len(offsets)):
            a = planes[int(lo[i, c])]
            f = float(frac[i, c])
            out[i, c] = a if f == 0 else (1 - f) * a + f * planes[int(hi[i, c])]
    return out


def window_unit(hu: np.ndarray | torch.Tensor, hu_window: tuple[float, float]):
    """HU -> [0, 1] through a (width, level) window, clipped outside it."""
    width, level = hu_window
    low = level - width / 2.0
    if isinstance(hu, torch.Tensor):
        return ((hu.float() - low) / width).clamp_(0.0, 1.0)
    out = np.asarray((np.asarray(hu, dtype=np.float32) - np.float32(low)) / np.float32(width))
    return np.clip(out, 0.0, 1.0, out=out) if out.ndim else np.clip(out, 0.0, 1.0)


def window_normalize(
    hu: np.ndarray | torch.Tensor, cfg: PreprocessConfig | None = None
) -> np.ndarray | torch.Tensor:
    """HU -> window to [0, 1] -> fixed z-score (``cfg.norm_mean``, ``cfg.norm_std``), float32.

    Accepts a numpy array (returns float32 numpy) or a torch tensor (returns a float32 tensor on
    the same device), of any shape.
    """
    cfg = cfg or PreprocessConfig()
    unit = window_unit(hu, cfg.hu_window)
    return (unit - cfg.norm_mean) / cfg.norm_std


def normalized_air(cfg: PreprocessConfig | None = None) -> float:
    """The value air (and anything below the window) has after ``window_normalize``."""
    cfg = cfg or PreprocessConfig()
    return (0.0 - cfg.norm_mean) / cfg.norm_std


@dataclass(frozen=True)
class ResampleInfo:
    """How a stack of slices was resampled and padded, to map results back onto its pixels.

    The working grid covers exactly the same field of view as the original (pixel edges
    aligned, ``align_corners=False``), so ``scale_yx`` is the exact original/working size ratio
    and ``working_spacing_yx`` may differ from the requested spacing by under half a pixel
    across the slice. Padding is added after the resampled content, at the bottom and right.
    """

    original_shape: tuple[int, int]
    resampled_shape: tuple[int, int]
    padded_shape: tuple[int, int]
    original_spacing_yx: tuple[float, float]

    @property
    def working_spacing_yx(self) -> tuple[float, float]:
        """Actual pixel size (mm) of the working grid."""
        return tuple(
            s * o / r
            for s, o, r in zip(
                self.original_spacing_yx, self.original_shape, self.resampled_shape, strict=True
            )
        )

    def to_working_yx(self, yx: Sequence[float]) -> tuple[float, float]:
        """Original pixel coordinates (y, x) -> working pixel coordinates (pixel centres)."""
        return tuple(
            (c + 0.5) * r / o - 0.5
            for c, o, r in zip(yx, self.original_shape, self.resampled_shape, strict=True)
        )


def working_shape(
    shape_yx: Sequence[int], spacing_yx: Sequence[float], working_spacing_mm: float | None
) -> tuple[int, int]:
    """Size (y, x) of a slice of ``shape_yx`` pixels of ``spacing_yx`` mm at the working spacing."""
    if working_spacing_mm is None:
        return tuple(int(s) for s in shape_yx)
    return tuple(
        max(1, int(round(n * s / working_spacing_mm)))
        for n, s in zip(shape_yx, spacing_yx, strict=True)
    )


def _check_spacing(spacing_yx: Sequence[float]) -> tuple[float, float]:
    sp = tuple(float(s) for s in spacing_yx)
    if len(sp) != 2 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing_yx must be two positive pixel sizes in mm, got {spacing_yx!r}")
    return sp


def _interpolate(
    stack: torch.Tensor, size: tuple[int, int], mode: str, antialias: bool | None = None
) -> torch.Tensor:
    """(N, H, W) float tensor -> (N, h, w); pixel-edge aligned so geometry round-trips.
    ``antialias`` None: when either axis shrinks."""
    if tuple(stack.shape[-2:]) == tuple(size):
        return stack
    x = stack[:, None]
    if mode == "nearest":
        # "nearest-exact" samples at pixel centres; plain "nearest" is shifted by half a pixel.
        y = F.interpolate(x, size=size, mode="nearest-exact")
    else:
        if antialias is None:
            antialias = size[0] < x.shape[-2] or size[1] < x.shape[-1]
        y = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=antialias)
    return y[:, 0]


def working_resampling_matrices(
    shape_yx: Sequence[int], spacing_yx: Sequence[float], cfg: PreprocessConfig | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The linear maps (h, H) and (w, W) with which ``resample_slices_to_working`` (linear
    mode, before padding) takes a slice S of ``shape_yx`` to the working grid: My @ S @ Mx.T.

    Bilinear resampling, antialiased or not, is separable, so a small change confined to a box
    of the slice (an inserted lesion) can be taken to the working grid through the rows and
    columns of these maps that touch the box, without resampling the whole slice again.
    """
    cfg = cfg or PreprocessConfig()
    h_in, w_in = (int(n) for n in shape_yx)
    h, w = working_shape((h_in, w_in), _check_spacing(spacing_yx), cfg.working_spacing_mm)
    antialias = h < h_in or w < w_in  # as the whole-slice call decides it, for both axes
    my = _interpolate(torch.eye(h_in)[None], (h, h_in), "linear", antialias)[0]
    mx = _interpolate(torch.eye(w_in)[None], (w_in, w), "linear", antialias)[0].T
    return my.numpy().copy(), mx.numpy().copy()


def resample_slices_to_working(
    slices: np.ndarray | torch.Tensor,
    spacing_yx: Sequence[float],
    cfg: PreprocessConfig | None = None,
    *,
    mode: str = "linear",
    pad_value: float | None = None,
) -> tuple[np.ndarray | torch.Tensor, ResampleInfo]:
    """Resample axial slices (N, H, W) or (H, W) in-plane to ``cfg.working_spacing_mm`` and pad.

    ``mode``: "linear" (bilinear, antialiased when shrinking: for images and probabilities) or
    "nearest" (label maps). The result is padded at the bottom/right to a multiple of
    ``cfg.pad_multiple`` with ``pad_value`` (default: the smallest value in ``slices``, i.e. air
    for a CT slice, background for a probability map). Returns float32 of the input's kind
    (numpy or torch) and the ``ResampleInfo`` that ``resample_back`` needs.
    """
    cfg = cfg or PreprocessConfig()
    if mode not in ("linear", "nearest"):
        raise ValueError(f"mode must be 'linear' or 'nearest', got {mode!r}")
    sp = _check_spacing(spacing_yx)
    is_torch = isinstance(slices, torch.Tensor)
    t = slices if is_torch else torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))
    if t.ndim not in (2, 3):
        raise ValueError(f"expected slices of shape (N, H, W) or (H, W), got {tuple(t.shape)}")
    single = t.ndim == 2
    t = t.float()
    if single:
        t = t[None]
    original = (int(t.shape[-2]), int(t.shape[-1]))
    if min(original) < 1:
        raise ValueError(f"cannot resample empty slices of shape {tuple(t.shape)}")
    resampled = working_shape(original, sp, cfg.working_spacing_mm)
    out = _interpolate(t, resampled, mode)
    m = cfg.pad_multiple
    padded = tuple(-(-n // m) * m for n in resampled)
    if padded != resampled:
        fill = float(t.min()) if pad_value is None else float(pad_value)
        out = F.pad(out, (0, padded[1] - resampled[1], 0, padded[0] - resampled[0]), value=fill)
    info = ResampleInfo(original, resampled, padded, sp)
    if single:
        out = out[0]
    return (out if is_torch else out.numpy()), info


def resample_back(
    prob: np.ndarray | torch.Tensor, info: ResampleInfo, *, mode: str = "linear"
) -> np.ndarray | torch.Tensor:
    """Working-grid maps (N, h, w) or (h, w) -> the original slice grid (N, H, W) or (H, W).

    Removes the padding, then resamples with the same pixel-edge alignment as
    ``resample_slices_to_working``, so a structure lands on the pixels it came from.
    """
    if mode not in ("linear", "nearest"):
        raise ValueError(f"mode must be 'linear' or 'nearest', got {mode!r}")
    is_torch = isinstance(prob, torch.Tensor)
    t = prob if is_torch else torch.from_numpy(np.ascontiguousarray(prob, dtype=np.float32))
    single = t.ndim == 2
    if single:
        t = t[None]
    if t.ndim != 3 or tuple(t.shape[-2:]) != tuple(info.padded_shape):
        raise ValueError(
            f"map of shape {tuple(prob.shape)} does not match the working grid "
            f"{info.padded_shape} it should come from"
        )
    h, w = info.resampled_shape
    t = t[:, :h, :w].float()
    out = _interpolate(t, info.original_shape, mode)
    if single:
        out = out[0]
    return out if is_torch else out.numpy()


# -- organ-then-tumor region of interest (cascade paper 001, "crop" with a K-pixel margin) -------
@dataclass(frozen=True)
class RoiBox:
    """An axis-aligned box ``[start, stop)`` per axis inside an array of ``full_shape``."""

    start: tuple[int, ...]
    stop: tuple[int, ...]
    full_shape: tuple[int, ...]

    @property
    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop, strict=True))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.start, self.stop, strict=True))

    def crop(self, array: np.ndarray) -> np.ndarray:
        """The box's part of an array of ``full_shape`` (a view)."""
        if tuple(array.shape[: len(self.full_shape)]) != self.full_shape:
            raise ValueError(
                f"array of shape {array.shape} does not match the ROI's volume {self.full_shape}"
            )
        return array[self.slices]

    def paste(self, patch: np.ndarray, fill: float = 0, out: np.ndarray | None = None):
        """Put a box-shaped result back into a full-size array (new, filled with ``fill``)."""
        if tuple(patch.shape[: len(self.shape)]) != self.shape:
            raise ValueError(f"patch of shape {patch.shape} does not match the ROI {self.shape}")
        if out is None:
            out = np.full(self.full_shape + patch.shape[len(self.shape) :], fill, patch.dtype)
        out[self.slices] = patch
        return out


def roi_box(
    mask: np.ndarray,
    spacing: Sequence[float],
    margin_mm: float | Sequence[float] = 10.0,
) -> RoiBox:
    """Bounding box of ``mask > 0`` grown by ``margin_mm`` on every side, clipped to the array.

    The margin is converted to whole voxels per axis (rounded up), so it is at least
    ``margin_mm`` in every direction wherever the volume allows. Raises when the mask is empty.
    """
    m = np.asarray(mask) > 0
    sp = tuple(float(s) for s in spacing)
    if len(sp) != m.ndim:
        raise ValueError(f"spacing has {len(sp)} values but the mask has {m.ndim} axes")
    margins = (
        (float(margin_mm),) * m.ndim
        if np.isscalar(margin_mm)
        else tuple(float(v) for v in margin_mm)
    )
    if len(margins) != m.ndim or any(v < 0 for v in margins):
        raise ValueError(f"margin_mm must be one or {m.ndim} non-negative sizes, got {margin_mm!r}")
    if not m.any():
        raise ValueError("the region mask is empty: there is no region of interest to crop to")
    start, stop = [], []
    for axis in range(m.ndim):
        other = tuple(a for a in range(m.ndim) if a != axis)
        idx = np.flatnonzero(m.any(axis=other))
        pad = int(math.ceil(margins[axis] / sp[axis] - 1e-9))
        start.append(max(0, int(idx[0]) - pad))
        stop.append(min(m.shape[axis], int(idx[-1]) + 1 + pad))
    return RoiBox(tuple(start), tuple(stop), tuple(m.shape))


def crop_roi(
    volume: np.ndarray,
    mask: np.ndarray,
    spacing: Sequence[float],
    margin_mm: float | Sequence[float] = 10.0,
) -> tuple[np.ndarray, RoiBox]:
    """Crop ``volume`` to the box around ``mask`` plus a margin: (crop, box to paste back)."""
    if np.shape(volume)[: np.ndim(mask)] != np.shape(mask):
        raise ValueError(
            f"region mask of shape {np.shape(mask)} does not match the volume {np.shape(volume)}"
        )
    box = roi_box(mask, spacing, margin_mm)
    return box.crop(volume), box
