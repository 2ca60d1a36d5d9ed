"""Semi-automatic organ labels of a contrast-enhanced abdominal CT: HCC_048's liver, spleen and
kidneys (configs/organ/README.md), so that organ-mode training can use the scan without ever
treating its liver, which holds a real, unlabelled hepatocellular carcinoma, as tumour-free.

    python experiments/hcc_organ_labels.py ../shared/data/tcia/HCC_048/ct.nii.gz \\
        configs/organ/HCC_048_organs.nii.gz --liver-seed 50,250,120 --cut-seed 29,215,212 \\
        --cut-seed 6,203,203 --cut-seed 38,198,255 --organ 1:50,260,430 \\
        --organ 2:30,300,125:3 --organ 3:30,300,365:4 --suspect 53,253,220:25

The liver (TotalSegmentator id 5) is found as in ``lidc_organ_labels.segment`` (threshold at
the HU measured around ``--liver-seed``, opening, the component holding the seed, closing, holes
filled slice by slice). In the portal-venous phase the pancreas and duodenum enhance to nearly
the liver's HU and touch it below the porta: each ``--cut-seed`` marks such a neighbour, which a
watershed on the distance to the label's edge splits off along the narrowest neck and drops.
Every ``--organ ID:z,y,x`` is grown the same way from its own seed and HU (spleen 1, kidneys 2
and 3), where the liver is not, and cut the same way where a cut seed lies in it (in HCC_048
the left kidney's label reaches enhancing vessels and contrast-filled bowel loops). The
recipe uses the liver only as a region excluded from training and scoring
(``make-lesions --exclude``), so it errs large: it is closed with ``--liver-close-mm`` before
being written. A round, rim-enhancing hypodense nodule of about 15 mm lies against the
liver's posterior-medial surface beside the IVC (display slices 48-58), just outside the
label: it may be the HCC or part of it, so ``--suspect`` marks a ball around it (label 255)
that the recipe excludes with the liver.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lidc_organ_labels import (  # noqa: E402  (a sibling script, not a package)
    LIVER,
    _clip_leaks,
    _fill_slices,
    _largest,
    _morph,
    _near,
    _split,
    _zyx,
    segment,
    smooth,
)

SUSPECT = 255  # no TotalSegmentator id: a possible tumour outside the liver label, excluded


def organ_from_seed(sm, body, near_air, seed, spacing, opening_mm, taken, log=print):
    """The opened component of tissue within the HU range measured 6 mm around ``seed`` (mean
    - 3 SD to mean + 3 SD, SD at least 10 HU) that holds the seed, outside ``taken``."""
    ball = _near(seed, sm.shape, spacing, 6.0)
    mean, sd = float(sm[ball].mean()), max(float(sm[ball].std()), 10.0)
    lo, hi = mean - 3 * sd, mean + 3 * sd
    log(f"seed {seed}: smoothed HU {mean:.1f} SD {sd:.1f}; range {lo:.1f} to {hi:.1f}")
    candidate = (sm >= lo) & (sm <= hi) & body & ~near_air & ~taken
    opened = _morph(candidate, "open", opening_mm, spacing)
    comps, _ = ndimage.label(opened)
    if comps[seed] == 0:
        raise SystemExit(f"the seed {seed} is not in the opened tissue of its range")
    organ = _morph(comps == comps[seed], "close", 2.0, spacing) & ~taken
    organ = _fill_slices(organ & body)
    min_area = int(100.0 / (spacing[1] * spacing[2]))  # 1 cm2
    return _clip_leaks(_largest(organ), 2.0, min_area)


def label(
    hu,
    spacing,
    right_is_low_x,
    liver_seed,
    cut_seeds=(),
    organs=(),
    opening_mm=6.0,
    liver_close_mm=5.0,
    organ_opening_mm=3.0,
    suspects=(),
    log=print,
):
    """Labels (uint8, display z, y, x): 5 liver, each of ``organs`` (id, seed, opening in mm
    or None for ``organ_opening_mm``), and 255 in a ball around each of ``suspects`` (centre,
    radius in mm) where no organ is."""
    spacing = tuple(float(s) for s in spacing)
    out = segment(hu, spacing, right_is_low_x, liver_seed=liver_seed, opening_mm=opening_mm,
                  log=log)  # fmt: skip
    used = set()
    liver = _cut(out == LIVER, liver_seed, cut_seeds, spacing, used, log)
    liver = _morph(liver, "close", liver_close_mm, spacing) | liver
    out = np.where(liver, LIVER, 0).astype(np.uint8)
    sm = smooth(hu, spacing)
    body = _fill_slices(_largest(sm > -300))
    near_air = _morph((sm < -400) & body, "dilate", 2.0, spacing)
    for value, seed, opening in organs:
        opening = organ_opening_mm if opening is None else opening
        organ = organ_from_seed(sm, body, near_air, seed, spacing, opening, out > 0, log)
        organ = _cut(organ, seed, cut_seeds, spacing, used, log)
        out[organ & (out == 0)] = value
    for centre, radius_mm in suspects:
        out[_near(centre, out.shape, spacing, radius_mm) & (out == 0)] = SUSPECT
    unused = [cut for cut in cut_seeds if cut not in used]
    if unused:
        raise SystemExit(f"the cut seeds {unused} lie in no organ's label")
    return out


def _cut(mask, seed, cut_seeds, spacing, used, log=print):
    """``mask`` without the neighbours marked by those ``cut_seeds`` that lie in it, each split
    off by a watershed between ``seed`` and it (``used`` collects the seeds applied)."""
    for cut in cut_seeds:
        if not mask[cut]:
            continue
        kept, dropped = _split(mask, seed, cut, spacing)
        log(f"cut at {cut}: {int(dropped.sum())} voxels dropped")
        mask = _largest(kept)
        used.add(cut)
    return mask


def _suspect(text: str) -> tuple[tuple[int, int, int], float]:
    seed, radius = text.split(":")
    return _zyx(seed), float(radius)


def _organ(text: str) -> tuple[int, tuple[int, int, int], float | None]:
    value, seed, *opening = text.split(":")
    return int(value), _zyx(seed), float(opening[0]) if opening else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ct", type=Path)
    parser.add_argument("out", type=Path, help="the label map (.nii.gz), on the CT's grid")
    parser.add_argument("--liver-seed", type=_zyx, required=True, help="display voxel z,y,x")
    parser.add_argument(
        "--cut-seed", type=_zyx, action="append", default=[],
        help="display voxel z,y,x of a neighbour an organ's label leaks into",
    )  # fmt: skip
    parser.add_argument(
        "--organ", type=_organ, action="append", default=[],
        help="ID:z,y,x[:OPENING_MM], an organ grown from a seed (1 spleen, 2/3 kidneys), "
        "opened with its own ball where given",
    )  # fmt: skip
    parser.add_argument("--opening-mm", type=float, default=6.0)
    parser.add_argument("--liver-close-mm", type=float, default=5.0)
    parser.add_argument("--organ-opening-mm", type=float, default=3.0)
    parser.add_argument(
        "--suspect", type=_suspect, action="append", default=[],
        help="z,y,x:RADIUS_MM, a ball labelled 255 around a possible tumour outside the liver "
        "label (the recipe excludes it with the liver)",
    )  # fmt: skip
    parser.add_argument("--png-dir", type=Path, help="write outline PNGs here")
    args = parser.parse_args(argv)

    from lidc_organ_labels import write_outputs

    from napari_nstseg.io import read_ct

    ct = read_ct(args.ct)
    geometry = ct.geometry
    right_is_low_x = geometry.display_to_lps[0, 2] > 0
    labels = label(ct.hu, geometry.spacing, right_is_low_x, args.liver_seed, args.cut_seed,
                   args.organ, args.opening_mm, args.liver_close_mm, args.organ_opening_mm,
                   args.suspect)  # fmt: skip
    write_outputs(ct.hu, labels, geometry, args.out, args.png_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
