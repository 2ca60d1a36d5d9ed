"""Bundled checkpoints by name (``default``, ``sarcoma``, ...): what ships in ``weights/``.

Plain files and JSON only, no torch: `nstseg predict` resolves --weights with it before any
model code is imported."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_NAME = "default"


@dataclass(frozen=True)
class BundledWeights:
    """One shipped segmentation checkpoint: its name, JSON path and one-line description."""

    name: str
    path: Path
    description: str


def _describe(meta: dict) -> str:
    """The checkpoint's own one-line description, else one made from its provenance."""
    if meta.get("description"):
        return str(meta["description"]).splitlines()[0]
    arch = "U-Net" if (meta.get("model_config") or {}).get("arch") == "unet" else "CDI-NSTSEG"
    data = ((meta.get("provenance") or {}).get("training_data") or {}).get("name")
    return f"{arch}" + (f" trained on {data}" if data else "")


def bundled_weights(folder: Path | None = None) -> dict[str, BundledWeights]:
    """Every segmentation checkpoint shipped in ``folder`` (JSON and tensor file both present),
    by name, the default first. ``folder`` defaults to :data:`WEIGHTS_DIR` as it is at the call
    (read then, not at import, so tests can point it elsewhere)."""
    folder = WEIGHTS_DIR if folder is None else folder
    found: dict[str, BundledWeights] = {}
    for json_path in sorted(folder.glob("*.json")):
        if not json_path.with_suffix(".safetensors").is_file():
            continue
        try:
            meta = json.loads(json_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # a damaged file is reported when someone loads it, not here
        if isinstance(meta, dict) and meta.get("kind") == "segmentation":
            found[json_path.stem] = BundledWeights(json_path.stem, json_path, _describe(meta))
    ordered = sorted(found, key=lambda n: (n != DEFAULT_NAME, n))
    return {n: found[n] for n in ordered}


def resolve_weights(spec: str | Path | None, folder: Path | None = None) -> Path:
    """The checkpoint path ``spec`` names: None is the default bundled checkpoint, a bundled name
    (``sarcoma``) its file, anything else a path (an existing file wins over a name).
    ``folder`` defaults to :data:`WEIGHTS_DIR` as it is at the call."""
    folder = WEIGHTS_DIR if folder is None else folder
    if spec is None:
        return folder / f"{DEFAULT_NAME}.json"
    path = Path(spec).expanduser()
    if path.exists() or path.suffix or len(path.parts) > 1:
        return path
    bundled = bundled_weights(folder)
    if str(spec) in bundled:
        return bundled[str(spec)].path
    names = ", ".join(bundled) or "none installed"
    raise FileNotFoundError(
        f"{spec!r} is neither a weights file nor the name of bundled weights (bundled: {names})."
    )
