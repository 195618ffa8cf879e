"""Checks of the Slicer side, shared by pytest (slicer-core + shim) and SegVolSlicerTest (the real application).

Each `check_*` function builds its own nodes in `slicer.mrmlScene`, raises AssertionError on failure and removes
nothing the user made (run it in an empty scene). Synthetic data only; no file or network access except a
temporary folder for the .seg.nrrd round trip.
"""

from __future__ import annotations

import math
import os
import tempfile
import types

import numpy as np
import slicer
import vtk

from .. import terminology
from ..errors import InputError
from ..geometry import ModelAxes, ijk_to_ras_points, ras_to_ijk_points
from ..prompts import STROKE_SPACING_MM, Box
from . import bridge, segments

SHAPE_KJI = (12, 20, 24)


def oblique_lps_ijk_to_ras(spacing=(0.8, 0.9, 2.5), origin=(30.0, -12.0, 7.0), degrees=20.0) -> np.ndarray:
    """An oblique, anisotropic IJK-to-RAS matrix whose i and j axes point to L and P (as in DICOM/LPS files)."""
    angle = math.radians(degrees)
    rotation = np.array(
        [[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0], [0.0, 0.0, 1.0]]
    )
    directions = np.diag([-1.0, -1.0, 1.0]) @ rotation  # LPS flip of a rotated frame
    matrix = np.eye(4)
    matrix[:3, :3] = directions @ np.diag(spacing)
    matrix[:3, 3] = origin
    return matrix


def lps_flipped_ijk_to_ras(spacing=(0.7, 0.7, 3.0)) -> np.ndarray:
    matrix = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    matrix[:3, 3] = (120.0, 95.0, -40.0)
    return matrix


def geometries() -> dict[str, np.ndarray]:
    return {"oblique LPS": oblique_lps_ijk_to_ras(), "LPS flipped": lps_flipped_ijk_to_ras()}


def make_volume(ijk_to_ras: np.ndarray, name="SegVol test CT", shape_kji=SHAPE_KJI):
    """A scalar volume with distinct voxel values (so any axis mix-up shows) and the given geometry."""
    voxels = (np.arange(np.prod(shape_kji)).reshape(shape_kji) % 2000 - 1000).astype(np.int16)
    return slicer.util.addVolumeFromArray(voxels, ijk_to_ras, name)


def _check(condition, message):
    if not condition:
        raise AssertionError(message)


def _add_points(name, ras_points, role=None, descriptions=None):
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    if role is not None:
        node.SetAttribute(bridge.ROLE_ATTRIBUTE, role)
    for index, ras in enumerate(ras_points):
        point = node.AddControlPoint(*[float(v) for v in ras])
        if descriptions is not None:
            node.SetNthControlPointDescription(point, descriptions[index])
    return node


def _translation(offset):
    """(a linear transform node shifting its children by `offset` mm, its 4x4 matrix)."""
    shift = np.eye(4)
    shift[:3, 3] = offset
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift))
    return transform, shift


def set_roi_to_box(roi_node, box: Box, ijk_to_ras: np.ndarray) -> None:
    """Make an ROI cover exactly the voxels of box, with the ROI axes along the volume's voxel axes."""
    spacing = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    axes = ijk_to_ras[:3, :3] / spacing
    if np.linalg.det(axes) < 0:  # an ROI frame must be right-handed; the box is symmetric about its centre
        axes[:, 0] = -axes[:, 0]
    centre_ijk = (np.asarray(box.ijk_min) + np.asarray(box.ijk_max)) / 2
    object_to_node = np.eye(4)
    object_to_node[:3, :3] = axes
    object_to_node[:3, 3] = ijk_to_ras_points(ijk_to_ras, centre_ijk)
    roi_node.SetAndObserveObjectToNodeMatrix(slicer.util.vtkMatrixFromArray(object_to_node))
    roi_node.SetCenter(*object_to_node[:3, 3])
    roi_node.SetSize(*((np.asarray(box.ijk_max) - np.asarray(box.ijk_min) + 1) * spacing))


