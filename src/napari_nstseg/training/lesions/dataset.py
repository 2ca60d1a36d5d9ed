"""Synthetic small, low-contrast tumors inserted into real CT, and the lesion dataset writer.

CDI-NSTSEG (seed 000) targets non-salient small tumors; we have no labelled tumor CT, so lesions
are inserted into real scans. Each lesion is a randomly rotated, slightly elongated ellipsoid
whose radius is perturbed by a low-frequency function of direction (irregular, still star
shaped), scaled so that its volume-equivalent diameter is the requested one in millimetres. Its
profile is made on the scan's native (possibly anisotropic) grid: the hard shape is sampled on a
sub-voxel grid (<= 0.5 mm), blurred by a Gaussian whose 10-90 % edge width is
``edge_softness_mm`` (default: the in-plane spacing, like the scanner's own blur) and
box-averaged back to the voxels, which gives the partial-volume edge a real scan shows. The
contrast is ADDED to the existing voxels as an offset times that profile, so the scan's own noise
and texture stay inside the lesion; the offset is scaled so that the mean over the labelled
support (profile >= 0.5) differs from the unchanged surroundings by the requested contrast, the
difference a reader measures with an ROI on the label.

Placement: only in soft tissue inside the body (support median HU within ``median_hu``; at
least ``min_soft_fraction`` of its voxels in ``soft_tissue_hu`` and none outside ``never_hu``,
so no air or bone and little fat), away from bone and opacified vessels (``dense_mask``: marrow
and the saturated window there would hide a lesion), wholly inside the volume, over tissue whose
mean matches its surrounding shell within ``max_background_step_hu`` (else "contrast to the
local tissue" is undefined), with at least ``min_surround_soft`` of the ring around it soft
tissue (default 0: lesions may abut fat, gas or bone, as tumours do), and, where organ labels
exist, a share ``organ_fraction`` inside one of the target organs (chosen uniformly among those
present, so the small pancreas gets as many as the liver). Every lesion records its
surroundings (``surround_soft_fraction``, ``surround_sd_hu``): a dark lesion against a border
with fat is far harder to see than its contrast to the soft tissue beside it says, so results
can be split by it.
Each lesion keeps a reserved zone (its support plus the measuring shell), and zones never
overlap, so lesions neither touch nor disturb each other's contrast measurement.

Dataset split (``make_lesion_dataset``). The unit of splitting is a *source region*: a block of
consecutive axial slices of one source scan. Every augmented copy of a region (new lesions, new
seed) stays in the region's split, so no anatomy is shared between train, val and test. With
only a handful of real scans (three TotalSegmentator files) splitting by scan would leave one
scan per split, so by default each scan long enough is cut along z into one block per split
(block order drawn per scan with the seed, sizes from the split fractions), with ``guard_mm`` of
discarded slices between blocks so neighbouring slices (and the 2.5-D context a model may use)
never cross a split boundary. A scan too short to hold a block of ``min_block_mm`` per split
goes whole to the split furthest below its share of slices (largest scans first, so an empty
test split is filled before train grows). Lesions must fit wholly inside their block, so thin
blocks hold smaller lesions on average; lesions.csv records every size for per-size evaluation.
``by="scan"`` assigns whole scans instead (the right choice once there are many scans). Scans
that repeat another scan's slices (TotalSegmentator's example_ct_sm is slices 82-111 of
example_ct) are refused, because they would leak one region into two splits.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import re
import warnings
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.spatial.distance import cdist
from scipy.spatial.transform import Rotation

from ..io.volume import CTVolume, Geometry

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
# Sub-voxel sampling step for the partial-volume profile, and the cap on sub-samples per axis.
_SUBSAMPLE_MM = 0.5
_MAX_SUBSAMPLES = 6
# 10-90 % width of a Gaussian-blurred step is 2.563 sigma.
_EDGE_WIDTH_PER_SIGMA = 2.563
_FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)
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


# -- lesion shape -------------------------------------------------------------------------------
@dataclass
class _LesionShape:
    """Irregular ellipsoid: radius(u) = R * axes * s(u), s a low-frequency field on the sphere."""

    radius_mm: float
    axes: np.ndarray  # (3,) relative semi-axes, product 1 (volume kept)
    rotation: np.ndarray  # (3, 3) columns are the lesion's principal axes in (z, y, x) mm
    directions: np.ndarray  # (K, 3)
    frequencies: np.ndarray  # (K,)
    phases: np.ndarray  # (K,)
    amplitude: float
    scale: float = 1.0  # divides s so the volume is that of the requested sphere
    max_s: float = 1.0  # bounds of s / scale: every surface point lies between them
    min_s: float = 1.0

    @classmethod
    def random(cls, rng: np.random.Generator, diameter_mm: float, config: LesionConfig):
        k = 6
        log_axes = rng.normal(0.0, config.elongation, 3)
        axes = np.exp(log_axes - log_axes.mean())
        directions = rng.normal(size=(k, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        shape = cls(
            radius_mm=diameter_mm / 2.0,
            axes=axes,
            rotation=Rotation.random(random_state=rng).as_matrix(),
            directions=directions,
            frequencies=rng.integers(1, 3, k).astype(float),
            phases=rng.uniform(0, 2 * np.pi, k),
            # cos of a random phase has variance 1/2: this makes the field's std `irregularity`.
            amplitude=config.irregularity / math.sqrt(k / 2.0),
        )
        s = shape._s(_fibonacci_sphere(2000))
        shape.scale = float(np.mean(s**3) ** (1.0 / 3.0))
        # 1 % margins: the sphere sampling can miss the field's extremes by a little
        shape.max_s = float(s.max() / shape.scale) * 1.01
        shape.min_s = float(s.min() / shape.scale) * 0.99
        return shape

    def _s(self, u: np.ndarray) -> np.ndarray:
        field_ = np.cos(np.pi * self.frequencies * (u @ self.directions.T) + self.phases)
        return np.maximum(1.0 + self.amplitude * field_.sum(axis=-1), 0.4)

    @property
    def extent_mm(self) -> float:
        """Largest distance from the centre to the surface."""
        return self.radius_mm * float(self.axes.max()) * self.max_s

    def inside(self, points_mm: np.ndarray) -> np.ndarray:
        q = (points_mm @ self.rotation) / (self.axes * self.radius_mm)
        rho = np.linalg.norm(q, axis=-1)
        inside = rho <= self.min_s
        # the direction field only matters in the band the surface can reach
        band = (rho > self.min_s) & (rho <= self.max_s)
        qb, rb = q[band], rho[band]
        inside[band] = rb <= self._s(qb / rb[:, None]) / self.scale
        return inside


def _fibonacci_sphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = np.pi * (1 + 5**0.5) * i
    r = np.sqrt(1 - z**2)
    return np.stack([z, r * np.cos(phi), r * np.sin(phi)], axis=1)


def lesion_profile(
    shape: _LesionShape,
    centre_zyx: np.ndarray,
    box_lo: np.ndarray,
    box_shape: tuple[int, int, int],
    spacing_zyx: np.ndarray,
    sigma_mm: float,
) -> np.ndarray:
    """Partial-volume fraction (0..1) of the blurred lesion in each voxel of a box of the grid."""
    n_sub = np.clip(np.ceil(spacing_zyx / _SUBSAMPLE_MM), 1, _MAX_SUBSAMPLES).astype(int)
    coords = []
    for a in range(3):
        idx = box_lo[a] + np.arange(box_shape[a])
        offsets = (np.arange(n_sub[a]) + 0.5) / n_sub[a] - 0.5
        sub = (idx[:, None] + offsets[None, :]).ravel()
        coords.append((sub - centre_zyx[a]) * spacing_zyx[a])
    points = np.stack(np.meshgrid(*coords, indexing="ij"), axis=-1)
    fine = shape.inside(points).astype(np.float32)
    if sigma_mm > 0:
        fine = ndimage.gaussian_filter(fine, sigma_mm / (spacing_zyx / n_sub), mode="constant")
    split = fine.reshape(box_shape[0], n_sub[0], box_shape[1], n_sub[1], box_shape[2], n_sub[2])
    return np.clip(split.mean(axis=(1, 3, 5)), 0.0, 1.0)


# -- measurement --------------------------------------------------------------------------------
def body_mask(hu_zyx: np.ndarray, threshold_hu: float = -500.0) -> np.ndarray:
    """The patient: largest connected region above ``threshold_hu``, holes filled per slice."""
    above = hu_zyx > threshold_hu
    labels, n = ndimage.label(above)
    if n == 0:
        return above
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    body = labels == int(np.argmax(sizes))
    for z in range(body.shape[0]):
        body[z] = ndimage.binary_fill_holes(body[z])
    return body


def dense_mask(
    hu_zyx: np.ndarray,
    spacing_zyx,
    threshold_hu: float = 250.0,
    max_hole_mm2: float = 2500.0,
    margin_mm: float = 3.0,
) -> np.ndarray:
    """Bone and opacified vessels: voxels above ``threshold_hu`` with small enclosed holes filled.

    Holes are filled per axial slice only up to ``max_hole_mm2`` so a vertebral body's marrow
    counts as bone while a ring of ribs or pelvis never swallows the soft tissue it encloses.
    """
    dense = hu_zyx > threshold_hu
    pixel_mm2 = float(spacing_zyx[1]) * float(spacing_zyx[2])
    for z in range(dense.shape[0]):
        holes = ndimage.binary_fill_holes(dense[z]) & ~dense[z]
        if not holes.any():
            continue
        labels, n = ndimage.label(holes)
        areas = np.bincount(labels.ravel(), minlength=n + 1) * pixel_mm2
        small = areas <= max_hole_mm2
        small[0] = False
        dense[z] |= small[labels]
    if margin_mm > 0 and dense.any():
        outside = ndimage.distance_transform_edt(~dense, sampling=spacing_zyx)
        dense = outside <= margin_mm
    return dense


def equivalent_diameter_mm(n_voxels: int, spacing_zyx) -> float:
    volume = n_voxels * float(np.prod(spacing_zyx))
    return float((6.0 * volume / np.pi) ** (1.0 / 3.0))


def axial_max_diameter_mm(mask_zyx: np.ndarray, spacing_zyx) -> float:
    """Longest in-plane extent of a mask over its slices, edge to edge, in mm."""
    sy, sx = float(spacing_zyx[1]), float(spacing_zyx[2])
    best = 0.0
    for z in np.flatnonzero(mask_zyx.any(axis=(1, 2))):
        sl = mask_zyx[z]
        edge = sl & ~ndimage.binary_erosion(sl)
        pts = np.argwhere(edge) * np.array([sy, sx])
        d = cdist(pts, pts)
        i, j = np.unravel_index(int(np.argmax(d)), d.shape)
        delta = pts[i] - pts[j]
        length = float(np.linalg.norm(delta))
        # add the voxel's own width along that direction: centre-to-centre -> edge-to-edge
        unit = delta / length if length > 0 else np.array([0.0, 1.0])
        best = max(best, length + abs(unit[0]) * sy + abs(unit[1]) * sx)
    return best


# -- insertion ----------------------------------------------------------------------------------
@dataclass
class LesionSites:
    """Where lesions may go in one volume: the tissue masks every placement is checked against,
    computed once per volume (``lesion_sites``)."""

    hu: np.ndarray  # (z, y, x) float32 HU, the volume as it was before any lesion
    spacing: np.ndarray  # (3,) mm
    config: LesionConfig
    body: np.ndarray
    soft: np.ndarray  # soft tissue in the body, away from bone and opacified vessels
    organ_labels: np.ndarray | None
    organ_candidates: dict[int, np.ndarray]  # flat voxel indices of soft tissue per organ
    tissue_flat: np.ndarray  # flat voxel indices of soft tissue outside the target organs
    sigma_mm: float  # of the edge blur
    shell_outer_mm: float  # outer radius of the measuring shell beyond the support

    def draw_centre(self, rng: np.random.Generator) -> tuple[np.ndarray, int | None] | None:
        """A candidate voxel (z, y, x) and its target organ id (None: other soft tissue), drawn
        as insert_lesions draws them; None when the drawn kind of tissue has no voxel."""
        organ_id = None
        candidates = self.tissue_flat
        if self.organ_candidates and rng.random() < self.config.organ_fraction:
            ids = sorted(self.organ_candidates)
            organ_id = ids[int(rng.integers(len(ids)))]
            candidates = self.organ_candidates[organ_id]
        if candidates.size == 0:
            return None
        voxel = candidates[rng.integers(candidates.size)]
        return np.array(np.unravel_index(voxel, self.hu.shape)), organ_id

    def box_margin(self, shape: _LesionShape) -> np.ndarray:
        """Half size (z, y, x) in voxels of the box that holds a lesion and its shell."""
        return np.ceil((shape.extent_mm + self.shell_outer_mm) / self.spacing).astype(int) + 1

    def tissue_ok(self, sl: tuple[slice, ...], support: np.ndarray, organ_id: int | None) -> bool:
        """Whether the tissue under a lesion's support in box ``sl`` may hold it: inside the
        body, soft tissue (median, range, share), and mostly inside its organ if it has one."""
        c = self.config
        original = self.hu[sl][support]
        if not self.body[sl][support].all():
            return False
        if not c.median_hu[0] <= float(np.median(original)) <= c.median_hu[1]:
            return False
        if original.min() < c.never_hu[0] or original.max() > c.never_hu[1]:
            return False
        if self.soft[sl][support].mean() < c.min_soft_fraction:
            return False
        return organ_id is None or (self.organ_labels[sl][support] == organ_id).mean() >= (
            c.min_in_organ
        )

    def shell(
        self,
        sl: tuple[slice, ...],
        profile: np.ndarray,
        support: np.ndarray,
        zone: np.ndarray,
        organ_id: int | None,
    ) -> np.ndarray | None:
        """The ring of tissue around a lesion where its contrast is measured, or None where it
        is too small, holds less soft tissue than ``min_surround_soft``, or the tissue under the
        lesion does not match it (then "contrast to the local tissue" is undefined: the lesion
        would straddle liver and vessel, muscle and fat)."""
        ring = _ring(profile, zone)
        if self.soft[sl][ring].mean() < self.config.min_surround_soft:
            return None
        shell = ring & self.soft[sl]
        if organ_id is not None:
            in_organ = shell & (self.organ_labels[sl] == organ_id)
            shell = in_organ if in_organ.sum() >= 10 else shell
        if shell.sum() < 5:
            return None
        step = float(self.hu[sl][support].mean() - self.hu[sl][shell].mean())
        if abs(step) > self.config.max_background_step_hu:
            return None
        return shell

    def surroundings(
        self, sl: tuple[slice, ...], profile: np.ndarray, zone: np.ndarray
    ) -> tuple[float, float]:
        """Share of soft tissue in the ring around a lesion, and the SD of its HU (every
        voxel, before insertion): what a reader sees the lesion against."""
        ring = _ring(profile, zone)
        return float(self.soft[sl][ring].mean()), float(self.hu[sl][ring].std())


def _ring(profile: np.ndarray, zone: np.ndarray) -> np.ndarray:
    """The measuring zone beyond the lesion's edge (where its profile has died out)."""
    return (profile < 0.02) & zone


