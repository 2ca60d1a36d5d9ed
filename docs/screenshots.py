"""Screenshot of the NSTSEG dock widget on the sample CT: docs/images/widget.png.

Opens sample_data/sample_ct.nii.gz (and its ground-truth lesion) with the plugin's reader,
docks the widget, runs the whole volume and saves the window. Until trained weights are bundled
it runs an UNTRAINED tiny network (its BatchNorm statistics measured on the scan so the maps are
not flat), so every map in the picture is structured noise, not a segmentation.

    xvfb-run -a .venv/bin/python docs/screenshots.py [--weights CHECKPOINT|bundled] [--out PATH]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CT = ROOT / "sample_data" / "sample_ct.nii.gz"
SAMPLE_MASK = ROOT / "sample_data" / "sample_ct_lesion.nii.gz"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--weights",
        help="checkpoint to run, or 'bundled' for the shipped weights as a user picks them "
        "(default: an untrained tiny one)",
    )
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--out", default=str(ROOT / "docs" / "images" / "widget.png"))
    args = parser.parse_args()

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_nstseg._reader import read_layers
    from napari_nstseg.widgets.dock import BUNDLED, FROM_FILE, NSTSegWidget

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    data, kwargs, _ = read_layers(SAMPLE_CT)[0]
    ct = viewer.add_image(data, **{**kwargs, "name": "sample CT"})
    mask_data, mask_kwargs, _ = read_layers(SAMPLE_MASK, as_labels=True)[0]
    viewer.add_labels(mask_data, **{**mask_kwargs, "name": "ground truth", "opacity": 0.4})

    weights = args.weights or untrained_checkpoint(Path(tempfile.mkdtemp()), ct.data)
    widget = NSTSegWidget(viewer)
    viewer.window.add_dock_widget(widget, name="NSTSEG", area="right")
    widget.ct_layer.value = "sample CT"
    if weights == "bundled":
        widget.weights_source.value = BUNDLED
    else:
        widget.weights_source.value = FROM_FILE
        widget.weights_file.value = weights
    widget.device.value = "auto"
    widget.show_stage_probs.value = True
    widget.show_scale_weights.value = True
    widget.gt_layer.value = "ground truth"
    widget.mode.value = "whole volume"
    # An untrained net puts most pixels near 0.5; a high threshold keeps the CT visible.
    widget.threshold.value = args.threshold

    lesion_z = int(mask_data.reshape(mask_data.shape[0], -1).any(axis=1).argmax())
    viewer.dims.set_point(0, ct.translate[0] + (lesion_z + 2) * ct.scale[0])
    app = QApplication.instance()
    widget.run()
    deadline = time.time() + 600
    while widget.running and time.time() < deadline:
        app.processEvents()
        time.sleep(0.05)
    if widget.last_error:
        raise SystemExit(f"the run failed: {widget.last_error}")

    names = [layer.name for layer in viewer.layers]
    for name in names:
        if name.startswith("sample CT ") and name != "sample CT tumor mask":
            viewer.layers[name].visible = False
    # The coarse map faintly under the mask outline, so the CT stays readable.
    viewer.layers["sample CT GLM coarse"].visible = True
    viewer.layers["sample CT GLM coarse"].opacity = 0.35
    viewer.layers["sample CT tumor mask"].contour = 1
    viewer.layers.selection.active = viewer.layers["sample CT tumor mask"]
    viewer.reset_view()
    widget.update_metrics()
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=False)
    print(f"saved {out} ({len(names)} layers: {', '.join(names)})")
    viewer.close()


if __name__ == "__main__":
    main()
