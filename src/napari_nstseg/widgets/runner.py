"""Widget-side use of the inference engine: loading weights, ablation variants, cancellable runs.

The ablation grid (visual ablation) offers the registry's variants that run from the full
model's weights (models/variants.py says what each means on them); the widget names them, its
checkboxes and its layers by their display names ("no SFM", ...).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from napari_nstseg.inference import MapRequest, Segmenter
from napari_nstseg.models.variants import Variant, ablation_variants, get_variant

# Display name -> registry entry, in registry order: the grid's checkboxes.
VARIANTS: dict[str, Variant] = {v.display_name: v for v in ablation_variants()}


def load_segmenter(weights: str | None, device: str, variant: str = "") -> Segmenter:
    """The engine for ``weights`` (None: bundled) on ``device``, rebuilt as ``variant`` if named."""
    base = Segmenter.from_checkpoint(weights, device=device)
    if not variant:
        return base
    return variant_segmenter(base, variant)


def variant_segmenter(base: Segmenter, variant: str) -> Segmenter:
    """``base`` rebuilt as ``variant`` (a display name or a registry name), on the same trained
    weights."""
    from napari_nstseg.inference.ablation import ablated_segmenter

    entry = VARIANTS.get(variant) or get_variant(variant)
    return ablated_segmenter(base, entry.name)


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
        box = None if roi is None else tuple(v for s in roi for v in (s.start, s.stop))
        self.organs = getattr(request, "organs", None)
        if self.organs is not None:
            self._events = self._organ_events(request, box)
        else:
            self._events = self.segmenter.iter_predict(
                request.volume,
                request.spacing,
                z_indices=request.z_indices,
                roi=box,
                maps=self.map_request,
            )
        self.prediction: Any = None

    def _organ_events(self, request: Any, box: Any) -> Iterator[Any]:
        """Organ mode (inference/organs.py, cascade paper 001): the zone it searches is kept on
        the request for the outline layer, computed here in the worker thread."""
        from napari_nstseg.inference.organs import (
            OrganSearch,
            iter_predict_in_organs,
            search_zone,
        )

        organs = self.organs
        search = OrganSearch.for_weights(organs.labels, organs.margin_mm, self.segmenter.meta)
        organs.zone = search_zone(organs.label_map, request.spacing, search)
        return iter_predict_in_organs(
            self.segmenter,
            request.volume,
            request.spacing,
            organs.label_map,
            search,
            z_indices=request.z_indices,
            roi=box,
            maps=self.map_request,
        )

    def _whole_slices(self) -> None:
        # Organ mode's maps hold 0 outside the zone on every slice it ran: those slices are its
        # result as a whole (not only the organs' boxes), so earlier marks outside the zone go.
        if self.organs is not None and self.prediction is not None:
            self.prediction.cover(None)

    def __iter__(self) -> PredictionSteps:
        return self

    def __next__(self) -> tuple[int, int]:
        try:
            event = next(self._events)
        except StopIteration:
            self._whole_slices()
            raise StopIteration(self.prediction) from None
        self.prediction = event.prediction
        return (event.done, event.total)

    def stop(self) -> Any:
        self._events.close()
        self._whole_slices()
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
