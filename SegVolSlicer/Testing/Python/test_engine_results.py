"""The engine's kept results (engine.Engine, EngineHost): what a correction starts from is kept by the engine, per
volume and result key, within its memory budget, and corrected from the segment as it is now. The stand-in
network (fake_segvol.CountingBandSegVol on the layout phantom) carves a ball around a negative click."""

import inspect

import numpy as np
import pytest
from fake_segvol import LEFT_IJK, RIGHT_IJK, CountingBandSegVol, ball, carved_by, pancreas
from fake_segvol import PANCREAS_CENTRE_IJK as CENTRE_IJK

from SegVolSlicerLib.engine import Engine, EngineHost, ModelChoice, SessionOptions, TargetJob, VolumeInput
from SegVolSlicerLib.errors import InputError
from SegVolSlicerLib.prompts import Box, Points, Target
from SegVolSlicerLib.reporting import Reporter

ABOVE_ROI_IJK = (160.0, 48.0, 2.0)  # on the body, above the pancreas's zoom-in region


@pytest.fixture
def model():
    return CountingBandSegVol()


@pytest.fixture
def host(model):
    return EngineHost(model=model)


@pytest.fixture
def volume(phantom):
    return VolumeInput("ct", phantom.volume, phantom.ijk_to_ras, signature=1)


def outside(changed, shape):
    keep = np.ones(shape, dtype=bool)
    keep[changed] = False
    return keep


def test_engine_host_has_every_method_of_the_engine_protocol_with_its_parameters():
    """Guards the declared interface drifting from its in-process implementation (the faces type against it)."""
    for name, declared in inspect.getmembers(Engine, inspect.isfunction):
        if name.startswith("_"):
            continue
        implemented = getattr(EngineHost, name)
        assert list(inspect.signature(implemented).parameters) == list(inspect.signature(declared).parameters), name


def test_a_bare_target_is_an_official_job_whose_result_is_not_kept(host, volume):
    bare = host.segment(volume, [pancreas()])[0]
    job = host.segment(volume, [TargetJob(pancreas())])[0]
    assert np.array_equal(bare.mask, job.mask) and host.results_bytes == 0


def test_two_segmentations_with_the_same_target_name_each_correct_from_their_own_result(host, volume, phantom):
    """Guards kept results shared across result keys (the server kept them by target name): segmentation B's
    correction must start from B's result, not from A's, though both hold a "pancreas"."""
    a, b = ("Segmentation_A", "pancreas"), ("Segmentation_B", "pancreas")
    first_a = host.segment(volume, [TargetJob(pancreas(), a)])[0]
    first_b = host.segment(volume, [TargetJob(pancreas(), b)])[0]
    fixed_a = host.segment(volume, [TargetJob(pancreas(CENTRE_IJK), a, correct=True)])[0]
    assert fixed_a.windows == 1 and not fixed_a.mask[carved_by(phantom, CENTRE_IJK)].any()

    fixed_b = host.segment(volume, [TargetJob(pancreas(LEFT_IJK), b, correct=True)])[0]
    assert fixed_b.windows == 1 and fixed_b.warnings == []
    assert fixed_b.mask[carved_by(phantom, CENTRE_IJK)].all()  # A's carve is not in B
    assert not fixed_b.mask[carved_by(phantom, LEFT_IJK)].any()
    keep = outside(fixed_b.changed, first_b.mask.shape)
    assert np.array_equal(fixed_b.mask[keep], first_b.mask[keep])
    # A still holds its own clicks: the same click again plus one more reruns the new click's window only.
    again_a = host.segment(volume, [TargetJob(pancreas(CENTRE_IJK, RIGHT_IJK), a, correct=True)])[0]
    assert again_a.windows == 1 and not again_a.mask[carved_by(phantom, CENTRE_IJK)].any()
    assert np.array_equal(first_a.zoom_out_mask, first_b.zoom_out_mask)