def check_volume_geometry():
    """A volume node becomes its own voxels and its world IJK-to-RAS, for oblique, flipped and transformed volumes."""
    for label, ijk_to_ras in geometries().items():
        volume = make_volume(ijk_to_ras, label)
        voxels, matrix = bridge.read_volume(volume)
        _check(np.array_equal(voxels, slicer.util.arrayFromVolume(volume)), f"{label}: voxels differ")
        _check(np.allclose(matrix, ijk_to_ras, atol=1e-9), f"{label}: IJK-to-RAS differs")
        voxels[0, 0, 0] += 1
        _check(slicer.util.arrayFromVolume(volume)[0, 0, 0] != voxels[0, 0, 0], f"{label}: voxels are not a copy")
        transform, shift = _translation((5.0, -3.0, 11.0))
        volume.SetAndObserveTransformNodeID(transform.GetID())
        _, matrix = bridge.read_volume(volume)
        _check(np.allclose(matrix, shift @ ijk_to_ras), f"{label}: parent transform ignored")


def check_point_prompts():
    """Positive/negative markups map RAS -> IJK exactly and on to model (D,H,W) space and back."""
    ijk = np.array([[3.0, 4.0, 5.0], [10.0, 2.0, 7.0], [20.0, 15.0, 1.0], [0.0, 19.0, 11.0]])
    for label, ijk_to_ras in geometries().items():
        volume = make_volume(ijk_to_ras, label)
        ras = ijk_to_ras_points(ijk_to_ras, ijk)
        positive = _add_points("positive", ras[:2], bridge.POSITIVE_ROLE)
        negative = _add_points("negative", ras[2:3], bridge.NEGATIVE_ROLE)
        # An untagged node: an empty description counts as positive, "negative" as negative.
        mixed = _add_points("mixed", [ras[3], ras[0]], descriptions=["", "negative"])
        preview = positive.AddControlPoint(0.0, 0.0, 0.0)
        positive.SetNthControlPointPosition(preview, 0.0, 0.0, 0.0, positive.PositionPreview)

        points = bridge.read_points([positive, negative, mixed], ijk_to_ras)
        _check(np.allclose(points.ijk, np.vstack([ijk, ijk[:1]]), atol=1e-6), f"{label}: IJK {points.ijk}")
        _check(list(points.labels) == [1, 1, 0, 1, 0], f"{label}: labels {points.labels}")

        axes = ModelAxes.from_ijk_to_ras(ijk_to_ras)
        dhw = axes.ijk_to_model(points.ijk)
        voxels = slicer.util.arrayFromVolume(volume)
        model_voxels = axes.to_model(voxels)
        for p_ijk, p_dhw in zip(np.round(points.ijk).astype(int), np.round(dhw).astype(int)):
            _check(
                voxels[p_ijk[2], p_ijk[1], p_ijk[0]] == model_voxels[tuple(p_dhw)],
                f"{label}: model-space point {p_dhw} is not voxel {p_ijk}",
            )
        _check(np.allclose(axes.model_to_ijk(dhw), points.ijk), f"{label}: model -> IJK round trip")

        transform, shift = _translation((4.0, 2.0, -6.0))
        moved = _add_points("moved", ras[:1] - shift[:3, 3], bridge.POSITIVE_ROLE)
        moved.SetAndObserveTransformNodeID(transform.GetID())
        _check(
            np.allclose(bridge.read_points([moved], ijk_to_ras).ijk, ijk[:1], atol=1e-6),
            f"{label}: point under a transform",
        )
        _check(
            bridge.read_points([slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")], ijk_to_ras) is None,
            f"{label}: an empty node gave points",
        )


def check_stroke_prompts():
    """A stroke (curve node of a stroke role) becomes clicks of its polarity along it, ends included, at most
    STROKE_SPACING_MM apart; a fiducial node beside it keeps its own clicks."""
    ijk_to_ras = oblique_lps_ijk_to_ras()
    ends_ijk = np.array([(2.0, 3.0, 4.0), (20.0, 15.0, 8.0)])
    for role, label in ((bridge.NEGATIVE_STROKE_ROLE, 0), (bridge.POSITIVE_STROKE_ROLE, 1)):
        stroke = bridge.create_prompt_node(slicer.mrmlScene, role)
        _check(stroke.IsA("vtkMRMLMarkupsCurveNode"), f"the {role} tool is not a curve")
        for ras in ijk_to_ras_points(ijk_to_ras, ends_ijk):
            stroke.AddControlPoint(*[float(v) for v in ras])
        clicks = _add_points("clicks", ijk_to_ras_points(ijk_to_ras, [(5.0, 5.0, 5.0)]), bridge.POSITIVE_ROLE)
        points = bridge.read_points([clicks, stroke], ijk_to_ras)
        along = points.ijk[1:]
        gaps = np.linalg.norm(np.diff(ijk_to_ras_points(ijk_to_ras, along), axis=0), axis=1)
        _check(points.labels.tolist() == [1] + [label] * len(along), f"{role}: polarity {points.labels.tolist()}")
        _check(np.allclose(along[[0, -1]], ends_ijk, atol=1e-3), f"{role}: the stroke's ends are not clicks")
        _check(len(along) > 2 and np.all(gaps <= STROKE_SPACING_MM + 1e-6), f"{role}: clicks {gaps} mm apart")


def check_roi_prompt():
    """An ROI maps to the voxel box it covers: aligned round trip, rotated ROI, ROI under a transform."""
    box = Box((2, 3, 1), (17, 12, 9))
    for label, ijk_to_ras in geometries().items():
        make_volume(ijk_to_ras, label)
        roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
        _check(bridge.read_box(roi, ijk_to_ras) is None, f"{label}: an unplaced ROI gave a box")
        set_roi_to_box(roi, box, ijk_to_ras)
        _check(bridge.read_box(roi, ijk_to_ras) == box, f"{label}: {bridge.read_box(roi, ijk_to_ras)}")

        rotated = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "rotated")
        rotation = vtk.vtkTransform()
        rotation.RotateZ(45)
        rotated.SetAndObserveObjectToNodeMatrix(rotation.GetMatrix())
        centre = ijk_to_ras_points(ijk_to_ras, [10.0, 10.0, 6.0])
        rotated.SetCenter(*centre)
        rotated.SetSize(8.0, 8.0, 8.0)
        corners_ijk = ras_to_ijk_points(ijk_to_ras, bridge.roi_corners_ras(rotated))
        got = bridge.read_box(rotated, ijk_to_ras)
        _check(
            np.all(np.asarray(got.ijk_min) >= corners_ijk.min(axis=0) - 1e-6)
            and np.all(np.asarray(got.ijk_min) - 1 < corners_ijk.min(axis=0))
            and np.all(np.asarray(got.ijk_max) <= corners_ijk.max(axis=0) + 1e-6)
            and np.all(np.asarray(got.ijk_max) + 1 > corners_ijk.max(axis=0)),
            f"{label}: rotated ROI {got} vs corners {corners_ijk.min(axis=0)}..{corners_ijk.max(axis=0)}",
        )

        transform, shift = _translation((-7.0, 3.0, 2.0))
        moved = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "moved")
        set_roi_to_box(moved, box, np.linalg.inv(shift) @ ijk_to_ras)
        moved.SetAndObserveTransformNodeID(transform.GetID())
        _check(bridge.read_box(moved, ijk_to_ras) == box, f"{label}: ROI under a transform")


