"""Local correction, a named mode beside the official pipeline: clicks that act where they are placed.

    first = session.segment(Target("liver", text="liver"))
    fixed = session.refine(first, Target("liver", text="liver", points=Points([ijk_pos, ijk_neg], [1, 0])))
    edited = session.refine(first, target, current_mask=segment_as_it_is_now)   # hand edits kept outside

The official zoom-in never sees the user's clicks: its windows are prompted with clicks drawn from the
zoom-out mask, so a negative click acts on the coarse 32x256x256 pass only. A correction instead reruns, from
the previous result's window plan, the window each new, moved or removed click falls in (the one whose centre
is nearest the click), prompted with that window's usual prompts (the official per-window prompts of the
previous run's prompts; in point mode their sampled clicks are drawn afresh from the session's generator)
plus the user's clicks inside it, labels kept. Inside those windows' footprint the
mask becomes the thresholded average of the rerun windows' logits (their neighbours were prompted without the
new clicks, so they are not averaged in); everywhere else it stays as it was, bit for bit. The windows'
embeddings come from the session's cache, so the encoder does not run while they are cached.

A correction starts from `current_mask` when given (the segment as it is now, hand edits included): outside
the rerun windows its voxels stay bit for bit, inside them the model's answer replaces them, and the result's
warnings say how many hand-edited voxels (those where it differs from `previous.mask`) were replaced.

A click outside the previous zoom-in region (or off the body crop), a changed text or box, or a previous
result without a zoom-in falls back to the full official pipeline, with a note in the result's warnings.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from ..errors import InputError
from ..model.image_encoder import WINDOW_SIZE
from ..prompts import Box, Points, Target
from ..reporting import NO_REPORT, Reporter
from ..vocabulary import resolve_text
from .prompt_mapping import ModelPrompts
from .window_prompts import WindowPrompts, window_prompts
from .windows import Window, WindowPlan
from .zoom_out import ZoomOutPrediction


@dataclass(frozen=True)
class CorrectionBasis:
    """What a result carries so that it can be corrected: the prompts its window plan was made with, the
    user's prompts so far (None when it was derived from a mask and not clicked yet) and, for a mask-derived
    result, the mask's box (it and the mask's text stand for the box and text the user did not give)."""

    prompts: ModelPrompts
    target: Target | None
    mask_box: Box | None = None

    def stands_for(self, target: Target | None) -> tuple[str | None, Box | None, list[str]]:
        """The text (resolved) and box a target stands for, and the text's warnings."""
        text, warnings = resolve_text(None if target is None else target.text)
        box = None if target is None else target.box
        if self.mask_box is not None:
            text = self.prompts.text if text is None else text
            box = self.mask_box if box is None else box
        return text, box, warnings


def _click_keys(points: Points | None) -> set[tuple]:
    if points is None:
        return set()
    return {(*map(float, ijk), int(label)) for ijk, label in zip(points.ijk, points.labels)}


def changed_clicks(before: Points | None, after: Points | None) -> np.ndarray:
    """(N, 3) IJK of the clicks added, moved (both places) or removed between two click sets."""
    keys = _click_keys(before) ^ _click_keys(after)
    return np.array(sorted(key[:3] for key in keys), dtype=np.float64).reshape(-1, 3)


def nearest_window(plan: WindowPlan, voxel: np.ndarray) -> Window | None:
    """The window whose real image part holds the crop voxel and whose centre is nearest it (distance in
    window sizes, so the 32-deep and 256-wide axes weigh alike); None outside every window."""
    best, best_distance = None, np.inf
    size = np.asarray(WINDOW_SIZE, dtype=np.float64)
    for window in plan.windows:
        if np.all(voxel >= window.valid_start) and np.all(voxel < window.valid_stop):
            centre = np.asarray(window.crop_offset) + (size - 1) / 2
            distance = float(np.max(np.abs(voxel - centre) / size))
            if distance < best_distance:
                best, best_distance = window, distance
    return best


def with_user_clicks(usual: WindowPrompts, window: Window, crop: np.ndarray, labels: np.ndarray) -> WindowPrompts:
    """The window's usual prompts plus the user's clicks that lie in it, in window voxels, labels kept."""
    voxels = np.rint(crop).astype(np.int64)
    inside = np.all((voxels >= window.valid_start) & (voxels < window.valid_stop), axis=1)
    if not inside.any():
        return usual
    coords = torch.as_tensor(crop[inside] - np.asarray(window.crop_offset), dtype=torch.float32)[None]
    user_labels = torch.as_tensor(labels[inside], dtype=torch.float32)[None]
    if usual.points is not None:
        coords = torch.cat([usual.points[0], coords], dim=1)
        user_labels = torch.cat([usual.points[1], user_labels], dim=1)
    return WindowPrompts(usual.boxes, (coords, user_labels))


def _kji_slices(prepared, start, stop) -> tuple[slice, slice, slice]:
    """Crop-coordinate [start, stop) (model axis order) -> slices of the input (K, J, I) grid."""
    slices = [slice(0, 0)] * 3
    for model_axis, array_axis in enumerate(prepared.axes.order):
        offset = prepared.crop_start[model_axis]
        slices[array_axis] = slice(offset + int(start[model_axis]), offset + int(stop[model_axis]))
    return tuple(slices)


def _fallback(session, basis: CorrectionBasis | None, target: Target, reason: str, reporter: Reporter):
    mask_box = None if basis is None else basis.mask_box
    if basis is not None:
        text, box, _ = basis.stands_for(target)
        target = replace(target, text=target.text if target.text is not None else text, box=box)
    result = session.segment(target, reporter=reporter)
    result.basis = CorrectionBasis(result.basis.prompts, target, mask_box)
    result.name = target.name
    result.warnings.insert(0, f"'{target.name}' was segmented again as a whole (official pipeline): {reason}")
    return result


