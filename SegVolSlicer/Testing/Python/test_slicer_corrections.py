"""The panel's corrections on real MRML: clicks on a segment with a result act around themselves (or through
the whole official pipeline), and a segment made elsewhere is refined from its mask (strokes: checks.py).
The stand-in network (fake_segvol.CountingBandSegVol) carves a ball around a negative click."""

import numpy as np
import slicer
from fake_segvol import PANCREAS_CENTRE_IJK as CENTRE_IJK
from fake_segvol import CountingBandSegVol, carved_by, layout_ct
from slicer_core_env import slicer_module, slicer_scene  # noqa: F401  (fixtures)

from SegVolSlicerLib.geometry import ijk_to_ras_points
from SegVolSlicerLib.slicer import bridge


def setup_scene(module):
    ct = layout_ct()
    volume = slicer.util.addVolumeFromArray(ct.volume, ct.ijk_to_ras, "layout CT")
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "SegVol result")
    segmentation.CreateDefaultDisplayNodes()
    logic = module.SegVolSlicerLogic()
    model = CountingBandSegVol()
    logic.useModel(model)
    return ct, volume, segmentation, logic, model


def negative_click(ct):
    node = bridge.create_prompt_node(slicer.mrmlScene, bridge.NEGATIVE_ROLE)
    node.AddControlPoint(*ijk_to_ras_points(ct.ijk_to_ras, [CENTRE_IJK])[0])
    return node


def segment_array(segmentation, segment_id, volume):
    return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, volume)


def test_clicks_on_a_segment_with_a_result_correct_it_locally_or_officially(slicer_module, slicer_scene):  # noqa: F811
    ct, volume, segmentation, logic, model = setup_scene(slicer_module)
    (pancreas,), _ = logic.process(volume, segmentation, names="pancreas")
    (spleen,), _ = logic.process(volume, segmentation, names="spleen")
    spleen_before = segment_array(segmentation, spleen, volume)
    whole = segment_array(segmentation, pancreas, volume)
    assert whole[carved_by(ct)].all()

    click = negative_click(ct)
    encoded = model.image_calls
    request = logic.prepare(volume, segmentation, "pancreas", [click])  # the default: around the new clicks
    (job,) = request.jobs
    assert job.correct and job.result_key == (segmentation.GetID(), pancreas)  # the segment's result, corrected
    assert job.current_mask is None  # not edited since: the kept result is where it starts
    (result,) = logic.run(request)
    logic.apply(request, [result])
    assert result.windows == 1 and model.image_calls == encoded
    assert not segment_array(segmentation, pancreas, volume)[carved_by(ct)].any()
    assert np.array_equal(segment_array(segmentation, spleen, volume), spleen_before)  # other segments untouched

    logic.process(volume, segmentation, names="pancreas", pointNodes=[click], corrections=slicer_module.CORRECTIONS[1])
    assert segment_array(segmentation, pancreas, volume)[carved_by(ct)].all()  # the official zoom-in ignores it


def test_an_existing_segment_is_refined_from_its_mask_then_corrected_locally(slicer_module, slicer_scene):  # noqa: F811
    ct, volume, segmentation, logic, model = setup_scene(slicer_module)
    drawn = segmentation.GetSegmentation().AddEmptySegment("", "pancreas", [0.5, 0.5, 0.5])
    slicer.util.updateSegmentBinaryLabelmapFromArray((ct.labels == 1).astype(np.uint8), segmentation, drawn, volume)
    request = logic.prepareFromSegment(volume, segmentation, drawn)
    results = logic.run(request)
    (written,) = logic.apply(request, results)
    assert written == drawn and logic.engine.has_result(request.volume, (segmentation.GetID(), drawn))
    correction = logic.prepare(volume, segmentation, "", [negative_click(ct)], refineSegmentID=drawn)
    (fixed,) = logic.run(correction)
    logic.apply(correction, [fixed])
    assert fixed.windows == 1 and fixed.warnings == []
    assert not segment_array(segmentation, drawn, volume)[carved_by(ct)].any()