def lesion_sites(
    hu_zyx: np.ndarray,
    spacing_zyx,
    organ_labels: np.ndarray | None = None,
    config: LesionConfig | None = None,
    scan: str = "",
) -> LesionSites:
    """The tissue masks of a CT volume (z, y, x) in HU where ``config``'s lesions may go."""
    config = config or LesionConfig()
    hu = np.asarray(hu_zyx, dtype=np.float32)
    name = scan or "the volume"
    if hu.ndim != 3:
        raise ValueError(f"{name}: lesions need a 3-D (z, y, x) volume, got {hu.ndim}-D")
    spacing = np.asarray(spacing_zyx, dtype=float)
    if spacing.shape != (3,) or np.any(spacing <= 0):
        raise ValueError(f"{name}: spacing must be three positive mm values, got {spacing_zyx}")
    if organ_labels is not None and tuple(organ_labels.shape) != hu.shape:
        raise ValueError(
            f"{name}: organ labels of shape {tuple(organ_labels.shape)} do not match the scan's "
            f"shape {hu.shape}"
        )
    edge = config.edge_softness_mm
    edge = float(np.mean(spacing[1:])) if edge is None else edge
    sigma_mm = edge / _EDGE_WIDTH_PER_SIGMA
    # The measuring shell starts where the profile has died out and is shell_mm thick.
    shell_outer_mm = 3 * sigma_mm + float(spacing.max()) + config.shell_mm

    body = body_mask(hu, config.body_hu)
    soft = body & (hu >= config.soft_tissue_hu[0]) & (hu <= config.soft_tissue_hu[1])
    if config.dense_hu is not None:
        soft &= ~dense_mask(
            hu, spacing, config.dense_hu, config.dense_hole_mm2, config.dense_margin_mm
        )
    organ_candidates: dict[int, np.ndarray] = {}
    tissue_candidates = soft
    if organ_labels is not None:
        targets = np.isin(organ_labels, list(config.target_organs))
        tissue_candidates = soft & ~targets
        for oid in config.target_organs:
            cand = np.flatnonzero(soft & (organ_labels == oid))
            if cand.size:
                organ_candidates[oid] = cand
    return LesionSites(
        hu, spacing, config, body, soft, organ_labels, organ_candidates,
        np.flatnonzero(tissue_candidates), sigma_mm, shell_outer_mm,
    )  # fmt: skip


