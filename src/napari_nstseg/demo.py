"""`nstseg demo`: napari with the sample CT and the widget, or the headless prediction on it."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from napari_nstseg._sample_data import SAMPLE_CT

PLUGIN = "napari-nstseg"
WIDGET = "Segment small tumors (CDI-NSTSEG)"


def has_display() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def open_viewer(viewer=None):
    """A napari viewer showing the sample CT (and its ground truth) with the widget docked."""
    if viewer is None:
        import napari

        viewer = napari.Viewer(title="napari-nstseg demo")
    viewer.open_sample(PLUGIN, "sample_ct")
    viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    return viewer


def run_headless(out_dir: Path) -> int:
    """Predict on the sample CT with the bundled weights; write mask, maps and report."""
    from napari_nstseg.inference.cli_predict import run_predict

    out_dir.mkdir(parents=True, exist_ok=True)
    args = argparse.Namespace(
        ct_file=str(SAMPLE_CT),
        out_file=str(out_dir / "sample_ct_tumor_mask.nii.gz"),
        weights=None,
        device="auto",
        batch_size=4,
        threshold=None,  # the bundled weights' operating point
        min_lesion_mm=None,
        min_depth_mm=None,
        slices=None,
        maps=str(out_dir / "maps"),
        report=str(out_dir / "report.json"),
    )
    rc = run_predict(args)
    if rc == 0:
        print(
            f"\nHeadless demo (no display found): the tumor mask, every stage's map and a report "
            f"for the sample CT are in {out_dir.resolve()}"
        )
    return rc


def run_demo(headless: bool = False, out_dir: str | None = None) -> int:
    if headless or not has_display():
        return run_headless(Path(out_dir or "nstseg-demo"))
    import napari

    open_viewer()
    napari.run()
    return 0