def _segment_array(segmentation_node, segment_id, volume_node) -> np.ndarray:
    return slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume_node).astype(np.uint8)


def _blob(shape, low, high) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[tuple(slice(a, b) for a, b in zip(low, high))] = 1
    return mask


def _volume_with_manual_segments(ijk_to_ras, label="SegVol test CT"):
    """(volume, segmentation, {segment ID: voxels}, volume shape): a segmentation holding two hand-made
    segments, one overlapping where the AI results will go."""
    volume = make_volume(ijk_to_ras, label)
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "segmentation")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    shape = slicer.util.arrayFromVolume(volume).shape
    manual = {}
    for name, low, high in (("manual A", (0, 0, 0), (4, 6, 6)), ("manual B", (3, 5, 5), (9, 14, 16))):
        segment_id = segmentation.GetSegmentation().AddEmptySegment("", name, [0.5, 0.5, 0.5])
        slicer.util.updateSegmentBinaryLabelmapFromArray(_blob(shape, low, high), segmentation, segment_id, volume)
        manual[segment_id] = _segment_array(segmentation, segment_id, volume)
    return volume, segmentation, manual, shape


def check_mask_to_segment():
    """A mask becomes a named, coloured, coded segment on the volume grid; other segments stay bit-identical."""
    for label, ijk_to_ras in geometries().items():
        volume, segmentation, manual, shape = _volume_with_manual_segments(ijk_to_ras, label)
        writer = segments.SegmentWriter(segmentation, volume)
        liver, spleen = _blob(shape, (2, 4, 4), (8, 12, 14)), _blob(shape, (5, 0, 10), (12, 9, 24))
        liver_id, spleen_id = writer.write(
            [(segments.spec_for_text("Liver"), liver), (segments.spec_for_text("spleen"), spleen)]
        )
        _check(np.array_equal(_segment_array(segmentation, liver_id, volume), liver), f"{label}: liver voxels")
        stored = slicer.vtkOrientedImageData()
        segmentation.GetBinaryLabelmapRepresentation(liver_id, stored)
        image_to_world = vtk.vtkMatrix4x4()
        stored.GetImageToWorldMatrix(image_to_world)
        _check(
            np.allclose(slicer.util.arrayFromVTKMatrix(image_to_world), ijk_to_ras, atol=1e-6),
            f"{label}: the segment is not stored on the volume's grid",
        )
        _check(np.array_equal(_segment_array(segmentation, spleen_id, volume), spleen), f"{label}: spleen voxels")
        for segment_id, before in manual.items():
            _check(
                np.array_equal(_segment_array(segmentation, segment_id, volume), before),
                f"{label}: segment {segment_id} was modified",
            )
        segment = segmentation.GetSegmentation().GetSegment(liver_id)
        expected = terminology.standard_term("liver")
        _check(segment.GetName() == "liver", f"{label}: name {segment.GetName()}")
        _check(np.allclose(segment.GetColor(), expected.color), f"{label}: colour {segment.GetColor()}")
        entry = vtk.reference("")
        segment.GetTag(terminology.TERMINOLOGY_ENTRY_TAG, entry)
        _check(entry.get() == expected.entry, f"{label}: terminology {entry.get()}")
        _check(
            not segment.GetNameAutoGenerated() and not segment.GetColorAutoGenerated(),
            f"{label}: name/colour still auto-generated",
        )
        writer.close()


