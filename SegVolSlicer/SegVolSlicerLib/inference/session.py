"""A per-volume inference session: the zoom-out-zoom-in pipeline with embedding caches.

    session = SegVolSession(model, volume_kji, ijk_to_ras)
    result = session.segment(Target("liver", text="liver"))      # result.mask: (K, J, I) uint8

The volume is preprocessed once. Image embeddings do not depend on prompts, so the zoom-out embedding and
every zoom-in window embedding (keyed by the window's position and padding) are cached, as are text
embeddings (keyed by string); a new click, box or text reruns the decoder and encodes only windows not seen
before. The cache is least-recently-used with a memory budget. The data flow per target:
prompt_mapping -> zoom_out -> roi -> windows / window_prompts -> zoom_in -> merge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import runtime
from ..errors import InputError
from ..prompts import Target
from ..reporting import NO_REPORT, Reporter
from ..vocabulary import resolve_text
from .cache import EmbeddingCache, tensor_bytes
from .correction import CorrectionBasis, refine
from .from_mask import segment_from_mask
from .merge import final_mask, final_probabilities
from .model_space import ModelSpace
from .point_sampling import make_generator
from .preprocess import PreparedVolume, prepare_volume
from .prompt_mapping import ModelPrompts, prompts_from_target
from .roi import Roi, roi_from_zoom_out
from .window_prompts import window_prompts
from .windows import Window, WindowPlan
from .zoom_in import WindowAverage
from .zoom_out import ZoomOutPrediction, ZoomOutResult, run_zoom_out

POINT_SAMPLING = ("seeded", "official")


@dataclass
class SegmentationResult:
    name: str
    text: str | None  # the text the model was prompted with (None: no text prompt)
    mask: np.ndarray  # (K, J, I) uint8 on the input grid: the final zoom-out-zoom-in mask
    zoom_out_mask: np.ndarray  # (K, J, I) uint8: the zoom-out pass alone
    warnings: list[str] = field(default_factory=list)
    roi: Roi | None = None  # zoom-in region in crop coordinates (None: no zoom-in)
    windows: int = 0  # zoom-in windows run
    crop: tuple[slice, slice, slice] | None = None  # the body crop as slices of the (K, J, I) grid
    zoom_out: ZoomOutResult | None = field(default=None, repr=False)
    changed: tuple[slice, slice, slice] | None = None  # (K, J, I) slices this run may have changed
    basis: CorrectionBasis | None = field(default=None, repr=False)  # what refine() corrects it from
    # (K, J, I) float32 sigmoid probabilities the mask thresholds (only with keep_probabilities; else None)
    probabilities: np.ndarray | None = field(default=None, repr=False)


class SegVolSession:
    """Segments one volume, any number of times, with any prompts.

    model: a SegVol (SegVolSlicerLib.model) or anything with its encode_image / encode_text / decode / device.
    volume: (K, J, I) array as `slicer.util.arrayFromVolume` gives it; ijk_to_ras: its 4x4 matrix.
    cache_budget_mb: memory for cached embeddings (a zoom-in window embedding is 6 MB in float32).
    point_sampling: "seeded" (default, reproducible: zoom-in clicks drawn from a generator seeded with
      `seed` for every target) or "official" (torch's global generator, as the official code).
    window_batch_size: windows encoded per encoder call (default: runtime.window_batch_size).
    keep_probabilities: also return each result's probabilities (4 bytes a voxel; for confidence and
      FRACTIONAL DICOM SEG); the mask is the same either way.
    """

    def __init__(
        self,
        model,
        volume: np.ndarray,
        ijk_to_ras,
        cache_budget_mb: float = 1024,
        point_sampling: str = "seeded",
        seed: int = 0,
        window_batch_size: int | None = None,
        reporter: Reporter = NO_REPORT,
        keep_probabilities: bool = False,
    ):
        if point_sampling not in POINT_SAMPLING:
            raise InputError(f"point_sampling must be one of {', '.join(POINT_SAMPLING)}, got {point_sampling!r}")
        device = model.device
        if window_batch_size is None:
            window_batch_size = runtime.window_batch_size(device)
        if window_batch_size < 1:
            raise InputError("window_batch_size must be at least 1")
        self.model = model
        self.point_sampling, self.seed, self.window_batch_size = point_sampling, seed, int(window_batch_size)
        self.keep_probabilities = keep_probabilities
        reporter.progress("preprocess", 0, 1)
        self.prepared: PreparedVolume = prepare_volume(volume, ijk_to_ras)
        reporter.check_cancelled()  # the volume's preparation took seconds: stop here, not after the first pass
        reporter.progress("preprocess", 1, 1)
        self.space = ModelSpace(self.prepared)
        self.cache = EmbeddingCache(cache_budget_mb)
        on_device = runtime.keeps_crop_on_device(device)
        self._window_source = self.prepared.image.to(device) if on_device else self.prepared.image

    @property
    def memory_bytes(self) -> int:
        """What the session holds: the prepared crop and zoom-out image, a device copy, cached embeddings."""
        held = tensor_bytes(self.prepared.image) + tensor_bytes(self.prepared.zoom_out_image) + self.cache.bytes
        if self._window_source is not self.prepared.image:
            held += tensor_bytes(self._window_source)
        return held

    # --- cached encoders ---

    def text_embedding(self, text: str | None) -> torch.Tensor | None:
        if text is None:
            return None
        return self.cache.get_or_compute(("text", text), lambda: self.model.encode_text([text]))

    def zoom_out_embedding(self) -> torch.Tensor:
        return self.cache.get_or_compute(("zoom-out",), lambda: self.model.encode_image(self.prepared.zoom_out_image))

    def encode_windows(self, windows: Sequence[Window]) -> list[torch.Tensor]:
        """Embeddings of the windows, from the cache or from batched encoder passes."""
        found = {w.cache_key: self.cache.get(w.cache_key) for w in windows}
        missing = list({w.cache_key: w for w in windows if found[w.cache_key] is None}.values())
        for first in range(0, len(missing), self.window_batch_size):
            batch = missing[first : first + self.window_batch_size]
            images = torch.cat([w.image(self._window_source) for w in batch])
            for window, embedding in zip(batch, self.model.encode_image(images)):
                found[window.cache_key] = self.cache.put(window.cache_key, embedding[None].clone())
        return [found[w.cache_key] for w in windows]

    # --- segmentation ---

    def segment(self, target: Target, zoom_in: bool = True, reporter: Reporter = NO_REPORT) -> SegmentationResult:
        text, warnings = resolve_text(target.text)
        prompts = prompts_from_target(target, text, self.space)
        result = self.segment_model_prompts(target.name, prompts, zoom_in, reporter, warnings)
        result.basis = CorrectionBasis(prompts, target)
        return result

    def refine(
        self,
        previous: SegmentationResult,
        target: Target,
        reporter: Reporter = NO_REPORT,
        current_mask: np.ndarray | None = None,
    ) -> SegmentationResult:
        """A local correction of `previous` with `target`'s clicks (a mode beyond the official pipeline; see
        correction.py), starting from `current_mask` (the segment as it is now) when given: only the zoom-in
        windows the new clicks fall in run again."""
        return refine(self, previous, target, reporter, current_mask)

    def segment_from_mask(self, name: str, mask_kji: np.ndarray, reporter: Reporter = NO_REPORT) -> SegmentationResult:
        """The structure a mask shows, segmented from the official evaluation's prompts for it (from_mask.py)."""
        return segment_from_mask(self, name, mask_kji, reporter)

    def segment_many(
        self, targets: Sequence[Target], zoom_in: bool = True, reporter: Reporter = NO_REPORT
    ) -> list[SegmentationResult]:
        """One result per target; the image is encoded once and shared windows once."""
        results = []
        for index, target in enumerate(targets):
            reporter.progress("target", index, len(targets))
            results.append(self.segment(target, zoom_in, reporter))
        return results

    def new_generator(self) -> torch.Generator | None:
        """The click sampler's random source for one target: seeded, or None for torch's global generator."""
        return make_generator(self.seed if self.point_sampling == "seeded" else None)

    def segment_model_prompts(
        self,
        name: str,
        prompts: ModelPrompts,
        zoom_in: bool = True,
        reporter: Reporter = NO_REPORT,
        warnings: Sequence[str] = (),
        generator: torch.Generator | None = None,
    ) -> SegmentationResult:
        """The pipeline for prompts already in model space (segment() and the evaluation protocol build them).

        `generator`: the random source of the zoom-in click sampling, when the caller already drew from it
        (evaluation draws the zoom-out clicks first, as the official demo); default `new_generator()`.
        """
        warnings = [*warnings, *prompts.warnings]
        reporter.check_cancelled()
        reporter.progress("zoom-out", 0, 1)
        text_embedding = self.text_embedding(prompts.text)
        zoom_out = run_zoom_out(self.model, self.zoom_out_embedding(), text_embedding, prompts)
        reporter.progress("zoom-out", 1, 1)
        prediction = ZoomOutPrediction(zoom_out.mask, self.space)
        zoom_out_crop_mask = prediction.crop_mask()
        zoom_out_mask = final_mask(self.prepared, zoom_out_crop_mask)
        mask, roi, windows, roi_logits = zoom_out_mask, None, 0, None
        if not zoom_out_crop_mask.any():
            warnings.append(
                f"SegVol found nothing for '{name}'"
                + (" in the zoom-out pass, so the zoom-in was skipped" if zoom_in else "")
                + ": check the prompts"
            )
        elif zoom_in:
            roi = roi_from_zoom_out(zoom_out.mask, self.space)
            plan = WindowPlan.for_roi(roi)
            generator = generator if generator is not None else self.new_generator()
            roi_logits = self._zoom_in(plan, prompts, prediction, text_embedding, generator, reporter)
            mask, windows = final_mask(self.prepared, zoom_out_crop_mask, roi, roi_logits), len(plan)
            if not mask.any():
                warnings.append(
                    f"the zoom-in refinement of '{name}' came out empty: check the prompts, or "
                    "compare with the zoom-out result"
                )
        probabilities = None
        if self.keep_probabilities:
            zoom_out_probabilities = ZoomOutPrediction(torch.sigmoid(zoom_out.logits).numpy(), self.space)
            crop_probabilities = zoom_out_probabilities.crop_region((0, 0, 0), self.space.cropped_shape)
            probabilities = final_probabilities(self.prepared, crop_probabilities, roi, roi_logits)
        return SegmentationResult(
            name=name,
            text=prompts.text,
            mask=mask,
            zoom_out_mask=zoom_out_mask,
            warnings=warnings,
            roi=roi,
            windows=windows,
            crop=self.prepared.crop_slices_kji,
            zoom_out=zoom_out,
            changed=tuple(slice(0, n) for n in self.prepared.shape_kji),
            probabilities=probabilities,
        )

    def _zoom_in(
        self,
        plan: WindowPlan,
        prompts: ModelPrompts,
        prediction: ZoomOutPrediction,
        text_embedding: torch.Tensor | None,
        generator,
        reporter: Reporter,
    ) -> torch.Tensor:
        """Zoom-in logits over the ROI: the windows in batches, each with its official prompts."""
        average = WindowAverage(plan, self.model.device)
        done = 0
        for first in range(0, len(plan), self.window_batch_size):
            reporter.check_cancelled()
            chunk = plan.windows[first : first + self.window_batch_size]
            for window, embedding in zip(chunk, self.encode_windows(chunk)):
                window_prompt = window_prompts(plan, window, prompts.box_map, prompts.click_map, prediction, generator)
                average.add(
                    window, self.model.decode(embedding, text_embedding, window_prompt.boxes, window_prompt.points)
                )
                done += 1
                reporter.progress("zoom-in", done, len(plan))
        return average.roi_logits()
