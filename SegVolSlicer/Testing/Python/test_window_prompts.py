"""The prompts each zoom-in window gets (inference/window_prompts.py), on the plan of the layout phantom's
kidney: four windows, the second starting 31 voxels into the padded ROI along W, so a map cut at the wrong
offset or clipped at the wrong border shows."""

import numpy as np
import pytest
import torch
from fake_segvol import layout_ct

from SegVolSlicerLib.inference.model_space import ModelSpace
from SegVolSlicerLib.inference.point_sampling import make_generator, select_points
from SegVolSlicerLib.inference.preprocess import prepare_volume
from SegVolSlicerLib.inference.prompt_mapping import BoxMap, ClickMap
from SegVolSlicerLib.inference.roi import Roi
from SegVolSlicerLib.inference.window_prompts import (
    SENTINEL_BOX,
    clicked_voxels_in_window,
    prediction_box_in_window,
    user_box_in_window,
    window_prompts,
)
from SegVolSlicerLib.inference.windows import WindowPlan
from SegVolSlicerLib.inference.zoom_out import ZoomOutPrediction

PLAN = WindowPlan.for_roi(Roi((2, 0, 7), (39, 81, 294)))  # window 0 cuts crop [2, 34) x [0, 81) x [7, 263)


@pytest.fixture(scope="module")
def prediction():
    phantom = layout_ct()
    space = ModelSpace(prepare_volume(phantom.volume, phantom.ijk_to_ras))
    mask = np.zeros((32, 256, 256), dtype=bool)
    mask[8:20, 60:200, 40:220] = True
    return ZoomOutPrediction(mask, space)


def test_the_users_box_is_clipped_to_the_windows_last_voxel_and_a_one_voxel_box_is_kept():
    """Guards the clip at the window's end off by one either way (`stop + 1`, `stop - 2`), and a box one
    voxel thick taken for empty (`<=` for `<`)."""
    window = PLAN.windows[0]
    past_the_end = BoxMap((10, 10, 100), (38, 70, 290))
    assert user_box_in_window(past_the_end, PLAN, window) == (8.0, 10.0, 93.0, 31.0, 70.0, 255.0)
    one_voxel = BoxMap((10, 10, 100), (10, 10, 100))
    assert user_box_in_window(one_voxel, PLAN, window) == (8.0, 10.0, 93.0, 8.0, 10.0, 93.0)
    assert user_box_in_window(BoxMap((35, 10, 100), (38, 20, 110)), PLAN, window) == SENTINEL_BOX  # beyond it
    assert user_box_in_window(BoxMap(None, None), PLAN, window) == SENTINEL_BOX


def test_a_click_is_cut_into_the_window_at_the_windows_offset_borders_included():
    """Guards the window's start in the ROI map taken with the wrong sign (the click lands elsewhere or
    outside), a click on the window's first voxel dropped (`>` for `>=`), and one just past its end kept."""
    window = PLAN.windows[1]  # padded start (0, 0, 31): cuts crop [2, 34) x [0, 81) x [38, 294)
    clicks = ClickMap(np.array([[10, 20, 100], [2, 0, 38], [34, 20, 100], [10, 20, 37]]))
    assert clicked_voxels_in_window(clicks, PLAN, window).tolist() == [[0, 0, 0], [8, 20, 62]]


def test_point_mode_gives_the_prediction_box_and_the_clicks_drawn_from_the_given_generator(prediction):
    """Guards point mode losing its box or its clicks, and its clicks drawn from torch's global generator
    instead of the session's (a seeded run would then not repeat)."""
    window = PLAN.windows[0]
    clicks = ClickMap(np.array([[5 + d, 10 + h, 50 + w] for d in range(3) for h in range(4) for w in range(5)]))
    torch.manual_seed(1)
    prompts = window_prompts(PLAN, window, None, clicks, prediction, make_generator(7))
    assert prompts.boxes is not None and prompts.boxes.shape == (1, 6)
    assert tuple(prompts.boxes[0].tolist()) != SENTINEL_BOX
    dense = torch.zeros(32, 256, 256)  # the window's click map as the official code lays it out
    dense[tuple(clicked_voxels_in_window(clicks, PLAN, window).T)] = 1
    expected = select_points(dense, make_generator(7))
    assert prompts.points is not None
    assert torch.equal(prompts.points[0][0], expected[0]) and torch.equal(prompts.points[1][0], expected[1])


def test_box_mode_gives_the_users_box_with_one_window_and_the_prediction_box_with_several(prediction):
    """Guards the official rule of box mode swapped or lost: with one window the user's box (cut to it),
    with two or more the bounding box of the zoom-out prediction inside each window, never no box."""
    box_map = BoxMap((10, 10, 100), (20, 30, 150))
    single = WindowPlan.for_roi(Roi((2, 0, 7), (30, 81, 200)))
    assert len(single) == 1
    one = window_prompts(single, single.windows[0], box_map, None, prediction, make_generator(0))
    assert one.points is None
    assert tuple(one.boxes[0].tolist()) == user_box_in_window(box_map, single, single.windows[0])
    assert tuple(one.boxes[0].tolist()) != prediction_box_in_window(prediction, single.windows[0])
    window = PLAN.windows[0]
    several = window_prompts(PLAN, window, box_map, None, prediction, make_generator(0))
    assert several.points is None
    assert tuple(several.boxes[0].tolist()) == prediction_box_in_window(prediction, window) != SENTINEL_BOX
    assert prediction_box_in_window(prediction, window) != user_box_in_window(box_map, PLAN, window)
    text_only = window_prompts(PLAN, window, None, None, prediction, make_generator(0))
    assert text_only.boxes is None and text_only.points is None
