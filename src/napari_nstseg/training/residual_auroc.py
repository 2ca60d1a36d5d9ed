"""What the SSL residual map (GRCSF 002) is for, measured: the AUROC of the residual for tumour
pixels against the soft tissue within a ring around them (normal tissue should reconstruct well,
the tumour should not)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage, stats

from napari_nstseg.preprocessing import (
    PreprocessConfig,
    normalized_air,
    resample_back,
    resample_slices_to_working,
    window_normalize,
)


@dataclass(frozen=True)
class ResidualAurocConfig:
    """``ring_mm``: tissue counted as the tumour's surroundings lies within this 3-D distance of
    it; ``soft_hu``: and in this HU range (fat, gas and bone left out, which a reader would not
    confuse with tumour); ``masks`` and ``shifts``: complementary MAE masks and patch grids per
    slice (the engine's defaults);
    ``max_pixels``: per class and scan, drawn evenly, so a big tumour does not outvote the rest."""

    ring_mm: float = 20.0
    soft_hu: tuple[float, float] = (-100.0, 200.0)
    masks: int = 4
    shifts: int = 2
    seed: int = 0
    max_pixels: int = 20000


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties half): the
    Mann-Whitney U statistic over n_pos * n_neg."""
    if positive.size == 0 or negative.size == 0:
        return float("nan")
    u = stats.mannwhitneyu(positive, negative, alternative="two-sided").statistic
    return float(u) / (positive.size * negative.size)


def residual_volume(
    mae: torch.nn.Module,
    mae_preprocess: PreprocessConfig,
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    slices: np.ndarray,
    cfg: ResidualAurocConfig,
) -> np.ndarray:
    """The residual map of ``slices`` of ``hu`` (z, y, x) back on the scan's own grid, as the
    engine computes it (MAE window, MAE working spacing, seeded masks per slice)."""
    out = np.zeros((len(slices), *hu.shape[1:]), np.float32)
    for i, z in enumerate(slices):
        x = window_normalize(torch.from_numpy(hu[z : z + 1].astype(np.float32)), mae_preprocess)
        x, info = resample_slices_to_working(
            x, spacing[1:], mae_preprocess, pad_value=normalized_air(mae_preprocess)
        )
        gen = torch.Generator()
        gen.manual_seed(cfg.seed * 1_000_003 + int(z))
        with torch.no_grad():
            r = mae.residual_map(x[:, None], k=cfg.masks, generator=gen, shifts=cfg.shifts)[:, 0]
        out[i] = resample_back(r, info).numpy()[0]
    return out


def case_samples(
    residual: np.ndarray,
    hu: np.ndarray,
    tumour: np.ndarray,
    spacing: tuple[float, float, float],
    cfg: ResidualAurocConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """(tumour residuals, ring residuals) of one scan's slices (arrays of the same shape)."""
    distance = ndimage.distance_transform_edt(~tumour, sampling=spacing)
    lo, hi = cfg.soft_hu
    ring = (~tumour) & (distance <= cfg.ring_mm) & (hu >= lo) & (hu <= hi)

    def draw(values: np.ndarray) -> np.ndarray:
        if values.size <= cfg.max_pixels:
            return values
        return values[rng.choice(values.size, cfg.max_pixels, replace=False)]

    return draw(residual[tumour]), draw(residual[ring])


def measure(
    mae_weights: str | Path,
    data: str | Path,
    split: str = "val",
    split_file: str | None = None,
    config: ResidualAurocConfig | None = None,
    out: str | Path | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Residual AUROC per scan (tumour slices and their ring) and pooled, for the scans of a
    split; writes residual_auroc.json to ``out`` when given."""
    from napari_nstseg.models.checkpoint import load_checkpoint
    from napari_nstseg.training.cases import (
        cases_of_split,
        default_label_values,
        foreground,
        load_case,
    )

    cfg = config or ResidualAurocConfig()
    mae, meta = load_checkpoint(mae_weights)
    if meta.get("kind") != "mae":
        raise ValueError(f"{mae_weights} is a {meta.get('kind')!r} checkpoint, not an MAE")
    mae.eval()
    pre = PreprocessConfig.from_dict(meta.get("preprocessing") or {})
    cases = cases_of_split(data, split, split_file)
    labels_used = default_label_values(cases)
    rng = np.random.default_rng(cfg.seed)
    rows, pos_all, neg_all = [], [], []
    for case in cases:
        hu, labels, spacing = load_case(case)
        gt = foreground(labels, labels_used)
        z = np.flatnonzero(gt.reshape(gt.shape[0], -1).any(axis=1))
        if z.size == 0:
            continue
        residual = residual_volume(mae, pre, hu, spacing, z, cfg)
        pos, neg = case_samples(residual, hu[z], gt[z], spacing, cfg, rng)
        rows.append({"case": case.case_id, "auroc": auroc(pos, neg), "tumour": pos.size,
                     "ring": neg.size})  # fmt: skip
        pos_all.append(pos)
        neg_all.append(neg)
        if verbose:
            print(f"  {case.case_id}: AUROC {rows[-1]['auroc']:.3f}", flush=True)
    per_case = [r["auroc"] for r in rows]
    result = {
        "mae": str(Path(mae_weights).resolve()),
        "data": str(Path(data).resolve()),
        "split": split,
        "config": asdict(cfg),
        "pooled_auroc": auroc(np.concatenate(pos_all), np.concatenate(neg_all)) if rows else None,
        "mean_case_auroc": float(np.mean(per_case)) if rows else None,
        "cases": rows,
    }
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "residual_auroc.json").write_text(json.dumps(result, indent=1) + "\n")
    if verbose and rows:
        print(
            f"residual AUROC, tumour vs soft tissue within {cfg.ring_mm:g} mm: pooled "
            f"{result['pooled_auroc']:.3f}, mean per scan {result['mean_case_auroc']:.3f}"
        )
    return result
