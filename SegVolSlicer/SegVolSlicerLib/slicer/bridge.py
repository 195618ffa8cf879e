"""The only module that touches MRML: volume node -> array + IJK-to-RAS, markups -> prompts, mask -> segment.

Call everything here on Slicer's main thread (MRML is not thread-safe); the engine only sees numpy arrays.
Markups and ROIs are read in world RAS (parent transforms applied) and mapped onto the voxel grid of the input
volume through its world IJK-to-RAS matrix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re
from dataclasses import dataclass

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from .. import prompts, terminology, vocabulary
from ..errors import InputError
from ..prompts import NEGATIVE, POSITIVE, Box, Points, Target, label_from_description

# Node attribute telling what a markups node is for; kept in the scene file, so prompts survive save/reload.
ROLE_ATTRIBUTE = "SegVol.PromptRole"
POSITIVE_ROLE, NEGATIVE_ROLE, BOX_ROLE = "positive", "negative", "box"
# Strokes: open curves drawn with the positive or negative tool, read as clicks along them.
POSITIVE_STROKE_ROLE, NEGATIVE_STROKE_ROLE = "positive stroke", "negative stroke"
FINISHED_STROKE_ATTRIBUTE = "SegVol.FinishedStroke"  # a stroke kept while the next one is drawn
# Segment tag naming the text target that produced the segment: re-running that target updates the segment.
TARGET_TAG = "SegVol.Target"
# Segment tag saying SegVol made the segment, and how (a DICOM SEG's algorithm type); absent: by hand or another tool.
MADE_BY_TAG = "SegVol.MadeBy"
MADE_AUTOMATICALLY, MADE_SEMIAUTOMATICALLY = "AUTOMATIC", "SEMIAUTOMATIC"
DEFAULT_SEGMENT_PREFIX = "SegVol"
LABELMAP = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
# Prompt node looks: clicks in clearly different colours, labelled "+1", "-1", ...; negative clicks are also
# crosses, so that they differ in shape for red-green colour-blind users.
_PROMPT_LOOKS = {
    POSITIVE_ROLE: ("SegVol positive", (0.15, 0.80, 0.30), "+%d", None),
    NEGATIVE_ROLE: ("SegVol negative", (0.95, 0.20, 0.20), "-%d", "ThickCross2D"),
    BOX_ROLE: ("SegVol box", (1.00, 0.84, 0.04), None, None),
    POSITIVE_STROKE_ROLE: ("SegVol positive stroke", (0.15, 0.80, 0.30), "", None),
    NEGATIVE_STROKE_ROLE: ("SegVol negative stroke", (0.95, 0.20, 0.20), "", None),
}
_NODE_CLASSES = {
    BOX_ROLE: "vtkMRMLMarkupsROINode",
    POSITIVE_STROKE_ROLE: "vtkMRMLMarkupsCurveNode",
    NEGATIVE_STROKE_ROLE: "vtkMRMLMarkupsCurveNode",
}


def _to_world(node) -> np.ndarray:
    """Node-to-world matrix of a transformable node; non-linear transforms cannot map voxels to voxels."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise InputError(
            f"'{node.GetName()}' is under a non-linear transform: harden the transform "
            "(Data module, right-click the node) and try again"
        )
    matrix = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def world_ijk_to_ras(volume_node) -> np.ndarray:
    """4x4 matrix from (i, j, k, 1) voxel indices to world RAS millimetres, parent transforms included."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return _to_world(volume_node) @ slicer.util.arrayFromVTKMatrix(matrix)


def read_volume(volume_node) -> tuple[np.ndarray, np.ndarray]:
    """(voxels (K,J,I) as a private copy, world IJK-to-RAS 4x4) of a scalar volume node."""
    if volume_node is None:
        raise InputError("no input volume: select a CT volume")
    if volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(
            f"'{volume_node.GetName()}' is a labelmap (segment labels, not CT intensities): select the CT volume"
        )
    if not is_ct_candidate(volume_node):
        raise InputError(
            f"'{volume_node.GetName()}' is a {volume_node.GetClassName()} (not CT intensities): "
            "select a scalar CT volume"
        )
    image = volume_node.GetImageData()
    if image is None or min(image.GetDimensions()) < 1:
        raise InputError(f"volume '{volume_node.GetName()}' has no voxels: load a CT volume")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(
            f"volume '{volume_node.GetName()}' has {image.GetNumberOfScalarComponents()} components "
            "per voxel (colour or vector image): select a scalar CT volume"
        )
    # arrayFromVolume is a view of VTK memory; the worker thread must not see later edits.
    return slicer.util.arrayFromVolume(volume_node).copy(), world_ijk_to_ras(volume_node)


# Scalar volumes that are not CT intensities: label values, colour or diffusion images.
NOT_CT_CLASSES = (
    "vtkMRMLLabelMapVolumeNode",
    "vtkMRMLVectorVolumeNode",
    "vtkMRMLDiffusionWeightedVolumeNode",
    "vtkMRMLDiffusionTensorVolumeNode",
)


def is_ct_candidate(node) -> bool:
    """Whether SegVol can take `node` as its input: a scalar volume that is not a labelmap, vector or diffusion
    volume (all of which are vtkMRMLScalarVolumeNode subclasses)."""
    return node.IsA("vtkMRMLScalarVolumeNode") and not any(node.IsA(name) for name in NOT_CT_CLASSES)


def first_ct_volume(scene):
    """The first volume in `scene` SegVol can segment, or None (GetFirstNodeByClass would give a labelmap)."""
    volumes = scene.GetNodesByClass("vtkMRMLScalarVolumeNode")
    for index in range(volumes.GetNumberOfItems()):
        node = volumes.GetItemAsObject(index)
        if is_ct_candidate(node):
            return node
    return None


def node_role(node) -> str | None:
    return node.GetAttribute(ROLE_ATTRIBUTE) if node is not None else None


def read_points(point_nodes, ijk_to_ras) -> Points | None:
    """Defined control points of fiducial nodes as IJK points of the volume, or None if there are none.

    A point's polarity is its description ("positive"/"negative"); an empty description takes the node's role,
    and positive for a node without one. Points still being placed (preview) are ignored. A curve node is a
    stroke: clicks along its curve (Points.along_curve), of its role's polarity.
    """
    ras, labels, strokes = [], [], []
    for node in point_nodes:
        if node is None:
            continue
        if node.IsA("vtkMRMLMarkupsCurveNode"):
            strokes.append(read_stroke(node, ijk_to_ras))
            continue
        default = NEGATIVE if node_role(node) == NEGATIVE_ROLE else POSITIVE
        for index in range(node.GetNumberOfControlPoints()):
            if node.GetNthControlPointPositionStatus(index) != node.PositionDefined:
                continue
            description = node.GetNthControlPointDescription(index) or ""
            labels.append(label_from_description(description) if description.strip() else default)
            position = [0.0, 0.0, 0.0]
            node.GetNthControlPointPositionWorld(index, position)
            ras.append(position)
    clicks = Points.from_ras(np.array(ras), np.array(labels), ijk_to_ras) if ras else None
    return Points.concatenate(clicks, *strokes)


def read_stroke(curve_node, ijk_to_ras) -> Points | None:
    """Clicks along a curve node's drawn curve (world RAS), negative for the negative stroke role. Only its
    placed points count: the one under the mouse while placing (a preview point) is not part of the stroke."""
    defined = [
        index
        for index in range(curve_node.GetNumberOfControlPoints())
        if curve_node.GetNthControlPointPositionStatus(index) == curve_node.PositionDefined
    ]
    if not defined:
        return None
    positions = np.zeros((len(defined), 3))
    for row, index in enumerate(defined):
        curve_node.GetNthControlPointPositionWorld(index, positions[row])
    curve = curve_node
    if len(defined) < curve_node.GetNumberOfControlPoints():  # the same curve through the placed points only
        curve = slicer.vtkMRMLMarkupsCurveNode()
        curve.SetCurveType(curve_node.GetCurveType())
        for position in positions:
            curve.AddControlPoint(*position)
    points = curve.GetCurvePointsWorld()
    if len(defined) > 1 and points is not None and points.GetNumberOfPoints():
        positions = np.array([points.GetPoint(index) for index in range(points.GetNumberOfPoints())])
    label = NEGATIVE if node_role(curve_node) == NEGATIVE_STROKE_ROLE else POSITIVE
    return Points.along_curve(positions, label, ijk_to_ras)


def finish_stroke(curve_node):
    """Keep a finished stroke as a curve node of its own (tagged FINISHED_STROKE_ATTRIBUTE), so that the next
    stroke placed in `curve_node` starts a new curve instead of continuing this one; returns the new node."""
    role = node_role(curve_node)
    finished = create_prompt_node(curve_node.GetScene(), role)
    finished.SetName(curve_node.GetScene().GenerateUniqueName(f"{curve_node.GetName()} (finished)"))
    finished.SetAttribute(FINISHED_STROKE_ATTRIBUTE, "1")
    for index in range(curve_node.GetNumberOfControlPoints()):
        if curve_node.GetNthControlPointPositionStatus(index) == curve_node.PositionDefined:
            position = [0.0, 0.0, 0.0]
            curve_node.GetNthControlPointPositionWorld(index, position)
            finished.AddControlPoint(*position)
    curve_node.RemoveAllControlPoints()
    return finished


def finished_strokes(scene) -> list:
    """The finished strokes in `scene` (finish_stroke), oldest first."""
    nodes = scene.GetNodesByClass("vtkMRMLMarkupsCurveNode")
    found = [nodes.GetItemAsObject(index) for index in range(nodes.GetNumberOfItems())]
    return [node for node in found if node.GetAttribute(FINISHED_STROKE_ATTRIBUTE) == "1"]


def read_prompts(point_nodes, roi_node, ijk_to_ras, shape_kji) -> tuple[Points | None, Box | None]:
    """Clicks and box on a volume of shape (K,J,I): a click off the volume is a mistake (it would be ignored
    silently), a box reaching out of the volume is clipped to it."""
    points = read_points(point_nodes, ijk_to_ras)
    if points is not None:
        points.check_inside(shape_kji)
    box = read_box(roi_node, ijk_to_ras)
    return points, None if box is None else box.clipped(shape_kji)


def create_prompt_node(scene, role: str):
    """A markups node for positive or negative clicks or strokes, or the box, tagged with its role and
    coloured."""
    name, color, label_format, glyph = _PROMPT_LOOKS[role]
    node_class = _NODE_CLASSES.get(role, "vtkMRMLMarkupsFiducialNode")
    node = scene.AddNewNodeByClass(node_class, scene.GenerateUniqueName(name))
    node.SetAttribute(ROLE_ATTRIBUTE, role)
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetSelectedColor(color)
    display.SetColor(color)
    display.SetActiveColor(color)
    if glyph is not None:
        display.SetGlyphTypeFromString(glyph)
    if label_format is not None:
        node.SetControlPointLabelFormat(label_format)
    return node


def create_segmentation_node(volume_node):
    """A new segmentation for the results on `volume_node`, named after it, with the volume's geometry."""
    scene = volume_node.GetScene()
    node = scene.AddNewNodeByClass(
        "vtkMRMLSegmentationNode", scene.GenerateUniqueName(f"{volume_node.GetName()} SegVol")
    )
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    return node


