"""Settings of lesion insertion (LesionConfig: sizes, contrasts, placement rules, target organs)
and the record of one inserted lesion (LesionRecord, a row of lesions.csv)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np

# TotalSegmentator "total" class ids of organs where small tumors are sought (bowel wall via the
# bowel classes: their air and contents fail the soft-tissue test, the wall passes).
TOTALSEG_TARGET_ORGANS: dict[int, str] = {
    1: "spleen",
    2: "kidney_right",
    3: "kidney_left",
    5: "liver",
    6: "stomach",
    7: "pancreas",
    18: "small_bowel",
    19: "duodenum",
    20: "colon",
}
SOFT_TISSUE = "soft tissue"
CSV_COLUMNS = (
    "case",
    "split",
    "lesion_id",
    "scan",
    "organ",
    "centre_z",
    "centre_y",
    "centre_x",
    "centre_z_mm",
    "centre_y_mm",
    "centre_x_mm",
    "centre_lps_x_mm",
    "centre_lps_y_mm",
    "centre_lps_z_mm",
    "diameter_requested_mm",
    "diameter_equivalent_mm",
    "diameter_axial_max_mm",
    "contrast_requested_hu",
    "contrast_measured_hu",
    "offset_peak_hu",
    "volume_ml",
    "n_voxels",
    "surround_soft_fraction",
    "surround_sd_hu",
)


@dataclass
class LesionConfig:
    """How many lesions, how large, how (low) contrasted, how irregular, and where."""

    diameter_mm: tuple[float, float] = (3.0, 30.0)  # volume-equivalent, drawn log-uniform
    contrast_hu: tuple[float, float] = (-60.0, 40.0)  # against the surrounding tissue
    min_abs_contrast_hu: float = 10.0  # below this a lesion is invisible even to a reader
    hypodense_fraction: float = 0.8  # most small tumors (pancreas, liver metastases) are dark
    irregularity: float = 0.15  # std of the relative radial perturbation
    elongation: float = 0.15  # std of log semi-axis ratios
    edge_softness_mm: float | None = None  # 10-90 % edge width; None: the in-plane spacing
    target_organs: dict[int, str] = field(default_factory=lambda: dict(TOTALSEG_TARGET_ORGANS))
    organ_fraction: float = 0.7  # share placed in target organs when organ labels are given
    min_in_organ: float = 0.6  # share of an organ lesion's support inside its organ
    lesions_per_scan: tuple[int, int] = (1, 3)  # inclusive
    # Support median: -20 rather than 0 admits the fatty, partial-volumed pancreas of 3 mm scans
    # (median -7 HU in example_seg) while fat (-100) and air stay out.
    median_hu: tuple[float, float] = (-20.0, 150.0)
    soft_tissue_hu: tuple[float, float] = (-60.0, 250.0)
    min_soft_fraction: float = 0.85
    # No voxel of a lesion may be air or bone (or an opacified artery), whatever the fractions.
    never_hu: tuple[float, float] = (-300.0, 400.0)
    # Bone and opacified blood (and what they enclose: marrow, a vessel's partial-volumed rim)
    # are no place for a soft-tissue tumour, and a W400/L40 window saturates there, so a lesion
    # would be invisible: voxels above dense_hu, enclosed holes up to dense_hole_mm2 filled per
    # slice, grown by dense_margin_mm, are excluded.
    dense_hu: float | None = 250.0
    dense_hole_mm2: float = 2500.0
    dense_margin_mm: float = 3.0
    body_hu: float = -500.0
    shell_mm: float = 5.0  # thickness of the ring where the surrounding tissue is measured
    # Largest |mean HU under the lesion - mean HU of its shell| before insertion.
    max_background_step_hu: float = 15.0
    # Least share of the ring around a lesion (every voxel of its measuring zone) that is soft
    # tissue; the rest is fat, gas, bone or opacified vessel. 0 lets lesions abut anything.
    min_surround_soft: float = 0.0
    max_attempts: int = 400
    seed: int | None = 0

    def __post_init__(self) -> None:
        lo, hi = self.diameter_mm
        if not 0 < lo <= hi:
            raise ValueError(f"diameter_mm must be 0 < low <= high, got {self.diameter_mm}")
        clo, chi = self.contrast_hu
        if clo > chi:
            raise ValueError(f"contrast_hu must be low <= high, got {self.contrast_hu}")
        if self.min_abs_contrast_hu < 0:
            raise ValueError(
                f"min_abs_contrast_hu is a contrast in HU >= 0, got {self.min_abs_contrast_hu}"
            )
        if self.hypodense_fraction > 0 and clo > -self.min_abs_contrast_hu:
            raise ValueError(
                f"contrast_hu {self.contrast_hu} leaves no room for hypodense lesions of at least "
                f"{self.min_abs_contrast_hu} HU; lower its low end or set hypodense_fraction=0"
            )
        if self.hypodense_fraction < 1 and chi < self.min_abs_contrast_hu:
            raise ValueError(
                f"contrast_hu {self.contrast_hu} leaves no room for hyperdense lesions of at "
                f"least {self.min_abs_contrast_hu} HU; raise its high end or set "
                "hypodense_fraction=1"
            )
        for name in (
            "hypodense_fraction",
            "organ_fraction",
            "min_in_organ",
            "min_soft_fraction",
            "min_surround_soft",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        nlo, nhi = self.lesions_per_scan
        if not 0 < nlo <= nhi:
            raise ValueError(f"lesions_per_scan must be 0 < low <= high, got {(nlo, nhi)}")
        if self.edge_softness_mm is not None and self.edge_softness_mm < 0:
            raise ValueError(f"edge_softness_mm must be >= 0, got {self.edge_softness_mm}")


def lesion_config_from_dict(d: dict) -> LesionConfig:
    """The LesionConfig a dataset.json records (``lesion_config``), tuples and organ ids
    restored; keys it does not know are errors, missing ones take their defaults."""
    names = {f.name for f in fields(LesionConfig)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown lesion settings: {', '.join(unknown)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    if "target_organs" in kwargs:
        kwargs["target_organs"] = {int(k): str(v) for k, v in kwargs["target_organs"].items()}
    return LesionConfig(**kwargs)


@dataclass
class LesionRecord:
    """One inserted lesion: where, how large, how contrasted (requested and measured)."""

    lesion_id: int  # its value in the instance mask
    scan: str
    organ: str  # target organ name or "soft tissue"
    centre_voxel_zyx: tuple[float, float, float]  # centroid of the support, voxel index
    centre_mm_zyx: tuple[float, float, float]  # the same times the spacing (array frame)
    diameter_requested_mm: float
    diameter_equivalent_mm: float  # of a sphere with the support's volume
    diameter_axial_max_mm: float  # longest in-plane extent over all slices, edge to edge
    contrast_requested_hu: float
    contrast_measured_hu: float  # mean over support minus mean over the surrounding shell
    offset_peak_hu: float  # the offset where the profile is 1
    volume_ml: float
    n_voxels: int
    # Of the ring around the lesion before insertion (LesionSites.surroundings).
    surround_soft_fraction: float = float("nan")
    surround_sd_hu: float = float("nan")

    def to_row(self) -> dict[str, object]:
        """Flat dict for lesions.csv."""
        row = {k: v for k, v in asdict(self).items() if not isinstance(v, tuple)}
        for axis, c, mm in zip("zyx", self.centre_voxel_zyx, self.centre_mm_zyx, strict=True):
            row[f"centre_{axis}"] = round(c, 3)
            row[f"centre_{axis}_mm"] = round(mm, 3)
        return row


SPLITS = ("train", "val", "test")


@dataclass
class SplitConfig:
    """How cases are divided into train / val / test (see the module docstring)."""

    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    by: str = "zblock"  # "zblock": z-blocks of each scan; "scan": whole scans
    guard_mm: float = 15.0  # discarded slices between blocks of one scan
    min_block_mm: float = 30.0  # thinnest block worth keeping (holds a 15 mm lesion + shell)
    # Scan path -> the splits of its z-blocks from display slice 0 up, instead of the order the
    # seed draws (the other scans' blocks stay as drawn): the blocks holding a scan's organs
    # can go to training.
    block_orders: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.by not in ("zblock", "scan"):
            raise ValueError(f"split 'by' must be 'zblock' or 'scan', got {self.by!r}")
        if self.block_orders and self.by != "zblock":
            raise ValueError("a block order needs the split by z-block, not by scan")
        f = np.asarray(self.fractions, dtype=float)
        if f.shape != (3,) or np.any(f < 0) or not np.isclose(f.sum(), 1.0):
            raise ValueError(
                f"split fractions (train, val, test) must be three non-negative numbers summing "
                f"to 1, got {self.fractions}"
            )
        active = sorted(s for s, x in zip(SPLITS, self.fractions, strict=True) if x > 0)
        for scan, order in self.block_orders.items():
            if sorted(order) != active:
                raise ValueError(
                    f"the block order of {scan} must name each split with a share once "
                    f"({', '.join(active)}), got {','.join(order)}"
                )
