"""The Segmenter: a checkpoint on a device, run on chosen slices, the whole volume or an ROI.

Per batch: HU window + z-score (the checkpoint's PreprocessConfig), in-plane resampling to the
working spacing and padding, the network under ``torch.inference_mode`` with bf16 autocast on
CUDA and on CPUs with native bf16 (fp16 on MPS), sigmoid, resampling back and quantisation to
uint8/float16 on the device, then the batch is pasted into a :class:`Prediction`.
``iter_predict`` yields after every batch, so a caller (the napari widget's thread worker, the
CLI's progress bar) can stop between batches and keep what finished. On a CUDA out-of-memory
error the batch is halved and the run goes on.

The parts live beside this module: engine_config.py (EngineConfig, ProgressEvent), batching.py
(one batch, the batch loop and its out-of-memory back-off), maps.py (the maps a batch keeps, back
on the slice grid), residual.py (SSL residual maps), estimate.py (memory and time, the batch size
that fits) and roi.py (ROI boxes). The names users import from here are re-exported.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_nstseg.bundled import WEIGHTS_DIR, resolve_weights
from napari_nstseg.inference.device import select_device
from napari_nstseg.inference.engine_config import EngineConfig, ProgressEvent
from napari_nstseg.inference.estimate import (
    MAX_AUTO_BATCH,
    MEMORY_HEADROOM,
    CostEstimator,
    Estimate,
    SliceCost,
    format_bytes,
)
from napari_nstseg.inference.prediction import MapRequest, Prediction
from napari_nstseg.inference.roi import (
    check_roi,
    roi_from_corners,
    roi_from_mask,
    spacing_yx,
    spacing_zyx,
)
from napari_nstseg.postprocess import PostprocessConfig
from napari_nstseg.preprocessing import PreprocessConfig, working_shape

__all__ = [
    "MAX_AUTO_BATCH",
    "MEMORY_HEADROOM",
    "EngineConfig",
    "Estimate",
    "ProgressEvent",
    "Segmenter",
    "WeightsMissingError",
    "default_weights_path",
    "format_bytes",
    "roi_from_corners",
    "roi_from_mask",
]


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


class Segmenter(CostEstimator):
    """A loaded CDI-NSTSEG (or U-Net baseline) checkpoint on one device, ready to predict."""

    organ_mode = False  # True for the copy :meth:`for_organs` makes

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
        self._costs: dict[tuple, SliceCost] = {}
        self._stages_seen: int | None = None
        from napari_nstseg.models.checkpoint import read_operating_point

        # What the checkpoint recommends (its "postprocess" entry), if anything, and for organ
        # mode (its "organ_postprocess" entry, else the same).
        self.recommended = read_operating_point(self.meta, weights_path)
        self.recommended_organs = read_operating_point(self.meta, weights_path, organs=True)
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
        """Concrete operating points, whole scan and organ mode: the config's values, else the
        weights', else 0.5 / 0 / 0."""
        whole = self._resolve(self.recommended)
        organs = self._resolve(self.recommended_organs)
        self.organ_postprocess, self.organ_postprocess_sources = organs
        # An organ-mode engine (for_organs) runs at the organ point, also after with_config.
        self.postprocess, self.postprocess_sources = organs if self.organ_mode else whole

    def _resolve(self, recommended) -> tuple[PostprocessConfig, dict[str, str]]:
        values: dict[str, float] = {}
        # Per field: "explicit" (the EngineConfig), "weights" (the checkpoint) or "default".
        sources: dict[str, str] = {}
        for name, default in PostprocessConfig().to_dict().items():
            explicit = getattr(self.config, name)
            if explicit is not None:
                values[name], sources[name] = explicit, "explicit"
            elif recommended is not None:
                values[name], sources[name] = getattr(recommended, name), "weights"
            else:
                values[name], sources[name] = default, "default"
        return PostprocessConfig(**values), sources

    def for_organs(self) -> Segmenter:
        """The same loaded model at its organ-mode operating point (as ``postprocess``)."""
        other = copy.copy(self)
        other.organ_mode = True
        other._resolve_postprocess()
        return other

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
        size = working_shape(shape_yx, spacing_yx(spacing), self.preprocessing.working_spacing_mm)
        m = self.preprocessing.pad_multiple
        return tuple(-(-n // m) * m for n in size)

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
        spacing_yx(spacing)  # a bad spacing fails here, before any work
        maps = maps or self.config.maps
        box = check_roi(roi, shape) if roi is not None else (0, shape[0], 0, shape[1], 0, shape[2])
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
                pred.spacing = spacing_zyx(spacing)
        else:
            pred = self._new_prediction(shape, spacing)
        earlier = pred.done.copy()
        if not self.organ_mode:
            pred.centre_zone = None  # organ mode's centre rule is not this run's
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
            spacing=spacing_zyx(spacing),
            min_depth_mm=pp.min_depth_mm,
        )

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
