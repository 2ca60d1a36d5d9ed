"""`nstseg demo`: napari with the sample CT and the widget, or the headless prediction on it."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from napari_nstseg._sample_data import SAMPLE_CT, SAMPLE_ORGANS

PLUGIN = "napari-nstseg"
WIDGET = "Segment small tumors (CDI-NSTSEG)"


def has_display() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


# Organ mode on the liver, where the sample's lesion lies (cascade 001): a first-time user sees
# the lesion found, not the whole-scan false positives on anatomy the weights have not seen.
DEMO_ORGANS = "liver"
# The weights trained on organ crops for organ mode, where they are bundled (else the default).
DEMO_WEIGHTS = "organs"


def demo_weights() -> str | None:
    """The bundled weights the demo runs: ``DEMO_WEIGHTS`` where shipped, else None (default)."""
    from napari_nstseg.bundled import bundled_weights

    return DEMO_WEIGHTS if DEMO_WEIGHTS in bundled_weights() else None


def open_viewer(viewer=None):
    """A napari viewer showing the sample CT (its ground truth and organ labels) with the panel
    docked in organ mode on the liver, on the lesion's slice: Run finds it there."""
    if viewer is None:
        import napari

        viewer = napari.Viewer(title="napari-nstseg demo")
    viewer.open_sample(PLUGIN, "sample_ct")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    start_in_organ_mode(viewer, widget)
    return viewer


def start_in_organ_mode(viewer, widget, organs: str = DEMO_ORGANS) -> None:
    """The panel in organ mode on ``organs`` of the sample's organ labels, the view on the
    sample lesion's largest slice."""
    import numpy as np

    from napari_nstseg._sample_data import SAMPLE_ORGANS_NAME
    from napari_nstseg.organ_labels import parse_organs
    from napari_nstseg.widgets.organ_mode import ORGAN_MODE

    weights = demo_weights()
    if weights in widget.weights_choices:
        widget.weights_source.value = weights
    widget.mode.value = ORGAN_MODE
    widget.organ.layer.value = SAMPLE_ORGANS_NAME
    widget.organ.tick(parse_organs(organs))
    truth = viewer.layers["sample CT ground truth"]
    lesion_z = int(np.argmax((np.asarray(truth.data) > 0).sum(axis=(1, 2))))
    viewer.dims.set_point(0, truth.data_to_world((lesion_z, 0, 0))[0])
    widget.status.value = (
        f"Demo: organ mode on the {organs}, the lesion's slice on screen. Press Run: the "
        "model searches inside the yellow outline only."
    )


def headless_argv(out_dir: Path, organs: str | None = DEMO_ORGANS) -> list[str]:
    """The `nstseg predict` command line the headless demo runs on the sample CT (organ mode
    on ``organs`` of the sample's TotalSegmentator labels with the weights trained for it; None:
    the whole scan with the default weights)."""
    search = ["--organ-mask", str(SAMPLE_ORGANS), "--organs", organs] if organs else []
    weights = demo_weights()
    return [
        "predict",
        str(SAMPLE_CT),
        str(out_dir / "sample_ct_tumor_mask.nii.gz"),
        *(["--weights", weights] if weights and organs else []),
        *search,
        "--maps",
        str(out_dir / "maps"),
        "--report",
        str(out_dir / "report.json"),
        "--lesion-map",
        str(out_dir / "sample_ct_lesions.nii.gz"),
    ]


def run_headless(out_dir: Path) -> int:
    """Predict on the sample CT with the bundled weights at their operating point: mask, maps,
    lesion map and report, through the real `nstseg predict` parser (so every option it gains
    has its default here too)."""
    from napari_nstseg.inference.cli_predict import add_parser

    argv = headless_argv(out_dir)
    print("nstseg " + " ".join(argv), file=sys.stderr)
    parser = argparse.ArgumentParser(prog="nstseg")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    rc = args.func(args)
    if rc == 0:
        print(
            f"\nHeadless demo (no display found): lesions searched inside the liver (organ "
            f"mode); the tumor mask, every stage's map, a lesion map and a report for the "
            f"sample CT are in {out_dir.resolve()}"
        )
    return rc


def run_demo(
    headless: bool = False, out_dir: str | None = None, screenshot: str | None = None
) -> int:
    """The demo in napari (where there is a display), else headless. ``screenshot``: save a
    picture of the whole window once it is up, then close it (a record of what it showed, for
    a bug report or the docs, also under a virtual display)."""
    if headless or not has_display():
        return run_headless(Path(out_dir or "nstseg-demo"))
    import napari

    viewer = open_viewer()
    if screenshot is not None:
        from qtpy.QtCore import QTimer

        def shoot() -> None:
            path = Path(screenshot).resolve()
            path.parent.mkdir(parents=True, exist_ok=True)
            viewer.screenshot(path=str(path), canvas_only=False)
            layers = ", ".join(layer.name for layer in viewer.layers)
            panels = ", ".join(viewer.window.dock_widgets)
            print(f"Screenshot of the demo window: {path}\nlayers: {layers}\npanels: {panels}")
            viewer.close()

        # Once the event loop runs, so the window is laid out and drawn.
        QTimer.singleShot(500, shoot)
    napari.run()
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`nstseg demo`."""
    p = subparsers.add_parser(
        "demo",
        help="open napari with the sample CT and the widget (headless: predict on the sample)",
    )
    p.add_argument("--headless", action="store_true", help="do not open a window")
    p.add_argument(
        "--out", default=None, help="folder for headless outputs (default: ./nstseg-demo)"
    )
    p.add_argument(
        "--screenshot",
        metavar="PNG",
        default=None,
        help="save a picture of the demo window once it is up, then close it",
    )
    p.set_defaults(
        func=lambda args: run_demo(
            headless=args.headless, out_dir=args.out, screenshot=args.screenshot
        )
    )
    return p
