"""Semi-automatic liver (and spleen) label of a non-contrast CT: LIDC-IDRI-0314's organ labels.

Organ-mode training cuts crops around organs and places lesions in them from organ label maps,
and of the shared scans only the test patient has a labelled liver. This script gives
LIDC-IDRI-0314 (non-contrast, lower chest and upper abdomen) a liver label (TotalSegmentator's
id 5) and a spleen label (id 1) on the CT's exact grid (configs/organ/README.md):

    python experiments/lidc_organ_labels.py ../shared/data/lidc/LIDC-IDRI-0314.nii.gz \\
        configs/organ/LIDC-IDRI-0314_organs.nii.gz --spleen-seed 8,225,375 --png-dir /tmp/lidc

The steps: smooth the CT (3-D median, then a 1 mm Gaussian); the body is the largest component
above -300 HU, air inside it (lungs, gas) is below -400 HU. The liver's HU is measured in a
10 mm ball around the deepest point of opened 45-80 HU tissue (normal non-contrast liver lies
in 50-70 HU) on the patient's right, within that tissue (or in the ball around
``--liver-seed``), and printed; the liver range is its mean - 3 SD to mean + 4 SD (SD at
least 5 HU). Voxels in that range, inside the body and 2 mm or more from air, are opened with
a ball (``--opening-mm``, 4 mm) to cut bridges to muscle, heart and stomach wall; the liver is
the opened component holding the seed. Where a spleen seed is given and the spleen touches
the liver in that component (in this scan they lie against each other, at the same HU, under
the left dome), the component is split by a watershed from the two seeds on the negated
distance to its edge, so the cut runs through the narrowest neck between them. Each organ is
then closed (2 mm) and its holes filled slice by slice; slices whose area jumps more than
``--max-area-jump`` times the next slice inwards (a leak) are dropped from the ends.
``--png-dir`` writes axial slices and a coronal reformat with the outlines (liver red, spleen
green) to look at.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import ndimage

LIVER, SPLEEN = 5, 1  # TotalSegmentator "total" ids


def _morph(mask: np.ndarray, op: str, radius_mm: float, spacing) -> np.ndarray:
    """Binary dilate/erode/open/close with a ball of ``radius_mm`` (SimpleITK: fast on big
    volumes); outside the volume counts as background."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    radius = [max(int(radius_mm // s), 1) for s in spacing[::-1]]
    fn = {
        "dilate": sitk.BinaryDilate,
        "erode": sitk.BinaryErode,
        "open": sitk.BinaryMorphologicalOpening,
        "close": sitk.BinaryMorphologicalClosing,
    }[op]
    return sitk.GetArrayFromImage(fn(image, radius, sitk.sitkBall)).astype(bool)


def _near(point, shape, spacing, radius_mm: float) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - p) * s) ** 2 for g, p, s in zip(grid, point, spacing, strict=True)) <= (
        radius_mm**2
    )


