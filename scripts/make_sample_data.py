"""Build sample_data/: real upper-abdomen CT with ONE synthetic small, low-contrast lesion.

Source: TotalSegmentator's example_ct_sm.nii.gz (30 axial 3 mm slices of the upper abdomen, i.e.
slices 82-111 of example_ct.nii.gz: the abdomen crop) and its organ labels example_seg.nii.gz.
One hypodense lesion of 14-18 mm and -32 to -38 HU against its organ is inserted wholly inside
the liver (where a reader can judge it; the 3 mm pancreas of this scan is mostly fat partial
volume) or, failing that, the pancreas; the first seed whose lesion MEASURES 12-20 mm and -30 to
-40 HU against the organ is kept. The CT is stored as int16 on the source scan's own grid and
affine, the mask as uint8 on the same grid.

    .venv/bin/python scripts/make_sample_data.py [--data /work/shared/data/totalsegmentator]
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np

from napari_nstseg.io.readers import read_ct, read_mask
from napari_nstseg.training.lesions import LesionConfig, insert_lesions, save_on_source_grid

COMMIT = "0e65a448d557382b1e925276212b3bec7f5aff83"
CREDIT = "TotalSegmentator (Wasserthal et al., Radiology: Artificial Intelligence 2023)"
SEED = 20231  # first seed tried; the seed used is in sample_ct_lesion.json
SEED_TRIES = 40
ORGANS_TO_TRY = ((5, "liver"), (7, "pancreas"))


def lesion_config(organ_id: int, organ: str, seed: int) -> LesionConfig:
    """One small low-contrast hypodense lesion inside the given organ."""
    return LesionConfig(
        diameter_mm=(14.0, 18.0),
        contrast_hu=(-38.0, -32.0),
        hypodense_fraction=1.0,
        target_organs={organ_id: organ},
        organ_fraction=1.0,
        min_in_organ=0.95,  # wholly inside the organ: a clear demo case
        lesions_per_scan=(1, 1),
        # tissue under the lesion must match its surroundings closely, so the measured contrast
        # against the organ is the requested one
        max_background_step_hu=6.0,
        seed=seed,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/totalsegmentator"))
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "sample_data"
    )
    args = parser.parse_args(argv)
    scan_path = args.data / "example_ct_sm.nii.gz"
    ct = read_ct(scan_path)
    organs = read_mask(args.data / "example_seg.nii.gz", ct.geometry)

    found = None
    for organ_id, organ in ORGANS_TO_TRY:
        for attempt in range(SEED_TRIES):
            config = lesion_config(organ_id, organ, SEED + attempt)
            try:
                new_hu, mask, records = insert_lesions(
                    ct.hu, ct.spacing, organs, config, scan="sample_ct.nii.gz"
                )
            except ValueError:
                continue
            rec = records[0]
            # keep the first draw that a reader would measure as asked: 12-20 mm, -30..-40 HU
            if 12 <= rec.diameter_equivalent_mm <= 20 and -40 <= rec.contrast_measured_hu <= -30:
                found = (config, new_hu, mask, records)
                break
        if found:
            break
        print(f"no lesion of the wanted size and contrast fits the {organ}; trying the next organ")
    if found is None:
        raise SystemExit("could not place the sample lesion in any organ tried")
    config, new_hu, mask, records = found

    args.out.mkdir(parents=True, exist_ok=True)
    save_on_source_grid(args.out / "sample_ct.nii.gz", new_hu, ct.geometry, np.int16)
    save_on_source_grid(args.out / "sample_ct_lesion.nii.gz", mask > 0, ct.geometry, np.uint8)
    record = records[0]
    z, y, x = record.centre_voxel_zyx
    lps = ct.geometry.display_to_lps @ np.array([z, y, x, 1.0])
    source_index = ct.geometry.to_source(mask > 0)  # (i, j, k) order of the file
    ijk = np.argwhere(source_index).mean(axis=0)
    info = {
        "synthetic": True,
        "note": "The lesion is synthetic, inserted into a real CT scan; it is not a real tumor.",
        "record": asdict(record),
        "centre_lps_mm": [round(float(v), 2) for v in lps[:3]],
        "centre_file_index_ijk": [round(float(v), 2) for v in ijk],
        "source": {
            "file": "tests/reference_files/example_ct_sm.nii.gz",
            "organ_labels": "tests/reference_files/example_seg.nii.gz",
            "repository": "https://github.com/wasserth/TotalSegmentator",
            "commit": COMMIT,
            "licence": "Apache-2.0",
            "credit": CREDIT,
        },
        "lesion_config": json.loads(json.dumps(asdict(config), default=list)),
        "seed": config.seed,
        "made_by": "scripts/make_sample_data.py (napari_nstseg.training.lesions.insert_lesions)",
    }
    (args.out / "sample_ct_lesion.json").write_text(json.dumps(info, indent=1) + "\n")
    shutil.copyfile(args.data / "LICENSE", args.out / "LICENSE-TotalSegmentator")
    print(json.dumps(info["record"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