def erase(segmentation, segment_id, volume, region):
    """A hand edit: the Segment Editor's Erase over `region` (K, J, I slices) of the segment."""
    mask = segment_array(segmentation, segment_id, volume).astype(np.uint8)
    erased = mask[region].sum()
    mask[region] = 0
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, segment_id, volume)
    return erased


def test_a_correction_keeps_a_hand_erase_far_from_the_click(slicer_module, slicer_scene):  # noqa: F811
    """Guards: a fast correction starting from the kept SegVol result instead of the segment as it is now,
    which brought back every voxel the user had erased by hand (8267 of 8267 in Slicer)."""
    ct, volume, segmentation, logic, model = setup_scene(slicer_module)
    (pancreas,), _ = logic.process(volume, segmentation, names="pancreas")
    far = (slice(None), slice(None), slice(int(CENTRE_IJK[0]) + 120, None))  # beyond the rerun window along I
    assert erase(segmentation, pancreas, volume, far) > 0
    request = logic.prepare(volume, segmentation, "pancreas", [negative_click(ct)])
    (job,) = request.jobs
    assert job.correct and job.current_mask is not None and not job.current_mask[far].any()
    (result,) = logic.run(request)
    logic.apply(request, [result])
    window = np.zeros(ct.labels.shape, bool)
    window[result.changed] = True
    assert not window[far].any()  # the erase lies outside the rerun window
    after = segment_array(segmentation, pancreas, volume)
    assert not after[far].any(), "the correction brought back voxels erased by hand"
    assert not after[carved_by(ct)].any()  # and the click still carved


def test_edited_voxels_the_correction_replaces_are_told(slicer_module, slicer_scene):  # noqa: F811
    ct, volume, segmentation, logic, model = setup_scene(slicer_module)
    (pancreas,), _ = logic.process(volume, segmentation, names="pancreas")
    k, j, i = (int(c) for c in CENTRE_IJK[::-1])
    near = (slice(k - 2, k + 3), slice(j - 2, j + 3), slice(i + 40, i + 45))  # in the window, off the click
    assert erase(segmentation, pancreas, volume, near) > 0
    _, warnings = logic.process(volume, segmentation, names="pancreas", pointNodes=[negative_click(ct)])
    assert any("hand-edited voxel(s) of 'pancreas' were replaced" in w for w in warnings), warnings


def test_an_undo_since_the_result_is_an_edit_too(slicer_module, slicer_scene):  # noqa: F811
    """Undo after a correction brings back the segment's earlier voxels while the engine keeps the newer
    result: the next correction starts from the voxels as they are. Untouched, it starts from the kept result
    (no labelmap copy on the GUI thread), even when its shared layer was written for another segment."""
    ct, volume, segmentation, logic, model = setup_scene(slicer_module)
    (pancreas,), _ = logic.process(volume, segmentation, names="pancreas")
    logic.process(volume, segmentation, names="spleen")  # the same layer, written again
    assert logic.prepare(volume, segmentation, "pancreas", [negative_click(ct)]).jobs[0].current_mask is None
    before = segment_array(segmentation, pancreas, volume)
    history = slicer.vtkSegmentationHistory()
    history.SetSegmentation(segmentation.GetSegmentation())
    history.SaveState()
    logic.process(volume, segmentation, names="pancreas", pointNodes=[negative_click(ct)])  # the correction
    history.RestorePreviousState()  # Undo
    (job,) = logic.prepare(volume, segmentation, "pancreas", [negative_click(ct)]).jobs
    assert job.correct and job.current_mask is not None
    np.testing.assert_array_equal(job.current_mask, before)


def test_two_segmentations_of_one_volume_keep_their_own_results(slicer_module, slicer_scene):  # noqa: F811
    """Guards: results kept by target name, so that a "pancreas" in a second segmentation would be corrected
    from the first one's."""
    ct, volume, segmentation, logic, model = setup_scene(slicer_module)
    logic.process(volume, segmentation, names="pancreas")
    other = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "second opinion")
    (job,) = logic.prepare(volume, other, "pancreas", [negative_click(ct)]).jobs
    assert job.result_key[0] == other.GetID() and not job.correct
