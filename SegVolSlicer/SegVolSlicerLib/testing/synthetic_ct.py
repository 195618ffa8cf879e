"""A small, deterministic synthetic abdominal CT with organ labels, and a synthetic model input.

The CT exercises everything a real scan would: an oblique, LPS-flipped IJK-to-RAS matrix (as DICOM volumes
have in Slicer), anisotropic spacing with the slice axis thickest, air around the body (so foreground
cropping does something), and organs placed anatomically (liver on the patient's right, spleen on the left)
so that left/right mix-ups show. It is small (48 x 160 x 192 voxels) so the official zoom-in needs few windows.
Arrays are in `slicer.util.arrayFromVolume` order (K, J, I), K being the slice axis.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..geometry import LPS_TO_RAS

SHAPE_KJI = (48, 160, 192)
SPACING_IJK = (0.8, 0.8, 2.5)  # mm along i, j, k
LABEL_NAMES = {1: "liver", 2: "spleen", 3: "left kidney", 4: "right kidney", 5: "aorta"}

# HU of each tissue; organs differ so that intensity alone tells them apart.
_HU = {
    "air": -1000,
    "fat": -100,
    "muscle": 40,
    "bone": 400,
    "cortical bone": 900,
    "liver": 60,
    "spleen": 45,
    "left kidney": 150,
    "right kidney": 140,
    "aorta": 250,
}
_NOISE_HU = 12.0


@dataclass
class SyntheticCT:
    volume: np.ndarray  # (K, J, I) int16 HU
    labels: np.ndarray  # (K, J, I) uint8, values are keys of label_names (0 = background)
    ijk_to_ras: np.ndarray  # (4, 4) float64
    label_names: dict[int, str] = field(default_factory=lambda: dict(LABEL_NAMES))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along (i, j, k) in mm."""
        return tuple(float(s) for s in np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0))


def _rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    a, b = [n for n in range(3) if n != axis]
    r = np.eye(3)
    r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


def synthetic_ijk_to_ras() -> np.ndarray:
    """LPS-like axes (i toward patient left, j toward posterior, k toward superior), tilted a few degrees."""
    lps_axes = np.diag([-1.0, -1.0, 1.0])  # columns: directions of i, j, k in RAS
    oblique = _rotation(2, 4.0) @ _rotation(0, 3.0)  # 4 deg about S-I, 3 deg about R-L
    matrix = np.eye(4)
    matrix[:3, :3] = oblique @ lps_axes @ np.diag(SPACING_IJK)
    matrix[:3, 3] = (62.5, 48.0, -310.0)  # an arbitrary scanner origin (RAS of voxel 0,0,0)
    return matrix


def _ellipsoid(grid, centre, semi_axes):
    """Voxels inside an axis-aligned ellipsoid; centre and semi-axes in (k, j, i) voxels."""
    return sum(((g - c) / a) ** 2 for g, c, a in zip(grid, centre, semi_axes)) <= 1.0


