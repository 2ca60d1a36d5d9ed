"""How the engine runs (EngineConfig) and what it reports after each batch (ProgressEvent)."""

from __future__ import annotations

from dataclasses import dataclass, field

from napari_nstseg.inference.prediction import PROB_DTYPES, MapRequest, Prediction
from napari_nstseg.postprocess import PostprocessConfig


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
