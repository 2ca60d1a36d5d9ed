"""The panel's "learn from my corrections" round without Qt: the corrected slices of a CT's tumor
mask kept in the corrections store (an explicit action), and fine-tuning on the store as a
generator the thread worker drives, every failure one readable sentence."""

from __future__ import annotations

import threading
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_nstseg.corrections.finetune import (
    FineTuneConfig,
    FineTuneProgress,
    FineTuneResult,
    fine_tune_steps,
)
from napari_nstseg.corrections.store import SavedCorrections, save_corrections

from .layers import ct_geometry, edit_tracker
from .requests import WidgetError
from .runs import slice_list
from .session import FIRST_WEIGHTS_KEY


def corrected_slices(mask: Any) -> list[int]:
    """The slices of a tumor mask the user painted, erased or filled (its edit tracker's)."""
    return sorted(edit_tracker(mask).edited)


@dataclass
class KeepJob:
    """One "use my corrections for training": what is kept, read from the layers on the GUI
    thread (the mask copied, so painting on meanwhile changes nothing), saved in a worker (the
    first save of a large scan writes its CT, seconds of gzip)."""

    store: Path
    hu: np.ndarray
    mask: np.ndarray
    geometry: Any
    slices: list[int]
    weights: str | None
    name: str

    def run(self) -> SavedCorrections | str:
        """Save; returns what was saved, or one sentence saying why it was not."""
        try:
            return save_corrections(
                self.store, self.hu, self.mask, self.geometry, self.slices, self.weights, self.name
            )
        except (OSError, ValueError) as exc:
            return f"Could not keep the corrections of {self.name!r} in {self.store}: {exc}"


def keep_job(session: Any, ct: Any, store: Path) -> KeepJob:
    """What keeping the corrected slices of ``ct``'s tumor mask in ``store`` saves; WidgetError
    when there is nothing to keep."""
    mask = session.mask_layer(ct)
    if mask is None:
        raise WidgetError(f"{ct.name!r} has no tumor mask yet: run the model, then correct it.")
    slices = corrected_slices(mask)
    if not slices:
        raise WidgetError(
            f"No slice of {mask.name!r} was corrected: paint, erase or fill the slices the model "
            "got wrong, then use them for training."
        )
    return KeepJob(
        store,
        np.asarray(ct.data),
        np.array(mask.data),
        ct_geometry(ct),
        slices,
        mask.metadata.get(FIRST_WEIGHTS_KEY),
        ct.name,
    )


def describe_saved(saved: SavedCorrections) -> str:
    new = "a new folder" if saved.created else "its folder"
    return (
        f"kept slice(s) {slice_list(saved.written)} for training in {new} {saved.folder} "
        f"({len(saved.slices)} corrected slice(s) of this scan in all)"
    )


@dataclass
class FineTuneOutcome:
    """What the fine-tuning worker hands back: a result (possibly cancelled) or one error."""

    result: FineTuneResult | None = None
    error: str = ""


@dataclass
class FineTuneJob:
    """One fine-tuning the panel started: the store, the starting weights, the budget."""

    store: Path
    weights: Path
    config: FineTuneConfig
    cancel: threading.Event = field(default_factory=threading.Event)

    def steps(self) -> Generator[FineTuneProgress, None, FineTuneOutcome]:
        """:func:`fine_tune_steps`, with every failure turned into one sentence."""
        try:
            result = yield from fine_tune_steps(
                self.store, self.weights, None, self.config, self.cancel
            )
        except Exception as exc:  # a failed fine-tuning must not take the viewer down
            text = str(exc).strip() or type(exc).__name__
            return FineTuneOutcome(error=f"Fine-tuning on {self.store} failed: {text}")
        return FineTuneOutcome(result=result)


def describe_progress(report: FineTuneProgress) -> str:
    """The status line of one progress report, with the time left when known."""
    what = {"before": "measuring Dice before", "after": "measuring Dice after"}.get(
        report.stage, report.stage
    )
    line = f"{what}: {report.done} / {report.total}"
    if report.stage == "training":
        line = report.text
    if report.eta_s is not None:
        line += f" (about {_duration(report.eta_s)} left)"
    return line


def describe_result(result: FineTuneResult) -> str:
    if result.cancelled:
        return result.summary()
    return f"{result.summary()}; saved as {result.weights}"


def describe_dice(result: FineTuneResult) -> str:
    """Dice before and after on the held-out slices, and what was held out."""
    return (
        f"Dice on held-out corrected slices: before {result.dice_before:.3f}, after "
        f"{result.dice_after:.3f} ({result.holdout})"
    )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    return f"{seconds / 60:.0f} min"
