"""Local corrections (session.refine, a mode beyond the official pipeline), strokes and segments refined from a
mask. The stand-in network (fake_segvol.CountingBandSegVol on the layout phantom) answers clicks locally: a
positive click grows a ball of CLICK_RADIUS window voxels, a negative one carves one, so what a click did is
visible at full resolution."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fake_segvol import (
    LEFT_IJK,
    PANCREAS_CENTRE_IJK,
    RIGHT_IJK,
    CountingBandSegVol,
    carved_by,
    pancreas,
)
from recording_reporter import RecordingReporter
from test_server import in_process

from SegVolSlicerLib import cli
from SegVolSlicerLib.engine import EngineHost, TargetJob, VolumeInput
from SegVolSlicerLib.errors import Cancelled, InputError
from SegVolSlicerLib.imageio import read_volume
from SegVolSlicerLib.inference import SegVolSession
from SegVolSlicerLib.inference.label_prompts import PromptMode, label_prompts
from SegVolSlicerLib.inference.point_sampling import make_generator
from SegVolSlicerLib.inference.windows import WindowPlan
from SegVolSlicerLib.markups import read_clicks
from SegVolSlicerLib.prompts import Box, Points, Target
from SegVolSlicerLib.testing.synthetic_ct import write_ct

ABOVE_ROI_IJK = (160.0, 48.0, 2.0)  # on the body, above the pancreas's zoom-in region


@pytest.fixture
def model():
    return CountingBandSegVol()


@pytest.fixture
def session(phantom, model):
    return SegVolSession(model, phantom.volume, phantom.ijk_to_ras)


def outside(changed, shape):
    keep = np.ones(shape, dtype=bool)
    keep[changed] = False
    return keep


def test_a_negative_click_removes_its_ball_with_refine_but_not_with_the_official_pipeline(session, phantom):
    """Guards the user's clicks reaching the full-resolution windows: the official zoom-in prompts its
    windows from the coarse mask only, so there the negative click leaves the structure in place."""
    first = session.segment(pancreas())
    near = carved_by(phantom)
    assert first.mask[near].all() and first.windows == 2

    fixed = session.refine(first, pancreas(PANCREAS_CENTRE_IJK))
    assert not fixed.mask[near].any()
    assert fixed.warnings == [] and fixed.windows == 1

    official = session.segment(pancreas(PANCREAS_CENTRE_IJK))
    assert official.mask[near].all()


def test_voxels_outside_changed_stay_bit_for_bit_and_changed_is_one_window(session):
    first = session.segment(pancreas())
    fixed = session.refine(first, pancreas(PANCREAS_CENTRE_IJK))
    keep = outside(fixed.changed, first.mask.shape)
    assert np.array_equal(fixed.mask[keep], first.mask[keep])
    assert not np.array_equal(fixed.mask, first.mask)
    size = [s.stop - s.start for s in fixed.changed]
    assert size[0] <= 32 and size[1] <= 256 and size[2] <= 256  # one window's footprint at most
    assert fixed.zoom_out_mask is first.zoom_out_mask  # the coarse pass did not run again


def test_windows_counts_the_windows_each_correction_ran(session, model):
    first = session.segment(pancreas())
    decodes = len(model.decodes)
    one = session.refine(first, pancreas(LEFT_IJK))
    assert one.windows == 1 == len(model.decodes) - decodes
    two = session.refine(one, pancreas(LEFT_IJK, PANCREAS_CENTRE_IJK, RIGHT_IJK))  # two new clicks
    assert two.windows == 2 == len(model.decodes) - decodes - 1
    same = session.refine(two, pancreas(LEFT_IJK, PANCREAS_CENTRE_IJK, RIGHT_IJK))
    assert same.windows == 0 and np.array_equal(same.mask, two.mask)
    assert all(s.start == s.stop for s in same.changed)


def test_a_correction_runs_no_encoder(session, model):
    """The windows come from the previous plan: their embeddings (and the text's) are in the cache."""
    first = session.segment(pancreas())
    images, texts = model.image_calls, model.text_calls
    session.refine(first, pancreas(PANCREAS_CENTRE_IJK))
    assert (model.image_calls, model.text_calls) == (images, texts)


def test_the_window_gets_its_usual_prompts_plus_the_users_clicks_in_it(session, model):
    first = session.segment(pancreas(), zoom_in=True)
    plan = WindowPlan.for_roi(first.roi)
    session.refine(first, pancreas(PANCREAS_CENTRE_IJK, LEFT_IJK, labels=[0, 1]))
    coords, labels = model.decodes[-1]["points"]
    # Two clicks, two windows; the last run is the left click's window, which holds both clicks.
    crop = session.space.ijk_to_crop(np.array([PANCREAS_CENTRE_IJK, LEFT_IJK]))
    window = plan.windows[0]
    assert labels.tolist() == [[0.0, 1.0]]  # labels kept
    assert np.allclose(coords[0].numpy(), crop - np.asarray(window.crop_offset))


def test_removing_a_click_reruns_its_window(session):
    first = session.segment(pancreas())
    carved = session.refine(first, pancreas(PANCREAS_CENTRE_IJK))
    ijk = np.array([PANCREAS_CENTRE_IJK]).round().astype(int)[0]
    assert carved.mask[ijk[2], ijk[1], ijk[0]] == 0
    restored = session.refine(carved, pancreas(RIGHT_IJK, labels=[1]))  # the negative click is gone
    assert restored.windows == 2 and restored.mask[ijk[2], ijk[1], ijk[0]] == 1


def test_a_correction_reports_its_windows_and_can_be_cancelled(session):
    first = session.segment(pancreas())
    recorder = RecordingReporter()
    session.refine(first, pancreas(LEFT_IJK, RIGHT_IJK), recorder)
    assert recorder.events == [("correction", 1, 2), ("correction", 2, 2)]
    recorder.cancel.set()
    with pytest.raises(Cancelled):
        session.refine(first, pancreas(PANCREAS_CENTRE_IJK), recorder)


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda t: pancreas(ABOVE_ROI_IJK), "outside its zoom-in region"),
        (lambda t: Target("pancreas", text="spleen", points=Points([PANCREAS_CENTRE_IJK], [0])), "text changed"),
        (lambda t: pancreas(PANCREAS_CENTRE_IJK, box=Box((20, 20, 10), (300, 80, 30))), "box changed"),
    ],
)
def test_fallbacks_run_the_official_pipeline_and_say_so(session, change, reason):
    first = session.segment(pancreas())
    target = change(first)
    fixed = session.refine(first, target)
    official = session.segment(target)
    assert reason in fixed.warnings[0] and "official pipeline" in fixed.warnings[0]
    assert np.array_equal(fixed.mask, official.mask) and fixed.windows == official.windows
    assert fixed.changed == tuple(slice(0, n) for n in first.mask.shape)


