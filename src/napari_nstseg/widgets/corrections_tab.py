"""The panel's "Learn from corrections" tab, layout only (dock.NSTSegWidget wires it): where the
corrections are kept, the button that keeps them, the fine-tuning budget, its progress with
the time left and Cancel, Dice before and after, and the choice to use the new weights."""

from __future__ import annotations

from magicgui.widgets import Container, FileEdit, Label, PushButton, SpinBox
from qtpy.QtWidgets import QProgressBar, QVBoxLayout, QWidget

from napari_nstseg.corrections.store import default_store

DEFAULT_STEPS = 150


class CorrectionsTab(QWidget):
    """The controls of the corrections round as attributes (``keep_button``, ``dice``, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.store = FileEdit(label="corrections folder", mode="d", value=str(default_store()))
        self.store.tooltip = (
            "Where the corrected slices are kept with their CT (one folder per scan, the layout "
            "`nstseg train` reads) and where fine-tuned weights are saved."
        )
        self.keep_button = PushButton(text="Use my corrections for training")
        self.keep_button.tooltip = (
            "Keep the slices of the tumor mask you corrected, with the CT, in the corrections "
            "folder. Only these slices are used: the others count as not looked at."
        )
        self.steps = SpinBox(label="fine-tune steps", value=DEFAULT_STEPS, min=1, max=100_000)
        self.finetune_button = PushButton(text="Fine-tune on my corrections")
        self.finetune_button.tooltip = (
            "Fine-tune a copy of the chosen weights on the corrections folder (with a share of "
            "their own training data where it ships), measure Dice on held-out corrected slices "
            "before and after, and save new weights in the folder; the chosen weights are kept."
        )
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self.dice = Label(value="")
        self.dice.native.setWordWrap(True)
        self.use_button = PushButton(text="Use the new weights", enabled=False)
        self.use_button.tooltip = "Choose the fine-tuned weights for the next runs."
        controls = Container(
            widgets=[
                self.store,
                self.keep_button,
                self.steps,
                Container(widgets=[self.finetune_button, self.cancel_button], layout="horizontal"),
            ]
        )
        layout = QVBoxLayout(self)
        layout.addWidget(controls.native)
        layout.addWidget(self.progress)
        for part in (self.status, self.dice, self.use_button):
            layout.addWidget(part.native)
        layout.addStretch(1)
