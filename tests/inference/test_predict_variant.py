"""`nstseg predict --variant`: an ablation of the weights' full model, rebuilt from them."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from napari_nstseg.inference.ablation import ablated_segmenter
from napari_nstseg.inference.engine import Segmenter
from napari_nstseg.models.variants import ablation_variants


@pytest.fixture
def ct_file(tmp_path, make_ct):
    hu = make_ct((3, 36, 40))
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.transpose(hu, (2, 1, 0)).astype(np.int16), np.eye(4)), path)
    return path


@pytest.mark.parametrize("entry", ablation_variants(), ids=lambda v: v.name)
def test_an_ablated_engine_keeps_the_weights_operating_point_and_mae(entry, checkpoint_dir):
    base = Segmenter.from_checkpoint(checkpoint_dir / "seg.json", "cpu")
    seg = ablated_segmenter(base, entry.name)
    for key, value in entry.changes.items():
        assert getattr(seg.model.config, key) == (tuple(value) if key == "scales" else value)
    assert (seg.weights_path, seg.mae_path, seg.has_mae) == (
        base.weights_path,
        base.mae_path,
        True,
    )
    assert seg.meta["variant"] == entry.name


def test_predict_runs_an_ablation_and_says_so_in_the_report(
    ct_file, tmp_path, checkpoint_dir, capsys
):
    from napari_nstseg.cli import main

    common = [str(ct_file), "--weights", str(checkpoint_dir / "seg.json"), "--device", "cpu"]
    reports = {}
    for variant in (None, "no-lfm"):
        out, report = tmp_path / f"{variant}.nii.gz", tmp_path / f"{variant}.json"
        argv = ["predict", common[0], str(out), *common[1:], "--threshold", "0.5", "--report",
                str(report), "--maps", str(tmp_path / f"maps_{variant}")]  # fmt: skip
        if variant:
            argv += ["--variant", variant]
        assert main(argv) == 0
        reports[variant] = json.loads(report.read_text())
    assert "variant: no-lfm, rebuilt from the full model's weights" in capsys.readouterr().err
    assert reports["no-lfm"]["run"]["variant"] == "no-lfm"
    assert reports[None]["run"]["variant"] is None
    assert reports["no-lfm"]["weights"]["sha256"] == reports[None]["weights"]["sha256"]
    # Without LFM stages the output is the full model's own GLM coarse map.
    full_coarse = nib.load(tmp_path / "maps_None" / "scan_glm_coarse.nii.gz").get_fdata()
    ablated_final = nib.load(tmp_path / "maps_no-lfm" / "scan_final_probability.nii.gz").get_fdata()
    np.testing.assert_allclose(ablated_final, full_coarse, atol=1e-3)


@pytest.mark.parametrize(
    ("variant", "message"),
    [
        ("unet", "cannot run from the full model's weights"),
        ("no-xyz", "Unknown variant 'no-xyz'; choose one of default, no-sfm"),
    ],
)
def test_a_variant_that_cannot_run_is_refused_before_any_model_work(
    variant, message, ct_file, tmp_path, checkpoint_dir, capsys, monkeypatch
):
    from napari_nstseg.cli import main

    def refuse(*args, **kwargs):
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr(Segmenter, "from_checkpoint", refuse)
    out = tmp_path / "m.nii.gz"
    argv = ["predict", str(ct_file), str(out), "--weights", str(checkpoint_dir / "seg.json"),
            "--variant", variant]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()