def test_correct_without_a_kept_result_or_without_zoom_in_runs_the_official_pipeline(host, volume):
    official = host.segment(volume, [pancreas(CENTRE_IJK)])[0]
    unkept = host.segment(volume, [TargetJob(pancreas(CENTRE_IJK), "k", correct=True)])[0]
    assert np.array_equal(unkept.mask, official.mask) and unkept.windows == official.windows == 2
    assert unkept.warnings == official.warnings
    coarse = host.segment(volume, [TargetJob(pancreas(CENTRE_IJK, LEFT_IJK), "k", correct=True)], zoom_in=False)[0]
    assert coarse.windows == 0 and np.array_equal(coarse.mask, coarse.zoom_out_mask)
    # Not corrected: kept, and `correct=False` replaces it with the official result too.
    host.segment(volume, [TargetJob(pancreas(), "k")])
    again = host.segment(volume, [TargetJob(pancreas(CENTRE_IJK), "k")])[0]
    assert np.array_equal(again.mask, official.mask) and again.windows == 2


def test_hand_edits_outside_the_rerun_window_stay_and_those_inside_are_replaced_and_counted(host, volume, phantom):
    """Guards the user's own edits being undone silently: voxels erased by hand far from the click stay
    erased; inside the rerun window the model's answer replaces them and the warnings say how many."""
    key = ("Segmentation_1", "pancreas")
    first = host.segment(volume, [TargetJob(pancreas(), key)])[0]
    edited = first.mask.copy()
    far = carved_by(phantom, RIGHT_IJK)  # erased by hand in the other window
    near = ball(phantom.labels.shape, (LEFT_IJK[0] + 20, *LEFT_IJK[1:]), 6) & (phantom.labels == 1)
    edited[far | near] = 0
    added = ball(phantom.labels.shape, (100.0, 48.0, 2.0), 2)  # painted by hand above the window
    edited[added] = 1
    plain = EngineHost(model=CountingBandSegVol())
    plain.segment(volume, [TargetJob(pancreas(), key)])
    want = plain.segment(volume, [TargetJob(pancreas(LEFT_IJK), key, correct=True)])[0]

    fixed = host.segment(volume, [TargetJob(pancreas(LEFT_IJK), key, correct=True, current_mask=edited)])[0]
    assert fixed.windows == 1 and fixed.changed == want.changed
    keep = outside(fixed.changed, edited.shape)
    assert np.array_equal(fixed.mask[keep], edited[keep])  # bit for bit, the far erasure and the paint too
    assert not fixed.mask[far].any() and fixed.mask[added].all()
    assert np.array_equal(fixed.mask[fixed.changed], want.mask[fixed.changed])  # the model's answer inside
    assert fixed.mask[near].all()  # the erasure near the click was replaced...
    assert fixed.warnings == [
        f"{np.count_nonzero(near)} hand-edited voxel(s) of 'pancreas' were replaced inside the corrected windows"
    ]  # ...and reported; the far one is not counted
    # The next correction starts from the kept, edited result: the far erasure is still there.
    after = host.segment(volume, [TargetJob(pancreas(LEFT_IJK, CENTRE_IJK), key, correct=True)])[0]
    assert after.windows == 1 and not after.mask[far].any() and after.warnings == []


def test_a_correction_with_unedited_current_mask_equals_one_from_the_kept_result(host, volume):
    key = "k"
    first = host.segment(volume, [TargetJob(pancreas(), key)])[0]
    plain = EngineHost(model=CountingBandSegVol())
    plain.segment(volume, [TargetJob(pancreas(), key)])
    want = plain.segment(volume, [TargetJob(pancreas(CENTRE_IJK), key, correct=True)])[0]
    got = host.segment(volume, [TargetJob(pancreas(CENTRE_IJK), key, correct=True, current_mask=first.mask * 255)])
    assert np.array_equal(got[0].mask, want.mask) and got[0].warnings == [] and got[0].changed == want.changed


def test_a_fallback_from_an_edited_segment_says_how_many_edits_it_replaced(host, volume, phantom):
    first = host.segment(volume, [TargetJob(pancreas(), "k")])[0]
    edited = first.mask.copy()
    edited[carved_by(phantom, RIGHT_IJK)] = 0
    fixed = host.segment(volume, [TargetJob(pancreas(ABOVE_ROI_IJK), "k", correct=True, current_mask=edited)])[0]
    undone = np.count_nonzero((edited != first.mask) & (fixed.mask != edited))
    assert "official pipeline" in fixed.warnings[0] and undone > 0
    assert (
        fixed.warnings[-1] == f"{undone} hand-edited voxel(s) of 'pancreas' were replaced by the whole new segmentation"
    )


