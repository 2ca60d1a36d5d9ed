"""The panel's background run: load the engine, estimate, predict batch by batch, and say in one
sentence what went wrong (weights that do not load, a run that fails) instead of raising."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from napari.qt.threading import thread_worker

from .session import RunOutcome, RunRequest, Session


def predict_worker(session: Session, request: RunRequest) -> Any:
    """The worker: load (cached), estimate a whole-volume run, then predict batch by batch.

    It yields (done, total) progress or a status string and returns a RunOutcome; every failure
    is caught here and becomes one sentence, so nothing raises out of the widget. Cancel is
    heard between every step, before the first batch too.
    """
    from .runner import describe_estimate, predict_steps

    @thread_worker(start_thread=False)
    def work():
        try:
            segmenter = session.engine(request)
        except Exception as exc:
            return RunOutcome(request, error=_weights_error(request.weights, exc))
        steps = None
        try:
            if request.variant:
                segmenter = session.variant_engine(request)
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

    return work()


def recommended_point(path: Path | None) -> Any:
    """The operating point a checkpoint's JSON recommends (defaults when it names none), or
    None when the file cannot be read: the run that loads it will say what is wrong."""
    import json

    from napari_nstseg.models.checkpoint import checkpoint_paths
    from napari_nstseg.postprocess import PostprocessConfig

    if path is None:
        return None
    try:
        meta = json.loads(checkpoint_paths(path)[1].read_text(encoding="utf-8"))
        return PostprocessConfig.from_dict(meta.get("postprocess") or {})
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def _weights_error(weights: str | None, exc: Exception) -> str:
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
