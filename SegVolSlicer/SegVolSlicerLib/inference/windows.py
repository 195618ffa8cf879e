"""Stage 4a: the sliding-window plan over the ROI (official `sliding_window_inference`, MONAI's slicing).

Official behaviour: window 32x256x256, overlap 0.5 -> scan interval 16x128x128 (an axis exactly as long as
the window gets one window); an ROI axis shorter than the window is zero-padded symmetrically (floor half
before); window starts come from MONAI `dense_patch_slices` (the last window shifted back to end at the
border), in C order over (d, h, w); overlapping windows are averaged with constant weights.

A window's image content is fully described by where it sits in the crop and which part of it is real image
(the rest is padding), so that description is the key under which its embedding is cached: a later prompt
whose ROI puts a window at the same place reuses the encoder pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.data.utils import dense_patch_slices

from ..model.image_encoder import WINDOW_SIZE
from .roi import Roi

OVERLAP = 0.5


@dataclass(frozen=True)
class Window:
    index: int
    padded_start: tuple[int, int, int]  # in the padded ROI
    crop_offset: tuple[int, int, int]  # crop coordinate of the window's first voxel (may be < 0 in padding)
    valid_start: tuple[int, int, int]  # crop coordinates of the real image part: [valid_start, valid_stop)
    valid_stop: tuple[int, int, int]

    @property
    def padded_slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(s, s + w) for s, w in zip(self.padded_start, WINDOW_SIZE))

    @property
    def valid_in_window(self) -> tuple[slice, slice, slice]:
        """Where the real image part lies inside the window."""
        return tuple(slice(a - o, b - o) for a, b, o in zip(self.valid_start, self.valid_stop, self.crop_offset))

    @property
    def valid_in_crop(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.valid_start, self.valid_stop))

    @property
    def cache_key(self) -> tuple:
        return ("window", self.crop_offset, self.valid_start, self.valid_stop)

    def image(self, cropped_image: torch.Tensor) -> torch.Tensor:
        """The (1, 1, 32, 256, 256) model input: the crop's voxels, zero where the window is padding."""
        window = cropped_image.new_zeros(WINDOW_SIZE)
        window[self.valid_in_window] = cropped_image[self.valid_in_crop]
        return window[None, None]


def scan_interval(size: int, window: int) -> int:
    """Official `_get_scan_interval`: the window itself when the axis equals it, else window * (1 - overlap)."""
    if size == window:
        return window
    return max(int(window * (1 - OVERLAP)), 1)


@dataclass(frozen=True)
class WindowPlan:
    roi: Roi
    pad_before: tuple[int, int, int]
    padded_shape: tuple[int, int, int]
    windows: tuple[Window, ...]

    @classmethod
    def for_roi(cls, roi: Roi) -> WindowPlan:
        pad_before = tuple(max(w - s, 0) // 2 for s, w in zip(roi.shape, WINDOW_SIZE))
        padded_shape = tuple(max(s, w) for s, w in zip(roi.shape, WINDOW_SIZE))
        intervals = [scan_interval(s, w) for s, w in zip(padded_shape, WINDOW_SIZE)]
        windows = []
        for index, slices in enumerate(dense_patch_slices(padded_shape, WINDOW_SIZE, intervals)):
            start = tuple(int(s.start) for s in slices)
            offset = tuple(r + s - p for r, s, p in zip(roi.start, start, pad_before))
            valid_start = tuple(max(o, r) for o, r in zip(offset, roi.start))
            valid_stop = tuple(min(o + w, r) for o, w, r in zip(offset, WINDOW_SIZE, roi.stop))
            windows.append(Window(index, start, offset, valid_start, valid_stop))
        return cls(roi, pad_before, padded_shape, tuple(windows))

    def __len__(self) -> int:
        return len(self.windows)

    @property
    def unpadded_slices(self) -> tuple[slice, slice, slice]:
        """Where the ROI lies in the padded ROI."""
        return tuple(slice(p, p + s) for p, s in zip(self.pad_before, self.roi.shape))
