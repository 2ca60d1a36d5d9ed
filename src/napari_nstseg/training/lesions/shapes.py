"""Lesion shapes and their partial-volume profile on a scan's native grid.

Each lesion is a randomly rotated, slightly elongated ellipsoid whose radius is perturbed by a
low-frequency function of direction (irregular, still star shaped), scaled so that its
volume-equivalent diameter is the requested one in millimetres. Its profile is made on the
scan's native (possibly anisotropic) grid: the hard shape is sampled on a sub-voxel grid
(<= 0.5 mm), blurred by a Gaussian whose 10-90 % edge width is ``edge_softness_mm`` (default:
the in-plane spacing, like the scanner's own blur) and box-averaged back to the voxels, which
gives the partial-volume edge a real scan shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from napari_nstseg.training.lesions.config import LesionConfig

# Sub-voxel sampling step for the partial-volume profile, and the cap on sub-samples per axis.
_SUBSAMPLE_MM = 0.5
_MAX_SUBSAMPLES = 6
# 10-90 % width of a Gaussian-blurred step is 2.563 sigma.
EDGE_WIDTH_PER_SIGMA = 2.563


@dataclass
class LesionShape:
    """Irregular ellipsoid: radius(u) = R * axes * s(u), s a low-frequency field on the sphere."""

    radius_mm: float
    axes: np.ndarray  # (3,) relative semi-axes, product 1 (volume kept)
    rotation: np.ndarray  # (3, 3) columns are the lesion's principal axes in (z, y, x) mm
    directions: np.ndarray  # (K, 3)
    frequencies: np.ndarray  # (K,)
    phases: np.ndarray  # (K,)
    amplitude: float
    scale: float = 1.0  # divides s so the volume is that of the requested sphere
    max_s: float = 1.0  # bounds of s / scale: every surface point lies between them
    min_s: float = 1.0

    @classmethod
    def random(cls, rng: np.random.Generator, diameter_mm: float, config: LesionConfig):
        k = 6
        log_axes = rng.normal(0.0, config.elongation, 3)
        axes = np.exp(log_axes - log_axes.mean())
        directions = rng.normal(size=(k, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        shape = cls(
            radius_mm=diameter_mm / 2.0,
            axes=axes,
            rotation=Rotation.random(random_state=rng).as_matrix(),
            directions=directions,
            frequencies=rng.integers(1, 3, k).astype(float),
            phases=rng.uniform(0, 2 * np.pi, k),
            # cos of a random phase has variance 1/2: this makes the field's std `irregularity`.
            amplitude=config.irregularity / math.sqrt(k / 2.0),
        )
        s = shape._s(_fibonacci_sphere(2000))
        shape.scale = float(np.mean(s**3) ** (1.0 / 3.0))
        # 1 % margins: the sphere sampling can miss the field's extremes by a little
        shape.max_s = float(s.max() / shape.scale) * 1.01
        shape.min_s = float(s.min() / shape.scale) * 0.99
        return shape

    def _s(self, u: np.ndarray) -> np.ndarray:
        field_ = np.cos(np.pi * self.frequencies * (u @ self.directions.T) + self.phases)
        return np.maximum(1.0 + self.amplitude * field_.sum(axis=-1), 0.4)

    @property
    def extent_mm(self) -> float:
        """Largest distance from the centre to the surface."""
        return self.radius_mm * float(self.axes.max()) * self.max_s

    def inside(self, points_mm: np.ndarray) -> np.ndarray:
        q = (points_mm @ self.rotation) / (self.axes * self.radius_mm)
        rho = np.linalg.norm(q, axis=-1)
        inside = rho <= self.min_s
        # the direction field only matters in the band the surface can reach
        band = (rho > self.min_s) & (rho <= self.max_s)
        qb, rb = q[band], rho[band]
        inside[band] = rb <= self._s(qb / rb[:, None]) / self.scale
        return inside


def _fibonacci_sphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = np.pi * (1 + 5**0.5) * i
    r = np.sqrt(1 - z**2)
    return np.stack([z, r * np.cos(phi), r * np.sin(phi)], axis=1)


def lesion_profile(
    shape: LesionShape,
    centre_zyx: np.ndarray,
    box_lo: np.ndarray,
    box_shape: tuple[int, int, int],
    spacing_zyx: np.ndarray,
    sigma_mm: float,
) -> np.ndarray:
    """Partial-volume fraction (0..1) of the blurred lesion in each voxel of a box of the grid."""
    n_sub = np.clip(np.ceil(spacing_zyx / _SUBSAMPLE_MM), 1, _MAX_SUBSAMPLES).astype(int)
    coords = []
    for a in range(3):
        idx = box_lo[a] + np.arange(box_shape[a])
        offsets = (np.arange(n_sub[a]) + 0.5) / n_sub[a] - 0.5
        sub = (idx[:, None] + offsets[None, :]).ravel()
        coords.append((sub - centre_zyx[a]) * spacing_zyx[a])
    points = np.stack(np.meshgrid(*coords, indexing="ij"), axis=-1)
    fine = shape.inside(points).astype(np.float32)
    if sigma_mm > 0:
        fine = ndimage.gaussian_filter(fine, sigma_mm / (spacing_zyx / n_sub), mode="constant")
    split = fine.reshape(box_shape[0], n_sub[0], box_shape[1], n_sub[1], box_shape[2], n_sub[2])
    return np.clip(split.mean(axis=(1, 3, 5)), 0.0, 1.0)
