"""Organ mode in `nstseg evaluate` and `tune-postprocess` (issue 26; cascade paper 001): each
case's organ label map is found beside it, the case is predicted inside the organs only, and the
lesions whose centre lies in the searched zone give the in-organ sensitivity and false positives
per scan; lesions whose centre lies outside the zone are left out of those figures and counted
apart."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_nstseg.training.targets import target_lesion

MASKS_HELP = (
    "organ mode: where each case's organ label map is: a file name inside each case folder "
    "(organs.nii.gz: CASE/organs.nii.gz), a folder of <case>.nii.gz files (for an MSD set, "
    "organsTr beside labelsTr; relative to --data), or a pattern with {case}; use with --organs"
)
SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")
FROM_WEIGHTS = "weights"


@dataclass(frozen=True)
class OrganEval:
    """Organ mode for scoring: ``masks`` says where each case's label map is
    (:func:`organ_mask_path`), ``labels`` the organ ids searched, ``margin_mm`` the zone kept
    around them; ``centre_mm`` the centre rule (``OrganSearch.centre_mm``; None: none), by
    default (``FROM_WEIGHTS``) the one the weights store."""

    masks: str
    labels: tuple[int, ...]
    margin_mm: float = 10.0
    centre_mm: float | None | str = "weights"


def add_organ_eval_args(p: argparse.ArgumentParser) -> None:
    from napari_nstseg.inference.cli_organs import add_organ_args

    add_organ_args(p, masks_help=MASKS_HELP)


def organ_eval_from_args(args: argparse.Namespace) -> OrganEval | None:
    """The organ mode the command line asks for (None: whole scans), checked before any work."""
    from napari_nstseg.inference.cli_organs import centre_rule, organ_labels

    labels = organ_labels(args.organ_masks, args.organs, args.organ_margin_mm, "--organ-masks")
    if labels is None:
        return None
    given = getattr(args, "organ_centre_mm", None)
    centre = FROM_WEIGHTS if given is None else centre_rule(given, None)
    return OrganEval(args.organ_masks, labels, args.organ_margin_mm, centre)


def organ_mask_path(spec: str, case, data_folder: str | Path) -> Path:
    """Case ``case``'s organ label map by ``spec``: a pattern with ``{case}``, a folder (as
    given, else under ``data_folder``) of ``<case>.nii.gz`` files, or a file name in the case's
    own folder."""
    if "{case}" in spec:
        path = Path(spec.format(case=case.case_id))
    else:
        given = Path(spec).expanduser()
        folder = given if given.is_absolute() else Path(data_folder) / given
        if not folder.is_dir() and given.is_dir():
            folder = given
        if folder.is_dir():
            found = [folder / f"{case.case_id}{s}" for s in SUFFIXES]
            path = next((p for p in found if p.is_file()), found[0])
        else:
            path = Path(case.image).parent / spec
    if not path.is_file():
        raise ValueError(f"{path}: no organ mask for case {case.case_id} (--organ-masks {spec})")
    return path


class OrganScoring:
    """Predicts cases inside their organs and tallies the in-organ figures."""

    def __init__(self, cfg: OrganEval, data_folder: str | Path, meta: dict[str, Any] | None):
        from napari_nstseg.inference.organs import OrganSearch

        self.cfg = cfg
        self.data_folder = data_folder
        self.search = OrganSearch.for_weights(cfg.labels, cfg.margin_mm, meta)
        if cfg.centre_mm != FROM_WEIGHTS:
            self.search = replace(self.search, centre_mm=cfg.centre_mm)
        self._organ: tuple[str, np.ndarray, tuple[float, ...]] | None = None
        self.rows: list[dict[str, Any]] = []
        self.present: dict[str, tuple[int, ...]] = {}
        self.without_organs: list[str] = []
        self.excluded_cases: list[str] = []

    def check(self, cases) -> None:
        """Every case has an organ label map where --organ-masks says, and some case holds a
        searched organ (before any model run, so a missing one costs seconds, not the cases
        before it). Each case is searched in the organs it holds: a z-block of a scan, or a
        scan without organ labels (make-lesions writes an empty map), holds only some."""
        from napari_nstseg.inference.organs import check_label_map
        from napari_nstseg.io import read_mask

        first = None
        for case in cases:
            path = organ_mask_path(self.cfg.masks, case, self.data_folder)
            values = set(np.unique(read_mask(path)).tolist())
            self.present[case.case_id] = tuple(v for v in self.search.labels if v in values)
            if first is None:
                first = (path, read_mask(path))
        if cases and not any(self.present.values()):
            path, data = first
            check_label_map(data, data.shape, self.search.labels, str(path))

    def predict_case(self, engine, case):
        """(HU, label map, spacing, Prediction, zone) of one case in organ mode, searched in the
        organs it holds; None for a case that holds none (listed in ``scans_without_organs``,
        left out of every figure). Its organ map must lie on its CT's grid (one line naming
        the file)."""
        from napari_nstseg.inference.cli_organs import read_organ_mask
        from napari_nstseg.inference.organs import clip_to_zone, predict_in_organs, search_zone
        from napari_nstseg.io import read_ct, read_mask

        wanted = self.present.get(case.case_id, self.search.labels)
        if not wanted:
            self.without_organs.append(case.case_id)
            return None
        search = replace(self.search, labels=wanted)
        ct = read_ct(case.image)
        labels = read_mask(case.label, like=ct.geometry)
        path = organ_mask_path(self.cfg.masks, case, self.data_folder)
        organs = read_organ_mask(path, ct.geometry, search.labels)
        self._organ = (case.case_id, np.isin(organs, search.labels), tuple(ct.spacing))
        pred = predict_in_organs(engine, ct.hu, ct.spacing, organs, search)
        zone = search_zone(organs, ct.spacing, search)
        excluded = self._excluded(case, ct.geometry)
        if excluded is not None:
            # A region never tumour-free (make-lesions --exclude: a real, unlabelled tumour) is
            # not searched: a detection there is neither a hit nor a false positive.
            zone &= ~excluded
            clip_to_zone(pred, zone)
            pp = engine.organ_postprocess
            pred.finish_mask(pp.threshold, pp.min_lesion_mm, min_depth_mm=pp.min_depth_mm)
        return ct.hu, labels, ct.spacing, pred, zone

    def centre_zones(
        self, case, centres_mm: Sequence[float | None]
    ) -> list[tuple[float | None, np.ndarray | None]]:
        """(rule, zone) for each centre rule of a sweep, on the organs ``predict_case`` just
        searched in ``case``: the organs grown by each distance (at most the margin); None
        (no rule) has no zone."""
        from napari_nstseg.inference.organs import grown_organs

        if self._organ is None or self._organ[0] != case.case_id:
            raise ValueError(f"case {case.case_id} was not the last one predicted")
        _, organ, spacing = self._organ
        margin = self.search.margin_mm
        return [
            (c, None if c is None else grown_organs(organ, spacing, min(c, margin)))
            for c in centres_mm
        ]

    def _excluded(self, case, geometry) -> np.ndarray | None:
        """The case's excluded region (make-lesions' excludeTr beside its image), if any."""
        from napari_nstseg.io import read_mask
        from napari_nstseg.training.lesions.dataset import EXCLUDE_DIR
        from napari_nstseg.training.organ_crops import side_map_path

        path = side_map_path(case, EXCLUDE_DIR)
        if not path.is_file():
            return None
        self.excluded_cases.append(case.case_id)
        return read_mask(path, like=geometry) > 0

    def add(self, case_id: str, det, zone: np.ndarray, table_rows=None) -> None:
        """One scored scan: ``det`` its DetectionResult in organ mode, ``table_rows`` its
        lesions.csv rows matched to detections (for the target lesions), if any."""
        inside = in_zone([les["centroid_zyx"] for les in det.lesions], zone)
        row = {
            "case": case_id,
            "lesions": int(sum(inside)),
            "detected": sum(
                1 for les, i in zip(det.lesions, inside, strict=True) if i and les["detected"]
            ),
            "outside_zone": int(len(inside) - sum(inside)),
            "false_positives": int(det.false_positives),
        }
        if table_rows is not None:
            ok = in_zone([r["centre_zyx"] for r in table_rows], zone)
            target = [r for r, i in zip(table_rows, ok, strict=True) if i and target_lesion(r)]
            row["target_lesions"] = len(target)
            row["target_detected"] = sum(1 for r in target if r["detected"])
        self.rows.append(row)

    def results(self) -> dict[str, Any]:
        rows = self.rows
        out = {
            "labels": list(self.search.labels),
            "names": self.search.names(),
            "margin_mm": self.search.margin_mm,
            "centre_mm": self.search.centre_mm,
            "zoom_limits": [self.search.min_zoom, self.search.max_zoom],
            "scans": len(rows),
            "lesions": sum(r["lesions"] for r in rows),
            "detected": sum(r["detected"] for r in rows),
            "lesions_outside_zone": sum(r["outside_zone"] for r in rows),
            "fp_per_scan": float(np.mean([r["false_positives"] for r in rows])) if rows else None,
            "scans_without_organs": list(self.without_organs),
            "scans_with_excluded_region": list(self.excluded_cases),
            "by_case": rows,
            "note": "in-organ figures: lesions whose centre lies in the organs grown by "
            "margin_mm; lesions outside are left out of them and counted in "
            "lesions_outside_zone (the whole-scan sections count them as missed); a case's "
            "excluded region (excludeTr) is not searched; with centre_mm, the mask keeps only "
            "lesions centred within centre_mm of the organs",
        }
        out["sensitivity"] = _ratio(out["detected"], out["lesions"])
        if any("target_lesions" in r for r in rows):
            n = sum(r.get("target_lesions", 0) for r in rows)
            hit = sum(r.get("target_detected", 0) for r in rows)
            out["target"] = {"lesions": n, "detected": hit, "sensitivity": _ratio(hit, n)}
        return out


def organ_rows(result: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The in-organ figures as rows of evaluation.csv (section "inside organs")."""
    if not result:
        return []
    rows = [
        {
            "section": "inside organs",
            "group": "all",
            "n": result["lesions"],
            "sensitivity": result["sensitivity"],
            "fp_per_scan": result["fp_per_scan"],
        }
    ]
    if "target" in result:
        t = result["target"]
        rows.append(
            {"section": "inside organs", "group": "target", "n": t["lesions"],
             "sensitivity": t["sensitivity"]}
        )  # fmt: skip
    rows.append(
        {"section": "inside organs", "group": "outside zone", "n": result["lesions_outside_zone"]}
    )
    return rows


