"""Names of TotalSegmentator's "total" class ids, so organs can be chosen by name.

The ids are those of TotalSegmentator's own output (v2 "total" task) as shipped with its test
reference files (example_seg_labels.json); a multi-label file from TotalSegmentator uses them.
"""

from __future__ import annotations

TOTALSEGMENTATOR_TOTAL: dict[int, str] = {
    1: "spleen",
    2: "kidney_right",
    3: "kidney_left",
    4: "gallbladder",
    5: "liver",
    6: "stomach",
    7: "pancreas",
    8: "adrenal_gland_right",
    9: "adrenal_gland_left",
    10: "lung_upper_lobe_left",
    11: "lung_lower_lobe_left",
    13: "lung_middle_lobe_right",
    14: "lung_lower_lobe_right",
    18: "small_bowel",
    19: "duodenum",
    20: "colon",
}


def parse_organs(text: str | list[str], names: dict[int, str] | None = None) -> tuple[int, ...]:
    """Label ids from "5,7", "liver,pancreas" or a list of either (ids and names mixed)."""
    names = TOTALSEGMENTATOR_TOTAL if names is None else names
    by_name = {v.lower(): k for k, v in names.items()}
    items = text.split(",") if isinstance(text, str) else [str(t) for t in text]
    ids = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if item.isdigit():
            ids.append(int(item))
        elif item.lower() in by_name:
            ids.append(by_name[item.lower()])
        else:
            known = ", ".join(sorted(by_name))
            raise ValueError(f"unknown organ {item!r}: give label ids or one of {known}")
    if not ids or min(ids) < 1:
        raise ValueError(f"give at least one organ label id above 0, got {text!r}")
    return tuple(dict.fromkeys(ids))
