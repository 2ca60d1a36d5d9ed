"""Does the model need the tumour in the middle? Dice on off-centre sub-crops: each case cut to a
share of its in-plane field anchored at each corner, so the tumour sits off-centre or at the
edge, against Dice on the whole case (the real-tumour cases are crops centred on the tumour)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_nstseg.metrics import dice

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


@dataclass(frozen=True)
class OffCentreConfig:
    """``share``: side of each sub-crop as a share of the case's in-plane field."""

    share: float = 0.7
    device: str = "auto"

    def __post_init__(self) -> None:
        if not 0 < self.share < 1:
            raise ValueError(f"share must be in (0, 1), got {self.share!r}")


def corner_boxes(shape_yx: tuple[int, int], share: float) -> dict[str, tuple[slice, slice]]:
    """The four sub-crops (y, x slices) of ``share`` of the field, one at each corner."""
    h, w = (max(1, round(share * n)) for n in shape_yx)
    ny, nx = shape_yx
    return {
        "top-left": (slice(0, h), slice(0, w)),
        "top-right": (slice(0, h), slice(nx - w, nx)),
        "bottom-left": (slice(ny - h, ny), slice(0, w)),
        "bottom-right": (slice(ny - h, ny), slice(nx - w, nx)),
    }


def measure(
    weights: str | Path,
    data: str | Path,
    split: str = "val",
    split_file: str | None = None,
    config: OffCentreConfig | None = None,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Per case: Dice on the whole case and on each corner sub-crop (the model run on the
    sub-crop alone, scored against the contour within it), at the weights' operating point."""
    from napari_nstseg.inference.engine import EngineConfig, Segmenter
    from napari_nstseg.inference.prediction import MapRequest
    from napari_nstseg.training.cases import (
        cases_of_split,
        default_label_values,
        foreground,
        load_case,
    )

    cfg = config or OffCentreConfig()
    engine = Segmenter.from_checkpoint(
        weights, device=cfg.device, config=EngineConfig(maps=MapRequest.minimal())
    )
    cases = cases_of_split(data, split, split_file)
    labels_used = default_label_values(cases)
    rows = []
    for case in cases:
        hu, labels, spacing = load_case(case)
        gt = foreground(labels, labels_used)
        row = {"case": case.case_id, "whole": dice(engine.predict(hu, spacing).mask, gt)}
        for name, (ys, xs) in corner_boxes(hu.shape[1:], cfg.share).items():
            sub_gt = gt[:, ys, xs]
            if not sub_gt.any():
                row[name] = None  # the tumour is not in this corner's crop
                continue
            sub = engine.predict(np.ascontiguousarray(hu[:, ys, xs]), spacing)
            row[name] = dice(sub.mask, sub_gt)
        rows.append(row)
    corner_values = [r[c] for r in rows for c in CORNERS if r[c] is not None]
    result = {
        "weights": str(Path(weights).resolve()),
        "split": split,
        "config": asdict(cfg),
        "whole_dice": float(np.mean([r["whole"] for r in rows])),
        "offcentre_dice": float(np.mean(corner_values)) if corner_values else None,
        "crops": len(corner_values),
        "cases": rows,
    }
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "offcentre.json").write_text(json.dumps(result, indent=1) + "\n")
    return result
