"""The weights chooser's entries: bundled checkpoints by name with their description, 'file...'."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FROM_FILE = "file..."
# The entry chosen at start when it is shipped (bundled.DEFAULT_NAME).
BUNDLED = "default"


@dataclass(frozen=True)
class WeightsChoice:
    """One entry of the chooser: a bundled checkpoint (its JSON path) or 'file...' (no path)."""

    name: str
    path: Path | None
    description: str

    @property
    def bundled(self) -> bool:
        return self.path is not None


def weights_choices() -> dict[str, WeightsChoice]:
    """The bundled checkpoints as shipped now (default first), then 'file...'."""
    from napari_nstseg.bundled import bundled_weights

    choices = {
        b.name: WeightsChoice(b.name, b.path, b.description) for b in bundled_weights().values()
    }
    choices[FROM_FILE] = WeightsChoice(
        FROM_FILE, None, "a checkpoint of your own: its .json (beside its .safetensors)"
    )
    return choices


def first_choice(choices: dict[str, WeightsChoice]) -> str:
    """The entry to start with: the default checkpoint, else the first bundled, else 'file...'."""
    if BUNDLED in choices:
        return BUNDLED
    return next(iter(choices))


def describe(choice: WeightsChoice) -> str:
    """The line shown under the chooser."""
    if not choice.bundled:
        return f"file...: {choice.description}"
    return f"{choice.name}: {choice.description}"
