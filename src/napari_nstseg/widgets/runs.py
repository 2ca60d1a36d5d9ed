"""The panel's runs without Qt: the run in progress, the ablation variants queued behind it, the
last result of each, the live re-cut that waits for a run, and what to tell the user."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .layers import mirroring_of_slices
from .operating_point import OperatingPoint
from .organ_mode import zone_name
from .session import RunOutcome, RunRequest, Session


@dataclass
class Report:
    """What the panel shows after a run came back or a re-cut: errors (each a notification
    that also takes the status line), warnings, then the status line; ``ct`` is the CT whose
    layers changed, ``measure`` whether its full-model mask is new to measure and score."""

    status: str = ""
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    ct: Any = None
    measure: bool = False


class Runs:
    """One panel's runs, one at a time, on a :class:`Session`."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.request: RunRequest | None = None
        self.last_outcome: RunOutcome | None = None
        self.variant_outcomes: dict[str, RunOutcome] = {}
        self.pending_variants: list[str] = []
        # The operating point moved during a run: re-cut once the run is over.
        self.recut_pending = False

    @property
    def running(self) -> bool:
        return self.request is not None

    def start(self, request: RunRequest) -> str:
        """``request`` is in progress; returns the status line for it."""
        self.request = request
        if not request.variant:
            # This run reads the operating point now: an earlier change needs no re-cut.
            self.recut_pending = False
        return request.variant or "loading model..."

    def cancel(self) -> bool:
        """Stop after the batch in progress (and run no queued variant); whether one was."""
        self.pending_variants = []
        if self.request is None:
            return False
        self.request.cancel.set()
        return True

    def returned(self, outcome: RunOutcome) -> Report:
        """Show a run's result on its CT (what finished of it) and say how it went."""
        self.last_outcome = outcome
        request = outcome.request
        if request.variant:
            self.variant_outcomes[request.variant] = outcome
        report = Report(errors=[outcome.error] if outcome.error else [])
        done = outcome.slices_done
        if outcome.prediction is None or (outcome.cancelled and done == 0):
            if outcome.cancelled:
                report.status = (
                    f"cancelled before any slice finished: the layers of {request.ct_name!r} "
                    "are as they were"
                )
            return report
        try:
            ct = self.session.show(outcome)
        except Exception as exc:  # a layer problem must not take the viewer down
            report.errors.append(f"Could not show the prediction on {request.ct_name!r}: {exc}")
            return report
        if ct is None:
            if not outcome.error:
                report.errors.append(f"The CT layer {request.ct_name!r} was closed during the run.")
            return report
        report.ct = ct
        if not request.variant:
            report.warnings += self._mixed_mirroring(ct)
        if outcome.error:
            return report
        report.status = (
            f"cancelled: {done} of {request.n_slices} slice(s) finished and kept; the others "
            "are as they were"
            if outcome.cancelled
            else f"done: {done} slice(s)"
        )
        if request.organs is not None:
            # Where the model looked, and the layer that outlines it.
            report.status += (
                f" inside {request.organs.describe()} (outlined by {zone_name(ct.name)!r}); "
                "nothing is sought elsewhere"
            )
            centre = (outcome.prediction.info.get("organs") or {}).get("centre_mm")
            if centre is not None:  # the weights' centre rule hides what lies beside the organ
                report.status += (
                    f", and lesions centred over {centre:g} mm from the organ are left out"
                )
        if not request.variant:
            self._ready_to_correct(ct)
            report.measure = True
        return report

    def finished(self) -> tuple[int, int]:
        """The run is over: (done, total) for the progress bar, full only when all was done."""
        self.request = None
        outcome = self.last_outcome
        if outcome is not None and (outcome.cancelled or outcome.error):
            return outcome.slices_done, max(outcome.request.n_slices, 1)
        return 1, 1

    def grid_due(self) -> bool:
        """Whether the variants just run are all in and are to be shown side by side."""
        outcome = self.last_outcome
        return (
            not self.pending_variants
            and outcome is not None
            and bool(outcome.request.variant)
            and not outcome.cancelled
        )

    def recut(self, ct: Any, point: OperatingPoint) -> Report:
        """Re-cut the last full-model run on ``ct`` at ``point`` (one undo step), or after the
        run in progress (``recut_pending``); ``report.ct`` is set when something was re-cut."""
        if self.running:
            self.recut_pending = True
            return Report()
        try:
            outcome = self.session.recut(ct, point)
        except Exception as exc:  # a layer problem must not take the viewer down
            return Report(errors=[f"Could not apply {point.describe()} on {ct.name!r}: {exc}"])
        if outcome is None:
            status = ""
            if ct is not None:
                status = (
                    f"{point.describe()}: used by the next run (no run on {ct.name!r} to re-cut)"
                )
            return Report(status=status)
        return Report(
            status=f"{point.describe()} applied to the last run ({outcome.slices_done} slice(s))",
            ct=ct,
            measure=True,
        )

    def _mixed_mirroring(self, ct: Any) -> list[str]:
        """A warning when runs with and without mirroring made slices of one tumor mask."""
        layer = self.session.mask_layer(ct)
        mirrored, plain = ([], []) if layer is None else mirroring_of_slices(layer)
        if not (mirrored and plain):
            return []
        return [
            f"The tumor mask of {ct.name!r} now holds slices made with the mirror image "
            f"averaged in ({slice_list(mirrored)}) and slices made without "
            f"({slice_list(plain)}); run the whole volume again with one setting for a "
            "consistent mask."
        ]

    def _ready_to_correct(self, ct: Any) -> None:
        """After a run the tumor mask is the selected layer, shown, so napari's brush, eraser and
        fill act on it at once (not on a map that happened to be added last)."""
        mask = self.session.mask_layer(ct)
        if mask is not None:
            mask.visible = True
            self.session.viewer.layers.selection.active = mask


def slice_list(zs: list[int]) -> str:
    """Sorted slice indices as runs: [1, 2, 3, 7] -> '1-3, 7'."""
    runs: list[list[int]] = []
    for z in zs:
        if runs and z == runs[-1][1] + 1:
            runs[-1][1] = z
        else:
            runs.append([z, z])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs)