def tag_point_descriptions(node) -> None:
    """Write a role node's polarity into empty point descriptions, so saved .mrk.json files say it too."""
    role = node_role(node)
    if role not in (POSITIVE_ROLE, NEGATIVE_ROLE):
        return
    for index in range(node.GetNumberOfControlPoints()):
        if not (node.GetNthControlPointDescription(index) or "").strip():
            node.SetNthControlPointDescription(index, role)


def clear_prompts(nodes) -> None:
    for node in nodes:
        if node is not None:
            node.RemoveAllControlPoints()


def roi_corners_ras(roi_node) -> np.ndarray:
    """The 8 corners (8,3) of a (possibly rotated, transformed) ROI in world RAS."""
    half = np.asarray(roi_node.GetSize(), dtype=np.float64) / 2
    corners = np.array(list(itertools.product(*[(-h, h) for h in half])))
    object_to_world = slicer.util.arrayFromVTKMatrix(roi_node.GetObjectToWorldMatrix())
    return corners @ object_to_world[:3, :3].T + object_to_world[:3, 3]


def read_box(roi_node, ijk_to_ras) -> Box | None:
    """The voxels of the volume covered by an ROI (IJK bounding box of its corners), or None if not placed."""
    if roi_node is None or roi_node.GetNumberOfDefinedControlPoints() == 0:
        return None
    return Box.from_ras_corners(roi_corners_ras(roi_node), ijk_to_ras)


