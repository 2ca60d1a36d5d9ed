"""Package trained checkpoints as the plugin's bundled weights and write their model card.

    python -m napari_nstseg.recipes.bundle_weights --seg runs/bundled/default/best.json \
        --mae runs/bundled/mae/best.json --data runs/data/lesions2 \
        --compare unet=runs/bundled/unet/best.json \
        --postprocess runs/bundled/default/tune_val/tune.json

Stores the segmentation model and the MAE as float16 safetensors + JSON in
src/napari_nstseg/weights/ (default.*, mae.*), evaluates the *bundled* files (what users get)
and every comparison checkpoint on the held-out test split with `nstseg evaluate`'s code, runs
the bundled model on the sample CT, and writes weights/MODEL_CARD.md and docs/comparison.md
from those measurements. Nothing in the tables is typed by hand; '### ' sections that the
earlier card or comparison.md holds and this script does not write (measurements added since,
each with its own commands) are carried over and named, to be checked against the new weights,
and rows that `napari_nstseg.recipes.comparison_rows` added to the earlier tables are named, to
be added again from their evaluations. ``--postprocess tune.json`` (from
`nstseg tune-postprocess` on the validation split) or ``--threshold/--min-lesion-mm`` writes the
recommended operating point into default.json before its hashes are computed, so the bundle
still verifies; the evaluation then scores the bundle at that point, as users get it.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_nstseg.io import read_ct, read_mask
from napari_nstseg.metrics import measure_lesions
from napari_nstseg.models.checkpoint import load_checkpoint, save_checkpoint
from napari_nstseg.postprocess import PostprocessConfig
from napari_nstseg.training.evaluate import EvalConfig, evaluate

# The repository checkout (src/napari_nstseg/recipes/ is 3 levels in): docs/, sample_data/, runs/.
ROOT = Path(__file__).resolve().parents[3]
WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
SAMPLE = ROOT / "sample_data"
MAX_BYTES = 15_000_000


def package(src: str, stem: Path, postprocess: dict | None = None, **extra) -> dict:
    """Store ``src`` as float16 at ``stem``; ``postprocess`` (else the source's own entry) is
    the operating point written into the JSON, and hashed with it; the source's organ-mode
    zoom (``organ_search``) goes with it."""
    model, meta = load_checkpoint(src)
    # Packaging a packaged file again (the MAE, unchanged between bundles) keeps its origin.
    origin = meta["provenance"].get("packaged_from") or Path(src).name
    prov = {**meta["provenance"], "packaged_from": str(origin), "stored_as": "float16"}
    postprocess = postprocess if postprocess is not None else meta.get("postprocess")
    # Weights trained on organ crops carry the zoom organ mode must run them at, and weights
    # tuned for organ mode that operating point.
    extra.setdefault("organ_search", meta.get("organ_search"))
    extra.setdefault("organ_postprocess", meta.get("organ_postprocess"))
    tensors, _ = save_checkpoint(
        stem, model, meta["model_config"], meta["preprocessing"], prov, dtype=torch.float16,
        kind=meta["kind"], postprocess=postprocess, **extra,
    )  # fmt: skip
    # What was bundled, not what the source carried.
    meta.update(postprocess=postprocess, **extra)
    size = tensors.stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{tensors} is {size / 1e6:.1f} MB, over the 15 MB limit")
    meta["n_params"] = sum(p.numel() for p in model.parameters())
    meta["megabytes"] = round(size / 1e6, 1)
    return meta


def operating_point(
    tune_json: str | None,
    threshold: float | None,
    min_lesion_mm: float | None,
    min_depth_mm: float | None = None,
) -> dict | None:
    """The operating point to bundle: tune.json's choice, with --threshold / --min-lesion-mm /
    --min-depth-mm replacing its values; None when none of them is given."""
    values: dict = {}
    if tune_json:
        tuned = json.loads(Path(tune_json).read_text())
        if not isinstance(tuned, dict) or "postprocess" not in tuned:
            raise SystemExit(f"{tune_json} has no 'postprocess' entry; is it a tune.json?")
        values.update(tuned["postprocess"])
    if threshold is not None:
        values["threshold"] = threshold
    if min_lesion_mm is not None:
        values["min_lesion_mm"] = min_lesion_mm
    if min_depth_mm is not None:
        values["min_depth_mm"] = min_depth_mm
    if not values:
        return None
    try:
        return PostprocessConfig.from_dict(values).to_dict()
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"unusable operating point {values}: {exc}") from None


def sample_check(weights: Path, organs: str | None = None) -> dict:
    """Run the bundled model on the sample CT and say whether it finds the inserted lesion;
    ``organs`` (e.g. "liver"): in organ mode on those of the sample's labels, as the demo runs."""
    from napari_nstseg.inference.engine import Segmenter

    ct = read_ct(SAMPLE / "sample_ct.nii.gz")
    truth = read_mask(SAMPLE / "sample_ct_lesion.nii.gz", like=ct.geometry) > 0
    seg = Segmenter.from_checkpoint(weights, device="cpu")
    t0 = time.perf_counter()
    if organs is None:
        pred = seg.predict(ct.hu, ct.spacing)
    else:
        from napari_nstseg.inference.cli_organs import DEFAULT_MARGIN_MM
        from napari_nstseg.inference.organs import OrganSearch, predict_in_organs
        from napari_nstseg.organ_labels import parse_organs

        labels = read_mask(SAMPLE / "sample_ct_organs.nii.gz", like=ct.geometry)
        # the margin `nstseg predict` (and so the demo) uses when none is given
        search = OrganSearch.for_weights(parse_organs(organs), DEFAULT_MARGIN_MM, seg.meta)
        pred = predict_in_organs(seg, ct.hu, ct.spacing, labels, search)
    seconds = time.perf_counter() - t0
    from napari_nstseg.metrics import label_lesions

    labels, n = label_lesions(pred.mask > 0)  # 26-connected, as predict and evaluate count
    hits = sorted(set(np.unique(labels[truth])) - {0})
    # evaluate's rule: the predicted components touching the lesion must reach Dice 0.1
    touching = np.isin(labels, hits) if hits else np.zeros_like(truth)
    dice = 2 * np.logical_and(touching, truth).sum() / max(1, touching.sum() + truth.sum())
    return {
        "found": bool(dice >= 0.1),
        "components": int(n),
        "false_positive_components": int(n - len(hits)),
        "dice": float(dice),
        "seconds_cpu": round(seconds, 2),
        "lesions": measure_lesions(pred.mask > 0, ct.spacing)[:5],
    }


def fmt(v, digits=3):
    return "-" if v is None else f"{v:.{digits}f}"


def row(name: str, res: dict) -> str:
    g = res["pixel"]["groups"]
    det = res["detection"]
    big = res.get("lesions_by_table", {}).get(">=10 mm and >=20 HU", {})
    pp = res.get("postprocess") or {}
    point = (
        f"{pp['threshold']:.2f} / {pp['min_lesion_mm']:g} mm / {pp.get('min_depth_mm', 0):g} mm"
        if {"threshold", "min_lesion_mm"} <= set(pp)
        else "-"
    )
    return (
        f"| {name} | {point} | {fmt(g['area<1%'].get('dice'))} | "
        f"{fmt(g['area<10%'].get('dice'))} | "
        f"{fmt(g['all'].get('dice'))} | {fmt(res['volume'].get('dice'))} | "
        f"{fmt(det.get('sensitivity'))} | {fmt(big.get('sensitivity'))} "
        f"({big.get('detected', 0)}/{big.get('lesions', 0)}) | {fmt(det.get('fp_per_scan'), 2)} |"
    )


HEADER = (
    "| model | threshold / min lesion / min depth | Dice, lesion < 1% of slice | Dice, < 10% | "
    "Dice, all lesion slices | "
    "per-scan 3-D Dice | lesion sensitivity | sensitivity >= 10 mm and >= 20 HU | "
    "false positives per scan |\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
)


REGION_HEADER = (
    "| model | source region (z-block) | scans | sensitivity >= 10 mm and >= 20 HU | "
    "false positives per scan | false-positive sites flagged in >= half of the copies "
    "(their share of the false-positive voxels) |\n|---|---|---:|---:|---:|---:|"
)


def region_rows(name: str, res: dict) -> list[str]:
    """One row per source region of an evaluation (`nstseg evaluate`'s ``by_region``)."""
    out = []
    for region, r in (res.get("by_region") or {}).items():
        target = r["target_sensitivity"]
        sites = (
            "-"
            if r["recurring_fp_sites"] is None
            else f"{r['recurring_fp_sites']} ({100 * r['recurring_fp_share']:.1f} %)"
        )
        out.append(
            f"| {name} | {region} | {r['scans']} | "
            f"{fmt(target if r['target_lesions'] else None)} "
            f"({r['target_detected']}/{r['target_lesions']}) | {fmt(r['fp_per_scan'], 2)} | "
            f"{sites} |"
        )
    return out


GENERATED_SECTIONS = ("### Per source region",)


def later_sections(path: Path) -> list[str]:
    """The '### ' sections of an earlier comparison.md or model card that this script does
    not write itself, each from its heading to the next heading, in order."""
    if not path.is_file():
        return []
    sections: list[str] = []
    current: list[str] | None = None
    fenced = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if line.startswith("#") and not fenced:
            if current is not None:
                sections.append("\n".join(current).strip())
            mine = line.startswith("### ") and line.strip() not in GENERATED_SECTIONS
            current = [line] if mine else None
        elif current is not None:
            current.append(line)
    if current is not None:
        sections.append("\n".join(current).strip())
    return sections


def table_span(lines: list[str], header: str) -> tuple[int, int] | None:
    """[start, end) of the rows of the first table under ``header``; None when there is none."""
    head = header.split("\n")
    for i in range(len(lines)):
        if lines[i : i + len(head)] == head:
            start = end = i + len(head)
            while end < len(lines) and lines[end].startswith("|"):
                end += 1
            return start, end
    return None


def model_name(table_row: str) -> str:
    return table_row.split("|")[1].strip()


def dropped_rows(path: Path, header: str, names: set[str]) -> list[str]:
    """Models in the earlier table under ``header`` that the new one lacks."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    span = table_span(lines, header)
    if span is None:
        return []
    found = [model_name(line) for line in lines[span[0] : span[1]]]
    return [n for i, n in enumerate(found) if n not in names and n not in found[:i]]


def lesion_ranges(folder: str | Path, split: str | None = None) -> str:
    """Lesion sizes, contrasts and count of a lesion folder's lesions.csv, as one phrase."""
    path = Path(folder) / "lesions.csv"
    if not path.is_file():
        return "lesion table not found"
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if split is None or r.get("split") == split]
    if not rows:
        return "no lesions"
    d = [float(r["diameter_requested_mm"]) for r in rows]
    c = [float(r["contrast_requested_hu"]) for r in rows]
    return f"{min(d):.0f}-{max(d):.0f} mm, {min(c):+.0f} to {max(c):+.0f} HU, {len(rows)} lesions"


