"""Configuration of training runs: TrainConfig (segmentation, its variants' shared budget) and
MAEPretrainConfig (masked-autoencoder pretraining), JSON round-trips and the ``--set`` parser."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from napari_nstseg._config import known_keys_only, nested_from_dict, nested_to_dict
from napari_nstseg.models.config import ModelConfig
from napari_nstseg.models.losses import LossConfig
from napari_nstseg.models.mae import MAEConfig
from napari_nstseg.models.variants import get_variant
from napari_nstseg.preprocessing import PreprocessConfig
from napari_nstseg.training.data import AugmentConfig, SamplingConfig
from napari_nstseg.training.organ_crops import OrganCropConfig

OPTIMIZERS = ("adamw", "sgd")
MIN_BATCH = 4


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["key=value", ...]`` -> dict; values are JSON when they parse ("1.0", "[1.0]", "true"),
    comma lists become lists of numbers, anything else stays a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {item!r}.")
        try:
            value: Any = json.loads(text)
        except json.JSONDecodeError:
            if "," in text:
                try:
                    value = [float(v) for v in text.split(",") if v.strip()]
                except ValueError:
                    value = text
            else:
                value = text
        out[key] = value
    return out


def _sampling_from_dict(d: dict[str, Any]) -> SamplingConfig:
    d = dict(d)
    if isinstance(d.get("augment"), dict):
        aug = dict(d["augment"])
        if "scale_range" in aug:
            aug["scale_range"] = tuple(aug["scale_range"])
        d["augment"] = AugmentConfig(**aug)
    for key in ("crop_size", "label_values", "online_diameter_mm"):
        if d.get(key) is not None:
            d[key] = tuple(d[key])
    return SamplingConfig(**d)


def _organ_search_from_dict(d: dict[str, Any]) -> OrganCropConfig:
    d = known_keys_only(OrganCropConfig, d)
    if d.get("labels") is not None:
        d["labels"] = tuple(d["labels"])
    return OrganCropConfig(**d)


def _loss_from_dict(d: dict[str, Any]) -> LossConfig:
    d = dict(d)
    if d.get("stage_weights") is not None:
        d["stage_weights"] = tuple(d["stage_weights"])
    return LossConfig(**d)


def _check_positive(owner: str, name: str, value: Any, minimum: float = 1) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise ValueError(f"{owner}.{name} must be a number >= {minimum:g}, got {value!r}.")


@dataclass(frozen=True)
class ExtraData:
    """A second data set a run trains on beside ``TrainConfig.data``: its folder, its split
    file, whether it is a `make-lesions` folder whose training blocks get lesions on the fly,
    and the share of training crops drawn from it (the main data set gets the rest). Its
    validation cases join the main set's."""

    data: str
    split_file: str | None = None
    online_lesions: bool = False
    share: float = 0.5

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("ExtraData.data: give the folder of the second data set")
        if isinstance(self.share, bool) or not (
            isinstance(self.share, (int, float)) and 0.0 < self.share < 1.0
        ):
            raise ValueError(f"ExtraData.share must be between 0 and 1, got {self.share!r}.")


