"""The panel's clinical results on real MRML (slicer-core): confidence tags and statistics of the segments a
run wrote, and Export DICOM SEG of a volume loaded from the DICOM database (or the message naming Slicer's route)."""

import numpy as np
import pydicom
import pytest
import slicer
import vtk
from fake_segvol import ConstantLogitSegVol, FakeSegVol
from slicer_core_env import slicer_module, slicer_scene  # noqa: F401  (fixtures)
from test_clinical import phantom_hu, raw_series

from SegVolSlicerLib.clinical.confidence import MEAN_TAG, UNCERTAIN_TAG
from SegVolSlicerLib.errors import InputError
from SegVolSlicerLib.imageio import read_volume
from SegVolSlicerLib.terminology import standard_term
from SegVolSlicerLib.testing.synthetic_dicom import write_ct_series


@pytest.fixture
def dicom_volume(tmp_path, slicer_scene):  # noqa: F811
    """A volume node as Slicer's DICOM plugin loads one: the voxels and the instance UIDs of its files."""

    files = write_ct_series(tmp_path / "CT", phantom_hu())
    volume = read_volume(tmp_path / "CT")
    node = slicer.util.addVolumeFromArray(volume.array.astype(np.int16), ijkToRAS=volume.ijk_to_ras, name="CT")
    by_uid = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: str(f) for f in files}
    node.SetAttribute("DICOM.instanceUIDs", " ".join(by_uid))  # file order, not slice order
    return node, by_uid


def tag(segment, name):
    value = vtk.reference("")
    return value.get() if segment.GetTag(name, value) else None


def test_segments_get_their_confidence_and_statistics(slicer_module, dicom_volume):  # noqa: F811
    """Guards: confidence not stored with the scene (segment tags), or a table from other numbers."""
    node, _ = dicom_volume
    logic = slicer_module.SegVolSlicerLogic()
    logic.useModel(ConstantLogitSegVol({"liver": 2.0, "spleen": 0.4}))
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segment_ids, _ = logic.process(node, segmentation, names="liver, spleen")
    liver, spleen = (segmentation.GetSegmentation().GetSegment(s) for s in segment_ids)
    assert tag(liver, MEAN_TAG) == "0.8808" and tag(liver, UNCERTAIN_TAG) == "0.0000"
    assert tag(spleen, MEAN_TAG) == "0.5987" and tag(spleen, UNCERTAIN_TAG) == "1.0000"
    statistics = logic.lastStatistics
    assert [s.segment for s in statistics] == ["liver", "spleen"] and statistics[0].coordinates == "RAS"
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_ids[0], node)
    assert statistics[0].voxels == int(mask.sum()) > 0
    assert statistics[0].hu_mean == pytest.approx(slicer.util.arrayFromVolume(node)[mask > 0].mean())
    html = slicer_module.clinical_results.statistics_html(statistics)
    assert "c62828" in html.split("spleen")[1] and "c62828" not in html.split("spleen")[0]  # only spleen is low


def test_export_dicom_seg_of_a_dicom_volume(slicer_module, dicom_volume, tmp_path):  # noqa: F811
    """Guards: frames matched to the files' order instead of their positions, lost codes or masks."""
    import highdicom as hd

    node, by_uid = dicom_volume
    logic = slicer_module.SegVolSlicerLogic()
    logic.useModel(FakeSegVol())  # bright voxels: a mask that differs from its mirror image along K
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    (segment_id,), _ = logic.process(node, segmentation, names="liver")
    prepared = logic.prepareDicomSeg(node, segmentation, fileForInstance=by_uid.get)
    logic.writeDicomSeg(prepared, tmp_path / "seg.dcm")
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    # the volume's slices are the files in the order of their positions along the normal (test_clinical)
    uids = [ds.SOPInstanceUID for ds in raw_series(tmp_path / "CT")]
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1])[..., 0]
    expected = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, node)
    assert expected.any() and not np.array_equal(expected, expected[::-1])
    np.testing.assert_array_equal(frames, expected)
    item = seg.SegmentSequence[0]
    assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == standard_term("liver").type.value
    assert item.SegmentAlgorithmType == "AUTOMATIC"


def test_export_of_a_volume_not_from_dicom_names_the_route(slicer_module, dicom_volume):  # noqa: F811
    node, _ = dicom_volume
    node.RemoveAttribute("DICOM.instanceUIDs")
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.GetSegmentation().AddEmptySegment("x")
    with pytest.raises(InputError, match="not loaded from Slicer's DICOM database.*DICOM module"):
        slicer_module.SegVolSlicerLogic().prepareDicomSeg(node, segmentation)


def test_each_segment_says_what_made_it(slicer_module, dicom_volume, tmp_path):  # noqa: F811
    """Guards: a hand-drawn (or another tool's) segment exported as SegVol's output with generic codes. SegVol's
    segments are AUTOMATIC (text) or SEMIAUTOMATIC (clicks, box) with SegVol's identification; the others are
    MANUAL, with their own terminology."""
    import highdicom as hd

    from SegVolSlicerLib.slicer import checks

    node, by_uid = dicom_volume
    logic = slicer_module.SegVolSlicerLogic()
    logic.useModel(FakeSegVol())
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    (liver,), _ = logic.process(node, segmentation, names="liver")
    click = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    ijk = np.argwhere(slicer.util.arrayFromVolume(node) > 0)[0][::-1].astype(float)
    click.AddControlPoint(*checks.ijk_to_ras_points(slicer.util.arrayFromVTKMatrix(ijk_matrix(node)), [ijk])[0])
    (clicked,), _ = logic.process(node, segmentation, pointNodes=[click])
    drawn = segmentation.GetSegmentation().AddEmptySegment("", "my spleen")
    mask = np.zeros(slicer.util.arrayFromVolume(node).shape, np.uint8)
    mask[1:3, 2:6, 2:6] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, drawn, node)
    spleen = standard_term("spleen")
    segmentation.GetSegmentation().GetSegment(drawn).SetTag("TerminologyEntry", spleen.entry)
    prepared = logic.prepareDicomSeg(node, segmentation, fileForInstance=by_uid.get)
    logic.writeDicomSeg(prepared, tmp_path / "seg.dcm")
    items = {item.SegmentLabel: item for item in hd.seg.segread(tmp_path / "seg.dcm").SegmentSequence}
    assert items["liver"].SegmentAlgorithmType == "AUTOMATIC" and "SegmentAlgorithmName" in items["liver"]
    assert items["SegVol 1"].SegmentAlgorithmType == "SEMIAUTOMATIC"
    hand = items["my spleen"]
    assert hand.SegmentAlgorithmType == "MANUAL" and "SegmentationAlgorithmIdentificationSequence" not in hand
    assert hand.SegmentedPropertyTypeCodeSequence[0].CodeValue == spleen.type.value


def ijk_matrix(node):
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return matrix
