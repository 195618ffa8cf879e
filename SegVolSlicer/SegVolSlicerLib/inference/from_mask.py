"""A segment made elsewhere (drawn by hand, TotalSegmentator, an earlier session) segmented again from the
prompts the official evaluation derives from a label (label_prompts.py): its bounding box, one plus three
positive and three negative points drawn from it, and its name as text when it is one of SegVol's names. The
result carries the mask's box, so a correction that gives no box of its own (or falls back to the whole
structure) keeps it as its box.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..prompts import Box
from ..reporting import NO_REPORT, Reporter
from ..vocabulary import resolve_name
from .correction import CorrectionBasis
from .label_prompts import PromptMode, label_prompts


def segment_from_mask(session, name: str, mask_kji: np.ndarray, reporter: Reporter = NO_REPORT):
    """The session's SegmentationResult for the structure `mask_kji` (non-zero voxels) shows, named `name`."""
    mask = np.asarray(mask_kji) != 0
    prepared = session.prepared
    if mask.shape != tuple(prepared.shape_kji):
        raise InputError(
            f"the mask has {mask.shape[::-1]} voxels (I, J, K) but the CT has {tuple(prepared.shape_kji)[::-1]}: "
            "give a mask on the CT's grid"
        )
    if not mask[prepared.crop_slices_kji].any():
        raise InputError(f"the mask of '{name}' has no voxel on the body SegVol analyses: give a non-empty mask")
    text, known = resolve_name(name)
    warnings = [] if known else [f"'{name}' is not one of SegVol's names: the mask's box and points prompt alone"]
    generator = session.new_generator()
    # The evaluation's draws continue from the label's clicks into the zoom-in, as in evaluate_classes.
    prompts = label_prompts(
        mask.astype(np.uint8), text, PromptMode(known, True, True), prepared, session.space, generator
    )
    result = session.segment_model_prompts(name, prompts, True, reporter, warnings, generator=generator)
    result.basis = CorrectionBasis(prompts, None, Box.around_mask(mask))
    return result
