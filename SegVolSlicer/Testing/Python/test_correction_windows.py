"""Which windows a correction reruns and which voxels it writes (inference/correction.py), on the layout
phantom's kidney: its two blobs sit in opposite corners, so its zoom-in region takes four windows (2 deep x
2 wide) whose union does not fill its bounding box, and a click in the middle lies inside several windows."""

import numpy as np
import pytest
import torch
from fake_segvol import CountingBandSegVol, layout_ct

from SegVolSlicerLib.inference import SegVolSession
from SegVolSlicerLib.inference.correction import nearest_window, with_user_clicks
from SegVolSlicerLib.inference.roi import Roi
from SegVolSlicerLib.inference.window_prompts import WindowPrompts
from SegVolSlicerLib.inference.windows import WindowPlan
from SegVolSlicerLib.prompts import Points, Target

KIDNEY_ROI = Roi((2, 0, 7), (39, 81, 294))  # crop coordinates (d, h, w), as the stand-in's zoom-out gives it
FIRST_CORNER_IJK, LAST_CORNER_IJK = (30.0, 60.0, 3.0), (290.0, 40.0, 36.0)  # each in one window only


@pytest.fixture(scope="module")
def phantom():
    return layout_ct()


@pytest.fixture
def session(phantom):
    return SegVolSession(CountingBandSegVol(), phantom.volume, phantom.ijk_to_ras)


def kidney(*clicks, labels=None):
    labels = [0] * len(clicks) if labels is None else labels
    return Target("kidney", text="kidney", points=Points(np.asarray(clicks, dtype=np.float64), labels))


def test_the_window_nearest_the_click_is_chosen_not_the_first_that_holds_it():
    """Guards picking the first window that holds the click: this click lies inside all four windows,
    nearest the centre of the second (index 1) along W, and near the first row's centre along D."""
    plan = WindowPlan.for_roi(KIDNEY_ROI)
    click = np.array([17.0, 40.0, 200.0])
    holding = [w.index for w in plan.windows if np.all(click >= w.valid_start) and np.all(click < w.valid_stop)]
    assert holding == [0, 1, 2, 3]  # the premise: the first window that holds it is window 0
    assert nearest_window(plan, click).index == 1
    assert nearest_window(plan, np.array([17.0, 40.0, 60.0])).index == 0  # nearer the first's centre
    assert nearest_window(plan, np.array([36.0, 40.0, 60.0])).index == 2  # only the second row holds it
    assert nearest_window(plan, np.array([1.0, 40.0, 60.0])) is None  # before the ROI: no window


def test_a_correction_reruns_the_nearest_window_of_a_click_held_by_several(session, phantom):
    """The same, end to end: the rerun window's footprint is what `changed` bounds."""
    first = session.segment(Target("kidney", text="kidney"))
    assert first.roi == KIDNEY_ROI and first.windows == 4  # the premise of this file's test data
    window = WindowPlan.for_roi(first.roi).windows[1]
    ijk = session.space.crop_to_ijk(np.array([[17.0, 40.0, 200.0]]))[0]
    fixed = session.refine(first, kidney(tuple(ijk)))
    assert fixed.windows == 1
    crop_start = session.prepared.crop_start
    expected = tuple(slice(o + a, o + b) for o, a, b in zip(crop_start, window.valid_start, window.valid_stop))
    assert fixed.changed == expected  # (K, J, I) = model axes on this phantom


def test_a_correction_writes_only_the_voxels_its_windows_cover_not_their_bounding_box(session, phantom):
    """Guards writing the model's answer over the whole bounding box of the rerun windows: with clicks in the
    first and the last window (diagonally opposite), the box holds two corners no rerun window covers, whose
    voxels (here all set by hand) must stay as they were; no window's logits reach them."""
    first = session.segment(Target("kidney", text="kidney"))
    plan = WindowPlan.for_roi(first.roi)
    hand_edited = np.ones_like(first.mask)
    fixed = session.refine(first, kidney(FIRST_CORNER_IJK, LAST_CORNER_IJK), current_mask=hand_edited)
    assert fixed.windows == 2
    rerun = (plan.windows[0], plan.windows[3])
    covered = np.zeros(first.mask.shape, dtype=bool)
    crop_start = np.asarray(session.prepared.crop_start)
    for window in rerun:
        covered[tuple(slice(o + a, o + b) for o, a, b in zip(crop_start, window.valid_start, window.valid_stop))] = 1
    in_box = np.zeros_like(covered)
    in_box[fixed.changed] = True
    uncovered_in_box = in_box & ~covered
    assert uncovered_in_box.sum() > 0  # the premise: the windows do not fill their box
    assert fixed.mask[uncovered_in_box].all()  # kept as the user left them
    assert np.array_equal(fixed.mask[~covered], hand_edited[~covered])
    assert not fixed.mask[covered].all()  # and the model's answer was written where the windows run


def test_a_window_gets_the_users_clicks_inside_its_real_image_part_only_borders_included():
    """Guards the inside test of the user's clicks: a click on the window's first real voxel dropped (`>`),
    one on its end (`<=`) or inside on one axis only (`|`) added, or their window coordinates or labels
    lost. Window 0 of the kidney plan holds crop [2, 34) x [0, 81) x [7, 263), its offset (2, -87, 7)."""
    window = WindowPlan.for_roi(KIDNEY_ROI).windows[0]
    crop = np.array(
        [[2.0, 0.0, 7.0], [34.0, 40.0, 100.0], [10.0, 40.0, 263.0], [10.0, 90.0, 300.0], [20.0, 80.0, 262.0]]
    )
    labels = np.array([1, 1, 0, 1, 0])
    usual = WindowPrompts(torch.zeros(1, 6), (torch.full((1, 1, 3), 5.0), torch.ones(1, 1)))
    prompts = with_user_clicks(usual, window, crop, labels)
    coords, got_labels = prompts.points
    assert coords.dtype == torch.float32 and got_labels.dtype == torch.float32
    assert coords[0].tolist() == [[5.0, 5.0, 5.0], [0.0, 87.0, 0.0], [18.0, 167.0, 255.0]]
    assert got_labels[0].tolist() == [1.0, 1.0, 0.0]
    assert with_user_clicks(usual, window, crop[1:4], labels[1:4]) is usual  # none inside: unchanged