def refine(session, previous, target: Target, reporter: Reporter = NO_REPORT, current_mask: np.ndarray | None = None):
    """`previous` corrected with `target`'s clicks (see the module docstring), starting from `current_mask`
    ((K, J, I), non-zero inside) when given; a new SegmentationResult whose `changed` bounds what differs from
    the mask it started from and whose `windows` counts the windows run."""
    start = previous.mask if current_mask is None else _binary(current_mask, previous.mask.shape)
    result, local = _correct(session, previous, target, reporter, start)
    if current_mask is not None:
        # A hand edit is a voxel where the segment now differs from the result it was corrected from.
        replaced = np.count_nonzero((start != previous.mask) & (result.mask != start))
        if replaced:
            where = "inside the corrected windows" if local else "by the whole new segmentation"
            result.warnings.append(f"{replaced} hand-edited voxel(s) of '{target.name}' were replaced {where}")
    return result


def _binary(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise InputError(
            f"the segment as it is now has {mask.shape[::-1]} voxels (I, J, K) but its result has "
            f"{tuple(shape)[::-1]}: give it on the volume's grid"
        )
    return (mask != 0).astype(np.uint8)


def _correct(session, previous, target: Target, reporter: Reporter, start: np.ndarray):
    """(the result, whether it was corrected locally rather than by the official pipeline)."""
    basis: CorrectionBasis | None = previous.basis
    if basis is None:  # e.g. an evaluation result: no user prompts to compare the target with
        return _fallback(session, None, target, "the previous result has nothing to correct from", reporter), False
    text, box, warnings = basis.stands_for(target)
    _, before_box, _ = basis.stands_for(basis.target)
    if text != basis.prompts.text:
        return _fallback(session, basis, target, "its text changed", reporter), False
    if box != before_box:
        return _fallback(session, basis, target, "its box changed", reporter), False
    if previous.mask.shape != tuple(session.prepared.shape_kji):
        return _fallback(session, basis, target, "the previous result belongs to another volume", reporter), False
    if previous.roi is None:
        return _fallback(session, basis, target, "the previous result had no zoom-in", reporter), False
    moved = changed_clicks(None if basis.target is None else basis.target.points, target.points)
    space = session.space
    plan = WindowPlan.for_roi(previous.roi)
    windows: list[Window] = []
    for ijk, crop in zip(moved, space.ijk_to_crop(moved)):
        # The windows' real image parts tile the ROI exactly: no window holds a click outside it.
        window = nearest_window(plan, np.rint(crop)) if space.contains_crop(crop)[0] else None
        if window is None:
            where = ", ".join(f"{v:.1f}" for v in ijk)
            reason = f"the click at IJK ({where}) lies outside its zoom-in region"
            return _fallback(session, basis, target, reason, reporter), False
        if window not in windows:
            windows.append(window)
    result = replace(
        previous,
        name=target.name,
        mask=start,
        warnings=[*warnings],
        windows=len(windows),
        changed=(slice(0, 0),) * 3,
        basis=CorrectionBasis(basis.prompts, target, basis.mask_box),
    )
    if windows:
        result.mask, result.probabilities, result.changed = _rerun_windows(
            session, previous, start, basis.prompts, plan, windows, target, reporter
        )
    return result, True


def _rerun_windows(
    session, previous, start_mask: np.ndarray, prompts: ModelPrompts, plan, windows, target: Target, reporter: Reporter
):
    """The corrected `start_mask`, the previous result's probabilities (if kept) corrected alike, and the
    (K, J, I) slices they may differ in."""
    prepared = session.prepared
    start = np.min([w.valid_start for w in windows], axis=0)
    stop = np.max([w.valid_stop for w in windows], axis=0)
    total = torch.zeros(tuple(stop - start), dtype=torch.float32)
    coverage = torch.zeros_like(total)
    prediction = ZoomOutPrediction(previous.zoom_out.mask, session.space)
    generator = session.new_generator()
    text_embedding = session.text_embedding(prompts.text)
    clicks = target.points
    crop = session.space.ijk_to_crop(clicks.ijk) if clicks is not None else np.zeros((0, 3))
    labels = clicks.labels if clicks is not None else np.zeros(0)
    for done, (window, embedding) in enumerate(zip(windows, session.encode_windows(windows))):
        reporter.check_cancelled()
        usual = window_prompts(plan, window, prompts.box_map, prompts.click_map, prediction, generator)
        prompt = with_user_clicks(usual, window, crop, labels)
        logits = session.model.decode(embedding, text_embedding, prompt.boxes, prompt.points)[0, 0]
        into = tuple(slice(a - s, b - s) for a, b, s in zip(window.valid_start, window.valid_stop, start))
        total[into] += logits[window.valid_in_window].float().cpu()
        coverage[into] += 1
        reporter.progress("correction", done + 1, len(windows))
    covered = (coverage > 0).numpy()
    probabilities = torch.sigmoid(total / coverage.clamp(min=1))
    corrected = (probabilities > 0.5).numpy()
    changed = _kji_slices(prepared, start, stop)
    mask = start_mask.copy()
    region = prepared.axes.to_model(mask[changed])  # a view: writing it writes the mask
    region[covered] = corrected[covered]
    kept = previous.probabilities  # kept by sessions asked for them (confidence): corrected where the mask is
    if kept is not None:
        kept = kept.copy()
        prepared.axes.to_model(kept[changed])[covered] = probabilities.numpy()[covered]
    return mask, kept, changed
