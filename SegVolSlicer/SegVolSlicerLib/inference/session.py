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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InputError
from ..prompts import Target
from ..vocabulary import resolve_name
from .cache import EmbeddingCache
from .merge import merge_zoom_in, zoom_out_crop_mask
from .model_space import ModelSpace
from .point_sampling import make_generator
from .preprocess import PreparedVolume, prepare_volume
from .prompt_mapping import ModelPrompts, prompts_from_target
from .roi import Roi, roi_from_zoom_out
from .window_prompts import ZoomOutPrediction
from .windows import Window, WindowPlan
from .zoom_in import raise_if_cancelled, run_zoom_in
from .zoom_out import ZoomOutResult, run_zoom_out

Progress = Callable[[str, int, int], None]
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


class SegVolSession:
    """Segments one volume, any number of times, with any prompts.

    model: a SegVol (SegVolSlicerLib.model) or anything with its encode_image / encode_text / decode / device.
    volume: (K, J, I) array as `slicer.util.arrayFromVolume` gives it; ijk_to_ras: its 4x4 matrix.
    cache_budget_mb: memory for cached embeddings (a zoom-in window embedding is 6 MB in float32).
    point_sampling: "seeded" (default, reproducible: zoom-in clicks drawn from a generator seeded with
      `seed` for every target) or "official" (torch's global generator, as the official code).
    window_batch_size: windows encoded per encoder call (default: 4 on CUDA, where batching fills the
      GPU, and 1 elsewhere, where it gains nothing and raises peak memory).
    """

    def __init__(self, model, volume: np.ndarray, ijk_to_ras, cache_budget_mb: float = 1024,
                 point_sampling: str = "seeded", seed: int = 0, window_batch_size: int | None = None,
                 progress: Progress | None = None):
        if point_sampling not in POINT_SAMPLING:
            raise InputError(f"point_sampling must be one of {', '.join(POINT_SAMPLING)}, got {point_sampling!r}")
        device = model.device
        if window_batch_size is None:
            window_batch_size = 4 if device.type == "cuda" else 1
        if window_batch_size < 1:
            raise InputError("window_batch_size must be at least 1")
        self.model = model
        self.point_sampling, self.seed, self.window_batch_size = point_sampling, seed, int(window_batch_size)
        if progress is not None:
            progress("preprocess", 0, 1)
        self.prepared: PreparedVolume = prepare_volume(volume, ijk_to_ras)
        if progress is not None:
            progress("preprocess", 1, 1)
        self.space = ModelSpace(self.prepared)
        self.cache = EmbeddingCache(cache_budget_mb)
        # On a GPU the crop is uploaded once and the windows are cut out there, not copied one by one.
        self._window_source = self.prepared.image.to(device) if device.type == "cuda" else self.prepared.image

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
            batch = missing[first:first + self.window_batch_size]
            images = torch.cat([w.image(self._window_source) for w in batch])
            for window, embedding in zip(batch, self.model.encode_image(images)):
                found[window.cache_key] = self.cache.put(window.cache_key, embedding[None].clone())
        return [found[w.cache_key] for w in windows]

    # --- segmentation ---

    def segment(self, target: Target, zoom_in: bool = True, progress: Progress | None = None,
                cancel=None) -> SegmentationResult:
        warnings = []
        text = None
        if target.text is not None:
            text, known = resolve_name(target.text)
            if not known:
                warnings.append(f"'{text}' is not one of SegVol's 222 training names: it is used as typed, "
                                "expect a weaker result (see the list of known names)")
        prompts = prompts_from_target(target, text, self.space)
        return self.run(target.name, prompts, zoom_in, progress, cancel, warnings)

    def segment_many(self, targets: Sequence[Target], zoom_in: bool = True, progress: Progress | None = None,
                     cancel=None) -> list[SegmentationResult]:
        """One result per target; the image is encoded once and shared windows once."""
        return [self.segment(target, zoom_in, progress, cancel) for target in targets]

    def new_generator(self) -> torch.Generator | None:
        """The click sampler's random source for one target: seeded, or None for torch's global generator."""
        return make_generator(self.seed if self.point_sampling == "seeded" else None)

    def run(self, name: str, prompts: ModelPrompts, zoom_in: bool = True, progress: Progress | None = None,
            cancel=None, warnings: Sequence[str] = (), generator: torch.Generator | None = None) -> SegmentationResult:
        """The pipeline for prompts already in model space (segment() and evaluation build them).

        `generator`: the random source of the zoom-in click sampling, when the caller already drew from it
        (evaluation draws the zoom-out clicks first, as the official demo); default `new_generator()`.
        """
        warnings = [*warnings, *prompts.warnings]
        raise_if_cancelled(cancel)
        if progress is not None:
            progress("zoom-out", 0, 1)
        text_embedding = self.text_embedding(prompts.text)
        zoom_out = run_zoom_out(self.model, self.zoom_out_embedding(), text_embedding, prompts)
        if progress is not None:
            progress("zoom-out", 1, 1)
        prediction = ZoomOutPrediction(zoom_out.mask, self.space)
        zoom_out_mask = zoom_out_crop_mask(prediction, self.prepared.cropped_shape)
        mask, roi, windows = zoom_out_mask, None, 0
        if not zoom_out_mask.any():
            warnings.append(f"SegVol found nothing for '{name}'"
                            + (" in the zoom-out pass, so the zoom-in was skipped" if zoom_in else "")
                            + ": check the prompts")
        elif zoom_in:
            roi = roi_from_zoom_out(zoom_out.mask, self.space)
            plan = WindowPlan.for_roi(roi)
            generator = generator if generator is not None else self.new_generator()
            roi_logits = run_zoom_in(self.model, self.encode_windows, plan, prompts, prediction,
                                     text_embedding, generator, progress, cancel, self.window_batch_size)
            mask, windows = merge_zoom_in(zoom_out_mask, roi, roi_logits), len(plan)
            if not mask.any():
                warnings.append(f"the zoom-in refinement of '{name}' came out empty: check the prompts, or "
                                "compare with the zoom-out result")
        return SegmentationResult(name=name, text=prompts.text, mask=self.prepared.paste_kji(mask),
                                  zoom_out_mask=self.prepared.paste_kji(zoom_out_mask), warnings=warnings,
                                  roi=roi, windows=windows, crop=self.prepared.crop_slices_kji, zoom_out=zoom_out)
