"""Inference engine for CDI-NSTSEG: axial slices in batches through the network, maps back onto
the scan's grid, for chosen slices, the whole volume or a region of interest.

Per batch: HU window + z-score (the checkpoint's PreprocessConfig), in-plane resampling to the
working spacing and padding, the network under ``torch.inference_mode`` with bf16 autocast on
CUDA and on CPUs with native bf16 (fp16 on MPS), sigmoid, resampling back and quantisation to
uint8/float16 on the device, then the batch is pasted into a :class:`Prediction`.
``iter_predict`` yields after every batch, so a caller (the napari widget's thread worker, the
CLI's progress bar) can stop between batches and keep what finished. On a CUDA out-of-memory
error the batch is halved and the run goes on.
"""

from __future__ import annotations

import copy
import gc
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_nstseg.bundled import WEIGHTS_DIR, resolve_weights
from napari_nstseg.inference.device import (
    autocast,
    device_memory_available,
    host_memory_available,
    select_device,
)
from napari_nstseg.inference.prediction import (
    PROB_DTYPES,
    ROI,
    MapRequest,
    Prediction,
    encode_probability,
)
from napari_nstseg.postprocess import PostprocessConfig
from napari_nstseg.preprocessing import (
    PreprocessConfig,
    context_planes,
    normalized_air,
    resample_back,
    resample_slices_to_working,
    roi_box,
    window_normalize,
    working_shape,
)

# Leave this share of the free memory alone: allocator fragmentation, other processes, the OS.
MEMORY_HEADROOM = 0.85
MAX_AUTO_BATCH = 32
# CPU/MPS cost probe: the largest slice side run to measure. Per-pixel time grows with the size
# (caches), so a probe far below the working size under-estimates; 256 costs a quarter of a
# 512 x 512 slice.
CPU_PROBE_SIDE = 256


class WeightsMissingError(FileNotFoundError):
    """The bundled default weights are not installed."""


def default_weights_path() -> Path:
    """Where the bundled default checkpoint lives (``weights/default.json`` + ``.safetensors``)."""
    return WEIGHTS_DIR / "default.json"


def _require_default_weights() -> Path:
    path = default_weights_path()
    if not path.is_file() or not path.with_suffix(".safetensors").is_file():
        raise WeightsMissingError(
            f"No bundled weights at {path.with_suffix('')}.json/.safetensors: this installation "
            "of napari-nstseg ships none, so name a checkpoint explicitly (--weights PATH)."
        )
    return path


@dataclass(frozen=True)
class EngineConfig:
    """How the engine runs.

    - ``batch_size``: axial slices per forward pass (the most it will use; halved on CUDA
      out-of-memory). None: the largest the memory estimate allows, up to 32.
    - ``threshold``: probability at or above which a pixel is tumor; ``min_lesion_mm``: lesions
      (3-D components) whose longest axial diameter is below this are dropped from the mask;
      ``min_depth_mm``: so are lesions spanning less than this along z. None: the operating
      point the checkpoint recommends (its "postprocess" entry), else 0.5, 0 mm and 0 mm;
      :attr:`Segmenter.postprocess` holds the values in use.
    - ``amp``: bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16, AMX), fp16 on
      MPS; other CPUs run float32.
    - ``channels_last``: convolutions in NHWC memory layout on CPUs and CUDA (as training runs
      them); oneDNN ran them 1.4-2.3x faster than NCHW on a 2-core Xeon (benchmarks/throughput.py
      --no-channels-last) and results agree up to floating-point rounding. MPS runs NCHW.
    - ``maps``: which maps to keep when a call does not say.
    - ``prob_dtype``: "uint8" (0..255) or "float16" storage of probability maps.
    - ``residual_masks``: complementary MAE masks per slice for the SSL residual map;
      ``residual_shifts``: patch grids (diagonal offsets) averaged, so patch edges do not show
      (each costs another ``residual_masks`` MAE passes).
    - ``seed``: seeds the MAE masks (per slice), so residual maps do not depend on batching.
    - ``mirror``: test-time augmentation, nnU-Net's mirroring restricted to the flip training
      uses (left-right): every map is the mean of the slice's and its mirror image's, flipped
      back. Twice the model time.
    """

    batch_size: int | None = 4
    threshold: float | None = None
    min_lesion_mm: float | None = None
    min_depth_mm: float | None = None
    amp: bool = True
    channels_last: bool = True
    maps: MapRequest = field(default_factory=MapRequest)
    prob_dtype: str = "uint8"
    residual_masks: int = 4
    residual_shifts: int = 2
    seed: int = 0
    mirror: bool = False

    def __post_init__(self) -> None:
        if self.batch_size is not None and (
            isinstance(self.batch_size, bool)
            or int(self.batch_size) != self.batch_size
            or self.batch_size < 1
        ):
            raise ValueError(f"batch size must be a positive integer, got {self.batch_size!r}")
        if self.batch_size is not None:
            # 2.0 (from JSON) passes the check above; slicing batches needs a real int.
            object.__setattr__(self, "batch_size", int(self.batch_size))
        # Checked here, so a bad value fails when the config is made, not at the first run.
        PostprocessConfig(
            0.5 if self.threshold is None else self.threshold,
            0.0 if self.min_lesion_mm is None else self.min_lesion_mm,
            0.0 if self.min_depth_mm is None else self.min_depth_mm,
        )
        if self.prob_dtype not in PROB_DTYPES:
            raise ValueError(f"prob_dtype must be one of {PROB_DTYPES}, got {self.prob_dtype!r}")
        if self.residual_masks < 2:
            raise ValueError(f"residual_masks must be at least 2, got {self.residual_masks}")
        if self.residual_shifts < 1:
            raise ValueError(f"residual_shifts must be at least 1, got {self.residual_shifts}")


