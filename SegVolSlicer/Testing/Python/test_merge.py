"""Stage 5, the merge (inference/merge.py), on a small volume whose body crop starts away from voxel 0: the
zoom-in logits replace the zoom-out result inside the ROI only, thresholded as the official code does."""

import numpy as np
import pytest
import torch

from SegVolSlicerLib.inference.merge import final_mask, final_probabilities
from SegVolSlicerLib.inference.preprocess import prepare_volume
from SegVolSlicerLib.inference.roi import Roi
from SegVolSlicerLib.testing.synthetic_ct import synthetic_ijk_to_ras

BODY_START_KJI, BODY_STOP_KJI = (5, 7, 9), (25, 40, 50)
ROI = Roi((2, 3, 4), (6, 9, 12))  # crop coordinates
LOGITS = torch.tensor([-3.0, 0.0, 2.0, -0.5]).repeat(4 * 6 * 8 // 4).reshape(4, 6, 8)  # 0: sigmoid exactly 0.5


@pytest.fixture(scope="module")
def prepared():
    volume = np.full((30, 48, 64), -1000, dtype=np.int16)
    body = tuple(slice(a, b) for a, b in zip(BODY_START_KJI, BODY_STOP_KJI))
    volume[body] = np.random.default_rng(0).integers(-100, 200, volume[body].shape)
    prepared = prepare_volume(volume, synthetic_ijk_to_ras())
    assert prepared.crop_start == BODY_START_KJI and prepared.axes.order == (0, 1, 2)  # the premise
    return prepared


def in_volume(crop_slices):
    return tuple(slice(o + s.start, o + s.stop) for o, s in zip(BODY_START_KJI, crop_slices))


def test_the_roi_takes_the_zoom_in_answer_thresholded_strictly_above_one_half(prepared):
    """Guards `>= 0.5` for the official `> 0.5` (a zero logit is background), the ROI pasted at another
    place, and the zoom-out mask around the ROI lost or changed in the caller's hands."""
    zoom_out = np.ones(prepared.cropped_shape, dtype=np.uint8)
    kept = zoom_out.copy()
    mask = final_mask(prepared, zoom_out, ROI, LOGITS)
    assert np.array_equal(zoom_out, kept)  # the caller's zoom-out mask is not written
    assert mask.dtype == np.uint8 and mask.shape == (30, 48, 64)
    np.testing.assert_array_equal(mask[in_volume(ROI.slices)], (LOGITS > 0).numpy())
    assert not mask[in_volume(ROI.slices)][LOGITS.numpy() == 0].any()
    outside_roi = np.zeros(mask.shape, dtype=bool)
    outside_roi[in_volume([slice(0, n) for n in prepared.cropped_shape])] = True
    outside_roi[in_volume(ROI.slices)] = False
    assert mask[outside_roi].all()  # the zoom-out answer stays around the ROI
    assert mask.sum() == outside_roi.sum() + int((LOGITS > 0).sum())  # and nothing beyond the crop
    assert np.array_equal(final_mask(prepared, zoom_out), prepared.paste_kji(zoom_out))  # no zoom-in


def test_probabilities_are_the_same_merge_before_the_threshold(prepared):
    """Guards the probabilities missing the zoom-in (or taking its logits unsquashed) and coming back in
    another type: thresholded they must give the mask, and they are float32 sigmoid values."""
    zoom_out = np.full(prepared.cropped_shape, 0.75, dtype=np.float64)
    probabilities = final_probabilities(prepared, zoom_out, ROI, LOGITS)
    assert probabilities.dtype == np.float32 and probabilities.shape == (30, 48, 64)
    np.testing.assert_allclose(probabilities[in_volume(ROI.slices)], torch.sigmoid(LOGITS).numpy(), rtol=1e-6)
    mask = final_mask(prepared, (zoom_out > 0.5).astype(np.uint8), ROI, LOGITS)
    np.testing.assert_array_equal(probabilities > 0.5, mask.astype(bool))
    crop = in_volume([slice(0, n) for n in prepared.cropped_shape])
    around = np.zeros(probabilities.shape, dtype=bool)
    around[crop] = True
    around[in_volume(ROI.slices)] = False
    assert np.all(probabilities[around] == np.float32(0.75)) and probabilities[~around].sum() > 0
    outside_crop = np.ones(probabilities.shape, dtype=bool)
    outside_crop[crop] = False
    assert not probabilities[outside_crop].any()
    without = final_probabilities(prepared, zoom_out)
    assert without.dtype == np.float32 and np.all(without[crop] == np.float32(0.75))