@dataclass
class TrainConfig:
    """One segmentation training run (identical budget and seed across variants).

    ``steps_per_epoch`` None: one pass over the training slices per epoch. ``batch_size`` is
    per process (BatchNorm needs at least 4 slices; ``allow_small_batch`` is for tests).
    ``weight_decay`` None: 1e-4 for AdamW, 5e-4 for SGD (the reference). The learning rate
    decays per iteration as lr * (1 - t / T) ** poly_power; SGD biases get 2x lr, as in the
    reference. ``val_max_slices`` caps validation (every lesion slice first, then evenly spaced
    slices without lesion) when whole-slice validation would cost too much. ``amp`` None:
    mixed precision on GPUs, float32 on CPUs, where bf16 autocast trains slower on some CPUs
    with native bf16 and faster on others (benchmarks/train_speed.py: an Intel Xeon vs an AMD
    EPYC); True or False force it either way. ``init_weights``: a
    segmentation checkpoint to start from instead of random weights (fine-tuning, or a longer
    run continued with a new schedule); its architecture and preprocessing must be this run's.
    ``split_file``: a JSON split by case (``cases.read_split_file``) over the folder's own.
    ``mae_weights``: a pretrained MAE checkpoint, used for SSL guidance and named in the
    checkpoints so the plugin can show residual maps. ``organ_search``: the organ-mode search
    the run's organ crops (``sampling.organ_crops``) are cut for, the same settings
    ``inference.organs.OrganSearch`` runs with; a run with organ crops writes its zoom limits
    into the checkpoints (``organ_search``), so `nstseg predict --organ-mask` uses them.
    ``extra_data``: more data sets trained on in the same run (``ExtraData``), e.g. real
    tumours beside inserted lesions.
    """

    data: str = ""
    split_file: str | None = None
    extra_data: tuple[ExtraData, ...] = ()
    out: str = "runs/nstseg"
    variant: str = "default"
    model: ModelConfig = field(default_factory=ModelConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    organ_search: OrganCropConfig = field(default_factory=OrganCropConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float | None = None
    momentum: float = 0.9
    poly_power: float = 0.9
    epochs: int = 30
    steps_per_epoch: int | None = None
    batch_size: int = 8
    allow_small_batch: bool = False
    val_batch_size: int | None = None
    val_max_slices: int | None = None
    amp: bool | None = None
    seed: int = 0
    num_workers: int | None = None
    device: str = "auto"
    resume: bool = False
    init_weights: str | None = None
    mae_weights: str | None = None
    residual_masks: int = 4
    residual_shifts: int = 2
    threshold: float = 0.5
    keep_epochs: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"TrainConfig.optimizer must be one of {', '.join(OPTIMIZERS)}, "
                f"got {self.optimizer!r}."
            )
        get_variant(self.variant)  # an unknown name fails here, listing the known ones
        self.extra_data = tuple(
            e if isinstance(e, ExtraData) else ExtraData(**known_keys_only(ExtraData, e))
            for e in self.extra_data
        )
        if sum(e.share for e in self.extra_data) >= 1.0:
            raise ValueError("TrainConfig.extra_data: the shares leave none for the main data set.")
        _check_positive("TrainConfig", "epochs", self.epochs)
        _check_positive("TrainConfig", "steps_per_epoch", self.steps_per_epoch)
        _check_positive("TrainConfig", "batch_size", self.batch_size)
        _check_positive("TrainConfig", "val_batch_size", self.val_batch_size)
        _check_positive("TrainConfig", "val_max_slices", self.val_max_slices)
        _check_positive("TrainConfig", "keep_epochs", self.keep_epochs)
        _check_positive("TrainConfig", "residual_masks", self.residual_masks, 2)
        _check_positive("TrainConfig", "residual_shifts", self.residual_shifts, 1)
        _check_positive("TrainConfig", "num_workers", self.num_workers, 0)
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"TrainConfig.lr must be a positive number, got {self.lr!r}.")
        if self.batch_size < MIN_BATCH and not self.allow_small_batch:
            raise ValueError(
                f"Batch size {self.batch_size} is too small for BatchNorm training; use at least "
                f"{MIN_BATCH} (or --allow-small-batch for a quick test)."
            )
        if self.model.in_channels != self.preprocess.n_channels:
            raise ValueError(
                f"The model takes {self.model.in_channels} input channel(s) but the preprocessing "
                f"makes {self.preprocess.n_channels} (slice offsets "
                f"{list(self.preprocess.slice_offsets_mm)} mm); set in_channels to match."
            )
        if self.model.ssl_guidance and not self.mae_weights:
            raise ValueError(
                "SSL guidance (variant 'ssl' or ssl_guidance=true) needs a pretrained MAE "
                "checkpoint: pass --mae PATH (see `nstseg pretrain-mae`)."
            )

    @property
    def resolved_weight_decay(self) -> float:
        if self.weight_decay is not None:
            return float(self.weight_decay)
        return 1e-4 if self.optimizer == "adamw" else 5e-4

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dictionary (nested configs as dictionaries)."""
        return nested_to_dict(self, ("model", "preprocess"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of to_dict(); unknown keys raise ValueError."""
        parsers = {
            "model": ModelConfig.from_dict,
            "preprocess": PreprocessConfig.from_dict,
            "sampling": _sampling_from_dict,
            "organ_search": _organ_search_from_dict,
            "loss": _loss_from_dict,
        }
        return nested_from_dict(cls, d, parsers)


@dataclass
class MAEPretrainConfig:
    """MAE pretraining on unlabeled CT slices (MAE paper: AdamW (0.9, 0.95), wd 0.05, warm-up then
    cosine). ``data``: what ``mae_data.find_sources`` takes (a JSON sources file, a case-folder
    set, an MSD folder, a folder of CT volumes or one file). ``crop_size``: square crops in
    working pixels; ``exclude_margin_mm``: crops keep this far from excluded zones (tumours)."""

    data: str = ""
    out: str = "runs/mae"
    mae: MAEConfig = field(default_factory=MAEConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    crop_size: int = 128
    exclude_margin_mm: float = 10.0
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    epochs: int = 20
    steps_per_epoch: int | None = None
    batch_size: int = 16
    amp: bool = True
    seed: int = 0
    num_workers: int | None = None
    device: str = "auto"
    resume: bool = False
    keep_epochs: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        _check_positive("MAEPretrainConfig", "epochs", self.epochs)
        _check_positive("MAEPretrainConfig", "steps_per_epoch", self.steps_per_epoch)
        _check_positive("MAEPretrainConfig", "batch_size", self.batch_size)
        _check_positive("MAEPretrainConfig", "keep_epochs", self.keep_epochs)
        _check_positive("MAEPretrainConfig", "crop_size", self.crop_size, self.mae.patch_size)
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(
                f"MAEPretrainConfig.warmup_fraction must be in [0, 1), got {self.warmup_fraction}."
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dictionary (nested configs as dictionaries)."""
        return nested_to_dict(self, ("mae", "preprocess"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MAEPretrainConfig:
        """Inverse of to_dict(); unknown keys raise ValueError."""
        parsers = {"mae": MAEConfig.from_dict, "preprocess": PreprocessConfig.from_dict}
        return nested_from_dict(cls, d, parsers)
