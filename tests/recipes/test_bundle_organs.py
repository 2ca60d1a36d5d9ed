"""The organ-mode bundle's card rows come from the evaluations as they are: inside the organs
and over the whole scan side by side, and by source region."""

from napari_nstseg.recipes import bundle_organs

POINT = {"threshold": 0.6, "min_lesion_mm": 5.0, "min_depth_mm": 4.0}


def inside(by_case):
    totals = {k: sum(c[k] for c in by_case) for k in ("lesions", "detected")}
    fp = sum(c["false_positives"] for c in by_case) / len(by_case)
    target = {"lesions": sum(c["target_lesions"] for c in by_case),
              "detected": sum(c["target_detected"] for c in by_case)}  # fmt: skip
    return {"organs": {**totals, "fp_per_scan": fp, "target": target, "by_case": by_case},
            "postprocess": POINT}  # fmt: skip


def case(name, lesions, detected, fp, target=0, target_found=0):
    return {"case": name, "lesions": lesions, "detected": detected, "false_positives": fp,
            "target_lesions": target, "target_detected": target_found}  # fmt: skip


CASES = [case("liver_z000-030_c00", 2, 1, 3, 1, 1), case("liver_z000-030_c01", 1, 1, 1),
         case("ct_z000-017_c00", 3, 0, 0, 2, 0)]  # fmt: skip
WHOLE = {
    "detection": {"lesions": 10, "detected": 4, "fp_per_scan": 7.5},
    "lesions_by_table": {">=10 mm and >=20 HU": {"lesions": 5, "detected": 2}},
    "postprocess": {"threshold": 0.5, "min_lesion_mm": 0.0, "min_depth_mm": 7.0},
}


def test_the_row_puts_organ_mode_beside_the_whole_scan():
    row = bundle_organs.organ_row("CDI", inside(CASES), WHOLE)
    assert row == (
        "| CDI | 0.33 (2/6) | 0.33 (1/3) | 1.33 | 0.40 (4/10) | 0.40 (2/5) | 7.50 | "
        "0.6 / 5 / 4; 0.5 / 0 / 7 |"
    )
    assert row.count("|") == bundle_organs.ORGAN_HEADER.splitlines()[0].count("|")


def test_the_row_names_the_centre_rule_the_organ_point_was_chosen_with(tmp_path):
    measured = inside(CASES)
    measured["organs"]["centre_mm"] = 2.0
    row = bundle_organs.organ_row("CDI", measured, WHOLE)
    assert row.endswith("| 0.6 / 5 / 4, centre 2 mm; 0.5 / 0 / 7 |")
    tune = tmp_path / "tune.json"
    tune.write_text('{"postprocess": {}, "organ_search": {"centre_mm": 2.0}}')
    assert bundle_organs.tuned_centre(tune) == 2.0
    tune.write_text('{"postprocess": {}}')  # a whole-scan tune: no rule
    assert bundle_organs.tuned_centre(tune) is None


def test_regions_add_up_their_copies():
    patients = {"ct_z000-017": "HCC_048", "liver_z000-030": "example_ct_sm"}
    rows = bundle_organs.region_rows("CDI", inside(CASES), patients)
    assert rows == [
        "| CDI | HCC_048 | ct_z000-017 | 1 | 0.00 (0/3) | 0.00 (0/2) | 0.00 |",
        "| CDI | example_ct_sm | liver_z000-030 | 2 | 0.67 (2/3) | 1.00 (1/1) | 2.00 |",
    ]
    assert all(r.count("|") == bundle_organs.REGION_HEADER.count("|") // 2 for r in rows)
    no_target = [case("a_c00", 0, 0, 2)]
    assert bundle_organs.region_rows("U", inside(no_target)) == [
        "| U | - | a | 1 | - (0/0) | - (0/0) | 2.00 |"
    ]


def test_the_card_names_every_patient_of_the_data_set_and_credits_each(tmp_path):
    """Patients come from make-lesions' dataset.json, training-only scans included: a case
    folder's ct.nii.gz is named by its folder; two scans from one collection share a credit."""
    import json

    regions = [
        {"source": "/d/tcia/HCC_048/ct.nii.gz", "split": "test", "z_range_display": [0, 19]},
        {"source": "/d/tcia/HCC_048/ct.nii.gz", "split": "train", "z_range_display": [50, 89]},
        {"source": "/d/ts/ct_cropped.nii.gz", "split": "train", "z_range_display": [0, 19]},
        {"source": "/d/ts/example_ct_sm.nii.gz", "split": "test", "z_range_display": [0, 30]},
    ]
    cases = {"ct-b_z000-019_c00": {"source": "/d/tcia/HCC_048/ct.nii.gz"},
             "example-ct-sm_z000-030_c00": {"source": "/d/ts/example_ct_sm.nii.gz"}}  # fmt: skip
    (tmp_path / "dataset.json").write_text(json.dumps({"cases": cases, "regions": regions}))
    patients = bundle_organs.sources(tmp_path)
    assert patients["ct-b_z000-019"] == "HCC_048"
    assert patients["example-ct-sm_z000-030"] == "example_ct_sm"
    assert set(patients.values()) == {"HCC_048", "ct_cropped", "example_ct_sm"}
    text = bundle_organs.credit(patients.values())
    assert text.count("TotalSegmentator") == 1 and "HCC-TACE-Seg" in text
    assert "of 3 scans" in bundle_organs.description(len(set(patients.values())))


def test_the_demo_line_says_found_and_how_many_others():
    check = {"found": True, "dice": 0.71, "false_positive_components": 2, "seconds_cpu": 2.4}
    assert bundle_organs.demo_line(check) == (
        "the sample's lesion found (Dice 0.71) with 2 other component(s), 2.4 s on the CPU"
    )
