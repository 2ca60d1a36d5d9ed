"""The plugin installs, napari finds every contribution, and a built wheel carries what it needs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# CI may run with an ASCII locale; npe2 prints check marks.
UTF8 = {
    "encoding": "utf-8",
    "errors": "replace",
    "env": {**os.environ, "PYTHONIOENCODING": "utf-8"},
}


def _manifest():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    return pm.get_manifest("napari-nstseg")


def test_npe2_validate_passes():
    out = subprocess.run(
        [str(BIN / "npe2"), "validate", "napari_nstseg"], capture_output=True, **UTF8
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout


def test_installed_manifest_is_the_top_level_napari_yaml():
    import napari_nstseg

    installed = Path(napari_nstseg.__file__).parent / "napari.yaml"
    assert installed.read_text() == (ROOT / "napari.yaml").read_text()


def test_napari_lists_reader_writer_sample_and_widget():
    mf = _manifest()
    c = mf.contributions
    assert any("*.nii.gz" in r.filename_patterns and r.accepts_directories for r in c.readers)
    assert any("labels" in [str(t) for t in w.layer_types] for w in c.writers)
    assert [s.key for s in c.sample_data] == ["sample_ct", "sample_sarcoma"]
    assert len(c.widgets) == 1
    # every command must resolve to a real, importable callable
    for cmd in c.commands:
        assert callable(cmd.exec) or cmd.python_name
        module, _, attr = cmd.python_name.partition(":")
        mod = __import__(module, fromlist=[attr])
        assert callable(getattr(mod, attr)), cmd.python_name


def test_cli_help_and_info():
    nstseg = shutil.which("nstseg", path=str(BIN)) or "nstseg"
    out = subprocess.run([nstseg, "--help"], capture_output=True, **UTF8)
    assert out.returncode == 0, out.stderr
    for sub in ("info", "demo", "predict"):
        assert sub in out.stdout
    out = subprocess.run([nstseg, "info", "--json"], capture_output=True, **UTF8)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["torch"].startswith("2.")
    assert "cpu" in info["devices"]
    assert info["precision"] in ("float32", "bfloat16 autocast", "float16 autocast")
    # The bundled weights say what they are and the operating point they recommend.
    assert info["default_model"].startswith("CDI-NSTSEG, base width")
    assert set(info["default_operating_point"]) == {"threshold", "min_lesion_mm", "min_depth_mm"}


@pytest.mark.slow
def test_built_wheel_contains_manifest_and_data(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            "-q",
        ],
        capture_output=True,
        **UTF8,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    (wheel,) = tmp_path.glob("napari_nstseg-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        manifest = zf.read("napari_nstseg/napari.yaml").decode()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        eps = zf.read(entry_points).decode()
    assert manifest == (ROOT / "napari.yaml").read_text()
    assert "napari-nstseg = napari_nstseg:napari.yaml" in eps
    assert "nstseg = napari_nstseg.cli:main" in eps
    for data in ("sample_ct.nii.gz", "sample_ct_lesion.nii.gz", "README.md"):
        assert f"napari_nstseg/sample_data/{data}" in names, data
    bundled = [n for n in names if n.startswith("napari_nstseg/weights/")]
    if (ROOT / "src/napari_nstseg/weights/default.json").exists():
        assert "napari_nstseg/weights/default.json" in bundled
        assert "napari_nstseg/weights/default.safetensors" in bundled


def _bundle_script():
    from napari_nstseg.recipes import bundle_weights

    return bundle_weights


def test_bundled_weights_carry_the_tuned_operating_point_and_still_verify(tmp_path):
    import torch

    from napari_nstseg.inference import Segmenter
    from napari_nstseg.models import build_model
    from napari_nstseg.models.checkpoint import load_checkpoint, read_metadata, save_checkpoint

    bundle = _bundle_script()
    from model_helpers import TINY_CDI as config

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "trained", build_model(config), config.to_dict(), {}, {"seed": 0})
    tune_json = tmp_path / "tune.json"
    tune_json.write_text(json.dumps({"postprocess": {"threshold": 0.4, "min_lesion_mm": 5.0}}))

    point = bundle.operating_point(str(tune_json), None, None)
    # a tune.json from before the minimum depth existed still packages
    assert point == {"threshold": 0.4, "min_lesion_mm": 5.0, "min_depth_mm": 0.0}
    assert bundle.operating_point(str(tune_json), None, 3.0)["min_lesion_mm"] == 3.0
    assert bundle.operating_point(str(tune_json), None, None, 4.0)["min_depth_mm"] == 4.0
    assert bundle.operating_point(None, None, None) is None
    with pytest.raises(SystemExit, match="unusable operating point"):
        bundle.operating_point(None, 1.5, None)

    meta = bundle.package(str(tmp_path / "trained.json"), tmp_path / "default", postprocess=point)
    assert meta["postprocess"] == point
    _, loaded = load_checkpoint(tmp_path / "default.json")  # sha256 both ways, entry included
    assert loaded["postprocess"] == point and loaded["tensors"]["dtype"] == "float16"
    seg = Segmenter.from_checkpoint(tmp_path / "default.json", device="cpu")
    assert seg.postprocess.to_dict() == point
    assert set(seg.postprocess_sources.values()) == {"weights"}
    # Re-packaging keeps the recommendation unless a new one is given.
    bundle.package(str(tmp_path / "default.json"), tmp_path / "again")
    again = read_metadata(tmp_path / "again.json")
    assert again["postprocess"] == point
    assert again["provenance"]["packaged_from"] == "trained.json"  # the origin, not the copy
    assert "organ_search" not in again  # weights not trained on organ crops store no zoom
    # Weights trained on organ crops keep the zoom organ mode runs them at.
    zoom = {"field_mm": 160.0, "min_zoom": 1.0, "max_zoom": 2.0, "margin_mm": 10.0}
    save_checkpoint(tmp_path / "organ", build_model(config), config.to_dict(), {}, {"seed": 0},
                    organ_search=zoom)  # fmt: skip
    bundle.package(str(tmp_path / "organ.json"), tmp_path / "organ_bundled")
    assert read_metadata(tmp_path / "organ_bundled.json")["organ_search"] == zoom


def test_the_model_card_lists_every_training_phase_of_a_continued_run():
    bundle = _bundle_script()
    budget = {
        "epochs": 2,
        "steps_per_epoch": 3,
        "batch_size": 4,
        "samples": 24,
        "crop_size": [64, 64],
    }
    first = {
        "budget": {**budget, "samples": 100},
        "started": "2026-01-01T10:00:00",
        "date": "2026-01-01T10:30:00",
        "device": "cuda",
        "train_config": {"lr": 0.003, "loss": {"region": "image"}},
    }
    prov = {
        "budget": budget,
        "device": "cpu",
        "initialised_from": first,
        "train_config": {
            "lr": 0.001,
            "loss": {"region": "batch"},
            "preprocess": {"slice_offsets_mm": [-3.0, 0.0, 3.0]},
        },
    }
    lines = bundle.training_phases(prov, last_minutes=12.0).splitlines()
    assert lines[0].startswith("- Phase 1: 2 epochs x 3 steps x batch 4 (100 crops of 64x64)")
    assert "lr 0.003" in lines[0] and lines[0].endswith("30 min on cuda")
    assert "2.5-D input (planes at -3, +0, +3 mm)" in lines[1] and "over the batch" in lines[1]
    assert lines[1].endswith("12 min on cpu")
    assert lines[2].startswith("- In all 124 training crops")
    # A run trained in one go is one phase, without the total.
    assert bundle.training_phases({**prov, "initialised_from": None}, 5.0).count("\n") == 0
    # Averaged weights say so, with every source and its weight, and add no training.
    sources = [{"checkpoint": "s2/best.json", "weight": 0.5}, {"checkpoint": "s1/best.json",
               "weight": 0.5}]  # fmt: skip
    last = bundle.training_phases({**prov, "averaged_from": sources}, 12.0).splitlines()[-1]
    assert "mean of 2 checkpoints" in last and "s2/best.json (0.5), s1/best.json (0.5)" in last


def test_the_comparison_gives_each_source_region_its_row():
    bundle = _bundle_script()
    region = {"scans": 48, "target_lesions": 20, "target_detected": 5,
              "target_sensitivity": 0.25, "fp_per_scan": 14.146, "recurring_fp_sites": 15,
              "recurring_fp_share": 0.987}  # fmt: skip
    no_targets = {**region, "target_lesions": 0, "target_detected": 0,
                  "target_sensitivity": float("nan"), "recurring_fp_sites": None}  # fmt: skip
    rows = bundle.region_rows("CDI", {"by_region": {"a z000-030": region, "b z0-9": no_targets}})
    assert rows == [
        "| CDI | a z000-030 | 48 | 0.250 (5/20) | 14.15 | 15 (98.7 %) |",
        "| CDI | b z0-9 | 48 | - (0/0) | 14.15 | - |",
    ]
    assert bundle.region_rows("old evaluation", {"detection": {}}) == []
    assert bundle.REGION_HEADER.count("|---") == 6  # one column per cell