def in_zone(centres_zyx: Sequence[Sequence[float]], zone: np.ndarray) -> list[bool]:
    """Whether each (z, y, x) voxel-coordinate centre lies in ``zone`` (nearest voxel)."""
    top = np.asarray(zone.shape) - 1
    out = []
    for c in centres_zyx:
        idx = np.clip(np.rint(np.asarray(c, dtype=float)).astype(int), 0, top)
        out.append(bool(zone[tuple(idx)]))
    return out


def format_organs(result: dict[str, Any]) -> list[str]:
    """The in-organ figures as text lines (what evaluate and tune-postprocess print)."""
    names = ", ".join(f"{v} ({n})" for v, n in zip(result["labels"], result["names"], strict=True))
    line = (
        f"inside organs {names} + {result['margin_mm']:g} mm{_centre(result)}: sensitivity "
        f"{_pct(result['sensitivity'])} ({result['detected']}/{result['lesions']})"
    )
    if "target" in result:
        t = result["target"]
        line += f", >=10 mm and >=20 HU {_pct(t['sensitivity'])} ({t['detected']}/{t['lesions']})"
    if result.get("fp_per_scan") is not None:
        line += f", {result['fp_per_scan']:.2f} false positives per scan"
    return [line, f"  lesions outside the searched zone (not in these figures): "
                  f"{result['lesions_outside_zone']}"]  # fmt: skip


def _centre(result: dict[str, Any]) -> str:
    c = result.get("centre_mm")
    return "" if c is None else f" (lesions centred within {c:g} mm)"


def _ratio(a: int, b: int) -> float:
    return a / b if b else float("nan")


def _pct(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"