def make_synthetic_ct(seed: int = 0) -> SyntheticCT:
    """The synthetic CT; `seed` only changes the noise, never the anatomy."""
    n_k, n_j, n_i = SHAPE_KJI
    k, j, i = np.meshgrid(np.arange(n_k), np.arange(n_j), np.arange(n_i), indexing="ij", sparse=True)
    cj, ci = (n_j - 1) / 2, (n_i - 1) / 2
    # Low i is the patient's right, low j anterior, low k inferior (see synthetic_ijk_to_ras).
    right, left = -1.0, 1.0

    volume = np.full(SHAPE_KJI, _HU["air"], dtype=np.float32)
    labels = np.zeros(SHAPE_KJI, dtype=np.uint8)

    def every_slice(in_plane):
        return np.broadcast_to(in_plane, SHAPE_KJI)

    body = every_slice(_ellipsoid((j, i), (cj, ci), (0.40 * n_j, 0.46 * n_i)))
    inner = every_slice(_ellipsoid((j, i), (cj, ci), (0.40 * n_j - 9, 0.46 * n_i - 9)))
    volume[body] = _HU["fat"]
    volume[inner] = _HU["muscle"]

    spine_centre = (cj + 0.26 * n_j, ci)
    volume[every_slice(_ellipsoid((j, i), spine_centre, (13, 13)))] = _HU["cortical bone"]
    volume[every_slice(_ellipsoid((j, i), spine_centre, (10, 10)))] = _HU["bone"]

    organs = {  # label -> (centre (k, j, i), semi-axes (k, j, i)) in voxels
        1: ((27, cj - 0.04 * n_j, ci + right * 0.22 * n_i), (15, 34, 36)),
        2: ((31, cj + 0.10 * n_j, ci + left * 0.26 * n_i), (8, 20, 13)),
        3: ((17, cj + 0.19 * n_j, ci + left * 0.19 * n_i), (8, 14, 9)),
        4: ((13, cj + 0.19 * n_j, ci + right * 0.19 * n_i), (8, 14, 9)),
    }
    for label, (centre, semi_axes) in organs.items():
        inside = _ellipsoid((k, j, i), centre, semi_axes) & inner
        volume[inside] = _HU[LABEL_NAMES[label]]
        labels[inside] = label
    aorta = _ellipsoid((j, i), (cj + 0.09 * n_j, ci + left * 0.05 * n_i), (6.5, 6.5)) & (
        k >= 4
    )  # ends above the bifurcation
    volume[aorta] = _HU["aorta"]
    labels[aorta] = 5

    rng = np.random.default_rng(seed)
    volume += rng.normal(0.0, _NOISE_HU, SHAPE_KJI).astype(np.float32)
    return SyntheticCT(volume=np.round(volume).astype(np.int16), labels=labels, ijk_to_ras=synthetic_ijk_to_ras())


def _write_image(array_kji: np.ndarray, ijk_to_ras: np.ndarray, path: Path) -> None:
    import SimpleITK as sitk

    from ..files import atomic_output

    image = sitk.GetImageFromArray(array_kji)  # numpy (K, J, I) -> ITK index (i, j, k)
    ijk_to_lps = (LPS_TO_RAS @ ijk_to_ras)[:3]  # ITK physical space is LPS
    spacing = np.linalg.norm(ijk_to_lps[:, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((ijk_to_lps[:, :3] / spacing).flatten().tolist())
    image.SetOrigin(ijk_to_lps[:, 3].tolist())
    with atomic_output(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)


def write_ct(ct: SyntheticCT, image_path: str | os.PathLike, label_path: str | os.PathLike | None = None) -> None:
    """Write the CT (and optionally its labels) with the true geometry, in any format ITK writes (.nii.gz, .nrrd)."""
    _write_image(ct.volume, ct.ijk_to_ras, Path(image_path))
    if label_path is not None:
        _write_image(ct.labels, ct.ijk_to_ras, Path(label_path))


def model_input_image(seed: int = 0) -> torch.Tensor:
    """A deterministic (1, 1, 32, 256, 256) float32 image in [0, 1] for model-level goldens.

    Smooth structure (a few Gaussian blobs on a slow gradient) plus noise: the encoder sees texture and edges
    rather than pure noise, and the values never depend on torch's global random state.
    """
    rng = np.random.default_rng(seed)
    d, h, w = np.meshgrid(
        np.linspace(0, 1, 32), np.linspace(0, 1, 256), np.linspace(0, 1, 256), indexing="ij", sparse=True
    )
    image = 0.3 * d + 0.2 * np.sin(2 * np.pi * h) * np.cos(3 * np.pi * w)
    for centre, width, amplitude in zip(
        rng.uniform(0.2, 0.8, (6, 3)), rng.uniform(0.05, 0.2, 6), rng.uniform(-1, 1, 6)
    ):
        image = image + amplitude * np.exp(
            -((d - centre[0]) ** 2 + (h - centre[1]) ** 2 + (w - centre[2]) ** 2) / (2 * width**2)
        )
    image = image + 0.05 * rng.standard_normal(image.shape)
    image = (image - image.min()) / (image.max() - image.min())
    return torch.from_numpy(image.astype(np.float32)).reshape(1, 1, 32, 256, 256)
