"""make-lesions' --block-order: a scan's z-blocks go to the splits it names, from its first
display slice up, and every other scan keeps the blocks its seed gives it."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from lesion_helpers import phantom
from lesion_helpers import save_int16 as _save
from napari_nstseg.training.lesions import LesionConfig, SplitConfig, make_lesion_dataset

AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])


def _scans(tmp_path):
    """Two 120 mm phantoms (three blocks each) and an 36 mm one (too short for blocks)."""
    paths = []
    for name, n, seed in (("a", 60, 1), ("c", 60, 2), ("short", 18, 3)):
        hu, _ = phantom(shape=(n, 40, 40), spacing=(2.0, 1.5, 1.5), seed=seed)
        _save(tmp_path / f"{name}.nii.gz", np.transpose(hu, (2, 1, 0)), AFFINE)
        paths.append(tmp_path / f"{name}.nii.gz")
    return paths


def _regions(folder) -> dict[str, list[tuple[str, int, int]]]:
    meta = json.loads((folder / "dataset.json").read_text())
    out: dict[str, list] = {}
    for r in meta["regions"]:
        name = r["source"].rsplit("/", 1)[-1]
        out.setdefault(name, []).append((r["split"], *r["z_range_display"]))
    return out


def _make(paths, out, orders=None):
    cfg = LesionConfig(diameter_mm=(4.0, 6.0), lesions_per_scan=(1, 1), shell_mm=2.0, seed=1)
    split = SplitConfig(
        fractions=(0.4, 0.3, 0.3), guard_mm=6.0, min_block_mm=20.0, block_orders=orders or {}
    )
    return make_lesion_dataset(paths, out, 1, cfg, 5, None, split, splits=("val",))


@pytest.mark.filterwarnings("ignore:the (val|test) split got no scan")
def test_a_scan_s_blocks_follow_its_order_and_the_other_scans_keep_theirs(tmp_path):
    a, c, _ = _scans(tmp_path)
    drawn = _regions(_make([a, c], tmp_path / "drawn"))
    ordered_folder = _make([a, c], tmp_path / "ordered", {str(a): ("test", "train", "val")})
    ordered = _regions(ordered_folder)
    assert [r[0] for r in ordered["a.nii.gz"]] == ["test", "train", "val"]
    z = [(z0, z1) for _, z0, z1 in ordered["a.nii.gz"]]
    assert [z1 - z0 for z0, z1 in z] == [16, 22, 16]  # the fractions' sizes, train the rest
    assert z[0][0] == 0 and all(
        b[0] - a_[1] == 3 for a_, b in zip(z, z[1:], strict=False)
    )  # 6 mm guards
    assert sorted(z1 - z0 for _, z0, z1 in drawn["a.nii.gz"]) == [16, 16, 22]
    assert [r[0] for r in drawn["a.nii.gz"]] != ["test", "train", "val"]  # the seed's differs
    assert ordered["c.nii.gz"] == drawn["c.nii.gz"]
    meta = json.loads((ordered_folder / "dataset.json").read_text())
    assert meta["block_orders"] == {str(a.resolve()): ["test", "train", "val"]}


def test_a_bad_block_order_is_refused_in_one_sentence(tmp_path):
    a, c, short = _scans(tmp_path)
    with pytest.raises(ValueError, match=r"must name each split with a share once"):
        SplitConfig(fractions=(0.5, 0.5, 0.0), block_orders={"a": ("train", "val", "test")})
    with pytest.raises(ValueError, match=r"needs the split by z-block"):
        SplitConfig(by="scan", block_orders={"a": ("train", "val", "test")})
    with pytest.raises(ValueError, match=r"short.nii.gz has a block order but is too short"):
        _make([a, short], tmp_path / "x", {str(short): ("train", "val", "test")})
    with pytest.raises(ValueError, match=r"c.nii.gz has a block order but is not one of the"):
        _make([a], tmp_path / "y", {str(c): ("train", "val", "test")})

    from napari_nstseg.training.lesions.cli_make_lesions import add_parser

    parser = argparse.ArgumentParser(prog="nstseg")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["make-lesions", str(a), "-o", str(tmp_path / "z"), "--block-order", f"{a}=train,tset,val"]
    )
    with pytest.raises(SystemExit, match=r"make-lesions: --block-order expects SCAN=SPLIT"):
        args.func(args)
    assert not (tmp_path / "z").exists()
