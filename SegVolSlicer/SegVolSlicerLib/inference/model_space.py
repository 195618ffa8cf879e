"""Coordinates between the volume, the foreground crop and the 32x256x256 zoom-out grid.

Spaces, all in model axis order (d, h, w) except IJK:
  IJK       voxel (i, j, k) of the input volume;
  full      (d, h, w) voxel of the input volume, axes permuted by ModelAxes (no flip);
  crop      full minus the crop start: the native-resolution image the zoom-in windows run on;
  zoom-out  voxel of the 32x256x256 image the zoom-out pass sees.

The official pipeline goes crop -> zoom-out with nearest-exact (zoom-out voxel z shows crop voxel
floor((z + 0.5) * n / N)) and comes back with legacy nearest (crop voxel c takes zoom-out voxel
floor(c * N / n)). Both index maps are computed here with the same torch operation the official code uses,
so they are exact. Continuous coordinates (clicks) use the centre-aligned affine map of nearest-exact:
z = (c + 0.5) * N / n - 0.5, whose inverse is exact.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F

from ..model.image_encoder import WINDOW_SIZE
from .preprocess import PreparedVolume


def _source_indices(source_size: int, target_size: int, mode: str) -> np.ndarray:
    """For each target index, the source index torch's nearest(-exact) interpolation copies."""
    ramp = torch.arange(source_size, dtype=torch.float64)[None, None]
    return F.interpolate(ramp, size=target_size, mode=mode)[0, 0].numpy().astype(np.int64)


class ModelSpace:
    def __init__(self, prepared: PreparedVolume):
        self.axes = prepared.axes
        self.shape_kji = prepared.shape_kji
        self.crop_start = np.asarray(prepared.crop_start, dtype=np.float64)
        self.cropped_shape = prepared.cropped_shape
        self.scale = np.asarray(WINDOW_SIZE, dtype=np.float64) / np.asarray(self.cropped_shape, dtype=np.float64)

    # --- index maps (exact, as the official interpolations) ---

    @cached_property
    def zoom_out_source(self) -> tuple[np.ndarray, ...]:
        """Per axis, the crop index each zoom-out index shows (nearest-exact down-sampling)."""
        return tuple(_source_indices(n, w, "nearest-exact") for n, w in zip(self.cropped_shape, WINDOW_SIZE))

    @cached_property
    def upsample_source(self) -> tuple[np.ndarray, ...]:
        """Per axis, the zoom-out index each crop index takes (legacy nearest up-sampling)."""
        return tuple(_source_indices(w, n, "nearest") for n, w in zip(self.cropped_shape, WINDOW_SIZE))

    # --- continuous coordinates ---

    def ijk_to_crop(self, ijk) -> np.ndarray:
        return self.axes.ijk_to_model(ijk) - self.crop_start

    def crop_to_ijk(self, crop) -> np.ndarray:
        return self.axes.model_to_ijk(np.asarray(crop, dtype=np.float64) + self.crop_start)

    def crop_to_zoom_out(self, crop) -> np.ndarray:
        return (np.asarray(crop, dtype=np.float64) + 0.5) * self.scale - 0.5

    def zoom_out_to_crop(self, zoom_out) -> np.ndarray:
        return (np.asarray(zoom_out, dtype=np.float64) + 0.5) / self.scale - 0.5

    def ijk_to_zoom_out(self, ijk) -> np.ndarray:
        return self.crop_to_zoom_out(self.ijk_to_crop(ijk))

    def zoom_out_to_ijk(self, zoom_out) -> np.ndarray:
        return self.crop_to_ijk(self.zoom_out_to_crop(zoom_out))

    def contains_crop(self, crop) -> np.ndarray:
        """Which (N,3) crop coordinates fall on a crop voxel."""
        crop = np.asarray(crop, dtype=np.float64).reshape(-1, 3)
        return np.all((crop >= -0.5) & (crop < np.asarray(self.cropped_shape) - 0.5), axis=1)

    # --- boxes (inclusive integer indices) ---

    def crop_box_to_zoom_out(self, low, high) -> tuple[np.ndarray, np.ndarray]:
        """The zoom-out voxels that show a crop voxel inside [low, high]; a box thinner than the zoom-out
        sampling along an axis keeps the zoom-out voxel nearest to its middle."""
        zoom_low, zoom_high = np.zeros(3, np.int64), np.zeros(3, np.int64)
        for axis, source in enumerate(self.zoom_out_source):
            inside = np.flatnonzero((source >= low[axis]) & (source <= high[axis]))
            if inside.size:
                zoom_low[axis], zoom_high[axis] = inside[0], inside[-1]
            else:
                middle = (low[axis] + high[axis]) / 2.0
                nearest = int(np.clip(np.rint((middle + 0.5) * self.scale[axis] - 0.5), 0, WINDOW_SIZE[axis] - 1))
                zoom_low[axis] = zoom_high[axis] = nearest
        return zoom_low, zoom_high

    def zoom_out_interval_to_crop(self, axis: int, low: int, high: int) -> tuple[int, int] | None:
        """The crop indices whose up-sampled value comes from zoom-out indices [low, high] (None if none)."""
        inside = np.flatnonzero((self.upsample_source[axis] >= low) & (self.upsample_source[axis] <= high))
        return (int(inside[0]), int(inside[-1])) if inside.size else None