def _minutes(started: str | None, date: str | None) -> float | None:
    from datetime import datetime

    try:
        return (datetime.fromisoformat(date) - datetime.fromisoformat(started)).total_seconds() / 60
    except (TypeError, ValueError):
        return None


def _crop_words(crop) -> str:
    return "x".join(str(v) for v in crop) if isinstance(crop, (list, tuple)) else str(crop)


def _phase_line(k: int, budget: dict, config: dict, minutes: float | None, device: str) -> str:
    """One training phase of a checkpoint as a Markdown list item."""
    sampling = config.get("sampling") or {}
    loss = config.get("loss") or {}
    offsets = (config.get("preprocess") or {}).get("slice_offsets_mm") or [0.0]
    crop = _crop_words(budget.get("crop_size"))
    parts = [
        f"{budget.get('epochs')} epochs x {budget.get('steps_per_epoch')} steps x batch "
        f"{budget.get('batch_size')} ({budget.get('samples')} crops of {crop})",
        f"lr {config.get('lr')}",
        f"{sampling.get('positive_fraction', 0.7):.0%} crops with lesion",
        "IoU and Dice terms over the batch"
        if loss.get("region") == "batch"
        else "IoU and Dice terms per crop (PFNet)",
    ]
    if loss.get("hard_pixel_fraction", 1.0) < 1:
        parts.append(f"BCE over the hardest {loss['hard_pixel_fraction']:.0%} of pixels")
    if len(offsets) > 1:
        parts.append("2.5-D input (planes at " + ", ".join(f"{v:+g}" for v in offsets) + " mm)")
    took = f", {minutes:.0f} min on {device}" if minutes is not None else f", on {device}"
    return f"- Phase {k}: " + "; ".join(parts) + took


