"""Zoom-in stages against dense, straightforward statements of the official rules (spec section 8)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from SegVolSlicerLib.geometry import ModelAxes
from SegVolSlicerLib.inference.cache import EmbeddingCache
from SegVolSlicerLib.inference.model_space import ModelSpace
from SegVolSlicerLib.inference.point_sampling import draw_points, make_generator, select_points
from SegVolSlicerLib.inference.preprocess import PreparedVolume
from SegVolSlicerLib.inference.prompt_mapping import BoxMap, ClickMap
from SegVolSlicerLib.inference.roi import Roi, roi_from_zoom_out
from SegVolSlicerLib.inference.window_prompts import (
    SENTINEL_BOX,
    clicked_voxels_in_window,
    prediction_box_in_window,
    user_box_in_window,
)
from SegVolSlicerLib.inference.windows import WindowPlan
from SegVolSlicerLib.inference.zoom_out import ZoomOutPrediction
from SegVolSlicerLib.model.image_encoder import WINDOW_SIZE


def space_for(cropped_shape):
    image = torch.zeros(cropped_shape)
    prepared = PreparedVolume(
        ModelAxes((0, 1, 2)), cropped_shape, (0, 0, 0), cropped_shape, image, torch.zeros(1, 1, *WINDOW_SIZE), None
    )
    return ModelSpace(prepared)


def dense_upsample(zoom_out_mask, shape):
    return (
        F.interpolate(torch.from_numpy(zoom_out_mask.astype(np.float32))[None, None], size=shape, mode="nearest")[
            0, 0
        ].numpy()
        > 0.5
    )


def official_roi(upsampled):
    """logits2roi_coor on a dense mask: bbox, widened to the window, clamped to [0, size]; crop [min:max+1]."""
    hits = np.argwhere(upsampled)
    if len(hits) == 0:
        return None
    start, stop = [], []
    for axis in range(3):
        low, high = hits[:, axis].min(), hits[:, axis].max()
        pad = max(0, WINDOW_SIZE[axis] - (high - low + 1))
        low, high = max(0, low - pad // 2), min(upsampled.shape[axis], high + pad // 2)
        start.append(int(low))
        stop.append(int(min(high + 1, upsampled.shape[axis])))
    return Roi(tuple(start), tuple(stop))


def random_blob_mask(seed):
    rng = np.random.default_rng(seed)
    mask = np.zeros(WINDOW_SIZE, dtype=bool)
    low = rng.integers(0, [20, 150, 150])
    mask[
        low[0] : low[0] + rng.integers(1, 12),
        low[1] : low[1] + rng.integers(1, 100),
        low[2] : low[2] + rng.integers(1, 100),
    ] = True
    return mask


@pytest.mark.parametrize("cropped_shape", [(48, 128, 176), (20, 300, 260), (120, 512, 400), (33, 257, 255)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roi_matches_the_dense_official_rule(cropped_shape, seed):
    mask = random_blob_mask(seed)
    space = space_for(cropped_shape)
    assert roi_from_zoom_out(mask, space) == official_roi(dense_upsample(mask, cropped_shape))


def test_empty_zoom_out_gives_no_roi():
    assert roi_from_zoom_out(np.zeros(WINDOW_SIZE, dtype=bool), space_for((40, 200, 200))) is None


@pytest.mark.parametrize("roi_shape", [(48, 128, 176), (300, 300, 256), (32, 256, 256), (33, 257, 600), (10, 20, 30)])
def test_window_plan_counts_and_starts(roi_shape):
    plan = WindowPlan.for_roi(Roi((5, 6, 7), (5 + roi_shape[0], 6 + roi_shape[1], 7 + roi_shape[2])))
    expected_per_axis = []
    for size, window in zip(roi_shape, WINDOW_SIZE):
        expected_per_axis.append(1 if size <= window else math.ceil((size - window) / (window // 2)) + 1)
    assert len(plan) == math.prod(expected_per_axis)
    for axis, (size, window) in enumerate(zip(roi_shape, WINDOW_SIZE)):
        starts = sorted({w.padded_start[axis] for w in plan.windows})
        assert starts[0] == 0 and starts[-1] == max(size, window) - window  # last window ends at the border
        assert all(b - a <= window // 2 for a, b in zip(starts, starts[1:]))
        assert plan.pad_before[axis] == max(window - size, 0) // 2
    order = [w.padded_start for w in plan.windows]
    assert order == sorted(order)  # C order over (d, h, w), as MONAI's dense_patch_slices


def test_window_image_and_cache_key_describe_the_padded_content():
    crop = torch.arange(40 * 100 * 120, dtype=torch.float32).reshape(40, 100, 120)
    roi = Roi((4, 10, 0), (40, 90, 120))  # 36 x 80 x 120 -> padded in h and w
    plan = WindowPlan.for_roi(roi)
    padded = F.pad(crop[roi.slices], (68, 68, 88, 88))  # (w before, after, h before, after): (256-120)/2, (256-80)/2
    for window in plan.windows:
        torch.testing.assert_close(window.image(crop)[0, 0], padded[window.padded_slices], rtol=0, atol=0)
    same_place = WindowPlan.for_roi(roi).windows[0]
    assert same_place.cache_key == plan.windows[0].cache_key
    shifted = WindowPlan.for_roi(Roi((4, 11, 0), (40, 91, 120))).windows[0]
    assert shifted.cache_key != plan.windows[0].cache_key


def dense_bbox(mask):
    hits = np.argwhere(mask)
    if len(hits) == 0:
        return SENTINEL_BOX
    return (*map(float, hits.min(0)), *map(float, hits.max(0)))


@pytest.mark.parametrize("roi", [Roi((2, 5, 8), (30, 105, 150)), Roi((0, 0, 0), (70, 300, 200))])
def test_window_boxes_follow_the_official_padding_quirk(roi):
    cropped_shape = (70, 300, 200)
    plan = WindowPlan.for_roi(roi)
    box_map = BoxMap((10, 40, 60), (25, 90, 130))
    dense_box = np.zeros(cropped_shape, dtype=bool)
    dense_box[10:26, 40:91, 60:131] = True
    roi_box = dense_box[roi.slices]  # the official map: cropped to the ROI but never padded
    for window in plan.windows:
        assert user_box_in_window(box_map, plan, window) == dense_bbox(roi_box[window.padded_slices])

    space = space_for(cropped_shape)
    zoom_out = random_blob_mask(3)
    prediction = ZoomOutPrediction(zoom_out, space)
    global_preds = dense_upsample(zoom_out, cropped_shape)[roi.slices]
    pads = [(p, s - r - p) for p, s, r in zip(plan.pad_before, plan.padded_shape, roi.shape)]
    padded_preds = np.pad(global_preds, pads)  # the prediction is padded
    for window in plan.windows:
        assert prediction_box_in_window(prediction, window) == dense_bbox(padded_preds[window.padded_slices])


def test_click_window_maps_follow_the_padding_quirk():
    """Mistake: cutting the click map with the window's own crop offset (the padded ROI's slices cut the
    unpadded map), or listing the voxels in another order than torch.nonzero on the dense map."""
    roi = Roi((2, 5, 8), (30, 105, 150))
    plan = WindowPlan.for_roi(roi)
    voxels = np.array([[20, 50, 100], [3, 6, 9], [29, 104, 149], [3, 6, 9], [1, 1, 1]])  # last: outside the ROI
    dense = np.zeros((40, 120, 160), dtype=np.float32)
    dense[tuple(voxels.T)] = 1
    for window in plan.windows:
        expected = torch.nonzero(torch.from_numpy(dense[roi.slices][window.padded_slices]) > 0.9)
        assert torch.equal(clicked_voxels_in_window(ClickMap(voxels), plan, window), expected)


def test_clicks_drawn_from_voxels_are_the_map_draw():
    """Mistake: the zoom-in's sparse draw consuming the generator differently from select_points on the
    dense map (the official zoom-in clicks would change)."""
    binary = torch.zeros(8, 9, 10)
    binary[2:4, 3:6, 5] = binary[7, 0, 9] = 1
    for extra in (0, 2, 4, 9):
        dense = select_points(binary, make_generator(3), num_positive_extra=extra)
        sparse = draw_points(torch.nonzero(binary), None, make_generator(3), num_positive_extra=extra)
        for a, b in zip(dense, sparse):
            assert torch.equal(a, b)


def test_point_sampling_is_the_official_draw():
    binary = torch.zeros(8, 9, 10)
    binary[2:4, 3:6, 5] = 1
    torch.manual_seed(0)
    official = select_points(binary, None, num_positive_extra=3, num_negative_extra=3)
    seeded = select_points(binary, make_generator(0), num_positive_extra=3, num_negative_extra=3)
    for a, b in zip(official, seeded):
        torch.testing.assert_close(a, b)
    coords, labels = seeded
    assert labels.tolist() == [1, 1, 1, 1, 0, 0, 0]
    assert all(binary[tuple(c.long())] == 1 for c in coords[:4]) and all(
        binary[tuple(c.long())] == 0 for c in coords[4:]
    )


def test_point_sampling_pads_with_ignore_points():
    binary = torch.zeros(8, 9, 10)
    coords, labels = select_points(binary, make_generator(0))
    assert coords.tolist() == [[-1, -1, -1]] and labels.tolist() == [-1]
    binary[1, 2, 3] = binary[4, 5, 6] = 1
    coords, labels = select_points(binary, make_generator(0))
    assert labels.tolist() == [1, 1, 1, -1, -1]  # 1 + 2 extra (of 4 wanted) + 2 ignore


def test_cache_evicts_least_recently_used_within_budget():
    cache = EmbeddingCache(budget_mb=3 * 4 / 2**20 * 1000)  # room for three 1000-float tensors
    for key in "abc":
        cache.put(key, torch.zeros(1000))
    cache.get("a")
    cache.put("d", torch.zeros(1000))
    assert "b" not in cache and all(k in cache for k in "acd")
    assert cache.bytes == 3 * 4000
    cache.put("huge", torch.zeros(10_000))
    assert "huge" not in cache and len(cache) == 3
    computed = []
    value = cache.get_or_compute("a", lambda: computed.append(1))
    assert value is not None and not computed
