"""Package the organ-mode weights as the bundled `organs` checkpoint (cascade 001, CL-MSDA 003)
with both operating points chosen on validation, and write its model card from measurements.

    python -m napari_nstseg.recipes.bundle_organs --seg RUN/best.json \
        --organ-tune RUN/tune_val_organs/tune.json --whole-tune RUN/tune_val_whole/tune.json \
        --data DATA --organs 1,2,3,5,6,7,18 [--compare NAME=CKPT:ORGAN_TUNE]

The bundled file (float16) is scored on the test split inside the organs at its organ-mode
point and over the whole scan at its whole-scan point, by source region, and on the sample CT
as the demo runs it (organ mode on the liver): what a first-time user sees.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from napari_nstseg.inference.cli_organs import DEFAULT_MARGIN_MM
from napari_nstseg.models.checkpoint import read_metadata
from napari_nstseg.recipes.bundle_sarcoma import hardware, last_stage_minutes
from napari_nstseg.recipes.bundle_weights import (
    WEIGHTS,
    operating_point,
    package,
    sample_check,
    training_phases,
)
from napari_nstseg.training.evaluate import EvalConfig, evaluate
from napari_nstseg.training.organ_eval import FROM_WEIGHTS, OrganEval
from napari_nstseg.training.tune import tuned_organ_search

BUNDLED_NAME = "CDI-NSTSEG (bundled `organs`)"
# each source scan's credit, by the patient name patient_name() gives it
CREDITS = {
    "example_ct_sm": "TotalSegmentator test files (Wasserthal et al., Radiology: AI 2023, "
    "Apache-2.0)",
    "LIDC-IDRI-0314": "LIDC-IDRI-0314 (Armato SG III et al., Med Phys 2011; TCIA, CC BY 3.0)",
    "Pancreas-CT-CB_001": "Pancreas-CT-CB_001 (TCIA Pancreatic-CT-CBCT-SEG, CC BY 4.0)",
    "HCC_048": "HCC_048 (TCIA HCC-TACE-Seg: Moawad AW et al., doi 10.7937/TCIA.5FNA-0924; "
    "Morshid A et al., Radiol Artif Intell 2019; CC BY 4.0)",
}
CREDITS["ct_cropped"] = CREDITS["example_ct_sm"]


def patient_name(source: str) -> str:
    """A scan's name in the card: its folder for a case folder's ct.nii.gz, else its stem."""
    path = Path(source)
    stem = path.name.split(".")[0]
    return path.parent.name if stem == "ct" else stem


def sources(data: str | Path) -> dict[str, str]:
    """Region (a case name without its copy suffix) -> patient, from make-lesions' dataset.json;
    the training regions, which have no stored cases, too."""
    meta = json.loads((Path(data) / "dataset.json").read_text())
    out = {case.rsplit("_c", 1)[0]: patient_name(c["source"]) for case, c in meta["cases"].items()}
    for region in meta.get("regions", []):
        key = f"{region['split']}:{region['source']}:{region['z_range_display']}"
        out.setdefault(key, patient_name(region["source"]))
    return out


def description(n_scans: int) -> str:
    return (
        "CDI-NSTSEG continued on organ crops for organ mode (lesions inserted into liver, "
        f"spleen, kidneys, stomach and bowel of {n_scans} scans; research use only)"
    )


def credit(patients) -> str:
    seen = dict.fromkeys(CREDITS.get(p, p) for p in sorted(patients))
    return f"Scans: {'; '.join(seen)}. The lesions are synthetic."


ORGAN_HEADER = (
    "| model | lesions in organs found | >= 10 mm and >= 20 HU found | FP / scan in organs | "
    "whole scan: lesions found | >= 10 mm and >= 20 HU | FP / scan | points (organs; whole) |\n"
    "|---|---|---|---|---|---|---|---|"
)
REGION_HEADER = (
    "| model | patient | source region | scans | lesions in organs found | >= 10 mm and >= 20 HU "
    "found | FP / scan in organs |\n|---|---|---|---|---|---|---|"
)


def _frac(found: int, n: int) -> str:
    return f"{found / n:.2f} ({found}/{n})" if n else "- (0/0)"


def _point(pp: dict, centre: float | None = None) -> str:
    rule = "" if centre is None else f", centre {centre:g} mm"
    return f"{pp['threshold']:g} / {pp['min_lesion_mm']:g} / {pp['min_depth_mm']:g}{rule}"


def tuned_centre(tune_json: str | Path) -> float | None:
    """The centre rule a tune.json chose in organ mode (None: none, or a whole-scan tune)."""
    return tuned_organ_search(tune_json).get("centre_mm")


def organ_row(name: str, inside: dict, whole: dict) -> str:
    """One model: inside the organs and over the whole scan, each at its own point."""
    o, t = inside["organs"], inside["organs"]["target"]
    det = whole["detection"]
    big = whole["lesions_by_table"].get(">=10 mm and >=20 HU", {})
    return (
        f"| {name} | {_frac(o['detected'], o['lesions'])} | "
        f"{_frac(t['detected'], t['lesions'])} | {o['fp_per_scan']:.2f} | "
        f"{_frac(det['detected'], det['lesions'])} | "
        f"{_frac(big.get('detected', 0), big.get('lesions', 0))} | {det['fp_per_scan']:.2f} | "
        f"{_point(inside['postprocess'], inside['organs'].get('centre_mm'))}; "
        f"{_point(whole['postprocess'])} |"
    )


def region_rows(name: str, inside: dict, patients: dict[str, str] | None = None) -> list[str]:
    """Inside the organs, by source region (the copies of one z-block share its anatomy), with
    the patient each region is cut from (``patients``: region -> name; '-' where unknown)."""
    regions: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for case in inside["organs"]["by_case"]:
        region = regions[case["case"].rsplit("_c", 1)[0]]
        region["scans"] += 1
        for key in ("lesions", "detected", "target_lesions", "target_detected"):
            region[key] += case[key]
        region["fp"] += case["false_positives"]
    return [
        f"| {name} | {(patients or {}).get(r, '-')} | {r} | {v['scans']} | "
        f"{_frac(v['detected'], v['lesions'])} | "
        f"{_frac(v['target_detected'], v['target_lesions'])} | {v['fp'] / v['scans']:.2f} |"
        for r, v in sorted(regions.items())
    ]


def demo_line(check: dict) -> str:
    return (
        f"the sample's lesion {'found' if check['found'] else 'missed'} (Dice "
        f"{check['dice']:.2f}) with {check['false_positive_components']} other component(s), "
        f"{check['seconds_cpu']:g} s on the CPU"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seg", required=True, help="the organ-mode run's checkpoint to bundle")
    ap.add_argument("--organ-tune", required=True, help="tune.json chosen inside the organs")
    ap.add_argument("--whole-tune", help="tune.json chosen over whole scans (default: the same)")
    ap.add_argument(
        "--keep-whole-point", action="store_true",
        help="keep the whole-scan point --seg carries (re-bundling bundled weights whose "
        "organ-mode point alone is chosen again)",
    )  # fmt: skip
    ap.add_argument("--data", required=True, help="the make-lesions set with organsTr/")
    ap.add_argument("--organs", required=True, help="organ ids searched, e.g. 1,2,3,5,6,7,18")
    ap.add_argument("--margin-mm", type=float, default=DEFAULT_MARGIN_MM)
    ap.add_argument(
        "--compare", action="append", default=[], metavar="NAME=CKPT:ORGAN_TUNE",
        help="a model scored beside it: inside the organs at ORGAN_TUNE's point, over the whole "
        "scan at the point its weights carry",
    )  # fmt: skip
    ap.add_argument("--work", default="runs/organs-bundle", help="evaluation outputs")
    ap.add_argument(
        "--last-stage-minutes", type=float,
        help="the last training stage's minutes where its run's log.csv is gone (a re-bundle): "
        "its checkpoint's stamps undercount a resumed run",
    )  # fmt: skip
    ap.add_argument("--weights-dir", type=Path, default=WEIGHTS, help="where the bundle goes")
    ap.add_argument("--hardware", default=hardware(), help="named in the card")
    args = ap.parse_args(argv)
    labels = tuple(int(v) for v in args.organs.split(","))
    organ_pt = operating_point(args.organ_tune, None, None)
    centre = tuned_centre(args.organ_tune)
    if args.keep_whole_point:
        whole_pt = None  # package() keeps the source's own
    else:
        whole_pt = operating_point(args.whole_tune, None, None) if args.whole_tune else organ_pt
    patients = sources(args.data)
    work = Path(args.work)

    def score(name: str, ckpt: str, point: dict, rule=FROM_WEIGHTS) -> tuple[dict, dict]:
        """Inside the organs at ``point`` ({}: the weights' own) and centre rule ``rule`` (by
        default the weights' own), and over the whole scan."""
        search = OrganEval("organsTr", labels, args.margin_mm, rule)
        inside = EvalConfig(device="cpu", structure=False, organs=search, **point)
        whole = EvalConfig(device="cpu", structure=False)
        return (
            evaluate(ckpt, args.data, "test", work / f"{name}_organs", inside, verbose=False),
            evaluate(ckpt, args.data, "test", work / f"{name}_whole", whole, verbose=False),
        )

    # The models compared are scored first: one of them may be the bundled file this replaces.
    compared = {}
    for item in args.compare:
        name, spec = item.split("=", 1)
        ckpt, tune = spec.split(":", 1)
        point = json.loads(Path(tune).read_text())["postprocess"]
        compared[name] = score(name, ckpt, point, tuned_centre(tune))
    source = read_metadata(args.seg)
    meta = package(
        args.seg,
        args.weights_dir / "organs",
        postprocess=whole_pt,
        organ_postprocess=organ_pt,
        organ_search={**(source.get("organ_search") or {}), "centre_mm": centre},
        # Re-bundled weights were trained on another data set: their own line says which.
        description=source.get("description")
        if args.keep_whole_point and source.get("description")
        else description(len(set(patients.values()))),
        mae="mae.json",
    )
    bundled = args.weights_dir / "organs.json"
    results = {BUNDLED_NAME: score(BUNDLED_NAME, str(bundled), {}), **compared}
    demo = sample_check(bundled, organs="liver")
    (work / "sample_check.json").write_text(json.dumps(demo, indent=2, default=float))

    prov = meta["provenance"]
    minutes = args.last_stage_minutes or last_stage_minutes(Path(args.seg), prov)
    names = ", ".join(results[BUNDLED_NAME][0]["organs"]["names"])
    card = [
        "# Model card: `organs` (CDI-NSTSEG for organ mode)",
        "",
        "**Research software, not for diagnosis.** Trained and measured on synthetic lesions "
        "inserted into real scans; it has never seen a real tumour in an organ.",
        "",
        f"- The weights: {meta.get('description')}.",
        f"- Measured on lesions inserted into {len(set(patients.values()))} real scans "
        f"({', '.join(sorted(set(patients.values())))}).",
        "- Use: organ mode, `nstseg predict CT OUT --weights organs --organ-mask SEG --organs "
        "liver`, or choose `organs` in the panel with the mode 'inside organs' (the demo does).",
        f"- {credit(patients.values())}",
        f"- Operating points (chosen on the validation split: recipe configs/organ/recipe.json): "
        f"organ mode {organ_pt}; whole scan {meta['postprocess']}"
        + (
            " (the point these weights carried, chosen on the validation split they were "
            "bundled with; only the organ-mode point was chosen again)."
            if args.keep_whole_point
            else "."
        ),
        f"- Organ search: {meta.get('organ_search')} (the zoom it was trained at; centre_mm, "
        "chosen with the organ-mode point: a lesion is kept only when its centre lies within "
        "that distance of the organ, None: anywhere in the zone).",
        f"- Model: {meta['model_config']}; {meta['n_params']} parameters, "
        f"{meta['megabytes']} MB as float16.",
        "- Training (every stage; the budget adds up over `--init` continuations):",
        training_phases(prov, minutes or 0.0),
        "- The earlier phases' minutes come from their checkpoints' start and end stamps, which "
        "a resumed run resets: the default weights' card (MODEL_CARD.md) gives their full times.",
        f"- Hardware of the measurements: {args.hardware}, CPU only.",
        "",
        "## Results on the test split",
        "",
        f"Inside the organs ({names}, grown by {args.margin_mm:g} mm; a lesion counts when its "
        "centre lies there) at the organ-mode point, and over the whole scan at the whole-scan "
        "point. Points: threshold / min lesion mm / min depth mm.",
        "",
        ORGAN_HEADER,
        *(organ_row(n, *r) for n, r in results.items()),
        "",
        "### Inside the organs, by source region",
        "",
        REGION_HEADER,
        *(line for n, r in results.items() for line in region_rows(n, r[0], patients)),
        "",
        f"The demo (organ mode on the sample CT's liver, `nstseg demo`): {demo_line(demo)}.",
        "",
        "Recipe: configs/organ/recipe.json (`nstseg reproduce configs/organ/recipe.json "
        "--dry-run STEP`).",
        "",
    ]
    (args.weights_dir / "MODEL_CARD_organs.md").write_text("\n".join(card))
    print("\n".join(card))
    return 0


if __name__ == "__main__":
    sys.exit(main())
