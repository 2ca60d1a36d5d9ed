"""Screenshots of the NSTSEG panel on the sample CT: docs/images/widget.png, ablation_grid.png
and organ_mode.png.

As a user gets there: napari at 1600 x 1000, File > Open Sample > napari-nstseg > the sample CT
(with its ground truth), the panel from the Plugins menu, the bundled weights, a whole-volume
run (widget.png: the whole panel, the tumor mask selected, the maps asked for shown, the metrics
against the ground truth), then "Run variants on current slice" on the lesion's slice
(ablation_grid.png: the full model and the four variants side by side, each cell its CT, mask
and name), then organ mode on the liver as the demo starts it (organ_mode.png: the tumor mask
inside the yellow outline of the searched zone, the lesion table). ``--weights untrained``
runs a small untrained network instead (structured noise, for an installation without bundled
weights).

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/screenshots.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"
PLUGIN, WIDGET = "napari-nstseg", "Segment small tumors (CDI-NSTSEG)"
WINDOW_SIZE = (1600, 1000)


def untrained_checkpoint(folder: Path, hu_zyx) -> str:
    """A small untrained CDI-NSTSEG saved as a checkpoint, BatchNorm calibrated on ``hu_zyx``."""
    import torch

    from napari_nstseg.models import ModelConfig, build_model, calibrate_batchnorm
    from napari_nstseg.models.checkpoint import save_checkpoint
    from napari_nstseg.preprocessing import PreprocessConfig, window_normalize

    torch.manual_seed(0)
    config = ModelConfig(base_width=8, fused_channels=16, lfm_stages=3)
    slices = window_normalize(torch.from_numpy(hu_zyx[::3].astype("float32")), PreprocessConfig())
    model = calibrate_batchnorm(build_model(config), slices[:, None])
    stem = folder / "untrained"
    provenance = {"note": "untrained, for the documentation screenshot only"}
    save_checkpoint(stem, model, config.to_dict(), PreprocessConfig().to_dict(), provenance)
    return str(stem) + ".json"


def settle(seconds: float = 1.0) -> None:
    """Let Qt lay out and draw for a while."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    end = time.time() + seconds
    while time.time() < end:
        app.processEvents()
        time.sleep(0.02)


def wait_for(widget, what: str, limit_s: float = 900) -> None:
    end = time.time() + limit_s
    while widget.running and time.time() < end:
        settle(0.1)
    if widget.running:
        raise SystemExit(f"{what} did not finish in {limit_s:.0f} s")
    if widget.last_error:
        raise SystemExit(f"{what} failed: {widget.last_error}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--weights",
        default="bundled",
        help="'bundled' (the shipped default, as a user picks it), 'untrained', or a checkpoint",
    )
    parser.add_argument("--threshold", type=float, help="default: the weights' own")
    parser.add_argument("--out", default=str(IMAGES), help="folder for the PNGs")
    args = parser.parse_args()

    import napari
    import numpy as np

    from napari_nstseg.widgets.dock import BUNDLED, FROM_FILE

    viewer = napari.Viewer(show=True)
    viewer.window.resize(*WINDOW_SIZE)
    viewer.open_sample(PLUGIN, "sample_ct")
    ct, truth = viewer.layers["sample CT"], viewer.layers["sample CT ground truth"]
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    if args.weights == "bundled":
        widget.weights_source.value = BUNDLED
    else:
        weights = args.weights
        if weights == "untrained":
            weights = untrained_checkpoint(Path(tempfile.mkdtemp()), np.asarray(ct.data))
        widget.weights_source.value = FROM_FILE
        widget.weights_file.value = weights
    if args.threshold is not None:
        widget.threshold.value = args.threshold
    widget.device.value = "auto"
    widget.mode.value = "whole volume"

    # The view on the lesion's largest cross-section.
    lesion = np.asarray(truth.data) > 0
    lesion_z = int(np.argmax(lesion.sum(axis=(1, 2))))
    viewer.dims.set_point(0, ct.translate[0] + lesion_z * ct.scale[0])
    widget.run()
    wait_for(widget, "the whole-volume run")
    truth.visible = False  # scored in the panel; the picture shows the model's mask
    viewer.reset_view()
    settle(2.0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [layer.name for layer in viewer.layers]
    viewer.screenshot(str(out / "widget.png"), canvas_only=False)
    active = viewer.layers.selection.active
    print(f"saved {out / 'widget.png'}: selected {active.name!r}; layers {', '.join(names)}")
    print(f"  status: {widget.status.value}; ground truth: {widget.gt_layer.value}")

    widget.results.setCurrentIndex(2)  # the "Visual ablation" tab, as a user opens it
    widget.run_variants()
    wait_for(widget, "the ablation variants")
    # The panel folded away for this one: five cells get the window's width and their names
    # ("sample CT tumor mask [single scale 1.0]") fit.
    dock.hide()
    settle(2.0)
    viewer.reset_view()
    settle(1.0)
    viewer.screenshot(str(out / "ablation_grid.png"), canvas_only=True)
    shown = [layer.name for layer in viewer.layers if layer.visible]
    print(f"saved {out / 'ablation_grid.png'}: visible {', '.join(shown)}")

    organ_mode_shot(viewer, dock, widget, out / "organ_mode.png")
    viewer.close()


def organ_mode_shot(viewer, dock, widget, path: Path) -> None:
    """organ_mode.png: back to the normal view, the panel as the demo opens it (organ mode on
    the sample's liver, the lesion's slice on screen), Run: the tumor mask and the yellow
    outline of where the model looked."""
    from napari_nstseg.demo import start_in_organ_mode

    widget.show_normal_view()
    dock.show()
    widget.results.setCurrentIndex(1)  # the lesion table: what organ mode kept
    start_in_organ_mode(viewer, widget)
    widget.run()
    wait_for(widget, "the organ-mode run")
    for layer in viewer.layers:
        role = layer.metadata.get("nstseg_role", "")
        layer.visible = layer.name == "sample CT" or role in ("tumor mask", "searched zone")
    viewer.reset_view()
    settle(2.0)
    viewer.screenshot(str(path), canvas_only=False)
    print(f"saved {path}: {widget.status.value}")


if __name__ == "__main__":
    main()
