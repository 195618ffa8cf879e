"""Stage 3: the zoom-in region of interest from the zoom-out mask (official `logits2roi_coor`).

Official rule, on the zoom-out logits nearest-up-sampled to the crop: take the bounding box of every voxel
with sigmoid > 0.5 (no connected components); per axis, if it is shorter than the window, widen both sides
by (window - extent) // 2; clamp the minimum to 0 and the maximum to the size (not size - 1: kept for parity;
the `[min:max + 1]` crop then simply ends at the border). Computed here on the 32x256x256 mask through the
exact up-sampling index maps, without materialising the up-sampled logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..model.image_encoder import WINDOW_SIZE
from .model_space import ModelSpace


@dataclass(frozen=True)
class Roi:
    """The zoom-in region in crop coordinates: [start, stop) per axis."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.start, self.stop))

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))


def upsampled_extent(zoom_out_mask: np.ndarray, space: ModelSpace) -> tuple[np.ndarray, np.ndarray] | None:
    """Min and max crop index, per axis, of the positive voxels of the nearest-up-sampled zoom-out mask."""
    sources = space.upsample_source
    taken = [np.unique(source) for source in sources]  # per axis, the zoom-out indices some crop index takes
    reached = zoom_out_mask[np.ix_(*taken)]
    if not reached.any():
        return None
    low, high = np.zeros(3, np.int64), np.zeros(3, np.int64)
    for axis, source in enumerate(sources):
        others = tuple(a for a in range(3) if a != axis)
        positive_rows = np.flatnonzero(reached.any(axis=others))
        positive = np.isin(source, taken[axis][positive_rows])
        hits = np.flatnonzero(positive)
        low[axis], high[axis] = hits[0], hits[-1]
    return low, high


def roi_from_zoom_out(zoom_out_mask: np.ndarray, space: ModelSpace) -> Roi | None:
    """The official zoom-in ROI, or None when the zoom-out mask is empty ("Fail to detect foreground")."""
    extent = upsampled_extent(zoom_out_mask, space)
    if extent is None:
        return None
    low, high = extent
    start, stop = [], []
    for axis in range(3):
        padding = max(0, WINDOW_SIZE[axis] - int(high[axis] - low[axis] + 1))
        size = space.cropped_shape[axis]
        start.append(max(0, int(low[axis]) - padding // 2))
        # Official: max clamped to the size, then `[min:max + 1]`, which slicing ends at the border.
        stop.append(min(size, int(high[axis]) + padding // 2 + 1))
    return Roi(tuple(start), tuple(stop))
