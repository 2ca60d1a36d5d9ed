"""Package the real-tumour model as the bundled `sarcoma` weights and write its model card and
docs/sarcoma.md from measurements (nothing in the tables is typed by hand).

    python -m napari_nstseg.recipes.bundle_sarcoma --seg RUN/default/best.json \
        --tune RUN/default/tune_val/tune.json \
        --compare unet=RUN/unet/best.json:RUN/unet/tune_val/tune.json \
        --data ../shared/data/sts --split-file configs/sarcoma/split.json

Each model is scored by `nstseg evaluate`'s code at the operating point chosen for it on the
validation patients (`tune-postprocess --objective dice`), on the validation patients (where
that point was chosen, so optimistic) and on the test patients (reported, never chosen on).
The bundled file (float16) is what is scored for CDI-NSTSEG: what users get.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

from napari_nstseg.inference.device import cpu_name
from napari_nstseg.models.checkpoint import read_metadata
from napari_nstseg.recipes.bundle_weights import (
    ROOT,
    WEIGHTS,
    _minutes,
    operating_point,
    package,
    training_phases,
)
from napari_nstseg.training import offcentre
from napari_nstseg.training.evaluate import EvalConfig, evaluate

DESCRIPTION = (
    "CDI-NSTSEG for soft-tissue sarcoma of the extremities in CT, trained on 24 patients' "
    "radiation-oncology contours (research use only)"
)
BUNDLED_NAME = "CDI-NSTSEG (bundled `sarcoma`)"
SPLITS = ("val", "test")
CREDIT = (
    "Data: TCIA Soft-tissue-Sarcoma (doi 10.7937/K9/TCIA.2015.7GO2GSKS; Vallieres M et al., Phys "
    "Med Biol 2015;60(14):5471; Clark K et al., J Digit Imaging 2013) as cropped and converted by "
    "the IBSI (Zwanenburg A et al.), CC BY 3.0."
)


def hardware() -> str:
    """The processor as the OS names it, with the core count."""
    return f"{cpu_name()}, {os.cpu_count()} cores"


def training_minutes(ckpt: Path) -> float | None:
    """Minutes of training: the epoch times in the run's log.csv beside the checkpoint (so
    pauses and restarts between epochs do not count), else None."""
    log = ckpt.resolve().parent / "log.csv"
    if not log.is_file():
        return None
    with open(log, newline="") as f:
        return sum(float(r["epoch_time_s"]) for r in csv.DictReader(f)) / 60


def trained_in(ckpt: Path, prov: dict) -> Path:
    """The checkpoint whose run folder holds the last stage's log: ``ckpt`` itself, or for
    averaged weights the first checkpoint averaged (whose provenance they carry)."""
    averaged = prov.get("averaged_from")
    return Path(averaged[0]["checkpoint"]) if averaged else ckpt


def last_stage_minutes(ckpt: Path, prov: dict) -> float | None:
    """Minutes of the last stage behind ``ckpt``: its run's log.csv, else the start and end
    stamps in its provenance (which a resumed run resets)."""
    logged = training_minutes(trained_in(ckpt, prov))
    return logged or _minutes(prov.get("started"), prov.get("date"))


def stage_budgets(ckpt: Path, prov: dict) -> list[tuple[dict, float | None]]:
    """(budget, training minutes) of every stage behind a checkpoint, the first first: the
    `--init` chain in its provenance, minutes from each run's log.csv where it is still there."""
    stages = [(prov.get("budget") or {}, training_minutes(trained_in(ckpt, prov)))]
    origin = prov.get("initialised_from")
    while origin:
        weights = origin.get("weights")
        minutes = training_minutes(Path(weights)) if weights else None
        if minutes is None:
            minutes = _minutes(origin.get("started"), origin.get("date"))
        stages.append((origin.get("budget") or {}, minutes))
        origin = origin.get("initialised_from")
    return stages[::-1]


def _budget_text(b: dict) -> str:
    return f"{b.get('epochs')} x {b.get('steps_per_epoch')} x {b.get('batch_size')}"


def score(weights: str, point: dict, args, split: str, out: Path) -> dict:
    """``evaluate`` at ``point`` (empty: the operating point the weights carry)."""
    cfg = EvalConfig(device="cpu", split_file=args.split_file, **point)
    result = evaluate(weights, args.data, split, out, cfg, verbose=False)
    # The per-patient rows live in the written evaluation, not in the returned summary.
    written = json.loads(Path(result["files"]["evaluation.json"]).read_text())
    return {**result, "cases": written["cases"]}


