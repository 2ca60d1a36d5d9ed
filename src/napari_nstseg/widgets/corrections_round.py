"""The "Learn from corrections" round as the panel runs it: keeping the corrected slices of the
tumor mask and fine-tuning on them, each in a thread worker (:mod:`.worker`), with the tab's
buttons, progress, status and Dice following. The tab's layout is :mod:`.corrections_tab`, what
a keep and a fine-tuning do without Qt :mod:`.learning`; dock.NSTSegWidget connects the buttons.
Every failure is one sentence through the panel's ``fail``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari.utils.notifications import show_info

from napari_nstseg.corrections.finetune import FineTuneConfig, FineTuneProgress, FineTuneResult
from napari_nstseg.corrections.store import SavedCorrections

from .corrections_tab import CorrectionsTab
from .learning import (
    FineTuneJob,
    FineTuneOutcome,
    describe_dice,
    describe_progress,
    describe_result,
    describe_saved,
    keep_job,
)
from .requests import WidgetError
from .runs import slice_list
from .worker import finetune_worker, keep_worker


class CorrectionsRound:
    """Keep corrections and fine-tune on them for one panel.

    What it needs of the panel comes as calls: ``ct()`` the chosen CT layer (raising
    WidgetError when there is none), ``weights()`` the chosen weights file, ``device()``,
    ``fail(message)`` an error shown, ``use_weights(path)`` a weights file chosen for the next
    runs.
    """

    def __init__(
        self,
        tab: CorrectionsTab,
        session: Any,
        *,
        ct: Callable[[], Any],
        weights: Callable[[], Path | None],
        device: Callable[[], str],
        fail: Callable[[str], None],
        use_weights: Callable[[Path], None],
    ) -> None:
        self.tab = tab
        self.session = session
        self._ct, self._weights, self._device = ct, weights, device
        self._fail, self._use_weights = fail, use_weights
        self._keep_worker: Any = None  # the one keeping corrections, held while it saves
        self._finetune_worker: Any = None  # the fine-tuning's, held while it runs
        self._finetune_job: FineTuneJob | None = None
        self.last_kept: SavedCorrections | None = None
        self.finetune_result: FineTuneResult | None = None

    def _store_folder(self) -> Path:
        value = str(self.tab.store.value)
        if not value or value == ".":
            raise WidgetError("Choose a corrections folder first.")
        return Path(value).expanduser()

    # -- keeping ----------------------------------------------------------------------------
    @property
    def keeping(self) -> bool:
        return self._keep_worker is not None

    def keep(self, *_: Any) -> None:
        """Keep the slices of the tumor mask the user corrected, with the CT, in the corrections
        folder (the explicit "use my corrections for training"), saved in the background."""
        if self.keeping:
            show_info("The corrections are being kept; wait a moment.")
            return
        try:
            job = keep_job(self.session, self._ct(), self._store_folder())
        except WidgetError as exc:
            self._fail(str(exc))
            return
        tab = self.tab
        tab.keep_button.enabled = tab.finetune_button.enabled = False
        tab.status.value = f"keeping slice(s) {slice_list(job.slices)} of {job.name!r}..."
        worker = keep_worker(job)
        worker.returned.connect(self._on_kept)
        worker.finished.connect(self._on_keep_finished)
        self._keep_worker = worker
        worker.start()

    def _on_kept(self, saved: SavedCorrections | str) -> None:
        if isinstance(saved, str):
            self.tab.status.value = saved
            self._fail(saved)
            return
        self.last_kept = saved
        text = describe_saved(saved)
        self.tab.status.value = text
        show_info(text)

    def _on_keep_finished(self) -> None:
        self._keep_worker = None
        self.tab.keep_button.enabled = True
        self.tab.finetune_button.enabled = not self.finetuning

    # -- fine-tuning ------------------------------------------------------------------------
    @property
    def finetuning(self) -> bool:
        return self._finetune_job is not None

    def fine_tune(self, *_: Any) -> None:
        """Fine-tune a copy of the chosen weights on the corrections folder in the background."""
        if self.finetuning or self.keeping:
            show_info("Fine-tuning or keeping corrections is in progress; wait for it to finish.")
            return
        weights = self._weights()
        try:
            store = self._store_folder()
            if weights is None or not weights.is_file():
                raise WidgetError("Choose the weights to fine-tune (a checkpoint .json) first.")
        except WidgetError as exc:
            self._fail(str(exc))
            return
        tab = self.tab
        config = FineTuneConfig(steps=int(tab.steps.value), device=self._device())
        self._finetune_job = FineTuneJob(store, weights, config)
        tab.finetune_button.enabled = tab.use_button.enabled = False
        tab.cancel_button.enabled = True
        tab.dice.value = ""
        tab.status.value = "preparing the corrected slices..."
        tab.progress.setRange(0, 0)
        worker = finetune_worker(self._finetune_job)
        worker.yielded.connect(self._on_finetune_progress)
        worker.returned.connect(self._on_finetuned)
        worker.finished.connect(self._on_finetune_finished)
        self._finetune_worker = worker
        worker.start()

    def cancel(self, *_: Any) -> None:
        """Stop fine-tuning after the step in progress; no weights are saved."""
        if self._finetune_job is not None:
            self._finetune_job.cancel.set()
            self.tab.status.value = "cancelling after this step..."

    def _on_finetune_progress(self, report: FineTuneProgress) -> None:
        self.tab.progress.setRange(0, max(report.total, 1))
        self.tab.progress.setValue(report.done)
        self.tab.status.value = describe_progress(report)

    def _on_finetuned(self, outcome: FineTuneOutcome) -> None:
        tab = self.tab
        if outcome.error:
            tab.status.value = outcome.error
            self._fail(outcome.error)
            return
        result = outcome.result
        self.finetune_result = result
        tab.status.value = describe_result(result)
        if not result.cancelled:
            tab.dice.value = describe_dice(result)
            tab.use_button.enabled = True

    def _on_finetune_finished(self) -> None:
        self._finetune_worker = self._finetune_job = None
        tab = self.tab
        tab.finetune_button.enabled = True
        tab.cancel_button.enabled = False
        tab.progress.setRange(0, 1)
        done = self.finetune_result is not None and not self.finetune_result.cancelled
        tab.progress.setValue(1 if done else 0)

    def use_new_weights(self, *_: Any) -> None:
        """Choose the weights the last fine-tuning saved for the next runs (as a weights file)."""
        result = self.finetune_result
        if result is None or result.weights is None:
            self._fail("No fine-tuned weights yet: fine-tune on your corrections first.")
            return
        self._use_weights(result.weights)
        self.tab.status.value = f"the next runs use {result.weights}"
