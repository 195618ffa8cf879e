"""User prompts: validation, RAS -> IJK, and the mapping IJK <-> RAS <-> model (crop, zoom-out) space."""

import numpy as np
import pytest
import torch

from SegVolSlicerLib.errors import InputError
from SegVolSlicerLib.geometry import ijk_to_ras_points
from SegVolSlicerLib.inference.preprocess import prepare_volume, resize_nearest_exact
from SegVolSlicerLib.inference.prompt_mapping import prompts_from_target
from SegVolSlicerLib.prompts import Box, Points, Target, label_from_description


@pytest.mark.parametrize(
    "text, label", [("", 1), ("positive", 1), (" Positive ", 1), (None, 1), ("negative", 0), ("NEG", 0), ("-", 0)]
)
def test_point_polarity_from_description(text, label):
    assert label_from_description(text) == label


def test_unknown_description_is_a_user_error():
    with pytest.raises(InputError, match="neither positive nor negative"):
        label_from_description("maybe")


def test_points_validation():
    with pytest.raises(InputError, match="label"):
        Points([[1, 2, 3]], [2])
    with pytest.raises(InputError, match="one label per point"):
        Points([[1, 2, 3], [4, 5, 6]], [1])
    with pytest.raises(InputError, match="outside the volume"):
        Points([[1, 2, 48]], [1]).check_inside((10, 20, 30))  # i = 1, j = 2 fine, k = 48 >= 10
    Points([[29.4, 19.4, 9.4]], [1]).check_inside((10, 20, 30))  # within the last voxel


def test_box_validation_and_clipping():
    with pytest.raises(InputError, match="empty"):
        Box((5, 5, 5), (4, 9, 9))
    assert Box((-3, 2, 1), (50, 4, 3)).clipped((10, 20, 30)) == Box((0, 2, 1), (29, 4, 3))
    with pytest.raises(InputError, match="outside the volume"):
        Box((40, 2, 1), (50, 4, 3)).clipped((10, 20, 30))


def test_target_needs_a_usable_prompt():
    with pytest.raises(InputError, match="no usable prompt"):
        Target("x")
    with pytest.raises(InputError, match="negative points alone"):
        Target("x", points=Points([[1, 2, 3]], [0]))
    assert Target("x", text="liver").text == "liver"


def test_points_from_ras_round_trip(ct):
    ijk = np.array([[10.0, 20.0, 30.0], [100.5, 80.25, 5.0]])
    points = Points.from_ras(ijk_to_ras_points(ct.ijk_to_ras, ijk), [1, 0], ct.ijk_to_ras)
    np.testing.assert_allclose(points.ijk, ijk, atol=1e-9)


def test_rotated_roi_box_covers_its_corners(ct):
    # An ROI drawn in RAS around IJK voxels (40..60, 50..70, 10..20), slightly inflated: the oblique volume
    # makes its IJK bounding box a little larger, never smaller.
    corners_ijk = np.array([[i, j, k] for i in (39.6, 60.4) for j in (49.6, 70.4) for k in (9.6, 20.4)])
    box = Box.from_ras_corners(ijk_to_ras_points(ct.ijk_to_ras, corners_ijk), ct.ijk_to_ras)
    assert box == Box((40, 50, 10), (60, 70, 20))
    thin = Box.from_ras_corners(ijk_to_ras_points(ct.ijk_to_ras, [[40.2, 50, 10], [40.4, 70, 20]]), ct.ijk_to_ras)
    assert thin.ijk_min[0] == thin.ijk_max[0] == 40


def test_ijk_zoom_out_mapping_is_invertible(space):
    ijk = np.array([[8.0, 16.0, 0.0], [183.0, 143.0, 47.0], [77.3, 91.6, 20.2]])
    zoom_out = space.ijk_to_zoom_out(ijk)
    np.testing.assert_allclose(space.zoom_out_to_ijk(zoom_out), ijk, atol=1e-9)


def test_zoom_out_coordinates_follow_the_nearest_exact_resize(space, ct):
    """A voxel's zoom-out coordinate lands on (or next to) the zoom-out voxels that show it."""
    prepared = prepare_volume(ct.volume, ct.ijk_to_ras)
    for axis, source in enumerate(space.zoom_out_source):
        for z in (0, 7, len(source) - 1):
            crop_index = np.zeros(3)
            crop_index[axis] = source[z]
            mapped = space.crop_to_zoom_out(crop_index)[axis]
            assert abs(mapped - z) < max(1.0, space.scale[axis])  # within one zoom-out voxel of where it shows
    np.testing.assert_array_equal(
        prepared.zoom_out_image[0, 0, 3, 100, 50],
        prepared.image[space.zoom_out_source[0][3], space.zoom_out_source[1][100], space.zoom_out_source[2][50]],
    )


def test_box_maps_to_the_zoom_out_voxels_showing_it(space, ct):
    """For a box-shaped label, the mapped box equals the bounding box of the resized label (the official box)."""
    prepared = prepare_volume(ct.volume, ct.ijk_to_ras)
    low, high = np.array([5, 30, 40]), np.array([20, 90, 120])  # crop coordinates (d, h, w)
    label = np.zeros(prepared.cropped_shape, dtype=np.float32)
    label[low[0] : high[0] + 1, low[1] : high[1] + 1, low[2] : high[2] + 1] = 1
    resized = resize_nearest_exact(torch.from_numpy(label))[0, 0]
    positive = torch.nonzero(resized)
    zoom_low, zoom_high = space.crop_box_to_zoom_out(low, high)
    np.testing.assert_array_equal(zoom_low, positive.min(0).values.numpy())
    np.testing.assert_array_equal(zoom_high, positive.max(0).values.numpy())

    ijk_low = space.crop_to_ijk(low)
    ijk_high = space.crop_to_ijk(high)
    target = Target("box", box=Box(np.minimum(ijk_low, ijk_high), np.maximum(ijk_low, ijk_high)))
    prompts = prompts_from_target(target, None, space)
    np.testing.assert_array_equal(prompts.box, np.concatenate([zoom_low, zoom_high]))
    assert prompts.box_map.low == tuple(low) and prompts.box_map.high == tuple(high)
    assert prompts.click_map is None and prompts.points is None


def test_clicks_map_to_zoom_out_and_zoom_in_maps(space):
    crop = np.array([[10.0, 50.0, 60.0], [20.0, 70.0, 90.0]])
    ijk = space.crop_to_ijk(crop)
    target = Target("t", text="liver", points=Points(ijk, [1, 0]))
    prompts = prompts_from_target(target, "liver", space)
    coords, labels = prompts.points
    np.testing.assert_allclose(coords, space.crop_to_zoom_out(crop))
    np.testing.assert_array_equal(labels, [1, 0])
    np.testing.assert_array_equal(prompts.click_map.voxels, [[10, 50, 60]])  # negative clicks never zoom in


def test_clicks_off_the_body_are_dropped_with_a_warning(space):
    outside = space.crop_to_ijk([[10.0, -5.0, 60.0]])  # in the volume, in the air above the body crop
    inside = space.crop_to_ijk([[10.0, 50.0, 60.0]])
    prompts = prompts_from_target(Target("t", points=Points(np.vstack([outside, inside]), [1, 1])), None, space)
    assert len(prompts.points[0]) == 1 and "outside the body" in prompts.warnings[0]
    with pytest.raises(InputError, match="no usable prompt"):
        prompts_from_target(Target("t", points=Points(outside, [1])), None, space)
