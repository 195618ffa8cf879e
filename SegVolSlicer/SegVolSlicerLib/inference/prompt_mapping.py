"""Stage 2a: a target's prompts in the model's spaces (zoom-out prompts + zoom-in prompt maps).

User prompts come in IJK and are mapped through the axis permutation, the crop and the zoom-out resize
(model_space.py):
- clicks: continuous coordinates, centre-aligned with the nearest-exact resize; clicks off the cropped body
  region are dropped with a warning (the model never sees that part of the image);
- a box: clipped to the crop; in zoom-out space it is the set of zoom-out voxels showing a voxel of the box.
The zoom-in maps are built at native resolution straight from the user's prompts (the official code only
knows zoom-out prompts and up-samples their maps; label_prompts.py builds those official maps for label-derived
prompts). Zoom-in mode follows the official rules: point mode when there is a positive click (negative
clicks act on the zoom-out pass only), else box mode when there is a box, else text only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from ..prompts import POSITIVE, Target
from .model_space import ModelSpace


@dataclass(frozen=True)
class BoxMap:
    """The filled box the user's box prompt becomes at crop resolution: [low, high] inclusive, per axis
    (None when it covers no crop voxel). The zoom-in cuts it per window (window_prompts)."""

    low: tuple[int, int, int] | None
    high: tuple[int, int, int] | None


@dataclass(frozen=True)
class ClickMap:
    """The positive clicks at crop resolution: (M, 3) integer crop voxels."""

    voxels: np.ndarray


@dataclass(frozen=True)
class ModelPrompts:
    """One target's prompts as the model takes them.

    points: zoom-out (N,3) (d,h,w) float coordinates and (N,) labels (1 / 0 / -1 ignore); box: zoom-out
    (6,) inclusive (d0,h0,w0,d1,h1,w1); box_map / click_map: the zoom-in prompt maps at crop resolution.
    """

    text: str | None = None
    points: tuple[np.ndarray, np.ndarray] | None = None
    box: np.ndarray | None = None
    box_map: BoxMap | None = None
    click_map: ClickMap | None = None
    warnings: tuple[str, ...] = field(default=())

    def __post_init__(self):
        if self.text is None and self.points is None and self.box is None:
            raise InputError("no prompt left to run: give a text, a box or a point on the body")


def _map_points(target: Target, space: ModelSpace, warnings: list[str]):
    crop = space.ijk_to_crop(target.points.ijk)
    inside = space.contains_crop(crop)
    if not inside.all():
        warnings.append(
            f"{int((~inside).sum())} point(s) of '{target.name}' lie outside the body region "
            "SegVol analyses (air around the patient) and were ignored"
        )
    if not inside.any():
        return None, None
    crop, labels = crop[inside], target.points.labels[inside]
    points = (space.crop_to_zoom_out(crop), labels.astype(np.float64))
    clicked = np.rint(crop[labels == POSITIVE]).astype(np.int64)
    clicked = np.clip(clicked, 0, np.asarray(space.cropped_shape) - 1)
    click_map = ClickMap(np.unique(clicked, axis=0)) if len(clicked) else None
    return points, click_map


def _map_box(target: Target, space: ModelSpace, warnings: list[str]):
    corners = space.ijk_to_crop(target.box.corners_ijk())
    low = np.maximum(np.rint(corners.min(axis=0)).astype(np.int64), 0)
    high = np.minimum(np.rint(corners.max(axis=0)).astype(np.int64), np.asarray(space.cropped_shape) - 1)
    if np.any(high < low):
        warnings.append(f"the box of '{target.name}' lies outside the body region SegVol analyses and was ignored")
        return None, None
    zoom_low, zoom_high = space.crop_box_to_zoom_out(low, high)
    return np.concatenate([zoom_low, zoom_high]).astype(np.float64), BoxMap(tuple(low), tuple(high))


def prompts_from_target(target: Target, text: str | None, space: ModelSpace) -> ModelPrompts:
    """`text` is the text to prompt with (the target's text resolved against the vocabulary)."""
    warnings: list[str] = []
    points = click_map = box = box_map = None
    if target.points is not None:
        points, click_map = _map_points(target, space, warnings)
    if target.box is not None:
        box, box_map = _map_box(target, space, warnings)
    if text is None and box is None and click_map is None:
        raise InputError(
            f"no usable prompt for '{target.name}': "
            + ("; ".join(warnings) or "give a text, a box or a positive point")
            + ". Place the prompts on the patient"
        )
    return ModelPrompts(text, points, box, box_map, click_map, tuple(warnings))