def check_rerun_updates_in_place():
    """Re-running a text target replaces its segment's voxels; refining targets the chosen segment."""
    volume, segmentation, manual, shape = _volume_with_manual_segments(oblique_lps_ijk_to_ras())
    writer = segments.SegmentWriter(segmentation, volume)
    first, second = _blob(shape, (2, 4, 4), (8, 12, 14)), _blob(shape, (6, 1, 2), (11, 7, 9))
    (segment_id,) = writer.write([(segments.spec_for_text("kidney left"), first)])
    count = segmentation.GetSegmentation().GetNumberOfSegments()
    (again,) = writer.write([(segments.spec_for_text("left kidney"), second)])
    _check(again == segment_id, "re-run created a new segment")
    _check(segmentation.GetSegmentation().GetNumberOfSegments() == count, "segment count changed")
    _check(np.array_equal(_segment_array(segmentation, segment_id, volume), second), "re-run did not replace")
    manual_id = next(iter(manual))
    (refined,) = writer.write([(segments.spec_for_segment(segmentation, manual_id), first)])
    _check(refined == manual_id, "refine wrote elsewhere")
    _check(np.array_equal(_segment_array(segmentation, manual_id, volume), first), "refine did not replace")
    new_spec = segments.spec_for_new_segment(segmentation)
    _check(new_spec.name == "SegVol 1", f"first default name {new_spec.name}")
    writer.write([(new_spec, second)])
    _check(segments.spec_for_new_segment(segmentation).name == "SegVol 2", "default names do not count up")
    writer.close()


def check_undo_steps():
    """Each write is one undo step (a new segment included); manual edits in between interleave."""
    volume = make_volume(lps_flipped_ijk_to_ras())
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    shape = slicer.util.arrayFromVolume(volume).shape
    writer = segments.SegmentWriter(segmentation, volume)
    masks = [_blob(shape, (1, 1, 1), (4 + n, 6, 6)) for n in range(3)]
    (segment_id,) = writer.write([(segments.spec_for_text("aorta"), masks[0])])
    writer.write([(segments.spec_for_text("aorta"), masks[1])])
    writer._save_state()  # a manual edit, as the Segment Editor records it
    slicer.util.updateSegmentBinaryLabelmapFromArray(masks[2], segmentation, segment_id, volume)
    states = [_segment_array(segmentation, segment_id, volume)]
    for expected in (masks[1], masks[0]):
        writer.undo()
        states.append(_segment_array(segmentation, segment_id, volume))
        _check(np.array_equal(states[-1], expected), "undo did not walk back one step")
    writer.undo()
    _check(segmentation.GetSegmentation().GetSegment(segment_id) is None, "undo did not remove the new segment")
    writer.redo()
    _check(np.array_equal(_segment_array(segmentation, segment_id, volume), masks[0]), "redo")
    writer.close()