@dataclass(frozen=True)
class SegmentSpec:
    """Where one result goes: an existing segment (segment_id) or a new one with this name, colour and codes."""

    name: str
    color: tuple[float, float, float]
    terminology_entry: str | None = None
    target_key: str | None = None  # TARGET_TAG value: finds the segment of an earlier run of the same text
    segment_id: str | None = None  # refine this segment


def spec_for_text(text: str) -> SegmentSpec:
    """A text target's segment: Slicer's standard anatomy name, colour and codes where the category maps to it."""
    look = terminology.look_for_text(text)
    # Keyed by the segment name, so that synonyms of one structure ("kidney left", "left kidney") share a segment.
    return SegmentSpec(look.name, look.color, look.terminology_entry, target_key=look.name)


def spec_for_new_segment(segmentation_node) -> SegmentSpec:
    """A segment for a prompt without text: "SegVol 1", "SegVol 2", ... (first unused number; None: a
    segmentation yet to be made)."""
    used = set()
    if segmentation_node is not None:
        segmentation = segmentation_node.GetSegmentation()
        used = {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
    number = next(n for n in itertools.count(1) if f"{DEFAULT_SEGMENT_PREFIX} {n}" not in used)
    name = f"{DEFAULT_SEGMENT_PREFIX} {number}"
    return SegmentSpec(name, vocabulary.colour_for(name))


def spec_for_segment(segmentation_node, segment_id: str) -> SegmentSpec:
    """Refine an existing segment: its name, colour and codes stay as they are."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise InputError(f"segment '{segment_id}' no longer exists: select another segment or a new one")
    return SegmentSpec(segment.GetName(), tuple(segment.GetColor()), segment_id=segment_id)


def split_names(text: str) -> list[str]:
    """Anatomy names typed as "liver, spleen; left kidney" -> ["liver", "spleen", "left kidney"] (no repeats)."""
    names = [" ".join(part.split()) for part in re.split(r"[,;\n]", text or "")]
    return list(dict.fromkeys(name for name in names if name))


def plan_targets(
    names: list[str], points: Points | None, box: Box | None, segmentation_node, refine_segment_id: str | None = None
) -> list[tuple[Target, SegmentSpec]]:
    """What to segment (prompts.plan_targets) and where each result goes: a name's segment is found again
    when the name is run again; without a name, the prompts refine `refine_segment_id` or make a new
    "SegVol N"."""
    unnamed = None
    if not names:
        unnamed = (
            spec_for_segment(segmentation_node, refine_segment_id)
            if refine_segment_id
            else spec_for_new_segment(segmentation_node)
        )
    targets = prompts.plan_targets(names, points, box, unnamed.name if unnamed else "")
    return [(target, spec_for_text(target.text) if target.text is not None else unnamed) for target in targets]


def tag_made_by_segvol(segmentation_node, segment_id: str, target) -> None:
    """Mark a segment SegVol wrote: automatically (its text alone) or semiautomatically (clicks or a box)."""
    how = MADE_AUTOMATICALLY if target.points is None and target.box is None else MADE_SEMIAUTOMATICALLY
    segmentation_node.GetSegmentation().GetSegment(segment_id).SetTag(MADE_BY_TAG, how)


def with_segment_id(segmentation_node, spec: SegmentSpec) -> SegmentSpec:
    """`spec` naming the segment its result goes to, chosen before the run (the engine keeps the result under
    it): the one given, the segment an earlier run of the same text made, or the ID a new segment will get."""
    segment_id = spec.segment_id
    if segment_id is None and spec.target_key is not None:
        segment_id = find_target_segment(segmentation_node, spec.target_key)
    if segment_id is None:
        segment_id = segmentation_node.GetSegmentation().GenerateUniqueSegmentID(spec.name)
    return dataclasses.replace(spec, segment_id=segment_id)


def segment_mask(segmentation_node, segment_id: str, volume_node) -> np.ndarray:
    """A segment's voxels (K, J, I) uint8 on the volume's grid, as they are now."""
    return np.asarray(slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, segment_id, volume_node), np.uint8)


def segment_stamp(segmentation_node, segment_id: str) -> tuple | None:
    """What a segment's voxels are now, cheaply: its labelmap's modification time and a digest of its voxels
    in its layer (None without a labelmap). Compare with `segment_unchanged`."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    labelmap = segment.GetRepresentation(LABELMAP) if segment is not None else None
    if labelmap is None:
        return None
    return int(labelmap.GetMTime()), _voxels_digest(labelmap, segment.GetLabelValue())


def segment_unchanged(segmentation_node, segment_id: str, stamp: tuple | None) -> bool:
    """Whether the segment holds the voxels it had when `stamp` was taken. The modification time alone
    would do for a segment alone in its layer; a layer shared with other segments changes with each of
    them, so a changed time is confirmed by the voxels' digest."""
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    labelmap = segment.GetRepresentation(LABELMAP) if segment is not None else None
    if stamp is None or labelmap is None:
        return False
    return int(labelmap.GetMTime()) == stamp[0] or _voxels_digest(labelmap, segment.GetLabelValue()) == stamp[1]


def _voxels_digest(labelmap, label_value: int) -> bytes:
    scalars = labelmap.GetPointData().GetScalars()
    inside = numpy_support.vtk_to_numpy(scalars) == label_value if scalars is not None else np.zeros(0, bool)
    digest = hashlib.blake2b(np.packbits(inside).tobytes(), digest_size=16)
    digest.update(repr(tuple(labelmap.GetExtent())).encode())
    return digest.digest()


def check_labelmap_source(segmentation_node) -> None:
    """Results are voxels: a segmentation whose segments are stored as surfaces would silently get empty
    segments (the surfaces are the source, voxels derived from them), and converting it is the user's choice."""
    segmentation = segmentation_node.GetSegmentation()
    if segmentation.GetSourceRepresentationName() != LABELMAP and segmentation.GetNumberOfSegments():
        raise InputError(
            f"segmentation '{segmentation_node.GetName()}' stores its segments as "
            f"{segmentation.GetSourceRepresentationName().lower()}s: make 'Binary labelmap' its source "
            "representation (Segmentations module, Representations) or choose another segmentation"
        )


def find_target_segment(segmentation_node, target_key: str) -> str | None:
    segmentation = segmentation_node.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        value = vtk.reference("")
        if segment.GetTag(TARGET_TAG, value) and value.get() == target_key:
            return segmentation.GetNthSegmentID(index)
    return None


class SegmentWriter:
    """Writes masks into a segmentation as a Segment Editor effect would.

    Each `write` is one undo step (state saved before anything changes, new segments included) and goes through
    vtkSlicerSegmentEditorLogic.ModifySegmentByLabelmap, so overwrite and masking settings apply exactly as in
    the Segment Editor. The writer always edits through its own (hidden) editor node: `editor_node`, the Segment
    Editor's, only lends its overwrite and masking settings, read at each write; without it other segments are
    never modified (overlap allowed) and editing is allowed everywhere. Pointing the Segment Editor's own node at
    this segmentation would switch the Segment Editor and erase its undo history, whatever the user decided.
    `save_state_for_undo` is the undo owner (the Segment Editor widget's `saveStateForUndo` in Slicer, so Ctrl+Z
    there walks back AI steps and manual edits alike); without it the writer keeps its own undo history
    (`undo`/`redo`). `notes`: settings that could not apply, for the status line.
    """

    def __init__(self, segmentation_node, volume_node, editor_node=None, save_state_for_undo=None):
        check_labelmap_source(segmentation_node)
        scene = segmentation_node.GetScene()
        self.segmentation_node, self.volume_node = segmentation_node, volume_node
        self._settings_node = editor_node
        self.notes: list[str] = []
        own = slicer.vtkMRMLSegmentEditorNode()
        own.SetHideFromEditors(True)
        own.SetSaveWithScene(False)
        own.SetOverwriteMode(own.OverwriteNone)
        own.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere)
        scene.AddNode(own)
        self._own_editor_node = own
        self._logic = slicer.vtkSlicerSegmentEditorLogic()
        self._logic.SetMRMLScene(scene)
        app = getattr(slicer, "app", None)  # absent in plain slicer-core without the test shim
        if app is not None:
            self._logic.SetMRMLApplicationLogic(app.applicationLogic())
        self._logic.SetSegmentEditorNode(own)
        self._logic.SetSegmentationNode(segmentation_node)
        self._logic.SetSourceVolumeNode(volume_node)
        self._save_state = save_state_for_undo or self._logic.SaveStateForUndo
        if not segmentation_node.GetDisplayNode():
            segmentation_node.CreateDefaultDisplayNodes()
        if not segmentation_node.GetSegmentation().GetNumberOfSegments():
            # As the Segment Editor does: an empty segmentation takes the geometry of the volume it segments
            # and stores voxels.
            segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
            segmentation_node.GetSegmentation().SetSourceRepresentationName(LABELMAP)

    def _take_settings(self) -> None:
        """The Segment Editor's overwrite and masking settings, as they are now, on the writer's own node."""
        settings, own = self._settings_node, self._own_editor_node
        if settings is None:
            return
        own.SetOverwriteMode(settings.GetOverwriteMode())
        own.SetSourceVolumeIntensityMask(settings.GetSourceVolumeIntensityMask())
        own.SetSourceVolumeIntensityMaskRange(settings.GetSourceVolumeIntensityMaskRange())
        mask_mode, mask_segment = settings.GetMaskMode(), settings.GetMaskSegmentID()
        if mask_mode == slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment and (
            settings.GetSegmentationNode() is not self.segmentation_node
            or self.segmentation_node.GetSegmentation().GetSegment(mask_segment or "") is None
        ):
            # the editable area is a segment of another segmentation: it cannot mask this one
            mask_mode, mask_segment = slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere, None
            name = self.segmentation_node.GetName()
            note = f"The Segment Editor's editable area is a segment of another segmentation: not applied to '{name}'."
            if note not in self.notes:
                self.notes.append(note)
        own.SetMaskMode(mask_mode)
        own.SetMaskSegmentID(mask_segment)

    def close(self):
        """Remove the writer's private editor node from the scene."""
        if self._own_editor_node is not None and self._own_editor_node.GetScene() is not None:
            self._own_editor_node.GetScene().RemoveNode(self._own_editor_node)
        self._own_editor_node = None

    def write(self, results: list[tuple[SegmentSpec, np.ndarray]]) -> list[str]:
        """Write (spec, mask (K,J,I) on the volume grid) pairs as one undo step; returns the segment IDs."""
        ijk_to_segmentation = np.linalg.inv(_to_world(self.segmentation_node)) @ world_ijk_to_ras(self.volume_node)
        expected_shape = slicer.util.arrayFromVolume(self.volume_node).shape
        for _, mask in results:
            if mask.shape != expected_shape:
                raise InputError(
                    f"a mask of shape {mask.shape} does not fit volume "
                    f"'{self.volume_node.GetName()}' of shape {expected_shape}"
                )
        self._take_settings()
        self._save_state()
        segment_ids = []
        for spec, mask in results:
            segment_id = self._segment_for(spec)
            self._logic.ModifySegmentByLabelmap(
                self.segmentation_node,
                segment_id,
                _oriented_labelmap(mask, ijk_to_segmentation),
                self._logic.ModificationModeSet,
                True,
                False,
            )
            segment_ids.append(segment_id)
        return segment_ids

    def _segment_for(self, spec: SegmentSpec) -> str:
        segmentation = self.segmentation_node.GetSegmentation()
        if spec.segment_id is not None and segmentation.GetSegment(spec.segment_id) is not None:
            return spec.segment_id
        if spec.target_key is not None:
            existing = find_target_segment(self.segmentation_node, spec.target_key)
            if existing is not None:
                return existing
        segment_id = segmentation.AddEmptySegment(spec.segment_id or "", spec.name, list(spec.color))
        segment = segmentation.GetSegment(segment_id)
        # Model names and colours are final: keep Slicer's terminology UI from regenerating them.
        segment.SetNameAutoGenerated(False)
        segment.SetColorAutoGenerated(False)
        if spec.terminology_entry:
            segment.SetTag(terminology.TERMINOLOGY_ENTRY_TAG, spec.terminology_entry)
        if spec.target_key is not None:
            segment.SetTag(TARGET_TAG, spec.target_key)
        return segment_id

    def undo(self) -> None:
        self._logic.Undo()

    def redo(self) -> None:
        self._logic.Redo()


def _oriented_labelmap(mask: np.ndarray, ijk_to_ras: np.ndarray):
    """A binary vtkOrientedImageData holding mask (K,J,I) with the given voxel-to-RAS matrix."""
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(mask.shape[2], mask.shape[1], mask.shape[0])
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(mask.shape)[:] = mask != 0
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
    return image