def row(name: str, res: dict) -> str:
    vol, pix = res["volume"], res["pixel"]["groups"]

    def g(group: str) -> str:
        v = pix.get(group) or {}
        return f"{v['dice']:.3f} ({v['images']})" if v.get("images") else "-"

    hd = vol.get("hd95_mm")
    point = res["postprocess"]
    return (
        f"| {name} | {vol['dice']:.3f} | {vol['dice_median']:.3f} | {g('area<1%')} | "
        f"{g('area<10%')} | {g('all')} | {vol['scans_detected']}/{vol['scans_with_tumour']} | "
        f"{vol['fp_per_scan']:.2f} | {'-' if hd is None else f'{hd:.1f}'} | "
        f"{point['threshold']:g} / {point['min_lesion_mm']:g} / {point['min_depth_mm']:g} |"
    )


HEADER = (
    "| model | Dice per patient, mean | median | slice Dice < 1 % (n) | < 10 % (n) | "
    "all tumour slices (n) | tumour found | FP components / scan | HD95 mm | "
    "threshold / min mm / depth mm |\n|---|---|---|---|---|---|---|---|---|---|"
)


def offcentre_lines(off: dict) -> list[str]:
    """The off-centre table: does Dice hold when the tumour is not in the middle of the crop?"""
    if not off:
        return []
    lines = [
        "### Off-centre sub-crops (validation patients)",
        "",
        "Each case cut to 70 % of its in-plane field at each corner, so the tumour sits "
        "off-centre or at the edge; the model runs on the sub-crop alone at the operating point "
        "its weights carry (0.5 / 0 / 0 for a checkpoint that carries none).",
        "",
        "| model | Dice, whole case | Dice, off-centre crops (n) |",
        "|---|---|---|",
    ]
    for name, r in off.items():
        value = "-" if r["offcentre_dice"] is None else f"{r['offcentre_dice']:.3f}"
        lines.append(f"| {name} | {r['whole_dice']:.3f} | {value} ({r['crops']}) |")
    return [*lines, ""]


def per_patient(res: dict) -> list[str]:
    lines = [
        "| patient | Dice | HD95 mm | found | false-positive components |",
        "|---|---|---|---|---|",
    ]
    for c in res["cases"]:
        hd = c.get("hd95_mm")
        hd_text = "-" if hd is None or hd != hd else f"{hd:.1f}"
        lines.append(
            f"| {c['case']} | {c['dice']:.3f} | {hd_text} | {'yes' if c['detected'] else 'no'} | "
            f"{c['false_positives']} |"
        )
    return lines


