"""ModelConfig: CDI-NSTSEG hyper-parameters and ablation switches (paper defaults), JSON-safe."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

from napari_nstseg._config import known_keys_only

SCALE_FUSIONS = ("attention", "mean")
GLMS = ("nonlocal", "none")
LFM_PATHS = ("both", "foreground", "background", "none")
NORMS = ("batch", "group")
ARCHS = ("cdi_nstseg", "unet")
MAX_LFM_STAGES = 4
# Scales are quarter steps so that every rescaled copy of a padded slice stays an exact
# multiple of the encoder's total stride.
SCALE_STEP = Fraction(1, 4)
MIN_SCALE, MAX_SCALE = 0.25, 2.0
ENCODER_STRIDE = 16


def _fail(name: str, problem: str) -> None:
    raise ValueError(f"ModelConfig.{name} {problem}")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(name, f"must be an integer, got {value!r}.")
    if value < minimum:
        _fail(name, f"must be at least {minimum}, got {value}.")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        _fail(name, f"must be one of {', '.join(map(repr, choices))}, got {value!r}.")


@dataclass(frozen=True)
class ModelConfig:
    """Configuration of CDI-NSTSEG (or the U-Net baseline); ablations are values, not code forks.

    base_width: encoder width b of the U-Net contracting path (levels b, 2b, 4b, 8b, 16b).
    scales: input scales of the shared encoder; the fused features live on the 1.0x grid.
    scale_fusion: "attention" (per-pixel softmax over scales, the paper's SFM) or "mean".
    glm: "nonlocal" (channel + spatial non-local attention) or "none" (a plain 7x7 conv).
    lfm_paths: which LFM branches run: foreground (false positives), background (false
        negatives), both or none.
    lfm_stages: number of Layered Focusing Modules (3 as in the paper, 4 reaches stride 1).
    ssl_guidance: feed the MAE residual map through GRCSF region compensation.
    fused_channels: width of the channel-compressed (CCM) and scale-fused (SFM) features.
    """

    base_width: int = 64
    in_channels: int = 1
    scales: tuple[float, ...] = (0.5, 1.0, 1.5)
    scale_fusion: str = "attention"
    glm: str = "nonlocal"
    lfm_paths: str = "both"
    lfm_stages: int = 3
    ssl_guidance: bool = False
    norm: str = "batch"
    fused_channels: int = 64
    arch: str = "cdi_nstseg"

    def __post_init__(self) -> None:
        _check_int("base_width", self.base_width, 8)
        if self.base_width % 8:
            # 8b/8 spatial-attention projections and b/2-wide Context Exploration (4 branches)
            _fail("base_width", f"must be a multiple of 8, got {self.base_width}.")
        _check_int("in_channels", self.in_channels, 1)
        _check_int("fused_channels", self.fused_channels, 4)
        _check_int("lfm_stages", self.lfm_stages, 0)
        if self.lfm_stages > MAX_LFM_STAGES:
            _fail("lfm_stages", f"must be at most {MAX_LFM_STAGES}, got {self.lfm_stages}.")
        _check_choice("scale_fusion", self.scale_fusion, SCALE_FUSIONS)
        _check_choice("glm", self.glm, GLMS)
        _check_choice("lfm_paths", self.lfm_paths, LFM_PATHS)
        _check_choice("norm", self.norm, NORMS)
        _check_choice("arch", self.arch, ARCHS)
        if not isinstance(self.ssl_guidance, bool):
            _fail("ssl_guidance", f"must be true or false, got {self.ssl_guidance!r}.")
        if self.ssl_guidance and self.arch != "cdi_nstseg":
            _fail("ssl_guidance", "is only available with arch='cdi_nstseg'.")
        if self.ssl_guidance and self.fused_channels % 4:
            # region compensation splits the fused features over 4 attention heads
            _fail(
                "fused_channels",
                f"must be a multiple of 4 with ssl_guidance, got {self.fused_channels}.",
            )
        object.__setattr__(self, "scales", _validated_scales(self.scales))

    @property
    def pad_multiple(self) -> int:
        """Input sides are padded to this multiple so every scaled copy divides the stride."""
        multiple = 2 * ENCODER_STRIDE
        for scale in self.scales:
            denominator = Fraction(scale).limit_denominator(4).denominator
            multiple = math.lcm(multiple, ENCODER_STRIDE * denominator)
        return multiple

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dictionary (scales as a list)."""
        data = asdict(self)
        data["scales"] = list(self.scales)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a dictionary such as to_dict() wrote; unknown keys raise ValueError."""
        return cls(**known_keys_only(cls, data))


def _validated_scales(scales: Any) -> tuple[float, ...]:
    if isinstance(scales, (str, bytes)) or not hasattr(scales, "__iter__"):
        _fail("scales", f"must be a list of numbers, got {scales!r}.")
    values = list(scales)
    if not values:
        _fail("scales", "must contain at least one scale.")
    result = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail("scales", f"must contain numbers only, got {value!r}.")
        step = Fraction(value) / SCALE_STEP
        if not (MIN_SCALE <= value <= MAX_SCALE) or step.denominator != 1:
            _fail(
                "scales",
                f"entries must be multiples of 0.25 between {MIN_SCALE} and {MAX_SCALE}, "
                f"got {value!r}.",
            )
        result.append(float(value))
    if len(set(result)) != len(result):
        _fail("scales", f"must not repeat a scale, got {values!r}.")
    return tuple(result)
