"""MRML in: volume node -> array + IJK-to-RAS, markups -> prompts (segments.py writes the results).

Call everything here on Slicer's main thread (MRML is not thread-safe); the engine only sees numpy arrays.
Markups and ROIs are read in world RAS (parent transforms applied) and mapped onto the voxel grid of the input
volume through its world IJK-to-RAS matrix.
"""

from __future__ import annotations

import itertools

import numpy as np
import slicer
import vtk

from ..errors import InputError
from ..prompts import NEGATIVE, POSITIVE, Box, Points, label_from_description

# Node attribute telling what a markups node is for; kept in the scene file, so prompts survive save/reload.
ROLE_ATTRIBUTE = "SegVol.PromptRole"
POSITIVE_ROLE, NEGATIVE_ROLE, BOX_ROLE = "positive", "negative", "box"
# Strokes: open curves drawn with the positive or negative tool, read as clicks along them.
POSITIVE_STROKE_ROLE, NEGATIVE_STROKE_ROLE = "positive stroke", "negative stroke"
FINISHED_STROKE_ATTRIBUTE = "SegVol.FinishedStroke"  # a stroke kept while the next one is drawn
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


def node_to_world(node) -> np.ndarray:
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
    return node_to_world(volume_node) @ slicer.util.arrayFromVTKMatrix(matrix)


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
