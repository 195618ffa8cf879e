"""A PNG preview: masks over representative axial slices, in radiological display convention."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from .files import atomic_output
from .geometry import ModelAxes
from .imageio import Segment

SOFT_TISSUE_WINDOW = (-160.0, 240.0)  # HU range shown (level 40, width 400)
ALPHA = 0.45
MAX_PANELS = 4


def _display_axes(ijk_to_ras: np.ndarray):
    """Reorder to (superior-inferior, anterior-posterior, left-right) and flip in-plane so that rows run
    anterior to posterior and columns from the patient's right to left (how radiologists view axial slices)."""
    axes = ModelAxes.from_ijk_to_ras(ijk_to_ras)
    directions = ijk_to_ras[:3, :3]

    def orient(array: np.ndarray) -> np.ndarray:
        array = axes.to_model(array)
        ras_of = [directions[:, 2 - a] for a in axes.order]  # RAS direction of each display axis
        if ras_of[1][1] > 0:  # rows: anterior first (RAS y decreasing)
            array = array[:, ::-1]
        if ras_of[2][0] > 0:  # columns: patient right first (RAS x decreasing)
            array = array[:, :, ::-1]
        return array

    return orient


def _slices_to_show(masks: Sequence[np.ndarray], depth: int) -> list[int]:
    """The slice with the largest area of each mask (at most MAX_PANELS, in order), or the middle slice."""
    chosen = []
    for mask in masks:
        areas = mask.reshape(depth, -1).sum(axis=1)
        if areas.any():
            chosen.append(int(np.argmax(areas)))
    chosen = sorted(set(chosen))[:MAX_PANELS]
    return chosen or [depth // 2]


def write_preview_png(
    path: str | os.PathLike, volume_kji: np.ndarray, ijk_to_ras: np.ndarray, segments: Sequence[Segment]
) -> None:
    orient = _display_axes(np.asarray(ijk_to_ras, dtype=np.float64))
    image = orient(volume_kji).astype(np.float32)
    low, high = SOFT_TISSUE_WINDOW
    grey = np.clip((image - low) / (high - low), 0, 1)
    masks = [orient(segment.mask > 0) for segment in segments]
    panels = []
    for index in _slices_to_show(masks, image.shape[0]):
        rgb = np.repeat(grey[index][..., None], 3, axis=-1)
        for segment, mask in zip(segments, masks):
            inside = mask[index]
            rgb[inside] = (1 - ALPHA) * rgb[inside] + ALPHA * np.asarray(segment.colour)
        panels.append(rgb)
    gap = np.ones((panels[0].shape[0], 4, 3))
    montage = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
    png = sitk.GetImageFromArray((montage * 255).round().astype(np.uint8), isVector=True)
    with atomic_output(path) as tmp:
        sitk.WriteImage(png, str(tmp))