def single_component(support: np.ndarray) -> bool:
    """Whether a lesion's support is one 26-connected piece (a perturbed shape can split)."""
    return bool(support.any()) and ndimage.label(support, _FULL_CONNECTIVITY)[1] == 1


def insert_lesions(
    hu_zyx: np.ndarray,
    spacing_zyx,
    organ_labels: np.ndarray | None = None,
    config: LesionConfig | None = None,
    rng: np.random.Generator | None = None,
    scan: str = "",
) -> tuple[np.ndarray, np.ndarray, list[LesionRecord]]:
    """Insert synthetic lesions into a CT volume (z, y, x) in HU.

    Returns the new float32 HU volume, an int16 instance mask (lesion k has value k, the
    support where the profile >= 0.5) and one record per lesion. ``rng`` defaults to one seeded
    with ``config.seed``, so equal inputs give equal outputs.
    """
    config = config or LesionConfig()
    rng = rng if rng is not None else np.random.default_rng(config.seed)
    sites = lesion_sites(hu_zyx, spacing_zyx, organ_labels, config, scan)
    hu, spacing = sites.hu, sites.spacing
    name = scan or "the volume"

    new = hu.copy()
    mask = np.zeros(hu.shape, dtype=np.int16)
    reserved = np.zeros(hu.shape, dtype=bool)
    records: list[LesionRecord] = []
    n_wanted = int(rng.integers(config.lesions_per_scan[0], config.lesions_per_scan[1] + 1))
    for _ in range(config.max_attempts):
        if len(records) == n_wanted:
            break
        drawn = sites.draw_centre(rng)
        if drawn is None:
            continue
        centre, organ_id = drawn
        centre = centre + rng.uniform(-0.5, 0.5, 3)
        lo_d, hi_d = config.diameter_mm
        diameter = float(np.exp(rng.uniform(np.log(lo_d), np.log(hi_d))))
        shape = _LesionShape.random(rng, diameter, config)
        half = sites.box_margin(shape)
        if reserved[tuple(np.round(centre).astype(int))]:
            continue
        box_lo = np.round(centre).astype(int) - half
        box_hi = np.round(centre).astype(int) + half + 1
        if np.any(box_lo < 0) or np.any(box_hi > np.array(hu.shape)):
            continue
        box_shape = tuple(int(v) for v in box_hi - box_lo)
        sl = tuple(slice(int(a), int(b)) for a, b in zip(box_lo, box_hi, strict=True))
        profile = lesion_profile(shape, centre, box_lo, box_shape, spacing, sites.sigma_mm)
        support = profile >= 0.5
        if not single_component(support) or not sites.tissue_ok(sl, support, organ_id):
            continue
        zone = ndimage.distance_transform_edt(~support, sampling=spacing) <= sites.shell_outer_mm
        if (reserved[sl] & zone).any():
            continue
        shell = sites.shell(sl, profile, support, zone, organ_id)
        if shell is None:
            continue

        contrast = _draw_contrast(rng, config)
        amplitude = contrast / float(profile[support].mean())
        new[sl] += (amplitude * profile).astype(np.float32)
        lesion_id = len(records) + 1
        mask[sl][support] = lesion_id
        reserved[sl] |= zone

        measured = float(new[sl][support].mean() - new[sl][shell].mean())
        soft_share, sd_hu = sites.surroundings(sl, profile, zone)
        n_vox = int(support.sum())
        centroid = np.argwhere(support).mean(axis=0) + box_lo
        records.append(
            LesionRecord(
                lesion_id=lesion_id,
                scan=scan,
                organ=config.target_organs[organ_id] if organ_id is not None else SOFT_TISSUE,
                centre_voxel_zyx=tuple(round(float(c), 3) for c in centroid),
                centre_mm_zyx=tuple(round(float(c), 3) for c in centroid * spacing),
                diameter_requested_mm=round(diameter, 3),
                diameter_equivalent_mm=round(equivalent_diameter_mm(n_vox, spacing), 3),
                diameter_axial_max_mm=round(axial_max_diameter_mm(support, spacing), 3),
                contrast_requested_hu=round(contrast, 3),
                contrast_measured_hu=round(measured, 3),
                offset_peak_hu=round(amplitude, 3),
                volume_ml=round(n_vox * float(np.prod(spacing)) / 1000.0, 6),
                n_voxels=n_vox,
                surround_soft_fraction=round(soft_share, 4),
                surround_sd_hu=round(sd_hu, 2),
            )
        )
    if not records:
        raise ValueError(
            f"Could not place any lesion in {name} after {config.max_attempts} attempts: it has "
            "no soft-tissue region large enough for the requested diameters; use a scan that "
            "covers the abdomen or smaller diameter_mm"
        )
    return new, mask, records


