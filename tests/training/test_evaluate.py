"""Lesion groups of `nstseg evaluate` read from a make-lesions lesions.csv."""

import csv

import numpy as np
import pytest

from napari_nstseg.training.evaluate import (
    EvalConfig,
    _lesion_groups,
    read_lesion_table,
)


def _table(path, organs, contrasts=None, diameters=None, surround=None):
    contrasts = contrasts or [-30] * len(organs)
    diameters = diameters or [12] * len(organs)
    columns = ["case", "lesion_id", "organ", "centre_z", "centre_y", "centre_x",
               "diameter_axial_max_mm", "contrast_measured_hu"]  # fmt: skip
    if surround is not None:
        columns.append("surround_soft_fraction")
    with open(path / "lesions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for i, organ in enumerate(organs):
            row = {"case": "c0", "lesion_id": i + 1, "organ": organ, "centre_z": i,
                   "centre_y": 5, "centre_x": 5, "diameter_axial_max_mm": diameters[i],
                   "contrast_measured_hu": contrasts[i]}  # fmt: skip
            if surround is not None:
                row["surround_soft_fraction"] = surround[i]
            writer.writerow(row)


def test_sensitivity_per_organ_the_lesion_was_placed_in(tmp_path):
    _table(tmp_path, ["kidney_left", "kidney_left", "soft tissue", "liver"])
    hits = (True, False, True, False)
    table = read_lesion_table(tmp_path)["c0"]
    rows = [{**les, "matched": True, "detected": h} for les, h in zip(table, hits, strict=True)]
    groups = _lesion_groups(rows, EvalConfig())
    assert list(groups["by_organ"]) == ["kidney_left", "liver", "soft tissue"]
    assert groups["by_organ"]["kidney_left"] == {"lesions": 2, "detected": 1, "sensitivity": 0.5}
    assert groups["by_organ"]["soft tissue"]["sensitivity"] == pytest.approx(1.0)


def test_a_table_without_organs_has_no_organ_groups(tmp_path):
    _table(tmp_path, ["", ""])
    rows = [{**les, "matched": True, "detected": True} for les in read_lesion_table(tmp_path)["c0"]]
    assert all(les["organ"] is None for les in rows)
    assert "by_organ" not in _lesion_groups(rows, EvalConfig())


def test_sensitivity_for_dark_and_bright_lesions_apart(tmp_path):
    # Magnitude bins would put -30 and +30 HU together; a model may find only the dark ones.
    _table(tmp_path, [""] * 4, contrasts=[-30, 30, 30, -15], diameters=[12, 12, 5, 12])
    hits = (True, False, True, False)
    table = read_lesion_table(tmp_path)["c0"]
    rows = [{**les, "matched": True, "detected": h} for les, h in zip(table, hits, strict=True)]
    groups = _lesion_groups(rows, EvalConfig())
    assert groups["by_polarity"]["hypodense"] == {"lesions": 2, "detected": 1, "sensitivity": 0.5}
    assert groups["by_polarity"]["hyperdense"] == {"lesions": 2, "detected": 1, "sensitivity": 0.5}
    # Among lesions >= 10 mm and >= 20 HU: the -30 HU one found, the +30 HU one missed.
    target = groups["target_by_polarity"]
    assert target["hypodense"]["sensitivity"] == 1.0 and target["hyperdense"]["sensitivity"] == 0.0


def test_sensitivity_for_lesions_beside_fat_apart_where_recorded(tmp_path):
    # make-lesions records the soft share of the ring around each lesion; a dark lesion against
    # fat is hard to see whatever its contrast to the soft tissue beside it.
    _table(tmp_path, [""] * 5, diameters=[12, 12, 12, 5, 12], surround=[1.0, 0.8, 0.6, 0.5, ""])
    hits = (True, True, False, True, True)
    table = read_lesion_table(tmp_path)["c0"]
    assert [les["surround_soft"] for les in table] == [1.0, 0.8, 0.6, 0.5, None]
    rows = [{**les, "matched": True, "detected": h} for les, h in zip(table, hits, strict=True)]
    groups = _lesion_groups(rows, EvalConfig())
    assert list(groups["by_surroundings"]) == ["ring >=80% soft tissue", "ring <80% soft tissue"]
    soft, mixed = groups["by_surroundings"].values()
    assert soft == {"lesions": 2, "detected": 2, "sensitivity": 1.0}
    assert mixed == {"lesions": 2, "detected": 1, "sensitivity": 0.5}  # the unrecorded one: out
    target = list(groups["target_by_surroundings"].values())
    assert [t["lesions"] for t in target] == [2, 1] and target[1]["sensitivity"] == 0.0
    # the edge is a setting
    stricter = _lesion_groups(rows, EvalConfig(surround_soft=0.95))["by_surroundings"]
    assert [g["lesions"] for g in stricter.values()] == [1, 3]


def test_a_table_without_surroundings_has_no_such_groups(tmp_path):
    _table(tmp_path, ["", ""])
    rows = [{**les, "matched": True, "detected": True} for les in read_lesion_table(tmp_path)["c0"]]
    assert "by_surroundings" not in _lesion_groups(rows, EvalConfig())


def test_a_corrections_case_is_scored_on_its_labelled_slices_only():
    """A store case labels slices 2-3 only: the model's lesion on unlabelled slice 0 is
    neither a hit nor a false positive there, while on a fully labelled scan it is one."""
    from napari_nstseg.training.evaluate import score_case

    gt = np.zeros((5, 16, 16), bool)
    gt[2:4, 4:8, 4:8] = True
    mask = gt.copy()
    mask[0, 10:14, 10:14] = True  # a lesion on a slice nobody labelled
    prob = mask.astype(np.float32)
    cfg = EvalConfig(device="cpu")
    whole, _ = score_case(prob, mask, gt, (2.0, 1.0, 1.0), cfg)
    labelled, _ = score_case(prob, mask, gt, (2.0, 1.0, 1.0), cfg, labelled=(2, 3))
    assert whole["false_positives"] == 1 and whole["precision"] < 1
    assert labelled["false_positives"] == 0
    assert labelled["dice"] == pytest.approx(1.0) and labelled["mae"] == pytest.approx(0.0)