def check_overwrite_settings():
    """With the Segment Editor's settings (overwrite all, or masking), other segments change as there."""
    volume, segmentation, manual, shape = _volume_with_manual_segments(oblique_lps_ijk_to_ras())
    editor_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor_node.SetOverwriteMode(editor_node.OverwriteAllSegments)
    writer = segments.SegmentWriter(segmentation, volume, editor_node=editor_node)
    mask = _blob(shape, (2, 4, 4), (8, 12, 14))
    (segment_id,) = writer.write([(segments.spec_for_text("stomach"), mask)])
    for other, before in manual.items():
        after = _segment_array(segmentation, other, volume)
        _check(np.array_equal(after, before * (1 - mask)), f"overwrite-all did not carve {other}")
    editor_node.SetOverwriteMode(editor_node.OverwriteNone)
    editor_node.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedOutsideAllSegments)
    before = {sid: _segment_array(segmentation, sid, volume) for sid in manual}
    bigger = _blob(shape, (0, 0, 0), (12, 20, 24))
    writer.write([(segments.spec_for_text("stomach"), bigger)])
    outside = 1 - np.maximum.reduce(list(before.values()))
    _check(
        np.array_equal(_segment_array(segmentation, segment_id, volume), outside),
        "mask 'outside all segments' was not honoured",
    )
    _check(
        editor_node.GetSegmentationNode() is None and editor_node.GetSourceVolumeNode() is None,
        "the writer pointed the Segment Editor's node at its segmentation (the editor switches, its history goes)",
    )
    writer.close()


def _surface_segmentation(volume):
    """A segmentation whose source representation is closed surfaces (as one made from models)."""
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "surfaces")
    segmentation.GetSegmentation().SetSourceRepresentationName("Closed surface")
    sphere = vtk.vtkSphereSource()
    sphere.SetCenter(*bridge.world_ijk_to_ras(volume)[:3, 3])
    sphere.SetRadius(5.0)
    sphere.Update()
    segment = slicer.vtkSegment()
    segment.SetName("model")
    segment.AddRepresentation("Closed surface", sphere.GetOutput())
    segmentation.GetSegmentation().AddSegment(segment)
    return segmentation


def check_surface_segmentations():
    """A segmentation stored as surfaces is refused (its voxel segments would stay empty); an empty one is
    switched to voxels, as the Segment Editor does."""
    volume = make_volume(oblique_lps_ijk_to_ras())
    mask = _blob(slicer.util.arrayFromVolume(volume).shape, (2, 4, 4), (8, 12, 14))
    surfaces = _surface_segmentation(volume)
    # Counted, not expected to be 0: the Segment Editor's own node is a singleton that scene.Clear() keeps.
    editor_nodes = slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentEditorNode").GetNumberOfItems()
    _expect_input_error(lambda: segments.SegmentWriter(surfaces, volume), "Binary labelmap")
    _check(
        slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentEditorNode").GetNumberOfItems() == editor_nodes,
        "a refused writer left its editor node in the scene",
    )
    empty = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty surfaces")
    empty.GetSegmentation().SetSourceRepresentationName("Closed surface")
    writer = segments.SegmentWriter(empty, volume)
    (segment_id,) = writer.write([(segments.spec_for_text("liver"), mask)])
    writer.close()
    _check(np.array_equal(_segment_array(empty, segment_id, volume), mask), "the result was not stored as voxels")