def _draw_contrast(rng: np.random.Generator, config: LesionConfig) -> float:
    lo, hi = config.contrast_hu
    m = config.min_abs_contrast_hu
    if rng.random() < config.hypodense_fraction:
        return float(rng.uniform(lo, min(-m, hi)))
    return float(rng.uniform(max(m, lo), hi))


# -- dataset writer -----------------------------------------------------------------------------
SPLITS = ("train", "val", "test")


@dataclass
class SplitConfig:
    """How cases are divided into train / val / test (see the module docstring)."""

    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    by: str = "zblock"  # "zblock": z-blocks of each scan; "scan": whole scans
    guard_mm: float = 15.0  # discarded slices between blocks of one scan
    min_block_mm: float = 30.0  # thinnest block worth keeping (holds a 15 mm lesion + shell)

    def __post_init__(self) -> None:
        if self.by not in ("zblock", "scan"):
            raise ValueError(f"split 'by' must be 'zblock' or 'scan', got {self.by!r}")
        f = np.asarray(self.fractions, dtype=float)
        if f.shape != (3,) or np.any(f < 0) or not np.isclose(f.sum(), 1.0):
            raise ValueError(
                f"split fractions (train, val, test) must be three non-negative numbers summing "
                f"to 1, got {self.fractions}"
            )