def test_a_result_without_zoom_in_falls_back(session):
    coarse = session.segment(pancreas(), zoom_in=False)
    fixed = session.refine(coarse, pancreas(PANCREAS_CENTRE_IJK))
    assert "no zoom-in" in fixed.warnings[0] and fixed.windows == 2


def test_the_engine_host_and_the_server_give_the_in_process_correction_bit_for_bit(phantom):
    volume = VolumeInput("local", phantom.volume, phantom.ijk_to_ras)
    host = EngineHost(model=CountingBandSegVol())
    host.segment(volume, [TargetJob(pancreas(), "pancreas")])
    local = [host.segment(volume, [TargetJob(pancreas(PANCREAS_CENTRE_IJK), "pancreas", correct=True)])[0]]
    fallback = TargetJob(pancreas(PANCREAS_CENTRE_IJK, ABOVE_ROI_IJK), "pancreas", correct=True)
    local += host.segment(volume, [fallback])
    with (
        in_process(EngineHost(model=CountingBandSegVol())) as (client, _),
        client.open_session(phantom.volume, phantom.ijk_to_ras) as remote,
    ):
        remote.segment(pancreas())
        got = [
            remote.refine(pancreas(PANCREAS_CENTRE_IJK)),
            remote.refine(pancreas(PANCREAS_CENTRE_IJK, ABOVE_ROI_IJK)),
        ]
    for result, want in zip(got, local):
        assert np.array_equal(result.mask, want.mask) and np.array_equal(result.zoom_out_mask, want.zoom_out_mask)
        assert (result.windows, result.warnings, result.changed) == (want.windows, want.warnings, want.changed)
    assert [r.windows for r in got] == [1, 2]


