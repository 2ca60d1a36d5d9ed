"""The widget's state between runs, without Qt: runs and their results, the last result and
its re-cut, loaded engines (the session object of napari-nninteractive and micro-sam's _state).

napari gives a plugin widget a proxy of the viewer that hands out a new object for every layer
access, so nothing here holds or compares layer objects: a CT is remembered by its napari
``unique_id`` and looked up again in ``viewer.layers`` when needed, and the layers drawn on it
are found through the link they carry in their metadata (:func:`layers.find_linked`). Tests
drive a Session on a bare ``ViewerModel``: :meth:`Session.run` runs the model in the calling
thread, the panel runs the same :meth:`Session.run_steps` in a napari thread worker.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .layers import (
    LayerNames,
    MapsToShow,
    edit_tracker,
    find_linked,
    forget_tracker,
    is_image,
    layer_id,
    link,
    show_prediction,
)
from .operating_point import OperatingPoint

# Tumor-mask metadata: the checkpoint of the first model run that wrote the mask.
FIRST_WEIGHTS_KEY = "nstseg_first_weights"

__all__ = ["OperatingPoint", "RunOutcome", "RunRequest", "Session", "mask_role"]


@dataclass
class RunRequest:
    """Everything one model run needs, read from the widget on the GUI thread."""

    ct_name: str
    volume: np.ndarray
    spacing: tuple[float, float, float]
    z_indices: list[int] | None
    roi: tuple[slice, slice, slice] | None
    weights: str | None
    device: str
    threshold: float
    maps: MapsToShow
    overwrite: bool
    variant: str = ""
    min_lesion_mm: float = 0.0
    min_depth_mm: float = 0.0
    mirror: bool = False
    # The CT's napari unique_id: the run's layers go to this CT even if it is renamed meanwhile.
    ct_id: str = ""
    # Organ mode (organ_mode.OrganRequest): search only inside these organs; None: not.
    organs: Any = None
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def n_slices(self) -> int:
        """How many slices the run was asked for."""
        return int(self.volume.shape[0]) if self.z_indices is None else len(self.z_indices)


@dataclass
class RunOutcome:
    """What a worker hands back: a (possibly partial) prediction, or one readable error."""

    request: RunRequest
    prediction: Any = None
    error: str = ""
    cancelled: bool = False

    @property
    def slices_done(self) -> int:
        if self.prediction is None:
            return 0
        return int(np.count_nonzero(self.prediction.done))


def suffix(variant: str) -> str:
    """What an ablation variant's layers carry after their name."""
    return f" [{variant}]" if variant else ""


def mask_role(variant: str = "") -> str:
    return f"tumor mask{suffix(variant)}"


VIEW_ROLE = "CT view"


def view_role(variant: str) -> str:
    return f"{VIEW_ROLE}{suffix(variant)}"


def _name_for(ct_name: str, role: str) -> str:
    """The name a layer of ``role`` gets on a CT named ``ct_name``."""
    if role.startswith(VIEW_ROLE):
        return f"{ct_name}{role[len(VIEW_ROLE) :]}"  # "CT [no GLM]": the CT itself, a variant's
    return LayerNames(ct_name).role_name(role)


