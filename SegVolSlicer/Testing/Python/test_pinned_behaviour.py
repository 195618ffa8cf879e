"""Behaviour the rest of the suite did not pin: each test names the mistake it fails on.

zoom-in clicks rounded to the nearest voxel (not floored); the crop <-> zoom-out mapping centred on voxel
centres (half a voxel); LPS markups files converted to RAS; a rotated ROI's orientation read as columns (not
transposed); several names segmented as one undo step; the segmentation's parent transform honoured when
writing; output files written atomically; `--negative-point-ijk` end to end.
"""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk
from fake_segvol import FakeSegVol
from slicer_core_env import slicer_module, slicer_scene  # noqa: F401  (fixtures)
from vtk.util import numpy_support

from SegVolSlicerLib import cli, imageio, markups
from SegVolSlicerLib.errors import InputError
from SegVolSlicerLib.inference.prompt_mapping import prompts_from_target
from SegVolSlicerLib.prompts import NEGATIVE, POSITIVE, Points, Target
from SegVolSlicerLib.slicer import bridge, checks, segments
from SegVolSlicerLib.testing.synthetic_ct import write_ct


def test_zoom_in_clicks_go_to_the_nearest_voxel(space, ct):
    """Mistake: flooring the click's crop coordinate (a click at x.6 lands on voxel x instead of x+1)."""
    centre = np.round(np.asarray(ct.volume.shape[::-1]) / 2.0)
    ijk = centre + 0.6
    crop = space.ijk_to_crop(ijk[None])[0]
    assert np.any(np.rint(crop) != np.floor(crop))  # the case tells the two apart
    prompts = prompts_from_target(Target("click", points=Points(ijk[None], np.array([POSITIVE]))), None, space)
    (voxel,) = prompts.click_map.voxels
    assert tuple(voxel) == tuple(np.rint(crop).astype(int))


def test_crop_to_zoom_out_is_centred_on_voxels(space):
    """Mistake: dropping the half-voxel centring (z = c * N / n): a crop voxel's centre then maps away from the
    centre of the zoom-out voxels that show it (by 0.5 * N / n - 0.5, a third of a voxel here)."""
    for axis, source in enumerate(space.zoom_out_source):
        if space.scale[axis] < 1.2:
            continue
        errors = []
        for crop_index in np.unique(source):
            showing = np.flatnonzero(source == crop_index)
            point = np.zeros((1, 3))
            point[0, axis] = crop_index
            mapped = space.crop_to_zoom_out(point)[0, axis]
            assert showing[0] - 0.5 <= mapped <= showing[-1] + 0.5
            errors.append(mapped - (showing[0] + showing[-1]) / 2.0)
        assert abs(np.mean(errors)) < 0.1, (axis, np.mean(errors))


def markups_file(path, markup):
    path.write_text(
        json.dumps(
            {
                "@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/"
                "Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#",
                "markups": [markup],
            }
        )
    )
    return path


def test_lps_markups_are_converted_to_ras(tmp_path):
    """Mistake: reading an LPS file's coordinates as RAS (Slicer writes LPS by default)."""
    points = [{"label": "p", "position": [10.0, -20.0, 30.0], "positionStatus": "defined"}]
    lps = markups_file(
        tmp_path / "lps.mrk.json", {"type": "Fiducial", "coordinateSystem": "LPS", "controlPoints": points}
    )
    ras = markups_file(
        tmp_path / "ras.mrk.json", {"type": "Fiducial", "coordinateSystem": "RAS", "controlPoints": points}
    )
    identity = np.eye(4)  # IJK = RAS: the clicks read are the RAS positions
    assert np.allclose(markups.read_clicks(lps, identity).ijk, [[-10.0, 20.0, 30.0]])
    assert np.allclose(markups.read_clicks(ras, identity).ijk, [[10.0, -20.0, 30.0]])


