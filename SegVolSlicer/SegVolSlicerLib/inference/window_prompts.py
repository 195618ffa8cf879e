"""Stage 4b: the prompts each zoom-in window gets (official `sliding_window_inference`, lines 224-239).

- text: the same text in every window;
- box mode: with one window, the bounding box of the user's box map inside it; with two or more windows,
  the bounding box of the zoom-out prediction inside each window (the user's box is ignored);
- point mode: clicks drawn as `select_points` does from the positive-click map inside the window (negative
  clicks never reach the zoom-in), plus the bounding box of the zoom-out prediction inside the window;
- an empty map gives the sentinel box (-1, ..., -1), which is still fed to the model.
Padding quirk (kept for parity): when the ROI is shorter than the window, the image and the zoom-out
prediction are padded but the box and click maps are not, so window slices meant for the padded ROI cut the
unpadded maps and their boxes and clicks come out shifted by the padding.

The maps are kept sparse (a box, a list of clicked voxels, the 32x256x256 zoom-out mask plus index maps)
and only one window's worth is ever materialised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from monai.transforms.utils import generate_spatial_bounding_box

from ..model.image_encoder import WINDOW_SIZE
from .point_sampling import draw_points
from .prompt_mapping import BoxMap, ClickMap
from .windows import Window, WindowPlan
from .zoom_out import ZoomOutPrediction

SENTINEL_BOX = (-1.0,) * 6


def _bounding_box(mask: np.ndarray) -> tuple[float, ...]:
    """Official `generate_box` without jitter: inclusive min/max index per axis, or the sentinel box."""
    if not mask.any():
        return SENTINEL_BOX
    start, stop = generate_spatial_bounding_box(mask[None])  # stop is exclusive
    return (*(float(a) for a in start), *(float(b - 1) for b in stop))


def user_box_in_window(box_map: BoxMap, plan: WindowPlan, window: Window) -> tuple[float, ...]:
    """The user's box inside one window, or the sentinel box."""
    if box_map.low is None:
        return SENTINEL_BOX
    low, high = [], []
    for axis in range(3):
        # Window slice of the padded ROI applied to the unpadded ROI map (the padding quirk).
        start = plan.roi.start[axis] + window.padded_start[axis]
        stop = min(start + WINDOW_SIZE[axis], plan.roi.stop[axis])
        first, last = max(box_map.low[axis], start), min(box_map.high[axis], stop - 1)
        if last < first:
            return SENTINEL_BOX
        low.append(float(first - start))
        high.append(float(last - start))
    return (*low, *high)


def clicked_voxels_in_window(click_map: ClickMap, plan: WindowPlan, window: Window) -> torch.Tensor:
    """The window's clicked voxels (M, 3) long in C order, as `torch.nonzero` lists them on the window's
    binary click map cut from the unpadded ROI map (the padding quirk)."""
    start = np.asarray(plan.roi.start) + np.asarray(window.padded_start)
    stop = np.minimum(start + np.asarray(WINDOW_SIZE), np.asarray(plan.roi.stop))
    inside = np.all((click_map.voxels >= start) & (click_map.voxels < stop), axis=1)
    local = np.unique(click_map.voxels[inside] - start, axis=0).reshape(-1, 3)  # sorted: nonzero's C order
    return torch.from_numpy(local.astype(np.int64))


def prediction_box_in_window(prediction: ZoomOutPrediction, window: Window) -> tuple[float, ...]:
    """Bounding box of the zoom-out prediction inside a window of the padded ROI, whose padding reads 0."""
    mask = np.zeros(WINDOW_SIZE, dtype=bool)
    mask[window.valid_in_window] = prediction.crop_region(window.valid_start, window.valid_stop)
    return _bounding_box(mask)


@dataclass
class WindowPrompts:
    boxes: torch.Tensor | None  # (1, 6)
    points: tuple[torch.Tensor, torch.Tensor] | None  # (1, N, 3), (1, N)


def window_prompts(
    plan: WindowPlan,
    window: Window,
    box_map: BoxMap | None,
    click_map: ClickMap | None,
    prediction: ZoomOutPrediction,
    generator,
) -> WindowPrompts:
    """The official per-window prompts. Point mode wins when both maps exist: it also carries a box."""
    if click_map is not None:
        coords, labels = draw_points(clicked_voxels_in_window(click_map, plan, window), None, generator)
        box = prediction_box_in_window(prediction, window)
        return WindowPrompts(torch.tensor([box]), (coords[None], labels[None]))
    if box_map is not None:
        box = (
            user_box_in_window(box_map, plan, window)
            if len(plan) == 1
            else prediction_box_in_window(prediction, window)
        )
        return WindowPrompts(torch.tensor([box]), None)
    return WindowPrompts(None, None)
