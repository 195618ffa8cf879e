"""Stage 5: merge zoom-out and zoom-in into the final mask (official `inference_demo.py:145`).

Inside the ROI the zoom-in logits replace the up-sampled zoom-out logits; outside it the zoom-out result
stays. The mask is sigmoid > 0.5 on the crop, then pasted into the full grid (the Hugging Face port's
`save_preds`), with the axes put back in the volume's order.
"""

from __future__ import annotations

import numpy as np
import torch

from .roi import Roi
from .window_prompts import ZoomOutPrediction


def zoom_out_crop_mask(prediction: ZoomOutPrediction, cropped_shape) -> np.ndarray:
    """The zoom-out mask nearest-up-sampled to the crop, uint8."""
    return prediction.crop_region((0, 0, 0), cropped_shape).astype(np.uint8)


def merge_zoom_in(zoom_out_mask: np.ndarray, roi: Roi, roi_logits: torch.Tensor) -> np.ndarray:
    """The final crop mask: zoom-out mask with the ROI replaced by the thresholded zoom-in logits."""
    merged = zoom_out_mask.copy()
    merged[roi.slices] = (torch.sigmoid(roi_logits) > 0.5).cpu().numpy()
    return merged
