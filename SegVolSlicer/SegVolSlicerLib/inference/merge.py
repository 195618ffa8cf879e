"""Stage 5: merge zoom-out and zoom-in into the final mask (official `inference_demo.py:145`).

Inside the ROI the zoom-in logits replace the up-sampled zoom-out logits; outside it the zoom-out result
stays. The mask is sigmoid > 0.5 on the crop, then pasted into the full grid (the Hugging Face port's
`save_preds`), with the axes put back in the volume's order.

`final_probabilities` is the same merge before the threshold (a separate output for confidence and FRACTIONAL
DICOM SEG): the same logits, so `final_probabilities(...) > 0.5` is the mask; the mask itself never comes
from it.
"""

from __future__ import annotations

import numpy as np
import torch

from .preprocess import PreparedVolume
from .roi import Roi


def final_mask(
    prepared: PreparedVolume,
    zoom_out_crop_mask: np.ndarray,
    roi: Roi | None = None,
    roi_logits: torch.Tensor | None = None,
) -> np.ndarray:
    """The (K, J, I) uint8 mask on the input grid: the zoom-out crop mask, with the ROI replaced by the
    thresholded zoom-in logits when there are any."""
    merged = zoom_out_crop_mask
    if roi is not None:
        merged = zoom_out_crop_mask.copy()
        merged[roi.slices] = (torch.sigmoid(roi_logits) > 0.5).cpu().numpy()
    return prepared.paste_kji(merged)


def final_probabilities(
    prepared: PreparedVolume,
    zoom_out_crop_probabilities: np.ndarray,
    roi: Roi | None = None,
    roi_logits: torch.Tensor | None = None,
) -> np.ndarray:
    """The (K, J, I) float32 sigmoid probabilities on the input grid that `final_mask` thresholds: the
    up-sampled zoom-out probabilities, with the ROI's zoom-in ones in place; 0 outside the body crop."""
    merged = np.array(zoom_out_crop_probabilities, dtype=np.float32)
    if roi is not None:
        merged[roi.slices] = torch.sigmoid(roi_logits.float()).cpu().numpy()
    return prepared.paste_kji(merged)