def ablation_models(runs: Path, variants: list[str]) -> dict[str, tuple[str, dict]]:
    """Title -> (checkpoint, operating point) of each ablation's run in ``runs``, at the
    point tune-postprocess chose for it on the validation patients."""
    from napari_nstseg.models.variants import get_variant

    out = {}
    for v in variants:
        title = get_variant(v).title  # an unknown name is a readable error
        ckpt, tune = runs / v / "best.json", runs / v / "tune_val" / "tune.json"
        for path in (ckpt, tune):
            if not path.is_file():
                raise SystemExit(
                    f"{path}: missing; train and tune the {v} ablation first (nstseg reproduce "
                    f"configs/sarcoma/recipe.json train tune --set variants={v})"
                )
        out[f"{title}, same data, budget and seed"] = (
            str(ckpt),
            json.loads(tune.read_text())["postprocess"],
        )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seg", required=True, help="the CDI-NSTSEG checkpoint to bundle")
    ap.add_argument("--tune", required=True, help="its tune.json (validation patients)")
    ap.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="NAME=CKPT:TUNE",
        help="a model scored beside it at its own operating point",
    )
    ap.add_argument(
        "--ablations",
        nargs="*",
        default=[],
        metavar="VARIANT",
        help="variant runs (ablations, ssl) scored beside it, each RUNS/VARIANT/best.json at its "
        "RUNS/VARIANT/tune_val/tune.json (RUNS: the folder of --seg's run), titled as the "
        "variant registry titles them",
    )
    ap.add_argument(
        "--reading",
        type=Path,
        help="a hand-written markdown section appended to sarcoma.md (what the figures say), "
        "kept in its own file so that a new bundle does not drop it",
    )
    ap.add_argument("--data", required=True)
    ap.add_argument("--split-file", required=True)
    ap.add_argument("--work", default="runs/sarcoma-bundle", help="evaluation outputs")
    ap.add_argument("--hardware", default=hardware(), help="named in the card and docs")
    ap.add_argument(
        "--offcentre", action="store_true", help="also Dice on off-centre sub-crops (val)"
    )
    ap.add_argument("--weights-dir", type=Path, default=WEIGHTS, help="where the bundle goes")
    ap.add_argument(
        "--mae-name", default="mae.json", help="the bundled MAE the weights name ('' for none)"
    )
    ap.add_argument("--docs", type=Path, default=ROOT / "docs", help="where sarcoma.md goes")
    args = ap.parse_args(argv)
    work = Path(args.work)
    point = operating_point(args.tune, None, None)
    # The residual layer comes from the bundled MAE (docs/ssl-residual.md: the one that measured
    # best on the validation patients).
    meta = package(
        args.seg,
        args.weights_dir / "sarcoma",
        postprocess=point,
        description=DESCRIPTION,
        mae=args.mae_name,
    )
    bundled = str(args.weights_dir / "sarcoma.json")
    models = {BUNDLED_NAME: (bundled, {})}
    for item in args.compare:
        name, spec = item.split("=", 1)
        ckpt, tune = spec.split(":", 1)
        models[name] = (ckpt, json.loads(Path(tune).read_text())["postprocess"])
    models.update(ablation_models(Path(args.seg).resolve().parent.parent, args.ablations))
    results = {
        name: {part: score(ckpt, point_, args, part, work / f"{name}_{part}") for part in SPLITS}
        for name, (ckpt, point_) in models.items()
    }
    off = (
        {
            name: offcentre.measure(
                ckpt, args.data, "val", args.split_file, out=work / f"{name}_off"
            )
            for name, (ckpt, _) in models.items()
        }
        if args.offcentre
        else {}
    )
    prov = meta["provenance"]
    minutes = last_stage_minutes(Path(args.seg), prov)
    split = json.loads(Path(args.split_file).read_text())
    tables = []
    for part, title in (("val", "Validation patients (operating points chosen here)"),
                        ("test", "Test patients (reported once, never chosen on)")):  # fmt: skip
        tables += [f"### {title}", "", HEADER]
        tables += [row(name, res[part]) for name, res in results.items()]
        tables.append("")
    bundled_res = results[BUNDLED_NAME]
    card = [
        "# Model card: `sarcoma` (CDI-NSTSEG for soft-tissue sarcoma)",
        "",
        "**Research software, not for diagnosis.** These weights outline soft-tissue sarcomas of",
        "the extremities in CT for research on non-salient tumour segmentation. They have been",
        "measured on 12 held-out patients of one public collection; they are not validated for",
        "any clinical use.",
        "",
        "- Use: `nstseg predict CT OUT --weights sarcoma`, or choose `sarcoma` in the widget.",
        f"- {CREDIT}",
        f"- Patients: {len(split['train'])} train, {len(split['val'])} validation "
        f"({', '.join(split['val'])}), {len(split['test'])} test ({', '.join(split['test'])}); "
        "fixed split by patient in configs/sarcoma/split.json. The validation patients were "
        "kept out of every training run.",
        f"- Input: {meta['preprocessing']}",
        f"- Model: {meta['model_config']}; {meta['n_params']} parameters, "
        f"{meta['megabytes']} MB as float16.",
        f"- Operating point (chosen on the validation patients, highest mean per-patient Dice "
        f"with at most 1 false-positive component per scan): {point}.",
        "- Training (every stage; the budget adds up over `--init` continuations):",
        training_phases(prov, minutes or 0.0),
        f"- Hardware of the measurements: {args.hardware}, CPU only. Training times are the "
        "sum of the epochs' wall-clock times on that CPU, shared with other jobs.",
        "",
        "## Results",
        "",
        *tables,
        "### Per patient (bundled, test)",
        "",
        *per_patient(bundled_res["test"]),
        "",
        "SSL residual map: the bundled MAE (`mae.json`); how well it singles out these tumours "
        "is measured in docs/ssl-residual.md.",
        "",
        "Recipe: configs/sarcoma/recipe.json (exact commands: `nstseg reproduce "
        "configs/sarcoma/recipe.json --dry-run STEP`).",
        "",
    ]
    (args.weights_dir / "MODEL_CARD_sarcoma.md").write_text("\n".join(card))
    budgets = []
    for name, (ckpt, _) in models.items():
        p = read_metadata(ckpt)["provenance"]
        phases = stage_budgets(Path(args.seg if name == BUNDLED_NAME else ckpt), p)
        spent = [m for _, m in phases]
        took = None if None in spent else sum(spent)
        budgets.append(
            f"| {name} | {' + '.join(_budget_text(b) for b, _ in phases)} "
            f"= {sum(int(b.get('samples') or 0) for b, _ in phases)} crops | {p.get('seed')} | "
            f"{'-' if took is None else f'{took:.0f}'} | {p.get('device')} |"
        )
    doc = [
        "# Real tumours: soft-tissue sarcoma (36 patients, radiologists' contours)",
        "",
        "Written by `napari_nstseg.recipes.bundle_sarcoma` (recipe: configs/sarcoma/recipe.json) "
        "from `nstseg evaluate` on the fixed split configs/sarcoma/split.json; every model has the "
        "same data, budget and seed. Hardware: " + args.hardware + ", CPU only.",
        "",
        "| model | budget (epochs x steps x batch, per stage) | seed | training minutes | device |",
        "|---|---|---|---|---|",
        *budgets,
        "",
        *tables,
        *offcentre_lines(off),
        f"{CREDIT}",
        "",
    ]
    if args.reading is not None:
        doc += [args.reading.read_text().rstrip(), ""]
    (args.docs / "sarcoma.md").write_text("\n".join(doc))
    print("\n".join(card))
    return 0


if __name__ == "__main__":
    sys.exit(main())
