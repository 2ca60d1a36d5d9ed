"""Every `nstseg` subcommand through the real parser (`cli.main`), and the headless demo end to
end on the sample, so a new option can never break one silently. predict, train, evaluate,
tune-postprocess and make-lesions have their own end-to-end tests in tests/inference and
tests/training, variants in tests/models/test_variants.py; info, demo and pretrain-mae are here."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from model_helpers import tiny_mae_config
from napari_nstseg import cli
from napari_nstseg.cli import build_parser, main


def test_the_dispatch_table_names_every_subcommand():
    """Each command is parsed with only its own module loaded; a command missing from the table
    would still work, only slower (everything loaded), so keep the table whole."""
    action = next(a for a in build_parser()._actions if a.dest == "command")
    registered = set(action.choices)
    listed = {*cli._BUILTIN_COMMANDS, *(c for cs in cli._SUBCOMMAND_MODULES.values() for c in cs)}
    assert registered == listed
    for command in registered:
        only = next(a for a in build_parser(command)._actions if a.dest == "command")
        assert command in only.choices


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for command in ("info", "variants", "demo", "predict", "make-lesions", "train", "pretrain-mae",
                    "evaluate", "tune-postprocess"):  # fmt: skip
        assert command in text


def test_info_through_the_parser(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["napari-nstseg"] and info["default_device"] and "devices" in info


def test_pretrain_mae_through_the_parser(tmp_path, capsys):
    scans = tmp_path / "ct"
    scans.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        hu = rng.normal(40, 10, (32, 32, 4)).astype(np.int16)
        nib.save(nib.Nifti1Image(hu, np.diag([-1.0, -1.0, 2.0, 1.0])), scans / f"c{i}.nii.gz")
    sets = [f"--set={k}={json.dumps(v)}" for k, v in tiny_mae_config().to_dict().items()]
    out = tmp_path / "mae"
    code = main(["pretrain-mae", "--data", str(scans), "--out", str(out), "--epochs", "1",
                 "--steps-per-epoch", "1", "--batch-size", "4", "--crop-size", "32",
                 "--device", "cpu", "--no-progress", *sets])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert "best MAE checkpoint:" in capsys.readouterr().out
    meta = json.loads((out / "best.json").read_text())
    assert meta["kind"] == "mae"


@pytest.mark.slow
def test_headless_demo_end_to_end_on_the_sample(tmp_path):
    """`nstseg demo --headless`, as the README's first command runs it without a display."""
    out = tmp_path / "nstseg-demo"
    done = subprocess.run(
        [sys.executable, "-m", "napari_nstseg.cli", "demo", "--headless", "--out", str(out)],
        capture_output=True, encoding="utf-8", errors="replace", timeout=1200, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"are in {out.resolve()}" in done.stdout
    mask = nib.load(out / "sample_ct_tumor_mask.nii.gz")
    from napari_nstseg._sample_data import SAMPLE_CT

    np.testing.assert_allclose(mask.affine, nib.load(SAMPLE_CT).affine, atol=1e-5)
    report = json.loads((out / "report.json").read_text())
    assert report["outputs"]["mask"] == str(out / "sample_ct_tumor_mask.nii.gz")
    assert len(report["outputs"]["maps"]) >= 5
    ids = np.asarray(nib.load(out / "sample_ct_lesions.nii.gz").dataobj)
    assert {les["id"] for les in report["lesions"]} == set(np.unique(ids)) - {0}
    # Organ mode on the liver by default: the search is in the report, nothing is found
    # outside the liver grown by 10 mm, and the inserted lesion is found.
    from napari_nstseg._sample_data import SAMPLE_MASK, SAMPLE_ORGANS

    assert report["organs"]["labels"] == [5] and report["organs"]["names"] == ["liver"]
    from napari_nstseg.demo import demo_weights

    if demo_weights() is not None:  # the weights trained for organ mode, at their organ point
        assert report["weights"]["path"].endswith(f"{demo_weights()}.json")
        assert set(report["run"]["operating_point_source"].values()) == {"weights, organ mode"}
    organs = np.asarray(nib.load(SAMPLE_ORGANS).dataobj)
    far = ndimage.distance_transform_edt(organs != 5, sampling=(3.0, 3.0, 3.0)) > 10.0
    assert not (ids[far] > 0).any()
    lesion = np.asarray(nib.load(SAMPLE_MASK).dataobj) > 0
    assert (ids[lesion] > 0).sum() >= 0.6 * lesion.sum()
