"""The README's first command, `bash scripts/demo.sh`, run for real: headless it predicts on the
sample and says where the outputs went; with a display it opens napari with the sample and the
panel (the virtual display pytest-xvfb gives the suite)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from script_helpers import ROOT

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="bash script")


def _demo(args, env, timeout=600):
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo.sh"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_demo_script_without_a_display_predicts_and_says_where(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    out = tmp_path / "demo"
    done = _demo(["--out", str(out)], env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert str(out.resolve()) in done.stdout
    assert (out / "sample_ct_tumor_mask.nii.gz").is_file() and (out / "report.json").is_file()


@pytest.mark.skipif(
    not os.environ.get("DISPLAY"), reason="needs a (virtual) display, as pytest-xvfb gives"
)
def test_demo_script_with_a_display_opens_napari_with_the_sample_and_the_panel(tmp_path):
    from PIL import Image

    shot = tmp_path / "demo.png"
    done = _demo(["--screenshot", str(shot)], dict(os.environ))
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.is_file() and str(shot.resolve()) in done.stdout
    assert "layers: sample CT" in done.stdout and "CDI-NSTSEG" in done.stdout.split("panels:")[1]
    image = np.asarray(Image.open(shot).convert("L"))
    # The whole window: canvas and the docked panel beside it, not an empty frame.
    assert image.shape[1] > 800 and image.std() > 10