def check_seg_nrrd_roundtrip(folder=None):
    """Written segments survive .seg.nrrd save and load: voxels, names, colours, terminology, target tags."""
    volume, segmentation, manual, shape = _volume_with_manual_segments(oblique_lps_ijk_to_ras())
    writer = segments.SegmentWriter(segmentation, volume)
    written = writer.write(
        [
            (segments.spec_for_text("postcava"), _blob(shape, (2, 4, 4), (8, 12, 14))),
            (segments.spec_for_new_segment(segmentation), _blob(shape, (0, 0, 0), (3, 3, 3))),
        ]
    )
    writer.close()
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        path = os.path.join(tmp, "result.seg.nrrd")
        _check(slicer.util.saveNode(segmentation, path), "saving .seg.nrrd failed")
        loaded = slicer.util.loadSegmentation(path)
    for segment_id in list(manual) + list(written):
        original = segmentation.GetSegmentation().GetSegment(segment_id)
        copy = loaded.GetSegmentation().GetSegment(segment_id)
        _check(copy is not None, f"segment {segment_id} lost")
        _check(copy.GetName() == original.GetName(), f"name {copy.GetName()}")
        _check(np.allclose(copy.GetColor(), original.GetColor(), atol=1e-6), f"colour of {copy.GetName()}")
        for tag in (terminology.TERMINOLOGY_ENTRY_TAG, segments.TARGET_TAG):
            a, b = vtk.reference(""), vtk.reference("")
            original.GetTag(tag, a)
            copy.GetTag(tag, b)
            _check(a.get() == b.get(), f"tag {tag} of {copy.GetName()}: {b.get()!r}")
        _check(
            np.array_equal(
                _segment_array(loaded, segment_id, volume), _segment_array(segmentation, segment_id, volume)
            ),
            f"voxels of {copy.GetName()}",
        )
    target = vtk.reference("")
    loaded.GetSegmentation().GetSegment(written[0]).GetTag(segments.TARGET_TAG, target)
    _check(target.get() == "inferior vena cava", "target tag lost")


def _expect_input_error(call, words):
    try:
        call()
    except InputError as error:
        _check(words in str(error), f"the message {str(error)!r} does not say {words!r}")
        return
    raise AssertionError(f"no InputError saying {words!r}")


def check_logic_refuses_unusable_input(logic):
    """Unusable input is one InputError saying what to do, and creates nothing; usable input a new segmentation."""
    ijk_to_ras = oblique_lps_ijk_to_ras()
    volume = make_volume(ijk_to_ras)
    positive, negative, roi = (
        bridge.create_prompt_node(slicer.mrmlScene, role)
        for role in (bridge.POSITIVE_ROLE, bridge.NEGATIVE_ROLE, bridge.BOX_ROLE)
    )
    clicks = [positive, negative]
    centre = ijk_to_ras_points(ijk_to_ras, [10.0, 10.0, 6.0])
    _expect_input_error(lambda: logic.prepare(None, None, "liver"), "no input volume")
    _expect_input_error(lambda: logic.prepare(volume, None, " , ", clicks, roi), "nothing to segment")
    negative.AddControlPoint(*centre)
    _expect_input_error(lambda: logic.prepare(volume, None, "", clicks, roi), "positive point")
    positive.AddControlPoint(*centre)
    _expect_input_error(lambda: logic.prepare(volume, None, "liver, spleen", clicks, roi), "at most one name")
    off_volume = positive.AddControlPoint(*ijk_to_ras_points(ijk_to_ras, [10.0, 10.0, SHAPE_KJI[0] + 3.0]))
    _expect_input_error(lambda: logic.prepare(volume, None, "", clicks, roi), "outside the volume")
    positive.RemoveNthControlPoint(off_volume)
    set_roi_to_box(roi, Box((30, 30, 20), (40, 40, 30)), ijk_to_ras)
    _expect_input_error(lambda: logic.prepare(volume, None, "", clicks, roi), "outside the volume")
    positive.SetNthControlPointDescription(0, "maybe")
    _expect_input_error(lambda: logic.prepare(volume, None, "", clicks, roi), "neither positive nor negative")
    positive.SetNthControlPointDescription(0, "")
    segmentations = slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode")
    _check(segmentations.GetNumberOfItems() == 0, "a refused run left a segmentation behind")
    _expect_input_error(lambda: logic.prepare(volume, _surface_segmentation(volume), "liver"), "Binary labelmap")

    set_roi_to_box(roi, Box((-3, 2, 1), (5, 30, 4)), ijk_to_ras)  # reaches out of the volume: clipped
    request = logic.prepare(volume, None, "liver", clicks, roi)
    ((target, spec),) = request.targets
    _check(
        target.text == "liver" and spec.name == "liver" and list(target.points.labels) == [1, 0],
        f"targets {request.targets}",
    )
    _check(target.box == Box((0, 2, 1), (5, SHAPE_KJI[1] - 1, 4)), f"box not clipped to the volume: {target.box}")
    segmentation = request.segmentationNode
    _check(
        segmentation.GetScene() is slicer.mrmlScene and segmentation.GetName() == "SegVol test CT SegVol",
        "no new segmentation for the results",
    )
    geometry = segmentation.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())
    _check(geometry is volume, "the new segmentation does not take the volume's geometry")


