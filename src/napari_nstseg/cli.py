"""The `nstseg` command: info, variants, demo, predict, make-lesions, train, pretrain-mae,
evaluate, tune-postprocess, residual-auroc, average-weights, reproduce."""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
from collections.abc import Sequence

# Subcommands live next to the code they drive; each module has add_parser(subparsers) that
# registers its parser with `func` set. Only the module of the command given is imported, so a
# mistake in `nstseg predict ...` is reported before torch (seconds) is loaded by training's.
_SUBCOMMAND_MODULES = {
    "napari_nstseg.demo": ("demo",),
    "napari_nstseg.inference.cli_predict": ("predict",),
    "napari_nstseg.training.lesions.cli_make_lesions": ("make-lesions",),
    "napari_nstseg.training.cli_train": (
        "train",
        "pretrain-mae",
        "evaluate",
        "tune-postprocess",
        "residual-auroc",
    ),
    "napari_nstseg.training.cli_average": ("average-weights",),
    "napari_nstseg.recipes.cli_reproduce": ("reproduce",),
}
# Commands this module defines itself: light ones that load no subcommand module.
_BUILTIN_COMMANDS = ("info", "variants")


def _info(args: argparse.Namespace) -> int:
    """Print versions, the compute devices torch can use and the bundled weights by name."""
    import napari_nstseg

    info: dict[str, object] = {
        "napari-nstseg": napari_nstseg.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for mod in ("numpy", "torch", "napari", "nibabel", "SimpleITK", "safetensors"):
        try:
            info[mod] = importlib.import_module(mod).__version__
        except Exception as exc:  # a broken optional import must not hide the rest
            info[mod] = f"not available ({type(exc).__name__})"
    import torch

    from napari_nstseg.inference.device import (
        available_devices,
        device_name,
        precision_label,
        select_device,
    )
    from napari_nstseg.inference.engine import default_weights_path

    info["devices"] = available_devices()
    device = select_device("auto")
    info["default_device"] = device_name(device)
    # Results can differ in the last digits between bf16 and float32 machines: say which.
    info["precision"] = precision_label(device)
    if torch.cuda.is_available():
        info["cuda_version"] = torch.version.cuda
    from napari_nstseg.bundled import bundled_weights

    info["bundled_weights"] = {w.name: w.description for w in bundled_weights().values()} or (
        "none installed"
    )
    weights = default_weights_path()
    info["default_weights"] = str(weights) if weights.exists() else f"missing ({weights})"
    if weights.exists():
        info.update(_weights_summary(weights))
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 0


def _weights_summary(path) -> dict[str, object]:
    """What the bundled weights are and the operating point they recommend, from their JSON."""
    from napari_nstseg.models.checkpoint import read_metadata, read_operating_point
    from napari_nstseg.postprocess import PostprocessConfig

    try:
        meta = read_metadata(path)
        point = read_operating_point(meta, path) or PostprocessConfig()
        organs = read_operating_point(meta, path, organs=True) or PostprocessConfig()
    except Exception as exc:  # info must still print the rest
        return {"default_model": f"unreadable ({exc})"}
    model, pre = meta["model_config"], meta["preprocessing"]
    arch = "U-Net" if model.get("arch") == "unet" else "CDI-NSTSEG"
    offsets = pre.get("slice_offsets_mm") or [0.0]
    joined = "/".join(f"{v:+g}" for v in offsets)
    planes = "2-D" if len(offsets) == 1 else f"2.5-D (planes {joined} mm)"
    return {
        "default_model": f"{arch}, base width {model.get('base_width')}, {planes}, "
        f"{pre.get('working_spacing_mm')} mm working spacing",
        "default_operating_point": point.to_dict(),
        "default_organ_mode_point": organs.to_dict() if organs != point else "the same",
    }


def _variants(args: argparse.Namespace) -> int:
    """List the model variants of the registry (models/variants.py); needs no torch."""
    from napari_nstseg.models.variants import list_variants

    rows = [
        {
            "name": v.name,
            "display_name": v.display_name,
            "title": v.title,
            "from_full_weights": v.from_full_weights,
            "changes": dict(v.changes),
            "description": v.description,
        }
        for v in list_variants()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [("name", "display name", "from full weights", "description")]
    table += [
        (r["name"], r["display_name"], "yes" if r["from_full_weights"] else "no", r["description"])
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    for *cells, description in table:
        print("  ".join(f"{c:<{w}}" for c, w in zip(cells, widths, strict=True)), description)
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `nstseg` parser; with ``command`` only that subcommand's module is loaded (the
    others are left out), without it every subcommand, as ``--help`` lists them."""
    parser = argparse.ArgumentParser(
        prog="nstseg",
        description=(
            "CDI-NSTSEG small, low-contrast tumor segmentation for CT: predict from the command "
            "line, build training data, train and evaluate models. In napari, use "
            "Plugins > Segment small tumors (CDI-NSTSEG)."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="versions, available devices and bundled weights")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=_info)

    p = sub.add_parser(
        "variants",
        help="the model variants (ablations, baseline): what `train --variant` and "
        "`predict --variant` take",
    )
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=_variants)

    for name, commands in _SUBCOMMAND_MODULES.items():
        if command is None or command in commands:
            importlib.import_module(name).add_parser(sub)
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` if it is a known one (the top level has no options
    taking values, so it is the first word not starting with '-')."""
    first = next((a for a in argv if not a.startswith("-")), None)
    known = {*_BUILTIN_COMMANDS, *(c for cs in _SUBCOMMAND_MODULES.values() for c in cs)}
    return first if first in known else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command(argv))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, RuntimeError) as exc:
        # Users get the one-sentence reason, not a traceback; --debug style traces are a rerun away.
        print(f"nstseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nstseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
