"""Stage 2b: the zoom-out pass, the whole cropped body at 32x256x256 (official `inference_demo.py:77-81`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .model_space import ModelSpace
from .prompt_mapping import ModelPrompts


@dataclass
class ZoomOutResult:
    logits: torch.Tensor  # (32, 256, 256) float32 on the CPU
    mask: np.ndarray  # (32, 256, 256) bool: sigmoid > 0.5, the official threshold


class ZoomOutPrediction:
    """The zoom-out mask as the crop sees it after nearest up-sampling (what the ROI, the zoom-in prompts and
    the merge read)."""

    def __init__(self, zoom_out_mask: np.ndarray, space: ModelSpace):
        self.mask, self.sources = zoom_out_mask, space.upsample_source
        self.cropped_shape = space.cropped_shape

    def crop_region(self, start, stop) -> np.ndarray:
        """The up-sampled mask over crop indices [start, stop) (inside the crop)."""
        # One axis at a time: the same gather as np.ix_, ~7x faster on a large crop.
        region = self.mask
        for axis, (source, a, b) in enumerate(zip(self.sources, start, stop)):
            region = region.take(source[a:b], axis=axis)
        return region

    def crop_mask(self) -> np.ndarray:
        """The whole up-sampled mask over the crop, uint8."""
        region = self.crop_region((0, 0, 0), self.cropped_shape)
        return region.view(np.uint8) if region.dtype == np.bool_ else region.astype(np.uint8)


def prompt_tensors(prompts: ModelPrompts) -> tuple[torch.Tensor | None, tuple[torch.Tensor, torch.Tensor] | None]:
    """The zoom-out box (1, 6) and points ((1, N, 3), (1, N)) as float32 tensors (as the official code has them)."""
    boxes = None if prompts.box is None else torch.as_tensor(prompts.box, dtype=torch.float32)[None]
    points = None
    if prompts.points is not None:
        coords, labels = prompts.points
        points = (
            torch.as_tensor(coords, dtype=torch.float32)[None],
            torch.as_tensor(labels, dtype=torch.float32)[None],
        )
    return boxes, points


def run_zoom_out(
    model, image_embedding: torch.Tensor, text_embedding: torch.Tensor | None, prompts: ModelPrompts
) -> ZoomOutResult:
    boxes, points = prompt_tensors(prompts)
    logits = model.decode(image_embedding, text_embedding, boxes, points)[0, 0]
    # The official code thresholds sigmoid(logits) > 0.5 (not logits > 0: they differ for tiny logits).
    mask = (torch.sigmoid(logits) > 0.5).cpu().numpy()
    return ZoomOutResult(logits.float().cpu(), mask)