def test_a_current_mask_on_another_grid_is_a_clear_error(host, volume):
    host.segment(volume, [TargetJob(pancreas(), "k")])
    with pytest.raises(InputError, match="on the volume's grid"):
        host.segment(volume, [TargetJob(pancreas(CENTRE_IJK), "k", correct=True, current_mask=np.zeros((2, 2, 2)))])


def test_results_go_with_their_volume_and_their_segmentation(host, volume, phantom):
    other = VolumeInput("ct2", phantom.volume, phantom.ijk_to_ras, signature=1)
    for where in (volume, other):
        host.segment(where, [TargetJob(pancreas(), ("A", "s1")), TargetJob(pancreas(), ("B", "s1"))])
    assert all(host.has_result(where, key) for where in (volume, other) for key in (("A", "s1"), ("B", "s1")))
    host.forget_results("A")  # segmentation A removed: its results on every volume go
    assert [host.has_result(where, ("A", "s1")) for where in (volume, other)] == [False, False]
    assert [host.has_result(where, ("B", "s1")) for where in (volume, other)] == [True, True]
    host.forget("ct2")
    assert not host.has_result(other, ("B", "s1")) and host.has_result(volume, ("B", "s1"))
    changed = VolumeInput("ct", phantom.volume, phantom.ijk_to_ras, signature=2)  # new voxels, same key
    assert not host.has_result(changed, ("B", "s1"))
    host.forget_if_changed("ct", 1)  # the same voxels: kept
    assert host.has_result(volume, ("B", "s1"))
    host.forget_if_changed("ct", 2)
    assert not host.has_result(volume, ("B", "s1")) and host.results_bytes == 0
    host.segment(volume, [TargetJob(pancreas(), "k")])
    host.keep_only(["ct2"])
    assert not host.has_result(volume, "k") and host.results_bytes == 0


def test_results_outlive_their_session_evicted_for_room_and_the_faces_keep_only_keeps_them(model, phantom):
    """Guards corrections lost to a session evicted by count or memory: the voxels are the same, so the result
    still holds, and the face's keep_only over session_keys() (volumes still in the scene) keeps it."""
    host = EngineHost(model=model, max_sessions=1)
    a, b = (VolumeInput(key, phantom.volume, phantom.ijk_to_ras, signature=1) for key in ("a", "b"))
    host.segment(a, [TargetJob(pancreas(), "k")])
    host.segment(b, [pancreas()])
    assert host.kept_session("a") is None and host.session_keys() == ["b", "a"]
    host.keep_only(key for key in host.session_keys() if key != "gone")
    assert host.has_result(a, "k")
    fixed = host.segment(a, [TargetJob(pancreas(CENTRE_IJK), "k", correct=True)])[0]
    assert fixed.windows == 1 and fixed.warnings == []  # corrected locally on the session made again


def test_a_corrected_result_of_a_changed_volume_is_not_used(host, volume, phantom):
    host.segment(volume, [TargetJob(pancreas(), "k")])
    changed = VolumeInput("ct", phantom.volume, phantom.ijk_to_ras, signature=2)
    fixed = host.segment(changed, [TargetJob(pancreas(CENTRE_IJK), "k", correct=True)])[0]
    assert fixed.windows == 2  # the official pipeline: the kept result belonged to the old voxels
    assert host.has_result(changed, "k") and not host.has_result(volume, "k")


def test_another_model_drops_the_kept_results(volume, stand_in_model):
    host = EngineHost(ModelChoice("a.pth", "cpu"))
    stand_in_model(per_load=lambda host: CountingBandSegVol())
    host.segment(volume, [TargetJob(pancreas(), "k")])
    host.select(ModelChoice("a.pth", "cpu"))
    assert host.has_result(volume, "k")
    host.select(ModelChoice("b.pth", "cpu"))
    assert not host.has_result(volume, "k")


class ForgetsDuringTheRun(Reporter):
    def __init__(self, forget):
        super().__init__()
        self.forget = forget

    def progress(self, stage, done, total):
        if stage == "zoom-in" and done == 1:
            self.forget()