@dataclass
class _Region:
    scan_index: int
    split: str
    z0: int
    z1: int


def case_image_path(dataset_dir: str | Path, case: str) -> Path:
    """The image of a case in an MSD folder, named <case>_0000.nii.gz (v2) or <case>.nii.gz."""
    images = Path(dataset_dir) / "imagesTr"
    for name in (f"{case}_0000.nii.gz", f"{case}.nii.gz", f"{case}_0000.nii", f"{case}.nii"):
        if (images / name).exists():
            return images / name
    raise FileNotFoundError(f"No image for case {case!r} in {images} (<case>_0000.nii.gz).")


def make_lesion_dataset(
    scans: list[Path],
    out_dir: str | Path,
    n_copies: int = 4,
    config: LesionConfig | None = None,
    seed: int = 0,
    organ_labels: dict | None = None,
    split: SplitConfig | tuple[float, float, float] | None = None,
    name: str = "nstseg-synthetic-lesions",
    licence: str = (
        "Apache-2.0 (source scans: TotalSegmentator, Wasserthal et al., Radiology: AI 2023)"
    ),
    workers: int = 1,
    splits: tuple[str, ...] = SPLITS,
    first_copy: int = 0,
) -> Path:
    """Write an MSD-layout folder of CT cases with inserted lesions; returns the folder.

    ``organ_labels`` maps a scan path to an organ label map on that scan's grid (TotalSegmentator
    ids, see ``LesionConfig.target_organs``). Every case's lesions are in lesions.csv/.json.
    ``workers`` > 1 makes the cases in that many processes; the folder is the same byte for byte.
    ``splits`` makes only those splits' cases (e.g. val and test for an evaluation set); they
    are the cases the full set would hold. ``first_copy`` numbers the copies from there: copies
    ``first_copy`` on are new lesions in the same regions, e.g. to score a model on new lesions
    in the anatomy it was trained on (copies 0 to ``first_copy`` - 1 are its training cases).
    """
    from ..io.readers import read_ct, read_mask

    config = config or LesionConfig()
    if split is None:
        split = SplitConfig()
    elif not isinstance(split, SplitConfig):
        split = SplitConfig(fractions=tuple(split))
    if n_copies < 1:
        raise ValueError(f"n_copies must be at least 1, got {n_copies}")
    if first_copy < 0:
        raise ValueError(f"first_copy must be at least 0, got {first_copy}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown or not splits:
        raise ValueError(f"splits must be some of {', '.join(SPLITS)}, got {list(splits)}")
    scans = [Path(s) for s in scans]
    if not scans:
        raise ValueError("make_lesion_dataset needs at least one scan")
    labels_by_scan = {Path(k).resolve(): Path(v) for k, v in (organ_labels or {}).items()}

    volumes: list[CTVolume] = [read_ct(p) for p in scans]
    organ_maps: list[np.ndarray | None] = []
    for path, vol in zip(scans, volumes, strict=True):
        label_path = labels_by_scan.get(path.resolve())
        organ_maps.append(None if label_path is None else read_mask(label_path, vol.geometry))
    _refuse_repeated_slices(scans, volumes)

    regions = _plan_regions(volumes, split, np.random.default_rng(seed))
    out = Path(out_dir)
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    stems = _unique_stems(scans)

    training, rows, skipped = [], [], []
    split_cases: dict[str, list[str]] = {s: [] for s in SPLITS}
    cases_meta = {}
    jobs, tasks = [], []
    for r_index, region in enumerate(regions):
        vol = volumes[region.scan_index]
        hu, geometry = _crop_z(vol, region.z0, region.z1)
        organs = organ_maps[region.scan_index]
        organs = None if organs is None else organs[region.z0 : region.z1]
        copies = range(first_copy, first_copy + n_copies) if region.split in splits else ()
        for copy in copies:
            case = f"{stems[region.scan_index]}_z{region.z0:03d}-{region.z1:03d}_c{copy:02d}"
            jobs.append((case, region, geometry, copy))
            # Each case's generator comes from its own key, so the order (or process) in which
            # cases are made does not change them.
            tasks.append(
                (hu, organs, geometry, config, (seed, region.scan_index, r_index, copy),
                 scans[region.scan_index].name, out, case)
            )  # fmt: skip
    if not jobs:
        raise ValueError(
            f"no source region of {len(scans)} scan(s) falls in the {' or '.join(splits)} split "
            f"(the regions: {', '.join(sorted({r.split for r in regions}))})"
        )
    with _case_runner(workers) as run_cases:
        for (case, region, geometry, copy), (records, error) in zip(
            jobs, run_cases(_make_case, tasks), strict=True
        ):
            if error is not None:
                warnings.warn(f"skipped case {case}: {error}", stacklevel=2)
                skipped.append({"case": case, "reason": error})
                continue
            image_name = f"{case}_0000.nii.gz"
            training.append(
                {"image": f"./imagesTr/{image_name}", "label": f"./labelsTr/{case}.nii.gz"}
            )
            split_cases[region.split].append(case)
            cases_meta[case] = {
                "source": str(scans[region.scan_index]),
                "split": region.split,
                "z_range_display": [region.z0, region.z1],
                "copy": copy,
                "n_lesions": len(records),
            }
            to_lps = geometry.display_to_lps
            for rec in records:
                row = {"case": case, "split": region.split, **rec.to_row()}
                lps = to_lps @ np.array([*rec.centre_voxel_zyx, 1.0])
                for axis, v in zip("xyz", lps[:3], strict=True):
                    row[f"centre_lps_{axis}_mm"] = round(float(v), 3)
                rows.append(row)
    if not training:
        raise ValueError(f"No case could be made from {len(scans)} scan(s); see the warnings")

    with open(out / "lesions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (out / "lesions.json").write_text(json.dumps(rows, indent=1))
    dataset = {
        "name": name,
        "description": (
            "Real CT with synthetic small, low-contrast lesions inserted by napari-nstseg "
            "(training/lesions.py); the lesions are synthetic, the anatomy is real."
        ),
        "reference": "TotalSegmentator (Wasserthal et al., Radiology: AI 2023) for the scans",
        "licence": licence,
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "channel_names": {"0": "CT"},
        "labels": {"0": "background", "1": "lesion"},
        "file_ending": ".nii.gz",
        "numTraining": len(training),
        "numTest": 0,
        "training": training,
        "test": [],
        "split": split_cases,
        "split_method": (
            f"by {split.by}: every copy of a source region stays in one split"
            + (
                f"; {split.guard_mm:g} mm guard gaps between z-blocks"
                if split.by == "zblock"
                else ""
            )
        ),
        "split_fractions": list(split.fractions),
        "splits_made": [s for s in SPLITS if s in splits],
        "lesions": "lesions.csv",
        "lesion_config": _jsonable(asdict(config)),
        "seed": seed,
        "first_copy": first_copy,
        # Every source region, made or not, and the organ labels (absolute paths): what training
        # with lesions inserted on the fly (training/online_lesions.py) starts from.
        "regions": [
            {
                "source": str(scans[r.scan_index].resolve()),
                "split": r.split,
                "z_range_display": [r.z0, r.z1],
            }
            for r in regions
        ],
        "organ_labels": {
            str(p.resolve()): str(labels_by_scan[p.resolve()].resolve())
            for p in scans
            if p.resolve() in labels_by_scan
        },
        "cases": cases_meta,
        "skipped": skipped,
    }
    (out / "dataset.json").write_text(json.dumps(dataset, indent=1))
    return out


def _make_case(task) -> tuple[list[LesionRecord] | None, str | None]:
    """Insert one case's lesions and write its image and mask: (records, None) or (None, why)."""
    hu, organs, geometry, config, key, scan_name, out, case = task
    rng = np.random.default_rng(list(key))
    try:
        new_hu, mask, records = insert_lesions(
            hu, geometry.spacing, organs, config, rng, scan=scan_name
        )
    except ValueError as e:
        return None, str(e)
    save_on_source_grid(out / "imagesTr" / f"{case}_0000.nii.gz", new_hu, geometry, np.int16)
    save_on_source_grid(out / "labelsTr" / f"{case}.nii.gz", mask > 0, geometry, np.uint8)
    return records, None


@contextmanager
def _case_runner(workers: int):
    """An ordered map over cases: in this process, or in a pool of ``workers`` processes."""
    if workers == 1:
        yield map
        return
    # spawn, not fork: the caller may hold threads (PyTorch's, napari's) that fork would copy
    # in whatever state they are in.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        yield pool.map


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=lambda v: list(v) if isinstance(v, tuple) else str(v)))


