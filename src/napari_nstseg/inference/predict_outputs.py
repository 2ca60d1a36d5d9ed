"""Where `nstseg predict` writes, checked before torch is imported and before any model work:
no output over an input, every folder writable or makeable, room for the files on disk."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_nstseg.bundled import resolve_weights
from napari_nstseg.io.errors import CTReadError
from napari_nstseg.io.formats import describe, matching_suffix, strip_suffix, writable_suffixes
from napari_nstseg.io.outputs import check_distinct, check_folder, check_output, check_space

MAP_SUFFIXES = writable_suffixes()
SEG_SUFFIX = ".dcm"  # the mask as a DICOM SEG of the input series (io/dicom_seg.py)
REPORT_BYTES = 1 << 20
SCALE_NAMES = ("0.5x", "1.0x", "1.5x")


def mask_suffix(path: Path) -> str | None:
    return matching_suffix(path.name, MAP_SUFFIXES)


def stem(path: Path) -> str:
    return strip_suffix(path.name)


def scale_weight_names(n_scales: int) -> tuple[str, ...]:
    return SCALE_NAMES if n_scales == 3 else tuple(str(i) for i in range(n_scales))


@dataclass
class PredictOutputs:
    """Every file one `nstseg predict` run may write, and what it reads."""

    mask: Path
    maps_dir: Path | None = None
    map_stem: str = ""
    map_suffix: str = ".nii.gz"
    report: Path | None = None
    lesion_map: Path | None = None
    inputs: dict[str, Path] = field(default_factory=dict)
    weights_meta: dict[str, Any] = field(default_factory=dict)

    @property
    def mask_is_seg(self) -> bool:
        """True when the mask goes out as a DICOM SEG (a .dcm name)."""
        return self.mask.name.lower().endswith(SEG_SUFFIX)

    def map_path(self, name: str) -> Path:
        assert self.maps_dir is not None
        return self.maps_dir / f"{self.map_stem}_{name}{self.map_suffix}"

    def possible_map_names(self) -> list[str]:
        """The maps these weights can give: GLM, each LFM stage, final, SSL, SFM weights."""
        config = self.weights_meta.get("model_config") or {}
        stages = int(config.get("lfm_stages", 3))
        scales = len(config.get("scales") or SCALE_NAMES)
        names = ["final_probability", "glm_coarse", "ssl_residual"]
        names += [f"lfm_stage{k}" for k in range(1, stages + 1)]
        names += [f"sfm_weights_{s}" for s in scale_weight_names(scales)]
        return names

    def files(self) -> list[Path]:
        maps = [self.map_path(n) for n in self.possible_map_names()] if self.maps_dir else []
        extra = [p for p in (self.lesion_map, self.report) if p is not None]
        return [self.mask, *maps, *extra]

    def check(self) -> None:
        """Refuse any output that is an input, read-only, a folder, in an unwritable folder, or
        that shares its path with another output (``OutputPathError``, one sentence)."""
        inputs = {what: str(path) for what, path in self.inputs.items()}
        for path in self.files():
            check_output(path, inputs)
        if self.maps_dir is not None:
            check_folder(self.maps_dir)
        check_distinct(self.files())

    def check_space(self, voxels: int) -> None:
        """Refuse when a disk lacks room for the uncompressed outputs of ``voxels`` voxels."""
        needs: dict[Path, int] = {self.mask: voxels}
        if self.maps_dir is not None:
            for name in self.possible_map_names():
                needs[self.map_path(name)] = 4 * voxels  # float32
        if self.lesion_map is not None:
            needs[self.lesion_map] = 2 * voxels
        if self.report is not None:
            needs[self.report] = REPORT_BYTES
        check_space(needs)

    @contextlib.contextmanager
    def folders(self) -> Iterator[None]:
        """Make the output folders; the ones made here are removed again (if still empty)
        when the block fails, so a failed run leaves nothing behind."""
        made: list[Path] = []
        for path in self.files():
            missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
            path.parent.mkdir(parents=True, exist_ok=True)
            made += [p for p in missing if p not in made]
        try:
            yield
        except BaseException:
            for folder in sorted(made, key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise


def plan_outputs(args: argparse.Namespace) -> PredictOutputs:
    """The outputs named on the command line, checked against each other and the inputs."""
    mask = Path(args.out_file).expanduser().absolute()
    suffix = mask_suffix(mask)
    if mask.name.lower().endswith(SEG_SUFFIX):
        _check_seg_input(mask, Path(args.ct_file))
        suffix = ".nii.gz"  # of the maps: a DICOM SEG holds masks only
    elif suffix is None:
        raise ValueError(
            f"{mask} has no mask file extension; use {describe(MAP_SUFFIXES)} (or .dcm, a "
            "DICOM SEG, for a DICOM series)"
        )
    lesion_map = getattr(args, "lesion_map", None)
    if lesion_map is not None and mask_suffix(Path(lesion_map)) is None:
        raise ValueError(f"{lesion_map} has no image file extension; use {describe(MAP_SUFFIXES)}")
    weights = weights_file(args.weights)
    inputs, meta = _weights_inputs(weights) if weights is not None else ({}, {})
    described = inputs.get("the weights' description")
    if described is not None and args.weights and not described.is_file():
        raise CTReadError(
            described,
            "no such weights file",
            "check --weights (a checkpoint is NAME.json with NAME.safetensors beside it, or the "
            "name of bundled weights)",
        )
    plan = PredictOutputs(
        mask=mask,
        maps_dir=Path(args.maps).expanduser().absolute() if args.maps else None,
        map_stem=stem(Path(args.ct_file)),
        map_suffix=suffix,
        report=Path(args.report).expanduser().absolute() if args.report else None,
        lesion_map=Path(lesion_map).expanduser().absolute() if lesion_map else None,
        inputs={"the CT scan": Path(args.ct_file), **_organ_input(args), **inputs},
        weights_meta=meta,
    )
    plan.check()
    return plan


def _check_seg_input(mask: Path, ct_file: Path) -> None:
    """A DICOM SEG refers to a DICOM series: refuse any other input file in one line (a folder
    is read as a series; one that holds none is refused by the reader)."""
    from pydicom.misc import is_dicom

    named_dicom = ct_file.name.lower().endswith(SEG_SUFFIX)
    if ct_file.is_file() and not named_dicom and not is_dicom(ct_file):
        raise ValueError(
            f"{mask}: a DICOM SEG (.dcm) can only be written for a DICOM series, and {ct_file} is "
            "not one; name the mask .nii.gz, .nii, .mha or .nrrd"
        )


def _organ_input(args: argparse.Namespace) -> dict[str, Path]:
    """Organ mode's label map is an input too: never written over."""
    mask = getattr(args, "organ_mask", None)
    return {"the organ mask": Path(mask)} if mask else {}