# --- strokes ---


def test_a_stroke_becomes_evenly_spread_clicks_at_most_the_spacing_apart():
    matrix = np.diag([2.0, 2.0, 2.0, 1.0])  # 2 mm voxels: the spacing is in mm, not voxels
    ras = [[0, 0, 0], [0, 0, 10], [0, 0, 10], [0, 0, 20]]  # 20 mm long, with a repeated point
    points = Points.along_curve(ras, 0, matrix, spacing_mm=3)
    steps = np.linalg.norm(np.diff(points.ijk, axis=0), axis=1) * 2
    assert len(points) == 8 and np.allclose(steps, 20 / 7)  # ceil(20 / 3) + 1 points, gaps <= 3 mm
    assert np.allclose(points.ijk[[0, -1]], [[0, 0, 0], [0, 0, 10]])  # both ends
    corner = Points.along_curve([[0, 0, 0], [0, 0, 10], [0, 10, 10]], 0, matrix, spacing_mm=10)
    assert np.allclose(corner.ijk, [[0, 0, 0], [0, 0, 5], [0, 5, 5]])  # the length is measured along the stroke
    assert points.labels.tolist() == [0] * 8
    capped = Points.along_curve(ras, 1, matrix, spacing_mm=1, max_points=5)
    assert len(capped) == 5 and np.allclose(np.linalg.norm(np.diff(capped.ijk, axis=0), axis=1) * 2, 5.0)
    assert len(Points.along_curve([[1, 2, 3]] * 3, 1, matrix)) == 1
    with pytest.raises(InputError):
        Points.along_curve(ras, 1, matrix, spacing_mm=0)


def test_a_curve_file_gives_clicks_along_it(tmp_path):
    curve = {
        "markups": [
            {
                "type": "Curve",
                "coordinateSystem": "RAS",
                "controlPoints": [
                    {"position": [0, 0, 0], "description": "negative"},
                    {"position": [0, 0, 20]},
                ],
            },
            {"type": "Fiducial", "coordinateSystem": "RAS", "controlPoints": [{"position": [1, 1, 1]}]},
        ]
    }
    path = tmp_path / "stroke.mrk.json"
    path.write_text(json.dumps(curve))
    clicks = read_clicks(path, np.eye(4))
    assert np.allclose(clicks.ijk[:-1, 2], np.linspace(0, 20, 5)) and clicks.labels.tolist() == [0] * 5 + [1]


# --- segments refined from a mask ---


def test_a_mask_derived_prompt_is_the_evaluation_protocols_prompt_for_that_label(phantom):
    """Guards reuse of the official label protocol: the prompts the engine ran equal label_prompts' for the
    same label, and its zoom-out box is the bounding box of the demo's nearest-exact 32x256x256 label."""
    model = CountingBandSegVol()
    host = EngineHost(model=model)
    label = (phantom.labels == 1).astype(np.uint8)
    volume = VolumeInput("ct", phantom.volume, phantom.ijk_to_ras)
    result = host.segment_from_mask(volume, TargetJob(Target("pancreas", text="pancreas")), label)
    session = host.kept_session("ct")
    want = label_prompts(
        label, "pancreas", PromptMode(True, True, True), session.prepared, session.space, make_generator(0)
    )
    got = result.basis.prompts
    assert got.text == want.text == "pancreas"
    assert np.array_equal(got.box, want.box) and got.box_map == want.box_map
    assert all(np.array_equal(a, b) for a, b in zip(got.points, want.points))
    assert np.array_equal(got.click_map.voxels, want.click_map.voxels)
    cropped = torch.from_numpy(label[session.prepared.crop_slices_kji].astype(np.float32))
    resized = F.interpolate(cropped[None, None], size=(32, 256, 256), mode="nearest-exact")[0, 0]
    where = torch.nonzero(resized)
    assert got.box.tolist() == [*where.min(0).values.tolist(), *where.max(0).values.tolist()]
    assert got.points[1].tolist() == [1, 1, 1, 1, 0, 0, 0]
    zoom_out = model.decodes[0]
    assert zoom_out["boxes"][0].tolist() == got.box.tolist()