def test_rotated_roi_file_agrees_with_slicer(tmp_path, slicer_scene):  # noqa: F811
    """Mistake: transposing the ROI's orientation matrix. Slicer writes the file (LPS, rotated 30 degrees
    about S, a long thin box); our reader must give the corners Slicer's node has."""
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode")
    angle = np.radians(30.0)
    object_to_node = np.eye(4)
    object_to_node[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    object_to_node[:3, 3] = (5.0, -3.0, 12.0)
    roi.SetAndObserveObjectToNodeMatrix(slicer.util.vtkMatrixFromArray(object_to_node))
    roi.SetSize(40.0, 10.0, 6.0)
    path = tmp_path / "box.mrk.json"
    assert slicer.util.saveNode(roi, str(path))
    assert json.loads(path.read_text())["markups"][0]["coordinateSystem"] == "LPS"
    ours, slicers = markups.read_roi_corners(path), bridge.roi_corners_ras(roi)
    ours, slicers = (sorted(map(tuple, np.round(corners, 6))) for corners in (ours, slicers))  # as point sets
    assert np.allclose(ours, slicers, atol=1e-6)


def test_several_names_make_one_undo_step(slicer_module, slicer_scene):  # noqa: F811
    """Mistake: one undo step per name ("liver, spleen" would need two Ctrl+Z)."""
    logic = slicer_module.SegVolSlicerLogic()
    logic.useModel(FakeSegVol())
    volume = checks.make_volume(checks.oblique_lps_ijk_to_ras())
    steps = []
    segment_ids, _ = logic.process(
        volume, None, names="liver, spleen", zoomIn=False, saveStateForUndo=lambda: steps.append(1)
    )
    assert len(segment_ids) == 2 and len(steps) == 1


def test_writing_honours_the_segmentations_parent_transform(slicer_scene):  # noqa: F811
    """Mistake: writing voxels in the segmentation's local space as if it were world space: under a
    transform the segment would land somewhere else than the voxels it was computed on."""
    volume = checks.make_volume(checks.oblique_lps_ijk_to_ras())
    shape = slicer.util.arrayFromVolume(volume).shape
    mask = np.zeros(shape, np.uint8)
    mask[2:6, 4:12, 5:15] = 1
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    moved = np.eye(4)
    moved[:3, 3] = (8.0, -5.0, 3.0)
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(moved))
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.SetAndObserveTransformNodeID(transform.GetID())
    writer = segments.SegmentWriter(segmentation, volume)
    (segment_id,) = writer.write([(segments.spec_for_text("liver"), mask)])
    writer.close()
    labelmap = segmentation.GetBinaryLabelmapInternalRepresentation(segment_id)
    local = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(local)
    volume_to_world = bridge.world_ijk_to_ras(volume)
    to_volume_ijk = np.linalg.inv(volume_to_world) @ moved @ slicer.util.arrayFromVTKMatrix(local)
    extent = labelmap.GetExtent()
    values = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(
        extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1
    )
    k, j, i = np.nonzero(values == segmentation.GetSegmentation().GetSegment(segment_id).GetLabelValue())
    ijk = np.stack([i + extent[0], j + extent[2], k + extent[4], np.ones_like(i)])
    volume_ijk = np.rint(to_volume_ijk @ ijk)[:3].astype(int)
    assert len(i) == mask.sum() and mask[volume_ijk[2], volume_ijk[1], volume_ijk[0]].all()


def test_output_is_written_atomically(tmp_path, monkeypatch):
    """Mistake: writing in place: a write that fails half way leaves a broken file where the old one was."""
    target = tmp_path / "mask.nrrd"
    target.write_bytes(b"the previous result")
    reference = sitk.Image(4, 4, 4, sitk.sitkInt16)

    def failing_write(image, path, *args, **kwargs):
        with open(path, "wb") as file:
            file.write(b"half a fi")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", failing_write)
    with pytest.raises((InputError, RuntimeError)):
        imageio.write_mask(target, np.ones((4, 4, 4), np.uint8), reference)
    assert target.read_bytes() == b"the previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["mask.nrrd"]  # no temporary file left


def test_negative_point_ijk_end_to_end(ct, tmp_path, stand_in_model, capsys):
    """`segment --point-ijk ... --negative-point-ijk ...`: the negative click reaches the model as a negative
    point and removes the voxels around it from the result."""
    image, labels = tmp_path / "ct.nii.gz", tmp_path / "labels.nii.gz"
    write_ct(ct, image, labels)
    model = stand_in_model(FakeSegVol())
    liver = np.argwhere(ct.labels == 1)
    positive = np.round(liver.mean(0)[::-1]).astype(int)
    negative = positive + np.array([4, 0, 0])
    outputs = {}
    for name, extra in (("positive", []), ("both", ["--negative-point-ijk", *negative])):
        output = tmp_path / f"{name}.seg.nrrd"
        code = cli.main(
            [
                "segment",
                str(image),
                "--point-ijk",
                *map(str, positive),
                *map(str, extra),
                "--no-zoom-in",
                "-o",
                str(output),
            ]
        )
        assert code == 0, capsys.readouterr().err
        outputs[name] = sitk.GetArrayFromImage(sitk.ReadImage(str(output))) > 0
    labels_sent = model.decode_calls[-1][1][1].reshape(-1).tolist()
    assert NEGATIVE in labels_sent and POSITIVE in labels_sent
    removed = np.argwhere(outputs["positive"] & ~outputs["both"])[:, ::-1]  # (i, j, k)
    assert len(removed) and not (outputs["both"] & ~outputs["positive"]).any()
    distance = np.linalg.norm(removed - negative, axis=1).mean(), np.linalg.norm(removed - positive, axis=1).mean()
    assert distance[0] < distance[1]  # what went is around the negative click
