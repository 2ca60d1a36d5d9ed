"""The replay share of fine-tuning: data the starting weights were trained on, mixed into every
batch so the model does not forget what it knew (rehearsal, as in continual learning).

Of the bundled weights' training data only the samples ship: ``default`` was trained on lesions
inserted into TotalSegmentator's example CT, of which the sample CT (with its inserted lesion) is
a crop; ``sarcoma`` on TCIA's soft-tissue sarcomas, of which STS_008 ships. Fine-tuned weights
record the replay they used, and fine-tuning them again replays the same.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_nstseg.training.cases import Case, find_cases

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_data"
# Bundled weights' name -> the shipped (image, label) pair of their training data.
SHIPPED_REPLAY: dict[str, tuple[str, str]] = {
    "default": ("sample_ct.nii.gz", "sample_ct_lesion.nii.gz"),
    "sarcoma": ("sarcoma/STS_008_ct.nii.gz", "sarcoma/STS_008_tumour.nii.gz"),
}


@dataclass(frozen=True)
class Replay:
    """The cases replayed and where they came from, in words for the model card."""

    cases: tuple[Case, ...]
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "cases": [
                {"case_id": c.case_id, "image": str(c.image), "label": str(c.label)}
                for c in self.cases
            ],
        }


NO_REPLAY = Replay((), "none (no training data of these weights ships with the plugin)")


def replay_for(weights: str | Path, data: str | Path | None = None) -> Replay:
    """What fine-tuning ``weights`` replays: every case of ``data`` (any folder `nstseg train`
    reads) when given, else the shipped sample of the bundled weights they are or came from."""
    if data is not None:
        cases = tuple(find_cases(data))
        return Replay(cases, f"{len(cases)} case(s) of {data}")
    meta = _read(Path(weights))
    recorded = ((meta.get("provenance") or {}).get("fine_tuned") or {}).get("replay")
    if recorded and recorded.get("cases"):
        cases = tuple(
            Case(c.get("case_id") or Path(c["image"]).name, Path(c["image"]), Path(c["label"]))
            for c in recorded["cases"]
            if Path(c["image"]).is_file() and Path(c["label"]).is_file()
        )
        if cases:
            return Replay(cases, str(recorded.get("source", "")))
    name = _bundled_origin(meta)
    if name is None or name not in SHIPPED_REPLAY:
        return NO_REPLAY
    image, label = (SAMPLE_DIR / p for p in SHIPPED_REPLAY[name])
    if not (image.is_file() and label.is_file()):
        return NO_REPLAY
    case_id = image.name.removesuffix(".nii.gz")
    return Replay(
        (Case(case_id, image, label),),
        f"the shipped sample {case_id} of the bundled {name!r} weights' training data",
    )


def _read(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _bundled_origin(meta: dict[str, Any]) -> str | None:
    """The bundled checkpoint these weights are, or were (through --init) started from, by its
    tensors' sha256."""
    from napari_nstseg.bundled import bundled_weights

    by_hash = {}
    for name, entry in bundled_weights().items():
        sha = ((_read(entry.path).get("tensors")) or {}).get("sha256")
        if sha:
            by_hash[sha] = name
    own = (meta.get("tensors") or {}).get("sha256")
    if own in by_hash:
        return by_hash[own]
    origin = (meta.get("provenance") or {}).get("initialised_from")
    while isinstance(origin, dict):
        if origin.get("tensors_sha256") in by_hash:
            return by_hash[origin["tensors_sha256"]]
        origin = origin.get("initialised_from")
    return None