def check_logic_writes_where_it_read(logic):
    """Results go to the nodes the run read; nothing is written once they were removed, moved or resampled."""
    volume, segmentation, manual, shape = _volume_with_manual_segments(oblique_lps_ijk_to_ras())
    results = [types.SimpleNamespace(mask=_blob(shape, (2, 4, 4), (8, 12, 14)), warnings=[])]
    request = logic.prepare(volume, segmentation, "liver")
    count = segmentation.GetSegmentation().GetNumberOfSegments()

    transform, _ = _translation((0.0, 0.0, 5.0))
    volume.SetAndObserveTransformNodeID(transform.GetID())
    _expect_input_error(lambda: logic.apply(request, results), "moved or resampled")
    _check(segmentation.GetSegmentation().GetNumberOfSegments() == count, "a refused result was written")
    volume.SetAndObserveTransformNodeID(None)

    elsewhere = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "selected meanwhile")
    (segment_id,) = logic.apply(request, results)  # the selection changed; the request still knows its nodes
    _check(np.array_equal(_segment_array(segmentation, segment_id, volume), results[0].mask), "result not written")
    _check(elsewhere.GetSegmentation().GetNumberOfSegments() == 0, "the result went to another segmentation")
    for other, before in manual.items():
        _check(np.array_equal(_segment_array(segmentation, other, volume), before), f"segment {other} changed")

    fresh = logic.prepare(volume, None, "spleen")
    slicer.mrmlScene.RemoveNode(fresh.segmentationNode)
    _expect_input_error(lambda: logic.apply(fresh, results), "removed")
    slicer.mrmlScene.RemoveNode(volume)
    _expect_input_error(lambda: logic.apply(request, results), "removed")


def synthetic_model(folder=None):
    """SegVol with the project's deterministic synthetic weights, loaded on the CPU (needs torch)."""
    from ..model import load_segvol
    from ..testing.synthetic_weights import save_checkpoint, synthetic_state_dict

    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        path = save_checkpoint(synthetic_state_dict(), os.path.join(tmp, "SegVol_v1.pth"), "pth")
        return load_segvol(path, device="cpu")


def check_logic_end_to_end(logic, model):
    """The module logic on a synthetic CT: names, clicks and a box become segments; sessions are reused and dropped."""
    from ..prompts import Target
    from ..testing.synthetic_ct import make_synthetic_ct

    ct = make_synthetic_ct()
    volume = slicer.util.addVolumeFromArray(ct.volume, ct.ijk_to_ras, "synthetic CT")
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "SegVol result")
    logic.useModel(model)

    segment_ids, _ = logic.process(volume, segmentation, names="liver, spleen", zoomIn=False)
    session = logic.engine.kept_session(volume.GetID())
    _check(session is not None, "no session kept for the volume")
    for segment_id, name in zip(segment_ids, ("liver", "spleen")):
        segment = segmentation.GetSegmentation().GetSegment(segment_id)
        _check(segment.GetName() == name, f"segment name {segment.GetName()}")
        _check(np.allclose(segment.GetColor(), terminology.standard_term(name).color), f"{name} colour")
    expected = session.segment(Target("liver", text="liver"), zoom_in=False).mask  # cached embedding: decoder only
    _check(expected.any(), "the synthetic model found nothing: the check would prove little")
    _check(
        np.array_equal(_segment_array(segmentation, segment_ids[0], volume), expected),
        "the liver segment differs from the engine's mask on the volume grid",
    )

    liver = np.argwhere(ct.labels == 1)
    centre_kji = liver.mean(axis=0)
    clicks = _add_points("clicks", ijk_to_ras_points(ct.ijk_to_ras, [centre_kji[::-1]]), bridge.POSITIVE_ROLE)
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    box = Box(tuple(liver.min(axis=0)[::-1]), tuple(liver.max(axis=0)[::-1]))
    set_roi_to_box(roi, box, ct.ijk_to_ras)
    (clicked_id,), _ = logic.process(volume, segmentation, pointNodes=[clicks], roiNode=roi, zoomIn=False)
    _check(segmentation.GetSegmentation().GetSegment(clicked_id).GetName() == "SegVol 1", "prompt-only segment name")
    _check(logic.engine.kept_session(volume.GetID()) is session, "the session was not reused")
    request = logic.prepare(volume, segmentation, pointNodes=[clicks], roiNode=roi, zoomIn=False)
    ((target, _),) = request.targets
    _check(
        target.box == box and np.allclose(target.points.ijk, [centre_kji[::-1]]), "prompts reached the engine changed"
    )

    count = segmentation.GetSegmentation().GetNumberOfSegments()
    (again,), _ = logic.process(volume, segmentation, names="Liver", zoomIn=False)
    _check(
        again == segment_ids[0] and segmentation.GetSegmentation().GetNumberOfSegments() == count,
        "re-running 'liver' did not update its segment in place",
    )

    slicer.util.arrayFromVolume(volume)[0, 0, 0] += 1
    slicer.util.arrayFromVolumeModified(volume)
    logic.prepare(volume, segmentation, names="aorta")
    _check(logic.engine.kept_session(volume.GetID()) is None, "the session survived a change of the voxels")
    volume_id = volume.GetID()
    fresh = logic.engine.session(logic.prepare(volume, segmentation, names="aorta").volume)
    _check(
        logic.engine.kept_session(volume_id) is fresh and fresh is not session, "no new session for the changed volume"
    )
    other = slicer.util.addVolumeFromArray(ct.volume, ct.ijk_to_ras, "other CT")
    slicer.mrmlScene.RemoveNode(volume)
    logic.prepare(other, segmentation, names="liver")
    _check(logic.engine.kept_session(volume_id) is None, "the session of a removed volume was kept")