def _unique_stems(scans: list[Path]) -> list[str]:
    stems = []
    for p in scans:
        stem = re.sub(r"(\.nii\.gz|\.nii|\.mha|\.mhd|\.nrrd)$", "", p.name)
        stem = re.sub(r"[^A-Za-z0-9]+", "-", stem).strip("-") or "scan"
        while stem in stems:
            stem += "-b"
        stems.append(stem)
    return stems


def _refuse_repeated_slices(scans: list[Path], volumes: list[CTVolume]) -> None:
    for a, (pa, va) in enumerate(zip(scans, volumes, strict=True)):
        for b, (pb, vb) in enumerate(zip(scans, volumes, strict=True)):
            if a == b or va.shape[1:] != vb.shape[1:] or vb.shape[0] > va.shape[0]:
                continue
            if a > b and va.shape[0] == vb.shape[0]:
                continue  # equal lengths: checked once
            first = vb.hu[0]
            for z in range(va.shape[0] - vb.shape[0] + 1):
                if np.array_equal(va.hu[z], first) and np.array_equal(
                    va.hu[z : z + vb.shape[0]], vb.hu
                ):
                    raise ValueError(
                        f"{pb} repeats slices {z}-{z + vb.shape[0] - 1} of {pa}; pass only one "
                        "of them, or the same anatomy would land in two splits"
                    )


