"""SegVolSession end to end with a stand-in network: data flow, caches, progress, cancel, axes, determinism."""

import numpy as np
import pytest
import torch
from fake_segvol import FakeSegVol
from recording_reporter import RecordingReporter
from test_geometry import permuted_geometry

from SegVolSlicerLib.errors import Cancelled, InputError
from SegVolSlicerLib.inference import SegVolSession
from SegVolSlicerLib.prompts import Box, Points, Target


def liver_click(ct):
    return np.argwhere(ct.labels == 1).mean(0)[::-1]  # (i, j, k) of the liver's centre


def test_masks_are_on_the_input_grid_and_zoom_in_replaces_the_roi(ct):
    model = FakeSegVol()
    session = SegVolSession(model, ct.volume, ct.ijk_to_ras)
    result = session.segment(Target("liver", text="liver"))
    assert result.mask.shape == ct.volume.shape and result.mask.dtype == np.uint8
    assert result.windows == 2 and result.roi is not None  # 48 slices: two 32-slice windows
    outside_crop = np.ones(ct.volume.shape, bool)
    outside_crop[result.crop] = False
    assert not result.mask[outside_crop].any() and not result.zoom_out_mask[outside_crop].any()
    # Outside the ROI the zoom-out mask stays; inside it the zoom-in pass decides.
    roi_in_crop = np.zeros(session.prepared.cropped_shape, bool)
    roi_in_crop[result.roi.slices] = True
    roi_kji = session.prepared.paste_kji(roi_in_crop.astype(np.uint8)).astype(bool)
    np.testing.assert_array_equal(result.mask[~roi_kji], result.zoom_out_mask[~roi_kji])
    assert (result.mask[roi_kji] != result.zoom_out_mask[roi_kji]).any()


def test_caches_encode_each_image_and_text_once(ct):
    model = FakeSegVol()
    session = SegVolSession(model, ct.volume, ct.ijk_to_ras)
    first = session.segment_many([Target("liver", text="liver"), Target("spleen", text="spleen")])
    encoded = model.images_encoded
    assert encoded <= 1 + first[0].windows + first[1].windows
    assert model.text_calls == 2
    again = session.segment(Target("liver", text="liver"))
    assert model.images_encoded == encoded and model.text_calls == 2  # only the decoder ran
    np.testing.assert_array_equal(again.mask, first[0].mask)
    session.segment(Target("liver", text="liver", points=Points([liver_click(ct)], [0])))
    assert model.text_calls == 2


def test_window_batches_give_the_same_result_with_fewer_encoder_calls(ct):
    one, two = FakeSegVol(), FakeSegVol()
    a = SegVolSession(one, ct.volume, ct.ijk_to_ras).segment(Target("liver", text="liver"))
    b = SegVolSession(two, ct.volume, ct.ijk_to_ras, window_batch_size=2).segment(Target("liver", text="liver"))
    np.testing.assert_array_equal(a.mask, b.mask)
    assert one.image_calls == 3 and two.image_calls == 2 and two.images_encoded == 3


def test_small_cache_budget_still_works(ct):
    model = FakeSegVol()
    session = SegVolSession(model, ct.volume, ct.ijk_to_ras, cache_budget_mb=0)
    session.segment(Target("liver", text="liver"))
    session.segment(Target("liver", text="liver"))
    assert len(session.cache) == 0 and model.images_encoded == 6


def test_progress_and_cancel(ct):
    reporter = RecordingReporter()
    session = SegVolSession(FakeSegVol(), ct.volume, ct.ijk_to_ras, reporter=reporter)
    session.segment(Target("liver", text="liver"), reporter=reporter)
    assert reporter.events == [
        ("preprocess", 0, 1),
        ("preprocess", 1, 1),
        ("zoom-out", 0, 1),
        ("zoom-out", 1, 1),
        ("zoom-in", 1, 2),
        ("zoom-in", 2, 2),
    ]
    cancelling = RecordingReporter(cancel_at="zoom-in")
    with pytest.raises(Cancelled):
        session.segment(Target("spleen", text="spleen"), reporter=cancelling)
    assert cancelling.events[-1] == ("zoom-in", 1, 2)  # stopped after the first window, before the second


def test_empty_zoom_out_keeps_the_empty_mask_and_says_so(ct):
    session = SegVolSession(FakeSegVol(threshold=5.0), ct.volume, ct.ijk_to_ras)
    result = session.segment(Target("liver", text="liver"))
    assert not result.mask.any() and result.windows == 0 and result.roi is None
    assert "found nothing" in result.warnings[0] and "zoom-in was skipped" in result.warnings[0]
    assert "found nothing" in session.segment(Target("liver", text="liver"), zoom_in=False).warnings[0]


