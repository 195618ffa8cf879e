"""Stage 4c: the zoom-in pass, sliding windows over the ROI at native resolution.

Official behaviour: each window runs the full model (encoder + decoder) with its own prompts; the window
logits, already trilinearly up-sampled to 32x256x256, are summed in window order and divided by the number of
windows covering each voxel (constant weighting); the padding is cut off at the end. The session drives the
windows (cached embeddings, batched encoder passes); the sums stay on the model's device.
"""

from __future__ import annotations

import torch

from .windows import Window, WindowPlan


class WindowAverage:
    """Running sum of window logits over the padded ROI, averaged by coverage (constant weighting)."""

    def __init__(self, plan: WindowPlan, device: torch.device):
        self.plan = plan
        self.total = torch.zeros(plan.padded_shape, dtype=torch.float32, device=device)
        self.coverage = torch.zeros(plan.padded_shape, dtype=torch.float32, device=device)

    def add(self, window: Window, logits: torch.Tensor) -> None:
        """`logits`: the model's (1, 1, 32, 256, 256) output for `window`."""
        self.total[window.padded_slices] += logits[0, 0].float()
        self.coverage[window.padded_slices] += 1

    def roi_logits(self) -> torch.Tensor:
        """Zoom-in logits over the ROI, (ROI shape) float32 on the model's device."""
        return (self.total / self.coverage)[self.plan.unpadded_slices]