def check_campaign(folder=None):
    """A two-case campaign: each case opened, shown, edited by hand and accepted (its label and record), then done."""
    from ..campaign.campaign import Campaign
    from ..campaign.records import record_path
    from ..imageio import read_segmentation
    from . import campaign_scene

    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        written = {}
        for number, geometry in enumerate(geometries().values()):
            node = make_volume(geometry, name=f"case{number}")
            written[f"case{number}"] = slicer.util.arrayFromVolume(node).copy()
            _check(slicer.util.saveNode(node, os.path.join(tmp, f"case{number}.nii.gz")), "saving a CT failed")
            slicer.mrmlScene.RemoveNode(node)
        campaign = Campaign.open(tmp, "self-test")
        for expected in ("case0", "case1"):
            case = campaign.next_case(order="id")
            _check(case is not None and case.case.id == expected, f"next case: {case and case.case.id}, not {expected}")
            loaded = case.load()
            volume, segmentation = campaign_scene.show_case(slicer.mrmlScene, expected, loaded)
            _check(np.array_equal(slicer.util.arrayFromVolume(volume), written[expected]), "the CT changed on loading")
            mask = _blob(SHAPE_KJI, (2, 3, 4), (6, 9, 11))
            segment_id = segmentation.GetSegmentation().AddEmptySegment("", "liver", [0.8, 0.5, 0.4])
            slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentation, segment_id, volume)
            case.note_hand_edit("liver")
            label = case.accept(campaign_scene.read_segments(segmentation, volume), loaded.volume)
            (accepted,) = read_segmentation(label, loaded.volume)
            _check(np.array_equal(accepted.mask, mask) and accepted.name == "liver", "the accepted label differs")
            _check(record_path(label).is_file(), "no record beside the accepted label")
            campaign_scene.remove_nodes(segmentation, volume)
        _check(campaign.next_case() is None, "a case was offered after both were accepted")
        summary = Campaign.open(tmp, "self-test").progress().summary
        _check(summary == "2 of 2 accepted", f"the reopened campaign says {summary!r}")


BRIDGE_CHECKS = (
    check_volume_geometry,
    check_point_prompts,
    check_stroke_prompts,
    check_roi_prompt,
    check_mask_to_segment,
    check_rerun_updates_in_place,
    check_undo_steps,
    check_overwrite_settings,
    check_surface_segmentations,
    check_seg_nrrd_roundtrip,
    check_campaign,
)
LOGIC_CHECKS = (check_logic_refuses_unusable_input, check_logic_writes_where_it_read)  # take the module's logic