def test_unknown_text_runs_with_a_warning_and_synonyms_resolve(ct):
    session = SegVolSession(FakeSegVol(), ct.volume, ct.ijk_to_ras)
    unknown = session.segment(Target("x", text="flux capacitor"), zoom_in=False)
    assert unknown.text == "flux capacitor" and "not one of SegVol's 222 training names" in unknown.warnings[0]
    known = session.segment(Target("gb", text="Gallbladder"), zoom_in=False)
    assert known.text == "gall bladder" and known.warnings == []


def test_box_prompt_reaches_zoom_out_and_single_window_zoom_in(ct):
    model = FakeSegVol()
    session = SegVolSession(model, ct.volume, ct.ijk_to_ras)
    liver = np.argwhere(ct.labels == 1)  # (k, j, i)
    box = Box(liver.min(0)[::-1], liver.max(0)[::-1])
    result = session.segment(Target("liver", box=box))
    zoom_out_box = model.decode_calls[0][0]
    assert zoom_out_box.shape == (1, 6) and (zoom_out_box >= 0).all() and result.zoom_out_mask.any()
    # The liver's ROI fits one window: its box is the user's box in ROI coordinates, not shifted by the
    # window's padding (the official quirk).
    assert result.windows == 1 and len(model.decode_calls) == 2 and model.decode_calls[1][1] is None
    crop_low = liver.min(0) - np.asarray(session.prepared.crop_start)
    crop_high = liver.max(0) - np.asarray(session.prepared.crop_start)
    roi_high = np.asarray(result.roi.stop) - 1
    expected = np.concatenate([crop_low, np.minimum(crop_high, roi_high)]) - np.tile(result.roi.start, 2)
    np.testing.assert_array_equal(model.decode_calls[1][0][0].numpy(), expected)


def test_point_mode_is_deterministic_and_official_mode_uses_the_global_generator(ct):
    target = Target("liver", text="liver", points=Points([liver_click(ct)], [1]))
    seeded = [SegVolSession(FakeSegVol(), ct.volume, ct.ijk_to_ras).segment(target) for _ in range(2)]
    np.testing.assert_array_equal(seeded[0].mask, seeded[1].mask)
    model = FakeSegVol()
    torch.manual_seed(0)
    SegVolSession(model, ct.volume, ct.ijk_to_ras, point_sampling="official").segment(target)
    reference = FakeSegVol()
    SegVolSession(reference, ct.volume, ct.ijk_to_ras, point_sampling="seeded", seed=0).segment(target)
    for (_, official_points), (_, seeded_points) in zip(model.decode_calls, reference.decode_calls):
        torch.testing.assert_close(official_points, seeded_points)
    window_points = reference.decode_calls[1][1]
    assert window_points[0].shape == (1, 5, 3)  # 1 + 4 positive clicks (or ignore points) per window
    with pytest.raises(InputError):
        SegVolSession(FakeSegVol(), ct.volume, ct.ijk_to_ras, point_sampling="random")


def test_a_permuted_copy_gives_the_same_physical_mask(ct):
    target_click = np.rint(liver_click(ct))
    reference = SegVolSession(FakeSegVol(), ct.volume, ct.ijk_to_ras).segment(
        Target("liver", text="liver", points=Points([target_click], [1]))
    )
    stored, matrix = permuted_geometry(ct.volume, ct.ijk_to_ras, (1, 2, 0))
    # The click at the same physical place: voxel (i, j, k) of the original is a permuted voxel of the copy.
    k, j, i = np.rint(target_click[::-1]).astype(int)
    original_index = np.array([k, j, i])
    new_index = original_index[[1, 2, 0]]
    permuted = SegVolSession(FakeSegVol(), stored, matrix).segment(
        Target("liver", text="liver", points=Points([new_index[::-1].astype(float)], [1]))
    )
    np.testing.assert_array_equal(permuted.mask, reference.mask.transpose(1, 2, 0))
    assert reference.mask.any()


def test_prompt_errors_are_user_errors(ct):
    session = SegVolSession(FakeSegVol(), ct.volume, ct.ijk_to_ras)
    with pytest.raises(InputError, match="outside the body"):
        session.segment(Target("x", box=Box((0, 0, 0), (3, 3, 3))))  # a corner of air


@pytest.mark.parametrize("shape", [(3, 20, 30), (12, 40, 300), (80, 300, 280)])
def test_odd_volume_sizes_run_end_to_end(shape):
    """Volumes thinner or smaller than a window (padding on every axis) and larger ones (many windows)."""
    rng = np.random.default_rng(0)
    volume = rng.normal(40, 10, shape).astype(np.int16)
    volume[:, : shape[1] // 4] = -1000  # air above the body
    matrix = np.diag([0.8, 0.8, 2.5, 1.0])
    result = SegVolSession(FakeSegVol(threshold=0.55), volume, matrix).segment(
        Target("x", text="liver", box=Box((1, shape[1] // 2, 0), (shape[2] - 2, shape[1] - 2, shape[0] - 1)))
    )
    assert result.mask.shape == shape and result.mask.dtype == np.uint8
    assert result.windows >= 1 and result.zoom_out_mask.any()