def test_a_mask_derived_segment_is_corrected_locally_and_an_unknown_name_prompts_without_text(phantom):
    host = EngineHost(model=CountingBandSegVol())
    volume = VolumeInput("ct", phantom.volume, phantom.ijk_to_ras)
    label = phantom.labels == 1
    made = TargetJob(Target("pancreas", box=Box.around_mask(label)), "pancreas")
    result = host.segment_from_mask(volume, made, label)
    fixed = host.segment(volume, [TargetJob(pancreas(PANCREAS_CENTRE_IJK), "pancreas", correct=True)])[0]
    assert fixed.windows == 1 and fixed.warnings == []
    # Clicks without a name (the panel's clicks on a selected segment): the mask's name and box stand for them.
    host.segment_from_mask(volume, made, label)
    clicks = Target("pancreas", points=Points([PANCREAS_CENTRE_IJK], [0]), box=result.basis.mask_box)
    textless = host.segment(volume, [TargetJob(clicks, "pancreas", correct=True)])[0]
    assert textless.windows == 1 and textless.warnings == []
    other = host.segment_from_mask(volume, TargetJob(Target("my blob", box=Box.around_mask(label)), "blob"), label)
    assert other.text is None and "not one of SegVol's names" in other.warnings[0]
    # Negative clicks alone need the mask's box to stand for the structure: then they correct locally.
    box = other.basis.mask_box
    assert box == Box((20, 36, 14), (300, 60, 26))
    carved = host.segment(
        volume, [TargetJob(Target("my blob", points=Points([PANCREAS_CENTRE_IJK], [0]), box=box), "blob", True)]
    )[0]
    assert carved.windows == 1 and carved.warnings == []
    with pytest.raises(InputError, match="no voxel"):
        host.segment_from_mask(volume, made, np.zeros_like(label))


def test_cli_from_mask_with_a_negative_click_corrects_the_segment(phantom, tmp_path, stand_in_model, capsys):
    stand_in_model(per_load=lambda host: CountingBandSegVol())
    write_ct(phantom, tmp_path / "ct.nii.gz", tmp_path / "labels.nii.gz")
    out = tmp_path / "out.nii.gz"
    argv = ["segment", str(tmp_path / "ct.nii.gz"), "--from-mask", str(tmp_path / "labels.nii.gz")]
    assert cli.main([*argv, "--name", "pancreas", "-o", str(out)]) == 0
    whole = read_volume(out).array
    click = ["--negative-point-ijk", *map(str, PANCREAS_CENTRE_IJK)]
    assert cli.main([*argv, "--name", "pancreas", *click, "-o", str(out)]) == 0
    corrected = read_volume(out).array
    assert "1 zoom-in window(s)" in capsys.readouterr().out
    near = carved_by(phantom)
    assert whole[near].all() and not corrected[near].any()
    assert cli.main([*argv, "-o", str(out)]) == 2 and "--name" in capsys.readouterr().err


def test_cli_from_mask_with_only_negative_clicks_and_an_unknown_name_corrects_the_segment(
    phantom, tmp_path, stand_in_model, capsys
):
    """The mistake: `--from-mask M --name NAME --negative-points ...` for a name SegVol does not know refused
    with "no usable prompt" (no text, no box, no positive click), although the engine keeps the mask's box
    for a correction that gives none."""
    stand_in_model(per_load=lambda host: CountingBandSegVol())
    write_ct(phantom, tmp_path / "ct.nii.gz", tmp_path / "labels.nii.gz")
    out = tmp_path / "out.nii.gz"
    argv = ["segment", str(tmp_path / "ct.nii.gz"), "--from-mask", str(tmp_path / "labels.nii.gz"), "--name", "my blob"]
    assert cli.main([*argv, "-o", str(out)]) == 0
    whole = read_volume(out).array
    click = ["--negative-point-ijk", *map(str, PANCREAS_CENTRE_IJK)]
    assert cli.main([*argv, *click, "-o", str(out)]) == 0, capsys.readouterr().err
    corrected = read_volume(out).array
    assert "zoom-in window(s)" in capsys.readouterr().out
    near = carved_by(phantom)
    assert whole[near].all() and not corrected[near].any()