def _plan_regions(
    volumes: list[CTVolume], split: SplitConfig, rng: np.random.Generator
) -> list[_Region]:
    fractions = np.asarray(split.fractions, dtype=float)
    active = [s for s, f in zip(SPLITS, fractions, strict=True) if f > 0]
    assigned = dict.fromkeys(SPLITS, 0.0)
    total = float(sum(v.shape[0] for v in volumes))
    regions: list[_Region] = []
    whole: list[int] = []
    for i, vol in enumerate(volumes):
        nz, sz = vol.shape[0], vol.spacing[0]
        if split.by == "scan":
            whole.append(i)
            continue
        guard = int(math.ceil(split.guard_mm / sz))
        usable = nz - guard * (len(active) - 1)
        sizes = [int(round(fractions[SPLITS.index(s)] * usable)) for s in active]
        sizes[active.index("train") if "train" in active else 0] += usable - sum(sizes)
        if usable <= 0 or min(sizes) < math.ceil(split.min_block_mm / sz):
            whole.append(i)
            continue
        order = [active[j] for j in rng.permutation(len(active))]
        z = 0
        for s in order:
            n = sizes[active.index(s)]
            regions.append(_Region(i, s, z, z + n))
            assigned[s] += n
            z += n + guard
    # Largest scans first; each goes to the split furthest below its share of slices (relative
    # to that share, so an empty test split is filled before train grows; ties: test, val, train).
    for i in sorted(whole, key=lambda j: (-volumes[j].shape[0], rng.random())):
        target = {s: fractions[SPLITS.index(s)] * total for s in active}
        s = max(
            reversed(active),
            key=lambda k: (round(1 - assigned[k] / target[k], 9), target[k] - assigned[k]),
        )
        regions.append(_Region(i, s, 0, volumes[i].shape[0]))
        assigned[s] += volumes[i].shape[0]
    for s in active:
        if assigned[s] == 0:
            warnings.warn(
                f"the {s} split got no scan: {len(volumes)} scan(s) are too few or too short "
                f"for z-blocks of {split.min_block_mm:g} mm; add scans or lower min_block_mm",
                stacklevel=3,
            )
    return sorted(regions, key=lambda r: (r.scan_index, r.z0))


