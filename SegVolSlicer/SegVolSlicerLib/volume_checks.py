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


# A CT spans air (about -1000 HU) to bone in thousands of distinct values; a label map holds a few small
# non-negative integers. Judged on a strided sample (about a million voxels): a large CT is 100 M voxels.
_LABELMAP_MAX_VALUES = 256
_SAMPLE_VOXELS = 1 << 20


def labelmap_warning(volume: np.ndarray) -> str | None:
    """A warning when the volume looks like a label map rather than a CT (integer values, few distinct ones,
    none negative: no HU range), else None."""
    volume = np.asarray(volume)
    step = max(1, round((volume.size / _SAMPLE_VOXELS) ** (1 / 3)))
    sample = volume[::step, ::step, ::step]
    if sample.min() < 0 or (np.issubdtype(sample.dtype, np.floating) and not np.array_equal(sample, np.rint(sample))):
        return None
    values = np.unique(sample)
    if len(values) > _LABELMAP_MAX_VALUES:
        return None
    shown = ", ".join(str(int(v)) for v in values[:8]) + (", ..." if len(values) > 8 else "")
    return (
        f"the image looks like a label map, not a CT: {len(values)} distinct integer values ({shown}), none "
        "negative (a CT has air near -1000 HU); SegVol expects the CT itself, and its statistics report "
        "intensities, not HU"
    )