@dataclass(frozen=True)
class ProgressEvent:
    """One finished batch: ``done`` of ``total`` slices, ``z`` the slices this batch finished."""

    done: int
    total: int
    z: tuple[int, ...]
    batch_size: int
    elapsed_s: float
    prediction: Prediction = field(repr=False)

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


@dataclass(frozen=True)
class Estimate:
    """What a run will cost on a device, and whether it can run there at all.

    ``bytes_peak`` is device memory at ``batch_size`` (weights + activations; on the CPU also the
    maps kept), ``host_bytes`` the RAM the kept maps take, ``seconds`` the model time for all
    slices. ``fits`` is False only when even one slice per batch cannot fit; ``reason`` says why
    in one sentence. ``method`` says how the per-slice cost was obtained.
    """

    bytes_peak: int
    seconds: float
    batch_size: int
    fits: bool
    reason: str
    host_bytes: int = 0
    bytes_per_slice: int = 0
    seconds_per_slice: float = 0.0
    bytes_available: int = 0
    working_shape: tuple[int, int] = (0, 0)
    device: str = "cpu"
    method: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["working_shape"] = list(self.working_shape)
        return d


@dataclass(frozen=True)
class _SliceCost:
    fixed_bytes: int
    bytes_per_slice: int
    seconds_fixed: float
    seconds_per_pixel: float
    method: str


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    # MPS and some CUDA paths report exhaustion as a plain RuntimeError.
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _release_cache(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def roi_from_mask(mask_zyx: np.ndarray, spacing: Sequence[float], margin_mm: float = 10.0) -> ROI:
    """ROI box (z0, z1, y0, y1, x0, x1) around ``mask > 0`` plus ``margin_mm`` on every side."""
    box = roi_box(mask_zyx, spacing, margin_mm)
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    return (z0, z1, y0, y1, x0, x1)


def roi_from_corners(
    corners: np.ndarray, shape: Sequence[int], z_range: tuple[int, int] | None = None
) -> ROI:
    """ROI box from rectangle corners in data pixel coordinates, (k, 3) as (z, y, x) or (k, 2)
    as (y, x) (a napari Shapes rectangle); ``z_range`` (start, stop) sets the slices, default
    the corners' own z extent or, for 2-D corners, every slice."""
    pts = np.asarray(corners, dtype=float)
    if pts.ndim != 2 or pts.shape[1] not in (2, 3) or len(pts) == 0:
        raise ValueError(f"rectangle corners must be an array (k, 2) or (k, 3), got {pts.shape}")
    shape = tuple(int(s) for s in shape)
    yx = pts[:, -2:]
    y0, x0 = (max(0, math.floor(v + 0.5)) for v in yx.min(axis=0))
    y1, x1 = (
        min(n, math.floor(v + 0.5) + 1) for v, n in zip(yx.max(axis=0), shape[1:], strict=True)
    )
    if z_range is not None:
        z0, z1 = int(z_range[0]), int(z_range[1])
    elif pts.shape[1] == 3:
        z0 = max(0, math.floor(pts[:, 0].min() + 0.5))
        z1 = min(shape[0], math.floor(pts[:, 0].max() + 0.5) + 1)
    else:
        z0, z1 = 0, shape[0]
    return _check_roi((z0, z1, y0, y1, x0, x1), shape)


def _check_roi(roi: Sequence[int], shape: tuple[int, int, int]) -> ROI:
    if len(roi) != 6:
        raise ValueError(f"an ROI is (z0, z1, y0, y1, x0, x1), got {tuple(roi)!r}")
    box = tuple(int(v) for v in roi)
    for axis, name in enumerate("zyx"):
        start, stop = box[2 * axis], box[2 * axis + 1]
        if not 0 <= start < stop <= shape[axis]:
            raise ValueError(
                f"the ROI's {name} range {start}:{stop} is empty or outside the volume's "
                f"0:{shape[axis]}"
            )
    return box  # type: ignore[return-value]


def _spacing_yx(spacing: Sequence[float]) -> tuple[float, float]:
    sp = tuple(float(s) for s in spacing)
    if len(sp) not in (2, 3) or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(
            f"spacing must be the voxel size (z, y, x) in mm, all positive, got {tuple(spacing)!r}"
        )
    return sp[-2:]


def _spacing_zyx(spacing: Sequence[float]) -> tuple[float, float, float]:
    sp_yx = _spacing_yx(spacing)
    # Lesion sizes are in-plane: a (y, x) spacing needs no slice thickness.
    return (float(spacing[0]) if len(spacing) == 3 else 1.0, *sp_yx)


def _recommended_postprocess(
    meta: dict[str, Any], weights_path: Path | None
) -> PostprocessConfig | None:
    """The operating point a checkpoint recommends (its "postprocess" entry), if any."""
    entry = meta.get("postprocess")
    if entry is None:
        return None
    try:
        return PostprocessConfig.from_dict(entry)
    except (TypeError, ValueError) as exc:
        from napari_nstseg.models.checkpoint import CheckpointError

        raise CheckpointError(
            f"The checkpoint {weights_path or ''} recommends an unusable operating point "
            f"('postprocess' entry): {exc}"
        ) from None


def _model_maps(out: Any, maps: MapRequest, level: int | None) -> torch.Tensor:
    """The model's maps one batch keeps, as probabilities stacked on dim 1: final, then coarse,
    stages and the scale weights of fused ``level`` as ``maps`` asks."""
    planes = [out.final.float().sigmoid()]
    if maps.coarse:
        planes.append(out.coarse.float().sigmoid())
    if maps.stages:
        planes.extend(s.float().sigmoid() for s in out.stages)
    if level is not None:
        planes.append(out.scale_weights[level].float())
    return torch.cat(planes, dim=1)


class Segmenter:
    """A loaded CDI-NSTSEG (or U-Net baseline) checkpoint on one device, ready to predict."""

    def __init__(
        self,
        model: nn.Module,
        preprocessing: PreprocessConfig,
        device: torch.device | str = "auto",
        config: EngineConfig | None = None,
        *,
        meta: dict[str, Any] | None = None,
        weights_path: Path | None = None,
        mae: nn.Module | None = None,
        mae_path: Path | None = None,
        mae_preprocessing: PreprocessConfig | None = None,
    ) -> None:
        self.device = select_device(device)
        self.config = config or EngineConfig()
        self.preprocessing = preprocessing
        self.meta = meta or {}
        self.weights_path = weights_path
        self.model = model.eval().to(self.device, memory_format=self._memory_format(self.device))
        model_cfg = getattr(model, "config", None)
        self.ssl_guidance = bool(getattr(model_cfg, "ssl_guidance", False))
        self.arch = getattr(model_cfg, "arch", type(model).__name__)
        in_channels = int(getattr(model_cfg, "in_channels", 1))
        if in_channels != preprocessing.n_channels:
            raise ValueError(
                f"the model {weights_path or ''} takes {in_channels} input channel(s) but its "
                f"preprocessing makes {preprocessing.n_channels} (slice offsets "
                f"{list(preprocessing.slice_offsets_mm)} mm); the checkpoint's JSON is inconsistent"
            )
        self._mae = mae.eval().to(self.device) if mae is not None else None
        self._mae_path = mae_path
        self._mae_preprocessing = mae_preprocessing
        self._costs: dict[tuple, _SliceCost] = {}
        self._stages_seen: int | None = None
        self.recommended = _recommended_postprocess(self.meta, weights_path)
        self._resolve_postprocess()
        if self.ssl_guidance and self._mae is None and self._mae_path is None:
            raise ValueError(
                f"the checkpoint {weights_path or ''} was trained with SSL guidance but names no "
                "masked autoencoder (a 'mae' entry) to compute the residual maps it needs"
            )

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path | None = None,
        device: str | torch.device = "auto",
        config: EngineConfig | None = None,
        mae_path: str | Path | None = None,
    ) -> Segmenter:
        """Load a segmentation checkpoint onto ``device``: a path, the name of bundled weights
        (``"sarcoma"``) or None for the bundled default.

        A checkpoint may name its masked autoencoder in a "mae" entry (a file name relative to
        the checkpoint); ``mae_path`` overrides it. The MAE is loaded when a residual map is first
        asked for, or at once when the model was trained with SSL guidance.
        """
        from napari_nstseg.models.checkpoint import CheckpointError, load_checkpoint

        device = select_device(device)  # fail on a bad device before reading any file
        path = resolve_weights(path) if path is not None else _require_default_weights()
        model, meta = load_checkpoint(path)
        if meta.get("kind") != "segmentation":
            raise CheckpointError(
                f"{path} is a {meta.get('kind')!r} checkpoint, not a segmentation model."
            )
        preprocessing = PreprocessConfig.from_dict(meta.get("preprocessing") or {})
        if mae_path is None and meta.get("mae"):
            mae_path = Path(path).resolve().parent / str(meta["mae"])
        segmenter = cls(
            model,
            preprocessing,
            device,
            config,
            meta=meta,
            weights_path=Path(path),
            mae_path=Path(mae_path) if mae_path is not None else None,
        )
        if segmenter.ssl_guidance:
            segmenter._load_mae()
        return segmenter

    def _resolve_postprocess(self) -> None:
        """Concrete operating point: the config's values, else the weights', else 0.5 / 0 / 0."""
        values: dict[str, float] = {}
        sources: dict[str, str] = {}
        for name, default in PostprocessConfig().to_dict().items():
            explicit = getattr(self.config, name)
            if explicit is not None:
                values[name], sources[name] = explicit, "explicit"
            elif self.recommended is not None:
                values[name], sources[name] = getattr(self.recommended, name), "weights"
            else:
                values[name], sources[name] = default, "default"
        self.postprocess = PostprocessConfig(**values)
        # Per field: "explicit" (the EngineConfig), "weights" (the checkpoint) or "default".
        self.postprocess_sources = sources

    @property
    def has_mae(self) -> bool:
        """Whether SSL residual maps can be computed (an MAE is loaded or named)."""
        return self._mae is not None or self._mae_path is not None

    @property
    def mae_path(self) -> Path | None:
        """The masked autoencoder checkpoint for residual maps, if one is named."""
        return self._mae_path

    def _load_mae(self) -> nn.Module:
        if self._mae is not None:
            return self._mae
        if self._mae_path is None:
            raise ValueError(
                f"the checkpoint {self.weights_path or ''} names no masked autoencoder, so the "
                "SSL residual map cannot be computed; ask for the other maps only"
            )
        from napari_nstseg.models.checkpoint import CheckpointError, load_checkpoint

        mae, meta = load_checkpoint(self._mae_path)
        if meta.get("kind") != "mae":
            raise CheckpointError(
                f"{self._mae_path} is a {meta.get('kind')!r} checkpoint, not a masked autoencoder."
            )
        self._mae = mae.eval().to(self.device)
        if meta.get("preprocessing"):
            self._mae_preprocessing = PreprocessConfig.from_dict(meta["preprocessing"])
        return self._mae

    @property
    def n_stages(self) -> int:
        """LFM stage maps per slice (as last seen from the model, else from its config)."""
        if self._stages_seen is not None:
            return self._stages_seen
        return int(getattr(getattr(self.model, "config", None), "lfm_stages", 1)) or 1

    def working_shape(self, shape_yx: Sequence[int], spacing: Sequence[float]) -> tuple[int, int]:
        """Padded working-grid size (y, x) the network sees for slices of ``shape_yx``."""
        size = working_shape(shape_yx, _spacing_yx(spacing), self.preprocessing.working_spacing_mm)
        m = self.preprocessing.pad_multiple
        return tuple(-(-n // m) * m for n in size)

    # -- one batch ---------------------------------------------------------------------------------
    def _residual(
        self, hu: torch.Tensor, spacing_yx, z: Sequence[int], mae: nn.Module
    ) -> torch.Tensor:
        """SSL residual maps on the working grid, (N, 1, H, W); one seeded mask set per slice.

        ``hu``: (N, h, w) slices (the MAE sees the segmented slice only, never context planes).
        """
        cfg = self._mae_preprocessing or self.preprocessing
        x = window_normalize(hu, cfg)  # the MAE's own intensity scale...
        # ...on the segmentation network's working grid, so the map lines up with its input.
        x, _ = resample_slices_to_working(
            x, spacing_yx, self.preprocessing, pad_value=normalized_air(cfg)
        )
        maps = []
        for i, zi in enumerate(z):
            gen = torch.Generator(device=hu.device)
            gen.manual_seed(self.config.seed * 1_000_003 + int(zi))
            maps.append(
                mae.residual_map(
                    x[i : i + 1, None],
                    k=self.config.residual_masks,
                    generator=gen,
                    shifts=self.config.residual_shifts,
                )
            )
        return torch.cat(maps).float()

    def _infer(
        self,
        model: nn.Module,
        device: torch.device,
        hu: torch.Tensor,
        spacing_yx: tuple[float, float],
        z: Sequence[int],
        maps: MapRequest,
        timings: dict[str, float],
    ) -> dict[str, Any]:
        """HU planes (N, C, h, w) on ``device`` (C: ``preprocessing.slice_offsets_mm``) -> host
        arrays (N, h, w) ready for Prediction.store."""
        pp = self.preprocessing
        t0 = time.perf_counter()
        n, c = hu.shape[:2]
        x = window_normalize(hu.reshape(n * c, *hu.shape[2:]), pp)
        # A fixed pad value (air): the slices' own minimum would make results depend on batching.
        x, info = resample_slices_to_working(x, spacing_yx, pp, pad_value=normalized_air(pp))
        x = x.reshape(n, c, *x.shape[-2:]).contiguous(memory_format=self._memory_format(device))
        _synchronize(device)
        t1 = time.perf_counter()
        kwargs: dict[str, Any] = {}
        residual = None
        with torch.inference_mode(), autocast(device, self.config.amp):
            if maps.residual or self.ssl_guidance:
                centre = hu[:, pp.center_channel]
                residual = self._residual(centre, spacing_yx, z, self._load_mae())
                if self.ssl_guidance:
                    kwargs["residual"] = residual
            _synchronize(device)
            t2 = time.perf_counter()
            if maps.scale_weights:
                kwargs["return_scale_weights"] = True
            out = model(x, **kwargs)
            mirrored = None
            if self.config.mirror:
                if "residual" in kwargs:
                    kwargs["residual"] = kwargs["residual"].flip(-1)
                mirrored = model(x.flip(-1), **kwargs)
        self._stages_seen = len(out.stages)
        _synchronize(device)
        t3 = time.perf_counter()

        # Every map goes back to the slice grid in one resampling call.
        with torch.inference_mode():
            n_levels = len(out.scale_weights or ())
            level = None
            if maps.scale_weights and n_levels:
                # SegOutput lists fused levels deepest first, so the finest is the last one.
                level = n_levels - 1 if maps.scale_level is None else maps.scale_level
                if not -n_levels <= level < n_levels:
                    raise ValueError(
                        f"scale_level {level} does not exist: this model fuses {n_levels} levels"
                    )
            stack = _model_maps(out, maps, level)
            if mirrored is not None:
                # Probabilities are averaged, not logits, as nnU-Net does.
                stack = (stack + _model_maps(mirrored, maps, level).flip(-1)) * 0.5
            if maps.residual:
                stack = torch.cat([stack, residual], dim=1)
            n, k = stack.shape[:2]
            back = resample_back(stack.reshape(n * k, *stack.shape[-2:]), info)
            back = back.reshape(n, k, *back.shape[-2:])
            final = back[:, 0]
            result: dict[str, Any] = {
                "mask": (final >= self.postprocess.threshold).to(torch.uint8).cpu().numpy(),
                "final": encode_probability(final, self.config.prob_dtype),
            }
            c = 1
            if maps.coarse:
                result["coarse"] = encode_probability(back[:, c], self.config.prob_dtype)
                c += 1
            if maps.stages:
                result["stages"] = [
                    encode_probability(back[:, c + i], self.config.prob_dtype)
                    for i in range(len(out.stages))
                ]
                c += len(out.stages)
            if level is not None:
                w = out.scale_weights[level].shape[1]
                result["scale_weights"] = encode_probability(
                    back[:, c : c + w], self.config.prob_dtype
                )
                result["scale_level"] = level % n_levels
                c += w
            if maps.residual:
                result["residual"] = back[:, c].to(torch.float16).cpu().numpy()
        t4 = time.perf_counter()
        for name, seconds in (
            ("preprocess", t1 - t0),
            ("residual", t2 - t1),
            ("model", t3 - t2),
            ("postprocess", t4 - t3),
        ):
            if name != "residual" or residual is not None:
                timings[name] = timings.get(name, 0.0) + seconds
        return result

    # -- whole runs -------------------------------------------------------------------------------
    def iter_predict(
        self,
        volume_hu: np.ndarray,
        spacing: Sequence[float],
        z_indices: Sequence[int] | None = None,
        roi: Sequence[int] | None = None,
        maps: MapRequest | None = None,
        into: Prediction | None = None,
    ) -> Iterator[ProgressEvent]:
        """Predict batch by batch, yielding a ProgressEvent after each; stop iterating to cancel.

        ``volume_hu``: (z, y, x) HU; ``spacing``: (z, y, x) mm. ``z_indices``: only these slices
        (default all, or all in the ROI). ``roi``: (z0, z1, y0, y1, x0, x1), stops exclusive:
        only that box is processed and pasted back. ``into``: an earlier Prediction of the same
        volume to add to (slices this run does not touch keep their results). Every event carries
        the Prediction being filled; slices not yet finished have ``done == False``.

        When the run ends, completed or stopped, small and shallow lesions are removed from the
        mask of the done slices (``postprocess.min_lesion_mm`` and ``min_depth_mm``, 3-D
        components in the volume's spacing); the masks in the events before that are the plain
        threshold cut.
        """
        vol = np.asarray(volume_hu)
        if vol.ndim != 3:
            raise ValueError(f"the CT volume must be 3-D (z, y, x), got an array of {vol.ndim}-D")
        shape = tuple(int(s) for s in vol.shape)
        _spacing_yx(spacing)  # a bad spacing fails here, before any work
        maps = maps or self.config.maps
        box = _check_roi(roi, shape) if roi is not None else (0, shape[0], 0, shape[1], 0, shape[2])
        z0, z1, y0, y1, x0, x1 = box
        if z_indices is None:
            zs = list(range(z0, z1))
        else:
            zs = sorted({int(z) for z in z_indices})
            outside = [z for z in zs if not z0 <= z < z1]
            if outside:
                raise ValueError(
                    f"slice(s) {outside[:5]} are outside the "
                    f"{'ROI' if roi is not None else 'volume'}'s slices {z0}:{z1}"
                )
        if into is not None:
            if into.shape != shape:
                raise ValueError(
                    f"the prediction to add to is for a volume of {into.shape}, not {shape}"
                )
            if into.prob_dtype != self.config.prob_dtype:
                raise ValueError(
                    f"the prediction to add to stores {into.prob_dtype} maps but this engine "
                    f"makes {self.config.prob_dtype}"
                )
            pred = into
            if pred.spacing is None:
                pred.spacing = _spacing_zyx(spacing)
        else:
            pred = self._new_prediction(shape, spacing)
        earlier = pred.done.copy()
        pred.cover(box if roi is not None else None)
        pred.info.update(device=str(self.device), arch=self.arch)

        batch = self.config.batch_size
        if batch is None and zs:
            est = self.estimate((len(zs), y1 - y0, x1 - x0), spacing, maps=maps)
            if not est.fits:
                raise RuntimeError(est.reason)
            batch = est.batch_size
        start = time.perf_counter()
        try:
            yield from self._batches(vol, zs, box, spacing, maps, batch, pred, start)
        finally:
            # Also on cancel (the caller closes this generator): the kept slices get the same
            # post-processing as a finished run.
            t0 = time.perf_counter()
            pp = self.postprocess
            pred.finish_mask(
                pp.threshold, pp.min_lesion_mm, earlier=earlier, min_depth_mm=pp.min_depth_mm
            )
            if pp.removes_lesions:
                pred.add_time("lesion_filter", time.perf_counter() - t0)
            pred.add_time("total", time.perf_counter() - start)

    def _new_prediction(self, shape: Sequence[int], spacing: Sequence[float]) -> Prediction:
        pp = self.postprocess
        return Prediction(
            tuple(shape),
            self.config.prob_dtype,
            pp.threshold,
            pp.min_lesion_mm,
            spacing=_spacing_zyx(spacing),
            min_depth_mm=pp.min_depth_mm,
        )

    def _batches(self, vol, zs, box, spacing, maps, batch, pred, start) -> Iterator[ProgressEvent]:
        """The batch loop of :meth:`iter_predict`, with CUDA out-of-memory back-off."""
        z0, z1, y0, y1, x0, x1 = box
        sp_z, sp_yx = _spacing_zyx(spacing)[0], _spacing_yx(spacing)
        offsets = self.preprocessing.slice_offsets_mm
        if len(offsets) > 1 and len(spacing) != 3:
            raise ValueError(
                f"this model also looks at the planes {list(offsets)} mm around each slice, so "
                f"it needs the (z, y, x) spacing, not {tuple(spacing)}"
            )
        i = 0
        while i < len(zs):
            chunk = zs[i : i + batch]
            out_of_memory = False
            try:
                # Context planes come from the whole volume, also beyond an ROI's slices.
                planes = context_planes(vol, chunk, sp_z, offsets, (slice(y0, y1), slice(x0, x1)))
                hu = torch.from_numpy(planes).to(self.device)
                arrays = self._infer(self.model, self.device, hu, sp_yx, chunk, maps, pred.timings)
            except Exception as exc:
                if not _is_oom(exc):
                    raise
                out_of_memory = True
            if out_of_memory:
                # Outside the except block, so the traceback's activations can be freed.
                hu = None
                _release_cache(self.device)
                if batch == 1:
                    raise RuntimeError(
                        f"The {self.device} device ran out of memory on a single "
                        f"{y1 - y0}x{x1 - x0} slice; use a smaller ROI or another device."
                    ) from None
                batch = max(1, batch // 2)
                pred.info["oom_backoffs"] = pred.info.get("oom_backoffs", 0) + 1
                continue
            level = arrays.pop("scale_level", None)
            if level is not None:
                pred.scale_level = level
            pred.store(np.asarray(chunk), (slice(y0, y1), slice(x0, x1)), **arrays)
            pred.info["batch_size"] = batch
            i += len(chunk)
            elapsed = time.perf_counter() - start
            yield ProgressEvent(i, len(zs), tuple(chunk), batch, elapsed, pred)

    def predict(
        self,
        volume_hu: np.ndarray,
        spacing: Sequence[float],
        z_indices: Sequence[int] | None = None,
        roi: Sequence[int] | None = None,
        maps: MapRequest | None = None,
        into: Prediction | None = None,
    ) -> Prediction:
        """Run :meth:`iter_predict` to the end and return the Prediction."""
        pred = into
        for event in self.iter_predict(volume_hu, spacing, z_indices, roi, maps, into):
            pred = event.prediction
        if pred is None:  # no slices asked for
            pred = self._new_prediction(np.shape(volume_hu), spacing)
        return pred

    # -- cost -----------------------------------------------------------------------------------
    def _model_on(self, device: torch.device) -> tuple[nn.Module, nn.Module | None]:
        if device == self.device:
            return self.model, self._mae
        mae = copy.deepcopy(self._mae).to(device) if self._mae is not None else None
        return copy.deepcopy(self.model).to(device, memory_format=self._memory_format(device)), mae

    def _memory_format(self, device: torch.device) -> torch.memory_format:
        if self.config.channels_last and device.type in ("cpu", "cuda"):
            return torch.channels_last
        return torch.contiguous_format

    def _slice_cost(
        self, device: torch.device, shape_yx: tuple[int, int], sp_yx, maps: MapRequest
    ) -> _SliceCost:
        """Measure the per-slice memory and time of one batch on ``device`` (cached)."""
        if maps.residual or self.ssl_guidance:
            self._load_mae()
        key = (str(device), tuple(shape_yx), tuple(sp_yx), maps)
        if key in self._costs:
            return self._costs[key]
        model, mae = self._model_on(device)
        saved = self._mae
        self._mae = mae
        try:
            if device.type == "cuda":
                cost = self._measure_cuda(model, device, shape_yx, sp_yx, maps)
            else:
                cost = self._measure_by_modules(model, device, shape_yx, sp_yx, maps)
        finally:
            self._mae = saved
        self._costs[key] = cost
        return cost

    def _dummy_slices(self, n: int, shape_yx, device: torch.device) -> torch.Tensor:
        # Soft tissue everywhere: the cost does not depend on the values.
        return torch.full((n, self.preprocessing.n_channels, *shape_yx), 40.0, device=device)

    def _measure_cuda(self, model, device, shape_yx, sp_yx, maps) -> _SliceCost:
        """Exact: peak allocated bytes and time of batches of 1 and 2 at the real slice size."""
        _release_cache(device)
        base = torch.cuda.memory_allocated(device)

        def run(n: int) -> tuple[int, float]:
            hu = self._dummy_slices(n, shape_yx, device)
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            self._infer(model, device, hu, sp_yx, list(range(n)), maps, {})
            torch.cuda.synchronize(device)
            return torch.cuda.max_memory_allocated(device) - base, time.perf_counter() - t0

        run(1)  # first call pays for cuDNN autotuning and lazy initialisation
        peak1, t1 = run(1)
        try:
            peak2, t2 = run(2)
        except Exception as exc:
            if not _is_oom(exc):
                raise
            _release_cache(device)
            return _SliceCost(0, peak1, 0.0, t1 / math.prod(shape_yx), "measured, batch 1 only")
        per = max(peak2 - peak1, 1)
        pixels = math.prod(shape_yx)
        return _SliceCost(
            fixed_bytes=max(peak1 - per, 0),
            bytes_per_slice=per,
            seconds_fixed=max(t1 - (t2 - t1), 0.0),
            seconds_per_pixel=max(t2 - t1, 1e-9) / pixels,
            method=f"measured on {device} at {shape_yx[0]}x{shape_yx[1]}, batches of 1 and 2",
        )

    def _measure_by_modules(self, model, device, shape_yx, sp_yx, maps) -> _SliceCost:
        """CPU/MPS: no allocator statistics, so add up every layer's output on a probe slice.

        Counting every module output as if none were ever freed is usually well above the true
        peak (inference mode frees most of them at once), the safe side for "does it fit". The
        probe is a working-grid slice of side up to ``CPU_PROBE_SIDE``; its memory and time (of a
        second, hook-free call) are scaled linearly in the pixel count to the real working
        size: convolutions dominate the cost, and the non-local attention, quadratic in pixels,
        runs at stride 16 where it is minor.
        """
        m = self.preprocessing.pad_multiple
        wy, wx = self.working_shape(shape_yx, (1.0, *sp_yx))
        side = max(m, min(CPU_PROBE_SIDE, max(wy, wx)) // m * m)
        probe = (side, side)
        modules = [model] + ([self._mae] if self._mae is not None else [])
        work_sp = self.preprocessing.working_spacing_mm
        sp = (work_sp, work_sp) if work_sp is not None else (1.0, 1.0)
        total = [0]

        def hook(_module, _inputs, output) -> None:
            for t in output if isinstance(output, (tuple, list)) else (output,):
                if isinstance(t, torch.Tensor):
                    total[0] += t.numel() * t.element_size()

        hu = self._dummy_slices(1, probe, device)
        handles = [
            sub.register_forward_hook(hook)
            for mod in modules
            for sub in mod.modules()
            if not list(sub.children())
        ]
        try:
            self._infer(model, device, hu, sp, [0], maps, {})
        finally:
            for h in handles:
                h.remove()
        # Timed apart from the hooked call, which pays for the hooks, lazy initialisation and
        # oneDNN's kernels for a new shape: timing that one put estimates at 2-3x the real run.
        t0 = time.perf_counter()
        self._infer(model, device, hu, sp, [0], maps, {})
        _synchronize(device)
        seconds = time.perf_counter() - t0
        scale = (wy * wx) / (side * side)
        return _SliceCost(
            fixed_bytes=0,
            bytes_per_slice=int(total[0] * scale),
            seconds_fixed=0.0,
            seconds_per_pixel=seconds / (side * side),
            method=(
                f"layer outputs summed and time taken at {side}x{side} on {device}, scaled to "
                f"the working size {wy}x{wx} (memory usually over-estimated)"
            ),
        )

    def estimate(
        self,
        volume_shape: Sequence[int],
        spacing: Sequence[float],
        device: str | torch.device | None = None,
        maps: MapRequest | None = None,
    ) -> Estimate:
        """Memory and time for predicting a (z, y, x) volume (or ROI) on ``device``.

        On CUDA the per-slice cost is measured exactly (peak allocated bytes and time for
        batches of 1 and 2 at the real size); on the CPU and MPS it is measured on a small slice
        and scaled (see ``_measure_by_modules``). The batch size is the largest, up to
        ``config.batch_size`` (32 when None), that fits in ``MEMORY_HEADROOM`` of the free
        memory; ``fits`` is False only if a batch of one slice does not.
        """
        shape = tuple(int(s) for s in volume_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"volume shape must be (z, y, x), all positive, got {volume_shape!r}")
        dev = self.device if device is None else select_device(device)
        maps = maps or self.config.maps
        sp_yx = _spacing_yx(spacing)
        work = self.working_shape(shape[1:], spacing)
        weights = sum(
            t.numel() * t.element_size()
            for mod in (self.model, self._mae)
            if mod is not None
            for t in (*mod.parameters(), *mod.buffers())
        )
        cap = self.config.batch_size or MAX_AUTO_BATCH
        cost = None
        try:
            cost = self._slice_cost(dev, shape[1:], sp_yx, maps)
        except Exception as exc:
            if not _is_oom(exc):
                raise
        if cost is None:
            _release_cache(dev)
            return Estimate(
                bytes_peak=0,
                seconds=math.inf,
                batch_size=0,
                fits=False,
                reason=(
                    f"A single {shape[1]}x{shape[2]} slice (working grid {work[0]}x{work[1]}) "
                    f"runs out of memory on {dev}; use a smaller ROI, a coarser working spacing "
                    "or another device."
                ),
                host_bytes=Prediction.bytes_for(shape, maps, self.n_stages, self.config.prob_dtype),
                working_shape=work,
                device=str(dev),
                method="out of memory",
            )
        # After measuring: the model has now shown how many stage maps it makes.
        host = Prediction.bytes_for(shape, maps, self.n_stages, self.config.prob_dtype)
        seconds_per_slice = cost.seconds_fixed + cost.seconds_per_pixel * math.prod(work)
        host_free = host_memory_available()
        shared = dev.type != "cuda"  # CPU and Apple unified memory hold the maps too
        free = device_memory_available(dev)
        budget = int((free if dev.type == "cuda" else min(free, host_free)) * MEMORY_HEADROOM)
        # Weights already on the device are not part of the free memory just measured.
        resident = weights if dev != self.device else 0
        fixed = resident + cost.fixed_bytes + (host if shared else 0)
        need_one = fixed + cost.bytes_per_slice
        room = budget - fixed
        batch = int(max(1, min(cap, room // max(cost.bytes_per_slice, 1), shape[0])))
        fits_device = need_one <= budget
        fits_host = shared or host <= host_free * MEMORY_HEADROOM
        peak = weights + cost.fixed_bytes + batch * cost.bytes_per_slice + (host if shared else 0)
        if not fits_device:
            reason = (
                f"One {shape[1]}x{shape[2]} slice (working grid {work[0]}x{work[1]}) needs about "
                f"{format_bytes(need_one)} on {dev} but only {format_bytes(budget)} is usable; "
                "use a smaller ROI, fewer maps, a coarser working spacing or another device."
            )
        elif not fits_host:
            reason = (
                f"The maps for a {shape[0]}x{shape[1]}x{shape[2]} volume need "
                f"{format_bytes(host)} of RAM but only {format_bytes(host_free)} is free; ask "
                "for fewer maps or a smaller ROI."
            )
        else:
            reason = (
                f"Fits: batches of {batch} need about {format_bytes(peak)} of the "
                f"{format_bytes(budget)} usable on {dev}."
            )
        return Estimate(
            bytes_peak=int(peak),
            seconds=float(seconds_per_slice * shape[0]),
            batch_size=batch if fits_device and fits_host else 0,
            fits=bool(fits_device and fits_host),
            reason=reason,
            host_bytes=int(host),
            bytes_per_slice=int(cost.bytes_per_slice),
            seconds_per_slice=float(seconds_per_slice),
            bytes_available=int(budget),
            working_shape=work,
            device=str(dev),
            method=cost.method,
        )

    def with_config(self, **changes: Any) -> Segmenter:
        """The same loaded model with some EngineConfig fields changed (no reload)."""
        other = copy.copy(self)
        other.config = replace(self.config, **changes)
        if other.config.channels_last != self.config.channels_last:
            # Module.to changes a module in place, and this one is shared with self.
            other.model = copy.deepcopy(self.model).to(
                memory_format=other._memory_format(other.device)
            )
        other._costs = {}
        other._resolve_postprocess()
        return other
