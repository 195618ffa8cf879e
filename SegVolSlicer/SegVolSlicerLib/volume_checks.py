"""Checks on a CT volume that need numpy only (no torch): every face runs them before the model does."""

from __future__ import annotations

import numpy as np

from .errors import InputError


def check_volume(volume: np.ndarray) -> np.ndarray:
    """The volume as a 3-D array, or an InputError saying what is wrong with it."""
    volume = np.asarray(volume)
    if volume.ndim > 3:
        raise InputError(
            f"the image has {volume.ndim} dimensions {volume.shape}: give a single 3-D CT volume "
            "(not a time series or a multi-component image)"
        )
    if volume.ndim < 3 or min(volume.shape) < 2:
        raise InputError(f"the image is 2-D {volume.shape}: SegVol needs a 3-D CT volume (several slices)")
    if not (
        np.issubdtype(volume.dtype, np.integer) or np.issubdtype(volume.dtype, np.floating) or volume.dtype == np.bool_
    ):
        raise InputError(f"the image voxels must be numbers, got {volume.dtype}")
    if np.issubdtype(volume.dtype, np.floating) and not np.all(np.isfinite(volume)):
        raise InputError("the image contains NaN or infinite voxels: fix or mask them before segmenting")
    if volume.min() == volume.max():  # ForegroundNormalization would find no voxel above the mean
        raise InputError("the image is constant (every voxel has the same value): nothing to segment")
    return volume
