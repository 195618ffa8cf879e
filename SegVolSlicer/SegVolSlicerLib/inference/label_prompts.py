"""The official evaluation's prompts from a label (inference_demo.py), for the evaluation protocol and for
segments made from a mask.

For each class, the label is cropped like the image and resized to 32x256x256 with nearest-exact (the
demo's `zoom_out_label`); from it:
  box   = its bounding box (`generate_box`, no jitter), with the filled box as the zoom-in map;
  point = `select_points(label, num_positive_extra=3, num_negative_extra=3)` (1 + 3 positive, 3 negative,
          random), with the positive clicks as the zoom-in map;
both maps are made at 32x256x256 and nearest-up-sampled to the crop, as the demo does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from .model_space import ModelSpace
from .point_sampling import select_points
from .preprocess import PreparedVolume, resize_nearest_exact
from .prompt_mapping import BoxMap, ClickMap, ModelPrompts

PROMPT_MODES = ("text", "box", "point", "text+box", "text+point")


@dataclass(frozen=True)
class PromptMode:
    text: bool
    box: bool
    point: bool

    @classmethod
    def parse(cls, mode: str) -> PromptMode:
        if mode not in PROMPT_MODES:
            raise InputError(f"unknown prompt mode {mode!r}: choose one of {', '.join(PROMPT_MODES)}")
        parts = mode.split("+")
        return cls("text" in parts, "box" in parts, "point" in parts)


def zoom_out_label(label_kji: np.ndarray, prepared: PreparedVolume) -> torch.Tensor:
    """A binary (K, J, I) label -> the demo's 32x256x256 zoom-out label."""
    cropped = torch.from_numpy(np.ascontiguousarray(prepared.crop_kji(label_kji), dtype=np.float32))
    return resize_nearest_exact(cropped)[0, 0]


def _upsampled_box(low, high, space: ModelSpace) -> BoxMap:
    """The crop voxels a zoom-out box covers after nearest up-sampling (the demo's `binary_cube`)."""
    intervals = [space.zoom_out_interval_to_crop(axis, int(low[axis]), int(high[axis])) for axis in range(3)]
    if any(interval is None for interval in intervals):
        return BoxMap(None, None)
    return BoxMap(tuple(i[0] for i in intervals), tuple(i[1] for i in intervals))


def _upsampled_clicks(coords: torch.Tensor, labels: torch.Tensor, space: ModelSpace) -> ClickMap:
    """The crop voxels the positive zoom-out clicks cover after nearest up-sampling (`binary_points`)."""
    voxels = []
    for point in coords[labels == 1].long().tolist():
        ranges = [np.flatnonzero(space.upsample_source[axis] == point[axis]) for axis in range(3)]
        voxels.append(np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1).reshape(-1, 3))
    voxels = np.concatenate(voxels) if voxels else np.zeros((0, 3), dtype=np.int64)
    return ClickMap(np.unique(voxels, axis=0))


def label_prompts(
    label_kji: np.ndarray,
    text: str | None,
    mode: PromptMode,
    prepared: PreparedVolume,
    space: ModelSpace,
    generator: torch.Generator | None,
) -> ModelPrompts:
    """The demo's prompts for one class (`label_kji` binary on the input grid). Clicks are drawn from
    `generator` (None: torch's global generator); pass the same generator on to the zoom-in, as the official
    demo's draws continue one random stream."""
    resized = zoom_out_label(label_kji, prepared)
    points = box = box_map = click_map = None
    if mode.point:
        coords, labels = select_points(resized, generator, num_positive_extra=3, num_negative_extra=3)
        points = (coords.numpy().astype(np.float64), labels.numpy().astype(np.float64))
        click_map = _upsampled_clicks(coords, labels, space)
    if mode.box:
        positive = torch.nonzero(resized > 0)
        if len(positive) == 0:
            box = np.full(6, -1.0)
            box_map = BoxMap(None, None)
        else:
            low, high = positive.min(dim=0).values.numpy(), positive.max(dim=0).values.numpy()
            box = np.concatenate([low, high]).astype(np.float64)
            box_map = _upsampled_box(low, high, space)
    return ModelPrompts(text if mode.text else None, points, box, box_map, click_map)
