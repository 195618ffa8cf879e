"""The engine against the official pipeline, step by step, on the synthetic CT with synthetic weights.

Goldens: SegVolSlicer/Testing/Data/goldens/pipeline_goldens.npz (made by tools/make_goldens.py from the
official code; its README documents every array). Prompts are derived from the labels exactly as the official
demo does (SegVolSlicerLib.evaluation), the random clicks with a generator seeded 0, which replays the
official `torch.manual_seed(0)` runs. Each (case, organ, mode) runs once; window embeddings are shared through
the session cache, so the whole file costs a handful of encoder passes.
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from SegVolSlicerLib.evaluation import PromptMode, dice, label_prompts
from SegVolSlicerLib.inference import SegVolSession
from SegVolSlicerLib.inference.preprocess import intensity_statistics
from SegVolSlicerLib.testing.synthetic_ct import make_synthetic_ct

GOLDENS = Path(__file__).resolve().parents[1] / "Data" / "goldens" / "pipeline_goldens.npz"
ORGANS = {"liver": 1, "spleen": 2}
MODES = {"text": "text", "box": "box", "text_box": "text+box", "points": "point", "text_points": "text+point"}
# Zoom-in checked on these runs (every official zoom-in path: text only, box and point windows with two windows,
# the single-window box and padding quirks); the zoom-out pass on all of them. Fewer decoder passes, same cover.
ZOOM_IN_RUNS = [
    ("full", "liver", "text_box"),
    ("full", "liver", "box"),
    ("full", "spleen", "text"),
    ("full", "spleen", "points"),
    ("thin", "spleen", "box"),
    ("thin", "spleen", "text_box"),
    ("thin", "spleen", "points"),
]
LOGIT_TOLERANCE = 1e-3  # fp32 on CPU, as test_model_parity
# The model matches the official logits to ~2e-5 (SDPA attention), so a voxel whose logit is that close to 0
# may flip; allow a few per million.
MAX_FLIPPED_FRACTION = 5e-6


def assert_same_mask(actual, expected):
    flipped = np.count_nonzero(actual.astype(bool) != expected)
    assert flipped <= MAX_FLIPPED_FRACTION * expected.size, f"{flipped} voxels differ"


def assert_zoom_in_plan(result, window_calls, goldens, key, cropped_shape):
    """ROI, number of windows and every window's box and clicks as the official run recorded them
    (`windows_points` rows padded with NaN where the official window got fewer clicks)."""
    roi = goldens[key + "roi"]
    assert result.roi is not None and result.roi.start == tuple(roi[:3])
    assert result.roi.stop == tuple(np.minimum(roi[3:] + 1, cropped_shape))
    assert result.windows == len(goldens[key + "windows_start"]) == len(window_calls)
    for n, call in enumerate(window_calls):
        expected_box = goldens[key + "windows_box"][n]
        if np.isnan(expected_box).all():
            assert call["boxes"] is None
        else:
            np.testing.assert_array_equal(call["boxes"][0].numpy(), expected_box)
        if key + "windows_points" in goldens:
            labels = goldens[key + "windows_point_labels"][n]
            count = int(np.count_nonzero(~np.isnan(labels)))
            np.testing.assert_array_equal(call["points"][0][0].numpy(), goldens[key + "windows_points"][n][:count])
            np.testing.assert_array_equal(call["points"][1][0].numpy(), labels[:count])
        else:
            assert call["points"] is None


def golden_runs():
    with np.load(GOLDENS) as goldens:
        keys = goldens.files
    return sorted({tuple(key.split(".")[:3]) for key in keys if key.endswith(".roi")})


@pytest.fixture(scope="module")
def goldens():
    with np.load(GOLDENS) as data:
        return {key: data[key] for key in data.files}


def case_volume(case):
    ct = make_synthetic_ct()
    if case == "full":
        return ct.volume, ct.labels, ct.ijk_to_ras
    matrix = ct.ijk_to_ras.copy()
    matrix[:3, 3] += 8 * matrix[:3, 2]  # the same voxels as slices 8..39 of the full CT
    return ct.volume[8:40], ct.labels[8:40], matrix


class RecordingModel:
    """Passes everything to the real model and records what the decoder was given and returned."""

    def __init__(self, model):
        self.model, self.calls = model, []
        self.device, self.dtype = model.device, model.dtype

    def encode_image(self, image):
        return self.model.encode_image(image)

    def encode_text(self, names):
        return self.model.encode_text(names)

    def decode(self, image_embedding, text_embedding=None, boxes=None, points=None):
        logits = self.model.decode(image_embedding, text_embedding, boxes, points)
        self.calls.append({"boxes": boxes, "points": points, "logits": logits[0, 0].clone()})
        return logits


@pytest.fixture(scope="module")
def sessions(synthetic_model):
    sessions = {}
    for case in ("full", "thin"):
        volume, labels, matrix = case_volume(case)
        sessions[case] = (SegVolSession(RecordingModel(synthetic_model), volume, matrix), labels)
    return sessions


@pytest.fixture(scope="module")
def runs(sessions):
    cache = {}

    def run(case, organ, mode):
        if (case, organ, mode) not in cache:
            session, labels = sessions[case]
            truth = (labels == ORGANS[organ]).astype(np.uint8)
            generator = session.new_generator()
            prompts = label_prompts(
                truth, organ, PromptMode.parse(MODES[mode]), session.prepared, session.space, generator
            )
            session.model.calls = []
            result = session.segment_model_prompts(
                organ, prompts, zoom_in=(case, organ, mode) in ZOOM_IN_RUNS, generator=generator
            )
            cache[case, organ, mode] = (prompts, result, session.model.calls, truth)
        return cache[case, organ, mode]

    return run


def unpack(bits, shape):
    return np.unpackbits(bits, count=int(np.prod(shape))).reshape(tuple(shape)).astype(bool)


@pytest.mark.parametrize("case", ["full", "thin"])
def test_preprocessing(case, goldens, sessions):
    session, labels = sessions[case]
    prepared = session.prepared
    volume, _, _ = case_volume(case)
    pre = f"{case}.pre."
    assert int(volume.astype(np.int64).sum()) == int(goldens[pre + "input_hu_sum"])  # same synthetic CT
    stats = intensity_statistics(volume)
    np.testing.assert_array_equal(
        stats.z_score(volume.astype(np.float32))[::2, ::8, ::8], goldens[pre + "normalised_sub"]
    )
    np.testing.assert_array_equal(
        stats.normalise(volume.astype(np.float32))[::2, ::8, ::8], goldens[pre + "minmax_sub"]
    )
    assert prepared.crop_start == tuple(goldens[pre + "crop_start"])
    assert prepared.crop_stop == tuple(goldens[pre + "crop_end"])
    assert prepared.cropped_shape == tuple(goldens[pre + "cropped_shape"])
    np.testing.assert_array_equal(prepared.image.numpy()[::2, ::8, ::8], goldens[pre + "cropped_sub"])
    np.testing.assert_array_equal(prepared.zoom_out_image[0, 0].numpy()[::2, ::8, ::8], goldens[pre + "zoom_out_sub"])
    assert prepared.zoom_out_image.double().sum().item() == float(goldens[pre + "zoom_out_image_sum"])


@pytest.mark.parametrize("case, organ, mode", golden_runs())
def test_zoom_out_pass(case, organ, mode, goldens, runs):
    prompts, result, calls, truth = runs(case, organ, mode)
    key = f"{case}.{organ}.{mode}."
    if key + "zoom_out_box" in goldens:
        np.testing.assert_array_equal(prompts.box, goldens[key + "zoom_out_box"][0])
    if key + "zoom_out_points" in goldens:
        np.testing.assert_array_equal(prompts.points[0], goldens[key + "zoom_out_points"][0])
        np.testing.assert_array_equal(prompts.points[1], goldens[key + "zoom_out_point_labels"][0])
    zoom_out_logits = calls[0]["logits"]
    np.testing.assert_allclose(
        zoom_out_logits.numpy()[::2, ::8, ::8], goldens[key + "zoom_out_logits_sub"][0, 0], atol=LOGIT_TOLERANCE, rtol=0
    )
    shape = goldens[f"{case}.pre.input_shape"]
    assert_same_mask(result.zoom_out_mask, unpack(goldens[key + "zoom_out_mask_bits"], shape))
    crop = result.crop
    assert dice(result.zoom_out_mask[crop], truth[crop]) == pytest.approx(
        float(goldens[key + "dice_zoom_out"]), abs=1e-5
    )


@pytest.mark.parametrize("case, organ, mode", ZOOM_IN_RUNS)
def test_zoom_in_pass(case, organ, mode, goldens, runs):
    prompts, result, calls, truth = runs(case, organ, mode)
    key = f"{case}.{organ}.{mode}."
    assert_zoom_in_plan(result, calls[1:], goldens, key, goldens[f"{case}.pre.cropped_shape"])
    for n, call in enumerate(calls[1:]):
        np.testing.assert_allclose(
            call["logits"].numpy()[::4, ::32, ::32],
            goldens[key + "windows_logits_sub"][n],
            atol=LOGIT_TOLERANCE,
            rtol=0,
        )
    shape = goldens[f"{case}.pre.input_shape"]
    assert_same_mask(result.mask, unpack(goldens[key + "mask_bits"], shape))
    crop = result.crop
    assert dice(result.mask[crop], truth[crop]) == pytest.approx(float(goldens[key + "dice_official"]), abs=1e-5)


def test_zoom_in_runs_exist(goldens):
    assert set(ZOOM_IN_RUNS) <= set(golden_runs()) and len(golden_runs()) == 13


def test_window_plan_starts(goldens):
    """The windows of every golden run start where the official sliding window put them."""
    from SegVolSlicerLib.inference.roi import Roi
    from SegVolSlicerLib.inference.windows import WindowPlan

    for case, organ, mode in golden_runs():
        key = f"{case}.{organ}.{mode}."
        roi = goldens[key + "roi"]
        cropped_shape = goldens[f"{case}.pre.cropped_shape"]
        plan = WindowPlan.for_roi(Roi(tuple(roi[:3]), tuple(np.minimum(roi[3:] + 1, cropped_shape))))
        assert plan.padded_shape == tuple(goldens[key + "windows_padded_roi_shape"])
        np.testing.assert_array_equal([w.padded_start for w in plan.windows], goldens[key + "windows_start"])
        assert torch.Size(plan.roi.shape) == torch.Size(goldens[key + "roi_shape"])
