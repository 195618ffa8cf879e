"""The panel's corrections on real MRML: clicks on a segment with a result act around themselves (or through
the whole official pipeline), and a segment made elsewhere is refined from its mask (strokes: checks.py).
The stand-in network (fake_segvol.CountingBandSegVol) carves a ball around a negative click."""

import numpy as np
import slicer
from fake_segvol import BandSegVol, CountingBandSegVol, layout_ct
from slicer_core_env import slicer_module, slicer_scene  # noqa: F401  (fixtures)

from SegVolSlicerLib.geometry import ijk_to_ras_points
from SegVolSlicerLib.slicer import bridge

CENTRE_IJK = (160.0, 48.0, 20.0)  # the pancreas's centre


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


def carved(ct):
    k, j, i = np.meshgrid(*(np.arange(n) for n in ct.labels.shape), indexing="ij", sparse=True)
    radius = BandSegVol.CLICK_RADIUS - 1
    near = (i - CENTRE_IJK[0]) ** 2 + (j - CENTRE_IJK[1]) ** 2 + (k - CENTRE_IJK[2]) ** 2 <= radius**2
    return near & (ct.labels == 1)


def test_clicks_on_a_segment_with_a_result_correct_it_locally_or_officially(slicer_module, slicer_scene):  # noqa: F811
    ct, volume, segmentation, logic, model = setup_scene(slicer_module)
    (pancreas,), _ = logic.process(volume, segmentation, names="pancreas")
    (spleen,), _ = logic.process(volume, segmentation, names="spleen")
    spleen_before = segment_array(segmentation, spleen, volume)
    whole = segment_array(segmentation, pancreas, volume)
    assert whole[carved(ct)].all()

    click = negative_click(ct)
    encoded = model.image_calls
    request = logic.prepare(volume, segmentation, "pancreas", [click])  # the default: around the new clicks
    assert request.previous[0] is not None  # the segment's last result, to correct
    (result,) = logic.run(request)
    logic.apply(request, [result])
    assert result.windows == 1 and model.image_calls == encoded
    assert not segment_array(segmentation, pancreas, volume)[carved(ct)].any()
    assert np.array_equal(segment_array(segmentation, spleen, volume), spleen_before)  # other segments untouched

    logic.process(volume, segmentation, names="pancreas", pointNodes=[click], corrections=slicer_module.CORRECTIONS[1])
    assert segment_array(segmentation, pancreas, volume)[carved(ct)].all()  # the official zoom-in ignores it


def test_an_existing_segment_is_refined_from_its_mask_then_corrected_locally(slicer_module, slicer_scene):  # noqa: F811
    ct, volume, segmentation, logic, model = setup_scene(slicer_module)
    drawn = segmentation.GetSegmentation().AddEmptySegment("", "pancreas", [0.5, 0.5, 0.5])
    slicer.util.updateSegmentBinaryLabelmapFromArray((ct.labels == 1).astype(np.uint8), segmentation, drawn, volume)
    request = logic.prepareFromSegment(volume, segmentation, drawn)
    results = logic.run(request)
    (written,) = logic.apply(request, results)
    assert written == drawn and results[0].basis is not None
    correction = logic.prepare(volume, segmentation, "", [negative_click(ct)], refineSegmentID=drawn)
    (fixed,) = logic.run(correction)
    logic.apply(correction, [fixed])
    assert fixed.windows == 1 and fixed.warnings == []
    assert not segment_array(segmentation, drawn, volume)[carved(ct)].any()


def test_results_kept_for_corrections_stay_within_their_memory_budget(slicer_module, monkeypatch):  # noqa: F811
    """Guards: the panel keeping every result for corrections whatever its size (masks and probabilities of a
    512x512x300 CT are ~0.5 GB each: eight of them took 4 GB), or dropping the newest one."""
    from types import SimpleNamespace

    def result(megabytes):
        mask = np.zeros(megabytes << 20, np.uint8)
        return SimpleNamespace(mask=mask, zoom_out_mask=mask, probabilities=None)

    monkeypatch.setattr(slicer_module, "RESULTS_BUDGET_BYTES", 3 << 20)
    logic = slicer_module.SegVolSlicerLogic()
    for key in "abc":
        logic.remember(key, result(1))
    assert list(logic._results) == ["a", "b", "c"]  # 3 MB: within the budget (a shared mask counts once)
    logic.remember("d", result(2))
    assert list(logic._results) == ["c", "d"]
    logic.remember("e", result(5))  # larger than the budget alone: still kept, the only one
    assert list(logic._results) == ["e"]
