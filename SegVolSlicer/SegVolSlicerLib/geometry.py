"""Voxel and patient coordinates: IJK <-> RAS, LPS <-> RAS, and the axis order the model expects.

Conventions (as in 3D Slicer):
- a volume is a numpy array indexed [k, j, i] (`slicer.util.arrayFromVolume` order); a point in voxel
  coordinates is written (i, j, k), so array axis `a` holds IJK component `2 - a`;
- `ijk_to_ras` is the 4x4 matrix taking homogeneous (i, j, k, 1) to patient RAS millimetres; its first three
  columns are the RAS directions of the i, j and k axes, scaled by the spacing;
- ITK, DICOM and Slicer's markups files use LPS: the same point with x and y negated.

SegVol was trained on axially stored CT in raw file order, so its (D, H, W) axes must be the patient's
(superior-inferior, anterior-posterior, left-right) axes. `ModelAxes` finds which array axis plays which
role. It only reorders axes, never flips them: the official pipeline never reorients, and training used
random flips, so the sign of an axis carries no meaning for the model while a permutation does.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .errors import InputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse


def as_matrix(ijk_to_ras) -> np.ndarray:
    """A validated 4x4 float64 IJK-to-RAS matrix."""
    matrix = np.asarray(ijk_to_ras, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise InputError(f"the IJK-to-RAS matrix must be a finite 4x4 matrix, got shape {matrix.shape}")
    if abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
        raise InputError("the IJK-to-RAS matrix is singular: the volume has a zero spacing or degenerate axes")
    return matrix


def transform_points(matrix: np.ndarray, points) -> np.ndarray:
    """Apply a 4x4 homogeneous matrix to (N,3) points (or one 3-vector)."""
    points = np.asarray(points, dtype=np.float64)
    flat = points.reshape(-1, 3)
    return (flat @ matrix[:3, :3].T + matrix[:3, 3]).reshape(points.shape)


def ijk_to_ras_points(ijk_to_ras, ijk) -> np.ndarray:
    return transform_points(as_matrix(ijk_to_ras), ijk)


def ras_to_ijk_points(ijk_to_ras, ras) -> np.ndarray:
    return transform_points(np.linalg.inv(as_matrix(ijk_to_ras)), ras)


def lps_to_ras_points(lps) -> np.ndarray:
    """LPS <-> RAS for points (the map is its own inverse)."""
    return transform_points(LPS_TO_RAS, lps)


ras_to_lps_points = lps_to_ras_points


@dataclass(frozen=True)
class ModelAxes:
    """Which array axis of a (K,J,I) volume becomes the model's D, H and W axis.

    `order[m]` is the array axis used as model axis m (0 = D: superior-inferior, 1 = H: anterior-posterior,
    2 = W: left-right). For an axially stored volume it is (0, 1, 2): the raw voxel order the official code
    uses.
    """

    order: tuple[int, int, int]

    @classmethod
    def from_ijk_to_ras(cls, ijk_to_ras) -> ModelAxes:
        directions = as_matrix(ijk_to_ras)[:3, :3]
        directions = np.abs(directions / np.linalg.norm(directions, axis=0))
        # alignment[m, a]: |cosine| between array axis a (IJK column 2-a) and the RAS axis of model axis m
        # (model D, H, W = RAS rows S, A, R = 2, 1, 0).
        alignment = directions[::-1, ::-1]
        identity = (0, 1, 2)
        best, best_score = identity, sum(alignment[m, identity[m]] for m in range(3))
        for order in itertools.permutations(range(3)):
            score = sum(alignment[m, order[m]] for m in range(3))
            if score > best_score + 1e-9:  # ties keep the raw order
                best, best_score = order, score
        return cls(tuple(int(a) for a in best))

    @property
    def is_identity(self) -> bool:
        return self.order == (0, 1, 2)

    def to_model(self, array: np.ndarray) -> np.ndarray:
        """(K,J,I)-ordered array -> (D,H,W)-ordered view."""
        return array.transpose(self.order)

    def from_model(self, array: np.ndarray) -> np.ndarray:
        """(D,H,W)-ordered array -> (K,J,I)-ordered view."""
        return array.transpose(np.argsort(self.order))

    def shape_to_model(self, shape_kji) -> tuple[int, int, int]:
        return tuple(int(shape_kji[a]) for a in self.order)

    def ijk_to_model(self, ijk) -> np.ndarray:
        """(N,3) IJK coordinates -> (N,3) model (d,h,w) coordinates of the same voxels."""
        kji = np.asarray(ijk, dtype=np.float64)[..., ::-1]
        return kji[..., list(self.order)]

    def model_to_ijk(self, dhw) -> np.ndarray:
        dhw = np.asarray(dhw, dtype=np.float64)
        kji = np.empty_like(dhw)
        kji[..., list(self.order)] = dhw
        return kji[..., ::-1]