@pytest.mark.parametrize(
    "forget",
    [
        lambda host: host.forget("ct"),
        lambda host: host.keep_only([]),
        lambda host: host.forget_if_changed("ct", 2),
        lambda host: host.close(),
    ],
)
def test_a_volume_dropped_while_it_runs_keeps_no_result(host, volume, forget):
    """Guards a result outliving its volume: one dropped (removed from the scene) while its run was going."""
    results = host.segment(volume, [TargetJob(pancreas(), "k")], reporter=ForgetsDuringTheRun(lambda: forget(host)))
    assert results[0].mask.any() and not host.has_result(volume, "k") and host.results_bytes == 0


def heavy_and_light(result):
    """Bytes of a kept result, whole and without its probabilities and zoom-out logits."""
    masks = {id(a): a.nbytes for a in (result.mask, result.zoom_out_mask, result.zoom_out.mask)}
    light = sum(masks.values())
    return light + result.probabilities.nbytes + result.zoom_out.logits.nbytes, light


def test_kept_results_count_in_the_budget_oldest_first_and_masks_outlive_probabilities(phantom):
    """Guards kept results growing without bound (a large CT's masks and probabilities are ~0.5 GB each)."""
    host = EngineHost(model=CountingBandSegVol(), session_options=SessionOptions(probabilities=True))
    volume = VolumeInput("ct", phantom.volume, phantom.ijk_to_ras)
    results = {key: host.segment(volume, [TargetJob(pancreas(), key)])[0] for key in "ABC"}
    full, light = heavy_and_light(results["A"])
    assert host.results_bytes == 3 * full and full > light
    sessions = host.memory_bytes - host.results_bytes

    host.memory_budget_bytes = sessions + 3 * light + full + 1000  # room for the newest whole, the rest light
    newest = host.segment(volume, [TargetJob(pancreas(), "D")])[0]
    assert all(host.has_result(volume, key) for key in "ABCD")
    assert host.results_bytes == 3 * light + full
    assert newest.probabilities is not None and results["A"].probabilities is not None  # the face's stay whole
    corrected = host.segment(volume, [TargetJob(pancreas(CENTRE_IJK), "A", correct=True)])[0]
    assert corrected.windows == 1 and corrected.probabilities is None  # A's mask outlived its probabilities

    host.memory_budget_bytes = sessions + light + full + 1000  # room for one more mask: the oldest go
    host.segment(volume, [TargetJob(pancreas(), "E")])
    assert [host.has_result(volume, key) for key in "BCDAE"] == [False, False, False, True, True]  # A: used last
    assert host.results_bytes == light + full and host.memory_bytes <= host.memory_budget_bytes

    host.memory_budget_bytes = 0  # the newest result stays, whole, even alone over the budget
    host.segment(volume, [TargetJob(pancreas(), "F")])
    assert [host.has_result(volume, key) for key in "AEF"] == [False, False, True]
    assert host.results_bytes == full


# --- segments made from a mask ---


def test_a_mask_derived_result_is_kept_and_a_correction_without_a_box_keeps_the_masks_box(host, volume, phantom, model):
    label = phantom.labels == 1
    key = ("Segmentation_1", "pancreas")
    made = host.segment_from_mask(volume, TargetJob(Target("pancreas", box=Box.around_mask(label)), key), label)
    assert made.name == "pancreas" and host.has_result(volume, key)
    fixed = host.segment(volume, [TargetJob(pancreas(CENTRE_IJK), key, correct=True)])[0]  # no box of its own
    assert fixed.windows == 1 and fixed.warnings == [] and not fixed.mask[carved_by(phantom, CENTRE_IJK)].any()
    # A click outside the zoom-in region: the official pipeline, prompted with the mask's box.
    decodes = len(model.decodes)
    whole = host.segment(volume, [TargetJob(pancreas(CENTRE_IJK, ABOVE_ROI_IJK), key, correct=True)])[0]
    assert "official pipeline" in whole.warnings[0]
    assert model.decodes[decodes]["boxes"] is not None and host.has_result(volume, key)  # its zoom-out pass
    box = Box.around_mask(label)
    unknown = host.segment_from_mask(volume, TargetJob(Target("my blob", box=box), "blob"), label)
    assert unknown.text is None
    clicks = Target("my blob", points=Points([CENTRE_IJK], [0]), box=box)  # the box it was made with
    carved = host.segment(volume, [TargetJob(clicks, "blob", correct=True)])[0]
    assert carved.windows == 1 and carved.warnings == []
