"""Widget-side use of the inference engine: loading weights, ablation variants, cancellable runs.

Visual ablation (CDI-NSTSEG 000, Table of ablations) rebuilds the network with one switch
changed and loads the SAME trained state dict, keeping only tensors whose name and shape still
fit. What each variant means on weights trained with the full model:

- "no SFM" (scale_fusion="mean"): the SFM attention generator is dropped and the three scales
  are averaged; every other trained tensor still applies. Meaningful: shows what the learned
  per-pixel scale weighting contributes.
- "no GLM" (glm="none"): the channel and spatial non-local attention are skipped and the GLM's
  trained 7x7 head reads the fused features directly. Meaningful: the attention blocks are
  residual (gamma-weighted), so removing them is a well-defined perturbation.
- "no LFM" (lfm_stages=0): the final mask is the GLM coarse map of the same network, exactly
  (the deepest level does not depend on the LFMs). Exact, not an approximation.
- "single scale 1.0" (scales=(1.0,)): only the 1.0x copy runs and the SFM is bypassed, so the
  1.0x features skip the SFM's own 3x3 conv they were trained behind. Indicative only: it shows
  the loss of multi-scale context but also this mismatch.

A model trained without a module (e.g. a "mean" checkpoint) cannot gain it here; variants that
would need tensors the checkpoint lacks are refused in one sentence.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from napari_nstseg.inference import MapRequest, Segmenter

VARIANTS: dict[str, dict[str, Any]] = {
    "no SFM": {"scale_fusion": "mean"},
    "no GLM": {"glm": "none"},
    "no LFM": {"lfm_stages": 0},
    "single scale 1.0": {"scales": (1.0,)},
}


def load_segmenter(weights: str | None, device: str, variant: str = "") -> Segmenter:
    """The engine for ``weights`` (None: bundled) on ``device``, rebuilt as ``variant`` if named."""
    base = Segmenter.from_checkpoint(weights, device=device)
    if not variant:
        return base
    return variant_segmenter(base, variant)


def variant_segmenter(base: Segmenter, variant: str) -> Segmenter:
    """``base`` rebuilt with the ablation switch ``variant``, on the same trained weights."""
    from napari_nstseg.models import ModelConfig, build_model

    changes = VARIANTS[variant]
    config = getattr(base.model, "config", None)
    if not isinstance(config, ModelConfig) or config.arch != "cdi_nstseg":
        raise ValueError(f"The ablation variant {variant!r} needs a CDI-NSTSEG checkpoint.")
    if config.scale_fusion == "mean" and variant == "no SFM":
        raise ValueError("These weights were trained without SFM attention already.")
    new_config = replace(config, **changes)
    model = build_model(new_config)
    trained = base.model.state_dict()
    own = model.state_dict()
    missing = [k for k in own if k not in trained or trained[k].shape != own[k].shape]
    if missing:
        raise ValueError(
            f"The ablation variant {variant!r} needs tensors these weights do not have "
            f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''})."
        )
    model.load_state_dict({k: trained[k] for k in own}, strict=True)
    meta = dict(base.meta, variant=variant)
    return Segmenter(
        model,
        base.preprocessing,
        base.device,
        base.config,
        meta=meta,
        weights_path=base.weights_path,
        mae_path=base.mae_path,
    )


def map_request(segmenter: Segmenter, maps: Any) -> MapRequest:
    """The engine's MapRequest for the widget's MapsToShow (no residual without an MAE)."""
    return MapRequest(
        coarse=maps.coarse,
        stages=maps.stages or maps.stage_probabilities,
        residual=maps.residual and segmenter.has_mae,
        scale_weights=maps.scale_weights,
    )


class PredictionSteps:
    """Iterates an engine run; :meth:`stop` ends it between batches and keeps what finished."""

    def __init__(self, segmenter: Segmenter, request: Any) -> None:
        self.map_request = map_request(segmenter, request.maps)
        self.skipped_residual = request.maps.residual and not self.map_request.residual
        self.segmenter = segmenter.with_config(
            threshold=request.threshold,
            min_lesion_mm=request.min_lesion_mm,
            min_depth_mm=request.min_depth_mm,
            mirror=request.mirror,
        )
        roi = request.roi
        self._events: Iterator[Any] = self.segmenter.iter_predict(
            request.volume,
            request.spacing,
            z_indices=request.z_indices,
            roi=None if roi is None else tuple(v for s in roi for v in (s.start, s.stop)),
            maps=self.map_request,
        )
        self.prediction: Any = None

    def __iter__(self) -> PredictionSteps:
        return self

    def __next__(self) -> tuple[int, int]:
        try:
            event = next(self._events)
        except StopIteration:
            raise StopIteration(self.prediction) from None
        self.prediction = event.prediction
        return (event.done, event.total)

    def stop(self) -> Any:
        self._events.close()
        return self.prediction


def predict_steps(segmenter: Segmenter, request: Any) -> PredictionSteps:
    return PredictionSteps(segmenter, request)


def describe_estimate(segmenter: Segmenter, request: Any) -> tuple[str, bool]:
    """One line on what a whole-volume run will cost here, and whether it fits at all."""
    maps = map_request(segmenter, request.maps)
    est = segmenter.estimate(request.volume.shape, request.spacing, maps=maps)
    if not est.fits:
        return est.reason, False
    minutes, seconds = divmod(int(round(est.seconds)), 60)
    took = f"{minutes} min {seconds} s" if minutes else f"{seconds} s"
    return (
        f"Whole volume ({request.volume.shape[0]} slices) on {est.device}: about {took}, "
        f"peak {est.bytes_peak / 2**20:.0f} MiB, batches of {est.batch_size}.",
        True,
    )
