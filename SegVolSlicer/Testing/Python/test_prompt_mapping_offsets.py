"""Prompt mapping on a crop that starts away from voxel 0 on every axis: the crop offset's sign and axis.

The body block of this volume starts at (k, j, i) = (5, 7, 9), so every mistake in the offset between the
volume's voxels and the crop (a `+` for a `-`, the offset of another axis, the offset forgotten) moves the
mapped prompts by a different, visible amount on each axis."""

import numpy as np
import pytest

from SegVolSlicerLib.inference.model_space import ModelSpace
from SegVolSlicerLib.inference.preprocess import prepare_volume
from SegVolSlicerLib.inference.prompt_mapping import prompts_from_target
from SegVolSlicerLib.prompts import Box, Points, Target
from SegVolSlicerLib.testing.synthetic_ct import synthetic_ijk_to_ras

BODY_START_KJI, BODY_STOP_KJI = (5, 7, 9), (25, 40, 50)


@pytest.fixture(scope="module")
def space():
    volume = np.full((30, 48, 64), -1000, dtype=np.int16)
    body = tuple(slice(a, b) for a, b in zip(BODY_START_KJI, BODY_STOP_KJI))
    volume[body] = np.random.default_rng(0).integers(-100, 200, volume[body].shape)
    prepared = prepare_volume(volume, synthetic_ijk_to_ras())
    # The premise of every test here: the crop is the body block, the model axes are (k, j, i).
    assert prepared.crop_start == BODY_START_KJI and prepared.axes.order == (0, 1, 2)
    return ModelSpace(prepared)


def test_a_click_lands_on_its_crop_voxel_minus_the_crop_start_on_every_axis(space):
    """Guards a sign error (or a swapped axis) in the IJK -> crop offset: the click map would hold
    (k + 5, j + 7, i + 9) - or be clipped to the crop's border - instead of (k - 5, j - 7, i - 9)."""
    ijk = np.array([[20.0, 15.0, 10.0], [30.0, 22.0, 12.0]])  # (i, j, k), both on the body
    prompts = prompts_from_target(Target("t", points=Points(ijk, [1, 0])), None, space)
    assert prompts.warnings == ()
    np.testing.assert_array_equal(prompts.click_map.voxels, [[10 - 5, 15 - 7, 20 - 9]])
    expected_crop = np.array([[10 - 5, 15 - 7, 20 - 9], [12 - 5, 22 - 7, 30 - 9]], dtype=np.float64)
    np.testing.assert_allclose(space.ijk_to_crop(ijk), expected_crop)
    np.testing.assert_allclose(prompts.points[0], space.crop_to_zoom_out(expected_crop))
    np.testing.assert_array_equal(prompts.points[1], [1, 0])


def test_crop_to_ijk_adds_the_crop_start_back(space):
    """Guards the reverse offset (crop -> IJK, used for ROIs and corrections) having the wrong sign: a
    round trip through both directions would still agree, so the expected IJK is written out."""
    np.testing.assert_allclose(space.crop_to_ijk([[0.0, 0.0, 0.0]]), [[9.0, 7.0, 5.0]])
    np.testing.assert_allclose(space.crop_to_ijk([[3.0, 4.0, 5.0]]), [[5 + 9.0, 4 + 7.0, 3 + 5.0]])


def test_a_box_maps_to_its_crop_voxels_minus_the_crop_start(space):
    """Guards the box's corners taking the wrong offset: its box map would shift (or be clipped away)."""
    prompts = prompts_from_target(Target("t", box=Box((12, 10, 6), (40, 30, 20))), None, space)
    assert prompts.box_map.low == (6 - 5, 10 - 7, 12 - 9)
    assert prompts.box_map.high == (20 - 5, 30 - 7, 40 - 9)
