"""`nstseg predict` against a known answer, voxel for voxel, on every kind of file a user has.

A stand-in network replaces the trained one (through the checkpoint loader, so the real
command line, reader, engine and writers all run): it marks bright tissue on the display's
left half only, which volume.py defines as the patient's right. Each scan holds two bright
blobs placed in world (LPS) millimetres, one on the patient's right and one on the left, on
a background whose HU falls from right to left. So the known answer, worked out here from
the file's own voxel-to-world matrix and nothing of the product's, is:

- the mask is the right-hand blob exactly, on the file's own grid (a flipped, permuted or
  shifted display, an empty mask or a mask written back the wrong way round all differ);
- every map is a known function of the file's HU at the same voxel (a map flipped left-right
  differs everywhere, since the background is not symmetric).

The files: NIfTI stored LPS, RAS, sagittal (permuted) and oblique; MHA; NRRD; a DICOM series.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from napari_nstseg.cli import main
from napari_nstseg.models import SegOutput
from napari_nstseg.models.checkpoint import save_checkpoint
from napari_nstseg.preprocessing import PreprocessConfig

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

# The stand-in: logits = GAIN * (z-scored abdomen-window intensity - that of EDGE_HU).
GAIN = 2.0
EDGE_HU = 100.0
BLOB_HU = 200
# Display columns below SPLIT are the patient's right half of a DISPLAY_WIDTH-column slice.
DISPLAY_WIDTH = 40
SPLIT = DISPLAY_WIDTH // 2
# On the left half the stand-in sees intensities clipped to this HU: no tissue is bright there.
LEFT_CLIP_HU = 40.0

# Extent of each scan along the world axes L, P, S (mm) and voxel size along the index axis
# nearest each of them.
IN_PLANE_MM, SLICE_MM = 0.8, 2.0
WORLD_VOXELS = (DISPLAY_WIDTH, 36, 8)  # along x (L), y (P), z (S)
# Blobs as boxes in LPS mm: (centre, half size). Right: x < 0; left: x > 0.
RIGHT_BLOB = (np.array([-8.0, -3.0, 0.0]), np.array([3.3, 2.5, 3.5]))
LEFT_BLOB = (np.array([8.0, 2.0, 0.0]), np.array([2.5, 3.3, 3.5]))


def window_z(hu: np.ndarray) -> np.ndarray:
    """The abdomen window (400, 40) to [0, 1], then the fixed z-score, written out here."""
    return (np.clip((hu + 160.0) / 400.0, 0.0, 1.0) - 0.485) / 0.229


class RightSideBrightModel(nn.Module):
    """Marks bright tissue in display columns < SPLIT; maps are fixed functions of the logits."""

    def __init__(self) -> None:
        super().__init__()
        self.edge = float(window_z(np.array(EDGE_HU)))
        self.left_clip = float(window_z(np.array(LEFT_CLIP_HU)))
        self.anchor = nn.Parameter(torch.zeros(1))  # so .to(device) has something to move

    def forward(self, x, residual=None, return_scale_weights=False) -> SegOutput:
        right = torch.arange(x.shape[-1], device=x.device) < SPLIT
        seen = torch.where(right, x, x.clamp(max=self.left_clip))
        logits = GAIN * (seen - self.edge) + self.anchor
        weights = None
        if return_scale_weights:
            weights = [torch.softmax(torch.cat([logits, torch.zeros_like(logits)], 1), dim=1)]
        return SegOutput(
            coarse=0.5 * logits, stages=[0.5 * logits, logits], final=logits, scale_weights=weights
        )


def expected_logits(hu_ijk: np.ndarray, right_ijk: np.ndarray) -> np.ndarray:
    """What the stand-in gives each voxel, from its HU and on which side of the patient it is."""
    seen = np.where(right_ijk, window_z(hu_ijk), window_z(np.minimum(hu_ijk, LEFT_CLIP_HU)))
    return GAIN * (seen - window_z(np.array(EDGE_HU)))


def sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


# -- scans ---------------------------------------------------------------------------------------


def rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [n for n in range(3) if n != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


# Unit direction (LPS) of the source index axes i, j, k, as columns.
ORIENTATIONS = {
    "lps": np.eye(3),  # DICOM / ITK: i towards L, j towards P, k towards S
    "ras": np.diag([-1.0, -1.0, 1.0]),  # nibabel's usual: i towards R, j towards A
    "flipped": np.diag([-1.0, 1.0, -1.0]),  # columns right to left, slices top down
    "sagittal": np.array([[0.0, 0, 1], [0, -1, 0], [1, 0, 0]]),  # i towards S, k towards L
    # gantry tilt and in-plane rotation on a permuted acquisition
    "oblique": rotation(2, 8.0) @ rotation(0, 12.0) @ np.array([[0.0, 1, 0], [1, 0, 0], [0, 0, 1]]),
}


def scan(directions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(HU int16 (i, j, k), index -> LPS 4x4, right-blob mask, patient-right-half mask).

    The grid is centred on the world origin; each index axis gets the voxel count and size of
    the world axis it points nearest to."""
    nearest = np.abs(directions).argmax(axis=0)  # world axis of each index axis
    shape = tuple(WORLD_VOXELS[w] for w in nearest)
    spacing = np.array([SLICE_MM if w == 2 else IN_PLANE_MM for w in nearest])
    m = np.eye(4)
    m[:3, :3] = directions @ np.diag(spacing)
    m[:3, 3] = -m[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    world = idx @ m[:3, :3].T + m[:3, 3]  # (i, j, k, 3) LPS mm of each voxel centre
    x, y = world[..., 0], world[..., 1]
    # background from 40 HU (patient right) down to about -75 HU (left), with a gentle y slope
    hu = 40.0 - 3.2 * (x + 16.0) - 0.5 * np.abs(y)
    inside = {}
    for name, (centre, half) in (("right", RIGHT_BLOB), ("left", LEFT_BLOB)):
        inside[name] = (np.abs(world - centre) <= half).all(axis=-1)
        hu[inside[name]] = BLOB_HU
    assert inside["right"].sum() > 50 and inside["left"].sum() > 50
    # which display half a voxel lies in: its index along the axis nearest L, as volume.py shows
    x_axis = int(np.flatnonzero(nearest == 0)[0])
    column = idx[..., x_axis]
    if directions[0, x_axis] < 0:
        column = shape[x_axis] - 1 - column
    right_half = column < SPLIT
    # the blobs are well inside their halves, whatever the tilt
    assert right_half[inside["right"]].all() and not right_half[inside["left"]].any()
    assert (right_half == (x < 0))[np.abs(x) > 2.0].all()
    return np.round(hu).astype(np.int16), m, inside["right"], right_half


def write_nifti(path: Path, hu: np.ndarray, m: np.ndarray) -> Path:
    affine = RAS_TO_LPS @ m
    img = nib.Nifti1Image(hu, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


def itk_image(hu: np.ndarray, m: np.ndarray) -> sitk.Image:
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    img = sitk.GetImageFromArray(np.ascontiguousarray(hu.T))
    img.SetSpacing(spacing.tolist())
    img.SetOrigin(m[:3, 3].tolist())
    img.SetDirection((m[:3, :3] / spacing).ravel().tolist())
    return img


def write_itk(path: Path, hu: np.ndarray, m: np.ndarray) -> Path:
    sitk.WriteImage(itk_image(hu, m), str(path))
    return path


def write_dicom(folder: Path, hu: np.ndarray, m: np.ndarray) -> Path:
    """One CT slice per file (axial, k towards S), the tags a scanner writes; files named in
    reverse slice order so that the reader must sort by position."""
    assert np.allclose(m[:3, :3] / np.linalg.norm(m[:3, :3], axis=0), np.eye(3))
    folder.mkdir()
    volume = itk_image(hu, m)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series = "1.2.826.0.1.3680043.2.1125.7.24"
    spacing = volume.GetSpacing()
    n = hu.shape[2]
    for k in range(n):
        image = volume[:, :, k]
        position = volume.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series}.{k + 1}",
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.7",
            "0020|000e": series,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0018|0050": f"{spacing[2]:g}",
            "0028|1052": "0",
            "0028|1053": "1",
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice_{n - k:03d}.dcm"))
        writer.Execute(image)
    return folder


def read_plain(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(array in the file's index order i, j, k; index -> LPS) with nibabel or SimpleITK alone."""
    if path.name.endswith((".nii", ".nii.gz")):
        img = nib.load(str(path))
        return np.asanyarray(img.dataobj), RAS_TO_LPS @ img.affine
    img = sitk.ReadImage(str(path))
    m = np.eye(4)
    m[:3, :3] = np.asarray(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing())
    m[:3, 3] = img.GetOrigin()
    return sitk.GetArrayFromImage(img).T, m


# (case, orientation, how the scan is written, mask/map suffix)
CASES = [
    ("nifti-lps", "lps", "nifti", ".nii.gz"),
    ("nifti-ras", "ras", "nifti", ".nii.gz"),
    ("nifti-sagittal", "sagittal", "nifti", ".nii"),
    ("nifti-oblique", "oblique", "nifti", ".nii.gz"),
    ("mha-flipped", "flipped", "mha", ".mha"),
    ("nrrd-oblique", "oblique", "nrrd", ".nrrd"),
    ("dicom-lps", "lps", "dicom", ".nii.gz"),
]


def write_scan(folder: Path, kind: str, hu: np.ndarray, m: np.ndarray) -> Path:
    if kind == "nifti":
        return write_nifti(folder / "scan.nii.gz", hu, m)
    if kind == "dicom":
        return write_dicom(folder / "series", hu, m)
    return write_itk(folder / f"scan.{kind}", hu, m)


# -- the stand-in behind the real command --------------------------------------------------------


@pytest.fixture(scope="module")
def stand_in_weights(tmp_path_factory, tiny_model):
    """A real checkpoint file (its JSON drives the run: no resampling, the default window) whose
    network the loader hands over as the stand-in."""
    from model_helpers import TINY_CDI

    folder = tmp_path_factory.mktemp("stand_in")
    prep = PreprocessConfig(working_spacing_mm=None).to_dict()
    save_checkpoint(folder / "seg", tiny_model, TINY_CDI.to_dict(), prep, {"note": "stand-in"})
    return folder / "seg.json"


@pytest.fixture
def stand_in(monkeypatch, stand_in_weights):
    from napari_nstseg.models import checkpoint

    real_load = checkpoint.load_checkpoint

    def load(path, build_fn=None):
        _, meta = real_load(path, build_fn)
        return RightSideBrightModel().eval(), meta

    monkeypatch.setattr(checkpoint, "load_checkpoint", load)
    return stand_in_weights


@pytest.mark.parametrize("case,orientation,kind,suffix", CASES, ids=[c[0] for c in CASES])
def test_predict_writes_the_known_mask_and_maps_on_the_files_own_grid(
    tmp_path, stand_in, case, orientation, kind, suffix, capsys
):
    hu, m, right_blob, right_half = scan(ORIENTATIONS[orientation])
    ct_path = write_scan(tmp_path, kind, hu, m)
    out = tmp_path / "out" / f"mask{suffix}"
    maps = tmp_path / "maps"
    argv = ["predict", str(ct_path), str(out), "--weights", str(stand_in), "--device", "cpu",
            "--threshold", "0.5", "--maps", str(maps)]  # fmt: skip
    assert main(argv) == 0
    assert "1 lesion(s) found" in capsys.readouterr().out

    mask, mask_m = read_plain(out)
    np.testing.assert_allclose(mask_m, m, atol=1e-4)
    assert mask.shape == hu.shape
    wrong = np.argwhere((mask != 0) != right_blob)
    assert len(wrong) == 0, (
        f"{case}: {len(wrong)} voxels differ from the known lesion (first {wrong[:3].tolist()}); "
        f"{int((mask != 0).sum())} marked, {int(right_blob.sum())} expected"
    )

    logits = expected_logits(hu.astype(np.float64), right_half)
    stem = "series" if kind == "dicom" else "scan"
    expected = {
        "final_probability": sigmoid(logits),
        "glm_coarse": sigmoid(0.5 * logits),
        "lfm_stage1": sigmoid(0.5 * logits),
        "lfm_stage2": sigmoid(logits),
        "sfm_weights_0": sigmoid(logits),
        "sfm_weights_1": 1.0 - sigmoid(logits),
    }
    assert sorted(p.name for p in maps.iterdir()) == sorted(f"{stem}_{n}{suffix}" for n in expected)
    for name, want in expected.items():
        values, map_m = read_plain(maps / f"{stem}_{name}{suffix}")
        np.testing.assert_allclose(map_m, m, atol=1e-4)
        # uint8 storage: within half a step of 1/255, plus rounding
        np.testing.assert_allclose(values, want, atol=0.6 / 255, err_msg=f"{case}: {name}")
