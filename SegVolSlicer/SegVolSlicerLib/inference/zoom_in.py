"""Stage 4c: the zoom-in pass, sliding windows over the ROI at native resolution.

Official behaviour: each window runs the full model (encoder + decoder) with its own prompts; the window
logits, already trilinearly up-sampled to 32x256x256, are summed in window order and divided by the number of
windows covering each voxel (constant weighting); the padding is cut off at the end. Here encoder passes go
through `encode_windows`, which serves cached embeddings and encodes the rest in batches; the sums stay on
the model's device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..errors import Cancelled
from .prompt_mapping import ModelPrompts
from .window_prompts import ZoomOutPrediction, window_prompts
from .windows import Window, WindowPlan

EncodeWindows = Callable[[Sequence[Window]], list[torch.Tensor]]


def raise_if_cancelled(cancel) -> None:
    """`cancel`: a threading.Event (or None); checked between model passes, the points where stopping is safe."""
    if cancel is not None and cancel.is_set():
        raise Cancelled("segmentation cancelled")


def run_zoom_in(model, encode_windows: EncodeWindows, plan: WindowPlan, prompts: ModelPrompts,
                prediction: ZoomOutPrediction, text_embedding: torch.Tensor | None, generator,
                progress: Callable[[str, int, int], None] | None = None, cancel=None,
                batch_size: int = 1) -> torch.Tensor:
    """Zoom-in logits over the ROI, (ROI shape) float32 on the model's device."""
    device = model.device
    total = torch.zeros(plan.padded_shape, dtype=torch.float32, device=device)
    coverage = torch.zeros(plan.padded_shape, dtype=torch.float32, device=device)
    done = 0
    for first in range(0, len(plan), batch_size):
        raise_if_cancelled(cancel)
        chunk = plan.windows[first:first + batch_size]
        for window, embedding in zip(chunk, encode_windows(chunk)):
            window_prompt = window_prompts(plan, window, prompts.box_map, prompts.click_map, prediction, generator)
            logits = model.decode(embedding, text_embedding, window_prompt.boxes, window_prompt.points)
            total[window.padded_slices] += logits[0, 0].float()
            coverage[window.padded_slices] += 1
            done += 1
            if progress is not None:
                progress("zoom-in", done, len(plan))
    return (total / coverage)[plan.unpadded_slices]
