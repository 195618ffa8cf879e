"""Reduced precision (bf16 autocast) against the exact fp32 path, on the synthetic CT."""

import numpy as np
import pytest

from SegVolSlicerLib.errors import InputError
from SegVolSlicerLib.inference.session import SegVolSession
from SegVolSlicerLib.prompts import Box, Target
from SegVolSlicerLib.testing.synthetic_ct import make_synthetic_ct


def _dice(a, b):
    return 2 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def test_bf16_autocast_stays_within_dice_099_of_fp32(synthetic_model):
    ct = make_synthetic_ct()
    k, j, i = np.nonzero(ct.labels == 1)
    target = Target("liver", text="liver", box=Box((i.min(), j.min(), k.min()), (i.max(), j.max(), k.max())))
    masks = {}
    try:
        for precision in ("fp32", "bf16"):
            synthetic_model.set_precision(precision)
            result = SegVolSession(synthetic_model, ct.volume, ct.ijk_to_ras).segment(target)
            masks[precision] = result.mask.astype(bool)
    finally:
        synthetic_model.set_precision("fp32")
    assert result.windows >= 1  # the zoom-in ran, so windows were encoded in bf16 too
    assert masks["fp32"].any()
    assert _dice(masks["fp32"], masks["bf16"]) >= 0.99


def test_unknown_or_unsupported_precision_is_a_clear_error(synthetic_model):
    with pytest.raises(InputError, match="unknown precision"):
        synthetic_model.set_precision("int8")
    with pytest.raises(InputError, match="fp16 needs a GPU"):
        synthetic_model.set_precision("fp16")
    assert synthetic_model.precision == "fp32"
