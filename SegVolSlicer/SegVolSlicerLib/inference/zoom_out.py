"""Stage 2b: the zoom-out pass, the whole cropped body at 32x256x256 (official `inference_demo.py:77-81`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .prompt_mapping import ModelPrompts


@dataclass
class ZoomOutResult:
    logits: torch.Tensor  # (32, 256, 256) float32 on the CPU
    mask: np.ndarray  # (32, 256, 256) bool: sigmoid > 0.5, the official threshold


def prompt_tensors(prompts: ModelPrompts) -> tuple[torch.Tensor | None, tuple[torch.Tensor, torch.Tensor] | None]:
    """The zoom-out box (1, 6) and points ((1, N, 3), (1, N)) as float32 tensors (as the official code has them)."""
    boxes = None if prompts.box is None else torch.as_tensor(prompts.box, dtype=torch.float32)[None]
    points = None
    if prompts.points is not None:
        coords, labels = prompts.points
        points = (torch.as_tensor(coords, dtype=torch.float32)[None], torch.as_tensor(labels, dtype=torch.float32)[None])
    return boxes, points


def run_zoom_out(model, image_embedding: torch.Tensor, text_embedding: torch.Tensor | None,
                 prompts: ModelPrompts) -> ZoomOutResult:
    boxes, points = prompt_tensors(prompts)
    logits = model.decode(image_embedding, text_embedding, boxes, points)[0, 0]
    # The official code thresholds sigmoid(logits) > 0.5 (not logits > 0: they differ for tiny logits).
    mask = (torch.sigmoid(logits) > 0.5).cpu().numpy()
    return ZoomOutResult(logits.float().cpu(), mask)
