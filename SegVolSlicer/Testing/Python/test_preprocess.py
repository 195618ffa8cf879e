"""Stage 1: foreground normalisation, foreground crop and the zoom-out image (spec section 7)."""

import numpy as np
import pytest
from test_geometry import permuted_geometry

from SegVolSlicerLib.errors import InputError
from SegVolSlicerLib.inference.preprocess import intensity_statistics, prepare_volume
from SegVolSlicerLib.model.image_encoder import WINDOW_SIZE


def spec_normalisation(volume_dhw):
    """Spec 7.1 steps 3 and 5 in plain numpy, float32 as MONAI loads images, voxels in (i, j, k) order."""
    values = volume_dhw.transpose(2, 1, 0).astype(np.float32).flatten()
    above = values[values > values.mean()]
    low, high = np.percentile(above, 0.05), np.percentile(above, 99.95)
    z = (np.clip(volume_dhw.astype(np.float32), low, high) - above.mean()) / max(above.std(), 1e-8)
    z = z - z.min()
    return z / np.clip(z.max(), 1e-8, None)


def test_normalised_crop_matches_the_spec_bit_for_bit(ct):
    prepared = prepare_volume(ct.volume, ct.ijk_to_ras)
    expected = spec_normalisation(ct.volume)
    foreground = np.argwhere(expected > 0)
    start, stop = foreground.min(0), foreground.max(0) + 1
    assert prepared.crop_start == tuple(start) and prepared.crop_stop == tuple(stop)
    assert prepared.image.dtype.is_floating_point and prepared.image.dtype.itemsize == 4
    np.testing.assert_array_equal(
        prepared.image.numpy(), expected[start[0] : stop[0], start[1] : stop[1], start[2] : stop[2]]
    )
    assert tuple(prepared.zoom_out_image.shape) == (1, 1, *WINDOW_SIZE)
    assert float(prepared.image.min()) == 0.0 and float(prepared.image.max()) == 1.0


def test_air_is_cropped_away(ct):
    prepared = prepare_volume(ct.volume, ct.ijk_to_ras)
    body = ct.volume > -500
    in_plane = np.argwhere(body.any(axis=0))
    assert prepared.crop_start[1:] == tuple(in_plane.min(0)) and prepared.crop_stop[1:] == tuple(in_plane.max(0) + 1)
    assert prepared.crop_kji(ct.volume).shape == prepared.cropped_shape


def test_integer_lookup_path_equals_float_path(ct):
    as_int = prepare_volume(ct.volume, ct.ijk_to_ras)
    as_float = prepare_volume(ct.volume.astype(np.float32), ct.ijk_to_ras)
    assert as_int.crop_start == as_float.crop_start
    np.testing.assert_array_equal(as_int.image.numpy(), as_float.image.numpy())


def test_permuted_storage_gives_the_same_model_input(ct):
    reference = prepare_volume(ct.volume, ct.ijk_to_ras)
    stored, matrix = permuted_geometry(ct.volume, ct.ijk_to_ras, (2, 0, 1))
    permuted = prepare_volume(stored, matrix)
    assert permuted.axes.order != (0, 1, 2)
    np.testing.assert_array_equal(permuted.image.numpy(), reference.image.numpy())
    mask = np.zeros(reference.cropped_shape, dtype=np.uint8)
    mask[3:9, 10:20, 30:40] = 1
    np.testing.assert_array_equal(permuted.paste_kji(mask), reference.paste_kji(mask).transpose(2, 0, 1))


def test_statistics_use_the_foreground_above_the_mean(ct):
    stats = intensity_statistics(ct.volume)
    assert stats.mean.dtype == np.float32 and -200 < stats.mean < 200  # soft tissue, not air
    assert stats.lower < stats.upper


@pytest.mark.parametrize(
    "volume, message",
    [
        (np.zeros((10, 10)), "2-D"),
        (np.zeros((1, 10, 10)), "2-D"),
        (np.zeros((2, 10, 10, 3)), "4 dimensions"),
        (np.full((8, 10, 10), 7, dtype=np.int16), "constant"),
        (np.where(np.arange(800).reshape(8, 10, 10) % 2, np.nan, 1.0), "NaN"),
        (np.where(np.arange(800).reshape(8, 10, 10) < 400, -1000, 40).astype(np.int16), "no intensity contrast"),
    ],
)
def test_unusable_volumes_are_user_errors(volume, message):
    with pytest.raises(InputError, match=message):
        prepare_volume(volume, np.eye(4))