def smooth(hu: np.ndarray, spacing) -> np.ndarray:
    """3-D median (radius 1.6 mm rounded down to whole voxels, at least 1) then a 1 mm
    Gaussian (SimpleITK)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.asarray(hu, np.float32))
    image.SetSpacing([float(s) for s in spacing[::-1]])
    image = sitk.Median(image, [max(int(1.6 // s), 1) for s in spacing[::-1]])
    image = sitk.SmoothingRecursiveGaussian(image, 1.0)
    return sitk.GetArrayFromImage(image)


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask
    return lab == np.argmax(np.bincount(lab.ravel())[1:]) + 1


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    return np.stack([ndimage.binary_fill_holes(s) for s in mask])


def _deepest(mask: np.ndarray, spacing, where: np.ndarray) -> tuple[int, int, int]:
    depth = ndimage.distance_transform_edt(mask, sampling=spacing)
    depth[~where] = 0
    return tuple(int(v) for v in np.unravel_index(np.argmax(depth), depth.shape))


def _clip_leaks(mask: np.ndarray, max_jump: float, min_area: int) -> np.ndarray:
    """Drop the end slices from the first one (walking out from the organ's largest slice)
    whose area exceeds ``max_jump`` times its inner neighbour's and ``min_area`` voxels: a
    leak into a neighbour at the organ's top or bottom."""
    area = mask.sum(axis=(1, 2)).astype(float)
    if not area.any():
        return mask
    peak = int(np.argmax(area))
    out = mask.copy()
    for step in (1, -1):
        prev, z = peak, peak + step
        while 0 <= z < len(area) and area[z] > 0:
            if area[z] > max(max_jump * area[prev], min_area):
                if step > 0:
                    out[z:] = False
                else:
                    out[: z + 1] = False
                break
            prev, z = z, z + step
    return out


def segment(
    hu: np.ndarray,
    spacing,
    right_is_low_x: bool = True,
    liver_seed: tuple[int, int, int] | None = None,
    spleen_seed: tuple[int, int, int] | None = None,
    opening_mm: float = 4.0,
    max_area_jump: float = 2.0,
    log=print,
) -> np.ndarray:
    """Labels (uint8, display order z, y, x): 5 liver, 1 spleen (with ``spleen_seed``)."""
    spacing = tuple(float(s) for s in spacing)
    sm = smooth(hu, spacing)
    body = _fill_slices(_largest(sm > -300))
    air = (sm < -400) & body
    near_air = _morph(air, "dilate", 2.0, spacing)
    cols = np.nonzero(body.any(axis=(0, 1)))[0]
    centre_x = (cols[0] + cols[-1]) / 2
    x = np.arange(hu.shape[2])[None, None, :]
    right = (x < centre_x) if right_is_low_x else (x > centre_x)
    ball = _near(liver_seed, hu.shape, spacing, 10.0) if liver_seed else None
    if liver_seed is None:
        prior = (sm >= 45) & (sm <= 80) & body & ~near_air
        tissue = _morph(prior, "open", opening_mm, spacing)
        liver_seed = _deepest(tissue, spacing, np.broadcast_to(right, tissue.shape))
        ball = _near(liver_seed, hu.shape, spacing, 10.0) & tissue
    mean, sd = float(sm[ball].mean()), float(sm[ball].std())
    spread = max(sd, 5.0)
    lo, hi = mean - 3 * spread, mean + 4 * spread
    log(
        f"liver sample: 10 mm around (z, y, x) {liver_seed}: smoothed HU mean {mean:.1f} "
        f"SD {sd:.1f} (raw {float(np.asarray(hu)[ball].mean()):.1f} "
        f"SD {float(np.asarray(hu)[ball].std()):.1f}); range {lo:.1f} to {hi:.1f} HU"
    )
    candidate = (sm >= lo) & (sm <= hi) & body & ~near_air
    opened = _morph(candidate, "open", opening_mm, spacing)
    comps, _ = ndimage.label(opened)
    liver_id = comps[liver_seed]
    if liver_id == 0:
        raise SystemExit(f"the liver seed {liver_seed} is not in the opened liver-range tissue")
    organ = comps == liver_id
    spleen = np.zeros_like(organ)
    if spleen_seed is not None:
        spleen_id = comps[spleen_seed]
        if spleen_id == 0:
            raise SystemExit(f"the spleen seed {spleen_seed} is not in liver-range tissue")
        if spleen_id == liver_id:
            log("the spleen touches the liver: split by watershed on the distance to the edge")
            organ, spleen = _split(organ, liver_seed, spleen_seed, spacing)
        else:
            spleen = comps == spleen_id
    out = np.zeros(hu.shape, np.uint8)
    for value, mask in ((SPLEEN, spleen), (LIVER, organ)):
        if not mask.any():
            continue
        mask = _morph(mask, "close", 2.0, spacing) | mask
        mask = _fill_slices(mask & body & ~air)
        min_area = int(100.0 / (spacing[1] * spacing[2]))  # 1 cm2
        mask = _clip_leaks(_largest(mask), max_area_jump, min_area)
        out[mask & (out == 0)] = value
    if out[liver_seed] != LIVER:
        raise SystemExit("the liver label lost its seed")
    centroid = np.mean(np.nonzero(out == LIVER)[2])
    side = "right" if (centroid < centre_x) == right_is_low_x else "left"
    log(f"liver centroid x {centroid:.0f} vs body centre {centre_x:.0f}: patient's {side}")
    return out


def _split(organ: np.ndarray, liver_seed, spleen_seed, spacing):
    import SimpleITK as sitk

    depth = ndimage.distance_transform_edt(organ, sampling=spacing).astype(np.float32)
    markers = np.zeros(organ.shape, np.uint8)
    for value, seed in ((1, liver_seed), (2, spleen_seed)):
        markers[_near(seed, organ.shape, spacing, 3.0) & organ] = value
    markers[~organ] = 3  # outside floods from everywhere else and is dropped
    ws = sitk.MorphologicalWatershedFromMarkers(
        sitk.GetImageFromArray(-depth), sitk.GetImageFromArray(markers), markWatershedLine=False
    )
    ws = sitk.GetArrayFromImage(ws)
    return (ws == 1) & organ, (ws == 2) & organ


def write_pngs(hu: np.ndarray, labels: np.ndarray, spacing, folder: Path) -> list[Path]:
    """Axial slices (liver top, middle, bottom) and a coronal reformat through the liver, the
    outlines drawn over the CT (W400/L40): liver red, spleen green."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    colours = {LIVER: (255, 40, 40), SPLEEN: (40, 255, 40)}

    def draw(img2d, lab2d):
        gray = np.clip((img2d - 40 + 200) / 400 * 255, 0, 255).astype(np.uint8)
        rgb = np.stack([gray] * 3, -1)
        for value, colour in colours.items():
            m = lab2d == value
            rgb[m & ~ndimage.binary_erosion(m)] = colour
        return rgb

    zs = np.nonzero((labels == LIVER).any(axis=(1, 2)))[0]
    picks = {
        "top": zs[-1],
        "top-5mm": max(zs[-1] - int(5 / spacing[0]), zs[0]),
        "upper": zs[0] + 3 * (zs[-1] - zs[0]) // 4,
        "mid": (zs[0] + zs[-1]) // 2,
        "lower": zs[0] + (zs[-1] - zs[0]) // 4,
        "bottom": zs[0],
    }
    written = []
    for name, z in picks.items():
        path = folder / f"axial_{name}_z{z:03d}.png"
        Image.fromarray(draw(hu[z], labels[z])).save(path)
        written.append(path)
    ys = np.nonzero((labels == LIVER).any(axis=(0, 2)))[0]
    for y in (ys[0] + (ys[-1] - ys[0]) // 3, (ys[0] + ys[-1]) // 2):
        cor = draw(hu[::-1, y], labels[::-1, y])
        height = int(round(cor.shape[0] * spacing[0] / spacing[2]))
        path = folder / f"coronal_y{y:03d}.png"
        Image.fromarray(cor).resize((cor.shape[1], height), Image.NEAREST).save(path)
        written.append(path)
    return written


def _zyx(text: str) -> tuple[int, int, int]:
    z, y, x = (int(v) for v in text.split(","))
    return z, y, x


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ct", type=Path)
    parser.add_argument("out", type=Path, help="the label map (.nii.gz), on the CT's grid")
    parser.add_argument("--liver-seed", type=_zyx, help="display voxel z,y,x in the liver")
    parser.add_argument("--spleen-seed", type=_zyx, help="display voxel z,y,x in the spleen")
    parser.add_argument("--opening-mm", type=float, default=4.0)
    parser.add_argument("--max-area-jump", type=float, default=2.0)
    parser.add_argument("--png-dir", type=Path, help="write outline PNGs here")
    args = parser.parse_args(argv)

    from napari_nstseg.io import read_ct

    ct = read_ct(args.ct)
    geometry = ct.geometry
    # Display x runs towards the patient's left when its LPS x component is positive.
    right_is_low_x = geometry.display_to_lps[0, 2] > 0
    print(f"{args.ct.name}: {ct.hu.shape} (z, y, x), spacing {geometry.spacing} mm; patient's "
          f"right at {'low' if right_is_low_x else 'high'} display x")  # fmt: skip
    labels = segment(
        ct.hu,
        geometry.spacing,
        right_is_low_x,
        liver_seed=args.liver_seed,
        spleen_seed=args.spleen_seed,
        opening_mm=args.opening_mm,
        max_area_jump=args.max_area_jump,
    )
    write_outputs(ct.hu, labels, geometry, args.out, args.png_dir)
    return 0


def write_outputs(hu, labels, geometry, out: Path, png_dir: Path | None) -> None:
    """Print each label's volume and slices, write the label map on the CT's grid, and with
    ``png_dir`` its outline figures."""
    from napari_nstseg.io import write_mask

    ml = float(np.prod(geometry.spacing)) / 1000.0
    for value in np.unique(labels)[1:]:
        zs = np.nonzero((labels == value).any(axis=(1, 2)))[0]
        print(f"label {value}: {(labels == value).sum() * ml:.0f} mL, display slices "
              f"z {zs[0]}-{zs[-1]}")  # fmt: skip
    write_mask(out, labels, geometry)
    print(f"wrote {out}")
    if png_dir:
        for path in write_pngs(hu, labels, geometry.spacing, png_dir):
            print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