def training_phases(prov: dict, last_minutes: float) -> str:
    """The phases the bundled weights went through (a run continued with `train --init`), the
    first first, with the total number of training crops."""
    chain, origin = [], prov.get("initialised_from")
    while origin:
        chain.append(origin)
        origin = origin.get("initialised_from")
    lines, total = [], 0
    for k, origin in enumerate(reversed(chain), start=1):
        budget = origin.get("budget") or {}
        total += int(budget.get("samples") or 0)
        minutes = _minutes(origin.get("started"), origin.get("date"))
        lines.append(
            _phase_line(k, budget, origin.get("train_config") or {}, minutes, origin.get("device"))
        )
    budget = prov.get("budget") or {}
    total += int(budget.get("samples") or 0)
    lines.append(
        _phase_line(
            len(chain) + 1, budget, prov.get("train_config") or {}, last_minutes, prov["device"]
        )
    )
    if chain:
        lines.append(
            f"- In all {total} training crops; each phase started from the weights the one "
            "before ended with (`nstseg train --init`), with a new learning-rate schedule."
        )
    if prov.get("averaged_from"):
        sources = ", ".join(f"{s['checkpoint']} ({s['weight']:g})" for s in prov["averaged_from"])
        lines.append(
            f"- The weights are the mean of {len(prov['averaged_from'])} checkpoints of these "
            f"phases (`nstseg average-weights`; source and weight): {sources}. No training "
            "beyond the phases above."
        )
    return "\n".join(lines)