class Session:
    """The viewer's CTs and their layers, the last run on each, and the engines loaded."""

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        # The last full-model run shown, and its CT's id: what moving the threshold re-cuts.
        # Variant runs do not replace it.
        self.last_run: tuple[RunOutcome, str] | None = None
        self._engines: dict[tuple[Any, ...], Any] = {}
        # CT id -> the name it had when last seen, so its layers can follow a rename.
        self._names: dict[str, str] = {}
        self._watched: set[str] = set()

    # -- finding layers ------------------------------------------------------------------------
    def layer(self, name: str | None) -> Any:
        if not name or name not in self.viewer.layers:
            return None
        return self.viewer.layers[name]

    def layer_by_id(self, uid: str | None) -> Any:
        if not uid:
            return None
        for layer in self.viewer.layers:
            if layer_id(layer) == uid:
                return layer
        return None

    def mask_layer(self, ct: Any, variant: str = "") -> Any:
        """The tumor mask drawn on ``ct`` (by ``variant`` if named), or None."""
        return None if ct is None else find_linked(self.viewer, ct, mask_role(variant))

    def ct_view(self, ct: Any, variant: str) -> Any:
        """An image layer showing ``ct``'s array (no copy) under ``variant``'s mask in a grid."""
        layer = find_linked(self.viewer, ct, view_role(variant))
        if layer is None:
            layer = self.viewer.add_image(
                ct.data,
                name=_name_for(ct.name, view_role(variant)),
                contrast_limits=tuple(ct.contrast_limits),
                colormap=ct.colormap.name,
                scale=tuple(ct.scale),
                translate=tuple(ct.translate),
                rotate=np.array(ct.rotate),
                shear=np.array(ct.shear),
                affine=np.array(ct.affine.affine_matrix),
                metadata={"nstseg_generated": True},
            )
            link(layer, ct, view_role(variant))
        else:
            layer.contrast_limits = tuple(ct.contrast_limits)
        return layer

    # -- showing runs --------------------------------------------------------------------------
    def show(self, outcome: RunOutcome) -> Any:
        """Draw a run's prediction on its CT; returns the CT layer, or None when it is gone."""
        request = outcome.request
        ct = self.layer_by_id(request.ct_id) if request.ct_id else self.layer(request.ct_name)
        if ct is None or outcome.prediction is None:
            return None
        show_prediction(
            self.viewer,
            ct,
            outcome.prediction,
            maps=request.maps,
            threshold=request.threshold,
            overwrite=request.overwrite,
            suffix=suffix(request.variant),
            min_lesion_mm=request.min_lesion_mm,
            min_depth_mm=request.min_depth_mm,
            mirror=request.mirror,
        )
        organs = request.organs
        if organs is not None and organs.zone is not None:
            from .organ_mode import show_zone

            show_zone(self.viewer, ct, organs.zone, np.flatnonzero(outcome.prediction.done))
        if not request.variant:
            self.last_run = (outcome, layer_id(ct))
            mask = self.mask_layer(ct)
            if mask is not None and request.weights:
                # What made the first mask, for the corrections store's record of the scan.
                mask.metadata.setdefault(FIRST_WEIGHTS_KEY, str(request.weights))
        return ct

    def recut(self, ct: Any, point: OperatingPoint) -> RunOutcome | None:
        """Re-cut the last full-model run on ``ct`` at ``point`` (one undo step); None when
        ``ct`` has no such run."""
        if ct is None or self.last_run is None:
            return None
        outcome, ct_id = self.last_run
        if layer_id(ct) != ct_id:
            return None
        show_prediction(
            self.viewer,
            ct,
            outcome.prediction,
            maps=outcome.request.maps,
            threshold=point.threshold,
            overwrite=False,
            rethreshold=True,
            min_lesion_mm=point.min_lesion_mm,
            min_depth_mm=point.min_depth_mm,
            mirror=outcome.request.mirror,
        )
        return outcome

    # -- edits ---------------------------------------------------------------------------------
    def watch(self, mask: Any, on_edit: Callable[[], None]) -> None:
        """Call ``on_edit`` after each user change of ``mask`` (once per mask, however often
        this is called)."""
        uid = layer_id(mask)
        if uid in self._watched:
            return
        edit_tracker(mask).on_edit.append(on_edit)
        self._watched.add(uid)

    def forget(self, layer: Any) -> None:
        """A layer left the viewer: drop what was kept for it."""
        uid = layer_id(layer)
        forget_tracker(layer)
        self._watched.discard(uid)
        self._names.pop(uid, None)
        if self.last_run is not None and self.last_run[1] == uid:
            self.last_run = None

    # -- renames -------------------------------------------------------------------------------
    def follow_renames(self) -> list[tuple[str, str]]:
        """Give the layers of a renamed CT its new name where they still carry the old one
        (a mask the user renamed keeps the user's name); returns the (old, new) CT names."""
        renamed = []
        for ct in list(self.viewer.layers):
            if not is_image(ct) or ct.metadata.get("nstseg_generated"):
                continue
            uid, name = layer_id(ct), ct.name
            old = self._names.get(uid)
            self._names[uid] = name
            if old is None or old == name:
                continue
            renamed.append((old, name))
            for layer in list(self.viewer.layers):
                role = layer.metadata.get("nstseg_role")
                if layer.metadata.get("nstseg_ct") != uid or not role:
                    continue
                if layer.name == _name_for(old, role):
                    layer.name = _name_for(name, role)
        return renamed

    # -- engines -------------------------------------------------------------------------------
    def _engine_key(self, request: RunRequest) -> tuple[Any, ...]:
        # The file's mtime is part of the key so a re-saved checkpoint is re-read.
        stamp = Path(request.weights).stat().st_mtime_ns if request.weights else 0
        return (request.weights or "", stamp, request.device)

    def engine(self, request: RunRequest) -> Any:
        """The loaded engine for the request's weights and device (cached)."""
        from .runner import load_segmenter  # here: it loads torch, and tests stand in for it

        key = self._engine_key(request)
        if key not in self._engines:
            self._engines[key] = load_segmenter(request.weights, request.device)
        return self._engines[key]

    def variant_engine(self, request: RunRequest) -> Any:
        """The request's ablation variant of :meth:`engine` (cached by weights and variant)."""
        from .runner import variant_segmenter

        key = (*self._engine_key(request), request.variant)
        if key not in self._engines:
            self._engines[key] = variant_segmenter(self.engine(request), request.variant)
        return self._engines[key]

    # -- running -------------------------------------------------------------------------------
    def run_steps(self, request: RunRequest) -> Generator[tuple[int, int] | str, None, RunOutcome]:
        """Load (cached), estimate a whole-volume run, then predict batch by batch.

        Yields (done, total) progress or a status line and returns a RunOutcome; every failure
        becomes one sentence in it, so nothing raises. Cancel (``request.cancel``) is heard
        between every step, before the first batch too.
        """
        from .runner import describe_estimate, predict_steps

        try:
            segmenter = self.engine(request)
        except Exception as exc:
            return RunOutcome(request, error=_weights_error(request.weights, exc))
        steps = None
        try:
            if request.variant:
                segmenter = self.variant_engine(request)
            if request.z_indices is None and request.roi is None:
                text, fits = describe_estimate(segmenter, request)
                if not fits:
                    return RunOutcome(request, error=text)
                yield text
            if request.cancel.is_set():
                return RunOutcome(request, cancelled=True)
            steps = predict_steps(segmenter, request)
            if steps.skipped_residual:
                yield "these weights name no masked autoencoder: no SSL residual map"
            while True:
                if request.cancel.is_set():
                    return RunOutcome(request, prediction=steps.stop(), cancelled=True)
                try:
                    progress = next(steps)
                except StopIteration:
                    return RunOutcome(request, prediction=steps.prediction)
                yield progress
        except Exception as exc:
            # Slices finished before the failure stay valid and are shown.
            partial = steps.prediction if steps is not None else None
            return RunOutcome(
                request,
                prediction=partial,
                error=f"The model run on {request.ct_name!r} failed: {exc}",
            )

    def run(self, request: RunRequest) -> RunOutcome:
        """:meth:`run_steps` to the end in this thread (its progress dropped)."""
        steps = self.run_steps(request)
        while True:
            try:
                next(steps)
            except StopIteration as stop:
                return stop.value

    # -- visual ablation -----------------------------------------------------------------------
    def grid_cells(self, ct: Any, variants: Iterable[str]) -> list[tuple[Any, Any]]:
        """(CT, mask) per model run on ``ct``: the full model's, then each variant's over a view
        of the CT of its own, for :func:`ablation_view.show_grid`."""
        cells = []
        mask = self.mask_layer(ct)
        if mask is not None:
            cells.append((ct, mask))
        for variant in variants:
            mask = self.mask_layer(ct, variant)
            if mask is not None:
                cells.append((self.ct_view(ct, variant), mask))
        return cells


def _weights_error(weights: str | None, exc: Exception) -> str:
    """Why the weights did not load, in one sentence naming them."""
    from napari_nstseg.inference import WeightsMissingError

    if isinstance(exc, WeightsMissingError):
        return (
            "No bundled weights are installed with napari-nstseg; choose 'file...' under "
            "weights and pick a checkpoint (.json)."
        )
    where = "the bundled weights" if weights is None else f"weights file {weights!r}"
    if weights is not None and _is_bundled(Path(weights)):
        where = f"the bundled weights {Path(weights).stem!r}"
    text = str(exc).strip() or type(exc).__name__
    return f"Could not load {where}: {text}"


def _is_bundled(path: Path) -> bool:
    from napari_nstseg import bundled

    return path.resolve().parent == Path(bundled.WEIGHTS_DIR).resolve()
