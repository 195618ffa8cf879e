"""Stage 1: volume -> normalised, foreground-cropped image in model axis order, plus its zoom-out copy.

The official steps (data_process/demo_data_process.py; the Hugging Face port's SegVolProcessor):
  ForegroundNormalization: threshold = mean of all voxels; clip to the 0.05th/99.95th percentiles of the
    voxels above it; subtract their mean, divide by their std (>= 1e-8);
  DimTranspose + MinMaxNormalization: subtract the min, divide by the max (>= 1e-8) -> [0, 1];
  CropForegroundd: keep the bounding box of the voxels > 0;
  Resized(32, 256, 256, 'nearest-exact'): the zoom-out image.
The arithmetic is done in float32 with the same numpy operations, in the same order, as the official code
(which loads images as float32 through MONAI), so the normalised values are bit-identical. Only the mean and
std depend on summation order; they are taken over the voxels in the official (i, j, k) C order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms.utils import generate_spatial_bounding_box

from ..errors import InputError
from ..geometry import ModelAxes, as_matrix
from ..model.image_encoder import WINDOW_SIZE
from ..volume_checks import check_volume

# Integer volumes with at most this many distinct possible values are normalised through a lookup table:
# the same float32 operations per value, without full-volume float temporaries.
_MAX_LOOKUP_VALUES = 1 << 20


def _z_score(values, lower, upper, mean, std):
    """ForegroundNormalization's arithmetic (float32 in, float32 out, numpy's operation order)."""
    return (np.clip(values, lower, upper) - mean) / max(std, 1e-8)


@dataclass(frozen=True)
class IntensityStatistics:
    """The foreground statistics of ForegroundNormalization, and the min/max of the z-scored volume."""

    lower: np.float32
    upper: np.float32
    mean: np.float32
    std: np.float32
    z_min: np.float32
    z_range: np.float32

    def z_score(self, values: np.ndarray) -> np.ndarray:
        return _z_score(values, self.lower, self.upper, self.mean, self.std)

    def normalise(self, values: np.ndarray) -> np.ndarray:
        """float32 values -> the official [0, 1] image values."""
        return (self.z_score(values) - self.z_min) / self.z_range


def intensity_statistics(volume_dhw: np.ndarray) -> IntensityStatistics:
    # The official code flattens the (i, j, k) array; float32 pairwise sums depend on that order.
    flat = volume_dhw.transpose(2, 1, 0).astype(np.float32, order="C").ravel()
    threshold = np.mean(flat)
    foreground = flat[flat > threshold]  # not empty: check_volume refused constant volumes
    # Two separate calls: a list of percentiles would come back as float64 and change the arithmetic.
    upper = np.percentile(foreground, 99.95)
    lower = np.percentile(foreground, 0.05)
    mean, std = np.mean(foreground), np.std(foreground)
    # Correctly rounded operations are monotonic, so the z-scored extremes are those of the extreme voxels.
    extremes = _z_score(np.array([flat.min(), flat.max()], dtype=np.float32), lower, upper, mean, std)
    z_range = np.clip(extremes[1] - extremes[0], a_min=1e-8, a_max=None)
    return IntensityStatistics(lower, upper, mean, std, extremes[0], z_range)


class _Normaliser:
    """Applies the statistics to any part of the volume; integer volumes go through a lookup table."""

    def __init__(self, volume_dhw: np.ndarray, stats: IntensityStatistics):
        self.volume, self.stats, self.table, self.offset = volume_dhw, stats, None, 0
        if np.issubdtype(volume_dhw.dtype, np.integer) or volume_dhw.dtype == np.bool_:
            low, high = int(volume_dhw.min()), int(volume_dhw.max())
            if high - low < _MAX_LOOKUP_VALUES:
                values = np.arange(low, high + 1, dtype=np.int64).astype(np.float32)
                self.table, self.offset = stats.normalise(values).astype(np.float32), low

    def _table_index(self, values: np.ndarray) -> np.ndarray:
        return np.subtract(values, self.offset, dtype=np.int32)

    def __call__(self, region: tuple[slice, ...] = (slice(None),) * 3) -> np.ndarray:
        values = self.volume[region]
        if self.table is not None:
            return self.table[self._table_index(values)]
        return self.stats.normalise(values.astype(np.float32)).astype(np.float32)

    def foreground(self) -> np.ndarray:
        if self.table is not None:
            return (self.table > 0)[self._table_index(self.volume)]
        return self() > 0


@dataclass
class PreparedVolume:
    """The volume as the model sees it.

    image: (D', H', W') float32 normalised foreground crop, model axis order (CPU tensor).
    zoom_out_image: (1, 1, 32, 256, 256) nearest-exact resize of `image`.
    crop_start / crop_stop: the crop in the full model-ordered grid (D, H, W) of the volume.
    """

    axes: ModelAxes
    shape_kji: tuple[int, int, int]
    crop_start: tuple[int, int, int]
    crop_stop: tuple[int, int, int]
    image: torch.Tensor
    zoom_out_image: torch.Tensor
    statistics: IntensityStatistics

    @property
    def model_shape(self) -> tuple[int, int, int]:
        return self.axes.shape_to_model(self.shape_kji)

    @property
    def cropped_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.image.shape)

    @property
    def crop_slices_kji(self) -> tuple[slice, slice, slice]:
        """The crop as slices of the input (K, J, I) array."""
        by_model_axis = [slice(a, b) for a, b in zip(self.crop_start, self.crop_stop)]
        slices = [slice(None)] * 3
        for model_axis, array_axis in enumerate(self.axes.order):
            slices[array_axis] = by_model_axis[model_axis]
        return tuple(slices)

    def crop_kji(self, array_kji: np.ndarray) -> np.ndarray:
        """Any array on the input grid -> its crop, in model axis order."""
        return self.axes.to_model(array_kji[self.crop_slices_kji])

    def paste_kji(self, cropped_dhw: np.ndarray) -> np.ndarray:
        """A cropped (D', H', W') array -> the input (K, J, I) grid, zero outside the crop."""
        full = np.zeros(self.shape_kji, dtype=cropped_dhw.dtype)
        full[self.crop_slices_kji] = self.axes.from_model(cropped_dhw)  # no full-volume transposed copy
        return full


def resize_nearest_exact(image: torch.Tensor, size=WINDOW_SIZE) -> torch.Tensor:
    """(D', H', W') -> (1, 1, *size), as MONAI Resized(mode='nearest-exact') does it (a torch interpolate)."""
    return F.interpolate(image[None, None], size=tuple(size), mode="nearest-exact")


def prepare_volume(volume_kji: np.ndarray, ijk_to_ras) -> PreparedVolume:
    """Stage 1 for a volume in Slicer's (K, J, I) order with its IJK-to-RAS matrix."""
    volume_kji = check_volume(volume_kji)
    axes = ModelAxes.from_ijk_to_ras(as_matrix(ijk_to_ras))
    volume_dhw = axes.to_model(volume_kji)
    stats = intensity_statistics(volume_dhw)
    normaliser = _Normaliser(volume_dhw, stats)
    start, stop = generate_spatial_bounding_box(normaliser.foreground()[None])
    if any(b <= a for a, b in zip(start, stop)):
        raise InputError(
            "the image has no intensity contrast inside the body after normalisation: it does not look like a CT volume"
        )
    crop = tuple(slice(a, b) for a, b in zip(start, stop))
    image = torch.from_numpy(np.ascontiguousarray(normaliser(crop)))
    return PreparedVolume(
        axes=axes,
        shape_kji=tuple(int(s) for s in volume_kji.shape),
        crop_start=tuple(int(a) for a in start),
        crop_stop=tuple(int(b) for b in stop),
        image=image,
        zoom_out_image=resize_nearest_exact(image),
        statistics=stats,
    )