def two_phase_rows(work: Path | None, variants: list[str], tag: str = "") -> list[str]:
    """NAME=EVALUATION_JSON of each variant through both phases in ``work`` (phase 2's folder):
    at the bundled point (evals/VARIANT_d4) and at its validation-tuned point (eval_test)."""
    from napari_nstseg.models.variants import list_variants

    titles = {v.name: v.title for v in list_variants()}
    out = []
    for v in variants:
        if v not in titles:
            raise SystemExit(f"unknown variant {v} (one of {', '.join(titles)})")
        out.append(f"{titles[v]}{tag}, same phases={work}/evals/{v}_d4/evaluation.json")
        out.append(
            f"{titles[v]}{tag} at its validation-tuned point="
            f"{work}/runs/{v}/eval_test/evaluation.json"
        )
    return out


def ablation_rows(work: str | None) -> list[str]:
    """NAME=EVALUATION_JSON of the ablations trained through both phases in ``work`` (phase
    2's folder), those whose validation-tuned point was evaluated: each at the bundled point
    and at that one, as the variant registry titles them."""
    if not work:
        return []
    from napari_nstseg.models.variants import list_variants

    # the table's rows besides the bundled pair (train_bundled.TABLE_VARIANTS)
    paired = ("default", "unet")
    ablations = [
        v.name
        for v in list_variants()
        if v.name not in paired and not v.changes.get("ssl_guidance")
    ]
    done = [
        v
        for v in ablations
        if (Path(work) / "runs" / v / "eval_test" / "evaluation.json").is_file()
    ]
    for v in done:
        if not (Path(work) / "evals" / f"{v}_d4" / "evaluation.json").is_file():
            raise SystemExit(f"{work}: {v} has no evaluation at the bundled point: run the "
                             f"recipe's `evals` step with --set variants={v} first")  # fmt: skip
    return two_phase_rows(Path(work), done)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seg", required=True)
    ap.add_argument("--mae", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument(
        "--compare", action="append", default=[], metavar="NAME=CHECKPOINT",
        help="another checkpoint to evaluate, or its test-split evaluation.json",
    )  # fmt: skip
    ap.add_argument(
        "--postprocess", metavar="TUNE_JSON",
        help="tune.json of `nstseg tune-postprocess`: its chosen operating point is bundled",
    )  # fmt: skip
    ap.add_argument("--threshold", type=float, help="bundled threshold (overrides tune.json)")
    ap.add_argument(
        "--min-lesion-mm", type=float, help="bundled minimum lesion size (overrides tune.json)"
    )
    ap.add_argument(
        "--min-depth-mm", type=float, help="bundled minimum lesion depth (overrides tune.json)"
    )
    ap.add_argument(
        "--note", action="append", default=[],
        help="a sentence printed under the tables (e.g. what sets a compared row apart)",
    )  # fmt: skip
    ap.add_argument(
        "--ablations", metavar="W2",
        help="phase-2 work folder: every ablation evaluated there (its `evals` and validation-"
        "tuned point) is a pair of compared rows",
    )  # fmt: skip
    ap.add_argument("--out", default=str(ROOT / "runs" / "bundle_eval"))
    ap.add_argument("--weights-dir", default=str(WEIGHTS), help="where the bundle goes")
    ap.add_argument("--docs-dir", default=str(ROOT / "docs"))
    args = ap.parse_args(argv)
    weights, docs = Path(args.weights_dir), Path(args.docs_dir)

    weights.mkdir(parents=True, exist_ok=True)
    mae_meta = package(args.mae, weights / "mae")
    point = operating_point(args.postprocess, args.threshold, args.min_lesion_mm, args.min_depth_mm)
    seg_meta = package(args.seg, weights / "default", postprocess=point, mae="mae.json")
    load_checkpoint(weights / "default.json")  # the bundle verifies, operating point included
    out = Path(args.out)
    cfg = EvalConfig(device="cpu")
    arch = "U-Net" if seg_meta["model_config"].get("arch") == "unet" else "CDI-NSTSEG"
    results = {f"{arch} (bundled, float16)": evaluate(
        weights / "default.json", args.data, "test", out=out / "default", config=cfg)}  # fmt: skip
    for item in [*args.compare, *ablation_rows(args.ablations)]:
        name, _, path = item.partition("=")
        if Path(path).name == "evaluation.json":  # already evaluated on this split
            results[name] = json.loads(Path(path).read_text())
        else:
            results[name] = evaluate(path, args.data, "test", out=out / name, config=cfg)
    sample = sample_check(weights / "default.json")
    (out / "sample_check.json").write_text(json.dumps(sample, indent=2, default=float))

    prov = seg_meta["provenance"]
    budget = prov.get("budget", {})
    train_folder = prov.get("training_data", {}).get("folder", args.data)
    data_json = json.loads((Path(args.data) / "dataset.json").read_text())
    table = "\n".join([HEADER, *(row(n, r) for n, r in results.items())])
    if args.note:
        table += "\n\n" + "\n\n".join(args.note)
    regions = [line for n, r in results.items() for line in region_rows(n, r)]
    region_part = ""
    if regions:
        region_part = (
            "\n\n### Per source region\n\nEach test block is one anatomy, copied with other "
            "lesions in every case of it, so a normal structure a model takes for tumour comes "
            "back in every copy: the false positives per scan above measure how a model treats "
            "these few anatomies. The last column counts those structures (`nstseg evaluate`, "
            "'by source region'; rows for the evaluations that recorded it).\n\n"
            + "\n".join([REGION_HEADER, *regions])
        )
    earlier = {"comparison": docs / "comparison.md", "card": weights / "MODEL_CARD.md"}
    carried = {k: later_sections(path) for k, path in earlier.items()}
    for k, path in earlier.items():
        for header in (HEADER, REGION_HEADER):
            for name in dropped_rows(path, header, set(results)):
                print(
                    f"{path.name}: the row '{name}' is gone; add it again with "
                    "napari_nstseg.recipes.comparison_rows from its evaluation.json",
                    file=sys.stderr,
                )
        for section in carried[k]:
            print(
                f"{path.name}: carried over '{section.splitlines()[0]}', measured before this "
                "bundle: check it against the new weights",
                file=sys.stderr,
            )

    def tables(kind: str) -> str:
        return "\n\n".join([table, *carried[kind]]) + region_part

    from napari_nstseg.inference.device import cpu_name

    hardware = f"{cpu_name()}, {platform.machine()}"
    with open(Path(args.seg).parent / "log.csv", newline="") as f:
        minutes = float(list(csv.DictReader(f))[-1]["elapsed_s"]) / 60
    budget_words = (
        f"{budget.get('epochs')} epochs x {budget.get('steps_per_epoch')} steps x batch "
        f"{budget.get('batch_size')} of {_crop_words(budget.get('crop_size'))} crops"
    )
    if prov.get("initialised_from"):
        budget_words += (
            ", after the earlier phases listed in the model card, started from the weights of "
            "the one before"
        )
    comparison = f"""# CDI-NSTSEG vs U-Net on held-out lesion-insertion scans

Measured {time.strftime("%Y-%m-%d")} with `python -m napari_nstseg.recipes.bundle_weights`
(CPU: {hardware}; torch {torch.__version__})
on the test split of `{data_json.get("name", Path(args.data).name)}`
({results[next(iter(results))]["detection"]["scans"]} held-out cases,
{results[next(iter(results))]["detection"]["lesions"]} lesions; the split is by z-block of each
source scan, see `napari_nstseg.training.lesions`). Identical data, training budget
({budget_words}) and seed for every row unless a note below says otherwise. Slice Dice
is the mean over slices with lesion in each area group (SoSegFormer's size groups); a lesion
counts as detected when the predicted components touching it reach Dice 0.1.

{tables("comparison")}
"""
    (docs / "comparison.md").write_text(comparison)

    files = "\n".join(
        f"| `{stem}.safetensors` + `{stem}.json` | {what}, {m['n_params'] / 1e6:.2f} M "
        f"parameters, float16, {m['megabytes']} MB |"
        for stem, what, m in (
            ("default", "CDI-NSTSEG", seg_meta),
            ("mae", "masked autoencoder behind the SSL residual map layer", mae_meta),
        )
    )
    bundled_point = seg_meta.get("postprocess")
    if args.postprocess:
        point_origin = "chosen on the validation split with `nstseg tune-postprocess`"
    elif point:
        point_origin = "set when packaging"
    elif bundled_point:
        point_origin = "as recorded in the trained checkpoint"
    else:
        point_origin = "none recommended: threshold 0.5, no minimum lesion size"
    offsets = seg_meta["preprocessing"].get("slice_offsets_mm", [0.0])
    planes = (
        ""
        if len(offsets) == 1
        else "\n- 2.5-D input: the network's channels are the axial planes at "
        f"{', '.join(f'{v:+g}' for v in offsets)} mm from the slice it segments, interpolated "
        "along z from the scan's own slices, so a small lesion shows in several planes where "
        "noise does not."
    )
    phases = training_phases(prov, minutes)
    card = f"""# Bundled weights: model card

**Demonstration weights for research. Not for diagnosis, not a medical device.** They were
trained on synthetic lesions inserted into two public CT scans; they have never seen a real
tumor.

| file | what |
|---|---|
{files}

## Model
- Architecture (`default.json` -> `model_config`): `{json.dumps(seg_meta["model_config"])}`
- Preprocessing (`preprocessing`): `{json.dumps(seg_meta["preprocessing"])}`. Each axial slice is
  resampled in-plane to this working spacing, windowed and normalised, and the result resampled
  back onto the scan's own grid. The working spacing is coarser than the 0.8-1 mm of clinical
  scans because these weights were trained on a 2-core CPU (no GPU was available): lesions
  under about 5 mm are only a few pixels at this spacing.{planes}
- MAE (`mae.json`): `{json.dumps(mae_meta["model_config"])}`.
- Operating point (`postprocess`, what `nstseg predict`, `evaluate` and the widget use unless
  told otherwise): `{json.dumps(bundled_point or PostprocessConfig().to_dict())}` ({point_origin}).

## Training data
Lesion-insertion data made by `nstseg make-lesions` from TotalSegmentator's `example_ct.nii.gz`
(3 mm abdomen and pelvis, with organ labels padded in from `example_seg.nii.gz`) and
`ct_cropped.nii.gz` (1.5 mm chest CTA), Apache-2.0 (Wasserthal et al., Radiology: AI 2023).
Contrast is against the local tissue (80 % hypodense), soft edge, the scan's noise kept, never
in bone marrow or opacified vessels. Trained on the train split of
`{Path(train_folder).name}` ({lesion_ranges(train_folder, "train")}); evaluated on the test
split of `{Path(args.data).name}` ({lesion_ranges(args.data, "test")}); operating points are
chosen on validation blocks (`nstseg tune-postprocess`; the notes below say which). Both
folders come from one seed, so they share the split: train, validation and test are separate
z-blocks of each scan with a 15 mm gap and no anatomy is shared; the sample CT's lesion lies in
a test block.

## Training budget
{phases}

AdamW with poly decay in every phase, deep supervision (BCE+IoU on the GLM map, the weighted
structure loss 1/2/4 on the LFM maps) plus a soft-Dice term, seed {prov.get("seed")}. Every model
in the tables is its last epoch (`final.json`): on these validation blocks, which hold only small
lesions, selecting by validation Dice picked early, barely trained epochs. The exact commands
are in `configs/default/recipe.json`; `docs/comparison.md` compares with the equally trained U-Net.

## Held-out results (test split, measured on the bundled float16 files)
{tables("card")}

## On the sample CT
`nstseg predict sample_data/sample_ct.nii.gz ...`: lesion found: **{sample["found"]}**
(Dice {fmt(sample["dice"])}, {sample["false_positive_components"]} other components, \
{sample["seconds_cpu"]} s on the CPU).

## Limits
Trained on two scans at 1.5 mm working spacing for a CPU budget: expect misses of small and
faint lesions, of nearly every lesion brighter than its surroundings, and false positives in
real scans. Retrain on your data (`nstseg train`) or with a larger budget on a GPU
(`configs/default/recipe.json`) for any serious use.
"""
    (weights / "MODEL_CARD.md").write_text(card)
    print(comparison)
    print(json.dumps(sample, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