def weights_file(spec: str | None) -> Path | None:
    """The checkpoint ``--weights`` names (``bundled.resolve_weights``: none is the bundled
    default, a bare name a bundled checkpoint, anything else a path). None for a name that is
    not bundled (loading then says which are)."""
    try:
        return resolve_weights(spec)
    except FileNotFoundError:
        return None


def _weights_inputs(weights: Path) -> tuple[dict[str, Path], dict[str, Any]]:
    """The files a checkpoint consists of (and the MAE it names), and its description.

    Read as plain JSON: loading, with its integrity checks, comes later; a missing or broken
    description only means fewer files to protect here.
    """
    base = weights.with_suffix("") if weights.suffix in (".json", ".safetensors") else weights
    files = {
        "the weights' description": _with(base, ".json"),
        "the weights' tensors": _with(base, ".safetensors"),
    }
    try:
        meta = json.loads(files["the weights' description"].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return files, {}
    if not isinstance(meta, dict):
        return files, {}
    mae = meta.get("mae")
    if isinstance(mae, str) and mae:
        mae_base = base.resolve().parent / re.sub(r"\.(json|safetensors)$", "", mae)
        files["the MAE weights' description"] = _with(mae_base, ".json")
        files["the MAE weights' tensors"] = _with(mae_base, ".safetensors")
    return files, meta


def _with(base: Path, suffix: str) -> Path:
    # not with_suffix: a stem such as "model.v2" has a dot of its own
    return base.parent / f"{base.name}{suffix}"