def _crop_z(vol: CTVolume, z0: int, z1: int) -> tuple[np.ndarray, Geometry]:
    """Display slices z0..z1-1 and the geometry of that slab on the source file's own grid."""
    g = vol.geometry
    a = g.display_axes[0]
    n = g.source_shape[a]
    start = n - z1 if g.display_flips[0] else z0
    shift = np.eye(4)
    shift[a, 3] = start
    shape = list(g.source_shape)
    shape[a] = z1 - z0
    geometry = Geometry.from_index_to_lps(
        tuple(shape),
        g.affine_lps @ shift,
        source_path=g.source_path,
        source_format=g.source_format,
        nifti_qform_code=g.nifti_qform_code,
        nifti_sform_code=g.nifti_sform_code,
    )
    return vol.hu[z0:z1], geometry


def save_on_source_grid(path: Path, display: np.ndarray, geometry: Geometry, dtype) -> None:
    """Write a display-order array on the geometry's source grid (same affine, index order)."""
    data = geometry.to_source(np.asarray(display))
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        data = np.clip(np.round(data), info.min, info.max)
    img = nib.Nifti1Image(np.ascontiguousarray(data.astype(dtype)), geometry.affine_ras)
    qcode, scode = geometry.nifti_qform_code, geometry.nifti_sform_code
    if qcode == 0 and scode == 0:  # a reader would fall back to the voxel sizes alone
        qcode = scode = 1
    img.header.set_qform(geometry.affine_ras, code=qcode)
    img.header.set_sform(geometry.affine_ras, code=scode)
    img.header.set_xyzt_units("mm")
    tmp = path.with_name(path.name + ".part.nii.gz")
    nib.save(img, tmp)
    tmp.replace(path)
